"""Benchmark research.ops: the fast path (C++ FFI kernels on CPU, Pallas kernels on GPU) vs the XLA (gather /
blocked) paths vs the exact pure-JAX references vs torchvision (on the same device), one table, plus XLA's own FLOP /
byte counts of the XLA path and the reference.

    # on a GPU machine (torchvision CUDA ops on the same GPU):
    python benchmarks/ops.py --torch_python=/path/to/torch/venv/bin/python --json_out=ops_gpu.json
    python benchmarks/ops.py --cases=roi,nms --repeats=3    # a subset

    .venv/bin/python benchmarks/ops.py --torch_python=/work/tvenv/bin/python --json_out=/tmp/ops_bench.json

Shapes (issue 4): RoIAlign features [2, 200, 272, 256] (P2 of an 800x1088 image, spatial_scale 1/4), K=512
boxes of log-uniform size 16..512 px, 7x7, sampling_ratio 2 and -1; DCN v2 x [2, 64, 64, 256], 3x3, Cout 256,
offset_groups 1; PS-RoIAlign (R-FCN) features [2, 50, 68, 7*7*21] (stride 16), K=512, 7x7, sampling_ratio 2; RoIPool
(Fast R-CNN) features [2, 50, 68, 256], K=512, 7x7; NMS of N=2000 boxes (IoU 0.5, all kept indices).
Forward, and forward+backward (gradients of sum(out * g) for every differentiable input).
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
PS_FEATURES, PS_SCALE = (2, 50, 68, 7 * 7 * 21), 1 / 16
POOL_FEATURES = (2, 50, 68, 256)
NMS_N, NMS_IOU = 2000, 0.5


# ----------------------------------------------------------------------------------------------------------
# inputs (numpy only, shared by both sides)
# ----------------------------------------------------------------------------------------------------------
def roi_inputs(seed=0):
  """RoIAlign features, boxes, box indices and the cotangent ``g`` of the issue-4 shapes."""
  feats, boxes, idx = roi_inputs_for(ROI_FEATURES, ROI_SCALE, seed)
  rng = np.random.default_rng(seed + 1)
  g = rng.standard_normal((ROI_K, ROI_OUT, ROI_OUT, ROI_FEATURES[-1]), dtype=np.float32)
  return feats, boxes, idx, g


def roi_inputs_for(features_shape, scale, seed=0):
  """Features of ``features_shape`` and the same kind of boxes as ``roi_inputs`` at ``scale``."""
  rng = np.random.default_rng(seed)
  n, h, w, c = features_shape
  feats = rng.standard_normal(features_shape, dtype=np.float32)
  size = np.exp(rng.uniform(np.log(16), np.log(512), size=(ROI_K, 2)))
  centre = rng.uniform(0, 1, size=(ROI_K, 2)) * np.array([w, h]) / scale
  boxes = np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
  idx = rng.integers(0, n, ROI_K).astype(np.int32)
  return feats, boxes, idx


def nms_inputs(seed=0):
  """N boxes in clusters (so that suppression happens), scores with ties."""
  rng = np.random.default_rng(seed)
  centres = rng.uniform(0, 800, size=(NMS_N // 10, 2)).repeat(10, axis=0) + rng.normal(0, 8, size=(NMS_N, 2))
  size = rng.uniform(20, 120, size=(NMS_N, 2))
  boxes = np.concatenate([centres - size / 2, centres + size / 2], 1).astype(np.float32)
  scores = np.round(rng.uniform(size=NMS_N), 3).astype(np.float32)
  return boxes, scores


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


CASES = [("roi_align sr=2", "roi", 2), ("roi_align sr=-1", "roi", -1), ("ps_roi_align sr=2", "ps", 2),
         ("roi_pool", "pool", None), ("deform_conv2d v2", "dcn", None), ("nms N=2000", "nms", None)]
PASSES = {"roi": ("fwd", "fwd_bwd"), "ps": ("fwd", "fwd_bwd"), "pool": ("fwd", "fwd_bwd"),
          "dcn": ("fwd", "fwd_bwd"), "nms": ("fwd",)}
# "xla" is the same computation as "reference" for deformable convolution (gather im2col + GEMM)
IMPLS_OF = {"dcn": ("fast", "reference")}
HAS_PALLAS = ("roi", "ps", "dcn")  # kinds with a Pallas kernel (the fast path off CPU)


def fast_impl(kind, backend):
  """The hand-written fast path of ``kind`` on ``backend``: the C++ kernel on CPU, the Pallas kernel on GPU."""
  if backend == "cpu":
    return "ffi"
  return "pallas" if kind in HAS_PALLAS else None


# ----------------------------------------------------------------------------------------------------------
# torchvision side (runs in the torch interpreter; imports no jax)
# ----------------------------------------------------------------------------------------------------------
def torch_fns(device="cpu"):
  """{(case, pass): callable} on the shared inputs, NCHW / OIHW as torchvision wants them, on ``device``; each
  callable waits for the device (``torch.cuda.synchronize``)."""
  import torch
  import torchvision

  torch_from_numpy = lambda a: torch.from_numpy(a).to(device)  # noqa: E731

  feats, boxes, idx, g = roi_inputs()
  f = torch_from_numpy(feats).permute(0, 3, 1, 2).contiguous()
  rois = torch_from_numpy(np.concatenate([idx[:, None].astype(np.float32), boxes], 1))
  gt = torch_from_numpy(g).permute(0, 3, 1, 2).contiguous()
  x, offset, mask, weight, bias, gd = dcn_inputs()
  xt = torch_from_numpy(x).permute(0, 3, 1, 2).contiguous()
  ot = torch_from_numpy(offset).permute(0, 3, 1, 2).contiguous()
  mt = torch_from_numpy(mask).permute(0, 3, 1, 2).contiguous()
  wt = torch_from_numpy(weight).permute(3, 2, 0, 1).contiguous()
  bt = torch_from_numpy(bias)
  gdt = torch_from_numpy(gd).permute(0, 3, 1, 2).contiguous()
  psf, psb, psi = roi_inputs_for(PS_FEATURES, PS_SCALE)
  psf = torch_from_numpy(psf).permute(0, 3, 1, 2).contiguous()
  psr = torch_from_numpy(np.concatenate([psi[:, None].astype(np.float32), psb], 1))
  pof, pob, poi = roi_inputs_for(POOL_FEATURES, PS_SCALE)
  pof = torch_from_numpy(pof).permute(0, 3, 1, 2).contiguous()
  por = torch_from_numpy(np.concatenate([poi[:, None].astype(np.float32), pob], 1))
  nb, ns = [torch_from_numpy(a) for a in nms_inputs()]
  fns = {}
  for name, kind, sr in CASES:
    if kind in ("ps", "pool"):
      fr_, rr_, op_ = (psf, psr, torchvision.ops.ps_roi_align) if kind == "ps" else (pof, por, torchvision.ops.roi_pool)
      extra = (sr,) if kind == "ps" else ()

      def fwd(f=fr_, r=rr_, op=op_, extra=extra):
        with torch.no_grad():
          op(f, r, ROI_OUT, PS_SCALE, *extra)

      def fwd_bwd(f=fr_, r=rr_, op=op_, extra=extra):
        fr = f.detach().requires_grad_(True)
        out = op(fr, r, ROI_OUT, PS_SCALE, *extra)
        (out * torch.ones_like(out)).sum().backward()
    elif kind == "nms":
      def fwd():
        torchvision.ops.nms(nb, ns, NMS_IOU)

      fwd_bwd = None
    elif kind == "roi":
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
  sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)

  def synced(fn):
    def call():
      fn()
      sync()
    return call
  return {k: synced(v) for k, v in fns.items() if v is not None}


def torch_worker(device):
  """Serves timing requests '<case>|<pass>' on stdin, one line of seconds per request on stdout."""
  import torch
  import torchvision

  fns = torch_fns(device)
  print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                    "threads": torch.get_num_threads(), "available": ["|".join(k) for k in fns]}), flush=True)
  for line in sys.stdin:
    case, pas = line.rstrip("\n").split("|")
    print(timed(fns[(case, pas)]), flush=True)


class TorchClient:
  def __init__(self, python, device="cpu"):
    self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--torch_worker", f"--torch_device={device}"],
                                 stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
    self.info = json.loads(self.proc.stdout.readline())
    self.available = {tuple(k.split("|")) for k in self.info.pop("available")}

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
def jax_fns(kinds=None):
  """{(case, pass, impl): (jitted fn, args)} for the cases of ``kinds`` (all: None); ``run`` calls one and blocks
  until the result is ready. ``impl`` "fast" is the C++ kernel on CPU and the Pallas kernel on GPU."""
  import jax
  import jax.numpy as jnp

  from research import ops

  feats, boxes, idx, g = [jnp.asarray(a) for a in roi_inputs()]
  x, offset, mask, weight, bias, gd = [jnp.asarray(a) for a in dcn_inputs()]
  # the adaptive grid of these boxes reaches ceil(512/4/7) = 19 samples per bin: give the XLA path that bound
  bound = int(np.ceil(float(np.max(np.asarray(boxes)[:, 2:] - np.asarray(boxes)[:, :2])) * ROI_SCALE / ROI_OUT))
  psf, psb, psi = [jnp.asarray(a) for a in roi_inputs_for(PS_FEATURES, PS_SCALE)]
  pof, pob, poi = [jnp.asarray(a) for a in roi_inputs_for(POOL_FEATURES, PS_SCALE)]
  nb, ns = [jnp.asarray(a) for a in nms_inputs()]
  fns = {}
  backend = jax.default_backend()
  for name, kind, sr in CASES:
    if kinds and kind not in kinds:
      continue
    for label in IMPLS_OF.get(kind, ("fast", "xla", "reference")):
      impl = fast_impl(kind, backend) if label == "fast" else label
      if impl is None:
        continue
      if kind == "roi":
        op = lambda f, impl=impl, sr=sr: ops.roi_align(f, boxes, idx, ROI_OUT, spatial_scale=ROI_SCALE,
                                                       sampling_ratio=sr, aligned=True, impl=impl,
                                                       adaptive_grid_bound=bound)
        args, g_ = (feats,), g
      elif kind == "ps":
        op = lambda f, impl=impl, sr=sr: ops.ps_roi_align(f, psb, psi, ROI_OUT, spatial_scale=PS_SCALE,
                                                          sampling_ratio=sr, impl=impl)
        args, g_ = (psf,), 1.0
      elif kind == "pool":
        op = lambda f, impl=impl: ops.roi_pool(f, pob, poi, ROI_OUT, spatial_scale=PS_SCALE, impl=impl)
        args, g_ = (pof,), 1.0
      elif kind == "nms":
        op = lambda b, s, impl=impl: ops.nms_padded(b, s, NMS_IOU, NMS_N, impl=impl)
        args = (nb, ns)
      else:
        op = lambda x, o, m, w, b, impl=impl: ops.deform_conv2d(x, o, w, mask=m, bias=b, padding=(1, 1), impl=impl)
        args, g_ = (x, offset, mask, weight, bias), gd
      fns[(name, "fwd", label)] = (jax.jit(op), args)
      if "fwd_bwd" in PASSES[kind]:
        argnums = tuple(range(len(args)))
        loss = lambda *a, op=op, g_=g_: jnp.sum(op(*a) * g_)
        fns[(name, "fwd_bwd", label)] = (jax.jit(jax.value_and_grad(loss, argnums=argnums)), args)
  return fns


def run(entry):
  import jax
  fn, args = entry
  return jax.block_until_ready(fn(*args))


def cost(entry):
  """XLA's FLOP and byte counts of the whole computation, from the lowered HLO with the memory-bounding chunk loops
  of ``research.ops.roi`` switched off (XLA counts a loop body once, not once per iteration) and the XLA paths'
  exact ``lax.cond`` fallback branch removed (it runs only for grids beyond the static bound, not here). Custom
  calls count as 0, so only the pure-JAX paths are reported."""
  import jax

  from research.ops import roi
  fn, args = entry
  saved = roi._ELEMS_PER_CHUNK, roi._roi_align_xla, roi._roi_pool_xla
  align, pool = roi._roi_align_xla, roi._roi_pool_xla
  try:
    roi._ELEMS_PER_CHUNK = 1 << 62
    roi._roi_align_xla = lambda *a: align(*a, False)
    roi._roi_pool_xla = lambda *a: pool(*a, False)
    jax.clear_caches()
    c = jax.jit(fn).lower(*args).cost_analysis()
  finally:
    roi._ELEMS_PER_CHUNK, roi._roi_align_xla, roi._roi_pool_xla = saved
    jax.clear_caches()
  c = c[0] if isinstance(c, (list, tuple)) else c
  return float(c.get("flops", 0.0)), float(c.get("bytes accessed", 0.0))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--torch_python", default="", help="interpreter with torch+torchvision ('' to skip torchvision)")
  p.add_argument("--json_out", default="", help="write all timings and ratios here")
  p.add_argument("--repeats", type=int, default=7, help="timed calls per (op, pass) for FFI, XLA and torchvision")
  p.add_argument("--reference_repeats", type=int, default=2, help="timed calls for the (slow) references")
  p.add_argument("--skip_reference", action="store_true")
  p.add_argument("--torch_device", default="", help="torch device ('' = cuda when JAX runs on a GPU, else cpu)")
  p.add_argument("--cases", default="", help=f"comma-separated subset of {sorted(PASSES)} ('' = all)")
  p.add_argument("--torch_worker", action="store_true", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.torch_worker:
    torch_worker(a.torch_device or "cpu")
    return
  kinds = [k for k in a.cases.split(",") if k]
  if any(k not in PASSES for k in kinds):
    p.error(f"--cases={a.cases!r}: choose from {sorted(PASSES)}")

  import jax

  backend = jax.default_backend()
  fns = jax_fns(kinds)
  if a.skip_reference:
    fns = {k: v for k, v in fns.items() if k[2] != "reference"}
  tv = (TorchClient(a.torch_python, a.torch_device or ("cpu" if backend == "cpu" else "cuda"))
        if a.torch_python else None)
  load0 = os.getloadavg()
  times, costs = {}, {}
  for name, kind, _ in CASES:
    for pas in PASSES[kind]:
      impls = [k[2] for k in fns if k[:2] == (name, pas)]
      if not impls:
        continue
      # warm up (compile) everything, then interleave the timed calls so that all sides see the same load
      for impl in impls:
        run(fns[(name, pas, impl)])
      use_tv = tv is not None and (name, pas) in tv.available
      if use_tv:
        tv.time(name, pas)
      ts = {k: [] for k in impls + (["torchvision"] if use_tv else [])}
      for r in range(a.repeats):
        for impl in impls:
          if impl != "reference" or r < a.reference_repeats:
            ts[impl].append(timed(lambda e=fns[(name, pas, impl)]: run(e)))
        if use_tv:
          ts["torchvision"].append(tv.time(name, pas))
      times[(name, pas)] = {k: float(np.median(v)) for k, v in ts.items()}
      print(f"{name} {pas}: {times[(name, pas)]}", file=sys.stderr, flush=True)
  load1 = os.getloadavg()
  if tv:
    tv.close()
  for (name, pas, impl), entry in fns.items():  # after the timings: counting clears the compilation caches
    if impl != "fast" and not name.startswith(("nms", "deform")):  # NMS: while loops; DCN: one path
      costs[(name, pas, impl)] = cost(entry)

  fast_name = "C++ FFI" if backend == "cpu" else "Pallas"
  machine = (f"{platform.machine()} {os.cpu_count()} cores ({_cpu_name()}), {jax.devices()[0].device_kind}, "
             f"jax {jax.__version__}"
             + (f", torch {tv.info['torch']} / torchvision {tv.info['torchvision']} ({tv.info['threads']} threads)"
                if tv else ""))
  header = (f"| op | pass | {fast_name} ms | XLA ms | reference ms | torchvision ms | XLA/fast | reference/XLA | "
            "torchvision/fast | reference/XLA GFLOP | reference/XLA GB |")
  lines = [f"machine: {machine}; load average {load0[0]:.1f} -> {load1[0]:.1f}", "", header,
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  rows = []
  fmt = lambda v: f"{v * 1e3:.1f}" if v is not None else "-"
  ratio = lambda a_, b_: f"{a_ / b_:.1f}x" if a_ and b_ else "-"
  for (name, pas), t in times.items():
    ffi, xla, ref, tvt = t.get("fast"), t.get("xla"), t.get("reference"), t.get("torchvision")
    xla_impl = "xla" if xla is not None else "reference"
    cr, cx = costs.get((name, pas, "reference")), costs.get((name, pas, xla_impl))
    rows.append({"op": name, "pass": pas, "fast_impl": fast_name, "fast_s": ffi, "xla_s": xla, "reference_s": ref, "torchvision_s": tvt,
                 "reference_flops": cr and cr[0], "reference_bytes": cr and cr[1],
                 "xla_flops": cx and cx[0], "xla_bytes": cx and cx[1]})
    flops = (f"{cr[0] / 1e9:.2f} / {cx[0] / 1e9:.3f}" if cr and cx and xla is not None else "-")
    gbytes = (f"{cr[1] / 1e9:.2f} / {cx[1] / 1e9:.3f}" if cr and cx and xla is not None else "-")
    lines.append(f"| {name} | {pas} | {fmt(ffi)} | {fmt(xla)} | {fmt(ref)} | {fmt(tvt)} | {ratio(xla, ffi)} | "
                 f"{ratio(ref, xla)} | {ratio(tvt, ffi)} | {flops} | {gbytes} |")
  print("\n".join(lines))
  if a.json_out:
    with open(a.json_out, "w") as fh:
      json.dump({"machine": machine, "backend": backend, "load_average": [load0, load1], "rows": rows,
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
