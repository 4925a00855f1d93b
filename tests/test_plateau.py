"""benchmarks/plateau.py refuses overrides that would make a run differ from its CSV row's label."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "plateau.py"


@pytest.mark.parametrize("override", ["seed=3", "train.max_steps=100", "train.eval_every=50"])
def test_plan_owned_keys_are_refused(tmp_path, override):
    csv = tmp_path / "plateau.csv"
    done = subprocess.run([sys.executable, str(SCRIPT), "--plan", "seeds", "--csv", str(csv), "--out", str(tmp_path / "runs"),
                           "--set", "train.lr=0.001", override], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"--set {override}: the plan sets seed" in done.stderr
    assert not csv.exists() and not (tmp_path / "runs").exists()  # refused before any run started
