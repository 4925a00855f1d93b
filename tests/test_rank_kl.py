"""rmkd.analysis.rank_kl against a float64 loop and against the RM training loss."""

import math

import numpy as np
import pytest
import torch

from rmkd.analysis.rank_kl import rank_kl
from rmkd.losses import rank_mimicking


def _reference(t, s, ids, temperature):
    """Plain loop over instances, float64, one softmax at a time."""
    rows = {}
    for g in sorted(set(ids.tolist())):
        a, b = t[ids == g] / temperature, s[ids == g] / temperature
        pt = [math.exp(x - max(a)) for x in a]
        ps = [math.exp(x - max(b)) for x in b]
        pt, ps = [x / sum(pt) for x in pt], [x / sum(ps) for x in ps]
        kl = sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps) if p > 0)
        rows[g] = (len(a), kl, t[ids == g].mean(), s[ids == g].mean(), t[ids == g].std(), s[ids == g].std())
    return rows


@pytest.mark.parametrize("temperature", [1.0, 0.25, 0.1])
def test_rank_kl_equals_a_float64_loop(temperature):
    rng = np.random.default_rng(3)
    ids = rng.choice([7, 2, 40, 41, 5], size=60)  # interleaved, unsorted ids; one may hold a single candidate
    ids[0] = 99  # an instance of one candidate: KL exactly 0
    t, s = rng.random(60), rng.random(60)
    got = rank_kl(t, s, ids, temperature).set_index("instance_id")
    ref = _reference(t, s, ids, temperature)
    assert list(got.index) == sorted(ref)
    for g, (n, kl, tm, sm, tsd, ssd) in ref.items():
        row = got.loc[g]
        assert row.n_candidates == n
        assert row.kl == pytest.approx(kl, rel=1e-12, abs=1e-15)
        assert (row.t_mean, row.s_mean, row.t_std, row.s_std) == pytest.approx((tm, sm, tsd, ssd), rel=1e-12, abs=1e-15)
    assert got.loc[99].kl == 0.0
    assert (got.kl >= 0).all()


def test_rank_kl_mean_is_the_rm_training_loss():
    """The analysis measures exactly what RM trains: its mean over instances is rank_mimicking's value."""
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(0, 12, 80))
    t, s = torch.rand(80, dtype=torch.float64), torch.rand(80, dtype=torch.float64)
    for temperature in (1.0, 0.1):
        loss = float(rank_mimicking(t, s, ids, temperature))
        assert rank_kl(t, s, ids, temperature).kl.mean() == pytest.approx(loss, rel=1e-12)


def test_rank_kl_is_zero_for_the_same_scores_and_grows_when_the_order_reverses():
    t = np.array([0.9, 0.5, 0.1, 0.8, 0.2])
    ids = np.array([0, 0, 0, 1, 1])
    assert rank_kl(t, t, ids).kl.abs().max() < 1e-15
    reversed_ = np.array([0.1, 0.5, 0.9, 0.2, 0.8])
    sharp, flat = rank_kl(t, reversed_, ids, 0.1).kl, rank_kl(t, reversed_, ids, 1.0).kl
    assert (sharp > flat).all() and (flat > 0).all()


def test_rank_kl_rejects_bad_input_in_one_line():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        rank_kl([0.1], [0.2], [0], 0.0)
    with pytest.raises(ValueError, match="lengths 2, 1, 2"):
        rank_kl([0.1, 0.2], [0.2], [0, 0])
    with pytest.raises(ValueError, match="non-finite"):
        rank_kl([0.1, float("nan")], [0.2, 0.3], [0, 0])
    empty = rank_kl([], [], np.array([], dtype=np.int64))
    assert len(empty) == 0 and "kl" in empty.columns
