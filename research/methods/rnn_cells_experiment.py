"""Recurrent cells on a long-range memory task, and their speed: ``run(RNNCellsConfig, workdir) -> summary``.

1. Memory vs lag. For every cell of ``cells`` (``research.models.sequence.recall_rnn.CELLS``: Elman, LSTM, peephole
   LSTM, GRU, SRU) and every distractor length ``T`` of ``delays``, one run per seed of
   ``research.train.sequence_memory.SequenceMemoryTask`` through ``research.train.loop.train``: remember ``k =
   num_symbols`` symbols, recall them after ``T`` distractors (``copy_recall``; a fixed seeded training set of
   ``num_train`` sequences sampled by ``ArrayBatches`` and a held-out set of ``num_eval``). Reported: per-symbol
   accuracy (chance ``1 / alphabet``) and whole-recall accuracy vs ``T``. What the gates are for (Hochreiter &
   Schmidhuber 1997; Gers et al. 2000; Cho et al. 2014; Lei et al. 2018): the gated cells keep the symbols over
   long lags, the ungated Elman RNN loses them as ``T`` grows (vanishing gradients through ``T`` tanh steps).
2. Speed (Lei et al. 2018, §3: SRU's recurrence is element-wise, its matrix products run for all steps at once):
   forward + backward (gradients of ``sum(y * g)`` with respect to the parameters and the inputs) of one recurrent
   layer per cell at ``hidden`` units, ``speed_batch`` x ``speed_length`` steps, inputs of width ``hidden``, all
   cells timed interleaved in one process after compilation (medians over ``speed_repeats``), as ms per sequence
   step and as the ratio to the LSTM. Besides the ``sru`` layer (``recurrent.SRU``, projections hoisted out of the
   scan) the SRU cell inside the generic scan (``RNN(SRUCell)``) is timed as ``sru_cell_in_scan``: the difference
   is the paper's parallelisation. The other cells keep their input products inside the scan.

Claims (``summary.json`` ``claims``; "solved" = mean accuracy >= ``solved_accuracy``): the Elman RNN does not solve
the longest lag; every gated cell solves it; every gated cell's accuracy at the longest lag is above Elman's; the
SRU layer's step is faster than the LSTM's. Writes ``workdir/<cell>_T<delay>_seed<s>/`` per run (loop outputs;
finished runs with the same settings are reused), ``summary.json``, ``summary.md`` and ``accuracy_vs_delay.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research import fileio
from research.configs import setting
from research.data.memory import ArrayBatches
from research.layers import recurrent as rec
from research.methods import reporting
from research.models.sequence.recall_rnn import CELLS, cell_layer
from research.train import loop
from research.train import sequence_memory as sm
from research.train import task as task_lib

GATED = ("lstm", "lstm_peephole", "gru", "sru")
_POSITIVE = ("num_steps", "batch_size", "hidden", "num_layers", "num_symbols", "alphabet", "distractors", "num_train",
             "num_eval", "eval_batch_size", "learning_rate", "clip_norm", "speed_batch", "speed_length",
             "speed_repeats")


@dataclasses.dataclass(frozen=True)
class RNNCellsConfig:
  """One run of ``python -m experiments.rnn_cells``; each field is one flag."""
  cells: tuple[str, ...] = setting(CELLS, "Cells to train and time.", choices=CELLS)
  delays: tuple[int, ...] = setting((25, 50, 100, 200), "Distractor lengths T between the symbols and the recall.")
  seeds: tuple[int, ...] = setting((0,), "Seeds; every (cell, T) is trained once per seed (data and init).")
  num_steps: int = setting(1500, "Training steps per run.")
  batch_size: int = setting(32, "Global batch of sequences.")
  learning_rate: float = setting(3e-3, "Adam learning rate.")
  clip_norm: float = setting(1.0, "Global gradient-norm clipping.")
  hidden: int = setting(64, "Hidden units of every cell (also the width of the speed test).")
  num_layers: int = setting(1, "Stacked recurrent layers.")
  forget_bias: float = setting(5.0, "Initial bias of the LSTM forget gate (the state decays by sigmoid(b) per "
                               "step at initialisation).")
  update_bias: float = setting(3.0, "Initial bias of the GRU update gate z and the SRU forget gate f (retain AND "
                               "write gates: sigmoid(b) kept, 1 - sigmoid(b) written per step).")
  num_symbols: int = setting(2, "Symbols k to remember.")
  alphabet: int = setting(8, "Symbol alphabet size (chance accuracy 1 / alphabet).")
  distractors: int = setting(8, "Distinct distractor tokens.")
  num_train: int = setting(20000, "Training sequences per (T, seed) (sampled with replacement).")
  num_eval: int = setting(1000, "Held-out sequences per (T, seed).")
  eval_batch_size: int = setting(250, "Global eval batch.")
  solved_accuracy: float = setting(0.9, "Mean per-symbol accuracy that counts as solving a lag (claims).")
  speed: bool = setting(True, "Also time forward+backward of every cell (interleaved) at --hidden units.")
  speed_batch: int = setting(32, "Batch of the speed test.")
  speed_length: int = setting(100, "Sequence length of the speed test.")
  speed_repeats: int = setting(7, "Timed calls per cell (median reported).")

  def __post_init__(self):
    for name in _POSITIVE:
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    if not self.cells or len(set(self.cells)) != len(self.cells):
      raise ValueError(f"--cells must list distinct cells, got {list(self.cells)}")
    bad = [c for c in self.cells if c not in CELLS]
    if bad:
      raise ValueError(f"--cells: unknown {bad}; choose from {','.join(CELLS)}")
    if not self.delays or min(self.delays) < 1 or len(set(self.delays)) != len(self.delays):
      raise ValueError(f"--delays must list distinct positive lengths, got {list(self.delays)}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")
    if self.alphabet < 2:
      raise ValueError(f"--alphabet={self.alphabet} must be >= 2 (chance accuracy 1 / alphabet)")
    if not 0.0 < self.solved_accuracy <= 1.0:
      raise ValueError(f"--solved_accuracy={self.solved_accuracy} must lie in (0, 1]")
    if self.num_eval < self.eval_batch_size:
      raise ValueError(f"--eval_batch_size={self.eval_batch_size} exceeds --num_eval={self.num_eval}")


def make_data(cfg: RNNCellsConfig, delay: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(train, eval) ``copy_recall`` sets of one (T, seed): independent generators seeded ``[seed, T, 0 | 1]``."""
  kw = dict(delay=delay, num_symbols=cfg.num_symbols, alphabet=cfg.alphabet, distractors=cfg.distractors)
  train = sm.copy_recall(cfg.num_train, rng=np.random.default_rng([seed, delay, 0]), **kw)
  held_out = sm.copy_recall(cfg.num_eval, rng=np.random.default_rng([seed, delay, 1]), **kw)
  return train, held_out


def _train_one(cfg: RNNCellsConfig, cell: str, delay: int, seed: int, workdir: str) -> dict[str, Any]:
  name = f"{cell}_T{delay}_seed{seed}"
  out = os.path.join(workdir, name)
  run_config = {**dataclasses.asdict(cfg), "run": name, "cell": cell, "delay": delay, "seed": seed}
  for k in ("cells", "delays", "seeds", "speed", "speed_batch", "speed_length", "speed_repeats", "solved_accuracy"):
    run_config.pop(k)  # settings that do not change this run
  done = reporting.stored_results(out, run_config)
  if done is not None:
    return done
  train, held_out = make_data(cfg, delay, seed)
  task = sm.SequenceMemoryTask(cell=cell, features=cfg.hidden, num_layers=cfg.num_layers, forget_bias=cfg.forget_bias,
                               update_bias=cfg.update_bias,
                               alphabet=cfg.alphabet, distractors=cfg.distractors, num_symbols=cfg.num_symbols,
                               learning_rate=cfg.learning_rate, clip_norm=cfg.clip_norm)
  lcfg = loop.LoopConfig(num_steps=cfg.num_steps, seed=seed, eval_every=0, checkpoint_every=0, log_every=50,
                         progress_bar=False, description=name, tensorboard=False)
  _, results = loop.train(task, ArrayBatches(train, global_batch_size=cfg.batch_size, seed=seed), config=lcfg,
                          mesh=task_lib.make_mesh(), workdir=out,
                          eval_data=sm.eval_batches(held_out, global_batch_size=cfg.eval_batch_size),
                          run_config=run_config)
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
  return results


# ------------------------------------------------------------------------------------------------------- speed

SPEED_CELLS = {"sru_cell_in_scan": "sru"}  # extra timed variant -> the trained cell it belongs to


def _speed_layer(name: str, hidden: int) -> Any:
  if name == "sru_cell_in_scan":
    return rec.RNN(rec.SRUCell, hidden)
  return cell_layer(name, hidden)


def cell_timings(cells: tuple[str, ...], *, hidden: int, batch: int, length: int, repeats: int,
                 seed: int = 0) -> dict[str, dict[str, float]]:
  """Forward + backward of one layer per cell (and ``sru_cell_in_scan`` when ``sru`` is among ``cells``) on
  x [batch, length, hidden]: ``{name: {'ms_per_step', 'ms_per_call', 'ratio_to_lstm'}}`` (ratio only when ``lstm``
  is timed). Jitted and compiled first, then the calls of all cells interleaved ``repeats`` times; medians."""
  names = list(cells) + [k for k, v in SPEED_CELLS.items() if v in cells]
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((batch, length, hidden)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((batch, length, hidden)), jnp.float32)
  fns = {}
  for i, name in enumerate(names):
    layer = _speed_layer(name, hidden)
    params = jax.jit(layer.init)(jax.random.key(i), x)

    def loss(p, x, layer=layer):
      return jnp.sum(layer.apply(p, x)[0] * g)

    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    jax.block_until_ready(step(params, x))  # compile
    fns[name] = (step, params)
  times = {n: [] for n in names}
  for _ in range(repeats):
    for n in names:
      step, params = fns[n]
      t0 = time.perf_counter()
      jax.block_until_ready(step(params, x))
      times[n].append(time.perf_counter() - t0)
  med = {n: float(np.median(v)) for n, v in times.items()}
  out = {n: {"ms_per_call": 1e3 * t, "ms_per_step": 1e3 * t / length} for n, t in med.items()}
  if "lstm" in med:
    for n in out:
      out[n]["ratio_to_lstm"] = med[n] / med["lstm"]
  return out


# ------------------------------------------------------------------------------------------------------- run


def run(cfg: RNNCellsConfig, workdir: str) -> dict[str, Any]:
  """Trains every (cell, T, seed), times the cells, writes and returns the summary."""
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  runs: dict[str, dict[int, list[dict]]] = {}
  for seed in cfg.seeds:
    for delay in cfg.delays:
      for cell in cfg.cells:
        runs.setdefault(cell, {}).setdefault(delay, []).append(_train_one(cfg, cell, delay, seed, workdir))
  table = {cell: {str(d): {m: reporting.mean_std([r.get(f"eval_{m}") for r in rs])
                           for m in ("accuracy", "sequence_accuracy", "loss")}
                  | {"train_seconds": reporting.mean_std([r.get("wall_seconds") for r in rs])}
                  for d, rs in by_delay.items()}
           for cell, by_delay in runs.items()}
  longest = str(max(cfg.delays))
  acc_at = lambda c, d=longest: table[c][d]["accuracy"][0]  # noqa: E731
  claims: dict[str, Any] = {"solved_accuracy": cfg.solved_accuracy, "longest_delay": int(longest)}
  gated = [c for c in cfg.cells if c in GATED]
  if "elman" in table:
    claims["elman_fails_longest"] = bool(acc_at("elman") < cfg.solved_accuracy)
  if gated:
    claims["gated_solve_longest"] = bool(all(acc_at(c) >= cfg.solved_accuracy for c in gated))
  if gated and "elman" in table:
    claims["gated_beat_elman_longest"] = bool(all(acc_at(c) > acc_at("elman") for c in gated))
  speed = None
  if cfg.speed:
    speed = cell_timings(tuple(cfg.cells), hidden=cfg.hidden, batch=cfg.speed_batch, length=cfg.speed_length,
                         repeats=cfg.speed_repeats)
    if "sru" in speed and "lstm" in speed:
      claims["sru_faster_than_lstm"] = bool(speed["sru"]["ratio_to_lstm"] < 1.0)
  summary = {"config": dataclasses.asdict(cfg), "chance_accuracy": 1.0 / cfg.alphabet, "table": table,
             "runs": {c: {str(d): [{k: r.get(f"eval_{k}") for k in ("accuracy", "sequence_accuracy")} for r in rs]
                          for d, rs in by_d.items()} for c, by_d in runs.items()},
             "speed": speed, "claims": claims, "load_average": list(os.getloadavg()),
             "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)
  _write_report(cfg, workdir, summary)
  return summary


def _fmt(ms: tuple[float | None, float | None], n_seeds: int) -> str:
  if ms[0] is None:
    return "-"
  return f"{ms[0]:.3f}" + (f" ± {ms[1]:.3f}" if n_seeds > 1 else "")


def _write_report(cfg: RNNCellsConfig, workdir: str, summary: dict[str, Any]) -> None:
  table, delays, n = summary["table"], [str(d) for d in cfg.delays], len(cfg.seeds)
  acc_rows = [(c, *(_fmt(table[c][d]["accuracy"], n) for d in delays)) for c in cfg.cells]
  seq_rows = [(c, *(_fmt(table[c][d]["sequence_accuracy"], n) for d in delays)) for c in cfg.cells]
  blocks = [f"# Recurrent cells: recall {cfg.num_symbols} symbols (alphabet {cfg.alphabet}) after T distractors; "
            f"hidden {cfg.hidden}, {cfg.num_steps} steps at batch {cfg.batch_size}, seeds "
            f"{','.join(map(str, cfg.seeds))}",
            f"Per-symbol accuracy on {cfg.num_eval} held-out sequences (chance {1 / cfg.alphabet:.3f}"
            + (", mean ± std over seeds" if n > 1 else "") + f"); initial LSTM forget-gate bias "
            f"{cfg.forget_bias}, GRU update / SRU forget-gate bias {cfg.update_bias}.",
            reporting.markdown_table(("cell",) + tuple(f"T={d}" for d in delays), acc_rows),
            "All symbols right (sequence accuracy):",
            reporting.markdown_table(("cell",) + tuple(f"T={d}" for d in delays), seq_rows)]
  if summary["speed"]:
    sp = summary["speed"]
    blocks += [f"Forward+backward of one layer, batch {cfg.speed_batch}, {cfg.speed_length} steps, {cfg.hidden} "
               f"units, interleaved (load average {summary['load_average'][0]:.2f}):",
               reporting.markdown_table(("cell", "ms / step", "ratio to LSTM"),
                                        [(c, f"{v['ms_per_step']:.3f}",
                                          f"{v['ratio_to_lstm']:.2f}" if "ratio_to_lstm" in v else "-")
                                         for c, v in sp.items()])]
  blocks.append("claims: " + json.dumps(summary["claims"]))
  reporting.write_markdown(os.path.join(workdir, "summary.md"), *blocks)
  series = {c: ([int(d) for d in delays], [table[c][d]["accuracy"][0] for d in delays]) for c in cfg.cells}
  reporting.line_plot(os.path.join(workdir, "accuracy_vs_delay.png"), series, xlabel="distractor steps T",
                      ylabel="recall accuracy per symbol", log2_x=True, hline=(1 / cfg.alphabet, "chance"))
