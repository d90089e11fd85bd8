"""Layers and ops against independent references: im2col conv, formula BN, SPP, maxout, shuffle, pooling, IGC, join,
squeeze-excitation, LRN, FractalNet drop-path sampling."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from research import models
from research.layers.batchnorm import FormulaBatchNorm
from research.layers.common import adaptive_avg_pool, channel_shuffle, max_pool_ceil
from research.layers.fractal import join
from research.layers.maxout import maxout
from research.layers.spp import spatial_pyramid_pool
from research.ops.im2col import conv2d_im2col


@pytest.mark.parametrize("k,s,pad,d,g", [(3, 1, "SAME", 1, 1), (3, 2, "VALID", 1, 1), (5, 2, "SAME", 2, 1),
                                          ((1, 7), 1, [(0, 0), (3, 3)], 1, 1), (3, 1, [(1, 2), (0, 1)], 1, 4),
                                          (3, 2, "SAME", 1, 8)])
def test_conv2d_im2col_equals_lax(k, s, pad, d, g):
  kh, kw = (k, k) if isinstance(k, int) else k
  x = jax.random.normal(jax.random.key(0), (2, 11, 9, 8))
  w = jax.random.normal(jax.random.key(1), (kh, kw, 8 // g, 16))
  ref = lax.conv_general_dilated(x, w, (s, s), pad, rhs_dilation=(d, d), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 feature_group_count=g, precision=lax.Precision.HIGHEST)
  out = conv2d_im2col(x, w, (s, s), pad, (d, d), groups=g)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("axis_name", [None, "batch"])
def test_formula_batchnorm_equals_flax(axis_name):
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (4, 5, 5, 6))
  ref, ours = nn.BatchNorm(momentum=0.9, epsilon=1e-5, axis_name=axis_name), FormulaBatchNorm(0.9, 1e-5, axis_name)
  v = ref.init(jax.random.key(1), x, use_running_average=False)
  v = jax.tree.map(lambda a: a + jax.random.uniform(jax.random.key(2), a.shape), v)  # non-trivial gamma/beta/stats
  assert jax.tree.structure(ours.init(jax.random.key(1), x, use_running_average=False)) == jax.tree.structure(v)

  def run(m, train):
    f = lambda v, x: m.apply(v, x, use_running_average=not train, mutable=["batch_stats"])
    if axis_name:
      return jax.vmap(f, in_axes=(None, 0), out_axes=(0, None), axis_name="batch")(v, x[None])
    return f(v, x)

  for train in (True, False):
    (y_ref, s_ref), (y, s) = run(ref, train), run(ours, train)
    y_ref, y = (y_ref[0], y[0]) if axis_name else (y_ref, y)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s["batch_stats"]["mean"], s_ref["batch_stats"]["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["batch_stats"]["var"], s_ref["batch_stats"]["var"], rtol=1e-5, atol=1e-6)
  # and the formula itself, by numpy
  xn = np.asarray(x, np.float64)
  mu, var = xn.mean((0, 1, 2)), xn.var((0, 1, 2))
  want = np.asarray(v["params"]["scale"]) * (xn - mu) / np.sqrt(var + 1e-5) + np.asarray(v["params"]["bias"])
  np.testing.assert_allclose(FormulaBatchNorm().apply(v, x, use_running_average=False, mutable=["batch_stats"])[0], want,
                             rtol=1e-4, atol=1e-4)


def test_spp_any_size_and_values():
  for h, w in [(13, 13), (7, 10), (3, 5), (1, 1)]:
    x = jax.random.normal(jax.random.key(h * w), (2, h, w, 4))
    y = spatial_pyramid_pool(x, (1, 2, 4))
    assert y.shape == (2, 4 * 21)
    np.testing.assert_allclose(y[:, :4], np.asarray(x).max((1, 2)))  # level 1 = global max
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_allclose(spatial_pyramid_pool(x, (2,)), [[5.0, 7.0, 13.0, 15.0]])
  m = models.create("sppnet", num_classes=3)
  v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 100, 100, 3)), train=False))
  for r in (64, 131, 224):  # same parameters, any input size
    assert jax.eval_shape(lambda v: m.apply(v, jnp.zeros((1, r, r + 17, 3)), train=False), v).shape == (1, 3)


def test_maxout_and_maxout_head():
  x = jnp.array([[1.0, 5.0, 2.0, 0.0, -1.0, -3.0]])
  np.testing.assert_allclose(maxout(x, 2), [[5.0, 2.0, -1.0]])
  np.testing.assert_allclose(maxout(x, 3), [[5.0, 0.0]])
  with pytest.raises(ValueError):
    maxout(x, 4)
  m = models.create("resnet18", num_classes=5, maxout_pieces=4)
  v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert v["params"]["head"]["dense"]["kernel"].shape == (512, 20)


def test_channel_shuffle_is_the_igc_permutation():
  x = jnp.arange(6.0).reshape(1, 1, 1, 6)
  np.testing.assert_array_equal(channel_shuffle(x, 2)[0, 0, 0], [0, 3, 1, 4, 2, 5])
  np.testing.assert_array_equal(channel_shuffle(x, 3)[0, 0, 0], [0, 2, 4, 1, 3, 5])
  # IGC's P (Zhang et al. 2017, §3.1) with L = 3 primary partitions of M = 4: channel l*M + m -> m*L + l.
  y = np.asarray(jax.random.normal(jax.random.key(0), (1, 2, 2, 12)))
  want = np.empty_like(y)
  for l in range(3):
    for m in range(4):
      want[..., m * 3 + l] = y[..., l * 4 + m]
  np.testing.assert_array_equal(channel_shuffle(jnp.asarray(y), 3), want)
  np.testing.assert_array_equal(channel_shuffle(channel_shuffle(jnp.asarray(y), 3), 4), y)  # P then P^T = identity


def test_adaptive_pool_and_ceil_pool_against_numpy():
  x = np.random.RandomState(0).randn(1, 7, 5, 2).astype(np.float32)
  out = np.asarray(adaptive_avg_pool(jnp.asarray(x), 3))
  for i in range(3):
    for j in range(3):
      h0, h1 = (i * 7) // 3, -(-((i + 1) * 7) // 3)
      w0, w1 = (j * 5) // 3, -(-((j + 1) * 5) // 3)
      np.testing.assert_allclose(out[0, i, j], x[0, h0:h1, w0:w1].mean((0, 1)), rtol=1e-6)
  assert max_pool_ceil(jnp.zeros((1, 112, 112, 1)), 3, 2).shape[1] == 56  # torch ceil_mode: 56 (floor: 55)
  assert max_pool_ceil(jnp.zeros((1, 55, 55, 1)), 3, 2).shape[1] == 27


def test_fractal_join():
  a, b, c = jnp.ones((1, 2)), 3 * jnp.ones((1, 2)), 5 * jnp.ones((1, 2))
  np.testing.assert_allclose(join([a, b, c]), 3 * np.ones((1, 2)))
  np.testing.assert_allclose(join([a, b, c], jnp.array([1, 0, 1])), 3 * np.ones((1, 2)))
  np.testing.assert_allclose(join([a, b, c], jnp.array([0, 1, 0])), 3 * np.ones((1, 2)))
  np.testing.assert_allclose(join([a, b, c], jnp.array([0, 0, 1])), 5 * np.ones((1, 2)))


FEATURE_FAMILIES = {"resnet50": 64, "resnext50_32x4d": 64, "densenet121": 64, "mobilenet_v1": 64, "vgg16": 64,
                    "shufflenet_v1_g3": 64, "xception": 96}


@pytest.mark.parametrize("name", sorted(FEATURE_FAMILIES))
def test_features_only_c2_to_c5(name):
  r = FEATURE_FAMILIES[name]
  m = models.create(name, features_only=True)
  v = jax.eval_shape(lambda: models.create(name).init(jax.random.key(0), jnp.zeros((1, r, r, 3)), train=False))
  f = jax.eval_shape(lambda v: m.apply(v, jnp.zeros((1, r, r, 3)), train=False), v)
  for k in (2, 3, 4, 5):
    assert abs(f[f"C{k}"].shape[1] - r / 2 ** k) < 2, (k, f[f"C{k}"].shape)  # output stride 2**k
  assert f["pooled"].ndim == 2 and "stem" in f


@pytest.mark.parametrize("L,M,cin,strides", [(2, 3, 6, 1), (4, 2, 4, 2), (3, 1, 6, 1)])
def test_igc_block_is_the_regular_conv_with_composed_kernel(L, M, cin, strides):
  """§3.2: an IGC block equals one regular convolution whose kernel is P^T W^d P W^p (block-diagonal W^p, W^d).
  The dense kernel is assembled in float64 numpy from the block's own weights; M = 1 is the Xception case."""
  from research.layers.igc import IGCBlock
  block = IGCBlock(L, M, strides=strides)
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, cin))
  v = block.init(jax.random.key(1), x)
  width = L * M
  wp = np.asarray(v["params"]["primary"]["kernel"], np.float64)  # (3, 3, cin/L, width), groups of M outputs
  wd = np.asarray(v["params"]["secondary"]["kernel"], np.float64)[0, 0]  # (L, width), groups of L outputs
  dense_p = np.zeros((3, 3, cin, width))
  for l in range(L):
    dense_p[:, :, l * cin // L:(l + 1) * cin // L, l * M:(l + 1) * M] = wp[:, :, :, l * M:(l + 1) * M]
  perm = np.zeros((width, width))  # P: primary channel l*M + m -> secondary position m*L + l
  for l in range(L):
    for m in range(M):
      perm[l * M + m, m * L + l] = 1
  dense_d = np.zeros((width, width))
  for m in range(M):
    dense_d[m * L:(m + 1) * L, m * L:(m + 1) * L] = wd[:, m * L:(m + 1) * L]
  kernel = dense_p @ perm @ dense_d @ perm.T  # (3, 3, cin, width): x -> P^T W^d P W^p x per tap
  ref = lax.conv_general_dilated(np.asarray(x, np.float64), kernel, (strides, strides), [(1, 1), (1, 1)],
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(block.apply(v, x), ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="divide by L"):
    IGCBlock(4, 2).init(jax.random.key(0), jnp.zeros((1, 4, 4, 6)))


def test_squeeze_excite_against_numpy():
  """Hu et al. 2018, Eq. 2-4: out = x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2), C/r hidden units; float64 numpy
  reference from random parameters (biases included) in the module's own layout."""
  from research.layers.se import SqueezeExcite
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 3, 32)).astype(np.float32)
  se = SqueezeExcite(reduction=4)
  shapes = jax.eval_shape(lambda: se.init(jax.random.key(1), x))
  assert jax.tree.map(lambda a: a.shape, shapes["params"]) == {"fc1": {"kernel": (32, 8), "bias": (8,)},
                                                               "fc2": {"kernel": (8, 32), "bias": (32,)}}  # C/r = 8
  v = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), shapes)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), v["params"])
  xn = np.asarray(x, np.float64)
  s = xn.mean(axis=(1, 2))  # squeeze: [B, C]
  h = np.maximum(s @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
  g = 1 / (1 + np.exp(-(h @ p["fc2"]["kernel"] + p["fc2"]["bias"])))
  want = xn * g[:, None, None, :]
  assert np.ptp(g) > 0.5  # the gates differ across channels/examples, so a wrong broadcast would show
  np.testing.assert_allclose(jax.jit(se.apply)(v, x), want, rtol=1e-5, atol=1e-6)
  small = jax.eval_shape(lambda: SqueezeExcite(reduction=16).init(jax.random.key(0), jnp.zeros((1, 2, 2, 8))))
  assert small["params"]["fc1"]["bias"].shape == (1,)  # C/r rounds down but keeps at least one hidden unit


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (5, 0.9, 0.75, 1.0), (3, 2.0, 0.5, 0.5),
                                               (4, 1.5, 0.75, 1.0)])
def test_local_response_norm_against_numpy(size, alpha, beta, k):
  """AlexNet §3.3: b_c = a_c / (k + α' Σ_{j in window(c)} a_j^2)^β, channels out of range skipped. The
  implementation follows PyTorch / Caffe: α' = alpha / size (the paper writes α' = α = 1e-4, i.e. alpha = 5e-4
  here) and the window is [c - size//2, c + (size-1)//2] (centred for odd sizes). Large activations for the defaults
  so that the normaliser differs from k^β by far more than the tolerance."""
  from research.layers.common import local_response_norm
  scale = 100.0 if alpha < 1e-3 else 1.0
  x = np.random.default_rng(0).normal(size=(2, 3, 2, 9)) * scale
  want = np.empty_like(x)
  C = x.shape[-1]
  for c in range(C):
    lo, hi = max(0, c - size // 2), min(C - 1, c + (size - 1) // 2)
    want[..., c] = x[..., c] / (k + alpha / size * np.sum(x[..., lo:hi + 1] ** 2, axis=-1)) ** beta
  got = local_response_norm(jnp.asarray(x, jnp.float32), size=size, alpha=alpha, beta=beta, k=k)
  assert np.max(np.abs(want / x - k ** -beta)) > 1e-3 * k ** -beta  # the window sum matters at this tolerance
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)


def test_fractal_block_drop_path_sampling():
  """FractalNet drop-path (Larsson et al. 2017, §3.1) at a 2-column join: local mode drops each input with
  probability 0.15 independently, keeping one at random (1/2 each) when both are dropped, so P(both kept) = 0.85^2 =
  0.7225 and P(only column c) = 0.85 * 0.15 + 0.15^2 / 2 = 0.13875; global mode keeps exactly the chosen column. The
  join averages the kept inputs (one kept: that input unscaled) and the path is drawn once per call, so every example
  of the batch takes the same one."""
  from research.layers.fractal import FractalBlock
  block = FractalBlock(4, columns=2, local_drop=0.15)
  x = np.random.default_rng(0).normal(size=(3, 4, 4, 2)).astype(np.float32)
  v = jax.jit(lambda: block.init(jax.random.key(1), x, train=False))()

  def run(key, local, col):
    return block.apply(v, x, train=True, local=local, global_col=col, rngs={"droppath": key},
                       mutable=["batch_stats"])[0]

  n = 4000
  keys = jax.random.split(jax.random.key(3), n)
  y0, y1, outs = map(np.asarray, jax.jit(lambda keys: (
      run(keys[0], False, 0), run(keys[0], False, 1),  # global mode: column 0 alone, column 1 alone
      jax.vmap(lambda kk: run(kk, True, 0))(keys)))(keys))
  assert np.abs(y0 - y1).mean() > 0.1
  cands = np.stack([(y0 + y1) / 2, y0, y1])  # both kept, only column 0, only column 1
  err = np.abs(outs[:, None] - cands[None]).max(axis=(3, 4, 5))  # [n, 3 paths, batch]
  which = err.argmin(1)  # per example
  assert np.all(err.min(1) < 1e-5)  # every output is exactly one of the three joins
  assert np.all(which == which[:, :1])  # the whole batch shares the path
  freq = np.bincount(which[:, 0], minlength=3) / n
  np.testing.assert_allclose(freq, [0.7225, 0.13875, 0.13875], atol=0.025)  # ~3.5 sigma at n = 4000


def test_fractalnet_draws_one_path_mode_per_call():
  """FractalNet §3.1: per network call, global mode (one column for the whole net) with probability global_prob
  (0.5 in the paper; 0.25 here so that swapping the two modes would show), its column uniform; every block sees the
  same draw. The blocks are intercepted (replaced by the identity) to read the draws."""
  from research.layers.fractal import FractalBlock
  m = models.create("fractalnet", columns=3, widths=(3,) * 5, num_classes=2, global_prob=0.25)
  x = jnp.zeros((1, 32, 32, 3))
  v = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),  # values do not matter: the blocks are skipped
                   jax.eval_shape(lambda: m.init(jax.random.key(0), x, train=False)))

  def draw(key):
    seen = []

    def icpt(f, args, kwargs, ctx):
      if isinstance(ctx.module, FractalBlock) and ctx.method_name == "__call__":
        seen.append((kwargs["local"], kwargs["global_col"]))
        return args[0]
      return f(*args, **kwargs)

    with nn.intercept_methods(icpt):
      m.apply(v, x, train=True, rngs={"droppath": key, "dropout": key}, mutable=["batch_stats"])
    assert len(seen) == 5
    return jnp.stack([s[0] for s in seen]), jnp.stack([s[1] for s in seen])

  n = 3000
  local, col = map(np.asarray, jax.jit(jax.vmap(draw))(jax.random.split(jax.random.key(1), n)))
  assert np.all(local == local[:, :1]) and np.all(col == col[:, :1])  # one draw per call, shared by all blocks
  assert abs(1 - local[:, 0].mean() - 0.25) < 0.03  # P(global) = global_prob (sd 0.008 at n = 3000)
  g = col[~local[:, 0], 0]
  np.testing.assert_allclose(np.bincount(g, minlength=3) / len(g), [1 / 3] * 3, atol=0.04)
