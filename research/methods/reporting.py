"""Outputs shared by the training experiments (super_convergence, large_minibatch, wrn_blocks).

``summary.json`` (``research.fileio.write_json_atomic``: indent 2, sorted keys), ``summary.md`` (markdown tables
separated by blank lines) and PNG line plots (matplotlib Agg backend, no display needed); written by process 0
only in multi-process runs.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from research import fileio


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
  """A GitHub markdown table: the header, a ``|---|`` separator and one line per row (cells via ``str``)."""
  line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"  # noqa: E731
  return "\n".join([line(header), "|" + "---|" * len(header)] + [line(r) for r in rows])


def write_markdown(path: str, *blocks: str) -> None:
  """Writes ``blocks`` (paragraphs or tables) separated by one blank line, with a final newline."""
  if not fileio.main_process():
    return
  with open(path, "w") as f:
    f.write("\n\n".join(blocks) + "\n")


def write_summary(workdir: str, summary: Mapping[str, Any]) -> None:
  """Writes ``workdir/summary.json`` atomically (``research.fileio.write_json_atomic``: temporary file + rename)."""
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(workdir, "summary.json"), summary)


def mean_std(values) -> tuple[float | None, float | None]:
  """``(mean, population std)`` of the values that are not None (float64), or ``(None, None)`` if there are none:
  the per-row aggregate over seeds of the experiment summaries."""
  a = np.asarray([v for v in values if v is not None], np.float64)
  return (float(a.mean()), float(a.std())) if len(a) else (None, None)


def stored_results(out: str, run_config: Mapping[str, Any]) -> dict[str, Any] | None:
  """The ``results.json`` of a finished run in ``out`` when its ``run.json`` equals ``run_config`` (after a JSON
  round trip), else None: experiments reuse finished runs and retrain the ones whose settings changed."""
  stored, run = os.path.join(out, "results.json"), os.path.join(out, "run.json")
  if not (os.path.exists(stored) and os.path.exists(run)):
    return None
  with open(run) as f:
    if json.load(f) != json.loads(json.dumps(run_config, default=fileio.json_default)):
      return None
  with open(stored) as f:
    return json.load(f)


def line_plot(path: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str,
              ylabel: str, figsize: tuple[float, float] = (6, 4), markersize: float = 6, log2_x: bool = False,
              hline: tuple[float, str] | None = None, legend_fontsize: float | str = "medium") -> None:
  """One marked line per ``{label: (x, y)}`` entry, optionally a dashed horizontal ``(y, label)`` line; PNG
  (process 0 only)."""
  if not fileio.main_process():
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=figsize)
  for label, (x, y) in series.items():
    ax.plot(x, y, marker="o", ms=markersize, label=label)
  if hline is not None:
    ax.axhline(hline[0], color="k", ls="--", lw=1, label=hline[1])
  if log2_x:
    ax.set_xscale("log", base=2)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=legend_fontsize)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
