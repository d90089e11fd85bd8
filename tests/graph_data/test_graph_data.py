"""Graph datasets: the citation_sbm TFDS builder, networkx graphs, the Planetoid split, npz files, edge splits.

References are independent: dense adjacency matrices, numpy loops, networkx's own graphs, scipy.sparse and
scikit-learn (test-only).
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import chex
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow_datasets as tfds
from sklearn.linear_model import LogisticRegression

from research.data import citation_sbm, graphs


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
  """A TFDS data_dir with citation_sbm/small and citation_sbm/cora_like, generated once (~3 s)."""
  d = str(tmp_path_factory.mktemp("graphs_tfds"))
  graphs.load_node_graph("citation_sbm/small", data_dir=d)
  graphs.load_node_graph("citation_sbm", data_dir=d)
  return d


def _dense(g: graphs.NodeGraph) -> np.ndarray:
  a = np.zeros((g.num_nodes, g.num_nodes))
  a[g.senders, g.receivers] = g.edge_weight
  return a


def _check_conventions(g: graphs.NodeGraph) -> None:
  """Edge conventions of the API, checked against a dense matrix and a python loop."""
  n, e = g.num_nodes, g.num_edges
  chex.assert_shape([g.senders, g.receivers, g.edge_weight], [(e,)] * 3)
  chex.assert_shape([g.labels, g.train_mask, g.val_mask, g.test_mask], [(n,)] * 4)
  chex.assert_shape(g.features, (n, g.num_features))
  assert g.features.dtype == np.float32 and g.senders.dtype == g.receivers.dtype == g.labels.dtype == np.int32
  assert g.edge_weight.dtype == np.float32 and g.train_mask.dtype == np.bool_
  pairs = list(zip(g.receivers.tolist(), g.senders.tolist()))
  assert pairs == sorted(set(pairs))  # sorted by (receiver, sender), no duplicates
  assert all(s != r for r, s in pairs)
  a = _dense(g)
  np.testing.assert_array_equal(a, a.T)
  assert np.count_nonzero(a) == e and g.num_undirected_edges * 2 == e
  assert not (g.train_mask & g.val_mask).any() and not (g.train_mask & g.test_mask).any()
  assert not (g.val_mask & g.test_mask).any()


def _reference_split(labels, num_classes, seed, labels_per_class, num_val, num_test):
  """A loop version of the documented split rule."""
  perm = np.random.default_rng(seed).permutation(np.flatnonzero(labels >= 0))
  sizes = [int(np.sum(labels == c)) for c in range(num_classes) if np.sum(labels == c) > 0]
  k = min(labels_per_class, max(1, min(sizes) // 4))
  taken, train, rest = {}, [], []
  for i in perm:
    c = int(labels[i])
    if taken.get(c, 0) < k:
      taken[c] = taken.get(c, 0) + 1
      train.append(i)
    else:
      rest.append(i)
  if num_val + num_test > len(rest):
    v = 0 if num_val == 0 else max(1, len(rest) * num_val // (num_val + num_test))
    num_val, num_test = v, len(rest) - v
  return sorted(train), sorted(rest[:num_val]), sorted(rest[num_val:num_val + num_test])


# ------------------------------------------------------------------------------------------------ citation_sbm


def test_small_builder_contents_and_determinism(graph_dir):
  g = graphs.load_node_graph("citation_sbm/small", data_dir=graph_dir)
  _check_conventions(g)
  assert (g.name, g.num_nodes, g.num_features, g.num_classes) == ("citation_sbm/small", 300, 300, 3)
  assert g.label_source == "generated (SBM block)"
  np.testing.assert_array_equal(np.bincount(g.labels), [120, 99, 81])  # largest remainder of 300 * (.4, .33, .27)
  assert sorted(np.unique(g.features).tolist()) == [0.0, 1.0]
  assert _dense(g).sum(1).min() >= 1  # repaired: no isolated node
  assert 0.75 < graphs.edge_homophily(g) < 0.9
  assert (g.train_mask.sum(), g.val_mask.sum(), g.test_mask.sum()) == (60, 80, 160)  # 20/class, then scaled 1:2
  # stored as array_record in data_dir, and equal to a fresh generation of the same config
  files = os.listdir(os.path.join(graph_dir, "citation_sbm", "small", "1.0.0"))
  assert any("array_record" in f for f in files)
  rec = citation_sbm.generate(citation_sbm.SMALL)
  fresh = graphs.record_to_node_graph(rec, "citation_sbm/small")
  for field in ("features", "senders", "receivers", "edge_weight", "labels", "train_mask", "val_mask", "test_mask"):
    np.testing.assert_array_equal(getattr(fresh, field), getattr(g, field), err_msg=field)
  # other split seeds: other masks, same graph
  g1 = graphs.load_node_graph("citation_sbm/small", data_dir=graph_dir, seed=1)
  assert not np.array_equal(g1.train_mask, g.train_mask)
  np.testing.assert_array_equal(g1.senders, g.senders)


def test_block_affinity_matches_formula():
  """omega from the docstring's formulas, written as explicit loops."""
  rng = np.random.default_rng(0)
  k, s, m, h, hs = 3, 2, 500, 0.8, 0.7
  sizes = rng.integers(10, 40, size=k * s).astype(float)
  bc = np.repeat(np.arange(k), s)
  omega = citation_sbm._block_affinity(sizes, bc, m, h, hs)
  kappa = 2 * m * sizes / sizes.sum()
  ref = np.zeros((k * s, k * s))
  z_in = sum(kappa[b] * kappa[d] for b in range(k * s) for d in range(k * s) if bc[b] == bc[d] and b != d)
  z_out = sum(kappa[b] * kappa[d] for b in range(k * s) for d in range(k * s) if bc[b] != bc[d])
  for b in range(k * s):
    for d in range(k * s):
      if b == d:
        ref[b, d] = h * hs * kappa[b]
      elif bc[b] == bc[d]:
        ref[b, d] = h * (1 - hs) * 2 * m * kappa[b] * kappa[d] / z_in
      else:
        ref[b, d] = (1 - h) * 2 * m * kappa[b] * kappa[d] / z_out
  chex.assert_trees_all_close(omega, ref, rtol=1e-12)
  assert np.isclose(omega.sum(), 2 * m) and np.isclose(omega[bc[:, None] == bc[None, :]].sum(), 2 * m * h)


def test_generated_degrees_words_and_config_errors():
  cfg = dataclasses.replace(citation_sbm.SMALL, num_nodes=600, num_edges=1500, degree_exponent=1.5, seed=3)
  rec = citation_sbm.generate(cfg)
  deg = np.bincount(np.concatenate([rec["senders"], rec["receivers"]]), minlength=600)
  assert deg.min() >= 1 and deg.max() >= 5 * np.median(deg)  # heavy tail
  assert 1500 <= rec["senders"].size <= 1500 + 600 // 5  # target plus a few repairs
  words = np.bincount(rec["word_nodes"], minlength=600)
  assert words.min() >= 1 and abs(words.mean() - cfg.words_per_node) < 1.0
  assert np.unique(rec["word_nodes"] * cfg.num_words + rec["word_ids"]).size == rec["word_ids"].size  # distinct
  np.testing.assert_array_equal(citation_sbm.generate(cfg)["senders"], rec["senders"])  # deterministic
  for field, value in (("homophily", 1.5), ("num_edges", 10**6), ("topic_size", 10**4), ("degree_exponent", 1.0)):
    with pytest.raises(ValueError, match=field):
      citation_sbm.generate(dataclasses.replace(cfg, **{field: value}))


def test_cora_like_regime(graph_dir):
  """Cora-like sizes, homophily ~0.8, and logistic regression: features alone << features propagated twice."""
  g = graphs.load_node_graph("citation_sbm", data_dir=graph_dir)
  assert g.name == "citation_sbm/cora_like"
  assert (g.num_nodes, g.num_features, g.num_classes) == (2708, 1433, 7)
  np.testing.assert_array_equal(np.bincount(g.labels), citation_sbm.CORA_CLASS_SIZES)
  assert 5300 <= g.num_undirected_edges <= 5700
  assert 0.77 < graphs.edge_homophily(g) < 0.83
  assert (g.train_mask.sum(), g.val_mask.sum(), g.test_mask.sum()) == (140, 500, 1000)
  np.testing.assert_array_equal(np.bincount(g.labels[g.train_mask]), [20] * 7)
  assert 16 < g.features.sum(1).mean() < 20
  a = _dense(g) + np.eye(g.num_nodes)
  dinv = 1 / np.sqrt(a.sum(1))
  s = a * dinv[:, None] * dinv[None, :]
  x = g.features / np.maximum(g.features.sum(1, keepdims=True), 1)
  accs = []
  for z, c in ((x, 1.0), (s @ (s @ x), 10.0)):
    clf = LogisticRegression(C=c, max_iter=2000).fit(z[g.train_mask], g.labels[g.train_mask])
    accs.append(float(np.mean(clf.predict(z[g.test_mask]) == g.labels[g.test_mask])))
  print("cora_like logistic regression test accuracy (features, propagated):", accs)
  assert 0.48 < accs[0] < 0.68 and 0.75 < accs[1] < 0.9 and accs[1] - accs[0] > 0.15


def _record(n=5, k=2, f=4):
  return {"labels": np.array([0, 1, 0, 1, 1], np.int32)[:n], "senders": np.array([0, 0, 1, 2], np.int32),
          "receivers": np.array([1, 2, 3, 4], np.int32), "word_nodes": np.array([0, 1, 2, 3, 4], np.int32),
          "word_ids": np.array([0, 1, 2, 3, 0], np.int32), "num_nodes": np.int32(n), "num_words": np.int32(f),
          "num_classes": np.int32(k)}


def test_reads_through_tfds_mock_data(tmp_path):
  """The same builder + reader path under tfds.testing.mock_data: a hand-made record, then random records."""
  def as_data_source_fn(builder, split, **kwargs):
    del kwargs
    assert builder.name == "citation_sbm" and builder.builder_config.name == "small" and split == "train"
    return [_record()]

  with tfds.testing.mock_data(as_data_source_fn=as_data_source_fn, data_dir=str(tmp_path)):
    g = graphs.load_node_graph("citation_sbm/small", data_dir=str(tmp_path), labels_per_class=1, num_val=1,
                               num_test=2)
  _check_conventions(g)
  assert (g.num_nodes, g.num_undirected_edges, g.num_features) == (5, 4, 4)
  np.testing.assert_array_equal(g.features[[0, 1, 2, 3, 4], [0, 1, 2, 3, 0]], np.ones(5))
  assert g.features.sum() == 5 and (g.train_mask.sum(), g.val_mask.sum(), g.test_mask.sum()) == (2, 1, 2)
  with tfds.testing.mock_data(num_examples=1, data_dir=str(tmp_path)):  # random tensors are not a valid graph
    with pytest.raises(ValueError, match="invalid record"):
      graphs.load_node_graph("citation_sbm/small", data_dir=str(tmp_path))
  assert not os.path.exists(tmp_path / "citation_sbm" / "small" / "1.0.0" / "dataset_info.json")


def test_bad_records_and_specs():
  for key, value, match in (("senders", np.array([1, 0, 1, 2], np.int32), "sender < receiver"),
                            ("labels", np.array([0, 1, 0, 1, 2], np.int32), "labels"),
                            ("word_ids", np.array([0, 1, 2, 3, 9], np.int32), "word_ids"),
                            ("receivers", np.array([1, 2, 3], np.int32), "one shape")):
    with pytest.raises(ValueError, match=match):
      graphs.record_to_node_graph({**_record(), key: value}, "x")
  with pytest.raises(ValueError, match="unknown config 'huge'"):
    graphs.load_node_graph("citation_sbm/huge")
  with pytest.raises(ValueError, match="not a known graph"):
    graphs.load_node_graph("cora")
  assert graphs.node_graph_names() == ["citation_sbm", "citation_sbm/cora_like", "citation_sbm/small", "karate",
                                       "les_miserables", "florentine"]


# ------------------------------------------------------------------------------------------------ networkx


def test_karate_matches_networkx():
  g = graphs.load_node_graph("karate")
  _check_conventions(g)
  ref = nx.karate_club_graph()
  np.testing.assert_array_equal(_dense(g), nx.to_numpy_array(ref, nodelist=range(34), weight=None))
  np.testing.assert_array_equal(g.labels, [0 if ref.nodes[i]["club"] == "Mr. Hi" else 1 for i in range(34)])
  np.testing.assert_array_equal(g.features, np.eye(34))
  assert (g.num_classes, g.label_source) == (2, "ground truth (club)")
  # 17 per class -> 17 // 4 = 4 labels per class; the other 26 split 1:2
  np.testing.assert_array_equal(np.bincount(g.labels[g.train_mask]), [4, 4])
  assert (g.val_mask.sum(), g.test_mask.sum()) == (8, 18)
  for lpc in (1, 2, 3):
    h = graphs.load_node_graph("karate", labels_per_class=lpc, seed=5)
    np.testing.assert_array_equal(np.bincount(h.labels[h.train_mask]), [lpc, lpc])


@pytest.mark.parametrize("spec,weighted", [("les_miserables", True), ("florentine", False)])
def test_louvain_labelled_graphs(spec, weighted):
  g = graphs.load_node_graph(spec)
  _check_conventions(g)
  ref = {"les_miserables": nx.les_miserables_graph, "florentine": nx.florentine_families_graph}[spec]()
  nodes = list(ref.nodes)
  weight = "weight" if weighted else None
  np.testing.assert_array_equal(_dense(g), nx.to_numpy_array(ref, nodelist=nodes, weight=weight))
  comms = nx.community.louvain_communities(ref, weight=weight, seed=0)
  same = np.array([[any(a in c and b in c for c in comms) for b in nodes] for a in nodes])
  np.testing.assert_array_equal(g.labels[:, None] == g.labels[None, :], same)  # same partition
  assert g.labels[0] == 0 and g.num_classes == len(comms) and g.label_source.startswith("derived: louvain")
  assert g.train_mask.sum() >= g.num_classes and g.val_mask.sum() >= 1 and g.test_mask.sum() >= 1


# ------------------------------------------------------------------------------------------------ split rule


@pytest.mark.parametrize("seed,lpc,nv,nt", [(0, 20, 500, 1000), (3, 5, 10, 30), (7, 50, 0, 10), (1, 2, 300, 300)])
def test_planetoid_split_matches_loop(seed, lpc, nv, nt):
  rng = np.random.default_rng(seed + 100)
  labels = rng.integers(-1, 5, size=400).astype(np.int32)
  masks = graphs.planetoid_split(labels, 5, seed=seed, labels_per_class=lpc, num_val=nv, num_test=nt)
  ref = _reference_split(labels, 5, seed, lpc, nv, nt)
  for m, r in zip(masks, ref):
    np.testing.assert_array_equal(np.flatnonzero(m), r)
  assert not np.any((masks[0] | masks[1] | masks[2]) & (labels < 0))
  with pytest.raises(ValueError, match="labels_per_class"):
    graphs.planetoid_split(labels, 5, labels_per_class=0)


# ------------------------------------------------------------------------------------------------ npz


def test_npz_round_trip_and_scipy_layout(tmp_path):
  g = graphs.load_node_graph("les_miserables", seed=2)
  path = str(tmp_path / "lesmis.graph")  # any file name, written as is
  graphs.save_npz(g, path)
  h = graphs.load_node_graph(f"npz:{path}")
  for field in ("features", "senders", "receivers", "edge_weight", "labels", "train_mask", "val_mask", "test_mask"):
    np.testing.assert_array_equal(getattr(h, field), getattr(g, field), err_msg=field)
  assert (h.name, h.num_classes, h.label_source) == (g.name, g.num_classes, g.label_source)
  with np.load(path, allow_pickle=False) as z:
    a = sp.csr_matrix((z["adj_data"], z["adj_indices"], z["adj_indptr"]), shape=tuple(z["adj_shape"]))
  np.testing.assert_array_equal(a.toarray(), _dense(g))
  assert a.has_canonical_format


def _write(path, a, n=6, f=3, **over):
  a = sp.csr_matrix(a)
  arrays = dict(adj_data=a.data, adj_indices=a.indices, adj_indptr=a.indptr, adj_shape=np.array(a.shape),
                features=np.ones((n, f)), labels=np.array([0, 0, 1, 1, 2, -1]),
                train_mask=np.array([1, 0, 1, 0, 1, 0], bool), val_mask=np.array([0, 1, 0, 0, 0, 0], bool),
                test_mask=np.array([0, 0, 0, 1, 0, 0], bool))
  arrays.update(over)
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
  return str(path)


def _ring(n=6, w=1.0):
  a = np.zeros((n, n))
  for i in range(n):
    a[i, (i + 1) % n] = a[(i + 1) % n, i] = w
  return a


def test_npz_user_graph_and_validation(tmp_path):
  p = _write(tmp_path / "ok.npz", _ring(w=2.0))
  g = graphs.load_node_graph(f"npz:{p}")
  _check_conventions(g)
  np.testing.assert_array_equal(_dense(g), _ring(w=2.0))
  assert (g.name, g.num_classes) == ("ok", 3) and g.label_source.startswith("file")
  # masks absent: drawn by the split rule (unlabelled node 5 never selected)
  p = _write(tmp_path / "nomask.npz", _ring(), train_mask=None, val_mask=None, test_mask=None)
  g = graphs.load_node_graph(f"npz:{p}", seed=1)
  np.testing.assert_array_equal(np.bincount(g.labels[g.train_mask]), [1, 1, 1])
  assert not (g.train_mask | g.val_mask | g.test_mask)[5]
  # self loops: dropped with a warning
  loops = _ring() + np.eye(6)
  with pytest.warns(UserWarning, match="dropping 6 self loops"):
    g = graphs.load_node_graph(f"npz:{_write(tmp_path / 'loops.npz', loops)}")
  np.testing.assert_array_equal(_dense(g), _ring())
  asym = _ring()
  asym[0, 3] = 1.0
  weights = _ring()
  weights[0, 1] = 3.0
  dup = sp.csr_matrix(_ring())
  dup = sp.csr_matrix((np.r_[1.0, dup.data], np.r_[1, dup.indices], np.r_[0, dup.indptr[1:] + 1]), shape=(6, 6))
  assert dup.nnz == 13 and not dup.has_canonical_format  # (0, 1) stored twice
  zero = sp.csr_matrix(_ring())
  zero.data[0] = 0.0
  bad = [
      ("adj_data", dict(a=asym), "not symmetric"),
      ("adj_data", dict(a=weights), "A.maximum"),
      ("adj_indices", dict(a=dup), "sum_duplicates"),
      ("adj_data", dict(a=zero), "eliminate_zeros"),
      ("labels", dict(a=_ring(), labels=None), "missing"),
      ("adj_shape", dict(a=_ring(), adj_shape=np.array([6, 5])), "square"),
      ("features", dict(a=_ring(), features=np.ones((5, 3))), "N=6 rows"),
      ("features", dict(a=_ring(), features=np.full((6, 3), np.nan)), "non-finite"),
      ("labels", dict(a=_ring(), labels=np.array([0, 0, 1, 1, 2, -2])), r"\[0, num_classes\)"),
      ("labels", dict(a=_ring(), labels=np.zeros(6)), "int labels"),
      ("val_mask", dict(a=_ring(), val_mask=np.array([1, 1, 0, 0, 0, 0], bool)), "disjoint"),
      ("test_mask", dict(a=_ring(), test_mask=np.array([0, 0, 0, 0, 0, 1], bool)), "unlabelled"),
      ("train_mask", dict(a=_ring(), train_mask=np.zeros(6, np.int64)), "boolean"),
      ("val_mask", dict(a=_ring(), val_mask=None), "all of train_mask"),
      ("num_classes", dict(a=_ring(), num_classes=np.int64(2)), ">= max"),
  ]
  for i, (key, kw, match) in enumerate(bad):
    path = _write(tmp_path / f"bad{i}.npz", **kw)
    with pytest.raises(ValueError, match=match) as info:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graphs.load_node_graph(f"npz:{path}")
    assert f"'{key}'" in str(info.value), (key, str(info.value))
  with pytest.raises(ValueError, match="does not exist"):
    graphs.load_node_graph(f"npz:{tmp_path / 'missing.npz'}")


def test_node_graph_rejects_broken_conventions():
  g = graphs.load_node_graph("karate")
  with pytest.raises(ValueError, match="sorted by"):
    dataclasses.replace(g, senders=g.senders[::-1].copy(), receivers=g.receivers[::-1].copy())
  with pytest.raises(ValueError, match="both directions"):
    w = g.edge_weight.copy()
    w[0] = 2.0
    dataclasses.replace(g, edge_weight=w)
  with pytest.raises(ValueError, match="int32"):
    dataclasses.replace(g, labels=g.labels.astype(np.int64))
  with pytest.raises(ValueError, match="disjoint"):
    dataclasses.replace(g, val_mask=g.train_mask.copy())


# ------------------------------------------------------------------------------------------------ edge split


def test_split_edges(graph_dir):
  g = graphs.load_node_graph("citation_sbm/small", data_dir=graph_dir)
  train, held = graphs.split_edges(g, val_fraction=0.05, test_fraction=0.1, seed=0)
  m = g.num_undirected_edges
  _check_conventions(train)
  assert train.num_nodes == g.num_nodes and np.array_equal(train.features, g.features)
  sizes = {k: v.shape for k, v in held.items()}
  assert sizes == {"val_pos": (m // 20, 2), "val_neg": (m // 20, 2), "test_pos": (m // 10, 2),
                   "test_neg": (m // 10, 2)}
  assert all(v.dtype == np.int32 and np.all(v[:, 0] < v[:, 1]) for v in held.values())
  full = {tuple(e) for e in zip(g.senders.tolist(), g.receivers.tolist()) if e[0] < e[1]}
  kept = {tuple(e) for e in zip(train.senders.tolist(), train.receivers.tolist()) if e[0] < e[1]}
  val_pos, test_pos = ({tuple(e) for e in held[k].tolist()} for k in ("val_pos", "test_pos"))
  negs = [tuple(e) for e in held["val_neg"].tolist() + held["test_neg"].tolist()]
  assert kept | val_pos | test_pos == full and len(kept) + len(val_pos) + len(test_pos) == m
  assert not set(negs) & full and len(set(negs)) == len(negs)
  again, held2 = graphs.split_edges(g, val_fraction=0.05, test_fraction=0.1, seed=0)
  chex.assert_trees_all_equal(held, held2)
  with pytest.raises(ValueError, match="val_fraction"):
    graphs.split_edges(g, val_fraction=0.5, test_fraction=0.5)


def test_split_edges_negatives_are_uniform():
  """On a 6-node path (10 non-edges), one negative per call over many seeds: every non-edge about equally often."""
  path = graphs.from_undirected_edges("path", np.eye(6), np.array([[i, i + 1] for i in range(5)]),
                                      np.array([0, 0, 0, 1, 1, 1]), num_classes=2, label_source="test")
  counts = {}
  for seed in range(1500):
    _, held = graphs.split_edges(path, val_fraction=0.0, test_fraction=0.2, seed=seed)
    key = tuple(held["test_neg"][0].tolist())
    counts[key] = counts.get(key, 0) + 1
  non_edges = {(a, b) for a in range(6) for b in range(a + 1, 6) if b != a + 1}
  assert set(counts) == non_edges
  freq = np.array(list(counts.values())) / 1500
  assert np.all(np.abs(freq - 0.1) < 0.03), counts
