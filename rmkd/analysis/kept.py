"""Which anchor each detection that survives NMS came from.

torchvision's ``postprocess_detections`` returns boxes, scores and labels but
drops the anchor index, and the paper's "precision discrepancy" (its Figure 2)
is about exactly that: teacher and student keep boxes from *different* anchors.
``kept_detections`` follows torchvision's steps one for one (score threshold,
per-level top-k, decode, clip, class-wise NMS, detections per image) and keeps
the flat anchor index alongside; a test proves its boxes, scores and labels
equal torchvision's on random heads for both families.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops

from ..models.dense import DenseOutputs


@torch.no_grad()
def kept_detections(model, dense: DenseOutputs) -> list[dict[str, Tensor]]:
    """Per image ``{"boxes" [D, 4], "scores" [D], "labels" [D] in 1..K, "anchor" [D]}``.

    Boxes are xyxy in the detector's *input* pixels (after its resize, like
    ``dense.anchors``); ``anchor`` indexes the flat N axis of ``dense``. The
    unused background slot 0 is never reported (as in :func:`rmkd.models.postprocess`).
    """
    fcos = dense.family == "fcos"
    split = dense.anchors_per_level
    logits = dense.head_outputs["cls_logits"].split(split, dim=1)  # per level [B, n_l, K+1]
    regression = dense.head_outputs["bbox_regression"].split(split, dim=1)
    ctrness = dense.head_outputs["bbox_ctrness"].split(split, dim=1) if fcos else [None] * len(split)
    offsets = [0]
    for n in split[:-1]:
        offsets.append(offsets[-1] + n)
    out = []
    for i, shape in enumerate(dense.image_sizes):
        anchors = dense.anchors[i].split(split)
        boxes, scores, labels, anchor_ids = [], [], [], []
        for level, offset in enumerate(offsets):
            lg = logits[level][i].clone()  # [n_l, K+1]
            lg[:, 0] = -torch.inf  # the background slot never scores
            num_classes = lg.shape[-1]
            prob = torch.sigmoid(lg)
            if fcos:
                prob = torch.sqrt(prob * torch.sigmoid(ctrness[level][i]))
            prob = prob.flatten()
            keep = prob > model.score_thresh
            flat_idx = torch.where(keep)[0]
            level_scores, idx = prob[keep].topk(det_utils._topk_min(flat_idx, model.topk_candidates, 0))
            flat_idx = flat_idx[idx]
            a = torch.div(flat_idx, num_classes, rounding_mode="floor")  # anchor within the level
            reg, anc = regression[level][i][a], anchors[level][a]
            decoded = model.box_coder.decode(reg, anc) if fcos else model.box_coder.decode_single(reg, anc)
            boxes.append(box_ops.clip_boxes_to_image(decoded, shape))
            scores.append(level_scores)
            labels.append(flat_idx % num_classes)
            anchor_ids.append(a + offset)
        boxes, scores, labels, anchor_ids = (torch.cat(x) for x in (boxes, scores, labels, anchor_ids))
        keep = box_ops.batched_nms(boxes, scores, labels, model.nms_thresh)[: model.detections_per_img]
        out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep], "anchor": anchor_ids[keep]})
    return out
