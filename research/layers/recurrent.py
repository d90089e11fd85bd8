"""Recurrent layers: a GRU cell written from its equations, a masked ``nn.scan`` over time, bidirectional and stacked
GRUs (used by PQ-NET's part Seq2Seq, Wu et al. CVPR 2020 §3.2; generic for other sequence models).

GRU (Cho et al., EMNLP 2014, §2.3), in the variant of PyTorch's ``nn.GRU``, cuDNN and ``flax.linen.GRUCell``, where the
reset gate multiplies the recurrent projection *after* the matrix product, bias ``b_hn`` included::

    r  = sigmoid(W_r x + U_r h + b_r)
    z  = sigmoid(W_z x + U_z h + b_z)
    n  = tanh(W_n x + b_in + r * (U_n h + b_hn))
    h' = (1 - z) * n + z * h

(Cho et al.'s own form, ``n = tanh(W_n x + U_n (r * h))``, is Keras' ``reset_after=False``; the two are different
functions and not interchangeable.) Parameters of :class:`GRUCell`, gates in the order ``r, z, n``:

* ``input_kernel`` [D, 3F] = ``[W_r | W_z | W_n]`` (transposed, so ``x @ input_kernel``), ``input_bias`` [3F] =
  ``(b_r, b_z, b_in)``;
* ``recurrent_kernel`` [F, 3F] = ``[U_r | U_z | U_n]``, ``recurrent_bias`` [F] = ``b_hn``.

From PyTorch: ``input_kernel = weight_ih.T``, ``recurrent_kernel = weight_hh.T``, ``input_bias = bias_ih +
bias_hh`` with its last third replaced by ``bias_ih[2F:]``, ``recurrent_bias = bias_hh[2F:]``. From
``flax.linen.GRUCell``: concatenate the ``ir``, ``iz``, ``in`` kernels (and biases) and the ``hr``, ``hz``, ``hn``
kernels along the output axis; ``recurrent_bias = hn.bias``.

Cells follow ``flax.linen``'s convention ``cell(carry, x) -> (new_carry, y)``; :func:`scan_rnn` runs one over
``[B, T, D]`` with an optional validity mask (padded variable lengths: the carry is frozen at invalid steps).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _blockwise(init: Callable, blocks: int) -> Callable:
  """An initializer of [F, blocks * F] kernels that applies ``init`` to each [F, F] gate block separately (each
  recurrent gate matrix orthogonal, as ``flax.linen.GRUCell``)."""

  def init_fn(key, shape, dtype=jnp.float32):
    rows, cols = shape
    keys = jax.random.split(key, blocks)
    return jnp.concatenate([init(k, (rows, cols // blocks), dtype) for k in keys], axis=1)

  return init_fn


class GRUCell(nn.Module):
  """One GRU step (module docstring equations): ``(h [..., F], x [..., D]) -> (h' [..., F], h' [..., F])``."""
  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  recurrent_kernel_init: Callable = nn.initializers.orthogonal()
  bias_init: Callable = nn.initializers.zeros_init()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array, x: Array) -> tuple[Array, Array]:
    f = self.features
    if h.shape[-1] != f:
      raise ValueError(f"GRUCell: the state h must be [..., features={f}], got shape {h.shape}; start from "
                       f"GRUCell.initial_state(batch_shape)")
    if h.shape[:-1] != x.shape[:-1]:
      raise ValueError(f"GRUCell: h {h.shape} and x {x.shape} must share their batch dimensions [...]")
    wi = self.param("input_kernel", self.kernel_init, (x.shape[-1], 3 * f), self.param_dtype)
    bi = self.param("input_bias", self.bias_init, (3 * f,), self.param_dtype)
    wh = self.param("recurrent_kernel", _blockwise(self.recurrent_kernel_init, 3), (f, 3 * f), self.param_dtype)
    bh = self.param("recurrent_bias", self.bias_init, (f,), self.param_dtype)
    x, h = x.astype(self.dtype), h.astype(self.dtype)
    gi = x @ wi.astype(self.dtype) + bi.astype(self.dtype)
    gh = h @ wh.astype(self.dtype)
    r = jax.nn.sigmoid(gi[..., :f] + gh[..., :f])
    z = jax.nn.sigmoid(gi[..., f:2 * f] + gh[..., f:2 * f])
    n = jnp.tanh(gi[..., 2 * f:] + r * (gh[..., 2 * f:] + bh.astype(self.dtype)))
    new_h = (1.0 - z) * n + z * h
    return new_h, new_h

  @nn.nowrap
  def initial_state(self, batch_shape: tuple[int, ...]) -> Array:
    """Zeros [*batch_shape, features] in ``dtype``."""
    return jnp.zeros(tuple(batch_shape) + (self.features,), self.dtype)

  @staticmethod
  def carry_output(carry: Array) -> Array:
    """The output a cell in state ``carry`` emits (a GRU's output is its state); :func:`scan_rnn` repeats it at
    masked steps."""
    return carry


def _where_batch(m: Array, a, b):
  """``where(m, a, b)`` leaf by leaf, ``m`` [B] broadcast over the leaves' trailing axes."""
  return jax.tree.map(lambda u, v: jnp.where(m.reshape(m.shape + (1,) * (u.ndim - 1)), u, v), a, b)


def scan_rnn(cell: nn.Module, inputs: Array, h0: Any, mask: Array | None = None, reverse: bool = False, *,
             unroll: int = 1) -> tuple[Any, Array]:
  """Runs ``cell`` over time with ``nn.scan`` (parameters shared by all steps): ``(final carry, outputs [B, T, F])``.

  Args:
    cell: a linen cell ``cell(carry, x [B, D]) -> (carry, y [B, F])`` created inside the calling module (this
      must run inside a module's ``@nn.compact`` method or a method of a ``setup`` module).
    inputs: [B, T, D] (batch-major).
    h0: the initial carry (for :class:`GRUCell` [B, F]; any pytree of [B, ...] leaves).
    mask: optional bool [B, T], True at valid steps. At an invalid step the carry is not updated and the output is
      ``cell.carry_output(carry)`` of the frozen carry (the carry itself for cells without that method). With a
      prefix mask (the first ``length`` steps valid) a forward scan's outputs past ``length`` and its final carry
      equal the state at ``length``; a ``reverse`` scan keeps ``h0`` through the padding, starts at step
      ``length - 1`` and ends with the state after step 0 (what a packed-sequence bidirectional RNN computes).
    reverse: scan from step T - 1 down to 0 (outputs still indexed by step).
    unroll: steps per scan iteration (``jax.lax.scan``'s ``unroll``).
  """
  if inputs.ndim != 3:
    raise ValueError(f"scan_rnn: inputs must be [B, T, D], got shape {inputs.shape}")
  b, t = inputs.shape[:2]
  if mask is None:
    mask = jnp.ones((b, t), bool)
  elif jnp.shape(mask) != (b, t):
    raise ValueError(f"scan_rnn: mask must be bool [B, T] = {(b, t)} (True at valid steps), got {jnp.shape(mask)}")
  out_of = getattr(cell, "carry_output", lambda c: c)

  def body(cell, carry, xs):
    x, m = xs
    new_carry, y = cell(carry, x)
    new_carry = _where_batch(m, new_carry, carry)
    return new_carry, _where_batch(m, y, out_of(new_carry))

  scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1,
                 reverse=reverse, unroll=unroll)
  return scan(cell, h0, (inputs, jnp.asarray(mask, bool)))


def zero_state(shape: tuple[int, ...], dtype: Any, inputs: Array) -> Array:
  """Zeros of ``shape`` ``[..., B, F]`` that vary over the same mesh axes as ``inputs [B, ...]``.

  Inside ``shard_map`` a ``lax.scan`` carry must have the type of the step's output, which varies over the batch's
  mesh axes; a plain ``jnp.zeros`` does not ("carry input and carry output must have equal types"). The select
  below is 0 whatever ``inputs`` holds (NaN included) and a no-op outside ``shard_map``.
  """
  anchor = jnp.where(False, inputs.reshape(inputs.shape[0], -1)[:, :1], 0).astype(dtype)  # [B, 1] zeros
  return jnp.zeros(shape, dtype) + anchor


class BidirectionalGRU(nn.Module):
  """A forward and a backward GRU over the same sequence: ``inputs [B, T, D] -> (outputs [B, T, 2F] (forward then
  backward features), final states [2, B, F] (forward, backward))``. ``h0``: optional [2, B, F]; ``mask``: bool
  [B, T] as :func:`scan_rnn` (the backward GRU starts at each sequence's last valid step)."""
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, h0: Array | None = None, *, mask: Array | None = None) -> tuple[Array, Array]:
    b = inputs.shape[0]
    if h0 is None:
      h0 = zero_state((2, b, self.features), self.dtype, inputs)
    elif h0.shape != (2, b, self.features):
      raise ValueError(f"BidirectionalGRU: h0 must be [2, B, F] = {(2, b, self.features)}, got {h0.shape}")
    outs, finals = [], []
    for d, name in enumerate(("forward", "backward")):
      cell = GRUCell(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
      h, y = scan_rnn(cell, inputs, h0[d], mask, reverse=d == 1)
      outs.append(y)
      finals.append(h)
    return jnp.concatenate(outs, -1), jnp.stack(finals)


class StackedGRU(nn.Module):
  """``num_layers`` GRU layers, each (bi)directional, the next layer reading the previous one's outputs:
  ``inputs [B, T, D] -> (outputs [B, T, F or 2F] of the last layer, final states [num_layers * (1 or 2), B, F])``,
  states ordered as PyTorch's ``nn.GRU`` ``h_n`` (layer-major; forward before backward). ``h0``: optional initial
  states of that shape; ``mask``: bool [B, T] as :func:`scan_rnn`; dropout of ``dropout_rate`` on the outputs of
  every layer but the last when ``train`` (PyTorch's ``dropout`` argument; needs a ``dropout`` rng)."""
  features: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, h0: Array | None = None, *, mask: Array | None = None, train: bool = False
               ) -> tuple[Array, Array]:
    if self.num_layers < 1:
      raise ValueError(f"StackedGRU: num_layers={self.num_layers} must be >= 1")
    dirs = 2 if self.bidirectional else 1
    b = inputs.shape[0]
    want = (self.num_layers * dirs, b, self.features)
    if h0 is None:
      h0 = zero_state(want, self.dtype, inputs)
    elif h0.shape != want:
      raise ValueError(f"StackedGRU: h0 must be [num_layers * directions, B, F] = {want}, got {h0.shape}")
    h, finals = inputs, []
    for layer in range(self.num_layers):
      if layer and self.dropout_rate:
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
      init = h0[layer * dirs:(layer + 1) * dirs]
      if self.bidirectional:
        h, fin = BidirectionalGRU(self.features, dtype=self.dtype, param_dtype=self.param_dtype,
                                  name=f"layer{layer}")(h, init, mask=mask)
      else:
        cell = GRUCell(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name=f"layer{layer}")
        fin, h = scan_rnn(cell, h, init[0], mask)
        fin = fin[None]
      finals.append(fin)
    return h, jnp.concatenate(finals, 0)
