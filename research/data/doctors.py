"""``patient_visits``: an offline doctor / patient / clinical-trial corpus as a real TFDS builder (for Doctor2Vec,
Biswal et al., "Doctor2Vec: Dynamic Doctor Representation Learning for Clinical Trial Recruitment", AAAI 2020).

Why: Doctor2Vec's claim (§1, §4) is that a doctor represented by a MEMORY of the patients they have seen, read with
the trial embedding as the query, predicts the doctor's enrollment rate on a trial better than a static doctor
representation. Real EHR + enrollment data are not public; this corpus has the structure that makes the claim
measurable: the enrollment rate depends on a trial-specific, non-separable subset of each doctor's (recent)
patients.

Generative process (config fields in ``code``; every draw from ``numpy.random.default_rng([seed, part])``, part 0:
doctors and patients, 1: trials, 2: enrollment noise).

1. **Codes.** ``S = num_conditions`` conditions. Code id 0 is padding; ids ``1..shared_codes`` are shared routine
   codes (check-ups, common labs); then each condition ``c`` owns a block of :data:`BLOCK` codes: ``routine_dx``
   diagnosis, ``routine_med`` medication and ``routine_proc`` procedure codes, ``biomarkers`` biomarker diagnosis
   codes and ``prior_meds`` prior-therapy medication codes (:func:`code_layout`; ``code_type`` 0 dx, 1 med, 2 proc,
   3 shared). ``V = num_codes = 1 + shared_codes + S * BLOCK``.
2. **Doctors** ``d = 0..num_doctors-1``: a country ``U{0..num_countries-1}``; an early and a late specialty mix
   ``pi0_d, pi1_d ~ Dirichlet(specialty_alpha)`` (the doctor's practice drifts: dynamic expertise); a panel of
   ``n_d ~ U{min_patients..max_patients}`` patients in chronological order (index ``n_d - 1`` = most recent).
3. **Patients** ``i`` of doctor ``d``: condition ``cond_i ~ Categorical((1 - tau_i) pi0_d + tau_i pi1_d)``,
   ``tau_i = i / max(n_d - 1, 1)``; marker traits: each biomarker ``k`` of ``cond_i`` present with probability
   ``marker_prob``, each prior medication likewise (independently). ``2..max_visits`` visits; visit ``v`` has
   ``2..max_codes`` codes, each drawn (disease progression) from the condition's routine codes with probability
   ``p_v = 0.4 + 0.5 v / max(max_visits - 1, 1)`` (Zipf weights ``1/(r+1)`` in the block), else from the shared
   codes. Every present marker code then replaces one random code slot of one random visit (a later marker may
   overwrite an earlier one in the same slot; eligibility, step 5, reads the stored codes). Stored: ``codes`` int32 [P, Vmax, Cmax] (0 = padding), ``num_visits`` [P] (0 for
   padded patients), ``condition`` [P] (-1 padding), ``num_patients``.
4. **Trials** (``num_train_trials`` then ``num_test_trials``; the test trials are new, unseen trials): target
   condition ``c_t ~ U{0..S-1}``, required biomarker ``b_t`` (one of ``c_t``'s biomarkers), excluded prior
   medication ``x_t`` (one of ``c_t``'s prior meds), phase ``U{0,1,2}`` (I-III), country ``U{..}``. The
   description is a bag of ``trial_tokens`` tokens: inclusion mentions ``b_t`` and two routine dx codes of ``c_t``
   (token = code id), the exclusion mention ``x_t`` (token ``V + x_t``), then generic criteria words (tokens
   ``2V..2V + num_words - 1``) up to a random length in ``[4, trial_tokens]``, padded with 0.
5. **Enrollment rate** of doctor ``d`` on trial ``t`` (:func:`enrollment_rate`): with recency weights
   ``w_i = recency^(n_d - 1 - i)`` and eligibility ``e_it = [cond_i = c_t] [b_t in codes_i] [x_t not in codes_i]``,

       m_dt = sum_i w_i e_it / sum_i w_i
       y_dt = max(0, rate_scale * PHASE_FACTOR[phase_t] * m_dt + country_bonus [country_d = country_t]
                     + noise_std * eps_dt),      eps_dt ~ N(0, 1)

   ``PHASE_FACTOR = (1.0, 0.8, 0.6)``. Eligibility is a conjunction over codes of ONE patient (a bag of the
   doctor's codes cannot compute it), recent patients count more, and which patients matter depends on the trial.

Splits: ``doctors`` (one record per doctor), ``train`` and ``test`` (one record per trial, with ``enrollment``
[num_doctors] float32 = ``y_dt`` for every doctor and ``expected`` = the noise-free value). Configs: ``default``
(200 doctors, 180 / 60 trials) and ``small`` (24 doctors, 16 / 8 trials, for tests).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

NAME = "patient_visits"
SPLITS = ("doctors", "train", "test")
PHASE_FACTOR = (1.0, 0.8, 0.6)
BLOCK_PARTS = ("routine_dx", "routine_med", "routine_proc", "biomarkers", "prior_meds")
BLOCK_SIZES = (8, 6, 4, 3, 3)
BLOCK = sum(BLOCK_SIZES)
CODE_TYPES = ("dx", "med", "proc", "shared")


@dataclasses.dataclass
class PatientVisitsConfig(tfds.core.BuilderConfig):
  """Parameters of the generative process (module docstring, steps 1-5)."""
  num_conditions: int = 6
  shared_codes: int = 12
  num_doctors: int = 200
  num_countries: int = 4
  specialty_alpha: float = 0.4
  min_patients: int = 6
  max_patients: int = 16
  max_visits: int = 5
  max_codes: int = 6
  marker_prob: float = 0.5
  num_train_trials: int = 180
  num_test_trials: int = 60
  trial_tokens: int = 12
  num_words: int = 20
  recency: float = 0.85
  rate_scale: float = 10.0
  country_bonus: float = 0.3
  noise_std: float = 0.2
  seed: int = 0


CONFIGS = {
    "default": PatientVisitsConfig(name="default", description="200 doctors, 180 train / 60 test trials."),
    "small": PatientVisitsConfig(name="small", description="24 doctors, 16 train / 8 test trials (tests).",
                                 num_doctors=24, max_patients=8, min_patients=3, max_visits=4, max_codes=5,
                                 num_train_trials=16, num_test_trials=8, seed=1),
}


def check_config(c: PatientVisitsConfig) -> None:
  checks = [
      (c.num_conditions >= 1, "num_conditions", c.num_conditions, "use >= 1"),
      (c.shared_codes >= 1, "shared_codes", c.shared_codes, "use >= 1"),
      (c.num_doctors >= 1 and c.num_countries >= 1, "num_doctors/num_countries", (c.num_doctors, c.num_countries),
       "use >= 1"),
      (1 <= c.min_patients <= c.max_patients, "min_patients/max_patients", (c.min_patients, c.max_patients),
       "use 1 <= min_patients <= max_patients"),
      (c.max_visits >= 2 and c.max_codes >= 2, "max_visits/max_codes", (c.max_visits, c.max_codes), "use >= 2"),
      (c.specialty_alpha > 0, "specialty_alpha", c.specialty_alpha, "use > 0"),
      (0 <= c.marker_prob <= 1, "marker_prob", c.marker_prob, "use a probability"),
      (c.num_train_trials >= 1 and c.num_test_trials >= 1, "num_train_trials/num_test_trials",
       (c.num_train_trials, c.num_test_trials), "use >= 1"),
      (c.trial_tokens >= 4, "trial_tokens", c.trial_tokens, "use >= 4 (3 inclusion + 1 exclusion mention)"),
      (c.num_words >= 1, "num_words", c.num_words, "use >= 1"),
      (0 < c.recency <= 1, "recency", c.recency, "use 0 < recency <= 1"),
      (c.noise_std >= 0, "noise_std", c.noise_std, "use >= 0"),
  ]
  for ok, field, value, fix in checks:
    if not ok:
      raise ValueError(f"PatientVisitsConfig.{field}={value!r} is invalid: {fix}.")


def num_codes(c: PatientVisitsConfig) -> int:
  """``V``: code ids ``0..V-1`` (0 = padding)."""
  return 1 + c.shared_codes + c.num_conditions * BLOCK


def num_tokens(c: PatientVisitsConfig) -> int:
  """Trial-description vocabulary: inclusion codes ``< V``, exclusion codes ``V + code``, words ``>= 2V``."""
  return 2 * num_codes(c) + c.num_words


def code_layout(c: PatientVisitsConfig) -> dict[str, np.ndarray]:
  """``{part: int [S, size]}`` code ids of each condition's block parts, ``shared`` [shared_codes] and
  ``code_type`` int [V] (index into :data:`CODE_TYPES`; padding id 0 is 'shared')."""
  out = {"shared": np.arange(1, 1 + c.shared_codes)}
  start = 1 + c.shared_codes + np.arange(c.num_conditions)[:, None] * BLOCK
  off = 0
  types = np.full(num_codes(c), 3, np.int32)
  for part, size, kind in zip(BLOCK_PARTS, BLOCK_SIZES, (0, 1, 2, 0, 1)):
    out[part] = start + off + np.arange(size)[None, :]
    types[out[part].reshape(-1)] = kind
    off += size
  out["code_type"] = types
  return out


def _zipf(n: int) -> np.ndarray:
  w = 1.0 / (np.arange(n) + 1.0)
  return w / w.sum()


def generate_doctors(c: PatientVisitsConfig) -> dict[str, np.ndarray]:
  """Steps 2-3: ``codes`` int32 [D, P, Vmax, Cmax], ``num_visits`` [D, P], ``condition`` [D, P], ``num_patients``
  [D], ``country`` [D], ``specialty_early`` / ``specialty_late`` float32 [D, S]."""
  check_config(c)
  rng = np.random.default_rng([c.seed, 0])
  lay = code_layout(c)
  routine = np.concatenate([lay["routine_dx"], lay["routine_med"], lay["routine_proc"]], axis=1)
  routine_p = np.concatenate([_zipf(s) for s in BLOCK_SIZES[:3]]) / 3.0
  shared_p = _zipf(c.shared_codes)
  d, p, vm, cm, s = c.num_doctors, c.max_patients, c.max_visits, c.max_codes, c.num_conditions
  codes = np.zeros((d, p, vm, cm), np.int32)
  num_visits = np.zeros((d, p), np.int32)
  condition = np.full((d, p), -1, np.int32)
  num_patients = rng.integers(c.min_patients, c.max_patients + 1, d).astype(np.int32)
  country = rng.integers(0, c.num_countries, d).astype(np.int32)
  early = rng.dirichlet(np.full(s, c.specialty_alpha), d)
  late = rng.dirichlet(np.full(s, c.specialty_alpha), d)
  for di in range(d):
    n = int(num_patients[di])
    for i in range(n):
      tau = i / max(n - 1, 1)
      mix = (1 - tau) * early[di] + tau * late[di]
      cond = int(rng.choice(s, p=mix / mix.sum()))
      condition[di, i] = cond
      nv = int(rng.integers(2, vm + 1))
      num_visits[di, i] = nv
      counts = np.zeros(vm, np.int32)
      for v in range(nv):
        nc = int(rng.integers(2, cm + 1))
        counts[v] = nc
        p_specific = 0.4 + 0.5 * v / max(vm - 1, 1)
        specific = rng.random(nc) < p_specific
        codes[di, i, v, :nc] = np.where(specific, rng.choice(routine[cond], nc, p=routine_p),
                                        rng.choice(lay["shared"], nc, p=shared_p))
      markers = np.concatenate([lay["biomarkers"][cond], lay["prior_meds"][cond]])
      present = markers[rng.random(len(markers)) < c.marker_prob]
      for code in present:  # each present marker replaces one random code slot of one random visit
        v = int(rng.integers(0, nv))
        codes[di, i, v, int(rng.integers(0, counts[v]))] = code
  return {"codes": codes, "num_visits": num_visits, "condition": condition, "num_patients": num_patients,
          "country": country, "specialty_early": early.astype(np.float32), "specialty_late": late.astype(np.float32)}


def generate_trials(c: PatientVisitsConfig) -> dict[str, np.ndarray]:
  """Step 4 for all ``num_train_trials + num_test_trials`` trials (train first): ``tokens`` int32 [T, L],
  ``condition``, ``biomarker``, ``excluded_med`` (code ids), ``phase``, ``country`` int32 [T]."""
  check_config(c)
  rng = np.random.default_rng([c.seed, 1])
  lay = code_layout(c)
  v = num_codes(c)
  t = c.num_train_trials + c.num_test_trials
  tokens = np.zeros((t, c.trial_tokens), np.int32)
  cond = rng.integers(0, c.num_conditions, t).astype(np.int32)
  bio = np.zeros(t, np.int32)
  excl = np.zeros(t, np.int32)
  for j in range(t):
    bio[j] = rng.choice(lay["biomarkers"][cond[j]])
    excl[j] = rng.choice(lay["prior_meds"][cond[j]])
    dx = rng.choice(lay["routine_dx"][cond[j]], 2, replace=False)
    length = int(rng.integers(4, c.trial_tokens + 1))
    words = 2 * v + rng.integers(0, c.num_words, length - 4)
    tokens[j, :length] = np.concatenate([[bio[j]], dx, [v + excl[j]], words])
  return {"tokens": tokens, "condition": cond, "biomarker": bio, "excluded_med": excl,
          "phase": rng.integers(0, 3, t).astype(np.int32), "country": rng.integers(0, c.num_countries,
                                                                                      t).astype(np.int32)}


def eligibility(doctors: dict, trials: dict) -> np.ndarray:
  """``e`` bool [D, P, T]: patient ``i`` of doctor ``d`` is eligible for trial ``t`` (step 5)."""
  codes = doctors["codes"].reshape(doctors["codes"].shape[:2] + (-1,))  # [D, P, Vmax*Cmax]
  has_bio = (codes[..., None] == trials["biomarker"][None, None, None, :]).any(2)  # [D, P, T]
  has_excl = (codes[..., None] == trials["excluded_med"][None, None, None, :]).any(2)
  same = doctors["condition"][..., None] == trials["condition"][None, None, :]
  return same & has_bio & ~has_excl


def recency_weights(num_patients: np.ndarray, max_patients: int, recency: float) -> np.ndarray:
  """``w`` float64 [D, P]: ``recency^(n_d - 1 - i)`` for ``i < n_d``, 0 for padded patients."""
  i = np.arange(max_patients)[None, :]
  n = np.asarray(num_patients)[:, None]
  return np.where(i < n, float(recency) ** np.maximum(n - 1 - i, 0), 0.0)


def enrollment_rate(c: PatientVisitsConfig, doctors: dict, trials: dict) -> tuple[np.ndarray, np.ndarray]:
  """Step 5: ``(y, expected)`` float32 [D, T]: the noisy enrollment rate and its noise-free value."""
  w = recency_weights(doctors["num_patients"], c.max_patients, c.recency)
  e = eligibility(doctors, trials)
  m = np.einsum("dp,dpt->dt", w, e.astype(np.float64)) / w.sum(1, keepdims=True)
  expected = (c.rate_scale * np.asarray(PHASE_FACTOR)[trials["phase"]][None, :] * m
              + c.country_bonus * (doctors["country"][:, None] == trials["country"][None, :]))
  eps = np.random.default_rng([c.seed, 2]).standard_normal(expected.shape)
  y = np.maximum(0.0, expected + c.noise_std * eps)
  return y.astype(np.float32), expected.astype(np.float32)


def generate(c: PatientVisitsConfig) -> dict[str, dict[str, np.ndarray]]:
  """The whole corpus: ``{'doctors': ..., 'trials': ... (+ 'enrollment', 'expected' [T, D])}``."""
  doctors = generate_doctors(c)
  trials = generate_trials(c)
  y, expected = enrollment_rate(c, doctors, trials)
  trials["enrollment"], trials["expected"] = y.T.copy(), expected.T.copy()
  return {"doctors": doctors, "trials": trials}


class PatientVisits(tfds.core.GeneratorBasedBuilder):
  """Doctors with longitudinal patient records, clinical trials and enrollment rates (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: configs default and small."}
  BUILDER_CONFIGS = list(CONFIGS.values())
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    p, vm, cm = c.max_patients, c.max_visits, c.max_codes
    i32 = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.int32)  # noqa: E731
    f32 = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float32)  # noqa: E731
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # doctors split (trial features zero)
            "codes": i32(p, vm, cm), "num_visits": i32(p), "patient_condition": i32(p), "num_patients": i32(),
            "specialty_early": f32(c.num_conditions), "specialty_late": f32(c.num_conditions),
            # train / test splits (doctor features zero)
            "tokens": i32(c.trial_tokens), "condition": i32(), "biomarker": i32(), "excluded_med": i32(),
            "phase": i32(), "enrollment": f32(c.num_doctors), "expected": f32(c.num_doctors),
            # both
            "country": i32(), "index": tfds.features.Tensor(shape=(), dtype=np.int64),
        }),
        homepage="https://example.invalid/research/patient_visits",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    c = self.builder_config
    data = generate(c)
    doc, tr = data["doctors"], data["trials"]
    empty_doc = {"codes": np.zeros_like(doc["codes"][0]), "num_visits": np.zeros_like(doc["num_visits"][0]),
                 "patient_condition": np.zeros_like(doc["condition"][0]), "num_patients": 0,
                 "specialty_early": np.zeros(c.num_conditions, np.float32),
                 "specialty_late": np.zeros(c.num_conditions, np.float32)}
    empty_trial = {"tokens": np.zeros(c.trial_tokens, np.int32), "condition": 0, "biomarker": 0,
                   "excluded_med": 0, "phase": 0, "enrollment": np.zeros(c.num_doctors, np.float32),
                   "expected": np.zeros(c.num_doctors, np.float32)}
    if split == "doctors":
      for d in range(c.num_doctors):
        yield d, {**empty_trial, "codes": doc["codes"][d], "num_visits": doc["num_visits"][d],
                  "patient_condition": doc["condition"][d], "num_patients": int(doc["num_patients"][d]),
                  "specialty_early": doc["specialty_early"][d], "specialty_late": doc["specialty_late"][d],
                  "country": int(doc["country"][d]), "index": d}
      return
    rows = range(c.num_train_trials) if split == "train" else range(c.num_train_trials, len(tr["phase"]))
    for j, t in enumerate(rows):
      yield j, {**empty_doc, "tokens": tr["tokens"][t], "condition": int(tr["condition"][t]),
                "biomarker": int(tr["biomarker"][t]), "excluded_med": int(tr["excluded_med"][t]),
                "phase": int(tr["phase"][t]), "enrollment": tr["enrollment"][t], "expected": tr["expected"][t],
                "country": int(tr["country"][t]), "index": j}


# ------------------------------------------------------------------------------------------------ reading


_DOCTOR_KEYS = ("codes", "num_visits", "patient_condition", "num_patients", "country")
_TRIAL_KEYS = ("tokens", "condition", "biomarker", "excluded_med", "phase", "country", "enrollment", "expected")


def load(dataset: str = "patient_visits", data_dir: str | None = None) -> dict[str, dict[str, np.ndarray]]:
  """``{'doctors': {...}, 'train': {...}, 'test': {...}}`` numpy arrays in ``index`` order, read through the
  TFDS builder (built on first use); ``dataset`` may name a config (``patient_visits/small``) or any TFDS
  dataset prepared in ``data_dir`` with the same features and splits."""
  from research.data import pipeline  # late import: pipeline imports this module
  info = pipeline.get_info(dataset, data_dir)
  missing = [k for k in sorted(set(_DOCTOR_KEYS + _TRIAL_KEYS)) if k not in info.features]
  if missing or any(s not in info.splits for s in SPLITS):
    raise ValueError(f"--dataset={dataset!r} needs the splits {list(SPLITS)} and the features of {NAME} "
                     f"(research.data.doctors); it has splits {sorted(info.splits)}, missing features {missing}")
  out = {}
  for split in SPLITS:
    rows = pipeline.read_split(dataset, split, data_dir, order_by="index")
    keys = _DOCTOR_KEYS if split == "doctors" else _TRIAL_KEYS
    out[split] = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in keys}
  out["doctors"]["condition"] = out["doctors"].pop("patient_condition")
  n_doc = len(out["doctors"]["country"])
  for split in ("train", "test"):
    if out[split]["enrollment"].shape[1:] != (n_doc,):
      raise ValueError(f"--dataset={dataset!r}: split {split!r} has enrollment of shape "
                       f"{out[split]['enrollment'].shape[1:]}, expected one rate per doctor ({n_doc},)")
  return out


__all__ = ["CONFIGS", "PHASE_FACTOR", "PatientVisits", "PatientVisitsConfig", "code_layout", "eligibility",
           "enrollment_rate", "generate", "load", "num_codes", "num_tokens", "recency_weights"]
