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
# The paper's claims (COCO, AAAI 2022) as (claim, method A, relation, method B), checked by
# claims_frame with the rule stated there.
CLAIMS = [
    ("RM beats the baseline", "rm", "beats", "baseline"),
    ("PFI beats the baseline", "pfi", "beats", "baseline"),
    ("RM+PFI beats RM alone", "rm+pfi", "beats", "rm"),
    ("RM+PFI beats PFI alone", "rm+pfi", "beats", "pfi"),
    ("RM beats soft-label KD", "rm", "beats", "soft_label"),
    ("ranking by cls works at least as well as by IoU", "rm", "at least as well as", "rm_iou"),
    ("ranking by cls works at least as well as by cls+IoU", "rm", "at least as well as", "rm_cls_iou"),
    ("PFI beats feature imitation on the full map", "pfi", "beats", "fi_full"),
    ("PFI beats feature imitation at positive locations", "pfi", "beats", "fi_positive"),
    ("PFI beats feature imitation at negative locations", "pfi", "beats", "fi_negative"),
    ("PFI beats feature imitation inside GT boxes", "pfi", "beats", "fi_gt"),
    ("PFI beats FGFI", "pfi", "beats", "fgfi"),
]
MIN_SEEDS = 3
RULE = (
    "The rule, fixed before the study ran: A *beats* B when A's mean AP exceeds B's by more than the sum of "
    "their standard deviations over seeds; \"A works at least as well as B\" holds unless B beats A by that rule; "
    f"a claim is *not yet measured* while either method has fewer than {MIN_SEEDS} finished seeds. The seed fixes "
    "the student's initialisation and data order for every method, so the table also counts in how many seeds A's "
    "AP was above B's: that informs, it does not decide."
)
RM_VARIANTS = {"rm": "cls", "rm_iou": "iou", "rm_cls_iou": "cls+iou"}
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


def run_one(cfg: Config, run_dir: str, kd: bool, progress: bool, teacher_cache=None) -> dict:
    """Train, resume or reuse one run; return its final metrics.json."""
    from .demo import train_cached

    return train_cached(cfg, run_dir, progress, "distill" if kd else "student", teacher_cache if kd else None)


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
    teacher_cache: bool = True,
) -> pd.DataFrame:
    """Run every (detector, method, seed) not yet finished; return the study's frame.

    With ``teacher_cache`` (the default) the teacher's outputs on the training set are
    computed once per detector, when the first distillation run starts, and reused by
    every run (:mod:`rmkd.teacher_cache`: identical outputs, a third less time per step).
    """
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
        outputs = None  # the teacher cache, built when the first distillation needs it
        for i, (method, seed) in enumerate(todo, 1):
            cfg, run_dir = runs[method, seed]
            state = "done" if (method, seed) in results else "running"
            print(f"[{det} {i}/{len(todo)}] {method} seed {seed}: {state} ({run_dir})")
            if state == "running":
                kd = METHODS[method] is not None
                if kd and teacher_cache and outputs is None:
                    from .teacher_cache import build_for, check_cacheable

                    try:
                        check_cacheable(cfg)
                    except ConfigError as e:
                        print(f"[{det}] teacher cache off: {e}")
                        teacher_cache = False
                    else:
                        print(f"[{det}] computing the teacher's outputs once for every run (teacher cache)")
                        outputs = build_for(cfg, progress)
                metrics = run_one(cfg, run_dir, kd, progress, outputs)
                results[method, seed] = _row(det, method, seed, metrics, cfg)
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
        claims = claims_frame(frame, det)
        lines += [f"## {det}: the paper's claims", "", RULE, "", claims_markdown(claims), ""]
        chosen = chosen_defaults(frame, det)
        undecided = f"not decided yet (needs {MIN_SEEDS} seeds of each)"
        rm = undecided if chosen["rm_score"] is None else f"`distill.rm_score={chosen['rm_score']}`"
        detach = undecided if chosen["pfi_detach"] is None else f"`distill.pfi_detach={str(chosen['pfi_detach']).lower()}`"
        lines += [
            f"## {det}: defaults chosen by the study", "",
            f"- RM ranks by the score with the highest mean AP of rm (cls), rm_iou, rm_cls_iou: {rm}",
            f"- PFI detaches P_dif if pfi_detach has the higher mean AP than pfi: {detach}", "",
        ]  # fmt: skip
    return "\n".join(lines)


def _std(x: float) -> str:
    return "n/a" if x != x else f"{x:.1f}"


def _signed(x: float) -> str:
    return "" if x != x else f"{x:+.1f}"


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.0f}%"


def claims_frame(frame: pd.DataFrame, detector: str = "retinanet", min_seeds: int = MIN_SEEDS) -> pd.DataFrame:
    """Each of :data:`CLAIMS` checked against the study's runs by :data:`RULE`.

    ``paired`` counts, seed by seed, in how many seeds A's AP was above B's.

    Returns one row per claim: claim, a, relation, b, n_a, n_b, mean_a, std_a,
    mean_b, std_b, diff, margin, paired ("k of n"), verdict, note.
    """
    runs = frame[(frame.detector == detector) & (frame.method != "teacher")]
    summary = summary_frame(runs).set_index("method") if len(runs) else pd.DataFrame()
    rows = []
    for claim, a, relation, b in CLAIMS:
        stats = []
        for m in (a, b):
            r = summary.loc[m] if m in summary.index else None
            stats.append((r.AP_mean, r.AP_std, int(r.seeds)) if r is not None else (math.nan, math.nan, 0))
        (ma, sa, na), (mb, sb, nb) = stats
        pa = runs[runs.method == a].set_index("seed").AP
        pb = runs[runs.method == b].set_index("seed").AP
        common = pa.index.intersection(pb.index)
        paired = f"{int((pa[common] > pb[common]).sum())} of {len(common)}"
        diff, margin = ma - mb, sa + sb
        if min(na, nb) < min_seeds:
            verdict, note = "not yet measured", f"needs {min_seeds} seeds of each (have {na}, {nb})"
        else:
            a_wins, b_wins = diff > margin, -diff > margin
            if relation == "beats":
                verdict = "held" if a_wins else "did not hold"
                note = "" if a_wins else (f"the opposite held: {b} beats {a}" if b_wins else "difference within the noise margin")
            else:
                verdict = "did not hold" if b_wins else "held"
                note = f"{b} beats {a}" if b_wins else (f"{a} beats {b}" if a_wins else "difference within the noise margin")
        rows.append((claim, a, relation, b, na, nb, ma, sa, mb, sb, diff, margin, paired, verdict, note))
    columns = ["claim", "a", "relation", "b", "n_a", "n_b", "mean_a", "std_a", "mean_b", "std_b", "diff", "margin", "paired", "verdict", "note"]
    return pd.DataFrame(rows, columns=columns)


def claims_markdown(claims: pd.DataFrame) -> str:
    """The claims frame as a markdown table (AP on 0-100)."""
    lines = [
        "| claim | A: mean ± std (n) | B: mean ± std (n) | difference | margin | A above B, seed by seed | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in claims.itertuples():
        def ms(m, s, n, name):
            return f"{name} {m:.1f} ± {_std(s)} ({n})" if n else f"{name} - (0)"

        verdict = r.verdict + (f" ({r.note})" if r.note and r.verdict != "not yet measured" else "")
        lines.append(
            f"| {r.claim} | {ms(r.mean_a, r.std_a, r.n_a, r.a)} | {ms(r.mean_b, r.std_b, r.n_b, r.b)} | {_signed(r.diff)} | "
            f"{'' if r.margin != r.margin else f'{r.margin:.1f}'} | {r.paired} | {verdict} |"
        )
    return "\n".join(lines)


def chosen_defaults(frame: pd.DataFrame, detector: str = "retinanet", min_seeds: int = MIN_SEEDS) -> dict:
    """The shipped defaults the study chooses: RM's score and PFI's P_dif detach.

    ``rm_score``: the variant (cls, iou, cls+iou) with the highest mean AP;
    ``pfi_detach``: True only if detaching P_dif has the higher mean AP. Each is
    None while a compared method has fewer than ``min_seeds`` seeds.
    """
    summary = summary_frame(frame[frame.detector == detector]).set_index("method")

    def mean(m):
        return float(summary.AP_mean[m]) if m in summary.index and summary.seeds[m] >= min_seeds else None

    variants = {score: mean(m) for m, score in RM_VARIANTS.items()}
    rm_score = max(variants, key=variants.get) if all(v is not None for v in variants.values()) else None
    pfi, detach = mean("pfi"), mean("pfi_detach")
    pfi_detach = bool(detach > pfi) if pfi is not None and detach is not None else None
    return {"rm_score": rm_score, "pfi_detach": pfi_detach, "rm_means": variants, "pfi_means": {"pfi": pfi, "pfi_detach": detach}}


def readme_block(frame: pd.DataFrame, detector: str = "retinanet") -> str:
    """The README's headline: the main ablation table and the claims' verdicts, from the CSV."""
    summary = summary_frame(frame[frame.detector == detector]).set_index("method")
    teacher = frame[(frame.detector == detector) & (frame.method == "teacher")].AP.mean()
    base = summary.AP_mean.get("baseline", math.nan)
    lines = [
        f"Teacher {teacher:.1f} AP. Students: mean ± std over seeds of COCO AP on the embedded val split "
        "(`docs/results/ablation.csv`, written by `rmkd reproduce`).",
        "",
        "| method | seeds | AP | change | gap closed |",
        "|---|---|---|---|---|",
    ]
    for m in TABLES[0][1]:
        if m not in summary.index:
            lines.append(f"| {m} | 0 | - | | |")
            continue
        r = summary.loc[m]
        extra = ("", "") if m == "baseline" else (_signed(r.AP_mean - base), _pct(r.gap_closed))
        lines.append(f"| {m} | {int(r.seeds)} | {r.AP_mean:.1f} ± {_std(r.AP_std)} | {extra[0]} | {extra[1]} |")
    claims = claims_frame(frame, detector)
    counts = claims.verdict.value_counts()
    lines += ["", f"The paper's {len(claims)} claims at this scale (rule in `rmkd.reproduce.claims_frame`): "
              + ", ".join(f"{counts.get(v, 0)} {v}" for v in ("held", "did not hold", "not yet measured")) + "."]
    for verdict in ("held", "did not hold"):
        names = claims[claims.verdict == verdict].claim.tolist()
        if names:
            lines.append(f"{verdict.capitalize()}: {'; '.join(names)}.")
    return "\n".join(lines)


def update_readme(readme: str = "README.md", csv: str = "docs/results/ablation.csv") -> bool:
    """Rewrite the block between ``<!-- ablation:start -->`` and ``<!-- ablation:end -->`` in
    ``readme`` from the CSV; return whether it changed."""
    text = Path(readme).read_text(encoding="utf-8")
    start, end = "<!-- ablation:start -->", "<!-- ablation:end -->"
    if start not in text or end not in text.split(start, 1)[1]:
        raise ValueError(f"{readme}: no '{start}' ... '{end}' block to fill")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    new = f"{head}{start}\n{readme_block(pd.read_csv(csv, dtype={'weights': str}))}\n{end}{tail}"
    Path(readme).write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":  # python -m rmkd.reproduce --readme: refresh README's headline from the CSV
    import argparse

    parser = argparse.ArgumentParser(description="Rewrite the tables from docs/results/ablation.csv without training.")
    parser.add_argument("--csv", default="docs/results/ablation.csv")
    parser.add_argument("--readme", nargs="?", const="README.md", default=None, help="also refresh this README's block")
    args = parser.parse_args()
    write_results(pd.read_csv(args.csv, dtype={"weights": str}).fillna({"weights": ""}), args.csv)
    if args.readme:
        print(f"{args.readme}: {'updated' if update_readme(args.readme, args.csv) else 'unchanged'}")
