"""rmkd.models: torchvision detectors and the one dense forward."""

import pytest
import torch
from torchvision.ops import box_iou

from rmkd.models import build_detector, dense_forward, postprocess
from rmkd.models.build import detector_num_classes

K = 5
SMALL = dict(fpn_channels=32, head_convs=2, image_size=64)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 48, generator=g), torch.rand(3, 64, 64, generator=g)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1, K])},
        {"boxes": torch.tensor([[10.0, 10.0, 22.0, 30.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
    ]
    return images, targets


def _model(family, **kw):
    torch.manual_seed(0)
    anchors = dict(anchor_sizes=(12, 24, 48, 96, 160), scales_per_octave=2, aspect_ratios=(1.0, 1.5))
    return build_detector(family, "resnet18", K, **{**SMALL, **(anchors if family == "retinanet" else {}), **kw})


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_dense_losses_equal_torchvision_forward(family):
    model = _model(family).train()
    images, targets = _batch()
    dense = dense_forward(model, images, targets)
    reference = model(images, targets)
    assert set(dense.losses) == set(reference)
    for name, value in reference.items():
        torch.testing.assert_close(dense.losses[name], value, rtol=1e-6, atol=1e-7)
    # the losses carry gradient to the detector
    sum(dense.losses.values()).backward()
    assert model.head.classification_head.cls_logits.weight.grad.abs().sum() > 0
    # losses=False: the same assignment, no loss computed
    matching_only = dense_forward(model, images, targets, losses=False)
    assert matching_only.losses == {}
    assert all(torch.equal(a, b) for a, b in zip(matching_only.assignment, dense.assignment))


def test_retinanet_assignment_is_its_matcher():
    model = _model("retinanet").train()
    images, targets = _batch()
    dense = dense_forward(model, images, targets)
    for b, target in enumerate(dense.targets):
        if target["boxes"].numel():
            expected = model.proposal_matcher(box_iou(target["boxes"], dense.anchors[b]))
        else:
            expected = torch.full((dense.anchors[b].shape[0],), -1, dtype=torch.int64)
        assert torch.equal(dense.assignment[b], expected)
    values = torch.cat(dense.assignment)
    assert (values >= 0).any() and (values == -1).any() and (values == -2).any()
    assert (dense.assignment[2] == -1).all()  # no objects: all background


def test_fcos_assignment_marks_points_inside_their_box():
    model = _model("fcos").train()
    images, targets = _batch()
    dense = dense_forward(model, images, targets)
    for b, target in enumerate(dense.targets):
        pos = dense.assignment[b] >= 0
        if not target["boxes"].numel():
            assert not pos.any()
            continue
        assert pos.any()
        centers = (dense.anchors[b][pos, :2] + dense.anchors[b][pos, 2:]) / 2
        boxes = target["boxes"][dense.assignment[b][pos]]
        assert ((centers > boxes[:, :2]) & (centers < boxes[:, 2:])).all()


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_dense_shapes_and_layout(family):
    model = _model(family).eval()
    images, _ = _batch()
    with torch.no_grad():
        dense = dense_forward(model, images)
    A = dense.num_anchors
    assert dense.num_classes == K and dense.assignment is None and dense.losses == {}
    assert A == (4 if family == "retinanet" else 1)
    n_total = 0
    for level, (feat, cls, reg) in enumerate(zip(dense.features, dense.cls_logits, dense.bbox_regression)):
        B, C, H, W = feat.shape
        assert (B, C) == (3, 32)
        assert cls.shape == (B, A * K, H, W)
        assert reg.shape == (B, A * 4, H, W)
        # the map entry [b, a*K + k, y, x] is flat entry (y*W + x)*A + a, class slot k+1
        flat = dense.head_outputs["cls_logits"]
        b, a, k, y, x = 1, A - 1, K - 1, H - 1, 0
        assert cls[b, a * K + k, y, x] == flat[b, n_total + (y * W + x) * A + a, k + 1]
        n_total += H * W * A
    assert sum(dense.anchors_per_level) == n_total == dense.anchors[0].shape[0]
    assert [f.shape[-1] for f in dense.features] == [8, 4, 2, 1, 1]  # P3..P7 of a 64 px batch
    if family == "fcos":
        assert [c.shape[1] for c in dense.centerness] == [1] * 5
    else:
        assert dense.centerness is None


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_postprocess_equals_torchvision_eval(family):
    model = _model(family, score_thresh=0.0).eval()
    images, _ = _batch(1)
    with torch.no_grad():
        # an untrained head may score the unused background slot 0: we never report it
        ours = postprocess(model, dense_forward(model, images))
        assert all(len(o["labels"]) and o["labels"].min() >= 1 and o["labels"].max() <= K for o in ours)
        # where slot 0 is off (as training makes it), our detections are torchvision's exactly
        model.head.classification_head.cls_logits.bias[0::K + 1] = -100.0
        ours = postprocess(model, dense_forward(model, images))
        reference = model(images)
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert a["boxes"].shape[0] > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])


def test_build_options_and_errors(tmp_path):
    model = build_detector("retinanet", "resnet18", 7, fpn_channels=64, head_convs=3, image_size=(64, 96))
    assert detector_num_classes(model) == 7
    assert len(model.head.classification_head.conv) == 3 and len(model.head.regression_head.conv) == 3
    assert model.transform.min_size == (64,) and model.transform.max_size == 96
    assert model.backbone.out_channels == 64
    # trainable BatchNorm in the backbone when training from scratch
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)
    plain = build_detector("retinanet", "resnet18", 7, fpn_channels=32, head_convs=2, head_norm="none")
    convs = [m for m in plain.head.classification_head.conv.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 and not any(isinstance(m, torch.nn.GroupNorm) for m in plain.head.modules())
    with pytest.raises(ValueError, match="head_norm"):
        build_detector("retinanet", "resnet18", 3, head_norm="bn")
    with pytest.raises(ValueError, match="family"):
        build_detector("yolo", "resnet18", 3)
    with pytest.raises(ValueError, match="backbone"):
        build_detector("retinanet", "vgg16", 3)
    with pytest.raises(ValueError, match="num_classes"):
        build_detector("retinanet", "resnet18", 0)
    with pytest.raises(ValueError, match="head_convs"):
        build_detector("retinanet", "resnet18", 3, head_convs=5)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_detector("retinanet", "resnet18", 3, weights_backbone=str(tmp_path / "nowhere.pth"))


def test_backbone_weights_from_local_file(tmp_path):
    import torchvision

    torch.manual_seed(5)
    source = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    model = build_detector("retinanet", "resnet18", 3, fpn_channels=32, weights_backbone=str(path), norm="frozen_bn")
    assert torch.equal(model.backbone.body.conv1.weight, source.conv1.weight)
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises((ValueError, RuntimeError)):
        build_detector("retinanet", "resnet18", 3, weights_backbone=str(path))


def test_group_norm_accepts_single_value_groups():
    from rmkd.models.build import GroupNorm

    torch.manual_seed(0)
    ours, ref = GroupNorm(32, 32), torch.nn.GroupNorm(32, 32)
    for m in (ours, ref):
        m.weight.data, m.bias.data = torch.linspace(0.5, 2, 32), torch.linspace(-1, 1, 32)
    for shape in ((2, 32, 1, 1), (2, 32, 3, 5), (1, 32, 4, 4)):
        x = torch.randn(shape)
        assert torch.equal(ours(x), ref(x))  # whatever torch computes is torch's own code
    # A batch of one single-value groups: exactly the bias (torch's value for the same
    # image in a larger batch differs only by float32 rounding amplified by eps^-1/2).
    x = torch.randn(2, 32, 1, 1)
    torch.testing.assert_close(ours(x[:1]), ref(x)[:1], atol=2e-4, rtol=0)
    assert torch.equal(ours(x[:1]), ours.bias.detach().view(1, -1, 1, 1).expand(1, 32, 1, 1))  # torch refuses this batch
    with pytest.raises(ValueError):
        ref(x[:1])


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_a_32_wide_head_runs_on_one_image(family):
    torch.manual_seed(0)
    model = build_detector(family, "resnet18", 3, fpn_channels=32, head_convs=2, image_size=128).eval()
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    with torch.no_grad():
        pair = dense_forward(model, images)
        one = dense_forward(model, images[:1])  # P7 is 1x1: one value per GroupNorm group
    torch.testing.assert_close(one.head_outputs["cls_logits"][0], pair.head_outputs["cls_logits"][0], atol=1e-3, rtol=1e-4)


def test_p2_p6_reads_64px_natively():
    """min_level=2: five levels of strides 4..64 (a 64 px image gets a 16x16 finest grid), anchors
    tiling each level, and the levels named by stride in the figures."""
    from rmkd.plots import _level_name

    torch.manual_seed(0)
    kw = dict(anchor_sizes=(12, 24, 48, 96, 160), scales_per_octave=2, aspect_ratios=(1.0, 1.5), image_size=64)
    model = build_detector("retinanet", "resnet18", 3, fpn_channels=16, head_convs=1, min_level=2, **kw)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 24.0]]), "labels": torch.tensor([1])}] * 2
    dense = dense_forward(model, images, targets)
    assert dense.level_sizes == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert dense.anchors[0].shape[0] == sum(h * w for h, w in dense.level_sizes) * 4
    assert torch.isfinite(sum(dense.losses.values()))
    p3 = build_detector("retinanet", "resnet18", 3, fpn_channels=16, head_convs=1, **kw)
    assert dense_forward(p3, images, targets).level_sizes == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    assert _level_name(0, 4) == "P2 (stride 4)" and _level_name(4, 128) == "P7 (stride 128)"
    with pytest.raises(ValueError, match="min_level"):
        build_detector("retinanet", "resnet18", 3, min_level=4)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_mobilenet_backbone_levels_and_weights(name, tmp_path):
    """A MobileNetV3 body feeds the FPN from its last block at each stride 4, 8, 16, 32 (checked
    by hooks on every block), its probe leaves BatchNorm's statistics alone, and a local state_dict
    (a classification model's, classifier included) loads into it."""
    import torchvision

    torch.manual_seed(0)
    source = getattr(torchvision.models, name)()
    path = tmp_path / "mnv3.pth"
    torch.save(source.state_dict(), path)
    model = build_detector("retinanet", name, 3, fpn_channels=16, head_convs=1, min_level=2, image_size=64,
                           anchor_sizes=(12, 24, 48, 96, 160), weights_backbone=str(path))
    body = model.backbone.body
    assert torch.equal(body["0"][0].weight, source.features[0][0].weight)
    for key, value in source.features.state_dict().items():
        if key.endswith("running_mean"):  # the probe ran in eval mode: statistics untouched
            assert torch.equal(body.state_dict()[key], value), key
    sizes = {}
    hooks = [block.register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, o.shape)) for n, block in body.named_children()]
    images, _ = _batch(1)
    model.eval()
    with torch.no_grad():
        dense = dense_forward(model, images)
    for h in hooks:
        h.remove()
    assert [f.shape[-1] for f in dense.features] == [16, 8, 4, 2, 1]  # P2..P6 of a 64 px image
    chosen = list(model.backbone.body.return_layers)
    for stride, name_ in zip((4, 8, 16, 32), chosen):
        assert sizes[name_][-1] == 64 // stride
        later = [n for n in sizes if int(n) > int(name_)]
        assert all(sizes[n][-1] < 64 // stride for n in later)  # the last block at that stride
    assert model.backbone.fpn.inner_blocks[0][0].in_channels == sizes[chosen[0]][1]
    with pytest.raises(ValueError, match="do not fit"):
        torch.save(torchvision.models.resnet18().state_dict(), path)
        build_detector("retinanet", name, 3, weights_backbone=str(path))


def test_resnet10_is_resnet18_with_one_block_per_stage(tmp_path):
    """resnet10: ResNet-18's stem and stage widths with one BasicBlock per stage, the same FPN
    inputs; it has no ImageNet weights to download (a clear error), a local state_dict loads."""
    import torchvision

    torch.manual_seed(0)
    kw = dict(fpn_channels=16, head_convs=1, min_level=2, image_size=64, anchor_sizes=(12, 24, 48, 96, 160))
    r10 = build_detector("retinanet", "resnet10", 3, **kw).backbone
    r18 = build_detector("retinanet", "resnet18", 3, **kw).backbone
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        assert len(r10.body[stage]) == 1 and len(r18.body[stage]) == 2
        assert r10.body[stage][0].conv1.weight.shape == r18.body[stage][0].conv1.weight.shape
    x = torch.rand(2, 3, 64, 64)
    assert [f.shape for f in r10(x).values()] == [f.shape for f in r18(x).values()]  # P2..P6, 16 wide
    with pytest.raises(ValueError, match="resnet10 has no ImageNet weights"):
        build_detector("retinanet", "resnet10", 3, weights_backbone="imagenet", **kw)
    path = tmp_path / "r10.pth"
    source = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
    torch.save(source.state_dict(), path)
    loaded = build_detector("retinanet", "resnet10", 3, weights_backbone=str(path), **kw).backbone
    assert torch.equal(loaded.body["layer3"][0].conv2.weight, source.layer3[0].conv2.weight)


def test_config_backbones_are_the_builders():
    from rmkd.config import _CHOICES
    from rmkd.models.build import BACKBONES

    assert set(_CHOICES["model.backbone"]) == set(BACKBONES)


def test_level_names_follow_the_strides():
    from rmkd.models import level_name, level_names

    images, _ = _batch(0)
    for min_level, first in ((2, "P2"), (3, "P3")):
        model = _model("retinanet", min_level=min_level).eval()
        with torch.no_grad():
            dense = dense_forward(model, images)
        strides = [64 // f.shape[-1] for f in dense.features[:3]]  # padded 64 px input; coarse levels clamp at 1 cell
        assert level_names(model)[:3] == [level_name(s) for s in strides]
        assert level_names(model)[0] == first and len(level_names(model)) == 5
    with pytest.raises(ValueError, match="power of two"):
        level_name(12)


def test_describe_names_the_detector():
    from rmkd.models import describe

    model = _model("retinanet", min_level=2, head_convs=1)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert describe(model) == f"retinanet resnet18-FPN{model.backbone.out_channels}, 1 head conv, P2-P6, {params:.1f} M parameters"
    assert ", 2 head convs, P3-P7," in describe(_model("fcos", head_convs=2))


@pytest.mark.parametrize("trainable", [0, 1, 2, 3, 4])
def test_trainable_layers_freeze_what_torchvision_freezes(trainable):
    """The stages left trainable are those of torchvision's ``_resnet_fpn_extractor``; a step moves only them."""
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    ours = _model("retinanet", trainable_layers=trainable, head_norm="none")
    theirs = _resnet_fpn_extractor(resnet18(), trainable).body
    expected = {n for n, p in theirs.named_parameters() if p.requires_grad}
    body = ours.backbone.body
    assert {n for n, p in body.named_parameters() if p.requires_grad} == expected
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    opt = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.1)
    images, targets = _batch()
    sum(ours.train()(images, targets).values()).backward()
    opt.step()
    moved = {n for n, p in ours.named_parameters() if not torch.equal(p, before[n])}
    frozen = {f"backbone.body.{n}" for n, p in body.named_parameters() if n not in expected}
    assert frozen and not moved & frozen  # frozen stages keep their weights ...
    assert {n for n in moved if n.startswith("backbone.fpn")} and {n for n in moved if n.startswith("head")}  # ... the rest learns


def test_trainable_layers_errors():
    with pytest.raises(ValueError, match="trainable_layers must be in 0..5"):
        _model("retinanet", trainable_layers=6)
    with pytest.raises(ValueError, match="ResNet backbones only"):
        build_detector("retinanet", "mobilenet_v3_small", K, trainable_layers=3, **SMALL)


FROZEN = dict(trainable_layers=0, norm="frozen_bn", head_norm="none")


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_body_cache_is_the_same_function(family):
    """A frozen body's remembered outputs: over batches that mix new and seen images (one of another
    width), the FPN features, losses and every gradient equal the uncached model's, and the body
    computes each image once; the state_dict names are the uncached model's."""
    from rmkd.models.body_cache import CachedBody

    plain = _model(family, **FROZEN).train()
    cached = _model(family, body_cache=100, **FROZEN).train()
    assert isinstance(cached.backbone.body, CachedBody)
    assert list(cached.state_dict()) == list(plain.state_dict())
    cached.load_state_dict(plain.state_dict())
    images, targets = _batch()
    more, more_targets = _batch(seed=1)
    batches = [([images[0], images[2]], [targets[0], targets[2]]),  # new, new
               ([images[2], more[0], images[0]], [targets[2], more_targets[0], targets[0]]),  # seen, new, seen
               ([images[1]], [targets[1]]), ([images[1]], [targets[1]])]  # another width: new, then seen
    for imgs, tgts in batches:
        ours, theirs = dense_forward(cached, imgs, tgts), dense_forward(plain, imgs, tgts)
        for a, b in zip(ours.features, theirs.features):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)  # float rounding of another batch, no more
        cached.zero_grad(), plain.zero_grad()
        sum(ours.losses.values()).backward()
        sum(theirs.losses.values()).backward()
        for (name, p), q in zip(cached.named_parameters(), plain.parameters()):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
    body = cached.backbone.body
    assert (body.misses, body.hits) == (4, 3)  # 4 distinct images computed once; 3 served from memory


def test_body_cache_limits_and_copies():
    """Past ``max_images`` new images are computed every time, still correctly; a deep copy starts empty."""
    import copy

    model = _model("retinanet", body_cache=2, **FROZEN).eval()
    images, _ = _batch()
    with torch.no_grad():
        first = dense_forward(model, images).features
        again = dense_forward(model, images).features
    body = model.backbone.body
    assert len(body._maps) == 2 and (body.misses, body.hits) == (4, 2)  # the third image is not remembered
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    twin = copy.deepcopy(model)
    assert len(twin.backbone.body._maps) == 0 and len(body._maps) == 2
    assert torch.equal(twin.backbone.body.layer1[0].conv1.weight, body.layer1[0].conv1.weight)


def test_body_cache_refuses_a_body_that_learns():
    with pytest.raises(ValueError, match="layer4.*trainable: set trainable_layers=0"):
        _model("retinanet", body_cache=10, trainable_layers=1, norm="frozen_bn")
    with pytest.raises(ValueError, match="updates its statistics: set norm=frozen_bn"):
        _model("retinanet", body_cache=10, trainable_layers=0, norm="bn")
