"""Data loaders for step-based training.

Training runs for a fixed number of *steps*, not epochs. The order of samples
is a pure function of ``(seed, step)``: epoch e is the permutation drawn from a
generator seeded with ``seed + e``, and step s takes the next ``batch_size``
indices of the concatenated epochs. A resumed run therefore continues from the
exact sample where the checkpoint stopped, with no sampler state to save.

Under ``torchrun`` every rank builds the same global batches and keeps its
contiguous share (``rank`` of ``world``), so the union over ranks of one step's
images is exactly the one-process batch of that step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from .coco import collate


class StepBatchSampler(Sampler[list[int]]):
    """Batches of indices for steps ``start_step + 1 .. max_steps``.

    Args:
        size: number of samples in the data set.
        batch_size: samples per step.
        seed: base seed of the per-epoch permutations.
        start_step: steps already done (0 for a fresh run).
        max_steps: last step.
        rank, world: this process's share of each global batch of ``batch_size``
            (``batch_size`` must divide by ``world``).
    """

    def __init__(self, size: int, batch_size: int, seed: int, start_step: int, max_steps: int, rank: int = 0, world: int = 1):
        if size < 1:
            raise ValueError("the training set is empty: check data.train.annotations")
        if batch_size % world:
            raise ValueError(f"train.batch_size={batch_size} does not split over {world} processes; use a multiple of {world}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start_step, self.max_steps = start_step, max_steps
        per = batch_size // world
        self.share = slice(rank * per, (rank + 1) * per)

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)

    def _epoch(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.size, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        pos = self.start_step * self.batch_size  # position in the stream of concatenated epochs
        epoch, offset = divmod(pos, self.size)
        perm = self._epoch(epoch)
        for _ in range(len(self)):
            batch: list[int] = []
            while len(batch) < self.batch_size:
                take = perm[offset : offset + self.batch_size - len(batch)]
                batch.extend(take.tolist())
                offset += len(take)
                if offset == self.size:
                    epoch, offset = epoch + 1, 0
                    perm = self._epoch(epoch)
            yield batch[self.share]


def train_loader(
    dataset, batch_size: int, seed: int, start_step: int, max_steps: int, workers: int = 0, rank: int = 0, world: int = 1
) -> DataLoader:
    """Batches for steps ``start_step + 1 .. max_steps`` (this rank's share of each under torchrun)."""
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step, max_steps, rank, world)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


def eval_loader(dataset, batch_size: int, workers: int = 0) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
    )
