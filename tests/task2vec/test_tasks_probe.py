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


def test_selection_table_hand_computed():
  """3 experts x 3 targets in 2-D (prior scale 1, so the trivial embedding t0 is (1, 1)). d_sym by hand:
  d(s, t) = 1 - cos(s / (s + t), t / (s + t)); with s0 = (1, 1), s1 = (3, 1), s2 = (1, 3):
    target (1, 1):   s0 0 (identical),       s1 = s2 = 1 - 7/sqrt(65) = 0.1318 (also d(s1, t0) = d(s2, t0))
    target (2, 1):   s0 1 - 17/(5 sqrt 13) = 0.0570, s1 1 - 49/sqrt(2501) = 0.0202, s2 1 - 59/sqrt(7081) = 0.2989
    target (1.5, 1): s0 1 - 49/sqrt(2501) = 0.0202, s1 0.0570, s2 1 - 0.4275/0.5525 = 0.2262
  so d_sym picks (s0, s1, s0); d_asym = d_sym - 0.5 d(s, t0) subtracts 0.0659 from s1/s2 and picks (s0, s1, s1)."""
  from research.methods.task2vec.fisher import Embedding
  e = lambda *h: Embedding(np.array(h, float), np.ones(2))  # noqa: E731
  src, tgt = [e(1, 1), e(3, 1), e(1, 3)], [e(1, 1), e(2, 1), e(1.5, 1)]
  errors = np.array([[0.10, 0.40, 0.30],
                     [0.20, 0.25, 0.15],
                     [0.30, 0.20, 0.60]])  # oracle: experts (0, 2, 1), errors (0.10, 0.20, 0.15)
  generic = np.array([0.12, 0.30, 0.15])
  t = sel.selection_table(errors, generic, src, tgt, alphas=(0.0, 0.5))
  assert t["choices"] == {"symmetric": [0, 1, 0], "oracle": [0, 2, 1]}
  assert t["oracle_error"] == pytest.approx(0.15)  # mean(0.10, 0.20, 0.15)
  rel = t["relative_error_increase"]
  # relative increase = mean over targets of (err - oracle) / oracle
  assert rel["task2vec_symmetric"] == pytest.approx((0 + 0.05 / 0.20 + 0.15 / 0.15) / 3)  # errors 0.10, 0.25, 0.30
  assert rel["generic_probe"] == pytest.approx((0.02 / 0.10 + 0.10 / 0.20 + 0) / 3)
  assert rel["chance"] == pytest.approx((0.10 / 0.10 + (0.85 / 3 - 0.20) / 0.20 + 0.20 / 0.15) / 3)  # column means
  assert rel["oracle"] == 0.0
  assert t["mean_error"] == pytest.approx({"task2vec_symmetric": 0.65 / 3, "generic_probe": 0.57 / 3,
                                           "chance": 2.5 / 9, "oracle": 0.15})
  for alpha, choices, errs in [(0.0, [0, 1, 0], [0.10, 0.25, 0.30]), (0.5, [0, 1, 1], [0.10, 0.25, 0.15])]:
    row = t["alpha_sweep"][alpha]
    assert row["choices"] == choices and row["mean_error"] == pytest.approx(np.mean(errs))
    assert row["relative_error_increase"] == pytest.approx(np.mean((np.array(errs) - [0.10, 0.20, 0.15]) /
                                                                   [0.10, 0.20, 0.15]))
  assert t["alpha_sweep"][0.5]["relative_error_increase"] == pytest.approx(0.25 / 3)  # only target 1 loses 25%
  # A perfect oracle (error 0) would make the ratio undefined: the denominator is clamped at 1e-3.
  t = sel.selection_table(np.array([[0.0], [0.01]]), np.array([0.002]), src[:2], tgt[:1], alphas=())
  assert t["relative_error_increase"]["chance"] == pytest.approx(0.005 / 1e-3)
  assert t["relative_error_increase"]["generic_probe"] == pytest.approx(0.002 / 1e-3)


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
