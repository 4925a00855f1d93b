"""Training-time analysis: rank agreement and the F_dif/P_dif gap every N steps.

``rmkd train`` / ``rmkd distill`` with ``analysis.every: N`` measure
:func:`~rmkd.analysis.summarize` of :func:`~rmkd.analysis.collect` on the first
``analysis.images`` validation images at step 0, every N steps and at the end,
and log it as ``{"step": s, "analysis": {...}}`` in ``metrics.jsonl``, next to
the losses. ``rmkd.plots.plot_hook_curves(rmkd.plots.read_metrics(path))``
draws the curves: how RM raises rank agreement, how PFI moves the gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Subset

from ..data.loader import eval_loader
from .collect import collect, summarize


class AnalysisHook:
    """Callable ``hook(step)``: measure the pair on a fixed validation subset and log it.

    Args:
        teacher: the reference model (frozen; a Distiller's own teacher when distilling).
        student: the model being trained; put in eval mode for the measurement and
            restored afterwards. The global RNG is saved and restored around it, so a
            run with hooks follows the same trajectory as one without.
        dataset: the validation set; its first ``images`` images are used every time.
        log: ``log(step, record, prefix="analysis")``, e.g. :class:`rmkd.run.MetricsLog`.
        adapter: as :func:`collect` (``"fit"`` refits at each measurement, so every
            point of the curve uses the best linear map for the student of that moment).
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        dataset,
        log: Callable[..., None],
        *,
        images: int = 64,
        batch_size: int = 16,
        device: torch.device | str = "cpu",
        score: str = "cls",
        adapter="fit",
        amp: bool = False,
    ):
        self.teacher, self.student, self.log = teacher, student, log
        subset = Subset(dataset, range(min(images, len(dataset))))
        self.loader = eval_loader(subset, batch_size)
        self.device, self.score, self.adapter, self.amp = torch.device(device), score, adapter, amp
        self.done: set[int] = set()

    def __call__(self, step: int) -> dict:
        if step in self.done:  # the end of a run may coincide with a period
            return {}
        was_training = self.student.training
        tic = time.perf_counter()
        # fork_rng: iterating a DataLoader draws a seed from the global RNG; without the
        # fork, measuring would shift every later random flip of the training run.
        try:
            with torch.random.fork_rng(devices=[]):
                col = collect(
                    self.teacher,
                    self.student,
                    self.loader,
                    device=self.device,
                    score=self.score,
                    adapter=self.adapter,
                    amp=self.amp,
                    progress=False,
                )
        finally:
            self.student.train(was_training)
        record = {**summarize(col), "seconds": round(time.perf_counter() - tic, 2)}
        self.log(step, record, prefix="analysis")
        self.done.add(step)
        return record
