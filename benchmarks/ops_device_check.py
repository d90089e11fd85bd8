"""Correctness of the accelerator paths ON the device they are meant for (run this first when a GPU is lent).

    python benchmarks/ops_device_check.py            # then: python benchmarks/ops.py --json_out=ops_gpu.json

The unit tests run the Pallas kernels in interpret mode on CPU and lower them to Triton without a GPU; this script
compiles and runs them on the default backend and compares, on random inputs with the unit tests' kinds of boxes
(inside, partly outside, zero-size, larger than the map, adaptive grids), values and gradients of
``impl="pallas"`` and ``impl="xla"`` against ``impl="reference"``, the blocked NMS against the sequential one, and
the bucketed multi-level RoIAlign against the all-levels one. Prints one line per check and exits 1 on any
mismatch. On CPU the Pallas kernels run interpreted (slow): the shapes are kept small for that reason.
"""

from __future__ import annotations

import sys

import numpy as np


def _boxes(rng, k, h, w, scale):
  xy = rng.uniform(-0.2, 1.0, size=(k, 2)) * np.array([w, h]) / scale
  wh = np.exp(rng.uniform(np.log(1.0), np.log(1.5 * max(h, w)), size=(k, 2))) / scale
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  boxes[0] = [3.0, 3.0, 3.0, 3.0]  # zero-size
  return boxes


def main() -> int:
  import jax
  import jax.numpy as jnp

  from research import ops
  from research.layers.roi import multilevel_roi_align

  rng = np.random.default_rng(0)
  print(f"backend {jax.default_backend()}, device {jax.devices()[0].device_kind}, jax {jax.__version__}")
  failures = []

  def compare(name, got, want, tol):
    err = max(float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(w_, np.float64))))
              for g, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    ok = err <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max |diff| {err:.2e} (tol {tol:.0e})")
    if not ok:
      failures.append(name)

  n, h, w, c, k = 2, 24, 32, 16, 48
  feats = jnp.asarray(rng.standard_normal((n, h, w, c), dtype=np.float32))
  boxes = jnp.asarray(_boxes(rng, k, h, w, 0.5))
  idx = jnp.asarray(rng.integers(0, n, k).astype(np.int32))
  for op, kw, cin in ((ops.roi_align, {"sampling_ratio": 2}, c), (ops.roi_align, {"sampling_ratio": -1}, c),
                      (ops.ps_roi_align, {"sampling_ratio": 2}, 2 * 3 * 3)):
    f = feats[..., :cin] if cin <= c else jnp.tile(feats, (1, 1, 1, 2))[..., :cin]
    g = jnp.asarray(rng.standard_normal((k, 3, 3, cin if op is ops.roi_align else cin // 9), dtype=np.float32))

    def value_and_grad(impl, op=op, kw=kw, g=g):
      fn = lambda x: jnp.sum(op(x, boxes, idx, 3, spatial_scale=0.5, impl=impl, **kw) * g)  # noqa: E731
      return jax.jit(jax.value_and_grad(fn))(f)

    want = value_and_grad("reference")
    for impl in ("pallas", "xla"):
      compare(f"{op.__name__} {kw} impl={impl}", value_and_grad(impl), want, 1e-3)

  x = jnp.asarray(rng.standard_normal((2, 12, 14, 8), dtype=np.float32))
  off = jnp.asarray(rng.standard_normal((2, 12, 14, 18), dtype=np.float32) * 2)
  mask = jnp.asarray(rng.uniform(size=(2, 12, 14, 9)).astype(np.float32))
  wt = jnp.asarray(rng.standard_normal((3, 3, 8, 6), dtype=np.float32) / 8)
  gd = jnp.asarray(rng.standard_normal((2, 12, 14, 6), dtype=np.float32))

  def dcn(impl):
    fn = lambda *a: jnp.sum(ops.deform_conv2d(a[0], a[1], a[3], mask=a[2], padding=1, impl=impl) * gd)  # noqa: E731
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))(x, off, mask, wt)

  compare("deform_conv2d impl=pallas", dcn("pallas"), dcn("reference"), 1e-3)

  for m in (300, 1000):
    b = _boxes(rng, m, 400, 400, 1.0)
    s = np.round(rng.uniform(size=m), 2).astype(np.float32)  # ties
    cls = rng.integers(0, 3, m).astype(np.int32)
    got = ops.batched_nms_padded(b, s, cls, 0.5, m, impl="xla")
    want = ops.batched_nms_padded(b, s, cls, 0.5, m, impl="reference")
    compare(f"batched_nms_padded N={m} impl=xla", got, want, 0)

  feats_l = [jnp.asarray(rng.standard_normal((1, 64 // s, 64 // s, 8), dtype=np.float32)) for s in (4, 8, 16, 32)]
  mb = jnp.asarray(_boxes(rng, 40, 256, 256, 1.0))
  mi = jnp.zeros(40, jnp.int32)
  all_levels = multilevel_roi_align(feats_l, (4, 8, 16, 32), mb, mi, 7, impl="xla")
  bucketed = multilevel_roi_align(feats_l, (4, 8, 16, 32), mb, mi, 7, impl="xla", bucketed=True)
  compare("multilevel_roi_align bucketed", bucketed, all_levels, 1e-5)

  print("all checks passed" if not failures else f"{len(failures)} FAILED: {failures}")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
