"""rmkd.analysis.rank.rank_agreement against scipy, one instance at a time."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from rmkd.analysis import rank as rank_module
from rmkd.analysis.rank import rank_agreement

COLUMNS = ["instance_id", "n_candidates", "kendall_tau", "spearman_rho", "top1_agree"]


def _reference(t, s, ids):
    """Plain loop: scipy's kendalltau / spearmanr and np.argmax per instance."""
    rows = []
    for g in np.unique(ids):
        sel = ids == g
        a, b = t[sel], s[sel]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on constant input; we compare its NaN
            tau = stats.kendalltau(a, b).statistic
            rho = stats.spearmanr(a, b).statistic
        rows.append((g, sel.sum(), tau, rho, np.argmax(a) == np.argmax(b)))
    return pd.DataFrame(rows, columns=COLUMNS)


def _assert_matches_reference(got, t, s, ids):
    want = _reference(t, s, ids)
    assert list(got.columns) == COLUMNS
    np.testing.assert_array_equal(got["instance_id"].to_numpy(), want["instance_id"].to_numpy())
    np.testing.assert_array_equal(got["n_candidates"].to_numpy(), want["n_candidates"].to_numpy())
    for col in ("kendall_tau", "spearman_rho"):
        np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(float), rtol=1e-10, atol=0, equal_nan=True)
    np.testing.assert_array_equal(got["top1_agree"].to_numpy(), want["top1_agree"].to_numpy(bool))


def _random_case(seed, max_size=40, n_instances=None):
    """Tied scores, interleaved non-contiguous ids (negative and large), groups of 1..max_size."""
    rng = np.random.default_rng(seed)
    m = n_instances or int(rng.integers(20, 60))
    pool = np.r_[-(10**15), -7, -1, 0, 3, 1000, 2**40, rng.integers(-(10**12), 10**12, 2 * m)]
    ids_values = rng.choice(np.unique(pool), m, replace=False)
    sizes = rng.integers(1, max_size + 1, m)
    ids = np.repeat(ids_values, sizes)
    rng.shuffle(ids)
    p = len(ids)
    t = np.round(rng.random(p), 1)  # ~10 distinct values: many ties
    s = rng.integers(0, 4, p).astype(np.float64)  # 4 distinct values: more ties
    mixed = rng.random(p) < 0.5
    s[mixed] = np.round(t[mixed] + rng.normal(0, 0.1, mixed.sum()), 1)  # correlated for some
    return t, s, ids


def _fresh_frame(t, s, ids):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rank_agreement must not warn, NaN cases included
        return rank_agreement(t, s, ids)


@pytest.mark.parametrize("seed", range(6))
def test_matches_scipy_per_instance_with_ties(seed):
    t, s, ids = _random_case(seed)
    got = _fresh_frame(t, s, ids)
    _assert_matches_reference(got, t, s, ids)
    assert got["instance_id"].dtype == np.int64 and got["n_candidates"].dtype == np.int64
    assert got["top1_agree"].dtype == bool
    assert got["kendall_tau"].notna().sum() > len(got) // 2  # the case is not all NaN


def test_dense_ids_match_scipy():
    # ids 0..M-1 (the usual case) take a different unique/sort path than sparse ids.
    rng = np.random.default_rng(11)
    ids = np.repeat(np.arange(50), rng.integers(1, 30, 50))
    rng.shuffle(ids)
    t, s = np.round(rng.random(len(ids)), 1), np.round(rng.random(len(ids)), 1)
    _assert_matches_reference(_fresh_frame(t, s, ids), t, s, ids)


def test_constant_scores_and_singletons_give_nan():
    t = np.array([0.5, 0.5, 0.5, 0.9, 0.1, 0.7, 0.3, 0.2, 0.2])
    s = np.array([0.1, 0.9, 0.4, 0.2, 0.2, 0.6, 0.6, 0.3, 0.8])
    ids = np.array([4, 4, 4, 9, 9, 2, 2, 7, 7])  # 4: t constant; 9, 2: s constant; 7: t constant
    ids = np.r_[ids, 5]  # a singleton
    t, s = np.r_[t, 0.3], np.r_[s, 0.4]
    got = _fresh_frame(t, s, ids).set_index("instance_id")
    assert got.loc[[4, 9, 2, 7], "kendall_tau"].isna().all()
    assert got.loc[[4, 9, 2, 7], "spearman_rho"].isna().all()
    assert got.loc[5, "n_candidates"] == 1
    assert np.isnan(got.loc[5, "kendall_tau"]) and np.isnan(got.loc[5, "spearman_rho"])
    assert got.loc[5, "top1_agree"]
    # instance 4: all t tied, so the teacher's top-1 is the first candidate; the student's is the second
    assert not got.loc[4, "top1_agree"]
    _assert_matches_reference(_fresh_frame(t, s, ids), t, s, ids)


def test_hand_cases_identical_and_reversed_orderings():
    t = np.array([0.1, 0.4, 0.3, 0.9, 1.0, 2.0, 3.0, 4.0])
    s = np.array([1.0, 4.0, 3.0, 9.0, 0.4, 0.3, 0.2, 0.1])  # instance 0: same order; 1: reversed
    ids = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    got = _fresh_frame(t, s, ids)
    np.testing.assert_array_equal(got["kendall_tau"], [1.0, -1.0])
    np.testing.assert_array_equal(got["spearman_rho"], [1.0, -1.0])
    np.testing.assert_array_equal(got["top1_agree"], [True, False])
    np.testing.assert_array_equal(got["n_candidates"], [4, 4])


def test_top1_ties_go_to_first_in_input_order():
    # Teacher ties at the max on positions 1 and 3 of the instance (input order);
    # the student's max is position 3: argmax-style tie-breaking says "disagree".
    ids = np.array([8, 3, 8, 8, 3, 8])
    t = np.array([0.1, 0.0, 0.9, 0.5, 0.0, 0.9])
    s = np.array([0.1, 0.5, 0.2, 0.3, 0.6, 0.8])
    got = _fresh_frame(t, s, ids).set_index("instance_id")
    assert not got.loc[8, "top1_agree"]
    assert not got.loc[3, "top1_agree"]  # t tied -> first (0.5 vs 0.6 for s)
    _assert_matches_reference(got.reset_index(), t, s, ids)


def test_torch_inputs_give_the_numpy_frame():
    t, s, ids = _random_case(3)
    want = _fresh_frame(t.astype(np.float32), s.astype(np.float32), ids)
    got = _fresh_frame(torch.tensor(t, dtype=torch.float32), torch.tensor(s, dtype=torch.float32), torch.tensor(ids))
    pd.testing.assert_frame_equal(got, want)
    # float32 ties survive as ties (compared in float64, never rounded further).
    _assert_matches_reference(got, t.astype(np.float32), s.astype(np.float32), ids)


def test_empty_input_gives_empty_frame():
    got = _fresh_frame(np.array([]), np.array([]), np.array([], dtype=np.int64))
    assert list(got.columns) == COLUMNS and len(got) == 0
    assert [str(d) for d in got.dtypes] == ["int64", "int64", "float64", "float64", "bool"]
    got = _fresh_frame(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert list(got.columns) == COLUMNS and len(got) == 0


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (([0.1, 0.2, 0.3], [0.1, 0.2], [0, 0, 1]), "lengths"),
        (([0.1, np.nan], [0.1, 0.2], [0, 0]), "t_scores"),
        (([0.1, 0.2], [0.1, np.inf], [0, 0]), "s_scores"),
        ((np.zeros((2, 2)), np.zeros(4), np.zeros(4, int)), "t_scores"),
        (([0.1, 0.2], [0.1, 0.2], [0.5, 1.5]), "instance_ids"),
    ],
)
def test_bad_input_raises_naming_the_argument(args, name):
    with pytest.raises(ValueError, match=name) as info:
        rank_agreement(*args)
    assert "\n" not in str(info.value)


def test_large_instance_with_many_small_ones():
    rng = np.random.default_rng(5)
    sizes = np.r_[600, 130, rng.integers(1, 20, 300)]
    ids = np.repeat(rng.permutation(10_000)[: len(sizes)], sizes)
    rng.shuffle(ids)
    t = np.round(rng.random(len(ids)), 2)
    s = np.round(t + rng.normal(0, 0.2, len(ids)), 2)
    got = _fresh_frame(t, s, ids)
    _assert_matches_reference(got, t, s, ids)
    assert got["n_candidates"].max() == 600


def test_tiny_chunks_and_row_blocks_give_the_same_frame(monkeypatch):
    # Force every path of the chunking: many chunks per width class, the
    # candidate-major layout, and one instance split into blocks of rows.
    t, s, ids = _random_case(8, max_size=40, n_instances=40)
    big = np.round(np.random.default_rng(0).random(150), 1)
    t, s, ids = np.r_[t, big], np.r_[s, big[::-1]], np.r_[ids, np.full(150, 123456789)]
    want = _fresh_frame(t, s, ids)
    monkeypatch.setattr(rank_module, "_CHUNK_ELEMENTS", 4000)
    got = _fresh_frame(t, s, ids)
    pd.testing.assert_frame_equal(got, want)
    _assert_matches_reference(got, t, s, ids)
