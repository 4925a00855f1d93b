"""COCO box mAP through pycocotools, plus conversion of detector outputs."""

import contextlib
import copy
import io
import os

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rmkd.data.coco import load_json, make_coco

# Order of COCOeval.stats[0:6] for iouType="bbox".
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _as_list(x):
    """Tensor / array / sequence -> nested python list."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().tolist()
    return x.tolist() if hasattr(x, "tolist") else list(x)


def detections_to_coco(image_ids, outputs, label_to_cat_id):
    """Turn torchvision detector outputs into COCO result dicts.

    Args:
        image_ids: COCO image id of each output.
        outputs: per image ``{"boxes": [D, 4] xyxy pixels, "scores": [D],
            "labels": [D] in 1..K}`` (tensors, arrays or lists).
        label_to_cat_id: contiguous label -> COCO category id, e.g.
            ``CocoDetection.label_to_cat_id``.

    Returns:
        list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
        with python numbers; bbox rounded to 2 decimals, score to 5.
    """
    image_ids, outputs = list(image_ids), list(outputs)
    if len(image_ids) != len(outputs):
        raise ValueError(f"got {len(image_ids)} image ids but {len(outputs)} outputs; pass one id per output")
    results = []
    for image_id, out in zip(image_ids, outputs):
        boxes, scores, labels = (_as_list(out[k]) for k in ("boxes", "scores", "labels"))
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
            if int(label) not in label_to_cat_id:
                raise ValueError(f"image {image_id}: label {label} has no category id in label_to_cat_id")
            results.append({
                "image_id": int(image_id),
                "category_id": int(label_to_cat_id[int(label)]),
                "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                "score": round(float(score), 5),
            })
    return results


def _load_gt(annotations):
    if isinstance(annotations, COCO):
        return annotations
    if isinstance(annotations, dict):
        # COCOeval writes an "ignore" flag into ground-truth dicts: keep the caller's intact.
        return make_coco(copy.deepcopy(annotations))
    path = os.fspath(annotations)
    return make_coco(load_json(path), path)


def _load_dt(gt, detections):
    source = "detections"
    if isinstance(detections, (str, os.PathLike)):
        source = os.fspath(detections)
        detections = load_json(source)
    if not isinstance(detections, list):
        raise ValueError(f"{source}: expected a list of COCO result dicts, got {type(detections).__name__}")
    for d in detections:
        if d.get("image_id") not in gt.imgs:
            raise ValueError(f"{source}: image_id {d.get('image_id')!r} is not in the annotations; "
                             "evaluate against the matching annotation file")
        if d.get("category_id") not in gt.cats:
            raise ValueError(f"{source}: category_id {d.get('category_id')!r} is not in the annotations; "
                             "map labels with label_to_cat_id")
    if not detections:
        # loadRes indexes detections[0], so build the empty result set ourselves.
        return make_coco({"images": list(gt.dataset["images"]),
                          "categories": copy.deepcopy(gt.dataset["categories"]), "annotations": []})
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds keys to each dict: copy so the caller's list is unchanged.
        return gt.loadRes([dict(d) for d in detections])


def coco_map(annotations, detections):
    """COCO box AP of ``detections`` against ``annotations``.

    Args:
        annotations: COCO json path, dict, or ``pycocotools.coco.COCO``.
        detections: list of COCO result dicts (see :func:`detections_to_coco`)
            or the path of a json list of them. All image ids must be in
            ``annotations``; every annotated image is evaluated.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as python floats on
        pycocotools' 0..1 scale (not percent); ``nan`` where there is no
        ground truth in that size range (pycocotools reports -1).
    """
    gt = _load_gt(annotations)
    dt = _load_dt(gt, detections)
    ev = COCOeval(gt, dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float("nan") if v == -1 else float(v) for k, v in zip(METRICS, ev.stats[:6])}

