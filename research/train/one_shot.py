"""One-shot semantic segmentation (Shaban et al., BMVC 2017, §3-§5): episodes, tasks and evaluation on the ONE loop.

Protocol (§3, §5 "PASCAL-5^i"): the ``C`` classes are split into ``num_folds`` folds of ``C / num_folds``
consecutive classes; fold ``i`` holds out classes ``[i C / F, (i + 1) C / F)`` (the "unseen" classes). An episode of
class ``c`` is (support image, its binary mask of ``c``, query image that contains ``c``, the query's binary mask of
``c``); every other class -- seen or unseen -- is background in both masks. Training episodes come from the train
split with ``c`` among the training classes only (:class:`EpisodeSampler`, seeded per step, checkpointable position);
test episodes are a fixed seeded list on the validation split with ``c`` among the unseen classes
(:func:`make_test_episodes`, classes in turn, so each unseen class gets the same number of episodes). An image
qualifies for class ``c`` when it has at least ``min_pixels`` pixels of ``c`` (at the working resolution).

Metric (§5): per unseen class, the foreground IoU ``tp / (tp + fp + fn)`` from pixel counts summed over all of that
class's test episodes; ``miou`` is their mean over the fold's classes. ``fb_iou`` (the mean of foreground and
background IoU over all episodes' pixels, a later papers' companion metric) is reported alongside. The counts are
``sums`` of the loop's eval (:func:`episode_iou_sums`), turned into scores on the host (:func:`episode_scores`).

Tasks:

* :class:`OneShotTask`: OSLSM (``research.models.segmentation.one_shot.OneShotSegmenter``) trained on episodes with
  the pixel-wise logistic loss on the upsampled logits (§4.3); a pixel is foreground when ``sigmoid > 0.5``.
* :class:`SegmenterBaselineTask`: the fine-tuning-free baselines (§5.1, "1-NN" and "LogReg"). A normal FCN
  segmenter (same segmentation branch + a 1x1 softmax classifier over background + the training classes; unseen
  classes are background) is trained on train-split images; at eval, on the same test episodes, with its frozen
  dense features ``f`` (stride ``s``; a feature cell covers an ``s x s`` block):

  - ``nn1``: each query cell takes the foreground fraction of its nearest support cell (cosine similarity of ``f``;
    the support mask averaged over each cell's block); the score map is upsampled bilinearly, foreground > 0.5;
  - ``logreg``: an L2-regularised logistic regression (features standardised with the support's statistics, the
    cells' foreground fractions as soft targets, unweighted like OSLSM's own loss) fitted by ``logreg_steps``
    full-batch Adam steps on the support cells of each episode; its logits are upsampled, foreground > 0.

  Neither baseline updates the network on the new class: both only read the one support example.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data.memory import padded_eval_rows
from research.models.segmentation.one_shot import FCNSegmenter, OneShotSegmenter, upsample_bilinear
from research.train import task as task_lib

MEAN, STD = 0.5, 0.25  # images: uint8 -> (x / 255 - MEAN) / STD


def normalize_images(images: jax.Array) -> jax.Array:
  """uint8 [..., H, W, 3] -> float32 standardised pixels."""
  return (images.astype(jnp.float32) / 255.0 - MEAN) / STD


# ------------------------------------------------------------------------------------------------ folds, data


def fold_classes(fold: int, num_folds: int, num_classes: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(training classes, unseen test classes) of fold ``fold`` (PASCAL-5^i style: consecutive blocks)."""
  if num_folds < 2 or num_classes % num_folds:
    raise ValueError(f"--num_folds={num_folds} must be >= 2 and divide the {num_classes} classes "
                     f"(e.g. --num_folds=4: 3 unseen classes per fold)")
  if not 0 <= fold < num_folds:
    raise ValueError(f"--fold={fold} is not a fold index: choose one in [0, {num_folds - 1}] (--num_folds="
                     f"{num_folds})")
  k = num_classes // num_folds
  test = tuple(range(fold * k, (fold + 1) * k))
  return tuple(c for c in range(num_classes) if c not in test), test


def downsample_scenes(images: np.ndarray, semantic: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [N, S, S, 3] and semantic maps [N, S, S] -> [N, size, size(, 3)] by an integer factor
  ``f = S / size``: images by the block mean (rounded), labels by the block majority (ties to the lower label)."""
  n, s = semantic.shape[:2]
  if images.shape[:3] != semantic.shape or semantic.shape[1] != semantic.shape[2]:
    raise ValueError(f"images {images.shape} and semantic {semantic.shape} must be [N, S, S, 3] and [N, S, S]")
  if size < 1 or s % size:
    raise ValueError(f"--image_size={size} must divide the dataset's image size {s}")
  f = s // size
  if f == 1:
    return images.astype(np.uint8), semantic.astype(np.uint8)
  img = images.reshape(n, size, f, size, f, 3).astype(np.float32).mean(axis=(2, 4))
  out_img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
  num_labels = int(semantic.max()) + 1 if semantic.size else 1
  out_sem = np.zeros((n, size, size), np.uint8)
  for start in range(0, n, 256):  # one-hot counts per block, in chunks (memory)
    blk = semantic[start:start + 256].reshape(-1, size, f, size, f)
    counts = np.stack([(blk == l).sum(axis=(2, 4)) for l in range(num_labels)], axis=-1)
    out_sem[start:start + 256] = np.argmax(counts, axis=-1)  # argmax takes the first (lowest) label on ties
  return out_img, out_sem


def class_pixels(semantic: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [N, num_classes]: pixels of class ``c`` (semantic value ``c + 1``) in each map of semantic [N, H, W]."""
  flat = semantic.reshape(len(semantic), -1).astype(np.int64)
  return np.stack([(flat == c + 1).sum(axis=1) for c in range(num_classes)], axis=1)


def class_pools(semantic: np.ndarray, classes: Sequence[int], min_pixels: int, num_classes: int
                ) -> dict[int, np.ndarray]:
  """{class: sorted image indices with >= ``min_pixels`` pixels of it} for each of ``classes``; a ValueError when a
  class has fewer than 2 such images (an episode needs a support and a different query)."""
  if min_pixels < 1:
    raise ValueError(f"--min_pixels must be >= 1, got {min_pixels}")
  pix = class_pixels(semantic, num_classes)
  pools = {int(c): np.flatnonzero(pix[:, c] >= min_pixels) for c in classes}
  few = {c: len(p) for c, p in pools.items() if len(p) < 2}
  if few:
    raise ValueError(f"classes {few} have < 2 images with >= {min_pixels} pixels (--min_pixels): lower "
                     f"--min_pixels or use more images")
  return pools


def _pick_pairs(pools: Mapping[int, np.ndarray], cls: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
  """(support, query) image indices, two DIFFERENT images of each episode's class pool."""
  sizes = np.array([len(pools[int(c)]) for c in cls])
  s = rng.integers(0, sizes)
  q = rng.integers(0, sizes - 1)
  q = q + (q >= s)  # uniform over the pool without the support
  return (np.array([pools[int(c)][i] for c, i in zip(cls, s)], np.int64),
          np.array([pools[int(c)][i] for c, i in zip(cls, q)], np.int64))


def episode_arrays(images: np.ndarray, semantic: np.ndarray, class_id: np.ndarray, support: np.ndarray,
                   query: np.ndarray) -> dict[str, np.ndarray]:
  """The batch of episodes: ``support_image``/``query_image`` uint8 [B, H, W, 3], ``support_mask``/``query_mask``
  uint8 [B, H, W] (1 where the semantic map is ``class_id + 1``), ``class_id`` int32 [B]."""
  target = (class_id.astype(np.int64) + 1)[:, None, None]
  return {"support_image": images[support], "support_mask": (semantic[support] == target).astype(np.uint8),
          "query_image": images[query], "query_mask": (semantic[query] == target).astype(np.uint8),
          "class_id": class_id.astype(np.int32)}


class EpisodeSampler:
  """Infinite iterator of this process's rows of seeded random global batches of TRAINING episodes.

  At step ``t`` with ``rng = np.random.default_rng([seed, t])``: each episode's class is uniform over ``classes``,
  its support and query two different images of that class's pool (:func:`class_pools`). So the batch at a step
  depends only on ``(seed, t)`` (any process count), and ``get_state``/``set_state`` (JSON bytes, as
  ``research.data.memory.ArrayBatches``) make the position checkpointable.
  """

  def __init__(self, images: np.ndarray, semantic: np.ndarray, classes: Sequence[int], *, global_batch_size: int,
               seed: int, num_classes: int, min_pixels: int = 1, start_step: int = 0):
    if images.shape[:3] != semantic.shape:
      raise ValueError(f"images {images.shape} and semantic {semantic.shape} must be [N, H, W, 3] and [N, H, W]")
    if not classes:
      raise ValueError("EpisodeSampler needs at least one training class")
    if global_batch_size < 1 or global_batch_size % jax.process_count():
      raise ValueError(f"global batch {global_batch_size} must be positive and divisible by {jax.process_count()} "
                       f"processes")
    self.classes = np.asarray(sorted(set(int(c) for c in classes)), np.int64)
    self.pools = class_pools(semantic, self.classes, min_pixels, num_classes)
    self._images, self._semantic = images, semantic
    self._batch, self._seed = global_batch_size, seed
    self._local = global_batch_size // jax.process_count()
    self._step = start_step

  def __iter__(self):
    return self

  def indices(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class_id, support, query) int64 [global batch] of the episodes at ``step``."""
    rng = np.random.default_rng([self._seed, step])
    cls = self.classes[rng.integers(0, len(self.classes), self._batch)]
    support, query = _pick_pairs(self.pools, cls, rng)
    return cls, support, query

  def __next__(self) -> dict[str, np.ndarray]:
    cls, support, query = self.indices(self._step)
    self._step += 1
    p = jax.process_index()
    rows = slice(p * self._local, (p + 1) * self._local)
    return episode_arrays(self._images, self._semantic, cls[rows], support[rows], query[rows])

  def get_state(self) -> bytes:
    return json.dumps({"step": self._step, "seed": self._seed, "global_batch_size": self._batch}).encode()

  def set_state(self, state: bytes) -> None:
    s = json.loads(state)
    if s.get("seed") != self._seed or s.get("global_batch_size") != self._batch:
      raise ValueError(f"episode sampler state {s} was saved with another seed or batch size than this run's "
                       f"(seed={self._seed}, global_batch_size={self._batch})")
    self._step = int(s["step"])


def make_test_episodes(semantic: np.ndarray, classes: Sequence[int], *, num_episodes: int, seed: int,
                       num_classes: int, min_pixels: int = 1) -> dict[str, np.ndarray]:
  """The fixed test list: episode ``e`` has class ``classes[e % K]`` (each class ``num_episodes / K`` times, up to
  one) and two different qualifying images drawn with ``np.random.default_rng([seed, K])``. Returns ``class_id``,
  ``support``, ``query`` int64 [num_episodes]."""
  if num_episodes < 1:
    raise ValueError(f"--num_test_episodes must be positive, got {num_episodes}")
  classes = np.asarray(list(classes), np.int64)
  pools = class_pools(semantic, classes, min_pixels, num_classes)
  rng = np.random.default_rng([seed, len(classes)])
  cls = classes[np.arange(num_episodes) % len(classes)]
  support, query = _pick_pairs(pools, cls, rng)
  return {"class_id": cls, "support": support, "query": query}


def episode_batches(images: np.ndarray, semantic: np.ndarray, episodes: Mapping[str, np.ndarray], *,
                    global_batch_size: int):
  """A callable returning one pass over the test ``episodes`` (:func:`make_test_episodes`): this process's rows of
  zero-padded global batches of :func:`episode_arrays` plus ``valid`` f32 [b] (0 on padding rows)."""
  n = len(episodes["class_id"])
  padded_eval_rows(n, global_batch_size)  # checks the batch size now

  def one_pass():
    for rows, valid in padded_eval_rows(n, global_batch_size):
      batch = episode_arrays(images, semantic, episodes["class_id"][rows], episodes["support"][rows],
                             episodes["query"][rows])
      batch["valid"] = valid
      yield batch

  return one_pass


class SemanticLabels:
  """``ArrayBatches`` transform for the segmenter baseline: ``semantic`` [B, H, W] -> ``labels`` int32 [B, H, W] with
  0 = background (and every class not in ``train_classes``), ``i + 1`` = ``train_classes[i]``."""

  def __init__(self, train_classes: Sequence[int], num_classes: int):
    self.lut = np.zeros(num_classes + 1, np.int32)
    for i, c in enumerate(train_classes):
      self.lut[c + 1] = i + 1

  def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    del rng
    return {"image": batch["image"], "labels": self.lut[batch["semantic"]]}


# ------------------------------------------------------------------------------------------------ metrics


def episode_iou_sums(pred: jax.Array, gt: jax.Array, class_id: jax.Array, valid: jax.Array,
                     classes: Sequence[int]) -> dict[str, jax.Array]:
  """Per-class pixel counts over a batch of episodes: ``tp``, ``fp``, ``fn``, ``tn`` and ``episodes`` f32 [K] for
  the K ``classes`` (episode ``e`` counts for the class equal to ``class_id[e]``; padding rows have ``valid = 0``).
  pred, gt: bool/0-1 [B, H, W]; class_id int [B]; valid [B]."""
  if pred.shape != gt.shape or pred.ndim != 3:
    raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be [B, H, W]")
  p, g = pred.astype(bool), gt.astype(bool)
  per = jnp.stack([jnp.sum(p & g, axis=(1, 2)), jnp.sum(p & ~g, axis=(1, 2)), jnp.sum(~p & g, axis=(1, 2)),
                   jnp.sum(~p & ~g, axis=(1, 2)), jnp.ones(p.shape[:1], jnp.int32)], axis=1).astype(jnp.float32)
  onehot = (class_id[:, None] == jnp.asarray(list(classes))[None, :]).astype(jnp.float32) * valid[:, None]
  tot = onehot.T @ per  # [K, 5]
  return dict(zip(("tp", "fp", "fn", "tn", "episodes"), tot.T))


def episode_scores(sums: Mapping[str, np.ndarray], class_names: Sequence[str], prefix: str = "") -> dict[str, float]:
  """``miou`` (mean over the classes of ``tp / (tp + fp + fn)``, a class with an empty union scores NaN and is left
  out), ``iou/<class>``, ``fb_iou`` and ``episodes`` from summed :func:`episode_iou_sums`."""
  tp, fp, fn, tn = (np.asarray(sums[k], np.float64) for k in ("tp", "fp", "fn", "tn"))
  if len(class_names) != len(tp):
    raise ValueError(f"episode_scores: {len(class_names)} class names for {len(tp)} classes")
  union = tp + fp + fn
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, tp / union, np.nan)
  out = {f"{prefix}miou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan")}
  fg = tp.sum() / max(union.sum(), 1.0)
  bg = tn.sum() / max((tn + fp + fn).sum(), 1.0)
  out[f"{prefix}fb_iou"] = float((fg + bg) / 2)
  out[f"{prefix}episodes"] = float(np.sum(sums["episodes"]))
  for name, v in zip(class_names, iou):
    out[f"{prefix}iou/{name}"] = float(v)
  return out


# ------------------------------------------------------------------------------------------------ baselines


def cell_fractions(mask: jax.Array, stride: int) -> jax.Array:
  """mask [B, H, W] (0/1) -> [B, H / stride, W / stride]: the foreground fraction of each ``stride x stride`` block
  (the image area a feature cell covers)."""
  b, h, w = mask.shape
  if h % stride or w % stride:
    raise ValueError(f"mask size {h}x{w} must be a multiple of the stride {stride}")
  return mask.astype(jnp.float32).reshape(b, h // stride, stride, w // stride, stride).mean(axis=(2, 4))


def nearest_neighbor_scores(support_feats: jax.Array, support_frac: jax.Array, query_feats: jax.Array) -> jax.Array:
  """1-NN: [B, h, w] foreground fraction of each query cell's nearest support cell by cosine similarity.
  support_feats, query_feats [B, h, w, D]; support_frac [B, h, w] (:func:`cell_fractions`)."""
  b, d = support_feats.shape[0], support_feats.shape[-1]
  s = support_feats.reshape(b, -1, d)
  q = query_feats.reshape(b, -1, d)
  s = s / (jnp.linalg.norm(s, axis=-1, keepdims=True) + 1e-8)
  q = q / (jnp.linalg.norm(q, axis=-1, keepdims=True) + 1e-8)
  nearest = jnp.argmax(jnp.einsum("bqd,bsd->bqs", q, s), axis=-1)  # [B, hq*wq]
  scores = jnp.take_along_axis(support_frac.reshape(b, -1), nearest, axis=1)
  return scores.reshape(query_feats.shape[:3])


def fit_support_logreg(support_feats: jax.Array, support_frac: jax.Array, *, l2: float = 1e-3, steps: int = 100,
                       lr: float = 0.1) -> dict[str, jax.Array]:
  """Per-episode logistic regression on the support cells: features standardised by the support's mean/std, soft
  targets ``support_frac``, loss = mean binary cross-entropy + ``l2 * ||w||^2``, ``steps`` full-batch Adam steps
  from zero. support_feats [B, h, w, D], support_frac [B, h, w] -> ``w`` [B, D], ``b`` [B], ``mean``/``std``
  [B, D]."""
  b, d = support_feats.shape[0], support_feats.shape[-1]
  x = support_feats.reshape(b, -1, d).astype(jnp.float32)
  y = support_frac.reshape(b, -1).astype(jnp.float32)
  mean = jnp.mean(x, axis=1)
  std = jnp.std(x, axis=1) + 1e-6
  xs = (x - mean[:, None]) / std[:, None]
  tx = optax.adam(lr)

  def one(xe, ye):
    def loss(p):
      z = xe @ p["w"] + p["b"]
      return jnp.mean(optax.sigmoid_binary_cross_entropy(z, ye)) + l2 * jnp.sum(p["w"] ** 2)

    def body(carry, _):
      p, st = carry
      u, st = tx.update(jax.grad(loss)(p), st, p)
      return (optax.apply_updates(p, u), st), None

    p0 = {"w": jnp.zeros((d,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
    (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), None, length=steps)
    return p["w"], p["b"]

  w, bias = jax.vmap(one)(xs, y)
  return {"w": w, "b": bias, "mean": mean, "std": std}


def logreg_logits(params: Mapping[str, jax.Array], query_feats: jax.Array) -> jax.Array:
  """[B, h, w] logits of :func:`fit_support_logreg` ``params`` on query_feats [B, h, w, D]."""
  xs = (query_feats - params["mean"][:, None, None]) / params["std"][:, None, None]
  return jnp.einsum("bhwd,bd->bhw", xs, params["w"]) + params["b"][:, None, None]


# ------------------------------------------------------------------------------------------------ tasks


def _episode_shape(batch) -> tuple[int, int]:
  shape = tuple(batch["query_image"].shape)
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"batch['query_image'] must be uint8 [B, H, W, 3], got shape {shape}")
  return shape[1], shape[2]


@dataclasses.dataclass(eq=False)
class OneShotTask(task_lib.Task):
  """OSLSM trained on episodes (§4.3): mean pixel-wise logistic loss of the upsampled logits against the query mask;
  AdamW with a cosine decay over ``num_steps``. Eval: :func:`episode_iou_sums` of ``logit > 0`` on the test
  episodes of ``test_classes`` (names ``class_names``, one per test class).

  ``init_features``: parameters of the segmentation branch to start from (the ``features`` subtree of a trained
  :class:`FCNSegmenter` with the same branch settings -- the analogue of the paper's pretrained FCN, here trained on
  the fold's training classes only); ``None``: from scratch. ``pos_weight``: weight of the foreground pixels in the
  loss (1 = the paper's plain logistic loss)."""
  test_classes: tuple[int, ...]
  class_names: tuple[str, ...]
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  num_steps: int = 1000
  init_features: Any = None
  pos_weight: float = 1.0

  def __post_init__(self):
    if len(self.class_names) != len(self.test_classes):
      raise ValueError(f"{len(self.class_names)} class names for {len(self.test_classes)} test classes")
    self.model = OneShotSegmenter(**dict(self.model_kwargs))

  def init(self, rng, batch):
    h, w = _episode_shape(batch)
    img, mask = jnp.zeros((1, h, w, 3), jnp.float32), jnp.zeros((1, h, w), jnp.float32)
    params = self.model.init(rng, img, mask, img, train=False)["params"]
    if self.init_features is not None:
      fresh = params["features"]
      given = jax.tree.map(jnp.asarray, self.init_features)
      if jax.tree.structure(given) != jax.tree.structure(fresh) or any(
          a.shape != b.shape for a, b in zip(jax.tree.leaves(given), jax.tree.leaves(fresh))):
        raise ValueError("init_features do not match the segmentation branch of OneShotSegmenter(**model_kwargs): "
                         "train the segmenter with the same widths, convs_per_stage, feature_dim and fc6_dilation")
      params = {**params, "features": jax.tree.map(lambda a, b: a.astype(b.dtype), given, fresh)}
    return {"model": params}, {}

  def optimizer(self):
    return optax.adamw(optax.cosine_decay_schedule(self.learning_rate, self.num_steps),
                       weight_decay=self.weight_decay)

  def logits(self, params, batch, *, train: bool) -> jax.Array:
    return self.model.apply({"params": params["model"]}, normalize_images(batch["support_image"]),
                            batch["support_mask"], normalize_images(batch["query_image"]), train=train)

  def loss(self, params, model_state, batch, rng, *, train):
    del rng
    logits = self.logits(params, batch, train=train)
    target = batch["query_mask"].astype(jnp.float32)
    weight = 1.0 + (self.pos_weight - 1.0) * target
    bce = jnp.mean(weight * optax.sigmoid_binary_cross_entropy(logits, target))
    pred = logits > 0
    inter = jnp.sum(pred & (target > 0))
    union = jnp.sum(pred | (target > 0))
    return bce, (model_state, {"bce": bce, "train_iou": inter / jnp.maximum(union, 1)})

  def eval_step(self, state, batch):
    logits = self.logits(state.params, batch, train=False)
    return episode_iou_sums(logits > 0, batch["query_mask"], batch["class_id"], batch["valid"],
                            self.test_classes), {}

  def eval_metrics(self, sums, gathered):
    return episode_scores(sums, self.class_names)

  def run_info(self):
    return {"task": "oslsm", "test_classes": list(self.test_classes)}


@dataclasses.dataclass(eq=False)
class SegmenterBaselineTask(task_lib.Task):
  """The FCN segmenter of the baselines (module docstring): softmax cross-entropy over background + the
  ``len(train_classes)`` training classes on batches ``{'image': uint8 [B, H, W, 3], 'labels': int32 [B, H, W]}``
  (:class:`SemanticLabels`); its eval runs the ``nn1`` and ``logreg`` baselines on test-episode batches and reports
  ``nn1/...`` and ``logreg/...`` scores (:func:`episode_scores`)."""
  train_classes: tuple[int, ...]
  test_classes: tuple[int, ...]
  class_names: tuple[str, ...]
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  num_steps: int = 1000
  logreg_l2: float = 1e-3
  logreg_steps: int = 100
  logreg_lr: float = 0.1

  def __post_init__(self):
    if len(self.class_names) != len(self.test_classes):
      raise ValueError(f"{len(self.class_names)} class names for {len(self.test_classes)} test classes")
    if set(self.train_classes) & set(self.test_classes):
      raise ValueError(f"train classes {self.train_classes} and test classes {self.test_classes} overlap")
    self.model = FCNSegmenter(num_classes=len(self.train_classes) + 1, **dict(self.model_kwargs))

  def init(self, rng, batch):
    shape = tuple(batch["image"].shape)
    if len(shape) != 4 or shape[-1] != 3:
      raise ValueError(f"batch['image'] must be uint8 [B, H, W, 3], got shape {shape}")
    return {"model": self.model.init(rng, jnp.zeros((1,) + shape[1:], jnp.float32), train=False)["params"]}, {}

  def optimizer(self):
    return optax.adamw(optax.cosine_decay_schedule(self.learning_rate, self.num_steps),
                       weight_decay=self.weight_decay)

  def loss(self, params, model_state, batch, rng, *, train):
    del rng
    logits = self.model.apply({"params": params["model"]}, normalize_images(batch["image"]), train=train)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]))
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["labels"])
    return ce, (model_state, {"ce": ce, "train_pixel_accuracy": acc})

  def features(self, params, images) -> jax.Array:
    """The frozen dense features f [B, H / s, W / s, D] of uint8 images [B, H, W, 3]."""
    return self.model.apply({"params": params["model"]}, normalize_images(images), train=False,
                            method=FCNSegmenter.dense_features).astype(jnp.float32)

  def baseline_predictions(self, params, batch) -> dict[str, jax.Array]:
    """bool [B, H, W] query masks of ``nn1`` and ``logreg`` for a batch of episodes."""
    s = self.model.stride
    sf, qf = self.features(params, batch["support_image"]), self.features(params, batch["query_image"])
    frac = cell_fractions(batch["support_mask"], s)
    nn_scores = upsample_bilinear(nearest_neighbor_scores(sf, frac, qf), s)
    lr = fit_support_logreg(sf, frac, l2=self.logreg_l2, steps=self.logreg_steps, lr=self.logreg_lr)
    lr_logits = upsample_bilinear(logreg_logits(lr, qf), s)
    return {"nn1": nn_scores > 0.5, "logreg": lr_logits > 0}

  def eval_step(self, state, batch):
    preds = self.baseline_predictions(state.params, batch)
    return {k: episode_iou_sums(v, batch["query_mask"], batch["class_id"], batch["valid"], self.test_classes)
            for k, v in preds.items()}, {}

  def eval_metrics(self, sums, gathered):
    out = {}
    for k in ("nn1", "logreg"):
      out.update(episode_scores(sums[k], self.class_names, prefix=f"{k}/"))
    return out

  def run_info(self):
    return {"task": "oslsm_baselines", "train_classes": list(self.train_classes),
            "test_classes": list(self.test_classes)}
