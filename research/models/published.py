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


# torchvision 0.28 weights metadata (``meta["num_params"]``, ``meta["_ops"]`` = GFLOPS), read from the installed
# package offline; the same figures as its documentation's model table.
_TV = "torchvision 0.28 weights meta"
PUBLISHED: dict[str, tuple[int | float | None, float | None, str]] = {
    "alexnet": (61_100_840, 0.714, _TV),
    "zfnet": (None, None, "Zeiler & Fergus 2014 give no total"),
    "sppnet": (None, None, "He et al. 2014 give no total for the {1,2,4} variant"),
    "vgg11": (132_863_336, 7.609, _TV), "vgg13": (133_047_848, 11.308, _TV),
    "vgg16": (138_357_544, 15.47, _TV), "vgg19": (143_667_240, 19.632, _TV),
    "vgg11_bn": (132_868_840, 7.609, _TV), "vgg13_bn": (133_053_736, 11.308, _TV),
    "vgg16_bn": (138_365_992, 15.47, _TV), "vgg19_bn": (143_678_248, 19.632, _TV),
    "googlenet": (6.8e6, 1.5, "Szegedy et al. 2015 Table 1 (~6.8M) and §5 (1.5G mult-adds); torchvision's 3x3 "
                  "variant: 6,624,904 params, 1.498 GMACs"),
    "inception_v3": (23_834_568, 5.713, "torchvision 0.28 weights meta counts the aux head: 27,161,264"),
    "resnet18": (11_689_512, 1.814, _TV), "resnet34": (21_797_672, 3.664, _TV),
    "resnet50": (25_557_032, 4.089, _TV), "resnet101": (44_549_160, 7.801, _TV),
    "resnet152": (60_192_808, 11.514, _TV),
    "resnext50_32x4d": (25_028_904, 4.23, _TV), "resnext101_32x8d": (88_791_336, 16.414, _TV),
    "wide_resnet50_2": (68_883_240, 11.398, _TV),
    "se_resnet50": (28_088_024, 3.87, "Hu et al. 2018 Table 2 (GFLOPs); params SENet reference"),
    "se_resnext50_32x4d": (None, 4.25, "Hu et al. 2018 Table 2"),
    "densenet121": (7_978_856, 2.834, _TV), "densenet169": (14_149_480, 3.36, _TV),
    "densenet201": (20_013_928, 4.291, _TV), "densenet161": (28_681_000, 7.728, _TV),
    "xception": (22_855_952, None, "Chollet 2017 Table 3 / Keras"),
    "mobilenet_v1": (4_231_976, 0.569, "Howard et al. 2017 Table 8 (569M mult-adds); params Keras"),
    "mobilenet_v1_050": (1.3e6, 0.149, "Howard et al. 2017 Table 6/8"),
    "shufflenet_v1_g1": (None, 0.143, "Zhang et al. 2018 Table 2 (ShuffleNet 1x)"),
    "shufflenet_v1_g2": (None, 0.140, "Zhang et al. 2018 Table 2"),
    "shufflenet_v1_g3": (1.9e6, 0.137, "Zhang et al. 2018 Table 2; params megvii ShuffleNet-Series README "
                         "(1.0x, g=3)"),
    "shufflenet_v1_g4": (None, 0.133, "Zhang et al. 2018 Table 2"),
    "shufflenet_v1_g8": (2.4e6, 0.137, "Zhang et al. 2018 Table 2; params megvii ShuffleNet-Series README "
                         "(1.0x, g=8)"),
    "squeezenet1_0": (1_248_424, 0.819, _TV), "squeezenet1_1": (1_235_496, 0.349, _TV),
    "drn_a_50": (25.6e6, None, "fyu/drn README models table"), "drn_c_26": (21.1e6, None, "fyu/drn README"),
    "drn_c_42": (31.2e6, None, "fyu/drn README"),
    "fractalnet": (22.9e6, None, "Larsson et al. 2017 Table 1, 40 layers: a narrower variant, see note"),
    "fractalnet20": (38.6e6, None, "Larsson et al. 2017 Table 1, 20 layers; 33.7M in pt.fractalnet, see note"),
    "igc_l16m32": (17.7e6, None, "Zhang et al. 2017 CIFAR comparison table (depth 20)"),
    "igc_l32m26": (24.1e6, None, "Zhang et al. 2017 CIFAR comparison table (depth 20)"),
    "wrn28_10": (36.5e6, None, "Zagoruyko & Komodakis 2016 Table 4"),
    "wrn40_4": (8.9e6, None, "Zagoruyko & Komodakis 2016 Table 4"),
    "wrn16_8": (11.0e6, None, "Zagoruyko & Komodakis 2016 Table 4"),
    "preact_resnet164": (1.7e6, None, "He et al. 2016 (identity mappings) Table 3"),
    "preact_resnet1001": (10.2e6, None, "He et al. 2016 (identity mappings) Table 3"),
}

NOTES: list[str] = [  # docs/models.md "Notes": where our figures and the published ones differ, and why
    "`googlenet` uses the paper's 5x5 branch (7,005,832 params); `branch3_kernel=3` gives torchvision's 6,624,904. "
    "Aux heads (`aux_logits=True`): 13,004,888 with the 3x3 branch (torchvision).",
    "`inception_v3`: 23,834,568 without / 27,161,264 with the auxiliary head (torchvision counts the latter).",
    "WRN block types (`wide_resnet(d, k, block_type=...)`) use n = (d-4)/6 blocks per stage, as the reference code; "
    "this reproduces the block-type table of Zagoruyko & Komodakis (see tests/models/test_param_counts.py).",
    "`fractalnet` (C=4, 40 layers) and `fractalnet20` (C=3, 20 layers) follow §4's stated configuration (B=5 blocks, "
    "64-128-256-512-512 channels, Conv-BN-ReLU, mean joins) with the block layout of the authors' generator "
    "(gustavla/fractalnet); a closed-form count of that layout is tested. Table 1 lists 38.6M for the 20-layer net; "
    "ours has 33,724,618, as the independent PyTorch reimplementation khanrc/pt.fractalnet (33.7M, which reaches "
    "38.9M only by adding channel-doubling 1x1 convs); the paper does not account for the difference. Table 1's "
    "40-layer entry (22.9M) has fewer parameters than the 20-layer one, so it cannot use §4's widths (with them the "
    "40-layer net has 76.1M) and the paper does not specify it fully; it is not reproduced.",
    "`shufflenet_v1_g*` has a bias in the final FC (megvii's reference has none: 1,000 params fewer; without it "
    "g=3 / g=8 have 1,864,728 / 2,433,768, the reference's 1.9M / 2.4M).",
    "`se_resnet50`/`se_resnext50_32x4d` GMACs: SENet Table 2 counts the original ResNet-50 at 3.86 GFLOPs (stride "
    "on the 1x1 conv); ours has the stride on the 3x3 (torchvision v1.5, 4.09).",
    "`mobilenet_v1` uses ReLU as in the paper (Keras uses ReLU6); parameter counts are unaffected.",
    "`zfnet` and `sppnet` have no published totals; `sppnet` accepts any input size (3-level {1,2,4} SPP).",
    "`igc_l{L}m{M}` follow the authors' CIFAR `resnet_igc` (hellozting/InterleavedGroupConvolutions): L fixed, M "
    "doubling per stage, no BN between the two group convs, grouped 1x1 projection shortcuts. The authors' code gives "
    "the first IGC of a down-sampling block M/2 secondary partitions; we use M, the paper's definition, which is what "
    "reproduces its 17.7M (L16M32) and 24.1M (L32M26).",
    "`drn_c_26`/`drn_c_42` match the fyu/drn README's 21.1M / 31.2M; `drn_a_50` has exactly ResNet-50's count.",
]
