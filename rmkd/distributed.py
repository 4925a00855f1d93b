"""Data-parallel training through ``torchrun``: the process group and the few collectives we use.

rmkd has no launcher of its own. ``torchrun --nproc_per_node=N -m rmkd.cli train ...``
(or several nodes with the usual ``--nnodes/--node_rank/--rdzv_*`` flags) starts N
processes with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`from_env` reads
them and :func:`setup` joins the process group (NCCL on GPUs, gloo on CPU, so the same code is
tested on a laptop). Without those variables everything here is a no-op for one
process, and single-process runs are unchanged bit for bit.

What is split and what is not:

* ``train.batch_size`` is the **global** batch: each step's global batch (a pure
  function of seed and step, see :mod:`rmkd.data.loader`) is cut into equal
  contiguous shares, one per rank. Detection losses are means over images, so
  DDP's gradient average over ranks equals the one-process gradient of the
  global batch (test: ``tests/test_distributed.py``).
* Evaluation: each rank predicts its share of the validation images, the
  detections are gathered and rank 0 runs COCOeval; every rank gets the metrics.
* Rank 0 alone writes checkpoints, logs and metrics; every rank's RNG state is
  gathered into the checkpoint so a resume restores each rank.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process sits: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Context()


def from_env() -> Context:
    """The context ``torchrun`` describes in the environment (one process without it)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e}); start rmkd with torchrun") from None
    return Context(rank, world, local)


def setup(ctx: Context, device: torch.device) -> None:
    """Join the process group if ``torchrun`` started us (``ctx`` from :func:`from_env`).

    ``device`` decides the backend: NCCL for CUDA, gloo otherwise. Idempotent.
    """
    if ctx.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # A long timeout: rank 0 may evaluate or analyse while the others wait at the next collective.
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(name: str, ctx: Context) -> str:
    """``cuda`` / ``auto`` become this rank's GPU (``cuda:LOCAL_RANK``) under torchrun."""
    if ctx.distributed and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank}"
    return name


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def all_true(flag: bool, ctx: Context, device: torch.device) -> bool:
    """True only if ``flag`` is True on every rank (one tiny all-reduce)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def mean_over_ranks(values: dict[str, torch.Tensor], ctx: Context) -> dict[str, torch.Tensor]:
    """Each scalar averaged over the ranks (for logging the global batch's losses)."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    dist.all_reduce(stacked)
    stacked /= ctx.world
    return dict(zip(keys, stacked))


def gather(obj, ctx: Context) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled; for small things)."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, ctx: Context):
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share(n: int, ctx: Context) -> range:
    """This rank's indices of ``range(n)``: contiguous, sizes differ by at most one."""
    start = n * ctx.rank // ctx.world
    stop = n * (ctx.rank + 1) // ctx.world
    return range(start, stop)
