"""Pictures of the paper's two observations, drawn from :mod:`rmkd.analysis` frames.

- :func:`plot_tau_by_size`, :func:`plot_tau_vs_iou`: rank agreement per instance
  (``Collection.instances``), by COCO size and against the IoU of the student's
  top-ranked box.
- :func:`plot_gap_panels`: F_dif vs P_dif maps of one image (an ``ImageDetail``),
  one colour scale per map type (:func:`gap_scales`).
- :func:`plot_location_masks`: where each feature-imitation variant imitates, as
  overlays on the image (binary masks and continuous weights such as PFI's).
- :func:`draw_map`, :func:`draw_boxes`, :func:`cell_edges`: the building blocks, for
  notebooks that draw their own maps.
- :func:`plot_kept_boxes`: the paper's Figure 2, the anchor each model kept after NMS.
- :func:`plot_candidates`: one GT's candidate anchors coloured by each model's rank.
- :func:`read_metrics`, :func:`plot_hook_curves`: the training-time hook's curves.

Every function returns a :class:`matplotlib.figure.Figure` and never calls
``plt.show``. Figures are built with ``Figure(...)`` rather than ``plt.subplots``:
pyplot does not track them, so nothing leaks in a loop, and a notebook shows a
returned figure once (the inline backend displays ``Figure`` objects). Where a
function takes ``ax``/``axes`` it draws into the caller's figure and returns it.
All boxes are xyxy in the image's original pixels, as ``ImageDetail`` keeps them.

Where a feature map's cells go on the image (:func:`cell_edges`): torchvision puts
the anchors of cell (r, c) of a stride-s level at (c, r) * s in the detector's input,
and the cell's receptive field is centred there too, not on the stride block
[c s, (c + 1) s) to its lower right: ResNet's strided convolutions pad symmetrically
(a randomly initialised ResNet-18 FPN, 128 px input: the input-gradient centroid of a
central P3, P4, P5 cell lies 2-4 px up-left of (c, r) * s, 8-18 px from the block's
centre). So each cell is drawn over the pixels nearer to its anchor centre
than to any other cell's: interior cells span [(c - 1/2) s, (c + 1/2) s), the edge
cells reach the image border. The cells tile the image exactly (no white bands, a
1x1 level fills the panel), and a cell sits on the objects whose GT box holds its
anchor centre (:func:`rmkd.candidates.gt_mask`'s rule).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import LinearSegmentedColormap, ListedColormap, Normalize, PowerNorm, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from scipy.stats import kendalltau

from . import jsonio

SIZES = ("small", "medium", "large")  # COCO's order (rmkd.analysis.collect.SIZES)
SIZE_AXIS_LABEL = ("COCO size class of the GT, by its area in original px\n"
                   "(small < 32², medium 32²–96², large ≥ 96²)")
TAU_LABEL = "Kendall τ of the candidates' scores\n(teacher vs student, unitless, [-1, 1])"
GT_COLOR = "#39ff14"
# Location overlays: one saturated blue (it reads on most photos and is far from the
# green GT boxes); binary masks get a two-tone outline so their edge shows on any background.
MASK_COLOR = "#1e90ff"
OUTLINE_COLORS = ("white", "#0b3d91")
MODEL_COLORS = {"teacher": "#1f77b4", "student": "#ff7f0e"}


# ----------------------------------------------------------------------------- helpers


def _new_axes(ax, figsize) -> tuple[Figure, object]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _numeric(series: pd.Series) -> np.ndarray:
    """Float array of a column that may be nullable (``boolean``, ``Float64``) or hold NA."""
    return pd.to_numeric(series.astype("Float64"), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _require(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c is not None and c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: the frame lacks column(s) {missing}; it has {list(frame.columns)}")


def _image_hwc(detail) -> np.ndarray:
    """``[3, H, W]`` tensor in [0, 1] -> ``[H, W, 3]`` numpy for imshow."""
    image = detail.image.detach().cpu().float().numpy() if hasattr(detail.image, "detach") else np.asarray(detail.image)
    return np.clip(np.transpose(image, (1, 2, 0)), 0.0, 1.0)


def _draw_image(ax, detail, dim: float = 0.0, *, gray: bool = False, pixel_axes: bool = False) -> tuple[int, int]:
    """The image on ``ax`` in its own pixels; ``dim`` in [0, 1) fades it toward white
    so thin coloured boxes stay readable on busy images; ``gray`` drops its colours,
    so a coloured overlay reads whatever the photo's hues. ``pixel_axes`` keeps a few
    ticks and labels the axes in original pixels (one panel per row is enough: the
    other panels of a figure share its coordinates)."""
    image = _image_hwc(detail)
    if gray:
        image = np.repeat(image @ np.array([0.299, 0.587, 0.114])[:, None], 3, axis=2)  # luma
    image = image * (1 - dim) + dim
    h, w = image.shape[:2]
    ax.imshow(image, extent=(0, w, h, 0), interpolation="nearest")
    _image_limits(ax, h, w, pixel_axes=pixel_axes)
    return h, w


def _image_limits(ax, h: float, w: float, *, pixel_axes: bool = False) -> None:
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    if pixel_axes:
        ax.xaxis.set_major_locator(MaxNLocator(3, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(3, integer=True))
        ax.tick_params(labelsize="x-small")
        ax.set_xlabel("x (px)", fontsize="small")
        ax.set_ylabel("y (px)", fontsize="small")
    else:
        ax.set_xticks([])
        ax.set_yticks([])


def _box(ax, xyxy, color, *, lw=1.5, ls="-", label=None, alpha=1.0, zorder=3) -> Rectangle:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    rect = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=lw,
                     linestyle=ls, label=label, alpha=alpha, zorder=zorder)
    ax.add_patch(rect)
    return rect


def draw_boxes(ax, boxes, color: str = GT_COLOR, *, lw: float = 1.5, label: str | None = None) -> list[Rectangle]:
    """Outline xyxy ``boxes [N, 4]`` (array, tensor or a frame with ``x1..y2``) on ``ax``.

    Notebooks pass a target's ``boxes`` (original pixels); only the first box
    carries ``label``, so a legend lists it once."""
    if isinstance(boxes, pd.DataFrame):
        boxes = boxes[["x1", "y1", "x2", "y2"]].to_numpy()
    boxes = np.asarray(boxes.detach().cpu() if hasattr(boxes, "detach") else boxes, dtype=np.float64).reshape(-1, 4)
    return [_box(ax, b, color, lw=lw, label=label if k == 0 else None) for k, b in enumerate(boxes)]


def _draw_gts(ax, gt: pd.DataFrame, only: int | None = None) -> None:
    rows = gt if only is None else gt[gt["gt_index"] == only]
    draw_boxes(ax, rows, label="GT" if only is not None else None)


def _level_name(level: int, stride: int) -> str:
    """``P{l} (stride 2^l)``: named by its stride, so P2..P6 detectors read right too."""
    return f"P{int(stride).bit_length() - 1} (stride {int(stride)})"


def _level_short(detail, level: int) -> str:
    """``"P3"`` for level index ``level`` of ``detail``, from the stride its maps carry."""
    stride = next((m["stride"] for m in detail.maps if int(m["level"]) == level), None)
    return _level_name(level, stride).split(" ")[0] if stride is not None else f"level {level}"


def _gt_row(detail, gt_index: int) -> pd.Series:
    rows = detail.gt[detail.gt["gt_index"] == gt_index]
    if rows.empty:
        raise ValueError(f"image {detail.image_id} has no GT #{gt_index}; it has {list(detail.gt['gt_index'])}")
    return rows.iloc[0]


def _gt_name(detail, row: pd.Series) -> str:
    name = row["category"] if "category" in row.index else f"label {int(row['label'])}"
    return f"GT #{int(row['gt_index'])} ({name})"


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy ``box [4]`` with ``boxes [N, 4]`` -> ``[N]``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two maps over their locations; NaN when either is constant."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # x - mean leaves rounding noise, not 0: r would be noise
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float(np.clip((x * y).sum() / den, -1, 1)) if den > 0 else float("nan")


def _r_text(x: np.ndarray, y: np.ndarray) -> str:
    """``"r = 0.12"``, or why r is undefined: never "nan" in a title."""
    if np.size(x) < 2:
        return f"r undefined ({np.size(x)} cell)"
    r = _pearson(x, y)
    return f"r = {r:.2f}" if np.isfinite(r) else "r undefined (constant map)"


# ----------------------------------------------------------------------------- observation 1


IOU_LABELS = {
    "s_top1_iou": "IoU of the student's top-ranked box",
    "t_top1_iou": "IoU of the teacher's top-ranked box",
    "s_best_iou": "best IoU among the student's candidate boxes",
    "t_best_iou": "best IoU among the teacher's candidate boxes",
    "s_kept_iou": "IoU of the student's kept box",
    "t_kept_iou": "IoU of the teacher's kept box",
}


def _instances_of(frame: pd.DataFrame, hue: str | None) -> int:
    """Distinct GT instances in ``frame``: by ``instance_id`` when present; else, with
    ``hue``, the largest group (each student sees the same instances), else the rows."""
    if "instance_id" in frame.columns:
        return int(frame["instance_id"].nunique())
    if hue is not None and len(frame):
        return int(frame.groupby(hue, observed=True).size().max())
    return len(frame)


def _n_text(frame: pd.DataFrame, hue: str | None, column: str | None = None) -> str:
    """``"n = 55 instances"``, or ``"n = 55 instances × 2 students"`` with ``hue``:
    with several students each instance is a row per student, so rows over-count.
    ``column`` holds the hue's values when it is not named ``hue`` in ``frame``."""
    column = column or hue
    n = f"n = {_instances_of(frame, column)} instances"
    if hue is None:
        return n
    groups = frame[column].nunique()
    return f"{n} × {groups} {hue}{'' if groups == 1 else 's'}"


def _fold_sizes(counts: Mapping[str, int], min_count: int) -> dict[str, str]:
    """``{size: class label}``: a class with fewer than ``min_count`` instances joins its
    smaller neighbour (the smallest class joins the next larger one), e.g. 4 large
    instances next to 30 medium ones give ``"medium+large"``. A box over a handful of
    points draws a spread that is not there."""
    groups = [[size] for size in SIZES if counts.get(size, 0) > 0]
    total = lambda g: sum(counts[s] for s in g)  # noqa: E731
    while len(groups) > 1 and any(total(g) < min_count for g in groups):
        k = max(i for i, g in enumerate(groups) if total(g) < min_count)  # largest sizes first
        j = k - 1 if k > 0 else 1
        lo, hi = sorted((j, k))
        groups[lo:hi + 1] = [groups[lo] + groups[hi]]
    return {size: "+".join(g) for g in groups for size in g}


def plot_tau_by_size(instances: pd.DataFrame, hue: str | None = None, *, kind: str = "box", min_count: int = 10,
                     max_points: int = 2000, ax=None) -> Figure:
    """Kendall tau of each instance's candidates, per COCO size class.

    Args:
        instances: ``Collection.instances`` (needs ``kendall_tau`` and ``size``);
            instances with a NaN tau (fewer than two candidates) are dropped.
        hue: a column to split by, e.g. ``"student"`` when frames of several
            students are concatenated; counts are then distinct instances
            (``instance_id``) times students.
        kind: ``"box"`` or ``"violin"``.
        min_count: a size class with fewer instances is folded into its neighbour
            (:func:`_fold_sizes`), labelled e.g. ``"medium+large"``.
        max_points: at most this many instances drawn as points (a fixed random
            subset); the boxes use all of them.
        ax: draw into this axes instead of a new figure.

    Classes appear in COCO order; each tick label gives its instance count. The
    points sit beneath the boxes (lower zorder, faint) so the boxes stay readable.
    y spans [-1, 1].
    """
    if kind not in ("box", "violin"):
        raise ValueError(f"kind must be 'box' or 'violin', got {kind!r}")
    _require(instances, ["kendall_tau", "size", hue], "plot_tau_by_size")
    data = instances.assign(kendall_tau=_numeric(instances["kendall_tau"]))
    data = data[np.isfinite(data["kendall_tau"])]
    counts = {s: _instances_of(data[data["size"] == s], hue) for s in SIZES}
    fold = _fold_sizes(counts, min_count)
    data = data.assign(size_class=data["size"].map(fold))
    order = list(dict.fromkeys(fold[s] for s in SIZES if s in fold))
    fig, ax = _new_axes(ax, (5.5, 4.2))
    if data.empty:
        ax.text(0.5, 0.5, "no instance with a Kendall tau\n(each needs >= 2 candidates)", ha="center", va="center",
                transform=ax.transAxes)
    else:
        common = dict(x="size_class", y="kendall_tau", order=order, hue=hue, ax=ax)
        points = data.sample(max_points, random_state=0) if len(data) > max_points else data
        # zorder: seaborn puts strip points at 3, above the boxes (2); drawn at 1 they stay behind.
        style = dict(dodge=True, alpha=0.25) if hue is not None else dict(color="0.45", alpha=0.3)
        sns.stripplot(data=points, **common, **style, size=2.0, jitter=0.2, legend=False, zorder=1)
        if kind == "box":
            sns.boxplot(data=data, **common, showfliers=False, width=0.6, boxprops=dict(alpha=0.75), zorder=2)
        else:
            sns.violinplot(data=data, **common, cut=0, inner="quart", density_norm="width", alpha=0.6, zorder=2)
        n = {c: _instances_of(data[data["size_class"] == c], hue) for c in order}
        ax.set_xticks(range(len(order)), [f"{c}\n(n = {n[c]})" for c in order])
    ax.axhline(0, color="0.5", lw=0.8, ls=":", zorder=0)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel(SIZE_AXIS_LABEL, fontsize="small")
    ax.set_ylabel(TAU_LABEL)
    ax.set_title(f"Rank agreement per size\n({_n_text(data, hue)})", fontsize="medium")
    return fig


def plot_tau_vs_iou(instances: pd.DataFrame, hue: str | None = None, iou: str = "s_top1_iou", *,
                    bins: int = 10, ax=None) -> Figure:
    """Kendall tau vs the IoU of the student's top-ranked box with its GT.

    Each instance is a faint point; a line with markers gives the mean tau in
    ``bins`` equal IoU bins over [0, 1] (error bars: standard error; bins with
    one instance have none). Instances with a NaN tau or IoU are dropped.

    Args:
        instances: ``Collection.instances``.
        hue: a column to split by (e.g. ``"student"``): one colour and one line each.
        iou: the x column, e.g. ``"s_top1_iou"`` (default), ``"t_top1_iou"`` or
            ``"s_kept_iou"``; the axis names it (:data:`IOU_LABELS`).
    """
    _require(instances, ["kendall_tau", iou, hue], "plot_tau_vs_iou")
    data = pd.DataFrame({"tau": _numeric(instances["kendall_tau"]), "iou": _numeric(instances[iou])})
    data["group"] = instances[hue].astype(str).to_numpy() if hue is not None else "all"
    if "instance_id" in instances.columns:
        data["instance_id"] = instances["instance_id"].to_numpy()
    data = data[np.isfinite(data["tau"]) & np.isfinite(data["iou"])]
    fig, ax = _new_axes(ax, (5.5, 4.2))
    groups = list(dict.fromkeys(data["group"]))
    colors = sns.color_palette(n_colors=max(len(groups), 1))
    edges = np.linspace(0.0, 1.0, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    for group, color in zip(groups, colors):
        part = data[data["group"] == group]
        ax.scatter(part["iou"], part["tau"], s=8, alpha=0.3, color=color, linewidths=0)
        which = np.clip(np.digitize(part["iou"], edges[1:-1]), 0, bins - 1)
        stats = part.groupby(which)["tau"].agg(["mean", "sem", "size"])
        label = f"{group} (n={len(part)})" if hue is not None else f"binned mean (n={len(part)})"
        ax.errorbar(centers[stats.index], stats["mean"], yerr=stats["sem"].fillna(0), color=color, marker="o",
                    ms=4, lw=1.5, capsize=2, label=label)
    if data.empty:
        ax.text(0.5, 0.5, "no instance with both a tau and an IoU", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(loc="lower right", fontsize="small")
    name = IOU_LABELS.get(iou, iou)
    ax.axhline(0, color="0.5", lw=0.8, ls=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel(f"{name} with its GT\n({iou}; IoU, unitless, [0, 1])", fontsize="small")
    ax.set_ylabel(TAU_LABEL)
    ax.set_title(f"Rank agreement vs {name}\n({_n_text(data, hue, 'group')})", fontsize="medium")
    return fig


# ----------------------------------------------------------------------------- observation 2


GAP_MAPS = (  # key, panel title, colormap, colour-bar label (what the value is, in what unit)
    ("f_dif", "F_dif", "magma", "F_dif: squared feature difference\n(teacher − adapted student, mean over channels)"),
    ("p_dif", "P_dif", "magma", "P_dif: squared probability difference\n(mean over the A·K class outputs)"),
    ("product", "F_dif × P_dif", "viridis",
     "F_dif × P_dif: PFI's per-cell term\n(squared feature × squared probability diff.)"),
)


def _array(x) -> np.ndarray:
    """numpy of an array (a masked one stays masked) or a (CPU or GPU) tensor."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asanyarray(x)  # keeps a mask


def cell_edges(n: int, stride: float, scale: float = 1.0, limit: float | None = None,
               align: str = "anchor") -> np.ndarray:
    """``[n + 1]`` edges, in image pixels, of ``n`` feature-map cells along one axis.

    Args:
        n: cells along the axis (``w`` for x, ``h`` for y).
        stride: the level's stride in the detector's input pixels.
        scale: image pixels per input pixel along the axis (``ImageDetail.scale``).
        limit: the image's size along the axis (W or H). The edges are clipped to
            [0, limit] and the last one is set to it, so the cells tile [0, limit]
            exactly; cells of the detector's padding past the image get zero width.
            None: ``n * stride * scale``.
        align: ``"anchor"``: cell c covers the pixels nearest to its anchor centre
            c * stride, [(c - 1/2) s, (c + 1/2) s), where its receptive field is
            centred (module docstring); ``"block"``: the stride block
            [c s, (c + 1) s) to the lower right of the anchor centre.
    """
    step = float(stride) * float(scale)
    if align == "anchor":
        edges = (np.arange(n + 1) - 0.5) * step
    elif align == "block":
        edges = np.arange(n + 1) * step
    else:
        raise ValueError(f"align must be 'anchor' or 'block', got {align!r}")
    limit = n * step if limit is None else float(limit)
    edges = np.clip(edges, 0.0, limit)
    edges[-1] = limit  # the last cell reaches the border: no white band
    return edges


def draw_map(ax, grid, stride: float, *, size: tuple[float, float], scale: tuple[float, float] = (1.0, 1.0),
             align: str = "anchor", **kwargs):
    """Draw one level's ``[h, w]`` map over an image of ``size = (H, W)`` original pixels.

    Each cell is a flat quad between :func:`cell_edges` (pcolormesh, not imshow: the
    edge cells differ in width from the others, which one imshow extent cannot draw).
    ``scale`` is ``(x, y)`` original pixels per input pixel; ``kwargs`` go to
    ``pcolormesh`` (``cmap``, ``norm``, ``alpha``...). Returns the ``QuadMesh``.
    """
    grid = _array(grid)
    h, w = grid.shape
    H, W = size
    xe = cell_edges(w, stride, scale[0], W, align)
    ye = cell_edges(h, stride, scale[1], H, align)
    mesh = ax.pcolormesh(xe, ye, grid, shading="flat", **kwargs)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)  # image orientation: row 0 at the top
    ax.set_aspect("equal")  # square pixels, like imshow: boxes keep their shape across panels
    return mesh


def _maps_by_level(detail, levels) -> tuple[dict[int, dict], list[int]]:
    maps = {int(m["level"]): m for m in detail.maps}
    levels = list(maps) if levels is None else [int(lv) for lv in levels]
    unknown = [lv for lv in levels if lv not in maps]
    if unknown or not levels:
        raise ValueError(f"image {detail.image_id}: no map for level(s) {unknown or levels}; it has {list(maps)}")
    return maps, levels


def _gap_grids(m: dict) -> dict[str, np.ndarray]:
    f_dif, p_dif = _array(m["f_dif"]).astype(np.float64), _array(m["p_dif"]).astype(np.float64)
    return {"f_dif": f_dif, "p_dif": p_dif, "product": f_dif * p_dif}


def gap_scales(detail, levels: Sequence[int] | None = None) -> dict[str, float]:
    """``{"f_dif", "p_dif", "product": max}`` over ``levels`` (None = all) of one image:
    the colour scales of :func:`plot_gap_panels`, to keep across calls (one level at a time)."""
    maps, levels = _maps_by_level(detail, levels)
    grids = [_gap_grids(maps[lv]) for lv in levels]
    return {key: max(max(float(g[key].max(initial=0.0)) for g in grids), 1e-12) for key, *_ in GAP_MAPS}


def plot_gap_panels(detail, levels: Sequence[int] | None = None, *, scales: Mapping[str, float] | None = None,
                    align: str = "anchor") -> Figure:
    """F_dif vs P_dif of one image: a row per FPN level, 4 columns.

    Columns: the image, F_dif, P_dif, F_dif × P_dif (what PFI weighs). Cells are
    placed by :func:`cell_edges` (centred on their anchors, tiling the image; see
    the module docstring), so they line up with the GT boxes drawn on every panel.
    Each map column has one linear colour scale from 0 to its maximum over the
    levels drawn, with a labelled colour bar: a coarse level whose differences are
    100x smaller looks 100x darker, not as strong as P3. The image column's title
    names the level by its stride (``P3 (stride 8)``) and gives the Pearson r of
    F_dif and P_dif over its cells, or why r is undefined (1 cell, constant map).

    Args:
        detail: an ``ImageDetail`` (maps ``[h, w]`` per level, ``scale``).
        levels: level indices to draw (``detail.maps[i]["level"]``); None = all.
        scales: ``{"f_dif", "p_dif", "product": vmax}`` to use instead of the maxima
            of ``levels`` (:func:`gap_scales` of all levels, as ``LevelSelector`` does).
        align: see :func:`cell_edges`.
    """
    maps, levels = _maps_by_level(detail, levels)
    vmax = {**gap_scales(detail, levels), **(scales or {})}
    fig = Figure(figsize=(11.0, 2.55 * len(levels) + 1.3), layout="constrained")
    axes = fig.subplots(len(levels), 4, squeeze=False)
    H, W = _image_hwc(detail).shape[:2]
    meshes = {}
    for row, level in zip(axes, levels):
        m, grids = maps[level], _gap_grids(maps[level])
        _draw_image(row[0], detail, pixel_axes=True)
        h, w = grids["f_dif"].shape
        row[0].set_title(f"{_level_name(level, m['stride'])}, {h}×{w} cells\n"
                         f"F_dif vs P_dif: {_r_text(grids['f_dif'], grids['p_dif'])}", fontsize="medium")
        for ax, (key, title, cmap, _) in zip(row[1:], GAP_MAPS):
            meshes[key] = draw_map(ax, grids[key], m["stride"], size=(H, W), scale=detail.scale, align=align,
                                   cmap=cmap, norm=Normalize(0.0, vmax[key]))
            _image_limits(ax, H, W)
            ax.set_title(f"{title} (max {grids[key].max(initial=0.0):.2g})", fontsize="medium")
        for ax in row:
            _draw_gts(ax, detail.gt)
        if level != levels[-1]:
            row[0].set_xlabel("")  # the bottom row's says it; here it would collide with the next title
    for col, (key, _, _, label) in enumerate(GAP_MAPS, start=1):
        # "%.2g" ticks: the default's offset text ("1e-6") would sit on the label
        bar = fig.colorbar(meshes[key], ax=list(axes[:, col]), location="bottom", shrink=0.95, aspect=25,
                           format="%.2g", ticks=MaxNLocator(3))
        bar.set_label(label, fontsize="small")
        bar.ax.tick_params(labelsize="x-small")
    fig.suptitle(f"image {detail.image_id}: where features differ (F_dif) vs where predictions differ (P_dif)\n"
                 "one colour scale per column over the levels shown; GT boxes in green", fontsize="medium")
    return fig


def _outline(ax, mask: np.ndarray, xe: np.ndarray, ye: np.ndarray) -> list[LineCollection]:
    """The border of the True cells of ``mask [h, w]``: a segment wherever a cell and its
    neighbour (or the outside) differ; white under dark blue, so it shows on any photo."""
    m = np.pad(mask, 1)  # outside the map counts as False
    vertical = m[1:-1, 1:] != m[1:-1, :-1]  # [h, w + 1]: between column j - 1 and j, at x edge j
    horizontal = m[1:, 1:-1] != m[:-1, 1:-1]  # [h + 1, w]: between row i - 1 and i, at y edge i
    segments = [[(xe[j], ye[r]), (xe[j], ye[r + 1])] for r, j in zip(*np.nonzero(vertical))]
    segments += [[(xe[c], ye[i]), (xe[c + 1], ye[i])] for i, c in zip(*np.nonzero(horizontal))]
    return [ax.add_collection(LineCollection(segments, colors=color, linewidths=lw, zorder=2.5))
            for color, lw in zip(OUTLINE_COLORS, (2.4, 1.0))]


def _is_binary(mask: np.ndarray) -> bool:
    return mask.dtype == bool or (np.issubdtype(mask.dtype, np.integer) and np.isin(mask, (0, 1)).all())


def plot_location_masks(detail, masks: Mapping[str, object], level: int = 0, *,
                        labels: Mapping[str, str] | None = None, gamma: float = 0.5, ncols: int = 3,
                        align: str = "anchor") -> Figure:
    """Where each feature-imitation variant imitates, on one image and one FPN level.

    One panel per entry of ``masks``: the image in faded grey (so the overlay reads
    whatever its colours), the entry as an overlay in one blue, the GT boxes in green.
    Cells are placed as in :func:`plot_gap_panels`.

    - a boolean (or 0/1 integer) mask, e.g. ``rmkd.candidates.gt_mask(dense)[level][i]``:
      its cells filled semi-transparent, outlined; the title counts them.
    - a float weight, e.g. PFI's ``P_dif × F_dif``: the opacity rises with the weight
      (transparent at 0) with a colour bar labelled ``labels[name]`` (default: the
      name). The scale is a power ``gamma`` (0.5: square root) from 0 to the max,
      since such weights are heavy-tailed: linearly, all but a few cells vanish.

    Args:
        detail: an ``ImageDetail``: its image, GT boxes, ``scale``, and the stride of
            ``level`` (from ``detail.maps``).
        masks: ``{panel title: [h, w]}`` numpy arrays or tensors at that level's map
            shape, in panel order.
        level: the FPN level index (``detail.maps[i]["level"]``) the masks belong to.
        ncols: panels per row.
    """
    maps, _ = _maps_by_level(detail, [level])
    stride, labels = maps[level]["stride"], dict(labels or {})
    if not masks:
        raise ValueError("plot_location_masks: no mask to draw")
    ncols = max(1, min(ncols, len(masks)))
    nrows = -(-len(masks) // ncols)
    fig = Figure(figsize=(3.4 * ncols, 3.3 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    H, W = _image_hwc(detail).shape[:2]
    weights = []  # (name, mesh) of the continuous entries, for their colour bars
    for k, (ax, (name, value)) in enumerate(zip(axes, masks.items())):
        _draw_image(ax, detail, dim=0.3, gray=True, pixel_axes=k % ncols == 0)
        mesh, title, continuous = _overlay(ax, _array(value), stride, (H, W), detail.scale, align, gamma)
        ax.set_title(f"{name}: {title}", fontsize="medium")
        if continuous:
            weights.append((name, mesh))
        _draw_gts(ax, detail.gt)
    for ax in axes[len(masks):]:
        ax.set_visible(False)
    for name, mesh in weights:  # beside the figure, not under one panel: the panels stay aligned
        bar = fig.colorbar(mesh, ax=list(axes), location="right", shrink=0.9, aspect=30, format="%.2g")
        bar.set_label(labels.get(name, name) + (f"\n(colour scale: power {gamma:g})" if gamma != 1 else ""),
                      fontsize="small")
        bar.ax.tick_params(labelsize="x-small")
    handles = [Line2D([], [], color=GT_COLOR, lw=1.5, label="GT box")]
    if len(weights) < len(masks):
        handles.insert(0, Rectangle((0, 0), 1, 1, facecolor=MASK_COLOR, alpha=0.45, edgecolor=OUTLINE_COLORS[1],
                                    label="imitated cells"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(f"{_level_name(level, stride)} of image {detail.image_id}: where each method imitates")
    return fig


def _overlay(ax, grid: np.ndarray, stride, size, scale, align: str, gamma: float) -> tuple[object, str, bool]:
    """One mask or weight ``[h, w]`` over the image on ``ax``: ``(QuadMesh, title, is a weight)``."""
    if _is_binary(grid):
        on = grid.astype(bool)
        mesh = draw_map(ax, np.ma.masked_where(~on, np.ones(on.shape)), stride, size=size, scale=scale, align=align,
                        cmap=ListedColormap([MASK_COLOR]), vmin=0, vmax=1, alpha=0.45, zorder=2)
        _outline(ax, on, *_mesh_edges(mesh))
        return mesh, f"{int(on.sum())} of {on.size} cells", False
    grid = grid.astype(np.float64)
    top = max(float(np.nanmax(grid, initial=0.0)), 1e-12)
    # one hue, opacity from 0 (weight 0: the photo shows through) to 0.85 (the max)
    cmap = LinearSegmentedColormap.from_list("rmkd_weight", [(*to_rgb(MASK_COLOR), 0.0), (*to_rgb(MASK_COLOR), 0.85)])
    mesh = draw_map(ax, grid, stride, size=size, scale=scale, align=align, cmap=cmap,
                    norm=PowerNorm(gamma, vmin=0.0, vmax=top), zorder=2)
    return mesh, f"weight, max {top:.2g}", True


def _mesh_edges(mesh) -> tuple[np.ndarray, np.ndarray]:
    """``(x edges [w + 1], y edges [h + 1])`` of a flat ``QuadMesh``."""
    coords = mesh.get_coordinates()  # [h + 1, w + 1, 2]
    return coords[0, :, 0], coords[:, 0, 1]


# ----------------------------------------------------------------------------- Figure 2


def kept_for_gt(detail, gt_index: int, iou_threshold: float = 0.5) -> dict[str, pd.Series | None]:
    """Per model, the kept detection that "finds" GT ``gt_index``, or None.

    The same rule as :func:`rmkd.analysis.collect` (``t_kept_anchor``/``s_kept_anchor``):
    among the model's kept detections of the GT's label with IoU >= ``iou_threshold``,
    the highest-scoring one. The returned row carries an extra ``iou`` entry.
    """
    gt = _gt_row(detail, gt_index)
    box = gt[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
    out = {}
    for model in ("teacher", "student"):
        rows = detail.kept[(detail.kept["model"] == model) & (detail.kept["label"] == gt["label"])]
        iou = _iou(box, rows[["x1", "y1", "x2", "y2"]].to_numpy()) if len(rows) else np.zeros(0)
        hits = rows.assign(iou=iou)[iou >= iou_threshold]
        out[model] = hits.sort_values("score", ascending=False, kind="stable").iloc[0] if len(hits) else None
    return out


def plot_kept_boxes(detail, gt_index: int | None = None, *, iou_threshold: float = 0.5, axes=None) -> Figure:
    """The paper's Figure 2: which anchor each model's kept box for one GT came from.

    Two panels (teacher | student) on the image: the GT box, the detection the
    model kept after NMS for it (see :func:`kept_for_gt`) and, dashed, the anchor
    that detection was decoded from; the legend gives the score and IoU. A model
    that kept nothing for the GT says "no kept box".

    Args:
        gt_index: the GT to show; None picks the first GT whose two kept anchors
            differ (both models found it), else the first GT.
        axes: two axes to draw into.

    The figure's suptitle names the chosen GT (``GT #i``) and whether the anchors differ.
    """
    if detail.gt.empty:
        raise ValueError(f"image {detail.image_id} has no GT box to show")
    matches = {int(g): kept_for_gt(detail, int(g), iou_threshold) for g in detail.gt["gt_index"]}

    def differs(m):
        return m["teacher"] is not None and m["student"] is not None and m["teacher"]["anchor"] != m["student"]["anchor"]

    if gt_index is None:
        gt_index = next((g for g, m in matches.items() if differs(m)), int(detail.gt["gt_index"].iloc[0]))
    if gt_index not in matches:
        _gt_row(detail, gt_index)  # raises with the list of GTs
    match = matches[gt_index]
    gt = _gt_row(detail, gt_index)
    if axes is None:
        fig = Figure(figsize=(8.5, 4.6), layout="constrained")
        axes = fig.subplots(1, 2)
    else:
        fig = axes[0].figure
    for ax, model in zip(axes, ("teacher", "student")):
        _draw_image(ax, detail, dim=0.35)
        _box(ax, gt[["x1", "y1", "x2", "y2"]], GT_COLOR, lw=2, label="GT")
        row, color = match[model], MODEL_COLORS[model]
        if row is None:
            ax.set_title(f"{model}: no kept box", fontsize="medium")
            ax.text(0.5, 0.04, "no kept box", ha="center", va="bottom", color="white", transform=ax.transAxes,
                    bbox=dict(facecolor="black", alpha=0.6, lw=0))
        else:
            _box(ax, row[["x1", "y1", "x2", "y2"]], color, lw=2, label=f"kept box (score {row['score']:.2f}, IoU {row['iou']:.2f})")
            _box(ax, row[["ax1", "ay1", "ax2", "ay2"]], color, lw=1.5, ls="--",
                 label=f"its anchor {int(row['anchor'])} ({_level_short(detail, int(row['level']))})")
            ax.set_title(f"{model}: anchor {int(row['anchor'])}", fontsize="medium")
        ax.legend(loc="upper left", fontsize="x-small", framealpha=0.8)
    verdict = "kept anchors differ" if differs(match) else (
        "same kept anchor" if match["teacher"] is not None and match["student"] is not None else "not found by both")
    fig.suptitle(f"image {detail.image_id}, {_gt_name(detail, gt)}: {verdict}")
    return fig


def plot_candidates(detail, gt_index: int, axes=None, *, cmap: str = "viridis_r") -> Figure:
    """One GT's candidate anchors coloured by the teacher's rank and by the student's.

    Two panels on the image, one colour scale (rank 1 = brightest with the default
    ``viridis_r``; colorbar on the right). Each model's top-1 anchor is drawn thick
    and named in its panel's title. The suptitle gives the number of candidates and
    Kendall tau-b of the two score lists (NaN with fewer than two).

    Args:
        detail: an ``ImageDetail``.
        gt_index: which GT of the image (``detail.gt["gt_index"]``).
        axes: two axes to draw into.
    """
    gt = _gt_row(detail, gt_index)
    cand = detail.candidates[detail.candidates["gt_index"] == gt_index]
    n = len(cand)
    if axes is None:
        fig = Figure(figsize=(9.0, 4.4), layout="constrained")
        axes = fig.subplots(1, 2)
    else:
        fig = axes[0].figure
    norm = Normalize(vmin=1, vmax=max(n, 2))
    colormap = sns.color_palette(cmap, as_cmap=True)
    for ax, (model, rank, iou) in zip(axes, (("teacher", "t_rank", "t_iou"), ("student", "s_rank", "s_iou"))):
        _draw_image(ax, detail, dim=0.5)
        _box(ax, gt[["x1", "y1", "x2", "y2"]], GT_COLOR, lw=2, ls=":", label="GT")
        if n == 0:
            ax.set_title(f"{model}: no candidates", fontsize="medium")
            continue
        for _, row in cand.sort_values(rank, ascending=False).iterrows():  # best drawn last, on top
            top = int(row[rank]) == 1
            _box(ax, row[["x1", "y1", "x2", "y2"]], colormap(norm(row[rank])), lw=3.0 if top else 1.5,
                 alpha=1.0 if top else 0.85, zorder=4 if top else 3)
        best = cand.loc[cand[rank] == 1].iloc[0]
        ax.set_title(f"{model} ranks: top-1 anchor {int(best['anchor'])} (IoU {best[iou]:.2f})", fontsize="medium")
    if n:
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=colormap), ax=list(axes), shrink=0.8, label="rank (1 = top)")
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        bar.ax.invert_yaxis()  # rank 1 on top
    tau = kendalltau(cand["t_score"], cand["s_score"]).statistic if n >= 2 else float("nan")
    fig.suptitle(f"image {detail.image_id}, {_gt_name(detail, gt)}: {n} candidates, Kendall τ = {tau:.2f}")
    return fig


# ----------------------------------------------------------------------------- training-time curves


def _read_jsonl(path: str, prefix: str) -> list[dict]:
    rows, seen = [], set()
    with open(path) as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # a run still writing (or killed mid-write) leaves half a last line
                continue
            raise ValueError(f"{path}:{number}: not a JSON line ({e.msg})") from None
        seen.update(k for k in record if k not in ("step", "time"))
        if isinstance(record.get(prefix), dict):
            rows.append({"step": record.get("step"), **({"time": record["time"]} if "time" in record else {}),
                         **jsonio.nan_for_none(record[prefix])})
    if not rows:
        found = ", ".join(sorted(seen)) or "nothing"
        raise ValueError(f"{path}: no '{prefix}' records (it holds: {found})")
    return rows


def read_metrics(path_or_paths, prefix: str = "analysis") -> pd.DataFrame:
    """The ``prefix`` records of ``metrics.jsonl`` files as one frame.

    Args:
        path_or_paths: a ``metrics.jsonl`` path (or a run folder holding one), or
            ``{run name: path}`` to compare runs; a plain path's run is named after
            its folder.
        prefix: which records: ``"analysis"`` (the hook's), ``"train"`` or ``"eval"``.

    Returns:
        One row per record: ``step``, ``time`` (when logged), the record's keys, ``run``;
        sorted by run (in the given order) then step.

    Raises:
        ValueError: naming the file, if it holds no ``prefix`` record (or a broken line
        other than the last).
    """
    if isinstance(path_or_paths, Mapping):
        runs = {str(k): os.fspath(v) for k, v in path_or_paths.items()}
    else:
        path = os.fspath(path_or_paths)
        name = os.path.basename(os.path.dirname(os.path.abspath(path))) if not os.path.isdir(path) else os.path.basename(os.path.abspath(path))
        runs = {name: path}
    frames = []
    for run, path in runs.items():
        if os.path.isdir(path):
            path = os.path.join(path, "metrics.jsonl")
        frame = pd.DataFrame(_read_jsonl(path, prefix))
        frame["run"] = run
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    frame["run"] = pd.Categorical(frame["run"], categories=list(runs))
    return frame.sort_values(["run", "step"], kind="stable").reset_index(drop=True)


METRIC_LABELS = {
    "kendall_tau": "Kendall τ",
    "spearman_rho": "Spearman ρ",
    "top1_agree": "top-1 agreement",
    "s_top1_iou": "student top-1 IoU",
    "kept_anchor_differs": "kept anchor differs",
    "gap_pearson": "F_dif/P_dif Pearson r",
    "gap_spearman": "F_dif/P_dif Spearman ρ",
    "gap_top_iou": "F_dif/P_dif top-10% IoU",
}


def plot_hook_curves(frame: pd.DataFrame,
                     metrics: Sequence[str] = ("kendall_tau", "top1_agree", "gap_pearson", "gap_top_iou"),
                     *, ncols: int = 4) -> Figure:
    """One small panel per metric over training steps, one line per run.

    Args:
        frame: :func:`read_metrics` output (``step``, the metrics, optional ``run``).
        metrics: columns to draw; one that the frame lacks gets a panel saying
            "not logged" (at least one must be present).
        ncols: panels per row.
    """
    metrics = list(metrics)
    if "step" not in frame.columns or not any(m in frame.columns for m in metrics):
        raise ValueError(f"plot_hook_curves: none of {metrics} (or no 'step') in the frame; it has {list(frame.columns)}")
    runs = frame["run"] if "run" in frame.columns else pd.Series(["run"] * len(frame), index=frame.index)
    names = list(runs.cat.categories) if isinstance(runs.dtype, pd.CategoricalDtype) else list(dict.fromkeys(runs))
    names = [r for r in names if (runs == r).any()]
    ncols = max(1, min(ncols, len(metrics)))
    nrows = -(-len(metrics) // ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = dict(zip(names, sns.color_palette(n_colors=max(len(names), 1))))
    for ax, metric in zip(axes, metrics):
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize="medium")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if metric not in frame.columns:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.4")
            continue
        for run in names:
            part = frame[runs == run]
            ax.plot(part["step"], _numeric(part[metric]), marker="o", ms=3, lw=1.5, color=colors[run], label=str(run))
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    if len(names) > 1:
        handles = [Line2D([], [], color=colors[r], marker="o", ms=3, label=str(r)) for r in names]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(names), 6), fontsize="small")
    fig.suptitle("Analysis during training")
    return fig
