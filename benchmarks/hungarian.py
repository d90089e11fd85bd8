"""Benchmark the Hungarian ``linear_sum_assignment`` of research.classical against scipy (and optax) on CPU.

    .venv/bin/python benchmarks/hungarian.py --sizes=64,256,1024 --json_out=/tmp/hungarian.json

Random uniform [0, 1) square cost matrices (one seed per size) in float64 (``--float32`` for float32 on the JAX
side). ``research.classical.clustering.linear_sum_assignment`` is jitted and timed after a warm-up with its output
blocked on; ``scipy.optimize.linear_sum_assignment`` (C++, shortest augmenting path) and, unless ``--no_optax``,
``optax.assignment.hungarian_algorithm`` (JAX, jitted) on the same matrix. Every time is the median over
``--repeats`` calls. ratio = scipy time / JAX time (> 1: JAX faster). Each row also checks that the JAX optimum equals
scipy's total cost (relative 1e-9 in float64, 1e-5 in float32).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.classical_parts.common import median_ms  # noqa: E402  (after the sys.path line)
from benchmarks.ops import _cpu_name  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default="64,256,1024", help="comma-separated square sizes n (cost matrices [n, n])")
  p.add_argument("--repeats", type=int, default=5, help="timed calls per case (median reported)")
  p.add_argument("--float32", action="store_true", help="JAX in float32 (default float64, like scipy)")
  p.add_argument("--no_optax", action="store_true", help="skip optax.assignment.hungarian_algorithm")
  p.add_argument("--json_out", default=None, help="also write the rows as JSON here")
  a = p.parse_args()
  sizes = [int(s) for s in a.sizes.split(",") if s]
  if not sizes or min(sizes) < 1:
    p.error(f"--sizes must be positive integers; got {a.sizes!r}")

  import jax
  if not a.float32:
    jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  import numpy as np
  from scipy.optimize import linear_sum_assignment as scipy_lsa

  from research.classical.clustering import linear_sum_assignment

  ours = jax.jit(linear_sum_assignment)
  optax_fn = None
  if not a.no_optax:
    try:
      from optax.assignment import hungarian_algorithm
      optax_fn = jax.jit(hungarian_algorithm)
    except ImportError:
      print("optax.assignment not available: skipping optax")
  dtype = jnp.float32 if a.float32 else jnp.float64
  rtol = 1e-5 if a.float32 else 1e-9

  load0 = os.getloadavg()
  rows = []
  for n in sizes:
    cost = np.random.default_rng(n).uniform(size=(n, n))
    cost_j = jnp.asarray(cost, dtype)
    jax_ms = median_ms(lambda: ours(cost_j), a.repeats)
    scipy_ms = median_ms(lambda: scipy_lsa(cost), a.repeats)
    r, c = map(np.asarray, ours(cost_j))
    ref_r, ref_c = scipy_lsa(cost)
    total, ref_total = float(cost[r, c].sum()), float(cost[ref_r, ref_c].sum())
    ok = bool(np.isclose(total, ref_total, rtol=rtol, atol=0)) and len(set(c.tolist())) == n
    row = {"n": n, "jax_ms": round(jax_ms, 3), "scipy_ms": round(scipy_ms, 3), "ratio": round(scipy_ms / jax_ms, 4),
           "total": total, "scipy_total": ref_total, "equal_total": ok}
    if optax_fn is not None:
      row["optax_ms"] = round(median_ms(lambda: optax_fn(cost_j), a.repeats), 3)
      orow, ocol = map(np.asarray, optax_fn(cost_j))
      row["optax_equal_total"] = bool(np.isclose(float(cost[orow, ocol].sum()), ref_total, rtol=rtol, atol=0))
    rows.append(row)
    print(f"  n={n:<6} jax {jax_ms:>11.3f} ms  scipy {scipy_ms:>9.3f} ms  ratio {scipy_ms / jax_ms:.4f}  "
          f"equal total {ok}" + (f"  optax {row['optax_ms']:.3f} ms" if "optax_ms" in row else ""), flush=True)
  load1 = os.getloadavg()
  machine = {"cpu": _cpu_name(), "cores": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
             "dtype": "float32" if a.float32 else "float64"}
  print(f"\n{machine['cpu']}, {machine['cores']} cores, jax {machine['jax']} ({machine['backend']}, "
        f"{machine['dtype']}); load average {load0[0]:.2f} -> {load1[0]:.2f}\n")
  with_optax = any("optax_ms" in r for r in rows)
  print("| n | JAX ms | scipy ms | scipy/JAX | equal total |" + (" optax ms |" if with_optax else ""))
  print("|---|---|---|---|---|" + ("---|" if with_optax else ""))
  for r in rows:
    extra = f" {r['optax_ms']:.3f} |" if "optax_ms" in r else ""
    print(f"| {r['n']} | {r['jax_ms']:.3f} | {r['scipy_ms']:.3f} | {r['ratio']:.4f} | {r['equal_total']} |{extra}")
  if a.json_out:
    with open(a.json_out, "w") as fh:
      json.dump({"machine": machine, "load_average": [load0, load1], "rows": rows}, fh, indent=1)
  if not all(r["equal_total"] for r in rows):
    sys.exit("JAX and scipy optimal totals differ")


if __name__ == "__main__":
  main()
