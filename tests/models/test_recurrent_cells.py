"""Recurrent cells and layers of ``research.layers.recurrent`` beyond the GRU (sequence-models issue, part 1): Elman,
LSTM (with / without peepholes) and SRU steps against numpy float64 re-implementations of their papers' equations,
the LSTM layer against ``flax.linen.LSTMCell`` + ``nn.RNN``, masking, bidirectional and stacked wrappers (the GRU
ones identical to ``BidirectionalGRU`` / ``StackedGRU``), truncated BPTT, the 2-D MD-RNN against a numpy double loop
from each corner, finite differences, retracing and ``shard_map``."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from research.layers import recurrent as rec

F64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)


def _sig(a):
  return 1.0 / (1.0 + np.exp(-a))


# ------------------------------------------------------------------------------------------- numpy references


def _elman_np(h, x, p):
  return np.tanh(x @ p["input_kernel"] + p["input_bias"] + h @ p["recurrent_kernel"])


def _lstm_np(c, h, x, p, peephole):
  """Hochreiter & Schmidhuber 1997 + forget gate (Gers et al. 2000), peepholes (Gers & Schmidhuber 2000), written
  gate by gate from separate matrices."""
  f = h.shape[-1]
  w = {g: p["input_kernel"][:, k * f:(k + 1) * f] for k, g in enumerate("ifgo")}
  u = {g: p["recurrent_kernel"][:, k * f:(k + 1) * f] for k, g in enumerate("ifgo")}
  b = {g: p["input_bias"][k * f:(k + 1) * f] for k, g in enumerate("ifgo")}
  pi, pf, po = ((p["peephole_i"], p["peephole_f"], p["peephole_o"]) if peephole else (0.0, 0.0, 0.0))
  i = _sig(x @ w["i"] + h @ u["i"] + pi * c + b["i"])
  fg = _sig(x @ w["f"] + h @ u["f"] + pf * c + b["f"])
  g = np.tanh(x @ w["g"] + h @ u["g"] + b["g"])
  c2 = fg * c + i * g
  o = _sig(x @ w["o"] + h @ u["o"] + po * c2 + b["o"])
  return c2, o * np.tanh(c2)


def _sru_np(c, x, p):
  """Lei et al. 2018, eq. 1-4 (highway through ``highway_kernel`` when D != F)."""
  f = c.shape[-1]
  w, wf, wr = (p["input_kernel"][:, k * f:(k + 1) * f] for k in range(3))
  bf, br = p["input_bias"][:f], p["input_bias"][f:]
  vf, vr = p["recurrent_weights"][:f], p["recurrent_weights"][f:]
  fg = _sig(x @ wf + vf * c + bf)
  r = _sig(x @ wr + vr * c + br)
  c2 = fg * c + (1 - fg) * (x @ w)
  xh = x @ p["highway_kernel"] if "highway_kernel" in p else x
  return c2, r * c2 + (1 - r) * xh


def _random_like(rng, shapes):
  return jax.tree.map(lambda s: rng.normal(size=s.shape), shapes)


def _init_shapes(module, *args):
  return jax.eval_shape(module.init, jax.random.key(0), *args)["params"]


# ------------------------------------------------------------------------------------------------------ cells


def test_cells_single_step_match_numpy_float64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    b, d, f = 3, 5, 4
    x, h, c = rng.normal(size=(b, d)), rng.normal(size=(b, f)), rng.normal(size=(b, f))
    # Elman
    cell = rec.SimpleRNNCell(f, **F64)
    p = _random_like(rng, _init_shapes(cell, h, x))
    assert set(p) == {"input_kernel", "input_bias", "recurrent_kernel"}
    new, out = cell.apply({"params": p}, h, x)
    assert new.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(new), _elman_np(h, x, p), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(new))
    # LSTM, with and without peepholes
    for peephole in (False, True):
      cell = rec.LSTMCell(f, peephole=peephole, **F64)
      p = _random_like(rng, _init_shapes(cell, (c, h), x))
      assert ("peephole_o" in p) == peephole
      (c2, h2), out = cell.apply({"params": p}, (c, h), x)
      want_c, want_h = _lstm_np(c, h, x, p, peephole)
      np.testing.assert_allclose(np.asarray(c2), want_c, rtol=1e-12, atol=1e-12)
      np.testing.assert_allclose(np.asarray(h2), want_h, rtol=1e-12, atol=1e-12)
      np.testing.assert_array_equal(np.asarray(out), np.asarray(h2))
    # SRU: D == F (identity highway) and D != F (projected highway)
    for dd in (f, d):
      xs = rng.normal(size=(b, dd))
      cell = rec.SRUCell(f, **F64)
      p = _random_like(rng, _init_shapes(cell, (c, h), xs))
      assert ("highway_kernel" in p) == (dd != f)
      (c2, h2), out = cell.apply({"params": p}, (c, h), xs)
      want_c, want_h = _sru_np(c, xs, p)
      np.testing.assert_allclose(np.asarray(c2), want_c, rtol=1e-12, atol=1e-12)
      np.testing.assert_allclose(np.asarray(h2), want_h, rtol=1e-12, atol=1e-12)
      np.testing.assert_array_equal(np.asarray(out), np.asarray(h2))


def test_lstm_init_forget_bias_and_state_checks():
  cell = rec.LSTMCell(3)
  c = h = jnp.zeros((2, 3))
  p = jax.jit(cell.init)(jax.random.key(0), (c, h), jnp.zeros((2, 4)))["params"]
  np.testing.assert_array_equal(np.asarray(p["input_bias"]), np.r_[np.zeros(3), np.ones(3), np.zeros(6)])
  with pytest.raises(ValueError, match="features=3"):
    jax.eval_shape(cell.init, jax.random.key(0), (jnp.zeros((2, 5)),) * 2, jnp.zeros((2, 4)))


def test_lstm_layer_matches_flax_lstm_cell_and_rnn():
  """Gate mapping: ``input_kernel = [ii | if | ig | io]`` kernels, ``recurrent_kernel = [hi | hf | hg | ho]``
  kernels, ``input_bias = (hi, hf, hg, ho)`` biases (flax's input Dense layers have none); carry ``(c, h)`` in both."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    b, t, d, f = 3, 7, 4, 5
    x = rng.normal(size=(b, t, d))
    lengths = np.array([7, 5, 2])
    mask = np.arange(t)[None] < lengths[:, None]
    ref = nn.RNN(nn.LSTMCell(f, **F64), return_carry=True)
    fp = _random_like(rng, _init_shapes(ref, x))
    mine = {"cell": {"input_kernel": np.concatenate([fp["cell"][g]["kernel"] for g in ("ii", "if", "ig", "io")], 1),
                     "recurrent_kernel": np.concatenate([fp["cell"][g]["kernel"] for g in ("hi", "hf", "hg", "ho")],
                                                        1),
                     "input_bias": np.concatenate([fp["cell"][g]["bias"] for g in ("hi", "hf", "hg", "ho")])}}
    layer = rec.RNN(rec.LSTMCell, f, **F64)
    assert jax.tree.map(np.shape, _init_shapes(layer, x)) == jax.tree.map(np.shape, mine)
    (rc, rh), ry = ref.apply({"params": fp}, x, seq_lengths=jnp.asarray(lengths))
    y, (c, h) = layer.apply({"params": mine}, x, mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(y)[mask], np.asarray(ry)[mask], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(c), np.asarray(rc), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(h), np.asarray(rh), rtol=1e-12, atol=1e-12)
    # and against the numpy equations over the sequence (no mask)
    y, _ = layer.apply({"params": mine}, x)
    cn, hn = np.zeros((b, f)), np.zeros((b, f))
    for s in range(t):
      cn, hn = _lstm_np(cn, hn, x[:, s], mine["cell"], False)
      np.testing.assert_allclose(np.asarray(y[:, s]), hn, rtol=1e-12, atol=1e-12)


def test_lstm_peephole_step_gradient_finite_differences():
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    cell = rec.LSTMCell(3, peephole=True, **F64)
    c, h, x = (jnp.asarray(rng.normal(size=s)) for s in ((2, 3), (2, 3), (2, 4)))
    params = jax.tree.map(jnp.asarray, _random_like(rng, _init_shapes(cell, (c, h), x)))
    w1, w2 = jnp.asarray(rng.normal(size=(2, 3))), jnp.asarray(rng.normal(size=(2, 3)))

    def fn(p, c, h, x):
      (c2, h2), _ = cell.apply({"params": p}, (c, h), x)
      return jnp.sum(w1 * c2) + jnp.sum(w2 * h2)

    check_grads(jax.jit(fn), (params, c, h, x), order=1, modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-7)


# ------------------------------------------------------------------------------------------ masking, wrappers

CELLS = [(rec.SimpleRNNCell, {}), (rec.GRUCell, {}), (rec.LSTMCell, {}), (rec.LSTMCell, {"peephole": True}),
         (rec.SRUCell, {})]


@pytest.mark.parametrize("cell,kw", CELLS, ids=["elman", "gru", "lstm", "lstm_peephole", "sru"])
def test_masked_rnn_equals_unpadded_runs(cell, kw):
  rng = np.random.default_rng(3)
  b, t, d, f = 3, 6, 4, 5
  x = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  lengths = np.array([6, 4, 1])
  mask = jnp.arange(t)[None] < jnp.asarray(lengths)[:, None]
  layer = rec.RNN(cell, f, cell_kwargs=kw)
  v = jax.jit(layer.init)(jax.random.key(0), x)
  apply = jax.jit(lambda x, m: layer.apply(v, x, mask=m))
  y, fin = apply(x, mask)
  y = np.asarray(y)
  for i, n in enumerate(lengths):
    # padded steps leave the state unchanged: the outputs past the length repeat the last valid one
    np.testing.assert_array_equal(y[i, n:], np.broadcast_to(y[i, n - 1], (t - n, f)))
    y1, f1 = apply(x[i:i + 1, :n], jnp.ones((1, n), bool))
    np.testing.assert_allclose(y[i, :n], np.asarray(y1[0]), atol=1e-5)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], fin), jax.tree.map(lambda a: a[0], f1), atol=1e-5)


def test_bidirectional_backward_starts_at_last_valid_step():
  rng = np.random.default_rng(4)
  b, t, d, f = 3, 6, 4, 5
  x = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  lengths = np.array([6, 3, 1])
  mask = jnp.arange(t)[None] < jnp.asarray(lengths)[:, None]
  bi = rec.Bidirectional(rec.LSTMCell, f, cell_kwargs={"peephole": True})
  v = bi.init(jax.random.key(0), x)
  y, (c, h) = jax.jit(lambda x, m: bi.apply(v, x, mask=m))(x, mask)
  chex.assert_shape([y, c, h], [(b, t, 2 * f), (2, b, f), (2, b, f)])
  y = np.asarray(y)
  step = rec.LSTMCell(f, peephole=True)
  # the backward cell's first step is the last valid one, from the zero state
  last = x[jnp.arange(b), jnp.asarray(lengths) - 1]
  _, first = step.apply({"params": v["params"]["backward"]}, step.initial_state((b,)), last)
  np.testing.assert_allclose(y[np.arange(b), lengths - 1, f:], np.asarray(first), atol=1e-6)
  for i, n in enumerate(lengths):
    np.testing.assert_array_equal(y[i, n:, f:], 0.0)  # the carry stays zero through the padding
  i, n = 1, lengths[1]  # the padded sequence equals the unpadded one run alone
  alone, (c1, h1) = jax.jit(bi.apply)(v, x[i:i + 1, :n])
  np.testing.assert_allclose(y[i, :n], np.asarray(alone[0]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(h[:, i]), np.asarray(h1[:, 0]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(c[:, i]), np.asarray(c1[:, 0]), atol=1e-5)
  summed = jax.jit(lambda v, x, m: rec.Bidirectional(rec.LSTMCell, f, merge="sum").apply(v, x, mask=m)[0])(v, x, mask)
  np.testing.assert_allclose(np.asarray(summed), y[..., :f] + y[..., f:], atol=1e-6)


def test_generic_wrappers_with_gru_equal_gru_layers():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
  mask = jnp.arange(5)[None] < jnp.asarray([5, 3, 2])[:, None]
  # Stacked(bidirectional) builds Bidirectional layers where StackedGRU builds BidirectionalGRU ones: both pairs checked
  pairs = [(rec.StackedGRU(6, num_layers=2, bidirectional=True), rec.Stacked(rec.GRUCell, 6, num_layers=2,
                                                                               bidirectional=True)),
           (rec.StackedGRU(6, num_layers=2), rec.Stacked(rec.GRUCell, 6, num_layers=2))]
  for old, new in pairs:
    vo, vn = jax.jit(lambda k: (old.init(k, x), new.init(k, x)))(jax.random.key(7))
    chex.assert_trees_all_equal(vo, vn)
    run = jax.jit(lambda v, x, m: (old.apply(v, x, mask=m), new.apply(v, x, mask=m)))
    chex.assert_trees_all_equal(*run(vo, x, mask))


def test_stacked_lstm_layouts_and_dropout():
  rng = np.random.default_rng(6)
  b, t, d, f = 2, 5, 3, 4
  x = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  st = rec.Stacked(rec.LSTMCell, f, num_layers=2, bidirectional=True, dropout_rate=0.5)
  v = jax.jit(st.init)(jax.random.key(0), x)
  h0 = (jnp.ones((4, b, f)), jnp.ones((4, b, f)))
  run = jax.jit(lambda v, x, h0: (st.apply(v, x), st.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)}),
                                  st.apply(v, x, h0)))
  (y, (c, h)), (yt, _), (y0, _) = run(v, x, h0)
  chex.assert_shape([y, c, h], [(b, t, 2 * f), (4, b, f), (4, b, f)])
  assert not np.allclose(np.asarray(yt), np.asarray(y))  # dropout between the layers
  assert not np.allclose(np.asarray(y0), np.asarray(y))  # initial carries: a layer-major [4, B, F] (c, h) pair
  uni = rec.Stacked(rec.SRUCell, f, num_layers=3)
  y2, (c2, _) = jax.eval_shape(lambda: uni.init_with_output(jax.random.key(0), x)[0])
  chex.assert_shape([y2, c2], [(b, t, f), (3, b, f)])


# ------------------------------------------------------------------------------------------------ truncated BPTT


def test_truncated_bptt_values_and_zero_gradient_across_chunks():
  rng = np.random.default_rng(7)
  b, t, d, f, k = 2, 9, 3, 4, 3
  x = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  full = rec.RNN(rec.LSTMCell, f)
  tbptt = rec.RNN(rec.LSTMCell, f, bptt_chunk=k)
  v = full.init(jax.random.key(0), x)
  chex.assert_trees_all_equal_structs(v, tbptt.init(jax.random.key(0), x))
  # forward values are those of full BPTT (also with a ragged last chunk and a mask)
  mask = jnp.arange(t)[None] < jnp.asarray([9, 5])[:, None]
  fwd = jax.jit(lambda v, x, m: (rec.RNN(rec.LSTMCell, f, bptt_chunk=4).apply(v, x, mask=m),
                                 full.apply(v, x, mask=m)))
  chex.assert_trees_all_close(*fwd(v, x, mask), atol=1e-6)

  def grad_last_chunk(layer, reverse=False):
    chunk = slice(0, k) if reverse else slice(t - k, t)
    return np.asarray(jax.jit(jax.grad(lambda x: jnp.sum(layer.apply(v, x)[0][:, chunk] ** 2)))(x))

  g_t, g_f = grad_last_chunk(tbptt), grad_last_chunk(full)
  assert np.all(g_t[:, :t - k] == 0.0)  # exactly: the carry into the last chunk is a constant
  assert np.all(np.abs(g_t[:, t - k:]).sum(-1) > 0)
  assert np.abs(g_f[:, :k]).sum() > 1e-6  # full BPTT reaches the first chunk
  # reverse scan: the chunk scanned last is the first one; its loss does not reach the later chunks
  rt = rec.RNN(rec.LSTMCell, f, bptt_chunk=k, reverse=True)
  g_r = grad_last_chunk(rt, reverse=True)
  assert np.all(g_r[:, k:] == 0.0) and np.abs(g_r[:, :k]).sum() > 0
  # parameters still get gradients from every chunk
  gp = jax.jit(jax.grad(lambda p: jnp.sum(tbptt.apply(p, x)[0] ** 2)))(v)
  assert all(np.abs(np.asarray(a)).sum() > 0 for a in jax.tree.leaves(gp))


# ------------------------------------------------------------------------------------------------------- MD-RNN


def _md_np(x, p, corner):
  b, hh, ww, _ = x.shape
  f = p["input_bias"].shape[0]
  h = np.zeros((b, hh, ww, f))
  rows = range(hh - 1, -1, -1) if corner[0] == "b" else range(hh)
  cols = list(range(ww - 1, -1, -1) if corner[1] == "r" else range(ww))
  di, dj = (1 if corner[0] == "b" else -1), (1 if corner[1] == "r" else -1)
  for i in rows:
    for j in cols:
      up = h[:, i + di, j] if 0 <= i + di < hh else np.zeros((b, f))
      left = h[:, i, j + dj] if 0 <= j + dj < ww else np.zeros((b, f))
      h[:, i, j] = np.tanh(x[:, i, j] @ p["input_kernel"] + p["input_bias"] + up @ p["vertical_kernel"] +
                           left @ p["horizontal_kernel"])
  return h


def test_mdrnn_matches_numpy_double_loop_each_direction():
  with jax.enable_x64(True):
    rng = np.random.default_rng(8)
    b, hh, ww, d, f = 2, 4, 5, 3, 3
    x = rng.normal(size=(b, hh, ww, d))
    md = rec.MDRNN(f, **F64)
    p = jax.tree.map(lambda a: 0.5 * a, _random_like(rng, _init_shapes(md, x)))
    assert set(p) == set(rec.MD_CORNERS)
    y = np.asarray(jax.jit(lambda p, x: md.apply({"params": p}, x))(p, x))
    assert y.shape == (b, hh, ww, 4 * f)
    for k, corner in enumerate(rec.MD_CORNERS):
      np.testing.assert_allclose(y[..., k * f:(k + 1) * f], _md_np(x, p[corner], corner), rtol=1e-12, atol=1e-12)
    ys = rec.MDRNN(f, merge="sum", **F64).apply({"params": p}, x)
    np.testing.assert_allclose(np.asarray(ys), y.reshape(b, hh, ww, 4, f).sum(3), rtol=1e-12, atol=1e-12)
    one = rec.MDRNN(f, directions=("br",), **F64).apply({"params": {"br": p["br"]}}, x)
    np.testing.assert_allclose(np.asarray(one), _md_np(x, p["br"], "br"), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------- tracing, shard_map


def test_jitted_layer_does_not_retrace():
  layer = rec.Stacked(rec.LSTMCell, 4, num_layers=2, bidirectional=True, cell_kwargs={"peephole": True})
  x = jnp.ones((2, 5, 3))
  v = layer.init(jax.random.key(0), x)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fwd(v, x, m):
    return layer.apply(v, x, mask=m)

  rng = np.random.default_rng(9)
  for n in (5, 3, 1):
    fwd(v, jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32), jnp.arange(5)[None] < jnp.asarray([5, n])[:, None])


def test_default_carries_scan_inside_shard_map():
  from jax.sharding import Mesh, PartitionSpec as P
  if len(jax.devices()) < 2:
    pytest.skip("needs 2 devices")
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  x = jnp.asarray(np.random.default_rng(10).normal(size=(4, 5, 3)), jnp.float32)
  for layer in (rec.RNN(rec.LSTMCell, 6, bptt_chunk=2),):
    v = layer.init(jax.random.key(0), x)
    sharded = jax.shard_map(lambda x: layer.apply(v, x)[0], mesh=mesh, in_specs=P("data"), out_specs=P("data"))
    chex.assert_trees_all_close(*jax.jit(lambda x: (sharded(x), layer.apply(v, x)[0]))(x), atol=1e-6)
  md = rec.MDRNN(3, directions=("tl", "br"))
  img = jnp.ones((4, 3, 3, 2))
  v = md.init(jax.random.key(0), img)
  sharded = jax.shard_map(lambda x: md.apply(v, x), mesh=mesh, in_specs=P("data"), out_specs=P("data"))
  chex.assert_trees_all_close(jax.jit(sharded)(img), md.apply(v, img), atol=1e-6)
