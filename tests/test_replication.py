"""rmkd.replication: each table's claims are that table's own paired claims; the between-table
difference equals scipy's Welch test; the agreement rule; the page and its command's errors."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rmkd.claims import paired_claims
from rmkd.replication import agreement, agreement_frame, replication, replication_markdown

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
    assert next(t for t in page.splitlines() if t.startswith("| RM beats the baseline |")).count("contradicted") == 2
    for bad, message in ((["one"], "LABEL=CSV pairs"), ([f"x={tmp_path / 'none.csv'}"], "none.csv: no such study CSV")):
        done = subprocess.run(cmd + bad, capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
