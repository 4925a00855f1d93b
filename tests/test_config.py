"""rmkd.config: YAML + --set onto dataclasses, with clear errors."""

import pytest

from rmkd.config import Config, ConfigError, load_config, parse_overrides


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 4\nmodel:\n  backbone: resnet34\ntrain:\n  lr: 1\n  max_steps: 50\n")
    cfg = load_config(path, ["train.max_steps=7", "model.aspect_ratios=[0.5, 2]", "data.val.images=/x y"])
    assert cfg.seed == 4 and cfg.model.backbone == "resnet34"
    assert cfg.train.max_steps == 7  # --set wins over the file
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int accepted where a float is expected
    assert cfg.model.aspect_ratios == [0.5, 2.0]
    assert cfg.data.val.images == "/x y"
    assert cfg.model.fpn_channels == Config().model.fpn_channels  # untouched default


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_step: 5\n")
    with pytest.raises(ConfigError, match=r"train\.max_step\b.*bad\.yaml|bad\.yaml.*train\.max_step\b"):
        load_config(path)
    with pytest.raises(ConfigError, match="modle"):
        load_config(None, ["modle.backbone=resnet18"])


@pytest.mark.parametrize(
    "pair, fragment",
    [
        ("train.max_steps=abc", "integer"),
        ("train.lr=fast", "number"),
        ("train.amp=maybe", "true or false"),
        ("model.backbone=resnet9", "resnet18"),
        ("model.min_level=4", "choose one of 2, 3"),  # integer choices are named too
        ("train.max_steps=0", ">= 1"),
        ("seed", "KEY=VALUE"),
        ("train=3", "mapping"),
    ],
)
def test_bad_values(pair, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [pair])


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-4 as a string; a float key takes it as the number anyone means."""
    (tmp_path / "c.yaml").write_text("train:\n  lr: 1e-4\n")
    assert load_config(tmp_path / "c.yaml").train.lr == 1e-4
    cfg = load_config(None, ["train.lr=6e-3", "distill.rm=2E1"])
    assert cfg.train.lr == 0.006 and cfg.distill.rm == 20.0


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml.*YAML"):
        load_config(broken)
    code = tmp_path / "code.yaml"
    code.write_text("seed: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError):  # safe_load refuses python tags: nothing runs
        load_config(code)


def test_coco_source_needs_paths():
    with pytest.raises(ConfigError, match="data.train.images"):
        load_config(None, ["data.source=coco"])
    cfg = load_config(None, ["data.source=coco", "data.train.images=a", "data.train.annotations=b",
                             "data.val.images=c", "data.val.annotations=d"])
    assert cfg.data.train.annotations == "b"


def test_parse_overrides_nests():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}


def test_digest_ignores_logging_but_not_training():
    base = load_config()
    assert load_config(None, ["train.log_every=3", "train.eval_every=9"]).digest() == base.digest()
    assert load_config(None, ["train.lr=0.1"]).digest() != base.digest()
    assert load_config(None, ["seed=1"]).digest("seed", "model") != base.digest("seed", "model")


def test_trainable_layers_key():
    """All stages trained (5) is the default and keeps the cache keys of runs from before the option."""
    base = load_config()
    assert load_config(None, ["model.trainable_layers=5"]).digest() == base.digest()
    assert load_config(None, ["model.trainable_layers=3"]).digest() != base.digest()
    with pytest.raises(ConfigError, match="model.trainable_layers.*choose one of"):
        load_config(None, ["model.trainable_layers=7"])
    with pytest.raises(ConfigError, match="ResNet backbones only.*set it to 5"):
        load_config(None, ["model.backbone=mobilenet_v3_small", "model.trainable_layers=3"])


FROZEN_BODY = ["model.trainable_layers=0", "model.norm=frozen_bn"]


def test_body_cache_key():
    """A speed setting: it never splits a cache; refused (one line) for a body that learns."""
    base = load_config(None, FROZEN_BODY)
    assert load_config(None, FROZEN_BODY + ["model.body_cache=100"]).digest() == base.digest()
    for bad in (["model.body_cache=100"], ["model.body_cache=100", "model.trainable_layers=0"], FROZEN_BODY + ["model.body_cache=-1"]):
        with pytest.raises(ConfigError, match="model.body_cache.*set it to 0") as e:
            load_config(None, bad)
        assert "\n" not in str(e.value)


def test_pretrain_keys_and_file():
    """``pretrain_steps`` counts only with ``weights_backbone: pretrain`` (old keys stay); the cached
    file is named for what shapes the weights (steps, data, seed, recipe, backbone), not for the
    detector's own budget, head or freezing."""
    from rmkd.config import pretrained_backbone_file

    base = load_config()
    assert load_config(None, ["model.pretrain_steps=5"]).digest() == base.digest()
    pre = load_config(None, ["model.weights_backbone=pretrain"])
    assert load_config(None, ["model.weights_backbone=pretrain", "model.pretrain_steps=5"]).digest() != pre.digest()
    path = pretrained_backbone_file(pre)
    assert path.startswith(f"data/cache/pretrain/{pre.model.backbone}-600-") and path.endswith(".pt")
    same = ["train.max_steps=7", "model.fpn_channels=8", "model.head_convs=1", *FROZEN_BODY, "train.eval_every=5"]
    other = ["model.pretrain_steps=5", "data.synth.seed=4", "seed=1", "train.lr=0.1", "model.backbone=resnet34"]
    assert pretrained_backbone_file(load_config(None, ["model.weights_backbone=pretrain", *same])) == path
    for o in other:
        assert pretrained_backbone_file(load_config(None, ["model.weights_backbone=pretrain", o])) != path, o
    with pytest.raises(ConfigError, match="model.pretrain_steps.*at least 1 step"):
        load_config(None, ["model.weights_backbone=pretrain", "model.pretrain_steps=0"])


def test_cache_images_key_is_speed_only():
    assert load_config(None, ["data.cache_images=true"]).digest() == load_config().digest()
    assert load_config(None, ["data.cache_images=true"]).data.cache_images is True
