"""A recurrent sequence classifier for long-range memory tasks: one-hot tokens -> ``num_layers`` recurrent layers of
one cell kind -> linear heads on the last step's output (``research.train.sequence_memory``).

Cells (``CELLS``): ``elman`` (Elman 1990, tanh), ``lstm`` (forget gate, Gers et al. 2000), ``lstm_peephole`` (Gers &
Schmidhuber 2000), ``gru`` (Cho et al. 2014), ``sru`` (Lei et al. 2018; the parallel-projection layer
``research.layers.recurrent.SRU``). Two biases initialise the gated cells' *retain* gates, the gates whose value 1
keeps the state unchanged, so that a state initially decays by ``sigmoid(bias)`` per step and a large value opens a
long initial memory (the constant form of the "chrono" initialisation of Tallec & Ollivier, ICLR 2018):
``forget_bias`` for the LSTM's forget gate ``f``, which is separate from its input gate, and ``update_bias`` for the
GRU's update gate ``z`` (``h' = (1 - z) n + z h``) and the SRU's forget gate ``f`` (``c' = f c + (1 - f) x W``),
which also scale what is WRITTEN by ``1 - sigmoid(bias)``: a value that suits the LSTM (5) nearly closes their input,
hence the separate, smaller value. Elman has no gate, hence no such bias.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import recurrent as rec

CELLS = ("elman", "lstm", "lstm_peephole", "gru", "sru")


def block_bias_init(features: int, blocks: int, block: int, value: float) -> Callable:
  """Zeros initialiser of fused biases that sets gate block ``block`` of a ``[blocks * features]`` bias to ``value``
  (biases of other shapes, e.g. the GRU's ``recurrent_bias`` [F], stay zero)."""

  def init(key, shape, dtype=jnp.float32):
    b = jnp.zeros(shape, dtype)
    if tuple(shape) == (blocks * features,):
      b = b.at[block * features:(block + 1) * features].set(value)
    return b

  return init


def cell_layer(cell: str, features: int, forget_bias: float = 1.0, update_bias: float = 0.0, **kw) -> nn.Module:
  """One recurrent layer ``[B, T, D] -> ([B, T, F], carry)`` of ``cell`` (biases: see the module docstring; the
  defaults are the cells' own initialisations)."""
  if cell == "elman":
    return rec.RNN(rec.SimpleRNNCell, features, **kw)
  if cell in ("lstm", "lstm_peephole"):
    return rec.RNN(rec.LSTMCell, features,
                   cell_kwargs={"forget_bias": forget_bias, "peephole": cell == "lstm_peephole"}, **kw)
  if cell == "gru":  # input_bias blocks (b_r, b_z, b_in): z is block 1
    return rec.RNN(rec.GRUCell, features, cell_kwargs={"bias_init": block_bias_init(features, 3, 1, update_bias)}, **kw)
  if cell == "sru":  # input_bias blocks (b_f, b_r): f is block 0
    return rec.SRU(features, cell_kwargs={"bias_init": block_bias_init(features, 2, 0, update_bias)}, **kw)
  raise ValueError(f"--cells: unknown cell {cell!r}; choose from {CELLS}")


class RecallRNN(nn.Module):
  """``tokens int [B, L] -> logits [B, num_outputs, num_classes]`` read from the last step's output of the top layer
  (one linear head per output position)."""
  cell: str
  features: int
  vocab_size: int
  num_outputs: int
  num_classes: int
  num_layers: int = 1
  forget_bias: float = 1.0
  update_bias: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no dropout / batch statistics
    if tokens.ndim != 2:
      raise ValueError(f"RecallRNN: tokens must be int [B, L], got shape {tokens.shape}")
    h = jax.nn.one_hot(tokens, self.vocab_size, dtype=self.dtype)
    for i in range(self.num_layers):
      h, _ = cell_layer(self.cell, self.features, self.forget_bias, self.update_bias, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f"layer{i}")(h)
    logits = nn.Dense(self.num_outputs * self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="head")(h[:, -1])
    return logits.reshape(tokens.shape[0], self.num_outputs, self.num_classes)
