"""Backbone pretraining (`rmkd pretrain`): object crops and their classes, the detector's reading
of an image, and weights that load into the detector's body."""

import json

import torch

from rmkd.cli import main as cli_main
from rmkd.config import load_config
from rmkd.models import build_detector
from rmkd.pretrain import object_crops, pretrain_backbone, square_boxes


def test_square_boxes_and_object_crops():
    """Squares centred on each box with 1.25x its longer side (a float64 loop); each crop is
    cut from its own image around its own box, and labels 1..K become class indices 0..K-1."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(6, 2, generator=g, dtype=torch.float64) * 30
    boxes = torch.cat([xy, xy + 4 + torch.rand(6, 2, generator=g, dtype=torch.float64) * 20], dim=1)
    squares = square_boxes(boxes)
    for box, sq in zip(boxes.tolist(), squares.tolist()):
        side = 1.25 * max(box[2] - box[0], box[3] - box[1])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        assert torch.allclose(torch.tensor(sq, dtype=torch.float64), torch.tensor([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2],
                                                             dtype=torch.float64))
    images = torch.zeros(2, 3, 64, 64)
    images[0, :, 10:30, 10:30] = 1.0  # object of image 0
    images[1, :, 40:60, 5:25] = 2.0  # object of image 1
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.tensor([[5.0, 40.0, 25.0, 60.0]]), "labels": torch.tensor([10])}]
    crops, labels = object_crops(images, targets, 8)
    assert crops.shape == (2, 3, 8, 8) and labels.tolist() == [2, 9]
    assert crops[0, :, 4, 4].eq(1.0).all() and crops[1, :, 4, 4].eq(2.0).all()  # centres: each its own object
    assert crops[0, :, 0, 0].lt(0.5).all() and crops[1, :, 0, 0].lt(1.0).all()  # corners: the context around it


def test_pretrained_weights_load_into_the_detectors_body(tmp_path, tiny_overrides):
    """A few steps on the tiny set: the saved state has no classifier, moved away from its
    initialisation, loads into the detector's backbone unchanged, and the summary scores val."""
    out = str(tmp_path / "r10.pt")
    # through the command line, `rmkd pretrain`
    assert cli_main(["pretrain", "--config", "configs/student.yaml", "--steps", "4", "--out", out, "--no-progress",
                     "--set", *tiny_overrides, "model.backbone=resnet10", "train.lr=0.01"]) == 0
    summary = json.load(open(out + ".json"))
    state = torch.load(out, weights_only=True)
    assert not [k for k in state if k.startswith("fc.")]
    # the same seed at a learning rate of almost 0 keeps the initialisation: training moved the weights
    still = load_config("configs/student.yaml", tiny_overrides + ["model.backbone=resnet10", "train.lr=1e-12"])
    pretrain_backbone(still, str(tmp_path / "still.pt"), steps=4, progress=False)
    init = torch.load(tmp_path / "still.pt", weights_only=True)["conv1.weight"]
    assert (state["conv1.weight"] - init).abs().max() > 1e-3
    model = build_detector("retinanet", "resnet10", 10, fpn_channels=16, min_level=2, image_size=64, weights_backbone=out)
    for key in ("conv1.weight", "layer4.0.conv2.weight", "layer2.0.bn1.running_mean"):
        layer, rest = key.split(".", 1)
        assert torch.equal(model.backbone.body[layer].state_dict()[rest], state[key]), key
    assert summary["steps"] == 4 and 0.0 <= summary["val_accuracy"] <= 1.0


def test_bad_input_is_one_line(tmp_path):
    import subprocess
    import sys

    for args, named in ((["--steps", "0"], "--steps"), (["--set", "model.backbone=resnet9"], "resnet9")):
        r = subprocess.run([sys.executable, "-m", "rmkd.cli", "pretrain", "--config", "configs/student.yaml",
                            "--out", str(tmp_path / "w.pt"), *args], capture_output=True, text=True)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert r.stderr.strip().count("\n") == 0 and named in r.stderr, r.stderr


def test_weights_backbone_pretrain_is_made_on_first_use(tmp_path, tiny_overrides, monkeypatch):
    """``model.weights_backbone: pretrain``: building the detector before the file exists is a
    one-line error naming the command; ``rmkd train`` pretrains first, into the file named for the
    config, and the frozen body trains with exactly those weights; the file does not depend on
    the detector's head; a checkpoint loads without it."""
    import os

    import pytest

    from rmkd.config import ConfigError, pretrained_backbone_file
    from rmkd.run import build_model, load_model, train

    monkeypatch.chdir(tmp_path)  # the cache lives under ./data/cache/pretrain
    sets = tiny_overrides + ["model.backbone=resnet10", "model.weights_backbone=pretrain", "model.pretrain_steps=3",
                             "model.trainable_layers=0", "model.norm=frozen_bn", "model.body_cache=64",
                             "model.head_norm=none", "train.max_steps=2"]
    cfg = load_config(None, sets)
    path = pretrained_backbone_file(cfg)
    with pytest.raises(ConfigError, match="is not made yet: run `rmkd pretrain") as e:
        build_model(cfg)
    assert "\n" not in str(e.value) and path in str(e.value)
    train(cfg, str(tmp_path / "run"), progress=False)
    state = torch.load(path, weights_only=True)
    assert json.load(open(path + ".json"))["steps"] == 3
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    for key in ("conv1.weight", "layer4.0.conv2.weight", "layer2.0.bn1.running_mean"):
        assert torch.equal(trained[f"backbone.body.{key}"], state[key]), key
    # a second run, the file now made: the same run to the last weight (pretraining on first use
    # draws from the RNG, so the run must be seeded after it)
    train(cfg, str(tmp_path / "again"), progress=False)
    again_run = torch.load(tmp_path / "again" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(trained[k], again_run[k]) for k in trained)
    # the same pretraining for a detector with another head and FPN: the same weights
    other = load_config(None, sets + ["model.head_norm=gn", "model.fpn_channels=8", "model.head_convs=2"])
    assert pretrained_backbone_file(other) == path
    pretrain_backbone(other, str(tmp_path / "other.pt"), steps=3, progress=False)
    again = torch.load(tmp_path / "other.pt", weights_only=True)
    assert all(torch.equal(state[k], again[k]) for k in state)
    os.remove(path)
    model, _ = load_model(str(tmp_path / "run" / "last.pt"))
    assert torch.equal(model.backbone.body.conv1.weight, state["conv1.weight"])
