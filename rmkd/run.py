"""Wiring: a :class:`~rmkd.config.Config` becomes data, model, optimiser and a run folder.

``train`` is what ``rmkd train`` (and, with a distillation objective,
``rmkd distill``) runs. A run folder holds::

    config.yaml     the full resolved config
    last.pt         checkpoint (model, optimizer, scheduler, step, rng, config)
    metrics.jsonl   one JSON line per logged step / evaluation
    metrics.json    final COCO metrics on the val split
    detections.json final detections on the val split (COCO result format)

The JSON files are strict JSON (:mod:`rmkd.jsonio`): a metric that is NaN (e.g.
``APl`` without large objects) is written as ``null``.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from . import distributed, engine, jsonio
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import Config, ConfigError, load_config, save_config
from .builders import (  # noqa: F401  (re-exported: rmkd.run has always offered these)
    build_datasets,
    build_model,
    build_optimizer,
    build_scheduler,
    data_splits,
    scaled_lr,
    seed_everything,
    val_subset,
)
from .data.loader import eval_loader, train_loader
from .pretrain import ensure_pretrained


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return device


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated (CUDA) or peak resident memory of this process (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class MetricsLog:
    """Appends strict JSON lines to ``metrics.jsonl`` (and TensorBoard scalars when installed)."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def __call__(self, step: int, record: dict, prefix: str = "train") -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(jsonio.dumps({"step": step, "time": round(time.time(), 3), prefix: record}) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self):
        if self.tb is not None:
            self.tb.close()


class _NoLog:
    """The metrics log of ranks other than 0: they compute, rank 0 writes."""

    def __call__(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------ train
#
# train() reads top-down: _set_up builds the parts, _resume loads last.pt into them,
# _open_run_folder starts writing, _batches draws the data (and only then restores the RNG),
# _periodic_jobs lists what the loop calls every N steps, _loop trains, _write_out ends the run.
# A TrainingRun holds the parts that the checkpoint, the evaluation and the write-out share.


@dataclass
class TrainingRun:
    """One invocation of :func:`train`: the parts it set up and the jobs the loop calls on them."""

    cfg: Config
    out_dir: str
    kind: str  # "train", "distill", ...: recorded in last.pt, shown on the progress bar
    ctx: distributed.Context
    device: torch.device
    progress: bool  # only rank 0 draws progress bars
    train_set: object  # CocoDetection
    val_set: object  # CocoDetection
    model: nn.Module  # the detector being trained
    objective: nn.Module  # its forward gives the losses; holds the model (and e.g. KD adapters)
    optimizer: torch.optim.Optimizer
    scheduler: object
    amp: bool | str  # False, "bf16" or "fp16" (CUDA only)
    scaler: torch.amp.GradScaler | None  # fp16 only
    start: int = 0  # the step resumed from (0: a fresh run)
    log: object = field(default_factory=_NoLog)  # MetricsLog on rank 0 once the folder is open
    val_loader: object = None
    step_times: list[float] = field(default_factory=list)  # sec_per_step of each logged step
    clock_step: int = 0  # the step train_seconds was last advanced to
    train_seconds: float = 0.0  # training time without evaluation, for learning curves

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.out_dir, "last.pt")

    def log_train(self, step: int, record: dict) -> None:
        """The loop's log: the record plus the training time so far."""
        self.step_times.append(record["sec_per_step"])
        self.train_seconds += record["sec_per_step"] * (step - self.clock_step)
        self.clock_step = step
        self.log(step, {**record, "train_seconds": round(self.train_seconds, 2)})

    def checkpoint(self, step: int, gather: bool = True) -> None:
        """Write ``last.pt`` (rank 0) at ``step``, with the RNG state of every rank.

        With ``gather`` this is a collective: every rank calls it at the same step.
        """
        rng = {"torch": torch.get_rng_state()}
        if self.ctx.distributed and gather:
            rng["ranks"] = distributed.gather(rng["torch"], self.ctx)
        if not self.ctx.main:
            return
        state = {
            "model": self.model.state_dict(),
            "objective": objective_extra(self.objective),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": step,
            "config": self.cfg.to_dict(),
            "kind": self.kind,
            "rng": rng,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        save_checkpoint(state, self.ckpt_path)

    def evaluate(self, step: int) -> tuple[dict, list[dict]]:
        """``(metrics, detections)`` on the val split, logged as ``eval``; the training RNG is untouched."""
        with torch.random.fork_rng(devices=[]):  # a DataLoader iterator draws from the global RNG
            metrics, detections = engine.evaluate(self.model, self.val_loader, self.device, self.progress, self.amp, self.ctx)
        self.log(step, {**metrics, "train_seconds": round(self.train_seconds, 2)}, prefix="eval")
        return metrics, detections


def train(
    cfg: Config,
    out_dir: str,
    resume: bool = False,
    progress: bool = True,
    make_objective: Callable[[nn.Module, torch.device], nn.Module] | None = None,
    kind: str = "train",
) -> dict:
    """Train a detector as configured; return the final val metrics.

    ``make_objective(model, device)`` builds the module whose forward gives the
    losses (default: the detector's own losses). Its trainable parameters are the
    optimiser's; its state other than the model (e.g. adapters) is checkpointed too.
    """
    os.makedirs(out_dir, exist_ok=True)
    run = _set_up(cfg, out_dir, progress, make_objective, kind)
    state = _resume(run, resume)
    _open_run_folder(run)
    batches = _batches(run, state)
    forward = _for_ddp(run)
    every, hook = _periodic_jobs(run)
    step, loop_stats, loop_seconds = _loop(run, forward, batches, every)
    return _write_out(run, step, hook, loop_stats, loop_seconds)


def _set_up(cfg: Config, out_dir: str, progress: bool, make_objective, kind: str) -> TrainingRun:
    """Process group, device, data, model, objective, optimiser and schedule, in this order.

    The order is part of the run: the initial weights (and any adapters) are drawn
    from the RNG seeded here, so a rerun with the same seed repeats them.
    """
    ctx = distributed.from_env()
    device = resolve_device(distributed.local_device(cfg.train.device, ctx))
    distributed.setup(ctx, device)
    if cfg.train.batch_size % ctx.world:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is the global batch and must split evenly over "
            f"{ctx.world} processes; use a multiple of {ctx.world}"
        )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
    if cfg.analysis.every and make_objective is None and not cfg.analysis.teacher:
        raise ConfigError("analysis.every is set but there is no teacher to compare with: set analysis.teacher=CKPT")
    progress = progress and ctx.main
    train_set, val_set = _datasets(cfg, ctx, progress)
    # Seeded after the data and the pretrained backbone: either may be made here on first use,
    # and pretraining draws from the RNG, so a run must not start differently when they existed.
    seed_everything(cfg.seed)
    model = _student(cfg, ctx, device)
    objective = (make_objective or (lambda m, d: engine.DetectionLoss(m)))(model, device).to(device)
    optimizer = build_optimizer([p for p in objective.parameters() if p.requires_grad], cfg)
    scheduler = build_scheduler(optimizer, cfg)
    if ctx.rank > 0:
        # Same initial weights on every rank (seeded above; DDP also copies rank 0's), but each
        # rank its own stream for random augmentation, so the ranks do not flip the same images.
        torch.manual_seed(cfg.seed + 7919 * ctx.rank)
    amp = (cfg.train.amp_dtype if cfg.train.amp else False) if device.type == "cuda" else False
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    return TrainingRun(
        cfg=cfg, out_dir=out_dir, kind=kind, ctx=ctx, device=device, progress=progress, train_set=train_set,
        val_set=val_set, model=model, objective=objective, optimizer=optimizer, scheduler=scheduler, amp=amp, scaler=scaler,
    )  # fmt: skip


def _datasets(cfg: Config, ctx: distributed.Context, progress: bool):
    """``(train set, val set)``; rank 0 generates the embedded data set (and pretrains the backbone on
    it for ``model.weights_backbone: pretrain``, once) while the others wait."""
    if not ctx.main:
        distributed.barrier(ctx)
    train_set, val_set = build_datasets(cfg, progress)
    if ctx.main:
        ensure_pretrained(cfg, progress)
        distributed.barrier(ctx)
    return train_set, val_set


def _student(cfg: Config, ctx: distributed.Context, device: torch.device) -> nn.Module:
    """The detector to train, on ``device`` (BatchNorm synced over GPUs under torchrun)."""
    model = build_model(cfg)
    if ctx.distributed and cfg.model.norm == "bn":
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # statistics of the global batch
        elif ctx.main:
            warnings.warn("model.norm=bn under torchrun on CPU: BatchNorm statistics are per process (SyncBatchNorm needs GPUs)")
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _resume(run: TrainingRun, resume: bool) -> dict | None:
    """Load ``last.pt`` into the run's parts and set ``run.start``; return the checkpoint (None: fresh).

    A folder that holds a run is only continued when asked (``resume``), and only
    with the model config it was trained with.
    """
    path = run.ckpt_path
    if not os.path.exists(path):
        return None
    if not resume:
        raise ConfigError(f"{run.out_dir} already holds a run (last.pt); pass --resume to continue it or choose another --out")
    state = load_checkpoint(path)
    # the digest leaves out speed settings (model.body_cache), which a resumed run may change
    if load_config(base=state.get("config", {})).digest("model") != run.cfg.digest("model"):
        raise ConfigError(f"{path} was trained with another model config; resume with the same config")
    run.model.load_state_dict(state["model"])
    # adapters and other trainable state of the objective outside the detector
    run.objective.load_state_dict({**run.objective.state_dict(), **state.get("objective", {})})
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    run.start = run.clock_step = int(state["step"])
    if run.ctx.main:
        print(f"resuming {run.out_dir} from step {run.start}", file=sys.stderr)
    return state


def _open_run_folder(run: TrainingRun) -> None:
    """Rank 0 writes ``config.yaml`` and opens ``metrics.jsonl``; the val loader is made."""
    distributed.barrier(run.ctx)  # every rank has checked (and read) last.pt before rank 0 writes anything
    if run.ctx.main:
        save_config(run.cfg, os.path.join(run.out_dir, "config.yaml"))
        run.log = MetricsLog(run.out_dir)
    run.val_loader = eval_loader(val_subset(run.val_set, run.cfg.data.val_limit), run.cfg.eval.batch_size, run.cfg.data.workers)


def _batches(run: TrainingRun, state: dict | None):
    """The iterator of this rank's training batches from step ``run.start + 1`` on.

    A resumed run restores the RNG only after creating it: creating the loader's
    iterator draws from the RNG, and the checkpointed state is the one that followed
    that draw in the original run.
    """
    cfg, ctx = run.cfg, run.ctx
    t = cfg.train
    batches = iter(train_loader(run.train_set, t.batch_size, cfg.seed, run.start, t.max_steps, cfg.data.workers, ctx.rank, ctx.world))
    if state is not None and run.start:
        _restore_rng(run, state["rng"])
    return batches


def _restore_rng(run: TrainingRun, rng: dict) -> None:
    """This rank's RNG state from the checkpoint (rank 0's when it holds none per rank)."""
    ctx, ranks = run.ctx, rng.get("ranks")
    if ctx.distributed and ranks is not None and len(ranks) == ctx.world:
        torch.set_rng_state(ranks[ctx.rank])
        return
    if ctx.distributed and ctx.main:
        warnings.warn(
            f"{run.ckpt_path} holds no RNG state for {ctx.world} processes (saved on Ctrl-C or with another "
            "process count): random augmentation will not repeat exactly"
        )
    torch.set_rng_state(rng["torch"])


def _for_ddp(run: TrainingRun) -> nn.Module:
    """The objective the loop calls: wrapped in DistributedDataParallel under torchrun."""
    if not run.ctx.distributed:
        return run.objective
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        run.objective,
        device_ids=[run.device.index] if run.device.type == "cuda" else None,
        broadcast_buffers=False,  # the frozen teacher is outside the module; student BN is synced or per rank
        find_unused_parameters=_has_unused_parameters(run.objective),
    )


def _periodic_jobs(run: TrainingRun):
    """``(every, hook)``: the loop's ``(period, fn)`` jobs and the analysis hook (or None).

    A fresh run first checks the teacher and takes the hook's step-0 measurement.
    """
    cfg = run.cfg
    every = [(cfg.train.checkpoint_every, run.checkpoint)]
    if cfg.train.eval_every:
        every.append((cfg.train.eval_every, run.evaluate))
    teacher = getattr(run.objective, "teacher", None)
    if run.start == 0 and teacher is not None and cfg.distill.check_teacher:
        check_teacher(teacher, cfg.distill.teacher, run.val_set, cfg, run.device, run.log, run.progress, run.ctx)
    # rank 0 measures
    hook = analysis_hook(cfg, run.objective, run.model, run.val_set, run.log, run.device) if run.ctx.main else None
    if hook is not None:
        every.append((cfg.analysis.every, hook))
        if run.start == 0:
            hook(0)
    return every, hook


def _loop(run: TrainingRun, forward: nn.Module, batches, every) -> tuple[int, dict, float]:
    """Train to ``train.max_steps``; ``(last step, loop stats, wall seconds of the loop)``.

    Ctrl-C saves the last completed step (no collective: other ranks may be gone); a
    non-finite loss leaves the last checkpoint as it was and says how to go on.
    """
    cfg = run.cfg
    tic = time.perf_counter()
    loop_stats: dict = {}
    try:
        step = engine.train_loop(
            forward,
            run.optimizer,
            run.scheduler,
            batches,
            start_step=run.start,
            max_steps=cfg.train.max_steps,
            device=run.device,
            clip_grad=cfg.train.clip_grad,
            amp=run.amp,
            log=run.log_train,
            log_every=cfg.train.log_every,
            every=every,
            progress=run.progress,
            desc=f"{run.kind} {os.path.basename(os.path.normpath(run.out_dir))}",
            on_interrupt=lambda step: run.checkpoint(step, gather=False),
            nonfinite=cfg.train.nonfinite,
            stats=loop_stats,
            ctx=run.ctx,
            scaler=run.scaler,
        )
    except engine.NonFiniteLossError as e:
        path = run.ckpt_path
        kept = f"{path} (step {load_checkpoint(path)['step']})" if os.path.exists(path) else "none yet"
        distributed.cleanup()
        raise engine.NonFiniteLossError(
            f"{e}; last good checkpoint: {kept}, left as it was. Lower train.lr or train.clip_grad and "
            "rerun with --resume, or set train.nonfinite=skip to skip such steps"
        ) from None
    finally:
        run.log.close()
    return step, loop_stats, time.perf_counter() - tic


def _write_out(run: TrainingRun, step: int, hook, loop_stats: dict, loop_seconds: float) -> dict:
    """Final checkpoint, measurement and evaluation; rank 0 writes ``detections.json`` and ``metrics.json``."""
    run.checkpoint(step)
    if hook is not None:
        hook(step)
    metrics, detections = run.evaluate(step)
    summary = _train_summary(run, loop_stats, loop_seconds)
    if run.ctx.main:
        jsonio.write(os.path.join(run.out_dir, "detections.json"), detections)
        jsonio.write(os.path.join(run.out_dir, "metrics.json"), {"step": step, **metrics, "train_summary": summary}, indent=2)
    distributed.barrier(run.ctx)
    distributed.cleanup()
    return metrics


def _train_summary(run: TrainingRun, loop_stats: dict, loop_seconds: float) -> dict:
    """``metrics.json``'s ``train_summary``: size, speed, memory and what was skipped."""
    cfg = run.cfg
    return {
        "params": sum(p.numel() for p in run.model.parameters()),
        "train_seconds": round(loop_seconds, 1),  # this invocation only (a resumed run counts from resume)
        "sec_per_step_median": float(statistics.median(run.step_times)) if run.step_times else float("nan"),
        "peak_memory_mb": peak_memory_mb(run.device),
        "device": str(run.device),
        "threads": torch.get_num_threads(),
        "processes": run.ctx.world,
        "skipped_steps": loop_stats.get("skipped_steps", 0),  # non-finite or empty batches (train.nonfinite=skip)
        # unreadable images skipped (data.bad_images=skip); counted in this process, so not with data.workers > 0
        "skipped_images": len(run.train_set.skipped) + len(run.val_set.skipped) if not cfg.data.workers else None,
    }


def _has_unused_parameters(objective: nn.Module) -> bool:
    """Whether some trainable parameter gets no gradient (DDP must then look for them).

    A Distiller without feature terms never uses its adapters.
    """
    from .distill import FEATURE_TERMS, Distiller

    return isinstance(objective, Distiller) and not any(t in objective.weights for t in FEATURE_TERMS)


# A teacher whose AP50 on the check images is below this is at chance: untrained, or not the file meant.
TEACHER_CHANCE_AP50 = 0.01
TEACHER_CHECK_IMAGES = 64


def check_teacher(
    teacher: nn.Module, name: str, val_set, cfg: Config, device, log, progress: bool = False,
    ctx: distributed.Context = distributed.SINGLE,
) -> dict:  # fmt: skip
    """Evaluate the teacher on the first val images; warn if it is at chance. Returns its metrics.

    A teacher that was never trained (or a checkpoint of something else) distils
    noise without any error; this makes that visible before hours are spent.
    The metrics go to ``metrics.jsonl`` as ``teacher/*``.
    """
    loader = eval_loader(val_subset(val_set, TEACHER_CHECK_IMAGES), cfg.eval.batch_size, cfg.data.workers)
    with torch.random.fork_rng(devices=[]):  # a DataLoader iterator draws from the global RNG
        metrics, _ = engine.evaluate(teacher, loader, device, progress, False, ctx)
    log(0, {k: metrics[k] for k in ("AP", "AP50")}, prefix="teacher")
    if ctx.main and not metrics["AP50"] >= TEACHER_CHANCE_AP50:  # NaN (no ground truth) also warns
        warnings.warn(
            f"teacher {name} scores AP50 {100 * metrics['AP50']:.2f} on the first {len(loader.dataset)} "
            "validation images, at chance: it looks untrained or is not the checkpoint you meant; "
            "check --teacher (distill.check_teacher=false silences this)"
        )
    return metrics


def analysis_hook(cfg: Config, objective: nn.Module, model: nn.Module, val_set, log, device):
    """The training-time :class:`~rmkd.analysis.AnalysisHook` asked for by ``analysis.every`` (or None)."""
    a = cfg.analysis
    if not a.every:
        return None
    from .analysis.hooks import AnalysisHook

    teacher = getattr(objective, "teacher", None)  # a Distiller brings its own
    if teacher is None:
        if not a.teacher:
            raise ConfigError("analysis.every is set but there is no teacher to compare with: set analysis.teacher=CKPT")
        teacher, _ = load_model(a.teacher, device)
    adapter = a.adapter  # "fit" / "fit_per_level": fitted at each measurement
    if adapter == "trained":
        adapter = getattr(objective, "adapters", None)
        if adapter is None:
            raise ConfigError("analysis.adapter is 'trained' but this run trains no adapters (only rmkd distill does)")
    return AnalysisHook(
        teacher, model, val_set, log, images=a.images, batch_size=cfg.eval.batch_size, device=device,
        score=a.score, adapter=adapter, amp=cfg.train.amp,
    )  # fmt: skip


def distill(cfg: Config, out_dir: str, resume: bool = False, progress: bool = True, teacher_cache=None) -> dict:
    """``rmkd distill``: train the configured student against the frozen teacher ``cfg.distill.teacher``.

    ``teacher_cache`` (a :class:`rmkd.teacher_cache.TeacherCache` built for this
    teacher, training set and input size) replaces the teacher's forward in
    training with its stored, identical outputs.
    """
    from .distill import Distiller

    if not cfg.distill.teacher:
        raise ConfigError("no teacher checkpoint: pass --teacher CKPT (or set distill.teacher)")
    teacher, _ = load_model(cfg.distill.teacher)
    d = cfg.distill
    if teacher_cache is not None:
        # The cache checks itself: rmkd.teacher_cache builds on this module, not the other way round.
        teacher_cache.check_fits(cfg)

    def make_objective(model: nn.Module, device: torch.device) -> nn.Module:
        kd = Distiller.from_config(teacher.to(device), model, d)
        kd.teacher_cache = teacher_cache
        return kd

    return train(cfg, out_dir, resume=resume, progress=progress, make_objective=make_objective, kind="distill")


def objective_extra(objective: nn.Module) -> dict:
    """State of the objective outside the detector (e.g. KD adapters), for the checkpoint."""
    return {k: v for k, v in objective.state_dict().items() if not k.startswith(("model.", "student.", "teacher."))}


def load_model(checkpoint: str, device: torch.device | str = "cpu", overrides: list[str] | None = None):
    """``(model in eval mode, config)`` from an rmkd checkpoint."""
    state = load_checkpoint(checkpoint)
    cfg = load_config(base=state.get("config", {}), overrides=overrides)
    model = build_model(cfg, backbone_init=False)  # the checkpoint holds every weight
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # missing, unexpected or misshapen tensors
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(
            f"checkpoint {checkpoint!r}: its weights do not fit the model its own config describes "
            f"({detail}); the file was edited or damaged: use an unmodified last.pt"
        ) from None
    return model.to(device).eval(), cfg


def evaluate_checkpoint(checkpoint: str, out_dir: str | None = None, overrides: list[str] | None = None, progress: bool = True) -> dict:
    """``rmkd eval``: COCO metrics of a checkpoint on its config's val split."""
    model, cfg = load_model(checkpoint, "cpu", overrides)
    device = resolve_device(cfg.train.device)
    model.to(device)
    _, val = build_datasets(cfg, progress, train=False)
    loader = eval_loader(val_subset(val, cfg.data.val_limit), cfg.eval.batch_size, cfg.data.workers)
    metrics, detections = engine.evaluate(model, loader, device, progress, cfg.train.amp)
    # A folder beside the checkpoint by default, so the training run's own metrics.json stays.
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "eval")
    os.makedirs(out_dir, exist_ok=True)
    jsonio.write(os.path.join(out_dir, "detections.json"), detections)
    jsonio.write(os.path.join(out_dir, "metrics.json"), metrics, indent=2)
    return metrics
