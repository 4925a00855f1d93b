import contextlib
import copy
import io
import json
import math

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rmkd.evaluate import coco_map, detections_to_coco

# Two 200x200 images; one small (<32^2), one medium and one large box, two categories.
GT = {
    "images": [{"id": 10, "file_name": "a.jpg", "width": 200, "height": 200},
               {"id": 20, "file_name": "b.jpg", "width": 200, "height": 200}],
    "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 7, "bbox": [50, 50, 60, 40], "area": 2400, "iscrowd": 0},
        {"id": 3, "image_id": 20, "category_id": 7, "bbox": [0, 0, 150, 120], "area": 18000, "iscrowd": 0},
    ],
}


def perfect():
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.9}
            for a in GT["annotations"]]


def imperfect():
    return [
        {"image_id": 10, "category_id": 3, "bbox": [12, 11, 20, 20], "score": 0.8},
        {"image_id": 10, "category_id": 7, "bbox": [55, 50, 60, 40], "score": 0.9},
        {"image_id": 10, "category_id": 7, "bbox": [0, 0, 30, 30], "score": 0.95},  # false positive
        {"image_id": 20, "category_id": 7, "bbox": [0, 10, 150, 120], "score": 0.7},
        {"image_id": 20, "category_id": 3, "bbox": [0, 0, 150, 120], "score": 0.3},  # wrong class
    ]


def reference(gt_dict, dets):
    """Plain pycocotools run, as its README does it."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(gt_dict)
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:6]]


def same(a, b):
    return (math.isnan(a) and b == -1) or a == pytest.approx(b, abs=1e-12)


def test_matches_direct_cocoeval(tmp_path):
    ref = reference(GT, imperfect())
    got = coco_map(GT, imperfect())
    assert list(got) == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert all(isinstance(v, float) for v in got.values())
    assert all(same(g, r) for g, r in zip(got.values(), ref)), (got, ref)
    assert 0 < got["AP"] < 1
    # same numbers from a json path, a COCO object and a detections json path
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "dt.json").write_text(json.dumps(imperfect()))
    with contextlib.redirect_stdout(io.StringIO()):
        gt_obj = COCO(str(tmp_path / "gt.json"))
    assert coco_map(tmp_path / "gt.json", tmp_path / "dt.json") == got
    assert coco_map(gt_obj, imperfect()) == got


def test_inputs_not_mutated():
    gt, dets = copy.deepcopy(GT), imperfect()
    coco_map(gt, dets)
    assert gt == GT and dets == imperfect()


def test_perfect_detections():
    got = coco_map(GT, perfect())
    # pycocotools averages 101 recall points, so 1.0 comes back with float rounding
    assert got == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "APs": 1.0, "APm": 1.0, "APl": 1.0})


def test_shifted_box_lowers_ap():
    dets = perfect()
    dets[2]["bbox"] = [25, 0, 150, 120]  # large box shifted right: IoU 15000/21000 = 0.71
    got = coco_map(GT, dets)
    assert got["AP"] < 0.99 and got["APl"] < 0.99
    assert got["AP50"] == pytest.approx(1.0) and got["AP75"] < 0.99
    assert got["APs"] == pytest.approx(1.0) and got["APm"] == pytest.approx(1.0)


def test_empty_detections():
    assert coco_map(GT, []) == {k: 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}


def test_no_gt_in_size_range_is_nan():
    gt = copy.deepcopy(GT)
    gt["annotations"] = gt["annotations"][2:]  # only the large box
    got = coco_map(gt, [])
    assert got["AP"] == 0.0 and got["APl"] == 0.0
    assert math.isnan(got["APs"]) and math.isnan(got["APm"])
    got = coco_map(gt, perfect()[2:])
    assert got["AP"] == pytest.approx(1.0) and math.isnan(got["APs"])


def test_unknown_ids_raise():
    dets = perfect() + [{"image_id": 999, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(ValueError, match="999"):
        coco_map(GT, dets)
    dets = [{"image_id": 10, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(ValueError, match="category_id 1"):
        coco_map(GT, dets)


def test_missing_or_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.json"):
        coco_map(tmp_path / "gone.json", [])
    (tmp_path / "dt.json").write_text("[{]")
    with pytest.raises(ValueError, match=r"dt\.json"):
        coco_map(GT, tmp_path / "dt.json")


def test_detections_to_coco():
    outputs = [
        {"boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.123, 1.456, 5.789, 3.0]]),
         "scores": torch.tensor([0.9, 0.1234567]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    res = detections_to_coco([10, 20], outputs, {1: 3, 2: 7})
    assert res == [
        {"image_id": 10, "category_id": 3, "bbox": [10.0, 20.0, 30.0, 40.0], "score": pytest.approx(0.9)},
        {"image_id": 10, "category_id": 7, "bbox": [0.12, 1.46, 5.67, 1.54], "score": 0.12346},
    ]
    assert all(type(v) is float for r in res for v in r["bbox"] + [r["score"]])
    assert all(type(r["image_id"]) is int and type(r["category_id"]) is int for r in res)
    json.dumps(res)  # must be serialisable as is
    with pytest.raises(ValueError, match="label 5"):
        detections_to_coco([10], [{"boxes": [[0, 0, 1, 1]], "scores": [0.5], "labels": [5]}], {1: 3})
    with pytest.raises(ValueError, match="2 image ids but 1 outputs"):
        detections_to_coco([10, 20], outputs[:1], {1: 3, 2: 7})


def test_round_trip_perfect_outputs():
    """Detector-style outputs of the GT boxes, converted and evaluated, give AP 1."""
    by_image = {10: [], 20: []}
    for a in GT["annotations"]:
        x, y, w, h = a["bbox"]
        by_image[a["image_id"]].append(([x, y, x + w, y + h], {3: 1, 7: 2}[a["category_id"]]))
    outputs = [{"boxes": torch.tensor([b for b, _ in v], dtype=torch.float32),
                "scores": torch.ones(len(v)), "labels": torch.tensor([l for _, l in v])}
               for v in by_image.values()]
    res = detections_to_coco(list(by_image), outputs, {1: 3, 2: 7})
    assert coco_map(GT, res)["AP"] == pytest.approx(1.0)
