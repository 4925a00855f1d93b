"""Shared fixtures: a tiny embedded data set and tiny model configs (seconds on a CPU)."""

import pytest
import torch

from rmkd.data import make_synthetic

# A config small enough that a few steps take well under a second each.
TINY = [
    "model.backbone=resnet18",
    "model.fpn_channels=32",
    "model.head_convs=1",
    "train.batch_size=4",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "eval.batch_size=8",
    "data.hflip=0.5",  # random flips draw from the RNG: exact resume must restore it
]


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """24 train / 8 val digits images of 64 px; returns the synth output folder."""
    out = tmp_path_factory.mktemp("digits")
    make_synthetic(out, num_train=24, num_val=8, seed=3, progress=False)
    return out


@pytest.fixture
def tiny_overrides(tiny_data):
    """--set pairs that point a config at the tiny data set with a tiny model."""
    return TINY + [f"data.synth.out={tiny_data}", "data.synth.num_train=24", "data.synth.num_val=8", "data.synth.seed=3"]
