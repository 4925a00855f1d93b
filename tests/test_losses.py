"""rmkd.losses against their formulas, written as plain float64 loops."""

import math

import pytest
import torch

from rmkd import losses as L


def _rm_reference(t, s, ids, T):
    """Mean over instances of KL(softmax(t/T) || softmax(s/T)), one instance at a time."""
    groups = {}
    for i, g in enumerate(ids.tolist()):
        groups.setdefault(g, []).append(i)
    if not groups:
        return 0.0
    total = 0.0
    for members in groups.values():
        tt = [t[i].item() / T for i in members]
        ss = [s[i].item() / T for i in members]
        zt = math.log(sum(math.exp(v - max(tt)) for v in tt)) + max(tt)
        zs = math.log(sum(math.exp(v - max(ss)) for v in ss)) + max(ss)
        for a, b in zip(tt, ss):
            p = math.exp(a - zt)
            total += p * ((a - zt) - (b - zs))
    return total / len(groups)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("T", [1.0, 0.3, 2.5])
def test_rank_mimicking_equals_loop(seed, T):
    g = torch.Generator().manual_seed(seed)
    p = int(torch.randint(1, 60, (1,), generator=g))
    t = torch.randn(p, generator=g, dtype=torch.float64) * 3
    s = torch.randn(p, generator=g, dtype=torch.float64) * 3
    # interleaved, non-contiguous ids (negative and large too), some singletons
    ids = torch.tensor([-7, 3, 1000, 42, 5])[torch.randint(0, 5, (p,), generator=g)]
    got = L.rank_mimicking(t, s, ids, T)
    assert got.item() == pytest.approx(_rm_reference(t, s, ids, T), rel=1e-10, abs=1e-12)
    # a non-contiguous view gives the same value
    t2 = torch.stack([t, torch.zeros_like(t)], 1)[:, 0]
    assert not t2.is_contiguous()
    assert L.rank_mimicking(t2, s, ids, T).item() == pytest.approx(got.item(), rel=1e-12)


def test_rank_mimicking_edge_cases():
    s = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    t = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    # singletons only: 0
    assert L.rank_mimicking(t, s, torch.tensor([0, 1, 2])).item() == 0.0
    # equal scores: 0; different: > 0
    assert L.rank_mimicking(s.detach(), s, torch.tensor([0, 0, 0])).item() == pytest.approx(0.0, abs=1e-7)
    loss = L.rank_mimicking(t, s, torch.tensor([4, 4, 9]))
    assert loss.item() > 0
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None  # the teacher side is detached
    # empty: 0, not NaN, and backward works
    empty = torch.zeros(0, requires_grad=True)
    out = L.rank_mimicking(empty.detach(), empty, torch.zeros(0, dtype=torch.int64))
    assert out.item() == 0.0
    out.backward()
    # extreme logits stay finite
    big = torch.tensor([50.0, -50.0, 49.0, -50.0])
    val = L.rank_mimicking(big, -big, torch.tensor([1, 1, 2, 2]), 0.1)
    assert torch.isfinite(val)
    with pytest.raises(ValueError, match="temperature"):
        L.rank_mimicking(t, s, torch.tensor([0, 0, 0]), 0.0)


def _levels(seed, dtype=torch.float64, shapes=((2, 3, 4, 5), (2, 3, 2, 3)), ak=6):
    g = torch.Generator().manual_seed(seed)
    tf = [torch.randn(*sh, generator=g, dtype=dtype) for sh in shapes]
    sf = [torch.randn(*sh, generator=g, dtype=dtype) for sh in shapes]
    tc = [torch.randn(sh[0], ak, *sh[2:], generator=g, dtype=dtype) * 4 for sh in shapes]
    sc = [torch.randn(sh[0], ak, *sh[2:], generator=g, dtype=dtype) * 4 for sh in shapes]
    return tf, sf, tc, sc


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("seed", range(3))
def test_pfi_equals_loop(seed):
    tf, sf, tc, sc = _levels(seed)
    level_means = []
    for l in range(len(tf)):
        B, C, H, W = tf[l].shape
        AK = tc[l].shape[1]
        acc = 0.0
        for b in range(B):
            for y in range(H):
                for x in range(W):
                    p_dif = sum((_sig(tc[l][b, j, y, x].item()) - _sig(sc[l][b, j, y, x].item())) ** 2 for j in range(AK)) / AK
                    f_dif = sum((tf[l][b, c, y, x].item() - sf[l][b, c, y, x].item()) ** 2 for c in range(C)) / C
                    acc += p_dif * f_dif
        level_means.append(acc / (B * H * W))
    expected = sum(level_means) / len(level_means)
    assert L.prediction_guided_feature_imitation(tf, sf, tc, sc).item() == pytest.approx(expected, rel=1e-10)
    assert L.prediction_guided_feature_imitation(tf, sf, tc, sc, detach_pdif=True).item() == pytest.approx(expected, rel=1e-10)


def test_pfi_gradients_and_detach():
    tf, sf, tc, sc = _levels(0, dtype=torch.float32)
    sf = [f.requires_grad_() for f in sf]
    sc = [c.requires_grad_() for c in sc]
    tf = [f.requires_grad_() for f in tf]
    L.prediction_guided_feature_imitation(tf, sf, tc, sc).backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in sc)  # P_dif passes gradient by default
    assert all(f.grad.abs().sum() > 0 for f in sf) and all(f.grad is None for f in tf)
    for c in sc:
        c.grad = None
    L.prediction_guided_feature_imitation(tf, sf, tc, sc, detach_pdif=True).backward()
    assert all(c.grad is None for c in sc)
    with pytest.raises(ValueError, match="level 1"):
        L.prediction_guided_feature_imitation(tf, [sf[0], sf[0]], tc, sc)


@pytest.mark.parametrize("seed", range(3))
def test_feature_imitation_equals_loop(seed):
    tf, sf, _, _ = _levels(seed)
    g = torch.Generator().manual_seed(seed + 10)
    masks = [torch.rand(f.shape[0], *f.shape[2:], generator=g) > 0.5 for f in tf]
    num = den = 0.0
    num_full = den_full = 0.0
    for l in range(len(tf)):
        B, C, H, W = tf[l].shape
        for b in range(B):
            for y in range(H):
                for x in range(W):
                    f_dif = sum((tf[l][b, c, y, x].item() - sf[l][b, c, y, x].item()) ** 2 for c in range(C)) / C
                    num_full += f_dif
                    den_full += 1
                    if masks[l][b, y, x]:
                        num += f_dif
                        den += 1
    assert L.feature_imitation(tf, sf, masks).item() == pytest.approx(num / den, rel=1e-10)
    assert L.feature_imitation(tf, sf).item() == pytest.approx(num_full / den_full, rel=1e-10)
    nothing = [torch.zeros_like(m) for m in masks]
    assert L.feature_imitation(tf, sf, nothing).item() == 0.0


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_soft_label_equals_loop(T):
    g = torch.Generator().manual_seed(1)
    t = torch.randn(2, 7, 4, generator=g, dtype=torch.float64) * 3
    s = torch.randn(2, 7, 4, generator=g, dtype=torch.float64) * 3
    w = torch.rand(2, 7, generator=g) > 0.3
    num = den = 0.0
    for b in range(2):
        for n in range(7):
            kl = 0.0
            for k in range(4):
                pt, ps = _sig(t[b, n, k].item() / T), _sig(s[b, n, k].item() / T)
                kl += pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
            if w[b, n]:
                num, den = num + kl * T * T, den + 1
    assert L.soft_label_kd(t, s, T, w).item() == pytest.approx(num / den, rel=1e-9)
    assert L.soft_label_kd(s, s, T).item() == pytest.approx(0.0, abs=1e-12)
    extreme = torch.tensor([[50.0, -50.0]])
    assert torch.isfinite(L.soft_label_kd(extreme, -extreme, 1.0))


@pytest.mark.parametrize("seed", range(3))
def test_feature_imitation_per_level_equals_loop(seed):
    """fi_full_level: each level's own (masked) mean of F_dif, then the mean over levels (PFI's normalisation)."""
    tf, sf, _, _ = _levels(seed)
    g = torch.Generator().manual_seed(seed + 20)
    masks = [torch.rand(f.shape[0], *f.shape[2:], generator=g) > 0.4 for f in tf]
    per_level, per_level_full = [], []
    for l in range(len(tf)):
        B, C, H, W = tf[l].shape
        num = den = num_full = 0.0
        for b in range(B):
            for y in range(H):
                for x in range(W):
                    f_dif = sum((tf[l][b, c, y, x].item() - sf[l][b, c, y, x].item()) ** 2 for c in range(C)) / C
                    num_full += f_dif
                    if masks[l][b, y, x]:
                        num, den = num + f_dif, den + 1
        per_level.append(num / max(den, 1))
        per_level_full.append(num_full / (B * H * W))
    assert L.feature_imitation(tf, sf, masks, per_level=True).item() == pytest.approx(sum(per_level) / len(tf), rel=1e-10)
    assert L.feature_imitation(tf, sf, per_level=True).item() == pytest.approx(sum(per_level_full) / len(tf), rel=1e-10)
    # pooled and per-level differ whenever levels differ in size and in mean F_dif
    assert L.feature_imitation(tf, sf).item() != pytest.approx(sum(per_level_full) / len(tf), rel=1e-6)
