"""The teacher cache: stored teacher outputs equal the live ones bit for bit, and a
distillation run with the cache ends with exactly the weights of a live one."""

import pytest
import torch

from rmkd.checkpoint import load_checkpoint
from rmkd.config import ConfigError, load_config
from rmkd.data.loader import train_loader
from rmkd.distill import Distiller
from rmkd.models import dense_forward
from rmkd.run import build_datasets, build_model, distill, load_model, train
from rmkd.teacher_cache import build_for, cache_key


@pytest.fixture
def setup(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["data.hflip=0.0"]
    teacher_run = tmp_path / "teacher"
    train(load_config(None, overrides + ["train.max_steps=3", "model.fpn_channels=64"]), str(teacher_run), progress=False)
    cfg = load_config(None, overrides + ["train.max_steps=4", f"distill.teacher={teacher_run / 'last.pt'}", "distill.soft_label=1.0", "distill.fi_gt=1.0"])
    return cfg


def test_cached_outputs_equal_the_live_teacher_on_training_batches(setup):
    cfg = setup
    cache = build_for(cfg, progress=False)
    teacher, _ = load_model(cfg.distill.teacher)
    train_set, _ = build_datasets(cfg, progress=False)
    assert sorted(cache.outputs) == sorted(train_set.ids)
    batches = iter(train_loader(train_set, cfg.train.batch_size, seed=5, start_step=0, max_steps=3))
    student = build_model(cfg).train()
    for images, targets in batches:  # random compositions, unlike the cache's consecutive batches
        image_list, _ = student.transform(images, targets)
        with torch.no_grad():
            live = dense_forward(teacher, images, transformed=(image_list, None))
        cached = cache.dense(teacher, [int(t["image_id"]) for t in targets], image_list)
        for a, b in zip(live.features, cached.features):
            assert torch.equal(a, b)
        assert live.head_outputs.keys() == cached.head_outputs.keys()
        assert all(torch.equal(live.head_outputs[k], cached.head_outputs[k]) for k in live.head_outputs)
        assert all(torch.equal(a, b) for a, b in zip(live.anchors, cached.anchors))
        assert (live.num_anchors, live.num_classes, live.image_sizes) == (cached.num_anchors, cached.num_classes, cached.image_sizes)
        # and so every KD term of the Distiller
        d = Distiller(teacher, student, {"rm": 1.0, "pfi": 1.0, "soft_label": 1.0, "fgfi": 1.0}, rm_score="cls+iou").train()
        torch.manual_seed(0)
        without = d(images, targets)
        d.teacher_cache = cache
        torch.manual_seed(0)
        with_cache = d(images, targets)
        assert all(torch.equal(without[k], with_cache[k]) for k in without)


def test_a_cached_distillation_ends_with_the_live_runs_weights(setup, tmp_path):
    cfg = setup
    distill(cfg, str(tmp_path / "live"), progress=False)
    distill(cfg, str(tmp_path / "cached"), progress=False, teacher_cache=build_for(cfg, progress=False))
    a, b = (load_checkpoint(tmp_path / n / "last.pt") for n in ("live", "cached"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["objective"][k], b["objective"][k]) for k in a["objective"])


def test_the_cache_refuses_random_inputs_and_other_runs(setup, tmp_path):
    cfg = setup
    cache = build_for(cfg, progress=False)
    flipped = load_config(base=cfg.to_dict(), overrides=["data.hflip=0.5"])
    with pytest.raises(ConfigError, match="data.hflip=0.5"):
        build_for(flipped, progress=False)
    with pytest.raises(ConfigError, match="data.hflip"):
        distill(flipped, str(tmp_path / "x"), progress=False, teacher_cache=cache)
    other = load_config(base=cfg.to_dict(), overrides=["train.batch_size=2"])
    assert cache_key(other) != cache.key
    with pytest.raises(ConfigError, match="teacher cache was built for"):
        distill(other, str(tmp_path / "y"), progress=False, teacher_cache=cache)
    with pytest.raises(ConfigError, match="model.train_sizes"):
        build_for(load_config(base=cfg.to_dict(), overrides=["model.train_sizes=[96]"]), progress=False)
