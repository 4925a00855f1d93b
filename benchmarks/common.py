"""Shared helpers for the benchmark scripts: timing and a demo-sized batch."""

from __future__ import annotations

import platform
import statistics
import time

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.node()} {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def median_time(fn, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def interleaved(fns: dict, repeat: int, warmup: int = 2) -> dict:
    """Median seconds of each fn, timed in turn (A B A B ...) so machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            tic = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(t) for name, t in times.items()}


def digits_batch(batch_size: int, seed: int = 0, image_size: int = 64):
    """A batch shaped like the embedded benchmark's (random pixels, 1-4 boxes per image)."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, image_size, image_size, generator=g) for _ in range(batch_size)]
    targets = []
    for _ in range(batch_size):
        n = int(torch.randint(1, 5, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * (image_size - 40)
        wh = 12 + torch.rand(n, 2, generator=g) * 28
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 11, (n,), generator=g)})
    return images, targets
