"""LR range test (Smith 2017): hand-computed schedule values, the suggestion rule on curves whose minimum / steepest
point / blow-up are known by construction, the early stops, and a toy problem whose divergence LR is known."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.train import lr_finder


def test_exponential_lrs_and_schedule_hand_values():
  np.testing.assert_allclose(lr_finder.exponential_lrs(1e-3, 10.0, 5), [1e-3, 1e-2, 1e-1, 1.0, 10.0], rtol=1e-12)
  np.testing.assert_allclose(lr_finder.exponential_lrs(0.5, 2.0, 3), [0.5, 1.0, 2.0], rtol=1e-12)
  sched = lr_finder.exponential_schedule(1e-3, 10.0, 5)
  np.testing.assert_allclose([float(sched(t)) for t in range(8)], [1e-3, 1e-2, 1e-1, 1.0, 10.0, 10.0, 10.0, 10.0],
                             rtol=1e-6)  # float32; constant at max_lr after the ramp
  with pytest.raises(ValueError, match="min_lr < max_lr"):
    lr_finder.exponential_lrs(1.0, 0.1, 10)
  with pytest.raises(ValueError, match="at least 2 steps"):
    lr_finder.exponential_lrs(0.1, 1.0, 1)


def test_centred_average_has_no_lag():
  x = np.array([5.0, 4, 3, 2, 1, 2, 3, 4, 5])
  sm = lr_finder.centred_average(x, 3)
  assert int(np.argmin(sm)) == 4  # a causal EMA would put the minimum later
  assert sm[0] == pytest.approx(4.5) and sm[4] == pytest.approx(5 / 3)


LRS_41 = lr_finder.exponential_lrs(1e-3, 10.0, 41)  # lr_i = 1e-3 * 10**(i / 10): lr_10 = 0.01, lr_20 = 0.1


def _collapse_curve():
  """Loss 2 + cos(pi i / 20) falls from 3 to 1 at i = 20 (steepest at i = 10), rises by 0.3 a step (1.3, 1.6, 1.9,
  2.2 at i = 24: first above 1 + (3 - 1) / 2 = 2, the blow-up) and collapses to 0.5 (below the minimum) from i = 30."""
  i = np.arange(41)
  return np.where(i <= 20, 2 + np.cos(np.pi * i / 20), np.where(i < 30, 1 + 0.3 * (i - 20), 0.5))


def test_analyse_on_a_curve_with_known_minimum_steepest_point_and_blow_up():
  res = lr_finder.analyse(LRS_41, _collapse_curve(), window=1)  # window 1: no smoothing, indices read off directly
  np.testing.assert_allclose(res.smoothed, _collapse_curve())
  assert res.lr_min_loss == pytest.approx(0.1, rel=1e-12)  # i = 20, not the collapsed tail (cut at i = 24)
  assert res.suggested_max_lr == pytest.approx(0.1 / 3, rel=1e-12)
  assert res.lr_steepest == pytest.approx(0.01, rel=1e-12)  # i = 10
  assert res.cut_lr == pytest.approx(10 ** -0.6, rel=1e-12)  # i = 24
  assert not res.stopped_early
  assert lr_finder.analyse(LRS_41, _collapse_curve(), window=1, divisor=10).suggested_max_lr == pytest.approx(0.01)
  # A non-finite loss truncates the curve there; the suggestion is unchanged.
  nan_tail = _collapse_curve()
  nan_tail[27] = np.nan
  res = lr_finder.analyse(LRS_41, nan_tail, window=1)
  assert len(res.lrs) == 27 and res.lr_min_loss == pytest.approx(0.1) and res.cut_lr == pytest.approx(10 ** -0.6)


def test_analyse_with_the_default_window_on_a_v_shaped_curve():
  """Loss 1 + 0.1 |i - 20|: the 9-step centred average keeps its minimum at i = 20 (1 + 0.1 * 20/9) and first
  exceeds the half-way line 1.2222 + (2.8 - 1.2222) / 2 = 2.0111 at i = 31 (1 + 0.1 * 11 = 2.1; i = 30 gives 2.0)."""
  losses = 1 + 0.1 * np.abs(np.arange(41) - 20)
  res = lr_finder.analyse(LRS_41, losses)
  assert res.smoothed[20] == pytest.approx(1 + 2 / 9) and res.smoothed[0] == pytest.approx(2.8)  # (3+2.9+...+2.6)/5
  assert res.lr_min_loss == pytest.approx(0.1, rel=1e-12) and res.suggested_max_lr == pytest.approx(0.1 / 3)
  assert res.cut_lr == pytest.approx(10 ** 0.1, rel=1e-12)  # i = 31


def test_run_range_test_stops_at_a_non_finite_loss_and_on_divergence():
  script = [3.0, 2.0, 1.5, 1.2, 1.0, 1.1, 1.3, float("nan"), 1.0, 1.0]
  steps_run = []

  def step_fn(state, batch):
    steps_run.append(batch)
    return state + 1, script[batch]

  res = lr_finder.run_range_test(step_fn, 0, iter(range(10)), LRS_41[:10], window=1)
  assert steps_run == list(range(8)) and res.stopped_early and len(res.lrs) == 7  # NaN at step 7: stop, drop it
  assert res.lr_min_loss == pytest.approx(LRS_41[4])  # the 1.0 at step 4
  # EMA (beta 0.9, bias-corrected) above 4x its running minimum, checked once i > window (= 1).
  script = [1.0, 1.0, 1.0, 100.0, 100.0, 100.0]
  steps_run.clear()
  res = lr_finder.run_range_test(step_fn, 0, iter(range(6)), LRS_41[:6], window=1)
  # Bias-corrected EMA: exactly 1 for steps 0-2, then (0.9 * 0.271 + 0.1 * 100) / (1 - 0.9^4) = 29.8 > 4 x 1 at step 3.
  assert steps_run == [0, 1, 2, 3] and res.stopped_early


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
