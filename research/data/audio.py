"""``audio_events``: an offline multi-label sound-event corpus of raw 16 kHz waveforms as a real TFDS builder.

Why: the raw-waveform audio tagging system with mix-training (Audio Set classification from raw waveforms: a 1-D
ResNet front end, a 2-D ResNet with multi-level prediction and attention, trained with a mix-training strategy,
§2-§3) is about clips that hold several OVERLAPPING sound events, tagged without onsets (weak, multi-label
labels). This corpus needs no download and has that structure: every clip is a sum of 1-4 synthetic events of
different classes at random times, over background noise, labelled with the multi-hot set of its classes.

Generative process (config fields in ``code``). Every draw comes from ``numpy.random.default_rng([seed, split
index])`` (train 0, test 1), one clip after the other. A clip has ``T = round(clip_seconds * 16000)`` samples.

1. **Background**: white Gaussian noise of RMS ``10^(L_b / 20)``, ``L_b ~ U(noise_db)`` dBFS (stored as
   ``noise_rms``).
2. **Events**: ``K = 1 + Binomial(max_events - 1, event_prob)`` DISTINCT classes drawn uniformly from the
   :data:`CLASS_NAMES` (``C = 10``). Each event has a duration ``d ~ U(min_seconds, max_seconds)`` (at most the
   clip), an onset ``t0 ~ U(0, clip_seconds - d)`` (so events overlap often) and a level ``L ~ U(event_db)``
   dBFS: its waveform is scaled to RMS ``10^(L / 20)`` over its duration and multiplied by a 5 ms raised-cosine
   fade in/out. Classes (``f ~`` log-uniform in the given range; the ``band`` [lo, hi] Hz holds its energy):

   ========================  ======================================================================  ============
   class                     waveform                                                                band
   ========================  ======================================================================  ============
   ``tone``                  ``sin(2 pi f t)``, f in [300, 3000]                                      f +- 40
   ``chirp_up``              linear sweep f0 -> f1, f0 in [200, 1000], f1 = f0 * U(2, 4)             [f0, f1]
   ``chirp_down``            linear sweep f1 -> f0 (same ranges)                                      [f0, f1]
   ``white_burst``           white Gaussian noise                                                     [0, 8000]
   ``band_noise``            white noise band-passed (FFT mask) to [c/1.25, c*1.25], c in [1500, 5000]  that band
   ``click_train``           exponentially decaying clicks (tau 0.4 ms), rate r in [8, 30] Hz         [0, 8000]
   ``harmonic``              sum_{h=1..5} sin(2 pi h f0 t) / h, f0 in [120, 400]                      [f0, 5 f0]
   ``am_tone``               ``(1 + 0.9 sin(2 pi m t)) sin(2 pi f t)``, f in [400, 3000], m in [4, 12]  f +- 40
   ``fm_tone``               ``sin(2 pi f t + (D / v) sin(2 pi v t))``, D = 0.08 f, v in [5, 9] Hz     f +- (D+60)
   ``rumble``                white noise low-passed (FFT mask) to [20, 250] Hz                        [20, 250]
   ========================  ======================================================================  ============

3. The clip is background + events; if its peak exceeds 0.99 the whole clip (and ``noise_rms``, event levels)
   is scaled down to peak 0.99; it is stored as int16 (``round(32767 x)``).

Features: ``audio`` (``Tensor`` int16 [T]; divide by 32768 for [-1, 1)), ``labels`` (multi-hot int32 [C] in
:data:`CLASS_NAMES` order), the per-event records padded to ``max_events`` rows (``-1`` / 0 for absent rows):
``event_labels`` int32 [E], ``event_onsets`` / ``event_durations`` float32 [E] (seconds), ``event_bands`` float32
[E, 2] (Hz); ``noise_rms`` float32 and ``index`` int64. Splits ``train`` / ``test``. Configs: ``default``
(0.5 s clips, 1,200 train / 600 test, ~2 s to build) and ``small`` (0.25 s clips, 96 / 48, for tests).

Every event's level is at least ``event_db[0] - noise_db[1]`` dB above the whole-band background, so each labelled
event is audible in its band (tested: the band energy inside its onset window exceeds the background's).
:func:`load_audio_split` reads ``audio_events`` or a user's TFDS dataset with a 1-D ``audio`` feature and a
multi-hot ``labels`` (or a ``Sequence(ClassLabel)``) feature into numpy arrays.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

NAME = "audio_events"
SAMPLE_RATE = 16_000
CLASS_NAMES = ("tone", "chirp_up", "chirp_down", "white_burst", "band_noise", "click_train", "harmonic", "am_tone",
               "fm_tone", "rumble")
SPLITS = ("train", "test")
_FADE_SECONDS = 0.005


@dataclasses.dataclass
class AudioEventsConfig(tfds.core.BuilderConfig):
  """Parameters of the generative process (module docstring, steps 1-3)."""
  num_train: int = 1_200
  num_test: int = 600
  clip_seconds: float = 0.5
  max_events: int = 4
  event_prob: float = 0.4
  min_seconds: float = 0.1
  max_seconds: float = 0.3
  event_db: tuple[float, float] = (-32.0, -16.0)
  noise_db: tuple[float, float] = (-52.0, -42.0)
  seed: int = 0


CONFIGS = {
    "default": AudioEventsConfig(name="default", description="0.5 s clips, 1,200 train / 600 test, 10 classes."),
    "small": AudioEventsConfig(name="small", description="0.25 s clips, 96 train / 48 test (tests).",
                               num_train=96, num_test=48, clip_seconds=0.25, min_seconds=0.06, max_seconds=0.15,
                               seed=1),
}


def _check_config(c: AudioEventsConfig) -> None:
  checks = [
      (c.num_train >= 1 and c.num_test >= 1, "num_train/num_test", (c.num_train, c.num_test), "use >= 1 clips"),
      (c.clip_seconds >= 0.05, "clip_seconds", c.clip_seconds, "use >= 0.05 s"),
      (1 <= c.max_events <= len(CLASS_NAMES), "max_events", c.max_events, f"use 1..{len(CLASS_NAMES)}"),
      (0 <= c.event_prob <= 1, "event_prob", c.event_prob, "use a probability"),
      (0.02 <= c.min_seconds <= c.max_seconds, "min_seconds/max_seconds", (c.min_seconds, c.max_seconds),
       "use 0.02 <= min_seconds <= max_seconds"),
      (c.event_db[0] <= c.event_db[1] and c.noise_db[0] <= c.noise_db[1] and c.noise_db[1] < c.event_db[0],
       "event_db/noise_db", (c.event_db, c.noise_db), "use ordered ranges with noise_db entirely below event_db"),
  ]
  for ok, field, value, fix in checks:
    if not ok:
      raise ValueError(f"AudioEventsConfig.{field}={value!r} is invalid: {fix}.")


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
  return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _band_limited_noise(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
  """White noise with every FFT bin outside [lo, hi] Hz zeroed."""
  spec = np.fft.rfft(rng.standard_normal(n))
  freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
  spec[(freqs < lo) | (freqs > hi)] = 0.0
  return np.fft.irfft(spec, n)


def render_event(cls: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float]]:
  """One unscaled event waveform of class ``cls`` with ``n`` samples and its energy band ``(lo, hi)`` Hz
  (module docstring, table of step 2)."""
  t = np.arange(n) / SAMPLE_RATE
  name = CLASS_NAMES[cls]
  nyq = SAMPLE_RATE / 2
  if name == "tone":
    f = _log_uniform(rng, 300, 3000)
    return np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)), (f - 40, f + 40)
  if name in ("chirp_up", "chirp_down"):
    f0 = _log_uniform(rng, 200, 1000)
    f1 = f0 * rng.uniform(2, 4)
    a, b = (f0, f1) if name == "chirp_up" else (f1, f0)
    dur = max(t[-1], 1.0 / SAMPLE_RATE)
    phase = 2 * np.pi * (a * t + 0.5 * (b - a) / dur * t ** 2)
    return np.sin(phase), (f0, f1)
  if name == "white_burst":
    return rng.standard_normal(n), (0.0, nyq)
  if name == "band_noise":
    c = _log_uniform(rng, 1500, 5000)
    return _band_limited_noise(rng, n, c / 1.25, c * 1.25), (c / 1.25, c * 1.25)
  if name == "click_train":
    rate = rng.uniform(8, 30)
    x = np.zeros(n)
    kernel = np.exp(-np.arange(int(0.004 * SAMPLE_RATE)) / (0.0004 * SAMPLE_RATE))
    first = rng.uniform(0, 1.0 / rate)
    for c in np.arange(first, t[-1] + 1e-9, 1.0 / rate):
      i = int(c * SAMPLE_RATE)
      m = min(len(kernel), n - i)
      x[i:i + m] += kernel[:m] * rng.choice((-1.0, 1.0))
    if not np.any(x):
      x[0] = 1.0
    return x, (0.0, nyq)
  if name == "harmonic":
    f0 = _log_uniform(rng, 120, 400)
    return sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 6)), (f0 - 20, 5 * f0 + 20)
  if name == "am_tone":
    f, m = _log_uniform(rng, 400, 3000), rng.uniform(4, 12)
    return (1 + 0.9 * np.sin(2 * np.pi * m * t)) * np.sin(2 * np.pi * f * t), (f - 40, f + 40)
  if name == "fm_tone":
    f, v = _log_uniform(rng, 500, 3000), rng.uniform(5, 9)
    dev = 0.08 * f
    return np.sin(2 * np.pi * f * t + dev / v * np.sin(2 * np.pi * v * t)), (f - dev - 60, f + dev + 60)
  if name == "rumble":
    return _band_limited_noise(rng, n, 20, 250), (20.0, 250.0)
  raise ValueError(f"unknown event class {cls}")


def _fade(n: int) -> np.ndarray:
  k = max(1, min(int(_FADE_SECONDS * SAMPLE_RATE), n // 2))
  ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)
  w = np.ones(n)
  w[:k], w[n - k:] = ramp, ramp[::-1]
  return w


def generate(config: AudioEventsConfig, split: str) -> dict[str, np.ndarray]:
  """The clips of ``split`` (module docstring): ``audio`` int16 [N, T], ``labels`` int32 [N, C],
  ``event_labels`` int32 [N, E], ``event_onsets`` / ``event_durations`` float32 [N, E], ``event_bands`` float32
  [N, E, 2], ``noise_rms`` float32 [N]."""
  _check_config(config)
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: {NAME} has splits {list(SPLITS)}")
  n = config.num_train if split == "train" else config.num_test
  rng = np.random.default_rng([config.seed, SPLITS.index(split)])
  T, C, E = int(round(config.clip_seconds * SAMPLE_RATE)), len(CLASS_NAMES), config.max_events
  out = {"audio": np.zeros((n, T), np.int16), "labels": np.zeros((n, C), np.int32),
         "event_labels": np.full((n, E), -1, np.int32), "event_onsets": np.zeros((n, E), np.float32),
         "event_durations": np.zeros((n, E), np.float32), "event_bands": np.zeros((n, E, 2), np.float32),
         "noise_rms": np.zeros((n,), np.float32)}
  for i in range(n):
    noise_rms = 10 ** (rng.uniform(*config.noise_db) / 20)
    clip = rng.standard_normal(T) * noise_rms
    k = 1 + int(rng.binomial(E - 1, config.event_prob))
    classes = rng.choice(C, size=k, replace=False)
    for j, cls in enumerate(classes):
      dur = min(rng.uniform(config.min_seconds, config.max_seconds), config.clip_seconds)
      m = max(2, int(round(dur * SAMPLE_RATE)))
      start = int(rng.integers(0, T - m + 1))
      wave, band = render_event(int(cls), m, rng)
      level = 10 ** (rng.uniform(*config.event_db) / 20)
      wave = wave * (level / max(float(np.sqrt(np.mean(wave ** 2))), 1e-12)) * _fade(m)
      clip[start:start + m] += wave
      out["labels"][i, cls] = 1
      out["event_labels"][i, j] = cls
      out["event_onsets"][i, j] = start / SAMPLE_RATE
      out["event_durations"][i, j] = m / SAMPLE_RATE
      out["event_bands"][i, j] = (max(band[0], 0.0), min(band[1], SAMPLE_RATE / 2))
    peak = float(np.max(np.abs(clip)))
    scale = 0.99 / peak if peak > 0.99 else 1.0
    out["audio"][i] = np.round(clip * scale * 32767).astype(np.int16)
    out["noise_rms"][i] = noise_rms * scale
  return out


class AudioEvents(tfds.core.GeneratorBasedBuilder):
  """Overlapping synthetic sound events over background noise, multi-label (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: configs default and small."}
  BUILDER_CONFIGS = list(CONFIGS.values())
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    T, E = int(round(c.clip_seconds * SAMPLE_RATE)), c.max_events
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Tensor(shape=(T,), dtype=np.int16),
            "labels": tfds.features.Tensor(shape=(len(CLASS_NAMES),), dtype=np.int32),
            "event_labels": tfds.features.Tensor(shape=(E,), dtype=np.int32),
            "event_onsets": tfds.features.Tensor(shape=(E,), dtype=np.float32),
            "event_durations": tfds.features.Tensor(shape=(E,), dtype=np.float32),
            "event_bands": tfds.features.Tensor(shape=(E, 2), dtype=np.float32),
            "noise_rms": np.float32,
            "index": np.int64,
        }),
        supervised_keys=("audio", "labels"),
        homepage="https://example.invalid/research/audio_events",
        metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES), sample_rate=SAMPLE_RATE),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    clips = generate(self.builder_config, split)
    for i in range(len(clips["audio"])):
      yield i, {**{k: v[i] for k, v in clips.items()}, "index": i}


# ------------------------------------------------------------------------------------------------ reading


def load_audio_split(dataset: str, split: str, data_dir: str | None = None, *,
                     limit: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """One split as ``(audio float32 [N, T] in [-1, 1), labels float32 [N, C] multi-hot, class_names)``.

  ``dataset``: ``audio_events`` (``audio_events/small``: a config), built on first use, or any TFDS dataset
  prepared in ``data_dir`` (array_record) with a fixed-length 1-D ``audio`` feature (integer PCM or float) and
  ``labels``: a multi-hot ``Tensor`` [C] or a ``Sequence(ClassLabel)``. Records come in ``index`` order when the
  dataset has that feature; ``limit`` keeps the first ``limit``.
  """
  from research.data import pipeline  # late import: pipeline imports this module
  info = pipeline.get_info(dataset, data_dir)
  features = info.features
  missing = [k for k in ("audio", "labels") if k not in features]
  if missing:
    raise ValueError(f"--dataset={dataset!r} has no feature(s) {missing}; audio tagging needs 'audio' (1-D "
                     f"waveform) and 'labels' (multi-hot or Sequence(ClassLabel)); it has {sorted(features)}")
  shape = tuple(features["audio"].shape)
  if len(shape) != 1 or shape[0] is None:
    raise ValueError(f"--dataset={dataset!r}: 'audio' has shape {shape}; a fixed-length mono waveform [T] is "
                     f"needed (crop or pad the clips when preparing the dataset)")
  lab = features["labels"]
  if isinstance(lab, tfds.features.Sequence) and isinstance(lab.feature, tfds.features.ClassLabel):
    names = list(lab.feature.names)
  elif len(tuple(lab.shape)) == 1 and lab.shape[0]:
    names = (list(CLASS_NAMES) if dataset.split("/")[0] == NAME
             else [f"class_{c}" for c in range(lab.shape[0])])
  else:
    raise ValueError(f"--dataset={dataset!r}: 'labels' must be a multi-hot Tensor [C] or a Sequence(ClassLabel), "
                     f"got {type(lab).__name__} with shape {lab.shape}")
  rows = pipeline.read_split(dataset, split, data_dir, order_by="index" if "index" in features else None)
  if limit is not None:
    rows = rows[:limit]
  audio = np.stack([np.asarray(r["audio"]) for r in rows])
  if np.issubdtype(audio.dtype, np.integer):
    audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max + 1)
  audio = audio.astype(np.float32)
  labels = np.zeros((len(rows), len(names)), np.float32)
  for i, r in enumerate(rows):
    v = np.asarray(r["labels"])
    if isinstance(lab, tfds.features.Sequence):
      labels[i, v.astype(np.int64)] = 1.0
    else:
      labels[i] = v > 0
  return audio, labels, names


__all__ = ["CLASS_NAMES", "CONFIGS", "SAMPLE_RATE", "AudioEvents", "AudioEventsConfig", "generate",
           "load_audio_split", "render_event"]
