"""torchvision's COCO-trained one-stage detectors as ready rmkd teachers.

``import_torchvision("retinanet_resnet50_fpn", "teachers/retinanet_r50.pt")``
downloads torchvision's weights (or reads ``weights=FILE``, a state_dict of that
model), builds the same detector with :func:`rmkd.models.build_detector` and
writes an rmkd checkpoint that ``rmkd distill --teacher`` and ``rmkd eval`` read.
Two things differ between torchvision's model and ours and are converted:

* torchvision's COCO heads have 91 class slots indexed by the COCO category id
  (slot 0 background, 11 ids unused); ours have K + 1 = 81 slots, slot l for the
  l-th category id in sorted order (how :class:`rmkd.data.CocoDetection` labels
  them). The classification conv's rows are picked accordingly.
* torchvision's RetinaNet anchor sizes are rounded down to integers (32, 40, 50,
  ...); the config says ``model.anchor_floor: true``.

Everything else (ResNet-50 with frozen BN, FPN with P6/P7 from P5, 4-conv heads,
800x1333 input) is the same module tree, so the state dicts line up name for name
(``tests/test_zoo.py`` checks the outputs are equal).
"""

from __future__ import annotations

import os

import torch
from torchvision.models import detection as tvd

from ..checkpoint import save_checkpoint
from ..config import Config

# COCO 2017's 80 category ids, the order rmkd's labels 1..80 follow.
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]

# name -> (builder, weights enum, family, COCO box AP torchvision reports)
TEACHERS = {
    "retinanet_resnet50_fpn": (tvd.retinanet_resnet50_fpn, tvd.RetinaNet_ResNet50_FPN_Weights.COCO_V1, "retinanet", 36.4),
    "fcos_resnet50_fpn": (tvd.fcos_resnet50_fpn, tvd.FCOS_ResNet50_FPN_Weights.COCO_V1, "fcos", 39.2),
}


def teacher_config(name: str) -> Config:
    """The rmkd config of the detector ``name`` (80 COCO classes, torchvision's settings)."""
    if name not in TEACHERS:
        raise ValueError(f"unknown torchvision teacher {name!r}: choose one of {', '.join(TEACHERS)}")
    family = TEACHERS[name][2]
    cfg = Config()
    m = cfg.model
    m.family, m.backbone, m.num_classes = family, "resnet50", 80
    m.fpn_channels, m.head_convs, m.image_size = 256, 4, [800, 1333]
    m.norm, m.weights_backbone = "frozen_bn", None
    if family == "retinanet":
        m.anchor_sizes, m.scales_per_octave, m.aspect_ratios = [32.0, 64.0, 128.0, 256.0, 512.0], 3, [0.5, 1.0, 2.0]
        m.anchor_floor, m.head_norm = True, "none"
        m.score_thresh, m.nms_thresh, m.detections_per_img = 0.05, 0.5, 300
    else:
        m.head_norm = "gn"
        m.score_thresh, m.nms_thresh, m.detections_per_img = 0.2, 0.6, 100
    # where the COCO recipes expect COCO 2017 (README); rmkd eval --set data.val.* points elsewhere
    cfg.data.source = "coco"
    cfg.data.train.images, cfg.data.train.annotations = "data/coco/train2017", "data/coco/annotations/instances_train2017.json"
    cfg.data.val.images, cfg.data.val.annotations = "data/coco/val2017", "data/coco/annotations/instances_val2017.json"
    return cfg


def convert_state_dict(state: dict, num_anchors: int, category_ids=COCO_CATEGORY_IDS) -> dict:
    """torchvision's 91-slot COCO state dict -> rmkd's K + 1 slots (see the module docstring)."""
    slots = [0, *category_ids]  # rmkd slot l <- torchvision slot slots[l]
    out = dict(state)
    for suffix in ("weight", "bias"):
        key = f"head.classification_head.cls_logits.{suffix}"
        t = state[key]
        per_anchor = t.shape[0] // num_anchors
        if per_anchor != 91:
            raise ValueError(f"{key} has {per_anchor} class slots per anchor; expected torchvision's 91 (COCO)")
        rows = torch.tensor([a * 91 + s for a in range(num_anchors) for s in slots])
        out[key] = t[rows].clone()
    return out


def import_torchvision(name: str, out: str, weights: str | None = None, progress: bool = True) -> Config:
    """Write the rmkd checkpoint of torchvision's COCO-trained ``name`` to ``out``.

    ``weights``: a file holding that model's state_dict (e.g. downloaded elsewhere);
    None downloads torchvision's COCO weights.
    """
    from ..run import build_model

    cfg = teacher_config(name)
    builder, enum, family, _ = TEACHERS[name]
    if weights is None:
        state = enum.get_state_dict(progress=progress)
    else:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{weights}: weights file not found")
        state = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_model(cfg)
    num_anchors = model.anchor_generator.num_anchors_per_location()[0]
    converted = convert_state_dict(state, num_anchors)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"{name}: weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    save_checkpoint({"model": model.state_dict(), "step": 0, "config": cfg.to_dict(), "kind": f"torchvision:{name}"}, out)
    return cfg
