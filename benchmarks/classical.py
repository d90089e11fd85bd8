"""Benchmark research.classical against the field's libraries on CPU: one table of ratios from one run.

    .venv/bin/python benchmarks/classical.py --dynamax_python=/work/dynvenv/bin/python --json_out=/tmp/classical.json

Parts (``benchmarks/classical_parts/<part>.py``, each two sizes): GMM EM step vs scikit-learn, HMM
forward-backward vs hmmlearn (and dynamax, JAX, in its own interpreter: it needs tfp-nightly, so it lives in a
separate venv — ``python3 -m venv /work/dynvenv && /work/dynvenv/bin/pip install jax==0.10.2 dynamax``), Isomap and
PCA vs scikit-learn, RPCA vs the same algorithm in numpy, DCT vs scipy.fft. JAX functions are jitted and timed
after a warm-up with their outputs blocked on; every time is the median over ``--repeats``. ratio = peer time /
JAX time (> 1: JAX faster).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.ops import _cpu_name  # noqa: E402  (after the sys.path line)

PARTS = ("gmm", "hmm", "manifold", "rpca_dct")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
  p.add_argument("--repeats", type=int, default=5, help="timed calls per case (median reported)")
  p.add_argument("--dynamax_python", default=None, help="interpreter of a venv with dynamax (HMM peer)")
  p.add_argument("--json_out", default=None, help="also write the rows as JSON here")
  a = p.parse_args()
  parts = [s for s in a.parts.split(",") if s]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    p.error(f"--parts: unknown {unknown}; choose from {','.join(PARTS)}")
  import jax
  load0 = os.getloadavg()
  rows = []
  for part in parts:
    module = importlib.import_module(f"benchmarks.classical_parts.{part}")
    kwargs = {"dynamax_python": a.dynamax_python} if part == "hmm" else {}
    for r in module.rows(a.repeats, **kwargs):
      rows.append(r)
      print(f"  {r['op']:<28} {r['size']:<26} {r['peer']:<28} jax {r['jax_ms']:>10.3f} ms  peer "
            f"{r['peer_ms']:>10.3f} ms  ratio {r['ratio']:.2f}", flush=True)
  load1 = os.getloadavg()
  machine = {"cpu": _cpu_name(), "cores": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend()}
  print(f"\n{machine['cpu']}, {machine['cores']} cores, jax {machine['jax']} ({machine['backend']}); "
        f"load average {load0[0]:.2f} -> {load1[0]:.2f}\n")
  print("| op | size | peer | JAX ms | peer ms | peer/JAX |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['op']} | {r['size']} | {r['peer']} | {r['jax_ms']:.3f} | {r['peer_ms']:.3f} | {r['ratio']:.2f} |")
  if a.json_out:
    with open(a.json_out, "w") as fh:
      json.dump({"machine": machine, "load_average": [load0, load1], "rows": rows}, fh, indent=1)


if __name__ == "__main__":
  main()
