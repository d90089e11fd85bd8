"""LINE training on the one loop (Tang et al. 2015, §4.2 edge sampling + negative sampling, §5 evaluation).

* ``EdgeSampler(graph, batch_size, num_negatives, seed)``: the data iterator. At step ``t`` it draws, with
  ``np.random.default_rng([seed, t])``, ``batch_size`` edges from an alias table of the edge weights (so the
  gradients are not scaled by ``w``) and ``num_negatives`` negatives per edge from an alias table of
  ``P_n(v) ∝ d_v^{3/4}`` (``d_v`` = weighted out-degree); the batch is ``{"source" [B], "target" [B],
  "negatives" [B, K]}`` int32. The batch depends only on ``(seed, t)``; ``get_state``/``set_state`` make resume
  exact.
* ``LineTask``: SGD with the paper's linearly decaying rate ``rho_t = rho_0 (1 - t/T)`` (floored at
  ``1e-4 rho_0`` like the reference code). ``learning_rate`` is the paper's per-edge ``rho_0``: the loss is the
  batch MEAN of per-edge losses and the SGD rate is ``rho_0 * batch_size``, so one step moves every touched
  vector as ``batch_size`` sequential per-edge updates of the reference implementation would (to first order).
  Eval gathers the vertex embeddings and hands them to an ``evaluator`` (``evaluate_embeddings``).
* ``expand_low_degree``: the paper's reconstruction of low-degree vertices (§4.3), second-order neighbours added
  with weights ``sum_k w_ik w_kj / d_k``.
* ``linear_probe`` (softmax logistic regression in JAX, L-BFGS; its penalty chosen on the train nodes by
  ``select_l2``), ``f1_scores`` (micro/macro-F1), ``roc_auc`` and ``evaluate_embeddings``: node classification on
  the embeddings of the train nodes, scored on the test nodes, and link prediction by the dot product of
  (L2-normalised) embeddings of held-out positive vs negative pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.models.graph.line import LINE
from research.ops.alias import alias_probs, alias_sample_np, alias_table
from research.train import task as task_lib

Evaluator = Callable[[np.ndarray], dict[str, float]]


# ------------------------------------------------------------------------------------------------- data


def num_nodes_of(graph: Any) -> int:
  """Number of vertices of a ``NodeGraph``-like object (``num_nodes``, else rows of ``labels``/``features``)."""
  n = getattr(graph, "num_nodes", None)
  if n is not None:
    return int(n)
  for name in ("labels", "features"):
    if getattr(graph, name, None) is not None:
      return int(np.shape(getattr(graph, name))[0])
  raise ValueError(f"{type(graph).__name__} has no num_nodes, labels or features; cannot tell the number of nodes")


class EdgeSampler:
  """Infinite iterator of this process's rows of LINE batches: alias-sampled edges + ``d^0.75`` negatives.

  ``graph`` needs ``senders [E]``, ``receivers [E]`` (both directions of an undirected edge), ``edge_weight [E]``
  (optional: ones) and a node count (``num_nodes_of``).
  """

  def __init__(self, graph: Any, batch_size: int, num_negatives: int, seed: int, *, start_step: int = 0,
               negative_power: float = 0.75):
    n = num_nodes_of(graph)
    senders = np.asarray(graph.senders)
    receivers = np.asarray(graph.receivers)
    weight = getattr(graph, "edge_weight", None)
    weight = np.ones(senders.shape, np.float64) if weight is None else np.asarray(weight, np.float64)
    if senders.ndim != 1 or receivers.shape != senders.shape or weight.shape != senders.shape or not senders.size:
      raise ValueError(f"EdgeSampler: senders, receivers and edge_weight must be [E] with E > 0, got "
                       f"{senders.shape}, {receivers.shape}, {weight.shape}; store one row per directed edge")
    if senders.min() < 0 or receivers.min() < 0 or max(senders.max(), receivers.max()) >= n:
      raise ValueError(f"EdgeSampler: node ids must lie in [0, {n}), got senders in [{senders.min()}, "
                       f"{senders.max()}] and receivers in [{receivers.min()}, {receivers.max()}]")
    if batch_size <= 0 or batch_size % jax.process_count():
      raise ValueError(f"EdgeSampler: batch_size={batch_size} must be positive and divisible by "
                       f"{jax.process_count()} processes")
    if num_negatives < 1:
      raise ValueError(f"EdgeSampler: num_negatives={num_negatives} must be >= 1 (the paper uses K = 5)")
    self.num_nodes = n
    self._senders, self._receivers = senders.astype(np.int32), receivers.astype(np.int32)
    self._edge_prob, self._edge_alias = alias_table(weight)
    degree = np.bincount(senders, weights=weight, minlength=n)
    self._neg_prob, self._neg_alias = alias_table(degree ** negative_power)
    self._batch, self._k, self._seed = batch_size, num_negatives, seed
    self._local = batch_size // jax.process_count()
    self._step = start_step

  @property
  def edge_probs(self) -> np.ndarray:
    """Probability of drawing each edge ``[E]`` (what the alias table encodes: ``w_e / W``)."""
    return alias_probs(self._edge_prob, self._edge_alias)

  @property
  def negative_probs(self) -> np.ndarray:
    """Noise distribution ``P_n [N]`` (``∝ d^0.75``)."""
    return alias_probs(self._neg_prob, self._neg_alias)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self._seed, self._step])
    e = alias_sample_np(rng, self._edge_prob, self._edge_alias, (self._batch,))
    neg = alias_sample_np(rng, self._neg_prob, self._neg_alias, (self._batch, self._k))
    self._step += 1
    p = slice(jax.process_index() * self._local, (jax.process_index() + 1) * self._local)
    return {"source": self._senders[e][p], "target": self._receivers[e][p], "negatives": neg[p]}

  def get_state(self) -> bytes:
    return json.dumps({"step": self._step, "seed": self._seed, "batch_size": self._batch,
                       "num_negatives": self._k}).encode()

  def set_state(self, state: bytes) -> None:
    s = json.loads(state)
    if (s.get("seed"), s.get("batch_size"), s.get("num_negatives")) != (self._seed, self._batch, self._k):
      raise ValueError(f"EdgeSampler: data state {s} was saved with another seed, batch_size or num_negatives than "
                       f"this run's ({self._seed}, {self._batch}, {self._k}); use a fresh workdir")
    self._step = int(s["step"])


@dataclasses.dataclass(frozen=True)
class LineEdges:
  """A directed weighted edge list (what ``EdgeSampler`` needs): ``senders``/``receivers`` ``[E]`` int32,
  ``edge_weight [E]`` float32, ``num_nodes``."""
  senders: np.ndarray
  receivers: np.ndarray
  edge_weight: np.ndarray
  num_nodes: int


def expand_low_degree(graph: Any, threshold: int) -> LineEdges:
  """LINE §4.3 (low-degree vertices): every vertex ``i`` with fewer than ``threshold`` distinct out-neighbours gets
  directed edges ``i -> j`` to its strongest second-order neighbours ``j`` (not itself, not already neighbours),
  weighted ``w_ij = sum_k w_ik w_kj / d_k`` (``d_k`` = weighted out-degree), highest first (ties: lower id), until
  it has ``threshold`` neighbours or none are left. Returns the original edges followed by the added ones."""
  n = num_nodes_of(graph)
  s, r = np.asarray(graph.senders, np.int64), np.asarray(graph.receivers, np.int64)
  w = getattr(graph, "edge_weight", None)
  w = np.ones(s.shape, np.float64) if w is None else np.asarray(w, np.float64)
  if threshold < 0:
    raise ValueError(f"expand_low_degree: threshold={threshold} must be >= 0 (0 = no expansion)")
  order = np.argsort(s, kind="stable")
  s_sorted, r_sorted, w_sorted = s[order], r[order], w[order]
  start = np.searchsorted(s_sorted, np.arange(n + 1))
  degree = np.bincount(s, weights=w, minlength=n)
  add_s, add_r, add_w = [], [], []
  for i in range(n):
    nbrs, wi = r_sorted[start[i]:start[i + 1]], w_sorted[start[i]:start[i + 1]]
    have = np.unique(nbrs)
    if have.size >= threshold or not nbrs.size:
      continue
    acc = np.zeros(n)
    for k, wik in zip(nbrs, wi):
      if degree[k] > 0:
        np.add.at(acc, r_sorted[start[k]:start[k + 1]], wik * w_sorted[start[k]:start[k + 1]] / degree[k])
    acc[have] = 0.0
    acc[i] = 0.0
    cand = np.flatnonzero(acc > 0)
    cand = cand[np.argsort(-acc[cand], kind="stable")][:threshold - have.size]
    add_s.append(np.full(cand.size, i))
    add_r.append(cand)
    add_w.append(acc[cand])
  cat = lambda base, extra, dt: np.concatenate([base] + extra).astype(dt)  # noqa: E731
  return LineEdges(cat(s, add_s, np.int32), cat(r, add_r, np.int32), cat(w, add_w, np.float32), n)


def eval_nodes(num_nodes: int, num_devices: int | None = None) -> Callable[[], list[dict[str, np.ndarray]]]:
  """The eval "split": one global batch of every node id (padded to a multiple of the device count, ``valid``
  marks real rows); returns a callable giving this process's rows, as the loop's ``eval_data`` expects."""
  d = jax.device_count() if num_devices is None else num_devices
  padded = -(-num_nodes // d) * d
  node = np.arange(padded, dtype=np.int32) % num_nodes
  valid = np.arange(padded) < num_nodes
  local = padded // jax.process_count()
  p = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
  return lambda: [{"node": node[p], "valid": valid[p]}]


# ------------------------------------------------------------------------------------------------- evaluation


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Rows of ``x [N, D]`` scaled to unit L2 norm (zero rows stay zero)."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("num_classes", "num_iters"))
def linear_probe(features: jax.Array, labels: jax.Array, weight: jax.Array, *, num_classes: int, l2: float = 1e-3,
                 num_iters: int = 100) -> tuple[jax.Array, jax.Array]:
  """Softmax (multinomial) logistic regression by L-BFGS: ``features [N, F]``, ``labels [N]`` int, ``weight [N]``
  (1 on the training rows, 0 elsewhere; static shapes, so every split reuses one compilation).

  Minimises ``sum_i w_i CE(x_i W + b, y_i) / sum_i w_i + l2/2 ||W||^2`` (the bias is not penalised), i.e.
  scikit-learn's ``LogisticRegression(C = 1 / (l2 sum_i w_i))``. Returns ``(W [F, C], b [C])``. (LINE §5.1: "a
  one-vs-rest logistic regression" on the embeddings; the softmax version is the multinomial one.)
  """
  x = features.astype(jnp.float32)
  onehot = jax.nn.one_hot(jnp.maximum(labels, 0), num_classes)
  w = weight.astype(jnp.float32)
  total = jnp.maximum(jnp.sum(w), 1.0)

  def objective(params):
    kernel, bias = params
    logp = jax.nn.log_softmax(x @ kernel + bias)
    return -jnp.sum(w * jnp.sum(onehot * logp, -1)) / total + 0.5 * l2 * jnp.sum(kernel ** 2)

  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def body(carry, _):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=objective)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=num_iters)
  return params


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
  """Micro- and macro-F1 of single-label predictions ``[n]``. Macro averages the per-class
  ``2 TP / (2 TP + FP + FN)`` over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's convention);
  micro-F1 equals accuracy here (one prediction per example)."""
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  if y_true.shape != y_pred.shape or y_true.ndim != 1 or not y_true.size:
    raise ValueError(f"f1_scores: y_true and y_pred must be non-empty [n], got {y_true.shape} and {y_pred.shape}")
  classes = np.union1d(y_true, y_pred)
  tp = np.array([np.sum((y_true == c) & (y_pred == c)) for c in classes], np.float64)
  fp = np.array([np.sum((y_true != c) & (y_pred == c)) for c in classes], np.float64)
  fn = np.array([np.sum((y_true == c) & (y_pred != c)) for c in classes], np.float64)
  per_class = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
  micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
  return {"micro_f1": float(micro), "macro_f1": float(per_class.mean())}


def roc_auc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
  """Area under the ROC curve = P(s+ > s-) + P(s+ = s-)/2 (Mann-Whitney U with average ranks for ties)."""
  pos, neg = np.asarray(pos_scores, np.float64).ravel(), np.asarray(neg_scores, np.float64).ravel()
  if not pos.size or not neg.size:
    raise ValueError(f"roc_auc: needs positive and negative scores, got {pos.size} and {neg.size}")
  s = np.concatenate([pos, neg])
  order = np.argsort(s, kind="mergesort")
  ranks = np.empty(s.size, np.float64)
  sorted_s = s[order]
  start = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]  # first index of every tie group
  end = np.r_[start[1:], s.size]
  avg = (start + end + 1) / 2.0  # average 1-based rank of the group
  ranks[order] = np.repeat(avg, end - start)
  u = ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2.0
  return float(u / (pos.size * neg.size))


def link_scores(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
  """Dot products ``e_i . e_j`` of the node pairs ``pairs [P, 2]`` -> ``[P]``."""
  pairs = np.asarray(pairs)
  if pairs.ndim != 2 or pairs.shape[1] != 2:
    raise ValueError(f"link_scores: pairs must be [P, 2] node ids, got shape {pairs.shape}; stack (src, dst) columns")
  return np.sum(embeddings[pairs[:, 0]] * embeddings[pairs[:, 1]], axis=-1)


def random_label_split(labels: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``(train_mask [N], test_mask [N])``: a random ``train_fraction`` of the labelled nodes (``label >= 0``) for
  the classifier, the rest for testing (the paper's protocol, §5.1: "randomly sample a portion of the labeled
  vertices for training")."""
  labels = np.asarray(labels)
  if not 0.0 < train_fraction < 1.0:
    raise ValueError(f"--train_fraction={train_fraction} must lie in (0, 1) (e.g. 0.5)")
  labelled = np.flatnonzero(labels >= 0)
  if labelled.size < 2:
    raise ValueError(f"random_label_split: needs at least 2 labelled nodes, got {labelled.size} of {labels.shape}")
  perm = np.random.default_rng([seed, 17]).permutation(labelled)
  k = min(max(int(round(train_fraction * labelled.size)), 1), labelled.size - 1)
  train, test = np.zeros(labels.shape, bool), np.zeros(labels.shape, bool)
  train[perm[:k]] = True
  test[perm[k:]] = True
  return train, test


def _fit_predict(emb: np.ndarray, labels: np.ndarray, fit_mask: np.ndarray, num_classes: int, l2: float,
                 num_iters: int) -> np.ndarray:
  """Predicted classes ``[N]`` of a ``linear_probe`` fit on the rows of ``fit_mask``."""
  x = jnp.asarray(emb)
  kernel, bias = linear_probe(x, jnp.asarray(labels, jnp.int32), jnp.asarray(fit_mask, jnp.float32),
                              num_classes=num_classes, l2=l2, num_iters=num_iters)
  return np.asarray(jnp.argmax(x @ kernel + bias, axis=-1))


def select_l2(emb: np.ndarray, labels: np.ndarray, train_mask: np.ndarray, num_classes: int,
              candidates: Sequence[float], num_iters: int, seed: int = 0, val_fraction: float = 0.2) -> float:
  """The penalty of ``candidates`` with the best micro-F1 on a random ``val_fraction`` of the TRAIN nodes when fit
  on the rest (ties: the larger penalty); the test nodes are never looked at."""
  if len(candidates) == 1:
    return float(candidates[0])
  train = np.flatnonzero(train_mask)
  perm = np.random.default_rng([seed, 23]).permutation(train)
  k = max(1, int(round(val_fraction * train.size)))
  val, fit = np.zeros(train_mask.shape, bool), np.zeros(train_mask.shape, bool)
  val[perm[:k]], fit[perm[k:]] = True, True
  scores = [f1_scores(labels[val], _fit_predict(emb, labels, fit, num_classes, l2, num_iters)[val])["micro_f1"]
            for l2 in candidates]
  best = max(scores)
  return float(max(l2 for l2, sc in zip(candidates, scores) if sc == best))


def evaluate_embeddings(embeddings: np.ndarray, *, labels: np.ndarray | None = None,
                        train_mask: np.ndarray | None = None, test_mask: np.ndarray | None = None,
                        num_classes: int | None = None, link_pos: np.ndarray | None = None,
                        link_neg: np.ndarray | None = None, l2: float | Sequence[float] = (1e-5, 1e-4, 1e-3),
                        num_iters: int = 100, normalize: bool = True, seed: int = 0) -> dict[str, float]:
  """Node classification (micro/macro-F1 on ``test_mask`` of a linear probe fit on ``train_mask``) and link
  prediction ROC-AUC (dot products of held-out ``link_pos [P, 2]`` vs ``link_neg [Q, 2]``) of ``embeddings
  [N, D]``, L2-normalised row-wise first when ``normalize`` (LINE §5.1; the dot product is then a cosine).

  Several ``l2`` values: the probe's penalty is chosen by ``select_l2`` on the train nodes only (reported as
  ``probe_l2``), then the probe is refit on all train nodes."""
  emb = l2_normalize(embeddings) if normalize else np.asarray(embeddings, np.float32)
  out: dict[str, float] = {}
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != emb.shape[:1] or np.shape(train_mask) != labels.shape or np.shape(test_mask) != labels.shape:
      raise ValueError(f"evaluate_embeddings: labels, train_mask and test_mask must be [N] = {emb.shape[:1]}, got "
                       f"{labels.shape}, {np.shape(train_mask)}, {np.shape(test_mask)}")
    nc = int(num_classes if num_classes is not None else labels.max() + 1)
    train = np.asarray(train_mask) & (labels >= 0)
    test = np.asarray(test_mask) & (labels >= 0)
    candidates = tuple(float(v) for v in np.atleast_1d(np.asarray(l2, np.float64)))
    if not candidates or min(candidates) < 0:
      raise ValueError(f"evaluate_embeddings: l2={l2!r} must be one or more penalties >= 0 (e.g. 1e-4)")
    chosen = select_l2(emb, labels, train, nc, candidates, num_iters, seed)
    pred = _fit_predict(emb, labels, train, nc, chosen, num_iters)
    out.update(f1_scores(labels[test], pred[test]))
    out["probe_l2"] = chosen
  if link_pos is not None and link_neg is not None and len(link_pos) and len(link_neg):
    out["link_auc"] = roc_auc(link_scores(emb, link_pos), link_scores(emb, link_neg))
  return out


# ------------------------------------------------------------------------------------------------- task


@dataclasses.dataclass(eq=False)
class LineTask(task_lib.Task):
  """LINE of one order on the one loop: batch ``{"source" [B], "target" [B], "negatives" [B, K]}`` int32.

  ``learning_rate`` is the paper's per-edge ``rho_0`` (0.025 in the reference code); ``batch_size`` is the global
  batch; ``evaluator(embeddings [N, D]) -> metrics`` scores the vertex table at eval time (default: mean norm).
  """
  num_nodes: int
  dim: int = 128
  order: str = "first"
  batch_size: int = 1024
  num_steps: int = 1000
  learning_rate: float = 0.025
  evaluator: Evaluator | None = None

  def __post_init__(self):
    if self.order not in ("first", "second"):
      raise ValueError(f"LineTask: order={self.order!r}; choose 'first' or 'second' (1st+2nd concatenates the two "
                       f"trained embeddings, see research.methods.line_experiment)")
    if self.learning_rate <= 0 or self.num_steps <= 0 or self.batch_size <= 0:
      raise ValueError(f"LineTask: learning_rate={self.learning_rate}, num_steps={self.num_steps} and "
                       f"batch_size={self.batch_size} must be positive")
    self.model = LINE(self.num_nodes, self.dim, self.order)

  def schedule(self) -> optax.Schedule:
    """``rho_t = rho_0 B (1 - t/T)``, floored at ``1e-4 rho_0 B`` (the reference code's floor)."""
    peak = self.learning_rate * self.batch_size
    return optax.linear_schedule(peak, peak * 1e-4, self.num_steps)

  def init(self, rng, batch):
    k = batch["negatives"].shape[1]
    z = jnp.zeros((1,), jnp.int32)
    params = self.model.init(rng, z, z, jnp.zeros((1, k), jnp.int32))["params"]
    return params, {}

  def optimizer(self):
    return optax.sgd(self.schedule())

  def loss(self, params, model_state, batch, rng, *, train):
    pos, neg = self.model.apply({"params": params}, batch["source"], batch["target"], batch["negatives"],
                                method=LINE.logits)
    per_edge = -jax.nn.log_sigmoid(pos) - jnp.sum(jax.nn.log_sigmoid(-neg), axis=-1)
    metrics = {"pos_prob": jnp.mean(jax.nn.sigmoid(pos)), "neg_prob": jnp.mean(jax.nn.sigmoid(neg))}
    return jnp.mean(per_edge), (model_state, metrics)

  def extra_metrics(self, state):
    return {"learning_rate": self.schedule()(state.step)}

  def eval_step(self, state, batch):
    emb = self.model.apply({"params": state.params}, method=LINE.embeddings)[batch["node"]]
    return {"nodes": jnp.sum(batch["valid"].astype(jnp.float32))}, {"node": batch["node"], "embedding": emb,
                                                                      "valid": batch["valid"]}

  def eval_metrics(self, sums, gathered):
    emb = embeddings_from_gathered(gathered, self.num_nodes)
    if self.evaluator is None:
      return {"embedding_norm": float(np.linalg.norm(emb, axis=-1).mean())}
    return self.evaluator(emb)

  def run_info(self) -> dict[str, Any]:
    return {"order": self.order, "dim": self.dim, "edge_samples": self.num_steps * self.batch_size,
            "learning_rate_per_edge": self.learning_rate}


def embeddings_from_gathered(gathered: Mapping[str, np.ndarray], num_nodes: int) -> np.ndarray:
  """The ``[num_nodes, D]`` embedding matrix from the eval pass's gathered ``node``/``embedding``/``valid``."""
  valid = np.asarray(gathered["valid"]).astype(bool)
  nodes, emb = np.asarray(gathered["node"])[valid], np.asarray(gathered["embedding"])[valid]
  out = np.zeros((num_nodes, emb.shape[-1]), np.float32)
  out[nodes] = emb
  return out
