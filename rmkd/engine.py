"""The training loop and the evaluation pass, nothing else.

``train_loop`` optimises any *objective*: an ``nn.Module`` whose
``forward(images, targets)`` returns a dict of named scalar losses (the
detector's own losses for plain training, detection + KD terms for a
Distiller). The total is their sum; each term is logged on its own.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .evaluate import coco_map, detections_to_coco
from .models import dense_forward, postprocess


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the message lists every term."""


NONFINITE = ("stop", "skip")
# With nonfinite="skip", this many non-finite steps in a row mean the run has diverged: stop.
MAX_SKIPPED_IN_A_ROW = 10


class DetectionLoss(nn.Module):
    """Plain training objective: the detector's own losses from one dense forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, targets) -> dict[str, torch.Tensor]:
        return dense_forward(self.model, images, targets).losses


def to_device(images, targets, device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [
        {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets
    ]
    return images, targets


def autocast(device: torch.device, amp: bool | str):
    """Mixed precision on CUDA: ``amp`` False (off), True or "bf16", or "fp16" (needs a GradScaler)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16 if amp == "fp16" else torch.bfloat16)
    return contextlib.nullcontext()


def train_loop(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    batches: Iterator,
    *,
    start_step: int,
    max_steps: int,
    device: torch.device,
    clip_grad: float = 0.0,
    amp: bool = False,
    log: Callable[[int, dict], None] | None = None,
    log_every: int = 20,
    every: list[tuple[int, Callable[[int], None]]] = (),
    progress: bool = True,
    desc: str = "train",
    on_interrupt: Callable[[int], None] | None = None,
    nonfinite: str = "stop",
    stats: dict | None = None,
    ctx: distributed.Context = distributed.SINGLE,
    scaler: torch.amp.GradScaler | None = None,
) -> int:
    """Run steps ``start_step + 1 .. max_steps``; return the last step done.

    ``batches`` yields ``(images, targets)`` for each step in order. ``every`` holds
    ``(period, fn)`` pairs called as ``fn(step)`` when ``step % period == 0``
    (checkpoints, evaluation). A non-finite loss raises :class:`NonFiniteLossError`
    before the optimiser touches the weights, so the last checkpoint stays good;
    with ``nonfinite="skip"`` the step is skipped instead (a warning lists the
    terms; the optimiser does not step, the schedule does, so it stays a function
    of the step), until :data:`MAX_SKIPPED_IN_A_ROW` in a row stop the run.
    A batch left empty (every image skipped as unreadable) is skipped the same way.
    ``stats["skipped_steps"]`` counts the skipped steps of this call.

    Under torchrun (``ctx``), ``objective`` is the DDP-wrapped one; every rank
    steps or skips together, and logged losses are means over the ranks (the
    global batch's). ``scaler`` (fp16 autocast) scales the loss and unscales the
    gradients before clipping.
    Ctrl-C takes effect at the end of the current step (see :func:`_sigint_at_step_end`):
    ``on_interrupt(last completed step)`` runs, then the interrupt propagates.
    """
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite={nonfinite!r}: choose one of {', '.join(NONFINITE)}")
    stats = {} if stats is None else stats
    stats["skipped_steps"] = 0
    in_a_row = 0
    objective.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    bar = tqdm(total=max_steps, initial=start_step, desc=desc, disable=not progress, dynamic_ncols=True)
    done = logged = start_step
    updating = False  # True while the optimiser writes the weights: no checkpoint of a half-written step
    tic = time.perf_counter()
    try:
        with _sigint_at_step_end() as sigint:
            for step in range(start_step + 1, max_steps + 1):
                images, targets = next(batches)
                empty = not images
                if empty and ctx.distributed:
                    # A blank image without objects keeps this rank in step with the others (all skip).
                    images, targets = [torch.zeros(3, 32, 32)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
                losses = _losses(objective, images, targets, device, amp) if images else None
                total = sum(losses.values()) if losses is not None else None
                finite = total is not None and bool(torch.isfinite(total))
                ok = distributed.all_true(finite and not empty, ctx, device)  # every rank steps or none does
                if not ok:
                    if empty:
                        warnings.warn(f"step {step}: every image of the batch was skipped as unreadable; step skipped")
                    else:
                        where = "" if not finite else " on another process"
                        terms = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                        in_a_row += 1
                        if nonfinite == "stop" or in_a_row >= MAX_SKIPPED_IN_A_ROW:
                            row = f" ({in_a_row} in a row)" if nonfinite == "skip" else ""
                            raise NonFiniteLossError(f"non-finite loss{where} at step {step}{row}: {terms}")
                        warnings.warn(f"non-finite loss{where} at step {step}: {terms}; step skipped (train.nonfinite=skip)")
                    if ctx.distributed:
                        # DDP expects the backward of every forward; its (discarded) gradients change nothing.
                        (total * 0).backward()
                        optimizer.zero_grad(set_to_none=True)
                    # Leave the weights alone but keep the schedule a function of the step.
                    scheduler.step()
                    stats["skipped_steps"] += 1
                else:
                    in_a_row = 0
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is None:
                        total.backward()
                        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad > 0 else math.inf)
                        updating = True
                        optimizer.step()
                    else:  # fp16: scaled loss, unscaled gradients for clipping
                        scaler.scale(total).backward()
                        scaler.unscale_(optimizer)
                        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad > 0 else math.inf)
                        updating = True
                        scaler.step(optimizer)
                        scaler.update()
                    scheduler.step()
                    updating = False
                done = step  # the weights now hold this step: an interrupt from here saves it
                if ok and log is not None and (step % log_every == 0 or step == max_steps):
                    elapsed = time.perf_counter() - tic
                    mean = distributed.mean_over_ranks({**losses, "loss": total}, ctx)  # the global batch's losses
                    record = {k: v.item() for k, v in mean.items() if k != "loss"}
                    record.update(loss=mean["loss"].item(), grad_norm=float(grad_norm), lr=optimizer.param_groups[0]["lr"])
                    record["sec_per_step"] = elapsed / (step - logged)
                    log(step, record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                    tic, logged = time.perf_counter(), step
                bar.update(1)
                for period, fn in every:
                    if period and step % period == 0:
                        fn(step)
                if sigint["received"]:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        if on_interrupt is not None and done > start_step and not updating:
            on_interrupt(done)
        raise
    bar.close()
    return done


@contextlib.contextmanager
def _sigint_at_step_end():
    """Ctrl-C (SIGINT) sets a flag that the loop reads at the end of the step.

    A KeyboardInterrupt raised wherever Python happens to be could stop the
    optimiser half-way through writing the weights; deferring it to the step's
    end keeps the saved checkpoint a whole step. A second Ctrl-C interrupts at
    once (a long evaluation, say), and then no checkpoint of a half-written step
    is saved. Outside the main thread signals cannot be handled: nothing changes.
    """
    state = {"received": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        if state["received"]:
            raise KeyboardInterrupt
        state["received"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


def _losses(objective, images, targets, device, amp) -> dict | None:
    """The objective's named losses for one batch; None for a batch left empty."""
    if not images:
        return None
    images, targets = to_device(images, targets, device)
    with autocast(device, amp):
        return objective(images, targets)


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, progress: bool = True, amp: bool | str = False) -> list[tuple[int, dict]]:
    """Detections ``[(image_id, {"boxes", "scores", "labels"})]`` over a loader, on the CPU."""
    was_training = model.training
    model.eval()
    results = []
    for images, targets in tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True, leave=False):
        images = [img.to(device) for img in images]
        with autocast(device, amp):
            dense = dense_forward(model, images)
            outputs = postprocess(model, dense)
        for target, out in zip(targets, outputs):
            results.append((int(target["image_id"]), {k: v.float().cpu() for k, v in out.items()}))
    model.train(was_training)
    return results


def evaluate(
    model: nn.Module, loader, device: torch.device, progress: bool = True, amp: bool | str = False,
    ctx: distributed.Context = distributed.SINGLE,
):  # fmt: skip
    """COCO box mAP of ``model`` on ``loader.dataset`` (a :class:`rmkd.data.CocoDetection`).

    Returns ``(metrics, detections)``: metrics as :func:`rmkd.evaluate.coco_map`,
    detections as COCO result dicts (category ids of the data set). Under torchrun
    (``ctx``) each rank predicts its contiguous share of the images, the
    predictions are gathered in order and rank 0 runs COCOeval; every rank
    returns the same metrics and detections.
    """
    dataset = loader.dataset
    base = getattr(dataset, "dataset", dataset)  # a Subset evaluates against its base set's COCO
    # The images asked for, not those predicted: an image skipped as unreadable
    # (data.bad_images=skip) still counts, its objects as missed.
    indices = list(dataset.indices) if dataset is not base else list(range(len(base)))
    wanted = [base.ids[i] for i in indices]
    if ctx.distributed:
        mine = torch.utils.data.Subset(base, [indices[i] for i in distributed.share(len(indices), ctx)])
        loader = torch.utils.data.DataLoader(
            mine, batch_size=loader.batch_size, collate_fn=loader.collate_fn, num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
        )  # fmt: skip
    predictions = predict(model, loader, device, progress and ctx.main, amp)
    predictions = [p for part in distributed.gather(predictions, ctx) for p in part]
    image_ids = [image_id for image_id, _ in predictions]
    detections = detections_to_coco(image_ids, [out for _, out in predictions], base.label_to_cat_id)
    metrics = None
    if ctx.main:
        coco = base.coco
        if len(set(wanted)) < len(base.ids):
            coco = _subset_coco(coco, wanted)
        metrics = coco_map(coco, detections)
    return distributed.broadcast(metrics, ctx), detections


def _subset_coco(coco, image_ids):
    """A COCO object restricted to ``image_ids`` (for evaluating a val subset)."""
    from pycocotools.coco import COCO

    keep = set(image_ids)
    data = {
        "images": [img for img in coco.dataset["images"] if img["id"] in keep],
        "annotations": [a for a in coco.dataset["annotations"] if a["image_id"] in keep],
        "categories": coco.dataset["categories"],
    }
    sub = COCO()
    sub.dataset = data
    with contextlib.redirect_stdout(None):
        sub.createIndex()
    return sub
