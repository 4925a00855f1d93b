"""``rmkd analyze``: frames, figures and a short summary for teacher/student pairs.

Writes to ``--out``::

    instances.csv   one row per (student, GT instance): rank agreement, top-1 IoUs, kept anchors
    levels.csv      one row per (student, image, FPN level): F_dif vs P_dif statistics
    summary.json    headline numbers per student (rmkd.analysis.summarize)
    summary.md      the same as tables, plus per size class / per level breakdowns
    *.png           Kendall tau by size; tau vs top-1 IoU; gap heat-maps; Figure-2 style boxes

With several students the first is the reference and the summary says how far
each other moved from it.
"""

from __future__ import annotations

import math
import os

import pandas as pd
from torch import nn

from .. import jsonio
from ..checkpoint import load_checkpoint
from ..config import ConfigError
from ..models import level_name
from .collect import collect, summarize

HEADLINE = {
    "kendall_tau": "Kendall tau (teacher vs student rank of an instance's candidates)",
    "top1_agree": "top-1 candidate agreement (instances with >= 2 candidates)",
    "s_top1_iou": "IoU of the student's top-ranked candidate box with its GT",
    "kept_anchor_differs": "kept boxes from different anchors (instances both models find)",
    "gap_pearson": "Pearson r of F_dif and P_dif (per image and level; levels of >= 16 cells)",
    "gap_top_iou": "IoU of the top-10% F_dif and P_dif locations (same levels)",
    "f_dif_in_gt": "share of F_dif inside GT boxes (same levels)",
    "p_dif_in_gt": "share of P_dif inside GT boxes (same levels)",
    "gt_fraction": "share of locations inside GT boxes (chance level of both shares)",
}


def parse_students(specs: list[str]) -> dict[str, str]:
    """``["baseline=runs/a/last.pt", "runs/b/last.pt"]`` -> ``{name: path}`` (name defaults to the run folder)."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            name = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
        if name in out:
            raise ConfigError(f"two students are named {name!r}: name them, e.g. --student baseline={path}")
        out[name] = path
    return out


def trained_adapters(checkpoint: str) -> nn.ModuleList | None:
    """The Distiller's per-level 1x1 adapters stored in a distilled checkpoint (None if it has none)."""
    state = load_checkpoint(checkpoint).get("objective", {})
    levels = sorted({int(k.split(".")[1]) for k in state if k.startswith("adapters.") and k.endswith(".weight")})
    if not levels:
        return None
    convs = nn.ModuleList()
    for level in levels:
        w, b = state[f"adapters.{level}.weight"], state[f"adapters.{level}.bias"]
        conv = nn.Conv2d(w.shape[1], w.shape[0], kernel_size=1)
        conv.load_state_dict({"weight": w, "bias": b})
        convs.append(conv.eval().requires_grad_(False))
    return convs


def analyze(
    teacher: str,
    students: dict[str, str],
    out_dir: str,
    overrides: list[str] | None = None,
    details: int = 4,
    fmt: str = "csv",
    progress: bool = True,
) -> dict[str, dict]:
    """Collect, write and summarise every (teacher, student) pair; return ``{student: summary}``.

    The data (the val split, ``data.val_limit`` images if set) and the analysis
    options (``analysis.score``, ``analysis.adapter``) come from the first
    student's checkpoint config, with ``overrides`` applied.
    """
    from ..data.loader import eval_loader
    from ..run import build_datasets, load_model, resolve_device, val_subset

    if not students:
        raise ConfigError("no student checkpoint: pass --student CKPT (repeatable)")
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"unknown format {fmt!r}: choose csv or parquet")
    first = next(iter(students.values()))
    _, cfg = load_model(first, "cpu", overrides)
    device = resolve_device(cfg.train.device)
    t_model, _ = load_model(teacher, device)
    _, val = build_datasets(cfg, progress, train=False)
    loader = eval_loader(val_subset(val, cfg.data.val_limit), cfg.eval.batch_size, cfg.data.workers)

    frames_i, frames_l, summaries, collections = [], [], {}, {}
    for name, path in students.items():
        s_model, _ = load_model(path, device, overrides)
        adapter = cfg.analysis.adapter  # "fit" or "fit_per_level" are fitted inside collect
        if adapter == "trained":
            adapter = trained_adapters(path)
            if adapter is None:
                raise ConfigError(f"{path} holds no trained adapters (not a distilled run): use analysis.adapter=fit")
            adapter = adapter.to(device)
        col = collect(
            t_model, s_model, loader, device=device, score=cfg.analysis.score, adapter=adapter,
            details=details, amp=cfg.train.amp, progress=progress, desc=f"analyze {name}",
        )  # fmt: skip
        collections[name] = col
        summaries[name] = {**summarize(col), "seconds": round(col.seconds, 1), "images": col.images}
        frames_i.append(col.instances.assign(student=name))
        frames_l.append(col.levels.assign(student=name))

    os.makedirs(out_dir, exist_ok=True)
    instances = pd.concat(frames_i, ignore_index=True)
    levels = pd.concat(frames_l, ignore_index=True)
    _write(instances, os.path.join(out_dir, "instances"), fmt)
    _write(levels, os.path.join(out_dir, "levels"), fmt)
    figures = _figures(instances, collections, out_dir)
    jsonio.write(os.path.join(out_dir, "summary.json"), {"teacher": teacher, "students": students, "summary": summaries}, indent=2)
    text = summary_markdown(summaries, instances, levels, figures)
    with open(os.path.join(out_dir, "summary.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return summaries


def _write(frame: pd.DataFrame, stem: str, fmt: str) -> None:
    if fmt == "parquet":
        try:
            frame.to_parquet(stem + ".parquet", index=False)
        except ImportError as e:
            raise ConfigError(f"parquet output needs pyarrow ({e}); pip install pyarrow or use --format csv") from None
    else:
        frame.to_csv(stem + ".csv", index=False)


def _figures(instances: pd.DataFrame, collections: dict, out_dir: str) -> list[str]:
    """Draw and save the figures; return their file names."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .. import plots

    names = []

    def save(fig, name):
        fig.savefig(os.path.join(out_dir, name), dpi=110, bbox_inches="tight")
        plt.close(fig)
        names.append(name)

    hue = "student" if instances["student"].nunique() > 1 else None
    if instances["kendall_tau"].notna().any():
        save(plots.plot_tau_by_size(instances, hue=hue), "tau_by_size.png")
        save(plots.plot_tau_vs_iou(instances, hue=hue), "tau_vs_iou.png")
    for name, col in collections.items():
        if not col.details:
            continue
        slug = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower()
        detail, gt_index = figure2_pick(col)
        save(plots.plot_gap_panels(detail), f"gap_panels_{slug}.png")
        if gt_index is not None:
            save(plots.plot_kept_boxes(detail, gt_index), f"kept_boxes_{slug}.png")
    return names


def figure2_pick(col) -> tuple:
    """``(detail, gt_index)`` that shows the paper's Figure 2: among the drawable images, the object
    whose kept boxes come from different anchors with the largest loss of the student's kept-box IoU
    against the teacher's; without one, the first image with a GT and its first GT (``None`` if none)."""
    inst = col.instances
    shown = inst[inst["kept_anchor_differs"].fillna(False).astype(bool) & inst["image_id"].isin(list(col.details))]
    if len(shown):
        loss = shown["t_kept_iou"].astype(float) - shown["s_kept_iou"].astype(float)
        pick = shown.loc[loss.idxmax()]
        return col.details[int(pick["image_id"])], int(pick["gt_index"])
    detail = next((d for d in col.details.values() if len(d.gt)), next(iter(col.details.values())))
    return detail, (int(detail.gt["gt_index"].iloc[0]) if len(detail.gt) else None)


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary_markdown(summaries: dict[str, dict], instances: pd.DataFrame, levels: pd.DataFrame, figures=()) -> str:
    """Markdown tables of the headline numbers; deltas against the first student."""
    names = list(summaries)
    lines = ["# Analysis", "", "| statistic | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in HEADLINE.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(summaries[n][key]) for n in names) + " |")
    lines.append("| GT instances / images | " + " | ".join(f"{summaries[n]['instances']} / {summaries[n]['images']}" for n in names) + " |")
    lines.append("")
    if len(names) > 1:
        ref = names[0]
        for other in names[1:]:
            moves = []
            for key in ("kendall_tau", "top1_agree", "gap_pearson", "gap_top_iou"):
                a, b = summaries[ref][key], summaries[other][key]
                moves.append(f"{key} {_fmt(a)} -> {_fmt(b)} ({_fmt(b - a, 3) if not (math.isnan(a) or math.isnan(b)) else 'n/a'})")
            lines.append(f"- {other} vs {ref}: " + "; ".join(moves))
        lines.append("")
    by_size = instances.groupby(["student", "size"], sort=False)["kendall_tau"].agg(["mean", "count"]).reset_index()
    lines += ["## Kendall tau by size class", "", "| student | size | mean tau | instances |", "|---|---|---|---|"]
    for r in by_size.itertuples():
        lines.append(f"| {r.student} | {r.size} | {_fmt(r.mean)} | {r.count} |")
    by_level = levels.groupby(["student", "stride"], sort=False)[["pearson", "spearman", "top_iou", "f_dif_in_gt", "p_dif_in_gt", "gt_fraction"]].mean()
    lines += ["", "## F_dif vs P_dif by FPN level (means over images)", "", "| student | level | Pearson | Spearman | top-10% IoU | F_dif in GT | P_dif in GT | GT area share |", "|---|---|---|---|---|---|---|---|"]
    for (student, stride), r in by_level.iterrows():
        lines.append(
            f"| {student} | {level_name(int(stride))} | {_fmt(r.pearson)} | {_fmt(r.spearman)} | {_fmt(r.top_iou)} | "
            f"{_fmt(r.f_dif_in_gt)} | {_fmt(r.p_dif_in_gt)} | {_fmt(r.gt_fraction)} |"
        )
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"
