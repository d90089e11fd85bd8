"""Training recipes selectable by flags in ``experiments.classify`` (issue 5).

* Large-minibatch SGD (Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017;
  seed 003 §17.8): ``linear_scaled_lr`` (Linear Scaling Rule: multiply the LR by k when the minibatch is
  multiplied by k), gradual warmup (``optim.make_schedule(warmup_steps=..., warmup_init=...)``; Goyal et al.
  ramp from the small-batch LR, i.e. ``warmup_init = 1/k``), zero-init of the last BN γ of each residual
  block (``zero_init_residual_kwargs``), no weight decay on BN γ/β and biases (``optim.decay_mask``) and the
  loss normalised by the global minibatch kn (the loop pmean-s per-device means of equal shards).
* Freezing BatchNorm statistics for the last iterations (SENet, Hu et al. 2018, §6 / seed 003 §18.3: "the
  parameters (mean, variance) of all BN layers were frozen for the last few training epochs to ensure
  consistency between training and testing"): ``frozen_batch_norm`` makes every ``nn.BatchNorm`` normalise
  with its running statistics and leave them unchanged, while dropout etc. stay in training mode.
* Center loss (Wen et al., "A Discriminative Feature Learning Approach for Deep Face Recognition", ECCV 2016):
  ``CenterLoss`` holds λ (Eq. 5) and α (Eq. 4); the class centres live in ``TrainState.model_state['centers']``
  (checkpointed with the rest) and are updated by Eq. 4 over the global minibatch, not by gradients. The
  features x_i are the classifier's input (the "deep features" of the paper), captured by ``capture_features``.
* ``ClassSubsetSource``: the first K classes of a dataset (to fit experiments into a CPU budget).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.train import losses

LR_SCALINGS = ("none", "linear")


def linear_scaled_lr(base_lr: float, batch_size: int, base_batch_size: int) -> float:
  """Goyal et al. Linear Scaling Rule: η(kn) = k·η(n) with k = batch_size / base_batch_size."""
  if batch_size <= 0 or base_batch_size <= 0:
    raise ValueError(f"batch sizes must be positive, got batch_size={batch_size}, base_batch_size={base_batch_size}")
  return base_lr * batch_size / base_batch_size


def scaled_lr(scaling: str, base_lr: float, batch_size: int, base_batch_size: int) -> float:
  """The learning rate actually used: ``base_lr`` (``none``) or the linearly scaled one (``linear``)."""
  if scaling == "none":
    return base_lr
  if scaling == "linear":
    return linear_scaled_lr(base_lr, batch_size, base_batch_size)
  raise ValueError(f"--lr_scaling={scaling!r}; choose one of {LR_SCALINGS}")


def supports_zero_init_residual(model: nn.Module) -> bool:
  """Whether ``model`` has the ``zero_init_last_bn`` field (post-activation ResNets/ResNeXts/SE-ResNets).

  Pre-activation nets (WRN, PreAct ResNet) end their residual branch with a convolution, so they have no
  "last BN of the block" to zero (Goyal et al. §5.1 describe the post-activation ResNet of He et al. 2016a).
  """
  return "zero_init_last_bn" in {f.name for f in dataclasses.fields(model)}


# ---------------------------------------------------------------------------------------- BatchNorm freezing


def _running_average_interceptor(next_fun, args, kwargs, context):
  if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
    kwargs = {**kwargs, "use_running_average": True}
  return next_fun(*args, **kwargs)


def frozen_batch_norm() -> contextlib.AbstractContextManager:
  """Context in which every ``nn.BatchNorm`` call uses (and does not update) its running mean/variance.

  Wraps ``model.apply(..., train=True)``: dropout and stochastic depth stay in training mode, the BN affine
  parameters γ, β still get gradients, but the normalisation is the fixed inference-time one (SENet §6).
  """
  return nn.intercept_methods(_running_average_interceptor)


# ---------------------------------------------------------------------------------------- center loss


@dataclasses.dataclass(frozen=True)
class CenterLoss:
  """Softmax + center loss (Wen et al. 2016): L = L_S + λ L_C, L_C = ½ Σ_i ||x_i − c_{y_i}||² (Eqs. 2, 5).

  ``lam`` is λ (per example: the mean over the batch of ½||x_i − c_{y_i}||² is added to the mean softmax loss),
  ``alpha`` is the centre learning rate α of Eq. 4. ``head_name`` names the classifier module whose input
  is the deep feature x_i.
  """
  lam: float = 0.003
  alpha: float = 0.5
  head_name: str = "head"


@contextlib.contextmanager
def capture_features(head_name: str = "head") -> Iterator[dict[str, Any]]:
  """Records the input of the top-level classifier module ``head_name`` during ``model.apply``.

  Yields a dict; after the apply, ``out['features']`` is that input ``[B, D]`` (the penultimate "deep
  features" of Wen et al.). Raises ``ValueError`` at the end of the block if no such module ran.
  """
  out: dict[str, Any] = {}

  def interceptor(next_fun, args, kwargs, context):
    m = context.module
    if (context.method_name == "__call__" and m.name == head_name and isinstance(m.parent, nn.Module)
        and not isinstance(m.parent.parent, nn.Module) and "features" not in out):
      out["features"] = args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    yield out


# The center-loss arithmetic lives in research.train.losses (one definition); re-exported for the recipes' users.
init_centers = losses.init_centers
center_statistics = losses.center_statistics
update_centers_from_statistics = losses.update_centers_from_statistics


def feature_dim(model: nn.Module, variables: Any, input_shape: tuple[int, ...], head_name: str = "head") -> int:
  """Width D of the input of ``model``'s top-level classifier ``head_name`` (abstract evaluation, no FLOPs)."""

  def run(v):
    with capture_features(head_name) as out:
      model.apply(v, jnp.zeros(input_shape, jnp.float32), train=False)
    if "features" not in out:
      raise ValueError(f"--loss=softmax_center: model {type(model).__name__} has no top-level classifier module "
                       f"named {head_name!r} whose input could serve as the deep features")
    return out["features"]

  return int(jax.eval_shape(run, variables).shape[-1])


# ---------------------------------------------------------------------------------------- class subsets


def read_labels(name: str, split: str, data_dir: str, label_key: str = "label") -> np.ndarray:
  """All labels of a prepared TFDS split, read without decoding the images (~3 s for 30k ``shapes`` rows)."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=data_dir)
  decoders = {k: tfds.decode.SkipDecoding() for k in builder.info.features if k != label_key}
  source = builder.as_data_source(split=split, decoders=decoders)
  return np.asarray([r[label_key] for r in source.__getitems__(list(range(len(source))))], np.int64)


class ClassSubsetSource:
  """Random-access view of the examples of ``source`` whose label is < ``num_classes`` (labels unchanged).

  ``labels`` are the source's labels (read once, e.g. with image decoding skipped); ``source`` is what the
  pipeline reads. Picklable, so grain worker processes can use it.
  """

  def __init__(self, source, labels: np.ndarray, num_classes: int):
    labels = np.asarray(labels)
    if len(labels) != len(source):
      raise ValueError(f"{len(labels)} labels for a source of {len(source)} examples")
    self._source = source
    self._num_classes = int(num_classes)
    self._index = np.flatnonzero(labels < num_classes)
    if not len(self._index):
      raise ValueError(f"no examples with label < {num_classes}")

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, i):
    return self._source[int(self._index[i])]

  def __getitems__(self, idx):
    return self._source.__getitems__([int(self._index[i]) for i in idx])

  def __repr__(self) -> str:
    return f"ClassSubsetSource({self._source!r}, num_classes={self._num_classes}, n={len(self)})"
