"""Faults: a training process killed with SIGKILL, or stopped with Ctrl-C, resumes to the same weights."""

import json
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


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(tmp_path, tiny_overrides):
    """A real SIGINT (what Ctrl-C sends) in the middle of training: exit 130 with a one-line
    message, a checkpoint at the last completed step (checkpoint_every is far away), and a
    resume that ends with the uninterrupted run's weights."""
    overrides = tiny_overrides + ["train.max_steps=10", "train.checkpoint_every=1000", "train.eval_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight, overrides), check=True, capture_output=True, env=env)

    run = tmp_path / "interrupted"
    proc = subprocess.Popen(_train_cmd(run, overrides), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    log = run / "metrics.jsonl"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if log.exists() and log.read_text().count('"train"') >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    saved = load_checkpoint(run / "last.pt")["step"]
    logged = max(json.loads(line)["step"] for line in log.read_text().splitlines() if '"train"' in line)
    assert 3 <= saved < 10 and saved >= logged  # nothing done before the signal is lost

    subprocess.run(_train_cmd(run, overrides, resume=True), check=True, capture_output=True, env=env)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(run / "last.pt")
    assert a["step"] == b["step"] == 10
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
