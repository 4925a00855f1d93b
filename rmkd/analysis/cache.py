"""``collect`` results kept on disk: the val-split pass that several notebooks need, computed once.

:func:`cached_collect` keys each result by both models' weights and settings, the data
set's images, ``collect``'s options and the source of the code that computes it, so a
retrained model, another split or changed analysis code computes afresh.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from ..data.loader import eval_loader
from .collect import Collection, collect

CACHE_DIR = "data/cache/collect"

_COLLECT_SOURCES = ("analysis/collect.py", "analysis/rank.py", "analysis/gap.py", "analysis/kept.py",
                    "candidates.py", "models/dense.py")


def _model_key(model: nn.Module, h) -> None:
    """Feed everything of ``model`` that shapes its outputs into the hash ``h``."""
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str((tuple(value.shape), str(value.dtype))).encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    gen = getattr(model, "anchor_generator", None)
    h.update(repr((getattr(gen, "sizes", None), getattr(gen, "aspect_ratios", None))).encode())
    h.update(repr(getattr(model, "transform", None)).encode())
    for attr in ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates", "center_sampling_radius",
                 "rmkd_family", "rmkd_min_level", "rmkd_num_classes"):
        h.update(f"{attr}={getattr(model, attr, None)!r}".encode())


def _dataset_key(dataset, h) -> None:
    """The images a data set yields: its annotation file's bytes, its image folder, the subset indices."""
    chain = []
    while hasattr(dataset, "dataset") and hasattr(dataset, "indices"):
        chain.append(list(map(int, dataset.indices)))
        dataset = dataset.dataset
    h.update(repr(chain).encode())
    ann = getattr(dataset, "annotations", None)
    if ann is None or not os.path.isfile(ann):
        raise ValueError("cached_collect needs a rmkd.data.CocoDetection (or a Subset of one) to name its images")
    h.update(Path(ann).read_bytes())
    h.update(os.path.abspath(dataset.images).encode())


def collect_key(teacher: nn.Module, student: nn.Module, dataset, **collect_kwargs) -> str:
    """Hex key of one :func:`rmkd.analysis.collect` call: both models' weights and settings, the
    data set's images, collect's own options and the source of the code that computes it."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent  # the rmkd package
    for rel in _COLLECT_SOURCES:
        h.update((root / rel).read_bytes())
    for model in (teacher, student):
        _model_key(model, h)
    _dataset_key(dataset, h)
    h.update(repr(sorted(collect_kwargs.items())).encode())
    return h.hexdigest()[:20]


def cached_collect(teacher: nn.Module, student: nn.Module, dataset, *, cache_dir: str = CACHE_DIR,
                   batch_size: int = 32, **collect_kwargs) -> tuple[Collection, bool]:
    """:func:`rmkd.analysis.collect` of a pair over ``dataset``, computed once and kept on disk.

    The key (:func:`collect_key`) covers both models' weights and settings, the data
    set's images, ``collect_kwargs`` and the code of the analysis, so a retrained
    model, another split or changed code computes afresh. Notebooks that pass the same
    pair, data and options share one entry. ``adapter`` must be a string here (a
    module's weights are not part of the key).

    Returns ``(collection, from_cache)``; ``collection.seconds`` is the time of the
    computation that filled the cache.
    """
    collect_kwargs.setdefault("progress", False)
    if not isinstance(collect_kwargs.get("adapter", "fit"), str):
        raise ValueError("cached_collect: pass adapter as a string ('fit' or 'fit_per_level')")
    options = {k: v for k, v in collect_kwargs.items() if k not in ("progress", "desc", "device")}
    path = Path(cache_dir) / f"{collect_key(teacher, student, dataset, batch_size=batch_size, **options)}.pkl"
    if path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f), True
    col = collect(teacher, student, eval_loader(dataset, batch_size=batch_size), **collect_kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        pickle.dump(col, f)
    os.replace(tmp, path)
    return col, False
