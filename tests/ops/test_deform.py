"""deform_conv2d (DCN v1/v2) against a float64 numpy loop reference and lax.conv_general_dilated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import ops_npref as npref
from research import ops

FFI = pytest.param("ffi", marks=pytest.mark.skipif(not ops.ffi_available(), reason="extension not built"))
IMPLS = ["reference", FFI]
# float16 on the reference path is the float32 computation again (as bf16): slow-only there
LOW_PRECISION = [("reference", jnp.bfloat16), pytest.param("reference", jnp.float16, marks=pytest.mark.slow)] + [
    pytest.param("ffi", d, marks=pytest.mark.skipif(not ops.ffi_available(), reason="extension not built"))
    for d in (jnp.bfloat16, jnp.float16)]

# (kh, kw), stride, padding, dilation, groups, offset_groups, Cin, Cout
CONFIGS = [
    ((3, 3), (1, 1), (1, 1), (1, 1), 1, 1, 4, 5),
    ((3, 2), (2, 1), (1, 0), (2, 1), 2, 2, 6, 4),
    ((1, 1), (1, 1), (0, 0), (1, 1), 1, 3, 3, 2),
]


def _inputs(cfg, b=2, h=7, w=6, seed=0, offset_scale=2.0, frac_safe=False):
  (kh, kw), stride, padding, dilation, groups, og, cin, cout = cfg
  rng = np.random.default_rng(seed)
  ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
  wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
  x = rng.normal(size=(b, h, w, cin)).astype(np.float32)
  off = rng.normal(size=(b, ho, wo, og * kh * kw * 2)) * offset_scale
  if frac_safe:  # keep sample positions away from integers so finite differences stay on one linear piece
    off = np.floor(off) + rng.uniform(0.2, 0.8, size=off.shape)
  mask = rng.uniform(0, 1, size=(b, ho, wo, og * kh * kw)).astype(np.float32)
  weight = rng.normal(size=(kh, kw, cin // groups, cout)).astype(np.float32)
  bias = rng.normal(size=(cout,)).astype(np.float32)
  kw_ = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, offset_groups=og)
  return x, off.astype(np.float32), mask, weight, bias, kw_


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_deform_conv2d_matches_numpy(impl, cfg):
  x, off, mask, weight, bias, kw = _inputs(cfg)
  out = ops.deform_conv2d(x, off, weight, mask=mask, bias=bias, impl=impl, **kw)
  want = npref.deform_conv2d(x, off, weight, mask, bias, **kw)
  assert out.shape == want.shape
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-4)
  out_v1 = ops.deform_conv2d(x, off, weight, impl=impl, **kw)  # v1: no mask, no bias
  np.testing.assert_allclose(np.asarray(out_v1), npref.deform_conv2d(x, off, weight, **kw), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cfg", CONFIGS[:2])
def test_zero_offset_unit_mask_is_conv(impl, cfg):
  x, off, mask, weight, bias, kw = _inputs(cfg)
  out = ops.deform_conv2d(x, np.zeros_like(off), weight, mask=np.ones_like(mask), bias=bias, impl=impl, **kw)
  want = jax.lax.conv_general_dilated(
      x, weight, kw["stride"], [(p, p) for p in kw["padding"]], rhs_dilation=kw["dilation"],
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=kw["groups"],
      precision=jax.lax.Precision.HIGHEST) + bias
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_reference_gradients_finite_differences():
  x, off, mask, weight, bias, kw = _inputs(CONFIGS[1], b=1, h=5, w=4, frac_safe=True)
  with jax.enable_x64(True):
    args = [jnp.asarray(a, jnp.float64) for a in (x, off, mask, weight, bias)]
    fn = lambda x, o, m, w, b: ops.deform_conv2d(x, o, w, mask=m, bias=b, impl="reference", **kw)
    check_grads(fn, args, order=1, modes=("rev",), eps=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cfg", CONFIGS[:2])
def test_gradients_match_finite_differences_float32(impl, cfg):
  """Directional derivative of <g, out> along a random direction of each input vs the VJP (float32)."""
  x, off, mask, weight, bias, kw = _inputs(cfg, frac_safe=True, seed=3)
  args = dict(x=x, offset=off, mask=mask, weight=weight, bias=bias)
  rng = np.random.default_rng(7)
  g = None
  fn = lambda a: ops.deform_conv2d(a["x"], a["offset"], a["weight"], mask=a["mask"], bias=a["bias"], impl=impl, **kw)
  out, vjp = jax.vjp(fn, {k: jnp.asarray(v) for k, v in args.items()})
  g = rng.normal(size=out.shape).astype(np.float32)
  grads = vjp(jnp.asarray(g))[0]
  for name in args:
    v = rng.normal(size=args[name].shape)
    eps = 1e-3 if name == "offset" else 1e-2
    if name == "offset":
      v = np.sign(v) * 0.05  # stays within the safe fractional window
    plus = {k: (a + eps * v if k == name else a) for k, a in args.items()}
    minus = {k: (a - eps * v if k == name else a) for k, a in args.items()}
    fd = np.sum(g * (npref.deform_conv2d(**_np_args(plus), **kw) - npref.deform_conv2d(**_np_args(minus), **kw))) / (
        2 * eps)
    np.testing.assert_allclose(np.sum(np.asarray(grads[name], np.float64) * v), fd, rtol=2e-3, atol=2e-3,
                               err_msg=name)


def _np_args(a):
  return dict(x=a["x"], offset=a["offset"], weight=a["weight"], mask=a["mask"], bias=a["bias"])


@pytest.mark.skipif(not ops.ffi_available(), reason="extension not built")
@pytest.mark.parametrize("cfg", CONFIGS)
def test_ffi_gradients_match_reference(cfg):
  x, off, mask, weight, bias, kw = _inputs(cfg, seed=11, offset_scale=3.0)
  g = np.random.default_rng(1).normal(size=npref.deform_conv2d(x, off, weight, mask, bias, **kw).shape)
  res = []
  for impl in ("reference", "ffi"):
    fn = lambda *a: ops.deform_conv2d(a[0], a[1], a[3], mask=a[2], bias=a[4], impl=impl, **kw)
    _, vjp = jax.vjp(fn, *map(jnp.asarray, (x, off, mask, weight, bias)))
    res.append(vjp(jnp.asarray(g, jnp.float32)))
  for name, r, f in zip(("x", "offset", "mask", "weight", "bias"), *res):
    np.testing.assert_allclose(np.asarray(f), np.asarray(r), rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_offset_gradient_zero_at_minus_one(impl):
  """A sample exactly at y = -1 (or y = H) is outside: value 0 and offset gradient 0 (torchvision issue 6885)."""
  x = np.random.default_rng(0).normal(size=(1, 4, 4, 2)).astype(np.float32)
  w = np.ones((1, 1, 2, 1), np.float32)
  off = np.zeros((1, 4, 4, 2), np.float32)
  off[0, 0, 1, 0] = -1.0  # output (0, 1): y = -1 exactly
  off[0, 3, 2, 0] = 1.0  # output (3, 2): y = 4 = H exactly
  off[0, 2, 2, 0] = -2.75  # output (2, 2): y = -0.75 inside: non-zero gradient
  fn = lambda o: ops.deform_conv2d(x, o, w, impl=impl).sum()
  out = ops.deform_conv2d(x, off, w, impl=impl)
  assert out[0, 0, 1, 0] == 0 and out[0, 3, 2, 0] == 0
  g = np.asarray(jax.grad(fn)(jnp.asarray(off)))
  assert g[0, 0, 1, 0] == 0 and g[0, 3, 2, 0] == 0
  np.testing.assert_allclose(g[0, 2, 2, 0], x[0, 0, 2].sum(), rtol=1e-5)  # d/dy of (y+1)*x[0] at y=-0.75


@pytest.mark.parametrize("impl, dtype", LOW_PRECISION)
def test_low_precision(impl, dtype):
  x, off, mask, weight, bias, kw = _inputs(CONFIGS[0])
  xs, ws = jnp.asarray(x, dtype), jnp.asarray(weight, dtype)
  out = ops.deform_conv2d(xs, off, ws, mask=mask, bias=bias, impl=impl, **kw)
  assert out.dtype == dtype
  want = npref.deform_conv2d(np.asarray(xs.astype(jnp.float32)), off, np.asarray(ws.astype(jnp.float32)), mask, bias,
                             **kw)
  tol = 5e-2 if dtype == jnp.bfloat16 else 1e-2
  np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), want, rtol=tol, atol=tol)
  grads = jax.grad(lambda x, o: ops.deform_conv2d(x, o, ws, mask=mask, impl=impl, **kw).astype(jnp.float32).sum(),
                   argnums=(0, 1))(xs, jnp.asarray(off))
  assert grads[0].dtype == dtype and np.all(np.isfinite(np.asarray(grads[1])))


@pytest.mark.parametrize("impl", IMPLS)
def test_jit_vmap(impl):
  x, off, mask, weight, bias, kw = _inputs(CONFIGS[1], b=1)
  xs = np.stack([x, x * 2, -x])
  offs = np.stack([off, off * 0.5, -off])
  fn = lambda x, o: ops.deform_conv2d(x, o, weight, mask=mask, bias=bias, impl=impl, **kw)
  out = jax.jit(jax.vmap(fn))(xs, offs)
  for i in range(3):
    np.testing.assert_allclose(np.asarray(out[i]), npref.deform_conv2d(xs[i], offs[i], weight, mask, bias, **kw),
                               rtol=1e-4, atol=1e-4)
  gv = jax.jit(jax.vmap(jax.grad(lambda x, o: fn(x, o).sum(), argnums=1)))(xs, offs)
  g1 = jax.grad(lambda o: fn(jnp.asarray(xs[1]), o).sum())(jnp.asarray(offs[1]))
  np.testing.assert_allclose(np.asarray(gv[1]), np.asarray(g1), rtol=1e-5, atol=1e-5)


def test_bad_input():
  x, off, mask, weight, bias, kw = _inputs(CONFIGS[0])
  with pytest.raises(ValueError, match=r"\(2, 7, 6, 17\)"):
    ops.deform_conv2d(x, off[..., :17], weight, **kw)
  with pytest.raises(ValueError, match=r"mask"):
    ops.deform_conv2d(x, off, weight, mask=mask[..., :4], **kw)
  with pytest.raises(ValueError, match=r"\(7, 6, 4\)"):
    ops.deform_conv2d(x[0], off, weight, **kw)
  with pytest.raises(ValueError, match=r"groups=3"):
    ops.deform_conv2d(x, off, weight, stride=1, padding=1, groups=3)
  with pytest.raises(ValueError, match=r"offset_groups=3"):
    ops.deform_conv2d(x, off, weight, stride=1, padding=1, offset_groups=3)
  with pytest.raises(ValueError, match=r"bias"):
    ops.deform_conv2d(x, off, weight, bias=bias[:2], **kw)


@pytest.mark.skipif(not ops.ffi_available(), reason="extension not built")
@pytest.mark.parametrize("rows_per_chunk", [1, 2])
def test_ffi_row_chunks(monkeypatch, rows_per_chunk):
  """The FFI path works on chunks of output rows (small column buffers); chunk edges and padding rows."""
  from research.ops import deform
  x, off, mask, weight, bias, kw = _inputs(CONFIGS[1], h=11, seed=5, offset_scale=3.0)  # Ho = 5
  ho, wo = off.shape[1:3]
  kh, kw_, cin = weight.shape[0], weight.shape[1], x.shape[-1]
  monkeypatch.setattr(deform, "_CHUNK_BYTES", rows_per_chunk * wo * kh * kw_ * cin * 4)
  assert ho == 5  # 2 rows per chunk leave a padding row
  fn = lambda *a: ops.deform_conv2d(a[0], a[1], a[3], mask=a[2], bias=a[4], impl="ffi", **kw)
  args = list(map(jnp.asarray, (x, off, mask, weight, bias)))
  out, vjp = jax.vjp(fn, *args)
  np.testing.assert_allclose(np.asarray(out), npref.deform_conv2d(x, off, weight, mask, bias, **kw), rtol=1e-4,
                             atol=1e-4)
  g = jnp.asarray(np.random.default_rng(2).normal(size=out.shape), jnp.float32)
  monkeypatch.setattr(deform, "_CHUNK_BYTES", 1 << 30)
  _, vjp_whole = jax.vjp(fn, *args)
  for name, a, b in zip(("x", "offset", "mask", "weight", "bias"), vjp(g), vjp_whole(g)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=name)
