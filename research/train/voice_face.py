"""Voice-face cross-modal matching on the ONE loop (seed 001 Q3, "Voice-Face Cross-modal Matching and Retrieval").

* :class:`IdentityBatches` -- identity-based example sampling: every global batch holds ``P`` distinct identities
  and ``K`` faces plus ``K`` voices of each (``face`` [P K, H, W, 3], ``voice`` [P K, T, M], ``identity`` [P K],
  rows ordered identity-major), so every voice anchor has ``K`` positive faces and ``(P - 1) K`` negative ones in
  the batch. Checkpointable (the batch of a step depends only on ``(seed, step)``).
* :class:`VoiceFaceTask` -- losses:
  - ``"triplet"``: the triplet loss in a **voice-anchored** metric space: anchor = a voice embedding, positive =
    a face of the same identity, negative = a face of another identity; all embeddings are unit-norm (the L2-norm
    constraint). Distances come from ``research.ops.metric.pairwise_distances`` (voices x faces, [B, B]); with
    ``mining="batch_all"`` (default) the loss is the mean over the non-zero (anchor, positive, negative) hinges of
    the batch (Hermans et al. 2017, "BA≠0"); with ``"batch_hard"`` each voice anchor takes its farthest positive
    face and its nearest negative face (Hermans et al. 2017) -- trained from scratch on ``voice_face`` it collapses
    (every embedding equal, loss stuck at the margin; 1:2 matching 0.520 ± 0.009 after 1500 steps, 2 seeds).
    ``face_anchor_weight > 0`` adds the same loss with the roles swapped (face anchors, voice positives /
    negatives).
  - ``"contrastive"`` (the comparison variant): ``research.ops.metric.contrastive_loss`` on voice-face pairs: each
    voice with a face of its own identity (similar) and with a face of the next identity in the batch
    (dissimilar).
* Evaluation on the TEST identities (unseen in training): every face and voice is embedded (``gathered``), then
  :meth:`VoiceFaceTask.eval_metrics` computes with numpy
  - ``match_v2f`` / ``match_f2v``: 1:2 matching accuracy over a fixed seeded set of ``num_triplets`` triplets
    (:func:`sample_triplets`): a voice query and two faces, one of the query's identity -- correct when the true
    face is nearer (and the same with a face query and two voices); chance is 0.5;
  - ``match_v2f_avg{m}`` / ``match_f2v_avg{m}``: the same triplets with every embedding replaced by the
    re-normalised mean of ``m`` random examples of its identity ("matching based on the average of multiple voices
    and multiple faces");
  - ``map_v2f``: retrieval mean average precision, every test voice queried against every test face (relevant =
    the faces of its identity, :func:`retrieval_map`); ``map_v2f_avg{m}``: the query is the mean of ``m`` voices.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.ops import metric
from research.train.audio_metrics import average_precision as average_precision_scores
from research.train import task as task_lib

LOSSES = ("triplet", "contrastive")
MININGS = ("batch_hard", "batch_all")


# ------------------------------------------------------------------------------------------------ sampling


class IdentityBatches:
  """Infinite seeded P x K identity batches (module docstring) over per-identity arrays.

  Args:
    faces: [N, F, H, W, 3] uint8, the faces of identity row ``n``.
    voices: [N, V, T, M] float32.
    identity: [N] int, the identity ids.
    identities_per_batch: ``P`` (<= N). examples_per_identity: ``K``; drawn without replacement when ``K <= F``
      (resp. ``V``), else with replacement.
  """

  def __init__(self, faces: np.ndarray, voices: np.ndarray, identity: np.ndarray, *, identities_per_batch: int,
               examples_per_identity: int, seed: int, start_step: int = 0):
    n = len(identity)
    if len(faces) != n or len(voices) != n:
      raise ValueError(f"faces, voices and identity must have one row per identity, got {len(faces)}, "
                       f"{len(voices)}, {n}")
    if not 2 <= identities_per_batch <= n:
      raise ValueError(f"--identities_per_batch must be in [2, {n}] (the training identities), got "
                       f"{identities_per_batch}")
    if examples_per_identity < 1:
      raise ValueError(f"--examples_per_identity must be >= 1, got {examples_per_identity}")
    b = identities_per_batch * examples_per_identity
    if b % jax.process_count():
      raise ValueError(f"global batch P*K={b} is not divisible by {jax.process_count()} processes")
    self.faces, self.voices, self.identity = faces, voices, np.asarray(identity)
    self.p, self.k, self._seed, self._step = identities_per_batch, examples_per_identity, seed, start_step

  def _pick(self, rng, count: int) -> np.ndarray:
    """[P, K] example indices among ``count`` per identity."""
    if self.k <= count:
      return np.argsort(rng.random((self.p, count)), axis=1)[:, :self.k]
    return rng.integers(0, count, (self.p, self.k))

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    """The global batch of ``step``: ``face``, ``voice``, ``identity`` int32 [P K] (identity-major)."""
    rng = np.random.default_rng([self._seed, step])
    rows = rng.choice(len(self.identity), self.p, replace=False)  # P distinct identities
    fi, vi = self._pick(rng, self.faces.shape[1]), self._pick(rng, self.voices.shape[1])
    r = np.repeat(rows, self.k)
    return {"face": self.faces[r, fi.reshape(-1)], "voice": self.voices[r, vi.reshape(-1)],
            "identity": self.identity[r].astype(np.int32)}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.batch_at(self._step)
    self._step += 1
    local = self.p * self.k // jax.process_count()
    p = jax.process_index()
    return {k: v[p * local:(p + 1) * local] for k, v in batch.items()}

  def get_state(self) -> bytes:
    return json.dumps({"step": self._step, "seed": self._seed, "p": self.p, "k": self.k}).encode()

  def set_state(self, state: bytes) -> None:
    s = json.loads(state)
    if (s.get("seed"), s.get("p"), s.get("k")) != (self._seed, self.p, self.k):
      raise ValueError(f"data state {s} was saved with another seed / P / K than this run's")
    self._step = int(s["step"])


def eval_batches(faces: np.ndarray, voices: np.ndarray, identity: np.ndarray, *, global_batch_size: int):
  """A callable giving one pass over every (identity, slot) of the test split: ``face``, ``voice``, ``identity``,
  ``slot`` and ``valid`` per row (zero-padded last batch, ``research.data.memory.padded_eval_rows``). Needs as many
  faces as voices per identity (``faces [N, S, ...]``, ``voices [N, S, ...]``)."""
  from research.data.memory import padded_eval_rows
  n, s = faces.shape[:2]
  if voices.shape[1] != s:
    raise ValueError(f"evaluation needs as many faces as voices per identity, got {s} and {voices.shape[1]}")
  flat_f, flat_v = faces.reshape((n * s,) + faces.shape[2:]), voices.reshape((n * s,) + voices.shape[2:])
  ids = np.repeat(np.asarray(identity, np.int32), s)
  slots = np.tile(np.arange(s, dtype=np.int32), n)

  def one_pass():
    for rows, valid in padded_eval_rows(n * s, global_batch_size):
      yield {"face": flat_f[rows], "voice": flat_v[rows], "identity": ids[rows], "slot": slots[rows],
             "valid": valid}
  return one_pass


# ------------------------------------------------------------------------------------------------ metrics


def sample_triplets(num_identities: int, num_triplets: int, seed: int) -> np.ndarray:
  """A fixed seeded set of 1:2 matching triplets: int [num_triplets, 2] = (query identity, other identity), the
  other drawn uniformly among the remaining identities (``default_rng(seed)``)."""
  if num_identities < 2:
    raise ValueError(f"1:2 matching needs >= 2 identities, got {num_identities}")
  rng = np.random.default_rng(seed)
  q = rng.integers(0, num_identities, num_triplets)
  o = (q + rng.integers(1, num_identities, num_triplets)) % num_identities
  return np.stack([q, o], axis=1)


def _normalize(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def matching_accuracy(query: np.ndarray, gallery: np.ndarray, triplets: np.ndarray, *, average: int = 1,
                      seed: int = 0) -> float:
  """1:2 matching accuracy.

  Args:
    query: [N, S, d] embeddings of the query modality per identity (S examples each); gallery: [N, S', d].
    triplets: [T, 2] (query identity, other identity) from :func:`sample_triplets`.
    average: ``m``: each query and each of the two candidates is the re-normalised mean of ``m`` distinct random
      examples of its identity (``m = 1``: one random example).
    seed: the example choice (``default_rng(seed)``).

  Returns: the fraction of triplets whose true candidate (the query's identity) is strictly nearer to the query in
  Euclidean distance than the other one; ties count one half.
  """
  rng = np.random.default_rng(seed)
  q_id, o_id = triplets[:, 0], triplets[:, 1]

  def pick(emb, ids):
    s = emb.shape[1]
    if not 1 <= average <= s:
      raise ValueError(f"average={average} must be in [1, {s}] (examples per identity)")
    idx = np.argsort(rng.random((len(ids), s)), axis=1)[:, :average]  # [T, m] distinct examples
    return _normalize(emb[ids[:, None], idx].mean(axis=1))

  qe, pe, ne = pick(query, q_id), pick(gallery, q_id), pick(gallery, o_id)
  d_pos = np.linalg.norm(qe - pe, axis=1)
  d_neg = np.linalg.norm(qe - ne, axis=1)
  return float(np.mean((d_pos < d_neg) + 0.5 * (d_pos == d_neg)))


def average_precision(distances: np.ndarray, relevant: np.ndarray) -> np.ndarray:
  """AP per query: distances [Q, G], relevant [Q, G] bool -> [Q], ranked by ascending distance; the step-wise AP of
  ``research.train.audio_metrics.average_precision`` (ties grouped, as scikit-learn) on the score ``-distance``;
  0 for a query without relevant items."""
  rows = [average_precision_scores(r, -d) if r.any() else 0.0 for d, r in zip(np.asarray(distances), relevant)]
  return np.asarray(rows, np.float64)


def retrieval_map(query: np.ndarray, query_id: np.ndarray, gallery: np.ndarray, gallery_id: np.ndarray) -> float:
  """Mean average precision: each query [Q, d] ranks the whole gallery [G, d] by Euclidean distance; relevant =
  the gallery items of its identity."""
  d = np.sqrt(np.maximum((query ** 2).sum(1)[:, None] + (gallery ** 2).sum(1)[None] - 2 * query @ gallery.T, 0))
  return float(average_precision(d, query_id[:, None] == gallery_id[None, :]).mean())


def averaged_queries(emb: np.ndarray, average: int, seed: int, per_identity: int | None = None) -> np.ndarray:
  """``per_identity`` (default S) queries per identity, each the re-normalised mean of ``average`` distinct random
  examples: emb [N, S, d] -> [N, per_identity, d]."""
  n, s, _ = emb.shape
  per_identity = s if per_identity is None else per_identity
  rng = np.random.default_rng(seed)
  idx = np.argsort(rng.random((n, per_identity, s)), axis=2)[:, :, :average]
  return _normalize(emb[np.arange(n)[:, None, None], idx].mean(axis=2))


# ------------------------------------------------------------------------------------------------ task


def cross_modal_triplet(anchor: jax.Array, anchor_id: jax.Array, other: jax.Array, other_id: jax.Array, *,
                        margin: float, mining: str) -> tuple[jax.Array, jax.Array]:
  """Triplet loss with anchors from one modality and positives / negatives from the other: anchor [B, d],
  other [B', d] -> ``(loss, fraction_active)``. Distances: ``metric.pairwise_distances``."""
  d = metric.pairwise_distances(anchor, other)  # [B, B']
  same = anchor_id[:, None] == other_id[None, :]
  if mining == "batch_hard":
    hardest_pos = jnp.max(jnp.where(same, d, -jnp.inf), axis=1)
    hardest_neg = jnp.min(jnp.where(same, jnp.inf, d), axis=1)
    per = jnp.maximum(hardest_pos - hardest_neg + margin, 0.0)
    return jnp.mean(per), jnp.mean((per > 0).astype(jnp.float32))
  trip = same[:, :, None] & ~same[:, None, :]  # batch_all: [a, p, n]
  per = jnp.where(trip, jnp.maximum(d[:, :, None] - d[:, None, :] + margin, 0.0), 0.0)
  active = jnp.sum(per > 0)
  return jnp.sum(per) / jnp.maximum(active, 1), active / jnp.maximum(jnp.sum(trip), 1)


@dataclasses.dataclass(eq=False)
class VoiceFaceTask(task_lib.Task):
  """Voice-anchored triplet (or contrastive) training of a :class:`~research.models.sequence.voice_face.
  VoiceFaceNet`; evaluation by 1:2 matching and retrieval on the eval identities (module docstring)."""
  model: nn.Module
  loss_name: str = "triplet"
  mining: str = "batch_all"
  margin: float = 0.3
  contrastive_margin: float = 1.0
  face_anchor_weight: float = 0.0
  learning_rate: float = 1e-3
  num_triplets: int = 10_000
  average: int = 4
  eval_seed: int = 0

  def __post_init__(self):
    if self.loss_name not in LOSSES:
      raise ValueError(f"--loss={self.loss_name!r}; choose one of {LOSSES}")
    if self.mining not in MININGS:
      raise ValueError(f"--mining={self.mining!r}; choose one of {MININGS}")
    for name in ("margin", "contrastive_margin", "learning_rate", "num_triplets", "average"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    if self.face_anchor_weight < 0:
      raise ValueError(f"--face_anchor_weight must be >= 0, got {self.face_anchor_weight}")

  def init(self, rng, batch):
    face = jnp.zeros((1,) + tuple(batch["face"].shape[1:]), jnp.uint8)
    voice = jnp.zeros((1,) + tuple(batch["voice"].shape[1:]), jnp.float32)
    return self.model.init(rng, (face, voice), train=False)["params"], {}

  def optimizer(self):
    return optax.adam(self.learning_rate)

  def loss(self, params, model_state, batch, rng, *, train):
    e_face, e_voice = self.model.apply({"params": params}, (batch["face"], batch["voice"]), train=train)
    ids = batch["identity"]
    if self.loss_name == "triplet":
      loss, active = cross_modal_triplet(e_voice, ids, e_face, ids, margin=self.margin, mining=self.mining)
      metrics = {"voice_anchor_loss": loss, "fraction_active": active}
      if self.face_anchor_weight > 0:
        f_loss, _ = cross_modal_triplet(e_face, ids, e_voice, ids, margin=self.margin, mining=self.mining)
        loss = loss + self.face_anchor_weight * f_loss
        metrics["face_anchor_loss"] = f_loss
    else:
      # similar pairs: voice i with face i (same identity); dissimilar: voice i with the face of the next identity
      # block (rows are identity-major, so a roll by the largest block size never lands on the same identity when
      # the batch holds >= 2 identities; pairs that still share an identity are dropped via `valid`).
      k = jnp.sum(ids == ids[0])
      neg_face = jnp.roll(e_face, -k, axis=0)
      neg_ids = jnp.roll(ids, -k, axis=0)
      a = jnp.concatenate([e_voice, e_voice])
      b = jnp.concatenate([e_face, neg_face])
      same = jnp.concatenate([jnp.ones_like(ids, bool), neg_ids == ids])
      valid = jnp.concatenate([jnp.ones_like(ids, bool), neg_ids != ids])
      loss, m = metric.contrastive_loss(a, b, same, self.contrastive_margin, valid=valid)
      metrics = {"fraction_active": m["fraction_active"]}
    return loss, (model_state, metrics)

  def eval_step(self, state, batch):
    e_face, e_voice = self.model.apply({"params": state.params}, (batch["face"], batch["voice"]), train=False)
    return {"count": jnp.sum(batch["valid"])}, {"face_emb": e_face, "voice_emb": e_voice,
                                                  "identity": batch["identity"], "slot": batch["slot"],
                                                  "valid": batch["valid"]}

  def embeddings(self, gathered) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(faces [N, S, d], voices [N, S, d], identity [N])`` from the gathered eval rows."""
    valid = np.asarray(gathered["valid"]) > 0
    ids = np.asarray(gathered["identity"])[valid]
    slots = np.asarray(gathered["slot"])[valid]
    uniq, inv = np.unique(ids, return_inverse=True)
    s = int(slots.max()) + 1
    d = np.asarray(gathered["face_emb"]).shape[-1]
    faces = np.zeros((len(uniq), s, d), np.float64)
    voices = np.zeros((len(uniq), s, d), np.float64)
    faces[inv, slots] = np.asarray(gathered["face_emb"], np.float64)[valid]
    voices[inv, slots] = np.asarray(gathered["voice_emb"], np.float64)[valid]
    return faces, voices, uniq

  def eval_metrics(self, sums, gathered):
    faces, voices, ids = self.embeddings(gathered)
    n, s, _ = faces.shape
    m = min(self.average, s)
    trip = sample_triplets(n, self.num_triplets, self.eval_seed)
    out = {"count": float(sums["count"]), "num_identities": float(n), "num_triplets": float(len(trip))}
    out["match_v2f"] = matching_accuracy(voices, faces, trip, average=1, seed=self.eval_seed + 1)
    out["match_f2v"] = matching_accuracy(faces, voices, trip, average=1, seed=self.eval_seed + 2)
    out[f"match_v2f_avg{m}"] = matching_accuracy(voices, faces, trip, average=m, seed=self.eval_seed + 3)
    out[f"match_f2v_avg{m}"] = matching_accuracy(faces, voices, trip, average=m, seed=self.eval_seed + 4)
    g, g_id = faces.reshape(n * s, -1), np.repeat(np.arange(n), s)
    out["map_v2f"] = retrieval_map(voices.reshape(n * s, -1), g_id, g, g_id)
    q = averaged_queries(voices, m, self.eval_seed + 5)
    out[f"map_v2f_avg{m}"] = retrieval_map(q.reshape(n * s, -1), g_id, g, g_id)
    return out

  def run_info(self) -> dict[str, Any]:
    return {"task": "voice_face", "loss_name": self.loss_name, "mining": self.mining,
            "model_class": type(self.model).__name__}


__all__ = ["IdentityBatches", "LOSSES", "MININGS", "VoiceFaceTask", "average_precision", "averaged_queries",
           "cross_modal_triplet", "eval_batches", "matching_accuracy", "retrieval_map", "sample_triplets"]
