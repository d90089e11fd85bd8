"""Parameter counts (``params`` collection, via ``jax.eval_shape``) against torchvision / Keras / the papers."""

import math

import jax
import pytest

from research import models
from research.models.cifar_resnet import wide_resnet
from research.models.profile import count_params
from research.models.published import PUBLISHED

from test_contract import abstract_variables  # noqa: E402  (shared eval_shape cache)


def _n(v):
  return sum(math.prod(p.shape) for p in jax.tree.leaves(v["params"]))


EXACT = {  # torchvision unless noted
    "alexnet": 61_100_840, "vgg11": 132_863_336, "vgg16": 138_357_544, "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248, "inception_v3": 23_834_568, "resnet18": 11_689_512, "resnet50": 25_557_032,
    "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336, "wide_resnet50_2": 68_883_240,
    "densenet121": 7_978_856, "densenet169": 14_149_480, "densenet201": 20_013_928, "densenet161": 28_681_000,
    "squeezenet1_0": 1_248_424, "squeezenet1_1": 1_235_496,
    "xception": 22_855_952,  # Keras trainable params
    "mobilenet_v1": 4_231_976,  # Keras trainable params, alpha = 1
    "se_resnet50": 28_088_024,  # ResNet-50 + SE(r=16) with FC biases (SENet reference)
    "drn_a_50": 25_557_032,  # = ResNet-50 (dilation adds no parameters)
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_counts(name):
  assert _n(abstract_variables(name)) == EXACT[name]


# Published figures given to 1-3 significant digits: relative tolerance = the rounding of the source.
ROUNDED = {
    "mobilenet_v1_050": (1.3e6, 0.04),  # Howard et al. Table 6: 1.3M
    "shufflenet_v1_g3": (1.9e6, 0.03),  # megvii ShuffleNet-Series: 1.9M
    "shufflenet_v1_g8": (2.4e6, 0.03),  # megvii: 2.4M
    "drn_c_26": (21.1e6, 0.003), "drn_c_42": (31.2e6, 0.003),  # fyu/drn README
    "wrn28_10": (36.5e6, 0.002), "wrn40_4": (8.9e6, 0.006), "wrn16_8": (11.0e6, 0.005),  # WRN Table 4
    "preact_resnet164": (1.7e6, 0.01), "preact_resnet1001": (10.2e6, 0.015),  # He et al. 2016b Table 3
    "googlenet": (6.8e6, 0.04),  # Szegedy et al. 2015 Table 1 params column (sum ~6.8M)
}


@pytest.mark.parametrize("name", sorted(ROUNDED))
def test_rounded_counts(name):
  want, rtol = ROUNDED[name]
  assert _n(abstract_variables(name)) == pytest.approx(want, rel=rtol)
  assert PUBLISHED[name][0] == pytest.approx(want)


def test_googlenet_torchvision_variants():
  assert count_params(models.create("googlenet", branch3_kernel=3), 224) == 6_624_904
  m = models.create("googlenet", branch3_kernel=3, aux_logits=True)
  v = jax.eval_shape(lambda: m.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                    jax.numpy.zeros((1, 224, 224, 3)), train=True))
  assert _n(v) == 13_004_888


def test_inception_v3_with_aux_head():
  m = models.create("inception_v3", aux_logits=True)
  v = jax.eval_shape(lambda: m.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                    jax.numpy.zeros((1, 299, 299, 3)), train=True))
  assert _n(v) == 27_161_264  # torchvision's inception_v3 (aux_logits=True) count


# Zagoruyko & Komodakis 2016, Table 1 (WRN-d-2, CIFAR-10): block type, depth, params rounded to 0.1M.
WRN_TABLE = [((1, 3, 1), 40, 1.4e6), ((3, 1), 40, 1.2e6), ((1, 3), 40, 1.3e6), ((3, 1, 1), 40, 1.3e6),
             ((3, 3), 28, 1.5e6), ((3, 1, 3), 22, 1.1e6)]


@pytest.mark.parametrize("block_type,depth,published", WRN_TABLE)
def test_wrn_block_type_table(block_type, depth, published):
  n = count_params(wide_resnet(depth, 2, block_type=block_type, num_classes=10), 32)
  assert round(n / 1e5) / 10 == pytest.approx(published / 1e6), n  # paper rounds to 0.1M


def test_shufflenet_flops_match_paper_table2():
  from research.models.profile import profile
  for g, mflops in [(1, 143), (2, 140), (3, 137), (4, 133), (8, 137)]:
    _, _, macs = profile(models.create(f"shufflenet_v1_g{g}"), 224)
    assert macs / 1e6 == pytest.approx(mflops, rel=0.02), g


def test_mobilenet_mult_adds_match_paper():
  from research.models.profile import profile
  assert profile(models.create("mobilenet_v1"), 224)[2] == pytest.approx(569e6, rel=0.002)  # Table 8
  assert profile(models.create("mobilenet_v1_050"), 224)[2] == pytest.approx(149e6, rel=0.005)  # Table 6
