"""Build torchvision one-stage detectors (RetinaNet, FCOS) for any class count.

We do not rewrite detectors: backbone, FPN, heads, anchor generator, matcher
and losses are torchvision's own. What this module decides:

- ``num_classes`` counts object categories K (labels 1..K). torchvision's
  heads index their one-hot targets by the label itself, so the head gets
  K + 1 outputs per anchor and slot 0 is an always-negative background slot.
  That convention stays inside this module and :mod:`rmkd.models.dense`
  (which drops slot 0 from the maps it exposes).
- Normalisation. torchvision's default FrozenBatchNorm2d is an identity without
  pretrained weights, so a detector trained from scratch gets trainable
  BatchNorm in the backbone (``norm="bn"``) and GroupNorm in the head.
  With ImageNet weights, ``norm="frozen_bn"`` is the usual choice.
- The FPN width, the number of head convolutions and the anchors are free, so
  a small student (ResNet-18, FPN 32, 2 head convs) and a COCO-size detector
  come from the same function.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import mobilenetv3, resnet
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from .body_cache import CachedBody

FAMILIES = ("retinanet", "fcos")


def resnet10(*, weights=None, **kwargs) -> resnet.ResNet:
    """torchvision's ResNet with one BasicBlock per stage: ResNet-18's stem, widths and strides,
    half its blocks (a shallower student body). No published weights exist for it."""
    if weights is not None:
        raise ValueError("resnet10 has no published weights: use weights_backbone null or a state_dict file")
    return resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], **kwargs)


BACKBONES = {
    "resnet18": (resnet.resnet18, resnet.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (resnet.resnet34, resnet.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (resnet.resnet50, resnet.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (resnet.resnet101, resnet.ResNet101_Weights.IMAGENET1K_V1),
    # Shallower or narrower bodies for students whose gap to the teacher should come from capacity.
    "resnet10": (resnet10, None),
    "mobilenet_v3_small": (mobilenetv3.mobilenet_v3_small, mobilenetv3.MobileNet_V3_Small_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large": (mobilenetv3.mobilenet_v3_large, mobilenetv3.MobileNet_V3_Large_Weights.IMAGENET1K_V1),
}
NORMS = ("bn", "frozen_bn")
# The finest FPN level: 3 gives P3..P7 (RetinaNet, FCOS); 2 gives P2..P6, stride 4 to 64,
# which reads small images natively (a 64 px image gets the 16x16 grid that P3 has at 128 px).
MIN_LEVELS = (2, 3)
HEAD_NORMS = ("gn", "none")
# COCO defaults: one anchor size per level P3..P7 (torchvision's RetinaNet).
COCO_ANCHOR_SIZES = (32, 64, 128, 256, 512)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that also takes groups holding a single value.

    A group of one channel on a 1x1 map (a 32-wide head's P7 at 128 px) normalises
    to exactly 0, so GroupNorm's output there is its bias; torch computes that for
    a batch of 2 but refuses a batch of 1 ("Expected more than 1 value per
    channel"), which broke single-image inference. Only that case takes the
    short path, so everything torch computes (training included) stays
    bit-identical. Same parameters and state dict as ``nn.GroupNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] * (x.shape[1] // self.num_groups) * x[0, 0].numel() == 1:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            out = x * 0  # keeps dtype, device and the graph
            return out + self.bias.view(shape) if self.affine else out
        return super().forward(x)


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or fewer for narrow layers (each group >= 1 channel)."""
    return GroupNorm(math.gcd(32, channels), channels)


def _load_backbone_weights(name: str, weights) -> dict | None:
    """``None`` (random init), ``"imagenet"`` (torchvision download) or a local file."""
    if weights is None:
        return None
    if weights == "imagenet":
        if BACKBONES[name][1] is None:
            raise ValueError(f"{name} has no ImageNet weights to download: use weights_backbone null or a state_dict file")
        return BACKBONES[name][1].get_state_dict(progress=True)
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"backbone weights file {path!r} not found: give a torchvision ResNet or MobileNetV3 state_dict file, "
            "'imagenet' to download, or null for random init"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state) if isinstance(state, dict) else state


def build_backbone(
    backbone: str = "resnet50",
    fpn_channels: int = 256,
    weights=None,
    norm: str = "bn",
    min_level: int = 3,
    trainable_layers: int = 5,
    body_cache: int = 0,
) -> BackboneWithFPN:
    """ResNet or MobileNetV3 + FPN returning five levels.

    ``min_level=3``: P3..P7 from C3..C5, with P6 and P7 computed from C5 (RetinaNet/FCOS).
    ``min_level=2``: P2..P6 from C2..C5, with P6 a stride-2 subsample of P5
    (torchvision's ``LastLevelMaxPool``, as its Faster R-CNN FPN).
    ``trainable_layers`` (ResNet only): stages left trainable counted from ``layer4``, torchvision's
    rule (5 = all; 3, its default for a pretrained detector, freezes the stem and ``layer1``; 0 freezes
    the body). A frozen stage has ``requires_grad=False``; its BatchNorm still follows ``norm``.
    ``body_cache`` > 0 (a frozen body only: ``trainable_layers=0``, ``norm="frozen_bn"``): the body's
    outputs for up to that many images are kept in memory (:mod:`rmkd.models.body_cache`).
    Output: an ``OrderedDict`` of 5 maps ``[B, fpn_channels, H/2^l, W/2^l]``, l = min_level..min_level+4.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}: choose one of {sorted(BACKBONES)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}: choose one of {NORMS}")
    if min_level not in MIN_LEVELS:
        raise ValueError(f"unknown min_level {min_level!r}: choose one of {MIN_LEVELS}")
    norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
    body = BACKBONES[backbone][0](weights=None, norm_layer=norm_layer)
    state = _load_backbone_weights(backbone, weights)
    if state is not None:
        missing, unexpected = body.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith(("fc.", "classifier."))] or unexpected:
            raise ValueError(
                f"backbone weights do not fit {backbone}: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
    _freeze_stages(backbone, body, trainable_layers)
    names, channels = _stages(backbone, body)
    names, channels = names[min_level - 2 :], channels[min_level - 2 :]  # C2..C5 or C3..C5
    if backbone.startswith("mobilenet"):
        body = body.features  # drops the classifier; its blocks are named "0", "1", ...
    extra = LastLevelMaxPool() if min_level == 2 else LastLevelP6P7(fpn_channels, fpn_channels)
    out = BackboneWithFPN(
        body,
        return_layers={name: str(i) for i, name in enumerate(names)},
        in_channels_list=list(channels),
        out_channels=fpn_channels,
        extra_blocks=extra,
    )
    if body_cache:
        out.body = CachedBody(out.body, body_cache)
    return out


def _freeze_stages(backbone: str, body: nn.Module, trainable_layers: int) -> None:
    """``requires_grad=False`` outside the last ``trainable_layers`` ResNet stages (torchvision's rule)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    if trainable_layers == 5:
        return
    if not backbone.startswith("resnet"):
        raise ValueError(f"trainable_layers < 5 is implemented for ResNet backbones only, not {backbone}")
    trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    for name, p in body.named_parameters():
        if not name.startswith(tuple(trained)):
            p.requires_grad_(False)


def _stages(backbone: str, body: nn.Module) -> tuple[list[str], list[int]]:
    """Names and channels of the body's C2..C5 outputs (strides 4, 8, 16, 32).

    ResNet: ``layer1..layer4``. MobileNetV3: the last block of ``features`` at each stride,
    found by running a 64 px probe through it (the blocks do not record their stride).
    """
    if backbone.startswith("resnet"):
        c3 = body.inplanes // 4  # channels of layer2 output (C3): 128 for resnet18/34, 512 for resnet50/101
        return ["layer1", "layer2", "layer3", "layer4"], [c3 // 2, c3, c3 * 2, c3 * 4]
    last: dict[int, tuple[str, int]] = {}
    x = torch.zeros(1, 3, 64, 64)
    was_training = body.training
    body.eval()  # the probe must not move BatchNorm's running statistics
    with torch.no_grad():
        for name, block in body.features.named_children():
            x = block(x)
            last[64 // x.shape[-1]] = (name, x.shape[1])
    body.train(was_training)
    return [last[s][0] for s in (4, 8, 16, 32)], [last[s][1] for s in (4, 8, 16, 32)]


def build_anchor_generator(
    anchor_sizes: Sequence[float] = COCO_ANCHOR_SIZES,
    scales_per_octave: int = 3,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    floor: bool = False,
) -> AnchorGenerator:
    """Anchors per level: ``size * 2^(i/scales_per_octave)`` x aspect ratios (height / width).

    ``floor`` rounds each size down to an integer, as torchvision's COCO RetinaNet
    does (40, 50 rather than 40.3, 50.8): needed to load its trained weights.
    """
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs one size per FPN level (5 values), got {list(anchor_sizes)}")
    rounding = (lambda v: float(int(v))) if floor else float
    sizes = tuple(tuple(rounding(float(s) * 2 ** (i / scales_per_octave)) for i in range(scales_per_octave)) for s in anchor_sizes)
    return AnchorGenerator(sizes, (tuple(float(r) for r in aspect_ratios),) * len(sizes))


def build_detector(
    family: str,
    backbone: str,
    num_classes: int,
    fpn_channels: int = 256,
    head_convs: int = 4,
    image_size: int | Sequence[int] = (800, 1333),
    *,
    anchor_sizes: Sequence[float] | None = None,
    scales_per_octave: int = 3,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    weights_backbone=None,
    norm: str = "bn",
    head_norm: str = "gn",
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    train_sizes: Sequence[int] = (),
    anchor_floor: bool = False,
    min_level: int = 3,
    trainable_layers: int = 5,
    body_cache: int = 0,
) -> nn.Module:
    """A torchvision RetinaNet or FCOS for ``num_classes`` categories (labels 1..K).

    Args:
        family: ``"retinanet"`` or ``"fcos"``.
        backbone: ``resnet10``, ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``mobilenet_v3_small``
            or ``mobilenet_v3_large``.
        num_classes: K, object categories without background.
        fpn_channels: width C of every FPN level.
        head_convs: 3x3 convs (GroupNorm + ReLU) in each head branch, 1..4.
        image_size: ``S`` (images resized so the short side is S, long side <= S) or
            ``(short, max_long)``, as torchvision's ``min_size``/``max_size``.
        anchor_floor: anchor sizes rounded down to integers (torchvision's COCO RetinaNet).
        min_level: finest FPN level, 3 (P3..P7) or 2 (P2..P6; see :func:`build_backbone`).
        trainable_layers: ResNet stages trained, from ``layer4`` (5 = all; see :func:`build_backbone`).
        body_cache: images whose frozen body's outputs are kept in memory (0 = off; see :func:`build_backbone`).
        train_sizes: multi-scale training: short sides drawn at random per image in
            training (the evaluation short side is always among them); empty: off.
        anchor_sizes: base anchor size in pixels per level (five levels from ``min_level``; RetinaNet; FCOS uses
            the stride as its point size and ignores this).
        weights_backbone: ``None``, ``"imagenet"`` (download) or a path to a state_dict.
        norm: backbone normalisation, ``"bn"`` (trainable) or ``"frozen_bn"``.
        head_norm: RetinaNet head normalisation, ``"gn"`` (GroupNorm, as RetinaNet v2 and
            FCOS) or ``"none"`` (plain conv + ReLU, as RetinaNet v1). On tiny maps GroupNorm
            normalises over very few values (a 1x1 level: one per channel group), which
            erases what the head sees there; ``"none"`` avoids that.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown detector family {family!r}: choose one of {FAMILIES}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer (categories without background), got {num_classes!r}")
    if not 1 <= head_convs <= 4:
        raise ValueError(f"head_convs must be in 1..4, got {head_convs}")
    if isinstance(image_size, int):
        min_size, max_size = image_size, image_size
    else:
        min_size, max_size = (int(v) for v in image_size)
    if train_sizes:
        # torchvision draws a short side per image from min_size in training and uses min_size[-1] to evaluate.
        min_size = tuple(sorted({int(v) for v in train_sizes} - {min_size})) + (min_size,)
    body = build_backbone(backbone, fpn_channels, weights_backbone, norm, min_level, trainable_layers, body_cache)
    common = dict(
        min_size=min_size,
        max_size=max_size,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )
    if family == "retinanet":
        anchors = build_anchor_generator(anchor_sizes or COCO_ANCHOR_SIZES, scales_per_octave, aspect_ratios, anchor_floor)
        num_anchors = anchors.num_anchors_per_location()[0]
        if head_norm not in HEAD_NORMS:
            raise ValueError(f"unknown head_norm {head_norm!r}: choose one of {HEAD_NORMS}")
        norm_layer = _group_norm if head_norm == "gn" else None
        head = RetinaNetHead(fpn_channels, num_anchors, num_classes + 1, norm_layer=norm_layer)
        # torchvision's heads always have 4 convs (Conv2dNormActivation blocks, with or
        # without a norm); a smaller student keeps the first few.
        head.classification_head.conv = head.classification_head.conv[:head_convs]
        head.regression_head.conv = head.regression_head.conv[:head_convs]
        model = RetinaNet(body, num_classes + 1, anchor_generator=anchors, head=head, **common)
    else:
        if fpn_channels % 32:
            raise ValueError(f"fcos heads use GroupNorm(32, C): fpn_channels must be a multiple of 32, got {fpn_channels}")
        # FCOS: one "anchor" per location whose size is the level's stride (8..128 for P3..P7), as
        # in torchvision's fcos_resnet50_fpn; its matcher derives scale ranges from that size.
        levels = range(min_level, min_level + 5)
        anchors = AnchorGenerator(tuple((2**level,) for level in levels), ((1.0,),) * 5)
        head = FCOSHead(fpn_channels, 1, num_classes + 1, num_convs=head_convs)
        model = FCOS(body, num_classes + 1, anchor_generator=anchors, head=head, **common)
    for m in model.modules():
        if type(m) is nn.GroupNorm:  # FCOSHead builds its own: same fix, same parameters
            m.__class__ = GroupNorm
    model.rmkd_family = family
    model.rmkd_backbone = backbone
    model.rmkd_min_level = min_level
    model.rmkd_num_classes = num_classes
    return model


def level_name(stride: int) -> str:
    """``"P{l}"`` of a level with stride ``2^l`` (stride 4: P2, stride 8: P3)."""
    if stride < 1 or stride & (stride - 1):
        raise ValueError(f"an FPN stride is a power of two, got {stride}")
    return f"P{int(stride).bit_length() - 1}"


def level_names(model: nn.Module) -> list[str]:
    """``["P3", ..., "P7"]``, or ``["P2", ..., "P6"]`` for ``min_level=2``: the five levels' names.

    Notebooks and tables name levels by these, never by ``3 + index``, which is wrong for P2..P6.
    """
    low = getattr(model, "rmkd_min_level", 3)  # torchvision's own detectors start at P3
    return [level_name(2 ** (low + i)) for i in range(5)]


def describe(model: nn.Module) -> str:
    """One line naming a detector: ``retinanet resnet18-FPN16, 1 head conv, P2-P6, 11.2 M parameters``."""
    names = level_names(model)
    # RetinaNet's conv blocks hold conv+norm+ReLU each, FCOS's Sequential lists them flat: count the convs
    convs = sum(isinstance(m, nn.Conv2d) for m in model.head.classification_head.conv.modules())
    backbone = getattr(model, "rmkd_backbone", "torchvision backbone")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return (f"{detector_family(model)} {backbone}-FPN{model.backbone.out_channels}, {convs} head conv{'s' * (convs > 1)}, "
            f"{names[0]}-{names[-1]}, {params:.1f} M parameters")


def detector_family(model: nn.Module) -> str:
    """``"retinanet"`` or ``"fcos"`` for a torchvision detector (built here or not)."""
    if isinstance(model, RetinaNet):
        return "retinanet"
    if isinstance(model, FCOS):
        return "fcos"
    raise TypeError(f"expected a torchvision RetinaNet or FCOS, got {type(model).__name__}")


def detector_num_classes(model: nn.Module) -> int:
    """K, object categories without the background slot."""
    head = model.head.classification_head
    return int(head.num_classes) - 1
