r"""WRN-16-4 train-step throughput (images/s) in JAX vs an equivalent PyTorch eager model, in one run.

  python -m benchmarks.train_step                                  # JAX only, or torch if importable
  python -m benchmarks.train_step --torch_python=/path/to/venv/bin/python   # torch in its own venv

Both sides: pre-activation WRN-16-4 (2,748,890 params with 10 classes), batch 128 of 32x32x3, SGD with
Nesterov momentum, weight decay, cross-entropy, BatchNorm in train mode; fp32; the same number of
threads. Timed over --steps steps after --warmup steps; median of --repeats. torch is never a
dependency of the project: it runs in-process if importable, else in the given interpreter.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
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


def _median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2]


def bench_jax(batch_size: int, steps: int, warmup: int, repeats: int) -> dict:
  import jax
  import numpy as np

  from research import models
  from research.train import optim
  from research.train import steps as steps_lib

  model = models.create("wrn16_4", num_classes=10)
  tx = optim.make_optimizer("nesterov", optim.make_schedule("constant", 0.1, 10), weight_decay=5e-4)
  mesh = steps_lib.make_mesh(jax.devices()[:1])
  _, state = steps_lib.init_state(model, tx, 0, (1, 32, 32, 3), mesh)
  step = steps_lib.parallelize(functools.partial(steps_lib.train_step, model=model, tx=tx,
                                                 loss_fn=steps_lib.cross_entropy), mesh)
  rng = np.random.default_rng(0)
  batch = steps_lib.global_batch({"image": rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32),
                                  "label": rng.integers(0, 10, batch_size).astype(np.int32)}, mesh)
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
          "images_per_second": batch_size / _median(times), "params": steps_lib.num_params(state.params)}


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
  results = {"jax": bench_jax(**args), "machine": f"{os.cpu_count()} CPU cores", **args}
  torch_res = _torch_result()
  if torch_res is not None:
    results["torch"] = torch_res
    results["ratio_jax_over_torch_images_per_second"] = (results["jax"]["images_per_second"]
                                                          / torch_res["images_per_second"])
  print(f"{'framework':32s} {'s/step':>8s} {'img/s':>8s} {'params':>10s}")
  for key in ("jax", "torch"):
    if key in results:
      r = results[key]
      print(f"{r['framework']:32s} {r['seconds_per_step']:8.3f} {r['images_per_second']:8.1f} {r['params']:>10,}")
  if "ratio_jax_over_torch_images_per_second" in results:
    print(f"JAX / PyTorch throughput ratio: {results['ratio_jax_over_torch_images_per_second']:.2f}x")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
