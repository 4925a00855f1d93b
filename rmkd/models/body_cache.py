"""A frozen backbone body's outputs kept in memory, per image.

A body with every weight frozen and FrozenBatchNorm (``model.trainable_layers=0``,
``model.norm=frozen_bn``) is a fixed function of its input: on the embedded digits,
where training adds no random augmentation, every epoch feeds it the same images and
gets the same C2..C5 maps back. The body's forward is about a third of the frozen
student's step on 2 CPU cores (docs/RESULTS.md, "The regime shipped, and the study v2"), so
:class:`CachedBody` computes each image's maps once and reuses them.

Images are recognised by a hash of their bytes (as the body receives them: resized and
normalised), so nothing upstream has to pass image ids, and a flipped or rescaled image
is simply a new entry. Only CPU tensors are cached: on a GPU the body is cheap and the
hash would need a copy to the host. A cached image's maps may differ from a fresh
batch's in the last float bits (convolution results depend slightly on the batch they
are computed in), never more.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter


class CachedBody(IntermediateLayerGetter):
    """torchvision's ``IntermediateLayerGetter`` (same children, same state_dict names) whose
    outputs for up to ``max_images`` images are remembered.

    forward: ``[B, 3, H, W]`` -> ``OrderedDict`` of ``[B, C_l, H/s_l, W/s_l]``, as the getter.
    ``hits`` and ``misses`` count images served from memory and computed.
    """

    def __init__(self, getter: IntermediateLayerGetter, max_images: int):
        nn.ModuleDict.__init__(self, getter.items())
        self.return_layers = dict(getter.return_layers)
        check_frozen(self)
        self.max_images = int(max_images)
        self._maps: dict[bytes, list[Tensor]] = {}
        self.hits = self.misses = 0

    def forward(self, x: Tensor) -> OrderedDict:
        if x.device.type != "cpu" or x.requires_grad or self.max_images <= 0:
            return super().forward(x)
        keys = [hashlib.blake2b(img.contiguous().numpy().tobytes(), digest_size=16).digest() for img in x]
        found = {k: self._maps[k] for k in keys if k in self._maps}
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            with torch.no_grad():  # nothing in a frozen body needs a gradient
                fresh = super().forward(x[missing])
            for j, i in enumerate(missing):
                found[keys[i]] = [m[j].clone() for m in fresh.values()]
                if len(self._maps) < self.max_images:  # when full, later images are computed every time
                    self._maps[keys[i]] = found[keys[i]]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        names = [self.return_layers[n] for n in self if n in self.return_layers]  # the getter's order
        return OrderedDict((name, torch.stack([found[k][n] for k in keys])) for n, name in enumerate(names))

    def __deepcopy__(self, memo):
        """A copy starts with an empty memory (a copied model must not carry hundreds of MB along)."""
        new = CachedBody.__new__(CachedBody)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = copy.deepcopy(v, memo) if k != "_maps" else {}
        new.hits = new.misses = 0
        return new


def check_frozen(body: nn.Module) -> None:
    """Refuse a body that is not a fixed function: a trainable weight or a BatchNorm that
    updates its statistics would make remembered outputs stale."""
    trainable = [n for n, p in body.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(f"a cached body must be frozen, but {trainable[0]} is trainable: set trainable_layers=0")
    norms = [n for n, m in body.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    if norms:
        raise ValueError(f"a cached body needs FrozenBatchNorm2d, but {norms[0]} updates its statistics: set norm=frozen_bn")
