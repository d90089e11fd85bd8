"""Voice-face cross-modal matching and retrieval (seed 001 Q3): ``run(VoiceFaceConfig, workdir) -> summary``.

Data: the offline ``voice_face`` corpus (``research.data.voice_face``: identities whose procedural face and
synthetic voice share gender / age / size; train and test identities are disjoint), or any TFDS dataset prepared in
``data_dir`` with the same features (``face`` [F, H, W, 3] uint8, ``voice`` [V, T, M] float32, ``identity``; one
record per identity).

For every seed and every loss of ``losses``: a :class:`~research.models.sequence.voice_face.VoiceFaceNet` (face CNN
+ voice CNN into one L2-normalised ``embed_dim``-d space) trained through ``research.train.loop.train`` on
identity-based P x K batches (``research.train.voice_face.IdentityBatches``) with the voice-anchored triplet loss
(``triplet``) or the contrastive-loss variant (``contrastive``), then evaluated on the unseen test identities:
1:2 matching voice -> face and face -> voice over ``num_triplets`` fixed seeded triplets, the same with embeddings
averaged over ``average`` voices / faces per identity, and retrieval mAP (voice queries over all test faces; single
and averaged voice queries).

Claims checked (``claims`` in the summary; thresholds fixed in advance): (a) ``matching_above_chance``: the
triplet run's mean 1:2 voice -> face accuracy on unseen identities is >= 0.6 (chance 0.5); (b)
``averaging_improves_matching`` / ``averaging_improves_map``: averaged embeddings beat single ones (mean over seeds)
for the triplet run; (c) ``triplet_minus_contrastive_match_v2f``: the difference of the two losses (reported, no
threshold: a comparison, not a claim of the paper).

Writes ``workdir/<loss>_seed<s>/`` (loop outputs, ``results.json``), ``summary.json`` and ``summary.md``; a
finished run (``results.json`` with the same settings) is not trained again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import numpy as np

from research import fileio
from research.configs import setting
from research.methods import reporting
from research.models.sequence.voice_face import VoiceFaceNet
from research.train import loop
from research.train import task as task_lib
from research.train import voice_face as vf_task

_POSITIVE = ("steps", "identities_per_batch", "examples_per_identity", "learning_rate", "embed_dim", "margin",
             "contrastive_margin", "num_triplets", "average", "eval_batch_size")


@dataclasses.dataclass(frozen=True)
class VoiceFaceConfig:
  """One voice-face experiment (``python -m experiments.voice_face``); each field is one flag."""
  dataset: str = setting("voice_face", "TFDS dataset: voice_face[/small] (offline, built on first use) or one "
                         "prepared in --data_dir with features face, voice, identity (one record per identity).")
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  losses: tuple[str, ...] = setting(("triplet", "contrastive"), "Losses to train: triplet (voice-anchored) and / or "
                                    "contrastive.", choices=vf_task.LOSSES)
  seeds: tuple[int, ...] = setting((0, 1), "Seeds; every loss is trained once per seed.")
  steps: int = setting(1500, "Training steps per run.")
  identities_per_batch: int = setting(8, "P: distinct identities per batch (identity-based sampling).")
  examples_per_identity: int = setting(4, "K: faces and voices per identity in a batch.")
  learning_rate: float = setting(1e-3, "Adam learning rate.")
  embed_dim: int = setting(64, "Dimension of the shared L2-normalised embedding.")
  widths: tuple[int, ...] = setting((16, 32, 64), "Conv widths of the CNN stages (both encoders).")
  mining: str = setting("batch_all", "Triplet mining: batch_all (every voice-positive-negative triplet of the batch) "
                        "or batch_hard (collapses from scratch on voice_face: all embeddings equal, loss = margin).",
                        choices=vf_task.MININGS)
  margin: float = setting(0.3, "Triplet margin (unit-norm embeddings: distances in [0, 2]).")
  contrastive_margin: float = setting(1.0, "Contrastive-loss margin of dissimilar pairs.")
  face_anchor_weight: float = setting(0.0, "Weight of the optional face-anchored triplet term (0 = voice anchors "
                                      "only, as the paper).")
  num_triplets: int = setting(10_000, "1:2 matching triplets (fixed, seeded) per direction.")
  average: int = setting(4, "Voices / faces averaged per identity in the averaged matching and retrieval.")
  eval_batch_size: int = setting(200, "Evaluation batch (rows of one face + one voice).")
  checkpoint_every: int = setting(0, "Checkpoint period in steps (0 = only the final state).")

  def __post_init__(self):
    for name in _POSITIVE:
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    if self.checkpoint_every < 0:
      raise ValueError(f"--checkpoint_every must be >= 0, got {self.checkpoint_every}")
    if self.identities_per_batch < 2:
      raise ValueError(f"--identities_per_batch must be >= 2 (negatives come from other identities), got "
                       f"{self.identities_per_batch}")
    if not self.losses or len(set(self.losses)) != len(self.losses):
      raise ValueError(f"--losses must list distinct losses, got {list(self.losses)}")
    bad = [m for m in self.losses if m not in vf_task.LOSSES]
    if bad:
      raise ValueError(f"--losses: unknown {bad}; choose from {','.join(vf_task.LOSSES)}")
    if self.mining not in vf_task.MININGS:
      raise ValueError(f"--mining={self.mining!r}; choose one of {vf_task.MININGS}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")
    if not self.widths or min(self.widths) < 1:
      raise ValueError(f"--widths must list positive conv widths, got {list(self.widths)}")
    if self.face_anchor_weight < 0:
      raise ValueError(f"--face_anchor_weight must be >= 0, got {self.face_anchor_weight}")


# ------------------------------------------------------------------------------------------------ data


def load_split(dataset: str, split: str, data_dir: str | None) -> dict[str, np.ndarray]:
  """One split as ``face`` uint8 [N, F, H, W, 3], ``voice`` float32 [N, V, T, M], ``identity`` int64 [N] (sorted
  by identity)."""
  from research.data import pipeline
  info = pipeline.get_info(dataset, data_dir)
  missing = [k for k in ("face", "voice", "identity") if k not in info.features]
  if missing:
    raise ValueError(f"--dataset={dataset!r} has no feature(s) {missing}; a voice-face dataset needs face "
                     f"[F, H, W, 3], voice [V, T, M] and identity (features: {sorted(info.features)})")
  rows = pipeline.read_split(dataset, split, data_dir, order_by="identity")
  out = {"face": np.stack([np.asarray(r["face"], np.uint8) for r in rows]),
         "voice": np.stack([np.asarray(r["voice"], np.float32) for r in rows]),
         "identity": np.asarray([int(r["identity"]) for r in rows], np.int64)}
  if out["face"].ndim != 5 or out["voice"].ndim != 4:
    raise ValueError(f"--dataset={dataset!r}: face must be [F, H, W, 3] and voice [V, T, M] per record, got "
                     f"{out['face'].shape[1:]} and {out['voice'].shape[1:]}")
  return out


def load_data(cfg: VoiceFaceConfig) -> dict[str, Any]:
  train, test = load_split(cfg.dataset, "train", cfg.data_dir), load_split(cfg.dataset, "test", cfg.data_dir)
  shared = sorted(set(train["identity"].tolist()) & set(test["identity"].tolist()))
  if shared:
    raise ValueError(f"--dataset={cfg.dataset!r}: identities {shared[:5]} occur in both train and test; matching "
                     f"must be evaluated on unseen identities")
  if cfg.identities_per_batch > len(train["identity"]):
    raise ValueError(f"--identities_per_batch={cfg.identities_per_batch} exceeds the {len(train['identity'])} "
                     f"training identities")
  s = min(test["face"].shape[1], test["voice"].shape[1])
  if cfg.average > s:
    raise ValueError(f"--average={cfg.average} exceeds the {s} faces / voices per test identity")
  test = {"face": test["face"][:, :s], "voice": test["voice"][:, :s], "identity": test["identity"]}
  return {"train": train, "test": test}


# ------------------------------------------------------------------------------------------------ runs


def make_task(cfg: VoiceFaceConfig, loss: str, seed: int) -> vf_task.VoiceFaceTask:
  model = VoiceFaceNet(widths=tuple(cfg.widths), embed_dim=cfg.embed_dim)
  return vf_task.VoiceFaceTask(model=model, loss_name=loss, mining=cfg.mining, margin=cfg.margin,
                               contrastive_margin=cfg.contrastive_margin, face_anchor_weight=cfg.face_anchor_weight,
                               learning_rate=cfg.learning_rate, num_triplets=cfg.num_triplets, average=cfg.average,
                               eval_seed=0)


def _train_one(cfg: VoiceFaceConfig, loss: str, seed: int, data: dict, workdir: str,
               run_config: dict) -> dict[str, Any]:
  name = f"{loss}_seed{seed}"
  out = os.path.join(workdir, name)
  done = reporting.stored_results(out, run_config)
  if done is not None:
    return done
  tr, te = data["train"], data["test"]
  batches = vf_task.IdentityBatches(tr["face"], tr["voice"], tr["identity"],
                                    identities_per_batch=cfg.identities_per_batch,
                                    examples_per_identity=cfg.examples_per_identity, seed=seed)
  lcfg = loop.LoopConfig(num_steps=cfg.steps, seed=seed, eval_every=0, checkpoint_every=cfg.checkpoint_every,
                         keep_checkpoints=1, log_every=max(1, cfg.steps // 20), progress_bar=False, description=name)
  _, results = loop.train(make_task(cfg, loss, seed), batches, config=lcfg, mesh=task_lib.make_mesh(), workdir=out,
                          eval_data=vf_task.eval_batches(te["face"], te["voice"], te["identity"],
                                                         global_batch_size=cfg.eval_batch_size),
                          run_config=run_config)
  results.update({"run": loss, "seed": seed})
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(out, "results.json"), results)
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
  return results


def metric_names(average: int) -> tuple[str, ...]:
  m = average
  return ("match_v2f", f"match_v2f_avg{m}", "match_f2v", f"match_f2v_avg{m}", "map_v2f", f"map_v2f_avg{m}")


def run(cfg: VoiceFaceConfig, workdir: str) -> dict[str, Any]:
  """Trains and evaluates every loss x seed; returns (and writes) the summary."""
  t0 = time.time()
  data = load_data(cfg)
  os.makedirs(workdir, exist_ok=True)
  base = dataclasses.asdict(cfg)
  runs: dict[str, list[dict]] = {}
  for loss in cfg.losses:
    for seed in cfg.seeds:
      rc = {**base, "run": loss, "seed": seed}
      runs.setdefault(loss, []).append(_train_one(cfg, loss, seed, data, workdir, rc))
  names = metric_names(cfg.average)
  table = {loss: {**{m: reporting.mean_std([r.get(f"eval_{m}") for r in rs]) for m in names},
                  "train_seconds": reporting.mean_std([r.get("train_seconds") for r in rs])}
           for loss, rs in runs.items()}
  claims: dict[str, Any] = {}
  m = cfg.average
  if "triplet" in table:
    t = table["triplet"]
    claims["matching_above_chance"] = bool(t["match_v2f"][0] >= 0.6)
    claims["averaging_improves_matching"] = bool(t[f"match_v2f_avg{m}"][0] > t["match_v2f"][0]
                                                 and t[f"match_f2v_avg{m}"][0] > t["match_f2v"][0])
    claims["averaging_improves_map"] = bool(t[f"map_v2f_avg{m}"][0] > t["map_v2f"][0])
    if "contrastive" in table:
      claims["triplet_minus_contrastive_match_v2f"] = round(t["match_v2f"][0] - table["contrastive"]["match_v2f"][0],
                                                             4)
      claims["triplet_minus_contrastive_map_v2f"] = round(t["map_v2f"][0] - table["contrastive"]["map_v2f"][0], 4)
  tr, te = data["train"], data["test"]
  summary = {"config": base, "num_train_identities": int(len(tr["identity"])),
             "num_test_identities": int(len(te["identity"])), "examples_per_test_identity": int(te["face"].shape[1]),
             "table": {n: {k: list(v) for k, v in row.items()} for n, row in table.items()},
             "runs": {n: [{k: r.get(f"eval_{k}") for k in names} for r in rs] for n, rs in runs.items()},
             "claims": claims, "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)

  def cell(v, fmt=".3f"):
    return "-" if v[0] is None else f"{v[0]:{fmt}} ± {v[1]:{fmt}}"
  header = ("loss", "1:2 v→f", f"1:2 v→f avg{m}", "1:2 f→v", f"1:2 f→v avg{m}", "mAP v→f", f"mAP v→f avg{m}",
            "train s")
  rows = [(n, *(cell(row[k]) for k in names), cell(row["train_seconds"], ".0f")) for n, row in table.items()]
  reporting.write_markdown(
      os.path.join(workdir, "summary.md"),
      f"# Voice-face matching on {cfg.dataset}, seeds {','.join(map(str, cfg.seeds))}",
      f"{summary['num_train_identities']} train / {summary['num_test_identities']} unseen test identities "
      f"({summary['examples_per_test_identity']} faces + voices each). {cfg.steps} steps of "
      f"P={cfg.identities_per_batch} x K={cfg.examples_per_identity} identity batches, Adam {cfg.learning_rate:g}, "
      f"embedding {cfg.embed_dim}-d "
      f"(unit norm), {cfg.mining} triplet margin {cfg.margin:g}. 1:2 matching over {cfg.num_triplets} fixed triplets "
      f"(chance 0.5); avg{m}: embeddings averaged over {m} examples per identity. Mean ± std over seeds.",
      reporting.markdown_table(header, rows),
      "claims: " + json.dumps(claims))
  return summary


__all__ = ["VoiceFaceConfig", "load_data", "load_split", "make_task", "metric_names", "run"]
