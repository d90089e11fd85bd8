"""Input pipelines: ``tfds.data_source`` (array_record, no TensorFlow) + grain, sharded per JAX process.

* ``get_source(name, split, data_dir)``: random-access source. Offline datasets (``PROCEDURAL``: ``shapes``, ...,
  ``digits``; a config as ``name/config``, e.g. ``digits/32``) are built into ``data_dir`` on first use; any other
  TFDS dataset must already be prepared there in array_record format (``tfds build cifar100
  --file_format=array_record --data_dir=DIR``).
* ``train_loader(...)``: infinite, seeded shuffle, per-process rows of each global batch
  (``GlobalBatchSliceSampler``: the same global batches for any process count), augmentation,
  batching; a ``grain.DataLoader`` whose iterator state is checkpointable (``get_state``/``set_state``).
* ``eval_batches(...)``: one deterministic pass, padded to full global batches with a ``mask`` (and the same
  values as ``valid``).
* ``load_arrays(...)``: a whole split as numpy arrays (Task2Vec builds its task suites from these).

Any other task (detection, segmentation, pose, sequences, graphs) uses the generic pair, which takes any TFDS
feature dict through a user ``transform`` to fixed-shape numpy arrays (``research.data.transforms`` has the
geometric augmentations and padding helpers):

* ``make_train_loader(source, global_batch_size=, seed=, transform=)``: the same sample stream as
  ``train_loader``; ``transform(example, rng) -> dict[str, np.ndarray]``; checkpointable iterator.
* ``make_eval_batches(source, global_batch_size=, transform=)``: one pass, zero-padded rows, ``valid`` key.
* ``get_info(name, data_dir)``: features, shapes, dtypes and split sizes of any dataset (no 'label' needed).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Mapping

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from research.data import citation_sbm as citation_sbm_lib  # noqa: F401  (registers the TFDS builder "citation_sbm")
from research.data import scenes as scenes_lib  # noqa: F401  (registers the TFDS builder "shapes_scenes")
from research.data import shapes as shapes_lib  # noqa: F401  (registers the TFDS builder "shapes")
from research.data import video as video_lib  # noqa: F401  (registers the TFDS builder "shapes_video")
from research.data import rgbd as rgbd_lib  # noqa: F401  (registers the TFDS builder "shapes_rgbd")
from research.data import digits as digits_lib  # noqa: F401  (registers the TFDS builder "digits")
from research.data import parts3d as parts3d_lib  # noqa: F401  (registers the TFDS builder "shapes3d_parts")
from research.data import styles as styles_lib  # noqa: F401  (registers the TFDS builder "shapes_styles")
from research.data import text_corpora as text_corpora_lib  # noqa: F401  (registers the TFDS builder "text_topics")
from research.data import captions as captions_lib  # noqa: F401  (registers the TFDS builder "shapes_captions")
from research.data import ner as ner_lib  # noqa: F401  (registers the TFDS builder "grammar_ner")
from research.data import audio as audio_lib  # noqa: F401  (registers the TFDS builder "audio_events")
from research.data import doctors as doctors_lib  # noqa: F401  (registers the TFDS builder "patient_visits")
from research.data import voice_face as voice_face_lib  # noqa: F401  (registers the TFDS builder "voice_face")
from research.data import shapes_render

PROCEDURAL = {"shapes": shapes_lib.Shapes, "shapes_scenes": scenes_lib.ShapesScenes,
              "citation_sbm": citation_sbm_lib.CitationSBM, "shapes_video": video_lib.ShapesVideo,
              "shapes_rgbd": rgbd_lib.ShapesRGBD, "digits": digits_lib.Digits,
              "shapes_styles": styles_lib.ShapesStyles, "shapes3d_parts": parts3d_lib.Shapes3DParts,
              # sequence, language, audio and multimodal corpora (issue 16)
              "text_topics": text_corpora_lib.TextTopics, "grammar_ner": ner_lib.GrammarNER,
              "shapes_captions": captions_lib.ShapesCaptions, "audio_events": audio_lib.AudioEvents,
              "voice_face": voice_face_lib.VoiceFace, "patient_visits": doctors_lib.PatientVisits}
AUGMENTATIONS = ("none", "crop", "crop_flip")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a model and a trainer need to know about a dataset."""
  name: str
  num_classes: int
  num_coarse_classes: int | None
  image_shape: tuple[int, int, int]  # (H, W, C); any C (1 for grayscale) and H != W are fine
  num_train: int
  num_test: int
  mean: tuple[float, ...]  # one entry per image channel
  std: tuple[float, ...]
  default_augment: str
  eval_split: str


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What generic (non-classification) code needs to know about a dataset: no 'image' or 'label' required."""
  name: str
  features: Any  # the tfds.features.FeaturesDict (decoding, class names, ...)
  shapes: dict  # feature -> shape (nested like the features; None for variable sizes)
  dtypes: dict  # feature -> numpy dtype (nested like the features)
  splits: dict[str, int]  # split -> number of examples
  eval_split: str | None  # 'test', else 'validation', else None


# Per-channel statistics (of [0,1] pixels) and default augmentation. Unknown datasets use 0.5 / 0.25 per channel.
_STATS = {
    "shapes": ((0.502, 0.494, 0.500), (0.296, 0.294, 0.295), "crop"),  # flips change shape classes
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "crop_flip"),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop_flip"),
    "mnist": ((0.1307,), (0.3081,), "crop"),  # mirrored digits are other glyphs
    "fashion_mnist": ((0.2860,), (0.3530,), "crop_flip"),
    # train split; no flips (mirrored digits are other glyphs) and no crop at 8 / 16 px (random_crop_flip's
    # 4-pixel pad would shift the digit by up to half / a quarter of the image)
    "digits": ((0.3052,), (0.3758,), "none"),
    "digits/8": ((0.3052,), (0.3758,), "none"),
    "digits/16": ((0.3052,), (0.3187,), "none"),
    "digits/32": ((0.3054,), (0.3235,), "crop"),
}


def image_stats(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...], str]:
  """``(mean, std, default_augment)`` with one mean/std entry per channel (unknown: 0.5 / 0.25, crop_flip)."""
  if name in _STATS:
    mean, std, aug = _STATS[name]
    if len(mean) != channels:
      raise ValueError(f"dataset {name!r}: known statistics are for {len(mean)} channels, its images have "
                       f"{channels}")
    return mean, std, aug
  return (0.5,) * channels, (0.25,) * channels, "crop_flip"


def default_data_dir() -> str:
  return os.environ.get("RESEARCH_DATA_DIR", os.path.join(os.path.expanduser("~"), "research_datasets"))


def _builder(name: str, data_dir: str | None):
  data_dir = data_dir or default_data_dir()
  if name.partition("/")[0] in PROCEDURAL:
    return _procedural_builder(name, data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # unknown name or unreadable directory
    raise ValueError(
        f"--dataset={name!r} is neither an offline procedural dataset ({', '.join(PROCEDURAL)}) nor a TFDS "
        f"dataset readable from --data_dir={data_dir!r}: {e}") from None
  if not builder.is_prepared() and not _readable(builder):
    raise ValueError(
        f"--dataset={name!r} is not prepared in --data_dir={data_dir!r}. Nothing can be downloaded here: "
        f"prepare it on a machine with network access with `tfds build {name} --file_format=array_record "
        f"--data_dir=DIR` and pass --data_dir=DIR.")
  return builder


def build_on_first_use(make_builder: Callable[[], Any], label: str, data_dir: str):
  """``make_builder()`` (a TFDS builder), generated into ``data_dir`` as array_record if it is not there yet.

  With several JAX processes this is a collective: process 0 builds while the others wait at a barrier, then they
  open it (``data_dir`` must be shared by the processes). ``label`` names the dataset (and config) in messages.
  Every offline builder (``shapes``, ``shapes_scenes``, ``citation_sbm``, ``shapes_video``) is opened through here.
  """
  builder = make_builder()
  if jax.process_count() == 1:
    if not builder.is_prepared() and not _readable(builder):  # _readable: tfds.testing.mock_data records
      builder.download_and_prepare(file_format="array_record")
    return builder
  # Every process reaches the barrier, prepared or not: a process that found the files ready and skipped it
  # would leave the others waiting forever.
  if jax.process_index() == 0 and not builder.is_prepared():
    builder.download_and_prepare(file_format="array_record")
  multihost_utils.sync_global_devices(f"research.data: build {label} in {data_dir}")
  if jax.process_index() != 0:
    builder = make_builder()  # re-read: process 0 has written it meanwhile
    if not builder.is_prepared():
      raise ValueError(
          f"process {jax.process_index()} cannot see the {label!r} dataset that process 0 built in "
          f"--data_dir={data_dir!r}: use a data_dir shared by all processes, or build it on every host first "
          f"(one process per host).")
  return builder


def check_split(name: str, splits, split: str) -> str:
  """``split`` if the offline dataset ``name`` has it, else one ValueError naming the splits."""
  if split not in splits:
    raise ValueError(f"split={split!r}: {name} has splits {list(splits)}")
  return split


def config_builder(cls, name: str, configs, config: str, data_dir: str | None, hint: str = ""):
  """The offline builder ``cls(config=config)`` of dataset ``name``, generated into ``data_dir`` (default
  ``default_data_dir()``) on first use (``build_on_first_use``); one ValueError naming ``configs`` for an unknown
  config. Shared by the configured offline datasets (``digits``, ``shapes3d_parts``, ``shapes_styles``)."""
  if config not in configs:
    raise ValueError(f"{name} config={config!r}; choose one of {list(configs)}{hint}")
  data_dir = data_dir or default_data_dir()
  return build_on_first_use(lambda: cls(config=config, data_dir=data_dir), f"{name}/{config}", data_dir)


def _procedural_builder(name: str, data_dir: str):
  """The offline dataset ``name`` (``PROCEDURAL``; ``base/config`` picks a TFDS builder config, e.g. ``digits/32``),
  built on first use (``build_on_first_use``)."""
  base, _, config = name.partition("/")
  cls = PROCEDURAL[base]
  if not config:
    return build_on_first_use(lambda: cls(data_dir=data_dir), name, data_dir)
  configs = [c.name for c in (cls.BUILDER_CONFIGS or [])]
  if config not in configs:
    raise ValueError(f"--dataset={name!r}: {base!r} has " + (f"the configs {configs}; use {base}/<config>"
                     if configs else f"no configs; use --dataset={base}"))
  return build_on_first_use(lambda: cls(config=config, data_dir=data_dir), name, data_dir)


def _readable(builder) -> bool:
  """True if the builder serves records although it has no prepared files (tfds.testing.mock_data)."""
  try:
    builder.as_data_source(split="train")
    return True
  except Exception:  # not prepared: tfds raises its own assertion/errors here
    return False


def get_source(name: str, split: str, data_dir: str | None = None):
  """Random-access source of decoded examples (dicts of numpy arrays / ints)."""
  if name == "coco_json":  # the official COCO layout under data_dir, read with pycocotools (research.data.coco)
    from research.data import coco
    return coco.CocoJsonSource(data_dir or default_data_dir(), split)
  builder = _builder(name, data_dir)
  sizes = _split_sizes(builder)
  if split not in sizes:
    raise ValueError(f"dataset {name!r} has no split {split!r}; it has {sorted(sizes)}")
  try:
    return builder.as_data_source(split=split)
  except NotImplementedError as e:  # prepared as tfrecord: random access needs array_record
    raise ValueError(
        f"dataset {name!r} in {builder.data_dir} is not in array_record format ({e}); rebuild it with "
        f"`tfds build {name} --file_format=array_record`.") from None


def get_info(name: str, data_dir: str | None = None) -> DataInfo:
  """Features, their shapes/dtypes and the split sizes of any dataset (procedural ones are built first)."""
  if name == "coco_json":
    from research.data import coco
    return coco.get_info(data_dir or default_data_dir())
  builder = _builder(name, data_dir)
  features = builder.info.features
  sizes = _split_sizes(builder)
  return DataInfo(name=name, features=features, shapes=features.shape, dtypes=features.np_dtype,
                  splits=sizes, eval_split=next((s for s in ("test", "validation") if s in sizes), None))


def get_spec(name: str, data_dir: str | None = None) -> DatasetSpec:
  """Classification view of a dataset: needs fixed-shape 'image' [H,W,C] and a ClassLabel 'label'."""
  builder = _builder(name, data_dir)
  info = builder.info
  features = info.features
  if "image" not in features or "label" not in features:
    raise ValueError(f"dataset {name!r} needs 'image' and 'label' features; it has {sorted(features)}")
  coarse = features["coarse_label"].num_classes if "coarse_label" in features else None
  sizes = _split_sizes(builder)
  if "train" not in sizes:
    raise ValueError(f"dataset {name!r} has no 'train' split (splits: {sorted(sizes)})")
  eval_split = next((s for s in ("test", "validation") if s in sizes), "train")
  shape = tuple(features["image"].shape)
  if None in shape:
    raise ValueError(f"dataset {name!r} has variable image shape {shape}; resize it before classification")
  if len(shape) != 3:
    raise ValueError(f"dataset {name!r}: 'image' has shape {shape}, expected [H, W, C]")
  mean, std, aug = image_stats(name, shape[-1])
  return DatasetSpec(name=name, num_classes=features["label"].num_classes, num_coarse_classes=coarse,
                     image_shape=shape, num_train=sizes["train"], num_test=sizes[eval_split], mean=mean, std=std,
                     default_augment=aug, eval_split=eval_split)


def _split_sizes(builder) -> dict[str, int]:
  """Split name -> number of examples, from the dataset info or, when it has none, from the sources."""
  if builder.info.splits:
    return {k: v.num_examples for k, v in builder.info.splits.items()}
  sizes = {}
  for split in ("train", "test", "validation", "dev"):  # "dev": e.g. TFDS conll2003
    try:
      sizes[split] = len(builder.as_data_source(split=split))
    except Exception:  # split absent
      pass
  return sizes


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 ``[..., H, W, C]`` -> float32, per-channel standardised (``mean``/``std``: C entries, or scalars)."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  c = images.shape[-1] if images.ndim else 1
  for v, what in ((mean, "mean"), (std, "std")):
    if v.ndim and v.shape[-1] not in (1, c):
      raise ValueError(f"normalize: {what} has {v.shape[-1]} entries but the images have {c} channels "
                       f"(shape {images.shape})")
  x = images.astype(np.float32) / 255.0
  return (x - mean) / std


def random_crop_flip(image: np.ndarray, rng: np.random.Generator, *, pad: int = 4, flip: bool = True) -> np.ndarray:
  """Zero-pad by ``pad`` then random crop back to the input size; random horizontal flip. ``[H, W, ...]``."""
  h, w = image.shape[:2]
  padded = np.pad(image, ((pad, pad), (pad, pad)) + ((0, 0),) * (image.ndim - 2))
  dy, dx = rng.integers(0, 2 * pad + 1, size=2)
  out = padded[dy:dy + h, dx:dx + w]
  if flip and rng.random() < 0.5:
    out = out[:, ::-1]
  return out


class ClassifyTransform:
  """The classification transform of ``train_loader``: ``{'image': f32 [H,W,C] normalised, 'label': i32}``."""

  def __init__(self, augment: str, mean, std):
    if augment not in AUGMENTATIONS:
      raise ValueError(f"augment={augment!r}; choose one of {AUGMENTATIONS}")
    self.augment, self.mean, self.std = augment, mean, std

  def __call__(self, element, rng: np.random.Generator):
    image = element["image"]
    if self.augment != "none":
      image = random_crop_flip(image, rng, flip=self.augment == "crop_flip")
    return {"image": normalize(image, self.mean, self.std), "label": np.int32(element["label"])}


class _TransformMap(grain.transforms.RandomMap):
  """Applies ``transform(example, rng)`` and checks that every feature keeps one shape (so it can be batched)."""

  def __init__(self, transform: Callable[[Any, np.random.Generator], Mapping[str, np.ndarray]]):
    self.transform = transform
    self._shapes = None

  def random_map(self, element, rng: np.random.Generator):
    out = self.transform(element, rng)
    self._shapes = _check_features(out, self._shapes, "transform")
    return out


def _check_features(out, shapes: dict | None, what: str) -> dict:
  """``{feature: shape}`` of ``out`` (a flat dict of arrays), checked against ``shapes`` of earlier examples."""
  if not isinstance(out, Mapping):
    raise ValueError(f"the {what} must return a dict of numpy arrays, got {type(out).__name__}")
  nested = [k for k, v in out.items() if isinstance(v, Mapping)]
  if nested:
    raise ValueError(f"the {what} must return a FLAT dict of arrays; {nested[0]!r} holds a dict")
  now = {k: np.shape(v) for k, v in out.items()}
  if shapes is not None and now != shapes:
    if set(now) != set(shapes):
      raise ValueError(f"the {what} returned features {sorted(now)}, earlier examples had {sorted(shapes)}")
    k = next(k for k in now if now[k] != shapes[k])
    raise ValueError(
        f"the {what} returned feature {k!r} with shape {now[k]}, earlier examples had {shapes[k]}: every "
        f"feature needs one fixed shape to be batched; pad variable-size features (research.data.pad_to, "
        f"research.data.transforms.pad_instances)")
  return now


def _check_batch(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f"--batch_size={global_batch_size} must be divisible by the number of processes "
                     f"({jax.process_count()})")
  if global_batch_size % jax.device_count():
    raise ValueError(f"--batch_size={global_batch_size} must be divisible by the number of devices "
                     f"({jax.device_count()}); use a multiple of {jax.device_count()}")
  return global_batch_size // jax.process_count()


def train_loader(source, *, global_batch_size: int, seed: int, augment: str, mean, std,
                 worker_count: int = 0) -> grain.DataLoader:
  """Infinite shuffled, augmented, per-process batches ``{'image': f32 [b,H,W,C], 'label': i32 [b]}``."""
  transform = ClassifyTransform(augment, mean, std)
  return make_train_loader(source, global_batch_size=global_batch_size, seed=seed, transform=transform,
                           worker_count=worker_count)


def make_train_loader(source, *, global_batch_size: int, seed: int,
                      transform: Callable[[Any, np.random.Generator], Mapping[str, np.ndarray]],
                      worker_count: int = 0) -> grain.DataLoader:
  """Infinite shuffled per-process batches of ``transform(example, rng)`` (any TFDS feature dict).

  ``transform`` maps a decoded example to a flat dict of FIXED-shape numpy arrays (pad variable-size
  features with ``research.data.pad_to`` / ``transforms.pad_instances``); ``rng`` is a ``np.random.Generator``
  keyed by the example's place in the global stream (so augmentation does not depend on the process count).
  Batches are ``{feature: stacked [b, ...]}`` with ``b = global_batch_size / process_count``, rows of the same
  global stream as ``train_loader`` (``GlobalBatchSliceSampler``). The iterator of the returned
  ``grain.DataLoader`` has ``get_state``/``set_state``. With ``worker_count > 0`` the transform must pickle.
  """
  local_batch = _check_batch(global_batch_size)
  if len(source) < global_batch_size:
    raise ValueError(f"the training split has {len(source)} examples, fewer than one batch "
                     f"(--batch_size={global_batch_size})")
  sampler = GlobalBatchSliceSampler(
      grain.samplers.IndexSampler(num_records=len(source), shard_options=grain.sharding.NoSharding(),
                                  shuffle=True, num_epochs=None, seed=seed),
      global_batch_size=global_batch_size, process_index=jax.process_index(), process_count=jax.process_count())
  return grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[_TransformMap(transform), grain.transforms.Batch(local_batch, drop_remainder=True)],
      worker_count=worker_count, shard_options=grain.sharding.NoSharding())


class GlobalBatchSliceSampler:
  """Per-process view of ONE process-count-independent sample stream (the multi-host input contract).

  ``base`` is a sampler over the whole dataset (shuffled with the run's seed); its element ``k`` is the
  ``k``-th example of the global stream, with the augmentation RNG keyed by ``k``. Global batch ``b`` is
  elements ``[b*G, (b+1)*G)``; process ``p`` of ``P`` reads rows ``[p*L, (p+1)*L)`` of it (``L = G/P``),
  i.e. its local element ``j`` is global element ``(j // L) * G + p * L + j % L``. Every process thus
  reads and augments only its own rows (as with grain's ``ShardByJaxProcess``), yet the assembled global
  batch -- contents, order and augmentation -- is the same for any process count: 2 processes x 2
  devices train on exactly the batches of 1 process x 4 devices. With one process the mapping is the
  identity (the same stream as ``IndexSampler`` with one shard).
  (With ``worker_count > 0`` grain interleaves records across workers, so batches are still disjoint
  across processes but the stream then depends on the process count.)
  """

  def __init__(self, base, *, global_batch_size: int, process_index: int, process_count: int):
    if global_batch_size % process_count:
      raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
    self._base = base
    self._global = global_batch_size
    self._local = global_batch_size // process_count
    self._process_index = process_index
    self._process_count = process_count

  def __len__(self) -> int:
    return len(self._base)  # sys.maxsize for an infinite stream: the mapping keeps it unbounded

  def __getitem__(self, index: int):
    batch, row = divmod(index, self._local)
    return self._base[batch * self._global + self._process_index * self._local + row]

  def __repr__(self) -> str:
    # grain validates a restored iterator state against repr(sampler): name the stream only, not this
    # process's place in it, so a checkpoint restores into any process count.
    return f"GlobalBatchSliceSampler(base={self._base!r})"


def eval_batches(source, *, global_batch_size: int, mean, std, image_shape: tuple[int, int, int],
                 label_key: str = "label") -> Iterator[dict[str, np.ndarray]]:
  """One pass in order; each global batch padded to size, this process's rows, with ``mask`` (1 = real).

  ``valid`` holds the same values as ``mask`` (the key of ``make_eval_batches``; ``mask`` is kept for now).
  Padding rows hold normalised zero images and label 0."""
  local_batch = _check_batch(global_batch_size)
  n = len(source)
  start = jax.process_index() * local_batch
  for b in range(-(-n // global_batch_size)):
    idx = np.arange(b * global_batch_size + start, b * global_batch_size + start + local_batch)
    valid = idx < n
    rows = _read(source, [int(i) for i in idx[valid]]) if valid.any() else []
    images = np.zeros((local_batch,) + tuple(image_shape), np.uint8)
    labels = np.zeros((local_batch,), np.int32)
    for r, row in enumerate(rows):
      images[r] = row["image"]
      labels[r] = row[label_key]
    valid = valid.astype(np.float32)
    yield {"image": normalize(images, mean, std), "label": labels, "mask": valid, "valid": valid.copy()}


def make_eval_batches(source, *, global_batch_size: int,
                      transform: Callable[[Any], Mapping[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
  """One deterministic pass of ``transform(example)`` over ``source``, in order, in global batches.

  ``transform`` (one argument: no augmentation) maps an example to a flat dict of fixed-shape arrays. Each global
  batch is padded to ``global_batch_size`` rows; this process gets its rows ``[p*b, (p+1)*b)``. Padding rows are
  zeros in every feature; ``valid`` (float32 [b]) is 1 for real rows.
  """
  local_batch = _check_batch(global_batch_size)
  n = len(source)
  start = jax.process_index() * local_batch
  shapes, template = None, None
  for b in range(-(-n // global_batch_size)):
    idx = np.arange(b * global_batch_size + start, b * global_batch_size + start + local_batch)
    valid = idx < n
    rows = [transform(r) for r in _read(source, [int(i) for i in idx[valid]])] if valid.any() else []
    if template is None:  # feature shapes/dtypes, also for a process whose rows are all padding
      first = rows[0] if rows else transform(_read(source, [0])[0])
      shapes = _check_features(first, None, "eval transform")
      if "valid" in shapes:
        raise ValueError("the eval transform returned a feature named 'valid'; that key marks the real rows")
      template = {k: (np.shape(v), np.asarray(v).dtype) for k, v in first.items()}
    batch = {k: np.zeros((local_batch,) + shape, dtype) for k, (shape, dtype) in template.items()}
    for r, row in enumerate(rows):
      _check_features(row, shapes, "eval transform")
      for k, v in row.items():
        batch[k][r] = v
    batch["valid"] = valid.astype(np.float32)
    yield batch


def _read(source, indices: list[int]) -> list:
  """Batched random access where the source supports it (array_record), else one record at a time."""
  try:
    return source.__getitems__(indices)
  except (AttributeError, TypeError):  # e.g. tfds.testing.mock_data's source
    return [source[i] for i in indices]


def read_split(name: str, split: str, data_dir: str | None = None, *, order_by: str | None = None) -> list:
  """Every decoded record of one split (batched random access where the source has it), sorted by the integer
  feature ``order_by`` when given and present (e.g. a builder's ``index``: TFDS shuffles records on write)."""
  source = get_source(name, split, data_dir)
  rows = _read(source, list(range(len(source))))
  if order_by is not None and rows and order_by in rows[0]:
    rows = sorted(rows, key=lambda r: int(r[order_by]))
  return rows


def load_arrays(name: str, split: str, data_dir: str | None = None,
                keys: tuple[str, ...] = ("image", "label", "coarse_label")) -> dict[str, np.ndarray]:
  """A whole split as numpy arrays (``image`` uint8 [N,H,W,C], integer labels [N])."""
  source = get_source(name, split, data_dir)
  rows = _read(source, list(range(len(source))))
  out = {}
  for k in keys:
    if k not in rows[0]:
      raise ValueError(f"dataset {name!r} has no feature {k!r}; it has {sorted(rows[0])}")
    out[k] = np.stack([np.asarray(r[k]) for r in rows])
  return out


def hierarchy(name: str) -> dict[str, np.ndarray] | None:
  """fine -> coarse -> group tables for datasets with a known taxonomy (``shapes``)."""
  if name == "shapes":
    return {"fine_to_coarse": shapes_render.FINE_TO_COARSE, "coarse_to_group": shapes_render.COARSE_TO_GROUP,
            "fine_names": np.array(shapes_render.FINE_NAMES), "coarse_names": np.array(shapes_render.COARSE_NAMES),
            "group_names": np.array(shapes_render.GROUPS)}
  return None
