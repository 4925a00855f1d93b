"""rmkd.analysis.observations: the paper's observations decided on hand-built collections."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rmkd.analysis.collect import INSTANCE_COLUMNS, LEVEL_COLUMNS, Collection
from rmkd.analysis.observations import COLUMNS, PAPER_SAYS, R_AGREE, TAU_AGREE, mean_interval, observation_verdicts


def _instances(tau, *, n_candidates=None, differs=None, s_kept=None, t_kept=None, image_ids=None) -> pd.DataFrame:
    m = len(tau)
    return pd.DataFrame({
        "image_id": image_ids if image_ids is not None else np.arange(m) // 2,
        "gt_index": np.arange(m) % 2,
        "n_candidates": n_candidates if n_candidates is not None else [5] * m,
        "kendall_tau": np.asarray(tau, dtype=float),
        "top1_agree": pd.array([True] * m, dtype="boolean"),
        "kept_anchor_differs": pd.array(differs if differs is not None else [pd.NA] * m, dtype="boolean"),
        "s_kept_iou": s_kept if s_kept is not None else [math.nan] * m,
        "t_kept_iou": t_kept if t_kept is not None else [math.nan] * m,
    })


def _levels(pearson, cells=(16, 16)) -> pd.DataFrame:
    h, w = cells
    return pd.DataFrame({"height": h, "width": w, "pearson": np.asarray(pearson, dtype=float),
                         "top_iou": 0.2})


def _col(tau, pearson=(0.1, 0.2, 0.15), **kwargs) -> Collection:
    return Collection(_instances(tau, **kwargs), _levels(pearson))


def test_frames_of_collect_hold_the_columns_read_here():
    needed_inst = {"image_id", "gt_index", "n_candidates", "kendall_tau", "top1_agree", "kept_anchor_differs",
                   "s_kept_iou", "t_kept_iou"}
    assert needed_inst <= set(INSTANCE_COLUMNS)
    assert {"height", "width", "pearson", "top_iou"} <= set(LEVEL_COLUMNS)


def test_mean_interval_is_the_t_interval_of_the_finite_values():
    x = [0.1, 0.4, 0.35, 0.8, 0.2]
    n, mean, lo, hi = mean_interval(x + [math.nan, None])
    expect = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert n == 5 and mean == pytest.approx(np.mean(x))
    assert (lo, hi) == pytest.approx(expect)
    assert mean_interval([0.3])[0] == 1 and math.isnan(mean_interval([0.3])[2])
    assert mean_interval([])[0] == 0 and math.isnan(mean_interval([])[1])
    assert mean_interval([0.5, 0.5, 0.5])[2:] == (0.5, 0.5)


@pytest.mark.parametrize("tau, verdict", [
    ([0.1, 0.2, 0.15, 0.25, 0.2, 0.1], "seen"),  # clearly below 0.5: the orders differ
    ([0.9, 0.95, 0.85, 0.9, 1.0, 0.92], "not seen"),  # clearly above: the models rank alike
    ([-0.5, 1.0, 0.2, 0.9, -0.1, 1.0], "undecided"),  # the interval holds 0.5
    ([0.2], "not measurable"),
])
def test_rank_discrepancy_verdicts(tau, verdict):
    row = observation_verdicts(_col(tau)).loc["rank discrepancy"]
    assert row["verdict"] == verdict and row["threshold"] == TAU_AGREE
    assert row["the paper says"] == PAPER_SAYS["rank discrepancy"]


def test_single_candidate_objects_do_not_count():
    # tau of a one-candidate object is undefined; a stray 1.0 there must not pull the mean up
    col = _col([0.1, 0.2, 1.0, 1.0], n_candidates=[4, 4, 1, 1])
    row = observation_verdicts(col).loc["rank discrepancy"]
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.15)


def test_kept_box_worse_reads_only_objects_kept_from_different_anchors():
    col = _col([0.1] * 5, differs=[True, True, True, False, pd.NA],
               s_kept=[0.6, 0.55, 0.62, 0.1, 0.1], t_kept=[0.8, 0.8, 0.81, 0.9, 0.9])
    row = observation_verdicts(col).loc["kept box worse"]
    assert row["n"] == 3 and row["mean"] == pytest.approx(np.mean([-0.2, -0.25, -0.19]))
    assert row["verdict"] == "seen"
    better = _col([0.1] * 3, differs=[True] * 3, s_kept=[0.9, 0.92, 0.91], t_kept=[0.6, 0.6, 0.62])
    assert observation_verdicts(better).loc["kept box worse", "verdict"] == "not seen"
    none = observation_verdicts(_col([0.1] * 3))
    assert none.loc["kept box worse", "verdict"] == "not measurable"
    assert none.loc["kept box worse", "we measured"] == "no object whose kept boxes come from different anchors"
    assert "no objects both models found" in none.loc["rank discrepancy", "we measured"]
    assert "100% of the 3 objects with >= 2 candidates" in none.loc["rank discrepancy", "we measured"]
    assert "kept box from another anchor for 100% of the 3 objects both models found" in \
        observation_verdicts(better).loc["rank discrepancy", "we measured"]


def test_gap_reads_levels_with_enough_cells():
    levels = pd.concat([_levels([0.1, 0.2, 0.15]), _levels([0.99, 0.99], cells=(2, 2))], ignore_index=True)
    row = observation_verdicts(Collection(_instances([0.1, 0.2]), levels)).loc["feature-vs-prediction gap"]
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.15) and row["verdict"] == "seen"
    assert row["threshold"] == R_AGREE
    # unrelated top-10% sets of 256 cells (k = 26): IoU (k^2/n) / (2k - k^2/n)
    inter = 26 * 26 / 256
    assert f"{inter / (52 - inter):.3f} = unrelated maps" in row["we measured"]
    alike = observation_verdicts(Collection(_instances([0.1]), _levels([0.9, 0.95, 0.92]))).loc["feature-vs-prediction gap"]
    assert alike["verdict"] == "not seen"


def test_rm_row_pairs_the_same_objects_and_needs_a_distilled_student():
    base = _col([0.1, 0.2, 0.3, 0.4], image_ids=[7, 7, 8, 8])
    assert "RM aligns ranks" not in observation_verdicts(base).index
    # the distilled collection lists the objects in another order: pairs follow (image_id, gt_index)
    # (and holds an object of an image the baseline's collection lacks)
    kd_inst = _instances([0.5, 0.6, 0.7, 0.8, -1.0], image_ids=[7, 7, 8, 8, 9]).iloc[::-1].reset_index(drop=True)
    table = observation_verdicts(base, Collection(kd_inst, _levels([0.1])), names=("plain", "distilled"))
    row = table.loc["RM aligns ranks"]
    assert row["n"] == 4 and row["mean"] == pytest.approx(0.4) and row["verdict"] == "seen"
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.4, 0.4))  # every matched object moved by 0.4
    assert "distilled minus plain" in row["we measured"] and "0.250 -> 0.650" in row["we measured"]
    assert list(table.columns) == COLUMNS and table.index.name == "statement"
