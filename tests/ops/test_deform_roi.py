"""Deformable RoIAlign (op and layers) against a float64 numpy loop reference, roi_align and finite differences."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import ops
from research.layers.deform_roi import DeformRoIAlign, MultiLevelDeformRoIAlign, multilevel_deform_roi_align
from research.layers.roi import fpn_levels, multilevel_roi_align
from research.ops.deform_roi import deform_roi_align, deform_roi_align_multilevel

SIZE = (2, 3)


# ----------------------------------------------------------------------------------------------------------
# float64 numpy loop reference, written from the semantics (RoIAlign sampling, bins translated by offsets)
# ----------------------------------------------------------------------------------------------------------
def _bilinear(img, y, x, stats):
  h, w = img.shape[:2]
  if y < -1.0 or y > h or x < -1.0 or x > w:
    stats["outside"] += 1
    return np.zeros(img.shape[2])
  y, x = max(y, 0.0), max(x, 0.0)
  y0, x0 = int(np.floor(y)), int(np.floor(x))
  if y0 >= h - 1:
    y0 = y1 = h - 1
    y = float(y0)
    stats["clamped"] += 1
  else:
    y1 = y0 + 1
  if x0 >= w - 1:
    x0 = x1 = w - 1
    x = float(x0)
    stats["clamped"] += 1
  else:
    x1 = x0 + 1
  ly, lx = y - y0, x - x0
  hy, hx = 1.0 - ly, 1.0 - lx
  return hy * hx * img[y0, x0] + hy * lx * img[y0, x1] + ly * hx * img[y1, x0] + ly * lx * img[y1, x1]


def _np_deform_roi_align(f, boxes, idx, offsets, output_size, scale, sr, aligned, stats=None):
  stats = {"outside": 0, "clamped": 0} if stats is None else stats
  f, boxes, offsets = (np.asarray(a, np.float64) for a in (f, boxes, offsets))
  n, _, _, c = f.shape
  ph, pw = output_size
  out = np.zeros((len(boxes), ph, pw, c))
  for k in range(len(boxes)):
    if not np.all(np.isfinite(boxes[k])) or not 0 <= idx[k] < n:
      continue
    sh = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = [v * scale - sh for v in boxes[k]]
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
      rw, rh = max(rw, 1.0), max(rh, 1.0)
    bh, bw = rh / ph, rw / pw
    for i in range(ph):
      for j in range(pw):
        sy = y1 + offsets[k, i, j, 1] * scale + i * bh
        sx = x1 + offsets[k, i, j, 0] * scale + j * bw
        acc = np.zeros(c)
        for iy in range(sr):
          for ix in range(sr):
            acc += _bilinear(f[idx[k]], sy + (iy + 0.5) * bh / sr, sx + (ix + 0.5) * bw / sr, stats)
        out[k, i, j] = acc / (sr * sr)
  return out


def _inputs(k=9, n=2, h=7, w=8, c=3, seed=0, offset_std=3.0):
  rng = np.random.default_rng(seed)
  f = rng.normal(size=(n, h, w, c))
  xy = rng.uniform(-4, 9, size=(k, 2))  # some boxes partly outside the map
  wh = rng.uniform(0.5, 7, size=(k, 2))
  boxes = np.concatenate([xy, xy + wh], 1)
  idx = rng.integers(0, n, k).astype(np.int32)
  offsets = rng.normal(size=(k,) + SIZE + (2,)) * offset_std  # pushes some samples out of the map
  return f, boxes, idx, offsets


@pytest.mark.parametrize("sr, scale, aligned", [(2, 1.0, True), (1, 0.5, False), (3, 0.5, True)])
def test_matches_numpy_loops(sr, scale, aligned):
  f, boxes, idx, off = _inputs()
  off[0] = [-40.0, 50.0]  # the whole box far outside: 0
  boxes[1] = [-6.0, 2.0, 3.0, 20.0]  # taller than the map: clamped at the last row
  with jax.enable_x64(True):
    out = deform_roi_align(f, boxes, idx, off, SIZE, spatial_scale=scale, sampling_ratio=sr, aligned=aligned)
    assert out.dtype == jnp.float64 and out.shape == (9,) + SIZE + (3,)
  stats = {"outside": 0, "clamped": 0}
  want = _np_deform_roi_align(f, boxes, idx, off, SIZE, scale, sr, aligned, stats)
  np.testing.assert_allclose(np.asarray(out), want, rtol=0, atol=1e-10)
  assert stats["outside"] > 0 and stats["clamped"] > 0 and np.all(want[0] == 0)
  assert np.abs(want[2:]).max(axis=(1, 2, 3)).min() > 0


def test_invalid_boxes_give_zero():
  f, boxes, idx, off = _inputs(k=4)
  boxes[0, 1] = np.nan
  idx[1] = 7
  off[2, 0, 0, 0] = np.inf  # a non-finite offset counts as 0
  with jax.enable_x64(True):
    fn = lambda f, o: deform_roi_align(f, boxes, idx, o, SIZE, sampling_ratio=2)
    out = np.asarray(fn(f, off))
    g = jax.grad(lambda f, o: jnp.sum(fn(f, o) ** 2), argnums=(0, 1))(jnp.asarray(f), jnp.asarray(off))
  assert np.all(out[:2] == 0) and np.abs(out[2:]).max() > 0
  off_fixed = off.copy()
  off_fixed[2, 0, 0, 0] = 0.0
  np.testing.assert_allclose(out, _np_deform_roi_align(f, boxes, idx, off_fixed, SIZE, 1.0, 2, True), atol=1e-10)
  assert all(np.all(np.isfinite(np.asarray(a))) for a in g)


def test_zero_offsets_equal_roi_align():
  f, boxes, idx, _ = _inputs(seed=1)
  zero = np.zeros((len(boxes),) + SIZE + (2,))
  with jax.enable_x64(True):
    for scale, aligned in ((1.0, True), (0.5, False)):
      a = deform_roi_align(f, boxes, idx, zero, SIZE, spatial_scale=scale, sampling_ratio=2, aligned=aligned)
      b = ops.roi_align(f, boxes, idx, SIZE, spatial_scale=scale, sampling_ratio=2, aligned=aligned,
                        impl="reference")
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12)
  if ops.ffi_available():
    f32, b32 = f.astype(np.float32), boxes.astype(np.float32)
    a = deform_roi_align(f32, b32, idx, zero.astype(np.float32), SIZE, spatial_scale=0.5, sampling_ratio=2)
    b = ops.roi_align(f32, b32, idx, SIZE, spatial_scale=0.5, sampling_ratio=2, impl="ffi")
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_gradients_finite_differences():
  """<g, (F(x + eps v) - F(x - eps v)) / 2 eps> == <J^T g, v> for features, offsets and boxes (float64)."""
  f, boxes, idx, off = _inputs(k=5, h=6, w=7, c=2, seed=2)
  rng = np.random.default_rng(3)
  eps = 1e-6
  with jax.enable_x64(True):
    fn = lambda f, o, b: deform_roi_align(f, b, idx, o, SIZE, spatial_scale=0.5, sampling_ratio=2)
    primals = (jnp.asarray(f), jnp.asarray(off), jnp.asarray(boxes))
    out, vjp = jax.vjp(fn, *primals)
    for _ in range(3):
      g = rng.normal(size=out.shape)
      grads = vjp(jnp.asarray(g))
      for arg in range(3):
        v = rng.normal(size=primals[arg].shape)
        plus = list(primals)
        minus = list(primals)
        plus[arg] = primals[arg] + eps * v
        minus[arg] = primals[arg] - eps * v
        fd = np.sum(g * (np.asarray(fn(*plus)) - np.asarray(fn(*minus)))) / (2 * eps)
        got = float(np.sum(np.asarray(grads[arg]) * v))
        assert abs(got) > 1e-3
        np.testing.assert_allclose(got, fd, rtol=1e-6, err_msg=f"argument {arg}")


def test_jit_traces_once_and_vmap_over_offsets():
  f, boxes, idx, off = _inputs(k=4, seed=4)
  f, boxes, off = f.astype(np.float32), boxes.astype(np.float32), off.astype(np.float32)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(f, b, i, o):
    return deform_roi_align(f, b, i, o, SIZE, spatial_scale=0.5, sampling_ratio=2)

  a = fn(f, boxes, idx, off)
  b = fn(f + 1, boxes + 1, idx[::-1].copy(), off * 2)
  np.testing.assert_allclose(np.asarray(b), _np_deform_roi_align(f + 1, boxes + 1, idx[::-1], off * 2, SIZE, 0.5, 2,
                                                                 True), rtol=1e-4, atol=1e-4)
  batch = np.stack([off, -off, off * 0.5])
  outs = jax.vmap(lambda o: fn(f, boxes, idx, o))(batch)
  assert outs.shape == (3, 4) + SIZE + (3,)
  np.testing.assert_allclose(np.asarray(outs[0]), np.asarray(a), rtol=1e-6, atol=1e-6)
  for s in range(3):
    np.testing.assert_allclose(np.asarray(outs[s]), _np_deform_roi_align(f, boxes, idx, batch[s], SIZE, 0.5, 2, True),
                               rtol=1e-4, atol=1e-4)


def test_bad_arguments():
  f, boxes, idx, off = _inputs(k=5)
  with pytest.raises(ValueError, match=r"offsets.*\(5, 2, 3, 2\).*\(5, 2, 3, 1\)"):
    deform_roi_align(f, boxes, idx, off[..., :1], SIZE)
  with pytest.raises(ValueError, match=r"offsets.*\(5, 3, 2, 2\)"):
    deform_roi_align(f, boxes, idx, off.transpose(0, 2, 1, 3), SIZE)
  for sr in (0, -1):
    with pytest.raises(ValueError, match="sampling_ratio"):
      deform_roi_align(f, boxes, idx, off, SIZE, sampling_ratio=sr)
  with pytest.raises(ValueError, match=r"boxes.*\(5, 3\)"):
    deform_roi_align(f, boxes[:, :3], idx, off, SIZE)
  with pytest.raises(ValueError, match="share N, C"):
    deform_roi_align_multilevel([f, f[..., :2]], boxes, idx, idx, off, SIZE, spatial_scales=(1.0, 0.5))
  with pytest.raises(ValueError, match="distinct"):
    multilevel_deform_roi_align([f, f], (4, 4), boxes, idx, off, SIZE)


# ----------------------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------------------
def test_deform_roi_align_layer():
  f, boxes, idx, _ = _inputs(seed=5)
  layer = DeformRoIAlign(output_size=SIZE, sampling_ratio=2, gamma=0.1)
  with jax.enable_x64(True):
    params = layer.init(jax.random.key(0), f, boxes, idx, spatial_scale=0.5)["params"]
    assert params["offset_head"]["offset_fc"]["kernel"].shape == (2 * 3 * 3, 2 * 3 * 2)
    out, state = layer.apply({"params": params}, f, boxes, idx, spatial_scale=0.5, mutable=["intermediates"])
    assert out.shape == (9,) + SIZE + (3,) and out.dtype == jnp.float64
    want = ops.roi_align(f, boxes, idx, SIZE, spatial_scale=0.5, sampling_ratio=2, impl="reference")
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=0, atol=1e-12)
    assert state["intermediates"]["offsets"][0].shape == (9,) + SIZE + (2,)
    assert not np.any(np.asarray(state["intermediates"]["offsets"][0]))
    # the offset branch learns: its gradient is non-zero at initialisation
    g = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, f, boxes, idx, spatial_scale=0.5) ** 2))(params)
    assert float(jnp.abs(g["offset_head"]["offset_fc"]["kernel"]).max()) > 0
    # non-zero offset fc: offsets = gamma * dp_hat * (w, h), then deform_roi_align
    p = jax.tree.map(lambda a: a, params)
    p["offset_head"]["offset_fc"]["kernel"] = jax.random.normal(jax.random.key(1), (18, 12)) * 0.5
    out, state = layer.apply({"params": p}, f, boxes, idx, spatial_scale=0.5, mutable=["intermediates"])
    dp_hat = np.asarray(state["intermediates"]["normalized_offsets"][0])
    offsets = 0.1 * dp_hat * np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], -1)[:, None, None]
    np.testing.assert_allclose(np.asarray(state["intermediates"]["offsets"][0]), offsets, rtol=1e-12)
    assert np.abs(offsets).max() > 0.3
  np.testing.assert_allclose(np.asarray(out), _np_deform_roi_align(f, boxes, idx, offsets, SIZE, 0.5, 2, True),
                             atol=1e-10)


def test_multilevel_deform_roi_align_layer():
  rng = np.random.default_rng(6)
  strides = (2, 4, 8)
  feats = [rng.normal(size=(2, 32 // s, 40 // s, 3)) for s in strides]
  boxes = np.array([[1, 2, 5, 6], [3, 1, 15, 12], [4, 4, 30, 25], [-2, 3, 40, 33], [6.5, 2.5, 9, 4]], np.float64)
  idx = np.array([0, 1, 1, 0, 1], np.int32)
  kw = dict(canonical_size=16.0, canonical_level=3)
  levels = np.asarray(fpn_levels(jnp.asarray(boxes), 1, 3, **kw)) - 1
  assert sorted(set(levels.tolist())) == [0, 1, 2]
  layer = MultiLevelDeformRoIAlign(output_size=SIZE, strides=strides, sampling_ratio=2, **kw)
  with jax.enable_x64(True):
    params = layer.init(jax.random.key(0), feats, boxes, idx)["params"]
    out = layer.apply({"params": params}, feats, boxes, idx)
    want = multilevel_roi_align(feats, strides, boxes, idx, SIZE, sampling_ratio=2, impl="reference", **kw)
    assert out.shape == (5,) + SIZE + (3,)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=0, atol=1e-12)
    # with predicted offsets, each box equals deform_roi_align on its own level (one gather over the pyramid)
    p = jax.tree.map(lambda a: a, params)
    p["offset_head"]["offset_fc"]["kernel"] = jax.random.normal(jax.random.key(1), (18, 12)) * 0.5
    out, state = jax.jit(lambda p, f: layer.apply({"params": p}, f, boxes, idx, mutable=["intermediates"]))(p, feats)
    offsets = np.asarray(state["intermediates"]["offsets"][0])
    assert np.abs(offsets).max() > 0.3
    g = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, feats, boxes, idx) ** 2))(p)
    assert float(jnp.abs(g["offset_head"]["offset_fc"]["kernel"]).max()) > 0
  for k, l in enumerate(levels):
    want = _np_deform_roi_align(feats[l], boxes[k:k + 1], idx[k:k + 1], offsets[k:k + 1], SIZE, 1 / strides[l], 2,
                                True)
    np.testing.assert_allclose(np.asarray(out[k:k + 1]), want, rtol=0, atol=1e-10)
