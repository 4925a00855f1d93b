"""Backbone pretraining on the training split: classify each digit from its box.

Detectors trained from scratch on the embedded digits keep climbing for thousands of steps
(docs/RESULTS.md, "Benchmark regime"), while detection KD is studied with backbones
pretrained on ImageNet, which no run here can download. This module gives a backbone a start
of its own: the torchvision classification network named by ``model.backbone`` learns the
class of every object of the training split from a square crop around its box
(``torchvision.ops.roi_align`` on the images as the detector reads them: its own
``transform``, so the same size and normalisation). The classifier is dropped and the
weights load through ``model.weights_backbone``. Validation objects are only scored.

    rmkd pretrain --config configs/student.yaml --steps 1000 --out data/cache/r18-digits.pt
"""

from __future__ import annotations

import copy
import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from . import jsonio
from .builders import build_datasets, build_model, build_optimizer, build_scheduler, seed_everything
from .config import PRETRAIN, Config, ConfigError, pretrained_backbone_file
from .data.loader import eval_loader, train_loader
from .models.build import BACKBONES

CLASSIFIER_PREFIXES = ("fc.", "classifier.")  # torchvision's ResNet and MobileNetV3 heads
CROP = 32  # px: digits are 12-40 px in the 64 px images; ResNet's stride 32 leaves a 1x1 map


def square_boxes(boxes: torch.Tensor, context: float = 1.25) -> torch.Tensor:
    """``[M, 4]`` squares centred on ``boxes`` (x1, y1, x2, y2), side ``context`` x the longer side:
    the digit with some background around it, not stretched."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1, keepdim=True) * context / 2
    return torch.cat([centre - half, centre + half], dim=1)


def object_crops(batch: torch.Tensor, targets: list[dict], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([M, 3, size, size], [M])``: every object's square crop (bilinear, ``roi_align``) and its
    class index 0..K-1 (labels are 1..K), from images ``[B, 3, H, W]`` and boxes in their pixels."""
    boxes = [square_boxes(t["boxes"]) for t in targets]
    crops = roi_align(batch, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return crops, torch.cat([t["labels"] for t in targets]) - 1


def classifier(cfg: Config) -> nn.Module:
    """The torchvision network of ``model.backbone`` with K outputs and trainable BatchNorm."""
    return BACKBONES[cfg.model.backbone][0](weights=None, num_classes=cfg.model.num_classes)


def _read(transform: nn.Module, images: list[torch.Tensor], targets: list[dict]) -> tuple[torch.Tensor, list[dict]]:
    """``[B, 3, H, W]`` images resized, normalised and padded by the detector's own transform,
    and the targets with their boxes moved to that size."""
    batch, targets = transform(images, [{k: t[k] for k in ("boxes", "labels")} for t in targets])
    return batch.tensors, targets


def pretrain_backbone(cfg: Config, out: str, steps: int, progress: bool = True) -> dict:
    """Train ``classifier(cfg)`` for ``steps`` on the training split; save its weights without
    the classifier to ``out`` and a summary beside it (``out`` + ``.json``); return the summary."""
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    cfg = copy.deepcopy(cfg)
    cfg.train.max_steps = steps
    train_set, val = build_datasets(cfg, progress=progress)
    transform = build_model(cfg, backbone_init=False).transform  # the detector's reading of an image
    # Seeded after the detector is built, whose initialisation draws from the RNG: the weights
    # then depend on the seed, not on the detector's head (config.pretrained_backbone_file).
    seed_everything(cfg.seed)
    net = classifier(cfg).train()
    opt = build_optimizer([p for p in net.parameters() if p.requires_grad], cfg)
    sched = build_scheduler(opt, cfg)
    start, losses = time.perf_counter(), []
    for images, targets in train_loader(train_set, cfg.train.batch_size, cfg.seed, 0, steps):
        crops, labels = object_crops(*_read(transform, images, targets), CROP)
        if not len(labels):  # a batch of empty images (about 3% of images hold no digit)
            continue
        loss = F.cross_entropy(net(crops), labels)
        opt.zero_grad()
        loss.backward()
        if cfg.train.clip_grad:
            nn.utils.clip_grad_norm_(net.parameters(), cfg.train.clip_grad)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress and len(losses) % 100 == 0:
            print(f"pretrain step {len(losses)}/{steps}: loss {sum(losses[-100:]) / 100:.4f}", flush=True)
    summary = {"backbone": cfg.model.backbone, "steps": steps, "seed": cfg.seed,
               "train_seconds": round(time.perf_counter() - start, 1),
               "final_loss": sum(losses[-50:]) / len(losses[-50:]),
               "val_accuracy": crop_accuracy(net, transform, val, cfg)}
    state = {k: v for k, v in net.state_dict().items() if not k.startswith(CLASSIFIER_PREFIXES)}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    jsonio.write(out + ".json", summary, indent=1)
    torch.save(state, out + ".partial")
    os.replace(out + ".partial", out)  # a killed run never leaves a half-written weights file behind
    return summary


def ensure_pretrained(cfg: Config, progress: bool = True) -> str | None:
    """For ``model.weights_backbone: pretrain``, the cached weights file, pretrained now if missing
    (``model.pretrain_steps`` steps, about 1.5 min for a ResNet-10 on 2 CPU cores); else None."""
    if cfg.model.weights_backbone != PRETRAIN:
        return None
    path = pretrained_backbone_file(cfg)
    if not os.path.isfile(path):
        if progress:
            print(f"pretraining the {cfg.model.backbone} backbone for {cfg.model.pretrain_steps} steps -> {path}", flush=True)
        pretrain_backbone(cfg, path, cfg.model.pretrain_steps, progress)
    return path


@torch.no_grad()
def crop_accuracy(net: nn.Module, transform: nn.Module, dataset, cfg: Config) -> float:
    """Share of the dataset's objects whose class the network names from their crops."""
    was_training, transform_training = net.training, transform.training
    net.eval()
    transform.eval()
    right = total = 0
    for images, targets in eval_loader(dataset, cfg.eval.batch_size):
        crops, labels = object_crops(*_read(transform, images, targets), CROP)
        right += int((net(crops).argmax(dim=1) == labels).sum())
        total += len(labels)
    net.train(was_training)
    transform.train(transform_training)
    return right / max(total, 1)
