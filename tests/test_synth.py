"""Tests for the embedded digits-on-photos COCO data set (rmkd.data.synth)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from rmkd.data import synth
from rmkd.data.synth import digit_split_indices, make_synthetic

SMALL = dict(num_train=20, num_val=8, image_size=64, min_digit_size=12, max_digit_size=40,
             progress=False)


def _pixels(split):
    files = sorted(f for f in os.listdir(split["images"]) if f.endswith(".png"))
    return [np.asarray(Image.open(os.path.join(split["images"], f))) for f in files]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_synthetic(str(tmp_path_factory.mktemp("digits")), seed=0, **SMALL)


def test_layout_and_return_value(small):
    root = os.path.dirname(small["train"]["images"])
    assert small["num_classes"] == 10
    for split, n in (("train", 20), ("val", 8)):
        assert small[split]["images"] == os.path.join(root, split)
        assert small[split]["annotations"] == os.path.join(root, "annotations", f"{split}.json")
        assert sorted(os.listdir(small[split]["images"])) == [f"{i:06d}.png" for i in range(n)]
    meta = json.loads(_read(os.path.join(root, "meta.json")))
    assert meta["num_train"] == 20 and meta["seed"] == 0 and meta["contrast"] == [0.6, 1.0]


def test_determinism(small, tmp_path):
    again = make_synthetic(str(tmp_path / "again"), seed=0, **SMALL)
    other = make_synthetic(str(tmp_path / "other"), seed=1, **SMALL)
    for split in ("train", "val"):
        assert _read(small[split]["annotations"]) == _read(again[split]["annotations"])
        a, b, c = _pixels(small[split]), _pixels(again[split]), _pixels(other[split])
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert not all(np.array_equal(x, y) for x, y in zip(a, c))
        assert _read(small[split]["annotations"]) != _read(other[split]["annotations"])


def test_coco_format(small):
    from pycocotools.coco import COCO
    for split, n in (("train", 20), ("val", 8)):
        coco = COCO(small[split]["annotations"])
        cats = coco.loadCats(coco.getCatIds())
        assert [c["id"] for c in cats] == list(range(1, 11))
        assert [c["name"] for c in cats] == [str(d) for d in range(10)]
        assert sorted(coco.getImgIds()) == list(range(1, n + 1))
        anns = coco.loadAnns(coco.getAnnIds())
        assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
        assert len(anns) >= n  # min_digits=1: only the rare empty image has none
        for img in coco.loadImgs(coco.getImgIds()):
            assert (img["width"], img["height"]) == (64, 64)
            assert Image.open(os.path.join(small[split]["images"], img["file_name"])).size == (64, 64)
        for a in anns:
            assert 1 <= a["category_id"] <= 10 and a["iscrowd"] == 0
            assert all(isinstance(v, float) for v in a["bbox"])
            assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
        assert max(len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()) <= 4


def test_boxes_inside_and_sized(small):
    # The box is the ink extent of the glyph, which can be a bit shorter than the
    # sampled digit height (the glyph's top/bottom rows fade out), hence the 0.5
    # tolerance on the lower bound; width can be small for a "1", so only > 0.
    for split in ("train", "val"):
        coco = json.loads(_read(small[split]["annotations"]))
        heights = []
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
            assert 0.5 * 12 <= h <= 40 and w <= 40
            heights.append(h)
        assert max(heights) - min(heights) >= 8  # a spread of sizes, not one size


def test_handwriting_split_disjoint(small):
    from sklearn.datasets import load_digits
    train_idx, val_idx = digit_split_indices()
    assert set(train_idx).isdisjoint(val_idx) and len(train_idx) + len(val_idx) == 1797
    labels = load_digits().target
    used = {}
    for split in ("train", "val"):
        anns = json.loads(_read(small[split]["annotations"]))["annotations"]
        used[split] = {a["digit_index"] for a in anns}
        for a in anns:  # the category is the label of the handwriting sample drawn
            assert a["category_id"] == labels[a["digit_index"]] + 1
    assert used["train"] <= set(train_idx.tolist())
    assert used["val"] <= set(val_idx.tolist())
    assert used["train"].isdisjoint(used["val"])


def test_digits_are_drawn(tmp_path):
    # Rebuild the background of the first train image from the same random stream
    # (the background is drawn first), then check that pixels change inside the
    # digit boxes and, apart from the mild pixel noise, nowhere else.
    photos = synth._load_photos()
    checked = 0
    for seed in range(6):
        out = make_synthetic(str(tmp_path / str(seed)), seed=seed, num_train=1, num_val=1,
                             progress=False)
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
        bg = synth._background(rng, photos, 64, 0.25) * 255
        img = _pixels(out["train"])[0].astype(np.float32)
        changed = np.abs(img - bg).max(axis=2) > 25  # pixel noise sigma <= 0.03*255
        inside = np.zeros((64, 64), bool)
        anns = json.loads(_read(out["train"]["annotations"]))["annotations"]
        for a in anns:
            x, y, w, h = (int(v) for v in a["bbox"])
            inside[y:y + h, x:x + w] = True
            assert changed[y:y + h, x:x + w].mean() > 0.1
            checked += 1
        assert changed[~inside].mean() < 0.01
    assert checked >= 6


def test_cache_and_param_mismatch(tmp_path):
    out_dir = str(tmp_path / "cache")
    first = make_synthetic(out_dir, **SMALL)
    paths = [os.path.join(out_dir, "meta.json"), first["train"]["annotations"],
             os.path.join(first["train"]["images"], "000000.png")]
    before = [os.stat(p).st_mtime_ns for p in paths]
    assert make_synthetic(out_dir, **SMALL) == first
    assert [os.stat(p).st_mtime_ns for p in paths] == before  # nothing rewritten
    changed = dict(SMALL, num_train=10)
    with pytest.raises(ValueError, match="other parameters.*overwrite=True"):
        make_synthetic(out_dir, **changed)
    with pytest.raises(ValueError, match="other parameters"):
        make_synthetic(out_dir, seed=3, **SMALL)
    make_synthetic(out_dir, overwrite=True, **changed)
    assert len(os.listdir(first["train"]["images"])) == 10  # stale images removed
    assert json.loads(_read(paths[0]))["num_train"] == 10


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_train=0), "num_train"),
    (dict(num_val=0), "num_val"),
    (dict(min_digit_size=30, max_digit_size=20), "min_digit_size"),
    (dict(max_digit_size=80), "max_digit_size"),
    (dict(min_digits=3, max_digits=2), "max_digits"),
    (dict(min_digits=-1), "min_digits"),
    (dict(noise_fraction=1.5), "noise_fraction"),
    (dict(contrast=(0.8, 0.3)), "contrast"),
    (dict(image_size=8, min_digit_size=6, max_digit_size=8), "image_size"),
])
def test_bad_arguments(tmp_path, kwargs, name):
    args = dict(SMALL, **kwargs)
    with pytest.raises(ValueError, match=name):
        make_synthetic(str(tmp_path / "bad"), **args)
    assert not os.path.exists(tmp_path / "bad")  # validated before touching the disk
