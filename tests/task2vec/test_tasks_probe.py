"""Task suites and taxonomy; probe caching with BatchNorm in inference mode; the skip_layers tail."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.data import shapes_render
from research.methods.task2vec import probe as probe_lib
from research.methods.task2vec import selection as sel
from research.methods.task2vec import tasks as T


def _shapes_tax():
  f = np.arange(100)
  return T.taxonomy_from_labels(f, shapes_render.FINE_TO_COARSE[f], {
      "coarse_to_group": shapes_render.COARSE_TO_GROUP, "coarse_names": shapes_render.COARSE_NAMES,
      "group_names": shapes_render.GROUPS})


def test_suite_and_taxonomic_distance():
  tax = _shapes_tax()
  suite = T.build_suite(tax, T.SuiteConfig())
  names = [t.name for t in suite["tasks"]]
  assert sum(n.startswith("family/") for n in names) == 20
  assert len(suite["experts"]) == 10 and len(suite["targets"]) == 20
  by = {t.name: t for t in suite["tasks"]}
  tri, quad, disc = by["family/triangle"], by["family/quadrilateral"], by["family/disc"]
  assert tax.task_distance(tri, tri) == pytest.approx(0.8)  # 5 classes: 1/5 pairs distance 0, 4/5 distance 1
  assert tax.task_distance(tri, quad) == 2.0 and tax.task_distance(tri, disc) == 3.0
  for i in range(100):
    for j in (0, 7, 33):
      assert tax.class_distance()[i, j] == shapes_render.taxonomic_distance(i, j)


def test_materialize_labels_pool_and_bad_tasks():
  tax = _shapes_tax()
  train_fine = np.repeat(np.arange(100), 30)
  test_fine = np.repeat(np.arange(100), 5)
  tr_rows, te_rows, tr_pos, te_pos = T.make_pool(train_fine, test_fine, range(100), 10, 5, seed=0)
  assert not np.array_equal(tr_rows[:10], np.arange(10))  # not the first images in dataset order
  chex.assert_shape(tr_rows, (1000,))
  spec = T.TaskSpec("super/x/coarse", tuple(range(20)), label="coarse")
  tr_i, tr_y, te_i, te_y = T.materialize(spec, tax, tr_pos, te_pos)
  assert sorted(np.unique(tr_y)) == [0, 1, 2, 3] and len(tr_i) == 200
  np.testing.assert_array_equal(tr_y, shapes_render.FINE_TO_COARSE[train_fine[tr_rows[tr_i]]])
  noisy = T.materialize(T.TaskSpec("n", (0, 1, 2), label_noise=0.5), tax, tr_pos, te_pos)
  clean = T.materialize(T.TaskSpec("n", (0, 1, 2)), tax, tr_pos, te_pos)
  assert 0.15 < np.mean(noisy[1] != clean[1]) < 0.55
  np.testing.assert_array_equal(noisy[3], clean[3])  # test labels stay clean
  few = T.materialize(T.TaskSpec("f", (0, 1), samples_per_class=3), tax, tr_pos, te_pos)
  assert len(few[0]) == 6
  with pytest.raises(ValueError, match="single class"):
    T.materialize(T.TaskSpec("one", (4,)), tax, tr_pos, te_pos)
  with pytest.raises(ValueError, match="single coarse class"):
    T.materialize(T.TaskSpec("one", (0, 1), label="coarse"), tax, tr_pos, te_pos)
  with pytest.raises(ValueError, match="two coarse labels"):
    T.taxonomy_from_labels(np.array([0, 0, 1]), np.array([0, 1, 1]))


def test_probe_cache_inference_mode_and_tail():
  module = probe_lib.make_probe("wrn10_1", 5)  # a registry backbone: 3 stages of one block
  variables = probe_lib.init_variables(module, 0)
  # non-trivial BN statistics, so that train-mode BN would differ from inference mode
  variables["batch_stats"] = jax.tree.map(lambda a: a + 0.3, variables["batch_stats"])
  probe = probe_lib.Probe(module, variables, start_stage=3, name="wrn10_1")
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
  inp, pooled = probe_lib.cache_inputs(probe, images, (0.5,) * 3, (0.25,) * 3, batch_size=8)
  chex.assert_shape(inp, (12,) + probe_lib.trunk_output_shape(module, 3))
  alone, _ = probe_lib.cache_inputs(probe, images[:1], (0.5,) * 3, (0.25,) * 3, batch_size=8)
  np.testing.assert_allclose(alone[0], inp[0], rtol=1e-5, atol=1e-5)  # independent of the other images
  tail = jax.jit(probe_lib.make_tail_apply(module, 3))
  np.testing.assert_allclose(np.asarray(tail(probe.tail_variables(), jnp.asarray(inp))), pooled, rtol=1e-4,
                             atol=1e-5)
  names = set(probe.tail_variables()["params"])
  assert "stem_conv" not in names and "stage3_block0" in names and "head" not in names
  with pytest.raises(ValueError, match="start_stage"):
    probe_lib.Probe(module, variables, start_stage=4)
  with pytest.raises(ValueError, match="unknown probe"):
    probe_lib.make_probe("nonexistent_net", 3)


def test_selection_table_and_topk():
  from research.methods.task2vec.fisher import Embedding
  errors = np.array([[0.1, 0.5], [0.4, 0.2], [0.3, 0.3]])
  src = [Embedding(np.array([1.0, 0.0, 0.1]), np.ones(3)), Embedding(np.array([0.0, 1.0, 0.1]), np.ones(3)),
         Embedding(np.array([1.0, 1.0, 1.0]), np.ones(3))]
  tgt = [Embedding(np.array([1.0, 0.05, 0.1]), np.ones(3)), Embedding(np.array([0.05, 1.0, 0.1]), np.ones(3))]
  t = sel.selection_table(errors, np.array([0.3, 0.3]), src, tgt, alphas=(0.0, 0.15))
  assert t["choices"]["symmetric"] == [0, 1] and t["choices"]["oracle"] == [0, 1]
  assert t["relative_error_increase"]["task2vec_symmetric"] == 0.0
  assert t["relative_error_increase"]["chance"] == pytest.approx(np.mean([(0.8 / 3 - 0.1) / 0.1,
                                                                          (1.0 / 3 - 0.2) / 0.2]))
  tax = np.array([[0, 1, 2], [1, 0, 2], [2, 2, 0]], float)
  assert sel.top_k_taxonomic(tax, tax, [1, 2]) == pytest.approx([(1 + 1 + 2) / 3, 1.5 + 1 / 6])
