"""Shared entry-point logic of the detection experiments (``mask_rcnn``, ``faster_rcnn``, ...): one run, a sweep
of conditions x seeds, or ``--predict`` (draw the trained model's detections to a PNG)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from absl import flags

from experiments import common
from research.configs import setting
from research.train.detection import DetectionConfig


@dataclasses.dataclass(frozen=True)
class DetectionFlags:
  """Settings of a detection entry point that are not part of ``DetectionConfig``."""
  workdir: str = setting("/tmp/research/detection", "Output directory; runs there are resumed.")
  seeds: tuple[int, ...] = setting((), "Train every condition with each of these seeds (empty: --seed only).")
  predict: bool = setting(False, "Do not train: draw the detections of the model trained in --workdir on the first "
                          "--num_predict images of --eval_split to <workdir>/predictions.png.")
  num_predict: int = setting(8, "Images drawn by --predict.")


def define_flags(flag_values: flags.FlagValues, experiment_flags: type) -> None:
  """One flag per ``DetectionConfig`` field and per field of ``experiment_flags`` (a ``DetectionFlags`` subclass)."""
  common.define_flags(DetectionConfig, flag_values=flag_values)
  common.define_flags(experiment_flags, flag_values=flag_values)


def run(flag_values: flags.FlagValues, experiment_flags: type, conditions: Mapping[str, Mapping[str, Any]]) -> None:
  """One training run when there is one condition and one seed, else ``detection.sweep`` over them."""
  from research.train import detection
  cfg = common.config_from_flags(DetectionConfig, flag_values=flag_values)
  f = common.config_from_flags(experiment_flags, flag_values=flag_values)
  if f.predict:
    name, overrides = next(iter(conditions.items()))
    workdir = f.workdir if len(conditions) == 1 and not f.seeds else f"{f.workdir}/{name}_seed{(f.seeds or (cfg.seed,))[0]}"
    print(f"predictions: {detection.predict(dataclasses.replace(cfg, **overrides), workdir, f.num_predict)}")
    return
  seeds = f.seeds or (cfg.seed,)
  if len(conditions) == 1 and len(seeds) == 1:
    overrides = next(iter(conditions.values()))
    results = detection.train_and_evaluate(dataclasses.replace(cfg, seed=seeds[0], **overrides), f.workdir)
    keys = ["model", "dataset", "step"] + [k for k in results if k.startswith("eval_") and "AP" in k] + \
        ["num_params", "wall_seconds"]
    print(json.dumps({k: results[k] for k in keys if k in results}, indent=2))
    print(f"results: {f.workdir}/results.json, detections: {f.workdir}/detections.json")
    return
  summary = detection.sweep(cfg, f.workdir, conditions, seeds)
  with open(f"{f.workdir}/summary.md") as fh:
    print(fh.read())
  print(f"results: {f.workdir}/summary.json  wall {summary['wall_seconds']:.0f} s")
