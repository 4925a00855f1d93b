"""KD losses at COCO-like sizes: vectorised rmkd vs a naive per-instance / per-image loop.

    python benchmarks/losses.py [--repeat 5]

Sizes: 2 images of 800x1333 (P3..P7 maps of 100x167 .. 7x11), 9 anchors x 80
classes per location (~120k anchors per image), 256 channels, 15 instances per
image with ~20 positives each. Each row times forward + backward, interleaved
with its naive twin, median of --repeat runs; the two give the same value.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine  # noqa: E402

from rmkd import losses as L  # noqa: E402

LEVELS = [(100, 167), (50, 84), (25, 42), (13, 21), (7, 11)]
B, C, A, K = 2, 256, 9, 80


def naive_rm(t, s, ids, temperature=1.0):
    """One instance at a time: the loop rmkd avoids."""
    total = s.new_zeros(())
    groups = torch.unique(ids)
    for g in groups.tolist():
        sel = ids == g
        log_t = torch.log_softmax(t[sel].detach() / temperature, 0)
        log_s = torch.log_softmax(s[sel] / temperature, 0)
        total = total + (log_t.exp() * (log_t - log_s)).sum()
    return total / max(1, len(groups))


def naive_pfi(tf, sf, tc, sc):
    """One image and level at a time."""
    total = sf[0].new_zeros(())
    for l in range(len(tf)):
        acc = sf[0].new_zeros(())
        for b in range(tf[l].shape[0]):
            p = (tc[l][b].detach().sigmoid() - sc[l][b].sigmoid()).pow(2).mean(0)
            f = (tf[l][b].detach() - sf[l][b]).pow(2).mean(0)
            acc = acc + (p * f).sum()
        total = total + acc / (tf[l].shape[0] * tf[l].shape[2] * tf[l].shape[3])
    return total / len(tf)


def naive_soft_label(t, s):
    """One image at a time."""
    total = s.new_zeros(())
    for b in range(t.shape[0]):
        pt = t[b].detach().sigmoid()
        kl = torch.nn.functional.binary_cross_entropy_with_logits(s[b], pt, reduction="none") - (
            torch.nn.functional.binary_cross_entropy_with_logits(t[b].detach(), pt, reduction="none")
        )
        total = total + kl.sum()
    return total / (t.shape[0] * t.shape[1])


def timed(fn, make_inputs):
    inputs = make_inputs()

    def run():
        for x in inputs:
            if isinstance(x, torch.Tensor) and x.requires_grad:
                x.grad = None
            if isinstance(x, list):
                for y in x:
                    y.grad = None
        fn(*inputs).backward()

    return run, inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    rows = []

    # Rank Mimicking: 2 images x 15 instances x ~20 positives, ids interleaved.
    sizes = torch.randint(10, 31, (2 * 15,), generator=g)
    ids = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    ids = ids[torch.randperm(len(ids), generator=g)]
    t = torch.randn(len(ids), generator=g)
    s = torch.randn(len(ids), generator=g).requires_grad_()
    assert torch.allclose(L.rank_mimicking(t, s, ids), naive_rm(t, s, ids), atol=1e-6)
    rows.append(("rank_mimicking", f"P={len(ids)}, M={len(sizes)}", lambda: L.rank_mimicking(t, s, ids).backward(), lambda: naive_rm(t, s, ids).backward()))

    # PFI on five levels.
    tf = [torch.randn(B, C, h, w, generator=g) for h, w in LEVELS]
    sf = [torch.randn(B, C, h, w, generator=g).requires_grad_() for h, w in LEVELS]
    tc = [torch.randn(B, A * K, h, w, generator=g) for h, w in LEVELS]
    sc = [torch.randn(B, A * K, h, w, generator=g).requires_grad_() for h, w in LEVELS]
    assert torch.allclose(L.prediction_guided_feature_imitation(tf, sf, tc, sc), naive_pfi(tf, sf, tc, sc), rtol=1e-4)
    rows.append(("prediction_guided_feature_imitation", "5 levels, 2x800x1333", lambda: L.prediction_guided_feature_imitation(tf, sf, tc, sc).backward(), lambda: naive_pfi(tf, sf, tc, sc).backward()))

    # Soft-label KD on every anchor.
    n = sum(h * w for h, w in LEVELS) * A
    tl = torch.randn(B, n, K, generator=g)
    sl = torch.randn(B, n, K, generator=g).requires_grad_()
    assert torch.allclose(L.soft_label_kd(tl, sl), naive_soft_label(tl, sl), rtol=1e-4)
    rows.append(("soft_label_kd", f"N={n} anchors x {K}", lambda: L.soft_label_kd(tl, sl).backward(), lambda: naive_soft_label(tl, sl).backward()))

    print(f"# KD losses, forward + backward, median of {args.repeat}; {machine()}")
    print("| loss | size | rmkd (ms) | naive loop (ms) | naive / rmkd |")
    print("|---|---|---|---|---|")
    for name, size, fast, slow in rows:
        times = interleaved({"fast": fast, "slow": slow}, args.repeat, warmup=1)
        print(f"| {name} | {size} | {1e3 * times['fast']:.1f} | {1e3 * times['slow']:.1f} | {times['slow'] / times['fast']:.1f}x |")


if __name__ == "__main__":
    main()
