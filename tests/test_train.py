"""Training, checkpoints, resume and evaluation on the tiny embedded set."""

import json
import os

import pytest
import torch

from rmkd.checkpoint import load_checkpoint
from rmkd.config import ConfigError, load_config
from rmkd.data.loader import StepBatchSampler
from rmkd.evaluate import coco_map
from rmkd.run import build_optimizer, build_scheduler, evaluate_checkpoint, train


def test_step_sampler_is_a_function_of_step():
    full = list(StepBatchSampler(10, 4, seed=1, start_step=0, max_steps=8))
    assert len(full) == 8 and all(len(b) == 4 for b in full)
    stream = [i for b in full for i in b]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))  # whole epochs
    assert stream[:10] != stream[10:20]  # reshuffled each epoch
    assert list(StepBatchSampler(10, 4, seed=1, start_step=5, max_steps=8)) == full[5:]
    assert list(StepBatchSampler(10, 4, seed=2, start_step=0, max_steps=8)) != full


def test_warmup_then_cosine():
    cfg = load_config(None, ["train.max_steps=100", "train.warmup_steps=10", "train.lr=1.0"])
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2, 2))], cfg)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.001)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # rising during warmup
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then decaying
    assert lrs[-1] < 0.05


def test_train_writes_run_and_resume_is_exact(tmp_path, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["train.max_steps=4"])
    straight = tmp_path / "straight"
    metrics = train(cfg, str(straight), progress=False)
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    state = load_checkpoint(straight / "last.pt")
    assert state["step"] == 4 and {"model", "optimizer", "scheduler", "config", "rng"} <= set(state)
    assert state["config"]["train"]["max_steps"] == 4
    lines = [json.loads(l) for l in (straight / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if "train" in l]
    assert [l["step"] for l in train_lines] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(l["train"]["loss"])) for l in train_lines)
    assert {"classification", "bbox_regression", "lr", "sec_per_step"} <= set(train_lines[0]["train"])
    final = json.loads((straight / "metrics.json").read_text())
    assert final["step"] == 4 and final["AP"] == metrics["AP"] and final["train_summary"]["params"] > 0
    # the detections written agree with the metrics
    detections = json.loads((straight / "detections.json").read_text())
    val_json = os.path.join(cfg.data.synth.out, "annotations", "val.json")
    if detections:
        assert coco_map(val_json, detections)["AP"] == pytest.approx(metrics["AP"], nan_ok=True)

    # the same run interrupted (Ctrl-C right after its step-2 checkpoint) and resumed ends identical
    import rmkd.run

    split = tmp_path / "split"
    real_save = rmkd.run.save_checkpoint

    def save_then_interrupt(state, path):
        real_save(state, path)
        if state["step"] == 2:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rmkd.run, "save_checkpoint", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, str(split), progress=False)
    assert load_checkpoint(split / "last.pt")["step"] == 2
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, str(split), progress=False)
    train(cfg, str(split), resume=True, progress=False)
    resumed = load_checkpoint(split / "last.pt")
    assert resumed["step"] == 4
    for key, value in state["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for key, value in state["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg"], resumed["optimizer"]["state"][key]["exp_avg"])


def test_eval_checkpoint_writes_detections(tmp_path, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["train.max_steps=2"])
    run = tmp_path / "run"
    trained = train(cfg, str(run), progress=False)
    metrics = evaluate_checkpoint(str(run / "last.pt"), str(tmp_path / "ev"), progress=False)
    for key, value in trained.items():
        assert metrics[key] == pytest.approx(value, nan_ok=True)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()).keys() == metrics.keys()
    assert isinstance(json.loads((tmp_path / "ev" / "detections.json").read_text()), list)
    # a subset of val is evaluated against that subset only
    part = evaluate_checkpoint(str(run / "last.pt"), str(tmp_path / "ev2"), ["data.val_limit=3"], progress=False)
    assert set(part) == set(metrics)


def test_distill_run_logs_terms_and_keeps_teacher_out(tmp_path, tiny_overrides):
    from rmkd.cli import main

    teacher_run = tmp_path / "teacher"
    train(load_config(None, tiny_overrides + ["train.max_steps=2", "model.fpn_channels=64"]), str(teacher_run), progress=False)
    student_run = tmp_path / "kd"
    argv = ["distill", "--teacher", str(teacher_run / "last.pt"), "--out", str(student_run), "--no-progress", "--set"]
    assert main(argv + tiny_overrides + ["train.max_steps=2", "distill.soft_label=1.0"]) == 0
    lines = [json.loads(l)["train"] for l in (student_run / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert {"rm", "pfi", "soft_label", "classification", "bbox_regression"} <= set(lines[-1])
    state = load_checkpoint(student_run / "last.pt")
    assert not any(k.startswith("teacher") for k in state["model"])
    assert state["objective"] and all(k.startswith("adapters.") for k in state["objective"])  # 32 -> 64 ch
    assert state["kind"] == "distill"
    # the distilled checkpoint evaluates like any other
    metrics = evaluate_checkpoint(str(student_run / "last.pt"), str(tmp_path / "ev"), progress=False)
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    # a missing teacher is a clear error
    assert main(["distill", "--out", str(tmp_path / "x"), "--no-progress", "--set"] + tiny_overrides) == 2
