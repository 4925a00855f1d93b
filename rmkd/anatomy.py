"""A detection primer: how a one-stage detector reads an image, before any distillation.

The library side of the first lesson notebook. Each step of a RetinaNet/FCOS
gets a frame (numbers a test can check) and a figure (what a student looks at):

1. :func:`plot_samples`: the data set, images with their GT boxes and class names.
2. :func:`anchor_grid`, :func:`plot_anchor_grid`: the anchors of every FPN level,
   from the model's own torchvision ``AnchorGenerator``.
3. :func:`assigned_anchors`, :func:`plot_assigned_anchors`: the anchors the
   detector's own matcher makes positive for a GT, i.e. Rank Mimicking's candidates.
4. :func:`nms_stages`, :func:`plot_nms`: the scored boxes before NMS and those it keeps.
5. :func:`plot_detections`: several models' detections on the same images.
6. :func:`plot_learning_curves`: AP and loss against the step, from runs' ``metrics.jsonl``.

Nothing here re-implements the detector: anchors, matching, decoding, score
threshold, top-k and NMS are torchvision's, reached through
:func:`rmkd.models.dense_forward` and :func:`rmkd.models.postprocess`. Every
model is run in eval mode without gradients and given back in the mode it came in.

Coordinates: frames and figures are in the pixels of the image as given. The
detector may resize its input (``image_size``); frames then carry the factor in
``frame.attrs["scale"]`` (image pixels per detector-input pixel, ``(x, y)``).
Figures are built with ``Figure(...)``, never pyplot (see :mod:`rmkd.plots`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from torch import Tensor, nn
from torchvision.ops import box_iou

from .candidates import paired_iou
from .models import DETECTION_LOSSES, dense_forward, level_names, postprocess
from .plots import read_metrics

GT_COLOR = "#39ff14"  # as rmkd.plots: bright green reads on photos and on digits
HIT_COLOR = "#1f77b4"
MISS_COLOR = "#d62728"
BOX_COLS = ["x1", "y1", "x2", "y2"]


# ----------------------------------------------------------------------------- helpers


def _plain(x: Tensor) -> Tensor:
    """A plain tensor (data sets hand out ``tv_tensors`` subclasses)."""
    return x.as_subclass(Tensor) if isinstance(x, Tensor) else torch.as_tensor(x)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _inference(model: nn.Module, **overrides):
    """Eval mode, no gradients and temporarily overridden attributes (e.g. ``score_thresh``).

    Eval mode matters beyond dropout: in train mode BatchNorm would update its
    running statistics from our probe images, and torchvision's transform would
    draw a random training size. Everything is restored on exit.
    """
    was_training = model.training
    saved = {k: getattr(model, k) for k in overrides}
    model.eval()
    for k, v in overrides.items():
        setattr(model, k, v)
    try:
        with torch.no_grad():
            yield model
    finally:
        for k, v in saved.items():
            setattr(model, k, v)
        model.train(was_training)


def _target(target: Mapping) -> dict[str, Tensor]:
    boxes = _plain(target["boxes"]).float().reshape(-1, 4)
    labels = _plain(target["labels"]).long().reshape(-1)
    return {"boxes": boxes, "labels": labels}


def _class_names(dataset) -> list[str] | None:
    """The data set's category names (``CocoDetection.class_names``), through Subsets."""
    while not hasattr(dataset, "class_names") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return getattr(dataset, "class_names", None)


def _name(label: int, class_names: Sequence[str] | None) -> str:
    """Label 1..K -> category name (labels start at 1: slot 0 is torchvision's background)."""
    label = int(label)
    return str(class_names[label - 1]) if class_names and 0 < label <= len(class_names) else f"label {label}"


def _item(dataset, index: int):
    if not -len(dataset) <= index < len(dataset):
        raise IndexError(f"image index {index} out of range: the data set has {len(dataset)} images")
    item = dataset[index]
    if item is None:
        raise ValueError(f"image {index} of the data set could not be read (skipped by data.bad_images=skip)")
    image, target = item
    return _plain(image), target


def _show(ax, image: Tensor, dim: float = 0.0) -> tuple[int, int]:
    """``image [3, H, W]`` on ``ax`` with pixel axes (y down, as image rows); ``dim``
    fades it toward white so coloured boxes stay readable."""
    hwc = np.clip(image.detach().cpu().float().permute(1, 2, 0).numpy(), 0, 1)
    h, w = hwc.shape[:2]
    ax.imshow(hwc * (1 - dim) + dim, extent=(0, w, h, 0), interpolation="nearest")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    return h, w


def _box(ax, xyxy, color, *, lw=1.5, ls="-", label=None, alpha=1.0, zorder=3, gid=None) -> Rectangle:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    rect = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=lw, linestyle=ls,
                     label=label, alpha=alpha, zorder=zorder)
    rect.set_gid(gid)  # lets a caller (or a test) tell GT, anchor and detection boxes apart
    ax.add_patch(rect)
    return rect


def _tag(ax, x, y, text, color) -> None:
    """A small label above a box's top-left corner, on a dark background."""
    ax.text(float(x), float(y), text, color=color, fontsize=6.5, va="bottom", ha="left", zorder=5, clip_on=True,
            bbox=dict(facecolor="black", alpha=0.55, lw=0, pad=0.6))


def _draw_gt(ax, target: dict, class_names, *, names: bool = True, ls: str = "-") -> None:
    for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
        _box(ax, box, GT_COLOR, lw=1.5, ls=ls, gid="gt")
        if names:
            _tag(ax, box[0], box[1], _name(label, class_names), GT_COLOR)


def _grid(n: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(int(ncols), n))
    return -(-n // ncols), ncols


# ----------------------------------------------------------------------------- 1. the data


def plot_samples(dataset, indices: Sequence[int], *, ncols: int = 4,
                 class_names: Sequence[str] | None = None) -> Figure:
    """Images of a detection data set with their GT boxes and category names.

    Args:
        dataset: yields ``(image [3, H, W] in [0, 1], {"boxes" [M, 4] xyxy pixels,
            "labels" [M] in 1..K, "image_id"})``, e.g. :class:`rmkd.data.CocoDetection`.
        indices: positions in the data set, one panel each.
        class_names: names of labels 1..K; default the data set's ``class_names``.
    """
    indices = list(indices)
    if not indices:
        raise ValueError("plot_samples: give at least one image index")
    class_names = class_names or _class_names(dataset)
    items = [_item(dataset, i) for i in indices]
    same_size = len({tuple(im.shape[-2:]) for im, _ in items}) == 1  # share pixel axes only when they compare
    nrows, ncols = _grid(len(items), ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.7 * nrows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=same_size, sharey=same_size).ravel()
    for ax, index, (image, target) in zip(axes, indices, items):
        target = {**_target(target), "image_id": target.get("image_id", index)}
        _show(ax, image)
        _draw_gt(ax, target, class_names)
        n = len(target["labels"])
        ax.set_title(f"image {target['image_id']}: {n} object{'s' * (n != 1)}", fontsize="medium")
    for ax in axes[len(items):]:
        ax.set_visible(False)
    for ax in axes[: len(items)]:
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
        if same_size:
            ax.label_outer()
    fig.suptitle("Ground truth: a box (x1, y1, x2, y2 in pixels) and a class per object")
    return fig


# ----------------------------------------------------------------------------- 2. anchors


def anchor_grid(model: nn.Module, image_size: int | Sequence[int]) -> pd.DataFrame:
    """Every anchor the model places on an image of ``image_size`` (``S`` or ``(H, W)``).

    The anchors are the model's own: its transform resizes and pads a blank image,
    its backbone gives the FPN grid sizes, its ``AnchorGenerator`` places the boxes.

    Returns:
        One row per anchor, in torchvision's flat order (level, row, col, anchor):
        ``index`` (position on the flat N axis, as ``DenseOutputs``), ``level`` (0..4),
        ``name`` (``"P2"``), ``stride`` (pixels between neighbouring cells, as the
        generator computes it: padded input width / grid width), ``row, col``
        (the cell), ``a`` (anchor within the cell), ``x1, y1, x2, y2`` and
        ``cx, cy`` (detector-input pixels), ``size`` (sqrt(w * h)) and
        ``aspect`` (h / w, torchvision's aspect ratio). ``attrs["scale"]``:
        image pixels per input pixel ``(x, y)``; ``attrs["input_size"]``: (h, w) after resize.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else (int(v) for v in image_size)
    with _inference(model):
        image_list, _ = model.transform([torch.zeros(3, h, w, device=_device(model))])
        features = list(model.backbone(image_list.tensors).values())
        anchors = model.anchor_generator(image_list, features)[0].cpu().double().numpy()  # [N, 4]
    per_cell = model.anchor_generator.num_anchors_per_location()
    names = level_names(model)[: len(features)]
    padded_w = image_list.tensors.shape[-1]
    parts, start = [], 0
    for level, (feature, a_count) in enumerate(zip(features, per_cell)):
        gh, gw = feature.shape[-2:]
        idx = np.arange(gh * gw * a_count)  # flat order within the level: (row, col, anchor)
        parts.append(pd.DataFrame({
            "index": start + idx, "level": level, "name": names[level], "stride": padded_w // gw,
            "row": idx // (gw * a_count), "col": (idx // a_count) % gw, "a": idx % a_count,
        }))  # fmt: skip
        start += len(idx)
    frame = pd.concat(parts, ignore_index=True)
    if start != len(anchors):
        raise RuntimeError(f"anchor_grid: the generator gave {len(anchors)} anchors, the grids account for {start}")
    frame[BOX_COLS] = anchors
    frame["cx"], frame["cy"] = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    bw, bh = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    frame["size"], frame["aspect"] = np.sqrt(bw * bh), bh / bw
    in_h, in_w = image_list.image_sizes[0]
    frame.attrs.update(scale=(w / in_w, h / in_h), input_size=(int(in_h), int(in_w)), image_size=(h, w))
    return frame


def plot_anchor_grid(model: nn.Module, image: Tensor, *, levels: Sequence[int | str] | None = None,
                     cell: tuple[int, int] | None = None, share: bool = False) -> Figure:
    """One panel per FPN level: every cell's anchor centre as a dot, the anchors of one cell as boxes.

    torchvision centres cell (r, c)'s anchors at ``(c, r) * stride``, the cell's
    top-left corner, so the dots start at the image's corner.

    Args:
        image: ``[3, H, W]`` in [0, 1].
        levels: level indices (0 = finest) or names (``"P3"``); None = all.
        cell: ``(row, col)`` whose anchors are drawn, clipped to each level's grid;
            None = each level's centre cell.
        share: one pixel range for every panel (sizes compare directly, but the
            fine levels get small); default: each panel spans the image and its
            anchors, and the dashed image border gives the scale.
    """
    image = _plain(image)
    h, w = image.shape[-2:]
    grid = anchor_grid(model, (h, w))
    sx, sy = grid.attrs["scale"]
    grid[["x1", "x2", "cx"]] *= sx
    grid[["y1", "y2", "cy"]] *= sy
    names = list(dict.fromkeys(grid["name"]))
    by_index = lambda v: names[v] if isinstance(v, int) and 0 <= v < len(names) else v  # noqa: E731
    chosen = names if levels is None else [by_index(v) for v in levels]
    unknown = [v for v in chosen if v not in names]
    if unknown or not chosen:
        raise ValueError(f"plot_anchor_grid: unknown level(s) {unknown or list(levels)}; the model has {names}")
    fig = Figure(figsize=(3.0 * len(chosen) + 0.6, 3.9), layout="constrained")
    axes = fig.subplots(1, len(chosen), squeeze=False, sharex=share, sharey=share)[0]
    colors, pad = colormaps["tab10"], 2.0
    drawn = []
    for ax, name in zip(axes, chosen):
        part = grid[grid["name"] == name]
        gh, gw, per_cell = part["row"].max() + 1, part["col"].max() + 1, part["a"].max() + 1
        stride = part["stride"].iloc[0]
        r, c = (gh // 2, gw // 2) if cell is None else (min(cell[0], gh - 1), min(cell[1], gw - 1))
        _show(ax, image, dim=0.45)
        centres = part[part["a"] == 0]
        ax.scatter(centres["cx"], centres["cy"], s=4 if gh * gw > 64 else 12, color="black", zorder=4, gid="centres")
        here = part[(part["row"] == r) & (part["col"] == c)]
        for _, row in here.iterrows():
            _box(ax, row[BOX_COLS], colors(int(row["a"]) % 10), lw=1.5, gid="anchor",
                 label=f"a={int(row['a'])}: {row['size']:.0f} px, h/w {row['aspect']:.2f}")
        _box(ax, (0, 0, w, h), "0.3", lw=0.8, ls="--", gid="image")
        drawn.append(here)
        ax.set_title(f"{name}: stride {stride}, {gh}x{gw} cells, {per_cell} anchors per cell", fontsize="small")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=6, ncols=2,
                  title=f"anchors of cell ({r}, {c})", title_fontsize=6, frameon=False)
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
    for ax, here in zip(axes, [pd.concat(drawn)] * len(axes) if share else drawn):  # image + the anchors drawn
        ax.set_xlim(min(0.0, here["x1"].min()) - pad, max(float(w), here["x2"].max()) + pad)
        ax.set_ylim(max(float(h), here["y2"].max()) + pad, min(0.0, here["y1"].min()) - pad)
    fig.suptitle(f"Anchors on a {w}x{h} image: dots = anchor centres (one per cell), boxes = one cell's anchors")
    return fig


# ----------------------------------------------------------------------------- 3. label assignment


def assigned_anchors(model: nn.Module, image: Tensor, target: Mapping) -> pd.DataFrame:
    """The anchors the detector's own matcher makes positive, per GT: Rank Mimicking's candidates.

    The assignment is the one ``dense_forward`` records from the model's own
    ``compute_loss`` (RetinaNet: IoU >= 0.5, plus each GT's best anchor; FCOS:
    centre sampling and scale ranges), so nothing here re-implements a rule.

    Args:
        image: ``[3, H, W]`` in [0, 1].
        target: ``{"boxes": [M, 4] xyxy image pixels, "labels": [M] in 1..K}``.

    Returns:
        One row per positive anchor, sorted by GT then IoU (best first): ``gt_index``,
        ``label``, ``anchor`` (flat index), ``level``, ``name``, ``row``, ``col``, ``a``,
        ``x1, y1, x2, y2`` (the anchor, image pixels) and ``iou`` (anchor vs its GT,
        computed in the detector's input pixels, where the matcher compared them).
        ``attrs``: ``scale``, ``gt`` (the GT boxes ``[M, 4]``, image pixels, as a numpy array).
    """
    image, target = _plain(image), _target(target)
    device = _device(model)
    with _inference(model):
        dense = dense_forward(model, [image.to(device)], [{k: v.to(device) for k, v in target.items()}], losses=False)
    assign = dense.assignment[0].cpu()  # [N]: GT index, -1 background, -2 ignored
    anchors = dense.anchors[0].cpu().float()
    gt_in = dense.targets[0]["boxes"].cpu().float()  # [M, 4] in input pixels
    pos = (assign >= 0).nonzero(as_tuple=True)[0]  # [P]
    gt_index = assign[pos]
    iou = paired_iou(anchors[pos], gt_in[gt_index]) if len(pos) else torch.zeros(0)
    counts = np.asarray(dense.anchors_per_level)
    level = np.searchsorted(np.cumsum(counts), pos.numpy(), side="right")
    within = pos.numpy() - (np.cumsum(counts) - counts)[level]
    widths = np.array([w for _, w in dense.level_sizes])[level]
    per_cell = dense.num_anchors
    (in_h, in_w), (h, w) = dense.image_sizes[0], dense.original_sizes[0]
    scale = np.array([w / in_w, h / in_h] * 2)
    frame = pd.DataFrame({
        "gt_index": gt_index.numpy(), "label": target["labels"][gt_index].numpy(), "anchor": pos.numpy(),
        "level": level, "name": np.asarray(level_names(model)[: len(counts)], dtype=object)[level],
        "row": within // (widths * per_cell), "col": (within // per_cell) % widths, "a": within % per_cell,
    })  # fmt: skip
    frame[BOX_COLS] = anchors[pos].numpy() * scale
    frame["iou"] = iou.numpy()
    frame = frame.sort_values(["gt_index", "iou"], ascending=[True, False], kind="stable").reset_index(drop=True)
    frame.attrs.update(scale=(float(scale[0]), float(scale[1])), gt=target["boxes"].numpy())
    return frame


def plot_assigned_anchors(model: nn.Module, image: Tensor, target: Mapping, gt_index: int, *,
                          class_names: Sequence[str] | None = None) -> Figure:
    """One GT's positive anchors: on the image (coloured by IoU) and as IoU bars.

    The bars carry the matcher's thresholds when the model has them (RetinaNet:
    positive from 0.5, background below 0.4): a bar below the positive line is a
    GT's best anchor kept by ``allow_low_quality_matches``.
    """
    image, tgt = _plain(image), _target(target)
    if not 0 <= gt_index < len(tgt["labels"]):
        raise ValueError(f"plot_assigned_anchors: no GT #{gt_index}; the target has {len(tgt['labels'])} boxes")
    frame = assigned_anchors(model, image, tgt)
    mine = frame[frame["gt_index"] == gt_index]
    fig = Figure(figsize=(9.5, 4.0), layout="constrained")
    ax, bars = fig.subplots(1, 2, width_ratios=(1, 1.3))
    norm, cmap = Normalize(0, 1), colormaps["viridis"]
    _show(ax, image, dim=0.5)
    for _, row in mine.iloc[::-1].iterrows():  # best IoU drawn last, on top
        _box(ax, row[BOX_COLS], cmap(norm(row["iou"])), lw=1.5, gid="anchor")
    _box(ax, tgt["boxes"][gt_index], GT_COLOR, lw=2.5, ls="--", gid="gt", zorder=5)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    name = _name(tgt["labels"][gt_index], class_names)
    ax.set_title(f"GT #{gt_index} (class {name}, dashed) and its positive anchors", fontsize="medium")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.8, label="IoU with the GT")
    ticks = [f"{r.name} ({r.row},{r.col}) a{r.a}" for r in mine.itertuples()]
    bars.bar(range(len(mine)), mine["iou"], color=[cmap(norm(v)) for v in mine["iou"]], gid="iou")
    bars.set_xticks(range(len(mine)), ticks, rotation=60, ha="right", fontsize=6)
    matcher = getattr(model, "proposal_matcher", None)
    for value, text, ls in ((getattr(matcher, "high_threshold", None), "positive from", "-"),
                            (getattr(matcher, "low_threshold", None), "background below", "--")):
        if value is not None:
            bars.axhline(value, color="0.3", lw=1, ls=ls, label=f"{text} {value:g}")
    if matcher is not None:
        bars.legend(loc="upper right", fontsize="x-small")
    bars.set_ylim(0, 1)
    bars.set_xlabel("positive anchor: level (row, col) anchor")
    bars.set_ylabel("IoU with the GT")
    bars.set_title(f"{len(mine)} positive anchors = Rank Mimicking's candidates", fontsize="medium")
    return fig


# ----------------------------------------------------------------------------- 4. NMS


def nms_stages(model: nn.Module, image: Tensor, *, score_thresh: float | None = None,
               class_names: Sequence[str] | None = None) -> dict:
    """The scored boxes before NMS and those NMS keeps, both from torchvision's own post-processing.

    ``after`` is :func:`rmkd.models.postprocess` (score threshold, top-k per level,
    decode, class-wise NMS, ``detections_per_img``). ``before`` is the same call
    with NMS made a no-op (``nms_thresh`` 2: an IoU never exceeds 1) and no
    per-image cap, so the threshold and top-k rule are the same code, not a copy.

    Args:
        score_thresh: minimum score; None = the model's ``score_thresh``.
        class_names: names of labels 1..K for a ``category`` column.

    Returns:
        ``{"before": frame, "after": frame, "score_thresh", "nms_thresh", "topk_candidates",
        "detections_per_img"}``; frames have ``label, category, score, x1, y1, x2, y2``
        (image pixels), sorted by score; ``before["kept"]`` marks the rows NMS kept.
    """
    image = _plain(image)
    thresh = float(model.score_thresh if score_thresh is None else score_thresh)
    with _inference(model, score_thresh=thresh):
        dense = dense_forward(model, [image.to(_device(model))])
        after = postprocess(model, dense)[0]
        with _inference(model, nms_thresh=2.0, detections_per_img=2**62):
            before = postprocess(model, dense)[0]

    def frame(det: dict) -> pd.DataFrame:
        out = pd.DataFrame(det["boxes"].cpu().float().numpy().reshape(-1, 4), columns=BOX_COLS)
        out.insert(0, "score", det["scores"].cpu().float().numpy())
        out.insert(0, "category", [_name(k, class_names) for k in det["labels"].tolist()])
        out.insert(0, "label", det["labels"].cpu().numpy())
        return out

    # Which pre-NMS rows survived: the kept ones are bit-identical copies (same decoding, same resize).
    same = (before["boxes"][None] == after["boxes"][:, None]).all(-1)  # [D, P]
    same &= (before["scores"][None] == after["scores"][:, None]) & (before["labels"][None] == after["labels"][:, None])
    if not bool(same.any(dim=1).all()):
        raise RuntimeError("nms_stages: a kept detection is missing from the pre-NMS set")
    result = {"before": frame(before), "after": frame(after), "score_thresh": thresh,
              "nms_thresh": float(model.nms_thresh), "topk_candidates": int(model.topk_candidates),
              "detections_per_img": int(model.detections_per_img)}
    result["before"]["kept"] = same.any(dim=0).cpu().numpy()
    return result


def plot_nms(model: nn.Module, image: Tensor, *, score_thresh: float | None = None, target: Mapping | None = None,
             class_names: Sequence[str] | None = None, max_before: int = 400) -> Figure:
    """Before | after NMS on one image, boxes coloured by score on one shared colour bar.

    Args:
        target: optional GT (``boxes``, ``labels``), drawn dotted on both panels.
        max_before: draw at most this many pre-NMS boxes (the best ones; the title says so).
    """
    image = _plain(image)
    stages = nms_stages(model, image, score_thresh=score_thresh, class_names=class_names)
    before, after = stages["before"], stages["after"]
    fig = Figure(figsize=(9.0, 5.0), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    norm, cmap = Normalize(stages["score_thresh"], 1.0), colormaps["plasma"]
    shown = before.head(max_before)
    for ax, rows, lw in ((axes[0], shown, 0.8), (axes[1], after, 1.8)):
        _show(ax, image, dim=0.5)
        if target is not None:
            _draw_gt(ax, _target(target), class_names, names=False, ls=":")
        for _, row in rows.iloc[::-1].iterrows():  # highest score drawn last, on top
            _box(ax, row[BOX_COLS], cmap(norm(row["score"])), lw=lw, gid="detection")
        ax.set_xlabel("x (pixels)")
    for _, row in after.iterrows():
        _tag(axes[1], row["x1"], row["y1"], f"{row['category']} {row['score']:.2f}", "white")
    axes[0].set_ylabel("y (pixels)")
    cut = f", best {len(shown)} drawn" if len(shown) < len(before) else ""
    axes[0].set_title(f"before NMS: {len(before)} boxes with score > {stages['score_thresh']:g}{cut}\n"
                      f"(top {stages['topk_candidates']} per level)", fontsize="medium")
    axes[1].set_title(f"after NMS: {len(after)} kept (at most {stages['detections_per_img']})\n"
                      f"(per class, suppress IoU > {stages['nms_thresh']:g})",
                      fontsize="medium")
    family = getattr(model, "rmkd_family", type(model).__name__.lower())
    label = "score (sqrt of class prob. x centerness)" if family == "fcos" else "score (sigmoid probability)"
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.8, label=label)
    return fig


# ----------------------------------------------------------------------------- 5. models side by side


def _hits(det: dict, target: dict, iou_threshold: float = 0.5) -> np.ndarray:
    """``[D]`` bool: the detection finds a GT of its class at IoU >= threshold that no
    higher-scoring detection found first (COCO's greedy matching at one threshold)."""
    hit = np.zeros(len(det["scores"]), dtype=bool)
    if not len(hit) or not len(target["labels"]):
        return hit
    iou = box_iou(det["boxes"].float(), target["boxes"].float()).numpy()  # [D, M]
    iou[det["labels"].numpy()[:, None] != target["labels"].numpy()[None, :]] = 0
    free = np.ones(iou.shape[1], dtype=bool)
    for d in np.argsort(-det["scores"].numpy(), kind="stable"):
        cand = np.where(free & (iou[d] >= iou_threshold), iou[d], -1)
        if cand.max() >= 0:
            hit[d], free[cand.argmax()] = True, False
    return hit


def plot_detections(models: Mapping[str, nn.Module], dataset, indices: Sequence[int], *, score_thresh: float = 0.3,
                    class_names: Sequence[str] | None = None) -> Figure:
    """Rows = images, columns = models: GT boxes and each model's detections with class and score.

    Detections are torchvision's (:func:`rmkd.models.postprocess`) above ``score_thresh``;
    a detection that finds a same-class GT at IoU >= 0.5 is drawn in blue, any other in red.
    """
    indices, names = list(indices), list(models)
    if not indices or not names:
        raise ValueError("plot_detections: give at least one model and one image index")
    class_names = class_names or _class_names(dataset)
    items = [_item(dataset, i) for i in indices]
    same_size = len({tuple(im.shape[-2:]) for im, _ in items}) == 1
    fig = Figure(figsize=(2.7 * len(names) + 0.3, 2.7 * len(items) + 0.6), layout="constrained")
    axes = fig.subplots(len(items), len(names), squeeze=False, sharex=same_size, sharey=same_size)
    for r, (index, (image, target)) in enumerate(zip(indices, items)):
        tgt = _target(target)
        for c, name in enumerate(names):
            model, ax = models[name], axes[r, c]
            with _inference(model, score_thresh=float(score_thresh)):
                det = postprocess(model, dense_forward(model, [image.to(_device(model))]))[0]
            det = {k: v.cpu() for k, v in det.items()}
            hit = _hits(det, tgt)
            _show(ax, image, dim=0.3)
            _draw_gt(ax, tgt, class_names, names=False)
            rows = zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist(), hit)
            for box, label, score, ok in rows:
                color = HIT_COLOR if ok else MISS_COLOR
                _box(ax, box, color, lw=1.5, gid="detection")
                _tag(ax, box[0], box[1], f"{_name(label, class_names)} {score:.2f}", "white")
            found = f"{int(hit.sum())}/{len(tgt['labels'])} found, {int((~hit).sum())} wrong"
            ax.set_title(f"{name}: {found}", fontsize="small")
            ax.set_xlabel("x (pixels)")
            ax.set_ylabel(f"image {target.get('image_id', index)}\ny (pixels)")
            if same_size:
                ax.label_outer()
    handles = [Line2D([], [], color=GT_COLOR, lw=2, label="GT"),
               Line2D([], [], color=HIT_COLOR, lw=2, label="detection: finds a GT (same class, IoU >= 0.5)"),
               Line2D([], [], color=MISS_COLOR, lw=2, label="detection: wrong class, poor box or duplicate")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize="small")
    fig.suptitle(f"Detections with score > {score_thresh:g} (label: class and score)")
    return fig


# ----------------------------------------------------------------------------- 6. learning curves


def _run_metrics(name: str, folder) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(eval rows, train rows) of one run; the last record wins where a resumed run logged a step twice."""
    path = os.fspath(folder)
    path = os.path.join(path, "metrics.jsonl") if os.path.isdir(path) else path
    if not os.path.isfile(path):
        raise ValueError(f"run {name!r}: {path} not found (a run folder holds metrics.jsonl once it has logged)")
    evals = read_metrics({name: path}, "eval")  # raises a one-line ValueError naming the file without eval rows
    try:
        train = read_metrics({name: path}, "train")
    except ValueError:  # a run that only evaluated (e.g. a cached teacher's final eval): no loss curve
        train = pd.DataFrame(columns=["step"])
    dedupe = lambda f: f.drop_duplicates("step", keep="last").reset_index(drop=True)  # noqa: E731
    return dedupe(evals), dedupe(train)


def plot_learning_curves(runs: Mapping[str, str], *, loss: str = "detection") -> Figure:
    """COCO AP and the training loss against the step, one line per run.

    Args:
        runs: ``{name: run folder (or its metrics.jsonl)}``.
        loss: the train record to draw: ``"detection"`` (the detector's own terms,
            classification + box regression [+ centerness], comparable between a
            baseline and a distilled run) or any logged key, e.g. ``"loss"`` (the
            optimised total, which for a distilled run includes the KD terms).

    Each loss point is the loss of the one batch logged at that step (noisy).

    Raises:
        ValueError: naming the file, if a run has no metrics.jsonl, no eval record,
        or lacks the ``loss`` key.
    """
    if not runs:
        raise ValueError("plot_learning_curves: give at least one run")
    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    ap_ax, loss_ax = fig.subplots(1, 2, sharex=True)
    colors = colormaps["tab10"]
    for i, (name, folder) in enumerate(runs.items()):
        evals, train = _run_metrics(name, folder)
        ap_ax.plot(evals["step"], 100 * evals["AP"].astype(float), marker="o", ms=3, color=colors(i % 10), label=name)
        if train.empty:
            continue
        wanted = DETECTION_LOSSES if loss == "detection" else (loss,)
        terms = [k for k in wanted if k in train.columns]
        if not terms:
            raise ValueError(f"run {name!r}: no {loss!r} loss in the train records of {folder}; "
                             f"they hold {[c for c in train.columns if c not in ('step', 'time', 'run')]}")
        loss_ax.plot(train["step"], train[terms].astype(float).sum(axis=1, min_count=len(terms)), lw=1.2,
                     color=colors(i % 10), label=name)
    ap_ax.set_ylim(bottom=0)
    ap_ax.set_xlabel("training step")
    ap_ax.set_ylabel("AP on val (COCO AP@[.5:.95], %)")
    ap_ax.set_title("Accuracy", fontsize="medium")
    what = "classification + box regression" if loss == "detection" else loss
    loss_ax.set_xlabel("training step")
    loss_ax.set_ylabel(f"training loss ({what})")
    loss_ax.set_title("Loss of the logged batch", fontsize="medium")
    for ax in (ap_ax, loss_ax):
        ax.grid(alpha=0.3)
    ap_ax.legend(fontsize="small")
    return fig
