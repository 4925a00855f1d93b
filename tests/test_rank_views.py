"""rmkd.rank_views: notebook 02's tables and figures equal float64 reference loops."""

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from scipy import stats

from rmkd import candidates as C
from rmkd import rank_views as rv
from rmkd.analysis import collect, summarize
from rmkd.analysis.cache import cached_collect, collect_key
from rmkd.analysis.collect import Collection
from rmkd.claims import paired_claims
from rmkd.data import CocoDetection, collate
from rmkd.data.loader import eval_loader
from rmkd.models import build_detector, dense_forward

K = 10
ANCHORS = dict(anchor_sizes=(12, 24, 48, 96, 160), scales_per_octave=2, aspect_ratios=(1.0, 1.5), image_size=64)


# ---------------------------------------------------------------- float64 references, one instance at a time


def softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(x, np.float64) / temperature
    e = np.exp(z - z.max())
    return e / e.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def rm_loop(t, s, ids, temperature=1.0) -> float:
    """RM by its definition: per instance KL(softmax(t/T) || softmax(s/T)), mean over instances."""
    t, s, ids = np.asarray(t, np.float64), np.asarray(s, np.float64), np.asarray(ids)
    return float(np.mean([kl(softmax(t[ids == m], temperature), softmax(s[ids == m], temperature)) for m in np.unique(ids)]))


def soft_label_loop(t, s) -> float:
    """Bernoulli KL per class, summed over classes, mean over anchors (T = 1)."""
    pt, ps = sigmoid(t), sigmoid(s)
    per = pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps))
    return float(per.reshape(len(pt), -1).sum(axis=1).mean())


def random_instances(seed=0, m=14, max_n=9):
    """Interleaved instances of 1..max_n candidates: ids [P] (shuffled, arbitrary values)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_n + 1, m)
    sizes[0] = 1  # always one single-candidate instance
    ids = np.repeat(rng.choice(1000, m, replace=False), sizes)
    return rng, ids[rng.permutation(len(ids))]


def scores(rng, p, k=3, scale=2.0, base=None) -> rv.CandidateScores:
    cls = rng.normal(0, scale, (p, k)) if base is None else base + rng.normal(0, scale, (p, k))
    logit = cls[:, 0]
    return rv.CandidateScores(prob=torch.tensor(sigmoid(logit)), logit=torch.tensor(logit), cls=torch.tensor(cls))


# ---------------------------------------------------------------- toy instances


def test_toy_students_keep_or_break_the_teachers_order():
    rng = np.random.default_rng(1)
    t = torch.tensor(rng.permutation(np.linspace(-3, 3, 7)))  # distinct, unsorted
    st = rv.toy_students(t)
    assert list(st) == ["copy", "shift -1", "scale x0.5", "swap top two", "reversed"]
    for name in ("copy", "shift -1", "scale x0.5"):
        assert stats.kendalltau(t, st[name]).statistic == pytest.approx(1.0)
    torch.testing.assert_close(st["shift -1"], t - 1)
    torch.testing.assert_close(st["scale x0.5"], t / 2)
    first, second = np.argsort(-t.numpy())[:2]
    swap = st["swap top two"].numpy()
    changed = np.flatnonzero(swap != t.numpy())
    assert sorted(changed) == sorted([first, second])
    assert swap[first] == t[second] and swap[second] == t[first]
    assert stats.kendalltau(t, st["reversed"]).statistic == pytest.approx(-1.0)
    assert sorted(st["reversed"].tolist()) == sorted(t.tolist())  # the same values, handed out upside down
    with pytest.raises(ValueError, match="n >= 2"):
        rv.toy_students(torch.tensor([1.0]))


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_toy_table_equals_its_definitions(temperature):
    rng = np.random.default_rng(2)
    t = torch.tensor(rng.normal(0, 2, 6))
    students = {f"s{i}": torch.tensor(rng.normal(0, 2, 6)) for i in range(4)} | {"copy": t.clone()}
    table = rv.toy_table(t, students, temperature)
    tag = f"T={temperature:g}"
    assert list(table.index) == list(students)
    for name, s in students.items():
        row = table.loc[name]
        tn, sn = t.numpy(), s.numpy()
        assert row[f"RM logits {tag}"] == pytest.approx(rm_loop(tn, sn, np.zeros(6), temperature), rel=1e-9, abs=1e-15)
        assert row[f"RM probs {tag}"] == pytest.approx(rm_loop(sigmoid(tn), sigmoid(sn), np.zeros(6), temperature),
                                                       rel=1e-9, abs=1e-15)
        assert row["soft-label KD"] == pytest.approx(soft_label_loop(tn[:, None], sn[:, None]), rel=1e-9, abs=1e-15)
        assert row["kendall_tau"] == pytest.approx(stats.kendalltau(tn, sn).statistic)
        assert row["same top-1"] == (np.argmax(tn) == np.argmax(sn))
    assert table.loc["copy", f"RM probs {tag}"] == 0 and table.loc["copy", "soft-label KD"] == 0


def test_the_lessons_toy_swap_costs_less_than_the_shift_in_probabilities_only():
    t = torch.tensor(rv.TOY_TEACHER)
    table = rv.toy_table(t, rv.toy_students(t))
    cmp = rv.compare_rows(table, "swap top two", "shift -1", ["RM logits T=1", "RM probs T=1", "soft-label KD"])
    swap, shift = rv.toy_students(t)["swap top two"].numpy(), (t - 1).numpy()
    expect_prob = rm_loop(sigmoid(t), sigmoid(swap), np.zeros(5)) / rm_loop(sigmoid(t), sigmoid(shift), np.zeros(5))
    assert cmp.loc["RM probs T=1", "swap top two / shift -1"] == pytest.approx(expect_prob, rel=1e-9)
    assert cmp.loc["RM probs T=1", "costlier"] == "shift -1" and expect_prob < 1 / 50
    assert cmp.loc["RM logits T=1", "costlier"] == "swap top two"  # a shift is free for a softmax of logits
    assert cmp.loc["RM logits T=1", "shift -1"] == pytest.approx(0.0, abs=1e-15)


def test_compare_rows_ratios_and_zeros():
    table = pd.DataFrame({"x": [2.0, 0.0, 0.0], "y": [1.0, 4.0, 4.0]}, index=["a", "b", "c"])
    out = rv.compare_rows(table, "a", "b", ["x", "y"])
    assert out.loc["x", "a / b"] == math.inf and out.loc["x", "costlier"] == "a"
    assert out.loc["y", "a / b"] == pytest.approx(0.25) and out.loc["y", "costlier"] == "b"
    same = rv.compare_rows(table, "b", "c", ["x", "y"])
    assert math.isnan(same.loc["x", "b / c"]) and same.loc["x", "costlier"] == "equal"
    assert same.loc["y", "b / c"] == 1.0 and same.loc["y", "costlier"] == "equal"


def test_temperature_sweep_equals_rm_at_each_temperature():
    rng = np.random.default_rng(3)
    t, s = rng.normal(0, 2, 5), rng.normal(0, 2, 5)
    temps = [1.0, 0.5, 0.1, 0.05]
    sweep = rv.temperature_sweep(torch.tensor(t), torch.tensor(s), temps)
    assert list(sweep.index) == temps
    for x in temps:
        assert sweep.loc[x, "RM logits"] == pytest.approx(rm_loop(t, s, np.zeros(5), x), rel=1e-9)
        assert sweep.loc[x, "RM probs"] == pytest.approx(rm_loop(sigmoid(t), sigmoid(s), np.zeros(5), x), rel=1e-9)


def test_plot_temperature_draws_the_rank_distributions_and_the_sweep():
    t = torch.tensor(rv.TOY_TEACHER)
    sweep = rv.temperature_sweep(t, rv.toy_students(t)["swap top two"], [1.0, 0.1])
    fig = rv.plot_temperature(t, sweep)
    assert isinstance(fig, Figure)
    left, right = fig.axes
    bars = left.containers
    assert [c.get_label() for c in bars] == ["probs, T=1", "probs, T=0.1", "logits, T=1"]
    expected = [softmax(sigmoid(t.numpy())), softmax(sigmoid(t.numpy()), 0.1), softmax(t.numpy())]
    for container, r in zip(bars, expected):
        np.testing.assert_allclose([b.get_height() for b in container], r, rtol=1e-12)
    lines = {line.get_label(): line for line in right.get_lines()}
    np.testing.assert_allclose(lines["RM probs"].get_ydata(), sweep["RM probs"].to_numpy())
    np.testing.assert_allclose(lines["RM logits"].get_ydata(), sweep["RM logits"].to_numpy())
    assert "unitless" in left.get_ylabel() and "nats" in right.get_ylabel() and "temperature" in right.get_xlabel()
    assert right.get_xscale() == "log" and left.get_legend() is not None and right.get_legend() is not None


# ---------------------------------------------------------------- one batch


def test_rm_table_equals_per_instance_loops():
    rng, ids = random_instances(seed=4)
    p = len(ids)
    teacher = scores(rng, p)
    models = {"teacher": teacher, "near": scores(rng, p, scale=0.5, base=teacher.cls.numpy()), "far": scores(rng, p)}
    table = rv.rm_table(models, torch.tensor(ids), temperatures=(1.0, 0.1))
    assert list(table.index) == ["teacher", "near", "far"]
    t = rv.CandidateScores(*(x.numpy() for x in (teacher.prob, teacher.logit, teacher.cls)))
    multi = [m for m in np.unique(ids) if (ids == m).sum() >= 2]
    for name, s in models.items():
        s = rv.CandidateScores(*(x.numpy() for x in (s.prob, s.logit, s.cls)))
        row = table.loc[name]
        assert row["RM probs T=1"] == pytest.approx(rm_loop(t.prob, s.prob, ids), rel=1e-9, abs=1e-15)
        assert row["RM probs T=0.1"] == pytest.approx(rm_loop(t.prob, s.prob, ids, 0.1), rel=1e-9, abs=1e-15)
        assert row["RM logits T=1"] == pytest.approx(rm_loop(t.logit, s.logit, ids), rel=1e-9, abs=1e-15)
        assert row["soft-label KD (candidate anchors)"] == pytest.approx(soft_label_loop(t.cls, s.cls), rel=1e-9, abs=1e-15)
        taus = [stats.kendalltau(t.prob[ids == m], s.prob[ids == m]).statistic for m in multi]
        assert row["mean Kendall tau"] == pytest.approx(np.nanmean(taus), rel=1e-12)
        top1 = [np.argmax(t.prob[ids == m]) == np.argmax(s.prob[ids == m]) for m in multi]
        assert row["top-1 agreement"] == pytest.approx(np.mean(top1))
    assert table.loc["teacher"].drop(["mean Kendall tau", "top-1 agreement"]).abs().max() == 0
    assert table.loc["near", "mean Kendall tau"] > table.loc["far", "mean Kendall tau"]


def test_anchor_levels_follow_the_per_level_counts():
    per_level = [16, 4, 1]
    anchors = torch.tensor([0, 15, 16, 19, 20, 3])
    names = ["P2", "P3", "P4"]
    expected = []
    for a in anchors.tolist():
        edge = 0
        for name, count in zip(names, per_level):
            if a < edge + count:
                expected.append(name)
                break
            edge += count
    assert rv.anchor_levels(anchors, per_level, names).tolist() == expected
    with pytest.raises(ValueError, match="beyond"):
        rv.anchor_levels(torch.tensor([21]), per_level, names)


def fake_batch(seed=5) -> rv.BatchCandidates:
    rng, ids = random_instances(seed=seed)
    p = len(ids)
    cand = C.Candidates(batch=torch.tensor(ids % 3), anchor=torch.tensor(rng.choice(400, p, replace=False)),
                        gt=torch.tensor(ids % 7), instance=torch.tensor(ids), label=torch.tensor(ids % K + 1),
                        gt_box=torch.zeros(p, 4))
    teacher = scores(rng, p)
    models = {"teacher": teacher, "baseline": scores(rng, p), "RM": scores(rng, p, scale=0.3, base=teacher.cls.numpy())}
    return rv.BatchCandidates(cand=cand, scores=models, levels=rv.anchor_levels(cand.anchor, [256, 128, 16], ["P2", "P3", "P4"]),
                              level_order=["P2", "P3", "P4"], same_assignment=True, image_ids=[10, 11, 12], gt_boxes=14)


def test_instance_view_ranks_equal_a_sort_of_each_models_scores():
    batch = fake_batch()
    ids = batch.cand.instance.numpy()
    counts = {m: (ids == m).sum() for m in np.unique(ids)}
    biggest = min(m for m, c in counts.items() if c == max(counts.values()))  # torch.unique order: smallest id first
    view = rv.instance_view(batch)
    assert view.attrs["instance"] == biggest and len(view) == counts[biggest]
    mask = ids == biggest
    assert set(view.index) == set(batch.cand.anchor.numpy()[mask])
    assert view.attrs["image_id"] == batch.image_ids[int(batch.cand.batch.numpy()[mask][0])]
    for name, s in batch.scores.items():
        anchors, logits = batch.cand.anchor.numpy()[mask], s.logit.numpy()[mask]
        order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))
        expected = {int(anchors[i]): r + 1 for r, i in enumerate(order)}
        assert view[f"{name} rank"].to_dict() == expected
        assert view[f"{name} prob"].to_dict() == pytest.approx(dict(zip(anchors.tolist(), s.prob.numpy()[mask])))
    assert view["teacher rank"].tolist() == list(range(1, len(view) + 1))  # sorted by the teacher
    assert view["level"].to_dict() == dict(zip(batch.cand.anchor.numpy()[mask].tolist(), batch.levels[mask]))
    other = rv.instance_view(batch, instance=int(ids[0]))
    assert other.attrs["instance"] == int(ids[0]) and len(other) == (ids == ids[0]).sum()
    with pytest.raises(ValueError, match="no candidate"):
        rv.instance_view(batch, instance=-5)


def test_plot_instance_ranks_draws_each_models_softmax():
    view = rv.instance_view(fake_batch())
    fig = rv.plot_instance_ranks(view, temperature=0.5)
    left, right = fig.axes[:2]
    for ax, space in ((left, "prob"), (right, "logit")):
        assert [c.get_label() for c in ax.containers] == ["teacher", "baseline", "RM"]
        for container, model in zip(ax.containers, ["teacher", "baseline", "RM"]):
            heights = [b.get_height() for b in container]
            np.testing.assert_allclose(heights, softmax(view[f"{model} {space}"].to_numpy(), 0.5), rtol=1e-12)
        labels = [tick.get_text() for tick in ax.get_xticklabels()]
        assert labels == [f"{lv} #{a}" for a, lv in zip(view.index, view["level"])]
        assert "unitless" in ax.get_ylabel() and "FPN level" in ax.get_xlabel()
    assert {t.get_text() for t in fig.legends[0].get_texts()} >= {"teacher", "baseline", "RM"}


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    teacher = build_detector("retinanet", "resnet18", K, fpn_channels=64, head_convs=2, min_level=2, **ANCHORS).eval()
    students = {name: build_detector("retinanet", "resnet18", K, fpn_channels=32, head_convs=1, min_level=2, **ANCHORS).eval()
                for name in ("a", "b")}
    return teacher, students


@pytest.fixture
def tiny_val(tiny_data):
    return CocoDetection(tiny_data / "val", tiny_data / "annotations" / "val.json")


def test_batch_candidates_reads_the_library_scores_and_names_levels_by_stride(tiny_models, tiny_val):
    teacher, students = tiny_models
    images, targets = collate([tiny_val[i] for i in range(4)])
    batch = rv.batch_candidates(teacher, students, images, targets)
    with torch.no_grad():
        t = dense_forward(teacher, images)
        s = dense_forward(students["a"], images, targets)
    cand = C.positive_candidates(s)
    torch.testing.assert_close(batch.cand.anchor, cand.anchor)
    torch.testing.assert_close(batch.cand.instance, cand.instance)
    assert list(batch.scores) == ["teacher", "a", "b"] and batch.same_assignment
    for space in ("prob", "logit"):
        torch.testing.assert_close(getattr(batch.scores["teacher"], space), C.candidate_scores(teacher, t, cand, "cls", space))
        torch.testing.assert_close(getattr(batch.scores["a"], space), C.candidate_scores(students["a"], s, cand, "cls", space))
    torch.testing.assert_close(batch.scores["a"].cls, s.cls_flat[cand.batch, cand.anchor])
    assert batch.level_order == ["P2", "P3", "P4", "P5", "P6"]  # min_level=2: never "3 + index"
    edges = np.cumsum(s.anchors_per_level)
    assert batch.levels.tolist() == [f"P{2 + int(np.searchsorted(edges, a, side='right'))}" for a in cand.anchor.tolist()]
    assert batch.image_ids == [int(x["image_id"]) for x in targets]
    assert batch.gt_boxes == sum(len(x["labels"]) for x in targets)
    assert f"P = {len(cand.anchor)} candidates" in batch.describe()


# ---------------------------------------------------------------- the val split


def test_cached_collect_computes_once_and_misses_on_other_weights_or_images(tiny_models, tiny_val, tmp_path):
    teacher, students = tiny_models
    first, hit = cached_collect(teacher, students["a"], tiny_val, cache_dir=tmp_path, batch_size=4)
    assert not hit and len(list(tmp_path.glob("*.pkl"))) == 1
    again, hit = cached_collect(teacher, students["a"], tiny_val, cache_dir=tmp_path, batch_size=4)
    assert hit
    fresh = collect(teacher, students["a"], eval_loader(tiny_val, 4), progress=False)
    pd.testing.assert_frame_equal(again.instances, fresh.instances)
    pd.testing.assert_frame_equal(again.levels, fresh.levels)
    assert again.seconds == first.seconds  # the time of the computation that filled the cache
    _, hit = cached_collect(teacher, students["b"], tiny_val, cache_dir=tmp_path, batch_size=4)
    assert not hit  # other weights, same architecture
    subset = torch.utils.data.Subset(tiny_val, range(5))
    part, hit = cached_collect(teacher, students["a"], subset, cache_dir=tmp_path, batch_size=4)
    assert not hit and part.images == 5
    key = collect_key(teacher, students["a"], tiny_val, batch_size=4, details=0)
    assert key != collect_key(teacher, students["a"], tiny_val, batch_size=4, details=2)
    with pytest.raises(ValueError, match="string"):
        cached_collect(teacher, students["a"], tiny_val, cache_dir=tmp_path, adapter=torch.nn.Identity())


def test_rank_summary_is_summarize_with_changes():
    rng = np.random.default_rng(6)

    def fake(tau_shift):
        n = 20
        inst = pd.DataFrame({
            "n_candidates": rng.integers(1, 6, n), "kendall_tau": rng.uniform(-1, 1, n) + tau_shift,
            "spearman_rho": rng.uniform(-1, 1, n), "top1_agree": pd.array(rng.random(n) < 0.5, dtype="boolean"),
            "t_top1_iou": rng.random(n), "s_top1_iou": rng.random(n), "s_best_iou": rng.random(n),
            "kept_anchor_differs": pd.array(rng.random(n) < 0.5, dtype="boolean"),
        })
        levels = pd.DataFrame({c: [0.1] for c in ("pearson", "spearman", "top_iou", "f_dif_in_gt", "p_dif_in_gt",
                                                   "gt_fraction")} | {"height": [4], "width": [4]})
        return Collection(instances=inst, levels=levels)

    cols = {"baseline": fake(0.0), "RM": fake(0.2), "PFI": fake(0.1)}
    side = rv.rank_summary(cols)
    assert list(side.index) == list(rv.RANK_KEYS)
    assert list(side.columns) == ["baseline", "RM", "PFI", "RM - baseline", "PFI - baseline"]
    for name, col in cols.items():
        expected = summarize(col)
        for key in rv.RANK_KEYS:
            assert side.loc[key, name] == pytest.approx(expected[key])
    for key in rv.RANK_KEYS:
        assert side.loc[key, "RM - baseline"] == pytest.approx(summarize(cols["RM"])[key] - summarize(cols["baseline"])[key])


# ---------------------------------------------------------------- the paper says / we measured


def study_frame() -> pd.DataFrame:
    rows = []
    ap = {"baseline": 20.0, "rm": 21.0, "soft_label": 29.0, "rm_iou": 21.5, "rm_cls_iou": 22.0}
    for seed, shift in enumerate([0.0, -3.0, 2.0]):
        for method, value in ap.items():
            rows.append({"method": method, "seed": seed, "AP": value + shift + 0.1 * seed * (method == "rm"),
                         "rank_tau": np.nan, "rule": "loss_value_v1"})
    return pd.DataFrame(rows)


def test_paper_vs_measured_quotes_the_numbers_and_the_verdicts():
    study = study_frame()
    claims = paired_claims(study)
    summary = pd.DataFrame({"baseline": {"instances": 120, "kendall_tau": 0.41, "top1_agree": 0.34, "kept_anchor_differs": 0.7},
                            "RM": {"instances": 120, "kendall_tau": 0.45, "top1_agree": 0.36, "kept_anchor_differs": 0.6}})
    summary["RM - baseline"] = summary["RM"] - summary["baseline"]
    t = torch.tensor(rv.TOY_TEACHER)
    sweep = rv.temperature_sweep(t, rv.toy_students(t)["swap top two"], [1.0, 0.1])
    frame = rv.paper_vs_measured(summary, claims, study, sweep)
    assert list(frame.index) == ["rank discrepancy", "RM improves rank agreement", "RM improves AP",
                                 "RM beats soft-label KD", "rank by cls, not IoU", "temperature"]
    measured, verdict = frame["we measured"], frame["verdict"]
    assert "0.410" in measured["rank discrepancy"] and "34%" in measured["rank discrepancy"] and "70%" in measured["rank discrepancy"]
    assert "+0.040" in measured["RM improves rank agreement"]
    assert "no rank_tau" in verdict["RM improves rank agreement"]
    by_claim = claims.set_index("claim")
    rm = by_claim.loc["RM beats the baseline"]
    assert f"{rm.mean_diff:+.2f} AP" in measured["RM improves AP"] and f"{rm.n} seeds" in measured["RM improves AP"]
    assert verdict["RM improves AP"] == f"RM beats the baseline: {rm.verdict} (docs/results/ablation.md)"
    assert verdict["RM beats soft-label KD"] == (f"RM beats soft-label KD: {by_claim.loc['RM beats soft-label KD'].verdict}"
                                                 " (docs/results/ablation.md)")
    assert verdict["rank by cls, not IoU"].count(": undecided") + verdict["rank by cls, not IoU"].count(": supported") == 2
    assert "no verdict" in verdict["rank discrepancy"]
    factor = sweep.loc[0.1, "RM probs"] / sweep.loc[1.0, "RM probs"]
    assert f"{factor:.0f}x" in measured["temperature"] and "0 paired seed(s)" in measured["temperature"]
    assert "undecided" in verdict["temperature"]
    text = rv.markdown_table(frame)
    assert "did not hold" not in text.lower()
    assert "loss_value_v1" in text and text.count("\n| ") == len(frame)  # one line per row after the header
    study["rank_tau"] = np.where(study.method == "rm", 0.5, 0.4)
    assert "rm 0.500" in rv.paper_vs_measured(summary, claims, study).loc["RM improves rank agreement", "verdict"]


def test_markdown_table_escapes_pipes_and_keeps_the_index():
    frame = pd.DataFrame({"a|b": ["x|y"], "c": [1.5]}, index=pd.Index(["row"], name="name"))
    lines = rv.markdown_table(frame).splitlines()
    assert lines[0] == "| name | a\\|b | c |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| row | x\\|y | 1.5 |"


def test_study_run_problem_names_what_is_missing(tmp_path):
    from rmkd.checkpoint import save_checkpoint
    from rmkd.config import Config

    teacher = tmp_path / "teacher.pt"
    save_checkpoint({"model": {"w": torch.zeros(2)}}, teacher)
    twin = tmp_path / "twin.pt"
    twin.write_bytes(teacher.read_bytes())  # the same teacher under another name
    other = tmp_path / "other.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}}, other)
    run = tmp_path / "rm" / "last.pt"
    assert "no run at" in rv.study_run_problem(str(run), str(teacher))

    def write_run(teacher_path, steps_done):
        cfg = Config()
        cfg.train.max_steps = 40
        cfg.distill.teacher = str(teacher_path)
        save_checkpoint({"model": {}, "config": cfg.to_dict()}, run)
        (run.parent / "metrics.json").write_text(f'{{"step": {steps_done}, "AP": 1.0}}')

    write_run(teacher, 20)
    assert "not finished its 40 steps" in rv.study_run_problem(str(run), str(teacher))
    write_run(teacher, 40)
    assert rv.study_run_problem(str(run), str(teacher)) is None
    assert rv.study_run_problem(str(run), str(twin)) is None
    assert "another teacher" in rv.study_run_problem(str(run), str(other))
    write_run(tmp_path / "gone.pt", 40)
    assert "is not here" in rv.study_run_problem(str(run), str(teacher))

    # the first usable run of several places wins; when none is usable, every reason is named
    missing = str(tmp_path / "nowhere" / "last.pt")
    write_run(teacher, 40)
    assert rv.rm_only_run(str(teacher), [missing, str(run)]) == (str(run), "")
    assert rv.rm_only_run(str(other), [missing, str(run)]) == (None, f"no run at {missing}; `rmkd reproduce --methods rm --seeds 0` trains it; "
                                                              f"it was distilled from {teacher}, another teacher than {other}")


def test_paper_vs_measured_says_n_a_for_what_could_not_be_measured():
    summary = pd.DataFrame({"baseline": {"instances": 3, "kendall_tau": 0.2, "top1_agree": 0.5,
                                         "kept_anchor_differs": np.nan}})
    frame = rv.paper_vs_measured(summary, paired_claims(study_frame()))
    assert "another anchor n/a" in frame.loc["rank discrepancy", "we measured"] and "nan" not in rv.markdown_table(frame)
    assert frame.loc["RM improves rank agreement", "we measured"] == "no distilled student beside the baseline"


def test_paper_vs_measured_takes_the_per_object_verdicts_when_given():
    summary = pd.DataFrame({"baseline": {"instances": 9, "kendall_tau": 0.3, "top1_agree": 0.5, "kept_anchor_differs": 0.4},
                            "RM": {"instances": 9, "kendall_tau": 0.5, "top1_agree": 0.6, "kept_anchor_differs": 0.3}})
    summary["RM - baseline"] = summary["RM"] - summary["baseline"]
    observations = pd.DataFrame({"we measured": {"rank discrepancy": "tau 0.300 [0.2, 0.4]", "RM aligns ranks": "+0.2 [0.1, 0.3]"},
                                 "verdict": {"rank discrepancy": "seen", "RM aligns ranks": "undecided"}})
    frame = rv.paper_vs_measured(summary, paired_claims(study_frame()), observations=observations)
    assert frame.loc["rank discrepancy", "we measured"] == "tau 0.300 [0.2, 0.4]"
    assert frame.loc["rank discrepancy", "verdict"].startswith("seen (")
    agree = frame.loc["RM improves rank agreement"]
    assert "+0.200" in agree["we measured"] and "per object: +0.2 [0.1, 0.3]" in agree["we measured"]
    assert agree["verdict"].startswith("undecided (") and "the study: not measured" in agree["verdict"]
