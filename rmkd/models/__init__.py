"""torchvision detectors and the one dense forward that everything else reads."""

from .build import build_backbone, build_detector, describe, detector_family, detector_num_classes, level_name, level_names
from .dense import DETECTION_LOSSES, DenseOutputs, dense_forward, postprocess

__all__ = [
    "DETECTION_LOSSES",
    "DenseOutputs",
    "build_backbone",
    "build_detector",
    "dense_forward",
    "describe",
    "detector_family",
    "detector_num_classes",
    "level_name",
    "level_names",
    "postprocess",
]
