r"""WGAN-GP generator iteration (n_critic critic updates with the gradient penalty's double backward + one generator
update) in JAX vs a PyTorch twin, in one run.

  python -m benchmarks.wgan_gp --torch_python=/work/torchenv/bin/python
  python -m benchmarks.wgan_gp --image_size=16 --width=32 --repeats=3          # quick check

JAX: the training loop's own compiled step (``jit(shard_map(GANTask.update))``, state donated) of
``research.train.generative.GANTask`` with ``loss_type="wgan_gp"`` on one CPU device: DCGAN generator (BatchNorm,
transposed 4x4 / stride-2 convolutions) and critic (4x4 / stride-2 convolutions, LeakyReLU, no normalisation), Adam
(1e-4, beta = (0, 0.9)), lambda = 10, ``n_critic`` = 5, noise of ``z_dim`` = 64. PyTorch: the same nets
(``ConvTranspose2d(k=4, s=2, p=1)`` / ``Conv2d(k=4, s=2, p=1)`` are the same shapes as the SAME-padded flax layers;
parameter counts are printed and must agree), the penalty through ``torch.autograd.grad(create_graph=True)``, in
its own interpreter (torch is never a dependency), eager. Same threads. Each number is the median over
``--repeats`` timings of ``--iters`` generator iterations after ``--warmup``; ratio = peer time / JAX time
(> 1: JAX faster).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 32, "Image size (8, 16, 32, 64).")
flags.DEFINE_integer("channels", 1, "Image channels.")
flags.DEFINE_integer("width", 64, "Base width of both nets.")
flags.DEFINE_integer("batch_size", 64, "Real examples per critic update.")
flags.DEFINE_integer("n_critic", 5, "Critic updates per generator iteration.")
flags.DEFINE_integer("iters", 10, "Timed generator iterations per repeat.")
flags.DEFINE_integer("warmup", 2, "Untimed iterations first (compilation).")
flags.DEFINE_integer("repeats", 5, "Repeats; the median is reported.")
flags.DEFINE_integer("threads", 0, "Threads for torch (0 = os.cpu_count()).")
flags.DEFINE_string("torch_python", None, "Python interpreter with torch installed (separate venv).")
flags.DEFINE_string("output", None, "Write the results as JSON here.")

_TORCH = r"""
import json, math, sys, time
import numpy as np
import torch
from torch import nn
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
torch.manual_seed(0)
S, C, W, B, NC, Z = spec["image_size"], spec["channels"], spec["width"], spec["batch_size"], spec["n_critic"], 64
stages = int(math.log2(S // 4))
top = W * 2 ** (stages - 1)

class G(nn.Module):
  def __init__(self):
    super().__init__()
    self.project = nn.Linear(Z, 4 * 4 * top); self.bn0 = nn.BatchNorm2d(top, momentum=0.1, eps=1e-5)
    layers, c = [], top
    for i in range(stages):
      out = W * 2 ** (stages - 2 - i) if i < stages - 1 else W
      layers += [nn.ConvTranspose2d(c, out, 4, 2, 1), nn.BatchNorm2d(out, eps=1e-5), nn.ReLU()]
      c = out
    self.up = nn.Sequential(*layers)
    self.to_image = nn.Conv2d(c, C, 3, 1, 1)
  def forward(self, z):
    h = torch.relu(self.bn0(self.project(z).view(-1, 4, 4, top).permute(0, 3, 1, 2)))
    return torch.tanh(self.to_image(self.up(h)))

class D(nn.Module):
  def __init__(self):
    super().__init__()
    layers, c = [], C
    for i in range(stages):
      layers += [nn.Conv2d(c, W * 2 ** i, 4, 2, 1), nn.LeakyReLU(0.2)]
      c = W * 2 ** i
    self.down = nn.Sequential(*layers)
    self.score = nn.Linear(c * 16, 1)
  def forward(self, x):
    return self.score(self.down(x).flatten(1))[:, 0]

g, d = G(), D()
count = lambda m: sum(p.numel() for p in m.parameters())
opt_g = torch.optim.Adam(g.parameters(), 1e-4, betas=(0.0, 0.9))
opt_d = torch.optim.Adam(d.parameters(), 1e-4, betas=(0.0, 0.9))
real = torch.rand(NC, B, C, S, S) * 2 - 1

def iteration():
  for i in range(NC):
    x = real[i]
    with torch.no_grad():
      fake = g(torch.randn(B, Z))
    eps = torch.rand(B, 1, 1, 1)
    x_hat = (eps * x + (1 - eps) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(d(x_hat).sum(), x_hat, create_graph=True)
    gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    loss = d(fake).mean() - d(x).mean() + 10.0 * gp
    opt_d.zero_grad(set_to_none=True); loss.backward(); opt_d.step()
  loss_g = -d(g(torch.randn(B, Z))).mean()
  opt_g.zero_grad(set_to_none=True); loss_g.backward(); opt_g.step()
  return float(loss_g)

for _ in range(spec["warmup"]):
  iteration()
times = []
for _ in range(spec["repeats"]):
  t0 = time.perf_counter()
  for _ in range(spec["iters"]):
    iteration()
  times.append((time.perf_counter() - t0) / spec["iters"])
print(json.dumps({"seconds_per_iteration": float(np.median(times)), "times": times,
                  "params_generator": count(g), "params_critic": count(d), "torch": torch.__version__}))
"""


def _jax(spec: dict) -> dict:
  import jax
  import numpy as np

  from research import models
  from research.train import generative as gen
  from research.train import task as task_lib

  s, c, w, b, nc = spec["image_size"], spec["channels"], spec["width"], spec["batch_size"], spec["n_critic"]
  g = models.create("dcgan_generator", image_size=s, channels=c, width=w)
  d = models.create("dcgan_critic", image_size=s, width=w)
  task = gen.GANTask(generator=g, critic=d, loss_type="wgan_gp", z_dim=64, data_shape=(s, s, c),
                     optimizers=gen.paper_optimizers("wgan_gp"), n_critic=nc)
  mesh = task_lib.make_mesh(jax.devices()[:1])
  rng = np.random.default_rng(0)
  batch = {"x": rng.uniform(-1, 1, (nc * b, s, s, c)).astype(np.float32), "label": np.zeros(nc * b, np.int32)}
  gbatch = task_lib.global_batch(batch, mesh)
  _, state = task_lib.init_train_state(task, 0, task_lib.abstract_batch(batch), mesh)
  step = task_lib.compiled_train_step(task, mesh)
  n_g = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(state.params["generator"]))
  n_d = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(state.params["critic"]))
  for _ in range(spec["warmup"]):
    state, m = step(state, gbatch)
  jax.block_until_ready(state)
  times = []
  for _ in range(spec["repeats"]):
    t0 = time.perf_counter()
    for _ in range(spec["iters"]):
      state, m = step(state, gbatch)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - t0) / spec["iters"])
  return {"seconds_per_iteration": float(np.median(times)), "times": times, "params_generator": n_g,
          "params_critic": n_d, "jax": jax.__version__}


def main(argv):
  del argv
  spec = {"image_size": FLAGS.image_size, "channels": FLAGS.channels, "width": FLAGS.width,
          "batch_size": FLAGS.batch_size, "n_critic": FLAGS.n_critic, "iters": FLAGS.iters, "warmup": FLAGS.warmup,
          "repeats": FLAGS.repeats, "threads": FLAGS.threads or os.cpu_count()}
  out = {"spec": spec, "jax": _jax(spec)}
  if FLAGS.torch_python:
    proc = subprocess.run([FLAGS.torch_python, "-c", _TORCH, json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f"torch twin failed:\n{proc.stderr[-3000:]}")
    out["torch"] = json.loads(proc.stdout.strip().splitlines()[-1])
    if (out["torch"]["params_generator"], out["torch"]["params_critic"]) != (out["jax"]["params_generator"],
                                                                             out["jax"]["params_critic"]):
      print("WARNING: parameter counts differ between the twins", file=sys.stderr)
    out["ratio_torch_over_jax"] = out["torch"]["seconds_per_iteration"] / out["jax"]["seconds_per_iteration"]
  j = out["jax"]
  print(f"WGAN-GP generator iteration ({spec['n_critic']} critic updates with the penalty + 1 generator update), "
        f"{spec['image_size']}x{spec['image_size']}x{spec['channels']}, width {spec['width']}, batch "
        f"{spec['batch_size']}, params G {j['params_generator']:,} / D {j['params_critic']:,}")
  print(f"  JAX   {1e3 * j['seconds_per_iteration']:.1f} ms/iteration")
  if "torch" in out:
    print(f"  torch {1e3 * out['torch']['seconds_per_iteration']:.1f} ms/iteration (params G "
          f"{out['torch']['params_generator']:,} / D {out['torch']['params_critic']:,})")
    print(f"  ratio torch / JAX = {out['ratio_torch_over_jax']:.2f} (> 1: JAX faster)")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  app.run(main)
