"""The frozen teacher's dense outputs per training image, computed once, reused by every run.

In ``rmkd reproduce`` every student of a study distils from the same teacher on
the same images, so the teacher's forward (about a third of a distillation step
on the embedded benchmark) is the same computation in every run.
:class:`TeacherCache` runs it once per image and hands the Distiller the stored
outputs instead. It is only valid while the teacher's input for an image never
changes: no random flips, no multi-scale training (``check_cacheable``).

The cached outputs are bit-identical to the live ones on CPU: the cache is built
with batches of the training batch size (a batch of one image can take other
kernels), and a convolution's output for one image does not depend on the
other images of its batch (``tests/test_teacher_cache.py`` checks both, and
that a cached distillation ends with the same weights as a live one).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .config import Config, ConfigError
from .models import dense_forward, detector_family
from .models.dense import DenseOutputs
from .run import build_datasets, data_splits, load_model


def check_cacheable(cfg: Config) -> None:
    """A one-line error unless every training image reaches the teacher unchanged each time."""
    if cfg.data.hflip > 0:
        raise ConfigError(f"the teacher cache needs a fixed input per image, but data.hflip={cfg.data.hflip} flips at random")
    if cfg.model.train_sizes:
        raise ConfigError("the teacher cache needs a fixed input per image, but model.train_sizes resizes at random")


def cache_key(cfg: Config) -> dict:
    """What a cache is valid for: the teacher file, the training images and the input size."""
    splits = data_splits(cfg, progress=False)
    return {
        "teacher": cfg.distill.teacher,
        "train": splits["train"]["annotations"],
        "image_size": list(cfg.model.image_size),
        "batch_size": cfg.train.batch_size,
    }


def build_for(cfg: Config, progress: bool = True) -> TeacherCache:
    """The cache for ``cfg``'s teacher over ``cfg``'s training set (checked cacheable)."""
    check_cacheable(cfg)
    teacher, _ = load_model(cfg.distill.teacher)
    train_set, _ = build_datasets(cfg, progress=False)
    return TeacherCache.build(teacher, train_set, cfg.train.batch_size, cache_key(cfg), progress)


class TeacherCache:
    """Per training image id: the teacher's FPN features and flat head outputs.

    Build with :meth:`build`; :meth:`dense` assembles a batch's :class:`DenseOutputs`.
    ``key`` names what the cache was computed for; a run checks it matches
    (:meth:`check_fits`).
    """

    def __init__(self, outputs: dict[int, dict[str, object]], key: dict):
        self.outputs = outputs
        self.key = key

    def check_fits(self, cfg: Config) -> None:
        """A one-line :class:`ConfigError` unless this cache is valid for the run ``cfg`` describes.

        :func:`rmkd.run.distill` calls it on the cache it is handed, so that ``rmkd.run``
        needs nothing from this module (the import goes one way: this module uses ``rmkd.run``).
        """
        check_cacheable(cfg)
        if self.key != cache_key(cfg):
            raise ConfigError(f"the teacher cache was built for {self.key}, not for this run's {cache_key(cfg)}")

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: nn.Module, dataset, batch_size: int, key: dict, progress: bool = True) -> TeacherCache:
        """Run ``teacher`` over every image of ``dataset`` (in batches of ``batch_size``).

        The last batch is filled up with the first images so that every forward has
        the training batch size (see the module docstring).
        """
        teacher.eval()
        n = len(dataset)
        outputs: dict[int, dict[str, object]] = {}
        bar = tqdm(total=n, desc="teacher cache", disable=not progress, dynamic_ncols=True)
        for start in range(0, n, batch_size):
            index = list(range(start, min(start + batch_size, n)))
            real = len(index)
            index += [i % n for i in range(batch_size - real)]  # fill up: duplicates change nothing
            items = [dataset[i] for i in index]
            images = [img for img, _ in items]
            out = dense_forward(teacher, images)
            for b in range(real):
                image_id = int(items[b][1]["image_id"])
                outputs[image_id] = {
                    "features": [f[b].clone() for f in out.features],
                    **{k: v[b].clone() for k, v in out.head_outputs.items()},
                }
            bar.update(real)
        bar.close()
        return cls(outputs, key)

    def dense(self, teacher: nn.Module, image_ids: list[int], image_list) -> DenseOutputs:
        """The teacher's :class:`DenseOutputs` for a batch, from the cache.

        ``image_list`` is the batch as the detector's transform made it (sizes and
        anchors come from it, as in a live forward).
        """
        missing = [i for i in image_ids if i not in self.outputs]
        if missing:
            raise KeyError(f"teacher cache has no outputs for image ids {missing[:5]}: it was built for another data set")
        rows = [self.outputs[i] for i in image_ids]
        levels = len(rows[0]["features"])
        features: list[Tensor] = [torch.stack([r["features"][lvl] for r in rows]) for lvl in range(levels)]
        device = image_list.tensors.device
        features = [f.to(device) for f in features]
        head = {k: torch.stack([r[k] for r in rows]).to(device) for k in rows[0] if k != "features"}
        anchors = teacher.anchor_generator(image_list, features)
        locations = sum(f.shape[-2] * f.shape[-1] for f in features)
        sizes = [tuple(s) for s in image_list.image_sizes]
        return DenseOutputs(
            family=detector_family(teacher),
            features=features,
            head_outputs=head,
            anchors=anchors,
            num_anchors=head["cls_logits"].shape[1] // locations,
            num_classes=head["cls_logits"].shape[-1] - 1,
            image_sizes=sizes,
            original_sizes=sizes,
        )
