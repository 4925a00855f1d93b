"""RM's own objective, measured on held-out candidates, and the score statistics that explain it.

:func:`rank_agreement` asks whether the student *orders* an instance's candidates
like the teacher. Rank Mimicking does not train that order directly: it lowers
``KL(softmax(t / T) || softmax(s / T))`` over the candidates (:func:`rmkd.losses.rank_mimicking`).
:func:`rank_kl` measures that KL per instance on any candidates (e.g. a validation
set's, from :func:`rmkd.analysis.collect`'s details), together with each side's mean
score and within-instance spread, so one can see *how* a student lowered it: by
ordering like the teacher, or by changing the shape of its scores (a forward KL also
falls when the student's distribution spreads over the teacher's likely candidates).

Shapes: ``[P]`` candidates of all instances, ``[M]`` distinct instances.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .rank import _as_1d, _unique_inverse

COLUMNS = ["instance_id", "n_candidates", "kl", "t_mean", "s_mean", "t_std", "s_std"]


def _segment_log_softmax(x: np.ndarray, seg: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """log softmax of ``x [P]`` within each segment (``x`` sorted by ``seg``, segments start at ``starts``)."""
    shifted = x - np.maximum.reduceat(x, starts)[seg]  # exp never overflows, whatever T
    return shifted - np.log(np.add.reduceat(np.exp(shifted), starts))[seg]


def rank_kl(t_scores, s_scores, instance_ids, temperature: float = 1.0) -> pd.DataFrame:
    """Per-instance RM divergence and score statistics, in float64.

    Args:
        t_scores, s_scores: ``[P]`` teacher and student scores of the same candidates
            (tensor, ndarray or list; the scores RM ranks by, e.g. GT-class probabilities).
        instance_ids: ``[P]`` integers naming each candidate's instance, in any order.
        temperature: T > 0 of RM's softmax.

    Returns:
        ``[M]`` rows sorted by ``instance_id``: ``n_candidates``; ``kl`` =
        ``sum_i p_t,i (log p_t,i - log p_s,i)`` with ``p = softmax(score / T)`` over the
        instance's candidates (0 for one candidate; the mean of this column is what
        :func:`rmkd.losses.rank_mimicking` returns for the same inputs); ``t_mean``,
        ``s_mean`` the mean scores; ``t_std``, ``s_std`` their population standard
        deviation within the instance.

    Raises:
        ValueError: T <= 0, inputs not 1-D, lengths that differ, non-finite scores.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = _as_1d(t_scores, "t_scores")
    s = _as_1d(s_scores, "s_scores")
    ids = _as_1d(instance_ids, "instance_ids", integer=True)
    if not (len(t) == len(s) == len(ids)):
        raise ValueError(f"t_scores, s_scores and instance_ids must have one entry per candidate, got lengths {len(t)}, {len(s)}, {len(ids)}")
    if len(t) == 0:
        return pd.DataFrame({c: np.empty(0, np.int64 if c in ("instance_id", "n_candidates") else np.float64) for c in COLUMNS})
    uniq, inv = _unique_inverse(ids)  # [M], [P]
    order = np.argsort(inv, kind="stable")
    seg, ts, ss = inv[order], t[order], s[order]
    counts = np.bincount(seg, minlength=len(uniq))  # [M]
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    log_t = _segment_log_softmax(ts / temperature, seg, starts)
    log_s = _segment_log_softmax(ss / temperature, seg, starts)
    kl = np.add.reduceat(np.exp(log_t) * (log_t - log_s), starts)
    mean = lambda x: np.add.reduceat(x, starts) / counts  # noqa: E731
    t_mean, s_mean = mean(ts), mean(ss)
    return pd.DataFrame(
        {
            "instance_id": uniq,
            "n_candidates": counts,
            "kl": kl,
            "t_mean": t_mean,
            "s_mean": s_mean,
            "t_std": np.sqrt(mean((ts - t_mean[seg]) ** 2)),
            "s_std": np.sqrt(mean((ss - s_mean[seg]) ** 2)),
        }
    )
