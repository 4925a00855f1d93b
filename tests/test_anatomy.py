"""rmkd.anatomy: the primer's frames equal what torchvision computes; its figures draw those frames."""

import copy
import json
from io import BytesIO

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms, box_iou

from rmkd import anatomy
from rmkd.data import CocoDetection
from rmkd.models import build_detector, dense_forward

K = 3
STRIDES = (4, 8, 16, 32, 64)  # P2..P6 at 64 px
GRIDS = (16, 8, 4, 2, 1)
TARGET = {"boxes": torch.tensor([[4.0, 4.0, 20.0, 24.0], [30.0, 10.0, 58.0, 50.0], [40.0, 2.0, 46.0, 7.0]]),
          "labels": torch.tensor([1, 3, 2])}  # the third is tiny: positive only as its best anchor


def _tiny(seed=0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_detector("retinanet", "resnet18", K, fpn_channels=16, head_convs=1, min_level=2, image_size=64,
                          anchor_sizes=(12, 24, 48, 96, 160), scales_per_octave=2, aspect_ratios=(1.0, 1.5)).eval()


@pytest.fixture(scope="module")
def model():
    return _tiny()


@pytest.fixture(scope="module")
def noisy():
    """A tiny model whose scores and boxes spread widely (an untrained head scores ~0.01 everywhere)."""
    m = _tiny(1)
    with torch.no_grad():
        m.head.classification_head.cls_logits.weight.normal_(0, 0.3)
        m.head.classification_head.cls_logits.bias.normal_(-1.0, 1.0)
        m.head.regression_head.bbox_reg.weight.normal_(0, 0.05)
        # torchvision's unused background slot 0 never scores, so the model's own eval forward
        # (which does not mask it, unlike rmkd's postprocess) is a reference for the kept set
        m.head.classification_head.cls_logits.weight[0 :: K + 1] = 0
        m.head.classification_head.cls_logits.bias[0 :: K + 1] = -30
    return m


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))


def _png(fig) -> None:
    assert isinstance(fig, Figure)
    buf = BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")


def _rects(ax, gid) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_gid() == gid]


def _xyxy(rect) -> list[float]:
    x, y = rect.get_xy()
    return [x, y, x + rect.get_width(), y + rect.get_height()]


# ----------------------------------------------------------------------------- anchors


def test_anchor_grid_is_torchvisions_anchor_generator(model):
    grid = anatomy.anchor_grid(model, 64)
    feats = [torch.zeros(1, 16, g, g) for g in GRIDS]  # P2..P6 grids of a 64 px input
    reference = model.anchor_generator(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), feats)[0]
    assert torch.equal(torch.tensor(grid[anatomy.BOX_COLS].to_numpy(), dtype=torch.float32), reference)
    assert list(grid["index"]) == list(range(len(reference)))
    for level, (g, stride) in enumerate(zip(GRIDS, STRIDES)):
        part = grid[grid["level"] == level]
        assert len(part) == g * g * 4  # H_l * W_l * A
        assert set(part["name"]) == {f"P{level + 2}"} and set(part["stride"]) == {stride}
        # centres on the level's stride spacing: cell (r, c) at (c, r) * stride
        np.testing.assert_array_equal(part["cx"], part["col"] * stride)
        np.testing.assert_array_equal(part["cy"], part["row"] * stride)
        # the configured shapes: 2 scales per octave x aspect ratios (1, 1.5), rounded to pixels
        base = (12, 24, 48, 96, 160)[level]
        cell = part[(part["row"] == 0) & (part["col"] == 0)]
        np.testing.assert_allclose(sorted(cell["size"]), sorted([base, base, base * 2**0.5, base * 2**0.5]), atol=1.5)
        np.testing.assert_allclose(sorted(cell["aspect"]), [1, 1, 1.5, 1.5], atol=0.1)
    assert grid.attrs["scale"] == (1.0, 1.0)


def test_anchor_grid_follows_the_models_resize(model):
    # a 128 px image is read at 64 px: the same anchors, and a scale of 2 back to the image
    grid = anatomy.anchor_grid(model, (128, 128))
    assert grid.attrs["input_size"] == (64, 64) and grid.attrs["scale"] == (2.0, 2.0)
    assert len(grid) == sum(g * g * 4 for g in GRIDS)


def test_plot_anchor_grid_draws_centres_and_one_cells_anchors(model, image):
    was = model.training
    fig = anatomy.plot_anchor_grid(model, image)
    _png(fig)
    assert model.training == was
    grid = anatomy.anchor_grid(model, 64)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == [
        f"P{2 + i}: stride {s}, {g}x{g} cells, 4 anchors per cell" for i, (s, g) in enumerate(zip(STRIDES, GRIDS))]
    for level, ax in enumerate(axes):
        dots = next(c for c in ax.collections if c.get_gid() == "centres").get_offsets()
        part = grid[(grid["level"] == level) & (grid["a"] == 0)]
        np.testing.assert_array_equal(np.asarray(dots), part[["cx", "cy"]].to_numpy())
        g = GRIDS[level]
        cell = grid[(grid["level"] == level) & (grid["row"] == g // 2) & (grid["col"] == g // 2)]
        drawn = sorted(_xyxy(r) for r in _rects(ax, "anchor"))
        np.testing.assert_allclose(drawn, sorted(cell[anatomy.BOX_COLS].to_numpy().tolist()))
    # each panel spans the image and its anchors (P6's reach 226 px); share=True gives one range
    assert axes[0].get_xlim() == (-2, 66) and axes[-1].get_xlim()[1] > 64 + 50
    shared = [ax for ax in anatomy.plot_anchor_grid(model, image, share=True).axes if ax.get_title()]
    assert len({ax.get_xlim() for ax in shared}) == 1 and shared[0].get_xlim() == axes[-1].get_xlim()
    only = anatomy.plot_anchor_grid(model, image, levels=["P3", 0])
    assert [ax.get_title()[:2] for ax in only.axes if ax.get_title()] == ["P3", "P2"]
    with pytest.raises(ValueError, match="P7"):
        anatomy.plot_anchor_grid(model, image, levels=["P7"])


# ----------------------------------------------------------------------------- label assignment


def _matcher_reference(model, matcher) -> set[tuple[int, int]]:
    anchors = anatomy.anchor_grid(model, 64)[anatomy.BOX_COLS].to_numpy()
    matched = matcher(box_iou(TARGET["boxes"], torch.tensor(anchors, dtype=torch.float32)))  # [N]
    return {(int(a), int(matched[a])) for a in torch.nonzero(matched >= 0)[:, 0]}


def test_assigned_anchors_are_the_retinanet_matchers(model, image):
    model.train()  # a training-mode model is matched as in eval and given back in training mode
    frame = anatomy.assigned_anchors(model, image, TARGET)
    assert model.training
    model.eval()
    # torchvision's RetinaNet rule, computed here independently: IoU >= 0.5 positive, < 0.4 background,
    # plus each GT's best anchors (allow_low_quality_matches)
    reference = _matcher_reference(model, det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True))
    assert set(zip(frame["anchor"], frame["gt_index"])) == reference
    assert set(frame["gt_index"]) == {0, 1, 2}  # every GT has candidates, the tiny one too
    anchors = torch.tensor(frame[anatomy.BOX_COLS].to_numpy(), dtype=torch.float32)
    iou = box_iou(anchors, TARGET["boxes"])[torch.arange(len(frame)), torch.tensor(frame["gt_index"].to_numpy())]
    np.testing.assert_allclose(frame["iou"], iou.numpy(), rtol=1e-5)
    assert (frame.loc[frame["gt_index"] == 2, "iou"] < 0.5).all()  # a low-quality match
    np.testing.assert_array_equal(frame["label"], TARGET["labels"].numpy()[frame["gt_index"].to_numpy()])
    # level / cell / anchor columns name the same anchor as the grid
    grid = anatomy.anchor_grid(model, 64).set_index("index")
    np.testing.assert_array_equal(grid.loc[frame["anchor"], ["level", "row", "col", "a"]].to_numpy(),
                                  frame[["level", "row", "col", "a"]].to_numpy())


def test_assigned_anchors_read_the_models_own_matcher(image):
    m = _tiny()
    m.proposal_matcher = det_utils.Matcher(0.3, 0.2, allow_low_quality_matches=False)
    frame = anatomy.assigned_anchors(m, image, TARGET)
    reference = _matcher_reference(m, det_utils.Matcher(0.3, 0.2, allow_low_quality_matches=False))
    assert set(zip(frame["anchor"], frame["gt_index"])) == reference
    assert (frame["iou"] >= 0.3).all()
    none = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    assert anatomy.assigned_anchors(m, image, none).empty


def test_plot_assigned_anchors(model, image):
    frame = anatomy.assigned_anchors(model, image, TARGET)
    mine = frame[frame["gt_index"] == 1]
    fig = anatomy.plot_assigned_anchors(model, image, TARGET, 1, class_names=["a", "b", "c"])
    _png(fig)
    ax, bars = fig.axes[0], fig.axes[1]
    drawn = sorted(_xyxy(r) for r in _rects(ax, "anchor"))
    np.testing.assert_allclose(drawn, sorted(mine[anatomy.BOX_COLS].to_numpy().tolist()))
    assert [_xyxy(r) for r in _rects(ax, "gt")] == [TARGET["boxes"][1].tolist()]
    assert "(class c," in ax.get_title()  # label 3 is the third name
    heights = [p.get_height() for p in bars.patches if p.get_gid() == "iou"]
    np.testing.assert_allclose(heights, mine["iou"].to_numpy(), rtol=1e-6)
    assert sorted(line.get_ydata()[0] for line in bars.get_lines()) == [0.4, 0.5]  # the matcher's thresholds
    assert any(a.get_ylabel() == "IoU with the GT" for a in fig.axes[2:])  # the colour bar
    with pytest.raises(ValueError, match="GT #5"):
        anatomy.plot_assigned_anchors(model, image, TARGET, 5)


# ----------------------------------------------------------------------------- NMS


def test_nms_stages_before_is_the_threshold_and_topk_and_after_is_its_nms(noisy, image):
    noisy.topk_candidates = 40  # small enough that P2 (16*16*4 anchors x 3 classes) is cut by top-k
    try:
        _check_nms_stages(noisy, image)
    finally:
        noisy.topk_candidates = 1000


def _check_nms_stages(noisy, image):
    stages = anatomy.nms_stages(noisy, image, score_thresh=0.3)
    assert noisy.score_thresh == 0.05  # restored
    before, after = stages["before"], stages["after"]
    # before: every (anchor, class) score above the threshold, at most top-k per level (computed here)
    dense = dense_forward(noisy, [image])
    expected = sum(min(40, int((p.sigmoid() > 0.3).sum()))
                   for p in dense.head_outputs["cls_logits"][0, :, 1:].split(dense.anchors_per_level))
    assert len(before) == expected > len(after) > 0
    assert (before["score"] > 0.3).all() and before["score"].is_monotonic_decreasing
    # after = torchvision's class-wise NMS of the before set (64 px: the model does not resize)
    boxes = torch.tensor(before[anatomy.BOX_COLS].to_numpy())
    keep = batched_nms(boxes, torch.tensor(before["score"].to_numpy()), torch.tensor(before["label"].to_numpy()),
                       noisy.nms_thresh)[: noisy.detections_per_img]
    np.testing.assert_array_equal(after[anatomy.BOX_COLS].to_numpy(), before[anatomy.BOX_COLS].to_numpy()[keep.numpy()])
    np.testing.assert_array_equal(after["label"], before["label"].to_numpy()[keep.numpy()])
    assert sorted(np.flatnonzero(before["kept"])) == sorted(keep.tolist())
    # and after is what the model's own eval forward returns (labels never 0 in rmkd's postprocess)
    with torch.no_grad():
        noisy.score_thresh = 0.3
        out = noisy([image])[0]
        noisy.score_thresh = 0.05
    np.testing.assert_array_equal(after[anatomy.BOX_COLS].to_numpy(), out["boxes"].numpy())
    np.testing.assert_array_equal(after["score"].to_numpy(), out["scores"].numpy())


def test_nms_stages_for_fcos_keep_its_own_scores(image):
    torch.manual_seed(0)
    fcos = build_detector("fcos", "resnet18", K, fpn_channels=32, head_convs=1, min_level=2, image_size=64).eval()
    stages = anatomy.nms_stages(fcos, image, score_thresh=0.01)
    before = stages["before"]
    keep = batched_nms(torch.tensor(before[anatomy.BOX_COLS].to_numpy()), torch.tensor(before["score"].to_numpy()),
                       torch.tensor(before["label"].to_numpy()), fcos.nms_thresh)[: fcos.detections_per_img]
    assert sorted(np.flatnonzero(before["kept"])) == sorted(keep.tolist()) and len(keep) == len(stages["after"])
    # FCOS scores are sqrt(class probability x centerness), not a plain sigmoid
    fig = anatomy.plot_nms(fcos, image, score_thresh=0.01)
    assert "centerness" in fig.axes[2].get_ylabel()


def test_plot_nms_draws_both_sets_on_one_colour_scale(noisy, image):
    stages = anatomy.nms_stages(noisy, image, score_thresh=0.5)
    fig = anatomy.plot_nms(noisy, image, score_thresh=0.5, target=TARGET, max_before=30)
    _png(fig)
    left, right = fig.axes[:2]
    assert len(_rects(left, "detection")) == min(30, len(stages["before"]))
    assert len(_rects(right, "detection")) == len(stages["after"])
    assert len(_rects(left, "gt")) == 3
    assert f"{len(stages['before'])} boxes with score > 0.5" in left.get_title()
    bar = fig.axes[2]
    assert bar.get_ylabel() == "score (sigmoid probability)" and bar.get_ylim() == (0.5, 1.0)


# ----------------------------------------------------------------------------- data and side by side


@pytest.fixture(scope="module")
def val(tiny_data):
    return CocoDetection(tiny_data / "val", tiny_data / "annotations" / "val.json")


def test_plot_samples_boxes_and_names(val):
    fig = anatomy.plot_samples(val, [0, 1, 2], ncols=2)
    _png(fig)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 3
    for ax, i in zip(shown, [0, 1, 2]):
        image, target = val[i]
        assert sorted(_xyxy(r) for r in _rects(ax, "gt")) == sorted(target["boxes"].tolist())
        names = [val.class_names[k - 1] for k in target["labels"].tolist()]
        assert sorted(t.get_text() for t in ax.texts) == sorted(names)
        assert ax.get_title() == f"image {target['image_id']}: {len(names)} object" + "s" * (len(names) != 1)
    with pytest.raises(IndexError, match="out of range"):
        anatomy.plot_samples(val, [99])


def test_plot_detections_grid_of_models(val, model):
    eager = copy.deepcopy(model)
    with torch.no_grad():  # class 1 everywhere: detections above 0.3 that a real forward also gives
        eager.head.classification_head.cls_logits.bias[1::K + 1] = 1.0
    models = {"untrained": model, "eager": eager}
    fig = anatomy.plot_detections(models, val, [0, 1], score_thresh=0.3)
    _png(fig)
    axes = np.array(fig.axes[:4]).reshape(2, 2)
    for r in range(2):
        image, target = val[r]
        for c, (name, m) in enumerate(models.items()):
            ax = axes[r, c]
            with torch.no_grad():
                out = m.eval()([image.as_subclass(torch.Tensor)])[0]
            count = int(((out["scores"] > 0.3) & (out["labels"] > 0)).sum())
            assert len(_rects(ax, "detection")) == count
            assert len(_rects(ax, "gt")) == len(target["labels"])
            assert ax.get_title().startswith(f"{name}: ")
    assert len(_rects(axes[0, 0], "detection")) == 0 and len(_rects(axes[0, 1], "detection")) > 0
    with pytest.raises(ValueError, match="at least one"):
        anatomy.plot_detections({}, val, [0])


# ----------------------------------------------------------------------------- learning curves


def _write_run(folder, evals, trains, extra=None):
    folder.mkdir()
    with open(folder / "metrics.jsonl", "w") as f:
        for step, record in trains:
            f.write(json.dumps({"step": step, "time": 0.0, "train": record}) + "\n")
        for step, ap in evals:
            f.write(json.dumps({"step": step, "time": 0.0, "eval": {"AP": ap, "AP50": None}}) + "\n")
        for line in extra or []:
            f.write(json.dumps(line) + "\n")
    return folder


def test_plot_learning_curves_lines_are_the_logged_values(tmp_path):
    base = _write_run(tmp_path / "base", [(10, 0.1), (20, 0.25)],
                      [(5, {"classification": 1.0, "bbox_regression": 0.5, "loss": 1.5}),
                       (10, {"classification": 0.8, "bbox_regression": 0.4, "loss": 1.2})])
    kd = _write_run(tmp_path / "kd", [(10, 0.2), (20, 0.3)],
                    [(5, {"classification": 0.9, "bbox_regression": 0.5, "rm": 0.1, "pfi": 2.0, "loss": 3.5}),
                     (10, {"classification": 0.7, "bbox_regression": 0.3, "rm": 0.1, "pfi": 1.0, "loss": 2.1})],
                    extra=[{"step": 20, "time": 1.0, "eval": {"AP": 0.35}}])  # re-logged step: the last wins
    fig = anatomy.plot_learning_curves({"baseline": base, "RM+PFI": kd / "metrics.jsonl"})
    _png(fig)
    ap_ax, loss_ax = fig.axes
    ap = {line.get_label(): line for line in ap_ax.get_lines()}
    np.testing.assert_allclose(ap["baseline"].get_ydata(), [10.0, 25.0])
    np.testing.assert_allclose(ap["RM+PFI"].get_xdata(), [10, 20])
    np.testing.assert_allclose(ap["RM+PFI"].get_ydata(), [20.0, 35.0])
    losses = {line.get_label(): line.get_ydata() for line in loss_ax.get_lines()}
    np.testing.assert_allclose(losses["baseline"], [1.5, 1.2])
    np.testing.assert_allclose(losses["RM+PFI"], [1.4, 1.0])  # the detector's terms, not the KD total
    assert "%" in ap_ax.get_ylabel() and ap_ax.get_xlabel() == "training step"
    total = anatomy.plot_learning_curves({"RM+PFI": kd}, loss="loss")
    np.testing.assert_allclose(total.axes[1].get_lines()[0].get_ydata(), [3.5, 2.1])


def test_plot_learning_curves_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing") as err:
        anatomy.plot_learning_curves({"gone": tmp_path / "missing"})
    assert "\n" not in str(err.value)
    no_eval = _write_run(tmp_path / "noeval", [], [(5, {"loss": 1.0})])
    with pytest.raises(ValueError, match="noeval.*no 'eval' records") as err:
        anatomy.plot_learning_curves({"x": no_eval})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no 'nope' loss"):
        anatomy.plot_learning_curves({"x": _write_run(tmp_path / "ok", [(1, 0.1)], [(1, {"loss": 1.0})])}, loss="nope")
