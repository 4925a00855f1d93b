"""``python -m rmkd`` and ``torchrun ... -m rmkd``: the same command line as the ``rmkd`` script."""

import argparse
import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import rmkd.__main__
from rmkd.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    """The subcommands the parser defines (data, train, distill, ...)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


def test_python_dash_m_rmkd_lists_the_commands(tmp_path):
    done = _run([sys.executable, "-m", "rmkd", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: rmkd ")
    commands = _commands()
    assert {"data", "train", "distill", "eval", "analyze", "reproduce", "demo"} <= set(commands)
    assert [c for c in commands if c not in done.stdout] == []


def test_python_dash_m_rmkd_passes_on_the_exit_status(tmp_path):
    """A user error: one line on stderr and status 2, as from the ``rmkd`` script."""
    done = _run([sys.executable, "-m", "rmkd", "eval", "--checkpoint", str(tmp_path / "nothing.pt")], tmp_path)
    assert done.returncode == 2
    assert "nothing.pt" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_dash_m_calls_the_console_scripts_entry_point():
    script = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]["rmkd"]
    module, name = script.split(":")
    assert rmkd.__main__.main is getattr(importlib.import_module(module), name)


def test_torchrun_dash_m_rmkd(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "torchrun")
    launcher = [script] if os.path.exists(script) else [sys.executable, "-m", "torch.distributed.run"]
    done = _run(launcher + ["--standalone", "--nproc_per_node=1", "-m", "rmkd", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: rmkd " in done.stdout and "distill" in done.stdout
