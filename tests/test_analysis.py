"""rmkd.analysis: gap statistics, kept anchors, collect, the training hook and rmkd analyze."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torchvision.ops import boxes as box_ops

from rmkd import candidates as C
from rmkd.analysis import collect, fit_adapter, gap_statistics, kept_detections, size_class, summarize
from rmkd.config import load_config
from rmkd.data import CocoDetection
from rmkd.data.loader import eval_loader
from rmkd.models import build_detector, dense_forward, postprocess

K = 10
ANCHORS = dict(anchor_sizes=(12, 24, 48, 96, 160), scales_per_octave=2, aspect_ratios=(1.0, 1.5), image_size=64)


# ---------------------------------------------------------------- gap statistics


def test_gap_statistics_on_hand_built_maps():
    f = np.zeros((1, 4, 5))
    p = np.zeros((1, 4, 5))
    f[0, 0, 0], f[0, 1, 1] = 5.0, 4.0  # F_dif hot spots
    p[0, 0, 0], p[0, 3, 3] = 3.0, 2.0  # P_dif hot spots: one shared
    f[0, 2, 2], p[0, 2, 4] = 0.5, 0.25
    gt = np.zeros((1, 4, 5), dtype=bool)
    gt[0, :2, :2] = True  # 4 of 20 locations
    row = gap_statistics(f, p, gt, top_fraction=0.1).iloc[0]  # k = ceil(2.0) = 2 per map
    assert row.top_iou == pytest.approx(1 / 3)  # {00, 11} vs {00, 33}: 1 shared of 3
    assert row.f_dif_in_gt == pytest.approx(9.0 / 9.5)
    assert row.p_dif_in_gt == pytest.approx(3.0 / 5.25)
    assert row.gt_fraction == pytest.approx(4 / 20)
    assert row.f_dif_mean == pytest.approx(9.5 / 20) and row.p_dif_mean == pytest.approx(5.25 / 20)
    assert row.pearson == pytest.approx(stats.pearsonr(f.ravel(), p.ravel()).statistic)
    assert row.spearman == pytest.approx(stats.spearmanr(f.ravel(), p.ravel()).statistic)


def test_gap_statistics_equal_their_definitions_on_random_maps():
    rng = np.random.default_rng(0)
    f = rng.gamma(1.0, size=(6, 7, 9))
    p = np.round(rng.gamma(1.0, size=(6, 7, 9)) + 0.3 * f, 1)  # rounding makes ties
    gt = rng.random((6, 7, 9)) < 0.3
    frame = gap_statistics(torch.from_numpy(f), torch.from_numpy(p), torch.from_numpy(gt), top_fraction=0.2)
    k = math.ceil(0.2 * 63)
    for b in range(6):
        x, y = f[b].ravel(), p[b].ravel()
        row = frame.iloc[b]
        assert row.pearson == pytest.approx(stats.pearsonr(x, y).statistic, rel=1e-10)
        assert row.spearman == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-10)
        top_x = set(sorted(range(63), key=lambda i: (-x[i], i))[:k])
        top_y = set(sorted(range(63), key=lambda i: (-y[i], i))[:k])
        assert row.top_iou == pytest.approx(len(top_x & top_y) / len(top_x | top_y))
        m = gt[b].ravel()
        assert row.f_dif_in_gt == pytest.approx(x[m].sum() / x.sum())
        assert row.p_dif_in_gt == pytest.approx(y[m].sum() / y.sum())


def test_gap_statistics_edge_cases():
    same = np.arange(12.0).reshape(1, 3, 4)
    row = gap_statistics(same, same * 2).iloc[0]
    assert row.pearson == pytest.approx(1.0) and row.spearman == pytest.approx(1.0) and row.top_iou == 1.0
    assert math.isnan(row.f_dif_in_gt)  # no mask: shares undefined, not invented
    flat = gap_statistics(np.ones((2, 1, 1)), np.ones((2, 1, 1)), np.ones((2, 1, 1), dtype=bool))
    assert flat["pearson"].isna().all() and flat["spearman"].isna().all()  # a 1x1 level has no correlation
    assert flat["top_iou"].isna().all()  # ... and no hot spot to overlap
    zero = gap_statistics(np.zeros((1, 2, 2)), np.ones((1, 2, 2)), np.ones((1, 2, 2), dtype=bool)).iloc[0]
    assert math.isnan(zero.f_dif_in_gt) and zero.p_dif_in_gt == 1.0
    with pytest.raises(ValueError, match="shape"):
        gap_statistics(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)))


def test_fit_adapter_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(8, 3, generator=g), torch.randn(8, generator=g)
    s_feats = [torch.randn(2, 3, 6, 6, generator=g), torch.randn(2, 3, 3, 3, generator=g)]
    t_feats = [torch.einsum("oc,bchw->bohw", w, f) + b[None, :, None, None] for f in s_feats]
    conv = fit_adapter(s_feats, t_feats, ridge=1e-9)
    for s, t in zip(s_feats, t_feats):
        torch.testing.assert_close(conv(s), t, atol=1e-4, rtol=1e-4)
    # per level: each level its own map (here level 1 follows another map than level 0)
    w2 = torch.randn(8, 3, generator=g)
    t_feats[1] = torch.einsum("oc,bchw->bohw", w2, s_feats[1])
    convs = fit_adapter(s_feats, t_feats, ridge=1e-9, per_level=True)
    assert len(convs) == 2
    for conv, s, t in zip(convs, s_feats, t_feats):
        torch.testing.assert_close(conv(s), t, atol=1e-4, rtol=1e-4)


def test_size_class_uses_coco_edges():
    assert list(size_class([0, 32**2 - 1, 32**2, 96**2 - 1, 96**2, 1e6])) == ["small"] * 2 + ["medium"] * 2 + ["large"] * 2


# ---------------------------------------------------------------- kept anchors


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_kept_detections_equal_torchvision_and_name_their_anchor(family):
    torch.manual_seed(0)
    kw = ANCHORS if family == "retinanet" else {"image_size": 64}
    model = build_detector(family, "resnet18", K, fpn_channels=32, head_convs=1, **kw).eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    with torch.no_grad():
        dense = dense_forward(model, images)
    g = torch.Generator().manual_seed(1)  # spread the logits so many boxes pass the threshold
    dense.head_outputs["cls_logits"] = dense.head_outputs["cls_logits"] + 3 * torch.randn(dense.head_outputs["cls_logits"].shape, generator=g)
    ours = kept_detections(model, dense)
    # torchvision's own output, rescaled back to input pixels for comparison
    theirs = postprocess(model, dense)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert len(a["scores"]) > 5
        ratio = torch.tensor([dense.original_sizes[i][1] / dense.image_sizes[i][1], dense.original_sizes[i][0] / dense.image_sizes[i][0]] * 2)
        torch.testing.assert_close(a["boxes"] * ratio, b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])
        assert torch.equal(a["labels"], b["labels"])
        # each box is the decoding of its own anchor's regression
        reg = dense.head_outputs["bbox_regression"][i][a["anchor"]]
        anc = dense.anchors[i][a["anchor"]]
        decoded = model.box_coder.decode(reg, anc) if family == "fcos" else model.box_coder.decode_single(reg, anc)
        torch.testing.assert_close(box_ops.clip_boxes_to_image(decoded, dense.image_sizes[i]), a["boxes"])


# ---------------------------------------------------------------- collect


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    teacher = build_detector("retinanet", "resnet18", K, fpn_channels=64, head_convs=2, **ANCHORS).eval()
    student = build_detector("retinanet", "resnet18", K, fpn_channels=32, head_convs=1, **ANCHORS).eval()
    return teacher, student


@pytest.fixture
def tiny_val(tiny_data):
    return CocoDetection(tiny_data / "val", tiny_data / "annotations" / "val.json")


def test_collect_gives_one_row_per_gt_instance(tiny_pair, tiny_val):
    teacher, student = tiny_pair
    col = collect(teacher, student, eval_loader(tiny_val, 3), details=2, progress=False)
    inst = col.instances
    expected = [(int(t["image_id"]), j, int(l)) for _, t in (tiny_val[i] for i in range(len(tiny_val))) for j, l in enumerate(t["labels"])]
    assert list(zip(inst.image_id, inst.gt_index, inst.label)) == expected
    assert inst.instance_id.is_unique and col.images == len(tiny_val)
    assert set(inst["size"]) <= {"small", "medium", "large"} and inst["category"].map(str.isdigit).all()
    # n_candidates and the correlations agree with the detector's own assignment, instance by instance
    images, targets = zip(*(tiny_val[i] for i in range(3)))
    with torch.no_grad():
        t = dense_forward(teacher, list(images))
        s = dense_forward(student, list(images), list(targets))
    c = C.positive_candidates(s)
    ts, ss = C.candidate_scores(teacher, t, c, "cls"), C.candidate_scores(student, s, c, "cls")
    first = inst[inst.image_id.isin([int(x["image_id"]) for x in targets])]
    assert first.n_candidates.sum() == len(c.anchor)
    for row, inst_id in zip(first.itertuples(), sorted(set(c.instance.tolist()))):
        sel = c.instance == inst_id
        assert row.n_candidates == int(sel.sum())
        if sel.sum() >= 2:
            assert row.kendall_tau == pytest.approx(stats.kendalltau(ts[sel], ss[sel]).statistic, abs=1e-6)
    # levels: one row per image and FPN level; details for the first two images
    assert len(col.levels) == len(tiny_val) * 5 and list(col.levels.level[:5]) == [0, 1, 2, 3, 4]
    assert list(col.levels.stride[:5]) == [8, 16, 32, 64, 128]
    assert len(col.details) == 2
    d = next(iter(col.details.values()))
    assert set(d.candidates.instance_id) <= set(d.gt.instance_id) and len(d.gt) == (inst.image_id == d.image_id).sum()
    assert (d.candidates.groupby("instance_id").t_rank.min() == 1).all()
    assert set(d.kept.model) <= {"teacher", "student"} and len(d.maps) == 5
    assert d.maps[0]["f_dif"].shape == (8, 8)  # 64 px input, stride 8


def test_collect_of_a_model_with_itself_agrees_everywhere(tiny_pair, tiny_val):
    teacher, _ = tiny_pair
    col = collect(teacher, teacher, eval_loader(tiny_val, 4), adapter=None, progress=False)
    inst = col.instances
    multi = inst[inst.n_candidates >= 2]
    assert len(multi.kendall_tau.dropna()) > 3
    np.testing.assert_allclose(multi.kendall_tau.dropna(), 1.0)
    assert (multi.top1_agree == True).all()  # noqa: E712
    np.testing.assert_allclose(inst.t_top1_iou, inst.s_top1_iou)
    assert not inst.kept_anchor_differs.dropna().any()
    assert (col.levels.f_dif_mean == 0).all() and (col.levels.p_dif_mean == 0).all()
    s = summarize(col)
    assert s["kendall_tau"] == pytest.approx(1.0) and s["top1_agree"] == 1.0 and s["instances"] == len(inst)


def test_collect_needs_an_adapter_for_different_widths_and_a_paired_layout(tiny_pair, tiny_val):
    from rmkd.distill import PairingError

    teacher, student = tiny_pair
    with pytest.raises(ValueError, match="channels"):
        collect(teacher, student, eval_loader(tiny_val, 4), adapter=None, progress=False)
    other = build_detector("retinanet", "resnet18", K, fpn_channels=32, head_convs=1, **{**ANCHORS, "aspect_ratios": (1.0,)})
    with pytest.raises(PairingError, match="anchor"):
        collect(teacher, other, eval_loader(tiny_val, 4), progress=False)


# ---------------------------------------------------------------- training hook and rmkd analyze


def _final_weights(run):
    from rmkd.checkpoint import load_checkpoint

    return load_checkpoint(run / "last.pt")["model"]


def test_hook_logs_and_leaves_training_unchanged(tmp_path, tiny_overrides):
    from rmkd.run import distill, train

    teacher_dir = tmp_path / "teacher"
    train(load_config(None, tiny_overrides + ["train.max_steps=2"]), str(teacher_dir), progress=False)
    base = tiny_overrides + ["train.max_steps=4", f"distill.teacher={teacher_dir / 'last.pt'}", "model.fpn_channels=16"]
    distill(load_config(None, base), str(tmp_path / "plain"), progress=False)
    distill(load_config(None, base + ["analysis.every=2", "analysis.images=6"]), str(tmp_path / "hooked"), progress=False)
    records = [json.loads(line) for line in (tmp_path / "hooked" / "metrics.jsonl").read_text().splitlines()]
    analysis = [r for r in records if "analysis" in r]
    assert [r["step"] for r in analysis] == [0, 2, 4]
    assert {"kendall_tau", "top1_agree", "gap_pearson", "gap_top_iou"} <= set(analysis[0]["analysis"])
    assert -1 <= analysis[-1]["analysis"]["kendall_tau"] <= 1
    plain, hooked = _final_weights(tmp_path / "plain"), _final_weights(tmp_path / "hooked")
    assert all(torch.equal(plain[k], hooked[k]) for k in plain)  # measuring never changes the run


def test_analyze_writes_frames_figures_and_summary(tmp_path, tiny_overrides):
    from rmkd.cli import main
    from rmkd.run import distill, train

    train(load_config(None, tiny_overrides + ["train.max_steps=2"]), str(tmp_path / "t"), progress=False)
    train(load_config(None, tiny_overrides + ["train.max_steps=1", "model.fpn_channels=16"]), str(tmp_path / "s"), progress=False)
    kd = tiny_overrides + ["train.max_steps=1", "model.fpn_channels=16", f"distill.teacher={tmp_path / 't' / 'last.pt'}"]
    distill(load_config(None, kd), str(tmp_path / "kd"), progress=False)
    out = tmp_path / "analysis"
    code = main(
        ["analyze", "--teacher", str(tmp_path / "t" / "last.pt"), "--student", f"baseline={tmp_path / 's' / 'last.pt'}",
         "--student", f"RM+PFI={tmp_path / 'kd' / 'last.pt'}", "--out", str(out), "--details", "2", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    inst = pd.read_csv(out / "instances.csv")
    val_json = load_config(None, tiny_overrides).data.synth.out + "/annotations/val.json"
    n_gt = len(json.loads(open(val_json).read())["annotations"])
    assert list(inst.student.unique()) == ["baseline", "RM+PFI"]
    assert list(inst.groupby("student", sort=False).size()) == [n_gt, n_gt]
    levels = pd.read_csv(out / "levels.csv")
    assert set(levels.level) == {0, 1, 2, 3, 4}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["summary"]) == {"baseline", "RM+PFI"}
    text = (out / "summary.md").read_text()
    assert "RM+PFI vs baseline" in text and "Kendall tau" in text
    assert "| baseline | P3 |" in text and "| RM+PFI | P7 |" in text  # levels named by stride (this model: P3-P7)
    for png in ("tau_by_size.png", "gap_panels_baseline.png", "gap_panels_rm_pfi.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # a trained adapter is read back from the distilled checkpoint
    code = main(
        ["analyze", "--teacher", str(tmp_path / "t" / "last.pt"), "--student", str(tmp_path / "kd" / "last.pt"),
         "--set", "analysis.adapter=trained", "--out", str(tmp_path / "a2"), "--details", "0", "--no-progress"]
    )  # fmt: skip
    assert code == 0


def test_summary_names_levels_by_stride():
    """A P2-P6 detector's levels are P2..P6 in summary.md, not P3..P7 (the first level is stride 4)."""
    from rmkd.analysis.report import summary_markdown

    stats = dict.fromkeys(["pearson", "spearman", "top_iou", "f_dif_in_gt", "p_dif_in_gt", "gt_fraction"], 0.5)
    levels = pd.DataFrame([{"student": "s", "level": i, "stride": 4 * 2**i, **stats} for i in range(5)])
    instances = pd.DataFrame({"student": ["s"], "size": ["small"], "kendall_tau": [0.5]})
    summary = {"s": {k: 0.5 for k in ("kendall_tau", "top1_agree", "s_top1_iou", "kept_anchor_differs", "gap_pearson",
                                      "gap_top_iou", "f_dif_in_gt", "p_dif_in_gt", "gt_fraction")} | {"instances": 1, "images": 1}}
    text = summary_markdown(summary, instances, levels)
    assert [f"| s | P{l} |" in text for l in range(2, 8)] == [True] * 5 + [False]


def test_collect_works_for_fcos(tiny_val):
    torch.manual_seed(0)
    teacher = build_detector("fcos", "resnet18", K, fpn_channels=64, head_convs=1, image_size=64).eval()
    student = build_detector("fcos", "resnet18", K, fpn_channels=32, head_convs=1, image_size=64).eval()
    col = collect(teacher, student, eval_loader(tiny_val, 4), details=1, progress=False)
    n_gt = sum(len(tiny_val[i][1]["labels"]) for i in range(len(tiny_val)))
    assert len(col.instances) == n_gt and len(col.levels) == len(tiny_val) * 5
    assert (col.instances.n_candidates > 0).any()
    assert col.instances.kendall_tau.dropna().between(-1, 1).all()
    per_level = collect(teacher, student, eval_loader(tiny_val, 4), adapter="fit_per_level", progress=False)
    assert len(per_level.adapter) == 5 and per_level.levels.f_dif_mean.notna().all()
    with pytest.raises(ValueError, match="unknown adapter"):
        collect(teacher, student, eval_loader(tiny_val, 4), adapter="fitted", progress=False)


def test_figure2_pick_shows_the_largest_loss_of_a_differing_kept_anchor():
    """The README's Figure-2 example must show the observation: kept anchors differ and the student's
    kept box is the worse one, the worst such object among the drawable images."""
    from types import SimpleNamespace

    from rmkd.analysis.report import figure2_pick

    gt = pd.DataFrame({"gt_index": [0, 1]})
    details = {1: SimpleNamespace(gt=gt, image_id=1), 2: SimpleNamespace(gt=gt, image_id=2)}
    inst = pd.DataFrame({
        "image_id": [1, 1, 2, 2, 3],
        "gt_index": [0, 1, 0, 1, 0],
        "kept_anchor_differs": pd.array([True, False, True, pd.NA, True], dtype="boolean"),
        "t_kept_iou": [0.9, 0.9, 0.8, 0.9, 0.95],
        "s_kept_iou": [0.85, 0.1, 0.5, 0.1, 0.1],  # image 3 is not drawable; (1, 1) agrees; (2, 1) unknown
    })
    detail, gt_index = figure2_pick(SimpleNamespace(instances=inst, details=details))
    assert (detail.image_id, gt_index) == (2, 0)
    none_differ = inst.assign(kept_anchor_differs=pd.array([False] * 5, dtype="boolean"))
    detail, gt_index = figure2_pick(SimpleNamespace(instances=none_differ, details=details))
    assert (detail.image_id, gt_index) == (1, 0)
