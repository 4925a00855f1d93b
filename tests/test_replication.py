"""rmkd.replication: each table's claims are that table's own paired claims; the between-table
difference equals scipy's Welch test; the agreement rule; the pooled model against a float64
reference; the page and its command's errors."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rmkd.claims import paired_claims, paired_differences
from rmkd.replication import agreement, agreement_frame, pooled, replication, replication_markdown

CLAIMS = [
    ("a beats base", "a", "beats", "base"),
    ("b beats base", "b", "beats", "base"),
    ("a at least as well as b", "a", "at least as well as", "b"),
]


def _table(rng, shifts: dict[str, float], n: int) -> pd.DataFrame:
    seed_effect = rng.normal(30, 4, n)
    rows = [{"method": "teacher", "seed": 0, "AP": 60.0}]
    rows += [{"method": m, "seed": s, "AP": seed_effect[s] + shift + rng.normal(0, 0.8)} for m, shift in shifts.items() for s in range(n)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(4))
def test_each_table_is_its_own_paired_claims_and_vs_ref_is_welch(seed):
    rng = np.random.default_rng(seed)
    ref = _table(rng, {"base": 0, "a": 2.0, "b": 0.2}, 6)
    other = _table(rng, {"base": 0, "a": 0.5, "b": 0.4}, int(rng.integers(3, 7)))
    rows = replication({"one": ref, "two": other}, CLAIMS)
    assert list(rows.claim) == [c for c, *_ in CLAIMS for _ in range(2)] and list(rows.table) == ["one", "two"] * 3
    for label, frame in (("one", ref), ("two", other)):
        own = paired_claims(frame, CLAIMS)  # Holm over this table's claims only
        got = rows[rows.table == label].reset_index(drop=True)
        for col in ("n", "mean_diff", "ci_low", "ci_high", "p_holm", "verdict"):
            assert list(got[col]) == list(own[col]), col
    assert rows[rows.table == "one"].vs_ref.isna().all()
    for claim, a, _, b in CLAIMS:
        wide = [f[f.method != "teacher"].pivot(index="seed", columns="method", values="AP") for f in (other, ref)]
        d = [(w[a] - w[b]).to_numpy() for w in wide]
        welch = stats.ttest_ind(d[0], d[1], equal_var=False)
        ci = welch.confidence_interval(0.95)
        r = rows[(rows.claim == claim) & (rows.table == "two")].iloc[0]
        assert r.vs_ref == pytest.approx(d[0].mean() - d[1].mean(), abs=1e-12)
        assert (r.vs_ref_low, r.vs_ref_high, r.vs_ref_p) == pytest.approx((ci.low, ci.high, welch.pvalue), rel=1e-9)


@pytest.mark.parametrize(
    "verdicts,n,expected",
    [
        (["supported", "supported"], [6, 6], "replicated"),
        (["contradicted", "contradicted", "contradicted"], [6, 3, 6], "replicated"),
        (["supported", "contradicted"], [6, 6], "conflicting"),
        (["supported", "undecided", "contradicted"], [6, 6, 6], "conflicting"),
        (["undecided", "contradicted"], [6, 6], "decided in some"),
        (["undecided", "undecided"], [6, 6], "undecided in all"),
        (["supported", "undecided"], [6, 1], "run in one table"),
        (["undecided", "undecided"], [0, 6], "run in one table"),
        # only the tables that ran a claim count: two of three agree, the third lacks it
        (["supported", "undecided", "supported"], [6, 0, 3], "replicated"),
        (["contradicted", "undecided", "undecided"], [6, 1, 3], "decided in some"),
    ],
)
def test_agreement_rule(verdicts, n, expected):
    assert agreement(pd.Series(verdicts), pd.Series(n)) == expected


def test_markdown_names_each_tables_verdict_and_counts_agreements():
    rng = np.random.default_rng(0)
    # a beats base by 3 AP on both tables (replicated); b never differs from base
    tables = {"x": _table(rng, {"base": 0, "a": 3.0, "b": 0.0}, 6), "y": _table(rng, {"base": 0, "a": 3.0, "b": 0.0}, 6)}
    rows = replication(tables, CLAIMS)
    agree = agreement_frame(rows)
    assert agree["a beats base"] == "replicated" and agree["b beats base"] == "undecided in all"
    text = replication_markdown(rows)
    line = next(t for t in text.splitlines() if t.startswith("| a beats base |"))
    assert line.count("supported") == 2 and line.endswith("**replicated** |") and "y - x" in text
    assert f"replicated {int((agree == 'replicated').sum())}," in text and "of 3 claims" in text
    # a table that lacks a method: its cell says so, no Welch interval is invented
    rows = replication({"x": tables["x"], "y": tables["y"][tables["y"].method != "b"]}, CLAIMS)
    line = next(t for t in replication_markdown(rows).splitlines() if t.startswith("| b beats base |"))
    assert "0 seeds, undecided" in line and "| - |" in line and line.endswith("**run in one table** |")
    # with three tables, a claim two of them ran says over how many it was judged
    rows = replication({**tables, "z": tables["y"][tables["y"].method != "a"]}, CLAIMS)
    line = next(t for t in replication_markdown(rows).splitlines() if t.startswith("| a beats base |"))
    assert line.endswith("**replicated** (2 of 3 tables) |")


def test_compare_command_writes_the_page_and_rejects_bad_input(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("one", "two"):
        _table(rng, {"baseline": 0, "rm": -3.0, "pfi": 0.5}, 4).assign(detector="retinanet", machine=name).to_csv(
            tmp_path / f"{name}.csv", index=False)  # fmt: skip
    out = tmp_path / "replication.md"
    cmd = [sys.executable, "-m", "rmkd.reproduce", "--compare-out", str(out), "--compare"]
    done = subprocess.run(cmd + [f"one={tmp_path / 'one.csv'}", f"two={tmp_path / 'two.csv'}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert "| one | " in page and "| two | " in page and "two - one (Welch 95% CI, p)" in page
    line = next(t for t in page.splitlines() if t.startswith("| RM beats the baseline |"))
    assert line.count("contradicted") == 3 and line.endswith("**contradicted** (2 tables, 8 seeds) |")  # two tables, pooled
    assert "Pooled: supported" in page and "of 17 claims (Holm over the pooled claims)" in page
    for bad, message in ((["one"], "LABEL=CSV pairs"), ([f"x={tmp_path / 'none.csv'}"], "none.csv: no such study CSV")):
        done = subprocess.run(cmd + bad, capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def _pooled_reference(diffs: list[np.ndarray], null: float) -> tuple[float, float, float, float]:
    """mu = mean of the table means; var = sum(s_t^2 / n_t) / k^2; Welch-Satterthwaite df; a
    t-interval and a two-sided t-test of mu = null, in float64 loops."""
    k = len(diffs)
    means = [sum(float(x) for x in d) / len(d) for d in diffs]
    v = [sum((float(x) - m) ** 2 for x in d) / (len(d) - 1) / len(d) for d, m in zip(diffs, means)]
    mu, se = sum(means) / k, sum(v) ** 0.5 / k
    df = sum(v) ** 2 / sum(vt**2 / (len(d) - 1) for vt, d in zip(v, diffs))
    q = stats.t.ppf(0.975, df)
    return mu, mu - q * se, mu + q * se, 2 * stats.t.sf(abs(mu - null) / se, df)


def _pooled_tost_reference(diffs: list[np.ndarray], margin: float = 1.0) -> float:
    """The two one-sided tests of |mu| >= margin on the reference's mu, SE and degrees of freedom."""
    mu, lo, hi, _ = _pooled_reference(diffs, 0.0)
    k = len(diffs)
    v = [float(np.var(d, ddof=1)) / len(d) for d in diffs]
    se, df = sum(v) ** 0.5 / k, sum(v) ** 2 / sum(vt**2 / (len(d) - 1) for vt, d in zip(v, diffs))
    return max(stats.t.sf((mu + margin) / se, df), stats.t.cdf((mu - margin) / se, df))


@pytest.mark.parametrize("seed", range(5))
def test_pooled_equals_a_float64_reference_and_holm_over_its_claims(seed):
    rng = np.random.default_rng(seed)
    tables = {f"t{i}": _table(rng, {"base": 0, "a": rng.normal(1.5, 1), "b": rng.normal(0, 1)}, int(rng.integers(2, 8)))
              for i in range(int(rng.integers(2, 4)))}  # fmt: skip
    tables["one seed"] = _table(rng, {"base": 0, "a": 9.0, "b": 9.0}, 1)  # says nothing of its noise: left out
    got = pooled(tables, CLAIMS)
    assert list(got.claim) == [c for c, *_ in CLAIMS] and (got.tables == len(tables) - 1).all()
    for r, (_, a, relation, b) in zip(got.itertuples(), CLAIMS):
        diffs = [(w[a] - w[b]).to_numpy() for w in (f[f.method != "teacher"].pivot(index="seed", columns="method", values="AP")
                                                    for label, f in tables.items() if label != "one seed")]  # fmt: skip
        null = 0.0 if relation == "beats" else -1.0
        assert r.n == sum(len(d) for d in diffs)
        assert (r.mean_diff, r.ci_low, r.ci_high, r.p) == pytest.approx(_pooled_reference(diffs, null), rel=1e-9)
        if relation == "beats":
            assert r.p_equiv == pytest.approx(_pooled_tost_reference(diffs), rel=1e-9)
        else:
            assert np.isnan(r.p_equiv) and not r.equivalent
        if len(diffs) == 2:  # two tables: Welch's test of d_1 - null against null - d_2
            welch = stats.ttest_ind(diffs[0] - null, null - diffs[1], equal_var=False)
            assert r.p == pytest.approx(welch.pvalue, rel=1e-9)
            assert (r.ci_high - r.ci_low) * 2 == pytest.approx(np.diff(welch.confidence_interval(0.95)), rel=1e-9)
    holm = [min(1.0, max((len(got) - j) * p for j, p in enumerate(sorted(got.p)[: i + 1]))) for i in range(len(got))]
    assert sorted(got.p_holm) == pytest.approx(holm, rel=1e-12)


def test_pooled_over_one_table_is_that_tables_paired_claims():
    rng = np.random.default_rng(7)
    frame = _table(rng, {"base": 0, "a": 2.5, "b": 0.3}, 6)
    got, own = pooled({"only": frame}, CLAIMS), paired_claims(frame, CLAIMS)
    for col in ("n", "mean_diff", "ci_low", "ci_high", "p", "p_holm", "p_equiv", "p_equiv_holm"):
        assert got[col].to_numpy() == pytest.approx(own[col].to_numpy(), rel=1e-9, nan_ok=True), col
    assert list(got.verdict) == list(own.verdict) and list(got.equivalent) == list(own.equivalent)


def test_pooled_decides_what_each_table_alone_cannot_and_keeps_the_margin_rule():
    # a beats base by 1 AP: three seeds per table leave each table undecided, together they decide
    offsets = np.array([0.6, -0.5, -0.1])  # same-seed noise, the same on every table: mean 0, sd 0.56
    tables = {t: pd.DataFrame([{"method": m, "seed": s, "AP": 30.0 + s + (1.0 + offsets[s] + shift if m == "a" else 0.0)}
                               for m in ("base", "a") for s in range(3)]) for t, shift in (("x", -0.05), ("y", 0.05))}  # fmt: skip
    claims = [("a beats base", "a", "beats", "base"), ("base at least as well as a", "base", "at least as well as", "a")]
    assert set(replication(tables, claims).verdict) == {"undecided"}
    got = pooled(tables, claims).set_index("claim")
    assert got.loc["a beats base", "verdict"] == "supported" and got.loc["a beats base", "n"] == 6
    # base is 1 AP behind a: exactly at the margin, so non-inferiority is neither shown nor refuted
    assert got.loc["base at least as well as a", "verdict"] == "undecided"
    assert got.loc["base at least as well as a", "mean_diff"] == pytest.approx(-1.0)
    # one seed per table says nothing of the noise: untested, not guessed
    one = pooled({t: f[f.seed == 0] for t, f in tables.items()}, claims)
    assert one.p.isna().all() and (one.tables == 0).all() and set(one.verdict) == {"undecided"}


def test_a_table_without_spread_is_untested_pooled_as_in_paired_claims():
    # +0.3 AP on every seed, to the CSV's 4 decimals: float rounding alone leaves a spread of ~1e-15
    base = [35.0581, 33.9607, 36.1504]
    flat = pd.DataFrame([{"method": m, "seed": s, "AP": ap + (0.3 if m == "a" else 0.0)}
                         for m in ("base", "a") for s, ap in enumerate(base)]).round(4)  # fmt: skip
    claims = [("a beats base", "a", "beats", "base")]
    one = pooled({"x": flat}, claims).iloc[0]
    assert one.mean_diff == pytest.approx(0.3) and np.isnan(one.p) and np.isnan(one.ci_low) and one.verdict == "undecided"
    assert np.isnan(paired_claims(flat, claims).iloc[0].p)
    # beside a table with real noise, the flat one adds its mean but no variance
    noisy = _table(np.random.default_rng(5), {"base": 0, "a": 0.5}, 4)
    d = paired_differences(noisy, "a", "base").to_numpy()
    got = pooled({"x": flat, "y": noisy}, claims).iloc[0]
    se = np.sqrt(d.var(ddof=1) / len(d)) / 2
    assert got.mean_diff == pytest.approx((0.3 + d.mean()) / 2)
    assert got.p == pytest.approx(2 * stats.t.sf(abs(got.mean_diff) / se, len(d) - 1), rel=1e-9)


def test_an_unknown_relation_is_named_by_both_tests():
    frame = _table(np.random.default_rng(3), {"base": 0, "a": 1.0}, 3)
    bad = [("a dominates base", "a", "dominates", "base")]
    for test in (lambda: paired_claims(frame, bad), lambda: pooled({"x": frame}, bad)):
        with pytest.raises(ValueError, match="claim 'a dominates base': relation must be one of"):
            test()
