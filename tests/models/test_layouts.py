"""Layer layouts against the papers, read from the modules themselves (abstract evaluation, nothing compiled):
DRN-A-50's dilations and output stride, ZFNet's layer sizes and its hand-counted parameters."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import models


def _conv_calls(model, x):
  """[(module path, kernel size, strides, kernel_dilation, padding, input HxW, output HxW)] of every nn.Conv call
  in one abstract eval-mode forward pass."""
  calls = []

  def icpt(f, args, kwargs, ctx):
    out = f(*args, **kwargs)
    if isinstance(ctx.module, nn.Conv) and ctx.method_name == "__call__":
      m = ctx.module
      pair = lambda a: (a, a) if isinstance(a, int) else tuple(a)  # noqa: E731  (nn.Conv accepts both)
      calls.append(("/".join(m.path), tuple(m.kernel_size), pair(m.strides), pair(m.kernel_dilation or 1),
                    tuple(map(tuple, m.padding)), args[0].shape[1:3], out.shape[1:3]))
    return out

  def fwd(x):
    v = model.init(jax.random.key(0), x, train=False)
    with nn.intercept_methods(icpt):
      return model.apply(v, x, train=False)

  return calls, jax.eval_shape(fwd, x)


def test_drn_a_50_dilates_stages_4_and_5_at_output_stride_8():
  """Yu, Koltun & Funkhouser 2017, §2 / DRN-A: ResNet-50 whose 4th and 5th stages (conv4_x, conv5_x = our stage3,
  stage4) keep the resolution of conv3_x (no stride) and dilate their 3x3 convolutions by 2 and 4 (with matching
  padding). At 224 the maps are 56 (stage1), 28 (stage2, stride 8), then 28 and 28 instead of ResNet's 14 and 7."""
  m = models.create("drn_a_50", features_only=True)
  calls, feats = _conv_calls(m, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert [feats[f"stage{i}"].shape[1:3] for i in (1, 2, 3, 4)] == [(56, 56), (28, 28), (28, 28), (28, 28)]
  assert feats["stage4"].shape[-1] == 2048
  by_stage = {}
  for path, k, s, d, pad, hw_in, hw_out in calls:
    stage = path.split("_")[0]
    by_stage.setdefault(stage, []).append((k, s, d, pad, hw_out))
  assert len(calls) == 53  # stem + 16 blocks x 3 + 4 projections
  want = {"stage1": 1, "stage2": 1, "stage3": 2, "stage4": 4}
  for stage, dil in want.items():
    convs3 = [c for c in by_stage[stage] if c[0] == (3, 3)]
    assert len(convs3) == {"stage1": 3, "stage2": 4, "stage3": 6, "stage4": 3}[stage]
    assert all(d == (dil, dil) and pad == ((dil, dil), (dil, dil)) for _, _, d, pad, _ in convs3), (stage, convs3)
    assert all(c[2] == (1, 1) for c in by_stage[stage] if c[0] == (1, 1))  # no dilation on 1x1 convs
  strided = sorted({(p.split("_")[0], s) for p, k, s, *_ in calls if s != (1, 1)})
  assert strided == [("stage2", (2, 2)), ("stem", (2, 2))]  # stages 3 and 4 do not stride
  # Plain ResNet-50 for contrast: the same paths stride instead (14 and 7) and never dilate.
  calls50, feats50 = _conv_calls(models.create("resnet50", features_only=True),
                                 jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert [feats50[f"stage{i}"].shape[1] for i in (3, 4)] == [14, 7]
  assert {c[3] for c in calls50} == {(1, 1)}


def test_zfnet_layer_sizes_and_hand_counted_params():
  """Zeiler & Fergus 2014, Fig. 3 (224x224x3 input): conv1 96 7x7/2 -> 110, pool 3/2 -> 55, conv2 256 5x5/2 -> 26,
  pool -> 13, conv3 384, conv4 384, conv5 256 3x3/1 at 13, pool -> 6x6x256 = 9216 into fc6 4096, fc7 4096, fc8 1000."""
  m = models.create("zfnet", features_only=True)
  calls, feats = _conv_calls(m, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  got = [(p.split("/")[-1], k, s, o) for p, k, s, _, _, _, o in calls]
  assert got == [("conv1", (7, 7), (2, 2), (110, 110)), ("conv2", (5, 5), (2, 2), (26, 26)),
                 ("conv3", (3, 3), (1, 1), (13, 13)), ("conv4", (3, 3), (1, 1), (13, 13)),
                 ("conv5", (3, 3), (1, 1), (13, 13))]
  assert feats["stem"].shape == (1, 110, 110, 96) and feats["stage1"].shape == (1, 55, 55, 96)
  assert feats["stage2"].shape == (1, 13, 13, 256) and feats["stage3"].shape == (1, 6, 6, 256)
  assert feats["pooled"].shape == (1, 9216)
  # Parameters by hand: conv k*k*cin*cout + cout, dense in*out + out.
  hand = {"conv1": 7 * 7 * 3 * 96 + 96, "conv2": 5 * 5 * 96 * 256 + 256, "conv3": 3 * 3 * 256 * 384 + 384,
          "conv4": 3 * 3 * 384 * 384 + 384, "conv5": 3 * 3 * 384 * 256 + 256, "fc6": 9216 * 4096 + 4096,
          "fc7": 4096 * 4096 + 4096, "fc8": 4096 * 1000 + 1000}
  assert sum(hand.values()) == 62_357_608
  v = jax.eval_shape(lambda: models.create("zfnet").init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                                          train=False))
  per_layer = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(v["params"])[0]:
    layer = [k.key for k in path if str(k.key).startswith(("conv", "fc"))][0]
    per_layer[layer] = per_layer.get(layer, 0) + math.prod(leaf.shape)
  assert per_layer == hand
