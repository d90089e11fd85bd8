"""Wide ResNet block types at equal parameter budget (Zagoruyko & Komodakis, BMVC 2016, §3 / Table 1; seed 001).

``run(WRNBlocksConfig, workdir) -> summary``:
1. The params column: WRN-d-2 with 10 classes (CIFAR-10 head) for each (block type, depth) of ``TABLE``, counted
   from ``research.models.cifar_resnet.wide_resnet`` (abstract init, no FLOPs) and compared with the published
   value rounded to 0.1M; ``run`` raises ValueError (after writing its outputs) if any row differs.
2. Reduced budget: each chosen block type at the table's depth (minus ``6 * depth_offset``) with widening
   ``train_k`` trained on ``num_classes_subset`` classes of ``shapes`` for ``num_steps`` iterations, each a
   classification run in ``workdir/wrn<d>_<k>_b<kernels>`` (resumable): eval accuracy, training time and
   throughput per block type.
Writes ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.configs import setting
from research.methods import reporting
from research.models.cifar_resnet import wide_resnet
from research.train import classify

# Zagoruyko & Komodakis 2016, Table 1 (WRN-d-2, CIFAR-10): block type, depth, # params (M), time (s), error (%).
TABLE = [((1, 3, 1), 40, 1.4, 85.8, 6.06), ((3, 1), 40, 1.2, 67.5, 5.78), ((1, 3), 40, 1.3, 72.2, 6.42),
         ((3, 1, 1), 40, 1.3, 82.2, 5.86), ((3, 3), 28, 1.5, 67.5, 5.73), ((3, 1, 3), 22, 1.1, 59.9, 5.78)]
TABLE_DEPTHS = {bt: depth for bt, depth, *_ in TABLE}


def block_name(block_type: Sequence[int]) -> str:
  """``(3, 1, 3)`` -> ``'B(3,1,3)'`` (the paper's notation: kernel sizes of the block's convolutions)."""
  return "B(" + ",".join(str(k) for k in block_type) + ")"


def parse_block_type(text: str) -> tuple[int, ...]:
  """``'3-1-3'`` -> ``(3, 1, 3)`` (the ``block_types`` notation); ValueError naming the flag otherwise."""
  try:
    return tuple(int(k) for k in text.split("-"))
  except ValueError:
    raise ValueError(f"--block_types: {text!r} is not kernel sizes joined by '-', e.g. '3-1-3'") from None


@dataclasses.dataclass(frozen=True)
class WRNBlocksConfig:
  """Reduced-budget training: WRN-d-``train_k`` per block type, cosine LR with linear warmup, Nesterov SGD. Each
  field is one flag of ``experiments.wrn_blocks`` (``research.configs.setting``)."""
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  block_types: tuple[str, ...] = setting(("1-3-1", "3-1", "1-3", "3-1-1", "3-3", "3-1-3"),
                                         "Block types of the table to train, kernel sizes joined by '-'.")
  train_k: int = setting(1, "Widening factor of the trained nets (the table's is 2).")
  depth_offset: int = setting(0, "Subtract 6*N from every table depth for the trained nets (N blocks fewer per "
                              "stage; 0 = the table's depths).")
  num_classes_subset: int = setting(10, "Classes of `shapes` used (label < N; 0 = all 100).")
  num_steps: int = setting(100, "Training iterations per block type.")
  batch_size: int = setting(64, "Global batch size.")
  learning_rate: float = setting(0.1, "Peak LR (cosine schedule, Nesterov, as the WRN paper's SGD).")
  warmup_steps: int = setting(10, "Linear warmup steps.")
  weight_decay: float = setting(5e-4, "Weight decay (the paper's 5e-4).")
  seed: int = setting(0, "Seed.")
  params_only: bool = setting(False, "Only reproduce the params column (no training).")

  def __post_init__(self):
    for b in self.block_types:
      bt = parse_block_type(b)
      if bt not in TABLE_DEPTHS:
        raise ValueError(f"--block_types: {b!r} is not in the table; choose from "
                         f"{['-'.join(map(str, t)) for t in TABLE_DEPTHS]}")
      if self.depth(bt) <= 4:
        raise ValueError(f"--depth_offset={self.depth_offset} leaves depth {self.depth(bt)} for {block_name(bt)}; "
                         f"WRNs need depth > 4, so lower --depth_offset")
    for name in ("train_k", "num_steps", "batch_size", "learning_rate"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("warmup_steps", "weight_decay", "num_classes_subset"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")

  def depth(self, block_type: tuple[int, ...]) -> int:
    """Depth of the trained net of ``block_type``: the table's depth minus ``6 * depth_offset``."""
    return TABLE_DEPTHS[block_type] - 6 * self.depth_offset


def count_params(block_type: Sequence[int], depth: int, k: int, num_classes: int) -> int:
  """Parameters of WRN-depth-k with blocks B(block_type), from an abstract init (no FLOPs)."""
  model = wide_resnet(depth, k, block_type=block_type, num_classes=num_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])))


def params_column() -> list[dict[str, Any]]:
  """Table 1's params column (WRN-d-2, 10 classes) recounted, one row per ``TABLE`` entry with ``match``."""
  rows = []
  for bt, depth, published, t, err in TABLE:
    n = count_params(bt, depth, 2, 10)
    rows.append({"block_type": block_name(bt), "depth": depth, "params": n, "params_M": round(n / 1e6, 1),
                 "published_M": published, "match": round(n / 1e6, 1) == published,
                 "paper_time_s": t, "paper_cifar10_error": err})
  return rows


def _train(cfg: WRNBlocksConfig, block_type: tuple[int, ...], paper_error: float, workdir: str) -> dict[str, Any]:
  """One reduced-budget run of ``block_type`` (resumed or reused from ``workdir/<name>``); its summary row."""
  d = cfg.depth(block_type)
  name = f"wrn{d}_{cfg.train_k}_b{''.join(map(str, block_type))}"
  ccfg = classify.ClassifyConfig(model=f"wrn{d}_{cfg.train_k}", model_kwargs={"block_type": list(block_type)},
                                 dataset="shapes", data_dir=cfg.data_dir, num_classes_subset=cfg.num_classes_subset,
                                 num_steps=cfg.num_steps, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                                 schedule="cosine", warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                                 optimizer="nesterov", eval_every=cfg.num_steps, checkpoint_every=cfg.num_steps,
                                 seed=cfg.seed, progress_bar=False, log_every=10)
  wd = os.path.join(workdir, name)
  res = classify.finished_results(wd, ccfg.num_steps) or classify.train_and_evaluate(ccfg, wd)
  return {"block_type": block_name(block_type), "depth": d, "k": cfg.train_k, "params": res["num_params"],
          "eval_accuracy": res["eval_accuracy"], "eval_error": 1 - res["eval_accuracy"],
          "train_seconds": res["train_seconds"],
          "images_per_second": res["steps_run"] * cfg.batch_size / max(res["train_seconds"], 1e-9)
          if res["steps_run"] else None,
          "paper_cifar10_error": paper_error / 100}


def run(cfg: WRNBlocksConfig, workdir: str) -> dict[str, Any]:
  """Params column, then (unless ``params_only``) one reduced-budget run per chosen block type, in table order.

  Returns the summary (also ``workdir/summary.json``): ``params_column``, ``all_match``, ``trained`` (per block
  type: depth, k, params, eval accuracy/error, train seconds, images/s, the paper's CIFAR-10 error), ...
  """
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  table = params_column()
  summary = {"params_column": table, "all_match": all(r["match"] for r in table), "trained": []}
  if not cfg.params_only:
    wanted = {parse_block_type(b) for b in cfg.block_types}
    summary["trained"] = [_train(cfg, bt, err, workdir) for bt, _, _, _, err in TABLE if bt in wanted]
  summary.update(wall_seconds=time.time() - t0, num_classes=cfg.num_classes_subset or 100,
                 num_steps=cfg.num_steps, batch_size=cfg.batch_size)
  reporting.write_summary(workdir, summary)
  _write_markdown(summary, os.path.join(workdir, "summary.md"))
  if not summary["all_match"]:
    bad = [f"{r['block_type']}@{r['depth']}: {r['params_M']}M vs {r['published_M']}M" for r in table if not r["match"]]
    raise ValueError(f"params column not reproduced: {bad}")
  return summary


def _write_markdown(summary: dict[str, Any], path: str) -> None:
  blocks = [reporting.markdown_table(
      ["block type", "depth", "params (ours, k=2, 10 classes)", "params (paper)", "match"],
      [[r["block_type"], r["depth"], f"{r['params']:,} ({r['params_M']}M)", f"{r['published_M']}M",
        "yes" if r["match"] else "NO"] for r in summary["params_column"]])]
  if summary["trained"]:
    blocks.append(reporting.markdown_table(
        ["block type", "depth", "k", "params", "eval acc", "train s", "img/s", "paper CIFAR-10 err"],
        [[r["block_type"], r["depth"], r["k"], f"{r['params']:,}", f"{r['eval_accuracy']:.4f}",
          f"{r['train_seconds']:.0f}", f"{r['images_per_second']:.0f}" if r["images_per_second"] else "-",
          f"{r['paper_cifar10_error']:.2%}"] for r in summary["trained"]]))
  reporting.write_markdown(path, *blocks)
