"""``rmkd reproduce``: the paper's ablations on the embedded benchmark, resumable.

For each detector, the teacher is trained once (cached like the demo's), then
the student is trained with every method over several seeds, all on the same
step budget. A run folder per (detector, method, seed) under ``--out``; a
finished run (``metrics.json`` at the full step count) is skipped, a partial
one resumes from its ``last.pt``, so a killed study picks up where it stopped.
After every run the CSV (``detector, method, seed, AP, AP50, AP75, APs, APm,
APl``, ...) and the markdown tables beside it are rewritten.

Weights. RM (4) and PFI (1.5) use the defaults of the public reimplementations
(DESIGN.md). The baselines have no agreed weight at this scale, so each gets
"equal initial pull": its weight makes its value on the first training batches
equal to 1.5 PFI's there (``calibration.json`` records the raw values and
weights). The seed changes the student's initialisation and data order; the
teacher is the same for every run.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pandas as pd
import torch

from .config import Config, ConfigError, load_config
from .distill import TERMS

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
PAPER_WEIGHTS = {"rm": 4.0, "pfi": 1.5}
CALIBRATED = ("soft_label", "fi_full", "fi_positive", "fi_negative", "fi_gt", "fgfi")
# method -> the distill section it trains with (weights left out here are 0); None = plain training.
# Ordered so that a study stopped early has the paper's main ablation complete first.
METHODS: dict[str, dict | None] = {
    "baseline": None,
    "rm": {"rm": 4.0},
    "pfi": {"pfi": 1.5},
    "rm+pfi": {"rm": 4.0, "pfi": 1.5},
    "soft_label": {"soft_label": "calibrated"},
    "rm_iou": {"rm": 4.0, "rm_score": "iou"},
    "rm_cls_iou": {"rm": 4.0, "rm_score": "cls+iou"},
    "fi_full": {"fi_full": "calibrated"},
    "fi_positive": {"fi_positive": "calibrated"},
    "fi_negative": {"fi_negative": "calibrated"},
    "fi_gt": {"fi_gt": "calibrated"},
    "fgfi": {"fgfi": "calibrated"},
    "pfi_detach": {"pfi": 1.5, "pfi_detach": True},  # P_dif without gradient (the paper does not say)
}
# The paper's tables, as (title, methods) over the study's rows.
TABLES = [
    ("RM and PFI (the paper's Table 1 ablation)", ["baseline", "rm", "pfi", "rm+pfi"]),
    ("Soft-label KD vs RM", ["baseline", "soft_label", "rm"]),
    ("What RM ranks by: classification score, IoU, both", ["baseline", "rm", "rm_iou", "rm_cls_iou"]),
    ("PFI vs feature imitation on hand-picked regions", ["baseline", "fi_full", "fi_positive", "fi_negative", "fi_gt", "fgfi", "pfi"]),
    ("PFI with P_dif detached or not (our choice of default)", ["baseline", "pfi", "pfi_detach"]),
]
DETECTORS = {"retinanet": ("teacher.yaml", "student.yaml")}
# No intermediate evaluations: the study needs the final AP only (about 10 s saved twice per run).
STUDY_OVERRIDES = ["train.eval_every=0"]


def method_config(s_cfg: Config, method: str, seed: int, teacher: str, weights: dict[str, float]) -> Config:
    """The student's config for one run: its seed, and for KD methods the distill section."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    cfg = copy.deepcopy(s_cfg)
    cfg.seed = seed
    spec = METHODS[method]
    if spec is None:
        return cfg
    for term in TERMS:
        setattr(cfg.distill, term, 0.0)
    for key, value in spec.items():
        setattr(cfg.distill, key, weights[key] if value == "calibrated" else value)
    cfg.distill.teacher = teacher
    return cfg


@torch.no_grad()
def calibrate(teacher_ckpt: str, s_cfg: Config, terms=CALIBRATED, batches: int = 4, reference=("pfi", 1.5)) -> dict:
    """Weights giving each term the same value as ``reference`` on the first ``batches``
    training batches of a freshly initialised student (seed of ``s_cfg``)."""
    from .data.loader import train_loader
    from .distill import Distiller
    from .run import build_datasets, build_model, load_model, seed_everything

    teacher, _ = load_model(teacher_ckpt)
    seed_everything(s_cfg.seed)
    train_set, _ = build_datasets(s_cfg, progress=False)
    student = build_model(s_cfg)
    names = [reference[0], *terms]
    distiller = Distiller(teacher, student, {t: 1.0 for t in names}).train()
    raw = {t: 0.0 for t in names}
    for images, targets in train_loader(train_set, s_cfg.train.batch_size, s_cfg.seed, 0, batches):
        losses = distiller(images, targets)
        for t in names:
            raw[t] += float(losses[t]) / batches
    ref = reference[1] * raw[reference[0]]
    weights = {t: ref / raw[t] if raw[t] > 0 else 0.0 for t in terms}
    return {"reference": {reference[0]: reference[1]}, "batches": batches, "raw": raw, "weights": weights}


def run_one(cfg: Config, run_dir: str, kd: bool, progress: bool) -> dict:
    """Train, resume or reuse one run; return its final metrics.json."""
    from .demo import train_cached

    return train_cached(cfg, run_dir, progress, "distill" if kd else "student")


def run_study(
    out: str = "runs/reproduce",
    csv: str = "docs/results/ablation.csv",
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    detectors: list[str] | None = None,
    overrides: list[str] | None = None,
    teacher_overrides: list[str] | None = None,
    cache: str = "data/cache",
    progress: bool = True,
) -> pd.DataFrame:
    """Run every (detector, method, seed) not yet finished; return the study's frame."""
    from .demo import _config_path, finished_metrics, teacher_dir, train_cached
    from .run import data_splits

    methods = list(methods or METHODS)
    seeds = list(seeds if seeds is not None else (0, 1, 2))
    detectors = list(detectors or DETECTORS)
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}: choose from {', '.join(METHODS)}")
    for d in detectors:
        if d not in DETECTORS:
            raise ConfigError(f"unknown detector {d!r}: configs exist for {', '.join(DETECTORS)}")
    rows = []
    for det in detectors:
        t_file, s_file = DETECTORS[det]
        t_cfg = load_config(_config_path(None, t_file), list(teacher_overrides or []))
        s_cfg = load_config(_config_path(None, s_file), list(overrides or []))
        data_splits(t_cfg, progress)
        t_dir = teacher_dir(t_cfg, cache)
        print(f"[{det}] teacher ({t_dir})")
        t_metrics = train_cached(t_cfg, t_dir, progress)
        rows.append(_row(det, "teacher", t_cfg.seed, t_metrics, t_cfg))
        teacher = os.path.join(t_dir, "last.pt")
        weights = {}
        if any(v == "calibrated" for m in methods for v in (METHODS[m] or {}).values()):
            weights = _calibration(teacher, s_cfg, os.path.join(out, det, "calibration.json"))
        todo = [(m, s) for m in methods for s in seeds]
        runs = {}  # (method, seed) -> (config, folder)
        for method, seed in todo:
            runs[method, seed] = (method_config(s_cfg, method, seed, teacher, weights), os.path.join(out, det, method, f"seed{seed}"))
        # Every finished run is in the CSV from the start, so it is complete whenever the study stops.
        done = {k: finished_metrics(d, c.train.max_steps) for k, (c, d) in runs.items()}
        results = {k: _row(det, *k, m, runs[k][0]) for k, m in done.items() if m is not None}
        write_results(pd.DataFrame(rows + [results[k] for k in todo if k in results]), csv)
        for i, (method, seed) in enumerate(todo, 1):
            cfg, run_dir = runs[method, seed]
            state = "done" if (method, seed) in results else "running"
            print(f"[{det} {i}/{len(todo)}] {method} seed {seed}: {state} ({run_dir})")
            if state == "running":
                results[method, seed] = _row(det, method, seed, run_one(cfg, run_dir, METHODS[method] is not None, progress), cfg)
                write_results(pd.DataFrame(rows + [results[k] for k in todo if k in results]), csv)
        rows += [results[k] for k in todo]
    frame = pd.DataFrame(rows)
    write_results(frame, csv)
    return frame


def _calibration(teacher: str, s_cfg: Config, path: str) -> dict[str, float]:
    """Baseline weights, computed once per study folder and read back after that."""
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)["weights"]
    print("calibrating baseline weights (equal initial pull with 1.5 PFI)")
    result = calibrate(teacher, s_cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return result["weights"]


def _row(detector: str, method: str, seed: int, metrics: dict, cfg: Config) -> dict:
    summary = metrics.get("train_summary", {})
    weights = cfg.distill.weights() if METHODS.get(method) else {}
    return {
        "detector": detector,
        "method": method,
        "seed": seed,
        **{k: 100 * metrics[k] if metrics[k] is not None else math.nan for k in METRICS},
        "steps": metrics["step"],
        "train_seconds": summary.get("train_seconds"),
        "weights": " ".join(f"{k}={v:.4g}" for k, v in weights.items()),
        "backbone": f"{cfg.model.backbone}-FPN{cfg.model.fpn_channels}",
    }


def write_results(frame: pd.DataFrame, csv: str) -> None:
    """The CSV and, beside it, the markdown tables (``.md``)."""
    Path(csv).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=False, float_format="%.4f")
    Path(csv).with_suffix(".md").write_text(ablation_tables(frame), encoding="utf-8")


def summary_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per (detector, method), and the share of the
    teacher - baseline gap each method closes (from the means)."""
    students = frame[frame.method != "teacher"]
    agg = students.groupby(["detector", "method"], sort=False)[list(METRICS)].agg(["mean", "std", "count"])
    out = pd.DataFrame(
        {
            "AP_mean": agg[("AP", "mean")],
            "AP_std": agg[("AP", "std")],
            "seeds": agg[("AP", "count")].astype(int),
            "AP50_mean": agg[("AP50", "mean")],
            "AP75_mean": agg[("AP75", "mean")],
            "APs_mean": agg[("APs", "mean")],
        }
    ).reset_index()
    teacher = frame[frame.method == "teacher"].groupby("detector")["AP"].mean()
    base = out[out.method == "baseline"].set_index("detector")["AP_mean"]
    gap = out.detector.map(teacher) - out.detector.map(base)
    out["gap_closed"] = (out.AP_mean - out.detector.map(base)) / gap.where(gap > 0)
    return out


def ablation_tables(frame: pd.DataFrame) -> str:
    """The paper's tables from the study's rows, as markdown (mean +- std over seeds)."""
    summary = summary_frame(frame)
    lines = ["# Ablation on the embedded benchmark", "", "Generated by `rmkd reproduce` from the CSV beside this file; AP on 0-100.", ""]
    for det, group in summary.groupby("detector", sort=False):
        t = frame[(frame.detector == det) & (frame.method == "teacher")]
        t_ap = f"{t.AP.mean():.1f}" if len(t) else "n/a"
        base = group[group.method == "baseline"]
        for title, methods in TABLES:
            rows = group.set_index("method").reindex([m for m in methods if m in set(group.method)])
            if rows.empty:
                continue
            lines += [f"## {det}: {title}", "", f"teacher {t_ap} AP", "", "| method | weights | seeds | AP | AP50 | AP75 | APs | change | gap closed |", "|---|---|---|---|---|---|---|---|---|"]
            for method, r in rows.iterrows():
                w = frame[(frame.detector == det) & (frame.method == method)].weights.iloc[0]
                change = r.AP_mean - base.AP_mean.iloc[0] if len(base) and method != "baseline" else math.nan
                lines.append(
                    f"| {method} | {w or '-'} | {r.seeds} | {r.AP_mean:.1f} ± {_std(r.AP_std)} | {r.AP50_mean:.1f} | "
                    f"{r.AP75_mean:.1f} | {r.APs_mean:.1f} | {_signed(change)} | {_pct(r.gap_closed) if method != 'baseline' else ''} |"
                )
            lines.append("")
    return "\n".join(lines)


def _std(x: float) -> str:
    return "n/a" if x != x else f"{x:.1f}"


def _signed(x: float) -> str:
    return "" if x != x else f"{x:+.1f}"


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.0f}%"
