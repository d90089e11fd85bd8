"""Recurrent layers: a GRU cell written from its equations, a masked ``nn.scan`` over time, bidirectional and stacked
GRUs (used by PQ-NET's part Seq2Seq, Wu et al. CVPR 2020 §3.2; generic for other sequence models); Elman, LSTM
(optionally with peepholes) and SRU cells, cell-generic :class:`RNN` / :class:`Bidirectional` / :class:`Stacked`
layers, an :class:`SRU` layer with its input projections outside the scan (Lei et al. 2018, §3), truncated BPTT
(:func:`truncated_bptt_chunks`), a 2-D multi-dimensional RNN (:class:`MDRNN`), and PyTorch ``nn.LSTM`` / ``nn.GRU`` /
``nn.RNN`` weights as :class:`Stacked` parameters (:func:`params_from_torch`, pure numpy; checked against golden
files in ``tests/models/test_recurrent_torch_parity.py``).

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

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _blockwise(init: Callable, blocks: int) -> Callable:
  """An initializer of [F, blocks * F] kernels that applies ``init`` to each [F, F] gate block separately (each
  recurrent gate matrix orthogonal, as ``flax.linen.GRUCell``)."""

  def init_fn(key, shape, dtype=jnp.float32):
    rows, cols = shape
    keys = jax.random.split(key, blocks)
    return jnp.concatenate([init(k, (rows, cols // blocks), dtype) for k in keys], axis=1)

  return init_fn


class _StateIsOutput:
  """Carry = the hidden state, zeros initially; the output a cell in state ``carry`` emits is the state itself
  (GRU, Elman), which :func:`scan_rnn` repeats at masked steps."""

  @nn.nowrap
  def initial_state(self, batch_shape: tuple[int, ...]) -> Array:
    """Zeros [*batch_shape, features] in ``dtype``."""
    return jnp.zeros(tuple(batch_shape) + (self.features,), self.dtype)

  @staticmethod
  def carry_output(carry: Array) -> Array:
    return carry


class GRUCell(_StateIsOutput, nn.Module):
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


# ------------------------------------------------------------------------------------------- more cells, generic layers
#
# The cells below share GRUCell's conventions: ``cell(carry, x [..., D]) -> (carry', y [..., F])``, ``initial_state(
# batch_shape)`` (zeros), ``carry_output(carry)`` (what :func:`scan_rnn` emits at masked steps), fused kernels stored
# transposed (``x @ input_kernel``), recurrent kernels orthogonal per gate block, ``dtype`` (compute) / ``param_dtype``.


class SimpleRNNCell(_StateIsOutput, nn.Module):
  """Elman RNN (Elman, "Finding structure in time", Cognitive Science 1990): ``h' = act(x W + h U + b)``; carry and
  output ``h [..., F]``. Parameters ``input_kernel`` [D, F] (W), ``input_bias`` [F] (b), ``recurrent_kernel`` [F, F]
  (U)."""
  features: int
  activation: Callable = jnp.tanh
  kernel_init: Callable = nn.initializers.lecun_normal()
  recurrent_kernel_init: Callable = nn.initializers.orthogonal()
  bias_init: Callable = nn.initializers.zeros_init()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array, x: Array) -> tuple[Array, Array]:
    _check_state("SimpleRNNCell", h, x, self.features)
    wi = self.param("input_kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
    bi = self.param("input_bias", self.bias_init, (self.features,), self.param_dtype)
    wh = self.param("recurrent_kernel", self.recurrent_kernel_init, (self.features, self.features), self.param_dtype)
    dt = self.dtype
    new_h = self.activation(x.astype(dt) @ wi.astype(dt) + bi.astype(dt) + h.astype(dt) @ wh.astype(dt))
    return new_h, new_h



def _check_state(name: str, h: Array, x: Array, features: int):
  if h.shape[-1] != features:
    raise ValueError(f"{name}: the state must be [..., features={features}], got shape {h.shape}; start from "
                     f"{name}.initial_state(batch_shape)")
  if h.shape[:-1] != x.shape[:-1]:
    raise ValueError(f"{name}: state {h.shape} and x {x.shape} must share their batch dimensions [...]")


def _forget_bias_init(base: Callable, features: int, block: int, value: float) -> Callable:
  """``base`` for a fused [k * F] bias, with gate block ``block`` set to ``value``."""

  def init_fn(key, shape, dtype=jnp.float32):
    return base(key, shape, dtype).at[block * features:(block + 1) * features].set(value)

  return init_fn


class _CellAndOutputCarry:
  """Carry ``(c, h)`` (cell state, last output) of zeros; the output is ``h`` (LSTM, SRU)."""

  @nn.nowrap
  def initial_state(self, batch_shape: tuple[int, ...]) -> tuple[Array, Array]:
    """``(c, h)``, zeros [*batch_shape, features] in ``dtype``."""
    z = jnp.zeros(tuple(batch_shape) + (self.features,), self.dtype)
    return z, z

  @staticmethod
  def carry_output(carry: tuple[Array, Array]) -> Array:
    """The last output ``h``."""
    return carry[1]


class LSTMCell(_CellAndOutputCarry, nn.Module):
  """LSTM with a forget gate (Hochreiter & Schmidhuber, Neural Computation 1997; Gers et al., Neural Computation
  2000), optional peepholes (Gers & Schmidhuber, IJCNN 2000); carry ``(c, h)``, output ``h``::

      i  = sigmoid(x W_i + h U_i + p_i * c  + b_i)        (p_* only with ``peephole``)
      f  = sigmoid(x W_f + h U_f + p_f * c  + b_f)
      g  = tanh(x W_g + h U_g + b_g)
      c' = f * c + i * g
      o  = sigmoid(x W_o + h U_o + p_o * c' + b_o)
      h' = o * tanh(c')

  Parameters, gates in the order ``i, f, g, o``: ``input_kernel`` [D, 4F] = ``[W_i | W_f | W_g | W_o]``,
  ``input_bias`` [4F] (the forget block initialised to ``forget_bias`` = 1.0), ``recurrent_kernel`` [F, 4F] =
  ``[U_i | U_f | U_g | U_o]``; with ``peephole`` the diagonal peephole weights ``peephole_i``, ``peephole_f``,
  ``peephole_o`` [F]. Without peepholes this is ``flax.linen.LSTMCell``: its ``ii, if, ig, io`` kernels concatenated
  along the output axis are ``input_kernel``, its ``hi, hf, hg, ho`` kernels ``recurrent_kernel`` and their biases
  ``input_bias`` (flax's input Dense layers have no bias); both carry ``(c, h)``.
  """
  features: int
  peephole: bool = False
  forget_bias: float = 1.0
  kernel_init: Callable = nn.initializers.lecun_normal()
  recurrent_kernel_init: Callable = nn.initializers.orthogonal()
  bias_init: Callable = nn.initializers.zeros_init()
  peephole_init: Callable = nn.initializers.zeros_init()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: tuple[Array, Array], x: Array) -> tuple[tuple[Array, Array], Array]:
    c, h = carry
    _check_state("LSTMCell", h, x, self.features)
    if c.shape != h.shape:
      raise ValueError(f"LSTMCell: c {c.shape} and h {h.shape} must have the same shape")
    f, dt = self.features, self.dtype
    wi = self.param("input_kernel", self.kernel_init, (x.shape[-1], 4 * f), self.param_dtype)
    bi = self.param("input_bias", _forget_bias_init(self.bias_init, f, 1, self.forget_bias), (4 * f,),
                    self.param_dtype)
    wh = self.param("recurrent_kernel", _blockwise(self.recurrent_kernel_init, 4), (f, 4 * f), self.param_dtype)
    c, h = c.astype(dt), h.astype(dt)
    z = x.astype(dt) @ wi.astype(dt) + bi.astype(dt) + h @ wh.astype(dt)
    zi, zf, zg, zo = z[..., :f], z[..., f:2 * f], z[..., 2 * f:3 * f], z[..., 3 * f:]
    if self.peephole:
      p = {g: self.param(f"peephole_{g}", self.peephole_init, (f,), self.param_dtype).astype(dt) for g in "ifo"}
      zi, zf = zi + p["i"] * c, zf + p["f"] * c
    new_c = jax.nn.sigmoid(zf) * c + jax.nn.sigmoid(zi) * jnp.tanh(zg)
    if self.peephole:
      zo = zo + p["o"] * new_c
    new_h = jax.nn.sigmoid(zo) * jnp.tanh(new_c)
    return (new_c, new_h), new_h



class SRUCell(_CellAndOutputCarry, nn.Module):
  """Simple Recurrent Unit (Lei et al., "Simple Recurrent Units for Highly Parallelizable Recurrence", EMNLP 2018)::

      f  = sigmoid(x W_f + v_f * c + b_f)
      r  = sigmoid(x W_r + v_r * c + b_r)
      c' = f * c + (1 - f) * (x W)
      h  = r * c' + (1 - r) * x'          (highway; x' = x if D == F, else x W_p)

  (``c`` the previous cell state, as the paper's eq. 1-4). Parameters: ``input_kernel`` [D, 3F] = ``[W | W_f |
  W_r]``, ``input_bias`` [2F] = ``(b_f, b_r)``, ``recurrent_weights`` [2F] = ``(v_f, v_r)`` (element-wise), and
  ``highway_kernel`` [D, F] (``W_p``) only when D != F. Carry ``(c, h)``: the recurrence only uses ``c``; ``h`` is the
  last output, so that :func:`scan_rnn` can repeat it at masked steps (the output depends on ``x``, not on ``c``
  alone). Output ``h``.
  """
  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  recurrent_init: Callable = nn.initializers.normal(0.1)
  bias_init: Callable = nn.initializers.zeros_init()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: tuple[Array, Array], x: Array) -> tuple[tuple[Array, Array], Array]:
    c, _ = carry
    _check_state("SRUCell", c, x, self.features)
    f, d, dt = self.features, x.shape[-1], self.dtype
    w = self.param("input_kernel", self.kernel_init, (d, 3 * f), self.param_dtype)
    b = self.param("input_bias", self.bias_init, (2 * f,), self.param_dtype).astype(dt)
    v = self.param("recurrent_weights", self.recurrent_init, (2 * f,), self.param_dtype).astype(dt)
    x, c = x.astype(dt), c.astype(dt)
    z = x @ w.astype(dt)
    fg = jax.nn.sigmoid(z[..., f:2 * f] + v[:f] * c + b[:f])
    rg = jax.nn.sigmoid(z[..., 2 * f:] + v[f:] * c + b[f:])
    new_c = fg * c + (1.0 - fg) * z[..., :f]
    if d != f:
      x = x @ self.param("highway_kernel", self.kernel_init, (d, f), self.param_dtype).astype(dt)
    h = rg * new_c + (1.0 - rg) * x
    return (new_c, h), h



def zero_carry(cell: nn.Module, inputs: Array) -> Any:
  """``cell``'s zero initial carry for ``inputs [B, ...]``, every leaf varying like ``inputs`` (see
  :func:`zero_state`), so that scans started from it also work inside ``shard_map``."""
  ref = cell.initial_state((inputs.shape[0],))
  return jax.tree.map(lambda z: zero_state(z.shape, z.dtype, inputs), ref)


def truncated_bptt_chunks(cell: nn.Module, inputs: Array, h0: Any, chunk: int, mask: Array | None = None,
                          reverse: bool = False, *, unroll: int = 1) -> tuple[Any, Array]:
  """:func:`scan_rnn` in chunks of ``chunk`` steps with truncated back-propagation through time (Williams & Peng,
  Neural Computation 1990): the carry handed from one chunk to the next goes through ``lax.stop_gradient``, so the
  gradient of a loss on one chunk's outputs stops at that chunk's first step (the forward values are those of
  :func:`scan_rnn`; parameter gradients still sum over all chunks). Chunks run in scan direction (``reverse``: the
  last chunk first). T need not be a multiple of ``chunk``: the sequence is padded with masked steps, which leave the
  carry unchanged. Arguments and result as :func:`scan_rnn`.
  """
  if inputs.ndim != 3:
    raise ValueError(f"truncated_bptt_chunks: inputs must be [B, T, D], got shape {inputs.shape}")
  if chunk < 1:
    raise ValueError(f"truncated_bptt_chunks: chunk={chunk} must be >= 1")
  b, t, d = inputs.shape
  if mask is None:
    mask = jnp.ones((b, t), bool)
  elif jnp.shape(mask) != (b, t):
    raise ValueError(f"truncated_bptt_chunks: mask must be bool [B, T] = {(b, t)}, got {jnp.shape(mask)}")
  n = -(-t // chunk)
  pad = n * chunk - t
  x = jnp.pad(inputs, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d)
  m = jnp.pad(jnp.asarray(mask, bool), ((0, 0), (0, pad))).reshape(b, n, chunk)

  def body(cell, carry, xs):
    xc, mc = xs
    return scan_rnn(cell, xc, jax.lax.stop_gradient(carry), mc, reverse=reverse, unroll=unroll)

  scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1,
                 reverse=reverse)
  carry, y = scan(cell, h0, (x, m))
  return carry, y.reshape((b, n * chunk) + y.shape[3:])[:, :t]


class RNN(nn.Module):
  """Any cell of this module (or one with the same interface) scanned over ``inputs [B, T, D]``: ``(outputs
  [B, T, F], final carry)``. ``cell``: the cell class (or a factory) called as ``cell(features, dtype=...,
  param_dtype=..., name="cell", **cell_kwargs)``; ``initial_carry`` defaults to :func:`zero_carry`; ``mask`` bool
  [B, T] as :func:`scan_rnn`; ``reverse`` scans from the end; ``bptt_chunk`` switches to
  :func:`truncated_bptt_chunks` with chunks of that many steps."""
  cell: Callable[..., nn.Module]
  features: int
  cell_kwargs: Any = flax.core.FrozenDict()
  reverse: bool = False
  bptt_chunk: int | None = None
  unroll: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, initial_carry: Any = None, *, mask: Array | None = None) -> tuple[Array, Any]:
    cell = self.cell(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="cell",
                     **dict(self.cell_kwargs))
    if initial_carry is None:
      initial_carry = zero_carry(cell, inputs)
    if self.bptt_chunk:
      carry, y = truncated_bptt_chunks(cell, inputs, initial_carry, self.bptt_chunk, mask, self.reverse,
                                       unroll=self.unroll)
    else:
      carry, y = scan_rnn(cell, inputs, initial_carry, mask, self.reverse, unroll=self.unroll)
    return y, carry


class _SRUWeights(nn.Module):
  """The parameters of :class:`SRUCell` (same names, shapes and initialisers) for inputs of width ``d``."""
  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  recurrent_init: Callable = nn.initializers.normal(0.1)
  bias_init: Callable = nn.initializers.zeros_init()
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, d: int) -> dict[str, Array]:
    f, pd = self.features, self.param_dtype
    out = {"input_kernel": self.param("input_kernel", self.kernel_init, (d, 3 * f), pd),
           "input_bias": self.param("input_bias", self.bias_init, (2 * f,), pd),
           "recurrent_weights": self.param("recurrent_weights", self.recurrent_init, (2 * f,), pd)}
    if d != f:
      out["highway_kernel"] = self.param("highway_kernel", self.kernel_init, (d, f), pd)
    return out


class SRU(nn.Module):
  """An SRU layer computed as Lei et al. (EMNLP 2018, §3) prescribe for speed: the input
  projections ``x W``, ``x W_f``, ``x W_r`` (and the highway ``x W_p``) of ALL steps are one matrix product
  ``[B * T, D] x [D, 3F]`` before the scan, which then runs only the element-wise recurrence of :class:`SRUCell`.
  The same function and parameters as ``RNN(SRUCell, features)`` (tree ``{"cell": {...}}``, same initialisers),
  ``mask`` / ``reverse`` / ``initial_carry`` included: ``inputs [B, T, D] -> (outputs [B, T, F], final carry
  (c, h))``."""
  features: int
  cell_kwargs: Any = flax.core.FrozenDict()
  reverse: bool = False
  unroll: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, initial_carry: Any = None, *, mask: Array | None = None) -> tuple[Array, Any]:
    if inputs.ndim != 3:
      raise ValueError(f"SRU: inputs must be [B, T, D], got shape {inputs.shape}")
    b, t, d = inputs.shape
    f, dt = self.features, self.dtype
    p = _SRUWeights(f, param_dtype=self.param_dtype, name="cell", **dict(self.cell_kwargs))(d)
    x = inputs.astype(dt)
    z = x @ p["input_kernel"].astype(dt)  # [B, T, 3F]: every step's projections at once
    zf = z[..., f:2 * f] + p["input_bias"][:f].astype(dt)
    zr = z[..., 2 * f:] + p["input_bias"][f:].astype(dt)
    highway = x @ p["highway_kernel"].astype(dt) if d != f else x
    vf, vr = p["recurrent_weights"][:f].astype(dt), p["recurrent_weights"][f:].astype(dt)
    if mask is None:
      mask = jnp.ones((b, t), bool)
    elif jnp.shape(mask) != (b, t):
      raise ValueError(f"SRU: mask must be bool [B, T] = {(b, t)} (True at valid steps), got {jnp.shape(mask)}")
    if initial_carry is None:
      initial_carry = (zero_state((b, f), dt, inputs), zero_state((b, f), dt, inputs))

    def step(carry, xs):
      c, h = carry
      xt, ft, rt, hw, m = xs
      fg = jax.nn.sigmoid(ft + vf * c)
      rg = jax.nn.sigmoid(rt + vr * c)
      new_c = fg * c + (1.0 - fg) * xt
      new_h = rg * new_c + (1.0 - rg) * hw
      new = _where_batch(m, (new_c, new_h), (c, h))
      return new, new[1]

    xs = jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), (z[..., :f], zf, zr, highway, jnp.asarray(mask, bool)))
    carry, y = jax.lax.scan(step, initial_carry, xs, reverse=self.reverse, unroll=self.unroll)
    return jnp.moveaxis(y, 0, 1), carry


def _tree_stack(trees: list) -> Any:
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


class Bidirectional(nn.Module):
  """A forward and a backward ``cell`` (as :class:`RNN`) over the same sequence: ``inputs [B, T, D] -> (outputs
  [B, T, 2F] (forward then backward features; [B, T, F] with ``merge="sum"``), final carries (each leaf stacked
  [2, ...]: forward, backward))``. ``initial_carry``: optional, leaves [2, B, ...]; ``mask`` bool [B, T] as
  :func:`scan_rnn` (the backward cell starts at each sequence's last valid step). With :class:`GRUCell` this is
  :class:`BidirectionalGRU`, parameters (``forward``, ``backward``) and outputs included."""
  cell: Callable[..., nn.Module]
  features: int
  cell_kwargs: Any = flax.core.FrozenDict()
  merge: str = "concat"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, initial_carry: Any = None, *, mask: Array | None = None) -> tuple[Array, Any]:
    if self.merge not in ("concat", "sum"):
      raise ValueError(f"Bidirectional: merge={self.merge!r} must be 'concat' or 'sum'")
    outs, finals = [], []
    for d, name in enumerate(("forward", "backward")):
      cell = self.cell(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                       **dict(self.cell_kwargs))
      h0 = zero_carry(cell, inputs) if initial_carry is None else jax.tree.map(lambda a: a[d], initial_carry)
      h, y = scan_rnn(cell, inputs, h0, mask, reverse=d == 1)
      outs.append(y)
      finals.append(h)
    y = jnp.concatenate(outs, -1) if self.merge == "concat" else outs[0] + outs[1]
    return y, _tree_stack(finals)


class Stacked(nn.Module):
  """``num_layers`` layers of ``cell`` (as :class:`RNN`), each (bi)directional, the next reading the previous one's
  outputs: ``inputs [B, T, D] -> (outputs [B, T, F or 2F] of the last layer, final carries (leaves [num_layers *
  (1 or 2), B, ...], layer-major, forward before backward))``. ``initial_carry``: optional, of that layout; ``mask``
  as :func:`scan_rnn`; dropout of ``dropout_rate`` on the inputs of every layer but the first when ``train`` (needs
  a ``dropout`` rng). With :class:`GRUCell` this is :class:`StackedGRU`, parameters and outputs included."""
  cell: Callable[..., nn.Module]
  features: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  cell_kwargs: Any = flax.core.FrozenDict()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, initial_carry: Any = None, *, mask: Array | None = None, train: bool = False
               ) -> tuple[Array, Any]:
    if self.num_layers < 1:
      raise ValueError(f"Stacked: num_layers={self.num_layers} must be >= 1")
    dirs = 2 if self.bidirectional else 1
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h, finals = inputs, []
    for layer in range(self.num_layers):
      if layer and self.dropout_rate:
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
      init = None if initial_carry is None else jax.tree.map(lambda a: a[layer * dirs:(layer + 1) * dirs],
                                                              initial_carry)
      if self.bidirectional:
        h, fin = Bidirectional(self.cell, self.features, self.cell_kwargs, name=f"layer{layer}", **kw)(
            h, init, mask=mask)
      else:
        cell = self.cell(self.features, name=f"layer{layer}", **kw, **dict(self.cell_kwargs))
        h0 = zero_carry(cell, h) if init is None else jax.tree.map(lambda a: a[0], init)
        fin, h = scan_rnn(cell, h, h0, mask)
        fin = jax.tree.map(lambda a: a[None], fin)
      finals.append(fin)
    return h, jax.tree.map(lambda *a: jnp.concatenate(a, 0), *finals)


# ------------------------------------------------------------------------------------------------------- 2-D MD-RNN

MD_CORNERS = ("tl", "tr", "bl", "br")


class MDRNNSweep(nn.Module):
  """One 2-D sweep of a tanh multi-dimensional RNN from the top-left corner (Graves et al., "Multi-dimensional
  recurrent neural networks", ICANN 2007): ``x [B, H, W, D] -> h [B, H, W, F]`` with::

      h[i, j] = tanh(x[i, j] W + h[i-1, j] U_v + h[i, j-1] U_h + b)      (h outside the image = 0)

  computed by a scan over rows whose body scans the row's columns (the ``x W + b`` and ``h[i-1] U_v`` terms are
  batched over the row). Parameters ``input_kernel`` [D, F] (W), ``input_bias`` [F] (b), ``vertical_kernel``
  [F, F] (U_v), ``horizontal_kernel`` [F, F] (U_h)."""
  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  recurrent_kernel_init: Callable = nn.initializers.orthogonal()
  bias_init: Callable = nn.initializers.zeros_init()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim != 4:
      raise ValueError(f"MDRNNSweep: x must be [B, H, W, D], got shape {x.shape}")
    f, dt = self.features, self.dtype
    b, _, w = x.shape[:3]
    wi = self.param("input_kernel", self.kernel_init, (x.shape[-1], f), self.param_dtype).astype(dt)
    bi = self.param("input_bias", self.bias_init, (f,), self.param_dtype).astype(dt)
    uv = self.param("vertical_kernel", self.recurrent_kernel_init, (f, f), self.param_dtype).astype(dt)
    uh = self.param("horizontal_kernel", self.recurrent_kernel_init, (f, f), self.param_dtype).astype(dt)
    a = x.astype(dt) @ wi + bi  # [B, H, W, F]
    h_left = zero_state((b, f), dt, x)

    def row(prev, a_row):  # prev, a_row: [B, W, F]
      pre = jnp.moveaxis(a_row + prev @ uv, 1, 0)  # [W, B, F]

      def col(h, p):
        h = jnp.tanh(p + h @ uh)
        return h, h

      _, hs = jax.lax.scan(col, h_left, pre)
      hs = jnp.moveaxis(hs, 0, 1)
      return hs, hs

    _, out = jax.lax.scan(row, zero_state((b, w * f), dt, x).reshape(b, w, f), jnp.moveaxis(a, 1, 0))
    return jnp.moveaxis(out, 0, 1)


class MDRNN(nn.Module):
  """2-D multi-dimensional RNN (Graves et al., ICANN 2007): one :class:`MDRNNSweep` from each corner in
  ``directions`` (``"tl"`` top-left: h[i, j] depends on h[i-1, j] and h[i, j-1]; ``"tr"`` on h[i-1, j], h[i, j+1];
  ``"bl"`` on h[i+1, j], h[i, j-1]; ``"br"`` on h[i+1, j], h[i, j+1]), each with its own parameters (submodules
  named by corner): ``x [B, H, W, D] -> [B, H, W, len(directions) * F]`` (concatenated in ``directions`` order) or
  ``[B, H, W, F]`` with ``merge="sum"``. A sweep from another corner is the top-left sweep of the image flipped."""
  features: int
  directions: tuple[str, ...] = MD_CORNERS
  merge: str = "concat"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.merge not in ("concat", "sum"):
      raise ValueError(f"MDRNN: merge={self.merge!r} must be 'concat' or 'sum'")
    if not self.directions or any(d not in MD_CORNERS for d in self.directions):
      raise ValueError(f"MDRNN: directions={self.directions} must be a non-empty subset of {MD_CORNERS}")
    outs = []
    for corner in self.directions:
      axes = tuple(ax for ax, flip in ((1, corner[0] == "b"), (2, corner[1] == "r")) if flip)
      xf = jnp.flip(x, axes) if axes else x
      y = MDRNNSweep(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name=corner)(xf)
      outs.append(jnp.flip(y, axes) if axes else y)
    return jnp.concatenate(outs, -1) if self.merge == "concat" else sum(outs[1:], outs[0])


# ------------------------------------------------------------------------------------------- PyTorch weight mapping

TORCH_CELLS = {"LSTM": LSTMCell, "GRU": GRUCell, "RNN_TANH": SimpleRNNCell}
"""torch ``module.mode`` -> the cell with the same equations (``RNN_TANH``: ``nn.RNN(nonlinearity="tanh")``)."""


def cell_params_from_torch(mode: str, weight_ih, weight_hh, bias_ih=None, bias_hh=None) -> dict[str, Any]:
  """One layer-direction of a PyTorch ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN(nonlinearity="tanh")`` as the parameters of
  :class:`LSTMCell` / :class:`GRUCell` / :class:`SimpleRNNCell` (numpy in, numpy out; no torch needed).

  ``mode`` is the torch module's ``mode`` attribute (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``); ``weight_ih`` [G*F, D],
  ``weight_hh`` [G*F, F], ``bias_ih``, ``bias_hh`` [G*F] (None for ``bias=False``) are its ``weight_ih_l{k}[_reverse]``
  etc. PyTorch's gate blocks are ``i, f, g, o`` (LSTM) and ``r, z, n`` (GRU), the orders of these cells, so only the
  transposes and the bias sums remain::

      LSTM:  input_kernel = weight_ih.T, recurrent_kernel = weight_hh.T, input_bias = bias_ih + bias_hh
      RNN:   the same (one block, h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh))
      GRU:   input_kernel = weight_ih.T, recurrent_kernel = weight_hh.T,
             input_bias = bias_ih + bias_hh with its n block replaced by bias_ih[2F:] (b_hn sits inside r * (.)),
             recurrent_bias = bias_hh[2F:]

  The LSTM has no peepholes (PyTorch has none); ``proj_size`` LSTMs (``weight_hr``) have no counterpart here.
  """
  if mode not in TORCH_CELLS:
    raise ValueError(f"cell_params_from_torch: mode={mode!r} must be one of {tuple(TORCH_CELLS)} (torch module.mode; "
                     f"RNN_RELU has no counterpart with SimpleRNNCell's default tanh)")
  w_ih, w_hh = np.asarray(weight_ih), np.asarray(weight_hh)
  blocks = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1}[mode]
  f = w_hh.shape[1]
  if w_hh.shape != (blocks * f, f) or w_ih.ndim != 2 or w_ih.shape[0] != blocks * f:
    raise ValueError(f"cell_params_from_torch({mode}): weight_ih {w_ih.shape} must be [{blocks}F, D] and weight_hh "
                     f"{w_hh.shape} [{blocks}F, F]")
  zeros = np.zeros(blocks * f, w_ih.dtype)
  b_ih = zeros if bias_ih is None else np.asarray(bias_ih)
  b_hh = zeros if bias_hh is None else np.asarray(bias_hh)
  out = {"input_kernel": w_ih.T.copy(), "recurrent_kernel": w_hh.T.copy(), "input_bias": b_ih + b_hh}
  if mode == "GRU":
    out["input_bias"][2 * f:] = b_ih[2 * f:]
    out["recurrent_bias"] = b_hh[2 * f:].copy()
  return out


def params_from_torch(state_dict, mode: str, *, num_layers: int = 1, bidirectional: bool = False) -> dict[str, Any]:
  """A PyTorch ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN(nonlinearity="tanh")`` ``state_dict`` (name -> numpy array, e.g.
  ``{k: v.numpy() for k, v in m.state_dict().items()}``) as the ``params`` of :class:`Stacked` with the matching cell
  (``Stacked(TORCH_CELLS[mode], hidden_size, num_layers, bidirectional)``), pure numpy.

  Layout: torch's ``*_l{k}`` go to ``layer{k}`` (with ``bidirectional``: ``layer{k}/forward`` and ``*_l{k}_reverse``
  to ``layer{k}/backward``), each mapped by :func:`cell_params_from_torch`. The rest lines up as is: inputs and
  outputs batch-major (torch's ``batch_first=True``), bidirectional outputs forward then backward features, final
  states ``[num_layers * directions, B, F]`` layer-major with forward before backward (torch's ``h_n``); the LSTM
  carry is ``(c, h)`` where torch returns ``(h_n, c_n)``. A packed batch (``pack_padded_sequence``) is a ``mask``
  [B, T] of its lengths: outputs agree at valid steps (ours repeat the last state through the padding where torch's
  ``pad_packed_sequence`` writes zeros) and final states agree.
  """
  sd = dict(state_dict)
  if any(k.startswith("weight_hr") for k in sd):
    raise ValueError("params_from_torch: LSTMs with proj_size (weight_hr_l*) have no counterpart here")
  out: dict[str, Any] = {}
  used = set()
  for layer in range(num_layers):
    dirs = {}
    for suffix, name in (("", "forward"), ("_reverse", "backward"))[:2 if bidirectional else 1]:
      key = f"_l{layer}{suffix}"
      if f"weight_ih{key}" not in sd:
        raise ValueError(f"params_from_torch: state_dict has no weight_ih{key} (num_layers={num_layers}, "
                         f"bidirectional={bidirectional}; keys: {sorted(sd)})")
      names = [f"{w}{key}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
      used.update(names)
      dirs[name] = cell_params_from_torch(mode, *(sd.get(n) for n in names))
    out[f"layer{layer}"] = dirs if bidirectional else dirs["forward"]
  extra = sorted(set(sd) - used)
  if extra:
    raise ValueError(f"params_from_torch: state_dict entries {extra} are not part of a {num_layers}-layer "
                     f"{'bidirectional' if bidirectional else 'unidirectional'} {mode}: check num_layers / "
                     f"bidirectional")
  return out

