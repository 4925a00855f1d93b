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
