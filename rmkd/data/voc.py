"""Convert PASCAL VOC annotations to a COCO detection json.

The produced ``file_name`` entries look like ``VOC2007/JPEGImages/000001.jpg``:
they are relative to the VOCdevkit folder, so pass that folder as ``images``
to :class:`rmkd.data.coco.CocoDetection`.
"""

import os
import re
import xml.etree.ElementTree as ET

from .. import jsonio

# Standard VOC order; category id = 1 + index.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
_YEAR_DIR = re.compile(r"^VOC\d{4}$")


def _year_dirs(voc_root, years):
    """Return ``(devkit_root, [VOC20xx folder names])`` for either accepted layout."""
    voc_root = os.path.abspath(os.fspath(voc_root))
    if not os.path.isdir(voc_root):
        raise FileNotFoundError(f"{voc_root}: VOC folder not found; point voc_root at VOCdevkit or VOC20xx")
    wanted = None if years is None else [y if str(y).startswith("VOC") else f"VOC{y}" for y in years]
    if os.path.isdir(os.path.join(voc_root, "Annotations")):  # one VOC20xx folder
        root, name = os.path.split(voc_root)
        if wanted is not None and wanted != [name]:
            raise ValueError(f"{voc_root}: is the single year folder {name}, but years={list(years)} was asked")
        return root, [name]
    if wanted is None:
        wanted = sorted(d for d in os.listdir(voc_root)
                        if _YEAR_DIR.match(d) and os.path.isdir(os.path.join(voc_root, d, "Annotations")))
        if not wanted:
            raise FileNotFoundError(f"{voc_root}: no VOC20xx/Annotations folders found; check voc_root")
    for name in wanted:
        if not os.path.isdir(os.path.join(voc_root, name, "Annotations")):
            raise FileNotFoundError(f"{os.path.join(voc_root, name, 'Annotations')}: folder not found")
    return voc_root, wanted


def _text(node, tag, xml_path):
    child = node.find(tag)
    if child is None or child.text is None:
        raise ValueError(f"{xml_path}: missing <{tag}>; the VOC annotation is incomplete")
    return child.text.strip()


def _parse_xml(xml_path, skip_difficult):
    """Return ``(width, height, [(category_id, [x, y, w, h], difficult), ...])``."""
    if not os.path.isfile(xml_path):
        raise FileNotFoundError(f"{xml_path}: annotation listed in the image set not found")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{xml_path}: malformed XML ({e}); fix or re-extract the file") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"{xml_path}: missing <size>; the VOC annotation is incomplete")
    width, height = (int(float(_text(size, t, xml_path))) for t in ("width", "height"))
    objects = []
    for obj in root.iter("object"):
        name = _text(obj, "name", xml_path)
        if name not in VOC_CLASSES:
            raise ValueError(f"{xml_path}: unknown class name {name!r}; expected one of the 20 VOC classes")
        diff = obj.find("difficult")
        difficult = int(diff.text.strip()) if diff is not None and diff.text else 0
        if difficult and skip_difficult:
            continue
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{xml_path}: object {name!r} has no <bndbox>")
        x1, y1, x2, y2 = (float(_text(box, t, xml_path)) for t in ("xmin", "ymin", "xmax", "ymax"))
        # VOC boxes are 1-based inclusive pixel indices; COCO boxes are 0-based
        # continuous coordinates, so shift by 1 and count both end pixels.
        bbox = [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]
        objects.append((VOC_CLASSES.index(name) + 1, bbox, difficult))
    return width, height, objects


def voc_to_coco(voc_root, image_set="trainval", out_json=None, years=None, skip_difficult=False):
    """Convert VOC ``image_set`` split(s) to a COCO detection dict.

    Args:
        voc_root: the VOCdevkit folder (``years`` such as ``["2007", "2012"]``
            select sub-folders; default every ``VOC20xx`` present) or one
            ``VOC20xx`` folder.
        image_set: name of ``ImageSets/Main/{image_set}.txt``.
        out_json: if given, the dict is also written there.
        skip_difficult: drop ``difficult=1`` objects; otherwise they are kept
            as normal (``iscrowd: 0``) annotations with ``"difficult": 1``.

    Returns:
        COCO dict; boxes in pixels ``[x, y, w, h]``, image ids 1..N unique
        across years, category ids 1..20 in :data:`VOC_CLASSES` order.
        ``file_name`` is relative to the VOCdevkit folder.
    """
    root, names = _year_dirs(voc_root, years)
    images, annotations = [], []
    for name in names:
        split = os.path.join(root, name, "ImageSets", "Main", f"{image_set}.txt")
        if not os.path.isfile(split):
            raise FileNotFoundError(f"{split}: image set file not found; check image_set={image_set!r}")
        with open(split, encoding="utf-8") as f:
            stems = [line.split()[0] for line in f if line.strip()]
        for stem in stems:
            xml_path = os.path.join(root, name, "Annotations", f"{stem}.xml")
            width, height, objects = _parse_xml(xml_path, skip_difficult)
            image_id = len(images) + 1  # running counter keeps ids unique across years
            images.append({"id": image_id, "file_name": f"{name}/JPEGImages/{stem}.jpg",
                           "width": width, "height": height})
            for cat_id, bbox, difficult in objects:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id,
                    "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0, "difficult": difficult,
                })
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "none"} for i, n in enumerate(VOC_CLASSES)],
    }
    if out_json is not None:
        out_dir = os.path.dirname(os.fspath(out_json))
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        with open(out_json, "w", encoding="utf-8") as f:
            jsonio.dump(coco, f)
    return coco
