"""rmkd: knowledge distillation for one-stage object detectors.

Built around Rank Mimicking (RM) and Prediction-guided Feature Imitation (PFI),
Li et al., AAAI 2022 (arXiv 2112.04840). Submodules are imported on use so that
``import rmkd`` stays cheap:

- :mod:`rmkd.data`      COCO-format data, VOC conversion, the embedded digits set
- :mod:`rmkd.models`    torchvision detectors and the one dense forward
- :mod:`rmkd.evaluate`  COCO mAP through pycocotools
- :mod:`rmkd.engine`    training and evaluation loops
"""

__version__ = "0.1.0"
