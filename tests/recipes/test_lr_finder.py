"""LR range test (Smith 2017): schedule, smoothing, and a toy problem whose divergence LR is known."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.train import lr_finder


def test_exponential_schedule_matches_lrs():
  lrs = lr_finder.exponential_lrs(1e-4, 1.0, 41)
  assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1.0)
  np.testing.assert_allclose(np.diff(np.log(lrs)), np.log(1e4) / 40, rtol=1e-9)
  sched = lr_finder.exponential_schedule(1e-4, 1.0, 41)
  np.testing.assert_allclose([float(sched(t)) for t in range(41)], lrs, rtol=1e-5)
  with pytest.raises(ValueError, match="min_lr < max_lr"):
    lr_finder.exponential_lrs(1.0, 0.1, 10)


def test_centred_average_has_no_lag():
  x = np.array([5.0, 4, 3, 2, 1, 2, 3, 4, 5])
  sm = lr_finder.centred_average(x, 3)
  assert int(np.argmin(sm)) == 4  # a causal EMA would put the minimum later
  assert sm[0] == pytest.approx(4.5) and sm[4] == pytest.approx(5 / 3)


def test_range_test_on_least_squares_finds_a_sensible_lr(tmp_path):
  """Full-batch gradient descent on 0.5*||Aw - b||^2/n is stable iff lr < 2/L (L = largest Hessian eigenvalue):
  the suggested max LR must lie below the divergence point and within a decade or two of it."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(64, 8)).astype(np.float32) * np.linspace(0.3, 2.0, 8).astype(np.float32)
  b = (a @ rng.normal(size=8) + 0.1 * rng.normal(size=64)).astype(np.float32)
  lam_max = float(np.linalg.eigvalsh(a.T @ a / 64).max())
  lrs = lr_finder.exponential_lrs(1e-3 / lam_max, 100.0 / lam_max, 120)
  tx = optax.sgd(lr_finder.exponential_schedule(float(lrs[0]), float(lrs[-1]), 120))

  def loss_fn(w):
    return 0.5 * jnp.mean(jnp.square(a @ w - b))

  @jax.jit
  def step(state, _):
    w, opt = state
    loss, g = jax.value_and_grad(loss_fn)(w)
    u, opt = tx.update(g, opt, w)
    return (optax.apply_updates(w, u), opt), loss

  w0 = jnp.zeros(8)
  res = lr_finder.run_range_test(step, (w0, tx.init(w0)), iter(range(10**6)), lrs)
  assert res.stopped_early  # it diverges past 2/L and the test stops
  assert res.lrs[-1] < 100.0 / lam_max
  assert 0.05 / lam_max < res.suggested_max_lr < 2.0 / lam_max, (res.suggested_max_lr * lam_max)
  # The loss turns up only a little after 2/L (divergence grows geometrically from the noise floor).
  assert 0.5 / lam_max < res.lr_min_loss < 8.0 / lam_max
  assert res.lr_steepest <= res.lr_min_loss
  lr_finder.plot(res, str(tmp_path / "range.png"))
  lr_finder.write_json(res, str(tmp_path / "range.json"))
  assert (tmp_path / "range.png").stat().st_size > 1000
