"""Learning-rate range test (L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017,
§3.3; used to pick the one-cycle bounds in Smith & Topin, "Super-Convergence", 2017, §3 / seed 003 §1.1).

Train for a short run while the learning rate grows exponentially from ``min_lr`` to ``max_lr``
(``lr_t = min_lr · (max_lr / min_lr)^(t / (T - 1))``), record the training loss at every step and stop early
once the loss has clearly diverged (causal bias-corrected EMA above ``diverge_factor`` × its minimum, or not
finite).

Suggestion rule (documented, deterministic): smooth the recorded losses with a centred moving average over
``window`` steps (no lag, unlike the EMA); cut the curve where it first blows up, i.e. where the smoothed loss
has given back more than ``giveback`` (default half) of the improvement it had made over its starting value
(a classifier whose training collapses settles at ln C, far below any fixed multiple of its minimum, so the
4x-the-minimum stop alone does not find that point); ``lr_min_loss`` is the LR of the minimum of the smoothed
loss before the cut — Smith's upper bound, "where the loss stops decreasing / becomes ragged" — and the
suggested one-cycle maximum LR is ``lr_min_loss / divisor`` (default 3: "slightly less" than the point where
the loss turns up; fastai's ``lr_min / 10`` is the more conservative variant). ``lr_steepest`` (the most
negative slope of the smoothed loss in log-LR before the minimum) is reported as the lower bound of the cycle.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np
import optax

RULE = ("suggested_max_lr = lr_min_loss / divisor, lr_min_loss = argmin of the centred moving average "
        "(window steps) of the training loss before it first gives back `giveback` of its improvement")


def exponential_lrs(min_lr: float, max_lr: float, num_steps: int) -> np.ndarray:
  """``num_steps`` learning rates growing geometrically from ``min_lr`` to ``max_lr`` (both included)."""
  if not 0 < min_lr < max_lr:
    raise ValueError(f"need 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
  if num_steps < 2:
    raise ValueError(f"the range test needs at least 2 steps, got {num_steps}")
  return min_lr * (max_lr / min_lr) ** (np.arange(num_steps) / (num_steps - 1))


def exponential_schedule(min_lr: float, max_lr: float, num_steps: int) -> optax.Schedule:
  """The optax schedule of ``exponential_lrs`` (step t -> lr_t; constant at ``max_lr`` after the end)."""
  exponential_lrs(min_lr, max_lr, num_steps)  # validates
  ratio = math.log(max_lr / min_lr) / (num_steps - 1)

  def schedule(count):
    t = jax.numpy.minimum(count, num_steps - 1)
    return min_lr * jax.numpy.exp(ratio * t)

  return schedule


def ema(losses: np.ndarray, beta: float = 0.9) -> np.ndarray:
  """Bias-corrected exponential moving average (causal): used for the divergence stop."""
  out, avg = np.empty(len(losses)), 0.0
  for i, l in enumerate(losses):
    avg = beta * avg + (1 - beta) * l
    out[i] = avg / (1 - beta ** (i + 1))
  return out


def centred_average(losses: np.ndarray, window: int) -> np.ndarray:
  """Centred moving average with a window shrinking at the ends (no lag)."""
  n, h = len(losses), max(window, 1) // 2
  c = np.concatenate([[0.0], np.cumsum(losses)])
  lo = np.clip(np.arange(n) - h, 0, n)
  hi = np.clip(np.arange(n) + h + 1, 0, n)
  return (c[hi] - c[lo]) / (hi - lo)


@dataclasses.dataclass
class LRRangeResult:
  lrs: np.ndarray  # learning rates of the recorded steps
  losses: np.ndarray  # raw training loss at each recorded step
  smoothed: np.ndarray  # centred moving average of ``losses``
  lr_min_loss: float
  lr_steepest: float
  suggested_max_lr: float
  divisor: float
  stopped_early: bool
  cut_lr: float | None = None  # LR where the smoothed loss first blew up (None: never)
  seconds: float = 0.0

  def summary(self) -> dict[str, Any]:
    return {"lr_min_loss": self.lr_min_loss, "lr_steepest": self.lr_steepest,
            "suggested_max_lr": self.suggested_max_lr, "divisor": self.divisor, "rule": RULE,
            "steps_recorded": int(len(self.lrs)), "stopped_early": self.stopped_early, "cut_lr": self.cut_lr,
            "min_lr": float(self.lrs[0]), "last_lr": float(self.lrs[-1]), "seconds": self.seconds}


def blow_up_index(smoothed: np.ndarray, giveback: float = 0.5, min_gain: float = 0.05) -> int | None:
  """First index where ``smoothed`` exceeds ``best + giveback * (smoothed[0] - best)`` (best = running minimum),
  counted only once the loss has improved by ``min_gain`` (relative) so start-up noise is not a blow-up."""
  best = smoothed[0]
  for i, v in enumerate(smoothed):
    best = min(best, v)
    gain = smoothed[0] - best
    if gain > min_gain * abs(smoothed[0]) and v > best + giveback * gain:
      return i
  return None


def analyse(lrs: np.ndarray, losses: np.ndarray, *, window: int = 9, divisor: float = 3.0,
            giveback: float = 0.5, stopped_early: bool = False) -> LRRangeResult:
  """Applies the suggestion rule (module docstring) to a recorded range test."""
  lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
  finite = np.isfinite(losses)
  if finite.sum() < 3:
    raise ValueError("the range test recorded fewer than 3 finite losses; lower min_lr")
  n = int(np.argmax(~finite)) if not finite.all() else len(losses)  # up to the first non-finite loss
  lrs, losses = lrs[:n], losses[:n]
  smoothed = centred_average(losses, window)
  cut = blow_up_index(smoothed, giveback)
  i_min = int(np.argmin(smoothed[:cut]))
  slope = np.gradient(smoothed, np.log(lrs))
  i_steep = int(np.argmin(slope[: max(i_min, 1)]))
  return LRRangeResult(lrs=lrs, losses=losses, smoothed=smoothed, lr_min_loss=float(lrs[i_min]),
                       lr_steepest=float(lrs[i_steep]), suggested_max_lr=float(lrs[i_min] / divisor),
                       divisor=divisor, stopped_early=stopped_early,
                       cut_lr=None if cut is None else float(lrs[cut]))


class RangeRecorder:
  """Records the training loss of each step of a range test and decides when to stop: when the loss is not
  finite, when its bias-corrected EMA exceeds ``diverge_factor`` times its running minimum, or ``3 * window``
  steps after the EMA first blew up (``blow_up_index``; the extra steps show the rise in the plot)."""

  def __init__(self, num_steps: int, *, beta: float = 0.9, diverge_factor: float = 4.0, window: int = 9,
               giveback: float = 0.5):
    self.num_steps, self.beta, self.diverge_factor, self.window, self.giveback = (
        num_steps, beta, diverge_factor, window, giveback)
    self.losses: list[float] = []
    self.stopped = False
    self._emas: list[float] = []
    self._avg, self._best, self._blown = 0.0, math.inf, None

  def __call__(self, loss: float) -> bool:
    """Records one step's loss; True = stop now."""
    i = len(self.losses)
    loss = float(loss)
    self.losses.append(loss)
    if not math.isfinite(loss):
      self.stopped = True
      return True
    self._avg = self.beta * self._avg + (1 - self.beta) * loss
    smooth = self._avg / (1 - self.beta ** (i + 1))
    self._best = min(self._best, smooth)
    self._emas.append(smooth)
    if i > self.window and smooth > self.diverge_factor * self._best:
      self.stopped = True
      return True
    if self._blown is None and i > self.window:
      self._blown = blow_up_index(np.asarray(self._emas), self.giveback)
    if self._blown is not None and i >= self._blown + 3 * self.window and i < self.num_steps - 1:
      self.stopped = True
      return True
    return False


def run_range_test(step_fn: Callable[[Any, Any], tuple[Any, float]], state: Any, batches: Iterable[Any],
                   lrs: np.ndarray, *, beta: float = 0.9, diverge_factor: float = 4.0, window: int = 9,
                   divisor: float = 3.0, giveback: float = 0.5) -> LRRangeResult:
  """Runs ``state, loss = step_fn(state, batch)`` once per entry of ``lrs`` (the LR the step applies; the
  caller's optimizer follows ``exponential_schedule``) until ``RangeRecorder`` stops, and analyses the losses."""
  t0 = time.time()
  rec = RangeRecorder(len(lrs), beta=beta, diverge_factor=diverge_factor, window=window, giveback=giveback)
  it = iter(batches)
  for _ in range(len(lrs)):
    state, loss = step_fn(state, next(it))
    if rec(loss):
      break
  result = analyse(np.asarray(lrs[: len(rec.losses)]), np.asarray(rec.losses), window=window, divisor=divisor,
                   giveback=giveback, stopped_early=rec.stopped)
  result.seconds = time.time() - t0
  return result


def plot(result: LRRangeResult, path: str, title: str = "LR range test") -> None:
  """Loss vs learning rate (log x) with the raw and smoothed curves and the suggested bounds; PNG (process 0)."""
  from research import fileio
  if not fileio.main_process():
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(result.lrs, result.losses, color="0.7", lw=1, label="training loss")
  ax.plot(result.lrs, result.smoothed, color="C0", lw=2, label="centred moving average")
  ax.axvline(result.lr_min_loss, color="C3", ls="--", label=f"min loss @ {result.lr_min_loss:.3g}")
  ax.axvline(result.suggested_max_lr, color="C2", ls="-", label=f"suggested max LR {result.suggested_max_lr:.3g}")
  ax.axvline(result.lr_steepest, color="C1", ls=":", label=f"steepest descent @ {result.lr_steepest:.3g}")
  if result.cut_lr is not None:
    ax.axvline(result.cut_lr, color="0.4", ls="-.", label=f"blow-up @ {result.cut_lr:.3g}")
  ax.set_xscale("log")
  finite = result.smoothed[np.isfinite(result.smoothed)]
  ax.set_ylim(finite.min() * 0.95, min(result.losses[np.isfinite(result.losses)].max(), finite[0] * 1.5) * 1.02)
  ax.set_xlabel("learning rate")
  ax.set_ylabel("training loss")
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def classify_range_test(cfg, *, min_lr: float = 1e-3, max_lr: float = 10.0, num_steps: int = 100,
                        beta: float = 0.9, diverge_factor: float = 4.0, window: int = 9,
                        divisor: float = 3.0) -> LRRangeResult:
  """Range test of ``cfg``'s model/data/optimizer (``research.train.classify.ClassifyConfig``) on the training
  loop; its ``learning_rate``, ``schedule`` and ``num_steps`` are replaced by the exponential ramp."""
  from research.train import classify, loop
  from research.train import task as task_lib
  cfg = dataclasses.replace(cfg, num_steps=num_steps, schedule="constant", warmup_steps=0, learning_rate=max_lr,
                            lr_scaling="none", freeze_bn_last_steps=0)
  classify.validate(cfg)
  spec, train_source, _ = classify.prepare_data(cfg)
  mesh = task_lib.make_mesh(classify.mesh_devices(cfg))
  task = classify.make_task(cfg, spec, schedule=exponential_schedule(min_lr, max_lr, num_steps))
  rec = RangeRecorder(num_steps, beta=beta, diverge_factor=diverge_factor, window=window)
  t0 = time.time()
  loop.train(task, classify.train_data(cfg, spec, train_source), mesh=mesh, workdir=None,
             config=classify.loop_config(cfg, checkpoint_every=0, eval_every=0, halt_on_nonfinite=False,
                                         progress_bar=False),
             on_step=lambda step, metrics: rec(metrics["loss"]))
  result = analyse(exponential_lrs(min_lr, max_lr, num_steps)[: len(rec.losses)], np.asarray(rec.losses),
                   window=window, divisor=divisor, stopped_early=rec.stopped)
  result.seconds = time.time() - t0
  return result


def write_json(result: LRRangeResult, path: str) -> None:
  """The range test's summary and curves as JSON (process 0 only)."""
  from research import fileio
  if not fileio.main_process():
    return
  rows = {**result.summary(), "lrs": result.lrs.tolist(), "losses": result.losses.tolist(),
          "smoothed": result.smoothed.tolist()}
  with open(path, "w") as f:
    json.dump(rows, f, indent=1)
