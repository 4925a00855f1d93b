"""``rmkd demo``: the main job on the embedded data set, start to finish.

1. generate (or reuse) the digits-on-photos data set;
2. train the teacher once and cache it under ``data/cache/teacher-<config hash>``;
3. train the baseline student for its fixed step budget;
4. distil an RM+PFI student from the teacher on the same budget;
5. print the three APs side by side (also in ``DIR/summary.md`` and ``.json``);
6. analyse both pairs (teacher vs baseline, teacher vs RM+PFI) with ``rmkd analyze``
   (``DIR/analysis``) and say, in numbers, whether rank agreement and the
   F_dif/P_dif gap moved.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

from . import jsonio
from .config import Config, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

# --quick: a pipeline check in about a minute on 2 cores; its numbers mean nothing.
QUICK = [
    "data.synth.out=data/digits-quick",
    "data.synth.num_train=48",
    "data.synth.num_val=16",
    "train.max_steps=6",
    "train.batch_size=4",
    "train.warmup_steps=2",
    "train.checkpoint_every=3",
    "train.log_every=2",
    "model.pretrain_steps=4",  # a student with weights_backbone: pretrain
]


def _config_path(given: str | None, name: str) -> str:
    if given:
        return given
    local = Path("configs") / name
    return str(local if local.is_file() else CONFIG_DIR / name)


REPO = CONFIG_DIR.parent  # the checkout (editable install): notebooks chdir here


def smoke_mode() -> bool:
    """``RMKD_SMOKE=1`` in the environment: every budget shrinks to a pipeline check."""
    return os.environ.get("RMKD_SMOKE", "").strip() not in ("", "0", "false", "no")


def teacher_dir(cfg: Config, cache: str) -> str:
    """Cache folder of a teacher, keyed by everything that shapes its weights."""
    return os.path.join(cache, f"teacher-{cfg.digest('seed', 'data', 'model', 'train')}")


def finished_metrics(run_dir: str, steps: int) -> dict | None:
    """The run's ``metrics.json`` if it finished all ``steps``, else None."""
    done = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(done):
        return None
    metrics = read_metrics(done)
    return metrics if metrics.get("step") == steps else None


def train_cached(cfg: Config, run_dir: str, progress: bool, kind: str = "teacher", teacher_cache=None) -> dict:
    """Metrics of the run in ``run_dir``: reused if finished, resumed if partial, else trained.

    ``kind="distill"`` distils from ``cfg.distill.teacher`` (with ``teacher_cache``
    when given, see :mod:`rmkd.teacher_cache`); any other kind trains plainly.
    """
    from .run import distill, train

    metrics = finished_metrics(run_dir, cfg.train.max_steps)
    if metrics is not None:
        print(f"reusing trained model in {run_dir}")
        return metrics
    resume = os.path.isfile(os.path.join(run_dir, "last.pt"))
    if kind == "distill":
        distill(cfg, run_dir, resume=resume, progress=progress, teacher_cache=teacher_cache)
    else:
        train(cfg, run_dir, resume=resume, progress=progress, kind=kind)
    return finished_metrics(run_dir, cfg.train.max_steps)


def teacher_outputs(cfg: Config, progress: bool):
    """The teacher cache for ``cfg``'s distillation (:mod:`rmkd.teacher_cache`), or None where the
    config draws random inputs (flips, multi-scale), which a cache cannot serve."""
    from .config import ConfigError
    from .teacher_cache import build_for, check_cacheable

    try:
        check_cacheable(cfg)
    except ConfigError as e:
        print(f"teacher cache off: {e}")
        return None
    return build_for(cfg, progress)


def _fresh_train(cfg: Config, run_dir: str, progress: bool, kind: str) -> dict:
    from .run import distill, train

    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    if kind == "distill":
        # the teacher's forward, a large share of a distillation step, computed once per training image
        distill(cfg, run_dir, progress=progress, teacher_cache=teacher_outputs(cfg, progress))
    else:
        train(cfg, run_dir, progress=progress, kind=kind)
    return read_metrics(os.path.join(run_dir, "metrics.json"))


def read_metrics(path: str) -> dict:
    """A run's ``metrics.json``, with the metrics written as ``null`` back as NaN (not measurable)."""
    with open(path, encoding="utf-8") as f:
        return jsonio.nan_for_none(json.load(f))


def format_table(rows: list[dict]) -> str:
    """A markdown table of demo rows (AP on the 0-100 scale)."""
    cols = ["model", "backbone", "params (M)", "steps", "s/step", "train min", "AP", "AP50", "AP75", "APs", "APm", "APl"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [
            r["model"],
            r["backbone"],
            f"{r['params_m']:.2f}",
            str(r["steps"]),
            f"{r['sec_per_step']:.3f}",
            f"{r['train_minutes']:.1f}",
        ] + [f"{100 * r[k]:.1f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _row(name: str, cfg: Config, metrics: dict) -> dict:
    m = cfg.model
    return {
        "model": name,
        "backbone": f"{m.family} {m.backbone}-FPN{m.fpn_channels} ({m.head_convs} head convs)",
        "params_m": metrics["train_summary"]["params"] / 1e6,
        "steps": metrics["step"],
        "sec_per_step": metrics["train_summary"]["sec_per_step_median"],
        "train_minutes": metrics["train_summary"]["train_seconds"] / 60,
        **{k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
    }


def demo_checkpoints(smoke: bool | None = None, out: str | None = None, cache: str = "data/cache", progress: bool = True) -> dict:
    """``{"teacher", "baseline", "RM+PFI": checkpoint path, "config": student Config}``: the demo's
    three models, trained only where missing (finished runs are reused, partial ones resumed).

    ``smoke`` (default: :func:`smoke_mode`) uses the ``--quick`` budgets, for notebooks in CI.
    """
    smoke = smoke_mode() if smoke is None else smoke
    extra = QUICK if smoke else []
    out = out or ("runs/demo-smoke" if smoke else "runs/demo")
    t_cfg = load_config(_config_path(None, "teacher.yaml"), extra)
    s_cfg = load_config(_config_path(None, "student.yaml"), extra)
    from .pretrain import ensure_pretrained
    from .run import data_splits

    data_splits(t_cfg, progress)
    t_dir = teacher_dir(t_cfg, os.path.join(cache, "quick") if smoke else cache)
    train_cached(t_cfg, t_dir, progress)
    kd_cfg = copy.deepcopy(s_cfg)
    kd_cfg.distill.teacher = os.path.join(t_dir, "last.pt")
    paths = {"teacher": os.path.join(t_dir, "last.pt")}
    for name, folder, cfg, kind in (("baseline", "student", s_cfg, "student"), ("RM+PFI", "student_rm_pfi", kd_cfg, "distill")):
        run_dir = os.path.join(out, folder)
        missing = kind == "distill" and finished_metrics(run_dir, cfg.train.max_steps) is None
        train_cached(cfg, run_dir, progress, kind, teacher_outputs(cfg, progress) if missing else None)
        paths[name] = os.path.join(run_dir, "last.pt")
    ensure_pretrained(s_cfg, progress)  # callers build students from this config (reused runs made it long ago)
    paths["config"] = s_cfg
    return paths


def analyze_pairs(t_dir: str, out: str, progress: bool) -> dict[str, dict]:
    """``rmkd analyze`` of the teacher against both demo students, into ``out/analysis``."""
    from .analysis.report import analyze

    students = {
        "baseline": os.path.join(out, "student", "last.pt"),
        "RM+PFI": os.path.join(out, "student_rm_pfi", "last.pt"),
    }
    return analyze(os.path.join(t_dir, "last.pt"), students, os.path.join(out, "analysis"), progress=progress)


def analysis_text(summary: dict[str, dict]) -> str:
    """The demo's verdict on the two observations, in numbers."""
    base, kd = summary["baseline"], summary["RM+PFI"]
    rows = [
        ("mean Kendall tau of candidate ranks (teacher vs student)", "kendall_tau"),
        ("top-1 candidate agreement", "top1_agree"),
        ("IoU of the student's top-ranked box", "s_top1_iou"),
        ("kept boxes from a different anchor than the teacher's", "kept_anchor_differs"),
        ("Pearson r of F_dif and P_dif", "gap_pearson"),
        ("top-10% overlap of F_dif and P_dif", "gap_top_iou"),
    ]
    lines = ["| pair statistic | baseline | RM+PFI | change |", "|---|---|---|---|"]
    num = lambda x, sign="": f"{x:{sign}.3f}" if x == x else "n/a"  # noqa: E731  (NaN: not measurable)
    for label, key in rows:
        lines.append(f"| {label} | {num(base[key])} | {num(kd[key])} | {num(kd[key] - base[key], '+')} |")
    tau = kd["kendall_tau"] - base["kendall_tau"]
    r = kd["gap_pearson"] - base["gap_pearson"]

    def moved(delta: float, unit: str) -> str:
        if delta != delta:
            return "could not be measured (too few instances)"
        return f"{'rose' if delta > 0 else 'fell' if delta < 0 else 'did not move'} by {abs(delta):.3f}{unit}"

    verdict = (
        f"With RM+PFI, rank agreement {moved(tau, ' Kendall tau')}; "
        f"the F_dif / P_dif correlation {moved(r, ' (Pearson r)')} "
        f"(both pairs: {base['instances']} GT instances of the val split). Frames, figures and per-size / per-level "
        "tables: analysis/summary.md."
    )
    return "\n".join(lines) + "\n\n" + verdict + "\n"


def run_demo(
    out: str = "runs/demo",
    teacher_config: str | None = None,
    student_config: str | None = None,
    cache: str = "data/cache",
    quick: bool = False,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> list[dict]:
    extra = (QUICK if quick else []) + list(overrides or [])
    t_cfg = load_config(_config_path(teacher_config, "teacher.yaml"), extra)
    s_cfg = load_config(_config_path(student_config, "student.yaml"), extra)
    if t_cfg.data != s_cfg.data:
        raise ValueError("teacher and student configs must read the same data (their 'data' sections differ)")

    print("[1/5] data")
    from .run import data_splits

    data_splits(t_cfg, progress)
    print("[2/5] teacher")
    t_dir = teacher_dir(t_cfg, os.path.join(cache, "quick") if quick else cache)
    t_metrics = train_cached(t_cfg, t_dir, progress)
    print("[3/5] baseline student")
    s_metrics = _fresh_train(s_cfg, os.path.join(out, "student"), progress, "student")
    print("[4/5] RM+PFI student (distilled from the teacher, same budget)")
    kd_cfg = copy.deepcopy(s_cfg)
    kd_cfg.distill.teacher = os.path.join(t_dir, "last.pt")
    kd_metrics = _fresh_train(kd_cfg, os.path.join(out, "student_rm_pfi"), progress, "distill")

    weights = " + ".join(f"{w:g} {k.upper()}" for k, w in kd_cfg.distill.weights().items())
    rows = [
        _row("teacher", t_cfg, t_metrics),
        _row("student (baseline)", s_cfg, s_metrics),
        _row(f"student (RM+PFI: det + {weights})", kd_cfg, kd_metrics),
    ]
    table = format_table(rows)
    t_ap, s_ap, kd_ap = (100 * r["AP"] for r in rows)
    gap = t_ap - s_ap
    closed = f"{100 * (kd_ap - s_ap) / gap:.0f}%" if gap > 0 else "n/a (no gap)"
    text = (
        f"{table}\n\nCOCO AP on the embedded val split. teacher - student gap: {gap:.1f} AP; "
        f"RM+PFI changes the student by {kd_ap - s_ap:+.1f} AP ({closed} of the gap).\n"
    )
    print("[5/5] analysis: rank agreement and the F_dif / P_dif gap of both pairs")
    analysis = analyze_pairs(t_dir, out, progress)
    text += "\n" + analysis_text(analysis)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(text)
    jsonio.write(os.path.join(out, "summary.json"), {"teacher_dir": t_dir, "rows": rows, "analysis": analysis}, indent=2)
    print()
    print(text)
    return rows
