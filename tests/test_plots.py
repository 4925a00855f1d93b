"""rmkd.plots: every figure renders to PNG, with the panels and boxes it promises."""

import json
from io import BytesIO

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rmkd import plots
from rmkd.analysis import ImageDetail

PNG = b"\x89PNG\r\n\x1a\n"


def _png(fig) -> bytes:
    assert isinstance(fig, Figure)
    buf = BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    assert data.startswith(PNG)
    return data


def _rects(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def _instances(n=60, seed=0, student=None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tau = rng.uniform(-1, 1, n)
    tau[:5] = np.nan  # instances with < 2 candidates
    frame = pd.DataFrame(
        {
            "instance_id": np.arange(n),
            "kendall_tau": tau,
            "s_top1_iou": rng.uniform(0, 1, n),
            "t_top1_iou": rng.uniform(0, 1, n),
            "size": rng.choice(["small", "large"], n),  # no "medium": only sizes present are drawn
            "top1_agree": pd.array(rng.random(n) < 0.5, dtype="boolean"),
        }
    )
    if student is not None:
        frame["student"] = student
    return frame


def make_detail(image_id=7, seed=0) -> ImageDetail:
    """A 48x64 image with 2 GTs, 3 + 2 candidates, kept boxes (GT 1's anchors differ), 3 levels."""
    rng = np.random.default_rng(seed)
    H, W = 48, 64
    gt = pd.DataFrame(
        {"gt_index": [0, 1], "instance_id": [10, 11], "label": [3, 5],
         "x1": [4.0, 30.0], "y1": [4.0, 10.0], "x2": [24.0, 60.0], "y2": [28.0, 44.0]}
    )
    boxes = [[2, 2, 22, 26], [6, 6, 26, 30], [0, 0, 32, 32], [28, 8, 58, 42], [32, 12, 62, 46]]
    candidates = pd.DataFrame(boxes, columns=["x1", "y1", "x2", "y2"], dtype=float)
    candidates.insert(0, "level", [0, 0, 1, 1, 1])
    candidates.insert(0, "anchor", [3, 5, 70, 80, 81])
    candidates.insert(0, "gt_index", [0, 0, 0, 1, 1])
    candidates.insert(0, "instance_id", [10, 10, 10, 11, 11])
    candidates["t_score"] = [0.9, 0.5, 0.2, 0.3, 0.8]
    candidates["s_score"] = [0.4, 0.6, 0.1, 0.7, 0.2]
    candidates["t_rank"] = [1, 2, 3, 2, 1]
    candidates["s_rank"] = [2, 1, 3, 1, 2]
    candidates["t_iou"] = [0.8, 0.7, 0.5, 0.6, 0.9]
    candidates["s_iou"] = [0.6, 0.75, 0.4, 0.8, 0.5]
    kept = pd.DataFrame(
        [
            # model, anchor, level, score, label, box, anchor box
            ("teacher", 3, 0, 0.9, 3, 4, 4, 24, 27, 2, 2, 22, 26),
            ("teacher", 81, 1, 0.8, 5, 31, 10, 60, 44, 32, 12, 62, 46),
            ("student", 3, 0, 0.7, 3, 5, 5, 24, 28, 2, 2, 22, 26),  # GT 0: same anchor
            ("student", 80, 1, 0.6, 5, 30, 11, 59, 43, 28, 8, 58, 42),  # GT 1: another anchor
            ("student", 70, 1, 0.5, 2, 0, 0, 30, 30, 0, 0, 32, 32),  # wrong label: never matched
        ],
        columns=["model", "anchor", "level", "score", "label", "x1", "y1", "x2", "y2", "ax1", "ay1", "ax2", "ay2"],
    )
    maps = []
    for level, stride in enumerate((8, 16, 32)):
        h, w = -(-H // stride), -(-W // stride)
        maps.append({"level": level, "stride": stride, "f_dif": rng.random((h, w)), "p_dif": rng.random((h, w))})
    g = torch.Generator().manual_seed(seed)
    return ImageDetail(image_id, torch.rand(3, H, W, generator=g), gt, candidates, kept, maps)


def test_tau_by_size_orders_present_sizes_and_counts_instances():
    frame = _instances()
    fig = plots.plot_tau_by_size(frame)
    _png(fig)
    ax = fig.axes[0]
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["small", "large"]
    assert f"n = {frame['kendall_tau'].notna().sum()} instances" in ax.get_title()
    assert ax.get_ylim()[0] <= -1 and ax.get_ylim()[1] >= 1


def test_tau_by_size_with_hue_and_violin():
    frame = pd.concat([_instances(seed=1, student="baseline"), _instances(seed=2, student="RM+PFI")])
    fig = plots.plot_tau_by_size(frame, hue="student", kind="violin")
    _png(fig)
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} == {"baseline", "RM+PFI"}
    with pytest.raises(ValueError, match="nope"):
        plots.plot_tau_by_size(frame, hue="nope")


def test_tau_vs_iou_has_a_line_per_student():
    frame = pd.concat([_instances(seed=1, student="baseline"), _instances(seed=2, student="RM+PFI")])
    fig = plots.plot_tau_vs_iou(frame, hue="student", bins=5)
    _png(fig)
    ax = fig.axes[0]
    assert len(ax.collections) >= 2  # one scatter per student
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["baseline (n=55)", "RM+PFI (n=55)"]
    assert ax.get_xlim() == (0, 1)
    # into a caller's axes
    fig2 = Figure()
    ax2 = fig2.add_subplot()
    assert plots.plot_tau_vs_iou(_instances(), ax=ax2) is fig2


def test_gap_panels_grid_titles_and_boxes():
    detail = make_detail()
    fig = plots.plot_gap_panels(detail)
    _png(fig)
    assert len(fig.axes) == 4 * 3
    titles = [ax.get_title() for ax in fig.axes]
    for level, stride in enumerate((8, 16, 32)):
        m = detail.maps[level]
        r = np.corrcoef(m["f_dif"].ravel(), m["p_dif"].ravel())[0, 1]
        assert titles[4 * level] == f"P{3 + level} (stride {stride}): r = {r:.2f}"
    for ax in fig.axes:
        assert len(_rects(ax)) == len(detail.gt)  # both GTs on every panel
    # cell (r, c) is centred on its anchors at (c, r) * stride (scale 1 here): P3's 8x6 cells
    assert fig.axes[1].images[0].get_extent() == [-4.0, 60.0, 44.0, -4.0]
    detail.scale = (0.5, 0.25)  # a detector that read the image at 2x / 4x
    half = plots.plot_gap_panels(detail, levels=[0])
    assert half.axes[1].images[0].get_extent() == [-2.0, 30.0, 11.0, -1.0]

    one = plots.plot_gap_panels(detail, levels=[1])
    assert len(one.axes) == 4 and one.axes[0].get_title().startswith("P4 (stride 16)")
    with pytest.raises(ValueError, match="level"):
        plots.plot_gap_panels(detail, levels=[5])


def test_kept_boxes_picks_the_gt_whose_anchors_differ():
    detail = make_detail()
    fig = plots.plot_kept_boxes(detail)
    _png(fig)
    assert "GT #1" in fig._suptitle.get_text() and "differ" in fig._suptitle.get_text()
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(_rects(ax)) == 3  # GT, kept box, its anchor
    assert "anchor 81" in fig.axes[0].get_title() and "anchor 80" in fig.axes[1].get_title()
    dashed = [r for r in _rects(fig.axes[1]) if r.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_xy() == (28.0, 8.0)  # the student's anchor box

    same = plots.plot_kept_boxes(detail, gt_index=0)
    assert "GT #0" in same._suptitle.get_text() and "same kept anchor" in same._suptitle.get_text()


def test_kept_boxes_without_a_match_says_so_and_falls_back_to_first_gt():
    detail = make_detail()
    detail.kept = detail.kept[detail.kept["model"] == "teacher"]
    fig = plots.plot_kept_boxes(detail)
    _png(fig)
    assert "GT #0" in fig._suptitle.get_text()
    assert "no kept box" in fig.axes[1].get_title()
    assert len(_rects(fig.axes[1])) == 1  # the GT only


def test_candidates_colour_by_rank_with_a_colorbar():
    detail = make_detail()
    fig = plots.plot_candidates(detail, 0)
    _png(fig)
    panels = fig.axes[:2]
    assert len(fig.axes) == 3  # two panels + colorbar
    for ax in panels:
        assert len(_rects(ax)) == 1 + 3  # GT + its three candidates
    assert "top-1 anchor 3" in panels[0].get_title() and "top-1 anchor 5" in panels[1].get_title()
    thick = [r for r in _rects(panels[1]) if r.get_linewidth() == 3.0]
    assert len(thick) == 1 and thick[0].get_xy() == (6.0, 6.0)
    # teacher rank 1 and student rank 1 get the same colour (one scale)
    t_top = next(r for r in _rects(panels[0]) if r.get_linewidth() == 3.0)
    assert t_top.get_edgecolor() == thick[0].get_edgecolor()
    assert "3 candidates" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="GT #4"):
        plots.plot_candidates(detail, 4)


def _write_metrics(path, runs=(("a", 0.1),)):
    lines = [
        {"step": 0, "time": 1.0, "analysis": {"kendall_tau": 0.1, "top1_agree": 0.3, "gap_pearson": 0.2, "gap_top_iou": 0.1}},
        {"step": 10, "time": 2.0, "train": {"loss": 1.0}},
        {"step": 50, "time": 3.0, "analysis": {"kendall_tau": 0.3, "top1_agree": 0.5, "gap_pearson": float("nan"), "gap_top_iou": 0.2}},
        {"step": 50, "time": 3.5, "eval": {"map": 0.01}},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_read_metrics_and_hook_curves(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "rm").mkdir()
    a = _write_metrics(tmp_path / "base" / "metrics.jsonl")
    b = _write_metrics(tmp_path / "rm" / "metrics.jsonl")
    frame = plots.read_metrics(a)
    assert frame["step"].tolist() == [0, 50]
    assert frame["kendall_tau"].tolist() == [0.1, 0.3]
    assert set(frame["run"]) == {"base"} and "loss" not in frame.columns
    assert plots.read_metrics(a, prefix="train")["loss"].tolist() == [1.0]

    both = plots.read_metrics({"baseline": a, "RM": b})
    assert len(both) == 4 and list(both["run"].cat.categories) == ["baseline", "RM"]
    fig = plots.plot_hook_curves(both)
    _png(fig)
    assert [ax.get_title() for ax in fig.axes] == ["Kendall τ", "top-1 agreement", "F_dif/P_dif Pearson r", "F_dif/P_dif top-10% IoU"]
    assert all(len(ax.get_lines()) == 2 for ax in fig.axes)  # a line per run
    assert fig.axes[0].get_lines()[0].get_ydata().tolist() == [0.1, 0.3]

    fig = plots.plot_hook_curves(frame, metrics=("kendall_tau", "s_top1_iou"))
    assert "not logged" in [t.get_text() for t in fig.axes[1].texts]
    with pytest.raises(ValueError, match="none of"):
        plots.plot_hook_curves(frame, metrics=("nothing",))


def test_read_metrics_errors_name_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "train": {"loss": 1.0}}) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl: no 'analysis' records \(it holds: train\)") as err:
        plots.read_metrics(path)
    assert "\n" not in str(err.value)
    path.write_text("{broken\n" + json.dumps({"step": 1, "analysis": {"kendall_tau": 0.2}}) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl:1: not a JSON line"):
        plots.read_metrics(path)
    # a half-written last line (a run still writing) is skipped
    path.write_text(json.dumps({"step": 1, "analysis": {"kendall_tau": 0.2}}) + '\n{"step": 2, "anal')
    assert plots.read_metrics(path)["kendall_tau"].tolist() == [0.2]
