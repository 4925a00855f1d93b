"""Distillation losses as pure functions of tensors (no modules, no state).

The paper's two methods (Li et al., AAAI 2022, arXiv 2112.04840) and the
baselines it compares against. Shapes: ``[P]`` positive candidates of all
instances in a batch, ``[M]`` instances, per FPN level ``[B, C, H, W]``
features and ``[B, A*K, H, W]`` class logits, ``[B, H, W]`` location masks.
Every teacher input is detached inside, so the teacher never gets a gradient.
No Python loop runs over images, instances or anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _segment_log_softmax(x: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """log softmax of ``x [P]`` within each group (``groups [P]`` in 0..num_groups-1)."""
    # Subtract each group's max so exp never overflows, even for logits of +-50 / small T.
    peak = torch.full((num_groups,), -torch.inf, dtype=x.dtype, device=x.device)
    peak = peak.scatter_reduce(0, groups, x.detach(), reduce="amax", include_self=True)
    shifted = x - peak[groups]
    denom = torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, groups, shifted.exp())
    return shifted - denom.log()[groups]


def rank_mimicking(t_scores: Tensor, s_scores: Tensor, instance_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """Rank Mimicking: mean over instances of KL(softmax(t/T) || softmax(s/T)).

    Args:
        t_scores: ``[P]`` teacher scores of the positive candidates (detached here).
        s_scores: ``[P]`` student scores of the same candidates.
        instance_ids: ``[P]`` integers naming each candidate's instance; any values,
            groups interleaved in any order.
        temperature: T > 0; the rank distribution over an instance's candidates is
            ``softmax(score / T)``.

    Returns:
        A scalar: the KL summed within each instance, averaged over all M instances.
        An instance with one candidate contributes exactly 0; P = 0 gives 0 (not NaN),
        still connected to ``s_scores`` so backward works.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not (t_scores.shape == s_scores.shape == instance_ids.shape) or t_scores.ndim != 1:
        raise ValueError(
            f"rank_mimicking expects three [P] tensors, got {tuple(t_scores.shape)}, "
            f"{tuple(s_scores.shape)}, {tuple(instance_ids.shape)}"
        )
    if s_scores.numel() == 0:
        return s_scores.sum() * 0.0
    groups, inverse = torch.unique(instance_ids, return_inverse=True)  # [M], [P] in 0..M-1
    m = groups.numel()
    log_t = _segment_log_softmax(t_scores.detach().to(s_scores.dtype) / temperature, inverse, m)  # [P]
    log_s = _segment_log_softmax(s_scores / temperature, inverse, m)  # [P]
    per_candidate = log_t.exp() * (log_t - log_s)  # [P]
    per_instance = torch.zeros(m, dtype=s_scores.dtype, device=s_scores.device).index_add_(0, inverse, per_candidate)
    return per_instance.mean()


def prediction_difference(t_cls_logits: Tensor, s_cls_logits: Tensor) -> Tensor:
    """P_dif ``[B, H, W]``: mean over the A*K class outputs of (sigmoid(t) - sigmoid(s))^2."""
    return (t_cls_logits.detach().sigmoid() - s_cls_logits.sigmoid()).pow(2).mean(dim=1)


def feature_difference(t_feats: Tensor, s_feats: Tensor) -> Tensor:
    """F_dif ``[B, H, W]``: channel mean of (F_teacher - F_student)^2."""
    return (t_feats.detach() - s_feats).pow(2).mean(dim=1)


def prediction_guided_feature_imitation(
    t_feats: list[Tensor],
    s_feats: list[Tensor],
    t_cls_logits: list[Tensor],
    s_cls_logits: list[Tensor],
    detach_pdif: bool = False,
) -> Tensor:
    """PFI: (1/L) sum_l mean_{b,h,w}(P_dif * F_dif).

    Args:
        t_feats, s_feats: per level ``[B, C, H, W]``; ``s_feats`` already adapted to
            the teacher's channels (1x1 conv when they differ).
        t_cls_logits, s_cls_logits: per level ``[B, A*K, H, W]``.
        detach_pdif: stop the gradient through P_dif (the paper does not say; the
            public reimplementations let it flow, which is our default).
    """
    _check_levels(t_feats, s_feats, t_cls_logits, s_cls_logits)
    total = s_feats[0].new_zeros(())
    for tf, sf, tc, sc in zip(t_feats, s_feats, t_cls_logits, s_cls_logits):
        p_dif = prediction_difference(tc, sc)  # [B, H, W]
        if detach_pdif:
            p_dif = p_dif.detach()
        total = total + (p_dif * feature_difference(tf, sf)).mean()
    return total / len(s_feats)


def feature_imitation(
    t_feats: list[Tensor], s_feats: list[Tensor], masks: list[Tensor] | None = None, per_level: bool = False
) -> Tensor:
    """Masked feature imitation: sum of F_dif over chosen locations / number chosen.

    Args:
        t_feats, s_feats: per level ``[B, C, H, W]`` (student already adapted).
        masks: per level ``[B, H, W]`` bool or float weights; None imitates every
            location (the "full map" baseline). No chosen location gives 0.
        per_level: False (the baselines as published): counts pool over all levels, so
            a level weighs by how many locations it contributes. True: PFI's
            normalisation, ``(1/L) sum_l`` of each level's own masked mean, so one
            coarse-level cell weighs as much as many fine-level cells (the control
            that separates PFI's weighting from its normalisation).
    """
    _check_levels(t_feats, s_feats)
    num = s_feats[0].new_zeros(())
    den = s_feats[0].new_zeros(())
    total = s_feats[0].new_zeros(())
    for level, (tf, sf) in enumerate(zip(t_feats, s_feats)):
        f_dif = feature_difference(tf, sf)  # [B, H, W]
        w = torch.ones_like(f_dif) if masks is None else masks[level].to(f_dif.dtype)
        if per_level:
            total = total + (f_dif * w).sum() / w.sum().clamp(min=1.0)
        else:
            num, den = num + (f_dif * w).sum(), den + w.sum()
    return total / len(s_feats) if per_level else num / den.clamp(min=1.0)


def soft_label_kd(t_cls_logits: Tensor, s_cls_logits: Tensor, temperature: float = 1.0, weights: Tensor | None = None) -> Tensor:
    """Soft-label KD for sigmoid classifiers, per anchor.

    Each of the K class outputs of an anchor is a Bernoulli; the loss is the KL
    from the teacher's Bernoulli(sigmoid(t/T)) to the student's, summed over
    classes, averaged over anchors, times T^2 (Hinton et al.'s gradient scale).
    It is 0 when the logits agree.

    Args:
        t_cls_logits, s_cls_logits: ``[..., K]`` logits (e.g. ``[B, N, K]``).
        weights: optional ``[...]`` anchor weights (e.g. drop ignored anchors).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = t_cls_logits.detach() / temperature
    s = s_cls_logits / temperature
    p_t = t.sigmoid()
    # KL(Bern(p_t) || Bern(p_s)) = BCE(s; p_t) - BCE(t; p_t), both in the stable logits form.
    # (A folded logsigmoid form was 1.5x slower at COCO size: docs/RESULTS.md.)
    kl = F.binary_cross_entropy_with_logits(s, p_t, reduction="none") - F.binary_cross_entropy_with_logits(
        t, p_t, reduction="none"
    )
    per_anchor = kl.sum(dim=-1) * temperature**2
    if weights is None:
        return per_anchor.mean() if per_anchor.numel() else per_anchor.sum()
    w = weights.to(per_anchor.dtype)
    return (per_anchor * w).sum() / w.sum().clamp(min=1.0)


def _check_levels(*lists: list[Tensor]) -> None:
    if len({len(x) for x in lists}) != 1 or not lists[0]:
        raise ValueError(f"per-level lists must be non-empty and of equal length, got {[len(x) for x in lists]}")
    for level, tensors in enumerate(zip(*lists)):
        sizes = {tuple(t.shape[-2:]) for t in tensors}
        if len(sizes) != 1:
            raise ValueError(f"FPN level {level}: spatial sizes differ between inputs: {sorted(sizes)}")
