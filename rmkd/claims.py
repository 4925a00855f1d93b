"""Paired statistics for the study's claims: same-seed differences, t-intervals, Holm.

Every method of the study trains from the same seeds, and a seed fixes the
student's initialisation and data order for every method. So two methods are
compared through their same-seed differences ``d_s = AP_A(s) - AP_B(s)``: the
seed's own effect (often the largest in the table) cancels, and what is left is
the method's effect plus the seed x method noise.

For each claim (A, relation, B):

- ``beats``: a two-sided paired t-test of mean(d) = 0 (``scipy.stats.ttest_rel``).
  *supported* when the Holm-adjusted p is below ``alpha`` and the 95% interval of
  mean(d) lies above 0; *contradicted* when it rejects and the interval lies below 0.
- ``at least as well as``: non-inferiority with a margin fixed before the study
  (:data:`MARGIN` AP). The test is of mean(d) = -margin; *supported* when it rejects
  (Holm) and the interval's lower end is above -margin; *contradicted* when it
  rejects and the whole interval is below -margin (B better by more than the margin).
- anything else is *undecided*: the data cannot tell (never "did not hold").

An undecided claim does not say how large an effect the data leave room for, so
each ``beats`` claim also gets an equivalence test at the same margin: the two
one-sided tests (TOST) of mean(d) <= -margin and mean(d) >= +margin, ``p_equiv``
the larger of their p-values. ``equivalent`` (*within ±margin AP*) when Holm over
the claims' ``p_equiv`` (a family of its own, beside the verdicts') rejects: the
effect, whatever its sign, is smaller than the margin. It can sit beside any
verdict (a decided gain of 0.3 AP is both *supported* and within ±1 AP).

Holm's step-down correction runs over the claims of one table together
(``statsmodels.stats.multitest.multipletests``): every claim with two or more
paired seeds whose differences vary (a claim without them has no p: a t-test
cannot measure noise that never shows). A finished study tests all of
:data:`CLAIMS`; an unfinished one tests fewer, and its family grows as runs land,
so an interim verdict near alpha can still change. ``seeds_needed`` is the number of
seeds a paired t-test needs for 80% power at ``alpha`` (before the correction) to
detect the observed difference from the tested value, or :data:`MIN_EFFECT` AP when
the observed one is smaller, at the observed SD of the differences
(``statsmodels.stats.power.TTestPower``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

MARGIN = 1.0  # AP: "A works at least as well as B" tolerates B ahead by less than this
MIN_EFFECT = 1.5  # AP: the smallest difference seeds_needed plans for
ALPHA = 0.05
MAX_SEEDS = 1000  # seeds_needed reports inf beyond this
SPREAD_TOL = 1e-9  # AP: same-seed differences closer than this have no spread (CSV APs carry 4 decimals)
# The paper's claims (COCO, AAAI 2022) and the controls a reviewer asks for, as
# (claim, method A, relation, method B) over the study's methods (rmkd.reproduce.METHODS).
CLAIMS = [
    ("RM beats the baseline", "rm", "beats", "baseline"),
    ("PFI beats the baseline", "pfi", "beats", "baseline"),
    ("RM+PFI beats RM alone", "rm+pfi", "beats", "rm"),
    ("RM+PFI beats PFI alone", "rm+pfi", "beats", "pfi"),
    ("RM beats soft-label KD", "rm", "beats", "soft_label"),
    ("RM+PFI beats soft-label KD + full-map FI", "rm+pfi", "beats", "soft_label+fi_full"),
    ("ranking by cls works at least as well as by IoU", "rm", "at least as well as", "rm_iou"),
    ("ranking by cls works at least as well as by cls+IoU", "rm", "at least as well as", "rm_cls_iou"),
    ("PFI beats feature imitation on the full map", "pfi", "beats", "fi_full"),
    ("PFI beats full-map FI with PFI's per-level normalisation", "pfi", "beats", "fi_full_level"),
    ("PFI beats feature imitation at positive locations", "pfi", "beats", "fi_positive"),
    ("PFI beats feature imitation at negative locations", "pfi", "beats", "fi_negative"),
    ("PFI beats feature imitation inside GT boxes", "pfi", "beats", "fi_gt"),
    ("PFI beats FGFI", "pfi", "beats", "fgfi"),
    # details the paper leaves open; the library's defaults move only where these are decided
    ("PFI with P_dif's gradient beats P_dif detached", "pfi", "beats", "pfi_detach"),
    ("RM sharpened to T = 0.25 beats RM at T = 1", "rm_t0.25", "beats", "rm"),
    ("RM sharpened to T = 0.1 beats RM at T = 1", "rm_t0.1", "beats", "rm"),
]
COLUMNS = ["claim", "a", "relation", "b", "n", "mean_diff", "sd_diff", "ci_low", "ci_high", "p", "p_holm", "verdict",
           "seeds_needed", "p_equiv", "p_equiv_holm", "equivalent"]  # fmt: skip
RELATIONS = ("beats", "at least as well as")


def paired_differences(frame: pd.DataFrame, a: str, b: str, metric: str = "AP") -> pd.Series:
    """``AP_A(s) - AP_B(s)`` over the seeds both methods finished, indexed by seed."""
    pa = frame[frame.method == a].set_index("seed")[metric]
    pb = frame[frame.method == b].set_index("seed")[metric]
    common = pa.index.intersection(pb.index).sort_values()
    return (pa[common] - pb[common]).astype(float)


def spread(d: np.ndarray) -> float:
    """The sample SD of differences ``[n]`` (n >= 2), 0 when they agree to :data:`SPREAD_TOL` AP:
    differences of rounded APs may differ in the last bits only, which a t-test would read as
    real, if tiny, noise (and so an almost infinitely precise mean)."""
    return 0.0 if np.ptp(d) <= SPREAD_TOL else float(np.std(d, ddof=1))


def _test(d: np.ndarray, null: float) -> tuple[float, float, float, float]:
    """(sd, ci_low, ci_high, p) of a one-sample t-test of mean(d) = null (= ttest_rel on the pairs).

    Untested (NaN interval and p) below two seeds, and when every difference is the same (to
    :data:`SPREAD_TOL` AP): the t-test would call that infinitely precise (p = 0, a zero-width
    interval) on as few as two seeds, while the data say nothing of the seed x method noise.
    """
    if len(d) < 2:
        return math.nan, math.nan, math.nan, math.nan
    sd = spread(d)
    if not sd > 0:
        return sd, math.nan, math.nan, math.nan
    res = stats.ttest_1samp(d, null)
    ci = res.confidence_interval(1 - ALPHA)
    return sd, float(ci.low), float(ci.high), float(res.pvalue)


def tost_p(mean: float, se: float, df: float, margin: float = MARGIN) -> float:
    """p of the two one-sided t-tests of mean <= -margin and mean >= +margin (the larger of the
    two), for an estimate with standard error ``se`` and ``df`` degrees of freedom: one table's
    paired differences (``sd / sqrt(n)``, ``n - 1``) or the pooled estimate of
    :func:`rmkd.replication.pooled`. NaN without a positive SE (too few seeds, or no spread, which
    a t-test would call infinitely precise)."""
    if not se > 0:
        return math.nan
    return float(max(stats.t.sf((mean + margin) / se, df), stats.t.cdf((mean - margin) / se, df)))


def seeds_needed(mean_diff: float, sd_diff: float, null: float = 0.0, power: float = 0.8) -> float:
    """Seeds for ``power`` in a two-sided paired t-test at ALPHA; NaN when the SD is unknown."""
    if not sd_diff > 0:
        return math.nan
    effect = max(abs(mean_diff - null), MIN_EFFECT) / sd_diff
    test = TTestPower()
    # The smallest n by search (statsmodels' solve_power fails to converge near n = 2).
    for n in range(2, MAX_SEEDS + 1):
        if test.power(effect_size=effect, nobs=n, alpha=ALPHA, alternative="two-sided") >= power:
            return float(n)
    return math.inf


def _verdict(p_holm: float, lo: float, hi: float, null: float) -> str:
    if not p_holm < ALPHA:  # also NaN: too few seeds
        return "undecided"
    if lo > null:
        return "supported"
    if hi < null:
        return "contradicted"
    return "undecided"  # pragma: no cover - a rejecting test's interval excludes the null


def paired_claims(frame: pd.DataFrame, claims=None, margin: float = MARGIN, metric: str = "AP") -> pd.DataFrame:
    """One row per claim (see the module docstring); columns :data:`COLUMNS`.

    Args:
        frame: study rows with at least ``method, seed, AP`` (one detector; teacher
            rows are ignored). AP on 0-100.
        claims: ``(claim, a, relation, b)`` tuples; default :data:`CLAIMS`.
        margin: non-inferiority margin in AP for "at least as well as" claims.
    """
    claims = CLAIMS if claims is None else claims
    frame = frame[frame.method != "teacher"]
    rows, nulls = [], [null_of(c, margin) for c in claims]
    for (claim, a, relation, b), null in zip(claims, nulls):
        d = paired_differences(frame, a, b, metric).to_numpy()
        mean = float(d.mean()) if len(d) else math.nan
        sd, lo, hi, p = _test(d, null)
        tested = relation == "beats" and len(d) >= 2
        p_equiv = tost_p(mean, sd / math.sqrt(len(d)), len(d) - 1, margin) if tested else math.nan
        rows.append([claim, a, relation, b, len(d), mean, sd, lo, hi, p, math.nan, "", seeds_needed(mean, sd, null),
                     p_equiv, math.nan, False])  # fmt: skip
    return decide(pd.DataFrame(rows, columns=COLUMNS), nulls)


def null_of(claim: tuple, margin: float = MARGIN) -> float:
    """The tested value of mean(d) for a ``(claim, a, relation, b)`` tuple: 0 for ``beats``,
    ``-margin`` for ``at least as well as``."""
    name, _, relation, _ = claim
    if relation not in RELATIONS:
        raise ValueError(f"claim {name!r}: relation must be one of {RELATIONS}, got {relation!r}")
    return 0.0 if relation == "beats" else -margin


def decide(out: pd.DataFrame, nulls) -> pd.DataFrame:
    """Fill ``p_holm`` and ``verdict`` of a claims frame, and ``p_equiv_holm`` and ``equivalent``
    (Holm over the equivalence tests, a family of its own).

    Args:
        out: one row per claim with ``p, ci_low, ci_high, p_equiv`` (NaN where untested).
        nulls: each row's tested value (:func:`null_of`).
    """
    out["p_holm"] = _holm(out.p)
    out["verdict"] = [_verdict(r.p_holm, r.ci_low, r.ci_high, n) for r, n in zip(out.itertuples(), nulls)]
    out["p_equiv_holm"] = _holm(out.p_equiv)
    out["equivalent"] = (out.p_equiv_holm < ALPHA).to_numpy()  # NaN compares False: untested
    return out


def _holm(p: pd.Series) -> pd.Series:
    """Holm-adjusted p over the rows that have a p (NaN elsewhere)."""
    adjusted = pd.Series(math.nan, index=p.index)
    tested = p.notna()
    if tested.any():
        adjusted[tested] = multipletests(p[tested], alpha=ALPHA, method="holm")[1]
    return adjusted


def claims_markdown(claims: pd.DataFrame) -> str:
    """The paired-claims frame as a markdown table (AP on 0-100)."""
    lines = [
        "| claim | A - B | seeds | mean diff | SD | 95% CI | p | p (Holm) | verdict | seeds for 80% power "
        f"| within ±{MARGIN:g} AP: p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in claims.itertuples():
        ci = "-" if r.ci_low != r.ci_low else f"[{r.ci_low:+.1f}, {r.ci_high:+.1f}]"
        fmt = lambda x, f: "-" if x != x else format(x, f)  # noqa: E731 - NaN as '-'
        lines.append(
            f"| {r.claim} | {r.a} - {r.b} | {r.n} | {fmt(r.mean_diff, '+.2f')} | {fmt(r.sd_diff, '.2f')} | {ci} | "
            f"{fmt(r.p, '.3g')} | {fmt(r.p_holm, '.3g')} | **{r.verdict}** | {fmt(r.seeds_needed, '.0f')} | "
            f"{equivalence_cell(r)} |"
        )
    return "\n".join(lines)


def equivalence_cell(r) -> str:
    """``**yes**, 0.012`` / ``no, 0.41`` / ``-`` (not a ``beats`` claim, or untested) for one claim row."""
    if r.p_equiv_holm != r.p_equiv_holm:
        return "-"
    return f"{'**yes**' if r.equivalent else 'no'}, {r.p_equiv_holm:.2g}"
