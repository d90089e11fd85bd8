"""Graph tasks of the one loop: semi-supervised node classification on one graph (Kipf & Welling 2017, §3-§5;
``NodeClassificationTask``, the full-graph mode) and classification of many small graphs (``GraphClassificationTask``
with ``SmallGraphBatches``, the batched mode: each batch row packs several padded graphs, see the end of the file).

Transductive, full-graph training: every step sees the whole graph, and the loss is the cross-entropy over the
labelled training nodes only (eq. 9). Data parallelism splits the LABELLED NODES, not the graph: the global batch has
one row per device, every row holds the same (padded) graph, and row ``r`` carries the loss mask of the training nodes
``i`` with ``i mod D == r``. ``loss`` returns ``(sum, count)``, so the loop's masked global mean is exactly the
single-device full-batch gradient on any number of devices (tested with 1 and 4 CPU devices). Evaluation counts the
validation and test nodes the same way (each node on one row only).

Batch rows (``FullGraphBatches``), with ``N``/``E`` the padded node/edge counts:
  ``nodes [N, F] float32``, ``senders``/``receivers [E] int32``, ``edge_weight [E] float32``, ``node_mask [N] bool``,
  ``edge_mask [E] bool``, ``labels [N] int32``, ``loss_mask [N] float32`` (this row's training nodes),
  ``split [N] int32`` (eval: 1 = this row's validation nodes, 2 = this row's test nodes, 0 = neither).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.ops import graph as graph_ops
from research.train import task as task_lib

VAL, TEST = 1, 2


def normalize_features(features: np.ndarray) -> np.ndarray:
  """Row-normalised features ``x_i / sum_j x_ij`` (Kipf & Welling's preprocessing of bag-of-words; zero rows stay 0)."""
  x = np.asarray(features, np.float32)
  s = x.sum(axis=1, keepdims=True)
  return np.where(s > 0, x / np.where(s > 0, s, 1.0), 0.0).astype(np.float32)


SPARSE_DENSITY = 0.1  # features with at most this fraction of non-zeros are fed as SparseFeatures


def graph_rows(graph, num_rows: int, *, row_normalize: bool = True, pad_nodes: int | None = None,
               pad_edges: int | None = None, sparse: bool | None = None) -> dict[str, np.ndarray]:
  """``num_rows`` copies of ``graph`` (a ``research.data.graphs.NodeGraph``) with the labelled nodes split over rows.

  Returns the batch dict described in the module docstring, every array with a leading axis ``[num_rows, ...]``.
  ``sparse`` (default: when at most ``SPARSE_DENSITY`` of the features are non-zero, e.g. bag-of-words): the
  features go as ``feat_index``/``feat_value [N, M]`` (``research.ops.graph.SparseFeatures``) and ``nodes`` is
  [N, 0]; the model then uses sparse dropout and a sparse first-layer product.
  """
  if num_rows <= 0:
    raise ValueError(f"num_rows must be positive, got {num_rows}")
  n, e = graph.num_nodes, len(graph.senders)
  pad_nodes = n if pad_nodes is None else pad_nodes
  pad_edges = e if pad_edges is None else pad_edges
  if pad_nodes < n or pad_edges < e:
    raise ValueError(f"padding ({pad_nodes} nodes, {pad_edges} edges) is smaller than the graph {graph.name!r} "
                     f"({n} nodes, {e} directed edges)")
  x = normalize_features(graph.features) if row_normalize else np.asarray(graph.features, np.float32)
  nodes = np.zeros((pad_nodes, x.shape[1]), np.float32)
  nodes[:n] = x
  if sparse is None:
    sparse = x.size > 0 and np.count_nonzero(x) <= SPARSE_DENSITY * x.size
  extra = {}
  if sparse:
    sf = graph_ops.SparseFeatures.from_dense(nodes)
    extra = {"feat_index": sf.index, "feat_value": sf.value}
    nodes = np.zeros((pad_nodes, 0), np.float32)
  senders = np.zeros((pad_edges,), np.int32)
  receivers = np.zeros((pad_edges,), np.int32)
  weight = np.zeros((pad_edges,), np.float32)
  senders[:e], receivers[:e], weight[:e] = graph.senders, graph.receivers, graph.edge_weight
  node_mask = np.arange(pad_nodes) < n
  edge_mask = np.arange(pad_edges) < e
  labels = np.full((pad_nodes,), -1, np.int32)
  labels[:n] = graph.labels
  owner = np.arange(pad_nodes) % num_rows  # which row counts node i
  train = np.zeros((pad_nodes,), bool)
  train[:n] = graph.train_mask
  split = np.zeros((pad_nodes,), np.int32)
  split[:n][graph.val_mask] = VAL
  split[:n][graph.test_mask] = TEST
  rows = []
  for r in range(num_rows):
    mine = owner == r
    rows.append({
        "nodes": nodes, "senders": senders, "receivers": receivers, "edge_weight": weight,
        "node_mask": node_mask, "edge_mask": edge_mask, "labels": labels,
        "loss_mask": (train & mine).astype(np.float32), "split": np.where(mine, split, 0).astype(np.int32),
        **extra})
  return {k: np.stack([row[k] for row in rows]) for k in rows[0]}


class FullGraphBatches:
  """Infinite iterator of this process's rows of the full-graph batch (the same arrays at every step).

  ``get_state``/``set_state`` carry the step, so the loop checkpoints it like any data iterator.
  """

  def __init__(self, graph, *, num_rows: int, row_normalize: bool = True, sparse: bool | None = None):
    if num_rows % jax.process_count():
      raise ValueError(f"num_rows={num_rows} must be divisible by the {jax.process_count()} processes")
    self._rows = graph_rows(graph, num_rows, row_normalize=row_normalize, sparse=sparse)
    local = num_rows // jax.process_count()
    p = jax.process_index()
    self._local = {k: v[p * local:(p + 1) * local] for k, v in self._rows.items()}
    self._step = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    self._step += 1
    return self._local

  def eval_batches(self):
    """One eval pass: the same rows (``split`` marks each row's validation and test nodes)."""
    return [self._local]

  def get_state(self) -> bytes:
    return json.dumps({"step": self._step}).encode()

  def set_state(self, state: bytes) -> None:
    self._step = int(json.loads(state)["step"])


def _graph_of(row: Mapping[str, jax.Array]) -> graph_ops.GraphBatch:
  """The ``GraphBatch`` of one batch row (one graph, every node in graph 0)."""
  n, e = row["nodes"].shape[0], row["senders"].shape[0]
  return graph_ops.GraphBatch(
      nodes=row["nodes"], senders=row["senders"], receivers=row["receivers"], edge_weight=row["edge_weight"],
      node_mask=row["node_mask"], edge_mask=row["edge_mask"], node_graph=jnp.zeros((n,), jnp.int32),
      n_node=jnp.sum(row["node_mask"], dtype=jnp.int32)[None], n_edge=jnp.sum(row["edge_mask"], dtype=jnp.int32)[None],
      graph_mask=jnp.ones((1,), bool))


def _features_of(row: Mapping[str, jax.Array], num_features: int) -> dict[str, Any]:
  """``{'features': SparseFeatures}`` when the row carries sparse features, else ``{}`` (the model reads nodes)."""
  if "feat_index" not in row:
    return {}
  if num_features <= 0:
    raise ValueError("the batch has sparse features (feat_index/feat_value): give NodeClassificationTask "
                     "num_features=<width of the dense feature matrix>")
  return {"features": graph_ops.SparseFeatures(index=row["feat_index"], value=row["feat_value"],
                                               num_features=num_features)}


def first_layer_mask(params) -> Any:
  """True on the kernels of the first graph layer (Kipf & Welling apply L2 weight decay to the first layer only)."""
  names = sorted(params)

  def mark(path, _):
    top = path[0].key if hasattr(path[0], "key") else str(path[0])
    leaf = path[-1].key if hasattr(path[-1], "key") else str(path[-1])
    return top == names[0] and leaf == "kernel"
  return jax.tree_util.tree_map_with_path(mark, params)


@dataclasses.dataclass(eq=False)
class NodeClassificationTask(task_lib.Task):
  """Cross-entropy over the labelled nodes of a full graph (eq. 9); Adam with L2 on the first layer (§5.1).

  ``model(g: GraphBatch, *, train[, features]) -> logits [N, C]`` is any node classifier
  (``research.models.graph``); ``num_features`` is the width F of the feature matrix, needed when the batch carries
  sparse features (``graph_rows(sparse=True)``).
  """
  model: nn.Module
  learning_rate: float = 0.01
  weight_decay: float = 5e-4
  num_features: int = 0

  def init(self, rng, batch):
    row = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), dict(batch))
    variables = self.model.init({"params": rng, "dropout": rng}, _graph_of(row), train=False, **_features_of(row, self.num_features))
    return variables["params"], {}

  def optimizer(self):
    decay = optax.add_decayed_weights(self.weight_decay, mask=first_layer_mask) if self.weight_decay else optax.identity()
    return optax.chain(decay, optax.adam(self.learning_rate))

  def _logits(self, params, row, rng, train):
    rngs = {"dropout": rng} if train else {}
    return self.model.apply({"params": params}, _graph_of(row), train=train, rngs=rngs, **_features_of(row, self.num_features))

  def loss(self, params, model_state, batch, rng, *, train):
    rows = batch["nodes"].shape[0]
    keys = jax.random.split(rng, rows)
    logits = jax.vmap(lambda row, k: self._logits(params, row, k, train))(batch, keys)  # [R, N, C]
    labels = jnp.maximum(batch["labels"], 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    mask = batch["loss_mask"]
    total, count = jnp.sum(ce * mask), jnp.sum(mask)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) * mask)
    return (total, count), (model_state, {"train_accuracy": correct / jnp.maximum(count, 1.0)})

  def eval_step(self, state, batch):
    logits = jax.vmap(lambda row: self._logits(state.params, row, None, False))(batch)
    labels = jnp.maximum(batch["labels"], 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    sums = {}
    for name, code in (("val", VAL), ("test", TEST)):
      m = (batch["split"] == code).astype(jnp.float32)
      sums[f"{name}_correct"] = jnp.sum(hit * m)
      sums[f"{name}_loss"] = jnp.sum(ce * m)
      sums[f"{name}_count"] = jnp.sum(m)
    return sums, {}

  def eval_metrics(self, sums, gathered):
    out = {}
    for name in ("val", "test"):
      n = float(sums[f"{name}_count"])
      if n:
        out[f"{name}_accuracy"] = float(sums[f"{name}_correct"]) / n
        out[f"{name}_loss"] = float(sums[f"{name}_loss"]) / n
    return out


# ------------------------------------------------------------------------------------------------------------------
# Batched mode: many small graphs per row, one label per graph


def _row_of_graphs(graphs, labels, *, graphs_per_row: int, pad_nodes: int, pad_edges: int,
                   num_features: int) -> dict[str, np.ndarray]:
  """One batch row: ``batch_graphs`` of up to ``graphs_per_row`` graphs (``(nodes, senders, receivers)``) + labels."""
  empty = len(graphs) == 0  # the last eval batch can leave rows without graphs: one masked-out placeholder
  if empty:
    graphs = [(np.zeros((1, num_features), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32))]
  g = graph_ops.batch_graphs(graphs, pad_nodes=pad_nodes, pad_edges=pad_edges, pad_graphs=graphs_per_row)
  if empty:
    g = g.replace(graph_mask=np.zeros_like(g.graph_mask), node_mask=np.zeros_like(g.node_mask),
                  n_node=np.zeros_like(g.n_node))
  y = np.zeros((graphs_per_row,), np.int32)
  y[:len(labels)] = labels
  return {"nodes": np.asarray(g.nodes, np.float32), "senders": g.senders, "receivers": g.receivers,
          "edge_weight": np.asarray(g.edge_weight, np.float32), "node_mask": g.node_mask, "edge_mask": g.edge_mask,
          "node_graph": g.node_graph, "n_node": g.n_node, "n_edge": g.n_edge, "graph_mask": g.graph_mask,
          "graph_label": y}


class SmallGraphBatches:
  """Seeded batches of small graphs for graph classification: at step ``t`` row ``r`` packs ``graphs_per_row``
  graphs drawn with ``np.random.default_rng([seed, t])`` (with replacement), padded to ``pad_nodes``/``pad_edges``
  (static, so the step compiles once). This process gets its rows of the global batch; ``get_state``/``set_state``
  make resumption exact. ``eval_batches()`` is one ordered pass over all graphs (padding graphs masked out).

  graphs: list of ``(nodes [n_i, F], senders [e_i], receivers [e_i])``; labels: [num_graphs] int.
  """

  def __init__(self, graphs, labels, *, graphs_per_row: int, num_rows: int, seed: int,
               pad_nodes: int | None = None, pad_edges: int | None = None):
    if len(graphs) != len(labels) or not graphs:
      raise ValueError(f"graphs ({len(graphs)}) and labels ({len(labels)}) must be non-empty and of equal length")
    if num_rows % jax.process_count():
      raise ValueError(f"num_rows={num_rows} must be divisible by the {jax.process_count()} processes")
    self.graphs, self.labels = list(graphs), np.asarray(labels, np.int32)
    largest_n = sorted(np.shape(g[0])[0] for g in graphs)[-graphs_per_row:]
    largest_e = sorted(np.shape(g[1])[0] for g in graphs)[-graphs_per_row:]
    self.pad_nodes = int(sum(largest_n)) + 1 if pad_nodes is None else pad_nodes
    self.pad_edges = int(sum(largest_e)) if pad_edges is None else pad_edges
    self.graphs_per_row, self.num_rows, self.seed, self._step = graphs_per_row, num_rows, seed, 0

  def _rows(self, index_rows) -> dict[str, np.ndarray]:
    rows = [_row_of_graphs([self.graphs[i] for i in idx], self.labels[idx], graphs_per_row=self.graphs_per_row,
                           pad_nodes=self.pad_nodes, pad_edges=self.pad_edges,
                           num_features=np.shape(self.graphs[0][0])[1]) for idx in index_rows]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    local = self.num_rows // jax.process_count()
    p = jax.process_index()
    return {k: v[p * local:(p + 1) * local] for k, v in batch.items()}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self._step])
    idx = rng.integers(0, len(self.graphs), (self.num_rows, self.graphs_per_row))
    self._step += 1
    return self._rows(idx)

  def eval_batches(self):
    order = np.arange(len(self.graphs))
    per_batch = self.num_rows * self.graphs_per_row
    for start in range(0, len(order), per_batch):
      chunk = order[start:start + per_batch]
      yield self._rows([chunk[r * self.graphs_per_row:(r + 1) * self.graphs_per_row] for r in range(self.num_rows)])

  def get_state(self) -> bytes:
    return json.dumps({"step": self._step, "seed": self.seed}).encode()

  def set_state(self, state: bytes) -> None:
    s = json.loads(state)
    if s.get("seed") != self.seed:
      raise ValueError(f"data state {s} was saved with seed {s.get('seed')}, this run has seed {self.seed}")
    self._step = int(s["step"])


def _graphs_of(row: Mapping[str, jax.Array]) -> graph_ops.GraphBatch:
  return graph_ops.GraphBatch(**{k: row[k] for k in ("nodes", "senders", "receivers", "edge_weight", "node_mask",
                                                      "edge_mask", "node_graph", "n_node", "n_edge", "graph_mask")})


@dataclasses.dataclass(eq=False)
class GraphClassificationTask(task_lib.Task):
  """Cross-entropy over the real graphs of each row (``graph_mask``); Adam. ``model(g, *, train) -> [G, C]``."""
  model: nn.Module
  learning_rate: float = 0.01

  def init(self, rng, batch):
    row = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), dict(batch))
    return self.model.init({"params": rng, "dropout": rng}, _graphs_of(row), train=False)["params"], {}

  def optimizer(self):
    return optax.adam(self.learning_rate)

  def _logits(self, params, batch, rng, train):
    keys = jax.random.split(rng, batch["nodes"].shape[0]) if train else None

    def one(row, key):
      rngs = {"dropout": key} if train else {}
      return self.model.apply({"params": params}, _graphs_of(row), train=train, rngs=rngs)
    return jax.vmap(one)(batch, keys) if train else jax.vmap(lambda row: one(row, None))(batch)

  def loss(self, params, model_state, batch, rng, *, train):
    logits = self._logits(params, batch, rng, train)  # [R, G, C]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["graph_label"])
    mask = batch["graph_mask"].astype(jnp.float32)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["graph_label"]) * mask)
    count = jnp.sum(mask)
    return (jnp.sum(ce * mask), count), (model_state, {"train_accuracy": correct / jnp.maximum(count, 1.0)})

  def eval_step(self, state, batch):
    logits = self._logits(state.params, batch, None, False)
    mask = batch["graph_mask"].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["graph_label"])
    return {"correct": jnp.sum((jnp.argmax(logits, -1) == batch["graph_label"]) * mask),
            "loss": jnp.sum(ce * mask), "count": jnp.sum(mask)}, {}

  def eval_metrics(self, sums, gathered):
    n = max(float(sums["count"]), 1.0)
    return {"accuracy": float(sums["correct"]) / n, "loss": float(sums["loss"]) / n, "count": float(sums["count"])}
