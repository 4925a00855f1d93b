"""Do the study's verdicts replicate on another machine? The claims of several tables side by side.

A table (``ablation.csv``) never mixes machines: a CPU whose arithmetic differs
trains every run to a slightly different AP, so its seeds are not the same
experiment and cannot be paired with another machine's. A second machine's
table is therefore an independent replication of the whole study, with its own
calibration, teacher and seeds. This module reads several such tables and puts
each claim's verdicts next to each other:

- every table's claims come from :func:`rmkd.claims.paired_claims` on that table
  alone (same-seed differences, 95% t-interval, Holm over the claims that table
  can test), exactly what its own ``ablation.md`` prints;
- ``vs_ref``: how far the table's mean same-seed difference lies from the
  reference table's (the first one), with Welch's 95% interval and p
  (``scipy.stats.ttest_ind(equal_var=False)``) over the two sets of same-seed
  differences. Seeds are not paired *across* tables, so this is an unpaired test.
  It tells whether the size of an effect moved between machines, which a verdict
  alone does not (a claim can be decided on both with different sizes);
- ``agreement`` per claim, from the verdicts of the tables that ran it (two or more
  paired seeds): ``replicated`` (each of them decides it, the same way),
  ``conflicting`` (one supports what another contradicts), ``decided in some`` (the
  rest decide nothing), ``undecided in all``, or ``run in one table`` (fewer than
  two tables ran it, so there is nothing to replicate).

- ``pooled`` (:func:`pooled`): one verdict per claim over all tables together. ``mu``
  is the mean over tables of each table's mean same-seed difference, each machine
  weighing the same; its variance comes from each table's own SD of the differences
  (the machines' seed noise differs: the FI controls' SD is several times larger on one
  CPU than on another), with Welch-Satterthwaite's degrees of freedom, so two tables
  reduce to Welch's test. Seeds are paired within a table and never across tables,
  which this respects. It estimates the average effect over *these* machines, not over
  machines in general: with two or three tables there is no honest between-machine
  variance. Holm runs over the claims again, and the verdict rule is
  :mod:`rmkd.claims`' own (:func:`rmkd.claims.decide`), equivalence within the margin
  (TOST, its own Holm family) included.

The library's defaults follow the reference table's decided claims only
(:func:`rmkd.reproduce.chosen_defaults`); the pooled verdicts are evidence beside it.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
from scipy import stats

from .claims import ALPHA, CLAIMS, MARGIN, decide, null_of, paired_claims, paired_differences, spread, tost_p
from .machine import machine_path

COLUMNS = ["claim", "table", "n", "mean_diff", "ci_low", "ci_high", "p_holm", "verdict",
           "vs_ref", "vs_ref_low", "vs_ref_high", "vs_ref_p"]  # fmt: skip
AGREEMENTS = ("replicated", "conflicting", "decided in some", "undecided in all", "run in one table")
POOLED = ["claim", "tables", "n", "mean_diff", "ci_low", "ci_high", "p", "p_holm", "verdict", "p_equiv", "p_equiv_holm",
          "equivalent"]  # fmt: skip


def replication(tables: dict[str, pd.DataFrame], claims=None) -> pd.DataFrame:
    """One row per (claim, table), claims in order, tables in ``tables``' order; columns :data:`COLUMNS`.

    Args:
        tables: ``{label: study rows}``, each one machine's CSV (``method, seed, AP``; teacher rows
            ignored). The first is the reference for ``vs_ref``.
        claims: ``(claim, a, relation, b)`` tuples; default :data:`rmkd.claims.CLAIMS`.
    """
    if not tables:
        raise ValueError("replication needs at least one table")
    per_table = {label: paired_claims(frame, claims) for label, frame in tables.items()}
    ref_label = next(iter(tables))
    rows = []
    for i, claim in enumerate(per_table[ref_label].itertuples()):
        d_ref = paired_differences(tables[ref_label], claim.a, claim.b).to_numpy()
        for label, frame in tables.items():
            r = per_table[label].iloc[i]
            d = paired_differences(frame, claim.a, claim.b).to_numpy()
            vs = _welch(d, d_ref) if label != ref_label else (math.nan,) * 4
            rows.append([claim.claim, label, int(r.n), r.mean_diff, r.ci_low, r.ci_high, r.p_holm, r.verdict, *vs])
    return pd.DataFrame(rows, columns=COLUMNS)


def _welch(d: np.ndarray, d_ref: np.ndarray) -> tuple[float, float, float, float]:
    """(mean(d) - mean(d_ref), 95% CI low, high, p) by Welch's t-test; NaN with fewer than 2 of either."""
    if len(d) < 2 or len(d_ref) < 2:
        return (math.nan,) * 4
    res = stats.ttest_ind(d, d_ref, equal_var=False)
    ci = res.confidence_interval(1 - ALPHA)
    return float(d.mean() - d_ref.mean()), float(ci.low), float(ci.high), float(res.pvalue)


def pooled(tables: dict[str, pd.DataFrame], claims=None, margin: float = MARGIN) -> pd.DataFrame:
    """One row per claim over all tables together (the module docstring's ``pooled``); columns :data:`POOLED`.

    ``tables`` counts the tables with two or more paired seeds of the claim (the others are left
    out), ``n`` their seeds; a claim no table has two seeds of is untested. ``p_equiv``: the two
    one-sided tests of ``|mu| >= margin`` on the same mu, SE and degrees of freedom (``beats``
    claims only, as in :func:`rmkd.claims.paired_claims`).
    """
    claims = CLAIMS if claims is None else claims
    rows, nulls = [], [null_of(c, margin) for c in claims]
    for (claim, a, relation, b), null in zip(claims, nulls):
        diffs = [paired_differences(f, a, b).to_numpy() for f in tables.values()]
        diffs = [d for d in diffs if len(d) >= 2]  # a single seed says nothing of its table's noise
        n = sum(len(d) for d in diffs)
        mean, lo, hi, p, p_equiv = _pooled_test(diffs, null, margin) if diffs else (math.nan,) * 5
        p_equiv = p_equiv if relation == "beats" else math.nan
        rows.append([claim, len(diffs), n, mean, lo, hi, p, math.nan, "", p_equiv, math.nan, False])
    return decide(pd.DataFrame(rows, columns=POOLED), nulls)


def _pooled_test(diffs: list[np.ndarray], null: float, margin: float = MARGIN) -> tuple[float, ...]:
    """(mu, 95% CI low, high, p of mu = null, TOST p of |mu| >= margin): mu the mean of the ``k``
    table means, its variance ``sum(s_t^2 / n_t) / k^2`` from each table's own SD, and
    Welch-Satterthwaite's degrees of freedom.

    For two tables this is Welch's test (``scipy.stats.ttest_ind(equal_var=False)``) of
    ``d_1 - null`` against ``null - d_2``; for one it is the paired t-test of that table.

    Args:
        diffs: each table's same-seed differences, ``[n_t]`` with ``n_t >= 2``.
    """
    k = len(diffs)
    means = np.array([d.mean() for d in diffs])
    v = np.array([spread(d) ** 2 / len(d) for d in diffs])  # the variance of each table's mean
    mu, se = float(means.mean()), float(np.sqrt(v.sum()) / k)
    if not se > 0:
        return mu, math.nan, math.nan, math.nan, math.nan  # no seed noise at all: untested, as in paired_claims
    df = float(v.sum() ** 2 / sum(vt**2 / (len(d) - 1) for vt, d in zip(v, diffs)))
    q = stats.t.ppf(1 - ALPHA / 2, df)
    return mu, mu - q * se, mu + q * se, float(2 * stats.t.sf(abs(mu - null) / se, df)), tost_p(mu, se, df, margin)


def agreement(verdicts: pd.Series, n: pd.Series) -> str:
    """One of :data:`AGREEMENTS` for one claim's verdicts across tables (``n``: its paired seeds in
    each), over the tables with two or more paired seeds."""
    verdicts = verdicts[(n >= 2).to_numpy()]
    if len(verdicts) < 2:
        return "run in one table"
    decided = set(verdicts) - {"undecided"}
    if decided == {"supported", "contradicted"}:
        return "conflicting"
    if not decided:
        return "undecided in all"
    return "replicated" if (verdicts != "undecided").all() else "decided in some"


def agreement_frame(rows: pd.DataFrame) -> pd.Series:
    """``{claim: agreement}`` over :func:`replication`'s rows, claims in their order."""
    return pd.Series({c: agreement(g.verdict, g.n) for c, g in rows.groupby("claim", sort=False)}, name="agreement")


def replication_markdown(rows: pd.DataFrame, pool: pd.DataFrame | None = None) -> str:
    """The claims across tables as markdown: per table mean [95% CI] and verdict, each later table's
    difference from the first (Welch), the agreement, and (given :func:`pooled`'s ``pool``) the
    pooled verdict; then a count per agreement and per pooled verdict."""
    labels = list(pd.unique(rows.table))
    head = ["claim", *(f"{t}: mean diff [95% CI], verdict" for t in labels),
            *(f"{t} - {labels[0]} (Welch 95% CI, p)" for t in labels[1:]), "agreement"]  # fmt: skip
    head += [] if pool is None else ["pooled: mean diff [95% CI], p (Holm), verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    agree = agreement_frame(rows)
    by_claim = None if pool is None else pool.set_index("claim")
    for claim, g in rows.groupby("claim", sort=False):
        g = g.set_index("table")
        cells = [claim, *(_claim_cell(g.loc[t]) for t in labels), *(_vs_cell(g.loc[t]) for t in labels[1:])]
        ran = int((g.n >= 2).sum())
        over = f" ({ran} of {len(labels)} tables)" if 1 < ran < len(labels) else ""
        cells.append(f"**{agree[claim]}**{over}")
        if by_claim is not None:
            cells.append(_pooled_cell(by_claim.loc[claim]))
        lines.append("| " + " | ".join(cells) + " |")
    counts = agree.value_counts()
    lines += ["", "Agreement: " + ", ".join(f"{a} {int(counts.get(a, 0))}" for a in AGREEMENTS) + f" of {len(agree)} claims."]
    if pool is not None:
        verdicts = pool.verdict.value_counts()
        lines.append("Pooled: " + ", ".join(f"{v} {int(verdicts.get(v, 0))}" for v in ("supported", "contradicted", "undecided"))
                     + f" of {len(pool)} claims (Holm over the pooled claims).")  # fmt: skip
    return "\n".join(lines)


def _pooled_cell(r: pd.Series) -> str:
    if r.p != r.p:  # NaN: no table with two paired seeds, or no seed noise at all
        return f"{r.n} seeds, {r.verdict}"
    within = f", within ±{MARGIN:g} AP ({r.p_equiv_holm:.2g})" if r.equivalent else ""
    return (f"{r.mean_diff:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}], {r.p_holm:.2g}, **{r.verdict}**{within} "
            f"({r.tables} tables, {r.n} seeds)")


def _claim_cell(r: pd.Series) -> str:
    if r.n < 2:
        return f"{r.n} seeds, {r.verdict}"
    return f"{r.mean_diff:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}], {r.verdict}"


def _vs_cell(r: pd.Series) -> str:
    if r.vs_ref != r.vs_ref:  # NaN: too few seeds in one of the tables
        return "-"
    return f"{r.vs_ref:+.2f} [{r.vs_ref_low:+.2f}, {r.vs_ref_high:+.2f}], p {r.vs_ref_p:.2g}"


def replication_report(csvs: dict[str, str]) -> str:
    """``replication.md``: the tables' claims side by side (:func:`replication_markdown`) with
    what each table is and the command that regenerates the page.

    Args:
        csvs: ``{label: path of an ablation.csv}``; the first is the reference table.
    """
    tables = {label: _read_table(path) for label, path in csvs.items()}
    rows = replication(tables)
    pool = pooled(tables)
    labels = list(csvs)
    spec = " ".join(f"{label}={path}" for label, path in csvs.items())
    vs = f"`{labels[-1]} - {labels[0]}`" if len(labels) > 1 else "The between-table column"
    lines = ["# The study's claims across machines", "",
             f"Generated by `python -m rmkd.reproduce --compare {spec}`; AP on 0-100. Each table is one machine's "
             "study with its own calibration, teacher and seeds; each column's verdicts are that table's own "
             "(paired by seed, Holm over the claims it tests), as in the `ablation.md` beside its CSV. "
             f"{vs} is the difference of the two tables' mean same-seed differences, with Welch's 95% interval "
             "(seeds are not paired across machines). Agreement: *replicated* when every table decides the claim "
             "the same way, *conflicting* when one supports what another contradicts, *decided in some* when "
             "the others stay undecided, each over the tables with two or more paired seeds of the claim. "
             "*Pooled* is one verdict over the tables together: the mean of the tables' mean same-seed differences "
             "(each machine weighs the same), its interval from each table's own SD with Welch-Satterthwaite's "
             "degrees of freedom, Holm over the claims (`rmkd.replication.pooled`). It is the average effect over "
             "these machines, not over machines in general. "
             f"The library's defaults read the first table ({labels[0]}) only.", "",
             "| table | CSV | machine | student runs |", "|---|---|---|---|"]  # fmt: skip
    for label, path in csvs.items():
        frame = tables[label]
        machines = ", ".join(sorted(set(frame.get("machine", pd.Series(["?"])).astype(str))))
        lines.append(f"| {label} | `{path}` | {machines}{_fingerprint(path)} | {int((frame.method != 'teacher').sum())} |")
    return "\n".join([*lines, "", replication_markdown(rows, pool), ""])


def _fingerprint(csv: str) -> str:
    """`` (CPU, capability, backbone hash)`` from the ``machine.json`` beside ``csv``, which tells apart
    machines that share a CSV label (:mod:`rmkd.machine`); empty when there is none."""
    path = machine_path(csv)
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8") as f:
        prints = json.load(f)
    return "".join(f" ({p.get('cpu', '?')}, {p.get('cpu_capability', '?')}, backbone `{p.get('sha256', '?')[:8]}`)"
                   for p in prints.values())  # fmt: skip


def _read_table(path: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"weights": str})
    except FileNotFoundError:
        raise ValueError(f"{path}: no such study CSV (pass LABEL=path/to/ablation.csv)") from None
    missing = {"method", "seed", "AP"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: not a study CSV, it lacks the column(s) {', '.join(sorted(missing))}")
    return frame
