"""rmkd.analysis.regions: where each feature-imitation method puts its weight, against loops."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from rmkd import candidates as C
from rmkd.analysis import Collection, summarize
from rmkd.analysis.collect import INSTANCE_COLUMNS, LEVEL_COLUMNS
from rmkd.analysis.regions import (
    GAP_MEAN_COLUMNS,
    GAP_TABLE_COLUMNS,
    LEVEL_SHARE_COLUMNS,
    REGION_TERMS,
    REGIONS,
    SHARE_COLUMNS,
    VERDICT_COLUMNS,
    gap_means,
    level_gap_table,
    level_shares,
    pfi_verdicts,
    region_masks,
    region_shares,
)
from rmkd.claims import COLUMNS as CLAIM_COLUMNS
from rmkd.models import build_detector, dense_forward

SHAPES = [(3, 6, 5), (3, 3, 3), (3, 2, 1), (3, 1, 1)]  # [B, H, W] per level, deliberately uneven


def _maps(seed):
    """Random F_dif (tens, like real ones) and P_dif (small, heavy-tailed), float32 like the models'."""
    g = torch.Generator().manual_seed(seed)
    f = [torch.rand(s, generator=g) * 200 for s in SHAPES]
    p = [torch.rand(s, generator=g) ** 4 * 0.02 for s in SHAPES]
    return f, p


def _random_masks(seed, regions=3):
    g = torch.Generator().manual_seed(100 + seed)
    return {f"region {r}": [torch.rand(s, generator=g) < 0.3 for s in SHAPES] for r in range(regions)}


def _loop_totals(f, p, mask):
    """(inside, total) of each share quantity, one location at a time in float64."""
    L = len(f)
    inside = dict.fromkeys(SHARE_COLUMNS, 0.0)
    total = dict.fromkeys(SHARE_COLUMNS, 0.0)
    for level in range(L):
        B, H, W = f[level].shape
        for b in range(B):
            for y in range(H):
                for x in range(W):
                    fv, pv = float(f[level][b, y, x]), float(p[level][b, y, x])
                    values = {
                        "locations": 1.0,
                        "full-map FI (F_dif)": fv,
                        "P_dif weight": pv / (L * B * H * W),
                        "PFI loss (P_dif x F_dif)": pv * fv / (L * B * H * W),
                    }
                    for key, v in values.items():
                        total[key] += v
                        if mask is None or bool(mask[level][b, y, x]):
                            inside[key] += v
    return inside, total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_region_shares_equal_a_loop_over_levels_images_and_locations(seed):
    f, p = _maps(seed)
    masks = _random_masks(seed)
    got = region_shares(f, p, masks)
    assert list(got.index) == list(masks) and list(got.columns) == list(SHARE_COLUMNS)
    for name, mask in masks.items():
        inside, total = _loop_totals(f, p, mask)
        for col in SHARE_COLUMNS:
            assert got.loc[name, col] == pytest.approx(inside[col] / total[col], rel=1e-12), (name, col)


def test_region_shares_weigh_a_coarse_cell_as_pfi_does():
    """Level 0 has 4 cells, level 1 one cell, all F_dif = P_dif = 1: the single coarse cell holds
    1/5 of the locations and of full-map FI, but half of PFI's weight (each level averages on its own)."""
    f = [torch.ones(1, 2, 2), torch.ones(1, 1, 1)]
    p = [torch.ones(1, 2, 2), torch.ones(1, 1, 1)]
    coarse = {"coarse cell": [torch.zeros(1, 2, 2, dtype=torch.bool), torch.ones(1, 1, 1, dtype=torch.bool)]}
    got = region_shares(f, p, coarse).loc["coarse cell"]
    assert got.tolist() == pytest.approx([0.2, 0.2, 0.5, 0.5])
    # P_dif concentrated on the fine level: the coarse cell's PFI share follows P_dif x F_dif
    p = [torch.full((1, 2, 2), 3.0), torch.ones(1, 1, 1)]
    f = [torch.ones(1, 2, 2), torch.full((1, 1, 1), 2.0)]
    got = region_shares(f, p, coarse).loc["coarse cell"]
    # FI: 2 of 6; P_dif weight: (1/2) / (4 * 3/8 + 1/2) = 1/4; PFI: (2/2) / (4 * 3/8 + 2/2) = 2/5
    assert got.tolist() == pytest.approx([0.2, 2 / 6, 0.25, 0.4])


def test_region_shares_of_all_zero_maps_are_nan_and_shapes_are_checked():
    f = [torch.zeros(s) for s in SHAPES]
    got = region_shares(f, f, {"all": [torch.ones(s, dtype=torch.bool) for s in SHAPES]}).loc["all"]
    assert got["locations"] == 1.0
    assert all(math.isnan(got[c]) for c in SHARE_COLUMNS[1:])
    with pytest.raises(ValueError, match="do not match"):
        region_shares(f, f, {"bad": [torch.ones(1, 2, 2, dtype=torch.bool)] * len(SHAPES)})
    with pytest.raises(ValueError, match="same levels"):
        region_shares(f, f[:2], {})
    with pytest.raises(ValueError, match="must both be"):
        region_shares([torch.zeros(2, 3)], [torch.zeros(2, 3)], {})


@pytest.mark.parametrize("seed", [0, 3])
def test_level_shares_equal_a_loop(seed):
    f, p = _maps(seed)
    got = level_shares(f, p, names=["P2", "P3", "P4", "P5"])
    assert list(got.index) == ["P2", "P3", "P4", "P5"] and list(got.columns) == list(LEVEL_SHARE_COLUMNS)
    assert got["cells per image"].tolist() == ["6x5", "3x3", "2x1", "1x1"]
    L = len(f)
    pfi, fi, loc = [], [], []
    for level in range(L):
        B, H, W = f[level].shape
        cells = [(b, y, x) for b in range(B) for y in range(H) for x in range(W)]
        pfi.append(sum(float(p[level][c]) * float(f[level][c]) / (L * B * H * W) for c in cells))
        fi.append(sum(float(f[level][c]) for c in cells))
        loc.append(len(cells))
    for col, ref in (("share of PFI loss", pfi), ("share of full-map FI", fi), ("share of locations", loc)):
        assert got[col].tolist() == pytest.approx([r / sum(ref) for r in ref], rel=1e-12), col
    # the per-level split of the pooled shares: the full map's row of region_shares is 1
    assert level_shares(f, p).index.tolist() == ["level 0", "level 1", "level 2", "level 3"]
    with pytest.raises(ValueError, match="level names"):
        level_shares(f, p, names=["P2"])


def _levels_frame(seed, strides=(4, 8, 16, 32, 64), size=64, images=5):
    """Collection.levels-shaped rows for ``images`` images, NaN where a level is too small."""
    rng = np.random.default_rng(seed)
    rows = []
    for image in range(images):
        for level, stride in enumerate(strides):
            h = w = max(1, size // stride)
            stats = dict(zip(["f_dif_mean", "p_dif_mean", "pearson", "spearman", "top_iou", "f_dif_in_gt",
                              "p_dif_in_gt", "gt_fraction"], rng.uniform(0, 1, 8)))  # fmt: skip
            if h * w == 1:
                stats["pearson"] = stats["spearman"] = stats["top_iou"] = np.nan
            if rng.random() < 0.2:
                stats["pearson"] = np.nan  # a constant map
            rows.append({"image_id": 10 + image, "level": level, "stride": stride, "height": h, "width": w, **stats})
    return pd.DataFrame(rows)[LEVEL_COLUMNS]


def _nanmean(values):
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def test_level_gap_table_equals_a_loop_and_names_levels_by_stride():
    frames = {"student b": _levels_frame(1), "student a": _levels_frame(2)}  # not alphabetical: order kept
    got = level_gap_table(frames)
    assert list(got.index) == ["P2", "P3", "P4", "P5", "P6"]
    assert list(got.columns) == [(c, s) for c in GAP_TABLE_COLUMNS for s in frames]
    for student, frame in frames.items():
        for level, name in enumerate(got.index):
            rows = frame[frame["level"] == level]
            for col in GAP_TABLE_COLUMNS:
                ref = _nanmean(rows[col].tolist())
                value = got.loc[name, (col, student)]
                assert (math.isnan(ref) and math.isnan(value)) or value == pytest.approx(ref, rel=1e-12), (student, name, col)
    # P3..P7 detectors (torchvision's own) read right too
    p3 = level_gap_table({"s": _levels_frame(3, strides=(8, 16, 32, 64, 128), size=128)})
    assert list(p3.index) == ["P3", "P4", "P5", "P6", "P7"]


def test_gap_means_use_the_levels_summarize_uses():
    frames = {"baseline": _levels_frame(4), "RM+PFI": _levels_frame(5)}
    means, names = gap_means(frames)
    assert names == ["P2", "P3", "P4"]  # 16x16, 8x8, 4x4 cells; P5 (2x2) and P6 (1x1) have < 16
    assert list(means.index) == ["baseline", "RM+PFI"] and list(means.columns) == list(GAP_MEAN_COLUMNS)
    for student, frame in frames.items():
        fine = [r for r in frame.itertuples() if r.height * r.width >= 16]
        for col in GAP_MEAN_COLUMNS:
            assert means.loc[student, col] == pytest.approx(_nanmean([getattr(r, col) for r in fine]), rel=1e-12)
        col = Collection(pd.DataFrame(columns=INSTANCE_COLUMNS), frame)
        summary = summarize(col)
        for key, column in (("gap_pearson", "pearson"), ("gap_spearman", "spearman"), ("gap_top_iou", "top_iou")):
            assert summary[key] == pytest.approx(means.loc[student, column], rel=1e-12)
    wide, names = gap_means(frames, min_locations=4)
    assert names == ["P2", "P3", "P4", "P5"] and not wide.equals(means)


def _claims_frame():
    rows = [
        ("PFI beats the baseline", "pfi", "beats", "baseline", 3, 8.8, 4.0, 3.8, 13.8, 0.01, 0.18, "undecided", 4),
        ("PFI beats positive FI", "pfi", "beats", "fi_positive", 3, 5.0, 0.5, 3.8, 6.2, 0.002, 0.038, "supported", 3),
        ("PFI beats full-map FI", "pfi", "beats", "fi_full", 3, -0.1, 0.6, -1.5, 1.3, 0.8, 1.0, "undecided", 900),
        ("PFI beats negative FI", "pfi", "beats", "fi_negative", 3, 1.7, 1.2, -1.4, 4.8, 0.2, 1.0, "undecided", 12),
        ("PFI beats FGFI", "pfi", "beats", "fgfi", 4, 0.9, 1.3, -2.4, 4.2, 0.4, 1.0, "undecided", 30),
        # distractors: another method against fi_gt, PFI in another relation
        ("RM beats GT FI", "rm", "beats", "fi_gt", 3, 2.0, 1.0, 0.0, 4.0, 0.1, 1.0, "undecided", 9),
        ("PFI at least as well as GT FI", "pfi", "at least as well as", "fi_gt", 3, 0.2, 1.0, -1, 1.4, 0.1, 1.0,
         "undecided", 9),
    ]  # fmt: skip
    rows = [(*r, float("nan"), float("nan"), False) for r in rows]  # no equivalence tests: not read here
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def test_pfi_verdicts_pick_each_regions_claim():
    claims = _claims_frame()
    got = pfi_verdicts(claims)
    assert list(got.index) == ["baseline", *REGIONS] and list(got.columns) == list(VERDICT_COLUMNS)
    for name, method in {"baseline": "baseline", **REGION_TERMS}.items():
        match = [r for r in claims.itertuples() if r.a == "pfi" and r.relation == "beats" and r.b == method]
        if not match:
            assert method == "fi_gt"  # only a distractor names it
            assert got.loc[name, "verdict"] == "not in the study" and got.loc[name, "n"] == 0
            continue
        for col in VERDICT_COLUMNS:
            assert got.loc[name, col] == getattr(match[0], col), (name, col)
    assert got.loc["positive", "verdict"] == "supported"


def _student_and_batch():
    torch.manual_seed(0)
    student = build_detector("retinanet", "resnet18", 4, fpn_channels=16, head_convs=1, min_level=2, image_size=64,
                             anchor_sizes=(12, 24, 48, 96, 160), scales_per_octave=2, aspect_ratios=(1.0, 1.5))
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(3)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1, 4])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[10.0, 12.0, 26.0, 34.0]]), "labels": torch.tensor([3])},
    ]
    return student.train(), images, targets


def test_region_masks_are_the_candidates_masks_of_the_detectors_own_assignment():
    student, images, targets = _student_and_batch()
    with torch.no_grad():
        dense = dense_forward(student, images, targets)
    got = region_masks(dense)
    assert tuple(got) == REGIONS
    sizes = dense.level_sizes
    assert len(sizes) == 5 and sizes[0] == (16, 16)  # P2 (stride 4) of a 64 px image
    assert all(m.shape == (3, *hw) and m.dtype == torch.bool and m.all() for m, hw in zip(got["full map"], sizes))
    for name, ref in (("positive", C.positive_mask(dense)), ("negative", C.negative_mask(dense)),
                      ("GT box", C.gt_mask(dense)), ("FGFI", C.fgfi_mask(dense, psi=0.5))):  # fmt: skip
        assert all(torch.equal(a, b) for a, b in zip(got[name], ref)), name
    assert got["positive"][0].any() and got["GT box"][0].any()
    assert not any(m[1].any() for m in got["positive"])  # image 1 has no object: nothing positive
    strict = region_masks(dense, psi=0.9)["FGFI"]
    assert all(torch.equal(a, b) for a, b in zip(strict, C.fgfi_mask(dense, psi=0.9)))
    assert sum(int(m.sum()) for m in strict) < sum(int(m.sum()) for m in got["FGFI"])  # psi reaches fgfi_mask
    with torch.no_grad():
        bare = dense_forward(student.eval(), images)
    with pytest.raises(ValueError, match="assignment"):
        region_masks(bare)
