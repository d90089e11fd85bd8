r"""Our LSTM layer (``research.layers.recurrent.RNN(LSTMCell)``, jitted) vs PyTorch ``nn.LSTM`` on CPU, same shapes,
same weights, forward and forward+backward, 1 and 2 threads; one ratio table.

    .venv/bin/python benchmarks/lstm.py --torch_python=/work/torchenv/bin/python --json_out=/tmp/lstm_bench.json
    .venv/bin/python benchmarks/lstm.py --torch_python=/work/torchenv/bin/python --sizes=128 --threads=1 --repeats=3

Shapes: B=32, T=100, D=H in ``--sizes`` (128, 256), one layer, batch-major (torch ``batch_first=True``). Weights are
drawn once in numpy in PyTorch's layout (its default init, uniform(+-1/sqrt(H))); JAX gets them through
``recurrent.params_from_torch``, and the outputs, the input gradients and the weight gradients of both sides are
compared (max |diff| printed; the table is only meaningful when they agree). Pass ``fwd``: ``out = lstm(x)``; pass
``fwd_bwd``: the gradients of ``sum(out * g)`` with respect to x and every weight (torch ``.backward()``, JAX
``jax.grad`` under ``jax.jit``).

Each side runs in its own persistent worker subprocess per thread count (the JAX one with
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` for one thread, the torch one with
``torch.set_num_threads``; torch is never a dependency of this project, ``--torch_python`` is a separate venv); both
workers of a thread count are pinned to the same cores (``os.sched_setaffinity``: core 0 for one thread, 0-1 for
two) so they compete for nothing but the machine's other load. After a warm-up (compilation) the JAX and torch calls
are interleaved, and each time is the median over ``--repeats``; ratio = torch / JAX (> 1: JAX faster), also given
for the fastest call of each side (the least disturbed by other load on a shared machine). The load average before
and after is printed with the table; ``--json_out`` keeps every timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
PASSES = ("fwd", "fwd_bwd")


# ----------------------------------------------------------------------------------------------------------
# shared inputs (numpy only)
# ----------------------------------------------------------------------------------------------------------
def inputs(batch: int, steps: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """x [B, T, D], cotangent g [B, T, H] and one layer's weights in PyTorch's ``nn.LSTM`` layout (D = H = size)."""
  rng = np.random.default_rng(seed)
  k = 1.0 / np.sqrt(size)
  u = lambda *s: rng.uniform(-k, k, size=s).astype(np.float32)  # noqa: E731
  return {"x": rng.standard_normal((batch, steps, size), dtype=np.float32),
          "g": rng.standard_normal((batch, steps, size), dtype=np.float32),
          "weight_ih_l0": u(4 * size, size), "weight_hh_l0": u(4 * size, size), "bias_ih_l0": u(4 * size),
          "bias_hh_l0": u(4 * size)}


def timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def _check_summary(out, dx, grads: dict[str, np.ndarray]) -> dict[str, list]:
  """What the parent compares: the last step's outputs, dx's last step and the weight gradients (torch layout)."""
  return {"out_last": np.asarray(out)[:, -1].ravel().tolist(), "dx_last": np.asarray(dx)[:, -1].ravel().tolist(),
          **{f"d_{k}": np.asarray(v).ravel()[:4096].tolist() for k, v in grads.items()}}


# ----------------------------------------------------------------------------------------------------------
# workers
# ----------------------------------------------------------------------------------------------------------
def torch_fns(spec):
  """{(size, pass): callable}, and the check summaries, on the torch side."""
  import torch
  torch.set_num_threads(spec["threads"])
  fns, checks = {}, {}
  for size in spec["sizes"]:
    a = inputs(spec["batch"], spec["steps"], size)
    m = torch.nn.LSTM(size, size, batch_first=True)
    with torch.no_grad():
      for name, p in m.named_parameters():
        p.copy_(torch.from_numpy(a[name]))
    x, g = torch.from_numpy(a["x"]), torch.from_numpy(a["g"])

    def fwd(m=m, x=x):
      with torch.no_grad():
        m(x)

    def fwd_bwd(m=m, x=x, g=g):
      m.zero_grad(set_to_none=True)
      xr = x.detach().requires_grad_(True)
      (m(xr)[0] * g).sum().backward()
      return xr.grad

    fns[(size, "fwd")], fns[(size, "fwd_bwd")] = fwd, fwd_bwd
    with torch.no_grad():
      out = m(x)[0].numpy()
    dx = fwd_bwd().numpy()
    checks[size] = _check_summary(out, dx, {n: p.grad.numpy() for n, p in m.named_parameters()})
  info = {"torch": torch.__version__, "threads": torch.get_num_threads()}
  return fns, checks, info


def jax_fns(spec):
  """{(size, pass): callable} of the jitted JAX layer, and the check summaries (weight gradients mapped back to the
  torch layout: input_kernel.T -> weight_ih, recurrent_kernel.T -> weight_hh, input_bias -> both biases)."""
  import jax
  import jax.numpy as jnp

  from research.layers import recurrent as rec

  fns, checks = {}, {}
  for size in spec["sizes"]:
    a = inputs(spec["batch"], spec["steps"], size)
    sd = {k: v for k, v in a.items() if k not in ("x", "g")}
    params = {"cell": jax.tree.map(jnp.asarray, rec.params_from_torch(sd, "LSTM")["layer0"])}
    layer = rec.RNN(rec.LSTMCell, size, unroll=spec["unroll"])
    x, g = jnp.asarray(a["x"]), jnp.asarray(a["g"])
    fwd_j = jax.jit(lambda p, x: layer.apply({"params": p}, x)[0])
    grad_j = jax.jit(jax.grad(lambda p, x, g: jnp.sum(layer.apply({"params": p}, x)[0] * g), argnums=(0, 1)))
    fns[(size, "fwd")] = lambda f=fwd_j, p=params, x=x: jax.block_until_ready(f(p, x))
    fns[(size, "fwd_bwd")] = lambda f=grad_j, p=params, x=x, g=g: jax.block_until_ready(f(p, x, g))
    gp, dx = grad_j(params, x, g)
    c = {k: np.asarray(v) for k, v in gp["cell"].items()}
    checks[size] = _check_summary(fwd_j(params, x), dx, {"weight_ih_l0": c["input_kernel"].T,
                                                         "weight_hh_l0": c["recurrent_kernel"].T,
                                                         "bias_ih_l0": c["input_bias"], "bias_hh_l0": c["input_bias"]})
  info = {"jax": jax.__version__, "unroll": spec["unroll"]}
  return fns, checks, info


def worker(kind: str, spec: dict) -> None:
  """Serves timing requests '<size>|<pass>' on stdin with one line of seconds each, after one JSON line of info and
  check summaries."""
  if spec.get("cores"):
    os.sched_setaffinity(0, spec["cores"])
  fns, checks, info = (torch_fns if kind == "torch" else jax_fns)(spec)
  print(json.dumps({"info": info, "checks": {str(k): v for k, v in checks.items()}}), flush=True)
  for line in sys.stdin:
    size, pas = line.rstrip("\n").split("|")
    print(timed(fns[(int(size), pas)]), flush=True)


class Client:
  """A persistent worker subprocess (``kind`` = jax | torch) with ``threads`` threads pinned to ``cores``."""

  def __init__(self, kind: str, python: str, spec: dict, threads: int, cores: list[int]):
    env = dict(os.environ)
    if kind == "jax" and threads == 1:
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                          "intra_op_parallelism_threads=1").strip()
    if kind == "jax":
      env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    spec = dict(spec, threads=threads, cores=cores)
    self.proc = subprocess.Popen([python, HERE, f"--worker={kind}", f"--spec={json.dumps(spec)}"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(f"the {kind} worker ({python}) failed to start")
    head = json.loads(line)
    self.info, self.checks = head["info"], head["checks"]

  def time(self, size: int, pas: str) -> float:
    self.proc.stdin.write(f"{size}|{pas}\n")
    self.proc.stdin.flush()
    return float(self.proc.stdout.readline())

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def _max_diff(a: dict, b: dict) -> dict[str, float]:
  return {k: float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) for k in a}


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as fh:
      for line in fh:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--torch_python", default="", help="interpreter with torch (a separate venv; required)")
  p.add_argument("--json_out", default="", help="write all timings, ratios and checks here")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=100, help="sequence length T")
  p.add_argument("--sizes", default="128,256", help="comma-separated D = H")
  p.add_argument("--threads", default="1,2", help="comma-separated thread counts (each side, pinned)")
  p.add_argument("--repeats", type=int, default=7, help="timed calls per (size, pass) and side; median reported")
  p.add_argument("--unroll", type=int, default=1, help="jax.lax.scan unroll of the JAX layer")
  p.add_argument("--no_pin", action="store_true", help="do not pin the workers to cores")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  p.add_argument("--spec", default="", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.worker:
    worker(a.worker, json.loads(a.spec))
    return
  if not a.torch_python:
    p.error("--torch_python is required (an interpreter with torch, e.g. /work/torchenv/bin/python)")
  try:
    sizes = [int(s) for s in a.sizes.split(",") if s]
    threads = [int(s) for s in a.threads.split(",") if s]
  except ValueError:
    p.error(f"--sizes={a.sizes!r} and --threads={a.threads!r} must be comma-separated integers")
  if not sizes or min(sizes) <= 0 or not threads or min(threads) <= 0 or max(threads) > os.cpu_count():
    p.error(f"--sizes must be positive and --threads in [1, {os.cpu_count()}]")
  if min(a.batch, a.steps, a.repeats, a.unroll) <= 0:
    p.error("--batch, --steps, --repeats and --unroll must be positive")

  spec = {"batch": a.batch, "steps": a.steps, "sizes": sizes, "unroll": a.unroll}
  load0 = os.getloadavg()
  rows, infos = [], {}
  t_start = time.time()
  for n in threads:
    cores = [] if a.no_pin else list(range(n))
    jx = Client("jax", sys.executable, spec, n, cores)
    tc = Client("torch", a.torch_python, spec, n, cores)
    infos = {"jax": jx.info, "torch": tc.info}
    for size in sizes:
      diff = _max_diff(jx.checks[str(size)], tc.checks[str(size)])
      for pas in PASSES:
        jx.time(size, pas), tc.time(size, pas)  # warm-up
        ts = {"jax": [], "torch": []}
        for _ in range(a.repeats):
          ts["jax"].append(jx.time(size, pas))
          ts["torch"].append(tc.time(size, pas))
        med = {k: float(np.median(v)) for k, v in ts.items()}
        best = {k: float(np.min(v)) for k, v in ts.items()}
        rows.append({"threads": n, "size": size, "pass": pas, "jax_s": med["jax"], "torch_s": med["torch"],
                     "ratio_torch_over_jax": med["torch"] / med["jax"], "jax_min_s": best["jax"],
                     "torch_min_s": best["torch"], "ratio_of_minima": best["torch"] / best["jax"],
                     "times": ts, "max_abs_diff": diff})
        print(f"threads={n} H={size} {pas}: {med}", file=sys.stderr, flush=True)
    jx.close()
    tc.close()
  load1 = os.getloadavg()
  machine = (f"{platform.machine()} {os.cpu_count()} cores ({_cpu_name()}), jax {infos['jax']['jax']}, torch "
             f"{infos['torch']['torch']}")
  lines = [f"LSTM B={a.batch} T={a.steps} D=H, one layer, float32; {machine}; load average {load0[0]:.2f} -> "
           f"{load1[0]:.2f}; {time.time() - t_start:.0f} s", "",
           "| threads | D=H | pass | JAX ms | torch ms | torch / JAX | torch / JAX of the minima | "
           "max abs diff (out, dx, dW) |",
           "|---:|---:|---|---:|---:|---:|---:|---|"]
  for r in rows:
    d = r["max_abs_diff"]
    dw = max(v for k, v in d.items() if k.startswith("d_"))
    lines.append(f"| {r['threads']} | {r['size']} | {r['pass']} | {r['jax_s'] * 1e3:.1f} | {r['torch_s'] * 1e3:.1f} | "
                 f"{r['ratio_torch_over_jax']:.2f} | {r['ratio_of_minima']:.2f} | {d['out_last']:.1e}, "
                 f"{d['dx_last']:.1e}, {dw:.1e} |")
  print("\n".join(lines))
  worst = max(max(r["max_abs_diff"].values()) for r in rows)
  if worst > 1e-3:
    print(f"WARNING: the two sides disagree (max abs diff {worst:.2e}); the timings compare different computations",
          file=sys.stderr)
  if a.json_out:
    with open(a.json_out, "w") as fh:
      json.dump({"machine": machine, "spec": spec, "load_average": [load0, load1], "rows": rows, "info": infos},
                fh, indent=1)


if __name__ == "__main__":
  main()
