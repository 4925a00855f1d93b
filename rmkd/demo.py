"""``rmkd demo``: the main job on the embedded data set, start to finish.

1. generate (or reuse) the digits-on-photos data set;
2. train the teacher once and cache it under ``data/cache/teacher-<config hash>``;
3. train the baseline student for its fixed step budget;
4. distil an RM+PFI student from the teacher on the same budget;
5. print the three APs side by side (also in ``DIR/summary.md`` and ``.json``).

Later stages (distilled students, analysis) add rows and sections here.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

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
]


def _config_path(given: str | None, name: str) -> str:
    if given:
        return given
    local = Path("configs") / name
    return str(local if local.is_file() else CONFIG_DIR / name)


def teacher_dir(cfg: Config, cache: str) -> str:
    """Cache folder of a teacher, keyed by everything that shapes its weights."""
    return os.path.join(cache, f"teacher-{cfg.digest('seed', 'data', 'model', 'train')}")


def train_cached(cfg: Config, run_dir: str, progress: bool) -> dict:
    """Metrics of the run in ``run_dir``: reused if finished, resumed if partial, else trained."""
    from .run import train

    done = os.path.join(run_dir, "metrics.json")
    if os.path.isfile(done):
        with open(done, encoding="utf-8") as f:
            metrics = json.load(f)
        if metrics.get("step") == cfg.train.max_steps:
            print(f"reusing trained model in {run_dir}")
            return metrics
    resume = os.path.isfile(os.path.join(run_dir, "last.pt"))
    train(cfg, run_dir, resume=resume, progress=progress, kind="teacher")
    with open(done, encoding="utf-8") as f:
        return json.load(f)


def _fresh_train(cfg: Config, run_dir: str, progress: bool, kind: str) -> dict:
    from .run import distill, train

    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    if kind == "distill":
        distill(cfg, run_dir, progress=progress)
    else:
        train(cfg, run_dir, progress=progress, kind=kind)
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)


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

    print("[1/4] data")
    from .run import data_splits

    data_splits(t_cfg, progress)
    print("[2/4] teacher")
    t_dir = teacher_dir(t_cfg, os.path.join(cache, "quick") if quick else cache)
    t_metrics = train_cached(t_cfg, t_dir, progress)
    print("[3/4] baseline student")
    s_metrics = _fresh_train(s_cfg, os.path.join(out, "student"), progress, "student")
    print("[4/4] RM+PFI student (distilled from the teacher, same budget)")
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
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"teacher_dir": t_dir, "rows": rows}, f, indent=2)
    print()
    print(text)
    return rows
