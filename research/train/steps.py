"""TrainState, the pure per-device train/eval steps, and their data-parallel wrappers.

The steps are written for ONE device's shard of the batch; ``parallelize`` maps them over a 1-D ``data``
mesh of all devices of all processes with ``jax.shard_map`` (the loss is ``pmean``-ed, so gradients are
all-reduced by autodiff; BatchNorm statistics and metrics are ``pmean``-ed explicitly) inside ``jax.jit`` with the state donated. Loss is the mean over the global
batch (Goyal et al. 2017: normalise by the total minibatch, not per worker).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
LossFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]  # (logits [B,C], labels [B]) -> [B]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; all leaves are arrays (checkpointable as one pytree)."""
  step: jnp.ndarray  # int32 []
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jnp.ndarray  # uint32 [2] raw PRNG key; per-step keys are fold_in(rng, step)
  # Recipe state that is neither a parameter nor a BN statistic, e.g. {'centers': [C, D]} for center loss.
  extra: Any = flax.struct.field(default_factory=dict)


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, label_smoothing: float = 0.0) -> jnp.ndarray:
  """Per-example softmax cross-entropy ``[B]`` with optional label smoothing (Szegedy et al. 2016)."""
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    onehot = onehot * (1.0 - label_smoothing) + label_smoothing / num_classes
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot)


def create_state(model: nn.Module, tx: optax.GradientTransformation, rng: jnp.ndarray,
                 input_shape: tuple[int, ...]) -> TrainState:
  """Initial state (call under ``jax.jit``/``jax.eval_shape``); ``input_shape`` includes a batch dim."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init({"params": init_rng, "dropout": init_rng}, jnp.zeros(input_shape, jnp.float32),
                         train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params), rng=state_rng)


def train_step(state: TrainState, batch: dict[str, jnp.ndarray], *, model: nn.Module,
               tx: optax.GradientTransformation, loss_fn: LossFn, schedule: optax.Schedule | None = None,
               axis_name: str | None = DATA_AXIS, freeze_bn: bool = False,
               center_loss: Any = None) -> tuple[TrainState, dict[str, jnp.ndarray]]:
  """One SGD step on this device's shard ``batch = {'image': [b,H,W,C], 'label': [b]}``.

  With ``axis_name`` set it must run under a mapped axis (``shard_map``); loss (hence gradients), BN
  statistics and metrics are averaged across it, so the result equals a single-device step on the global batch
  (exactly so for per-replica-free models; BatchNorm needs ``bn_axis_name`` for that).

  ``freeze_bn`` (static): BatchNorm normalises with its running statistics and does not update them
  (``recipes.frozen_batch_norm``; SENet's last epochs). ``center_loss`` (a ``recipes.CenterLoss``): adds
  λ·mean ½||x_i − c_{y_i}||² on the classifier's input features and updates ``state.extra['centers']`` by
  Wen et al.'s Eq. 4 over the global batch.
  """
  from research.train import recipes  # local import: recipes is optional machinery for this step
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  has_bn = bool(jax.tree.leaves(state.batch_stats))

  def loss_and_aux(params):
    variables = {"params": params, **({"batch_stats": state.batch_stats} if has_bn else {})}
    bn_ctx = recipes.frozen_batch_norm() if freeze_bn else contextlib.nullcontext()
    feat_ctx = (recipes.capture_features(center_loss.head_name) if center_loss is not None
                else contextlib.nullcontext({}))
    with bn_ctx, feat_ctx as captured:
      logits, updates = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"],
                                    rngs={"dropout": rng, "droppath": jax.random.fold_in(rng, 1)})
    loss = jnp.mean(loss_fn(logits, batch["label"]))
    features = None
    if center_loss is not None:
      if "features" not in captured:
        raise ValueError(f"center loss: the model has no top-level classifier module named "
                         f"{center_loss.head_name!r} whose input could serve as the deep features")
      features = captured["features"].astype(jnp.float32)
      centers = jax.lax.stop_gradient(state.extra["centers"])
      loss = loss + center_loss.lam * jnp.mean(0.5 * jnp.sum(jnp.square(features - centers[batch["label"]]), -1))
    if axis_name is not None:
      # Global-batch mean. Params are replicated (invariant over the axis), so shard_map's autodiff
      # transposes their implicit broadcast into a psum: the gradient of this pmean'd loss already is the
      # all-reduced global-batch gradient, identical on every device.
      loss = jax.lax.pmean(loss, axis_name)
    new_stats = state.batch_stats if freeze_bn else updates.get("batch_stats", state.batch_stats)
    return loss, (logits, new_stats, features)

  (loss, (logits, batch_stats, features)), grads = jax.value_and_grad(loss_and_aux, has_aux=True)(state.params)
  extra = state.extra
  if center_loss is not None:
    counts, sums = recipes.center_statistics(jax.lax.stop_gradient(features), batch["label"],
                                             state.extra["centers"].shape[0])
    if axis_name is not None:
      counts, sums = jax.lax.psum((counts, sums), axis_name)
    extra = {**state.extra, "centers": recipes.update_centers_from_statistics(
        state.extra["centers"], counts, sums, center_loss.alpha)}
  accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
  if axis_name is not None:
    if not freeze_bn:  # frozen statistics are unchanged, hence already identical on every device
      batch_stats = jax.lax.pmean(batch_stats, axis_name)  # per-replica BN: average the running statistics
    accuracy = jax.lax.pmean(accuracy, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss, "accuracy": accuracy,
      "l2_grads": optax.global_norm(grads), "l2_params": optax.global_norm(params),
      "l2_updates": optax.global_norm(updates),
  }
  if schedule is not None:
    metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                            extra=extra)
  return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jnp.ndarray], *, model: nn.Module, loss_fn: LossFn,
              axis_name: str | None = DATA_AXIS) -> dict[str, jnp.ndarray]:
  """Sums over this shard (``mask`` marks real rows), summed across ``axis_name``:
  ``{'loss_sum', 'correct', 'count'}``."""
  has_bn = bool(jax.tree.leaves(state.batch_stats))
  variables = {"params": state.params, **({"batch_stats": state.batch_stats} if has_bn else {})}
  logits = model.apply(variables, batch["image"], train=False)
  mask = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
  out = {
      "loss_sum": jnp.sum(loss_fn(logits, batch["label"]) * mask),
      "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
      "count": jnp.sum(mask),
  }
  if axis_name is not None:
    out = jax.lax.psum(out, axis_name)
  return out


def make_mesh(devices=None) -> Mesh:
  """1-D data-parallel mesh over all devices of all processes."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def parallelize(step_fn: Callable, mesh: Mesh, *, donate_state: bool = True, state_out: bool = True):
  """``jit(shard_map(step_fn))``: state replicated, batch split along ``data``; outputs replicated."""
  out_specs = (P(), P()) if state_out else P()
  mapped = jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=out_specs)
  return jax.jit(mapped, donate_argnums=(0,) if donate_state else ())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows -> global arrays sharded along ``data`` (``make_array_from_process_local_data``)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def init_state(model: nn.Module, tx: optax.GradientTransformation, seed: int, input_shape: tuple[int, ...],
               mesh: Mesh) -> tuple[TrainState, TrainState]:
  """(abstract state from ``jax.eval_shape``, concrete replicated state initialised under jit)."""
  init = functools.partial(create_state, model, tx, input_shape=input_shape)
  rng = jax.random.PRNGKey(seed)
  abstract = jax.eval_shape(init, rng)
  sharding = jax.tree.map(lambda _: replicated(mesh), abstract)
  state = jax.jit(init, out_shardings=sharding)(rng)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sharding)
  return abstract, state


def num_params(params) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def host_value(x) -> np.ndarray:
  """A replicated (possibly multi-process) array's value on this host."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)
