r"""Task2Vec benchmark: time to compute the Monte Carlo FIM of one task, JAX vs a PyTorch twin of the reference.

Same probe tail (CIFAR ResNet-18 of width ``--width`` from ``--start_stage`` on, BatchNorm in inference mode,
identical weights), same cached inputs, same number of samples and batch size, same fixed head. Timed:
  * jax/batch        : this library's ``montecarlo`` + ``batch`` estimator (the reference algorithm), jitted;
  * jax/per_example  : the exact per-example diagonal (``jax.vmap`` of per-example gradients);
  * torch/reference  : the aws-cv-task2vec loop (batch forward, label sampled from the softmax, ``backward()``,
                       ``grad ** 2`` accumulated per parameter), run in a subprocess with ``--torch_python`` or
                       in-process when torch is importable. torch is not a project dependency.

  python benchmarks/task2vec.py                                   # JAX only (torch if importable)
  python benchmarks/task2vec.py --torch_python=/work/tvenv/bin/python

Reports the best of ``--repeats`` steady-state runs (compilation excluded, reported separately) and checks that
the two frameworks compute the same logits on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


# ------------------------------------------------------------------------------------------ torch twin (numpy+torch)


def torch_worker(npz_path: str, out_path: str) -> None:
  """Runs in a Python that has torch (no jax needed): builds the twin from the npz weights and times it."""
  import torch
  import torch.nn.functional as F

  torch.set_num_threads(int(os.environ.get("T2V_TORCH_THREADS", os.cpu_count() or 1)))
  z = np.load(npz_path, allow_pickle=False)
  spec = json.loads(str(z["spec"]))
  p = {k: torch.tensor(z[k]) for k in z.files if k not in ("spec", "inputs")}
  inputs = torch.tensor(z["inputs"]).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
  weights = {}
  for k, v in p.items():
    if k.endswith("/kernel") and v.ndim == 4:  # HWIO -> OIHW
      v = v.permute(3, 2, 0, 1).contiguous()
    weights[k] = v.clone().requires_grad_(k.endswith("/kernel") and v.ndim == 4 or k.endswith("/scale"))

  def bn(x, prefix):
    return F.batch_norm(x, weights[prefix + "/mean"], weights[prefix + "/var"], weights[prefix + "/scale"],
                        weights[prefix + "/bias"], training=False, eps=1e-5)

  def forward(x):
    for name, stride, has_short in spec["blocks"]:
      o = F.relu(bn(x, f"{name}/BatchNorm_0"))
      sc = F.conv2d(o, weights[f"{name}/shortcut_conv/kernel"], stride=stride) if has_short else x
      y = F.conv2d(o, weights[f"{name}/Conv_0/kernel"], stride=stride, padding=1)
      y = F.conv2d(F.relu(bn(y, f"{name}/BatchNorm_1")), weights[f"{name}/Conv_1/kernel"], padding=1)
      x = y + sc
    x = F.relu(bn(x, "final_bn"))
    return x.mean((2, 3)) @ weights["head/kernel"] + weights["head/bias"]

  params = [v for v in weights.values() if v.requires_grad]
  bs = spec["batch_size"]

  def fisher():  # the reference montecarlo_fisher loop
    for q in params:
      q.grad2_acc = torch.zeros_like(q)
      q.grad_counter = 0
    gen = torch.Generator().manual_seed(0)
    for s in range(0, len(inputs), bs):
      x = inputs[s:s + bs]
      logits = forward(x)
      y = torch.multinomial(F.softmax(logits.detach(), -1), 1, generator=gen).squeeze(-1)
      loss = F.cross_entropy(logits, y)
      for q in params:
        q.grad = None
      loss.backward()
      for q in params:
        q.grad2_acc += q.grad.detach() ** 2
        q.grad_counter += 1
    return {id(q): q.grad2_acc / q.grad_counter for q in params}

  with torch.no_grad():
    logits = forward(inputs[:8]).numpy()
  times = []
  for _ in range(spec["repeats"] + 1):
    t = time.perf_counter()
    fisher()
    times.append(time.perf_counter() - t)
  json.dump({"times": times[1:], "logits8": logits.tolist(), "torch": torch.__version__,
             "threads": torch.get_num_threads()}, open(out_path, "w"))


# -------------------------------------------------------------------------------------------------- JAX side


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--width", type=int, default=16)
  ap.add_argument("--start_stage", type=int, default=3)
  ap.add_argument("--num_samples", type=int, default=512)
  ap.add_argument("--batch_size", type=int, default=32)
  ap.add_argument("--num_classes", type=int, default=5)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--torch_python", default=None, help="Python with torch for the twin (default: this one if "
                  "torch is importable, else /work/tvenv/bin/python when present).")
  ap.add_argument("--json_out", default=None)
  ap.add_argument("--torch_worker", nargs=2, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.torch_worker:
    torch_worker(*args.torch_worker)
    return {}

  import flax
  import jax

  from research.methods.task2vec import probe as probe_lib
  from research.methods.task2vec.fisher import FisherConfig, FisherEmbedder
  from research.train import steps

  mesh = steps.make_mesh(jax.devices()[:1])
  name = f"cifar_resnet18_w{args.width}"
  module = probe_lib.make_probe(name, args.num_classes)
  variables = probe_lib.init_variables(module, 0)
  rng = np.random.default_rng(0)
  # non-trivial BN statistics so that BN matters
  variables["batch_stats"] = jax.tree.map(lambda a: np.asarray(a) + rng.uniform(0.1, 0.3, np.shape(a)).astype(
      np.float32), variables["batch_stats"])
  probe = probe_lib.Probe(module, variables, args.start_stage, name)
  shape = probe_lib.trunk_output_shape(module, args.start_stage)
  inputs = rng.normal(size=(args.num_samples,) + shape).astype(np.float32)
  tv = probe.tail_variables()
  d = np.asarray(jax.eval_shape(lambda: probe_lib.make_tail_apply(module, args.start_stage)(
      tv, inputs[:1])).shape[-1])
  head = {"kernel": rng.normal(size=(int(d), args.num_classes)).astype(np.float32) * 0.5,
          "bias": np.zeros(args.num_classes, np.float32)}
  labels = np.arange(args.num_samples) % args.num_classes
  results: dict = {"config": vars(args) | {"probe": name, "jax": jax.__version__, "devices": 1,
                                           "cpu_count": os.cpu_count()}}
  apply_tail = probe_lib.make_tail_apply(module, args.start_stage)
  for est in ("batch", "per_example"):
    emb = FisherEmbedder(apply_tail, tv, num_classes_pad=args.num_classes, mesh=mesh,
                         fisher=FisherConfig(estimator=est, batch_size=args.batch_size))
    t = time.perf_counter()
    e = emb.embed(jax.random.PRNGKey(0), inputs, labels, np.zeros((len(inputs), int(d)), np.float32), head=head)
    first = time.perf_counter() - t
    times = []
    for r in range(args.repeats):
      t = time.perf_counter()
      emb.embed(jax.random.PRNGKey(r + 1), inputs, labels, np.zeros((len(inputs), int(d)), np.float32), head=head)
      times.append(time.perf_counter() - t)
    results[f"jax/{est}"] = {"best_s": min(times), "times": times, "first_call_s_incl_compile": first,
                             "dim": int(e.hessian.size)}
    print(f"jax/{est:12s} best {min(times):.3f}s (first call incl. compile {first:.1f}s)", flush=True)

  # ---- torch twin
  py = args.torch_python
  if py is None:
    try:
      import torch  # noqa: F401
      py = sys.executable
    except ImportError:
      py = "/work/tvenv/bin/python" if os.path.exists("/work/tvenv/bin/python") else None
  if py is None:
    results["torch/reference"] = "skipped: torch not importable (pass --torch_python=/path/to/python)"
    print(results["torch/reference"])
  else:
    flat = {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tv["params"]).items()}
    flat.update({"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tv["batch_stats"]).items()})
    flat["head/kernel"], flat["head/bias"] = head["kernel"], head["bias"]
    blocks = sorted({k.split("/")[0] for k in flat if k.startswith("stage")},
                    key=lambda s: (int(s[5:s.index("_")]), int(s.split("block")[1])))
    spec = {"blocks": [(b, 2 if b.endswith("block0") and b != "stage1_block0" else 1,
                        f"{b}/shortcut_conv/kernel" in flat) for b in blocks],
            "batch_size": args.batch_size, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
      npz, out = os.path.join(tmp, "w.npz"), os.path.join(tmp, "out.json")
      np.savez(npz, spec=json.dumps(spec), inputs=inputs, **flat)
      env = dict(os.environ, T2V_TORCH_THREADS=str(os.cpu_count() or 1))
      r = subprocess.run([py, os.path.abspath(__file__), "--torch_worker", npz, out], env=env,
                         capture_output=True, text=True)
      if r.returncode:
        raise RuntimeError(f"torch worker failed:\n{r.stderr[-3000:]}")
      tr = json.load(open(out))
    ref = np.asarray(apply_tail(tv, inputs[:8])) @ head["kernel"] + head["bias"]
    diff = float(np.max(np.abs(np.asarray(tr["logits8"]) - ref)))
    results["torch/reference"] = {"best_s": min(tr["times"]), "times": tr["times"], "torch": tr["torch"],
                                  "threads": tr["threads"], "max_abs_logit_diff_vs_jax": diff}
    print(f"torch/reference best {min(tr['times']):.3f}s (torch {tr['torch']}, {tr['threads']} threads; "
          f"max |logit diff| vs JAX {diff:.2e})")
    results["speedup_jax_batch_vs_torch"] = min(tr["times"]) / results["jax/batch"]["best_s"]
    results["speedup_jax_per_example_vs_torch"] = min(tr["times"]) / results["jax/per_example"]["best_s"]
    print(f"speedup JAX batch vs torch: {results['speedup_jax_batch_vs_torch']:.2f}x; "
          f"JAX per-example vs torch: {results['speedup_jax_per_example_vs_torch']:.2f}x")
  results["per_example_over_batch_cost"] = results["jax/per_example"]["best_s"] / results["jax/batch"]["best_s"]
  print(f"per-example (vmap) / batch estimator cost: {results['per_example_over_batch_cost']:.2f}x")
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
