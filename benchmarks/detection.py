"""Mask R-CNN FPN (ResNet-18) on CPU: JAX ``research.models`` vs torchvision's ``MaskRCNN``, in one run.

    .venv/bin/python benchmarks/detection.py --torch_python=/work/tvenv/bin/python --json_out=/tmp/det_bench.json
    .venv/bin/python benchmarks/detection.py --image_size=64 --batch_size=2 --steps=2 --infer_batches=1,2  # quick

Measures the training step (forward + backward + SGD with momentum and weight decay; JAX: one jitted function
with the state donated) in images/s, and inference latency (``train=False`` / ``model.eval()`` under
``no_grad``, detections with masks) in ms/image at batch 1 and 8. Both sides are built with the same settings
(printed with the results): ResNet-18 (width 64, BatchNorm in training mode: torchvision's ``BatchNorm2d``, not
its default ``FrozenBatchNorm2d``) + FPN 256, anchors ``(8,) .. (128,)`` x ratios (0.5, 1, 2) on P2..P6, RPN
pre/post-NMS top-n 1000/1000 (train) and 500/300 (test), RoI batch 512 with 25% positives, 2fc head 1024, mask
head 4 x conv 256 + deconv, RoIAlign canonical box size 64 (torchvision ``canonical_scale=64``), 100 detections.

Inputs (numpy, same seed on both sides): random images ``[B, S, S, 3]`` with 3 random boxes per image and
rectangle masks inside them. torchvision runs in a persistent worker subprocess of a separate interpreter
(``--torch_python``; torch is never a dependency of this project) with ``torch.set_num_threads(os.cpu_count())``;
XLA uses every core too. After warm-up (JAX: compilation), JAX and torch calls are interleaved so that both
see the same machine load, and each time is the median over the timed calls.

Workload differences that static shapes impose (reported in the output, not hidden):

* the mask head. torchvision runs it on the positive RoIs actually sampled (a handful per image at
  initialisation, up to 128 later); ours runs it on a fixed ``mask_rois_per_image`` slots per image (0 = all
  ``512 * 0.25 = 128``), padding included. The default here, 8, is close to what torchvision sees at
  initialisation (its per-step count is printed); ``--mask_rois_per_image=0`` times the full static head.
* RPN proposals and sampled RoIs are padded to their fixed counts in JAX (torchvision keeps what survives NMS).
* torchvision's inference also normalises/resizes the input and pastes each 28x28 mask into an S x S image
  (``paste_masks_in_image``); ours returns the 28x28 masks (``rcnn.paste_masks`` is a separate step). Both are
  small next to the mask head on 100 detections per image, which dominates inference on both sides.
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

NUM_GT = 3


# ----------------------------------------------------------------------------------------------------------
# settings and inputs (numpy only, shared by both sides)
# ----------------------------------------------------------------------------------------------------------
def settings(a) -> dict:
  """Everything that defines the workload; the same dict configures both sides."""
  return {"image_size": a.image_size, "batch_size": a.batch_size, "num_classes": a.num_classes,
          "backbone": "resnet18 (width 64, BatchNorm train mode)", "fpn_channels": 256,
          "anchor_sizes": [[8], [16], [32], [64], [128]], "aspect_ratios": [0.5, 1.0, 2.0],
          "rpn_pre_nms_train": 1000, "rpn_post_nms_train": 1000, "rpn_pre_nms_test": 500,
          "rpn_post_nms_test": 300, "rpn_nms": 0.7, "rpn_batch": 256, "rpn_positive_fraction": 0.5,
          "roi_batch": 512, "roi_positive_fraction": 0.25, "representation": 1024, "mask_channels": 256,
          "mask_convs": 4, "mask_rois_per_image": a.mask_rois_per_image, "canonical_size": 64,
          "score_threshold": 0.05, "nms_threshold": 0.5, "max_detections": 100,
          "optimizer": "SGD lr 1e-3 momentum 0.9 weight decay 1e-4", "gt_per_image": NUM_GT}


def make_inputs(size: int, batch: int, num_classes: int, seed: int = 0):
  """Images ``[B, S, S, 3]`` in [0, 1], ``NUM_GT`` boxes per image (sides S/8..S/2), 0-based labels and
  rectangle masks ``[B, G, S, S]`` (the box shrunk by an eighth of its size on each side)."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
  wh = rng.uniform(size / 8, size / 2, size=(batch, NUM_GT, 2))
  xy = rng.uniform(0, 1, size=(batch, NUM_GT, 2)) * (size - wh)
  boxes = np.round(np.concatenate([xy, xy + wh], -1)).astype(np.float32)
  labels = rng.integers(0, num_classes, size=(batch, NUM_GT)).astype(np.int32)
  masks = np.zeros((batch, NUM_GT, size, size), np.uint8)
  for b in range(batch):
    for g in range(NUM_GT):
      x1, y1, x2, y2 = boxes[b, g].astype(int)
      dx, dy = (x2 - x1) // 8, (y2 - y1) // 8
      masks[b, g, y1 + dy:y2 - dy, x1 + dx:x2 - dx] = 1
  return images, boxes, labels, masks


def timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return time.perf_counter() - t0, out


# ----------------------------------------------------------------------------------------------------------
# torchvision side (runs in the torch interpreter; imports no jax)
# ----------------------------------------------------------------------------------------------------------
class TorchSide:
  """torchvision ``MaskRCNN`` on the shared inputs; ``train_step()`` / ``infer(b)`` return (seconds, info)."""

  def __init__(self, cfg: dict):
    import torch
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import MultiScaleRoIAlign

    self.torch = torch
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    s, levels = cfg["image_size"], ["0", "1", "2", "3"]
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   norm_layer=torch.nn.BatchNorm2d)
    self.model = MaskRCNN(
        backbone, num_classes=cfg["num_classes"] + 1, min_size=s, max_size=s,
        rpn_anchor_generator=AnchorGenerator(tuple(tuple(x) for x in cfg["anchor_sizes"]),
                                             (tuple(cfg["aspect_ratios"]),) * len(cfg["anchor_sizes"])),
        rpn_pre_nms_top_n_train=cfg["rpn_pre_nms_train"], rpn_post_nms_top_n_train=cfg["rpn_post_nms_train"],
        rpn_pre_nms_top_n_test=cfg["rpn_pre_nms_test"], rpn_post_nms_top_n_test=cfg["rpn_post_nms_test"],
        rpn_nms_thresh=cfg["rpn_nms"], rpn_batch_size_per_image=cfg["rpn_batch"],
        rpn_positive_fraction=cfg["rpn_positive_fraction"], box_batch_size_per_image=cfg["roi_batch"],
        box_positive_fraction=cfg["roi_positive_fraction"], box_score_thresh=cfg["score_threshold"],
        box_nms_thresh=cfg["nms_threshold"], box_detections_per_img=cfg["max_detections"],
        box_roi_pool=MultiScaleRoIAlign(levels, 7, 2, canonical_scale=cfg["canonical_size"]),
        mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2, canonical_scale=cfg["canonical_size"]))
    assert self.model.roi_heads.box_head.fc6.out_features == cfg["representation"]
    self.rois = {}
    for name in ("box_head", "mask_head"):  # RoIs per call: the workload the dynamic shapes produce
      getattr(self.model.roi_heads, name).register_forward_hook(
          lambda mod, inp, out, name=name: self.rois.__setitem__(name, int(inp[0].shape[0])))
    images, boxes, labels, masks = make_inputs(s, max(cfg["batch_size"], max(cfg["infer_batches"])),
                                               cfg["num_classes"])
    self.images = [torch.from_numpy(np.ascontiguousarray(i.transpose(2, 0, 1))) for i in images]
    self.targets = [{"boxes": torch.from_numpy(b), "labels": torch.from_numpy(l.astype(np.int64) + 1),
                     "masks": torch.from_numpy(m)} for b, l, m in zip(boxes, labels, masks)]
    self.batch = cfg["batch_size"]
    self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    self.params = sum(p.numel() for p in self.model.parameters())

  def train_step(self):
    self.model.train()

    def step():
      self.opt.zero_grad(set_to_none=True)
      losses = self.model(self.images[:self.batch], self.targets[:self.batch])
      total = sum(losses.values())
      total.backward()
      self.opt.step()
      return float(total.detach())

    t, loss = timed(step)
    return t, {"loss": loss, "mask_rois": self.rois.get("mask_head", 0), "box_rois": self.rois.get("box_head", 0)}

  def infer(self, b):
    self.model.eval()

    def run():
      with self.torch.no_grad():
        return self.model(self.images[:b])

    t, out = timed(run)
    return t, {"detections": sum(len(o["boxes"]) for o in out), "mask_rois": self.rois.get("mask_head", 0)}


def torch_worker(cfg: dict):
  """Serves 'train' / 'infer <b>' on stdin, one JSON line ``[seconds, info]`` per request on stdout."""
  import torch
  import torchvision

  side = TorchSide(cfg)
  print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                    "threads": torch.get_num_threads(), "params": side.params}), flush=True)
  for line in sys.stdin:
    cmd = line.split()
    res = side.train_step() if cmd[0] == "train" else side.infer(int(cmd[1]))
    print(json.dumps(res), flush=True)


class TorchClient:
  def __init__(self, python: str, cfg: dict):
    self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--torch_worker", json.dumps(cfg)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": ""})
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the torch worker ({python}) exited: see its stderr above")
    self.info = json.loads(line)

  def _ask(self, cmd):
    self.proc.stdin.write(cmd + "\n")
    self.proc.stdin.flush()
    return json.loads(self.proc.stdout.readline())

  def train_step(self):
    return self._ask("train")

  def infer(self, b):
    return self._ask(f"infer {b}")

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


# ----------------------------------------------------------------------------------------------------------
# JAX side
# ----------------------------------------------------------------------------------------------------------
class JaxSide:
  """``research.models.create("mask_rcnn_fpn", ...)``: a jitted SGD step (state donated) and jitted inference."""

  def __init__(self, cfg: dict):
    import functools

    import jax
    import optax

    from research import models

    self.jax = jax
    s = cfg["image_size"]
    self.model = models.create(
        "mask_rcnn_fpn", num_classes=cfg["num_classes"], backbone="resnet18", backbone_kwargs=(("width", 64),),
        image_size=(s, s), fpn_channels=cfg["fpn_channels"],
        anchor_sizes=tuple(tuple(x) for x in cfg["anchor_sizes"]), aspect_ratios=tuple(cfg["aspect_ratios"]),
        rpn_pre_nms_train=cfg["rpn_pre_nms_train"], rpn_post_nms_train=cfg["rpn_post_nms_train"],
        rpn_pre_nms_test=cfg["rpn_pre_nms_test"], rpn_post_nms_test=cfg["rpn_post_nms_test"],
        rpn_nms=cfg["rpn_nms"], rpn_batch=cfg["rpn_batch"], rpn_positive_fraction=cfg["rpn_positive_fraction"],
        roi_batch=cfg["roi_batch"], roi_positive_fraction=cfg["roi_positive_fraction"],
        representation=cfg["representation"], mask_channels=cfg["mask_channels"], mask_convs=cfg["mask_convs"],
        mask_rois_per_image=cfg["mask_rois_per_image"], canonical_size=float(cfg["canonical_size"]),
        score_threshold=cfg["score_threshold"], nms_threshold=cfg["nms_threshold"],
        max_detections=cfg["max_detections"])
    images, boxes, labels, masks = make_inputs(s, max(cfg["batch_size"], max(cfg["infer_batches"])),
                                               cfg["num_classes"])
    b = cfg["batch_size"]
    self.images = jax.device_put(images)
    self.train_images = jax.device_put(images[:b])
    self.targets = jax.device_put({"boxes": boxes[:b], "labels": labels[:b],
                                   "instance_mask": np.ones((b, NUM_GT), np.float32), "masks": masks[:b]})
    t0 = time.perf_counter()
    variables = jax.jit(lambda k, x: self.model.init(k, x, train=False))(jax.random.PRNGKey(0), self.images[:1])
    self.init_s = time.perf_counter() - t0
    self.params = sum(x.size for x in jax.tree_util.tree_leaves(variables["params"]))
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(1e-3, momentum=0.9))
    self.state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    model = self.model

    def loss_fn(params, batch_stats, images, targets, key):
      losses, new = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                targets=targets, rng=key, mutable=["batch_stats"])
      return losses["total"], (losses, new["batch_stats"])

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, images, targets, key):
      params, batch_stats, opt_state = state
      grads, (losses, batch_stats) = jax.grad(loss_fn, has_aux=True)(params, batch_stats, images, targets, key)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), batch_stats, opt_state), losses

    self._step = step
    self._infer = jax.jit(lambda params, batch_stats, x: model.apply({"params": params, "batch_stats": batch_stats},
                                                                      x, train=False))
    self.key = jax.random.PRNGKey(1)
    self.steps = 0

  def train_step(self):
    def run():
      self.state, losses = self._step(self.state, self.train_images, self.targets,
                                      self.jax.random.fold_in(self.key, self.steps))
      self.jax.block_until_ready(self.state)
      return losses

    t, losses = timed(run)
    self.steps += 1
    return t, {"loss": float(losses["total"]), "positive_rois": float(losses["roi_positives"])}

  def infer(self, b):
    x = self.images[:b]
    t, out = timed(lambda: self.jax.block_until_ready(self._infer(self.state[0], self.state[1], x)))
    return t, {"detections": int(np.asarray(out["valid"]).sum())}


# ----------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------
def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--torch_python", default="", help="interpreter with torch+torchvision ('' to skip torchvision)")
  p.add_argument("--json_out", default="", help="write the settings, all timings and ratios here")
  p.add_argument("--image_size", type=int, default=128, help="S (square images; a multiple of 64)")
  p.add_argument("--batch_size", type=int, default=4, help="training batch")
  p.add_argument("--num_classes", type=int, default=3, help="foreground classes")
  p.add_argument("--steps", type=int, default=3, help="timed training steps per side (median)")
  p.add_argument("--warmup", type=int, default=1, help="untimed training steps per side (JAX: compiles)")
  p.add_argument("--infer_batches", default="1,8", help="inference batch sizes")
  p.add_argument("--infer_repeats", type=int, default=2, help="timed inference calls per batch size and side")
  p.add_argument("--mask_rois_per_image", type=int, default=8,
                 help="JAX mask-head RoI slots per image (0: all roi_batch * 0.25 = 128)")
  p.add_argument("--torch_worker", default="", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.torch_worker:
    torch_worker(json.loads(a.torch_worker))
    return
  cfg = settings(a)
  cfg["infer_batches"] = [int(x) for x in a.infer_batches.split(",")]

  import jax

  wall0, load0 = time.perf_counter(), os.getloadavg()
  tv = TorchClient(a.torch_python, cfg) if a.torch_python else None  # builds while JAX compiles
  js = JaxSide(cfg)
  sides = {"jax": js, **({"torch": tv} if tv else {})}
  log = lambda *m: print(*m, file=sys.stderr, flush=True)
  # --- training: warm up (JAX compiles on the first call), then interleave the timed steps
  train = {k: {"times": [], "info": []} for k in sides}
  compile_s = None
  for i in range(a.warmup):
    for k, side in sides.items():
      t, info = side.train_step()
      compile_s = t if (k == "jax" and i == 0) else compile_s
      log(f"warmup train {k}: {t:.2f}s {info}")
  for _ in range(a.steps):
    for k, side in sides.items():
      t, info = side.train_step()
      train[k]["times"].append(t)
      train[k]["info"].append(info)
      log(f"train {k}: {t:.2f}s {info}")
  # --- inference
  infer = {}
  for b in cfg["infer_batches"]:
    for k, side in sides.items():
      t, info = side.infer(b)
      log(f"warmup infer b={b} {k}: {t:.2f}s {info}")
    infer[b] = {k: {"times": [], "info": []} for k in sides}
    for _ in range(a.infer_repeats):
      for k, side in sides.items():
        t, info = side.infer(b)
        infer[b][k]["times"].append(t)
        infer[b][k]["info"].append(info)
        log(f"infer b={b} {k}: {t:.2f}s {info}")
  load1 = os.getloadavg()
  if tv:
    tv.close()

  # --- report
  med = lambda xs: float(np.median(xs))
  bsz = cfg["batch_size"]
  rows = {"train": {k: {"seconds_per_step": med(v["times"]), "images_per_second": bsz / med(v["times"]),
                        "steps": v["info"]} for k, v in train.items()},
          "infer": {str(b): {k: {"seconds_per_call": med(v["times"]), "ms_per_image": 1e3 * med(v["times"]) / b,
                                 "calls": v["info"]} for k, v in d.items()} for b, d in infer.items()}}
  machine = (f"{platform.machine()} {os.cpu_count()} cores ({_cpu_name()}), jax {jax.__version__}"
             + (f", torch {tv.info['torch']} / torchvision {tv.info['torchvision']} ({tv.info['threads']} threads)"
                if tv else ""))
  params = f"params: JAX {js.params:,}" + (f", torch {tv.info['params']:,}" if tv else "")
  lines = [f"machine: {machine}; load average {load0[0]:.1f} -> {load1[0]:.1f}",
           f"settings: {json.dumps({k: v for k, v in cfg.items()})}", params,
           f"JAX: init {js.init_s:.1f}s, first training step (compile + run) {compile_s or 0:.1f}s", "",
           "| pass | batch | JAX | torchvision | JAX speed / torchvision speed |", "|---|---:|---:|---:|---:|"]
  tr = rows["train"]
  if tv:
    ratio = tr["jax"]["images_per_second"] / tr["torch"]["images_per_second"]
    lines.append(f"| train step (img/s) | {bsz} | {tr['jax']['images_per_second']:.2f} | "
                 f"{tr['torch']['images_per_second']:.2f} | {ratio:.2f}x |")
  else:
    lines.append(f"| train step (img/s) | {bsz} | {tr['jax']['images_per_second']:.2f} | - | - |")
  for b, d in rows["infer"].items():
    j = d["jax"]["ms_per_image"]
    if tv:
      t = d["torch"]["ms_per_image"]
      lines.append(f"| inference (ms/image) | {b} | {j:.0f} | {t:.0f} | {t / j:.2f}x |")
    else:
      lines.append(f"| inference (ms/image) | {b} | {j:.0f} | - | - |")
  lines.append("")
  jax_mask = bsz * (cfg["mask_rois_per_image"] or int(cfg["roi_batch"] * cfg["roi_positive_fraction"]))
  work = f"mask-head RoIs per training step: JAX {jax_mask} (static)"
  if tv:
    work += f", torchvision {[s['mask_rois'] for s in tr['torch']['steps']]} (positives sampled)"
  lines.append(work)
  det = "detections per inference call: " + "; ".join(
      f"b={b}: " + ", ".join(f"{k} {[c['detections'] for c in v['calls']]}" for k, v in d.items())
      for b, d in rows["infer"].items())
  lines.append(det)
  lines.append(f"wall time {time.perf_counter() - wall0:.0f}s")
  print("\n".join(lines))
  if a.json_out:
    ratios = {}
    if tv:
      ratios["train_jax_over_torch_images_per_second"] = (tr["jax"]["images_per_second"]
                                                          / tr["torch"]["images_per_second"])
      for b, d in rows["infer"].items():
        ratios[f"infer_b{b}_torch_over_jax_latency"] = d["torch"]["ms_per_image"] / d["jax"]["ms_per_image"]
    with open(a.json_out, "w") as fh:
      json.dump({"machine": machine, "load_average": [load0, load1], "settings": cfg, "results": rows,
                 "ratios": ratios, "jax_init_s": js.init_s, "jax_first_step_s": compile_s,
                 "params": {"jax": js.params, "torch": tv.info["params"] if tv else None},
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
