"""Benchmark research.ops: C++ FFI kernels vs the pure-JAX references vs torchvision (CPU), one table.

    .venv/bin/python benchmarks/ops.py --torch_python=/work/tvenv/bin/python --json_out=/tmp/ops_bench.json

Shapes (issue 4): RoIAlign features [2, 200, 272, 256] (P2 of an 800x1088 image, spatial_scale 1/4), K=512
boxes of log-uniform size 16..512 px, 7x7, sampling_ratio 2 and -1; DCN v2 x [2, 64, 64, 256], 3x3, Cout 256,
offset_groups 1. Forward, and forward+backward (gradients of sum(out * g) for every differentiable input).
torchvision runs in a persistent worker subprocess of a separate interpreter (``--torch_python``; torch is never a
dependency of this project) on the same inputs (generated from the same numpy seed) in NCHW layout. After a
warm-up, the FFI, reference and torchvision calls are interleaved (so all sides see the same machine load) and
each time is the median over the repeats; the table (markdown) and the load average are printed.
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

ROI_FEATURES = (2, 200, 272, 256)
ROI_K, ROI_OUT, ROI_SCALE = 512, 7, 0.25
DCN_X, DCN_K, DCN_COUT = (2, 64, 64, 256), 3, 256


# ----------------------------------------------------------------------------------------------------------
# inputs (numpy only, shared by both sides)
# ----------------------------------------------------------------------------------------------------------
def roi_inputs(seed=0):
  rng = np.random.default_rng(seed)
  n, h, w, c = ROI_FEATURES
  feats = rng.standard_normal(ROI_FEATURES, dtype=np.float32)
  size = np.exp(rng.uniform(np.log(16), np.log(512), size=(ROI_K, 2)))
  centre = rng.uniform(0, 1, size=(ROI_K, 2)) * np.array([w, h]) / ROI_SCALE
  boxes = np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
  idx = rng.integers(0, n, ROI_K).astype(np.int32)
  g = rng.standard_normal((ROI_K, ROI_OUT, ROI_OUT, c), dtype=np.float32)
  return feats, boxes, idx, g


def dcn_inputs(seed=0):
  rng = np.random.default_rng(seed)
  b, h, w, c = DCN_X
  kk = DCN_K * DCN_K
  x = rng.standard_normal(DCN_X, dtype=np.float32)
  offset = (rng.standard_normal((b, h, w, 2 * kk)) * 2).astype(np.float32)
  mask = rng.uniform(size=(b, h, w, kk)).astype(np.float32)
  weight = (rng.standard_normal((DCN_K, DCN_K, c, DCN_COUT)) / np.sqrt(kk * c)).astype(np.float32)
  bias = rng.standard_normal(DCN_COUT).astype(np.float32)
  g = rng.standard_normal((b, h, w, DCN_COUT), dtype=np.float32)
  return x, offset, mask, weight, bias, g


def timed(fn):
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


CASES = [("roi_align sr=2", "roi", 2), ("roi_align sr=-1", "roi", -1), ("deform_conv2d v2", "dcn", None)]


# ----------------------------------------------------------------------------------------------------------
# torchvision side (runs in the torch interpreter; imports no jax)
# ----------------------------------------------------------------------------------------------------------
def torch_fns():
  """{(case, pass): callable} on the shared inputs, NCHW / OIHW as torchvision wants them."""
  import torch
  import torchvision

  feats, boxes, idx, g = roi_inputs()
  f = torch.from_numpy(feats).permute(0, 3, 1, 2).contiguous()
  rois = torch.from_numpy(np.concatenate([idx[:, None].astype(np.float32), boxes], 1))
  gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous()
  x, offset, mask, weight, bias, gd = dcn_inputs()
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  ot = torch.from_numpy(offset).permute(0, 3, 1, 2).contiguous()
  mt = torch.from_numpy(mask).permute(0, 3, 1, 2).contiguous()
  wt = torch.from_numpy(weight).permute(3, 2, 0, 1).contiguous()
  bt = torch.from_numpy(bias)
  gdt = torch.from_numpy(gd).permute(0, 3, 1, 2).contiguous()
  fns = {}
  for name, kind, sr in CASES:
    if kind == "roi":
      def fwd(sr=sr):
        with torch.no_grad():
          torchvision.ops.roi_align(f, rois, ROI_OUT, ROI_SCALE, sr, True)

      def fwd_bwd(sr=sr):
        fr = f.detach().requires_grad_(True)
        (torchvision.ops.roi_align(fr, rois, ROI_OUT, ROI_SCALE, sr, True) * gt).sum().backward()
    else:
      def fwd():
        with torch.no_grad():
          torchvision.ops.deform_conv2d(xt, ot, wt, bt, padding=(1, 1), mask=mt)

      def fwd_bwd():
        args = [a.detach().requires_grad_(True) for a in (xt, ot, wt, bt, mt)]
        out = torchvision.ops.deform_conv2d(args[0], args[1], args[2], args[3], padding=(1, 1), mask=args[4])
        (out * gdt).sum().backward()
    fns[(name, "fwd")], fns[(name, "fwd_bwd")] = fwd, fwd_bwd
  return fns


def torch_worker():
  """Serves timing requests '<case>|<pass>' on stdin, one line of seconds per request on stdout."""
  import torch
  import torchvision

  fns = torch_fns()
  print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                    "threads": torch.get_num_threads()}), flush=True)
  for line in sys.stdin:
    case, pas = line.rstrip("\n").split("|")
    print(timed(fns[(case, pas)]), flush=True)


class TorchClient:
  def __init__(self, python):
    self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--torch_worker"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
    self.info = json.loads(self.proc.stdout.readline())

  def time(self, case, pas):
    self.proc.stdin.write(f"{case}|{pas}\n")
    self.proc.stdin.flush()
    return float(self.proc.stdout.readline())

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


# ----------------------------------------------------------------------------------------------------------
# JAX side
# ----------------------------------------------------------------------------------------------------------
def jax_fns(impls):
  """{(case, pass, impl): callable}, jitted; each call blocks until the result is ready."""
  import jax
  import jax.numpy as jnp

  from research import ops

  feats, boxes, idx, g = [jnp.asarray(a) for a in roi_inputs()]
  x, offset, mask, weight, bias, gd = [jnp.asarray(a) for a in dcn_inputs()]
  fns = {}
  for name, kind, sr in CASES:
    for impl in impls:
      if kind == "roi":
        op = lambda f, impl=impl, sr=sr: ops.roi_align(f, boxes, idx, ROI_OUT, spatial_scale=ROI_SCALE,
                                                       sampling_ratio=sr, aligned=True, impl=impl)
        fwd = jax.jit(op)
        fwd_bwd = jax.jit(jax.value_and_grad(lambda f, op=op: jnp.sum(op(f) * g)))
        args = (feats,)
      else:
        op = lambda x, o, m, w, b, impl=impl: ops.deform_conv2d(x, o, w, mask=m, bias=b, padding=(1, 1), impl=impl)
        fwd = jax.jit(op)
        fwd_bwd = jax.jit(jax.value_and_grad(lambda *a, op=op: jnp.sum(op(*a) * gd), argnums=(0, 1, 2, 3, 4)))
        args = (x, offset, mask, weight, bias)
      fns[(name, "fwd", impl)] = lambda f=fwd, a=args: jax.block_until_ready(f(*a))
      fns[(name, "fwd_bwd", impl)] = lambda f=fwd_bwd, a=args: jax.block_until_ready(f(*a))
  return fns


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--torch_python", default="", help="interpreter with torch+torchvision ('' to skip torchvision)")
  p.add_argument("--json_out", default="", help="write all timings and ratios here")
  p.add_argument("--repeats", type=int, default=7, help="timed calls per (op, pass) for the FFI and torchvision")
  p.add_argument("--reference_repeats", type=int, default=2, help="timed calls for the (slow) references")
  p.add_argument("--skip_reference", action="store_true")
  p.add_argument("--torch_worker", action="store_true", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.torch_worker:
    torch_worker()
    return

  import jax

  impls = ["ffi"] if a.skip_reference else ["ffi", "reference"]
  fns = jax_fns(impls)
  tv = TorchClient(a.torch_python) if a.torch_python else None
  load0 = os.getloadavg()
  times = {}
  for name, _, _ in CASES:
    for pas in ("fwd", "fwd_bwd"):
      # warm up (compile) everything, then interleave the timed calls so that all sides see the same load
      for impl in impls:
        fns[(name, pas, impl)]()
      if tv:
        tv.time(name, pas)
      ts = {k: [] for k in impls + (["torchvision"] if tv else [])}
      for r in range(a.repeats):
        ts["ffi"].append(timed(fns[(name, pas, "ffi")]))
        if tv:
          ts["torchvision"].append(tv.time(name, pas))
        if "reference" in impls and r < a.reference_repeats:
          ts["reference"].append(timed(fns[(name, pas, "reference")]))
      times[(name, pas)] = {k: float(np.median(v)) for k, v in ts.items()}
      print(f"{name} {pas}: {times[(name, pas)]}", file=sys.stderr, flush=True)
  load1 = os.getloadavg()
  if tv:
    tv.close()

  machine = (f"{platform.machine()} {os.cpu_count()} cores ({_cpu_name()}), jax {jax.__version__}"
             + (f", torch {tv.info['torch']} / torchvision {tv.info['torchvision']} ({tv.info['threads']} threads)"
                if tv else ""))
  header = "| op | pass | FFI ms | reference ms | torchvision ms | reference/FFI | torchvision/FFI |"
  lines = [f"machine: {machine}; load average {load0[0]:.1f} -> {load1[0]:.1f}", "", header,
           "|---|---|---:|---:|---:|---:|---:|"]
  rows = []
  fmt = lambda v: f"{v * 1e3:.1f}" if v is not None else "-"
  for (name, pas), t in times.items():
    ffi, ref, tvt = t["ffi"], t.get("reference"), t.get("torchvision")
    rows.append({"op": name, "pass": pas, "ffi_s": ffi, "reference_s": ref, "torchvision_s": tvt,
                 "reference_over_ffi": ref / ffi if ref else None, "torchvision_over_ffi": tvt / ffi if tvt else None})
    lines.append(f"| {name} | {pas} | {fmt(ffi)} | {fmt(ref)} | {fmt(tvt)} | "
                 f"{f'{ref / ffi:.1f}x' if ref else '-'} | {f'{tvt / ffi:.1f}x' if tvt else '-'} |")
  print("\n".join(lines))
  if a.json_out:
    with open(a.json_out, "w") as fh:
      json.dump({"machine": machine, "load_average": [load0, load1], "rows": rows,
                 "torch": tv.info if tv else None}, fh, indent=1)


def _cpu_name():
  try:
    with open("/proc/cpuinfo") as fh:
      for line in fh:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


if __name__ == "__main__":
  main()
