"""Two-stream attention and the sentence auto-encoder (Goel et al. 2019) on ``shapes_captions``:
``run(CaptioningConfig, workdir) -> summary``.

Once per experiment: the captions are tokenised and the vocabulary built from the training captions; the encoder
(a shapes-pretrained backbone, ``research.train.pretrain``, random when ``pretrain_steps=0``; then trained as a
visual-concept detector on the training images, ``research.train.captioning.ConceptTask``, in ``concepts/``) is
frozen and computes the region features of every image. Per seed: the sentence auto-encoder is pre-trained on the
training captions (``sae_seed<s>/``) when a ``*_sae`` row is asked for, then every row of ``rows`` is trained
through ``research.train.loop.train`` and evaluated on the validation images with beam search (BLEU-4, CIDEr-D):

* ``soft``            Show-Attend-Tell soft attention (the baseline);
* ``two_stream``      two-stream attention (Goel et al. §3);
* ``soft_sae``        soft attention + the frozen SAE-Dec regulariser (Goel et al. §3), weight ``sae_weight``;
* ``two_stream_sae``  both (the paper's full model).

Claims checked (``claims`` in the summary, on the mean over seeds, for BLEU-4 and CIDEr-D separately):
``two_stream_beats_soft`` (two_stream > soft and two_stream_sae > soft_sae, where trained) and
``sae_improves`` (soft_sae > soft and two_stream_sae > two_stream). Writes ``workdir/<row>_seed<s>/`` (loop
outputs, ``run.json``), ``summary.json``, ``summary.md`` and ``captioning_examples.png`` (a few validation images,
the captions of the first seed's models and the two-stream model's attention maps per word); a finished run whose
settings are unchanged is not trained again (its final checkpoint is restored for the figure; its stored results,
training wall time included, are reported).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import textwrap
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research import fileio
from research.configs import setting
from research.data import captions as captions_lib
from research.data.memory import ArrayBatches
from research.methods import reporting
from research.models import registry
from research.models.sequence import captioning as cap
from research.train import captioning as cap_train
from research.train import loop
from research.train import task as task_lib

ROWS = ("soft", "two_stream", "soft_sae", "two_stream_sae")
_MODEL = {"soft": "caption_soft_attention", "two_stream": "caption_two_stream"}
_POSITIVE = ("num_steps", "batch_size", "learning_rate", "concept_learning_rate", "embed_dim", "hidden_dim",
             "context_dim", "attn_dim", "num_categories", "sae_batch_size", "sae_learning_rate", "sae_hidden_dim",
             "sae_code_dim", "beam_width", "eval_batch_size", "backbone_width")


@dataclasses.dataclass(frozen=True)
class CaptioningConfig:
  """One captioning experiment (``python -m experiments.captioning``); each field is one flag."""
  data_dir: str | None = setting(None, "TFDS data directory (default: $RESEARCH_DATA_DIR or ~/research_datasets).")
  dataset: str = setting("shapes_captions/64", "Captioning dataset: shapes_captions/<64|small> (built on first use) "
                         "or a TFDS dataset in --data_dir with 'image' and 'captions' features.")
  eval_split: str = setting("validation", "Split the captions are generated and scored on.")
  max_train_images: int = setting(0, "Use only the first N training images (0 = all).")
  max_eval_images: int = setting(0, "Evaluate on the first N images of --eval_split (0 = all).")
  rows: tuple[str, ...] = setting(ROWS, "Models to train: soft, two_stream, soft_sae, two_stream_sae.", choices=ROWS)
  seeds: tuple[int, ...] = setting((0, 1), "Seeds; every row (and the SAE) is trained once per seed.")
  backbone: str = setting("resnet18", "Encoder backbone of the model zoo (features_only), frozen.")
  backbone_width: int = setting(16, "First-stage width of the backbone (ResNet families).")
  feature_level: str = setting("C3", "Backbone feature map used as regions (C3: stride 8, 8x8 regions at 64 px).")
  pretrain_steps: int = setting(1500, "Pre-train the backbone as a 'shapes' classifier for this many steps "
                                "(research.train.pretrain; reused when done; 0 = a random frozen encoder).")
  pretrain_dir: str = setting("/tmp/research/backbones", "Where pre-trained backbones are kept.")
  concept_steps: int = setting(1500, "Then train the encoder as a visual-word detector (MIL over regions) on the "
                               "training images for this many steps before freezing it (0 = skip).")
  concept_learning_rate: float = setting(1e-3, "Adam learning rate of the concept pre-training.")
  num_steps: int = setting(2000, "Training steps of every captioning run.")
  batch_size: int = setting(32, "Global batch (images, one random caption each).")
  learning_rate: float = setting(2e-3, "Adam learning rate of the captioner.")
  embed_dim: int = setting(64, "Word embedding width.")
  hidden_dim: int = setting(128, "LSTM width of the caption decoder.")
  context_dim: int = setting(128, "Width D of the region values / context vector.")
  attn_dim: int = setting(64, "Width A of the attention MLP.")
  num_categories: int = setting(8, "K, latent categories of the two-stream attention.")
  dropout: float = setting(0.0, "Dropout before the decoder's output layer.")
  sae_steps: int = setting(1500, "Pre-training steps of the sentence auto-encoder.")
  sae_batch_size: int = setting(64, "Batch of captions for the SAE.")
  sae_learning_rate: float = setting(3e-3, "Adam learning rate of the SAE.")
  sae_hidden_dim: int = setting(128, "LSTM width of the SAE encoder and decoder.")
  sae_code_dim: int = setting(64, "Width of the SAE's fixed sentence vector.")
  sae_weight: float = setting(0.5, "lambda: weight of the SAE-Dec cross-entropy in the captioning loss.")
  beam_width: int = setting(3, "Beam width of evaluation decoding (1 = greedy).")
  length_penalty: float = setting(0.0, "Beam score = sum log p / length ** length_penalty.")
  max_caption_len: int = setting(0, "Tokens per caption with <eos> (0 = the longest caption of the data).")
  eval_batch_size: int = setting(100, "Global eval batch (images).")
  eval_every: int = setting(0, "Evaluate every N steps (0 = only at the end).")
  num_examples: int = setting(4, "Validation images in captioning_examples.png (0 = no figure).")

  def __post_init__(self):
    for name in _POSITIVE:
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("max_train_images", "max_eval_images", "pretrain_steps", "eval_every", "max_caption_len",
                 "sae_steps", "concept_steps", "num_examples"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if not self.rows:
      raise ValueError(f"--rows is empty: choose from {','.join(ROWS)}")
    bad = [r for r in self.rows if r not in ROWS]
    if bad:
      raise ValueError(f"--rows {bad}: choose from {','.join(ROWS)}")
    if len(set(self.rows)) != len(self.rows):
      raise ValueError(f"--rows lists a row twice: {','.join(self.rows)}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"--seeds must list distinct seeds, got {list(self.seeds)}")
    if any(r.endswith("_sae") for r in self.rows):
      if self.sae_steps <= 0:
        raise ValueError(f"--sae_steps={self.sae_steps}: the *_sae rows need a pre-trained sentence auto-encoder")
      if self.sae_weight <= 0:
        raise ValueError(f"--sae_weight={self.sae_weight} must be positive for the *_sae rows")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"--dropout={self.dropout} must lie in [0, 1)")
    if self.length_penalty < 0:
      raise ValueError(f"--length_penalty={self.length_penalty} must be >= 0")

  @property
  def decoder_kwargs(self) -> dict[str, Any]:
    return {"embed_dim": self.embed_dim, "hidden_dim": self.hidden_dim, "context_dim": self.context_dim,
            "attn_dim": self.attn_dim, "num_categories": self.num_categories, "dropout_rate": self.dropout}

  @property
  def sae_kwargs(self) -> dict[str, Any]:
    return {"embed_dim": self.embed_dim, "hidden_dim": self.sae_hidden_dim, "code_dim": self.sae_code_dim}


def check_devices(cfg: CaptioningConfig) -> None:
  n = jax.device_count()
  for name in ("batch_size", "sae_batch_size", "eval_batch_size"):
    if getattr(cfg, name) % n:
      raise ValueError(f"--{name}={getattr(cfg, name)} must be a multiple of the {n} devices")


# ------------------------------------------------------------------------------------------------------ data


def load_data(cfg: CaptioningConfig) -> dict[str, Any]:
  """Images, tokenised captions, the vocabulary and the encoded captions of the train and eval splits."""
  train = captions_lib.load_split("train", cfg.data_dir, cfg.dataset, limit=cfg.max_train_images or None)
  val = captions_lib.load_split(cfg.eval_split, cfg.data_dir, cfg.dataset, limit=cfg.max_eval_images or None)
  if train["images"].shape[1:] != val["images"].shape[1:]:
    raise ValueError(f"--dataset={cfg.dataset!r}: train images {train['images'].shape[1:]} and {cfg.eval_split} "
                     f"images {val['images'].shape[1:]} differ in size")
  train_tok = cap_train.tokenize_captions(train["captions"])
  val_tok = cap_train.tokenize_captions(val["captions"])
  vocab = cap_train.build_vocabulary(train_tok)
  max_len = cfg.max_caption_len or max(cap_train.longest_caption(train_tok), cap_train.longest_caption(val_tok))
  return {"train": train, "val": val, "train_tok": train_tok, "val_tok": val_tok, "vocab": vocab, "max_len": max_len,
          "train_enc": cap_train.encode_captions(train_tok, vocab, max_len),
          "val_enc": cap_train.encode_captions(val_tok, vocab, max_len)}


def encoder_model(cfg: CaptioningConfig, vocab_size: int) -> cap.Captioner:
  kwargs = {"width": cfg.backbone_width} if cfg.backbone.startswith(("resnet", "resnext", "wide_resnet", "se_res")) \
      else {}
  return registry.create(_MODEL["two_stream"], vocab_size=vocab_size, backbone=cfg.backbone, backbone_kwargs=kwargs,
                         feature_level=cfg.feature_level)


_ENCODER_SETTINGS = ("data_dir", "dataset", "max_train_images", "backbone", "backbone_width", "feature_level",
                     "pretrain_steps", "concept_steps", "concept_learning_rate", "batch_size")


def compute_regions(cfg: CaptioningConfig, data: dict[str, Any], workdir: str
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """Region features of the train and eval images from the frozen encoder (shapes-pretrained backbone, then
  ``concept_steps`` of visual-concept training in ``workdir/concepts``, shared by all seeds and rows as pre-trained
  weights are); info on the encoder."""
  model = encoder_model(cfg, len(data["vocab"]))
  images = data["train"]["images"]
  variables = jax.jit(lambda r: model.init(r, cap_train.normalize_images(images[:1]), method=cap.Captioner.encode))(
      jax.random.PRNGKey(0))
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  info: dict[str, Any] = {"backbone": cfg.backbone, "pretrained": False}
  if cfg.pretrain_steps:
    from research.train import pretrain
    ckpt = pretrain.pretrain_backbone(cfg.backbone, width=cfg.backbone_width, steps=cfg.pretrain_steps, seed=0,
                                      pretrain_dir=cfg.pretrain_dir, data_dir=cfg.data_dir)
    params, state = pretrain.load_backbone(params, state, ckpt)
    info.update(pretrained=True, checkpoint=ckpt)
  variables = {"params": params, **state}
  if cfg.concept_steps:
    out = os.path.join(workdir, "concepts")
    rc = {k: getattr(cfg, k) for k in _ENCODER_SETTINGS}
    done = _fresh(out, rc)
    task = cap_train.ConceptTask(model, variables, num_words=len(data["vocab"]),
                                 learning_rate=cfg.concept_learning_rate)
    train = {"images": images, "concepts": cap_train.concept_targets(data["train_tok"], data["vocab"])}
    val = {"images": data["val"]["images"], "concepts": cap_train.concept_targets(data["val_tok"], data["vocab"])}

    def evals():
      from research.data.memory import padded_eval_rows
      for rows, valid in padded_eval_rows(len(val["images"]), cfg.eval_batch_size):
        yield {**{k: v[rows] for k, v in val.items()}, "valid": valid}

    state, res = loop.train(task, ArrayBatches(train, global_batch_size=cfg.batch_size, seed=0),
                            config=_loop_config("concepts", cfg.concept_steps, 0, 0), mesh=task_lib.make_mesh(),
                            workdir=out, eval_data=evals, run_config=rc)
    res = _finish(out, rc, res, done)
    variables = task.encoder_variables_of(state)
    info["concepts"] = {k: res.get(f"eval_{k}") for k in ("bce", "precision", "recall")}
    info["concepts"]["seconds"] = round(res["wall_seconds"], 1)
  train = cap_train.encode_regions(model, variables, images)
  val = cap_train.encode_regions(model, variables, data["val"]["images"])
  info["regions"] = list(train.shape[1:])
  return train, val, info


# ----------------------------------------------------------------------------------------------------- runs


def _fresh(out: str, run_config: dict) -> dict[str, Any] | None:
  """The stored results of a finished run in ``out`` with these settings (None if there are none); a run
  directory whose stored settings differ from ``run_config`` is removed (trained again from scratch)."""
  done = reporting.stored_results(out, run_config)
  if os.path.exists(os.path.join(out, "run.json")) and done is None:
    shutil.rmtree(out)
  return done


def _finish(out: str, run_config: dict, results: dict[str, Any], done: dict[str, Any] | None) -> dict[str, Any]:
  """Writes ``run.json``; a reused run keeps its stored results (the training wall time, not the restore's)."""
  if done is not None:
    results = done
  if fileio.main_process():
    fileio.write_json_atomic(os.path.join(out, "run.json"), run_config)
    fileio.write_json_atomic(os.path.join(out, "results.json"), results)
  return results


def _loop_config(name: str, steps: int, seed: int, eval_every: int) -> loop.LoopConfig:
  return loop.LoopConfig(num_steps=steps, seed=seed, eval_every=eval_every, checkpoint_every=steps, keep_checkpoints=1,
                         log_every=max(1, min(50, steps)), progress_bar=False, description=name, tensorboard=False)


def train_sae(cfg: CaptioningConfig, data: dict[str, Any], seed: int, workdir: str, base: dict):
  """Pre-trains (or restores) the sentence auto-encoder of ``seed``: ``(params, results)``."""
  out = os.path.join(workdir, f"sae_seed{seed}")
  rc = {**base, "run": "sae", "seed": seed}
  done = _fresh(out, rc)
  task = cap_train.SentenceAutoEncoderTask(vocab_size=len(data["vocab"]), learning_rate=cfg.sae_learning_rate,
                                           **cfg.sae_kwargs)
  flat_train = cap_train.flat_captions(data["train_enc"])
  flat_val = cap_train.flat_captions(data["val_enc"])
  batches = ArrayBatches(flat_train, global_batch_size=cfg.sae_batch_size, seed=seed)

  def evals():
    from research.data.memory import padded_eval_rows
    for rows, valid in padded_eval_rows(len(flat_val["inputs"]), cfg.eval_batch_size):
      yield {**{k: v[rows] for k, v in flat_val.items()}, "valid": valid}

  state, results = loop.train(task, batches, config=_loop_config("sae", cfg.sae_steps, seed, 0),
                              mesh=task_lib.make_mesh(), workdir=out, eval_data=evals, run_config=rc)
  return jax.device_get(state.params), _finish(out, rc, results, done)


def train_captioner(cfg: CaptioningConfig, data: dict[str, Any], regions: tuple[np.ndarray, np.ndarray], row: str,
                    seed: int, sae_params, workdir: str, base: dict):
  """Trains (or restores) one row: ``(task, params, results)``."""
  out = os.path.join(workdir, f"{row}_seed{seed}")
  rc = {**base, "run": row, "seed": seed}
  done = _fresh(out, rc)
  use_sae = row.endswith("_sae")
  task = cap_train.CaptioningTask(
      model_name=_MODEL[row.removesuffix("_sae")], vocab_size=len(data["vocab"]), max_len=data["max_len"],
      model_kwargs=cfg.decoder_kwargs, learning_rate=cfg.learning_rate, sae_weight=cfg.sae_weight if use_sae else 0.0,
      sae_decoder=sae_params["decoder"] if use_sae else None, sae_kwargs=cfg.sae_kwargs, beam_width=cfg.beam_width,
      length_penalty=cfg.length_penalty, references=data["val_tok"], vocab_tokens=tuple(data["vocab"].tokens))
  train_regions, val_regions = regions
  arrays = {"regions": train_regions, **{k: data["train_enc"][k] for k in ("inputs", "targets", "mask",
                                                                           "num_captions")}}
  batches = ArrayBatches(arrays, global_batch_size=cfg.batch_size, seed=seed, transform=cap_train.CaptionSampler())
  evals = cap_train.eval_batches(val_regions, data["val_enc"], global_batch_size=cfg.eval_batch_size)
  state, results = loop.train(task, batches, config=_loop_config(row, cfg.num_steps, seed, cfg.eval_every),
                              mesh=task_lib.make_mesh(), workdir=out, eval_data=evals, run_config=rc)
  return task, jax.device_get(state.params), _finish(out, rc, results, done)


_METRICS = ("bleu4", "cider_d", "bleu1", "caption_ce", "mean_length")


def _claims(table: dict[str, dict[str, tuple[float, float]]]) -> dict[str, Any]:
  claims: dict[str, Any] = {}
  for metric in ("bleu4", "cider_d"):
    mean = {row: v[metric][0] for row, v in table.items()}
    pairs = {"two_stream_beats_soft": [("two_stream", "soft"), ("two_stream_sae", "soft_sae")],
             "sae_improves": [("soft_sae", "soft"), ("two_stream_sae", "two_stream")]}
    for claim, cmp in pairs.items():
      have = [(a, b) for a, b in cmp if a in mean and b in mean]
      if have:
        claims[f"{claim}_{metric}"] = bool(all(mean[a] > mean[b] for a, b in have))
        claims[f"{claim}_{metric}_deltas"] = {f"{a}-{b}": round(mean[a] - mean[b], 4) for a, b in have}
  return claims


def run(cfg: CaptioningConfig, workdir: str) -> dict[str, Any]:
  """Trains and evaluates every row x seed; returns (and writes) the summary."""
  t0 = time.time()
  check_devices(cfg)
  data = load_data(cfg)
  os.makedirs(workdir, exist_ok=True)
  t_enc = time.time()
  train_regions, val_regions, enc_info = compute_regions(cfg, data, workdir)
  enc_info["seconds"] = round(time.time() - t_enc, 1)
  base = dataclasses.asdict(cfg)
  # the settings a run depends on (which other rows / seeds run, or the figure, do not change it)
  run_base = {k: v for k, v in base.items() if k not in ("rows", "seeds", "num_examples")}
  runs: dict[str, list[dict]] = {}
  sae_results = []
  keep: dict[str, tuple] = {}
  for seed in cfg.seeds:
    sae_params = None
    if any(r.endswith("_sae") for r in cfg.rows):
      sae_params, res = train_sae(cfg, data, seed, workdir, run_base)
      sae_results.append(res)
    for row in cfg.rows:
      task, params, res = train_captioner(cfg, data, (train_regions, val_regions), row, seed, sae_params, workdir,
                                          run_base)
      runs.setdefault(row, []).append(res)
      if seed == cfg.seeds[0]:
        keep[row] = (task, params)

  table: dict[str, dict[str, tuple[float, float]]] = {}
  for row, results in runs.items():
    table[row] = {m: reporting.mean_std([r.get(f"eval_{m}") for r in results]) for m in _METRICS}
    table[row]["wall_seconds"] = reporting.mean_std([r["wall_seconds"] for r in results])
  claims = _claims(table)
  figure = None
  if fileio.main_process() and cfg.num_examples:
    figure = os.path.join(workdir, "captioning_examples.png")
    examples_figure(figure, data, val_regions, keep, cfg.num_examples)
  summary = {
      "config": base, "vocab_size": len(data["vocab"]), "max_caption_len": data["max_len"],
      "num_train_images": int(len(train_regions)), "num_eval_images": int(len(val_regions)), "encoder": enc_info,
      "table": {k: {m: list(v) for m, v in row.items()} for k, row in table.items()},
      "runs": {k: [{m: r.get(f"eval_{m}") for m in _METRICS} for r in v] for k, v in runs.items()},
      "sae": [{k: r.get(f"eval_{k}") for k in ("ce", "token_accuracy", "sentence_accuracy")} for r in sae_results],
      "claims": claims, "figure": figure, "load_average": list(os.getloadavg()),
      "wall_seconds": round(time.time() - t0, 1)}
  reporting.write_summary(workdir, summary)
  header = ("row", "BLEU-4", "CIDEr-D", "BLEU-1", "val CE", "length", "wall s")
  rows = []
  for name, row in table.items():
    cells = [f"{row[m][0]:.3f} ± {row[m][1]:.3f}" if row[m][0] is not None else "-" for m in _METRICS]
    rows.append((name, *cells, f"{row['wall_seconds'][0]:.0f}"))
  sae_line = ("SAE reconstruction (eval captions): " + ", ".join(
      f"seed {s}: token acc {r['token_accuracy']:.3f}, sentence acc {r['sentence_accuracy']:.3f}"
      for s, r in zip(cfg.seeds, summary["sae"]))) if sae_results else "no SAE rows"
  reporting.write_markdown(
      os.path.join(workdir, "summary.md"),
      f"# Captioning on {cfg.dataset} ({len(train_regions)} train / {len(val_regions)} {cfg.eval_split} images, "
      f"vocabulary {len(data['vocab'])}), seeds {','.join(map(str, cfg.seeds))}, {cfg.num_steps} steps, "
      f"beam {cfg.beam_width}",
      "mean ± std over seeds; BLEU-4 and CIDEr-D on the eval split against all reference captions",
      reporting.markdown_table(header, rows), sae_line, "claims: " + json.dumps(claims))
  return summary


# ---------------------------------------------------------------------------------------------------- figure


def examples_figure(path: str, data: dict[str, Any], val_regions: np.ndarray, models: dict[str, tuple],
                    num: int) -> None:
  """``num`` validation images, one row each: the image with the captions of every model of ``models`` (row ->
  (task, params)) and the first reference, then the attention map of the two-stream model (the ``*_sae`` one when
  trained, else the plain one; else the soft one) for each generated word."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  num = min(num, len(val_regions))
  idx = np.arange(num)
  regions = jnp.asarray(val_regions[idx])
  attn_row = next((r for r in ("two_stream_sae", "two_stream", "soft_sae", "soft") if r in models), None)
  captions, att = {}, None
  for row, (task, params) in models.items():
    if row == attn_row:
      res = cap_train.caption_with_attention(task, params, val_regions[idx])
      tokens, att = res["tokens"], res["alpha"]
    else:
      tokens = np.asarray(jax.jit(task.generate)(params, regions))
    captions[row] = task.decode_ids(tokens)
  images = data["val"]["images"][idx]
  r = val_regions.shape[1]
  side = int(round(np.sqrt(r)))
  words = 6
  fig, axes = plt.subplots(num, words + 1, figsize=(2.0 * words + 4.4, 2.9 * num), squeeze=False,
                           gridspec_kw={"width_ratios": [2.2] + [1] * words})
  for i in range(num):
    ax = axes[i, 0]
    ax.imshow(images[i])
    lines = [f"{row}: {' '.join(c[i])}" for row, c in captions.items()] + [f"ref: {' '.join(data['val_tok'][i][0])}"]
    text = "\n".join(textwrap.shorten(line, 84, placeholder=" ...") for line in lines)
    ax.set_title(text, fontsize=6, loc="left")
    ax.axis("off")
    toks = captions[attn_row][i] if attn_row else []
    for j in range(words):
      ax = axes[i, j + 1]
      ax.axis("off")
      if att is None or j >= len(toks) or side * side != r:
        continue
      ax.imshow(images[i])
      amap = att[i, j].reshape(side, side)
      ax.imshow(amap, cmap="magma", alpha=0.6, extent=(0, images.shape[2], images.shape[1], 0),
                interpolation="bilinear")
      ax.set_title(f"{attn_row}: '{toks[j]}'", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
