"""Observation 2 as numbers: where features differ vs where predictions differ.

Per image and FPN level, F_dif and P_dif (docs/METHOD.md, section 1; the same maps
PFI multiplies) are compared by
- Pearson and Spearman correlation over the H*W locations,
- IoU of their top-``top_fraction`` locations (the "hot spots" of each map),
- the share of each map's mass at locations inside GT boxes (``gt_fraction``,
  the share of locations inside GT boxes, is the chance level for both).
If the two maps told the same story, the correlations would be near 1 and the
hot spots would coincide.

Shapes: ``[B, H, W]`` per level, ``[B, C, H, W]`` features.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torch import Tensor, nn

from ..losses import feature_difference, prediction_difference

GAP_COLUMNS = [
    "f_dif_mean",
    "p_dif_mean",
    "pearson",
    "spearman",
    "top_iou",
    "f_dif_in_gt",
    "p_dif_in_gt",
    "gt_fraction",
]


def gap_maps(t_feats, s_feats, t_cls_logits, s_cls_logits) -> list[tuple[Tensor, Tensor]]:
    """Per level ``(F_dif [B, H, W], P_dif [B, H, W])``.

    ``s_feats`` must already be in the teacher's channel space (see :func:`fit_adapter`).
    """
    return [
        (feature_difference(tf, sf), prediction_difference(tc, sc))
        for tf, sf, tc, sc in zip(t_feats, s_feats, t_cls_logits, s_cls_logits)
    ]


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row of ``x [B, n]`` with the same row of ``y``; NaN for a constant row."""
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    num = (x * y).sum(axis=1)
    out = np.full(len(x), np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return np.clip(out, -1.0, 1.0)


def _top_set(x: np.ndarray, k: int) -> np.ndarray:
    """``[B, n]`` bool: the k largest entries of each row (ties broken by position)."""
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]
    chosen = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(chosen, order, True, axis=1)
    return chosen


def _share(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    total = x.sum(axis=1)
    inside = (x * mask).sum(axis=1)
    out = np.full(len(x), np.nan)
    ok = total > 0
    out[ok] = inside[ok] / total[ok]
    return out


def gap_statistics(f_dif, p_dif, gt_mask=None, top_fraction: float = 0.1) -> pd.DataFrame:
    """One row per image of one level: how alike the F_dif and P_dif maps are.

    Args:
        f_dif, p_dif: ``[B, H, W]`` maps (tensors or arrays), non-negative.
        gt_mask: ``[B, H, W]`` bool, locations inside a GT box; None gives NaN shares.
        top_fraction: the hot-spot share; ``k = ceil(top_fraction * H * W)`` (at least 1)
            locations per map, ties broken by position.

    Returns:
        Columns :data:`GAP_COLUMNS`. Correlations are NaN where a map is constant
        (e.g. a 1x1 level), ``top_iou`` where the top set is the whole map (k = H*W),
        shares where a map is all zero.
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    f = _as_rows(f_dif)
    p = _as_rows(p_dif)
    if f.shape != p.shape:
        raise ValueError(f"F_dif {f.shape} and P_dif {p.shape} maps differ in shape")
    n = f.shape[1]
    k = max(1, math.ceil(top_fraction * n))
    top_f, top_p = _top_set(f, k), _top_set(p, k)
    inter = (top_f & top_p).sum(axis=1)
    # When the "top" set is the whole map (a 1x1 level), the overlap is 1 by definition
    # and says nothing: NaN, so it never inflates a mean.
    top_iou = inter / (2 * k - inter) if k < n else np.full(len(f), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        spearman = _rowwise_pearson(rankdata(f, axis=1), rankdata(p, axis=1))
    frame = {
        "f_dif_mean": f.mean(axis=1),
        "p_dif_mean": p.mean(axis=1),
        "pearson": _rowwise_pearson(f, p),
        "spearman": spearman,
        "top_iou": top_iou,
    }
    if gt_mask is None:
        nan = np.full(len(f), np.nan)
        frame.update(f_dif_in_gt=nan, p_dif_in_gt=nan, gt_fraction=nan)
    else:
        m = _as_rows(gt_mask).astype(bool)
        frame.update(f_dif_in_gt=_share(f, m), p_dif_in_gt=_share(p, m), gt_fraction=m.mean(axis=1))
    return pd.DataFrame(frame, columns=GAP_COLUMNS)


def _as_rows(x) -> np.ndarray:
    """``[B, H, W]`` tensor/array -> float64 ``[B, H*W]`` (bool stays bool)."""
    if torch.is_tensor(x):
        x = x.detach().cpu()
        x = x.numpy() if x.dtype == torch.bool else x.double().numpy()
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"expected [B, H, W] maps, got shape {x.shape}")
    return x.reshape(len(x), -1) if x.dtype == bool else x.reshape(len(x), -1).astype(np.float64)


@torch.no_grad()
def fit_adapter(s_feats: list[Tensor], t_feats: list[Tensor], ridge: float = 1e-3, per_level: bool = False):
    """The least-squares 1x1 conv from student to teacher features, pooled over levels.

    When widths differ, F_dif needs a map phi from the student's C_s channels to the
    teacher's C_t. A baseline student has no trained adapter, so analysis fits
    ``phi(x) = W x + b`` minimising ``sum ||F_t - phi(F_s)||^2`` over every location
    of every level given (one map for all levels: the FPN levels share one head, so
    they live in one space). Fitting the same way for every student keeps their
    F_dif comparable. Solved in float64 with a small ridge (relative to the
    data's scale) so a few locations never make it singular.

    Args:
        s_feats, t_feats: per level ``[B, C_s, H, W]`` / ``[B, C_t, H, W]``.
        per_level: fit one map per level instead (an ``nn.ModuleList``), like the
            Distiller's adapters; coarse levels have few locations, so the ridge
            matters more there.
    """
    if per_level:
        return nn.ModuleList(fit_adapter([s], [t], ridge) for s, t in zip(s_feats, t_feats))
    x = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in s_feats]).double()  # [n, C_s]
    y = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in t_feats]).double()  # [n, C_t]
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)  # bias column
    gram = x.T @ x
    lam = ridge * gram.diagonal().mean().clamp(min=1e-12)
    w = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=x.dtype, device=x.device), x.T @ y)  # [C_s+1, C_t]
    conv = nn.Conv2d(x.shape[1] - 1, y.shape[1], kernel_size=1).to(s_feats[0].device)
    conv.weight.copy_(w[:-1].T.reshape(conv.weight.shape).to(conv.weight.dtype))
    conv.bias.copy_(w[-1].to(conv.bias.dtype))
    return conv.eval().requires_grad_(False)
