"""Anchors, the box coder and the matcher vs torchvision 0.28 (stored in data/detection_golden.npz), and
property tests of ``sample_balanced`` (torchvision's ``BalancedPositiveNegativeSampler`` is random, so it
cannot be compared draw for draw).

The file is written by make_torchvision_golden.py (run once in a separate interpreter with torch); this test
does not need torch.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models.detection import anchors as anchors_lib
from research.models.detection.matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match, sample_balanced
from research.ops import boxes as box_ops

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "data", "detection_golden.npz"))
RATIOS = (0.5, 1.0, 2.0)
ANCHOR_CONFIGS = {  # as in make_torchvision_golden.py: (sizes per level, strides)
    "fpn": (((8,), (16,), (32,)), (4, 8, 16)),
    "c4": (((8, 16, 32, 64),), (16,)),
}
WEIGHTS = {"10_10_5_5": (10.0, 10.0, 5.0, 5.0), "1_1_1_1": (1.0, 1.0, 1.0, 1.0)}
MATCHERS = {"rpn": (0.7, 0.3, True), "roi": (0.5, 0.5, False)}


# ------------------------------------------------------------------------------------------------ anchors
@pytest.mark.parametrize("config", sorted(ANCHOR_CONFIGS))
def test_anchors_match_torchvision_anchor_generator(config):
  """torchvision's layout is ours with ``offset=0`` (cell top-left corner) and integer-rounded cell anchors."""
  sizes, strides = ANCHOR_CONFIGS[config]
  image = tuple(int(v) for v in GOLDEN["image_size"])
  ours, level, counts = anchors_lib.multilevel_anchors(image, strides, sizes, RATIOS, offset=0.0, round_base=True)
  ref = GOLDEN[f"anchors_{config}"]
  assert ours.shape == ref.shape and ours.dtype == np.float32
  np.testing.assert_array_equal(ours, ref)  # same order (level, row, column, ratio, size) and values
  a = len(RATIOS) * len(sizes[0])
  assert counts == tuple(math.ceil(image[0] / s) * math.ceil(image[1] / s) * a for s in strides)
  np.testing.assert_array_equal(level, np.repeat(np.arange(len(strides)), counts))


def test_default_anchors_are_torchvision_shifted_to_cell_centres():
  """Our default (``offset=0.5``, unrounded) differs from torchvision by exactly half a stride in x and y, up
  to the rounding of the cell anchors (< 0.5 px per corner)."""
  sizes, strides = ANCHOR_CONFIGS["fpn"]
  image = tuple(int(v) for v in GOLDEN["image_size"])
  ours, level, _ = anchors_lib.multilevel_anchors(image, strides, sizes, RATIOS)
  shift = 0.5 * np.asarray(strides, np.float32)[level][:, None]
  diff = ours - shift - GOLDEN["anchors_fpn"]
  assert np.abs(diff).max() <= 0.5 + 1e-5


# ------------------------------------------------------------------------------------------------ box coder
@pytest.mark.parametrize("weights", sorted(WEIGHTS))
def test_encode_matches_box_coder(weights):
  d = GOLDEN
  ours = np.asarray(box_ops.encode_boxes(d["coder_gt"], d["coder_anchors"], WEIGHTS[weights]))
  np.testing.assert_allclose(ours, d[f"encode_{weights}"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weights", sorted(WEIGHTS))
def test_decode_matches_box_coder(weights):
  """Including deltas whose log-size is clamped at ``log(1000/16)`` (both sides clamp ``dw``/``dh`` from above
  only, after dividing by the weights, and put ``x2 = ctr + w/2``: no ``-1``)."""
  d = GOLDEN
  assert int(d[f"decode_{weights}_clamped_rows"]) > 10  # the clamp is exercised
  ours = np.asarray(box_ops.decode_boxes(d["coder_deltas"], d["coder_anchors"], WEIGHTS[weights]))
  ref = d[f"decode_{weights}"]
  assert np.all(np.isfinite(ours))
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("weights", sorted(WEIGHTS))
def test_encode_decode_round_trip(weights):
  d = GOLDEN
  deltas = box_ops.encode_boxes(d["coder_gt"], d["coder_anchors"], WEIGHTS[weights])
  back = np.asarray(box_ops.decode_boxes(deltas, d["coder_anchors"], WEIGHTS[weights]))
  # targets more than 62.5x larger than their anchor are clamped; the rest round-trip
  scale = (d["coder_gt"][:, 2:] - d["coder_gt"][:, :2]) / (d["coder_anchors"][:, 2:] - d["coder_anchors"][:, :2])
  ok = np.all(scale < 1000 / 16, axis=1)
  np.testing.assert_allclose(back[ok], d["coder_gt"][ok], rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------------------------------------ matcher
@pytest.mark.parametrize("case", [0, 1, 2])
def test_box_iou_matches_torchvision(case):
  d = GOLDEN
  ours = np.asarray(box_ops.box_iou(d[f"match{case}_gt"], d[f"match{case}_pred"]))
  np.testing.assert_allclose(ours, d[f"match{case}_iou"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("matcher", sorted(MATCHERS))
@pytest.mark.parametrize("case", [0, 1, 2])
def test_match_matches_torchvision_matcher(case, matcher):
  high, low, allow = MATCHERS[matcher]
  iou = GOLDEN[f"match{case}_iou"]
  ref = GOLDEN[f"match{case}_{matcher}"]
  ours = np.asarray(match(jnp.asarray(iou), jnp.ones(iou.shape[0], bool), high, low,
                          allow_low_quality_matches=allow))
  np.testing.assert_array_equal(ours, ref)
  assert {BELOW_LOW_THRESHOLD, *range(iou.shape[0])} <= set(ref.tolist())  # every branch is exercised
  if allow:
    assert np.any((ref >= 0) & (iou.max(0) < high))  # some low-quality matches
    assert BETWEEN_THRESHOLDS in set(ref.tolist())


@pytest.mark.parametrize("pad_value", [0.0, 0.95])
@pytest.mark.parametrize("matcher", sorted(MATCHERS))
def test_match_ignores_padded_ground_truth(matcher, pad_value):
  """A padding row (``gt_valid`` False) appended to the IoU matrix changes nothing, whatever its IoUs."""
  high, low, allow = MATCHERS[matcher]
  iou = GOLDEN["match0_iou"]
  padded = np.concatenate([iou, np.full((1, iou.shape[1]), pad_value, np.float32)])
  valid = np.array([True] * iou.shape[0] + [False])
  fn = jax.jit(lambda i, v: match(i, v, high, low, allow_low_quality_matches=allow))
  ours = np.asarray(fn(jnp.asarray(padded), jnp.asarray(valid)))
  np.testing.assert_array_equal(ours, GOLDEN[f"match0_{matcher}"])


def test_match_ground_truth_without_overlap_is_the_documented_difference():
  """A ground truth overlapping no prediction: torchvision low-quality-matches every prediction of IoU 0 with
  it (to that prediction's own argmax, even at IoU 0); ``match`` creates no match from it. Elsewhere equal."""
  iou = GOLDEN["match_lonely_iou"]
  ref = GOLDEN["match_lonely_rpn"]
  ours = np.asarray(match(jnp.asarray(iou), jnp.ones(iou.shape[0], bool), 0.7, 0.3, allow_low_quality_matches=True))
  lonely = iou[-1] == 0
  assert not np.any(iou[-1] > 0) and np.all(ref >= 0)
  differ = ours != ref
  assert differ.any()
  assert np.all(lonely[differ]) and np.all(ours[differ] < 0)
  # without the lonely row both agree with torchvision on the remaining rows
  again = np.asarray(match(jnp.asarray(iou[:-1]), jnp.ones(iou.shape[0] - 1, bool), 0.7, 0.3,
                           allow_low_quality_matches=True))
  np.testing.assert_array_equal(again, ours)


# ------------------------------------------------------------------------------------------------ sampling
def _labels(rng, n, n_pos, n_neg):
  lab = np.full(n, -1, np.int32)
  perm = rng.permutation(n)
  lab[perm[:n_pos]] = 1
  lab[perm[n_pos:n_pos + n_neg]] = 0
  return lab


# jitted once per (shape, num_samples, fraction); the eager path is checked against it once
_sample = jax.jit(sample_balanced, static_argnums=(1, 2))

# (#pos, #neg, num_samples, positive_fraction) among 512 candidates: enough of both / few positives / few
# negatives / too few of both / no positives / no negatives / nothing / a fraction whose product rounds down
# (int(100 * 0.29) = 28, as torchvision's int()) / all positives
SAMPLE_CASES = [(150, 300, 256, 0.5), (10, 400, 256, 0.5), (200, 20, 256, 0.5), (30, 40, 256, 0.5),
                (0, 400, 256, 0.5), (200, 0, 256, 0.5), (0, 0, 256, 0.5), (150, 150, 100, 0.29), (512, 0, 512, 1.0)]


@pytest.mark.parametrize("n_pos,n_neg,num_samples,fraction", SAMPLE_CASES)
def test_sample_balanced_counts_and_layout(n_pos, n_neg, num_samples, fraction):
  """As ``BalancedPositiveNegativeSampler``: ``min(#pos, int(S f))`` positives, negatives fill up to ``S``."""
  n = 512
  lab = _labels(np.random.default_rng(n_pos), n, n_pos, n_neg)
  idx, is_pos, valid = map(np.asarray, _sample(jnp.asarray(lab), num_samples, fraction, jax.random.PRNGKey(n_neg)))
  assert idx.shape == is_pos.shape == valid.shape == (num_samples,)
  want_pos = min(n_pos, int(num_samples * fraction))
  want_total = min(num_samples, want_pos + n_neg)  # leftover positive slots are not refilled with positives
  assert is_pos.sum() == want_pos and valid.sum() == want_total
  slots = np.arange(num_samples)
  np.testing.assert_array_equal(is_pos, slots < want_pos)  # positives are a prefix
  np.testing.assert_array_equal(valid, slots < want_total)  # then negatives, then padding
  chosen = idx[valid]
  assert len(np.unique(chosen)) == len(chosen)  # no repeats
  assert np.all((idx >= 0) & (idx < n))
  np.testing.assert_array_equal(lab[chosen], np.where(is_pos[valid], 1, 0))  # never an ignored (-1) one


def test_sample_balanced_deterministic_per_rng_and_jittable():
  """Same key, same sample (also under jit + vmap); another key, another sample."""
  lab = jnp.asarray(_labels(np.random.default_rng(0), 512, 100, 300))
  a, b = _sample(lab, 256, 0.5, jax.random.PRNGKey(1)), _sample(lab, 256, 0.5, jax.random.PRNGKey(1))
  c = _sample(lab, 256, 0.5, jax.random.PRNGKey(2))
  batched = jax.jit(jax.vmap(lambda k: sample_balanced(lab, 256, 0.5, k)))(
      jnp.stack([jax.random.PRNGKey(1), jax.random.PRNGKey(2)]))
  for x, y, v in zip(a, b, batched):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(x), np.asarray(v[0]))
  np.testing.assert_array_equal(np.asarray(c[0]), np.asarray(batched[0][1]))
  assert set(np.asarray(a[0]).tolist()) != set(np.asarray(c[0]).tolist())  # another key, another sample


def test_sample_balanced_is_uniform_within_each_group():
  """Over many keys every positive (negative) is drawn about equally often: 10 of 40 positives per draw."""
  lab = jnp.asarray(np.array([1] * 40 + [0] * 60 + [-1] * 28, np.int32))
  keys = jax.random.split(jax.random.PRNGKey(0), 2000)
  idx, is_pos, valid = jax.jit(jax.vmap(lambda k: sample_balanced(lab, 40, 0.25, k)))(keys)
  counts = np.bincount(np.asarray(idx)[np.asarray(valid)], minlength=128)
  assert np.all(counts[100:] == 0)
  np.testing.assert_allclose(counts[:40] / 2000, 0.25, atol=0.05)  # 10 / 40; sd ~0.01
  np.testing.assert_allclose(counts[40:100] / 2000, 0.5, atol=0.05)  # 30 / 60


def test_sample_balanced_pads_when_fewer_candidates_than_samples():
  """``num_samples > N``: the sample is what the rules allow, the remaining slots are padding (index 0)."""
  lab = jnp.asarray(np.array([1, 0, -1, 1, 0, 0, 1, -1, 0, 1], np.int32))
  idx, is_pos, valid = map(np.asarray, _sample(lab, 16, 0.25, jax.random.PRNGKey(3)))
  assert idx.shape == (16,)
  np.testing.assert_array_equal(is_pos, np.arange(16) < 4)  # all 4 positives (quota int(16 * 0.25) = 4)
  np.testing.assert_array_equal(valid, np.arange(16) < 8)  # + all 4 negatives
  assert sorted(idx[:4].tolist()) == [0, 3, 6, 9] and sorted(idx[4:8].tolist()) == [1, 4, 5, 8]
  assert np.all(idx[8:] == 0)
