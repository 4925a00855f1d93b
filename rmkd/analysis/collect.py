"""One pass over a data set: both observations for a teacher/student pair.

``collect(teacher, student, loader)`` runs each model once per batch (one
:func:`~rmkd.models.dense_forward` each; the student's carries the targets, so
its own matching names the candidates) and returns

- ``instances``: one row per GT instance (rank agreement of its candidates,
  the IoU of each model's top-ranked box, which anchor each model kept after NMS);
- ``levels``: one row per image and FPN level (F_dif vs P_dif statistics);
- ``details``: for the first ``details`` images, everything needed to draw them
  (candidates with both ranks, kept boxes with their anchors, the two maps).

Frames only: plots (:mod:`rmkd.plots`) and widgets (:mod:`rmkd.widgets`) draw them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou
from tqdm.auto import tqdm

from .. import candidates as cands
from ..distill import check_pairing
from ..engine import autocast, to_device
from ..models import dense_forward
from .gap import GAP_COLUMNS, fit_adapter, gap_maps, gap_statistics
from .kept import kept_detections
from .rank import rank_agreement

SIZES = ("small", "medium", "large")
# COCO's size classes by area in original pixels: small < 32^2 <= medium < 96^2 <= large.
SIZE_EDGES = (32**2, 96**2)

INSTANCE_COLUMNS = [
    "instance_id", "image_id", "gt_index", "label", "category_id", "category", "gt_area", "size",
    "n_candidates", "kendall_tau", "spearman_rho", "top1_agree",
    "t_top1_iou", "s_top1_iou", "t_best_iou", "s_best_iou",
    "t_kept_anchor", "s_kept_anchor", "t_kept_iou", "s_kept_iou", "kept_anchor_differs",
]  # fmt: skip
LEVEL_COLUMNS = ["image_id", "level", "stride", "height", "width", *GAP_COLUMNS]


@dataclass
class ImageDetail:
    """One image, ready to draw. Boxes are xyxy in the image's original pixels.

    Attributes:
        image: ``[3, H, W]`` float in [0, 1], as the loader gave it.
        gt: one row per GT: ``gt_index, instance_id, label, category, x1, y1, x2, y2``.
        candidates: one row per candidate anchor: ``instance_id, gt_index, anchor, level,
            x1..y2`` (the anchor box), ``t_score, s_score, t_rank, s_rank`` (1 = top of
            its instance), ``t_iou, s_iou`` (each model's decoded box vs the GT).
        kept: one row per detection kept after NMS: ``model`` (teacher/student),
            ``anchor, level, score, label, x1..y2`` (the box), ``ax1..ay2`` (its anchor).
        maps: per level ``{"level", "stride", "f_dif" [h, w], "p_dif" [h, w]}`` numpy arrays;
            cell (r, c) is centred at ``(c, r) * stride`` in the detector's input pixels.
        scale: ``(x, y)`` original pixels per input pixel (the detector resizes its input).
    """

    image_id: int
    image: Tensor
    gt: pd.DataFrame
    candidates: pd.DataFrame
    kept: pd.DataFrame
    maps: list[dict]
    scale: tuple[float, float] = (1.0, 1.0)


@dataclass
class Collection:
    """What :func:`collect` returns. ``instances``/``levels`` follow INSTANCE_/LEVEL_COLUMNS."""

    instances: pd.DataFrame
    levels: pd.DataFrame
    details: dict[int, ImageDetail] = field(default_factory=dict)
    adapter: nn.Module | None = None
    images: int = 0
    seconds: float = 0.0


def size_class(area) -> np.ndarray:
    """COCO size class (``small``/``medium``/``large``) of areas in original pixels."""
    return np.asarray(SIZES, dtype=object)[np.searchsorted(SIZE_EDGES, np.asarray(area, dtype=np.float64), side="right")]


def _unwrap(dataset):
    while hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset


class _Adapt:
    """Student features -> teacher channel space (``"fit"`` fits on the first batch)."""

    def __init__(self, adapter):
        self.adapter = adapter

    def __call__(self, s_feats: list[Tensor], t_feats: list[Tensor]) -> list[Tensor]:
        a = self.adapter
        if isinstance(a, str):
            if a not in ("fit", "fit_per_level"):
                raise ValueError(f"unknown adapter {a!r}: 'fit', 'fit_per_level', None or modules")
            a = self.adapter = fit_adapter(s_feats, t_feats, per_level=a == "fit_per_level")
        if a is None:
            if s_feats[0].shape[1] != t_feats[0].shape[1]:
                raise ValueError(
                    f"student features have {s_feats[0].shape[1]} channels, the teacher's {t_feats[0].shape[1]}: "
                    "pass adapter='fit' (or the distilled student's trained adapters)"
                )
            return s_feats
        if isinstance(a, (list, tuple, nn.ModuleList)):
            return [m(f) for m, f in zip(a, s_feats)]
        return [a(f) for f in s_feats]


def _strides(dense) -> list[int]:
    """Stride of each FPN level: the first from the input size, then doubling (P3..P7).

    (Dividing by the grid size fails for coarse levels of small inputs: a 64 px
    image has a 1x1 P6 and P7 grid, but P7's stride is still 128.)
    """
    h0 = dense.level_sizes[0][0]
    first = int(round(max(h for h, _ in dense.image_sizes) / h0)) if h0 else 0
    first = 1 << max(0, round(math.log2(first))) if first else 0  # the padded input rounds up
    return [first * 2**level for level in range(len(dense.level_sizes))]


def _level_of(anchor: np.ndarray, anchors_per_level: list[int]) -> np.ndarray:
    return np.searchsorted(np.cumsum(anchors_per_level), anchor, side="right")


def _match_kept(kept: list[dict], targets: list[dict], iou_threshold: float) -> tuple[Tensor, Tensor]:
    """Per GT of the batch: the anchor of the highest-scoring kept detection of its class
    with IoU >= threshold (``-1`` if none) and that IoU (NaN if none). ``[M_total]`` each."""
    anchors, ious = [], []
    for det, tgt in zip(kept, targets):  # per image: NMS output is per image anyway
        gt_boxes, gt_labels = tgt["boxes"], tgt["labels"]
        m = len(gt_labels)
        if m == 0:
            continue
        if len(det["scores"]) == 0:
            anchors.append(torch.full((m,), -1, dtype=torch.int64))
            ious.append(torch.full((m,), float("nan")))
            continue
        iou = box_iou(gt_boxes.float(), det["boxes"].float())  # [M, D]
        ok = (iou >= iou_threshold) & (gt_labels[:, None] == det["labels"][None, :])
        first = ok.to(torch.int8).argmax(dim=1)  # detections come sorted by score: first hit = best
        has = ok.any(dim=1)
        anchors.append(torch.where(has, det["anchor"][first], -1).cpu())
        ious.append(torch.where(has, iou.gather(1, first[:, None])[:, 0], float("nan")).float().cpu())
    if not anchors:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    return torch.cat(anchors), torch.cat(ious)


@torch.no_grad()
def collect(
    teacher: nn.Module,
    student: nn.Module,
    loader,
    *,
    device: torch.device | str | None = None,
    score: str = "cls",
    adapter="fit",
    details: int = 0,
    top_fraction: float = 0.1,
    iou_threshold: float = 0.5,
    class_names: list[str] | None = None,
    label_to_cat_id: dict[int, int] | None = None,
    amp: bool = False,
    progress: bool = True,
    desc: str = "analyze",
) -> Collection:
    """Rank agreement and the feature-vs-prediction gap of a pair over ``loader``.

    Args:
        teacher, student: torchvision RetinaNet/FCOS with the same anchor layout
            (both are put in eval mode; the caller restores the student's mode).
        loader: yields ``(images, targets)`` like :func:`rmkd.data.loader.eval_loader`
            (targets with ``boxes`` xyxy original pixels, ``labels`` 1..K, ``image_id``).
        score: the rank score, ``"cls"`` (probability of the GT class, the paper's)
            or ``"iou"`` (IoU of the candidate's decoded box with the GT).
        adapter: how student features reach the teacher's channels for F_dif:
            ``"fit"`` (least squares on the first batch, :func:`fit_adapter`, the same
            for every student), ``"fit_per_level"`` (one such map per level),
            ``None`` (identity; widths must match), a module
            applied to every level, or a list of per-level modules (a Distiller's
            trained ``adapters``).
        details: keep :class:`ImageDetail` for the first ``details`` images.
        top_fraction: hot-spot share for the top-location IoU.
        iou_threshold: a kept detection "finds" a GT at this IoU (same class).
        class_names, label_to_cat_id: default from the loader's data set.

    Returns:
        a :class:`Collection`; ``instances`` has one row per GT instance (those with
        no candidate have ``n_candidates`` 0 and NaN statistics).
    """
    if score not in ("cls", "iou"):
        raise ValueError(f"unknown rank score {score!r}: choose 'cls' or 'iou'")
    check_pairing(teacher, student)  # same anchors, classes and input size, or a one-line error
    device = torch.device(device) if device is not None else next(student.parameters()).device
    teacher.eval()
    student.eval()
    base = _unwrap(loader.dataset)
    class_names = class_names or getattr(base, "class_names", None)
    label_to_cat_id = label_to_cat_id or getattr(base, "label_to_cat_id", None)
    adapt = _Adapt(adapter)

    inst_parts, cand_parts, level_parts = [], [], []
    kept_detail: dict[int, ImageDetail] = {}
    offset = seen = 0
    tic = time.perf_counter()
    for images, targets in tqdm(loader, desc=desc, disable=not progress, dynamic_ncols=True, leave=False):
        images, targets = to_device(images, targets, device)
        with autocast(device, amp):
            t = dense_forward(teacher, images)
            s = dense_forward(student, images, targets, losses=False)  # its matching names the candidates
        image_ids = [int(tg["image_id"]) for tg in targets]
        counts = torch.tensor([len(tg["labels"]) for tg in targets])
        gt_start = offset + torch.cumsum(counts, 0) - counts  # [B] first instance id of each image

        # instances of this batch, in (image, gt) order
        boxes = torch.cat([tg["boxes"].float().cpu() for tg in targets]) if counts.sum() else torch.zeros(0, 4)
        labels = torch.cat([tg["labels"].cpu() for tg in targets]) if counts.sum() else torch.zeros(0, dtype=torch.int64)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).numpy()
        # both models resize alike (checked by the pairing), so the student's resized GT serves both
        t_kept, s_kept = kept_detections(teacher, t), kept_detections(student, s)
        t_anchor, t_iou_kept = _match_kept(t_kept, s.targets, iou_threshold)
        s_anchor, s_iou_kept = _match_kept(s_kept, s.targets, iou_threshold)
        inst_parts.append(
            pd.DataFrame(
                {
                    "instance_id": np.arange(offset, offset + len(labels)),
                    "image_id": np.repeat(image_ids, counts.numpy()),
                    "gt_index": np.concatenate([np.arange(c) for c in counts.tolist()]) if len(counts) else [],
                    "label": labels.numpy(),
                    "gt_area": area,
                    "t_kept_anchor": t_anchor.numpy(),
                    "s_kept_anchor": s_anchor.numpy(),
                    "t_kept_iou": t_iou_kept.numpy(),
                    "s_kept_iou": s_iou_kept.numpy(),
                }
            )
        )

        # candidates: the detector's own positives, named by the student's matching
        c = cands.positive_candidates(s)
        t_scores = cands.candidate_scores(teacher, t, c, score).float()
        s_scores = cands.candidate_scores(student, s, c, score).float()
        t_iou = cands.paired_iou(cands.decode_boxes(teacher, t, c).float(), c.gt_box.float())
        s_iou = cands.paired_iou(cands.decode_boxes(student, s, c).float(), c.gt_box.float())
        cand = pd.DataFrame(
            {
                "instance_id": (gt_start.to(c.gt.device)[c.batch] + c.gt).cpu().numpy(),
                "anchor": c.anchor.cpu().numpy(),
                "t_score": t_scores.cpu().numpy(),
                "s_score": s_scores.cpu().numpy(),
                "t_iou": t_iou.cpu().numpy(),
                "s_iou": s_iou.cpu().numpy(),
            }
        )
        cand_parts.append(cand)

        # observation 2, per level
        s_feats = adapt(s.features, t.features)
        masks = cands.gt_mask(s)
        maps = gap_maps(t.features, s_feats, t.cls_logits, s.cls_logits)
        strides = _strides(s)
        batch_levels = []
        for level, ((f_dif, p_dif), mask) in enumerate(zip(maps, masks)):
            stats = gap_statistics(f_dif, p_dif, mask, top_fraction)
            h, w = f_dif.shape[-2:]
            stats.insert(0, "width", w)
            stats.insert(0, "height", h)
            stats.insert(0, "stride", strides[level])
            stats.insert(0, "level", level)
            stats.insert(0, "image_id", image_ids)
            stats["_pos"] = np.arange(len(image_ids))
            batch_levels.append(stats)
        # rows in (image, level) order
        level_parts.append(pd.concat(batch_levels).sort_values(["_pos", "level"], kind="stable").drop(columns="_pos"))

        for i in range(len(images)):
            if seen + i >= details:
                break
            kept_detail[image_ids[i]] = _detail(i, images, targets, s, t_kept, s_kept, cand, c, gt_start, maps, class_names)
        offset += int(counts.sum())
        seen += len(images)

    instances = _instance_frame(inst_parts, cand_parts, class_names, label_to_cat_id)
    levels = pd.concat(level_parts, ignore_index=True) if level_parts else pd.DataFrame(columns=LEVEL_COLUMNS)
    a = adapt.adapter if not isinstance(adapt.adapter, str) else None
    return Collection(instances, levels[LEVEL_COLUMNS], kept_detail, a, seen, time.perf_counter() - tic)


def _instance_frame(inst_parts, cand_parts, class_names, label_to_cat_id) -> pd.DataFrame:
    inst = pd.concat(inst_parts, ignore_index=True) if inst_parts else pd.DataFrame(columns=["instance_id"])
    cand = pd.concat(cand_parts, ignore_index=True) if cand_parts else pd.DataFrame(
        columns=["instance_id", "anchor", "t_score", "s_score", "t_iou", "s_iou"]
    )
    ranks = rank_agreement(cand["t_score"].to_numpy(), cand["s_score"].to_numpy(), cand["instance_id"].to_numpy())
    inst = inst.merge(ranks, on="instance_id", how="left")
    inst["n_candidates"] = inst["n_candidates"].fillna(0).astype(np.int64)
    # Each model's top-ranked candidate (first in input order on ties, like rank_agreement).
    if len(cand):
        groups = cand.groupby("instance_id", sort=False)
        top = pd.DataFrame(
            {
                "t_top1_iou": cand.loc[groups["t_score"].idxmax(), ["instance_id", "t_iou"]].set_index("instance_id")["t_iou"],
                "s_top1_iou": cand.loc[groups["s_score"].idxmax(), ["instance_id", "s_iou"]].set_index("instance_id")["s_iou"],
                "t_best_iou": groups["t_iou"].max(),
                "s_best_iou": groups["s_iou"].max(),
            }
        )
        inst = inst.merge(top, left_on="instance_id", right_index=True, how="left")
    else:
        for col in ("t_top1_iou", "s_top1_iou", "t_best_iou", "s_best_iou"):
            inst[col] = np.nan
    inst["top1_agree"] = inst["top1_agree"].astype("boolean")
    inst.loc[inst["n_candidates"] < 2, "top1_agree"] = pd.NA  # one candidate "agrees" trivially: undefined
    both = (inst["t_kept_anchor"] >= 0) & (inst["s_kept_anchor"] >= 0)
    inst["kept_anchor_differs"] = pd.array(np.where(both, inst["t_kept_anchor"] != inst["s_kept_anchor"], False), dtype="boolean")
    inst.loc[~both, "kept_anchor_differs"] = pd.NA
    labels = inst["label"].to_numpy(dtype=np.int64)
    inst["category_id"] = [label_to_cat_id.get(int(k), int(k)) for k in labels] if label_to_cat_id else labels
    inst["category"] = _category_names(labels, class_names)
    inst["size"] = size_class(inst["gt_area"].to_numpy(dtype=np.float64)) if len(inst) else []
    return inst[INSTANCE_COLUMNS].reset_index(drop=True)


def _category_names(labels, class_names) -> list[str]:
    return [class_names[k - 1] if class_names and 0 < k <= len(class_names) else str(k) for k in labels]


def _detail(i, images, targets, s, t_kept, s_kept, cand, c, gt_start, maps, class_names) -> ImageDetail:
    """The drawable record of image ``i`` of the batch (original pixels)."""
    in_h, in_w = s.image_sizes[i]
    orig_h, orig_w = s.original_sizes[i]
    scale = np.array([orig_w / in_w, orig_h / in_h] * 2)
    first = int(gt_start[i])
    tg = targets[i]
    gt = pd.DataFrame(tg["boxes"].float().cpu().numpy(), columns=["x1", "y1", "x2", "y2"])
    gt.insert(0, "category", _category_names(tg["labels"].cpu().numpy(), class_names))
    gt.insert(0, "label", tg["labels"].cpu().numpy())
    gt.insert(0, "instance_id", np.arange(first, first + len(gt)))
    gt.insert(0, "gt_index", np.arange(len(gt)))

    anchors = s.anchors[i].float().cpu().numpy()  # [N, 4] input pixels
    mine = (c.batch == i).cpu().numpy()
    rows = cand[mine].copy()
    rows.insert(1, "gt_index", rows["instance_id"] - first)
    rows["level"] = _level_of(rows["anchor"].to_numpy(), s.anchors_per_level)
    rows[["x1", "y1", "x2", "y2"]] = anchors[rows["anchor"].to_numpy()] * scale
    by = rows.groupby("instance_id")
    rows["t_rank"] = by["t_score"].rank(ascending=False, method="first").astype(int)
    rows["s_rank"] = by["s_score"].rank(ascending=False, method="first").astype(int)

    kept = []
    for name, det in (("teacher", t_kept[i]), ("student", s_kept[i])):  # the batch's NMS, reused
        a = det["anchor"].cpu().numpy()
        frame = pd.DataFrame(det["boxes"].float().cpu().numpy() * scale, columns=["x1", "y1", "x2", "y2"])
        frame[["ax1", "ay1", "ax2", "ay2"]] = anchors[a] * scale
        frame.insert(0, "label", det["labels"].cpu().numpy())
        frame.insert(0, "score", det["scores"].float().cpu().numpy())
        frame.insert(0, "level", _level_of(a, s.anchors_per_level))
        frame.insert(0, "anchor", a)
        frame.insert(0, "model", name)
        kept.append(frame)
    level_maps = [
        {
            "level": level,
            "stride": _strides(s)[level],
            "f_dif": f[i].float().cpu().numpy(),
            "p_dif": p[i].float().cpu().numpy(),
        }
        for level, (f, p) in enumerate(maps)
    ]
    return ImageDetail(
        int(tg["image_id"]), images[i].float().cpu(), gt, rows.reset_index(drop=True), pd.concat(kept, ignore_index=True),
        level_maps, (float(scale[0]), float(scale[1])),
    )  # fmt: skip


def summarize(col: Collection, min_locations: int = 16) -> dict[str, float]:
    """Headline numbers of a collection (means over instances / image-levels, NaN skipped).

    ``top1_agree`` counts instances with at least two candidates (one candidate
    agrees trivially); ``kept_anchor_differs`` counts instances both models found.
    The gap statistics average the levels with at least ``min_locations`` cells
    (P3-P5 at 128 px): a 2x2 or 1x1 map has no spatial pattern to compare, and
    its few cells would weigh as much as a 16x16 level's. Per-level numbers are
    in ``col.levels``.
    """
    inst, lv = col.instances, col.levels
    multi = inst[inst["n_candidates"] >= 2]
    lv = lv[lv["height"] * lv["width"] >= min_locations]

    def mean(series) -> float:
        series = pd.to_numeric(series.astype("Float64"), errors="coerce").dropna()
        return float(series.mean()) if len(series) else float("nan")

    return {
        "instances": int(len(inst)),
        "kendall_tau": mean(inst["kendall_tau"]),
        "spearman_rho": mean(inst["spearman_rho"]),
        "top1_agree": mean(multi["top1_agree"]),
        "t_top1_iou": mean(inst["t_top1_iou"]),
        "s_top1_iou": mean(inst["s_top1_iou"]),
        "s_best_iou": mean(inst["s_best_iou"]),
        "kept_anchor_differs": mean(inst["kept_anchor_differs"]),
        "gap_pearson": mean(lv["pearson"]),
        "gap_spearman": mean(lv["spearman"]),
        "gap_top_iou": mean(lv["top_iou"]),
        "f_dif_in_gt": mean(lv["f_dif_in_gt"]),
        "p_dif_in_gt": mean(lv["p_dif_in_gt"]),
        "gt_fraction": mean(lv["gt_fraction"]),
    }


def inspect_image(teacher: nn.Module, student: nn.Module, dataset, index: int, **kwargs) -> ImageDetail:
    """:class:`ImageDetail` of ``dataset[index]`` (a :class:`rmkd.data.CocoDetection` or a
    Subset of one). ``kwargs`` go to :func:`collect` (``adapter``, ``score``, ``device``, ...);
    pass a collection's fitted ``adapter`` to keep F_dif comparable across images."""
    from torch.utils.data import DataLoader, Subset

    from ..data import collate

    if not 0 <= index < len(dataset):
        raise IndexError(f"image index {index} out of range: the data set has {len(dataset)} images")
    loader = DataLoader(Subset(dataset, [index]), batch_size=1, collate_fn=collate)
    kwargs.setdefault("progress", False)
    col = collect(teacher, student, loader, details=1, **kwargs)
    return next(iter(col.details.values()))
