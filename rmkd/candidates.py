"""From DenseOutputs to what the KD losses read: RM candidates and location masks.

Teacher and student share the anchor layout (checked by the Distiller), so the
student's own assignment names the same anchors in both. Everything here is
vectorised over the batch: targets are padded to ``[B, M_max]`` once.

Shapes: ``[B, N]`` per anchor of a batch (N = sum_l H_l W_l A), ``[P]`` per
positive candidate, ``[B, H, W]`` per location of one FPN level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from .models.dense import DenseOutputs

SCORES = ("cls", "iou", "cls+iou")
SPACES = ("prob", "logit")


@dataclass
class Candidates:
    """The positive anchors of every GT instance in a batch.

    batch ``[P]`` image index, anchor ``[P]`` flat anchor index, gt ``[P]`` GT index in
    its image, instance ``[P]`` batch-unique instance id, label ``[P]`` 1..K,
    gt_box ``[P, 4]`` xyxy input pixels.
    """

    batch: Tensor
    anchor: Tensor
    gt: Tensor
    instance: Tensor
    label: Tensor
    gt_box: Tensor


def padded_targets(targets: list[dict]) -> tuple[Tensor, Tensor, Tensor]:
    """``(boxes [B, M, 4], labels [B, M], valid [B, M])`` with M the largest GT count."""
    m = max((len(t["labels"]) for t in targets), default=0)
    b = len(targets)
    device = targets[0]["boxes"].device
    boxes = torch.zeros(b, m, 4, device=device)
    labels = torch.zeros(b, m, dtype=torch.int64, device=device)
    valid = torch.zeros(b, m, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):  # B small copies; no per-instance work
        n = len(t["labels"])
        boxes[i, :n], labels[i, :n], valid[i, :n] = t["boxes"], t["labels"], True
    return boxes, labels, valid


def positive_candidates(dense: DenseOutputs) -> Candidates:
    """The detector's own positives (assignment >= 0), grouped by GT instance."""
    if dense.assignment is None:
        raise ValueError("dense outputs carry no assignment: run dense_forward with targets")
    assign = torch.stack(dense.assignment)  # [B, N]
    boxes, labels, _ = padded_targets(dense.targets)
    batch, anchor = (assign >= 0).nonzero(as_tuple=True)  # [P], [P]
    gt = assign[batch, anchor]  # [P]
    instance = batch * max(1, boxes.shape[1]) + gt
    return Candidates(batch, anchor, gt, instance, labels[batch, gt], boxes[batch, gt])


def decode_boxes(model, dense: DenseOutputs, cand: Candidates) -> Tensor:
    """``[P, 4]`` boxes decoded from each candidate's own regression (input pixels)."""
    reg = dense.head_outputs["bbox_regression"][cand.batch, cand.anchor]  # [P, 4]
    anchors = torch.stack(dense.anchors)[cand.batch, cand.anchor]  # [P, 4]
    if dense.family == "fcos":
        return model.box_coder.decode(reg, anchors)
    return model.box_coder.decode_single(reg, anchors)


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``a[i]`` with ``b[i]``: ``[P, 4] x [P, 4] -> [P]`` (xyxy)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(dim=1)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-6)


def candidate_scores(model, dense: DenseOutputs, cand: Candidates, score: str, space: str = "prob") -> Tensor:
    """``[P]`` ranking score of each candidate.

    score: ``cls`` the GT-class output, ``iou`` the IoU of the candidate's decoded
    box with its GT. space: ``prob`` (sigmoid probability / IoU in [0, 1]) or
    ``logit`` (the class logit / logit of the IoU), which makes the softmax sharper.
    """
    if space not in SPACES:
        raise ValueError(f"unknown score space {space!r}: choose one of {SPACES}")
    if score == "cls":
        logit = dense.cls_flat[cand.batch, cand.anchor, cand.label - 1]  # [P]
        return logit.sigmoid() if space == "prob" else logit
    if score == "iou":
        iou = paired_iou(decode_boxes(model, dense, cand), cand.gt_box)
        return iou if space == "prob" else torch.logit(iou, eps=1e-4)
    raise ValueError(f"unknown rank score {score!r}: choose 'cls' or 'iou'")


def _per_level(flat: Tensor, dense: DenseOutputs) -> list[Tensor]:
    """``[B, N]`` bool per anchor -> per level ``[B, H, W]``: any anchor at the location."""
    out = []
    for (h, w), part in zip(dense.level_sizes, flat.split(dense.anchors_per_level, dim=1)):
        out.append(part.reshape(part.shape[0], h, w, dense.num_anchors).any(dim=-1))
    return out


def positive_mask(dense: DenseOutputs) -> list[Tensor]:
    """Locations with at least one positive anchor."""
    return _per_level(torch.stack(dense.assignment) >= 0, dense)


def negative_mask(dense: DenseOutputs) -> list[Tensor]:
    """Locations whose anchors are all background (ignored anchors are neither)."""
    not_background = _per_level(torch.stack(dense.assignment) != -1, dense)
    return [~m for m in not_background]


def gt_mask(dense: DenseOutputs) -> list[Tensor]:
    """Locations whose centre lies inside some GT box."""
    boxes, _, valid = padded_targets(dense.targets)  # [B, M, 4], [B, M]
    centres = (dense.anchors[0][:, :2] + dense.anchors[0][:, 2:]) / 2  # [N, 2], same for every image
    x, y = centres[None, :, None, 0], centres[None, :, None, 1]  # [1, N, 1]
    inside = (x > boxes[:, None, :, 0]) & (x < boxes[:, None, :, 2]) & (y > boxes[:, None, :, 1]) & (y < boxes[:, None, :, 3])
    return _per_level((inside & valid[:, None, :]).any(dim=-1), dense)  # [B, N] -> levels


def fgfi_mask(dense: DenseOutputs, psi: float = 0.5) -> list[Tensor]:
    """FGFI (Wang et al., CVPR 2019): anchors with IoU > psi * (that GT's best anchor IoU)."""
    boxes, _, valid = padded_targets(dense.targets)  # [B, M, 4]
    b, m = valid.shape
    if m == 0:
        return _per_level(torch.zeros(b, dense.anchors[0].shape[0], dtype=torch.bool, device=valid.device), dense)
    iou = box_iou(dense.anchors[0], boxes.reshape(-1, 4)).reshape(-1, b, m).permute(1, 0, 2)  # [B, N, M]
    iou = iou * valid[:, None, :]
    threshold = psi * iou.amax(dim=1, keepdim=True)  # [B, 1, M]
    chosen = (iou > threshold) & valid[:, None, :]
    return _per_level(chosen.any(dim=-1), dense)
