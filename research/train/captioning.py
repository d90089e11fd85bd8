"""Captioning on the ONE loop (Goel et al. 2019, §3): the sentence auto-encoder pre-training task and the
captioning task with the SAE-Dec regulariser, caption data preparation, and region features from a frozen encoder.

* Data. Captions are tokenised with ``research.data.text.tokenize``; the vocabulary (:func:`build_vocabulary`) has
  the specials ``<pad>`` (0), ``<unk>``, ``<bos>``, ``<eos>`` first. :func:`encode_captions` turns the captions of
  each image into ``inputs`` (``<bos> w_1 .. w_n``), ``targets`` (``w_1 .. w_n <eos>``) and ``mask``, each
  [N, M, L] (M captions per image, padded with empty ones, ``num_captions`` [N] real ones). Training batches
  (:class:`CaptionSampler`) take one random caption of each image.
* Encoder. The paper's CNN is pre-trained (ImageNet) and gives region features; here the ``RegionEncoder``
  backbone starts from the shapes-pretrained classifier of ``research.train.pretrain`` and is then trained as a
  visual-concept detector on the TRAINING images (:class:`ConceptTask`: which caption words an image's captions
  contain, multiple-instance learning over regions -- Fang et al., "From Captions to Visual Concepts and Back",
  CVPR 2015, §3.1, with max pooling instead of noisy-OR), because the shapes classifier's features barely encode
  the scenes' classes and colours (linear-probe AUC ~0.6). After that the encoder stays FROZEN (as
  Show-Attend-Tell's VGG), so region features are computed once per image (:func:`encode_regions`) and captioning
  batches carry ``regions`` [B, R, C] instead of images.
* :class:`SentenceAutoEncoderTask`: the SAE (Goel et al. §3) -- masked cross-entropy of reconstructing each training
  caption from its own fixed-size encoding; eval: token and sentence reconstruction accuracy.
* :class:`CaptioningTask`: teacher forcing, ``loss = CE(IC-Dec) + lambda * CE(SAE-Dec)`` (both masked token means
  over the global batch), SAE-Dec's parameters frozen in ``model_state`` (they get no gradient and are never
  updated), fed with the captioner's context vectors through the trainable bridge. Eval: beam search (or greedy
  for ``beam_width=1``) on the validation images, BLEU-4 and CIDEr-D (``research.train.caption_metrics``) against
  all reference captions, plus the teacher-forced validation cross-entropy on each image's first caption.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data import text as text_lib
from research.models import registry
from research.models.sequence import captioning as cap
from research.train import caption_metrics
from research.train import task as task_lib

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD, UNK, BOS, EOS = range(4)
# Region encoders take images standardised with the statistics of the ``shapes`` dataset their backbone was
# pre-trained on (research.data.pipeline._STATS["shapes"]).
IMAGE_MEAN = (0.502, 0.494, 0.500)
IMAGE_STD = (0.296, 0.294, 0.295)


# ------------------------------------------------------------------------------------------------------ data


def tokenize_captions(captions: Sequence[Sequence[str]]) -> list[list[list[str]]]:
  """Per image, per caption: ``research.data.text.tokenize`` (lower case, punctuation split off)."""
  return [[text_lib.tokenize(c) for c in caps] for caps in captions]


def build_vocabulary(tokenized: Sequence[Sequence[Sequence[str]]], *, min_count: int = 1) -> text_lib.Vocabulary:
  """The caption vocabulary of the TRAINING captions: :data:`SPECIALS` first (``<pad>`` = 0, ``<unk>`` = 1,
  ``<bos>`` = 2, ``<eos>`` = 3), then the words seen ``min_count`` times, most frequent first."""
  vocab = text_lib.Vocabulary.build((t for caps in tokenized for t in caps), min_count=min_count, specials=SPECIALS)
  assert [vocab.encode([s])[0] for s in SPECIALS] == [PAD, UNK, BOS, EOS]
  return vocab


def encode_captions(tokenized: Sequence[Sequence[Sequence[str]]], vocab: text_lib.Vocabulary, max_len: int
                    ) -> dict[str, np.ndarray]:
  """``inputs``/``targets`` int32 [N, M, max_len], ``mask`` bool [N, M, max_len] (True on real target tokens) and
  ``num_captions`` int32 [N]; ``M`` is the largest number of captions of an image. A caption longer than
  ``max_len - 1`` words is a ValueError naming ``--max_caption_len``."""
  n, m = len(tokenized), max((len(c) for c in tokenized), default=0)
  if n == 0 or m == 0:
    raise ValueError("encode_captions: no captions")
  inputs = np.full((n, m, max_len), PAD, np.int32)
  targets = np.full((n, m, max_len), PAD, np.int32)
  counts = np.zeros(n, np.int32)
  longest = 0
  for i, caps in enumerate(tokenized):
    counts[i] = len(caps)
    for j, toks in enumerate(caps):
      ids = vocab.encode(toks)
      longest = max(longest, len(ids) + 1)
      if len(ids) + 1 > max_len:
        continue
      inputs[i, j, :len(ids) + 1] = np.concatenate([[BOS], ids])
      targets[i, j, :len(ids) + 1] = np.concatenate([ids, [EOS]])
  if longest > max_len:
    raise ValueError(f"--max_caption_len={max_len} is shorter than the longest caption ({longest} tokens with "
                     f"<eos>); use --max_caption_len={longest}")
  if (counts == 0).any():
    raise ValueError(f"encode_captions: image {int(np.argmin(counts))} has no caption")
  return {"inputs": inputs, "targets": targets, "mask": targets != PAD, "num_captions": counts}


def longest_caption(tokenized: Sequence[Sequence[Sequence[str]]]) -> int:
  """Tokens of the longest caption, ``<eos>`` included."""
  return max(len(t) + 1 for caps in tokenized for t in caps)


class CaptionSampler:
  """``ArrayBatches`` transform: one caption per image drawn uniformly among its ``num_captions``; in:
  ``regions``, ``inputs``/``targets``/``mask`` [B, M, L], ``num_captions`` [B]; out: ``regions``,
  ``inputs``/``targets`` [B, L], ``mask`` [B, L]."""

  def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    b = len(batch["num_captions"])
    j = np.minimum((rng.random(b) * batch["num_captions"]).astype(np.int64), batch["num_captions"] - 1)
    pick = lambda a: a[np.arange(b), j]  # noqa: E731
    return {"regions": batch["regions"], "inputs": pick(batch["inputs"]), "targets": pick(batch["targets"]),
            "mask": pick(batch["mask"])}


def flat_captions(encoded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every real caption as one row (``inputs``/``targets``/``mask`` [K, L]): the SAE's training set."""
  keep = np.arange(encoded["inputs"].shape[1])[None, :] < encoded["num_captions"][:, None]
  return {k: encoded[k][keep] for k in ("inputs", "targets", "mask")}


def ids_to_tokens(ids: np.ndarray, vocab_tokens: Sequence[str]) -> list[str]:
  """Generated ids -> words, stopping at the first ``<eos>`` (specials dropped)."""
  out = []
  for i in np.asarray(ids).reshape(-1):
    if i == EOS:
      break
    if i >= len(SPECIALS):
      out.append(vocab_tokens[int(i)])
  return out


def normalize_images(images) -> jnp.ndarray:
  """uint8 [..., H, W, 3] -> float32 standardised with the ``shapes`` statistics."""
  x = jnp.asarray(images).astype(jnp.float32) / 255.0
  return (x - jnp.asarray(IMAGE_MEAN)) / jnp.asarray(IMAGE_STD)


def encode_regions(model: cap.Captioner, variables: Mapping[str, Any], images: np.ndarray, *, batch_size: int = 100
                   ) -> np.ndarray:
  """float32 [N, R, C]: the frozen encoder's region features of uint8 images [N, H, W, 3] (BatchNorm in inference
  mode), computed in batches of ``batch_size`` under one ``jit``."""
  fn = jax.jit(lambda v, x: model.apply(v, normalize_images(x), train=False, method=cap.Captioner.encode))
  n = len(images)
  out = []
  for s in range(0, n, batch_size):
    chunk = images[s:s + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)])
    out.append(np.asarray(fn(variables, chunk))[:batch_size - pad])
  return np.concatenate(out).astype(np.float32)


def eval_batches(regions: np.ndarray, encoded: Mapping[str, np.ndarray], *, global_batch_size: int):
  """A callable returning one pass over the validation images: ``regions``, the FIRST caption's ``inputs``/
  ``targets``/``mask`` (teacher-forced validation loss), ``index`` (row into the reference list) and ``valid``."""
  from research.data.memory import padded_eval_rows
  n = len(regions)
  padded_eval_rows(n, global_batch_size)  # checks the batch size now

  def one_pass():
    for rows, valid in padded_eval_rows(n, global_batch_size):
      yield {"regions": regions[rows], "inputs": encoded["inputs"][rows, 0], "targets": encoded["targets"][rows, 0],
             "mask": encoded["mask"][rows, 0], "index": rows.astype(np.int32), "valid": valid}

  return one_pass


def concept_targets(tokenized: Sequence[Sequence[Sequence[str]]], vocab: text_lib.Vocabulary) -> np.ndarray:
  """float32 [N, V]: 1 where word ``v`` occurs in any caption of image ``n`` (specials never)."""
  out = np.zeros((len(tokenized), len(vocab)), np.float32)
  for i, caps in enumerate(tokenized):
    for toks in caps:
      out[i, vocab.encode(toks)] = 1.0
  out[:, :len(SPECIALS)] = 0.0
  return out


# ----------------------------------------------------------------------------------------------------- tasks


@dataclasses.dataclass(eq=False)
class ConceptTask(task_lib.Task):
  """Visual-concept pre-training of the region encoder (module docstring): per region ``r`` and word ``v`` a logit
  ``l_{r,v} = w_v . a_r + b_v`` (a linear head on the region features, coordinates excluded), image logit
  ``max_r l_{r,v}`` (MIL: the word is in the image if some region shows it), sigmoid cross-entropy against
  :func:`concept_targets` averaged over words and images. Batches ``images`` uint8 [B, H, W, 3], ``concepts``
  [B, V]. ``model``: a :class:`~research.models.sequence.captioning.Captioner` (only its encoder is used),
  ``encoder_variables``: its initial encoder variables (``params``/``batch_stats`` with an ``encoder`` sub-tree);
  BatchNorm in training mode (statistics in ``model_state``). Eval: mean cross-entropy and micro precision /
  recall of the words at probability 0.5."""
  model: Any
  encoder_variables: Any
  num_words: int
  learning_rate: float = 1e-3

  def _regions(self, params, model_state, images, train):
    v = {"params": {"encoder": params["encoder"]}, **model_state}
    if train:
      regions, new = self.model.apply(v, normalize_images(images), train=True, mutable=["batch_stats"],
                                      method=cap.Captioner.encode)
      return regions, dict(model_state, **new)
    return self.model.apply(v, normalize_images(images), train=False, method=cap.Captioner.encode), model_state

  def _logits(self, params, regions):
    feats = regions[..., :-2] if self.model.coord_channels else regions
    return jnp.max(feats @ params["head"]["kernel"] + params["head"]["bias"], axis=1)

  def init(self, rng, batch):
    v = jax.tree.map(jnp.asarray, dict(self.encoder_variables))
    probe = self.model.apply(v, jnp.zeros((1,) + tuple(batch["images"].shape[1:]), jnp.float32),
                             method=cap.Captioner.encode)
    c = probe.shape[-1] - (2 if self.model.coord_channels else 0)
    head = {"kernel": jax.random.normal(rng, (c, self.num_words)) * (1.0 / np.sqrt(c)),
            "bias": jnp.full((self.num_words,), -2.0)}  # most words are absent from an image
    return {"encoder": v["params"]["encoder"], "head": head}, {k: x for k, x in v.items() if k != "params"}

  def optimizer(self):
    return optax.adam(self.learning_rate)

  def loss(self, params, model_state, batch, rng, *, train):
    regions, model_state = self._regions(params, model_state, batch["images"], train)
    logits = self._logits(params, regions)
    bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["concepts"]))
    return bce, (model_state, {"concept_bce": bce})

  def eval_step(self, state, batch):
    regions, _ = self._regions(state.params, state.model_state, batch["images"], False)
    logits = self._logits(state.params, regions)
    y, pred, valid = batch["concepts"], (logits > 0).astype(jnp.float32), batch["valid"][:, None]
    bce = optax.sigmoid_binary_cross_entropy(logits, y)
    return {"bce": jnp.sum(bce * valid), "cells": jnp.sum(jnp.ones_like(bce) * valid),
            "tp": jnp.sum(pred * y * valid), "fp": jnp.sum(pred * (1 - y) * valid),
            "fn": jnp.sum((1 - pred) * y * valid)}, {}

  def eval_metrics(self, sums, gathered):
    tp, fp, fn = (float(sums[k]) for k in ("tp", "fp", "fn"))
    return {"bce": float(sums["bce"] / sums["cells"]), "precision": tp / max(tp + fp, 1.0),
            "recall": tp / max(tp + fn, 1.0)}

  def encoder_variables_of(self, state) -> dict[str, Any]:
    """The trained encoder's variables (``params`` and ``batch_stats`` under ``encoder``) of a final ``state``."""
    return {"params": {"encoder": jax.device_get(state.params["encoder"])}, **jax.device_get(state.model_state)}

  def run_info(self):
    return {"task": "concepts"}


def _masked_ce(logits, targets, mask):
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  m = mask.astype(jnp.float32)
  return jnp.sum(ce * m), jnp.sum(m)


@dataclasses.dataclass(eq=False)
class SentenceAutoEncoderTask(task_lib.Task):
  """SAE pre-training (Goel et al. §3): reconstruct each caption from its encoding; batches ``inputs``/``targets``/
  ``mask`` [B, L]. Adam at ``learning_rate`` with global-norm clipping at ``grad_clip``."""
  vocab_size: int
  embed_dim: int = 64
  hidden_dim: int = 128
  code_dim: int = 128
  learning_rate: float = 3e-3
  grad_clip: float = 5.0

  def __post_init__(self):
    self.model = registry.create("sentence_autoencoder", vocab_size=self.vocab_size, embed_dim=self.embed_dim,
                                 hidden_dim=self.hidden_dim, code_dim=self.code_dim)

  def init(self, rng, batch):
    t = batch["inputs"].shape[1]
    z = jnp.zeros((1, t), jnp.int32)
    return self.model.init(rng, z, z, jnp.ones((1, t), bool))["params"], {}

  def optimizer(self):
    return optax.chain(optax.clip_by_global_norm(self.grad_clip), optax.adam(self.learning_rate))

  def logits(self, params, batch):
    return self.model.apply({"params": params}, batch["inputs"], batch["targets"], batch["mask"])

  def loss(self, params, model_state, batch, rng, *, train):
    logits = self.logits(params, batch)
    total, count = _masked_ce(logits, batch["targets"], batch["mask"])
    acc = jnp.sum((jnp.argmax(logits, -1) == batch["targets"]) * batch["mask"]) / jnp.maximum(count, 1)
    return (total, count), (model_state, {"sae_ce": total / jnp.maximum(count, 1), "token_accuracy": acc})

  def eval_step(self, state, batch):
    logits = self.logits(state.params, batch)
    valid = batch["valid"][:, None] * batch["mask"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    right = (jnp.argmax(logits, -1) == batch["targets"]) | ~batch["mask"]
    return {"ce": jnp.sum(ce * valid), "tokens": jnp.sum(valid), "correct": jnp.sum(right * valid),
            "sentences_right": jnp.sum(jnp.all(right, -1) * batch["valid"]), "sentences": jnp.sum(batch["valid"])}, {}

  def eval_metrics(self, sums, gathered):
    return {"ce": float(sums["ce"] / sums["tokens"]), "token_accuracy": float(sums["correct"] / sums["tokens"]),
            "sentence_accuracy": float(sums["sentences_right"] / sums["sentences"])}

  def run_info(self):
    return {"task": "sentence_autoencoder"}


@dataclasses.dataclass(eq=False)
class CaptioningTask(task_lib.Task):
  """The image captioner (IC) with optional SAE-Dec regulariser (module docstring).

  ``model_name``: ``caption_soft_attention`` | ``caption_two_stream``; ``model_kwargs``: the decoder sizes
  (``embed_dim``, ``hidden_dim``, ``context_dim``, ``attn_dim``, ``num_categories``, ``dropout_rate``);
  ``sae_weight`` = lambda (0: no SAE branch); ``sae_decoder`` the pre-trained SAE-Dec parameters and ``sae_kwargs``
  its sizes (``embed_dim``, ``hidden_dim``, ``code_dim``). ``references``: per validation image, its tokenised
  reference captions (for BLEU / CIDEr-D); ``vocab_tokens``: the vocabulary's tokens (ids -> words).
  """
  model_name: str
  vocab_size: int
  max_len: int
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  learning_rate: float = 2e-3
  grad_clip: float = 5.0
  sae_weight: float = 0.0
  sae_decoder: Any = None
  sae_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  beam_width: int = 3
  length_penalty: float = 0.0
  references: Sequence[Sequence[Sequence[str]]] = ()
  vocab_tokens: Sequence[str] = ()

  def __post_init__(self):
    if self.sae_weight < 0:
      raise ValueError(f"--sae_weight={self.sae_weight} must be >= 0")
    if self.sae_weight > 0 and self.sae_decoder is None:
      raise ValueError("CaptioningTask: sae_weight > 0 needs the pre-trained SAE-Dec parameters (sae_decoder)")
    if self.beam_width < 1:
      raise ValueError(f"--beam_width={self.beam_width} must be >= 1")
    code = int(self.sae_kwargs.get("code_dim", 0)) if self.sae_weight > 0 else 0
    self.model = registry.create(self.model_name, vocab_size=self.vocab_size, sae_code_dim=code,
                                 **dict(self.model_kwargs))
    if self.sae_weight > 0:
      self.sae_dec = cap.SentenceDecoder(self.vocab_size, **dict(self.sae_kwargs))

  # ------------------------------------------------------------------------------------------ training
  def init(self, rng, batch):
    r = batch["regions"].shape
    params = self.model.init(rng, jnp.zeros((1,) + r[1:], jnp.float32), jnp.zeros((1, self.max_len), jnp.int32),
                             method=cap.Captioner.decode)["params"]
    state = {"sae_decoder": jax.tree.map(jnp.asarray, self.sae_decoder)} if self.sae_weight > 0 else {}
    return params, state

  def optimizer(self):
    return optax.chain(optax.clip_by_global_norm(self.grad_clip), optax.adam(self.learning_rate))

  def sync_model_state(self, old, new, axis_name):
    return old  # the frozen SAE-Dec: identical everywhere, never updated

  def loss(self, params, model_state, batch, rng, *, train):
    out = self.model.apply({"params": params}, batch["regions"], batch["inputs"], train=train,
                           rngs={"dropout": rng}, method=cap.Captioner.decode)
    ic, count = _masked_ce(out["logits"], batch["targets"], batch["mask"])
    n = jnp.maximum(count, 1.0)
    metrics = {"caption_ce": ic / n}
    total = ic
    if self.sae_weight > 0:
      sae_logits = self.sae_dec.apply({"params": model_state["sae_decoder"]}, out["codes"], batch["inputs"])
      sae, _ = _masked_ce(sae_logits, batch["targets"], batch["mask"])
      total = total + self.sae_weight * sae
      metrics["sae_dec_ce"] = sae / n
    return (total, count), (model_state, metrics)

  # ---------------------------------------------------------------------------------------------- decoding
  def generate(self, params, regions, *, beam_width: int | None = None) -> jnp.ndarray:
    """Captions [B, max_len] int32 of region features [B, R, C] by beam search (greedy when the width is 1)."""
    width = self.beam_width if beam_width is None else beam_width
    v = {"params": params}
    b = regions.shape[0]
    memory, carry = self.model.apply(v, regions, method=cap.Captioner.prepare)

    def step_fn(state, tokens):
      carry, memory = state
      carry, out = self.model.apply(v, carry, tokens, memory, method=cap.Captioner.step)
      return (carry, memory), jax.nn.log_softmax(out["logits"], -1)

    kw = dict(max_len=self.max_len, bos_id=BOS, eos_id=EOS, pad_id=PAD, forbidden=(PAD, UNK, BOS))
    if width == 1:
      return cap.greedy_search(step_fn, (carry, memory), batch_size=b, **kw)[0]
    return cap.beam_search(step_fn, cap.tile_beams((carry, memory), width), batch_size=b, beam_width=width,
                           length_penalty=self.length_penalty, **kw)["tokens"]

  # ------------------------------------------------------------------------------------------------ eval
  def eval_step(self, state, batch):
    tokens = self.generate(state.params, batch["regions"])
    out = self.model.apply({"params": state.params}, batch["regions"], batch["inputs"], method=cap.Captioner.decode)
    valid = batch["valid"]
    ce, _ = _masked_ce(out["logits"], batch["targets"], batch["mask"] * (valid[:, None] > 0))
    sums = {"ce": ce, "tokens": jnp.sum(batch["mask"] * valid[:, None]), "images": jnp.sum(valid)}
    return sums, {"tokens": tokens, "index": batch["index"], "valid": valid}

  def decode_ids(self, tokens: np.ndarray) -> list[list[str]]:
    return [ids_to_tokens(t, self.vocab_tokens) for t in np.asarray(tokens)]

  def eval_metrics(self, sums, gathered):
    keep = np.asarray(gathered["valid"]) > 0
    hyps = self.decode_ids(np.asarray(gathered["tokens"])[keep])
    refs = [self.references[int(i)] for i in np.asarray(gathered["index"])[keep]]
    bleu = caption_metrics.corpus_bleu(hyps, refs)
    cider, _ = caption_metrics.cider_d(hyps, refs)
    return {"bleu4": bleu["bleu"], "bleu1": bleu["precisions"][0] * bleu["brevity_penalty"], "cider_d": cider,
            "caption_ce": float(sums["ce"] / max(sums["tokens"], 1.0)),
            "mean_length": float(np.mean([len(h) for h in hyps])), "images": float(sums["images"])}

  def run_info(self):
    return {"task": "captioning", "model": self.model_name, "sae_weight": self.sae_weight,
            "beam_width": self.beam_width}


@functools.partial(jax.jit, static_argnums=(0,))
def _attention_maps(task: CaptioningTask, params, regions, tokens):
  inputs = jnp.concatenate([jnp.full((tokens.shape[0], 1), BOS, jnp.int32), tokens[:, :-1]], 1)
  return task.model.apply({"params": params}, regions, inputs, method=cap.Captioner.decode)


def caption_with_attention(task: CaptioningTask, params, regions: np.ndarray) -> dict[str, np.ndarray]:
  """For a few images: the generated ``tokens`` [B, T] and, re-running the decoder teacher-forced on them (the
  decoder is deterministic, so these are the attention weights of decoding), ``alpha`` [B, T, R] and, for the
  two-stream model, the stream-1 ``labels`` [B, R, K]."""
  tokens = jax.jit(task.generate)(params, jnp.asarray(regions))
  out = _attention_maps(task, params, jnp.asarray(regions), tokens)
  res = {"tokens": np.asarray(tokens), "alpha": np.asarray(out["alpha"])}
  if "labels" in out:
    res["labels"] = np.asarray(out["labels"])
  return res
