"""Where each feature-imitation method puts its weight (docs/METHOD.md, sections 3 and 4).

The feature-imitation (FI) baselines imitate F_dif on a hand-picked region of
locations (full map, positive, negative, inside GT boxes, FGFI); PFI weighs every
location by P_dif. This module turns one batch's maps into the shares of each
quantity that fall inside each region or each FPN level, and a pair of
:func:`rmkd.analysis.collect` results into per-level gap tables, so notebooks
print them instead of computing them.

- :func:`region_masks`: the baselines' regions as per-level boolean masks.
- :func:`region_shares`: the share of locations / full-map FI / P_dif weight /
  PFI loss inside each region (all levels and images pooled).
- :func:`level_shares`: the same quantities split by FPN level.
- :func:`level_gap_table`, :func:`gap_means`: the gap statistics of several
  students per level, and averaged over the levels with enough cells.
- :func:`pfi_verdicts`: the study's verdict on each "PFI beats X" claim.

Shapes: per level ``[B, H, W]`` (F_dif, P_dif, masks), as :mod:`rmkd.candidates`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..candidates import fgfi_mask, gt_mask, negative_mask, positive_mask
from ..models import level_name

REGIONS = ("full map", "positive", "negative", "GT box", "FGFI")
# the study's method (rmkd.reproduce.METHODS) that imitates features on each region
REGION_TERMS = {"full map": "fi_full", "positive": "fi_positive", "negative": "fi_negative", "GT box": "fi_gt", "FGFI": "fgfi"}
SHARE_COLUMNS = ("locations", "full-map FI (F_dif)", "P_dif weight", "PFI loss (P_dif x F_dif)")
LEVEL_SHARE_COLUMNS = ("cells per image", "share of PFI loss", "share of full-map FI", "share of locations")
GAP_TABLE_COLUMNS = ("f_dif_mean", "p_dif_mean", "pearson", "top_iou", "f_dif_in_gt", "p_dif_in_gt")
GAP_MEAN_COLUMNS = ("f_dif_mean", "p_dif_mean", "pearson", "spearman", "top_iou")
VERDICT_COLUMNS = ("claim", "b", "n", "mean_diff", "ci_low", "ci_high", "p_holm", "verdict")


def region_masks(dense, psi: float = 0.5) -> dict[str, list[Tensor]]:
    """``{region: per level [B, H, W] bool}`` for :data:`REGIONS`, in that order.

    ``full map`` is all True; the others are :func:`rmkd.candidates.positive_mask`,
    ``negative_mask``, ``gt_mask`` and ``fgfi_mask(dense, psi)``. ``dense`` must come
    from a forward with targets (the masks read the detector's own assignment).
    """
    if dense.assignment is None or dense.targets is None:
        raise ValueError("region_masks needs the detector's assignment: run dense_forward with targets")
    gt = gt_mask(dense)
    return {
        "full map": [torch.ones_like(m) for m in gt],
        "positive": positive_mask(dense),
        "negative": negative_mask(dense),
        "GT box": gt,
        "FGFI": fgfi_mask(dense, psi=psi),
    }


def _levels(f_dif: Sequence[Tensor], p_dif: Sequence[Tensor]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """float64 numpy copies, checked to pair up level by level."""
    if len(f_dif) != len(p_dif) or not f_dif:
        raise ValueError(f"F_dif has {len(f_dif)} levels, P_dif {len(p_dif)}: give the same levels, at least one")
    f = [torch.as_tensor(x).detach().double().cpu().numpy() for x in f_dif]
    p = [torch.as_tensor(x).detach().double().cpu().numpy() for x in p_dif]
    for level, (a, b) in enumerate(zip(f, p)):
        if a.shape != b.shape or a.ndim != 3:
            raise ValueError(f"level {level}: F_dif {a.shape} and P_dif {b.shape} must both be [B, H, W]")
    return f, p


def _location_weights(f: list[np.ndarray], p: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Each location's weight in each quantity of :data:`SHARE_COLUMNS` (PFI averages per level)."""
    n = len(f)
    return {
        "locations": [np.ones_like(x) for x in f],
        "full-map FI (F_dif)": f,  # fi_full pools every location of every level
        "P_dif weight": [q / (n * q.size) for q in p],  # PFI's weight on F_dif at each location
        "PFI loss (P_dif x F_dif)": [q * x / (n * q.size) for q, x in zip(p, f)],
    }


def _share(values: list[np.ndarray], masks: list[np.ndarray]) -> float:
    total = sum(float(v.sum()) for v in values)
    inside = sum(float(v[m].sum()) for v, m in zip(values, masks))
    return inside / total if total > 0 else float("nan")


def region_shares(f_dif: Sequence[Tensor], p_dif: Sequence[Tensor], masks: Mapping[str, Sequence[Tensor]]) -> pd.DataFrame:
    """The share of each quantity that lies inside each region, all levels and images pooled.

    Rows: the regions of ``masks`` (e.g. :func:`region_masks`), in order. Columns
    (:data:`SHARE_COLUMNS`), each the region's part of a total over all locations:

    - ``locations``: the share of locations;
    - ``full-map FI (F_dif)``: of :math:`\\sum F_{dif}` (full-map FI pools all levels);
    - ``P_dif weight``: of PFI's weight on F_dif, :math:`P_{dif} / (L \\cdot B H_l W_l)`;
    - ``PFI loss (P_dif x F_dif)``: of :math:`L_{PFI}`, :math:`P_{dif} F_{dif} / (L \\cdot B H_l W_l)`.

    NaN where a total is 0. Computed in float64.
    """
    f, p = _levels(f_dif, p_dif)
    weights = _location_weights(f, p)
    rows = {}
    for name, region in masks.items():
        m = [torch.as_tensor(x).detach().bool().cpu().numpy() for x in region]
        if [x.shape for x in m] != [x.shape for x in f]:
            raise ValueError(f"region {name!r}: masks {[x.shape for x in m]} do not match the maps {[x.shape for x in f]}")
        rows[name] = {col: _share(weights[col], m) for col in SHARE_COLUMNS}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(SHARE_COLUMNS))


def level_shares(f_dif: Sequence[Tensor], p_dif: Sequence[Tensor], names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per FPN level: its grid and its share of the PFI loss, of full-map FI and of locations.

    Rows are named by ``names`` (e.g. :func:`rmkd.models.level_names` of the model),
    default ``level 0``, ``level 1``, ... Columns :data:`LEVEL_SHARE_COLUMNS`. Each
    share column sums to 1 over the levels (NaN if its total is 0).
    """
    f, p = _levels(f_dif, p_dif)
    names = list(names) if names is not None else [f"level {lv}" for lv in range(len(f))]
    if len(names) != len(f):
        raise ValueError(f"{len(names)} level names for {len(f)} levels")
    weights = _location_weights(f, p)
    cols = {"share of PFI loss": "PFI loss (P_dif x F_dif)", "share of full-map FI": "full-map FI (F_dif)",
            "share of locations": "locations"}  # fmt: skip
    frame = pd.DataFrame({"cells per image": [f"{x.shape[1]}x{x.shape[2]}" for x in f]}, index=names)
    for col, key in cols.items():
        per = np.array([float(v.sum()) for v in weights[key]])
        frame[col] = per / per.sum() if per.sum() > 0 else np.nan
    return frame[list(LEVEL_SHARE_COLUMNS)]


def _student_levels(levels: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    if not levels:
        raise ValueError("no student: give {name: Collection.levels}")
    return pd.concat([frame.assign(student=name) for name, frame in levels.items()], ignore_index=True)


def level_gap_table(levels: Mapping[str, pd.DataFrame], columns: Sequence[str] = GAP_TABLE_COLUMNS) -> pd.DataFrame:
    """Gap statistics per FPN level and student: means over images (NaN skipped).

    ``levels``: ``{student: Collection.levels}`` (one row per image and level, with
    ``level`` and ``stride``). Rows: the levels, named by stride (``P2``, ``P3``, ...);
    columns: ``(statistic, student)``, the students in the order given.
    """
    frame = _student_levels(levels)
    table = frame.groupby(["level", "student"])[list(columns)].mean().unstack("student")
    table = table.reindex(columns=list(levels), level="student")
    strides = frame.groupby("level")["stride"].first()
    table.index = [level_name(int(strides[lv])) for lv in table.index]
    return table


def gap_means(levels: Mapping[str, pd.DataFrame], min_locations: int = 16,
              columns: Sequence[str] = GAP_MEAN_COLUMNS) -> tuple[pd.DataFrame, list[str]]:
    """Per student, the mean over images and levels with at least ``min_locations`` cells.

    The same rows as :func:`rmkd.analysis.summarize` averages (its ``gap_pearson``,
    ``gap_spearman``, ``gap_top_iou`` equal the ``pearson``, ``spearman``, ``top_iou``
    columns here). Returns the frame (one row per student, in the order given) and
    the names of the levels that entered it, finest first.
    """
    frame = _student_levels(levels)
    fine = frame[frame["height"] * frame["width"] >= min_locations]
    strides = sorted({int(s) for s in fine["stride"]})
    means = fine.groupby("student")[list(columns)].mean().reindex(list(levels))
    return means, [level_name(s) for s in strides]


def pfi_verdicts(claims: pd.DataFrame) -> pd.DataFrame:
    """The study's "PFI beats X" claims: against the baseline and each FI region.

    ``claims``: :func:`rmkd.claims.paired_claims` of the study's CSV. Rows: ``baseline``
    then :data:`REGIONS` (the FI method of each is :data:`REGION_TERMS`); columns
    :data:`VERDICT_COLUMNS`, taken from the claim ``pfi beats <method>``. A claim the
    frame lacks gets ``n`` 0 and the verdict ``not in the study``.
    """
    opponents = {"baseline": "baseline", **REGION_TERMS}
    beats = claims[(claims["a"] == "pfi") & (claims["relation"] == "beats")].drop_duplicates("b").set_index("b")
    rows = {}
    for name, method in opponents.items():
        if method in beats.index:
            rows[name] = {col: (method if col == "b" else beats.loc[method, col]) for col in VERDICT_COLUMNS}
        else:
            rows[name] = {**{col: np.nan for col in VERDICT_COLUMNS}, "claim": f"PFI beats {method}", "b": method,
                          "n": 0, "verdict": "not in the study"}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(VERDICT_COLUMNS))
