"""Transductive node-classification graphs as numpy arrays (:class:`NodeGraph`), and an edge split for link prediction.

Protocol of Kipf & Welling (ICLR 2017, Sec. 5.1) / Yang et al. (Planetoid, ICML 2016): one graph, features of every
node visible, labels of ``labels_per_class`` training nodes per class, ``num_val`` validation and ``num_test`` test
nodes. ``load_node_graph(spec)`` with ``spec``:

* ``"citation_sbm"`` = ``"citation_sbm/cora_like"`` (default), ``"citation_sbm/small"``: the offline Cora-like
  degree-corrected SBM graph with bag-of-words features (``research.data.citation_sbm``, generative process in its
  docstring), a real TFDS builder generated into ``data_dir`` on first use (default
  ``research.data.default_data_dir()``) and read back with ``tfds.data_source`` (no TensorFlow).
* ``"karate"``: Zachary's karate club (networkx), labels = the ``club`` attribute (0 = "Mr. Hi", 1 = "Officer"),
  unweighted (networkx's interaction counts are ignored).
* ``"les_miserables"``: co-occurrence graph, ``edge_weight`` = networkx's ``weight``; ``"florentine"``: Florentine
  families (unweighted). networkx ships no labels for these two: labels = ``networkx.community.louvain_communities(G,
  seed=0)`` (weighted for les_miserables), numbered by their smallest node index ("derived"; another networkx
  version may give other communities).
  The networkx graphs have identity (one-hot) features ``[N, N]``; nodes are numbered in ``G.nodes`` order.
* ``"npz:PATH"``: a user's graph in the format of :func:`save_npz` / :func:`load_npz` (below).

**Node split rule** (:func:`planetoid_split`, deterministic in ``seed``): the labelled nodes (``label >= 0``) are
permuted by ``np.random.default_rng(seed)``; each class takes its first ``k`` nodes in that order for training, with
``k = min(labels_per_class, max(1, n_min // 4))`` and ``n_min`` the size of the smallest (non-empty) class, so at
least three quarters of every class remain for validation/test (karate: 4 per class, florentine: 1 per class;
citation_sbm: the requested 20). The remaining ``R`` labelled nodes, in the same order, give ``num_val`` validation
then ``num_test`` test nodes; when ``num_val + num_test > R`` both are scaled down to fit:
``val = max(1, floor(R num_val / (num_val + num_test)))`` (0 if ``num_val == 0``) and ``test = R - val``.

**Edges** (every NodeGraph): each undirected edge in both directions, no self loops, no duplicates, sorted by
``(receiver, sender)`` (so ``segment_sum(..., receivers)`` sees sorted segment ids); ``edge_weight`` 1.0 unless the
source is weighted. :func:`from_undirected_edges` builds this from any edge list.

**npz format** (``np.load(path, allow_pickle=False)``): ``adj_data`` [nnz] (positive, finite), ``adj_indices``
[nnz] int, ``adj_indptr`` [N+1] int, ``adj_shape`` [2] = (N, N): the CSR arrays of ``scipy.sparse.csr_matrix``
(``A.data``, ``A.indices``, ``A.indptr``, ``A.shape``); ``features`` [N, F] float (dense); ``labels`` [N] int (-1 =
unlabelled); ``train_mask``/``val_mask``/``test_mask`` [N] bool, pairwise disjoint, only labelled nodes (all three, or
none: then :func:`planetoid_split` draws them). Optional: ``name``, ``label_source`` (str), ``num_classes`` (int).
The adjacency must be SYMMETRIC with equal weights both ways (an error, not a silent fix: a directed citation list
is a modelling choice; the fix is ``A = A.maximum(A.T)`` before saving); diagonal entries (self loops) are dropped
with a warning (GCN-style models add their own); explicit zeros and duplicate entries are errors
(``A.eliminate_zeros()``, ``A.sum_duplicates()``).

**Link prediction** (:func:`split_edges`, the protocol of Kipf & Welling's graph auto-encoder, 2016, Sec. 3): a
seeded fraction of the undirected edges is held out as validation/test positives, the same number of negatives is
drawn uniformly from the node pairs that are not edges of the full graph; the train graph keeps all nodes.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from typing import Any

import numpy as np

from research import fileio
from research.data import citation_sbm

CITATION_SBM = "citation_sbm"
NETWORKX_GRAPHS = ("karate", "les_miserables", "florentine")
_NPZ_REQUIRED = ("adj_data", "adj_indices", "adj_indptr", "adj_shape", "features", "labels")
_MASKS = ("train_mask", "val_mask", "test_mask")


@dataclasses.dataclass(frozen=True, eq=False)
class NodeGraph:
  """One transductive graph (numpy arrays); see the module docstring for the edge convention.

  features: [N, F] float32; senders, receivers: [E] int32 (both directions, sorted by (receiver, sender));
  edge_weight: [E] float32; labels: [N] int32 (-1 = no label); train_mask, val_mask, test_mask: [N] bool.
  """
  name: str
  features: np.ndarray
  senders: np.ndarray
  receivers: np.ndarray
  edge_weight: np.ndarray
  labels: np.ndarray
  train_mask: np.ndarray
  val_mask: np.ndarray
  test_mask: np.ndarray
  num_classes: int
  label_source: str

  def __post_init__(self):
    _check_node_graph(self)

  @property
  def num_nodes(self) -> int:
    return int(self.labels.shape[0])

  @property
  def num_edges(self) -> int:
    """Directed edges E (each undirected edge counted twice)."""
    return int(self.senders.shape[0])

  @property
  def num_undirected_edges(self) -> int:
    return int(self.senders.shape[0]) // 2

  @property
  def num_features(self) -> int:
    return int(self.features.shape[1])


def _check_node_graph(g: NodeGraph) -> None:
  """Raises ONE ValueError naming the field if ``g`` breaks the NodeGraph conventions."""
  n = g.labels.shape[0] if g.labels.ndim == 1 else -1
  expect = {
      "features": (2, np.float32), "senders": (1, np.int32), "receivers": (1, np.int32),
      "edge_weight": (1, np.float32), "labels": (1, np.int32), "train_mask": (1, np.bool_),
      "val_mask": (1, np.bool_), "test_mask": (1, np.bool_),
  }
  for field, (ndim, dtype) in expect.items():
    a = getattr(g, field)
    if not isinstance(a, np.ndarray) or a.ndim != ndim or a.dtype != dtype:
      got = f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}"
      raise ValueError(f"NodeGraph.{field} must be a {ndim}-D numpy {np.dtype(dtype).name} array, got {got}; "
                       f"build graphs with research.data.graphs.from_undirected_edges.")
  for field in ("features", "train_mask", "val_mask", "test_mask"):
    if getattr(g, field).shape[0] != n:
      raise ValueError(f"NodeGraph.{field} has shape {getattr(g, field).shape}, expected first axis N={n} "
                       f"(the length of labels).")
  e = g.senders.shape[0]
  if g.receivers.shape != (e,) or g.edge_weight.shape != (e,):
    raise ValueError(f"NodeGraph senders/receivers/edge_weight have shapes {g.senders.shape}, {g.receivers.shape}, "
                     f"{g.edge_weight.shape}; all must be [E].")
  if e and (min(g.senders.min(), g.receivers.min()) < 0 or max(g.senders.max(), g.receivers.max()) >= n):
    raise ValueError(f"NodeGraph senders/receivers must be node ids in [0, {n}); use from_undirected_edges.")
  key = g.receivers.astype(np.int64) * max(n, 1) + g.senders
  if e and (np.any(np.diff(key) <= 0) or np.any(g.senders == g.receivers)):
    raise ValueError("NodeGraph edges must be sorted by (receiver, sender) without duplicates or self loops; "
                     "build graphs with research.data.graphs.from_undirected_edges.")
  rev = np.argsort(g.senders.astype(np.int64) * max(n, 1) + g.receivers, kind="stable")
  if not (np.array_equal(g.senders[rev], g.receivers) and np.array_equal(g.receivers[rev], g.senders)
          and np.array_equal(g.edge_weight[rev], g.edge_weight)):
    raise ValueError("NodeGraph edges must hold every undirected edge in both directions with equal edge_weight; "
                     "build graphs with research.data.graphs.from_undirected_edges.")
  if not np.all(np.isfinite(g.features)) or not np.all(np.isfinite(g.edge_weight)):
    raise ValueError("NodeGraph.features and edge_weight must be finite.")
  if not isinstance(g.num_classes, (int, np.integer)) or g.num_classes < 1:
    raise ValueError(f"NodeGraph.num_classes={g.num_classes!r} must be a positive int.")
  if n and (g.labels.min() < -1 or g.labels.max() >= g.num_classes):
    raise ValueError(f"NodeGraph.labels must lie in [-1, num_classes={g.num_classes}); got [{g.labels.min()}, "
                     f"{g.labels.max()}].")
  masks = np.stack([g.train_mask, g.val_mask, g.test_mask]).astype(np.int32)
  if np.any(masks.sum(0) > 1):
    raise ValueError("NodeGraph train_mask/val_mask/test_mask must be disjoint.")
  if np.any(masks.any(0) & (g.labels < 0)):
    raise ValueError("NodeGraph masks select unlabelled nodes (label -1); only labelled nodes can be split.")


def from_undirected_edges(name: str, features: np.ndarray, edges: np.ndarray, labels: np.ndarray, *,
                          num_classes: int, label_source: str, edge_weight: np.ndarray | None = None,
                          masks: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, seed: int = 0,
                          labels_per_class: int = 20, num_val: int = 500, num_test: int = 1000) -> NodeGraph:
  """A NodeGraph from undirected ``edges`` [M, 2] (any order, each pair once, no self loops).

  ``features`` [N, F]; ``labels`` [N]; ``edge_weight`` [M] (None: 1.0); ``masks`` = (train, val, test) [N] bool, or
  None to draw them with :func:`planetoid_split` (``seed``, ``labels_per_class``, ``num_val``, ``num_test``).
  """
  edges = np.asarray(edges, np.int64).reshape(-1, 2)
  labels = np.asarray(labels, np.int32)
  w = np.ones(edges.shape[0], np.float32) if edge_weight is None else np.asarray(edge_weight, np.float32)
  if w.shape != (edges.shape[0],):
    raise ValueError(f"edge_weight has shape {w.shape}, expected [M]=({edges.shape[0]},), one per row of edges.")
  u, v = np.concatenate([edges[:, 0], edges[:, 1]]), np.concatenate([edges[:, 1], edges[:, 0]])
  w = np.concatenate([w, w])
  order = np.lexsort((u, v))  # by receiver v, then sender u
  if masks is None:
    masks = planetoid_split(labels, num_classes, seed=seed, labels_per_class=labels_per_class, num_val=num_val,
                            num_test=num_test)
  return NodeGraph(name=name, features=np.asarray(features, np.float32), senders=u[order].astype(np.int32),
                   receivers=v[order].astype(np.int32), edge_weight=w[order], labels=labels,
                   train_mask=np.asarray(masks[0], bool), val_mask=np.asarray(masks[1], bool),
                   test_mask=np.asarray(masks[2], bool), num_classes=int(num_classes), label_source=label_source)


def planetoid_split(labels: np.ndarray, num_classes: int, *, seed: int = 0, labels_per_class: int = 20,
                    num_val: int = 500, num_test: int = 1000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(train, val, test) [N] bool masks by the rule of the module docstring (Kipf & Welling 2017, Sec. 5.1).

  labels: [N] int (-1 = unlabelled, never selected).
  """
  labels = np.asarray(labels)
  for arg, value, low in (("labels_per_class", labels_per_class, 1), ("num_val", num_val, 0),
                          ("num_test", num_test, 0)):
    if int(value) != value or value < low:
      raise ValueError(f"{arg}={value!r}: use an integer >= {low}.")
  n = labels.shape[0]
  labelled = np.flatnonzero(labels >= 0)
  counts = np.bincount(labels[labelled], minlength=num_classes)
  if labelled.size == 0:
    raise ValueError(f"labels [N={n}] has no labelled node (all -1): label some nodes or pass your own masks.")
  k = min(labels_per_class, max(1, int(counts[counts > 0].min()) // 4))
  perm = np.random.default_rng(seed).permutation(labelled)
  rank = np.zeros(n, np.int64)  # position of each node among the permuted nodes of its class
  for c in range(num_classes):
    members = perm[labels[perm] == c]
    rank[members] = np.arange(members.size)
  train = np.zeros(n, bool)
  train[perm[rank[perm] < k]] = True
  rest = perm[~train[perm]]
  r = rest.size
  if num_val + num_test > r:
    num_val = 0 if num_val == 0 else max(1, (r * num_val) // (num_val + num_test))
    num_test = r - num_val
  val, test = np.zeros(n, bool), np.zeros(n, bool)
  val[rest[:num_val]] = True
  test[rest[num_val:num_val + num_test]] = True
  return train, val, test


def edge_homophily(graph: NodeGraph) -> float:
  """Fraction of edges joining two nodes of the same class (edges with an unlabelled end are ignored)."""
  ys, yr = graph.labels[graph.senders], graph.labels[graph.receivers]
  known = (ys >= 0) & (yr >= 0)
  return float(np.mean(ys[known] == yr[known])) if known.any() else float("nan")


def node_graph_names() -> list[str]:
  """Every built-in ``spec`` of :func:`load_node_graph` (plus ``"npz:PATH"`` for a user's file)."""
  configs = [c.name for c in citation_sbm.CitationSBM.BUILDER_CONFIGS]
  return [CITATION_SBM] + [f"{CITATION_SBM}/{c}" for c in configs] + list(NETWORKX_GRAPHS)


def load_node_graph(spec: str = CITATION_SBM, *, data_dir: str | None = None, seed: int = 0,
                    labels_per_class: int = 20, num_val: int = 500, num_test: int = 1000) -> NodeGraph:
  """The graph named by ``spec`` (module docstring) with the node split drawn by :func:`planetoid_split`.

  ``data_dir``: TFDS directory of ``citation_sbm`` (None: ``research.data.default_data_dir()``). An npz file that
  stores its own masks keeps them (``seed`` etc. are then unused).
  """
  split = dict(seed=seed, labels_per_class=labels_per_class, num_val=num_val, num_test=num_test)
  if not isinstance(spec, str):
    raise ValueError(f"spec={spec!r} must be a string: one of {node_graph_names()} or 'npz:PATH'.")
  if spec.startswith("npz:"):
    return load_npz(spec[len("npz:"):], **split)
  if spec == CITATION_SBM or spec.startswith(CITATION_SBM + "/"):
    config = spec.split("/", 1)[1] if "/" in spec else citation_sbm.CitationSBM.DEFAULT_CONFIG_NAME
    return _load_citation_sbm(config, data_dir, **split)
  if spec in NETWORKX_GRAPHS:
    return _load_networkx(spec, **split)
  raise ValueError(f"spec={spec!r} is not a known graph: use one of {node_graph_names()} or 'npz:PATH' "
                   f"(a file written by research.data.graphs.save_npz).")


# ----------------------------------------------------------------------------------------------- citation_sbm


def _citation_builder(config: str, data_dir: str | None):
  """The TFDS builder, generated on first use (``research.data.pipeline.build_on_first_use``: with several JAX
  processes, process 0 builds while the others wait at a barrier; ``data_dir`` must be shared)."""
  from research.data import pipeline
  names = [c.name for c in citation_sbm.CitationSBM.BUILDER_CONFIGS]
  if config not in names:
    raise ValueError(f"spec='{CITATION_SBM}/{config}': unknown config {config!r}; use one of "
                     f"{[f'{CITATION_SBM}/{c}' for c in names]}.")
  data_dir = data_dir or pipeline.default_data_dir()
  return pipeline.build_on_first_use(lambda: citation_sbm.CitationSBM(config=config, data_dir=data_dir),
                                     f"{CITATION_SBM}/{config}", data_dir)


def record_to_node_graph(record: dict[str, Any], name: str, **split) -> NodeGraph:
  """A decoded ``citation_sbm`` record (module ``research.data.citation_sbm``) as a NodeGraph; validates it."""
  try:
    n, f, k = int(record["num_nodes"]), int(record["num_words"]), int(record["num_classes"])
    labels = np.asarray(record["labels"], np.int64)
    s, r = np.asarray(record["senders"], np.int64), np.asarray(record["receivers"], np.int64)
    wn, wi = np.asarray(record["word_nodes"], np.int64), np.asarray(record["word_ids"], np.int64)
  except (KeyError, TypeError) as e:
    raise ValueError(f"{name}: the record lacks or mistypes a feature ({e}); delete the dataset directory to "
                     f"regenerate it.") from None
  problems = [  # checked in order, each only once the previous ones hold
      (lambda: n < 1 or f < 1 or k < 1, "num_nodes/num_words/num_classes must be positive"),
      (lambda: labels.shape != (n,) or labels.min() < 0 or labels.max() >= k, "labels must be [N] in [0, K)"),
      (lambda: s.shape != r.shape or s.ndim != 1, "senders/receivers must have one shape [M]"),
      (lambda: s.size and (s.min() < 0 or r.max() >= n or np.any(s >= r)),
       "edges must satisfy 0 <= sender < receiver < N"),
      (lambda: s.size != np.unique(s * n + r).size, "edges must be distinct"),
      (lambda: wn.shape != wi.shape or (wn.size and (wn.min() < 0 or wn.max() >= n or wi.min() < 0 or wi.max() >= f)),
       "word_nodes/word_ids must be [W] entries of an [N, F] matrix"),
  ]
  for bad, what in problems:
    if bad():
      raise ValueError(f"{name}: invalid record ({what}; N={n}, F={f}, K={k}, {s.size} edges); delete the dataset "
                       f"directory to regenerate it.")
  features = np.zeros((n, f), np.float32)
  features[wn, wi] = 1.0
  return from_undirected_edges(name, features, np.stack([s, r], axis=1), labels, num_classes=k,
                               label_source="generated (SBM block)", **split)


def _load_citation_sbm(config: str, data_dir: str | None, **split) -> NodeGraph:
  builder = _citation_builder(config, data_dir)
  source = builder.as_data_source(split="train")
  if len(source) < 1:
    raise ValueError(f"{CITATION_SBM}/{config} in {builder.data_dir} holds no graph; delete it to regenerate.")
  return record_to_node_graph(source[0], f"{CITATION_SBM}/{config}", **split)


# --------------------------------------------------------------------------------------------------- networkx


def _load_networkx(spec: str, **split) -> NodeGraph:
  import networkx as nx
  g = {"karate": nx.karate_club_graph, "les_miserables": nx.les_miserables_graph,
       "florentine": nx.florentine_families_graph}[spec]()
  index = {node: i for i, node in enumerate(g.nodes)}
  n = len(index)
  edges = np.array([(index[a], index[b]) for a, b in g.edges], np.int64).reshape(-1, 2)
  weight = None
  if spec == "les_miserables":
    weight = np.array([g.edges[a, b]["weight"] for a, b in g.edges], np.float32)
  if spec == "karate":
    clubs = sorted({g.nodes[v]["club"] for v in g.nodes}, key=lambda c: c != "Mr. Hi")  # Mr. Hi = 0
    labels = np.array([clubs.index(g.nodes[v]["club"]) for v in g.nodes], np.int32)
    source = "ground truth (club)"
  else:
    communities = nx.community.louvain_communities(g, weight="weight" if weight is not None else None, seed=0)
    communities = sorted((sorted(index[v] for v in c) for c in communities), key=lambda c: c[0])
    labels = np.zeros(n, np.int32)
    for c, members in enumerate(communities):
      labels[members] = c
    source = "derived: louvain communities seed 0" + (" (weighted)" if weight is not None else "")
  return from_undirected_edges(spec, np.eye(n, dtype=np.float32), edges, labels, edge_weight=weight,
                               num_classes=int(labels.max()) + 1, label_source=source, **split)


# -------------------------------------------------------------------------------------------------------- npz


def save_npz(graph: NodeGraph, path: str | os.PathLike) -> None:
  """Writes ``graph`` to ``path`` (exactly that name, atomically) in the npz format of the module docstring."""
  n = graph.num_nodes
  # Edges sorted by (receiver, sender) are the CSR rows of A^T = A (symmetric): row = receiver, column = sender.
  indptr = np.concatenate([[0], np.cumsum(np.bincount(graph.receivers, minlength=n))]).astype(np.int64)
  buf = io.BytesIO()
  np.savez_compressed(
      buf, adj_data=graph.edge_weight, adj_indices=graph.senders, adj_indptr=indptr,
      adj_shape=np.array([n, n], np.int64), features=graph.features, labels=graph.labels,
      train_mask=graph.train_mask, val_mask=graph.val_mask, test_mask=graph.test_mask, name=np.str_(graph.name),
      label_source=np.str_(graph.label_source), num_classes=np.int64(graph.num_classes))
  fileio.write_atomic(path, buf.getvalue())


def _bad(key: str, what: str, fix: str) -> ValueError:
  return ValueError(f"npz key {key!r}: {what}; {fix}")


def load_npz(path: str | os.PathLike, *, seed: int = 0, labels_per_class: int = 20, num_val: int = 500,
             num_test: int = 1000) -> NodeGraph:
  """Reads and validates a graph in the npz format of the module docstring (``allow_pickle=False``).

  Masks absent: drawn by :func:`planetoid_split` with ``seed``, ``labels_per_class``, ``num_val``, ``num_test``.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"npz graph file {path!r} does not exist; write one with research.data.graphs.save_npz.")
  with np.load(path, allow_pickle=False) as z:
    arrays = {key: z[key] for key in z.files}
  for key in _NPZ_REQUIRED:
    if key not in arrays:
      raise _bad(key, f"missing from {path} (it has {sorted(arrays)})",
                 "store the CSR arrays of scipy.sparse.csr_matrix A as adj_data=A.data, adj_indices=A.indices, "
                 "adj_indptr=A.indptr, adj_shape=A.shape, plus features [N, F] and labels [N].")
  shape = arrays["adj_shape"]
  if shape.shape != (2,) or shape.dtype.kind not in "iu" or shape[0] != shape[1] or shape[0] < 1:
    raise _bad("adj_shape", f"is {shape!r}", "store A.shape of a square [N, N] adjacency as an int array [2].")
  n = int(shape[0])
  data, indices, indptr = arrays["adj_data"], arrays["adj_indices"], arrays["adj_indptr"]
  if indptr.shape != (n + 1,) or indptr.dtype.kind not in "iu" or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
    raise _bad("adj_indptr", f"has shape {indptr.shape} dtype {indptr.dtype}",
               f"store A.indptr: int [N+1]=[{n + 1}], starting at 0, non-decreasing.")
  nnz = int(indptr[-1])
  if indices.shape != (nnz,) or indices.dtype.kind not in "iu" or (nnz and (indices.min() < 0 or indices.max() >= n)):
    raise _bad("adj_indices", f"has shape {indices.shape} dtype {indices.dtype}",
               f"store A.indices: int [nnz]=[{nnz}] (nnz = adj_indptr[-1]) with column ids in [0, {n}).")
  if data.shape != (nnz,) or data.dtype.kind not in "biuf" or not np.all(np.isfinite(data)):
    raise _bad("adj_data", f"has shape {data.shape} dtype {data.dtype}", f"store A.data: finite numbers [{nnz}].")
  if np.any(data <= 0):
    raise _bad("adj_data", f"has {int(np.sum(data <= 0))} entries <= 0",
               "edge weights must be positive; drop explicit zeros with A.eliminate_zeros().")
  rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
  cols = indices.astype(np.int64)
  keys = rows * n + cols
  if np.unique(keys).size != nnz:
    raise _bad("adj_indices", "has duplicate (row, column) entries", "call A.sum_duplicates() before saving.")
  loops = rows == cols
  if loops.any():
    warnings.warn(f"{path}: dropping {int(loops.sum())} self loops (diagonal entries of the adjacency).", stacklevel=2)
    rows, cols, data, keys = rows[~loops], cols[~loops], data[~loops], keys[~loops]
  order = np.argsort(keys)
  rev = np.searchsorted(keys[order], cols * n + rows)
  found = (rev < keys.size) & (keys[order][np.minimum(rev, keys.size - 1)] == cols * n + rows)
  if not found.all() or not np.array_equal(data[order][np.minimum(rev, keys.size - 1)], data):
    raise _bad("adj_data", f"the adjacency is not symmetric ({int((~found).sum())} entries lack their transpose or "
               "differ in weight)", "symmetrise before saving, e.g. A = A.maximum(A.T).")
  features = arrays["features"]
  if features.ndim != 2 or features.shape[0] != n or features.dtype.kind not in "biuf":
    raise _bad("features", f"has shape {features.shape} dtype {features.dtype}",
               f"store dense numeric features [N, F] with N={n} rows (x.toarray() if sparse).")
  if not np.all(np.isfinite(features)):
    raise _bad("features", "has non-finite values", "replace NaN/inf before saving.")
  labels = arrays["labels"]
  if labels.shape != (n,) or labels.dtype.kind not in "iu" or (n and labels.min() < -1):
    raise _bad("labels", f"has shape {labels.shape} dtype {labels.dtype}",
               f"store int labels [N]=[{n}] in [0, num_classes), -1 for unlabelled nodes.")
  num_classes = int(labels.max()) + 1 if labels.max() >= 0 else 1
  if "num_classes" in arrays:
    stored = arrays["num_classes"]
    if stored.shape != () or stored.dtype.kind not in "iu" or int(stored) < num_classes:
      raise _bad("num_classes", f"is {stored!r} but labels reach {num_classes - 1}",
                 "store an int >= max(labels) + 1, or omit it.")
    num_classes = int(stored)
  present = [key for key in _MASKS if key in arrays]
  masks = None
  if present:
    if len(present) != 3:
      missing = sorted(set(_MASKS) - set(present))
      raise _bad(missing[0], "is missing while other masks are present",
                 "store all of train_mask, val_mask, test_mask, or none of them (then they are drawn).")
    for key in _MASKS:
      if arrays[key].shape != (n,) or arrays[key].dtype != np.bool_:
        raise _bad(key, f"has shape {arrays[key].shape} dtype {arrays[key].dtype}",
                   f"store a boolean mask [N]=[{n}] (mask.astype(bool)).")
    masks = tuple(arrays[key] for key in _MASKS)
    overlap = (masks[0] & masks[1]) | (masks[0] & masks[2]) | (masks[1] & masks[2])
    if overlap.any():
      raise _bad("val_mask", f"train/val/test masks overlap on {int(overlap.sum())} nodes",
                 "make the three masks disjoint.")
    for key, m in zip(_MASKS, masks):
      if np.any(m & (labels < 0)):
        raise _bad(key, f"selects {int(np.sum(m & (labels < 0)))} unlabelled nodes (label -1)",
                   "select labelled nodes only.")
  name = str(arrays["name"]) if "name" in arrays else os.path.splitext(os.path.basename(path))[0]
  source = str(arrays["label_source"]) if "label_source" in arrays else f"file ({os.path.basename(path)})"
  upper = rows < cols
  return from_undirected_edges(name, features.astype(np.float32), np.stack([rows[upper], cols[upper]], 1), labels,
                               edge_weight=data[upper].astype(np.float32), masks=masks, num_classes=num_classes,
                               label_source=source, seed=seed, labels_per_class=labels_per_class, num_val=num_val,
                               num_test=num_test)


# ------------------------------------------------------------------------------------------- link prediction


def split_edges(graph: NodeGraph, *, val_fraction: float = 0.05, test_fraction: float = 0.1,
                seed: int = 0) -> tuple[NodeGraph, dict[str, np.ndarray]]:
  """Held-out edges for link prediction (Kipf & Welling 2016, graph auto-encoders, Sec. 3).

  The M undirected edges are permuted by ``np.random.default_rng(seed)``; the first ``floor(test_fraction M)`` are
  test positives, the next ``floor(val_fraction M)`` validation positives, the rest stay in the train graph (same
  nodes, features, labels and masks; nodes may become isolated). Negatives: as many pairs per split, drawn
  uniformly from the unordered node pairs ``u != v`` that are NOT edges of the full graph, distinct across both
  splits. Returns ``(train_graph, {"val_pos", "val_neg", "test_pos", "test_neg"})``, each [m, 2] int32 with
  ``u < v``.
  """
  for arg, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
    if not 0.0 <= value < 1.0:
      raise ValueError(f"{arg}={value!r}: use a fraction in [0, 1).")
  if val_fraction + test_fraction >= 1.0:
    raise ValueError(f"val_fraction + test_fraction = {val_fraction + test_fraction} must be < 1 so that training "
                     f"edges remain; lower them.")
  n = graph.num_nodes
  upper = graph.senders < graph.receivers
  u, v = graph.senders[upper].astype(np.int64), graph.receivers[upper].astype(np.int64)
  w = graph.edge_weight[upper]
  m = u.size
  n_test, n_val = int(np.floor(test_fraction * m)), int(np.floor(val_fraction * m))
  rng = np.random.default_rng(seed)
  perm = rng.permutation(m)
  test_idx, val_idx, train_idx = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
  num_neg = n_test + n_val
  non_edges = n * (n - 1) // 2 - m
  if num_neg > non_edges:
    raise ValueError(f"split_edges: {num_neg} negatives needed but the graph ({n} nodes, {m} edges) has only "
                     f"{non_edges} non-edges; lower val_fraction/test_fraction.")
  edge_keys = np.sort(u * n + v)
  neg = np.empty(0, np.int64)
  while neg.size < num_neg:
    a, b = rng.integers(0, n, size=(2, max(64, 2 * (num_neg - neg.size))))
    keep = a != b
    key = np.minimum(a, b)[keep] * n + np.maximum(a, b)[keep]
    pos = np.searchsorted(edge_keys, key)
    is_edge = (pos < m) & (edge_keys[np.minimum(pos, max(m - 1, 0))] == key) if m else np.zeros(key.size, bool)
    cand = np.concatenate([neg, key[~is_edge]])
    _, first = np.unique(cand, return_index=True)
    neg = cand[np.sort(first)]  # distinct, in draw order
  neg = neg[:num_neg]
  pairs = lambda keys: np.stack([keys // n, keys % n], axis=1).astype(np.int32).reshape(-1, 2)  # noqa: E731
  held = {
      "val_pos": np.stack([u[val_idx], v[val_idx]], 1).astype(np.int32).reshape(-1, 2),
      "val_neg": pairs(neg[n_test:]),
      "test_pos": np.stack([u[test_idx], v[test_idx]], 1).astype(np.int32).reshape(-1, 2),
      "test_neg": pairs(neg[:n_test]),
  }
  keep = np.sort(train_idx)
  train = from_undirected_edges(graph.name, graph.features, np.stack([u[keep], v[keep]], 1), graph.labels,
                                edge_weight=w[keep], masks=(graph.train_mask, graph.val_mask, graph.test_mask),
                                num_classes=graph.num_classes, label_source=graph.label_source)
  return train, held
