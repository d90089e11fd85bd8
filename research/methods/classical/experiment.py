"""Driver of the classical-algorithm worked examples (seed 003 §2-§16, seed 000 Q7): ``run(ClassicalConfig, workdir)``.

Each example is the module ``research.methods.classical.<algo>`` with ``run(workdir, *, seed, quick) -> dict``;
it writes its figures into ``workdir/<algo>/`` and returns its headline numbers. The driver runs the chosen
examples in order, keeps each one's numbers in ``workdir/<algo>/result.json`` (a finished example with the same
seed and ``quick`` is not run again, so an interrupted run resumes where it stopped) and writes
``workdir/summary.json`` and ``workdir/summary.md``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import time
from typing import Any

from research import fileio
from research.configs import setting
from research.methods import reporting

# algo -> (seed section, what the worked example shows)
EXAMPLES: dict[str, tuple[str, str]] = {
    "gmm": ("003 §2-3.1", "EM for Gaussian mixtures on scikit-learn's iris, wine and digits"),
    "hmm": ("003 §3.2", "HMM on the dishonest casino: forward-backward, Viterbi, Baum-Welch"),
    "rpca": ("003 §5, §7", "robust PCA by ADMM with the adaptive penalty: corrupted image, moving foreground"),
    "manifold": ("003 §9", "PCA, kernel PCA, Isomap, LLE, Laplacian eigenmaps, normalized cut"),
    "dct": ("003 §10", "DCT energy compaction and the JPEG rate-distortion curve"),
    "divergences": ("003 §11, §12.2", "KL mode seeking vs mean seeking; JS saturation vs Wasserstein"),
    "mdp": ("003 §13", "value/policy iteration; TD(0), TD(n), TD(lambda), MC on Sutton's random walk"),
    "dpp": ("003 §16", "k-DPP vs independent sampling diversity"),
    "cnak": ("000 Q7", "Cnak recovering the number of clusters on blobs"),
}


@dataclasses.dataclass(frozen=True)
class ClassicalConfig:
  """The classical worked examples to run (``python -m experiments.classical``)."""
  algos: tuple[str, ...] = setting(tuple(EXAMPLES), f"Worked examples to run, in order (any of {','.join(EXAMPLES)}).",
                                    choices=tuple(EXAMPLES))
  seed: int = setting(0, "Seed of every example (data sampling, initialisation).")
  quick: bool = setting(False, "Small sizes and few repetitions (seconds per example; what CI runs).")

  def __post_init__(self):
    if not self.algos:
      raise ValueError(f"--algos is empty: choose from {','.join(EXAMPLES)}")
    unknown = [a for a in self.algos if a not in EXAMPLES]
    if unknown:
      raise ValueError(f"--algos: unknown example(s) {unknown}; choose from {','.join(EXAMPLES)}")
    if len(set(self.algos)) != len(self.algos):
      raise ValueError(f"--algos lists an example twice: {','.join(self.algos)}")


def _cell(value: Any, width: int = 160) -> str:
  """``_compact(value)`` cut to ``width`` characters (the full numbers are in ``summary.json``)."""
  text = _compact(value)
  return text if len(text) <= width else text[:width - 4] + " ..."


def _compact(value: Any, limit: int = 6) -> str:
  """A short table cell for one headline number (floats to 4 significant digits, long lists shortened)."""
  if isinstance(value, float):
    return f"{value:.4g}"
  if isinstance(value, (list, tuple)):
    items = [_compact(v) for v in value[:limit]]
    return "[" + ", ".join(items) + (", ..." if len(value) > limit else "") + "]"
  if isinstance(value, dict):
    return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in list(value.items())[:limit]) + (
        ", ..." if len(value) > limit else "") + "}"
  return str(value)


def run_example(algo: str, workdir: str, *, seed: int, quick: bool) -> dict[str, Any]:
  """Runs one example into ``workdir/<algo>`` (or returns its stored numbers if it already finished with the same
  seed and ``quick``); the numbers plus ``wall_seconds``, ``seed``, ``quick``."""
  out_dir = os.path.join(workdir, algo)
  stored = os.path.join(out_dir, "result.json")
  if os.path.exists(stored):
    with open(stored) as f:
      previous = json.load(f)
    if previous.get("seed") == seed and previous.get("quick") == quick:
      return previous
  os.makedirs(out_dir, exist_ok=True)
  module = importlib.import_module(f"research.methods.classical.{algo}")
  t0 = time.perf_counter()
  numbers = module.run(out_dir, seed=seed, quick=quick)
  result = {**numbers, "seed": seed, "quick": quick, "wall_seconds": round(time.perf_counter() - t0, 2)}
  if fileio.main_process():
    fileio.write_json_atomic(stored, result)
  return result


def run(config: ClassicalConfig, workdir: str) -> dict[str, Any]:
  """Runs ``config.algos``; writes ``summary.json`` ({algo: numbers}, ``wall_seconds``) and ``summary.md``."""
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  results = {algo: run_example(algo, workdir, seed=config.seed, quick=config.quick) for algo in config.algos}
  summary = {"config": {"algos": list(config.algos), "seed": config.seed, "quick": config.quick},
             "examples": results, "wall_seconds": round(time.perf_counter() - t0, 2)}
  reporting.write_summary(workdir, summary)
  blocks = [f"# Classical worked examples (seed {config.seed}{', quick' if config.quick else ''})"]
  for algo, numbers in results.items():
    section, what = EXAMPLES[algo]
    rows = [(k, _cell(v)) for k, v in numbers.items() if k not in ("seed", "quick", "figures")]
    figures = ", ".join(f"`{algo}/{name}`" for name in numbers.get("figures", []))
    blocks.append(f"## {algo} (seed {section}): {what}\n\nfigures: {figures or 'none'}")
    blocks.append(reporting.markdown_table(("quantity", "value"), rows))
  reporting.write_markdown(os.path.join(workdir, "summary.md"), *blocks)
  return summary
