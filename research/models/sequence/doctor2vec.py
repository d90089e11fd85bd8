"""Doctor2Vec (Biswal et al., "Doctor2Vec: Dynamic Doctor Representation Learning for Clinical Trial Recruitment",
AAAI 2020): a doctor is the MEMORY of the patients they have seen; a clinical trial's embedding is the QUERY that
reads a trial-specific, dynamic doctor representation from it; a head predicts the doctor's enrollment rate.

Shapes: ``codes`` int32 [B, P, V, C] (doctor's P patients x V visits x C medical codes, 0 = padding; a patient
whose codes are all 0 is a padded memory slot; valid patients come first, in chronological order), ``tokens`` int32
[B, L] (trial description, 0 = padding), ``phase`` / ``trial_country`` / ``doctor_country`` int32 [B].

1. **Visit and patient embedding** (§3 "patient embedding", hierarchical): code embeddings ``E`` [num_codes, dim];
   visit vector ``x_v`` = masked mean of its codes' embeddings; patient vector ``h_i`` = the last state of a GRU
   (``research.layers.recurrent``) over the patient's valid visits, plus a learned recency embedding of the
   patient's place from the doctor's most recent patient (``n_d - 1 - i``; patients are stored chronologically),
   so the memory knows which patients are recent.
2. **Trial embedding** (§3 "trial embedding"; the paper embeds the description with BERT, here a bag of
   eligibility-criteria tokens, laid out as in ``research.data.doctors``): tokens ``< num_codes`` are inclusion
   mentions of a medical code, ``num_codes..2 num_codes - 1`` exclusion mentions of code ``token - num_codes``
   (both embedded with the patients' code table ``E``: shared medical-concept embeddings), larger ids are criteria
   words with their own table ``W``; ``q = MLP([mean E[inclusion], mean E[exclusion], mean W[words], phase
   embedding, country embedding])`` [dim].
3. **Memory network** (§3 "dynamic doctor representation"): memory slots ``k_i = W_k h_i``, ``m_i = W_m h_i``;
   attention ``alpha_i = softmax_i(q . k_i / sqrt(dim))`` over the VALID patients only (padded slots get weight 0);
   the trial-specific doctor vector is ``o = sum_i alpha_i m_i`` (:func:`memory_read`). Because a normalized read
   cannot count how many patients match, the head also receives the log-partition ``log sum_i exp(q . k_i /
   sqrt(dim))`` of the read (an addition of this implementation, documented as such).
   ``readout="mean"`` is the static baseline: ``o = mean_i m_i`` (no attention, no trial dependence) and
   ``log n_d`` in place of the log-partition.
4. **Head**: ``doctor = o + C[doctor_country]``; ``y = MLP([doctor, q, doctor * q, log-partition, log n_d])`` [B],
   the predicted enrollment rate (``n_d``: the doctor's number of valid patients).

Registered in the family ``"sequence"``: ``doctor2vec`` (memory readout) and ``doctor2vec_mean`` (mean baseline).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.recurrent import RNN, GRUCell
from research.models.registry import register

Array = jax.Array
READOUTS = ("memory", "mean")
_NEG = -1e9


def masked_mean(rows: Array, mask: Array) -> Array:
  """``[..., N, d] -> [..., d]``: the mean over the ``mask`` [..., N] rows (0 where there are none)."""
  w = mask.astype(rows.dtype)[..., None]
  return jnp.sum(rows * w, axis=-2) / jnp.maximum(jnp.sum(w, axis=-2), 1.0)


def memory_read(keys: Array, values: Array, mask: Array, query: Array) -> tuple[Array, Array, Array]:
  """One attention read of a memory (Doctor2Vec §3): ``(o [B, d], alpha [B, P], log_partition [B])``.

  ``keys`` / ``values`` [B, P, d], ``mask`` bool [B, P] (valid slots), ``query`` [B, d]. ``alpha`` is the softmax of
  ``query . keys / sqrt(d)`` over the valid slots (exactly 0 at masked slots; all 0 for an empty memory, whose
  ``o`` and log-partition are 0).
  """
  d = keys.shape[-1]
  scores = jnp.einsum("bpd,bd->bp", keys, query) / math.sqrt(d)
  scores = jnp.where(mask, scores, _NEG)
  peak = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
  e = jnp.exp(scores - peak) * mask.astype(scores.dtype)
  total = jnp.sum(e, axis=-1, keepdims=True)
  alpha = e / jnp.maximum(total, 1e-30)
  any_valid = jnp.any(mask, axis=-1)
  log_partition = jnp.where(any_valid, jnp.log(jnp.maximum(total[:, 0], 1e-30)) + peak[:, 0], 0.0)
  o = jnp.einsum("bp,bpd->bd", alpha, values)
  return o, alpha, log_partition


class PatientEncoder(nn.Module):
  """Codes [N, V, C] -> patient vectors [N, dim] (visit = mean of code embeddings; patient = GRU over visits)."""
  num_codes: int
  dim: int = 32
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, codes: Array) -> Array:
    code_mask = codes != 0
    visit_mask = jnp.any(code_mask, axis=-1)  # [N, V]
    emb = nn.Embed(self.num_codes, self.dim, dtype=self.dtype, param_dtype=self.param_dtype, name="code_embedding")
    visits = masked_mean(emb(codes), code_mask)  # [N, V, dim]
    _, h = RNN(GRUCell, self.dim, dtype=self.dtype, param_dtype=self.param_dtype, name="visit_gru")(
        visits, mask=visit_mask)
    return h


class Doctor2Vec(nn.Module):
  """Enrollment-rate regressor (module docstring): ``model(codes, tokens, *, phase, trial_country,
  doctor_country, train) -> y [B]`` (``return_details=True``: ``(y, {'alpha' [B, P], 'doctor' [B, dim],
  'trial' [B, dim], 'log_partition' [B]})``)."""
  num_codes: int
  num_tokens: int
  max_patients: int
  num_countries: int = 8
  num_phases: int = 3
  dim: int = 32
  hidden: int = 64
  readout: str = "memory"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _dense(self, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def _embed(self, n: int, name: str) -> nn.Embed:
    return nn.Embed(n, self.dim, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(self, codes: Array, tokens: Array, *, phase: Array, trial_country: Array, doctor_country: Array,
               train: bool = False, return_details: bool = False):
    del train  # no dropout / batch statistics
    if self.readout not in READOUTS:
      raise ValueError(f"Doctor2Vec readout={self.readout!r}; choose one of {READOUTS}")
    if codes.ndim != 4 or tokens.ndim != 2 or codes.shape[0] != tokens.shape[0]:
      raise ValueError(f"Doctor2Vec: codes must be [B, P, V, C] and tokens [B, L] with the same B, got "
                       f"{codes.shape} and {tokens.shape}")
    b, p = codes.shape[:2]
    # 1. patients
    encoder = PatientEncoder(self.num_codes, self.dim, self.dtype, self.param_dtype, name="patient_encoder")
    h = encoder(codes.reshape((b * p,) + codes.shape[2:])).reshape(b, p, self.dim)
    patient_mask = jnp.any(codes != 0, axis=(2, 3))  # [B, P]
    n = jnp.sum(patient_mask, axis=-1)
    since_recent = jnp.clip(n[:, None] - 1 - jnp.arange(p)[None, :], 0, self.max_patients - 1)
    h = h + self._embed(self.max_patients, "recency_embedding")(since_recent)
    # 2. trial
    v = self.num_codes
    include = (tokens > 0) & (tokens < v)
    exclude = (tokens >= v) & (tokens < 2 * v)
    words = tokens >= 2 * v
    code_emb = encoder.variables["params"]["code_embedding"]["embedding"]  # shared with the patients' codes
    mention = jnp.take(code_emb, jnp.where(tokens < v, tokens, jnp.clip(tokens - v, 0, v - 1)), axis=0)
    word = self._embed(max(self.num_tokens - 2 * v, 1), "word_embedding")(jnp.clip(tokens - 2 * v, 0, None))
    trial = jnp.concatenate([masked_mean(mention, include), masked_mean(mention, exclude), masked_mean(word, words),
                             self._embed(self.num_phases, "phase_embedding")(phase),
                             self._embed(self.num_countries, "trial_country_embedding")(trial_country)], axis=-1)
    q = self._dense(self.dim, "trial_out")(nn.relu(self._dense(self.hidden, "trial_hidden")(trial)))
    # 3. memory
    keys = self._dense(self.dim, "memory_keys")(h)
    values = self._dense(self.dim, "memory_values")(h)
    if self.readout == "memory":
      o, alpha, log_partition = memory_read(keys, values, patient_mask, q)
    else:
      o = masked_mean(values, patient_mask)
      alpha = patient_mask.astype(o.dtype) / jnp.maximum(n[:, None], 1).astype(o.dtype)
      log_partition = jnp.log(jnp.maximum(n, 1).astype(o.dtype))
    # 4. head
    doctor = o + self._embed(self.num_countries, "doctor_country_embedding")(doctor_country)
    log_n = jnp.log(jnp.maximum(n, 1).astype(o.dtype))[:, None]
    z = jnp.concatenate([doctor, q, doctor * q, log_partition[:, None], log_n], axis=-1)
    z = nn.relu(self._dense(self.hidden, "head_1")(z))
    z = nn.relu(self._dense(self.hidden, "head_2")(z))
    y = self._dense(1, "head_out")(z)[:, 0].astype(jnp.float32)
    if return_details:
      return y, {"alpha": alpha, "doctor": doctor, "trial": q, "log_partition": log_partition}
    return y


@register("doctor2vec", family="sequence")
def doctor2vec(**kw) -> Doctor2Vec:
  return Doctor2Vec(**{"readout": "memory", **kw})


@register("doctor2vec_mean", family="sequence")
def doctor2vec_mean(**kw) -> Doctor2Vec:
  return Doctor2Vec(**{**kw, "readout": "mean"})


__all__ = ["Doctor2Vec", "PatientEncoder", "READOUTS", "masked_mean", "memory_read"]
