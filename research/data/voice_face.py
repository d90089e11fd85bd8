"""``voice_face``: an offline voice-face identity corpus as a real TFDS builder (array_record, built on first use).

Why: voice-face cross-modal matching (seed 001 Q3: "Voice-Face Cross-modal Matching and Retrieval") rests on the
observation that faces and voices are both shaped by the same hidden factors (hormones, genes: gender, age, body
size). Real corpora (VoxCeleb + VGGFace) need downloads; this corpus needs none and has exactly that structure: a
few **shared** latent attributes drive both modalities, while every modality also has **private** attributes that
the other one cannot see. Only the shared attributes link a face to a voice, so 1:2 matching is learnable (well above
0.5) but not trivial (two identities of the same gender, similar age and size are hard to tell apart).

Generative process. Identity ``i`` of split ``s`` (train 0, test 1) draws everything from
``numpy.random.default_rng([seed, s, i])``; its global ``identity`` id is ``i`` (train) or ``num_train + i`` (test),
so the splits hold DISJOINT identities (test identities are never seen in training).

1. **Shared attributes** (features ``gender``, ``age``, ``size``): ``gender`` ~ Bernoulli(0.5) (1 = "male"),
   ``age`` ~ U[0, 1], ``size`` ~ N(0, 1) (body size).
2. **Face** (``face`` uint8 [F, S, S, 3], ``faces_per_identity`` images): a head ellipse whose width grows with
   ``gender`` and ``size`` and whose jaw narrows for ``gender = 0``; hair that is long for ``gender = 0`` and greys
   with ``age``; forehead wrinkles growing with ``age``; stubble for some ``gender = 1`` identities. Private
   (face-only) attributes: skin tone, hair colour, eye spacing, mouth width, head height. Per image (nuisance):
   shift, scale, in-plane rotation (pose), a lighting gradient and gain, background colour and pixel noise.
3. **Voice** (``voice`` float32 [V, T, M], ``voices_per_identity`` clips = different "utterances"): a source-filter
   synthesis at ``sample_rate`` Hz of ``clip_seconds``: syllables of random vowels (formants F1-F3 of 5 vowels),
   each a harmonic series on the fundamental ``f0`` shaped by the vowel's formant envelope, a Hann syllable envelope
   and breath noise. Shared: ``f0`` (~120 Hz for ``gender = 1``, ~210 Hz for 0; rising with ``age`` for
   ``gender = 1``, falling for 0), the vocal-tract scale of the formants (lower for ``gender = 1`` and larger
   ``size``), the speaking rate (slower with ``age``) and the jitter (grows with ``age``). Private (voice-only):
   an ``f0`` offset, a formant offset, the spectral tilt (timbre) and breathiness. Per clip: the vowel sequence,
   intonation, loudness. Stored as a log-mel spectrogram (``frames`` x ``mel_bins``, 32 ms Hann frames, mel
   filterbank 50 Hz .. Nyquist, ``log(mel + 1e-4)`` minus the clip's mean, i.e. loudness-invariant), computed in
   numpy (:func:`log_mel`); :func:`synthesize_voice` returns the waveform itself.

Features: ``face``, ``voice``, ``identity`` (int64, global), ``gender`` (int32), ``age``, ``size`` (float32).
One record per identity. Configs (:data:`CONFIGS`): ``default`` (300 train / 100 test identities, 8 faces and 8
voices each, 32x32 faces, 0.5 s clips at 8 kHz), ``small`` (40 / 20 identities, 4 + 4 each: tests).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

NAME = "voice_face"
SPLITS = ("train", "test")
# (F1, F2, F3) in Hz of the vowels /a/ /e/ /i/ /o/ /u/ (adult-male averages, Peterson & Barney 1952).
VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240]],
                  np.float64)
FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


@dataclasses.dataclass
class VoiceFaceConfig(tfds.core.BuilderConfig):
  """Sizes of the corpus (module docstring)."""
  num_train: int = 300
  num_test: int = 100
  faces_per_identity: int = 8
  voices_per_identity: int = 8
  image_size: int = 32
  sample_rate: int = 8000
  clip_seconds: float = 0.5
  frames: int = 32
  mel_bins: int = 32
  seed: int = 0


CONFIGS = {
    "default": VoiceFaceConfig(name="default", description="300 train / 100 test identities, 8 faces + 8 voices."),
    "small": VoiceFaceConfig(name="small", description="40 train / 20 test identities, 4 faces + 4 voices (tests).",
                             num_train=40, num_test=20, faces_per_identity=4, voices_per_identity=4, seed=1),
}


def _check_config(c: VoiceFaceConfig) -> None:
  checks = [
      (c.num_train >= 2 and c.num_test >= 2, "num_train/num_test", (c.num_train, c.num_test), "use >= 2 identities"),
      (c.faces_per_identity >= 1 and c.voices_per_identity >= 1, "faces/voices_per_identity",
       (c.faces_per_identity, c.voices_per_identity), "use >= 1"),
      (c.image_size >= 16, "image_size", c.image_size, "use >= 16 pixels"),
      (c.sample_rate >= 4000 and c.clip_seconds * c.sample_rate >= 512, "sample_rate/clip_seconds",
       (c.sample_rate, c.clip_seconds), "use >= 4 kHz and clips of >= 512 samples"),
      (c.frames >= 2 and c.mel_bins >= 4, "frames/mel_bins", (c.frames, c.mel_bins), "use >= 2 frames, >= 4 bins"),
  ]
  for ok, field, value, fix in checks:
    if not ok:
      raise ValueError(f"VoiceFaceConfig.{field}={value!r} is invalid: {fix}.")


# ------------------------------------------------------------------------------------------------ identities


def identity_attributes(rng: np.random.Generator) -> dict[str, float]:
  """Step 1 (shared) and the private attributes of both modalities, drawn in a fixed order."""
  a = {"gender": int(rng.random() < 0.5), "age": float(rng.random()), "size": float(rng.normal())}
  # face-private
  a["skin"] = float(rng.random())
  a["hair_hue"] = float(rng.random())
  a["eye_spacing"] = float(rng.normal())
  a["mouth_width"] = float(rng.normal())
  a["head_height"] = float(rng.normal())
  a["stubble"] = float(a["gender"] and rng.random() < 0.5)
  # voice-private
  a["f0_offset"] = float(rng.normal())
  a["formant_offset"] = float(rng.normal())
  a["tilt"] = float(rng.random())
  a["breath"] = float(rng.random())
  return a


# ------------------------------------------------------------------------------------------------ faces

_SKIN = np.array([[0.96, 0.80, 0.69], [0.55, 0.36, 0.24]])  # light .. dark
_GREY = np.array([0.75, 0.75, 0.75])


def _hair_colour(hue: float) -> np.ndarray:
  """Black, brown, auburn, blond along ``hue`` in [0, 1)."""
  stops = np.array([[0.08, 0.06, 0.05], [0.35, 0.22, 0.12], [0.55, 0.25, 0.12], [0.85, 0.72, 0.45]])
  x = hue * (len(stops) - 1)
  j = min(int(x), len(stops) - 2)
  return stops[j] + (x - j) * (stops[j + 1] - stops[j])


def render_face(a: dict, rng: np.random.Generator, size: int) -> np.ndarray:
  """One face image of identity attributes ``a`` (step 2), with random pose / lighting / noise: uint8 [S, S, 3]."""
  g, age = a["gender"], a["age"]
  lin = (np.arange(size) + 0.5) / size * 2 - 1
  v0, u0 = np.meshgrid(lin, lin, indexing="ij")  # v: down, u: right
  # pose: shift, scale, in-plane rotation
  ang = rng.normal(0, 0.12)
  sc = np.exp(rng.normal(0, 0.05))
  du, dv = rng.normal(0, 0.06, 2)
  uu, vv = (u0 - du) / sc, (v0 - dv) / sc
  u = np.cos(ang) * uu + np.sin(ang) * vv
  v = -np.sin(ang) * uu + np.cos(ang) * vv
  half_w = 0.48 + 0.08 * g + 0.035 * a["size"] + 0.02 * a["eye_spacing"] * 0.5
  half_h = 0.66 + 0.03 * a["head_height"]
  jaw = 1.0 + (0.35 - 0.15 * g) * np.clip(v, 0, None)  # narrower chin for gender 0
  r = (u * jaw / half_w) ** 2 + (v / half_h) ** 2
  head = r < 1.0
  img = np.empty((size, size, 3))
  img[:] = rng.uniform(0.1, 0.9, 3)  # background (nuisance)
  skin = _SKIN[0] + a["skin"] * (_SKIN[1] - _SKIN[0])
  hair = _hair_colour(a["hair_hue"])
  hair = hair + age ** 2 * (_GREY - hair)  # greying with age
  if not g:  # long hair: a wider ellipse behind the head down to the shoulders
    back = ((u / (half_w + 0.18)) ** 2 + ((v + 0.05) / (half_h + 0.15)) ** 2 < 1.0) & (v < 0.75)
    img[back] = hair
  img[head] = skin
  cap = head & (v < -half_h * (0.45 - 0.1 * (1 - g))) | (r < 1.1) & (r >= 1.0) & (v < -0.2)
  img[cap] = hair
  if a["stubble"]:
    beard = head & (v > 0.18)
    img[beard] = 0.55 * skin + 0.45 * hair * 0.6
  # wrinkles (age): two forehead lines
  for k, lv in enumerate((-0.33, -0.25)):
    line = head & ~cap & (np.abs(v - lv) < 0.025) & (np.abs(u) < 0.25)
    img[line] = img[line] * (1 - 0.5 * max(age - 0.35 - 0.2 * k, 0) / 0.65)
  ex = 0.19 + 0.025 * a["eye_spacing"]
  for sgn in (-1, 1):
    eye = (u - sgn * ex) ** 2 + (v + 0.08) ** 2 < 0.065 ** 2
    img[eye] = (0.05, 0.05, 0.08)
    brow = (np.abs(u - sgn * ex) < 0.1) & (np.abs(v + 0.2) < 0.025 + 0.012 * g)
    img[brow & head] = hair * 0.8
  mw = 0.16 + 0.03 * a["mouth_width"]
  mouth = (np.abs(u) < mw) & (np.abs(v - 0.38) < 0.035)
  img[mouth & head] = (0.6 + 0.15 * (1 - g), 0.25, 0.25)
  # lighting: gain and a linear gradient; pixel noise
  d = rng.normal(0, 1, 2)
  d /= np.linalg.norm(d) + 1e-9
  light = rng.uniform(0.8, 1.15) * (1 + 0.18 * (d[0] * u0 + d[1] * v0))
  img = img * light[..., None] + rng.normal(0, 0.03, img.shape)
  return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ voices


def voice_parameters(a: dict) -> dict[str, float]:
  """The identity's voice (step 3): ``f0`` Hz, formant scale, syllables per second, jitter, tilt, breath."""
  g, age = a["gender"], a["age"]
  base = 120.0 if g else 210.0
  f0 = base * np.exp(0.09 * a["f0_offset"]) * (1 + 0.15 * (age - 0.5) * (1 if g else -1))
  scale = np.exp(0.17 * (1 - g) - 0.04 * a["size"] + 0.03 * a["formant_offset"])
  return {"f0": float(f0), "formant_scale": float(scale), "rate": float(6.5 - 3.0 * age),
          "jitter": float(0.005 + 0.03 * age), "tilt": 0.6 + 1.2 * a["tilt"], "breath": 0.02 + 0.1 * a["breath"]}


def synthesize_voice(a: dict, rng: np.random.Generator, sample_rate: int, seconds: float) -> np.ndarray:
  """One utterance of identity ``a``: float32 [round(sample_rate * seconds)] waveform in about [-1, 1]."""
  p = voice_parameters(a)
  n = int(round(sample_rate * seconds))
  out = np.zeros(n)
  nyq = sample_rate / 2
  t_syl = 1.0 / p["rate"]
  start = rng.uniform(0, 0.3) * t_syl
  while start < seconds:
    dur = t_syl * rng.uniform(0.6, 0.9)
    i0, i1 = int(start * sample_rate), min(int((start + dur) * sample_rate), n)
    if i1 - i0 > 8:
      m = i1 - i0
      formants = VOWELS[rng.integers(len(VOWELS))] * p["formant_scale"]
      f0 = p["f0"] * (1 + rng.normal(0, p["jitter"]))
      contour = f0 * (1 + rng.normal(0, 0.05) * np.linspace(-1, 1, m))
      phase = 2 * np.pi * np.cumsum(contour) / sample_rate
      kmax = int(nyq * 0.95 // (f0 * 1.1))
      k = np.arange(1, max(kmax, 1) + 1)
      fk = k * f0
      env = np.sum(np.exp(-0.5 * ((fk[:, None] - formants[None]) / (FORMANT_BANDWIDTHS * p["formant_scale"])) ** 2)
                   * np.array([1.0, 0.6, 0.3]), axis=1)
      amp = (env + 0.02) * (fk / 100.0) ** (-p["tilt"])
      amp /= amp.max()
      wave = np.sin(k[:, None] * phase[None] + rng.uniform(0, 2 * np.pi, (len(k), 1))).T @ amp
      wave = wave / (np.abs(wave).max() + 1e-9) + p["breath"] * 3 * rng.normal(0, 1, m)
      out[i0:i1] += np.hanning(m) * wave * rng.uniform(0.5, 1.0)
    start += t_syl * rng.uniform(0.9, 1.1)
  out += 1e-3 * rng.normal(0, 1, n)
  return (out / (np.abs(out).max() + 1e-9) * rng.uniform(0.3, 0.9)).astype(np.float32)


def mel_filterbank(sample_rate: int, n_fft: int, mel_bins: int, fmin: float = 50.0) -> np.ndarray:
  """Triangular mel filters [n_fft // 2 + 1, mel_bins] (HTK mel scale ``2595 log10(1 + f / 700)``)."""
  mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
  hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
  edges = hz(np.linspace(mel(fmin), mel(sample_rate / 2), mel_bins + 2))
  freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
  lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
  up = (freqs[:, None] - lo) / (mid - lo)
  down = (hi - freqs[:, None]) / (hi - mid)
  return np.clip(np.minimum(up, down), 0, None)


def log_mel(wave: np.ndarray, sample_rate: int, frames: int, mel_bins: int) -> np.ndarray:
  """Log-mel spectrogram float32 [frames, mel_bins] of a waveform: 32 ms Hann frames spread evenly over the clip,
  power spectrum through :func:`mel_filterbank`, ``log(mel + 1e-4)`` minus its mean (loudness invariance)."""
  n_fft = int(2 ** np.ceil(np.log2(0.032 * sample_rate)))
  if len(wave) < n_fft:
    raise ValueError(f"log_mel: a clip of {len(wave)} samples is shorter than one {n_fft}-sample frame")
  starts = np.linspace(0, len(wave) - n_fft, frames).astype(int)
  seg = wave[starts[:, None] + np.arange(n_fft)] * np.hanning(n_fft)
  power = np.abs(np.fft.rfft(seg, axis=1)) ** 2
  x = np.log(power @ mel_filterbank(sample_rate, n_fft, mel_bins) + 1e-4)
  return (x - x.mean()).astype(np.float32)


# ------------------------------------------------------------------------------------------------ splits


def generate_identity(config: VoiceFaceConfig, split: str, i: int) -> dict:
  """Record ``i`` of ``split`` (module docstring): ``face``, ``voice``, ``identity`` and the shared attributes."""
  rng = np.random.default_rng([config.seed, SPLITS.index(split), i])
  a = identity_attributes(rng)
  faces = np.stack([render_face(a, rng, config.image_size) for _ in range(config.faces_per_identity)])
  voices = np.stack([log_mel(synthesize_voice(a, rng, config.sample_rate, config.clip_seconds), config.sample_rate,
                             config.frames, config.mel_bins) for _ in range(config.voices_per_identity)])
  ident = i if split == "train" else config.num_train + i
  return {"face": faces, "voice": voices, "identity": ident, "gender": a["gender"], "age": np.float32(a["age"]),
          "size": np.float32(a["size"])}


def generate(config: VoiceFaceConfig, split: str) -> dict[str, np.ndarray]:
  """Every identity of ``split`` stacked: ``face`` uint8 [N, F, S, S, 3], ``voice`` float32 [N, V, T, M],
  ``identity`` int64 [N], ``gender`` int32 [N], ``age`` / ``size`` float32 [N]."""
  _check_config(config)
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: {NAME} has splits {list(SPLITS)}")
  n = config.num_train if split == "train" else config.num_test
  recs = [generate_identity(config, split, i) for i in range(n)]
  types = {"face": np.uint8, "voice": np.float32, "identity": np.int64, "gender": np.int32, "age": np.float32,
           "size": np.float32}
  return {k: np.asarray([r[k] for r in recs], t) for k, t in types.items()}


class VoiceFace(tfds.core.GeneratorBasedBuilder):
  """Identities with a procedural face and a synthetic voice driven by shared attributes (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: configs default and small."}
  BUILDER_CONFIGS = list(CONFIGS.values())
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s = c.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "face": tfds.features.Tensor(shape=(c.faces_per_identity, s, s, 3), dtype=np.uint8),
            "voice": tfds.features.Tensor(shape=(c.voices_per_identity, c.frames, c.mel_bins), dtype=np.float32),
            "identity": np.int64,
            "gender": np.int32,
            "age": np.float32,
            "size": np.float32,
        }),
        homepage="https://example.invalid/research/voice_face",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    _check_config(self.builder_config)
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    c = self.builder_config
    for i in range(c.num_train if split == "train" else c.num_test):
      rec = generate_identity(c, split, i)
      yield i, rec


__all__ = ["CONFIGS", "VoiceFace", "VoiceFaceConfig", "generate", "generate_identity", "identity_attributes",
           "log_mel", "mel_filterbank", "render_face", "synthesize_voice", "voice_parameters"]
