"""A minimal multi-process JAX program for the failure tests: joins ``jax.distributed`` through
``research.distributed.initialize`` (layout from ``JAX_*`` env vars), then sums across all devices in a
loop, printing ``running`` once collectives work. Args: init timeout, heartbeat timeout (seconds), and
optionally a number of iterations after which it prints ``done`` and exits 0 (default: run forever)."""

import sys
import time

from research import distributed

distributed.initialize(initialization_timeout=int(sys.argv[1]), heartbeat_timeout=int(sys.argv[2]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

mesh = Mesh(np.array(jax.devices()), ("d",))
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))
iterations = int(sys.argv[3]) if len(sys.argv) > 3 else 10**9
for i in range(iterations):
  x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), np.ones((jax.local_device_count(),)))
  value = float(total(x).addressable_data(0))
  assert value == jax.device_count(), value
  if i == 3:
    print(f"running process {jax.process_index()}", flush=True)
  time.sleep(0.01)
print(f"done process {jax.process_index()} of {jax.process_count()} with {jax.device_count()} devices", flush=True)
