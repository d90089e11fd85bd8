"""Segmentation networks (FCN, PSPNet, DeepLabV3, GCN): shapes at every output stride, backbone strides, the pyramid
pooling / GCN / BR / ASPP / multi-grid pieces against numpy references, BatchNorm updates, errors, parameter counts
against torchvision, and a short overfit run."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import models
from research.models.segmentation import heads  # registers the family (also imported by research.models)

TINY = {"width": 8}


def _init_shapes(model, shape, **kw):
  return jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros(shape), train=False, **kw))


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _numpy_init(model, *args, seed=0, **kw):
  """Variables without compiling ``init``: He-normal kernels, zero biases, BN scale 1 (shapes from eval_shape)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kw))
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name == "kernel":
      return jnp.asarray(rng.normal(size=s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1])), s.dtype)
    return jnp.ones(s.shape, s.dtype) if name in ("scale", "var") else jnp.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _conv2d_ref(x, w, b=None, dilation=(1, 1)):
  """float64 'same' zero-padded conv: x [B, H, W, Ci], w [kh, kw, Ci, Co] (odd kernels)."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  kh, kw = w.shape[:2]
  ph, pw = (kh - 1) // 2 * dilation[0], (kw - 1) // 2 * dilation[1]
  xp = np.pad(x, [(0, 0), (ph, ph), (pw, pw), (0, 0)])
  out = np.zeros(x.shape[:3] + (w.shape[3],))
  for i in range(kh):
    for j in range(kw):
      di, dj = i * dilation[0], j * dilation[1]
      out += np.einsum("bhwc,cd->bhwd", xp[:, di:di + x.shape[1], dj:dj + x.shape[2]], w[i, j])
  return out if b is None else out + np.asarray(b, np.float64)


def test_registered_in_segmentation_family():
  assert set(heads.SEGMENTERS) <= set(models.names("segmentation"))
  assert isinstance(models.create("pspnet", num_classes=3), heads.PSPNet)
  assert models.create("gcn_seg", num_classes=3).output_stride == 32  # its natural setting (no dilation)


@pytest.mark.parametrize("name,backbone,output_stride", [
    *[(n, "resnet18", s) for n in heads.SEGMENTERS for s in (8, 16)], ("gcn_seg", "resnet18", 32),
    ("pspnet", "resnet34", 16), ("deeplabv3", "drn_a_50", 8), ("fcn", "drn_c_26", 8)])
def test_output_shapes_and_backbone_stride(name, backbone, output_stride):
  kw = {} if backbone == "drn_c_26" else {"backbone_kwargs": TINY}
  model = models.create(name, num_classes=5, backbone=backbone, output_stride=output_stride, **kw)
  out, state = _init_shapes(model, (2, 64, 48, 3), capture_intermediates=lambda m, _: m.name == "backbone")
  chex.assert_shape(out["logits"], (2, 64, 48, 5))
  assert out["logits"].dtype == jnp.float32
  assert ("aux_logits" in out) == (name == "pspnet")
  if name == "pspnet":
    chex.assert_shape(out["aux_logits"], (2, 64, 48, 5))
  assert "batch_stats" in state and "backbone" in state["params"]
  # the backbone's last feature map really has stride output_stride; stage 3 (conv4) min(16, output_stride)
  feats = state["intermediates"]["backbone"]["__call__"][0]
  last, aux = ("stage8", "stage5") if backbone == "drn_c_26" else ("stage4", "stage3")
  ceil = lambda n, s: -(-n // s)  # every stride-2 layer pads to ceil(n / 2)
  chex.assert_shape(feats[last], (2, ceil(64, output_stride), ceil(48, output_stride), None))
  s3 = min(output_stride, 16)
  chex.assert_shape(feats[aux], (2, ceil(64, s3), ceil(48, s3), None))


def test_aux_head_on_request_and_odd_input_sizes():
  for name in ("fcn", "deeplabv3", "gcn_seg"):
    model = models.create(name, num_classes=4, output_stride=16, aux_head=True, backbone_kwargs=TINY)
    out, _ = _init_shapes(model, (1, 37, 45, 3))  # not multiples of 16: final resize to the input size
    chex.assert_shape([out["logits"], out["aux_logits"]], (1, 37, 45, 4))
  out, _ = _init_shapes(models.create("pspnet", num_classes=4, aux_head=False, backbone_kwargs=TINY), (1, 32, 32, 3))
  assert set(out) == {"logits"}


def _adaptive_pool_ref(x, b):
  """PyTorch AdaptiveAvgPool2d by loops: bin i spans [floor(i*H/b), ceil((i+1)*H/b))."""
  bsz, h, w, c = x.shape
  out = np.zeros((bsz, b, b, c))
  for i in range(b):
    for j in range(b):
      h0, h1 = (i * h) // b, -(-((i + 1) * h) // b)
      w0, w1 = (j * w) // b, -(-((j + 1) * w) // b)
      out[:, i, j] = x[:, h0:h1, w0:w1].astype(np.float64).mean(axis=(1, 2))
  return out


@pytest.mark.parametrize("hw", [(12, 12), (13, 10), (5, 7)])  # 13/6, 10/6, 5/6: overlapping bins, H < bins
def test_pyramid_pool_matches_adaptive_average_pooling(hw):
  x = np.random.default_rng(0).normal(size=(2,) + hw + (3,)).astype(np.float32)
  for b in (1, 2, 3, 6):
    chex.assert_trees_all_close(np.asarray(heads.pyramid_pool(jnp.asarray(x), b)), _adaptive_pool_ref(x, b),
                                atol=1e-5)


def test_pyramid_pooling_module_branches():
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 8))
  ppm = heads.PyramidPooling(reduction=2)
  variables = _numpy_init(ppm, x, train=False)
  y, state = jax.jit(lambda v: ppm.apply(v, x, train=False, capture_intermediates=True))(variables)
  chex.assert_shape(y, (2, 12, 12, 8 + 4 * 2))
  chex.assert_trees_all_close(y[..., :8], x)  # concatenated with the features
  xn = np.asarray(x)
  for k, b in enumerate((1, 2, 3, 6)):
    w = variables["params"][f"bin{b}"]["conv"]["kernel"][0, 0]
    want = np.maximum(_adaptive_pool_ref(xn, b) @ np.asarray(w, np.float64) / np.sqrt(1 + 1e-5), 0)  # BN at init
    got = state["intermediates"][f"bin{b}"]["__call__"][0]
    chex.assert_trees_all_close(np.asarray(got), want, atol=1e-5)
    # bilinear upsampling of a b x b map; bin 1 is a constant map
    up = y[..., 8 + 2 * k:8 + 2 * (k + 1)]
    chex.assert_trees_all_close(up, heads.resize_bilinear(got, (12, 12)))
    if b == 1:
      chex.assert_trees_all_close(up, jnp.broadcast_to(got, up.shape), atol=1e-6)


def test_gcn_block_matches_float64_separable_convolution():
  x = np.random.default_rng(1).normal(size=(2, 9, 11, 4)).astype(np.float32)
  block = heads.GCNBlock(features=3, kernel_size=5)
  variables = _numpy_init(block, jnp.asarray(x))
  p = jax.tree.map(np.asarray, variables["params"])
  for i, n in enumerate(sorted(p)):  # non-zero biases so the border handling of the intermediate map is tested too
    p[n]["bias"] = np.random.default_rng(i).normal(size=3).astype(np.float32)
  chex.assert_shape(p["left_kx1"]["kernel"], (5, 1, 4, 3))
  chex.assert_shape(p["left_1xk"]["kernel"], (1, 5, 3, 3))
  got = block.apply({"params": p}, jnp.asarray(x))
  left = _conv2d_ref(_conv2d_ref(x, p["left_kx1"]["kernel"], p["left_kx1"]["bias"]),
                     p["left_1xk"]["kernel"], p["left_1xk"]["bias"])
  right = _conv2d_ref(_conv2d_ref(x, p["right_1xk"]["kernel"], p["right_1xk"]["bias"]),
                      p["right_kx1"]["kernel"], p["right_kx1"]["bias"])
  chex.assert_trees_all_close(np.asarray(got, np.float64), left + right, atol=1e-4, rtol=1e-4)
  # without biases the module is one k x k conv whose kernel is sum of two rank-structured kernels
  for n in p:
    p[n]["bias"] = np.zeros(3, np.float32)
  full = (np.einsum("iac,jcd->ijad", p["left_kx1"]["kernel"][:, 0], p["left_1xk"]["kernel"][0])
          + np.einsum("jac,icd->ijad", p["right_1xk"]["kernel"][0], p["right_kx1"]["kernel"][:, 0]))
  chex.assert_trees_all_close(np.asarray(block.apply({"params": p}, jnp.asarray(x)), np.float64),
                              _conv2d_ref(x, full), atol=1e-4, rtol=1e-4)


def test_gcn_kernel_size_rule():
  assert heads.gcn_kernel_size(15, 16, 16) == 15  # the paper: k = 15 on the 16 x 16 res-5 map of a 512 input
  assert heads.gcn_kernel_size(15, 128, 128) == 15
  assert heads.gcn_kernel_size(15, 8, 9) == 7
  assert heads.gcn_kernel_size(15, 2, 2) == 1
  assert heads.gcn_kernel_size(15, 2, 2, adapt=False) == 15
  model = models.create("gcn_seg", num_classes=3, backbone_kwargs=TINY)
  _, variables = _init_shapes(model, (1, 128, 128, 3))  # stages 32/16/8/4 pixels -> k = 15/15/7/3
  ks = [variables["params"][f"gcn{i}"]["left_kx1"]["kernel"].shape[0] for i in (2, 3, 4, 5)]
  assert ks == [15, 15, 7, 3]


def test_boundary_refinement_is_residual():
  x = jax.random.normal(jax.random.key(0), (1, 6, 7, 3))
  br = heads.BoundaryRefinement()
  variables = _numpy_init(br, x)
  p = jax.tree.map(np.asarray, variables["params"])
  hidden = np.maximum(_conv2d_ref(x, p["conv1"]["kernel"], p["conv1"]["bias"]), 0)
  want = np.asarray(x, np.float64) + _conv2d_ref(hidden, p["conv2"]["kernel"], p["conv2"]["bias"])
  chex.assert_trees_all_close(np.asarray(br.apply(variables, x), np.float64), want, atol=1e-5)
  zero = jax.tree.map(np.zeros_like, p)
  chex.assert_trees_all_close(br.apply({"params": zero}, x), x)  # zero branch -> identity


def test_gcn_ablation_switches():
  kw = dict(num_classes=4, backbone_kwargs=TINY)
  _, full = _init_shapes(models.create("gcn_seg", **kw), (1, 64, 64, 3))
  _, small = _init_shapes(models.create("gcn_seg", large_kernel=False, **kw), (1, 64, 64, 3))
  _, nobr = _init_shapes(models.create("gcn_seg", boundary_refinement=False, upsample="bilinear", **kw),
                         (1, 64, 64, 3))
  assert set(full["params"]["gcn5"]) == {"left_kx1", "left_1xk", "right_1xk", "right_kx1"}
  chex.assert_shape(small["params"]["gcn5"]["kernel"], (3, 3, 64, 4))  # a plain 3x3 conv, same output
  assert sum(k.startswith("br") for k in full["params"]) == 9  # 4 stages + 3 fusions + 2 full-resolution steps
  assert not any(k.startswith(("br", "up")) for k in nobr["params"])
  out, _ = _init_shapes(models.create("gcn_seg", channels=16, output_stride=16, **kw), (1, 64, 64, 3))
  chex.assert_shape(out["logits"], (1, 64, 64, 4))


def test_deconv_upsample_is_bilinear_in_the_interior():
  x = jax.random.normal(jax.random.key(0), (1, 6, 7, 3))
  up = heads.Upsample("deconv")
  variables = up.init(jax.random.key(1), x, (12, 14))  # deterministic bilinear kernel, no random init
  y = up.apply(variables, x, (12, 14))
  chex.assert_trees_all_close(y[:, 1:-1, 1:-1], heads.resize_bilinear(x, (12, 14))[:, 1:-1, 1:-1], atol=1e-5)
  chex.assert_shape(up.apply(variables, x, (13, 13)), (1, 13, 13, 3))  # not an exact 2x: resized after the deconv


def test_resize_bilinear_is_half_pixel():
  x = jnp.arange(4.0).reshape(1, 1, 4, 1)
  # PyTorch align_corners=False, 4 -> 8: src = (dst + 0.5) / 2 - 0.5, clamped at the borders
  want = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]
  chex.assert_trees_all_close(heads.resize_bilinear(x, (1, 8))[0, 0, :, 0], jnp.array(want))
  chex.assert_trees_all_close(heads.resize_bilinear(x, (1, 2))[0, 0, :, 0], jnp.array([0.5, 2.5]))  # no antialias


def test_aspp_rates_and_receptive_fields():
  assert heads.aspp_rates((6, 12, 18), 16) == (6, 12, 18)
  assert heads.aspp_rates((6, 12, 18), 8) == (12, 24, 36)  # doubled at output stride 8 (§3.3)
  seen = {}

  def record(f, args, kwargs, context):
    if isinstance(context.module, heads.ASPP):
      seen[context.module.parent.output_stride] = tuple(context.module.rates)
    return f(*args, **kwargs)

  with nn.intercept_methods(record):
    for s in (8, 16):
      _init_shapes(models.create("deeplabv3", num_classes=3, output_stride=s, backbone_kwargs=TINY), (1, 32, 32, 3))
  assert seen == {8: (12, 24, 36), 16: (6, 12, 18)}
  # a delta input reaches branch i's pre-BN output exactly at the 3x3 taps spaced by its rate
  size, c = 75, 37
  x = jnp.zeros((1, size, size, 2)).at[0, c, c].set(jnp.array([1.0, -0.7]))
  aspp = heads.ASPP(channels=3, rates=(12, 24, 36))
  variables = _numpy_init(aspp, x, train=False)
  _, state = jax.jit(lambda v: aspp.apply(v, x, train=False, capture_intermediates=True))(variables)
  for i, r in enumerate((12, 24, 36)):
    y = np.asarray(state["intermediates"][f"branch{i + 1}"]["conv"]["__call__"][0])
    rows, cols = np.nonzero(np.abs(y[0]).sum(-1) > 1e-7)
    assert set(zip(rows.tolist(), cols.tolist())) == {(c + a * r, c + b * r) for a in (-1, 0, 1) for b in (-1, 0, 1)}
  y0 = np.asarray(state["intermediates"]["branch0"]["conv"]["__call__"][0])
  assert set(zip(*[v.tolist() for v in np.nonzero(np.abs(y0[0]).sum(-1) > 1e-7)])) == {(c, c)}  # the 1x1 branch


def _block_dilations(model, shape):
  """{(block name): dilation of its 3x3 conv(s)} recorded while tracing ``model``."""
  seen = {}

  def record(f, args, kwargs, context):
    m = context.module
    if isinstance(m, nn.Conv) and m.kernel_size == (3, 3) and m.parent is not None and "block" in (m.parent.name or ""):
      seen.setdefault(m.parent.name, set()).add(m.kernel_dilation)
    return f(*args, **kwargs)

  with nn.intercept_methods(record):
    _init_shapes(model, shape)
  return seen


def test_multi_grid_dilations():
  bb = models.create("resnet50", features_only=True, width=8, stage_dilations=(1, 1, 1, 2), multi_grid=(1, 2, 4))
  d = _block_dilations(bb, (1, 32, 32, 3))
  assert [d[f"stage4_block{j}"] for j in range(3)] == [{(2, 2)}, {(4, 4)}, {(8, 8)}]  # rate 2 x (1, 2, 4)
  assert all(d[f"stage3_block{j}"] == {(1, 1)} for j in range(6))
  # DeepLabV3 default multi-grid (1, 2, 4) on the last stage; at OS 8 stage 3 keeps dilation 2
  d = _block_dilations(models.create("deeplabv3", num_classes=3, backbone="resnet50", backbone_kwargs=TINY),
                       (1, 32, 32, 3))
  assert [d[f"stage4_block{j}"] for j in range(3)] == [{(4, 4)}, {(8, 8)}, {(16, 16)}]
  assert all(d[f"stage3_block{j}"] == {(2, 2)} for j in range(6))
  # fewer blocks than grid entries: the grid repeats cyclically (ResNet-18: 2 blocks -> (1, 2))
  d = _block_dilations(models.create("deeplabv3", num_classes=3, output_stride=16, backbone_kwargs=TINY),
                       (1, 32, 32, 3))
  assert [d[f"stage4_block{j}"] for j in range(2)] == [{(2, 2)}, {(4, 4)}]
  # the default (1,) is the plain network; other segmenters do not use multi-grid
  d = _block_dilations(models.create("pspnet", num_classes=3, backbone_kwargs=TINY), (1, 32, 32, 3))
  assert [d[f"stage4_block{j}"] for j in range(2)] == [{(4, 4)}, {(4, 4)}]
  with pytest.raises(ValueError, match="multi_grid"):
    _init_shapes(models.create("resnet18", features_only=True, multi_grid=(0,)), (1, 32, 32, 3))


# fcn: test_overfits_one_batch; gcn_seg's head has no BatchNorm (its backbone's BN is the one checked here)
@pytest.mark.parametrize("name", ["pspnet", "deeplabv3"])
def test_train_mode_updates_every_batch_stat(name):
  model = models.create(name, num_classes=3, output_stride=16, backbone_kwargs=TINY)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = _numpy_init(model, x, train=False)
  out, updates = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
  chex.assert_tree_all_finite(out)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed)), "train mode must update every BatchNorm's running statistics"


def test_bfloat16_compute_float32_params_and_logits():
  model = models.create("deeplabv3", num_classes=3, backbone_kwargs=TINY, dtype=jnp.bfloat16)
  out, variables = _init_shapes(model, (1, 32, 32, 3))
  assert out["logits"].dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))


def test_bad_settings_raise_value_errors():
  with pytest.raises(ValueError, match="output_stride=4"):
    models.create("pspnet", num_classes=3, output_stride=4)
  with pytest.raises(ValueError, match="drn_c_26.*fixed output stride of 8"):
    models.create("deeplabv3", num_classes=3, backbone="drn_c_26", output_stride=16)
  with pytest.raises(ValueError, match="multi_grid"):
    models.create("deeplabv3", num_classes=3, backbone="drn_c_26", multi_grid=(1, 2, 4))
  with pytest.raises(ValueError, match="backbone='mobilenet_v1'.*no dilation control"):
    models.create("fcn", num_classes=3, backbone="mobilenet_v1")
  with pytest.raises(ValueError, match="unknown model 'resnet5'"):
    models.create("fcn", num_classes=3, backbone="resnet5")
  with pytest.raises(ValueError, match="backbone_kwargs must not set"):
    models.create("fcn", num_classes=3, backbone_kwargs={"stage_dilations": (1, 1, 1, 1)})
  with pytest.raises(ValueError, match="does not accept backbone_kwargs"):
    models.create("fcn", num_classes=3, backbone_kwargs={"no_such_field": 1})
  with pytest.raises(ValueError, match="output_stride"):  # direct construction is checked at trace time
    _init_shapes(heads.FCN(num_classes=3, output_stride=12), (1, 32, 32, 3))
  with pytest.raises(ValueError, match="kernel_size=4"):
    _init_shapes(models.create("gcn_seg", num_classes=3, kernel_size=4, backbone_kwargs=TINY), (1, 32, 32, 3))
  with pytest.raises(ValueError, match="upsample="):
    _init_shapes(models.create("gcn_seg", num_classes=3, upsample="nearest", backbone_kwargs=TINY), (1, 32, 32, 3))
  with pytest.raises(ValueError, match=r"x must be \[B, H, W, C\]"):
    _init_shapes(models.create("fcn", num_classes=3, backbone_kwargs=TINY), (32, 32, 3))


def test_parameter_counts_resnet50_21_classes():
  """Closed forms of the papers' heads; FCN + aux = torchvision ``fcn_resnet50`` (35,322,218) and DeepLabV3 + the
  extra 3x3 conv-BN of torchvision's DeepLabHead + aux = torchvision ``deeplabv3_resnet50`` (42,004,074)."""
  backbone = 23_508_032  # ResNet-50 without its 1000-way fc
  fcn_head = lambda d, c: 9 * d * c + 2 * c + c * 21 + 21  # 3x3 conv, BN (gamma, beta), classifier
  counts = {}
  for name, kw in [("fcn", dict(aux_head=True)), ("pspnet", {}), ("deeplabv3", dict(aux_head=True)),
                   ("gcn_seg", {})]:
    model = models.create(name, num_classes=21, backbone="resnet50", **kw)
    size = 512 if name == "gcn_seg" else 64  # the GCN kernel (k = 15 everywhere) depends on the map sizes
    counts[name] = _count(_init_shapes(model, (1, size, size, 3))[1]["params"])
  aux = fcn_head(1024, 256)
  assert counts["fcn"] == backbone + fcn_head(2048, 512) + aux == 35_322_218
  ppm = 4 * (2048 * 512 + 2 * 512)
  assert counts["pspnet"] == backbone + ppm + fcn_head(4096, 512) + aux == 48_957_802
  aspp = (2048 * 256 + 3 * 9 * 2048 * 256 + 2048 * 256) + 5 * 2 * 256 + (5 * 256 * 256 + 2 * 256)
  assert counts["deeplabv3"] == backbone + aspp + 256 * 21 + 21 + aux
  assert counts["deeplabv3"] + 9 * 256 * 256 + 2 * 256 == 42_004_074
  gcn = sum(2 * (15 * d * 21 + 21 + 15 * 21 * 21 + 21) for d in (256, 512, 1024, 2048))  # k = 15 on every level
  br = 9 * 2 * (9 * 21 * 21 + 21)
  deconv = 5 * 16 * 21 * 21
  assert counts["gcn_seg"] == backbone + gcn + br + deconv == 26_087_588


@pytest.mark.slow  # ~15 s CPU; tests/segmentation/test_segmentation_task.py trains through the loop by default
def test_overfits_one_batch():
  """The dilated FCN (+ an aux head, loss weight 0.4 as PSPNet's) on one batch of 2 images whose 4 classes are
  colour-coded blocks: 30 Adam steps."""
  rng = np.random.default_rng(0)
  labels = np.kron(rng.integers(0, 4, (2, 4, 4)), np.ones((8, 8), np.int64))  # [2, 32, 32], 8x8 blocks
  colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)
  images = jnp.asarray(colours[labels] + 0.1 * rng.normal(size=labels.shape + (3,)).astype(np.float32))
  labels = jnp.asarray(labels)
  model = models.create("fcn", num_classes=4, aux_head=True, backbone_kwargs=TINY)
  variables = _numpy_init(model, images, train=False)
  tx = optax.adam(1e-2)
  params, stats = variables["params"], variables["batch_stats"]
  opt = tx.init(params)

  def loss_fn(p, s):
    out, new = model.apply({"params": p, "batch_stats": s}, images, train=True, mutable=["batch_stats"])
    ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()
    return ce(out["logits"]) + 0.4 * ce(out["aux_logits"]), (new["batch_stats"], out["logits"])

  @jax.jit
  def step(p, s, o):
    (loss, (s, logits)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), s, o, loss, jnp.mean(jnp.argmax(logits, -1) == labels)

  accs = []
  for i in range(30):
    params, new_stats, opt, loss, acc = step(params, stats, opt)
    if i == 0:  # train mode updates every BatchNorm's running statistics
      changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, new_stats)
      assert all(jax.tree.leaves(changed))
    stats = new_stats
    accs.append(float(acc))
  assert np.isfinite(float(loss))
  assert accs[0] < 0.6 and max(accs[-5:]) > 0.9, accs  # chance is 0.25
