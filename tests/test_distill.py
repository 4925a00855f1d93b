"""rmkd.candidates and rmkd.distill: candidates, masks, and the Distiller's guarantees."""

import copy

import pytest
import torch
from torchvision.ops import box_iou

from rmkd import candidates as C
from rmkd.distill import TERMS, Distiller, PairingError
from rmkd.models import build_detector, dense_forward

K = 4
ANCHORS = dict(anchor_sizes=(12, 24, 48, 96, 160), scales_per_octave=2, aspect_ratios=(1.0, 1.5), image_size=64)


def _pair(family="retinanet", **student_kw):
    torch.manual_seed(0)
    kw = ANCHORS if family == "retinanet" else {"image_size": 64}
    teacher = build_detector(family, "resnet18", K, fpn_channels=64, head_convs=2, **kw)
    student = build_detector(family, "resnet18", K, fpn_channels=32, head_convs=1, **{**kw, **student_kw})
    return teacher, student


def _batch():
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(3)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 50.0, 60.0], [40.0, 40.0, 60.0, 62.0]]), "labels": torch.tensor([1, 4, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[10.0, 12.0, 26.0, 34.0]]), "labels": torch.tensor([3])},
    ]
    return images, targets


def test_candidates_match_the_assignment_loop():
    _, student = _pair()
    images, targets = _batch()
    dense = dense_forward(student.train(), images, targets)
    c = C.positive_candidates(dense)
    expected = []
    for b, assign in enumerate(dense.assignment):
        for n in range(len(assign)):
            if assign[n] >= 0:
                g = int(assign[n])
                expected.append((b, n, g, int(dense.targets[b]["labels"][g])))
    got = list(zip(c.batch.tolist(), c.anchor.tolist(), c.gt.tolist(), c.label.tolist()))
    assert sorted(got) == sorted(expected) and len(got) > 0
    # one instance id per (image, gt), distinct across images
    pairs = {(b, g) for b, _, g, _ in got}
    assert len(set(c.instance.tolist())) == len(pairs)
    cls = C.candidate_scores(student, dense, c, "cls", "logit")
    for i, (b, n, g, label) in enumerate(got):
        assert cls[i] == dense.cls_flat[b, n, label - 1]
    prob = C.candidate_scores(student, dense, c, "cls", "prob")
    torch.testing.assert_close(prob, cls.sigmoid())


def test_iou_scores_equal_box_iou():
    _, student = _pair()
    images, targets = _batch()
    dense = dense_forward(student.train(), images, targets)
    c = C.positive_candidates(dense)
    iou = C.candidate_scores(student, dense, c, "iou", "prob")
    boxes = C.decode_boxes(student, dense, c)
    for i in range(len(iou)):
        assert iou[i].item() == pytest.approx(box_iou(boxes[i : i + 1], c.gt_box[i : i + 1]).item(), abs=1e-6)
    assert ((iou >= 0) & (iou <= 1)).all()


def _loop_masks(dense, psi=0.5):
    """Per-location masks written one location at a time."""
    A = dense.num_anchors
    out = {"pos": [], "neg": [], "gt": [], "fgfi": []}
    anchors = dense.anchors[0]
    offset = 0
    for h, w in dense.level_sizes:
        B = len(dense.assignment)
        masks = {k: torch.zeros(B, h, w, dtype=torch.bool) for k in out}
        for b in range(B):
            boxes = dense.targets[b]["boxes"]
            ious = box_iou(anchors, boxes) if len(boxes) else torch.zeros(len(anchors), 0)
            best = ious.max(dim=0).values if len(boxes) else None
            for y in range(h):
                for x in range(w):
                    idx = [offset + (y * w + x) * A + a for a in range(A)]
                    assign = dense.assignment[b][idx]
                    masks["pos"][b, y, x] = bool((assign >= 0).any())
                    masks["neg"][b, y, x] = bool((assign == -1).all())
                    cx, cy = ((anchors[idx[0], :2] + anchors[idx[0], 2:]) / 2).tolist()
                    masks["gt"][b, y, x] = any(x0 < cx < x1 and y0 < cy < y1 for x0, y0, x1, y1 in boxes.tolist())
                    masks["fgfi"][b, y, x] = bool(len(boxes)) and bool((ious[idx] > psi * best).any())
        for k in out:
            out[k].append(masks[k])
        offset += h * w * A
    return out


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_masks_equal_loops(family):
    _, student = _pair(family)
    images, targets = _batch()
    dense = dense_forward(student.train(), images, targets)
    ref = _loop_masks(dense)
    for name, fn in (("pos", C.positive_mask), ("neg", C.negative_mask), ("gt", C.gt_mask), ("fgfi", C.fgfi_mask)):
        got = fn(dense)
        for level, (a, b) in enumerate(zip(got, ref[name])):
            assert torch.equal(a, b), (name, level)
    assert C.positive_mask(dense)[0].any() and C.gt_mask(dense)[0].any()


def test_distiller_gradients_and_frozen_teacher():
    teacher, student = _pair()
    before = copy.deepcopy(teacher.state_dict())
    weights = {term: 1.0 for term in TERMS}
    d = Distiller(teacher, student, weights, rm_score="cls+iou")
    # the optimiser sees the student and the adapters, never the teacher
    names = [n for n, _ in d.named_parameters()]
    assert names and all(n.startswith(("student.", "adapters.")) for n in names)
    assert any(n.startswith("adapters.") for n in names)  # 32 -> 64 channels: 1x1 convs
    assert not any(k.startswith("teacher") for k in d.state_dict())
    d.train()
    assert not teacher.training and student.training
    opt = torch.optim.SGD(d.parameters(), lr=0.1)
    images, targets = _batch()
    losses = d(images, targets)
    assert set(TERMS) <= set(losses) and {"classification", "bbox_regression"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    for term in TERMS:  # each term on its own reaches the student
        d.zero_grad()
        losses = d(images, targets)
        losses[term].backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, term
    assert all(p.grad is None for p in teacher.parameters())
    d.zero_grad()
    sum(d(images, targets).values()).backward()
    assert all(p.grad is not None for p in d.adapters.parameters())
    opt.step()
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN buffers bit-identical


def test_zero_weights_give_the_students_own_losses():
    teacher, student = _pair()
    images, targets = _batch()
    d = Distiller(teacher, student, {term: 0.0 for term in TERMS}).train()
    got = d(images, targets)
    reference = dense_forward(student, images, targets).losses
    assert got.keys() == reference.keys()
    for k in got:
        torch.testing.assert_close(got[k], reference[k])


def test_weights_scale_terms():
    teacher, student = _pair()
    images, targets = _batch()
    one = Distiller(teacher, student, {"rm": 1.0, "pfi": 1.0}).train()(images, targets)
    two = Distiller(teacher, student, {"rm": 2.0, "pfi": 3.0}).train()(images, targets)
    torch.testing.assert_close(two["rm"], 2 * one["rm"])
    torch.testing.assert_close(two["pfi"], 3 * one["pfi"])


def test_pairing_errors():
    teacher, _ = _pair()
    with pytest.raises(PairingError, match="classes"):
        Distiller(teacher, build_detector("retinanet", "resnet18", K + 1, fpn_channels=32, **ANCHORS))
    with pytest.raises(PairingError, match="anchor"):
        Distiller(teacher, build_detector("retinanet", "resnet18", K, fpn_channels=32, **{**ANCHORS, "aspect_ratios": (1.0,)}))
    with pytest.raises(PairingError, match="fcos"):
        Distiller(teacher, build_detector("fcos", "resnet18", K, fpn_channels=32, image_size=64))
    with pytest.raises(PairingError, match="input sizes"):
        Distiller(teacher, build_detector("retinanet", "resnet18", K, fpn_channels=32, **{**ANCHORS, "image_size": 96}))
    low = getattr(teacher, "rmkd_min_level", 3)
    with pytest.raises(PairingError, match="FPN levels differ"):  # same anchors, but on other strides
        Distiller(teacher, build_detector("retinanet", "resnet18", K, fpn_channels=32, **{**ANCHORS, "min_level": 5 - low}))
    with pytest.raises(ValueError, match="unknown distillation terms"):
        Distiller(teacher, _pair()[1], {"rank": 1.0})


@pytest.mark.parametrize("bias", [0.0, 50.0, -50.0])
def test_distiller_is_finite_without_objects_and_at_extreme_logits(bias):
    """Every KD term (and its gradient) stays finite for a batch with no objects at all
    (no candidates: RM is exactly 0) and when the student's logits sit at +-50."""
    teacher, student = _pair()
    with torch.no_grad():
        student.head.classification_head.cls_logits.bias.fill_(bias)
    d = Distiller(teacher, student, {term: 1.0 for term in TERMS}, rm_score="cls+iou").train()
    images, targets = _batch()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in images]
    for batch_targets in (empty, targets):
        d.zero_grad()
        losses = d(images, batch_targets)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        sum(losses.values()).backward()
        assert all(torch.isfinite(p.grad).all() for p in d.parameters() if p.grad is not None)
        if batch_targets is empty:
            assert losses["rm"] == 0 and losses["fi_positive"] == 0 and losses["fi_gt"] == 0


def test_teacher_sees_the_students_input_also_at_random_training_sizes():
    """The Distiller transforms once (the student's transform) and feeds that batch to both.
    Single-scale this changes nothing: the teacher's outputs equal its own dense forward.
    With model.train_sizes the student draws a short side per image; the teacher follows."""
    teacher, student = _pair()
    images, targets = _batch()
    d = Distiller(teacher, student, {"rm": 1.0, "pfi": 1.0}).train()
    seen = []
    import rmkd.distill as D

    def spy(model, imgs, tg=None, losses=True, transformed=None):
        out = dense_forward(model, imgs, tg, losses, transformed)
        seen.append(out)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(D, "dense_forward", spy)
        d(images, targets)
    t, s = seen
    own = dense_forward(teacher, images)
    for a, b in zip(t.features, own.features):
        assert torch.equal(a, b)
    assert torch.equal(t.cls_flat, own.cls_flat)

    _, ms_student = _pair(train_sizes=(40, 48, 56))
    assert ms_student.transform.min_size == (40, 48, 56, 64)  # evaluation size last
    d = Distiller(teacher, ms_student, {"rm": 1.0, "pfi": 1.0}).train()
    sizes = set()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(D, "dense_forward", spy)
        for seed in range(4):
            torch.manual_seed(seed)
            seen.clear()
            losses = d(images, targets)
            t, s = seen
            assert t.image_sizes == s.image_sizes and t.level_sizes == s.level_sizes
            assert all(torch.isfinite(v) for v in losses.values())
            sizes |= {min(h, w) for h, w in s.image_sizes}
    assert sizes - {64}  # some batches were trained at another size
