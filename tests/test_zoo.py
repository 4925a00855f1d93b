"""torchvision's COCO detectors imported as rmkd teachers give torchvision's own outputs."""

import pytest
import torch

from rmkd.cli import main
from rmkd.models import dense_forward, postprocess
from rmkd.models.zoo import COCO_CATEGORY_IDS, TEACHERS, teacher_config
from rmkd.run import load_model


@pytest.mark.parametrize("name", list(TEACHERS))
def test_imported_teacher_equals_torchvision(name, tmp_path, capsys):
    builder = TEACHERS[name][0]
    torch.manual_seed(0)
    tv = builder(weights=None, weights_backbone=None, num_classes=91).eval()
    head = tv.head.classification_head.cls_logits
    with torch.no_grad():
        # fresh heads score every anchor alike: spread the logits, and keep the 11 unused
        # ids and background out of the detections as trained COCO weights do
        torch.nn.init.normal_(head.weight, std=0.5)
        unused = [c for c in range(91) if c not in COCO_CATEGORY_IDS]
        head.bias.view(-1, 91)[:, unused] = -50.0
    weights = tmp_path / "tv.pt"
    torch.save(tv.state_dict(), weights)
    out = tmp_path / "teacher.pt"
    assert main(["import-teacher", name, "--weights", str(weights), "--out", str(out)]) == 0
    assert "80 classes" in capsys.readouterr().out
    ours, cfg = load_model(str(out))
    assert cfg.model.num_classes == 80 and cfg.model.family == TEACHERS[name][2]
    if cfg.model.family == "retinanet":  # torchvision's rounded anchor sizes
        assert ours.anchor_generator.sizes == tv.anchor_generator.sizes
    for m in (tv, ours):  # a small input keeps the test fast; the same for both
        m.transform.min_size, m.transform.max_size = (160,), 224
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 120, 160, generator=g), torch.rand(3, 150, 100, generator=g)]
    with torch.no_grad():
        expected = tv(images)
        dense = dense_forward(ours, images)
        got = postprocess(ours, dense)
        tv_cls = tv.head(list(tv.backbone(tv.transform(images)[0].tensors).values()))["cls_logits"]
    # the head's class slots: ours l <-> torchvision's COCO id of l
    torch.testing.assert_close(dense.head_outputs["cls_logits"][..., 1:], tv_cls[..., COCO_CATEGORY_IDS], rtol=0, atol=0)
    for e, o in zip(expected, got):
        assert len(e["boxes"]) > 0
        torch.testing.assert_close(o["boxes"], e["boxes"])
        torch.testing.assert_close(o["scores"], e["scores"])
        assert torch.equal(torch.tensor(COCO_CATEGORY_IDS)[o["labels"] - 1], e["labels"])


def test_unknown_teacher_and_missing_weights_are_one_line(tmp_path, capsys):
    assert main(["import-teacher", "retinanet_resnet50_fpn", "--weights", str(tmp_path / "no.pt"), "--out", str(tmp_path / "t.pt")]) == 2
    assert "no.pt" in capsys.readouterr().err
    with pytest.raises(ValueError, match="choose one of"):
        teacher_config("yolo")


def test_imported_retinanet_pairs_with_the_r18_recipe(tmp_path):
    """README: torchvision's RetinaNet R50 as the teacher of configs/coco/retinanet_r50_r18_1x.yaml."""
    from rmkd.config import load_config
    from rmkd.distill import Distiller
    from rmkd.models.zoo import import_torchvision
    from rmkd.run import build_model

    tv = TEACHERS["retinanet_resnet50_fpn"][0](weights=None, weights_backbone=None, num_classes=91)
    torch.save(tv.state_dict(), tmp_path / "tv.pt")
    import_torchvision("retinanet_resnet50_fpn", str(tmp_path / "t.pt"), weights=str(tmp_path / "tv.pt"))
    teacher, _ = load_model(str(tmp_path / "t.pt"))
    from pathlib import Path

    recipe = Path(__file__).resolve().parent.parent / "configs" / "coco" / "retinanet_r50_r18_1x.yaml"
    student = build_model(load_config(recipe, ["model.weights_backbone=null", "model.anchor_floor=true"]))
    Distiller(teacher, student)  # pairs: same anchors, classes and input size
    from rmkd.distill import PairingError

    with pytest.raises(PairingError, match="anchor"):  # without the flag the sizes differ (40.3 vs 40)
        Distiller(teacher, build_model(load_config(recipe, ["model.weights_backbone=null"])))
