"""The C++ kernels' custom-VJP backward rules inside ``shard_map`` (the data-parallel train step): gradients
equal the pure-JAX reference's, on 2 devices."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from research.ops import deform_conv2d, ffi_available, roi_align, roi_pool
from research.train import task as task_lib

pytestmark = pytest.mark.skipif(not ffi_available(), reason="C++ kernels not built")


def _sharded_grad(loss, *args):
  mesh = task_lib.make_mesh(jax.devices()[:2])
  fn = jax.shard_map(lambda *a: jax.lax.psum(jnp.stack(jax.grad(loss)(*a)[:1])[0], "data")[None],
                     mesh=mesh, in_specs=tuple(P("data") for _ in args), out_specs=P("data"))
  return jax.jit(fn)(*args)[0]


@pytest.mark.parametrize("op", ["roi_align", "roi_pool", "deform_conv2d"])
def test_ffi_gradients_inside_shard_map_match_the_reference(op):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 1, 9, 9, 4)), jnp.float32)  # [devices, per-device batch, H, W, C]
  boxes = jnp.asarray(np.tile([[1.0, 1.5, 7.0, 6.0], [0.0, 0.0, 9.0, 9.0]], (2, 1, 1)), jnp.float32)
  offset = jnp.asarray(rng.normal(size=(2, 1, 7, 7, 18)) * 0.5, jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)

  def loss(x, boxes, offset, impl):
    x, boxes, offset = x[0], boxes[0], offset[0]
    idx = jnp.zeros((2,), jnp.int32)
    if op == "roi_align":
      y = roi_align(x, boxes, idx, 3, sampling_ratio=2, impl=impl)
    elif op == "roi_pool":
      y = roi_pool(x, boxes, idx, 3, impl=impl)
    else:
      y = deform_conv2d(x, offset, w, impl=impl)
    return jnp.sum(y * y)

  got = _sharded_grad(lambda x, b, o: loss(x, b, o, "ffi"), x, boxes, offset)
  want = _sharded_grad(lambda x, b, o: loss(x, b, o, "reference"), x, boxes, offset)
  chex.assert_trees_all_close(got, want, atol=1e-4, rtol=1e-4)
