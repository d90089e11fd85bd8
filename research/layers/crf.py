"""CRF-as-RNN (Zheng et al., ICCV 2015, §4-5): dense-CRF mean-field iterations (Krähenbühl & Koltun 2011) unrolled as
a recurrent layer over a segmentation network's unaries, with learned per-class kernel weights and compatibility.

Kernel widths ``theta_alpha, theta_beta, theta_gamma`` are fixed (not learned, as in the paper); the appearance and
smoothness weights (one per class and kernel, initialised to densecrf's 10 and 3) and the compatibility matrix
``mu [C, C]`` (initialised to Potts ``[l != l']``) are parameters. Training unrolls ``num_iters`` iterations (5 in the
paper), evaluation ``num_iters_eval`` (10). See ``research/ops/crf.py`` for the model, the kernel normalisation and
the two filters (exact O(N^2), fine up to 64x64; permutohedral for real sizes). ``normalization`` defaults to
densecrf's "symmetric" (the weights' defaults are densecrf's); CRF-as-RNN's own code divides by the kernel sums
("after").
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.ops import crf as crf_ops


class CRFasRNN(nn.Module):
  """Mean-field CRF layer: ``__call__(unary_logits [B, H, W, C], image [B, H, W, 3], *, train) -> logits [B, H, W, C]``.

  ``unary_logits`` are logits ``U = -psi_u`` (e.g. an FCN's pre-softmax scores); ``image`` holds colours in 0..255.
  The output is the pre-softmax of the last iteration, ``U - mu(w_a * Qt_app + w_s * Qt_smooth)``: its softmax is the
  final mean-field marginal Q, so it goes straight into softmax cross-entropy (as CRF-RNN's SoftmaxWithLoss).
  Gradients reach the unaries and the CRF parameters (the image gets a gradient with ``method="exact"`` only).

  ``max_lattice_points`` (permutohedral only): lattice slots per image, default H*W*6 (always enough); fewer is
  faster, and the output is NaN for an image that needs more (``ops.crf.permutohedral_lattice``).

  Parameters: ``appearance_weight [C]``, ``smoothness_weight [C]`` (the weighting w^(m)(l) applied to each kernel's
  filtered channel l before the compatibility transform) and ``compatibility [C, C]``.
  The CRF runs in ``promote(dtype, float32)`` (mean-field in bfloat16 loses the small messages); the output is cast
  to ``dtype``.
  """
  num_classes: int
  num_iters: int = 5
  num_iters_eval: int = 10
  theta_alpha: float = 80.0
  theta_beta: float = 13.0
  theta_gamma: float = 3.0
  appearance_weight_init: float = 10.0
  smoothness_weight_init: float = 3.0
  method: str = "exact"
  normalization: str = "symmetric"
  exclude_self: bool = True
  remat: bool = True
  max_lattice_points: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, unary_logits, image, *, train: bool):
    c = self.num_classes
    if unary_logits.ndim != 4 or unary_logits.shape[-1] != c:
      raise ValueError(f"CRFasRNN: unary_logits must be [B, H, W, num_classes={c}], got {unary_logits.shape}")
    if image.ndim != 4 or image.shape[:3] != unary_logits.shape[:3]:
      raise ValueError(f"CRFasRNN: image must be [B, H, W, 3] with the unaries' B, H, W = {unary_logits.shape[:3]}, "
                       f"got {image.shape}")
    if self.method not in crf_ops.METHODS:
      raise ValueError(f"CRFasRNN: method must be one of {crf_ops.METHODS}, got {self.method!r}")
    w_app = self.param("appearance_weight", nn.initializers.constant(self.appearance_weight_init), (c,),
                       self.param_dtype)
    w_smooth = self.param("smoothness_weight", nn.initializers.constant(self.smoothness_weight_init), (c,),
                          self.param_dtype)
    compat = self.param("compatibility", lambda key, shape, dtype: crf_ops.potts_compat(shape[0], dtype), (c, c),
                        self.param_dtype)
    compute = jnp.promote_types(self.dtype, jnp.float32)
    params = crf_ops.DenseCRFParams(w1=w_app.astype(compute), theta_alpha=self.theta_alpha, theta_beta=self.theta_beta,
                                    w2=w_smooth.astype(compute), theta_gamma=self.theta_gamma)
    logits = crf_ops.mean_field_logits(unary_logits.astype(compute), image.astype(compute), params=params,
                                       compat=compat.astype(compute),
                                       num_iters=self.num_iters if train else self.num_iters_eval,
                                       method=self.method, normalization=self.normalization,
                                       exclude_self=self.exclude_self, remat=self.remat,
                                       max_lattice_points=self.max_lattice_points)
    return logits.astype(self.dtype)
