"""rmkd.checkpoint: atomic writes, and loading that never runs code."""

import os

import pytest
import torch

from rmkd.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_and_no_temporary_left(tmp_path):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint({"model": {"w": torch.arange(3.0)}, "step": 7}, path)
    save_checkpoint({"model": {"w": torch.arange(4.0)}, "step": 8}, path)  # overwrite in place
    state = load_checkpoint(path)
    assert state["step"] == 8 and torch.equal(state["model"]["w"], torch.arange(4.0))
    assert os.listdir(tmp_path / "run") == ["last.pt"]


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {}, "step": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"model": {}, "step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.ones(1)}, plain)
    with pytest.raises(CheckpointError, match="not an rmkd checkpoint"):
        load_checkpoint(plain)
    good = tmp_path / "good.pt"
    save_checkpoint({"model": {"w": torch.ones(100)}, "step": 1}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(truncated)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ.get("RMKD_PWNED", "/tmp/rmkd-pwned"),))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("RMKD_PWNED", str(marker))
    evil = tmp_path / "evil.pt"
    torch.save({"rmkd_checkpoint": 1, "model": _RunsCode()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert not marker.exists()
