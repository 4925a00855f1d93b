"""Faults: a training process killed with SIGKILL resumes to the same weights."""

import os
import signal
import subprocess
import sys
import time

import torch

from rmkd.checkpoint import load_checkpoint


def _train_cmd(out, overrides, resume=False):
    cmd = [sys.executable, "-m", "rmkd.cli", "train", "--out", str(out), "--no-progress", "--set", *overrides]
    return cmd + (["--resume"] if resume else [])


def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["train.max_steps=12", "train.checkpoint_every=2", "train.eval_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight, overrides), check=True, capture_output=True, env=env)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, overrides), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (killed / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no handler can run: nothing is saved on the way out
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step_at_kill = load_checkpoint(killed / "last.pt")["step"]
    assert 0 < step_at_kill < 12 and not (killed / "metrics.json").exists()

    subprocess.run(_train_cmd(killed, overrides, resume=True), check=True, capture_output=True, env=env)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["step"] == b["step"] == 12
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not list(killed.glob("*.tmp.*"))  # no temporary checkpoint left behind
