"""Property-based checks (hypothesis): the KD losses stay finite and non-negative for
extreme logits (+-50), empty inputs, single-candidate instances and random groupings."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rmkd.losses import feature_imitation, prediction_guided_feature_imitation, rank_mimicking, soft_label_kd

FAST = settings(max_examples=60, deadline=None)


@st.composite
def grouped_scores(draw):
    p = draw(st.integers(0, 40))
    ids = draw(st.lists(st.integers(-5, 5), min_size=p, max_size=p))
    t = draw(st.lists(st.floats(-50, 50), min_size=p, max_size=p))
    s = draw(st.lists(st.floats(-50, 50), min_size=p, max_size=p))
    temperature = draw(st.sampled_from([0.1, 1.0, 4.0]))
    return torch.tensor(t, dtype=torch.float32), torch.tensor(s, dtype=torch.float32, requires_grad=True), torch.tensor(ids, dtype=torch.int64), temperature


@FAST
@given(grouped_scores())
def test_rank_mimicking_is_finite_non_negative_and_backpropagates(case):
    t, s, ids, temperature = case
    loss = rank_mimicking(t, s, ids, temperature)
    assert torch.isfinite(loss) and loss >= -1e-6
    loss.backward()
    assert torch.isfinite(s.grad).all()
    # instances with a single candidate contribute exactly nothing
    counts = torch.bincount(ids - ids.min()) if len(ids) else torch.zeros(0)
    if len(ids) and (counts[counts > 0] == 1).all():
        assert loss.item() == 0.0
    # mimicking yourself costs nothing
    assert rank_mimicking(t, t.clone(), ids, temperature).abs() < 1e-5


@FAST
@given(
    st.integers(0, 3), st.integers(0, 7), st.integers(1, 5),
    st.floats(-50, 50), st.floats(0.5, 4.0),
)  # fmt: skip
def test_soft_label_kd_is_finite_and_zero_on_agreement(b, n, k, offset, temperature):
    g = torch.Generator().manual_seed(b * 100 + n * 10 + k)
    t = (torch.randn(b, n, k, generator=g) * 50).clamp(-50, 50)
    s = (t + offset).clamp(-50, 50).requires_grad_(True)
    loss = soft_label_kd(t, s, temperature)
    assert torch.isfinite(loss) and loss >= -1e-4
    loss.backward()
    assert torch.isfinite(s.grad).all()
    assert soft_label_kd(t, t.clone(), temperature).abs() < 1e-4


@FAST
@given(st.integers(1, 3), st.integers(1, 4), st.lists(st.integers(1, 6), min_size=1, max_size=3), st.floats(1.0, 50.0))
def test_feature_losses_are_finite_for_any_shapes_and_extremes(b, c, sizes, scale):
    g = torch.Generator().manual_seed(b + 10 * c + 100 * len(sizes))
    t_feats = [torch.randn(b, c, h, h, generator=g) * scale for h in sizes]
    s_feats = [torch.randn(b, c, h, h, generator=g).requires_grad_(True) for h in sizes]
    t_cls = [torch.randn(b, 6, h, h, generator=g) * 50 for h in sizes]  # +-50 logits
    s_cls = [(-x).requires_grad_(True) for x in t_cls]
    pfi = prediction_guided_feature_imitation(t_feats, s_feats, t_cls, s_cls)
    assert torch.isfinite(pfi) and pfi >= 0
    pfi.backward()
    assert all(torch.isfinite(f.grad).all() for f in s_feats)
    empty = [torch.zeros(b, h, h, dtype=torch.bool) for h in sizes]  # e.g. an image without objects
    assert feature_imitation(t_feats, s_feats, empty) == 0
    assert torch.isfinite(feature_imitation(t_feats, s_feats))
