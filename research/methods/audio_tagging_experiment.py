"""Raw-waveform audio tagging with mix-training (the end-to-end Audio Set system of 1-D + 2-D ResNets with
multi-level attention, trained with the mix-training strategy, §2-§3): ``run(AudioTaggingConfig, workdir) ->
summary``.

Data: the offline ``audio_events`` corpus (``research.data.audio``: overlapping synthetic sound events, multi-label)
or any TFDS dataset prepared in ``data_dir`` with a fixed-length ``audio`` and a multi-hot / ``Sequence(ClassLabel)``
``labels`` feature (``research.data.audio.load_audio_split``).

For every seed: one run per entry of ``augments`` -- ``none``, ``mixup`` (Zhang et al. 2018) and ``mix_training``
(two clips summed with random gains, labelled with the union of their labels, switched off after ``mix_until`` of
the steps) -- of the same ``wave_resnet`` model (``research.models.sequence.audio``) trained with sigmoid binary
cross-entropy through ``research.train.loop.train`` (``research.train.audio_tagging``).

Measured per run: test ``mAP`` and ROC-``auc`` (means over classes, ``research.train.audio_metrics``) and the
loop's wall time. Claims checked (``claims`` in the summary): ``mix_training_beats_none`` and
``mix_training_beats_mixup``: mix-training's mean test mAP over seeds is higher (§3, Table 3: mix-training vs no
augmentation and vs mixup).

Writes ``workdir/<augment>_seed<s>/`` (loop outputs; ``results.json`` with ``test_mAP``, ``test_auc``),
``summary.json`` and ``summary.md``; a finished run (``results.json`` with the same settings) is not trained again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax

from research import fileio
from research.configs import setting
from research.data import audio as audio_data
from research.data.memory import ArrayBatches
from research.methods import reporting
from research.models.sequence.audio import WaveResNet
from research.train import audio_tagging
from research.train import loop
from research.train import task as task_lib

AUGMENTS = audio_tagging.AUGMENTS
_POSITIVE = ("steps", "batch_size", "learning_rate", "eval_batch_size", "stem_features", "front_features",
             "mixup_alpha")


@dataclasses.dataclass(frozen=True)
class AudioTaggingConfig:
  """One audio-tagging experiment (``python -m experiments.audio_tagging``); each field is one flag."""
  dataset: str = setting("audio_events", "TFDS dataset: audio_events[/small] (offline, built on first use) or one "
                         "prepared in --data_dir with a fixed-length 'audio' and multi-hot 'labels' feature.")
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  max_train_examples: int = setting(0, "Use the first N training clips (0 = all).")
  max_test_examples: int = setting(0, "Evaluate on the first N test clips (0 = all).")
  augments: tuple[str, ...] = setting(AUGMENTS, "Training augmentations compared: none, mixup (Zhang et al. "
                                      "2018), mix_training (sum of two clips, union of labels).", choices=AUGMENTS)
  seeds: tuple[int, ...] = setting((0,), "Seeds; every augmentation is trained once per seed.")
  steps: int = setting(600, "Training steps per run.")
  batch_size: int = setting(16, "Global batch (clips).")
  learning_rate: float = setting(3e-3, "Adam peak learning rate (cosine decay to 5% of it).")
  mix_until: float = setting(0.8, "Mix-training is on for this fraction of the steps, off for the rest.")
  mix_gain_db: float = setting(6.0, "Mix-training gains 10^(-U(0, mix_gain_db)/20) on each of the two clips.")
  mixup_alpha: float = setting(0.4, "mixup's lambda ~ Beta(alpha, alpha).")
  stem_features: int = setting(8, "wave_resnet: channels of the 1-D stem conv.")
  front_features: int = setting(16, "wave_resnet: F, the feature width of the 1-D ResNet's frame map.")
  channels: tuple[int, ...] = setting((8, 16), "wave_resnet: channels of the 2-D ResNet stages (stride 2 each).")
  levels: int = setting(2, "wave_resnet: multi-level prediction from the last N 2-D stages (1..len(channels)).")
  eval_batch_size: int = setting(200, "Global eval batch.")
  checkpoint_every: int = setting(0, "Checkpoint every N steps (0 = never).")

  def __post_init__(self):
    for name in _POSITIVE:
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("max_train_examples", "max_test_examples", "checkpoint_every"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if not self.augments or len(set(self.augments)) != len(self.augments):
      raise ValueError(f"--augments must list distinct augmentations, got {list(self.augments)}")
    bad = [a for a in self.augments if a not in AUGMENTS]
    if bad:
      raise ValueError(f"--augments: unknown {bad}; choose from {','.join(AUGMENTS)}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")
    if not 0.0 <= self.mix_until <= 1.0:
      raise ValueError(f"--mix_until must be a fraction of the steps in [0, 1], got {self.mix_until}")
    if self.mix_gain_db < 0:
      raise ValueError(f"--mix_gain_db must be >= 0, got {self.mix_gain_db}")
    if not self.channels or min(self.channels) < 1:
      raise ValueError(f"--channels must list positive stage widths, got {list(self.channels)}")
    if not 1 <= self.levels <= len(self.channels):
      raise ValueError(f"--levels={self.levels} must be in 1..{len(self.channels)} (one prediction per 2-D stage "
                       f"of --channels)")


def check_devices(cfg: AudioTaggingConfig) -> None:
  n = jax.device_count()
  for name in ("batch_size", "eval_batch_size"):
    if getattr(cfg, name) % n:
      raise ValueError(f"--{name}={getattr(cfg, name)} must be a multiple of the {n} devices")


def load_data(cfg: AudioTaggingConfig) -> dict[str, Any]:
  """``train`` / ``test`` -> ``{'audio': float32 [N, T], 'labels': float32 [N, C]}``, ``class_names``,
  ``source``."""
  from research.data import pipeline
  splits = pipeline.get_info(cfg.dataset, cfg.data_dir).splits
  eval_split = next((s for s in ("test", "validation") if s in splits), None)
  if "train" not in splits or eval_split is None:
    raise ValueError(f"--dataset={cfg.dataset!r} needs a train and a test/validation split (splits: "
                     f"{sorted(splits)})")
  lim_tr, lim_te = cfg.max_train_examples or None, cfg.max_test_examples or None
  tr_x, tr_y, names = audio_data.load_audio_split(cfg.dataset, "train", cfg.data_dir, limit=lim_tr)
  te_x, te_y, _ = audio_data.load_audio_split(cfg.dataset, eval_split, cfg.data_dir, limit=lim_te)
  if len(tr_y) < cfg.batch_size:
    raise ValueError(f"{len(tr_y)} training clips are fewer than one batch (--batch_size={cfg.batch_size})")
  stride = 4 * 4 * 4 * 2 * 2 ** len(cfg.channels)  # WaveResNet's total stride over time
  if tr_x.shape[1] < stride:
    raise ValueError(f"--dataset={cfg.dataset!r}: clips of {tr_x.shape[1]} samples are shorter than the model's "
                     f"total stride {stride}; use longer clips or fewer --channels")
  return {"train": {"audio": tr_x, "labels": tr_y}, "test": {"audio": te_x, "labels": te_y},
          "class_names": names, "source": f"{cfg.dataset} (test split {eval_split!r})"}


def make_task(cfg: AudioTaggingConfig, augment: str, num_classes: int) -> audio_tagging.AudioTaggingTask:
  model = WaveResNet(num_classes=num_classes, stem_features=cfg.stem_features, front_features=cfg.front_features,
                     channels=tuple(cfg.channels), stage_strides=(2,) * len(cfg.channels), levels=cfg.levels)
  return audio_tagging.AudioTaggingTask(model=model, num_steps=cfg.steps, augment=augment, mix_until=cfg.mix_until,
                                        mix_gain_db=cfg.mix_gain_db, mixup_alpha=cfg.mixup_alpha,
                                        learning_rate=cfg.learning_rate)


def _train_one(cfg: AudioTaggingConfig, augment: str, seed: int, data: dict, workdir: str,
               run_config: dict) -> dict[str, Any]:
  name = f"{augment}_seed{seed}"
  out = os.path.join(workdir, name)
  done = reporting.stored_results(out, run_config)
  if done is not None:
    return done
  task = make_task(cfg, augment, len(data["class_names"]))
  batches = ArrayBatches(data["train"], global_batch_size=cfg.batch_size, seed=seed)
  lcfg = loop.LoopConfig(num_steps=cfg.steps, seed=seed, eval_every=0, checkpoint_every=cfg.checkpoint_every,
                         keep_checkpoints=1, log_every=max(1, cfg.steps // 10), progress_bar=False, description=name)
  _, results = loop.train(task, batches, config=lcfg, mesh=task_lib.make_mesh(), workdir=out,
                          eval_data=audio_tagging.eval_batches(data["test"], global_batch_size=cfg.eval_batch_size),
                          run_config=run_config)
  results.update({"test_mAP": results.get("eval_mAP"), "test_auc": results.get("eval_auc"),
                  "augment": augment, "seed": seed})
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(out, "results.json"), results)
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
  return results


_METRICS = ("test_mAP", "test_auc", "train_seconds", "num_params")


def run(cfg: AudioTaggingConfig, workdir: str) -> dict[str, Any]:
  """Trains and evaluates every augmentation x seed; returns (and writes) the summary."""
  t0 = time.time()
  check_devices(cfg)
  data = load_data(cfg)
  os.makedirs(workdir, exist_ok=True)
  base = dataclasses.asdict(cfg)
  runs: dict[str, list[dict]] = {}
  for augment in cfg.augments:
    for seed in cfg.seeds:
      rc = {**base, "run": augment, "seed": seed}
      runs.setdefault(augment, []).append(_train_one(cfg, augment, seed, data, workdir, rc))
  table = {a: {m: reporting.mean_std([r.get(m) for r in rs]) for m in _METRICS} for a, rs in runs.items()}
  claims: dict[str, Any] = {}
  if "mix_training" in table:
    for other in ("none", "mixup"):
      if other in table:
        gap = table["mix_training"]["test_mAP"][0] - table[other]["test_mAP"][0]
        claims[f"mix_training_minus_{other}_mAP"] = round(gap, 4)
        claims[f"mix_training_beats_{other}"] = bool(gap > 0)
  tr_y, te_y = data["train"]["labels"], data["test"]["labels"]
  summary = {"config": base, "source": data["source"], "class_names": data["class_names"],
             "num_classes": len(data["class_names"]), "num_train": int(len(tr_y)), "num_test": int(len(te_y)),
             "clip_samples": int(data["train"]["audio"].shape[1]),
             "mean_labels_per_clip": float(te_y.sum(1).mean()),
             "table": {a: {m: list(v) for m, v in row.items()} for a, row in table.items()},
             "runs": {a: [{m: r.get(m) for m in _METRICS} for r in rs] for a, rs in runs.items()},
             "claims": claims, "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)

  def cell(v, fmt):
    return "-" if v[0] is None else f"{v[0]:{fmt}} ± {v[1]:{fmt}}"
  header = ("augment", "test mAP", "test AUC", "train s", "params")
  rows = [(a, cell(row["test_mAP"], ".4f"), cell(row["test_auc"], ".4f"), cell(row["train_seconds"], ".1f"),
           f"{row['num_params'][0]:.0f}" if row["num_params"][0] is not None else "-") for a, row in table.items()]
  reporting.write_markdown(
      os.path.join(workdir, "summary.md"),
      f"# Raw-waveform audio tagging with mix-training on {data['source']}, seeds {','.join(map(str, cfg.seeds))}",
      f"{summary['num_train']} train / {summary['num_test']} test clips of {summary['clip_samples']} samples, "
      f"{summary['num_classes']} classes, {summary['mean_labels_per_clip']:.2f} labels per test clip. wave_resnet "
      f"(1-D stem {cfg.stem_features}, frames F={cfg.front_features}, 2-D stages {list(cfg.channels)}, "
      f"{cfg.levels} prediction levels), {cfg.steps} steps, batch {cfg.batch_size}, Adam {cfg.learning_rate:g} "
      f"cosine; mix-training on for the first {cfg.mix_until:g} of the steps, gains up to -{cfg.mix_gain_db:g} dB; "
      f"mixup alpha {cfg.mixup_alpha:g}. Mean ± std over seeds.",
      reporting.markdown_table(header, rows),
      "claims: " + (json.dumps(claims) if claims else "none checked (needs mix_training and none/mixup)"))
  return summary
