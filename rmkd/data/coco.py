"""COCO-format detection dataset for torchvision detectors.

Targets follow the torchvision detection convention so that a batch can be fed
straight into ``torchvision.models.detection`` models, and so that
``torchvision.transforms.v2`` transforms move boxes together with the image.
"""

import contextlib
import io
import json
import os
import warnings

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2

# Reasons an annotation never reaches a target, in the order they are checked.
DROP_REASONS = ("crowd", "non_finite", "non_positive_size", "outside_image")
BAD_IMAGES = ("error", "skip")


class BadImageError(ValueError):
    """An image file listed in the annotations cannot be read; ``path`` and ``reason`` name it."""

    def __init__(self, path: str, img_id=None, reason: str | None = None):
        if reason is None:  # rebuilt from its message (a DataLoader worker re-raising it)
            super().__init__(path)
            self.path, self.reason = None, None
            return
        hint = "replace the file, or set data.bad_images=skip to skip unreadable images with a warning"
        super().__init__(f"{path}: image {img_id} {reason}; {hint}")
        self.path, self.reason = path, reason


def load_json(path):
    """Read a JSON file, turning I/O and syntax problems into one-line errors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: annotation file not found; check the path")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}; fix the file"
        ) from None


def make_coco(dataset, source="<dict>"):
    """Build a ``pycocotools.coco.COCO`` from an in-memory dict, silently.

    ``source`` only names the origin in error messages.
    """
    if not isinstance(dataset, dict):
        raise ValueError(f"{source}: expected a JSON object at top level, got {type(dataset).__name__}")
    for key in ("images", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{source}: missing or non-list key {key!r}; a COCO detection json needs it")
    # Test-split jsons have no "annotations"; pycocotools copes only if the key exists.
    dataset.setdefault("annotations", [])
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes from a COCO json, as torchvision detection targets.

    Args:
        images: folder that the json's ``file_name`` entries are relative to.
        annotations: path of a COCO detection json.
        transforms: optional callable ``(image, target) -> (image, target)``;
            ``torchvision.transforms.v2`` transforms work directly because the
            image is a ``tv_tensors.Image`` and boxes are ``tv_tensors.BoundingBoxes``.
        bad_images: what an unreadable image file (missing, truncated, not an
            image) does when it is loaded: ``"error"`` (default) raises a
            one-line error naming the file; ``"skip"`` warns naming the file,
            records it in ``self.skipped`` and returns None, which
            :func:`collate` leaves out of the batch. Errors are the default
            because a skipped image silently changes what is trained on and,
            in a validation set, counts its objects as missed.

        cache_images: keep every decoded image in memory (uint8, 12 KB for a 64 px
            image) and read its file only once; for small sets read over many epochs.

    Each item is ``(image, target)``:
        image: float32 ``[3, H, W]`` RGB in [0, 1] (grey / RGBA are converted).
        target["boxes"]: ``BoundingBoxes`` float32 ``[N, 4]`` XYXY pixels,
            ``canvas_size=(H, W)``.
        target["labels"]: int64 ``[N]`` in ``1..K``; 0 is left for background.
        target["image_id"]: int, the COCO image id.

    Crowd, non-finite, zero/negative-size boxes and boxes with no area inside
    the image are dropped once at construction (counts in ``self.dropped``,
    reported with a single warning); the rest are clipped to the image.
    Images without boxes are kept (``[0, 4]`` boxes).
    """

    def __init__(self, images, annotations, transforms=None, bad_images="error", cache_images=False):
        self.images = os.fspath(images)
        # img_id -> decoded uint8 [3, H, W]: read each file once (a small set read for many epochs)
        self.cache_images = bool(cache_images)
        self._decoded: dict = {}
        self.annotations = os.fspath(annotations)
        self.transforms = transforms
        if bad_images not in BAD_IMAGES:
            raise ValueError(f"bad_images={bad_images!r}: choose one of {', '.join(BAD_IMAGES)}")
        self.bad_images = bad_images
        # path -> reason for each image skipped so far (in this process: DataLoader workers keep their own)
        self.skipped: dict[str, str] = {}
        if not os.path.isdir(self.images):
            raise FileNotFoundError(f"{self.images}: images folder not found; check the path")

        self.coco = make_coco(load_json(self.annotations), self.annotations)
        self.ids = sorted(self.coco.imgs)
        self.cat_ids = sorted(self.coco.cats)
        # Contiguous labels 1..K because torchvision detectors reserve 0 for background.
        self.cat_id_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id = {i: c for c, i in self.cat_id_to_label.items()}
        self.num_classes = len(self.cat_ids)
        self.class_names = [self.coco.cats[c].get("name", str(c)) for c in self.cat_ids]

        self._targets, self.dropped = self._prepare_targets()
        if sum(self.dropped.values()):
            counts = ", ".join(f"{k}={v}" for k, v in self.dropped.items() if v)
            warnings.warn(f"{self.annotations}: dropped {sum(self.dropped.values())} annotations ({counts})")

    def _prepare_targets(self):
        """Filter and clip all boxes once so ``__getitem__`` only indexes arrays.

        Returns ``({image_id: (boxes float32 [n, 4] xyxy, labels int64 [n])}, dropped)``.
        """
        anns = self.coco.dataset["annotations"]
        for a in anns:
            if a.get("category_id") not in self.cat_id_to_label:
                raise ValueError(
                    f"{self.annotations}: annotation {a.get('id')} has category_id "
                    f"{a.get('category_id')!r} that is not in 'categories'; add the category or fix the id"
                )
            if a.get("image_id") not in self.coco.imgs:
                raise ValueError(
                    f"{self.annotations}: annotation {a.get('id')} has image_id "
                    f"{a.get('image_id')!r} that is not in 'images'; add the image or fix the id"
                )
            bbox = a.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise ValueError(
                    f"{self.annotations}: annotation {a.get('id')} has bbox {bbox!r}; expected [x, y, w, h]"
                )
        for img_id in self.ids:
            img = self.coco.imgs[img_id]
            if not all(isinstance(img.get(k), (int, float)) for k in ("width", "height")):
                raise ValueError(f"{self.annotations}: image {img_id} lacks numeric 'width'/'height'")

        n = len(anns)
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(n, 4)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        img_ids = np.array([a["image_id"] for a in anns], dtype=np.int64)
        labels = np.array([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64)
        size = np.array([[self.coco.imgs[i]["width"], self.coco.imgs[i]["height"]] for i in img_ids],
                        dtype=np.float64).reshape(n, 2)

        # Reasons are exclusive: each dropped annotation is counted under the first one that applies.
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(xywh).all(axis=1)
            positive = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            xyxy = np.clip(xyxy, 0, np.concatenate([size, size], axis=1))
            inside = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        reason_masks = [crowd, ~finite, ~positive, ~inside]
        dropped, remaining = {}, np.ones(n, dtype=bool)
        for reason, mask in zip(DROP_REASONS, reason_masks):
            dropped[reason] = int((mask & remaining).sum())
            remaining &= ~mask

        targets = {}
        for img_id in self.ids:
            keep = remaining & (img_ids == img_id)
            targets[img_id] = (xyxy[keep].astype(np.float32), labels[keep])
        return targets, dropped

    def __len__(self):
        return len(self.ids)

    def _load_image(self, img_id):
        if img_id in self._decoded:
            return tv_tensors.Image(self._decoded[img_id].float().div_(255))
        info = self.coco.imgs[img_id]
        path = os.path.join(self.images, info["file_name"])
        if not os.path.isfile(path):
            raise BadImageError(path, img_id, f"listed in {self.annotations} not found")
        # Pillow rather than torchvision.io, whose decoders are deprecated since 0.29.
        # convert("RGB") turns grey, palette and RGBA (alpha dropped) into 3 channels; it also
        # decodes the whole file, so a truncated JPEG or PNG fails here rather than later.
        try:
            with Image.open(path) as pil:
                image = v2.functional.pil_to_tensor(pil.convert("RGB"))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BadImageError(path, img_id, f"cannot be decoded ({reason})") from None
        h, w = image.shape[-2:]
        if (h, w) != (info["height"], info["width"]):
            raise ValueError(
                f"{path}: image is {w}x{h} but {self.annotations} says "
                f"{info['width']}x{info['height']}; fix width/height in the json"
            )
        if self.cache_images:
            self._decoded[img_id] = image
        return tv_tensors.Image(image.float().div_(255))

    def __getitem__(self, i):
        img_id = self.ids[i]
        try:
            image = self._load_image(img_id)
        except BadImageError as e:
            if self.bad_images == "error":
                raise
            self.skipped[e.path] = e.reason
            warnings.warn(f"{e.path}: image {img_id} {e.reason}; skipped (data.bad_images=skip, {len(self.skipped)} so far)")
            return None
        boxes, labels = self._targets[img_id]
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(boxes.copy()), format="XYXY", canvas_size=tuple(image.shape[-2:])
            ),
            "labels": torch.from_numpy(labels.copy()),
            "image_id": int(img_id),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate(batch):
    """DataLoader ``collate_fn``: images differ in size, so keep lists.

    Items that are None (images skipped with ``bad_images="skip"``) are left out.
    Returns ``(list of [3, H, W] images, list of target dicts)``.
    """
    batch = [item for item in batch if item is not None]
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def detection_transforms(train, hflip=0.5, resize=None):
    """Default v2 pipeline for :class:`CocoDetection`.

    Detectors resize internally, so nothing is resized unless ``resize`` (the
    target short side in pixels) is given. ``hflip`` is the flip probability
    used only when ``train``.
    """
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip={hflip}: must be a probability in [0, 1]")
    ops = []
    if resize is not None:
        ops.append(v2.Resize(int(resize)))
    if train and hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    return v2.Compose(ops or [v2.Identity()])
