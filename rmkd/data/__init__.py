"""Data: COCO-format detection sets, VOC conversion and the embedded digits set.

Every data set reaches the models as ``(image [3, H, W] float in [0, 1],
target {"boxes" [N, 4] xyxy pixels, "labels" [N] int64 in 1..K, "image_id"})``.
"""

from .coco import BadImageError, CocoDetection, collate, detection_transforms
from .synth import make_synthetic
from .voc import voc_to_coco

__all__ = ["BadImageError", "CocoDetection", "collate", "detection_transforms", "make_synthetic", "voc_to_coco"]
