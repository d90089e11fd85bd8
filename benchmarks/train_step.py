r"""WRN-16-4 train-step throughput (images/s) in JAX vs an equivalent PyTorch eager model, in one run; also the
same step before the port to the generic Task loop (git ref, in a worktree) and the loop's own overhead per step.

  python -m benchmarks.train_step                                  # JAX only, or torch if importable
  python -m benchmarks.train_step --torch_python=/path/to/venv/bin/python   # torch in its own venv

Both sides: pre-activation WRN-16-4 (2,748,890 params with 10 classes), batch 128 of 32x32x3, SGD with
Nesterov momentum, weight decay, cross-entropy, BatchNorm in train mode; fp32; the same number of
threads. Timed over --steps steps after --warmup steps; median of --repeats. torch is never a
dependency of the project: it runs in-process if importable, else in the given interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("steps", 5, "Timed steps per repeat.")
flags.DEFINE_integer("warmup", 2, "Untimed steps (compilation) before timing.")
flags.DEFINE_integer("repeats", 3, "Repeats; the median is reported.")
flags.DEFINE_string("torch_python", None, "Python interpreter with torch installed (separate venv).")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
flags.DEFINE_bool("torch_only", False, "Internal: run only the PyTorch side and print JSON.")
flags.DEFINE_string("pre_port_ref", "d10ff7e", "Git ref of the step before the Task port, timed in the same run "
                    "(empty: skip).")


def _median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2]


def _jax_task(batch_size: int):
  import jax
  import jax.numpy as jnp

  from research import models
  from research.train import classify, losses, optim
  from research.train import task as task_lib

  model = models.create("wrn16_4", num_classes=10)
  tx = optim.make_optimizer("nesterov", optim.make_schedule("constant", 0.1, 10), weight_decay=5e-4)
  task = classify.ClassificationTask(model=model, tx=tx, loss_fn=losses.cross_entropy, image_shape=(32, 32, 3),
                                     num_classes=10)
  mesh = task_lib.make_mesh(jax.devices()[:1])
  shapes = {"image": jax.ShapeDtypeStruct((batch_size, 32, 32, 3), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  return task, mesh, shapes


def _random_batch(batch_size: int, rows: int | None = None):
  import numpy as np
  rng = np.random.default_rng(0)
  n = rows or batch_size
  return {"image": rng.normal(size=(n, 32, 32, 3)).astype(np.float32),
          "label": rng.integers(0, 10, n).astype(np.int32)}


def bench_jax(batch_size: int, steps: int, warmup: int, repeats: int) -> dict:
  """The jitted step alone (the loop's compiled ``task.update``), same batch every step."""
  import jax

  from research.train import task as task_lib
  from research.train.loop import num_params

  task, mesh, shapes = _jax_task(batch_size)
  _, state = task_lib.init_train_state(task, 0, shapes, mesh)
  step = task_lib.compiled_train_step(task, mesh)
  batch = task_lib.global_batch(_random_batch(batch_size), mesh)
  for _ in range(warmup):
    state, m = step(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, batch)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - t) / steps)
  return {"framework": f"jax {jax.__version__}", "seconds_per_step": _median(times),
          "images_per_second": batch_size / _median(times), "params": num_params(state.params)}


def bench_loop(batch_size: int, steps: int, warmup: int, repeats: int) -> dict:
  """``loop.train`` end to end (host batches from ``ArrayBatches``, prefetch, metrics every 10 steps, no
  checkpoints): seconds per step after ``warmup`` steps; the loop's overhead is this minus ``bench_jax``."""
  import jax

  from research.data.memory import ArrayBatches
  from research.train import loop

  task, mesh, _ = _jax_task(batch_size)
  times = []
  for r in range(repeats):
    marks = {}

    def on_step(s, m):  # times steps warmup+1 .. warmup+steps, each ended by its metrics being ready
      if s in (warmup, warmup + steps):
        jax.block_until_ready(m)
        marks["t0" if s == warmup else "t1"] = time.perf_counter()
      return False

    data = ArrayBatches(_random_batch(batch_size, rows=8 * batch_size), global_batch_size=batch_size, seed=r)
    loop.train(task, data, mesh=mesh, workdir=None, on_step=on_step,
                          config=loop.LoopConfig(num_steps=warmup + steps, checkpoint_every=0, log_every=10,
                                                 progress_bar=False))
    times.append((marks["t1"] - marks["t0"]) / steps)
  return {"framework": "jax loop.train", "seconds_per_step": _median(times),
          "images_per_second": batch_size / _median(times), "params": 0}


def bench_pre_port(ref: str, args: dict) -> dict | None:
  """The same step at git ``ref`` (before the Task port: ``steps.train_step``), in a worktree, same machine."""
  import tempfile
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  tree = tempfile.mkdtemp(prefix="bench_pre_port_")
  made = subprocess.run(["git", "worktree", "add", "--detach", tree, ref], cwd=root, capture_output=True, text=True)
  if made.returncode:
    print(f"skipping the pre-port step: cannot check out {ref!r} ({made.stderr.strip()[:200]})")
    return None
  try:
    out = subprocess.run([sys.executable, "-c", _PRE_PORT.format(tree=tree, **args)], cwd=tree,
                         capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["framework"] = f"jax step at {ref} (pre-port)"
    return res
  finally:
    subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=root, capture_output=True)


_PRE_PORT = """
import sys
sys.meta_path = [f for f in sys.meta_path if "Redirect" not in type(f).__name__]  # not the editable install
sys.path.insert(0, {tree!r})
for k in [m for m in sys.modules if m.startswith(("research", "benchmarks"))]: del sys.modules[k]
import json, research; assert research.__file__.startswith({tree!r}), research.__file__
from benchmarks import train_step as b
print(json.dumps(b.bench_jax({batch_size}, {steps}, {warmup}, {repeats})))
"""


def bench_torch(batch_size: int, steps: int, warmup: int, repeats: int) -> dict:
  import torch
  from torch import nn

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.short = nn.Conv2d(cin, cout, 1, stride, bias=False) if (cin != cout or stride != 1) else None

    def forward(self, x):
      o = torch.relu(self.bn1(x))
      y = self.conv2(torch.relu(self.bn2(self.conv1(o))))
      return y + (self.short(o) if self.short is not None else x)

  class WRN(nn.Module):  # WRN-16-4: n=2 blocks per stage, widths 64/128/256
    def __init__(self, k=4, n=2, classes=10):
      super().__init__()
      self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
      layers, cin = [], 16
      for i, w in enumerate((16 * k, 32 * k, 64 * k)):
        for j in range(n):
          layers.append(Block(cin, w, 2 if (j == 0 and i > 0) else 1))
          cin = w
      self.blocks, self.bn, self.fc = nn.Sequential(*layers), nn.BatchNorm2d(cin), nn.Linear(cin, classes)

    def forward(self, x):
      x = torch.relu(self.bn(self.blocks(self.stem(x))))
      return self.fc(x.mean((2, 3)))

  torch.manual_seed(0)
  model = WRN()
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=0.1, momentum=0.9, nesterov=True)
  x = torch.randn(batch_size, 3, 32, 32)
  y = torch.randint(0, 10, (batch_size,))
  loss_fn = nn.CrossEntropyLoss()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss

  for _ in range(warmup):
    step()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      step()
    times.append((time.perf_counter() - t) / steps)
  return {"framework": f"torch {torch.__version__} eager", "seconds_per_step": _median(times),
          "images_per_second": batch_size / _median(times), "params": sum(p.numel() for p in model.parameters()),
          "threads": torch.get_num_threads()}


def _torch_result() -> dict | None:
  args = dict(batch_size=FLAGS.batch_size, steps=FLAGS.steps, warmup=FLAGS.warmup, repeats=FLAGS.repeats)
  try:
    import torch  # noqa: F401
    return bench_torch(**args)
  except ImportError:
    pass
  if not FLAGS.torch_python:
    return None
  out = subprocess.run([FLAGS.torch_python, "-m", "benchmarks.train_step", "--torch_only",
                        *[f"--{k}={v}" for k, v in args.items()]],
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": ""})
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  args = dict(batch_size=FLAGS.batch_size, steps=FLAGS.steps, warmup=FLAGS.warmup, repeats=FLAGS.repeats)
  if FLAGS.torch_only:
    print(json.dumps(bench_torch(**args)))
    return
  results = {"jax": bench_jax(**args), "loop": bench_loop(**args), "machine": f"{os.cpu_count()} CPU cores", **args}
  results["loop_overhead_seconds_per_step"] = results["loop"]["seconds_per_step"] - results["jax"]["seconds_per_step"]
  pre = bench_pre_port(FLAGS.pre_port_ref, args) if FLAGS.pre_port_ref else None
  if pre is not None:
    results["pre_port"] = pre
    results["ratio_task_step_over_pre_port_images_per_second"] = (results["jax"]["images_per_second"]
                                                                   / results["pre_port"]["images_per_second"])
  torch_res = _torch_result()
  if torch_res is not None:
    results["torch"] = torch_res
    results["ratio_jax_over_torch_images_per_second"] = (results["jax"]["images_per_second"]
                                                          / torch_res["images_per_second"])
  print(f"{'framework':32s} {'s/step':>8s} {'img/s':>8s} {'params':>10s}")
  for key in ("jax", "loop", "pre_port", "torch"):
    if key in results:
      r = results[key]
      print(f"{r['framework']:32s} {r['seconds_per_step']:8.3f} {r['images_per_second']:8.1f} {r['params']:>10,}")
  print(f"loop overhead: {1e3 * results['loop_overhead_seconds_per_step']:.1f} ms/step")
  if "pre_port" in results:
    print(f"Task step / pre-port step throughput ratio: "
          f"{results['ratio_task_step_over_pre_port_images_per_second']:.3f}x")
  if "ratio_jax_over_torch_images_per_second" in results:
    print(f"JAX / PyTorch throughput ratio: {results['ratio_jax_over_torch_images_per_second']:.2f}x")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
