import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from rmkd.data.coco import BadImageError, CocoDetection, collate, detection_transforms
from rmkd.data.voc import VOC_CLASSES, voc_to_coco

# Image 1 is 40 wide x 30 high; categories are listed out of order with non-contiguous ids.
COCO_DICT = {
    "images": [
        {"id": 5, "file_name": "rgba.png", "width": 16, "height": 16},
        {"id": 1, "file_name": "rgb.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "grey.png", "width": 20, "height": 10},  # no annotations
    ],
    "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5], "iscrowd": 0, "area": 50},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [30, 20, 20, 20], "iscrowd": 0, "area": 400},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1, "area": 25},
        {"id": 4, "image_id": 1, "category_id": 7, "bbox": [5, 5, 0, 4], "iscrowd": 0, "area": 0},
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [float("nan"), 1, 2, 2], "iscrowd": 0, "area": 4},
        {"id": 6, "image_id": 1, "category_id": 3, "bbox": [45, 0, 5, 5], "iscrowd": 0, "area": 25},
        {"id": 7, "image_id": 5, "category_id": 3, "bbox": [0, 0, 16, 16], "iscrowd": 0, "area": 256},
    ],
}


@pytest.fixture
def coco_dir(tmp_path):
    rng = np.random.default_rng(0)
    pixels = {
        "rgb.png": rng.integers(0, 256, (30, 40, 3), dtype=np.uint8),
        "grey.png": rng.integers(0, 256, (10, 20), dtype=np.uint8),
        "rgba.png": rng.integers(0, 256, (16, 16, 4), dtype=np.uint8),
    }
    (tmp_path / "img").mkdir()
    for name, arr in pixels.items():
        Image.fromarray(arr).save(tmp_path / "img" / name)
    (tmp_path / "ann.json").write_text(json.dumps(COCO_DICT))  # NaN is written as a JSON NaN literal
    return tmp_path, pixels


def make_dataset(coco_dir, transforms=None):
    root, _ = coco_dir
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CocoDetection(root / "img", root / "ann.json", transforms=transforms)


def test_mapping_and_attributes(coco_dir):
    ds = make_dataset(coco_dir)
    assert ds.ids == [1, 2, 5]
    assert ds.cat_ids == [3, 7]
    assert ds.cat_id_to_label == {3: 1, 7: 2}
    assert ds.label_to_cat_id == {1: 3, 2: 7}
    assert ds.num_classes == 2
    assert ds.class_names == ["cat", "dog"]
    assert len(ds) == 3
    assert str(ds.annotations).endswith("ann.json")
    assert sorted(ds.coco.getImgIds()) == [1, 2, 5]


def test_targets_exact(coco_dir):
    ds = make_dataset(coco_dir)
    _, pixels = coco_dir
    image, target = ds[0]  # image id 1
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    expected = torch.from_numpy(pixels["rgb.png"]).permute(2, 0, 1).float() / 255
    assert torch.equal(image.as_subclass(torch.Tensor), expected)
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(boxes.canvas_size) == (30, 40)
    assert boxes.dtype == torch.float32
    # Second box [30, 20, 20, 20] sticks out of the 40x30 image and is clipped.
    assert torch.equal(boxes.as_subclass(torch.Tensor), torch.tensor([[2.0, 3, 12, 8], [30, 20, 40, 30]]))
    assert target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == [2, 1]
    assert target["image_id"] == 1 and isinstance(target["image_id"], int)


def test_empty_grey_and_rgba_images(coco_dir):
    ds = make_dataset(coco_dir)
    _, pixels = coco_dir
    image, target = ds[1]  # image id 2, grey, no annotations
    assert image.shape == (3, 10, 20)
    grey = torch.from_numpy(pixels["grey.png"]).float() / 255
    for c in range(3):
        assert torch.equal(image[c].as_subclass(torch.Tensor), grey)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["image_id"] == 2

    image, target = ds[2]  # image id 5, RGBA
    assert image.shape == (3, 16, 16)
    rgb = torch.from_numpy(pixels["rgba.png"][..., :3]).permute(2, 0, 1).float() / 255
    assert torch.equal(image.as_subclass(torch.Tensor), rgb)  # alpha dropped
    assert target["boxes"].tolist() == [[0.0, 0.0, 16.0, 16.0]]
    assert target["labels"].tolist() == [1]


def test_dropped_counts_warned_once(coco_dir):
    root, _ = coco_dir
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(root / "img", root / "ann.json")
        for i in range(len(ds)):
            ds[i]
    assert ds.dropped == {"crowd": 1, "non_finite": 1, "non_positive_size": 1, "outside_image": 1}
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "ann.json" in messages[0] and "dropped 4" in messages[0] and "crowd=1" in messages[0]


def test_no_warning_when_nothing_dropped(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "iscrowd": 0}]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(tmp_path / "img", tmp_path / "a.json")
    assert caught == []
    assert sum(ds.dropped.values()) == 0


def test_v2_flip_moves_boxes_with_image(coco_dir):
    plain = make_dataset(coco_dir)
    flipped = make_dataset(coco_dir, transforms=v2.RandomHorizontalFlip(p=1.0))
    image, target = plain[0]
    fimage, ftarget = flipped[0]
    assert torch.equal(fimage.as_subclass(torch.Tensor), image.as_subclass(torch.Tensor).flip(-1))
    w = 40
    b, fb = target["boxes"], ftarget["boxes"]
    assert torch.equal(fb[:, 0], w - b[:, 2]) and torch.equal(fb[:, 2], w - b[:, 0])
    assert torch.equal(fb[:, 1::2], b[:, 1::2])
    assert ftarget["labels"].tolist() == [2, 1] and ftarget["image_id"] == 1


def test_detection_transforms(coco_dir):
    image, target = make_dataset(coco_dir, transforms=detection_transforms(train=False))[0]
    assert target["boxes"].tolist() == [[2.0, 3.0, 12.0, 8.0], [30.0, 20.0, 40.0, 30.0]]
    image, target = make_dataset(coco_dir, transforms=detection_transforms(train=True, hflip=1.0))[0]
    assert target["boxes"].tolist() == [[28.0, 3.0, 38.0, 8.0], [0.0, 20.0, 10.0, 30.0]]
    # train with hflip=0 must never flip
    image, target = make_dataset(coco_dir, transforms=detection_transforms(train=True, hflip=0.0))[0]
    assert target["boxes"].tolist() == [[2.0, 3.0, 12.0, 8.0], [30.0, 20.0, 40.0, 30.0]]
    # short side 30 -> 15 halves everything
    image, target = make_dataset(coco_dir, transforms=detection_transforms(train=False, resize=15))[0]
    assert image.shape == (3, 15, 20)
    assert target["boxes"].tolist() == [[1.0, 1.5, 6.0, 4.0], [15.0, 10.0, 20.0, 15.0]]
    assert tuple(target["boxes"].canvas_size) == (15, 20)
    with pytest.raises(ValueError, match="hflip"):
        detection_transforms(train=True, hflip=1.5)


def test_collate_with_dataloader(coco_dir):
    ds = make_dataset(coco_dir)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and isinstance(targets, list)
    assert [im.shape for im in images] == [(3, 30, 40), (3, 10, 20)]
    assert [t["image_id"] for t in targets] == [1, 2]
    assert collate([]) == ([], [])


def test_missing_paths(coco_dir, tmp_path):
    root, _ = coco_dir
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(root / "img", root / "nope.json")
    with pytest.raises(FileNotFoundError, match="no_images"):
        CocoDetection(root / "no_images", root / "ann.json")
    (root / "img" / "rgb.png").unlink()
    ds = make_dataset(coco_dir)
    with pytest.raises(BadImageError, match="rgb.png.*not found"):
        ds[0]


def test_bad_category_id(coco_dir):
    root, _ = coco_dir
    data = json.loads(json.dumps(COCO_DICT))
    data["annotations"][0]["category_id"] = 99
    (root / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad\.json.*99"):
        CocoDetection(root / "img", root / "bad.json")


def test_malformed_json(coco_dir):
    root, _ = coco_dir
    (root / "broken.json").write_text('{"images": [\n  {"id": 1,,}]}')
    with pytest.raises(ValueError, match=r"broken\.json.*line 2 column"):
        CocoDetection(root / "img", root / "broken.json")


def test_missing_key(coco_dir):
    root, _ = coco_dir
    (root / "nocat.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match=r"nocat\.json.*categories"):
        CocoDetection(root / "img", root / "nocat.json")


# ---------------------------------------------------------------- VOC

def voc_xml(width, height, objects):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, d, b in objects
    )
    return (f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"{objs}</annotation>")


def make_voc_year(devkit, year, images):
    """images: {stem: (width, height, objects)}"""
    base = devkit / f"VOC{year}"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (base / sub).mkdir(parents=True)
    for stem, (w, h, objects) in images.items():
        (base / "Annotations" / f"{stem}.xml").write_text(voc_xml(w, h, objects))
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(base / "JPEGImages" / f"{stem}.jpg")
    (base / "ImageSets/Main/trainval.txt").write_text("".join(f"{s}\n" for s in images))
    return base


@pytest.fixture
def devkit(tmp_path):
    root = tmp_path / "VOCdevkit"
    make_voc_year(root, 2007, {
        "000001": (50, 40, [("dog", 0, (1, 1, 10, 20)), ("person", 1, (5, 6, 25, 30))]),
        "000002": (30, 30, [("car", 0, (3, 4, 13, 14))]),
    })
    return root


def test_voc_to_coco_exact(devkit, tmp_path):
    out = tmp_path / "out" / "voc.json"
    coco = voc_to_coco(devkit, out_json=out)
    assert json.loads(out.read_text()) == coco
    assert [c["name"] for c in coco["categories"]] == list(VOC_CLASSES)
    assert [c["id"] for c in coco["categories"]] == list(range(1, 21))
    assert coco["categories"][0]["name"] == "aeroplane" and coco["categories"][19]["name"] == "tvmonitor"
    assert coco["images"] == [
        {"id": 1, "file_name": "VOC2007/JPEGImages/000001.jpg", "width": 50, "height": 40},
        {"id": 2, "file_name": "VOC2007/JPEGImages/000002.jpg", "width": 30, "height": 30},
    ]
    anns = [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"], a["difficult"]) for a in coco["annotations"]]
    assert anns == [
        (1, 12, [0, 0, 10, 20], 0, 0),   # dog: (1,1)-(10,20) inclusive -> 10x20 from (0,0)
        (1, 15, [4, 5, 21, 25], 0, 1),   # person, difficult kept
        (2, 7, [2, 3, 11, 11], 0, 0),    # car
    ]
    assert [a["area"] for a in coco["annotations"]] == [200, 525, 121]
    assert len({a["id"] for a in coco["annotations"]}) == 3


def test_voc_skip_difficult_and_year_folder(devkit):
    coco = voc_to_coco(devkit / "VOC2007", skip_difficult=True)
    assert [a["category_id"] for a in coco["annotations"]] == [12, 7]
    assert coco["images"][0]["file_name"] == "VOC2007/JPEGImages/000001.jpg"


def test_voc_multiple_years_unique_ids(devkit):
    make_voc_year(devkit, 2012, {"2012_000003": (20, 20, [("cat", 0, (1, 1, 20, 20))])})
    coco = voc_to_coco(devkit)
    assert [i["id"] for i in coco["images"]] == [1, 2, 3]
    assert coco["images"][2]["file_name"] == "VOC2012/JPEGImages/2012_000003.jpg"
    assert coco["annotations"][-1]["bbox"] == [0, 0, 20, 20]
    assert [i["id"] for i in voc_to_coco(devkit, years=["2012"])["images"]] == [1]


def test_voc_errors(devkit):
    with pytest.raises(FileNotFoundError, match="test.txt"):
        voc_to_coco(devkit, image_set="test")
    with pytest.raises(FileNotFoundError, match="VOC2010"):
        voc_to_coco(devkit, years=["2010"])
    with pytest.raises(FileNotFoundError, match="missing_root"):
        voc_to_coco(devkit / "missing_root")
    (devkit / "VOC2007/Annotations/000002.xml").write_text(voc_xml(30, 30, [("unicorn", 0, (1, 1, 5, 5))]))
    with pytest.raises(ValueError, match=r"000002\.xml.*unicorn"):
        voc_to_coco(devkit)


def test_voc_json_loads_in_dataset(devkit, tmp_path):
    out = tmp_path / "voc.json"
    voc_to_coco(devkit, out_json=out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing should be dropped
        ds = CocoDetection(devkit, out)
    assert ds.num_classes == 20 and ds.class_names[0] == "aeroplane"
    image, target = ds[0]
    assert image.shape == (3, 40, 50)
    assert target["boxes"].tolist() == [[0.0, 0.0, 10.0, 20.0], [4.0, 5.0, 25.0, 30.0]]
    assert target["labels"].tolist() == [12, 15]  # all 20 categories present, so label == VOC id
    assert ds[1][1]["boxes"].tolist() == [[2.0, 3.0, 13.0, 14.0]]
    assert not math.isnan(target["boxes"].sum().item())


def test_annotation_for_an_image_that_does_not_exist(coco_dir):
    root, _ = coco_dir
    data = json.loads(json.dumps(COCO_DICT))
    data["annotations"][0]["image_id"] = 404
    (root / "orphan.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"orphan\.json: annotation 1 has image_id 404 that is not in 'images'"):
        CocoDetection(root / "img", root / "orphan.json")


def test_image_size_that_disagrees_with_the_json(coco_dir):
    root, _ = coco_dir
    data = json.loads(json.dumps(COCO_DICT))
    data["images"][1]["width"] = 41  # rgb.png is 40 x 30
    (root / "sizes.json").write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(root / "img", root / "sizes.json")
    with pytest.raises(ValueError, match=r"rgb\.png: image is 40x30 but .*sizes\.json says 41x30"):
        ds[ds.ids.index(1)]


def test_cache_images_reads_each_file_once(coco_dir):
    """With ``cache_images`` an image equals the uncached read, comes back after its file is gone
    (read once), and a caller writing into it cannot change the next read."""
    root, _ = coco_dir
    plain = make_dataset(coco_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cached = CocoDetection(root / "img", root / "ann.json", cache_images=True)
    first = [cached[i][0].clone() for i in range(len(cached))]
    for i in range(len(cached)):
        assert torch.equal(first[i], plain[i][0])
    cached[0][0].mul_(0)  # a transform writing in place
    for name in ("rgb.png", "grey.png", "rgba.png"):
        (root / "img" / name).unlink()
    for i in range(len(cached)):
        image = cached[i][0]
        assert isinstance(image, tv_tensors.Image) and torch.equal(image, first[i])
    with pytest.raises(BadImageError, match="not found"):
        plain[0]
