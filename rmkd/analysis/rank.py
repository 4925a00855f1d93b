"""Observation 1 as numbers: does the student rank an instance's candidates like the teacher?

For every object instance, the teacher's and the student's scores of that
instance's candidate boxes are compared by Kendall tau-b, Spearman rho and
whether both pick the same top-1 candidate. The values equal
``scipy.stats.kendalltau`` / ``scipy.stats.spearmanr`` run on each instance
alone, but all instances are computed together with array operations, so a
detector's few thousand instances take milliseconds instead of a second.

Shapes: ``[P]`` candidates of all instances, ``[M]`` distinct instances.

How (why it equals scipy): for one instance with scores ``t, s [n]`` let
``gt[i, j] = t_i > t_j`` and ``dt = gt - gt.T = sign(t_i - t_j)`` (same for s).

- Kendall tau-b. ``Nt = sum(gt)`` counts the pairs not tied in t, i.e. scipy's
  ``tot - xtie``; ``S = sum_ij gt[i, j] * ds[i, j]`` visits every untied-in-t
  pair once (from its larger side) and adds +1 if s orders it the same way,
  -1 if the other way, 0 if s ties it: scipy's ``con - dis``. Then
  ``tau = S / sqrt(Nt) / sqrt(Ns)``, the same integers through the same float
  operations as scipy, and NaN when ``Nt`` or ``Ns`` is 0 (all tied, n < 2).
- Spearman rho. The average (mid) rank is
  ``rank_i = #(t_j < t_i) + (#(t_j == t_i) + 1) / 2 = (n + 1 + a_i) / 2`` with
  ``a_i = sum_j dt[i, j]``, so ``a = 2 * (rank - mean rank)``: Pearson on the
  ranks is ``sum(a b) / sqrt(sum(a^2)) / sqrt(sum(b^2))``, integers again, NaN
  when a side is constant (zero variance), as scipy returns.
- Top-1: first maximum in input order (numpy ``argmax``) of each side.

Instances are stable-sorted by size and padded (with NaN, which compares
False both ways, so padding adds nothing to any count) into chunks of similar
width; a chunk holds at most ``_CHUNK_ELEMENTS`` pairs, and an instance wider
than that is processed a block of rows at a time, so memory stays bounded
whatever the sizes. The Python loop runs over chunks, never over instances.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

COLUMNS = ["instance_id", "n_candidates", "kendall_tau", "spearman_rho", "top1_agree"]

# Pairs (chunk instances x width x width) per chunk: ~1M keeps each of the
# few int8/bool temporaries at ~1 MB while a chunk still holds hundreds of
# typical instances, and bounds memory for any instance size.
_CHUNK_ELEMENTS = 1 << 20
# Width classes grow by 2**(1/_STEPS_PER_OCTAVE) (~9 %), so padding wastes
# at most ~19 % of the pairs while 2..60 candidates give only ~25 chunks.
_STEPS_PER_OCTAVE = 8
# Instances of up to this many candidates share one width class.
_SMALL = 8


def _as_1d(x, name: str, integer: bool = False) -> np.ndarray:
    """``x`` (tensor on any device, ndarray, list) as a 1-D numpy array; scores as float64."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # float16/bfloat16 have no numpy twin; float64 holds them (and float32) exactly.
        x = (x.to(torch.float64) if x.is_floating_point() else x).numpy()
    else:
        x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D with one entry per candidate ([P]), got shape {tuple(x.shape)}; flatten it first")
    if x.size == 0:
        return x.astype(np.int64 if integer else np.float64)
    if integer:
        if x.dtype.kind not in "iub":
            raise ValueError(f"{name} must hold integer instance ids, got dtype {x.dtype}; cast it with .long() / .astype(int)")
        return x.astype(np.int64, copy=False)
    if x.dtype.kind not in "iubf":
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}; pass float scores")
    # float64 keeps every float32/float16 value, so ties and orderings are exactly the caller's.
    x = x.astype(np.float64, copy=False)
    bad = np.count_nonzero(~np.isfinite(x))
    if bad:
        raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf); drop or fix those candidates before ranking")
    return x


def _unique_inverse(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(ids, return_inverse=True)``, without its sort when the ids span a short range."""
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo >= 4 * len(ids) + 1024:  # sparse ids (e.g. hashes): sort them
        return np.unique(ids, return_inverse=True)
    # Dense ids (the usual 0..M-1): a presence table is O(P + range), ~5x faster.
    present = np.bincount(ids - lo) > 0
    rank = np.cumsum(present) - 1  # id - lo -> index among the present ids
    return np.flatnonzero(present) + lo, rank[ids - lo]


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "instance_id": np.empty(0, np.int64),
            "n_candidates": np.empty(0, np.int64),
            "kendall_tau": np.empty(0, np.float64),
            "spearman_rho": np.empty(0, np.float64),
            "top1_agree": np.empty(0, bool),
        }
    )


def _segment_first_argmax(x: np.ndarray, seg: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per segment (``x`` sorted by ``seg``, segments start at ``starts``): local index of its first maximum."""
    peak = np.maximum.reduceat(x, starts)  # [M]
    hits = np.flatnonzero(x == peak[seg])  # every position holding its segment's max, ascending
    # Keep the first hit of each segment: every segment has one, so this is [M] in segment order.
    first = hits[np.r_[True, seg[hits[1:]] != seg[hits[:-1]]]]
    return first - starts


def _pairs_minor(t: np.ndarray, s: np.ndarray):
    """Pair counts for a chunk laid out ``[W, c]`` (instance axis last and contiguous).

    Used when there are many narrow instances: numpy's inner loops then run
    over the c instances instead of a short width. Returns ``S, Nt, Ns [c]``
    and ``a, b [c, W]`` (see the module docstring).
    """
    w, c = t.shape
    acc = _row_sum_dtype(w)
    gt = t[:, None, :] > t[None, :, :]  # [W, W, c]  gt[i, j] = t_i > t_j
    gs = s[:, None, :] > s[None, :, :]
    s8 = gs.view(np.int8)
    ds = s8 - s8.transpose(1, 0, 2)  # sign(s_i - s_j); the transpose is a free view
    # Sum over j first (|row| <= W fits the narrow type), then over rows in int64.
    S = np.add.reduce(gt.view(np.int8) * ds, axis=1, dtype=acc).sum(0, dtype=np.int64)
    # Row sums count #(t_j < t_i), column sums #(t_j > t_i): a = their difference.
    gt_rows = np.add.reduce(gt, axis=1, dtype=acc)  # [W, c]
    gs_rows = np.add.reduce(gs, axis=1, dtype=acc)
    a = gt_rows - np.add.reduce(gt, axis=0, dtype=acc)
    b = gs_rows - np.add.reduce(gs, axis=0, dtype=acc)
    return S, gt_rows.sum(0, dtype=np.int64), gs_rows.sum(0, dtype=np.int64), a.T, b.T


def _pairs_major(t: np.ndarray, s: np.ndarray, r0: int, r1: int):
    """Pair counts of rows ``r0:r1`` for a chunk laid out ``[c, W]`` (few wide instances).

    Same returns as :func:`_pairs_minor`, with ``a, b [c, r1 - r0]`` and
    ``S, Nt, Ns`` summed over those rows only; comparing rows to all columns
    directly (instead of transposing) lets one huge instance go in row blocks.
    """
    acc = _row_sum_dtype(t.shape[1])
    tr, sr = t[:, r0:r1, None], s[:, r0:r1, None]
    gt, lt = tr > t[:, None, :], tr < t[:, None, :]  # [c, R, W]
    gs, ls = sr > s[:, None, :], sr < s[:, None, :]
    ds = gs.view(np.int8) - ls.view(np.int8)
    S = np.add.reduce(gt.view(np.int8) * ds, axis=2, dtype=acc).sum(1, dtype=np.int64)
    gt_rows = np.add.reduce(gt, axis=2, dtype=acc)  # [c, R]
    gs_rows = np.add.reduce(gs, axis=2, dtype=acc)
    a = gt_rows - np.add.reduce(lt, axis=2, dtype=acc)
    b = gs_rows - np.add.reduce(ls, axis=2, dtype=acc)
    return S, gt_rows.sum(1, dtype=np.int64), gs_rows.sum(1, dtype=np.int64), a, b


def _row_sum_dtype(width: int):
    """Narrowest integer type for sums of one row of ``width`` values in {-1, 0, 1}.

    int16 sums run about twice as fast as int32 ones (twice the SIMD lanes).
    """
    return np.int16 if width < 2**15 else np.int32


def _chunks(sizes: np.ndarray):
    """Split instances sorted by size (``sizes [M]`` ascending) into ``(i0, i1, width)`` chunks."""
    # Width class: ~9 % steps in size; all instances of <= _SMALL candidates together.
    cls = np.floor(np.log2(np.maximum(sizes, _SMALL)) * _STEPS_PER_OCTAVE).astype(np.int64)
    bounds = np.r_[0, np.flatnonzero(np.diff(cls)) + 1, len(sizes)]
    for b0, b1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        width = int(sizes[b1 - 1])
        per_chunk = max(1, _CHUNK_ELEMENTS // (width * width))
        for i0 in range(b0, b1, per_chunk):
            yield i0, min(i0 + per_chunk, b1), width


def rank_agreement(t_scores, s_scores, instance_ids) -> pd.DataFrame:
    """Per-instance agreement between teacher and student rankings of candidate boxes.

    Args:
        t_scores: ``[P]`` teacher scores of all candidates (tensor on any device,
            ndarray or list; compared in float64, so float32 ties stay ties).
        s_scores: ``[P]`` student scores of the same candidates.
        instance_ids: ``[P]`` integers naming each candidate's instance; any values,
            groups interleaved in any order.

    Returns:
        A DataFrame with ``[M]`` rows, one per distinct instance id, sorted by
        ``instance_id`` ascending, with columns ``instance_id`` (int64),
        ``n_candidates`` (int64), ``kendall_tau`` (tau-b; equals
        ``scipy.stats.kendalltau(t, s).statistic``), ``spearman_rho`` (equals
        ``scipy.stats.spearmanr(t, s).statistic``, average ranks for ties) and
        ``top1_agree`` (bool: the teacher's highest-scored candidate is the
        student's, ties going to the first in input order, like ``np.argmax``).
        The correlations are NaN where scipy's are: for a single candidate and
        when either side's scores are all equal; a single candidate has
        ``top1_agree`` True. P = 0 gives an empty frame with these columns and
        dtypes. No warnings are emitted.

    Raises:
        ValueError: an input not 1-D, lengths that differ, non-finite scores,
            or non-integer ids.
    """
    t = _as_1d(t_scores, "t_scores")
    s = _as_1d(s_scores, "s_scores")
    ids = _as_1d(instance_ids, "instance_ids", integer=True)
    if not (len(t) == len(s) == len(ids)):
        raise ValueError(
            f"t_scores, s_scores and instance_ids must have one entry per candidate, got lengths "
            f"{len(t)}, {len(s)}, {len(ids)}; pass the same P candidates to all three"
        )
    p = len(t)
    if p == 0:
        return _empty_frame()

    uniq, inv = _unique_inverse(ids)  # [M] ascending, [P] in 0..M-1
    m = len(uniq)
    counts = np.bincount(inv, minlength=m)  # [M]
    by_size = np.argsort(counts, kind="stable")  # instances, narrowest first
    slot = np.empty(m, np.int64)
    slot[by_size] = np.arange(m)  # instance -> its position in size order
    # Candidates grouped by size-ordered instance, input order kept inside each
    # (top-1 ties go to the first in input order), so the sort must be stable.
    seg_of = slot[inv]
    if m <= 1 << 16:  # numpy's stable sort of 16-bit keys is a radix sort: O(P)
        order = np.argsort(seg_of.astype(np.uint16), kind="stable")
    else:  # distinct keys, so the fast default sort gives exactly the stable order
        order = np.argsort(seg_of * p + np.arange(p))
    seg = seg_of[order]  # [P] ascending
    ts, ss = t[order], s[order]
    sizes = counts[by_size]  # [M] ascending
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    pos = np.arange(p) - starts[seg]  # each candidate's index within its instance

    top1 = _segment_first_argmax(ts, seg, starts) == _segment_first_argmax(ss, seg, starts)

    # Per instance (size order): S = con - dis, Nt/Ns = pairs untied in t/s,
    # and the sums of a*b, a*a, b*b. Exact integers; floats only at the end.
    acc = np.zeros((6, m), np.int64)
    for i0, i1, w in _chunks(sizes):
        c0, c1 = starts[i0], starts[i1 - 1] + sizes[i1 - 1]
        col, row = seg[c0:c1] - i0, pos[c0:c1]
        c = i1 - i0
        if c >= w:  # many narrow instances: instance axis innermost
            tm = np.full((w, c), np.nan)
            sm = np.full((w, c), np.nan)
            tm[row, col], sm[row, col] = ts[c0:c1], ss[c0:c1]
            parts = [_pairs_minor(tm, sm)]
        else:  # few wide ones: candidate axis innermost, rows in blocks if huge
            tm = np.full((c, w), np.nan)
            sm = np.full((c, w), np.nan)
            tm[col, row], sm[col, row] = ts[c0:c1], ss[c0:c1]
            step = max(1, _CHUNK_ELEMENTS // (c * w))
            parts = (_pairs_major(tm, sm, r0, min(r0 + step, w)) for r0 in range(0, w, step))
        for S, nt, ns, a, b in parts:
            a, b = a.astype(np.int64), b.astype(np.int64)
            acc[:, i0:i1] += np.stack([S, nt, ns, (a * b).sum(1), (a * a).sum(1), (b * b).sum(1)])

    S, nt, ns, sab, saa, sbb = acc.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Same operations as scipy (con_minus_dis / sqrt / sqrt, then clipped), NaN where it gives NaN.
        tau = np.where((nt > 0) & (ns > 0), S / np.sqrt(nt) / np.sqrt(ns), np.nan)
        rho = np.where((saa > 0) & (sbb > 0), sab / np.sqrt(saa) / np.sqrt(sbb), np.nan)
    tau, rho = np.clip(tau, -1.0, 1.0), np.clip(rho, -1.0, 1.0)  # clip keeps NaN

    # Back from size order to ascending instance id.
    return pd.DataFrame(
        {
            "instance_id": uniq.astype(np.int64),
            "n_candidates": counts.astype(np.int64),
            "kendall_tau": tau[slot],
            "spearman_rho": rho[slot],
            "top1_agree": top1[slot],
        }
    )
