"""Builders: a :class:`~rmkd.config.Config` becomes data sets, a model, an optimiser and its schedule.

Below :mod:`rmkd.run` (the training runs) and :mod:`rmkd.pretrain` (backbone pretraining),
which both build from a config.
"""

from __future__ import annotations

import os
import random

import torch
from torch import nn

from .config import PRETRAIN, Config, ConfigError, pretrained_backbone_file
from .data import CocoDetection, detection_transforms, make_synthetic
from .models import build_detector


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def data_splits(cfg: Config, progress: bool = True, overwrite: bool = False) -> dict:
    """``{"train": SplitConfig-like dict, "val": ...}``; generates the embedded set if asked."""
    if cfg.data.source == "synth":
        s = cfg.data.synth
        paths = make_synthetic(
            s.out,
            num_train=s.num_train,
            num_val=s.num_val,
            image_size=s.image_size,
            min_digits=s.min_digits,
            max_digits=s.max_digits,
            min_digit_size=s.min_digit_size,
            max_digit_size=s.max_digit_size,
            contrast=tuple(s.contrast),
            noise_fraction=s.noise_fraction,
            seed=s.seed,
            progress=progress,
            overwrite=overwrite,
        )
        return {"train": paths["train"], "val": paths["val"]}
    return {
        split: {"images": getattr(cfg.data, split).images, "annotations": getattr(cfg.data, split).annotations}
        for split in ("train", "val")
    }


def build_datasets(cfg: Config, progress: bool = True, train: bool = True):
    """(train dataset or None, val dataset), checking the class count fits the model."""
    splits = data_splits(cfg, progress)
    bad = cfg.data.bad_images
    val = CocoDetection(splits["val"]["images"], splits["val"]["annotations"], bad_images=bad)
    train_set = None
    if train:
        train_set = CocoDetection(
            splits["train"]["images"], splits["train"]["annotations"], detection_transforms(True, cfg.data.hflip), bad,
            cfg.data.cache_images,
        )
    for ds in filter(None, (train_set, val)):
        if ds.num_classes > cfg.model.num_classes:
            raise ConfigError(
                f"{ds.annotations} has {ds.num_classes} categories but model.num_classes is "
                f"{cfg.model.num_classes}; set --set model.num_classes={ds.num_classes}"
            )
    return train_set, val


def val_subset(val, limit: int):
    if limit and limit < len(val):
        return torch.utils.data.Subset(val, range(limit))
    return val


def backbone_weights(cfg: Config) -> str | None:
    """``model.weights_backbone`` as :func:`~rmkd.models.build_detector` takes it: ``"pretrain"``
    becomes its cached file, which must exist (:func:`rmkd.pretrain.ensure_pretrained` makes it)."""
    weights = cfg.model.weights_backbone
    if weights != PRETRAIN:
        return weights
    path = pretrained_backbone_file(cfg)
    if not os.path.isfile(path):
        raise ConfigError(
            f"model.weights_backbone is 'pretrain' but {path} is not made yet: run `rmkd pretrain --config CONFIG` "
            "with this config (rmkd train, distill, demo and reproduce make it first)"
        )
    return path


def build_model(cfg: Config, backbone_init: bool = True) -> nn.Module:
    """The detector ``cfg.model`` describes; ``backbone_init=False`` leaves out the backbone's
    initial weights (a checkpoint's weights replace them anyway)."""
    m = cfg.model
    return build_detector(
        m.family,
        m.backbone,
        m.num_classes,
        fpn_channels=m.fpn_channels,
        head_convs=m.head_convs,
        image_size=m.image_size if len(m.image_size) == 2 else m.image_size[0],
        anchor_sizes=m.anchor_sizes,
        scales_per_octave=m.scales_per_octave,
        aspect_ratios=m.aspect_ratios,
        weights_backbone=backbone_weights(cfg) if backbone_init else None,
        norm=m.norm,
        head_norm=m.head_norm,
        score_thresh=m.score_thresh,
        nms_thresh=m.nms_thresh,
        detections_per_img=m.detections_per_img,
        train_sizes=m.train_sizes,
        anchor_floor=m.anchor_floor,
        min_level=m.min_level,
        trainable_layers=m.trainable_layers,
        body_cache=m.body_cache,
    )


def build_optimizer(params, cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    # No weight decay on norm layers and biases (1-D tensors), the usual detection recipe.
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = scaled_lr(cfg)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=t.momentum)
    return torch.optim.AdamW(groups, lr=lr)


def scaled_lr(cfg: Config) -> float:
    """``train.lr``, scaled by the linear rule to the global batch when ``train.lr_batch`` is set."""
    t = cfg.train
    return t.lr * t.batch_size / t.lr_batch if t.lr_batch else t.lr


def build_scheduler(optimizer, cfg: Config):
    """Linear warmup, then cosine decay / steps at milestones / constant (torch's schedulers)."""
    t = cfg.train
    sched = torch.optim.lr_scheduler
    warmup = min(t.warmup_steps, t.max_steps - 1)
    rest = t.max_steps - warmup
    if t.schedule == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=max(1, rest), eta_min=t.lr * 0.01)
    elif t.schedule == "step":
        milestones = sorted({max(1, int(f * t.max_steps) - warmup) for f in t.milestones})
        main = sched.MultiStepLR(optimizer, milestones, gamma=t.gamma)
    else:
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return main
    first = sched.LinearLR(optimizer, start_factor=0.001, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [first, main], milestones=[warmup])
