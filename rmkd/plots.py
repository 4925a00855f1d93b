"""Pictures of the paper's two observations, drawn from :mod:`rmkd.analysis` frames.

- :func:`plot_tau_by_size`, :func:`plot_tau_vs_iou`: rank agreement per instance
  (``Collection.instances``), by COCO size and against the student's precision.
- :func:`plot_gap_panels`: F_dif vs P_dif maps of one image (an ``ImageDetail``).
- :func:`plot_kept_boxes`: the paper's Figure 2, the anchor each model kept after NMS.
- :func:`plot_candidates`: one GT's candidate anchors coloured by each model's rank.
- :func:`read_metrics`, :func:`plot_hook_curves`: the training-time hook's curves.

Every function returns a :class:`matplotlib.figure.Figure` and never calls
``plt.show``. Figures are built with ``Figure(...)`` rather than ``plt.subplots``:
pyplot does not track them, so nothing leaks in a loop, and a notebook shows a
returned figure once (the inline backend displays ``Figure`` objects). Where a
function takes ``ax``/``axes`` it draws into the caller's figure and returns it.
All boxes are xyxy in the image's original pixels, as ``ImageDetail`` keeps them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from scipy.stats import kendalltau

from . import jsonio

SIZES = ("small", "medium", "large")  # COCO's order (rmkd.analysis.collect.SIZES)
GT_COLOR = "#39ff14"
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


def _draw_image(ax, detail, dim: float = 0.0) -> tuple[int, int]:
    """The image on ``ax`` in its own pixels; ``dim`` in [0, 1) fades it toward white
    so thin coloured boxes stay readable on busy images."""
    image = _image_hwc(detail)
    image = image * (1 - dim) + dim
    h, w = image.shape[:2]
    ax.imshow(image, extent=(0, w, h, 0), interpolation="nearest")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return h, w


def _box(ax, xyxy, color, *, lw=1.5, ls="-", label=None, alpha=1.0, zorder=3) -> Rectangle:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    rect = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=lw,
                     linestyle=ls, label=label, alpha=alpha, zorder=zorder)
    ax.add_patch(rect)
    return rect


def _draw_gts(ax, gt: pd.DataFrame, only: int | None = None) -> None:
    rows = gt if only is None else gt[gt["gt_index"] == only]
    for _, row in rows.iterrows():
        _box(ax, row[["x1", "y1", "x2", "y2"]], GT_COLOR, lw=1.5, label="GT" if only is not None else None)


def _level_name(level: int, stride: int) -> str:
    """``P{l} (stride 2^l)``: named by its stride, so P2..P6 detectors read right too."""
    return f"P{int(stride).bit_length() - 1} (stride {int(stride)})"


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
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float(np.clip((x * y).sum() / den, -1, 1)) if den > 0 else float("nan")


# ----------------------------------------------------------------------------- observation 1


def plot_tau_by_size(instances: pd.DataFrame, hue: str | None = None, *, kind: str = "box", ax=None) -> Figure:
    """Kendall tau of each instance's candidates, per COCO size class.

    Args:
        instances: ``Collection.instances`` (needs ``kendall_tau`` and ``size``);
            instances with a NaN tau (fewer than two candidates) are dropped.
        hue: a column to split by, e.g. ``"student"`` when frames of several
            students are concatenated.
        kind: ``"box"`` or ``"violin"``; the instances are drawn on top as points.
        ax: draw into this axes instead of a new figure.

    Sizes appear in COCO order (small, medium, large), only those present; the
    tick labels give the instances per size. y spans [-1, 1].
    """
    if kind not in ("box", "violin"):
        raise ValueError(f"kind must be 'box' or 'violin', got {kind!r}")
    _require(instances, ["kendall_tau", "size", hue], "plot_tau_by_size")
    data = instances.assign(kendall_tau=_numeric(instances["kendall_tau"]))
    data = data[np.isfinite(data["kendall_tau"])]
    order = [s for s in SIZES if (data["size"] == s).any()]
    fig, ax = _new_axes(ax, (5.5, 4.0))
    if data.empty:
        ax.text(0.5, 0.5, "no instance with a Kendall tau\n(each needs >= 2 candidates)", ha="center", va="center",
                transform=ax.transAxes)
    else:
        common = dict(data=data, x="size", y="kendall_tau", order=order, hue=hue, ax=ax)
        if kind == "box":
            sns.boxplot(**common, showfliers=False, width=0.6, boxprops=dict(alpha=0.6))
        else:
            sns.violinplot(**common, cut=0, inner=None, density_norm="width", alpha=0.5)
        points = dict(dodge=True) if hue is not None else dict(color="0.2")
        sns.stripplot(**common, **points, size=2.5, alpha=0.5, jitter=0.2, legend=False)
        counts = data["size"].value_counts()
        ax.set_xticks(range(len(order)), [f"{s}\n(n={counts[s]})" for s in order])
    ax.axhline(0, color="0.5", lw=0.8, ls=":")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("GT size (COCO)")
    ax.set_ylabel("Kendall τ (teacher vs student ranks)")
    ax.set_title(f"Rank agreement per size (n = {len(data)} instances)")
    return fig


def plot_tau_vs_iou(instances: pd.DataFrame, hue: str | None = None, iou: str = "s_top1_iou", *,
                    bins: int = 10, ax=None) -> Figure:
    """Kendall tau vs the IoU of the student's top-ranked candidate: precision discrepancy.

    Each instance is a faint point; a line with markers gives the mean tau in
    ``bins`` equal IoU bins over [0, 1] (error bars: standard error; bins with
    one instance have none). Instances with a NaN tau or IoU are dropped.

    Args:
        instances: ``Collection.instances``.
        hue: a column to split by (e.g. ``"student"``): one colour and one line each.
        iou: the x column, e.g. ``"s_top1_iou"``, ``"t_top1_iou"`` or ``"s_kept_iou"``.
    """
    _require(instances, ["kendall_tau", iou, hue], "plot_tau_vs_iou")
    data = pd.DataFrame({"tau": _numeric(instances["kendall_tau"]), "iou": _numeric(instances[iou])})
    data["group"] = instances[hue].astype(str).to_numpy() if hue is not None else "all"
    data = data[np.isfinite(data["tau"]) & np.isfinite(data["iou"])]
    fig, ax = _new_axes(ax, (5.5, 4.0))
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
    ax.axhline(0, color="0.5", lw=0.8, ls=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel(f"IoU of the top candidate ({iou})")
    ax.set_ylabel("Kendall τ (teacher vs student ranks)")
    ax.set_title(f"Rank agreement vs precision (n = {len(data)} instances)")
    return fig


# ----------------------------------------------------------------------------- observation 2


def _map_extent(detail, m: dict, shape) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) in image pixels of a level's ``[h, w]`` map."""
    h, w = shape
    sx, sy = getattr(detail, "scale", (1.0, 1.0))
    cx, cy = m["stride"] * sx, m["stride"] * sy  # one cell, in image pixels
    return (-cx / 2, (w - 0.5) * cx, (h - 0.5) * cy, -cy / 2)


def plot_gap_panels(detail, levels: Sequence[int] | None = None) -> Figure:
    """F_dif vs P_dif of one image: a row per FPN level, 4 columns.

    Columns: the image, F_dif, P_dif, F_dif * P_dif (what PFI weighs). Each cell
    is drawn centred where its anchors are (torchvision centres cell (r, c) at
    (c, r) * stride in the detector's input, mapped back to the image with
    ``detail.scale``), nearest interpolation, so cells line up with the image
    and the GT boxes drawn on every panel. Each map uses its own
    colour scale (max in the title). The row's first title names the level
    ``P(3 + l) (stride s)`` and the Pearson r of F_dif and P_dif over its cells.

    Args:
        detail: an ``ImageDetail`` (maps ``[h, w]`` per level).
        levels: level indices to draw (``detail.maps[i]["level"]``); None = all.
    """
    maps = {int(m["level"]): m for m in detail.maps}
    levels = list(maps) if levels is None else [int(lv) for lv in levels]
    unknown = [lv for lv in levels if lv not in maps]
    if unknown or not levels:
        raise ValueError(f"image {detail.image_id}: no map for level(s) {unknown or levels}; it has {list(maps)}")
    fig = Figure(figsize=(11.0, 2.8 * len(levels)), layout="constrained")
    axes = fig.subplots(len(levels), 4, squeeze=False)
    for row, level in zip(axes, levels):
        m = maps[level]
        f_dif, p_dif = np.asarray(m["f_dif"], dtype=np.float64), np.asarray(m["p_dif"], dtype=np.float64)
        h, w = _draw_image(row[0], detail)
        r = _pearson(f_dif, p_dif)
        row[0].set_title(f"{_level_name(level, m['stride'])}: r = {r:.2f}", fontsize="medium")
        for ax, (name, grid, cmap) in zip(
            row[1:], (("F_dif", f_dif, "magma"), ("P_dif", p_dif, "magma"), ("F_dif × P_dif", f_dif * p_dif, "viridis"))
        ):
            ax.imshow(grid, extent=_map_extent(detail, m, grid.shape), interpolation="nearest", cmap=cmap, vmin=0,
                      vmax=max(float(grid.max(initial=0.0)), 1e-12))
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} (max {grid.max(initial=0.0):.3g})", fontsize="medium")
        for ax in row:
            _draw_gts(ax, detail.gt)
    fig.suptitle(f"image {detail.image_id}: where features differ vs where predictions differ")
    return fig


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
                 label=f"its anchor {int(row['anchor'])} (P{3 + int(row['level'])})")
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
