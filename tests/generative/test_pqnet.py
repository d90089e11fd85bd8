"""PQ-NET (issue 15): the ``shapes3d_parts`` builder and its implicit-field samplers, the GRU layers written from their
equations (numpy / ``flax.linen.GRUCell`` / finite differences, masking), the part auto-encoder and part Seq2Seq
(shapes, tiny overfits), the losses and the part assembly."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from research.data import parts3d, pipeline
from research.layers.recurrent import BidirectionalGRU, GRUCell, StackedGRU
from research.models.generative import pqnet
from research.train.generative_metrics import chamfer_distance, voxel_iou

R = parts3d.CONFIGS["small"].resolution
P = parts3d.MAX_PARTS


@pytest.fixture(scope="module")
def data_dir(parts3d_small):
  return parts3d_small


@pytest.fixture(scope="module")
def train(data_dir):
  return parts3d.load_arrays("train", data_dir, "small")


# -------------------------------------------------------------------------------------------------------- dataset


def test_builder_small_config(data_dir, train):
  test = parts3d.load_arrays("test", data_dir, "small")
  assert len(train["index"]) == 120 and len(test["index"]) == 30
  for split in (train, test):
    n = len(split["index"])
    chex.assert_shape([split["voxels"], split["parts"]], (n, R, R, R))
    chex.assert_shape(split["part_boxes"], (n, P, 6))
    np.testing.assert_array_equal(split["index"], np.arange(n))
    np.testing.assert_array_equal(split["category"], np.arange(n) % 3)  # all 3 categories, balanced
    np.testing.assert_array_equal(split["voxels"], (split["parts"] > 0).astype(np.uint8))  # union of parts
    fill = split["voxels"].reshape(n, -1).mean(1)
    assert fill.min() > 0.01 and fill.max() < 0.3, (fill.min(), fill.max())
  allowed = {0: {6, 8}, 1: {3, 5}, 2: {3}}  # chair, table, lamp
  for i in range(len(train["index"])):
    parts, boxes, n = train["parts"][i], train["part_boxes"][i], int(train["num_parts"][i])
    assert n in allowed[int(train["category"][i])]
    assert parts.max() == n and not boxes[n:].any() and not train["part_labels"][i, n:].any()
    centres_y = []
    for k in range(n):
      ijk = np.argwhere(parts == k + 1)
      assert len(ijk) >= 2
      centre = (ijk + 0.5) / R  # every voxel of part k lies in its box, which is voxel-tight
      assert np.all(centre >= boxes[k, :3]) and np.all(centre <= boxes[k, 3:])
      np.testing.assert_allclose(boxes[k, :3], ijk.min(0) / R, atol=1e-6)
      np.testing.assert_allclose(boxes[k, 3:], (ijk.max(0) + 1) / R, atol=1e-6)
      centres_y.append(boxes[k, 1] + boxes[k, 4])
    assert np.all(np.diff(centres_y) <= 1e-6)  # canonical order: top to bottom first


def test_builds_are_deterministic_and_registered(data_dir, train, tmp_path):
  again = parts3d.load_arrays("train", str(tmp_path), "small")
  for k in train:
    np.testing.assert_array_equal(again[k], train[k])
  s = parts3d.split_shape("train", 7, "small")  # the generator reproduces the stored shape
  np.testing.assert_array_equal(s.parts, train["parts"][7])
  np.testing.assert_array_equal(s.part_boxes, train["part_boxes"][7])
  info = pipeline.get_info("shapes3d_parts/small", data_dir)
  assert info.splits == {"train": 120, "test": 30}
  assert "shapes3d_parts" in pipeline.PROCEDURAL
  with pytest.raises(ValueError, match="config"):
    parts3d.builder("tiny", data_dir)


def test_sample_points_agree_with_voxel_grid(train):
  rng = np.random.default_rng(0)
  vox = train["voxels"][0]
  pts, labels = parts3d.sample_points(vox, 4000, rng, surface_fraction=0.5, jitter=False)
  chex.assert_shape(pts, (4000, 3))
  idx = (pts * R - 0.5).round().astype(int)  # exactly voxel centres
  np.testing.assert_allclose(pts, (idx + 0.5) / R, atol=1e-6)
  np.testing.assert_array_equal(labels, vox[idx[:, 0], idx[:, 1], idx[:, 2]])
  near = parts3d.surface_voxels(vox)
  assert near[idx[:, 0], idx[:, 1], idx[:, 2]].mean() >= 0.5  # biased to the surface
  assert 0.1 < labels.mean() < 0.9
  pts, labels = parts3d.sample_points(vox, 4000, rng)  # jittered inside the cells, labels still the grid's
  assert pts.min() >= 0 and pts.max() <= 1
  np.testing.assert_array_equal(labels, parts3d.occupancy_at(vox, pts))
  ijk = np.floor(pts * R).astype(int)
  np.testing.assert_array_equal(labels, vox[ijk[:, 0], ijk[:, 1], ijk[:, 2]])


def test_part_points_are_normalised_to_their_box(train):
  rng = np.random.default_rng(1)
  parts, boxes, n = train["parts"][0], train["part_boxes"][0], int(train["num_parts"][0])
  grids, pts, labels = parts3d.part_points(parts, boxes, n, 500, rng, jitter=False)
  chex.assert_shape(grids, (P, R, R, R))
  chex.assert_shape([pts, labels], [(P, 500, 3), (P, 500)])
  assert not grids[n:].any() and not labels[n:].any()
  for k in range(n):
    g = grids[k]
    for axis in range(3):  # the part fills its box: occupied voxels on both faces of every axis
      assert np.take(g, 0, axis).any() and np.take(g, R - 1, axis).any()
    world = boxes[k, :3] + pts[k] * (boxes[k, 3:] - boxes[k, :3])  # local -> world
    ijk = np.clip(np.floor(world * R).astype(int), 0, R - 1)
    np.testing.assert_array_equal(labels[k], parts[ijk[:, 0], ijk[:, 1], ijk[:, 2]] == k + 1)


def test_assemble_ground_truth_parts_reproduces_voxels(train):
  for i in range(6):
    parts, boxes, n = train["parts"][i], train["part_boxes"][i], int(train["num_parts"][i])
    local_grids = parts3d.normalized_part_voxels(parts, boxes, n, 2 * R)

    def perfect(local):  # a perfect part auto-encoder: each part's occupancy in its own normalised frame
      return np.stack([parts3d.occupancy_at(local_grids[p], np.asarray(local)[p]) for p in range(P)])

    occ = pqnet.assemble(perfect, boxes, R, num_parts=n)
    pred, gt = np.asarray(occ) > 0.5, train["voxels"][i] > 0
    assert float(voxel_iou(jnp.asarray(pred), jnp.asarray(gt))) >= 0.9
    np.testing.assert_array_equal(pred, gt)
    assert chamfer_distance(np.argwhere(pred) / R, np.argwhere(gt) / R) == 0.0
    full = np.asarray(pqnet.assemble(lambda u: jnp.ones(u.shape[:2]), boxes, R, num_parts=n)) > 0.5
    assert np.all(full[gt])  # the union of the boxes covers the shape


# ------------------------------------------------------------------------------------------------------------ GRU


def _gru_numpy(h, x, wi, bi, wh, bh):
  f = h.shape[-1]
  sig = lambda a: 1.0 / (1.0 + np.exp(-a))
  w_r, w_z, w_n = wi[:, :f], wi[:, f:2 * f], wi[:, 2 * f:]
  u_r, u_z, u_n = wh[:, :f], wh[:, f:2 * f], wh[:, 2 * f:]
  r = sig(x @ w_r + h @ u_r + bi[:f])
  z = sig(x @ w_z + h @ u_z + bi[f:2 * f])
  n = np.tanh(x @ w_n + bi[2 * f:] + r * (h @ u_n + bh))
  return (1 - z) * n + z * h


def _random_gru_params(rng, d, f):
  return {"input_kernel": rng.normal(size=(d, 3 * f)), "input_bias": rng.normal(size=(3 * f,)),
          "recurrent_kernel": rng.normal(size=(f, 3 * f)), "recurrent_bias": rng.normal(size=(f,))}


def test_gru_cell_matches_numpy_and_flax():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    b, d, f = 3, 5, 4
    h, x = rng.normal(size=(b, f)), rng.normal(size=(b, d))
    cell = GRUCell(f, dtype=jnp.float64, param_dtype=jnp.float64)
    shapes = jax.eval_shape(cell.init, jax.random.key(0), jnp.asarray(h), jnp.asarray(x))["params"]
    params = _random_gru_params(rng, d, f)  # non-zero biases too
    assert {k: v.shape for k, v in shapes.items()} == {k: v.shape for k, v in params.items()}
    apply = jax.jit(lambda p, h, x: cell.apply({"params": p}, h, x))
    new, out = apply(params, h, x)
    assert new.dtype == jnp.float64
    want = _gru_numpy(h, x, *(params[k] for k in ("input_kernel", "input_bias", "recurrent_kernel",
                                                  "recurrent_bias")))
    np.testing.assert_allclose(np.asarray(new), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(new))
    # flax.linen.GRUCell is the same variant: its per-gate Dense layers map onto the fused kernels
    ref = nn.GRUCell(f, dtype=jnp.float64, param_dtype=jnp.float64)
    fp = {g: {"kernel": rng.normal(size=(d, f)), "bias": rng.normal(size=(f,))} for g in ("ir", "iz", "in")}
    fp |= {g: {"kernel": rng.normal(size=(f, f))} for g in ("hr", "hz")}
    fp["hn"] = {"kernel": rng.normal(size=(f, f)), "bias": rng.normal(size=(f,))}
    mine = {"input_kernel": np.concatenate([fp[g]["kernel"] for g in ("ir", "iz", "in")], 1),
            "input_bias": np.concatenate([fp[g]["bias"] for g in ("ir", "iz", "in")]),
            "recurrent_kernel": np.concatenate([fp[g]["kernel"] for g in ("hr", "hz", "hn")], 1),
            "recurrent_bias": fp["hn"]["bias"]}
    ref_h, _ = jax.jit(lambda p, h, x: ref.apply({"params": p}, h, x))(fp, h, x)
    np.testing.assert_allclose(np.asarray(apply(mine, h, x)[0]), np.asarray(ref_h), rtol=1e-12, atol=1e-12)


def test_gru_step_gradient_finite_differences():
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    cell = GRUCell(3, dtype=jnp.float64, param_dtype=jnp.float64)
    h, x = jnp.asarray(rng.normal(size=(2, 3))), jnp.asarray(rng.normal(size=(2, 4)))
    params = jax.tree.map(jnp.asarray, _random_gru_params(rng, 4, 3))
    w = jnp.asarray(rng.normal(size=(2, 3)))
    fn = jax.jit(lambda p, h, x: jnp.sum(w * cell.apply({"params": p}, h, x)[0]))
    check_grads(fn, (params, h, x), order=1, modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-7)


def test_masked_scan_freezes_state_and_matches_unpadded_runs():
  rng = np.random.default_rng(3)
  b, t, d, f = 3, 6, 4, 5
  x = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  lengths = np.array([6, 4, 1])
  mask = jnp.arange(t)[None] < jnp.asarray(lengths)[:, None]
  gru = StackedGRU(f, num_layers=2, bidirectional=True)
  variables = jax.jit(lambda k: gru.init(k, x, mask=mask))(jax.random.key(1))
  apply = jax.jit(lambda x, m: gru.apply(variables, x, mask=m))
  out, fin = apply(x, mask)
  chex.assert_shape([out, fin], [(b, t, 2 * f), (4, b, f)])
  out, fin = np.asarray(out), np.asarray(fin)
  for i, n in enumerate(lengths):
    # forward: outputs past the length repeat the state at the length, which is also the final state
    np.testing.assert_array_equal(out[i, n:, :f], np.broadcast_to(out[i, n - 1, :f], (t - n, f)))
    np.testing.assert_array_equal(fin[2, i], out[i, n - 1, :f])
    # backward: the state stays h0 = 0 through the padding and ends after step 0
    np.testing.assert_array_equal(out[i, n:, f:], 0.0)
    np.testing.assert_array_equal(fin[3, i], out[i, 0, f:])
  o1, f1 = apply(x[1:2, :4], jnp.ones((1, 4), bool))  # padding changes nothing: the unpadded sequence alone
  np.testing.assert_allclose(out[1, :4], np.asarray(o1[0]), atol=1e-5)
  np.testing.assert_allclose(fin[:, 1], np.asarray(f1[:, 0]), atol=1e-5)
  # shapes of the other layouts (traced only)
  uni = jax.eval_shape(lambda: StackedGRU(f, num_layers=3).init_with_output(jax.random.key(0), x)[0])
  chex.assert_shape(list(uni), [(b, t, f), (3, b, f)])
  one = jax.eval_shape(lambda: BidirectionalGRU(f).init_with_output(jax.random.key(0), x)[0])
  chex.assert_shape(list(one), [(b, t, 2 * f), (2, b, f)])


# ---------------------------------------------------------------------------------------------------------- models

C = 8  # part-code size of the small test models


@pytest.fixture(scope="module")
def part_ae():
  """A small part auto-encoder and its initial parameters (16^3 parts)."""
  model = pqnet.PartAutoencoder(code_dim=C, enc_width=4, width=4, norm="none")
  params = jax.jit(lambda k: model.init(k, jnp.zeros((4, R, R, R, 1)), jnp.zeros((4, 8, 3)), train=False))(
      jax.random.key(0))["params"]
  return model, params


@pytest.fixture(scope="module")
def seq2seq():
  model = pqnet.PartSeq2Seq(code_dim=C, hidden=16, latent_dim=16, head_hidden=16)
  x = jnp.zeros((4, P, model.input_dim))
  params = jax.jit(lambda k: model.init(k, x, jnp.ones((4,), jnp.int32), train=False))(jax.random.key(1))["params"]
  return model, params


def test_model_output_shapes(part_ae, seq2seq):
  ae, params = part_ae
  vox, pts = jnp.zeros((2, R, R, R, 1)), jnp.zeros((2, 7, 3))

  @jax.jit
  def ae_outputs(v):
    codes = ae.apply(v, vox, train=False, method="encode")
    return ae.apply(v, vox, pts, train=True), codes, ae.apply(v, codes, pts, method="decode")

  logits, codes, decoded = ae_outputs({"params": params})
  chex.assert_shape([logits, codes, decoded], [(2, 7), (2, C), (2, 7)])
  np.testing.assert_allclose(np.asarray(decoded), np.asarray(logits), atol=1e-5)  # __call__ = decode(encode)
  assert float(codes.min()) > 0 and float(codes.max()) < 1
  with pytest.raises(ValueError, match="power of two"):
    jax.eval_shape(lambda: ae.apply({"params": params}, jnp.zeros((2, 12, 12, 12, 1)), pts, train=False))
  bn = pqnet.PartAutoencoder(code_dim=C, enc_width=4, width=4)  # BatchNorm: batch_stats updated in training
  v = jax.eval_shape(lambda: bn.init(jax.random.key(0), vox, pts, train=False))
  out, upd = jax.eval_shape(lambda v: bn.apply(v, vox, pts, train=True, mutable=["batch_stats"]), v)
  chex.assert_shape(out, (2, 7))
  assert set(upd) == {"batch_stats"}

  model, params = seq2seq
  n = jnp.array([5, 2, 3])
  x = pqnet.make_part_vectors(jnp.ones((3, 5, C)), jnp.ones((3, 5, 6)), n, P)
  chex.assert_shape(x, (3, 5, C + 6 + P))
  np.testing.assert_array_equal(np.asarray(x[1, 2:]), 0.0)

  @jax.jit
  def s2s_outputs(v):
    out = model.apply(v, x, n, train=False)
    return out, model.apply(v, out["latent"], P, method="decode")

  out, gen = s2s_outputs({"params": params})
  chex.assert_shape([out["codes"], out["boxes"], out["stop_logits"], out["latent"]],
                    [(3, 5, C), (3, 5, 6), (3, 5), (3, 16)])
  free = jax.eval_shape(lambda: model.apply({"params": params}, x, n, train=False, teacher_forcing=False))
  chex.assert_shape([free["codes"], free["boxes"], free["stop_logits"]], [(3, 5, C), (3, 5, 6), (3, 5)])
  chex.assert_shape([gen["codes"], gen["boxes"], gen["stop_logits"]], [(3, P, C), (3, P, 6), (3, P)])
  # step 0 reads the same start token, teacher-forced or not
  np.testing.assert_allclose(np.asarray(gen["codes"][:, 0]), np.asarray(out["codes"][:, 0]), atol=1e-5)
  with pytest.raises(ValueError, match="make_part_vectors"):
    jax.eval_shape(lambda: model.apply({"params": params}, x[..., :-1], n, train=False))


def test_space_to_depth_conv_equals_strided_conv():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8, 3))
  conv = pqnet.Conv3DStride2(5)
  v = conv.init(jax.random.key(1), x)
  v = jax.tree.map(lambda a: a + 0.1, v)  # a non-zero bias
  native = pqnet.Conv3DStride2(5, impl="native").apply(v, x)
  chex.assert_shape(native, (2, 4, 4, 4, 5))
  np.testing.assert_allclose(np.asarray(conv.apply(v, x)), np.asarray(native), atol=1e-5)


def test_losses_and_stop_reading():
  n = jnp.array([3, 1])
  codes, boxes = jnp.ones((2, 4, 5)), jnp.zeros((2, 4, 6))
  pred = {"codes": codes, "boxes": boxes, "stop_logits": jnp.where(pqnet.stop_targets(n, 4) > 0, 30.0, -30.0)}
  seq_loss = jax.jit(pqnet.seq2seq_loss)
  loss, parts = seq_loss(pred, codes, boxes, n)
  assert float(loss) < 1e-6 and float(parts["stop"]) < 1e-6
  junk = {**pred, "codes": pred["codes"].at[0, 3].set(9.0).at[1, 1:].set(-9.0)}  # padded steps only
  assert float(seq_loss(junk, codes, boxes, n)[0]) == float(loss)
  off = {**pred, "codes": pred["codes"] + 1.0}
  np.testing.assert_allclose(float(seq_loss(off, codes, boxes, n)[1]["code"]), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(pqnet.num_parts_from_stop(pred["stop_logits"]), [3, 1])
  np.testing.assert_array_equal(pqnet.num_parts_from_stop(jnp.full((1, 4), -5.0)), [4])
  logits, labels = jnp.array([[0.0, 20.0]]), jnp.array([[1, 1]])
  np.testing.assert_allclose(float(pqnet.occupancy_loss(logits, labels)), 0.125, rtol=1e-5)
  np.testing.assert_allclose(float(pqnet.occupancy_loss(logits, labels, kind="bce")), np.log(2) / 2, rtol=1e-5)


def _fit(loss_fn, params, steps: int, lr: float) -> tuple[float, float]:
  """``steps`` Adam steps on ``loss_fn``: ``(first loss, loss after the steps)`` (read off one more step)."""
  opt = optax.adam(lr)

  @jax.jit
  def step(params, state):
    loss, g = jax.value_and_grad(loss_fn)(params)
    upd, state = opt.update(g, state, params)
    return optax.apply_updates(params, upd), state, loss

  state, losses = opt.init(params), []
  for _ in range(steps + 1):
    params, state, loss = step(params, state)
    losses.append(loss)
  return float(losses[0]), float(losses[-1])


def test_part_autoencoder_overfits_four_parts(train, part_ae):
  rng = np.random.default_rng(4)
  vox, pts, labels = [], [], []
  for i in range(2):  # the first 2 parts of 2 shapes
    g, p, lab = parts3d.part_points(train["parts"][i], train["part_boxes"][i], int(train["num_parts"][i]), 256, rng)
    vox.append(g[:2])
    pts.append(p[:2])
    labels.append(lab[:2])
  vox = jnp.asarray(np.concatenate(vox), jnp.float32)[..., None]
  pts, labels = jnp.asarray(np.concatenate(pts)), jnp.asarray(np.concatenate(labels))
  ae, params = part_ae
  loss_fn = lambda p: pqnet.occupancy_loss(ae.apply({"params": p}, vox, pts, train=True), labels, kind="bce")
  first, final = _fit(loss_fn, params, 200, 3e-3)
  assert final < 0.5 * first, (first, final)


def test_seq2seq_overfits_four_shapes_with_teacher_forcing(train, seq2seq):
  rng = np.random.default_rng(5)
  n = jnp.asarray(train["num_parts"][:4])
  codes = jnp.asarray(rng.uniform(size=(4, P, C)), jnp.float32)  # stand-ins for part codes in (0, 1)
  boxes = jnp.asarray(train["part_boxes"][:4])
  x = pqnet.make_part_vectors(codes, boxes, n, P)
  model, params = seq2seq

  def loss_fn(p):
    return pqnet.seq2seq_loss(model.apply({"params": p}, x, n, train=True), codes, boxes, n, stop_weight=1.0)[0]

  first, final = _fit(loss_fn, params, 150, 3e-3)
  assert final < 0.5 * first, (first, final)


def test_default_states_scan_inside_shard_map():
  """Default (zero) initial states vary like the batch, so the GRUs and the Seq2Seq decoder scan inside the loop's
  data-parallel ``shard_map`` (a plain ``jnp.zeros`` carry is rejected there); values equal the unsharded run."""
  from jax.sharding import Mesh, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5, 3)), jnp.float32)
  gru = StackedGRU(6, num_layers=2, bidirectional=True)
  v = gru.init(jax.random.key(0), x)
  sharded = jax.shard_map(lambda x: gru.apply(v, x)[0], mesh=mesh, in_specs=P("data"), out_specs=P("data"))
  chex.assert_trees_all_close(jax.jit(sharded)(x), gru.apply(v, x)[0], atol=1e-6)
  s2s = pqnet.PartSeq2Seq(code_dim=4, hidden=5, num_layers=1, latent_dim=3, max_parts=3, head_hidden=6)
  latent = jnp.ones((4, 3))
  vs = s2s.init(jax.random.key(1), latent, method=s2s.decode)
  dec = jax.shard_map(lambda z: s2s.apply(vs, z, method=s2s.decode)["codes"], mesh=mesh, in_specs=P("data"),
                      out_specs=P("data"))
  chex.assert_trees_all_close(jax.jit(dec)(latent), s2s.apply(vs, latent, method=s2s.decode)["codes"], atol=1e-6)
