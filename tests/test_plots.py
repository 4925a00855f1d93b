"""rmkd.plots: every figure renders to PNG, with the panels and boxes it promises."""

import json
from io import BytesIO

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection, QuadMesh
from matplotlib.colors import to_rgba
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


def make_detail(image_id=7, seed=0, strides=(8, 16, 32), scale=(1.0, 1.0)) -> ImageDetail:
    """A 48x64 image with 2 GTs, 3 + 2 candidates, kept boxes (GT 1's anchors differ), 3 levels.

    ``scale``: original pixels per input pixel (the detector read a 48 / sy x 64 / sx
    input); the maps have the input's ceil(size / stride) cells."""
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
    for level, stride in enumerate(strides):
        h, w = -(-round(H / scale[1]) // stride), -(-round(W / scale[0]) // stride)
        maps.append({"level": level, "stride": stride, "f_dif": rng.random((h, w)), "p_dif": rng.random((h, w))})
    g = torch.Generator().manual_seed(seed)
    return ImageDetail(image_id, torch.rand(3, H, W, generator=g), gt, candidates, kept, maps, tuple(scale))


def _sized(counts: dict, seed=0) -> pd.DataFrame:
    """Instances with a finite tau, ``counts[size]`` of each size class."""
    sizes = [s for s, n in counts.items() for _ in range(n)]
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"instance_id": np.arange(len(sizes)), "kendall_tau": rng.uniform(-1, 1, len(sizes)),
                         "size": sizes})


def _ticks(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def test_tau_by_size_orders_present_sizes_and_counts_instances():
    frame = _instances()
    fig = plots.plot_tau_by_size(frame)
    _png(fig)
    ax = fig.axes[0]
    finite = frame[frame["kendall_tau"].notna()]
    assert _ticks(ax) == [f"{s}\n(n = {(finite['size'] == s).sum()})" for s in ("small", "large")]
    assert f"n = {len(finite)} instances" in ax.get_title() and "×" not in ax.get_title()
    assert ax.get_ylim()[0] <= -1 and ax.get_ylim()[1] >= 1
    # the x axis says what the classes are: COCO's area classes in original pixels
    assert "COCO" in ax.get_xlabel() and "32²" in ax.get_xlabel() and "px" in ax.get_xlabel()


def test_tau_by_size_folds_classes_with_too_few_instances():
    ax = plots.plot_tau_by_size(_sized({"small": 30, "medium": 25, "large": 4})).axes[0]
    assert _ticks(ax) == ["small\n(n = 30)", "medium+large\n(n = 29)"]  # large joins its smaller neighbour
    ax = plots.plot_tau_by_size(_sized({"small": 3, "medium": 30, "large": 30})).axes[0]
    assert _ticks(ax) == ["small+medium\n(n = 33)", "large\n(n = 30)"]  # the smallest joins the next one
    ax = plots.plot_tau_by_size(_sized({"small": 3, "medium": 4, "large": 2})).axes[0]
    assert _ticks(ax) == ["small+medium+large\n(n = 9)"]
    ax = plots.plot_tau_by_size(_sized({"small": 3, "medium": 4, "large": 2}), min_count=0).axes[0]
    assert _ticks(ax) == ["small\n(n = 3)", "medium\n(n = 4)", "large\n(n = 2)"]


def test_tau_by_size_with_hue_counts_instances_times_students():
    frame = pd.concat([_instances(seed=1, student="baseline"), _instances(seed=2, student="RM+PFI")])
    for kind in ("box", "violin"):
        fig = plots.plot_tau_by_size(frame, hue="student", kind=kind)
        _png(fig)
        ax = fig.axes[0]
        assert {t.get_text() for t in ax.get_legend().get_texts()} == {"baseline", "RM+PFI"}
        # both frames hold instances 5..59 with a tau: 55 instances seen by 2 students, not 110 instances
        assert "n = 55 instances × 2 students" in ax.get_title()
        finite = frame[frame["kendall_tau"].notna()]
        unique = {s: finite.loc[finite["size"] == s, "instance_id"].nunique() for s in ("small", "large")}
        assert _ticks(ax) == [f"{s}\n(n = {n})" for s, n in unique.items()]
    with pytest.raises(ValueError, match="nope"):
        plots.plot_tau_by_size(frame, hue="nope")


def test_tau_by_size_points_lie_beneath_the_boxes_and_are_thinned():
    frame = _sized({"small": 200, "medium": 150, "large": 50})
    ax = plots.plot_tau_by_size(frame, max_points=120).axes[0]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    boxes = list(ax.patches)  # the boxes (PathPatch)
    assert points and boxes
    assert max(c.get_zorder() for c in points) < min(p.get_zorder() for p in boxes)
    assert all(c.get_alpha() <= 0.3 for c in points)  # faint
    assert sum(len(c.get_offsets()) for c in points) == 120  # thinned; the boxes keep all 400
    assert _ticks(ax) == ["small\n(n = 200)", "medium\n(n = 150)", "large\n(n = 50)"]
    violin = plots.plot_tau_by_size(frame, kind="violin").axes[0]
    points = [c for c in violin.collections if isinstance(c, PathCollection)]
    bodies = [c for c in violin.collections if not isinstance(c, PathCollection)]
    assert max(c.get_zorder() for c in points) < min(c.get_zorder() for c in bodies)


def test_tau_vs_iou_names_the_iou_not_precision():
    frame = pd.concat([_instances(seed=1, student="baseline"), _instances(seed=2, student="RM+PFI")])
    fig = plots.plot_tau_vs_iou(frame, hue="student", bins=5)
    _png(fig)
    ax = fig.axes[0]
    assert len(ax.collections) >= 2  # one scatter per student
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["baseline (n=55)", "RM+PFI (n=55)"]
    assert ax.get_xlim() == (0, 1)
    text = " ".join([ax.get_title(), ax.get_xlabel(), ax.get_ylabel()])
    assert "precision" not in text.lower()
    assert "IoU of the student's top-ranked box" in ax.get_title()
    assert "IoU of the student's top-ranked box" in ax.get_xlabel() and "[0, 1]" in ax.get_xlabel()
    assert "n = 55 instances × 2 students" in ax.get_title()
    teacher = plots.plot_tau_vs_iou(frame, iou="t_top1_iou").axes[0]
    assert "teacher's top-ranked box" in teacher.get_xlabel() and "t_top1_iou" in teacher.get_xlabel()
    # into a caller's axes
    fig2 = Figure()
    ax2 = fig2.add_subplot()
    assert plots.plot_tau_vs_iou(_instances(), ax=ax2) is fig2


def _edges(mesh: QuadMesh) -> tuple[np.ndarray, np.ndarray]:
    coords = mesh.get_coordinates()  # [h + 1, w + 1, 2]
    return coords[0, :, 0], coords[:, 0, 1]


def _assert_tiles(mesh: QuadMesh, W: float, H: float) -> None:
    """The cells cover [0, W] x [0, H] exactly: first edge 0, last edge the size, no gaps."""
    xs, ys = _edges(mesh)
    assert xs[0] == 0 and xs[-1] == W and np.all(np.diff(xs) >= 0)
    assert ys[0] == 0 and ys[-1] == H and np.all(np.diff(ys) >= 0)
    assert mesh.axes.get_aspect() == 1.0  # square pixels, as the image panel's imshow


def test_cell_edges_centre_cells_on_their_anchors_and_tile_the_image():
    # P3 of a 64 px axis: cell c spans the pixels nearest its anchor centre 8c
    assert plots.cell_edges(8, 8, 1.0, 64).tolist() == [0, 4, 12, 20, 28, 36, 44, 52, 64]
    assert plots.cell_edges(1, 128, 1.0, 128).tolist() == [0, 128]  # a 1x1 level fills the image
    assert plots.cell_edges(3, 32, 1.0, 48).tolist() == [0, 16, 48, 48]  # a padding cell gets no width
    assert plots.cell_edges(8, 8, 0.5, 32).tolist() == [0, 2, 6, 10, 14, 18, 22, 26, 32]  # input at 2x
    assert plots.cell_edges(8, 8, 1.0, 64, align="block").tolist() == list(range(0, 65, 8))
    with pytest.raises(ValueError, match="align"):
        plots.cell_edges(8, 8, align="centre")


def test_gap_panels_tile_the_image_with_one_scale_per_column():
    detail = make_detail()
    detail.maps.append({"level": 3, "stride": 64, "f_dif": np.full((1, 1), 0.5), "p_dif": np.full((1, 1), 0.1)})
    fig = plots.plot_gap_panels(detail)
    _png(fig)
    H, W = 48, 64
    assert len(fig.axes) == 4 * 4 + 3  # 4 levels x 4 panels + a colour bar per map column
    panels = np.array(fig.axes[:16]).reshape(4, 4)
    for ax in panels.ravel():
        assert len(_rects(ax)) == len(detail.gt)  # both GTs on every panel
        assert "nan" not in ax.get_title()
    for row, m in zip(panels, detail.maps):
        h, w = m["f_dif"].shape
        assert row[0].get_title().startswith(f"P{3 + m['level']} (stride {m['stride']}), {h}×{w} cells")
        for ax in row[1:]:
            mesh = ax.collections[0]
            assert isinstance(mesh, QuadMesh) and mesh.get_array().shape == (h, w)
            _assert_tiles(mesh, W, H)
    # interior edges midway between anchor centres (c * stride); the 1x1 level fills the panel
    assert _edges(panels[0, 1].collections[0])[0].tolist() == [0, 4, 12, 20, 28, 36, 44, 52, 64]
    assert [e.tolist() for e in _edges(panels[3, 1].collections[0])] == [[0, 64], [0, 48]]
    r = np.corrcoef(detail.maps[0]["f_dif"].ravel(), detail.maps[0]["p_dif"].ravel())[0, 1]
    assert f"r = {r:.2f}" in panels[0, 0].get_title()
    assert "r undefined (1 cell)" in panels[3, 0].get_title()
    # one colour scale per column: 0 to the max over the levels drawn, with a labelled colour bar
    products = [m["f_dif"] * m["p_dif"] for m in detail.maps]
    expected = {1: max(m["f_dif"].max() for m in detail.maps), 2: max(m["p_dif"].max() for m in detail.maps),
                3: max(p.max() for p in products)}
    units = {1: "squared feature difference", 2: "squared probability difference", 3: "PFI"}
    for col in (1, 2, 3):
        meshes = [ax.collections[0] for ax in panels[:, col]]
        assert {(m.norm.vmin, m.norm.vmax) for m in meshes} == {(0.0, expected[col])}
        bars = [m.colorbar for m in meshes if m.colorbar is not None]
        assert len(bars) == 1 and bars[0].vmin == 0 and bars[0].vmax == expected[col]
        assert units[col] in bars[0].ax.get_xlabel()


def test_gap_panels_scales_names_and_undefined_r():
    detail = make_detail(strides=(4, 8, 16))  # a min_level=2 detector: P2..P4
    detail.maps[2]["p_dif"] = detail.maps[2]["p_dif"] * 0.01
    detail.maps[1]["f_dif"] = np.full_like(detail.maps[1]["f_dif"], 0.2)  # constant: r undefined
    fig = plots.plot_gap_panels(detail, levels=[1, 2])
    assert fig.axes[0].get_title().startswith("P3 (stride 8)") and fig.axes[4].get_title().startswith("P4 (stride 16)")
    assert "r undefined (constant map)" in fig.axes[0].get_title()
    assert all("nan" not in ax.get_title() for ax in fig.axes)
    # alone, a level is scaled to its own max; with the image's scales, to the max over all levels
    alone = plots.plot_gap_panels(detail, levels=[2]).axes[2].collections[0]
    assert alone.norm.vmax == detail.maps[2]["p_dif"].max()
    scales = plots.gap_scales(detail)
    assert scales["p_dif"] == max(m["p_dif"].max() for m in detail.maps)
    kept = plots.plot_gap_panels(detail, levels=[2], scales=scales).axes[2].collections[0]
    assert kept.norm.vmax == scales["p_dif"] > alone.norm.vmax

    # a detector that read the image at 2x: cells are half as wide in image pixels and still tile it
    half = make_detail(scale=(0.5, 0.5))
    fig = plots.plot_gap_panels(half, levels=[0])
    mesh = fig.axes[1].collections[0]
    assert mesh.get_array().shape == (12, 16)
    _assert_tiles(mesh, 64, 48)
    assert _edges(mesh)[0][:3].tolist() == [0, 2, 6]

    one = plots.plot_gap_panels(make_detail(), levels=[1])
    assert len(one.axes) == 4 + 3 and one.axes[0].get_title().startswith("P4 (stride 16)")
    with pytest.raises(ValueError, match="level"):
        plots.plot_gap_panels(detail, levels=[5])


def test_location_masks_overlay_the_mask_values():
    detail = make_detail()
    gt_cells = np.zeros((6, 8), dtype=bool)
    gt_cells[1, 2] = True  # one cell: its outline is the 4 sides of [12, 20] x [4, 12]
    weight = detail.maps[0]["f_dif"] * detail.maps[0]["p_dif"]
    masks = {"full map": torch.ones(6, 8, dtype=torch.bool), "GT box": gt_cells, "PFI": weight}
    fig = plots.plot_location_masks(detail, masks, level=0, labels={"PFI": "P_dif × F_dif per cell"})
    _png(fig)
    panels = fig.axes[:3]
    assert [ax.get_title() for ax in panels] == ["full map: 48 of 48 cells", "GT box: 1 of 48 cells",
                                                 f"PFI: weight, max {weight.max():.2g}"]
    assert "P3 (stride 8)" in fig._suptitle.get_text()
    meshes = [next(c for c in ax.collections if isinstance(c, QuadMesh)) for ax in panels]
    for ax, mesh in zip(panels, meshes):
        _assert_tiles(mesh, 64, 48)
        assert len(_rects(ax)) == len(detail.gt)
    # binary masks: exactly the True cells drawn, in one colour, semi-transparent, outlined
    for mesh, mask in zip(meshes[:2], (np.ones((6, 8), bool), gt_cells)):
        assert np.array_equal(~np.ma.getmaskarray(mesh.get_array()), mask)
        assert mesh.cmap(1.0)[:3] == to_rgba(plots.MASK_COLOR)[:3] and 0 < mesh.get_alpha() < 1
    outlines = [c for c in panels[1].collections if isinstance(c, LineCollection)]
    assert len(outlines) == 2  # a light line under a dark one
    corners = {tuple(p) for seg in outlines[1].get_segments() for p in seg}
    assert len(outlines[1].get_segments()) == 4 and corners == {(12, 4), (20, 4), (12, 12), (20, 12)}
    # the continuous weight: its values, 0 transparent, opacity up to the max, a labelled colour bar
    assert np.allclose(meshes[2].get_array(), weight)
    assert meshes[2].norm.vmin == 0 and meshes[2].norm.vmax == weight.max()
    assert meshes[2].cmap(meshes[2].norm(0.0))[3] == 0 and meshes[2].cmap(meshes[2].norm(weight.max()))[3] > 0.5
    assert meshes[2].colorbar is not None and "P_dif × F_dif per cell" in meshes[2].colorbar.ax.get_ylabel()
    assert meshes[0].colorbar is None and meshes[1].colorbar is None
    with pytest.raises(ValueError, match="level"):
        plots.plot_location_masks(detail, masks, level=7)
    with pytest.raises(ValueError, match="no mask"):
        plots.plot_location_masks(detail, {}, level=0)


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
    # the anchor's level is named by its stride (level 1, stride 16: P4), P3 for a min_level=2 detector
    assert "its anchor 80 (P4)" in [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    p2 = plots.plot_kept_boxes(make_detail(strides=(4, 8, 16)))
    assert "its anchor 80 (P3)" in [t.get_text() for t in p2.axes[1].get_legend().get_texts()]

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


def test_draw_helpers_take_tensors():
    """draw_boxes / draw_map: the blocks for a notebook's own figure (targets and maps as tensors)."""
    fig = Figure()
    ax = fig.add_subplot()
    rects = plots.draw_boxes(ax, torch.tensor([[4.0, 4.0, 24.0, 28.0], [30.0, 10.0, 60.0, 44.0]]), label="GT")
    assert [r.get_xy() for r in rects] == [(4.0, 4.0), (30.0, 10.0)]
    assert rects[0].get_label() == "GT" != rects[1].get_label()  # a legend lists the GT once
    mesh = plots.draw_map(ax, torch.rand(3, 4), 16, size=(48, 64), cmap="magma")
    _assert_tiles(mesh, 64, 48)
    assert _edges(mesh)[0].tolist() == [0, 8, 24, 40, 64]
