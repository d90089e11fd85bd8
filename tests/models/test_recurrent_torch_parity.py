"""PyTorch parity of the recurrent layers from golden files (no torch at test time): ``nn.LSTM``, ``nn.GRU`` and
``nn.RNN(nonlinearity="tanh")`` runs (1 / 2 layers, uni- / bidirectional, batch_first, random initial states, a
padded batch through ``pack_padded_sequence``) written by ``golden/make_recurrent_golden.py`` are replayed with
``research.layers.recurrent.Stacked`` on weights mapped by ``params_from_torch``: outputs, final states and the input
/ initial-state gradients of the same scalar loss agree (float64 to 1e-10, float32 to 1e-5)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers import recurrent as rec

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "recurrent_torch.npz")


def _cases() -> dict[str, dict[str, np.ndarray]]:
  with np.load(GOLDEN, allow_pickle=False) as z:
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in z.files:
      if "." in key:
        case, name = key.split(".", 1)
        out.setdefault(case, {})[name] = z[key]
  return out


CASES = _cases()


def _replay(case: dict[str, np.ndarray], dtype):
  """(out, h_n, c_n, dx, dh0, dc0) of our Stacked layer on the golden case's weights and inputs, in ``dtype``."""
  name = case["_name"]
  mode = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN_TANH"}[name.split("_")[0]]
  layers, bidirectional = int(name.split("_")[1][1:]), name.split("_")[2] == "bi"
  sd = {k[len("param."):]: v for k, v in case.items() if k.startswith("param.")}
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), rec.params_from_torch(sd, mode, num_layers=layers,
                                                                               bidirectional=bidirectional))
  hidden = case["h0"].shape[-1]
  layer = rec.Stacked(rec.TORCH_CELLS[mode], hidden, num_layers=layers, bidirectional=bidirectional, dtype=dtype,
                      param_dtype=dtype)
  t = case["x"].shape[1]
  mask = jnp.asarray(np.arange(t)[None, :] < case["lengths"][:, None])
  lstm = mode == "LSTM"
  cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731

  def run(x, h0, c0):
    y, fin = layer.apply({"params": params}, x, (c0, h0) if lstm else h0, mask=mask)
    c_n, h_n = fin if lstm else (None, fin)
    return y, h_n, c_n

  def loss(x, h0, c0):
    y, h_n, c_n = run(x, h0, c0)
    total = jnp.sum(y * cast(case["g_out"])) + jnp.sum(h_n * cast(case["g_h"]))
    return total + (jnp.sum(c_n * cast(case["g_c"])) if lstm else 0.0), (y, h_n, c_n)

  x, h0 = cast(case["x"]), cast(case["h0"])
  c0 = cast(case["c0"]) if lstm else jnp.zeros_like(h0)
  (value, (y, h_n, c_n)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(x, h0, c0)
  return y, h_n, c_n, grads, float(value)


def _params():
  """Default suite: the 2-layer and packed cases in float64 (their first layers are the 1-layer cases' layouts) and
  the packed 2-layer bidirectional ones in float32; every other (case, precision) is marked slow."""
  for name in sorted(CASES):
    slow64 = (pytest.mark.slow,) if name.endswith(("l1_uni", "l1_bi")) else ()
    yield pytest.param(name, "float64", id=f"{name}-float64", marks=slow64)
    slow32 = () if name.endswith("l2_bi_packed") else (pytest.mark.slow,)
    yield pytest.param(name, "float32", id=f"{name}-float32", marks=slow32)


@pytest.mark.parametrize("name,precision", list(_params()))
def test_matches_torch(name, precision):
  case = dict(CASES[name], _name=name)
  tol = 1e-10 if precision == "float64" else 1e-5
  with jax.enable_x64(precision == "float64"):
    y, h_n, c_n, (dx, dh0, dc0), loss = _replay(case, jnp.float64 if precision == "float64" else jnp.float32)
  valid = np.arange(case["x"].shape[1])[None, :] < case["lengths"][:, None]
  # outputs at valid steps (past a length torch's pad_packed_sequence writes zeros, ours repeat the frozen state)
  np.testing.assert_allclose(np.asarray(y)[valid], case["out"][valid], rtol=0, atol=tol)
  np.testing.assert_allclose(np.asarray(h_n), case["h_n"], rtol=0, atol=tol)
  np.testing.assert_allclose(np.asarray(dx), case["dx"], rtol=0, atol=tol * 10)
  np.testing.assert_allclose(np.asarray(dh0), case["dh0"], rtol=0, atol=tol * 10)
  if "c_n" in case:
    np.testing.assert_allclose(np.asarray(c_n), case["c_n"], rtol=0, atol=tol)
    np.testing.assert_allclose(np.asarray(dc0), case["dc0"], rtol=0, atol=tol * 10)
  np.testing.assert_allclose(loss, float(case["loss"]), rtol=tol)


def test_golden_file_covers_the_layouts():
  assert len(CASES) == 18
  for mode in ("lstm", "gru", "rnn"):
    assert {f"{mode}_l1_uni", f"{mode}_l2_uni", f"{mode}_l1_bi", f"{mode}_l2_bi", f"{mode}_l2_bi_packed",
            f"{mode}_l1_uni_packed"} <= set(CASES)
  packed = CASES["lstm_l2_bi_packed"]
  assert list(packed["lengths"]) == [7, 4, 1]
  assert np.all(packed["out"][2, 1:] == 0)  # pad_packed_sequence's zeros: the outputs really are padded
  assert os.path.getsize(GOLDEN) < 300 * 1024


def test_params_from_torch_mapping_and_errors():
  rng = np.random.default_rng(0)
  f, d = 3, 2
  w_ih, w_hh, b_ih, b_hh = rng.normal(size=(9, d)), rng.normal(size=(9, f)), rng.normal(size=9), rng.normal(size=9)
  p = rec.cell_params_from_torch("GRU", w_ih, w_hh, b_ih, b_hh)
  np.testing.assert_array_equal(p["input_kernel"], w_ih.T)
  np.testing.assert_array_equal(p["input_bias"], np.r_[b_ih[:6] + b_hh[:6], b_ih[6:]])
  np.testing.assert_array_equal(p["recurrent_bias"], b_hh[6:])
  p = rec.cell_params_from_torch("RNN_TANH", w_ih[:3], w_hh[:3], None, None)  # bias=False
  np.testing.assert_array_equal(p["input_bias"], 0.0)
  sd = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b_ih, "bias_hh_l0": b_hh}
  with pytest.raises(ValueError, match="must be one of"):
    rec.cell_params_from_torch("RNN_RELU", w_ih, w_hh)
  with pytest.raises(ValueError, match=r"weight_ih \(9, 2\) must be \[4F, D\]"):
    rec.params_from_torch(sd, "LSTM")
  with pytest.raises(ValueError, match="no weight_ih_l1"):
    rec.params_from_torch(sd, "GRU", num_layers=2)
  with pytest.raises(ValueError, match="check num_layers / bidirectional"):
    rec.params_from_torch({**sd, "weight_ih_l0_reverse": w_ih}, "GRU")
  # the mapped tree has exactly the shapes Stacked initialises
  layer = rec.Stacked(rec.GRUCell, f)
  shapes = jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((1, 4, d)))["params"]
  assert jax.tree.map(np.shape, rec.params_from_torch(sd, "GRU")) == jax.tree.map(lambda s: s.shape, shapes)
