"""rmkd.claims: paired differences, t-intervals and Holm equal scipy and a reference loop;
the verdict and margin rules; the seeds a claim needs."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rmkd.claims import ALPHA, MARGIN, claims_markdown, paired_claims, seeds_needed

CLAIMS = [
    ("a beats base", "a", "beats", "base"),
    ("b beats base", "b", "beats", "base"),
    ("a at least as well as b", "a", "at least as well as", "b"),
]


def _frame(aps: dict[str, list[float]], seeds=None) -> pd.DataFrame:
    rows = []
    for method, values in aps.items():
        for seed, ap in zip(seeds or range(len(values)), values):
            rows.append({"detector": "retinanet", "method": method, "seed": seed, "AP": ap})
    return pd.DataFrame(rows)


def _holm_reference(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values by the textbook loop."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


@pytest.mark.parametrize("seed", range(5))
def test_paired_claims_equal_scipy_and_holm_on_random_frames(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 8))
    seed_effect = rng.normal(20, 4, n)  # shared by every method: pairing must cancel it
    aps = {m: list(seed_effect + rng.normal(shift, 1.0, n)) for m, shift in (("base", 0), ("a", 1.5), ("b", 0.3))}
    frame = pd.concat([_frame(aps), pd.DataFrame([{"detector": "retinanet", "method": "teacher", "seed": 0, "AP": 60.0}])])
    out = paired_claims(frame, CLAIMS).set_index("claim")
    p_ref = []
    for claim, a, relation, b in CLAIMS:
        xa, xb = np.array(aps[a]), np.array(aps[b])
        shift = 0.0 if relation == "beats" else MARGIN  # non-inferiority: test A + margin vs B
        ref = stats.ttest_rel(xa + shift, xb)
        ci = ref.confidence_interval(0.95)
        r = out.loc[claim]
        assert r.n == n
        assert r.mean_diff == pytest.approx(float(np.mean(xa - xb)), abs=1e-12)
        assert r.sd_diff == pytest.approx(float(np.std(xa - xb, ddof=1)), rel=1e-12)
        assert r.ci_low == pytest.approx(ci.low - shift, abs=1e-9)
        assert r.ci_high == pytest.approx(ci.high - shift, abs=1e-9)
        assert r.p == pytest.approx(ref.pvalue, rel=1e-9)
        p_ref.append(ref.pvalue)
    np.testing.assert_allclose(out.p_holm.to_numpy(), _holm_reference(p_ref), rtol=1e-12)


def test_only_seeds_both_methods_finished_are_paired():
    frame = pd.concat([_frame({"base": [10, 11, 12, 13]}), _frame({"a": [12.0, 13.5, 13.0]}, seeds=[1, 2, 3])])
    r = paired_claims(frame, [CLAIMS[0]]).iloc[0]
    assert r.n == 3
    assert r.mean_diff == pytest.approx(np.mean([12 - 11, 13.5 - 12, 13 - 13]))


def _verdict(diffs, relation="beats", base=None):
    base = np.array(base if base is not None else [20.0, 25.0, 18.0, 30.0, 22.0, 27.0][: len(diffs)])
    frame = _frame({"base": list(base), "a": list(base + np.array(diffs))})
    return paired_claims(frame, [("c", "a", relation, "base")]).iloc[0]


def test_verdicts_beats():
    assert _verdict([2.1, 1.9, 2.0, 2.2, 1.8, 2.0]).verdict == "supported"
    assert _verdict([-2.1, -1.9, -2.0, -2.2, -1.8, -2.0]).verdict == "contradicted"
    r = _verdict([3.0, -2.0, 1.0, -1.5, 2.5, -0.5])  # interval spans 0
    assert r.ci_low < 0 < r.ci_high and r.verdict == "undecided"
    # the seed effect (20-30 AP) cancels in the pairs: a tiny consistent gain is decided
    assert _verdict([0.31, 0.29, 0.30, 0.32, 0.28, 0.30]).verdict == "supported"


def test_margin_rule_for_at_least_as_well():
    rel = "at least as well as"
    # B ahead by 0.5 AP, tightly: within the 1.0 AP margin -> supported (ci_low > -1)
    r = _verdict([-0.5, -0.45, -0.55, -0.5, -0.52, -0.48], rel)
    assert r.ci_low > -MARGIN and r.verdict == "supported"
    # B ahead by 2 AP, tightly: beyond the margin -> contradicted
    assert _verdict([-2.0, -2.1, -1.9, -2.05, -1.95, -2.0], rel).verdict == "contradicted"
    # a wide interval reaching below -1: not supported, whatever the mean
    r = _verdict([2.0, -3.0, 1.5, -2.5, 2.5, -1.0], rel)
    assert r.ci_low < -MARGIN and r.verdict == "undecided"


def test_too_few_seeds_is_undecided_never_did_not_hold():
    r = _verdict([5.0])
    assert r.n == 1 and r.verdict == "undecided" and math.isnan(r.p)
    frame = _frame({"base": [1.0, 2.0]})  # method a never ran
    r = paired_claims(frame, [CLAIMS[0]]).iloc[0]
    assert r.n == 0 and r.verdict == "undecided"
    assert set(paired_claims(_frame({"base": [1, 2, 3], "a": [3, 1, 2], "b": [2, 2, 2]}), CLAIMS).verdict) <= {
        "supported", "contradicted", "undecided"}  # fmt: skip


def test_differences_without_spread_are_untested_not_infinitely_sure():
    # scipy would give p = 0 and a zero-width interval here: "supported" on two seeds
    aps = {"base": [35.0581, 33.9607, 36.1504], "a": [35.3581, 34.2607, 36.4504]}  # +0.3 each, to the CSV's 4 decimals
    d = np.subtract(aps["a"], aps["base"])
    assert np.ptp(d) > 0 and stats.ttest_1samp(d, 0).pvalue < 1e-10  # float rounding alone gives scipy its "spread"
    r = paired_claims(_frame(aps), [CLAIMS[0]]).iloc[0]
    assert r.n == 3 and r.sd_diff == 0 and r.verdict == "undecided"
    assert all(math.isnan(x) for x in (r.p, r.p_holm, r.ci_low, r.ci_high, r.seeds_needed, r.p_equiv))
    assert math.isnan(_verdict([0.0, 0.0]).p)  # two identical runs: no t-test either
    # an untested claim leaves Holm's family: the other claim is corrected over itself alone
    frame = _frame({**aps, "b": [36.0, 33.0, 38.0]})
    out = paired_claims(frame, CLAIMS[:2]).set_index("claim")
    assert out.loc["b beats base", "p_holm"] == pytest.approx(out.loc["b beats base", "p"], rel=1e-12)
    assert "| 3 | +0.30 | 0.00 | - | - | - | **undecided** | - | - |" in claims_markdown(out.reset_index())


def _tost_reference(d: list[float], margin: float) -> float:
    """max of the two one-sided t-tests' p (mean <= -margin, mean >= +margin), in float64 loops."""
    n = len(d)
    mean = sum(d) / n
    se = (sum((x - mean) ** 2 for x in d) / (n - 1) / n) ** 0.5
    return max(stats.t.sf((mean + margin) / se, n - 1), stats.t.cdf((mean - margin) / se, n - 1))


@pytest.mark.parametrize("seed", range(4))
def test_equivalence_is_two_one_sided_tests_with_holm_over_the_beats_claims(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(3, 9))
    seed_effect = rng.normal(20, 4, n)
    aps = {m: list(seed_effect + rng.normal(shift, 0.6, n)) for m, shift in (("base", 0), ("a", 0.2), ("b", rng.normal(0, 1)))}
    out = paired_claims(_frame(aps), CLAIMS).set_index("claim")
    p_ref = []
    for claim, a, relation, b in CLAIMS[:2]:
        d = [x - y for x, y in zip(aps[a], aps[b])]
        assert out.loc[claim, "p_equiv"] == pytest.approx(_tost_reference(d, MARGIN), rel=1e-9)
        scipy_p = max(stats.ttest_1samp(d, -MARGIN, alternative="greater").pvalue,
                      stats.ttest_1samp(d, MARGIN, alternative="less").pvalue)  # fmt: skip
        assert out.loc[claim, "p_equiv"] == pytest.approx(scipy_p, rel=1e-9)
        p_ref.append(_tost_reference(d, MARGIN))
    np.testing.assert_allclose(out.p_equiv_holm.to_numpy()[:2], _holm_reference(p_ref), rtol=1e-9)
    assert list(out.equivalent[:2]) == [p < ALPHA for p in _holm_reference(p_ref)]
    # "at least as well as" is already a margin test: no equivalence for it
    at_least = out.loc["a at least as well as b"]
    assert math.isnan(at_least.p_equiv) and math.isnan(at_least.p_equiv_holm) and not at_least.equivalent


def test_equivalence_bounds_what_an_undecided_claim_leaves_room_for():
    near_zero = _verdict([0.2, -0.1, 0.1, -0.2, 0.15, -0.05])  # spans 0 tightly: undecided, and small
    assert near_zero.verdict == "undecided" and near_zero.equivalent
    noisy = _verdict([3.0, -2.0, 1.0, -1.5, 2.5, -0.5])  # spans 0 widely: undecided, and could be large
    assert noisy.verdict == "undecided" and not noisy.equivalent
    small_gain = _verdict([0.31, 0.29, 0.30, 0.32, 0.28, 0.30])  # decided, and smaller than the margin
    assert small_gain.verdict == "supported" and small_gain.equivalent
    large_gain = _verdict([2.1, 1.9, 2.0, 2.2, 1.8, 2.0])
    assert large_gain.verdict == "supported" and not large_gain.equivalent
    assert math.isnan(_verdict([0.5, 0.5, 0.5]).p_equiv)  # no spread: untested, not "infinitely sure"
    assert math.isnan(_verdict([0.5]).p_equiv) and not _verdict([0.5]).equivalent  # one seed: untested
    text = claims_markdown(paired_claims(_frame({"base": [20, 25, 18, 30, 22, 27], "a": [20.2, 24.9, 18.1, 29.8, 22.15, 26.95]}),
                                         [CLAIMS[0]]))  # fmt: skip
    assert "within ±1 AP: p (Holm)" in text and "| **undecided** |" in text and text.rstrip().split("| ")[-1].startswith("**yes**")


def _power_reference(effect: float, n: int) -> float:
    """Two-sided one-sample t-test power by the noncentral t distribution."""
    df, crit = n - 1, stats.t.ppf(1 - ALPHA / 2, n - 1)
    nc = effect * math.sqrt(n)
    return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)


@pytest.mark.parametrize("mean,sd", [(2.0, 1.4), (0.3, 2.0), (4.0, 1.0), (-3.0, 2.5)])
def test_seeds_needed_is_the_smallest_n_with_80_percent_power(mean, sd):
    n = seeds_needed(mean, sd)
    effect = max(abs(mean), 1.5) / sd  # the observed difference, or 1.5 AP when smaller
    assert _power_reference(effect, int(n)) >= 0.8 - 1e-6
    if n > 2:
        assert _power_reference(effect, int(n) - 1) < 0.8
    assert math.isnan(seeds_needed(1.0, float("nan")))
