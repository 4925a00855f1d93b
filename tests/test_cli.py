"""The rmkd command line: help, one-line errors, and the quick demo end to end."""

import json
import subprocess
import sys

import pytest

from rmkd.cli import main


@pytest.mark.parametrize(
    "argv", [[], ["data"], ["data", "synth"], ["data", "voc2coco"], ["train"], ["distill"], ["eval"], ["analyze"], ["demo"]]
)
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: rmkd" in out and len(out) > 200


def test_help_mentions_the_contract(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--config", "--set", "--out", "--resume"):
        assert flag in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--config", "missing.yaml", "--out", "x"], "missing.yaml"),
        (["train", "--set", "train.max_stepz=3", "--out", "x"], "train.max_stepz"),
        (["eval", "--checkpoint", "nothing.pt"], "nothing.pt"),
        (["analyze", "--teacher", "t.pt", "--student", "s.pt", "--out", "a"], ".pt"),
        (["train", "--set", "analysis.every=5", "train.max_steps=1", "--out", "x"], "analysis.teacher"),
        (["train", "--set", "analysis.score=rank", "--out", "x"], "analysis.score"),
    ],
)
def test_user_errors_are_one_line(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "rmkd.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert "distillation" in out


def test_quick_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| teacher |" in out and "| student (baseline) |" in out
    summary = json.loads((tmp_path / "runs" / "demo" / "summary.json").read_text())
    assert [r["model"] for r in summary["rows"]][:2] == ["teacher", "student (baseline)"]
    assert summary["rows"][2]["model"].startswith("student (RM+PFI")
    assert (tmp_path / "runs" / "demo" / "student_rm_pfi" / "last.pt").is_file()
    assert (tmp_path / summary["teacher_dir"] / "last.pt").is_file()
    # it ends with the analysis of both pairs, in numbers
    assert "mean Kendall tau" in out and "Pearson r of F_dif and P_dif" in out and "rank agreement" in out
    assert set(summary["analysis"]) == {"baseline", "RM+PFI"}
    assert summary["analysis"]["baseline"]["instances"] > 0
    assert (tmp_path / "runs" / "demo" / "analysis" / "instances.csv").is_file()
    # a second run reuses the cached teacher
    assert main(["demo", "--quick", "--no-progress"]) == 0
    assert "reusing trained model" in capsys.readouterr().out


def test_data_synth_cli_makes_the_configs_data_set(tmp_path, capsys):
    from rmkd.config import load_config
    from rmkd.run import data_splits

    out = tmp_path / "d"
    assert main(["data", "synth", "--out", str(out), "--num-train", "6", "--num-val", "3", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    meta = (out / "meta.json").read_bytes()
    # the config path with the same values finds the same data set (cache hit, no rewrite)
    cfg = load_config(None, ["data.synth.num_train=6", "data.synth.num_val=3"])
    cfg.data.synth.out = str(out)
    assert data_splits(cfg, progress=False) == printed
    assert (out / "meta.json").read_bytes() == meta
