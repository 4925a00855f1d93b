"""One dense forward for torchvision one-stage detectors.

``dense_forward`` runs a RetinaNet or FCOS exactly once and keeps everything a
distillation loss or an analysis needs: FPN features, per-level class and box
maps, anchors, the detector's *own* positive assignment and its own losses.
Training, distillation, evaluation and analysis all read :class:`DenseOutputs`;
nothing runs the network twice.

Layout. torchvision flattens head outputs per image as
``[B, sum_l H_l * W_l * A, K+1]`` in (level, y, x, anchor) order, and the anchor
generator lists anchors in the same order. We keep those flat tensors (the
losses and post-processing take them) and derive per-level maps
``[B, A*K, H, W]`` lazily, on first access.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor, nn

from .build import detector_family

# The detector's own loss terms, as torchvision names them (RetinaNet: the first two; FCOS adds
# centerness); a distilled run also logs its KD terms, so runs compare on these.
DETECTION_LOSSES = ("classification", "bbox_regression", "bbox_ctrness")


@dataclass(eq=False)
class DenseOutputs:
    """Everything one forward computes, per FPN level and per image.

    Attributes:
        features: per level ``[B, C, H_l, W_l]`` FPN features.
        head_outputs: torchvision's flat head outputs: ``cls_logits [B, N, K+1]``
            (slot 0 is the unused background slot), ``bbox_regression [B, N, 4]``
            and for FCOS ``bbox_ctrness [B, N, 1]``; N = sum_l H_l * W_l * A.
        anchors: per image ``[N, 4]`` xyxy, in input pixels (after resize).
        num_anchors: A, anchors per location.
        num_classes: K, object categories.
        image_sizes: per image (h, w) after the detector's resize.
        original_sizes: per image (h, w) as given.
        targets: the targets resized like the images (boxes in input pixels), or None.
        assignment: per image ``[N]`` int64: GT index >= 0 (positive), -1 background,
            -2 ignored; from the detector's own matching rule. None without targets.
        losses: the detector's own losses (empty without targets).
    """

    family: str
    features: list[Tensor]
    head_outputs: dict[str, Tensor]
    anchors: list[Tensor]
    num_anchors: int
    num_classes: int
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    targets: list[dict[str, Tensor]] | None = None
    assignment: list[Tensor] | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)

    @property
    def level_sizes(self) -> list[tuple[int, int]]:
        """(H_l, W_l) per level."""
        return [(f.shape[-2], f.shape[-1]) for f in self.features]

    @property
    def anchors_per_level(self) -> list[int]:
        """H_l * W_l * A per level: how the flat N axis splits."""
        return [h * w * self.num_anchors for h, w in self.level_sizes]

    @property
    def cls_flat(self) -> Tensor:
        """``[B, N, K]`` class logits without the background slot (a view)."""
        return self.head_outputs["cls_logits"][..., 1:]

    def _to_maps(self, flat: Tensor, channels: int) -> list[Tensor]:
        """Flat ``[B, N, c]`` -> per level ``[B, A*c, H, W]`` (anchor-major channels)."""
        maps = []
        for (h, w), part in zip(self.level_sizes, flat.split(self.anchors_per_level, dim=1)):
            b = part.shape[0]
            part = part.reshape(b, h, w, self.num_anchors, channels)  # [B, H, W, A, c]
            maps.append(part.permute(0, 3, 4, 1, 2).reshape(b, self.num_anchors * channels, h, w))
        return maps

    @cached_property
    def cls_logits(self) -> list[Tensor]:
        """Per level ``[B, A*K, H, W]`` class logits (background slot dropped)."""
        return self._to_maps(self.cls_flat, self.num_classes)

    @cached_property
    def bbox_regression(self) -> list[Tensor]:
        """Per level ``[B, A*4, H, W]`` box regression (RetinaNet deltas, FCOS ltrb distances)."""
        return self._to_maps(self.head_outputs["bbox_regression"], 4)

    @cached_property
    def centerness(self) -> list[Tensor] | None:
        """Per level ``[B, A, H, W]`` FCOS centerness logits; None for RetinaNet."""
        if "bbox_ctrness" not in self.head_outputs:
            return None
        return self._to_maps(self.head_outputs["bbox_ctrness"], 1)


def _losses_and_assignment(model, targets, head_outputs, anchors, anchors_per_level, losses=True):
    """Run the detector's own ``compute_loss`` and keep the matched indices it made.

    Both families match inside ``compute_loss`` and hand ``matched_idxs`` to
    ``head.compute_loss``. We record that argument instead of re-implementing
    either matching rule, so the assignment is the detector's, by construction.
    With ``losses=False`` the head's loss is skipped (analysis needs the matching only).
    """
    recorded: list[list[Tensor]] = []
    head_loss = model.head.compute_loss

    def recording_head_loss(targets_, head_outputs_, anchors_, matched_idxs):
        recorded.append(matched_idxs)
        return head_loss(targets_, head_outputs_, anchors_, matched_idxs) if losses else {}

    model.head.compute_loss = recording_head_loss  # instance attribute shadows the method
    try:
        if detector_family(model) == "fcos":
            # FCOS has one point per location (A = 1): anchors per level = H_l * W_l.
            losses = model.compute_loss(targets, head_outputs, anchors, anchors_per_level)
        else:
            losses = model.compute_loss(targets, head_outputs, anchors)
    finally:
        del model.head.compute_loss
    return losses, recorded[0]


def dense_forward(
    model: nn.Module, images: list[Tensor], targets: list[dict] | None = None, losses: bool = True, transformed=None
) -> DenseOutputs:
    """One forward of a torchvision RetinaNet/FCOS, keeping the dense outputs.

    Args:
        model: a torchvision ``RetinaNet`` or ``FCOS`` (e.g. from ``build_detector``),
            in whatever train/eval mode the caller chose.
        images: list of B images ``[3, H_i, W_i]`` float in [0, 1].
        targets: optional list of B dicts with ``boxes [M_i, 4]`` xyxy pixels and
            ``labels [M_i]`` int64 in 1..K. With targets, the assignment and the
            detector's losses are computed (the same values ``model(images, targets)``
            returns in train mode).
        losses: with targets, also compute the detector's losses (False: the
            assignment only, e.g. for analysis; ``out.losses`` stays empty).
        transformed: ``(ImageList, targets)`` already produced by a detector's
            ``transform`` for these images (resized, normalised, batched); the
            model's own transform is then skipped. The Distiller passes the
            student's, so the teacher sees exactly the student's input, also
            under multi-scale training.
    """
    family = detector_family(model)
    original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    image_list, targets_t = model.transform(images, targets) if transformed is None else transformed
    features = list(model.backbone(image_list.tensors).values())
    head_outputs = model.head(features)
    anchors = model.anchor_generator(image_list, features)
    locations = sum(f.shape[-2] * f.shape[-1] for f in features)
    num_anchors = head_outputs["cls_logits"].shape[1] // locations
    out = DenseOutputs(
        family=family,
        features=features,
        head_outputs=head_outputs,
        anchors=anchors,
        num_anchors=num_anchors,
        num_classes=head_outputs["cls_logits"].shape[-1] - 1,
        image_sizes=[tuple(s) for s in image_list.image_sizes],
        original_sizes=original_sizes,
        targets=targets_t,
    )
    if targets_t is not None:
        out.losses, out.assignment = _losses_and_assignment(
            model, targets_t, head_outputs, anchors, out.anchors_per_level, losses
        )
    return out


def postprocess(model: nn.Module, dense: DenseOutputs) -> list[dict[str, Tensor]]:
    """Detections from a dense forward, in the original image pixels.

    Returns per image ``{"boxes": [D, 4] xyxy, "scores": [D], "labels": [D] in 1..K}``
    from torchvision's own decoding, score threshold, top-k and NMS, i.e. what
    ``model.eval()(images)`` returns, except that the unused background slot 0
    is masked out, so no detection is ever labelled 0 (an untrained head could).
    """
    split = dense.anchors_per_level
    head = dict(dense.head_outputs)
    logits = head["cls_logits"].clone()
    logits[..., 0] = -torch.inf  # sigmoid -> 0, never above the score threshold
    head["cls_logits"] = logits
    split_head = {k: list(v.split(split, dim=1)) for k, v in head.items()}
    split_anchors = [list(a.split(split)) for a in dense.anchors]
    detections = model.postprocess_detections(split_head, split_anchors, dense.image_sizes)
    return model.transform.postprocess(detections, dense.image_sizes, dense.original_sizes)
