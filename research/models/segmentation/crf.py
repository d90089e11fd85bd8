"""A segmentation network with CRF-as-RNN on top (Zheng et al., ICCV 2015, §5: FCN + CRF-RNN trained end to end).

``SegmenterWithCRF(segmenter, ...)`` runs any registered segmentation network (``research.models.names(
"segmentation")``), feeds its logits (the unaries) and the input image (back in 0..255 colours) to
``research.layers.crf.CRFasRNN`` and returns ``{"logits": CRF output, "unary_logits": the network's logits, ...}``
(plus the network's other outputs, e.g. ``aux_logits``), so the loss trains network and CRF together and the
evaluation can report the unary under the CRF.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.layers.crf import CRFasRNN


class SegmenterWithCRF(nn.Module):
  """``__call__(x [B,H,W,3] normalised as (x/255 - mean)/std, *, train) -> {"logits", "unary_logits", ...}``, all
  ``[B,H,W,C]``. CRF kernel widths are fixed, the per-class kernel weights and the compatibility are learned."""
  segmenter: nn.Module
  num_classes: int
  num_iters: int = 5
  num_iters_eval: int = 10
  theta_alpha: float = 80.0
  theta_beta: float = 13.0
  theta_gamma: float = 3.0
  w_appearance: float = 10.0
  w_smoothness: float = 3.0
  method: str = "permutohedral"
  mean: float = 0.5
  std: float = 0.25
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    out = dict(self.segmenter(x, train=train))
    unary = out["logits"]
    image = jnp.clip((x.astype(jnp.float32) * self.std + self.mean) * 255.0, 0.0, 255.0)
    crf = CRFasRNN(num_classes=self.num_classes, num_iters=self.num_iters, num_iters_eval=self.num_iters_eval,
                   theta_alpha=self.theta_alpha, theta_beta=self.theta_beta, theta_gamma=self.theta_gamma,
                   appearance_weight_init=self.w_appearance, smoothness_weight_init=self.w_smoothness,
                   method=self.method, dtype=self.dtype, name="crf_rnn")
    out["unary_logits"] = unary
    out["logits"] = crf(unary, image, train=train).astype(jnp.float32)
    return out
