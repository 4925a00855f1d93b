"""Run configuration: plain dataclasses, filled from YAML and ``--set KEY=VALUE``.

A config file only overrides defaults; every key it may hold is a field below.
An unknown (misspelt) key or a value of the wrong type is a :class:`ConfigError`
naming the key, the file and what is expected. YAML is read with ``safe_load``
and nothing in a config is evaluated as code.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config file or ``--set`` override that does not fit the schema."""


@dataclass
class SplitConfig:
    images: str = ""  # folder of images
    annotations: str = ""  # COCO json


@dataclass
class SynthConfig:
    """The embedded "digits on photos" set (see ``rmkd.data.make_synthetic``)."""

    out: str = "data/digits"
    num_train: int = 4000
    num_val: int = 500
    image_size: int = 64
    min_digits: int = 1
    max_digits: int = 4
    min_digit_size: int = 12
    max_digit_size: int = 40
    contrast: list[float] = field(default_factory=lambda: [0.6, 1.0])  # digit colour vs background, range
    noise_fraction: float = 0.25  # share of images on smooth noise instead of a photo
    seed: int = 0


@dataclass
class DataConfig:
    # "synth": generate (or reuse) the embedded set and read it; "coco": read train/val below.
    source: str = "synth"
    synth: SynthConfig = field(default_factory=SynthConfig)
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    # probability of a horizontal flip in training; 0 by default because the default data
    # are digits (a mirrored digit is not a digit); 0.5 is usual for natural images
    hflip: float = 0.0
    workers: int = 0  # DataLoader worker processes
    # keep the decoded training images in memory (each file read once): for a small set such as the
    # embedded digits (55 MB); a speed setting, never part of a cache key
    cache_images: bool = False
    val_limit: int = 0  # evaluate on the first N val images only (0 = all)
    # an unreadable image file: "error" stops with its name; "skip" warns with its name and goes on
    # (see docs/RELIABILITY.md)
    bad_images: str = "error"


@dataclass
class ModelConfig:
    family: str = "retinanet"
    backbone: str = "resnet18"
    num_classes: int = 10
    fpn_channels: int = 32
    head_convs: int = 2
    # [short side, max long side]; the embedded 64 px set is read at 128 (see configs/student.yaml)
    image_size: list[int] = field(default_factory=lambda: [128, 128])
    # multi-scale training: short sides drawn per image in training (evaluation uses image_size); [] = off
    train_sizes: list[int] = field(default_factory=list)
    anchor_sizes: list[float] = field(default_factory=lambda: [24.0, 48.0, 96.0, 192.0, 320.0])
    scales_per_octave: int = 2
    aspect_ratios: list[float] = field(default_factory=lambda: [1.0, 1.5])  # height / width
    # finest FPN level: 3 (P3..P7, RetinaNet's) or 2 (P2..P6: stride 4, reads 64 px images natively)
    min_level: int = 3
    anchor_floor: bool = False  # round anchor sizes down to integers, as torchvision's COCO RetinaNet
    # None, "imagenet" (download), a file, or "pretrain": made by `rmkd pretrain` on this config's training
    # split for pretrain_steps steps and cached under data/cache/pretrain/ (rmkd.pretrain), made on first use
    weights_backbone: Optional[str] = None
    pretrain_steps: int = 600
    norm: str = "bn"  # "bn" (trainable, from scratch) or "frozen_bn" (pretrained)
    # ResNet stages trained, counted from layer4 (torchvision's rule): 5 = all, 3 = its default for a
    # pretrained detector (stem and layer1 frozen), 0 = the whole body frozen
    trainable_layers: int = 5
    # images whose frozen body's outputs are kept in memory (rmkd.models.body_cache): a speed setting for a
    # body with trainable_layers 0 and norm frozen_bn, about 0.12 MB per 64 px image; 0 = off
    body_cache: int = 0
    head_norm: str = "gn"  # RetinaNet head: "gn" or "none" (see rmkd.models.build_detector)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 16
    optimizer: str = "adamw"  # "adamw" or "sgd"
    lr: float = 2e-3
    # linear scaling rule: lr is given for a global batch of lr_batch; the lr used is
    # lr * batch_size / lr_batch (0 = use lr as given)
    lr_batch: int = 0
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine", "step" or "constant"
    milestones: list[float] = field(default_factory=lambda: [0.67, 0.89])  # "step": fractions of max_steps
    gamma: float = 0.1  # "step": lr factor at each milestone
    clip_grad: float = 10.0  # max gradient norm (0 = off)
    checkpoint_every: int = 500
    log_every: int = 20
    eval_every: int = 0  # 0 = evaluate at the end only
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: bool = False  # autocast on CUDA (ignored on CPU)
    amp_dtype: str = "bf16"  # "bf16", or "fp16" (with a GradScaler, checkpointed)
    channels_last: bool = False  # NHWC memory format for the model (faster convolutions on recent GPUs)
    cudnn_benchmark: bool = False  # let cuDNN pick kernels per input shape (pays off when shapes repeat)
    # a NaN/inf loss: "stop" (keep the last good checkpoint, print the terms) or "skip" the step
    # (10 in a row still stop the run)
    nonfinite: str = "stop"


@dataclass
class DistillConfig:
    """``rmkd distill``: which KD terms, their weights and options (see rmkd.distill)."""

    teacher: str = ""  # teacher checkpoint (last.pt); --teacher sets it
    # weights of the terms; 0 = off. Names are the study's method names.
    rm: float = 4.0
    pfi: float = 1.5
    soft_label: float = 0.0
    fi_full: float = 0.0
    fi_full_level: float = 0.0  # fi_full with PFI's per-level normalisation (a control)
    fi_positive: float = 0.0
    fi_negative: float = 0.0
    fi_gt: float = 0.0
    fgfi: float = 0.0
    # options
    # "cls" (the paper's), "iou" or "cls+iou" (the mean of the two KLs). Defaults follow the study's
    # decided results and the paper's choice where it is undecided (docs/results/ablation.md,
    # "defaults"; tests/test_reproduce.py checks the two agree)
    rm_score: str = "cls"
    rm_space: str = "prob"  # "prob" (sigmoid probabilities, as the paper) or "logit"
    rm_temperature: float = 1.0
    # P_dif passes its gradient, as the public reimplementations; the study's detached row scores
    # lower (docs/results/ablation.md, "defaults")
    pfi_detach: bool = False
    soft_label_temperature: float = 1.0
    fgfi_psi: float = 0.5
    # evaluate the teacher on a few val images before a fresh run and warn if it is at chance
    # (an untrained teacher or the wrong file)
    check_teacher: bool = True

    def weights(self) -> dict[str, float]:
        from .distill import TERMS

        return {term: getattr(self, term) for term in TERMS if getattr(self, term)}


@dataclass
class EvalConfig:
    batch_size: int = 32


@dataclass
class AnalysisConfig:
    """Training-time analysis (``rmkd.analysis.AnalysisHook``); off while ``every`` is 0."""

    every: int = 0  # measure at step 0, every N steps and at the end
    images: int = 64  # the first N validation images, the same ones every time
    teacher: str = ""  # reference checkpoint for `rmkd train` (distill uses its own teacher)
    score: str = "cls"  # rank score: cls (the paper's) or iou
    adapter: str = "fit"  # F_dif channel map: fit (least squares, all levels), fit_per_level, or trained (the Distiller's)


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self, *sections: str) -> str:
        """Short hash of the named sections (all when none): a cache key.

        Keys that do not change the trained weights (logging, checkpoint and
        evaluation periods, device, what to do on a fault) are left out, so they
        never split a cache.
        """
        d = self.to_dict()
        for key in ("checkpoint_every", "log_every", "eval_every", "device", "nonfinite", "channels_last", "cudnn_benchmark"):
            d["train"].pop(key)
        if d["model"]["min_level"] == 3:
            d["model"].pop("min_level")  # keeps the keys of runs from before the option
        d["model"].pop("body_cache")  # speed only: the same function with or without
        if d["model"]["weights_backbone"] != PRETRAIN:
            d["model"].pop("pretrain_steps")  # read only with weights_backbone "pretrain"
        if d["model"]["trainable_layers"] == 5:
            d["model"].pop("trainable_layers")  # keeps the keys of runs from before the option
        for key in ("train_sizes", "anchor_floor"):
            if not d["model"][key]:
                d["model"].pop(key)  # keeps the keys of runs from before the option
        if not d["train"]["lr_batch"]:
            d["train"].pop("lr_batch")  # keeps the keys of runs from before the option
        if not d["train"]["amp"]:
            d["train"].pop("amp_dtype")  # no effect without amp
        # Fault handling and checks act only when something is wrong, so they never split a cache.
        d["data"].pop("val_limit")
        d["data"].pop("cache_images")
        d["data"].pop("bad_images")
        d["distill"].pop("check_teacher")
        if "analysis" not in sections:
            d.pop("analysis")  # measuring never changes the weights
        if sections:
            d = {s: d[s] for s in sections}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


PRETRAIN = "pretrain"  # model.weights_backbone: pretrained here, on the training split (rmkd.pretrain)
PRETRAIN_DIR = os.path.join("data", "cache", "pretrain")


def pretrained_backbone_file(cfg: Config) -> str:
    """Where ``model.weights_backbone: pretrain`` keeps its weights: a file named for everything
    that shapes them (seed, data, training recipe, backbone, classes, input size, steps)."""
    m = cfg.model
    shaping = Config(seed=cfg.seed, data=copy.deepcopy(cfg.data), train=copy.deepcopy(cfg.train))
    shaping.train.max_steps = m.pretrain_steps
    shaping.model = ModelConfig(backbone=m.backbone, num_classes=m.num_classes, image_size=list(m.image_size),
                                train_sizes=list(m.train_sizes))
    key = shaping.digest("seed", "data", "model", "train")
    return os.path.join(PRETRAIN_DIR, f"{m.backbone}-{m.pretrain_steps}-{key}.pt")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (allowing int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]  # a scalar where a list is expected: a one-element list
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: key '{key}' expects a list of {_type_name(item)}, got {value!r}")
        return [_coerce(v, item, key, where) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}' expects true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string; Python reads it as a number
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key '{key}' expects a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: key '{key}' expects an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}' expects a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: key '{key}' has unsupported type {tp}")  # pragma: no cover


def _merge(obj, values: dict, prefix: str, where: str) -> None:
    """Write ``values`` into dataclass ``obj`` in place, checking names and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = prefix + str(key)
        if key not in names:
            raise ConfigError(
                f"{where}: unknown config key '{full}'; valid keys here: {', '.join(sorted(names))}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, full + ".", where)
        else:
            setattr(obj, key, _coerce(value, hints[key], full, where))


def parse_overrides(pairs: list[str]) -> dict:
    """``["train.lr=0.01", "seed=3"]`` -> nested dict (values parsed as YAML scalars/lists)."""
    nested: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e.problem}") from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is set both as a value and as a section")
        node[parts[-1]] = value
    return nested


def read_yaml(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {path!r} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of keys, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Defaults <- ``base`` dict (e.g. a checkpoint's config) <- YAML file <- ``--set`` overrides."""
    cfg = Config()
    if base:
        _merge(cfg, base, "", "stored config")
    if path:
        _merge(cfg, read_yaml(path), "", f"config {os.fspath(path)!r}")
    if overrides:
        _merge(cfg, parse_overrides(overrides), "", "--set")
    validate(cfg)
    return cfg


_CHOICES = {
    "data.source": ("synth", "coco"),
    "data.bad_images": ("error", "skip"),
    "train.nonfinite": ("stop", "skip"),
    "train.amp_dtype": ("bf16", "fp16"),
    "model.family": ("retinanet", "fcos"),
    "model.backbone": ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_small", "mobilenet_v3_large"),
    "model.norm": ("bn", "frozen_bn"),
    "model.head_norm": ("gn", "none"),
    "model.min_level": (2, 3),
    "model.trainable_layers": (0, 1, 2, 3, 4, 5),
    "train.optimizer": ("adamw", "sgd"),
    "train.schedule": ("cosine", "step", "constant"),
    "distill.rm_score": ("cls", "iou", "cls+iou"),
    "distill.rm_space": ("prob", "logit"),
    "analysis.score": ("cls", "iou"),
    "analysis.adapter": ("fit", "fit_per_level", "trained"),
}


def validate(cfg: Config) -> None:
    """Values that have the right type but cannot work."""
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"config key '{key}' is {value!r}; choose one of {', '.join(map(str, choices))}")
    if cfg.model.trainable_layers < 5 and not cfg.model.backbone.startswith("resnet"):
        raise ConfigError(
            f"config key 'model.trainable_layers' is {cfg.model.trainable_layers} but freezing stages is implemented "
            f"for ResNet backbones only, not {cfg.model.backbone}: set it to 5"
        )
    m = cfg.model
    if m.weights_backbone == PRETRAIN and m.pretrain_steps < 1:
        raise ConfigError(f"config key 'model.pretrain_steps' is {m.pretrain_steps}: pretraining needs at least 1 step")
    if m.body_cache < 0 or (m.body_cache and (m.trainable_layers, m.norm) != (0, "frozen_bn")):
        raise ConfigError(
            f"config key 'model.body_cache' is {m.body_cache}: it must be >= 0, and above 0 only for a frozen body "
            f"(model.trainable_layers 0 and model.norm frozen_bn; here {m.trainable_layers} and {m.norm}): set it to 0"
        )
    if cfg.data.source == "coco":
        for split in ("train", "val"):
            s = getattr(cfg.data, split)
            if not s.images or not s.annotations:
                raise ConfigError(
                    f"data.source is 'coco' but data.{split}.images / data.{split}.annotations are not set"
                )
    if len(cfg.model.image_size) not in (1, 2):
        raise ConfigError(f"model.image_size must be [short] or [short, max_long], got {cfg.model.image_size}")
    for key, value, low in (
        ("train.max_steps", cfg.train.max_steps, 1),
        ("train.batch_size", cfg.train.batch_size, 1),
        ("train.checkpoint_every", cfg.train.checkpoint_every, 1),
        ("train.log_every", cfg.train.log_every, 1),
        ("eval.batch_size", cfg.eval.batch_size, 1),
        ("model.num_classes", cfg.model.num_classes, 1),
        ("train.warmup_steps", cfg.train.warmup_steps, 0),
        ("train.lr_batch", cfg.train.lr_batch, 0),
        ("train.eval_every", cfg.train.eval_every, 0),
        ("analysis.every", cfg.analysis.every, 0),
        ("analysis.images", cfg.analysis.images, 1),
    ):
        if value < low:
            raise ConfigError(f"config key '{key}' must be >= {low}, got {value}")
    for key in ("rm_temperature", "soft_label_temperature"):
        if not getattr(cfg.distill, key) > 0:
            raise ConfigError(f"config key 'distill.{key}' must be > 0, got {getattr(cfg.distill, key)}")
    if not cfg.train.lr > 0:
        raise ConfigError(f"config key 'train.lr' must be > 0, got {cfg.train.lr}")


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
