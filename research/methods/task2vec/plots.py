"""Figures of the Task2Vec experiment (PNG bytes; matplotlib Agg backend, no display needed).

* ``distance_heatmap.png``: clustered d_sym matrix with dendrogram (Task2Vec, Fig. 2 of the paper) beside the
  domain embedding's matrix in the same order.
* ``topk_taxonomy.png``: average taxonomic distance of the k nearest tasks vs k (Task2Vec, domain, random, oracle).
* ``norm_vs_error.png``: embedding norm vs test error of the probe + linear head (Fig. 3: norm ~ difficulty).
* ``alpha_sweep.png``: model-selection relative error increase over the oracle vs α of d_asym.
"""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.cluster import hierarchy as sch  # noqa: E402
from scipy.spatial.distance import squareform  # noqa: E402

_KIND_COLORS = {"family": "C0", "random": "C1", "super_fine": "C2", "super_coarse": "C3", "ladder": "C4"}


def _png(fig) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
  plt.close(fig)
  return buf.getvalue()


def heatmap(names: Sequence[str], d_task2vec: np.ndarray, d_domain: np.ndarray) -> bytes:
  d = 0.5 * (d_task2vec + d_task2vec.T)
  np.fill_diagonal(d, 0)
  link = sch.linkage(squareform(np.clip(d, 0, None), checks=False), method="average")
  fig = plt.figure(figsize=(19, 9))
  ax_den = fig.add_axes([0.01, 0.1, 0.07, 0.8])
  den = sch.dendrogram(link, orientation="left", no_labels=True, ax=ax_den, color_threshold=0)
  ax_den.invert_yaxis()
  ax_den.axis("off")
  order = den["leaves"]
  labels = [names[i] for i in order]
  for k, (m, title) in enumerate(((d_task2vec, "Task2Vec d_sym (clustered)"),
                                  (d_domain, "domain embedding (same order)"))):
    ax = fig.add_axes([0.09 + 0.46 * k + (0.1 if k else 0), 0.1, 0.36, 0.8])
    im = ax.imshow(m[np.ix_(order, order)], cmap="viridis_r", aspect="auto")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=6)
    ax.set_xticks([])
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.04)
  return _png(fig)


def topk(curves: dict) -> bytes:
  fig, ax = plt.subplots(figsize=(6, 4))
  for key, style in (("task2vec", "o-"), ("domain", "s-"), ("random", "--"), ("oracle", ":")):
    ax.plot(curves["k"], curves[key], style, label=key, markersize=3)
  ax.set_xlabel("k (nearest tasks)")
  ax.set_ylabel("mean taxonomic distance of top-k")
  ax.set_title("Nearest tasks vs taxonomy (lower is better)")
  ax.legend()
  ax.grid(alpha=0.3)
  return _png(fig)


def norm_vs_error(norms: np.ndarray, errors: np.ndarray, kinds: Sequence[str]) -> bytes:
  fig, ax = plt.subplots(figsize=(6, 4))
  for kind in sorted(set(kinds)):
    m = np.array([k == kind for k in kinds])
    ax.scatter(errors[m], norms[m], label=kind, c=_KIND_COLORS.get(kind, "k"), s=18)
  ax.set_xlabel("test error (probe + linear head)")
  ax.set_ylabel("||FIM embedding||")
  ax.set_yscale("log")
  ax.set_title("Embedding norm vs task difficulty")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  return _png(fig)


def alpha_sweep(table: dict) -> bytes:
  alphas = sorted(float(a) for a in table["alpha_sweep"])
  vals = [table["alpha_sweep"][a]["relative_error_increase"] for a in alphas]
  rel = table["relative_error_increase"]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(alphas, vals, "o-", label="Task2Vec d_asym")
  ax.axhline(rel["task2vec_symmetric"], color="C1", ls="--", label="d_sym")
  ax.axhline(rel["generic_probe"], color="C2", ls=":", label="generic probe")
  ax.axhline(rel["chance"], color="C3", ls="-.", label="chance")
  ax.set_xlabel("α")
  ax.set_ylabel("relative error increase over oracle")
  ax.set_title("Expert selection vs α")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  return _png(fig)


def all_figures(names, d_sym, d_domain, curves, norms, errors, table, kinds):
  yield "distance_heatmap.png", heatmap(names, d_sym, d_domain)
  yield "topk_taxonomy.png", topk(curves)
  yield "norm_vs_error.png", norm_vs_error(np.asarray(norms), np.asarray(errors), kinds)
  yield "alpha_sweep.png", alpha_sweep(table)
