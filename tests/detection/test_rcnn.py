"""R-CNN building blocks against float64 numpy references, and the detectors' contracts on tiny inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.models.detection import anchors as A
from research.models.detection import match, paste_masks, sample_balanced
from research.ops import boxes as B

# ------------------------------------------------------------------------------------------------ box ops


def _iou_np(a, b):
  out = np.zeros((len(a), len(b)))
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      area = lambda r: max(r[2] - r[0], 0) * max(r[3] - r[1], 0)
      u = area(p) + area(q) - iw * ih
      out[i, j] = iw * ih / u if u > 0 else 0.0
  return out


def test_box_iou_matches_float64_loop_including_degenerate_boxes():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 20, (7, 2))
  a = np.concatenate([xy, xy + rng.uniform(0, 10, (7, 2))], 1)
  a[0] = [5, 5, 5, 9]  # zero width
  a[1] = [3, 3, 1, 1]  # inverted
  b = np.concatenate([xy[:5] + 1, xy[:5] + 8], 1)
  got = B.box_iou(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  chex.assert_shape(got, (7, 5))
  np.testing.assert_allclose(got, _iou_np(a, b), atol=1e-6)
  assert B.box_iou(jnp.zeros((1, 4)), jnp.zeros((1, 4)))[0, 0] == 0  # empty union: 0, not NaN


def test_box_coder_round_trip_formulas_and_clamp():
  rng = np.random.default_rng(1)
  xy = rng.uniform(0, 50, (20, 2))
  anchors = np.concatenate([xy, xy + rng.uniform(2, 30, (20, 2))], 1)
  gxy = rng.uniform(0, 50, (20, 2))
  gt = np.concatenate([gxy, gxy + rng.uniform(1, 40, (20, 2))], 1)
  w = (10.0, 10.0, 5.0, 5.0)
  d = np.asarray(B.encode_boxes(jnp.asarray(gt), jnp.asarray(anchors), w), np.float64)
  aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
  gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
  ref = np.stack([10 * ((gt[:, 0] + gw / 2) - (anchors[:, 0] + aw / 2)) / aw,
                  10 * ((gt[:, 1] + gh / 2) - (anchors[:, 1] + ah / 2)) / ah, 5 * np.log(gw / aw), 5 * np.log(gh / ah)], 1)
  np.testing.assert_allclose(d, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(B.decode_boxes(jnp.asarray(d), jnp.asarray(anchors), w), gt, rtol=1e-5, atol=1e-4)
  huge = B.decode_boxes(jnp.array([[0.0, 0.0, 1e4, 1e4]]), jnp.array([[0.0, 0.0, 16.0, 16.0]]))
  np.testing.assert_allclose(huge[0, 2] - huge[0, 0], 1000.0, rtol=1e-5)  # exp(log(1000/16)) * 16
  np.testing.assert_allclose(B.clip_boxes(jnp.array([[-3.0, 2.0, 70.0, 90.0]]), 64, 48), [[0, 2, 48, 64]])
  np.testing.assert_allclose(B.xywh_to_xyxy(B.xyxy_to_xywh(jnp.asarray(gt))), gt, atol=1e-5)


def test_anchor_geometry():
  base = A.cell_anchors((8, 16), (0.5, 1.0, 2.0))
  chex.assert_shape(base, (6, 4))
  w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
  np.testing.assert_allclose(w * h, [64, 256] * 3, rtol=1e-5)  # area = size^2 for every ratio
  np.testing.assert_allclose(h / w, [0.5, 0.5, 1, 1, 2, 2], rtol=1e-5)  # ratio-major, h / w
  anchors, level, counts = A.multilevel_anchors((64, 96), (4, 8), ((8,), (16,)), (1.0,))
  assert counts == (16 * 24, 8 * 12) and anchors.shape == (sum(counts), 4)
  np.testing.assert_array_equal(np.bincount(level), counts)
  np.testing.assert_allclose(anchors[0], [-2, -2, 6, 6])  # centre of cell (0, 0) at stride 4 = (2, 2)
  np.testing.assert_allclose(anchors[1], [2, -2, 10, 6])  # location-major: next column
  with pytest.raises(ValueError, match="positive"):
    A.cell_anchors((0,), (1.0,))


def test_match_thresholds_low_quality_and_padding():
  iou = jnp.array([[0.9, 0.5, 0.2, 0.0, 0.35],
                   [0.1, 0.6, 0.25, 0.0, 0.1],
                   [0.95, 0.95, 0.95, 0.95, 0.95]])  # padding row
  valid = jnp.array([True, True, False])
  m = match(iou, valid, 0.7, 0.3)
  np.testing.assert_array_equal(m, [0, -2, -1, -1, -2])
  m = match(iou, valid, 0.7, 0.3, allow_low_quality_matches=True)
  np.testing.assert_array_equal(m, [0, 1, -1, -1, -2])  # gt 1's best prediction (0.6) is matched to it
  assert (match(iou, jnp.zeros(3, bool), 0.5, 0.5) == -1).all()  # no objects: all background


def test_sample_balanced_counts_and_prefix():
  labels = jnp.array([1] * 5 + [0] * 30 + [-1] * 10)
  idx, pos, valid = jax.jit(sample_balanced, static_argnums=(1, 2))(labels, 16, 0.25, jax.random.key(0))
  assert int(pos.sum()) == 4 and int(valid.sum()) == 16
  assert bool(pos[:4].all()) and not bool(pos[4:].any())
  assert set(np.asarray(labels)[np.asarray(idx)][np.asarray(valid)]) <= {0, 1}
  idx, pos, valid = sample_balanced(jnp.array([1, 0, -1, -1]), 4, 0.5, jax.random.key(1))
  np.testing.assert_array_equal(valid, [True, True, False, False])  # too few candidates: padded, marked invalid


def test_paste_masks_covers_the_box():
  boxes = jnp.array([[2.0, 3.0, 10.0, 7.0], [0.0, 0.0, 16.0, 16.0]])
  paste = jax.jit(paste_masks, static_argnums=(2, 3))
  pasted = paste(jnp.ones((2, 28, 28)), boxes, 12, 16)
  chex.assert_shape(pasted, (2, 12, 16))
  inside = np.zeros((12, 16), bool)
  inside[3:7, 2:10] = True  # pixel centres (j + .5, i + .5) inside the box
  np.testing.assert_array_equal(np.asarray(pasted[0]) >= 0.5, inside)
  assert (np.asarray(pasted[1]) >= 0.5).all()
  left = paste(jnp.asarray(np.tile(np.arange(28) < 14, (1, 28, 1)), jnp.float32), boxes[:1], 12, 16)
  np.testing.assert_array_equal(np.asarray(left[0]) >= 0.5, inside & (np.arange(16) < 6))  # left half of the box


# ------------------------------------------------------------------------------------------------ detectors

TINY = dict(backbone="resnet18", backbone_kwargs=(("width", 8),), image_size=(64, 64), fpn_channels=16,
            representation=32, mask_channels=8, mask_convs=1, roi_batch=32, rpn_post_nms_train=64,
            rpn_post_nms_test=32, max_detections=10, mask_rois_per_image=4)


def _targets(b=2, g=3, size=64, empty_first=True):
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, size - 24, (b, g, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(6, 20, (b, g, 2))], -1).astype(np.float32)
  masks = np.zeros((b, g, size, size), np.uint8)
  for i in range(b):
    for j in range(g):
      x1, y1, x2, y2 = np.round(boxes[i, j]).astype(int)
      masks[i, j, y1:y2, x1:x2] = 1
  valid = np.ones((b, g), np.float32)
  if empty_first:
    valid[0] = 0  # an image without objects
  return {"boxes": jnp.asarray(boxes), "labels": jnp.asarray(rng.integers(0, 5, (b, g)), jnp.int32),
          "instance_mask": jnp.asarray(valid), "masks": jnp.asarray(masks)}


@pytest.fixture(scope="module")
def mask_rcnn():
  m = models.create("mask_rcnn_fpn", num_classes=5, pooler="pool", **TINY)  # RoIPool here, RoIAlign in the CLI test
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
  v = jax.jit(lambda r: m.init({"params": r}, x, train=False))(jax.random.key(0))
  return m, v, x


def test_registry_lists_detectors_in_their_family():
  assert {"faster_rcnn_fpn", "faster_rcnn_c4", "mask_rcnn_fpn", "rfcn"} <= set(models.names("detection"))
  assert "mask_rcnn_fpn" not in models.names()  # the default listing is the classification backbones
  with pytest.raises(ValueError, match="unknown model family"):
    models.names("nope")


def test_mask_rcnn_inference_contract(mask_rcnn):
  m, v, x = mask_rcnn
  out = jax.jit(lambda v, x: m.apply(v, x, train=False))(v, x)
  chex.assert_shape([out["boxes"], out["scores"], out["labels"], out["valid"], out["masks"]],
                    [(2, 10, 4), (2, 10), (2, 10), (2, 10), (2, 10, 28, 28)])
  boxes = np.asarray(out["boxes"])[np.asarray(out["valid"])]
  assert ((boxes >= 0) & (boxes <= 64)).all()  # clipped to the image
  assert ((np.asarray(out["labels"]) >= 0) & (np.asarray(out["labels"]) < 5)).all()


def test_mask_rcnn_losses_finite_with_an_empty_image_and_every_head_gets_gradient(mask_rcnn):
  m, v, x = mask_rcnn
  tg = _targets()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss(p, tg, rng):
    out, _ = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True, targets=tg, rng=rng,
                     mutable=["batch_stats"])
    return out["total"], out

  (total, parts), grads = jax.value_and_grad(loss, has_aux=True)(v["params"], tg, jax.random.key(1))
  for k in ("rpn_cls", "rpn_box", "roi_cls", "roi_box", "mask"):
    assert np.isfinite(float(parts[k])) and float(parts[k]) > 0, (k, parts[k])
  for head in ("backbone", "fpn", "rpn", "box_head", "mask_head"):
    assert float(optax_norm(grads[head])) > 0, head
  jax.value_and_grad(loss, has_aux=True)(v["params"], _targets(empty_first=False), jax.random.key(2))  # no retrace
  # Every image empty: the losses stay finite (box and mask terms are 0).
  none = dict(tg, instance_mask=jnp.zeros_like(tg["instance_mask"]))
  (_, parts), _ = jax.value_and_grad(loss, has_aux=True)(v["params"], none, jax.random.key(3))
  assert float(parts["mask"]) == 0 and float(parts["roi_box"]) == 0 and np.isfinite(float(parts["rpn_cls"]))


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(tree)))


@pytest.mark.parametrize("name,pooler", [("rfcn", "align"),  # single-level RPN, dilated conv5, ps_roi_align
                                         pytest.param("faster_rcnn_c4", "align", marks=pytest.mark.slow),
                                         pytest.param("faster_rcnn_fpn", "pool", marks=pytest.mark.slow)])
def test_faster_rcnn_variants_train_and_detect(name, pooler):
  m = models.create(name, num_classes=5, pooler=pooler, **{k: v for k, v in TINY.items() if "mask" not in k})
  x = jnp.zeros((2, 64, 64, 3))
  v = jax.jit(lambda r: m.init({"params": r}, x, train=False))(jax.random.key(0))
  assert not m.with_mask and "mask_head" not in v["params"]
  tg = {k: a for k, a in _targets().items() if k != "masks"}
  out, _ = jax.jit(lambda v, tg: m.apply(v, x, train=True, targets=tg, rng=jax.random.key(0),
                                         mutable=["batch_stats"]))(v, tg)
  assert "mask" not in out and np.isfinite(float(out["total"]))
  det = jax.jit(lambda v: m.apply(v, x, train=False))(v)
  assert "masks" not in det and det["boxes"].shape == (2, 10, 4)


def test_bad_inputs_are_clear_errors(mask_rcnn):
  m, v, x = mask_rcnn
  shape_of = lambda f: jax.eval_shape(f)  # errors are raised while tracing: nothing runs
  with pytest.raises(ValueError, match=r"images must be \[B, 64, 64, C\]"):
    shape_of(lambda: m.apply(v, jnp.zeros((1, 48, 64, 3)), train=False))
  with pytest.raises(ValueError, match="needs targets"):
    shape_of(lambda: m.apply(v, x, train=True, mutable=["batch_stats"]))
  tg = {k: a for k, a in _targets().items() if k != "masks"}
  with pytest.raises(ValueError, match="needs instance masks"):
    shape_of(lambda: m.apply(v, x, train=True, targets=tg, rng=jax.random.key(0), mutable=["batch_stats"]))
  with pytest.raises(ValueError, match="unknown model 'resnet5'"):
    shape_of(lambda: models.create("mask_rcnn_fpn", num_classes=3, backbone="resnet5", image_size=(64, 64)).init(
        jax.random.key(0), x, train=False))


@pytest.mark.slow  # ~7 s idle (suite time); run with -m slow
def test_deformable_backbone_stages_and_v1_starts_as_the_plain_network():
  """DCN in the ResNet stages of the detector's backbone; zero-initialised offsets (v1) = the plain network."""
  plain = models.create("resnet18", width=8, features_only=True)
  dcn = models.create("resnet18", width=8, features_only=True, deform_stages=(3, 4), deformable=1)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 64, 64, 3)), jnp.float32)
  vp = jax.jit(lambda r: plain.init(r, x, train=False))(jax.random.key(0))
  vd = jax.eval_shape(lambda r: dcn.init(r, x, train=False), jax.random.key(0))
  assert "DeformConv_0" in vd["params"]["stage3_block0"] and "Conv_0" in vd["params"]["stage2_block0"]
  # The plain weights laid out for the DCN net (offset convs stay zero; what --pretrain_steps / --backbone_checkpoint
  # do for --deformable=v1|v2): same features.
  from research.train.detection import flax_flatten, flax_unflatten, plain_to_deformable
  target = flax_flatten(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), vd["params"]))
  flat = plain_to_deformable(flax_flatten(vp["params"]), target)
  assert {k: np.shape(a) for k, a in flat.items()} == {k: np.shape(a) for k, a in target.items()}
  params = flax_unflatten(flat)
  np.testing.assert_array_equal(params["stage3_block0"]["DeformConv_0"]["kernel"],
                                vp["params"]["stage3_block0"]["Conv_0"]["kernel"])
  assert plain_to_deformable(flax_flatten(vp["params"]), flax_flatten(vp["params"])) == flax_flatten(vp["params"])
  fp = jax.jit(lambda v: plain.apply(v, x, train=False))(vp)
  fd = jax.jit(lambda v: dcn.apply(v, x, train=False))({"params": params, "batch_stats": vp["batch_stats"]})
  chex.assert_trees_all_close(fp["C5"], fd["C5"], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_backbone_initialised_from_a_classification_checkpoint(tmp_path):
  """--backbone_checkpoint: every backbone weight and BN statistic comes from the classifier (head dropped)."""
  import orbax.checkpoint as ocp
  from research.train import detection as D
  cls = models.create("resnet18", width=8, num_classes=7)
  v = jax.jit(lambda r: cls.init(r, jnp.zeros((1, 32, 32, 3)), train=False))(jax.random.key(5))
  v = jax.tree.map(lambda a: a + 0.5, v)  # recognisable values
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "ckpts" / "10" / "state", {"params": v["params"], "model_state": {"batch_stats": v["batch_stats"]}})
  cfg = D.DetectionConfig(model="faster_rcnn_fpn", backbone_width=8, image_size=64, fpn_channels=16, representation=32)
  task = D.DetectionTask(D.make_model(cfg, 3), cfg)
  params, state = D.pretrained_variables(task, (64, 64, 3), str(tmp_path / "ckpts"))
  chex.assert_trees_all_close(params["backbone"], {k: a for k, a in v["params"].items() if k != "head"})
  chex.assert_trees_all_close(state["batch_stats"]["backbone"], v["batch_stats"])
  assert "fpn" in params and "rpn" in params


@pytest.mark.slow  # ~12 s idle (suite time); run with -m slow
def test_deformable_roi_pooling_box_head_starts_as_roialign_and_learns_offsets():
  """pooler='deform' (Dai et al. 2017 §2.2): the zero-initialised offset fc makes the detector equal to the RoIAlign
  one at init; the offset branch gets gradient from the detection loss; R-FCN refuses it (one clear error)."""
  kw = {k: v for k, v in TINY.items() if "mask" not in k}
  deform = models.create("faster_rcnn_fpn", num_classes=5, pooler="deform", **kw)
  align = models.create("faster_rcnn_fpn", num_classes=5, pooler="align", **kw)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
  v = jax.jit(lambda r: deform.init({"params": r}, x, train=False))(jax.random.key(0))
  offset_params = v["params"]["deform_roi_pool"]
  assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(offset_params))  # the paper's single zero fc
  va = {"params": {k: p for k, p in v["params"].items() if k != "deform_roi_pool"}, "batch_stats": v["batch_stats"]}
  dd, da = jax.jit(lambda v: deform.apply(v, x, train=False))(v), jax.jit(lambda v: align.apply(v, x, train=False))(va)
  chex.assert_trees_all_close(dd, da, atol=1e-5, rtol=1e-5)
  tg = {k: a for k, a in _targets().items() if k != "masks"}

  def loss(p):
    out, _ = deform.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True, targets=tg,
                          rng=jax.random.key(0), mutable=["batch_stats"])
    return out["total"]

  total, grads = jax.jit(jax.value_and_grad(loss))(v["params"])
  assert np.isfinite(float(total)) and float(optax_norm(grads["deform_roi_pool"])) > 0
  with pytest.raises(ValueError, match="pooler='deform'"):
    rfcn = models.create("rfcn", num_classes=5, pooler="deform", **kw)
    jax.eval_shape(lambda r: rfcn.init(r, x, train=False), jax.random.key(0))
