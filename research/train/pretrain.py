"""Pre-trained backbones for every family that starts from one (detection, segmentation).

The papers start their detectors and segmenters from ImageNet weights; offline, the stand-in is a classifier trained
on the procedural ``shapes`` dataset (100 classes). :func:`pretrain_backbone` trains (or reuses) one per
(backbone, width, steps, seed) under ``pretrain_dir``; :func:`load_backbone` copies a classification checkpoint's
backbone parameters and BatchNorm statistics into a freshly initialised model whose backbone sits under a
``backbone`` sub-tree (the classifier head is dropped; every backbone leaf must be found with the same shape).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

log = logging.getLogger(__name__)

WIDTH_FAMILIES = ("resnet", "resnext", "wide_resnet", "se_res")  # backbones whose first-stage width is a kwarg


def run_name(backbone: str, width: int | None, steps: int, seed: int) -> str:
  """Directory name of one pre-trained backbone, e.g. ``resnet18_w16_2000steps_seed0``."""
  w = f"_w{width}" if width and backbone.startswith(WIDTH_FAMILIES) else ""
  return f"{backbone}{w}_{steps}steps_seed{seed}"


def pretrain_backbone(backbone: str, *, width: int | None, steps: int, seed: int, pretrain_dir: str,
                      data_dir: str | None = None, progress_bar: bool = False) -> str:
  """Trains (or reuses, when a finished run is there) ``backbone`` as a ``shapes`` classifier for ``steps`` steps
  (batch 128, SGD 0.1 with warmup + cosine, weight decay 5e-4); returns its checkpoint directory."""
  from research.train import classify
  if steps <= 0:
    raise ValueError(f"--pretrain_steps={steps} must be > 0 to pre-train a backbone")
  width = width if width and backbone.startswith(WIDTH_FAMILIES) else None
  workdir = os.path.join(pretrain_dir, run_name(backbone, width, steps, seed))
  ccfg = classify.ClassifyConfig(model=backbone, model_kwargs={"width": width} if width else {}, dataset="shapes",
                                 data_dir=data_dir, num_steps=steps, batch_size=128, learning_rate=0.1,
                                 warmup_steps=min(100, steps // 2), schedule="cosine", weight_decay=5e-4, seed=seed,
                                 eval_every=steps, checkpoint_every=min(500, steps), log_every=100,
                                 progress_bar=progress_bar)
  if classify.finished_results(workdir, steps) is None:
    log.info("pre-training the backbone on shapes in %s", workdir)
    classify.train_and_evaluate(ccfg, workdir)
  return os.path.join(workdir, "checkpoints")


def _backbone_prefix(flat: dict[tuple[str, ...], Any], what: str) -> tuple[str, ...]:
  prefixes = {k[:k.index("backbone") + 1] for k in flat if "backbone" in k}
  if len(prefixes) != 1:
    raise ValueError(f"the model's {what} have {len(prefixes)} 'backbone' sub-trees ({sorted(prefixes)[:3]}); "
                     f"load_backbone needs exactly one")
  return prefixes.pop()


def load_backbone(params: Any, model_state: Any, checkpoint: str,
                  adapt: Callable[[dict, dict], dict] | None = None) -> tuple[Any, Any]:
  """``(params, model_state)`` with the ``backbone`` sub-tree (and its BatchNorm statistics in
  ``model_state['batch_stats']``) replaced by the classification checkpoint's.

  ``adapt(flat_source, flat_target) -> flat_source`` may re-lay the source (e.g. a plain ResNet's convs as its
  deformable twin's). Raises ``ValueError`` naming ``--backbone_checkpoint`` when a leaf is missing or has another
  shape (a classifier trained with another backbone or width)."""
  from research.train import checkpoint as ckpt_lib
  loaded = ckpt_lib.load_params(checkpoint)

  def merge(tree, source, what):
    flat = traverse_util.flatten_dict(dict(tree))
    prefix = _backbone_prefix(flat, what)
    n = len(prefix)
    target = {k[n:]: v for k, v in flat.items() if k[:n] == prefix}
    src = traverse_util.flatten_dict(dict(source))
    if adapt is not None:
      src = adapt(src, target)
    missing = [k for k in target if k not in src or np.shape(src[k]) != np.shape(target[k])]
    if missing:
      raise ValueError(f"--backbone_checkpoint={checkpoint!r}: {len(missing)} of {len(target)} backbone {what} are "
                       f"missing or have another shape (first: {'/'.join(missing[0])}); train the classifier with "
                       f"the same --backbone and width")
    flat.update({prefix + k: jnp.asarray(src[k], v.dtype) for k, v in target.items()})
    return traverse_util.unflatten_dict(flat)

  params = merge(params, loaded["params"], "parameters")
  stats = (model_state or {}).get("batch_stats") or {}
  if stats:
    model_state = dict(model_state, batch_stats=merge(stats, loaded["batch_stats"], "BatchNorm statistics"))
  log.info("backbone initialised from %s", checkpoint)
  return params, model_state


def load_network(params: Any, model_state: Any, checkpoint: str, what: str = "--init_checkpoint") -> tuple[Any, Any]:
  """``(params, model_state)`` with every leaf of a trained network's checkpoint copied in: at the root of the model,
  or under the one sub-tree that holds all of them (e.g. a segmenter wrapped as ``segmenter`` by CRF-as-RNN, which
  Zheng et al. 2015 fine-tune from a trained FCN). Leaves of the model the checkpoint lacks (the CRF's) keep their
  initialisation. Raises ``ValueError`` naming ``what`` when no sub-tree holds every checkpoint leaf with its shape."""
  from research.train import checkpoint as ckpt_lib
  loaded = ckpt_lib.load_params(checkpoint)
  src = traverse_util.flatten_dict(dict(loaded["params"]))
  flat = traverse_util.flatten_dict(dict(params))
  candidates = [()] + sorted({k[:i] for k in flat for i in (1, 2) if len(k) > i})
  fits = [p for p in candidates if all(p + k in flat and np.shape(flat[p + k]) == np.shape(v) for k, v in src.items())]
  if not fits:
    raise ValueError(f"{what}={checkpoint!r}: no sub-tree of the model holds all {len(src)} of the checkpoint's "
                     f"parameters with their shapes (first: {'/'.join(next(iter(src)))}); train the network with the "
                     f"same --model, --backbone, width, output stride and classes")
  prefix = fits[0]

  def merge(tree, source):
    f = traverse_util.flatten_dict(dict(tree))
    f.update({prefix + k: jnp.asarray(v, f[prefix + k].dtype) for k, v in traverse_util.flatten_dict(dict(source)).items()
              if prefix + k in f})
    return traverse_util.unflatten_dict(f)

  params = merge(params, loaded["params"])
  stats = (model_state or {}).get("batch_stats") or {}
  if stats and loaded.get("batch_stats"):
    model_state = dict(model_state, batch_stats=merge(stats, loaded["batch_stats"]))
  log.info("network initialised from %s (under %s)", checkpoint, "/".join(prefix) or "the root")
  return params, model_state
