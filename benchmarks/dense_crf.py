r"""Dense-CRF mean field (Krähenbühl & Koltun 2011): the permutohedral fast path vs the exact O(N^2) path vs
pydensecrf (densecrf 2.2's C++ lattice), 5 iterations, 13 labels, at 64x64 and 256x256, in one run.

  python -m benchmarks.dense_crf --pydensecrf_python=/work/crfvenv/bin/python
  python -m benchmarks.dense_crf --sizes=64 --repeats=2                 # quick check, JAX only

pydensecrf is a peer only, never a dependency: install it in its own venv
(``python3 -m venv /work/crfvenv && /work/crfvenv/bin/pip install pydensecrf2 numpy``); it runs in that interpreter
in a subprocess. Its model is ``DenseCRF2D(W, H, C)`` with ``addPairwiseGaussian(sxy=3, compat=3)`` and
``addPairwiseBilateral(sxy=80, srgb=13, compat=10)`` (NORMALIZE_SYMMETRIC, Potts), i.e. ``research.ops.crf``'s
defaults with ``exclude_self=False`` (its lattice sums over all j, including j = i); the table compares it with that
setting of both JAX paths, and the JAX paths with each other with the default ``exclude_self=True`` (Algorithm 1).

Inputs: a random piecewise-constant colour image (13 regions, discs and rectangles, + Gaussian noise of std 10, the
colours rounded to integers so pydensecrf's uint8 image is the same) and unary logits ``log softmax(onehot(label)
* 1.0 + N(0, 1))``. Times: median wall time over ``--repeats`` calls after one warm-up (compilation) of the whole
``jit(mean_field)`` (features, lattice construction, normalisers and iterations) for JAX; for pydensecrf the same
work (``DenseCRF2D`` + ``setUnaryEnergy`` + both ``addPairwise*`` (lattice construction) + ``inference``) and the
inference alone. The exact path is run once (no warm-up repeat) at sizes above ``--exact_repeat_max`` pixels and
skipped above ``--exact_max_pixels``. ratio = time / JAX permutohedral time (> 1: slower than the fast path).
JAX uses all cores (XLA's CPU thread pool); pydensecrf is single-threaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["64", "256"], "Square image sizes.")
flags.DEFINE_integer("num_labels", 13, "Labels.")
flags.DEFINE_integer("iters", 5, "Mean-field iterations.")
flags.DEFINE_integer("repeats", 3, "Timed calls per method and size; the median is reported.")
flags.DEFINE_integer("exact_max_pixels", 128 * 128, "Skip the exact path above this many pixels (256x256: ~7 "
                     "minutes on 2 loaded cores, extrapolated N^2 from 64x64; raise it to run it).")
flags.DEFINE_integer("exact_repeat_max", 128 * 128, "Above this many pixels the exact path runs once (compile "
                     "included in its time, reported as an upper bound).")
flags.DEFINE_float("lattice_cap_fraction", 0.5, "Also time the permutohedral path with max_lattice_points = this "
                   "fraction of H*W (0: skip); NaN (reported) if the image needs more lattice points.")
flags.DEFINE_integer("seed", 0, "Random scene seed.")
flags.DEFINE_string("pydensecrf_python", None, "Python interpreter with pydensecrf2 installed (separate venv).")
flags.DEFINE_string("output", None, "Write the results as JSON here.")

_PYDENSECRF = r"""
import json, sys, time
import numpy as np
import pydensecrf.densecrf as dcrf
spec = json.loads(sys.argv[1])
d = np.load(spec["npz"])
image = np.ascontiguousarray(d["image"].astype(np.uint8))
energy = np.ascontiguousarray(d["energy"].astype(np.float32))  # [C, N] = -logits
h, w, _ = image.shape
c = energy.shape[0]

def run():
  crf = dcrf.DenseCRF2D(w, h, c)
  crf.setUnaryEnergy(energy)
  crf.addPairwiseGaussian(sxy=3, compat=3)
  crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
  t0 = time.perf_counter()
  q = np.array(crf.inference(spec["iters"]))
  return q, time.perf_counter() - t0

run()
totals, infers = [], []
for _ in range(spec["repeats"]):
  t0 = time.perf_counter()
  q, t_inf = run()
  totals.append(time.perf_counter() - t0)
  infers.append(t_inf)
np.save(spec["out"], q.T.reshape(h, w, c).astype(np.float32))
med = lambda xs: sorted(xs)[len(xs) // 2]
print(json.dumps({"total_ms": 1e3 * med(totals), "inference_ms": 1e3 * med(infers)}))
"""


def make_scene(size: int, num_labels: int, seed: int):
  """Random piecewise-constant image [S, S, 3] (integer colours, float32) and unary logits [S, S, C] (log-probs)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  reg = np.zeros((size, size), int)
  for k in range(1, num_labels):
    if rng.random() < 0.5:
      cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.1, 0.3) * size
      m = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    else:
      y0, x0 = rng.integers(0, size - 4), rng.integers(0, size - 4)
      m = ((yy >= y0) & (yy < y0 + rng.integers(4, size // 2)) & (xx >= x0) & (xx < x0 + rng.integers(4, size // 2)))
    reg[m] = k
  colours = rng.uniform(0, 255, (num_labels, 3))
  image = np.round(np.clip(colours[reg] + rng.normal(0, 10.0, (size, size, 3)), 0, 255)).astype(np.float32)
  z = np.eye(num_labels)[reg] * 1.0 + rng.normal(0, 1.0, (size, size, num_labels))
  logits = (z - np.log(np.exp(z).sum(-1, keepdims=True))).astype(np.float32)
  return image, logits, reg


def _median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2]


def time_jax(fn, args, repeats: int, warmup: bool = True):
  """(median ms, first-call ms, output) of a jitted function."""
  import jax
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first = (time.perf_counter() - t0) * 1e3
  if not warmup:
    return first, first, out
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  return _median(times), first, out


def run_pydensecrf(image, logits, iters: int, repeats: int):
  import numpy as np
  with tempfile.TemporaryDirectory() as tmp:
    npz, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "q.npy")
    h, w, c = logits.shape
    np.savez(npz, image=image, energy=-logits.reshape(h * w, c).T)
    spec = {"npz": npz, "out": out, "iters": iters, "repeats": repeats}
    res = subprocess.run([FLAGS.pydensecrf_python, "-c", _PYDENSECRF, json.dumps(spec)], capture_output=True,
                         text=True)
    if res.returncode:
      print(f"  pydensecrf failed: {res.stderr[-2000:]}", flush=True)
      return None, None
    return json.loads(res.stdout.strip().splitlines()[-1]), np.load(out)


def compare(a, b):
  import numpy as np
  d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
          "argmax_agree": float(np.mean(np.argmax(a, -1) == np.argmax(b, -1)))}


def main(argv):
  del argv
  import functools

  import jax
  import numpy as np

  from research.ops import crf
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} cores; {FLAGS.num_labels} "
        f"labels, {FLAGS.iters} iterations, DenseCRFParams() = w1 10, theta_alpha 80, theta_beta 13, w2 3, "
        f"theta_gamma 3, normalization symmetric", flush=True)
  results = {"num_labels": FLAGS.num_labels, "iters": FLAGS.iters, "sizes": {}}
  rows = []
  for size in [int(s) for s in FLAGS.sizes]:
    image, logits, reg = make_scene(size, FLAGS.num_labels, FLAGS.seed + size)
    n = size * size
    r = {"pixels": n}
    fns = {(m, excl): jax.jit(functools.partial(crf.mean_field, num_iters=FLAGS.iters, method=m, exclude_self=excl))
           for m in ("exact", "permutohedral") for excl in (True, False)}
    out = {}
    for excl in (True, False):
      ms, first, q = time_jax(fns["permutohedral", excl], (logits, image), FLAGS.repeats)
      out["permutohedral", excl] = np.asarray(q)
      r[f"permutohedral_ms{'' if excl else '_with_self'}"] = ms
      r[f"permutohedral_first_call_ms{'' if excl else '_with_self'}"] = first
      print(f"  {size}x{size} permutohedral exclude_self={excl}: {ms:.1f} ms (first call {first:.0f} ms)", flush=True)
    lattice = crf.permutohedral_lattice(crf.appearance_features(jax.numpy.asarray(image), 80.0, 13.0))
    r["lattice_points"] = int(lattice.num_points)
    print(f"  {size}x{size}: {r['lattice_points']} lattice points for the appearance kernel (slots: {6 * n})",
          flush=True)
    if FLAGS.lattice_cap_fraction > 0:
      cap = max(1, int(FLAGS.lattice_cap_fraction * n))
      fn = jax.jit(functools.partial(crf.mean_field, num_iters=FLAGS.iters, method="permutohedral",
                                     max_lattice_points=cap))
      ms, first, q = time_jax(fn, (logits, image), FLAGS.repeats)
      r["permutohedral_capped_ms"], r["lattice_cap"] = ms, cap
      r["capped_is_finite"] = bool(np.all(np.isfinite(np.asarray(q))))
      if r["capped_is_finite"]:
        r["capped_max_abs_vs_uncapped"] = float(np.abs(np.asarray(q) - out["permutohedral", True]).max())
      print(f"  {size}x{size} permutohedral max_lattice_points={cap}: {ms:.1f} ms (first call {first:.0f} ms)"
            f"{'' if r['capped_is_finite'] else ' NaN: the image needs more lattice points'}", flush=True)
    if n <= FLAGS.exact_max_pixels:
      for excl in (True, False):
        repeat = n <= FLAGS.exact_repeat_max
        if not repeat and not excl:
          continue  # one exact run at the large size (the Algorithm 1 setting): minutes on 2 cores
        ms, first, q = time_jax(fns["exact", excl], (logits, image), FLAGS.repeats, warmup=repeat)
        out["exact", excl] = np.asarray(q)
        r[f"exact_ms{'' if excl else '_with_self'}"] = ms
        r[f"exact_timed_once{'' if excl else '_with_self'}"] = not repeat
        print(f"  {size}x{size} exact exclude_self={excl}: {ms:.1f} ms{'' if repeat else ' (one call, compile incl.)'}",
              flush=True)
    else:
      prev = [v for v in results["sizes"].values() if "exact_ms" in v and not v.get("exact_timed_once")]
      if prev:  # N^2 extrapolation from the largest size timed, printed as an estimate, never as a measurement
        r["exact_ms_estimate"] = prev[-1]["exact_ms"] * (n / prev[-1]["pixels"]) ** 2
      print(f"  {size}x{size} exact: skipped (> --exact_max_pixels)"
            + (f"; N^2 estimate {r['exact_ms_estimate'] / 1e3:.0f} s" if prev else ""), flush=True)
    if FLAGS.pydensecrf_python:
      t, q = run_pydensecrf(image, logits, FLAGS.iters, FLAGS.repeats)
      if t is not None:
        out["pydensecrf"] = q
        r["pydensecrf_ms"], r["pydensecrf_inference_ms"] = t["total_ms"], t["inference_ms"]
        print(f"  {size}x{size} pydensecrf: {t['total_ms']:.1f} ms (inference {t['inference_ms']:.1f} ms)",
              flush=True)
    acc = lambda q: float(np.mean(np.argmax(q, -1) == reg))  # noqa: E731
    r["unary_accuracy"] = float(np.mean(np.argmax(logits, -1) == reg))
    cmp = {}
    if ("exact", True) in out:
      cmp["permutohedral_vs_exact"] = compare(out["permutohedral", True], out["exact", True])
    if ("exact", False) in out:
      cmp["permutohedral_vs_exact_with_self"] = compare(out["permutohedral", False], out["exact", False])
    if "pydensecrf" in out:
      cmp["permutohedral_with_self_vs_pydensecrf"] = compare(out["permutohedral", False], out["pydensecrf"])
      if ("exact", False) in out:
        cmp["exact_with_self_vs_pydensecrf"] = compare(out["exact", False], out["pydensecrf"])
    r["accuracy"] = {f"{k[0]}{'' if k[1] else '_with_self'}" if isinstance(k, tuple) else k: acc(q)
                     for k, q in out.items()}
    r["compare"] = cmp
    results["sizes"][size] = r
    base = r["permutohedral_ms"]

    def row(name, ms, c=None, note=""):
      diff = f"{c['max_abs']:.3f} / {c['mean_abs']:.4f} | {100 * c['argmax_agree']:.2f}%" if c else "- | -"
      rows.append(f"| {size}x{size} | {name} | {ms:.1f}{note} | {ms / base:.2f} | {diff} |")

    row("JAX permutohedral (Algorithm 1, j != i)", base)
    if "permutohedral_capped_ms" in r:
      note = "" if r["capped_is_finite"] else " (NaN: cap too small)"
      rows.append(f"| {size}x{size} | JAX permutohedral, max_lattice_points = {r['lattice_cap']} (needs "
                  f"{r['lattice_points']}) | {r['permutohedral_capped_ms']:.1f}{note} | "
                  f"{r['permutohedral_capped_ms'] / base:.2f} | "
                  + (f"{r['capped_max_abs_vs_uncapped']:.1e} vs uncapped | - |" if r["capped_is_finite"]
                     else "- | - |"))
    if "exact_ms_estimate" in r:
      rows.append(f"| {size}x{size} | JAX exact O(N^2) | not run: ~{r['exact_ms_estimate'] / 1e3:.0f} s estimated "
                  f"(N^2 from the smaller size) | ~{r['exact_ms_estimate'] / base:.0f} | - | - |")
    if "exact_ms" in r:
      row("JAX exact O(N^2) (Algorithm 1, j != i)", r["exact_ms"], cmp.get("permutohedral_vs_exact"),
          " (1 call)" if r["exact_timed_once"] else "")
    row("JAX permutohedral, j = i included", r["permutohedral_ms_with_self"])
    if "exact_ms_with_self" in r:
      row("JAX exact, j = i included", r["exact_ms_with_self"], cmp.get("permutohedral_vs_exact_with_self"))
    if "pydensecrf_ms" in r:
      row("pydensecrf (lattice + inference)", r["pydensecrf_ms"], cmp.get("permutohedral_with_self_vs_pydensecrf"))
      row("pydensecrf (inference only)", r["pydensecrf_inference_ms"])
  print("\n| size | method | ms | ratio to JAX permutohedral | max / mean abs dQ vs the row's reference | argmax "
        "agreement |\n|---|---|---|---|---|---|")
  print("\n".join(rows))
  print("\nreference of each row's dQ: JAX exact vs JAX permutohedral (same exclude_self); pydensecrf vs JAX "
        "permutohedral with j = i included (the same model).")
  for size, r in results["sizes"].items():
    extra = ""
    if "exact_with_self_vs_pydensecrf" in r["compare"]:
      c = r["compare"]["exact_with_self_vs_pydensecrf"]
      extra = (f"; JAX exact (j = i included) vs pydensecrf: max {c['max_abs']:.3f}, mean {c['mean_abs']:.4f}, "
               f"argmax agreement {100 * c['argmax_agree']:.2f}%")
    print(f"{size}x{size}: pixel accuracy unary {r['unary_accuracy']:.3f}, "
          + ", ".join(f"{k} {v:.3f}" for k, v in r["accuracy"].items()) + extra)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  sys.exit(app.run(main))
