"""The paper's two observations and Rank Mimicking's aim, decided on a pair's collections.

docs/METHOD.md, section 1, states the observations and how :func:`rmkd.analysis.collect`
measures them; section 2 states what RM is for. :func:`observation_verdicts` turns
the collections of a baseline student (and, optionally, a distilled one) against the
same teacher on the same images into one row per statement: what the paper says,
what was measured (with a 95% interval), and a verdict, so that a lesson ends with a
decided line rather than an "if".

Each verdict compares a t-interval of a mean (95%, :func:`mean_interval`) with a
threshold fixed here, before any data are seen:

- ``rank discrepancy``: the baseline's mean Kendall tau over objects with at least two
  candidates, against :data:`TAU_AGREE` = 0.5 (tau 0.5 means that, untied, 3 of 4
  candidate pairs are ordered alike and 1 of 4 the other way);
- ``kept box worse``: for objects both models found (``kept_anchor_differs`` not NA)
  with kept boxes from different anchors, the student's kept-box IoU with the GT
  minus the teacher's, against 0;
- ``feature-vs-prediction gap``: the baseline's mean Pearson r of F_dif and P_dif over
  image-levels of at least ``min_locations`` cells (as :func:`~rmkd.analysis.summarize`),
  against :data:`R_AGREE` = 0.5 (F_dif explains a quarter of P_dif's variance);
- ``RM aligns ranks``: per object, the distilled student's Kendall tau minus the
  baseline's (the same objects, matched by image and GT index), against 0.

Verdicts: ``seen`` when the interval lies wholly on the side the paper says,
``not seen`` when it lies wholly on the other side, ``undecided`` when it holds the
threshold, ``not measurable`` with fewer than two values. The intervals treat
objects (and image-levels) as independent samples; objects of one image share it,
so the intervals are somewhat too narrow, and one pair of trained models says
nothing about the spread over training seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from .collect import Collection

TAU_AGREE = 0.5
R_AGREE = 0.5
PAPER_SAYS = {
    "rank discrepancy": "teacher and student rank an object's candidate boxes differently (docs/METHOD.md, section 1)",
    "kept box worse": "so the box kept after NMS comes from a different anchor, and the student's is the worse "
    "one (section 1)",
    "feature-vs-prediction gap": "where teacher and student features differ most is not where their predictions "
    "differ most (section 1)",
    "RM aligns ranks": "Rank Mimicking makes the student rank each object's candidates like the teacher (section 2)",
}
COLUMNS = ["the paper says", "we measured", "verdict", "n", "mean", "ci_low", "ci_high", "threshold"]


def mean_interval(values, confidence: float = 0.95) -> tuple[int, float, float, float]:
    """``(n, mean, low, high)``: the t-interval of the mean of the finite ``values`` (NaN bounds for n < 2;
    a zero spread gives the mean as both bounds)."""
    x = pd.to_numeric(pd.Series(values, dtype="object"), errors="coerce").to_numpy(dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return 0, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return n, mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return n, mean, mean - half, mean + half


def _verdict(n: int, low: float, high: float, threshold: float, below: bool) -> str:
    """``below``: the paper's side is below the threshold."""
    if n < 2 or not (low == low and high == high):
        return "not measurable"
    if (high < threshold) if below else (low > threshold):
        return "seen"
    if (low > threshold) if below else (high < threshold):
        return "not seen"
    return "undecided"


def _row(key: str, measured: str, n: int, mean: float, low: float, high: float, threshold: float, below: bool) -> dict:
    return {"the paper says": PAPER_SAYS[key], "we measured": measured, "verdict": _verdict(n, low, high, threshold, below),
            "n": n, "mean": mean, "ci_low": low, "ci_high": high, "threshold": threshold}


def _ci(low: float, high: float, sign: str = "") -> str:
    return f"95% CI [{low:{sign}.3f}, {high:{sign}.3f}]" if low == low else "no interval (n < 2)"


def _share(series: pd.Series, what: str) -> str:
    """``"26% of the 38 objects <what>"``, or ``"no objects <what>"``."""
    s = series.dropna()
    return f"{float(s.astype(float).mean()):.0%} of the {len(s)} objects {what}" if len(s) else f"no objects {what}"


def _chance_top_iou(cells: np.ndarray, top_fraction: float) -> float:
    """Expected IoU of two independent random top-k sets of n cells, k = ceil(f n), averaged over levels."""
    k = np.ceil(top_fraction * cells)
    inter = k * k / cells
    return float(np.mean(inter / (2 * k - inter))) if len(cells) else math.nan


def observation_verdicts(baseline: Collection, distilled: Collection | None = None, *, names=("baseline", "RM+PFI"),
                         min_locations: int = 16, top_fraction: float = 0.1) -> pd.DataFrame:
    """One row per statement (index: ``rank discrepancy``, ``kept box worse``,
    ``feature-vs-prediction gap`` and, with ``distilled``, ``RM aligns ranks``), columns
    :data:`COLUMNS`. ``baseline`` and ``distilled`` come from :func:`rmkd.analysis.collect`
    with the same teacher and loader; ``names`` label them in the text. See the module
    docstring for the rules."""
    base_name, kd_name = names
    inst = baseline.instances
    multi = inst[inst["n_candidates"] >= 2]
    rows = {}
    n, m, lo, hi = mean_interval(multi["kendall_tau"])
    rows["rank discrepancy"] = _row("rank discrepancy", (
        f"{base_name} vs teacher, {n} objects with >= 2 candidates: mean Kendall tau {m:.3f}, {_ci(lo, hi)} "
        f"(1 = same order); same top-1 candidate for {_share(multi['top1_agree'], 'with >= 2 candidates')}; kept box "
        f"from another anchor for {_share(inst['kept_anchor_differs'], 'both models found')}"), n, m, lo, hi, TAU_AGREE, True)
    differs = inst[inst["kept_anchor_differs"].fillna(False).astype(bool)]
    n, m, lo, hi = mean_interval(differs["s_kept_iou"].astype(float) - differs["t_kept_iou"].astype(float))
    rows["kept box worse"] = _row("kept box worse", (
        f"{n} objects whose kept boxes come from different anchors: the student's kept-box IoU minus the teacher's "
        f"{m:+.3f}, {_ci(lo, hi, '+')}") if n else "no object whose kept boxes come from different anchors",
        n, m, lo, hi, 0.0, True)
    lv = baseline.levels[baseline.levels["height"] * baseline.levels["width"] >= min_locations]
    n, m, lo, hi = mean_interval(lv["pearson"])
    top = mean_interval(lv["top_iou"])[1]
    chance = _chance_top_iou((lv["height"] * lv["width"]).to_numpy(dtype=np.float64), top_fraction)
    rows["feature-vs-prediction gap"] = _row("feature-vs-prediction gap", (
        f"{base_name}, {n} image-levels of >= {min_locations} cells: mean Pearson r(F_dif, P_dif) {m:.3f}, "
        f"{_ci(lo, hi)}; top-{top_fraction:.0%} locations overlap (IoU) {top:.3f} (1 = the same hot spots, "
        f"{chance:.3f} = unrelated maps)"), n, m, lo, hi, R_AGREE, True)
    if distilled is not None:
        key = ["image_id", "gt_index"]
        pair = multi[key + ["kendall_tau"]].merge(distilled.instances[key + ["kendall_tau"]], on=key, suffixes=("_b", "_d"))
        d = pair["kendall_tau_d"].astype(float) - pair["kendall_tau_b"].astype(float)
        n, m, lo, hi = mean_interval(d)
        ok = d.notna()
        rows["RM aligns ranks"] = _row("RM aligns ranks", (
            f"{n} objects: Kendall tau of {kd_name} minus {base_name} {m:+.3f}, {_ci(lo, hi, '+')} (mean tau "
            f"{pair.loc[ok, 'kendall_tau_b'].mean():.3f} -> {pair.loc[ok, 'kendall_tau_d'].mean():.3f})"),
            n, m, lo, hi, 0.0, False)
    return pd.DataFrame.from_dict(rows, orient="index", columns=COLUMNS).rename_axis("statement")
