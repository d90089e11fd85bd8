"""Published parameter counts / compute of the zoo's models, and each model's native input resolution.

``PUBLISHED[name] = (params or None, GMACs or None, source)``. Compute figures are multiply-accumulates of the
conv and FC layers (what torchvision's "GFLOPS" column and most papers' "FLOPs"/"mult-adds" report).
"""

from __future__ import annotations

CIFAR_MODELS_PREFIXES = ("wrn", "preact_", "fractalnet", "igc_")


def native_resolution(name: str) -> int:
  if name.startswith(CIFAR_MODELS_PREFIXES):
    return 32
  if name in ("inception_v3", "xception"):
    return 299
  return 224


def default_num_classes(name: str) -> int:
  return 10 if name.startswith(CIFAR_MODELS_PREFIXES) else 1000


_TV = "torchvision model table"
PUBLISHED: dict[str, tuple[int | float | None, float | None, str]] = {
    "alexnet": (61_100_840, 0.71, _TV),
    "zfnet": (None, None, "Zeiler & Fergus 2014 give no total"),
    "sppnet": (None, None, "He et al. 2014 give no total for the {1,2,4} variant"),
    "vgg11": (132_863_336, 7.61, _TV), "vgg13": (133_047_848, 11.31, _TV),
    "vgg16": (138_357_544, 15.47, _TV), "vgg19": (143_667_240, 19.63, _TV),
    "vgg11_bn": (132_868_840, 7.61, _TV), "vgg13_bn": (133_053_736, 11.31, _TV),
    "vgg16_bn": (138_365_992, 15.47, _TV), "vgg19_bn": (143_678_248, 19.63, _TV),
    "googlenet": (6.8e6, 1.5, "Szegedy et al. 2015 Table 1 (~6.8M) and §5 (1.5G mult-adds); torchvision's 3x3 "
                  "variant has 6,624,904"),
    "inception_v3": (23_834_568, 5.71, "torchvision (27,161,264 with the aux head)"),
    "resnet18": (11_689_512, 1.81, _TV), "resnet34": (21_797_672, 3.66, _TV),
    "resnet50": (25_557_032, 4.09, _TV), "resnet101": (44_549_160, 7.80, _TV),
    "resnet152": (60_192_808, 11.51, _TV),
    "resnext50_32x4d": (25_028_904, 4.23, _TV), "resnext101_32x8d": (88_791_336, 16.41, _TV),
    "wide_resnet50_2": (68_883_240, 11.40, _TV),
    "se_resnet50": (28_088_024, 3.87, "Hu et al. 2018 Table 2 (GFLOPs); params SENet reference"),
    "se_resnext50_32x4d": (None, 4.25, "Hu et al. 2018 Table 2"),
    "densenet121": (7_978_856, 2.83, _TV), "densenet169": (14_149_480, 3.36, _TV),
    "densenet201": (20_013_928, 4.29, _TV), "densenet161": (28_681_000, 7.73, _TV),
    "xception": (22_855_952, None, "Chollet 2017 Table 3 / Keras"),
    "mobilenet_v1": (4_231_976, 0.569, "Howard et al. 2017 Table 8 (569M mult-adds); params Keras"),
    "mobilenet_v1_050": (1.3e6, 0.149, "Howard et al. 2017 Table 6/8"),
    "shufflenet_v1_g1": (None, 0.143, "Zhang et al. 2018 Table 2 (ShuffleNet 1x)"),
    "shufflenet_v1_g2": (None, 0.140, "Zhang et al. 2018 Table 2"),
    "shufflenet_v1_g3": (1.9e6, 0.137, "Zhang et al. 2018 Table 2; params megvii ShuffleNet-Series"),
    "shufflenet_v1_g4": (None, 0.133, "Zhang et al. 2018 Table 2"),
    "shufflenet_v1_g8": (2.4e6, 0.137, "Zhang et al. 2018 Table 2; params megvii ShuffleNet-Series"),
    "squeezenet1_0": (1_248_424, 0.82, _TV), "squeezenet1_1": (1_235_496, 0.35, _TV),
    "drn_a_50": (25.6e6, None, "Yu et al. 2017 / fyu/drn"), "drn_c_26": (21.1e6, None, "fyu/drn"),
    "drn_c_42": (31.2e6, None, "fyu/drn"),
    "fractalnet": (22.9e6, None, "Larsson et al. 2017 Table 1 (40 layers) — see docs/models.md note"),
    "wrn28_10": (36.5e6, None, "Zagoruyko & Komodakis 2016 Table 4"),
    "wrn40_4": (8.9e6, None, "Zagoruyko & Komodakis 2016 Table 4"),
    "wrn16_8": (11.0e6, None, "Zagoruyko & Komodakis 2016 Table 4"),
    "preact_resnet164": (1.7e6, None, "He et al. 2016 (identity mappings) Table 3"),
    "preact_resnet1001": (10.2e6, None, "He et al. 2016 (identity mappings) Table 3"),
}
