"""Faults and bad inputs end to end: each case of docs/RELIABILITY.md that is not a pure
data or config check (those live in test_data.py / test_config.py / test_checkpoint.py).

Unreadable images, non-finite losses, a teacher at chance or with damaged weights, and the
invariants a distillation must keep (teacher untouched, same seed -> same result).
"""

import json
import shutil
import warnings

import pytest
import torch

import rmkd.engine
import rmkd.run
from rmkd.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rmkd.cli import main
from rmkd.config import ConfigError, load_config
from rmkd.data import BadImageError, CocoDetection, collate
from rmkd.engine import NonFiniteLossError
from rmkd.evaluate import coco_map
from rmkd.run import distill, train


@pytest.fixture
def coco_copy(tiny_data, tmp_path):
    """The tiny digits set copied as plain COCO data; returns (root, --set pairs that read it)."""
    root = tmp_path / "coco"
    shutil.copytree(tiny_data, root)
    sets = ["data.source=coco"] + [
        f"data.{s}.{k}={root / v}" for s in ("train", "val") for k, v in (("images", s), ("annotations", f"annotations/{s}.json"))
    ]
    return root, sets


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


# ---------------------------------------------------------------- unreadable images


@pytest.mark.parametrize("damage", ["truncated", "not_an_image", "missing"])
def test_unreadable_image_is_an_error_naming_the_file(coco_copy, damage):
    root, _ = coco_copy
    path = root / "val" / "000002.png"
    if damage == "truncated":
        _truncate(path)
    elif damage == "not_an_image":
        path.write_text("<html>404 not found</html>")
    else:
        path.unlink()
    ds = CocoDetection(root / "val", root / "annotations" / "val.json")
    ds[0]  # the others still load
    with pytest.raises(BadImageError, match=r"000002\.png.*data\.bad_images=skip"):
        ds[2]


def test_skip_mode_warns_names_counts_and_collate_leaves_the_image_out(coco_copy):
    root, _ = coco_copy
    _truncate(root / "val" / "000002.png")
    (root / "val" / "000005.png").unlink()
    ds = CocoDetection(root / "val", root / "annotations" / "val.json", bad_images="skip")
    with pytest.warns(UserWarning, match=r"000002\.png.*skipped.*1 so far"):
        assert ds[2] is None
    with pytest.warns(UserWarning, match=r"000005\.png.*2 so far"):
        batch = [ds[i] for i in range(len(ds))]
    images, targets = collate(batch)
    assert len(images) == len(targets) == len(ds) - 2
    assert [t["image_id"] for t in targets] == [i for i in ds.ids if i not in (ds.ids[2], ds.ids[5])]
    assert sorted(ds.skipped) == sorted(str(root / "val" / n) for n in ("000002.png", "000005.png"))
    with pytest.raises(ValueError, match="bad_images"):
        CocoDetection(root / "val", root / "annotations" / "val.json", bad_images="ignore")


def test_cli_stops_on_a_truncated_image_with_one_line(coco_copy, tiny_overrides, tmp_path, capsys):
    root, sets = coco_copy
    _truncate(root / "train" / "000003.png")
    argv = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--set", *tiny_overrides, *sets, "train.max_steps=3"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "000003.png" in err and "bad_images=skip" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_cli_stops_on_a_truncated_image_inside_a_dataloader_worker(coco_copy, tiny_overrides, tmp_path, capsys):
    root, sets = coco_copy
    _truncate(root / "val" / "000001.png")
    argv = ["eval", "--checkpoint", str(_tiny_checkpoint(tmp_path, tiny_overrides)), "--no-progress", "--set", *sets, "data.workers=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "000001.png" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_skipped_images_train_on_and_still_count_in_evaluation(coco_copy, tiny_overrides, tmp_path):
    root, sets = coco_copy
    _truncate(root / "train" / "000003.png")
    _truncate(root / "val" / "000001.png")
    cfg = load_config(None, tiny_overrides + sets + ["train.max_steps=3", "data.bad_images=skip"])
    with pytest.warns(UserWarning, match="000001.png"):
        metrics = train(cfg, str(tmp_path / "run"), progress=False)
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())["train_summary"]
    assert summary["skipped_images"] == 2
    detections = json.loads((tmp_path / "run" / "detections.json").read_text())
    assert 2 not in {d["image_id"] for d in detections}  # the unreadable val image (id 2) has no detections ...
    # ... but its objects are in the ground truth the AP was computed against (they count as missed)
    full = coco_map(str(root / "annotations" / "val.json"), detections)
    assert metrics["AP"] == pytest.approx(full["AP"], nan_ok=True)


# ---------------------------------------------------------------- non-finite losses


def _nan_at(monkeypatch, calls):
    """Make the detector's loss NaN on the given (1-based) forward calls."""
    real = rmkd.engine.DetectionLoss.forward
    count = {"n": 0}

    def forward(self, images, targets):
        count["n"] += 1
        losses = real(self, images, targets)
        if count["n"] in calls:
            losses["classification"] = losses["classification"] * float("nan")
        return losses

    monkeypatch.setattr(rmkd.engine.DetectionLoss, "forward", forward)


def test_nonfinite_loss_stops_with_the_terms_and_keeps_the_last_good_checkpoint(tiny_overrides, tmp_path, monkeypatch):
    cfg = load_config(None, tiny_overrides + ["train.max_steps=6"])
    straight = tmp_path / "straight"
    train(load_config(None, tiny_overrides + ["train.max_steps=6"]), str(straight), progress=False)
    _nan_at(monkeypatch, {5})
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"step 5: classification=nan.*last\.pt \(step 4\)") as e:
        train(cfg, str(run), progress=False)
    assert "bbox_regression=" in str(e.value) and "train.nonfinite=skip" in str(e.value)
    kept = load_checkpoint(run / "last.pt")
    assert kept["step"] == 4 and not (run / "metrics.json").exists()
    # the kept checkpoint is a good one: resuming it reproduces the uninterrupted run
    monkeypatch.undo()
    train(cfg, str(run), resume=True, progress=False)
    a, b = load_checkpoint(straight / "last.pt")["model"], load_checkpoint(run / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_skip_option_skips_and_counts_then_gives_up(tiny_overrides, tmp_path, monkeypatch):
    cfg = load_config(None, tiny_overrides + ["train.max_steps=4", "train.nonfinite=skip"])
    _nan_at(monkeypatch, {2})
    with pytest.warns(UserWarning, match=r"step 2: classification=nan.*skipped"):
        train(cfg, str(tmp_path / "skip"), progress=False)
    final = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert final["step"] == 4 and final["train_summary"]["skipped_steps"] == 1
    steps = [json.loads(l)["step"] for l in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert steps == [1, 3, 4]  # nothing logged for the skipped step
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "skip" / "last.pt")["model"].values())

    monkeypatch.undo()
    cfg = load_config(None, tiny_overrides + ["train.max_steps=30", "train.nonfinite=skip", "train.checkpoint_every=100"])
    _nan_at(monkeypatch, set(range(3, 100)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NonFiniteLossError, match=rf"step 12 \({rmkd.engine.MAX_SKIPPED_IN_A_ROW} in a row\)"):
            train(cfg, str(tmp_path / "diverged"), progress=False)


def test_cli_reports_a_nonfinite_loss_on_one_line(tiny_overrides, tmp_path, monkeypatch, capsys):
    _nan_at(monkeypatch, {1})
    assert main(["train", "--out", str(tmp_path / "r"), "--no-progress", "--set", *tiny_overrides, "train.max_steps=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "non-finite loss at step 1" in err and "none yet" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- the teacher


def _tiny_checkpoint(tmp_path, tiny_overrides, steps=2, name="teacher", extra=()):
    out = tmp_path / name
    if not (out / "metrics.json").exists():
        train(load_config(None, tiny_overrides + [f"train.max_steps={steps}", *extra]), str(out), progress=False)
    return out / "last.pt"


def test_teacher_at_chance_is_warned_about_once_per_fresh_run(tiny_overrides, tmp_path, monkeypatch):
    teacher = _tiny_checkpoint(tmp_path, tiny_overrides)  # 2 steps: at chance
    cfg = load_config(None, tiny_overrides + ["train.max_steps=2", f"distill.teacher={teacher}"])
    with pytest.warns(UserWarning, match=rf"teacher {teacher} scores AP50 \d+\.\d\d on the first 8 validation images, at chance"):
        distill(cfg, str(tmp_path / "kd"), progress=False)
    records = [json.loads(l) for l in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    checks = [r for r in records if "teacher" in r]
    assert len(checks) == 1 and checks[0]["step"] == 0 and checks[0]["teacher"]["AP50"] < rmkd.run.TEACHER_CHANCE_AP50
    # a teacher that evaluates above chance passes without a warning (its evaluation faked here)
    real = rmkd.engine.evaluate
    monkeypatch.setattr(rmkd.engine, "evaluate", lambda *a, **k: ({**real(*a, **k)[0], "AP50": 0.4}, []))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rmkd.run.check_teacher(load_checkpoint_model(teacher), str(teacher), _val(cfg), cfg, "cpu", lambda *a, **k: None)
    # and the check can be switched off
    monkeypatch.undo()
    cfg.distill.check_teacher = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distill(cfg, str(tmp_path / "kd2"), progress=False)


def load_checkpoint_model(path):
    return rmkd.run.load_model(str(path))[0]


def _val(cfg):
    return rmkd.run.build_datasets(cfg, progress=False, train=False)[1]


def test_teacher_with_damaged_weights_is_a_clear_error(tiny_overrides, tmp_path, capsys):
    state = load_checkpoint(_tiny_checkpoint(tmp_path, tiny_overrides))
    first = next(iter(state["model"]))
    del state["model"][first]
    save_checkpoint({k: v for k, v in state.items() if k != "rmkd_checkpoint"}, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=rf"edited\.pt.*do not fit.*{first}"):
        rmkd.run.load_model(str(tmp_path / "edited.pt"))
    argv = ["distill", "--teacher", str(tmp_path / "edited.pt"), "--out", str(tmp_path / "kd"), "--no-progress"]
    assert main(argv + ["--set", *tiny_overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert "edited.pt" in err and len(err.splitlines()) == 1


def test_distillation_leaves_the_teacher_bit_identical_and_repeats_exactly(tiny_overrides, tmp_path, monkeypatch):
    """Teacher weights and BN buffers after 6 steps with checkpoints, evaluation and the analysis
    hook equal the file's; the same seed twice gives the same student and the same metrics."""
    teacher_ckpt = _tiny_checkpoint(tmp_path, tiny_overrides, steps=3, extra=["model.fpn_channels=64"])
    loaded = []
    real = rmkd.run.load_model

    def keep(*a, **k):
        model, cfg = real(*a, **k)
        loaded.append(model)
        return model, cfg

    monkeypatch.setattr(rmkd.run, "load_model", keep)
    overrides = tiny_overrides + [
        "train.max_steps=6", "train.eval_every=3", "analysis.every=3", "analysis.images=4",
        f"distill.teacher={teacher_ckpt}", "distill.soft_label=1.0", "distill.fgfi=1.0",
    ]  # fmt: skip
    runs = []
    for name in ("a", "b"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tiny teacher is at chance
            runs.append(distill(load_config(None, overrides), str(tmp_path / name), progress=False))
    stored = load_checkpoint(teacher_ckpt)["model"]
    assert len(loaded) == 2
    for teacher in loaded:
        live = teacher.state_dict()
        assert live.keys() == stored.keys()
        assert all(torch.equal(live[k], stored[k]) for k in stored)  # weights and BN running stats
    assert json.dumps(runs[0]) == json.dumps(runs[1])  # equal metrics, NaN included
    a, b = (load_checkpoint(tmp_path / n / "last.pt") for n in ("a", "b"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["objective"][k], b["objective"][k]) for k in a["objective"])


# ---------------------------------------------------------------- configs from strangers


def test_a_config_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match=r"evil\.yaml.*not valid YAML"):
        load_config(evil)
    assert not marker.exists()
    # a path value is only ever a path: a shell command in it is never run
    cfg = load_config(None, [f"data.train.images=$(touch {marker})", f"distill.teacher=; touch {marker}"])
    assert cfg.data.train.images == f"$(touch {marker})"
    with pytest.raises(CheckpointError, match="not found"):
        rmkd.run.load_model(cfg.distill.teacher)
    assert not marker.exists()


@pytest.mark.parametrize(
    "student, fragment",
    [("model.num_classes=11", "classes"), ("model.aspect_ratios=[1.0]", "anchor"), ("model.family=fcos", "fcos")],
)
def test_cli_refuses_a_pair_that_cannot_be_distilled(tiny_overrides, tmp_path, capsys, student, fragment):
    teacher = _tiny_checkpoint(tmp_path, tiny_overrides)
    argv = ["distill", "--teacher", str(teacher), "--out", str(tmp_path / "kd"), "--no-progress", "--set", *tiny_overrides]
    assert main(argv + ["train.max_steps=1", student]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_more_categories_than_the_model_has_is_one_line(tiny_overrides, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--no-progress", "--set", *tiny_overrides, "model.num_classes=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "10 categories" in err and "model.num_classes=10" in err and len(err.splitlines()) == 1


def test_rmkd_never_starts_a_shell():
    """Paths from configs cannot reach a shell because nothing in rmkd starts one."""
    import pathlib
    import re

    import rmkd

    sources = list(pathlib.Path(rmkd.__file__).parent.rglob("*.py"))
    assert len(sources) > 20
    # builtins eval/exec, not methods such as model.eval()
    pattern = re.compile(r"subprocess|os\.system|os\.popen|shell=True|(?<![\w.])(eval|exec)\(")
    for path in sources:
        match = pattern.search(path.read_text())
        assert match is None, f"{path}: {match.group(0)}"
    assert pattern.search("x = eval('1')") and not pattern.search("model.eval()")


def test_every_test_named_in_reliability_md_exists():
    """docs/RELIABILITY.md points at tests; a renamed or deleted one must not leave a dead row."""
    import pathlib
    import re

    root = pathlib.Path(__file__).parent
    text = (root.parent / "docs" / "RELIABILITY.md").read_text()
    named = 0
    for row in text.splitlines():
        current = None
        for file, name in re.findall(r"`(test_\w+\.py)?(?:::(\w+))?", row):
            current = file or current
            if not current:
                continue
            source = (root / current).read_text()
            if name:
                assert re.search(rf"^def {name}\(", source, re.M), f"{current}::{name} named in RELIABILITY.md"
                named += 1
    assert named >= 25
