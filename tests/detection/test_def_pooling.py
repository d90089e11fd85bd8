"""Def-pooling (DeepID-Net) against a float64 numpy loop reference, finite differences and max pooling."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from research.layers.def_pooling import DefPooling, def_pool, deformation_features


def _np_def_pool(x, penalty, k, s, padding):
  """Loops over b, y, x, c and the window; features [dx^2, dy^2, dx, dy] from the window centre (k-1)/2."""
  x, penalty = np.asarray(x, np.float64), np.asarray(penalty, np.float64)
  b_, h, w, c_ = x.shape
  (kh, kw), (sy, sx) = k, s
  if padding == "VALID":
    ho, wo, pt, pl = (h - kh) // sy + 1, (w - kw) // sx + 1, 0, 0
  else:
    ho, wo = -(-h // sy), -(-w // sx)
    pt, pl = max((ho - 1) * sy + kh - h, 0) // 2, max((wo - 1) * sx + kw - w, 0) // 2
  out = np.zeros((b_, ho, wo, c_))
  disp = np.zeros((b_, ho, wo, c_, 2), np.int64)
  for b in range(b_):
    for y in range(ho):
      for xx in range(wo):
        for c in range(c_):
          best, arg = -np.inf, None
          for i in range(kh):
            for j in range(kw):
              r, q = y * sy - pt + i, xx * sx - pl + j
              if not (0 <= r < h and 0 <= q < w):
                continue
              dy, dx = i - (kh - 1) / 2, j - (kw - 1) / 2
              v = x[b, r, q, c] - (penalty[c, 0] * dx * dx + penalty[c, 1] * dy * dy + penalty[c, 2] * dx
                                   + penalty[c, 3] * dy)
              if v > best:
                best, arg = v, (i - kh // 2, j - kw // 2)
          out[b, y, xx, c], disp[b, y, xx, c] = best, arg
  return out, disp


def _inputs(shape=(2, 7, 6, 3), seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape)
  penalty = np.concatenate([rng.uniform(0.05, 0.5, (shape[-1], 2)), rng.normal(0, 0.3, (shape[-1], 2))], -1)
  return x, penalty


@pytest.mark.parametrize("k,s,padding", [(3, 3, "VALID"), (3, 2, "SAME"), ((2, 3), (1, 2), "VALID"),
                                         (2, 2, "SAME")])
def test_matches_numpy_loop(k, s, padding):
  x, penalty = _inputs()
  kk, ss = (k, k) if isinstance(k, int) else k, (s, s) if isinstance(s, int) else s
  want, want_disp = _np_def_pool(x, penalty, kk, ss, padding)
  out, disp = jax.jit(lambda x, p: def_pool(x, p, kernel_size=k, stride=s, padding=padding))(
      jnp.asarray(x, jnp.float32), jnp.asarray(penalty, jnp.float32))
  chex.assert_shape(out, want.shape)
  chex.assert_shape(disp, want.shape + (2,))
  assert disp.dtype == jnp.int32
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(disp), want_disp)


def test_gradients_finite_differences_float64():
  x, penalty = _inputs((1, 5, 6, 2), seed=1)
  with jax.enable_x64(True):
    xs, ps = jnp.asarray(x, jnp.float64), jnp.asarray(penalty, jnp.float64)
    fn = jax.jit(lambda x, p: def_pool(x, p, kernel_size=3, stride=2, padding="SAME")[0])
    check_grads(fn, (xs, ps), order=1, modes=("rev",), eps=1e-6)
    # and the penalty gradient by hand: d out / d penalty[c] = -features of the selected tap
    disp = def_pool(xs, ps, kernel_size=3, stride=2, padding="SAME")[1]
    g = jax.grad(lambda p: fn(xs, p).sum())(ps)
    feats = deformation_features(3).reshape(3, 3, 4)
    d = np.asarray(disp) + 1
    want = -feats[d[..., 0], d[..., 1]].sum((0, 1, 2))  # [C, 4]
    np.testing.assert_allclose(np.asarray(g), want, atol=1e-12)


@pytest.mark.parametrize("k,s,padding", [(3, 2, "VALID"), (2, 2, "SAME"), (3, 1, "SAME")])
def test_zero_penalty_is_max_pool(k, s, padding):
  x, _ = _inputs()
  x = jnp.asarray(x, jnp.float32)
  out, _ = def_pool(x, jnp.zeros((3, 4)), kernel_size=k, stride=s, padding=padding)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(nn.max_pool(x, (k, k), (s, s), padding)))


def test_huge_penalty_picks_centre():
  x, _ = _inputs((2, 9, 10, 3))
  x = jnp.asarray(x, jnp.float32)
  out, disp = def_pool(x, jnp.tile(jnp.asarray([1e4, 1e4, 0.0, 0.0]), (3, 1)), kernel_size=3, stride=3)
  np.testing.assert_allclose(np.asarray(out), np.asarray(x[:, 1::3, 1:9:3]))
  assert not np.asarray(disp).any()
  # a strong linear weight on dx moves the choice to the left column (dx = -1 is the cheapest)
  _, disp = def_pool(x, jnp.tile(jnp.asarray([0.0, 1e4, 1e4, 0.0]), (3, 1)), kernel_size=3, stride=3)
  assert (np.asarray(disp[..., 0]) == 0).all() and (np.asarray(disp[..., 1]) == -1).all()


def test_module_init_params_and_jit():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
  m = DefPooling(kernel_size=2)
  v = m.init(jax.random.key(1), x)
  chex.assert_shape(v["params"]["penalty"], (5, 4))
  w = m.penalty_weights(v["params"]["penalty"])
  np.testing.assert_allclose(np.asarray(w[:, :2]), 0.01, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(w[:, 2:]), 0.0)
  y = jax.jit(m.apply)(v, x)
  chex.assert_shape(y, (2, 4, 4, 5))
  # the small initial penalty: between max pooling and max pooling minus the largest cost (2 * 0.01 * 0.5^2)
  mp = np.asarray(nn.max_pool(x, (2, 2), (2, 2)))
  assert (np.asarray(y) <= mp + 1e-6).all() and (np.asarray(y) >= mp - 0.005 - 1e-6).all()
  g = jax.grad(lambda v: m.apply(v, x).sum())(v)
  assert np.isfinite(np.asarray(g["params"]["penalty"])).all() and np.abs(g["params"]["penalty"]).sum() > 0
  # unconstrained variant stores the weights as they are used
  v2 = DefPooling(kernel_size=3, strides=2, padding="SAME", nonneg_quadratic=False).init(jax.random.key(1), x)
  np.testing.assert_allclose(np.asarray(v2["params"]["penalty"][:, :2]), 0.01)


def test_bad_arguments():
  x = jnp.zeros((1, 4, 4, 2))
  with pytest.raises(ValueError):
    def_pool(x, jnp.zeros((3, 4)), kernel_size=2)
  with pytest.raises(ValueError):
    def_pool(x, jnp.zeros((2, 4)), kernel_size=2, padding="FULL")
  with pytest.raises(ValueError):
    def_pool(x, jnp.zeros((2, 4)), kernel_size=5)
