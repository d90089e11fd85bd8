"""The ``Task`` protocol: everything that differs between training families, and nothing else.

One generic loop (``research.train.loop.train``) drives every family -- classification, detection, GANs,
sequence and graph models -- through this interface. A task says

* how to build its variables from an (abstract) example batch: ``init(rng, batch) -> (params, model_state)``;
* its optimizer(s): ``optimizer() -> optax.GradientTransformation`` or ``{group: GradientTransformation}``
  for several parameter groups (``params`` is then a dict with the same top-level keys);
* its pure per-device loss: ``loss(params, model_state, batch, rng, *, train) -> (loss, (new_model_state,
  metrics))``, written for ONE device's shard of the batch;
* how a step updates the state: ``update`` (default: one gradient step of ``loss`` on every parameter; a GAN
  overrides it with its critic/generator alternation, weight clipping, BEGAN's ``k_t``, EMA weights ...);
* eval statistics: ``eval_step(state, batch) -> (sums, gathered)``: ``sums`` are summed over devices and
  processes (counts, loss sums, confusion matrices), ``gathered`` are per-example arrays ``[b, ...]`` collected
  on the host of every process (detections for an external evaluator); ``eval_metrics(sums, gathered)``
  turns them into scalars.

The loop owns the mesh, ``jit`` + ``shard_map``, the PRNG (``fold_in(state.rng, step)`` then
``fold_in(., device index)``), checkpoints, resume, halting, logging and ``results.json``; it knows no images,
boxes, tokens or graphs. A batch is a dict of arrays whose leading axis is the example axis, padded to static
shapes with masks where sizes vary. See ``research/train/README.md`` for a 20-line example task.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
Metrics = dict[str, jnp.ndarray]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; all leaves are arrays (checkpointable as one pytree).

  ``params`` get gradients; ``model_state`` holds every other array the task carries (BatchNorm statistics,
  center-loss centres, BEGAN's ``k_t``, EMA weights, ...); ``opt_state`` mirrors ``Task.optimizer()`` (one
  optax state, or a dict of them per parameter group); ``rng`` is a raw uint32 [2] key, per-step keys are
  ``fold_in(rng, step)``.
  """
  step: jnp.ndarray  # int32 []
  params: Any
  model_state: Any
  opt_state: Any
  rng: jnp.ndarray

  @property
  def batch_stats(self) -> Any:
    """BatchNorm statistics (the ``batch_stats`` entry of ``model_state``, or ``{}``)."""
    ms = self.model_state
    return ms.get("batch_stats", {}) if isinstance(ms, Mapping) else {}


class Task:
  """Base class of training tasks; subclasses override ``init``, ``optimizer``, ``loss`` and the eval pair.

  Instances are hashed by identity: the loop caches one compiled step per (task, mesh), so reuse a task
  object to train several times without recompiling (Task2Vec's experts).
  """

  # ----------------------------------------------------------------------------- what every task defines
  def init(self, rng: jax.Array, batch: Mapping[str, jax.ShapeDtypeStruct]) -> tuple[Any, Any]:
    """``(params, model_state)`` from one key and the abstract global batch (called under ``jax.jit``)."""
    raise NotImplementedError

  def optimizer(self) -> optax.GradientTransformation | Mapping[str, optax.GradientTransformation]:
    raise NotImplementedError

  def loss(self, params, model_state, batch, rng, *, train: bool) -> tuple[Any, tuple[Any, Metrics]]:
    """Per-device loss and ``(new_model_state, metrics)``. The loss is this shard's mean, or ``(sum, count)``
    over its real (unpadded) items for a global masked mean (``grad_of``). ``metrics`` are scalars; they are
    averaged over devices, logged, and checked for non-finite values (so placeholders must be finite)."""
    raise NotImplementedError

  def eval_step(self, state: TrainState, batch) -> tuple[Metrics, Metrics]:
    """``(sums, gathered)`` of one shard: ``sums`` are psum-ed, ``gathered`` ``[b, ...]`` are collected."""
    raise NotImplementedError

  def eval_metrics(self, sums: Mapping[str, np.ndarray], gathered: Mapping[str, np.ndarray] | None) -> dict[str, float]:
    """Scalars from the eval sums (and the gathered per-example arrays of the whole split, padding included;
    ``gathered['valid']`` marks the real rows when the eval batches carry a ``valid`` key)."""
    raise NotImplementedError

  # ----------------------------------------------------------------------------- defaults a task may override
  def sync_model_state(self, old, new, axis_name: str | None):
    """Makes the per-device ``new`` model state identical on every device (default: mean of float leaves,
    i.e. per-replica BatchNorm statistics averaged). Runs after every training step."""
    if axis_name is None:
      return new
    return jax.tree.map(lambda x: jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.floating) else x, new)

  def update(self, state: TrainState, batch, rng, *, axis_name: str | None) -> tuple[TrainState, Metrics]:
    """One training step on this device's shard: default = one gradient step of ``loss`` on all params."""
    (loss, (model_state, metrics)), grads = grad_of(self.loss, state.params, state.model_state, batch, rng,
                                                    axis_name)
    model_state = self.sync_model_state(state.model_state, model_state, axis_name)
    if isinstance(self.optimizer(), Mapping):
      raise ValueError(f"{type(self).__name__}: several optimizers need an update rule; override Task.update "
                       f"(see research/train/README.md)")
    params, opt_state, updates = apply_optimizer(self.optimizer(), grads, state.opt_state, state.params)
    metrics = {"loss": loss, **mean_over(metrics, axis_name), **norms(grads, params, updates)}
    return state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state), metrics

  def extra_metrics(self, state: TrainState) -> Metrics:
    """Per-step scalars computed from the state (e.g. the learning rate); added to the training metrics."""
    return {}

  def run_info(self) -> dict[str, Any]:
    """Facts about the task merged into ``results.json``."""
    return {}


# --------------------------------------------------------------------------------------- building blocks


def grad_of(loss_fn, params, model_state, batch, rng, axis_name: str | None):
  """``((loss, (model_state, metrics)), grads)`` of ``loss_fn`` with the loss averaged over ``axis_name``.

  ``loss_fn`` returns either this shard's mean loss (equal-size shards: the mean of the means is the global
  mean) or a pair ``(sum, count)`` over this shard's real items (padded tokens, boxes, nodes): the loss is then
  ``psum(sum) / psum(count)``, the global masked mean, whatever the number of devices.

  Params are replicated (invariant over the axis), so shard_map's autodiff transposes their implicit
  broadcast into a psum: the gradient of the pmean-ed loss already is the all-reduced global-batch gradient,
  identical on every device (Goyal et al. 2017: normalise by the total minibatch).
  """
  def f(p):
    loss, aux = loss_fn(p, model_state, batch, rng, train=True)
    if isinstance(loss, tuple):  # (sum over this shard's real items, their number): the GLOBAL masked mean
      total, count = loss
      count = jax.lax.stop_gradient(count)
      if axis_name is not None:
        total, count = jax.lax.psum(total, axis_name), jax.lax.psum(count, axis_name)
      return total / jnp.maximum(count, 1), aux
    if axis_name is not None:
      loss = jax.lax.pmean(loss, axis_name)
    return loss, aux
  return jax.value_and_grad(f, has_aux=True)(params)


def apply_optimizer(tx, grads, opt_state, params):
  """``(new_params, new_opt_state, updates)`` of one optax step; with ``tx = {group: GradientTransformation}``
  every group present in ``grads`` is stepped with its own optimizer (the others pass through unchanged)."""
  if isinstance(tx, Mapping):
    params, opt_state, updates = dict(params), dict(opt_state), {}
    for k, g in grads.items():
      if k not in tx:
        raise ValueError(f"parameter group {k!r} has no optimizer; optimizer() has groups {sorted(tx)}")
      params[k], opt_state[k], updates[k] = apply_optimizer(tx[k], g, opt_state[k], params[k])
    return params, opt_state, updates
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, updates


def mean_over(metrics: Metrics, axis_name: str | None) -> Metrics:
  return metrics if axis_name is None else jax.lax.pmean(metrics, axis_name)


def norms(grads, params, updates, prefix: str = "") -> Metrics:
  """big_vision's ``l2_grads``, ``l2_params``, ``l2_updates``."""
  return {f"{prefix}l2_grads": optax.tree.norm(grads), f"{prefix}l2_params": optax.tree.norm(params),
          f"{prefix}l2_updates": optax.tree.norm(updates)}


def init_optimizer_state(tx, params):
  """``tx.init(params)``, or ``{group: tx[group].init(params[group])}`` for several parameter groups."""
  if isinstance(tx, Mapping):
    missing = set(tx) - set(params)
    if missing:
      raise ValueError(f"optimizer groups {sorted(missing)} have no parameters; params has {sorted(params)}")
    return {k: t.init(params[k]) for k, t in tx.items()}
  return tx.init(params)


# --------------------------------------------------------------------------------------- mesh and sharding


def make_mesh(devices=None) -> Mesh:
  """1-D data-parallel mesh over all devices of all processes (or the given ones)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows -> global arrays sharded along ``data`` (``make_array_from_process_local_data``)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def step_rng(state: TrainState, axis_name: str | None) -> jax.Array:
  """The key of this step on this device: ``fold_in(fold_in(state.rng, step), device index)``."""
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  return rng


def _train_step(task: Task, state: TrainState, batch):
  state, metrics = task.update(state, batch, step_rng(state, DATA_AXIS), axis_name=DATA_AXIS)
  return state, {**metrics, **task.extra_metrics(state.replace(step=state.step - 1))}


def _eval_step(task: Task, state: TrainState, batch):
  sums, gathered = task.eval_step(state, batch)
  return jax.lax.psum(sums, DATA_AXIS), gathered


def _check_hashable(task: Task) -> None:
  try:
    hash(task)
  except TypeError:
    raise TypeError(f"{type(task).__name__} is unhashable; the loop caches one compiled step per task object: "
                    f"declare dataclass tasks with @dataclasses.dataclass(eq=False)") from None


def compiled_train_step(task: Task, mesh: Mesh):
  """``jit(shard_map(task.update))`` with the state donated; batch split along ``data``, outputs replicated.
  Cached per (task object, mesh): training the same task again does not recompile."""
  _check_hashable(task)
  return _compiled_train_step(task, mesh)


def compiled_eval_step(task: Task, mesh: Mesh):
  """``jit(shard_map(task.eval_step))``: sums replicated, gathered arrays stay split along ``data``."""
  _check_hashable(task)
  return _compiled_eval_step(task, mesh)


@functools.cache
def _compiled_train_step(task: Task, mesh: Mesh):
  mapped = jax.shard_map(functools.partial(_train_step, task), mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                         out_specs=(P(), P()))
  return jax.jit(mapped, donate_argnums=(0,))


@functools.cache
def _compiled_eval_step(task: Task, mesh: Mesh):
  mapped = jax.shard_map(functools.partial(_eval_step, task), mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                         out_specs=(P(), P(DATA_AXIS)))
  return jax.jit(mapped)


def abstract_batch(local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of the GLOBAL batch assembled from this process's ``local_batch``."""
  n = jax.process_count()
  return {k: jax.ShapeDtypeStruct((np.shape(v)[0] * n,) + np.shape(v)[1:], np.asarray(v).dtype)
          for k, v in local_batch.items()}


def init_train_state(task: Task, seed: int, batch: Mapping[str, jax.ShapeDtypeStruct], mesh: Mesh,
                     variables: tuple[Any, Any] | None = None) -> tuple[TrainState, TrainState]:
  """(abstract state from ``jax.eval_shape``, concrete replicated state initialised under jit).

  ``init_rng, state_rng = split(PRNGKey(seed))``: ``task.init`` gets ``init_rng``. ``variables`` =
  ``(params, model_state)`` replaces ``task.init`` (fine-tuning from given weights)."""
  tx = task.optimizer()

  def create(rng, given):
    init_rng, state_rng = jax.random.split(rng)
    params, model_state = task.init(init_rng, batch) if given is None else given
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=init_optimizer_state(tx, params), rng=state_rng)

  rng = jax.random.PRNGKey(seed)
  abstract = jax.eval_shape(create, rng, variables)
  sharding = jax.tree.map(lambda _: replicated(mesh), abstract)
  state = jax.jit(create, out_shardings=sharding)(rng, variables)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sharding)
  return abstract, state
