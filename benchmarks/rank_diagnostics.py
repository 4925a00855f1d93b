"""What Rank Mimicking does to the student's candidate scores, run by run, on held-out images
(docs/RESULTS.md, "What RM does to the student's scores").

For every finished run of a study (a folder with ``last.pt`` and ``rank.json``) it runs
:func:`rmkd.analysis.collect` with the teacher on the first ``--images`` validation images and
measures, per GT instance and then averaged: the rank agreement the study reports (Kendall tau,
top-1 agreement) and RM's own objective at several temperatures
(:func:`rmkd.analysis.rank_kl.rank_kl`, with the candidates' mean score and spread). Rows go
to ``--out`` (resumed: finished (method, seed) rows are skipped); then each measure's same-seed
differences against ``--reference`` are printed with 95% t-intervals and Holm's correction
over the methods (:func:`rmkd.claims.paired_claims`).

    python benchmarks/rank_diagnostics.py --runs runs/study-v2-amd/retinanet \\
        --teacher data/cache/teacher-9c5cb840e1/last.pt --out docs/results/rank_diagnostics.csv \\
        --methods baseline soft_label rm_paper rm_t0.25 rm_t0.1
"""

from __future__ import annotations

import argparse
import os

import pandas as pd
import torch

from rmkd.analysis import collect
from rmkd.analysis.rank_kl import rank_kl
from rmkd.claims import paired_claims
from rmkd.data.loader import eval_loader
from rmkd.run import build_datasets, load_model, val_subset

TEMPERATURES = (1.0, 0.25, 0.1)  # the study's RM rows train at these
MEASURES = ["tau", "top1", *(f"kl_T{t}" for t in TEMPERATURES), "t_mean", "s_mean", "t_std", "s_std"]


def measure(teacher, checkpoint: str, images: int) -> dict:
    """One run's means over the GT instances of the first ``images`` val images."""
    student, cfg = load_model(checkpoint)
    _, val = build_datasets(cfg, progress=False, train=False)
    loader = eval_loader(val_subset(val, images), cfg.eval.batch_size, 0)
    col = collect(teacher, student, loader, score="cls", progress=False, details=images)
    # every candidate of every image, with a key unique across images ([P])
    cand = pd.concat([d.candidates.assign(image_id=i) for i, d in col.details.items()], ignore_index=True)
    key = cand.groupby(["image_id", "instance_id"]).ngroup().to_numpy()
    row = {"images": images, "instances": len(col.instances), "tau": col.instances.kendall_tau.mean(), "top1": col.instances.top1_agree.mean()}
    for t in TEMPERATURES:
        per = rank_kl(cand.t_score.to_numpy(), cand.s_score.to_numpy(), key, t)
        row[f"kl_T{t}"] = per.kl.mean()
    row.update(per[["t_mean", "s_mean", "t_std", "s_std"]].mean().to_dict())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", required=True, help="a study's detector folder: METHOD/seedN/last.pt")
    ap.add_argument("--teacher", required=True, help="the study's teacher checkpoint")
    ap.add_argument("--out", required=True, help="CSV, one row per run (resumed)")
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--reference", default="baseline", help="method the others are paired against")
    ap.add_argument("--images", type=int, default=200, help="first N val images (the study's rank_tau uses 200)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # beside a running study: one core
    done = pd.read_csv(args.out) if os.path.isfile(args.out) else pd.DataFrame(columns=["method", "seed"])
    seen = set(zip(done.method, done.seed.astype(int)))
    teacher, _ = load_model(args.teacher)
    rows = []
    for method in args.methods:
        folder = os.path.join(args.runs, method)
        seeds = sorted(int(d[4:]) for d in os.listdir(folder) if d.startswith("seed")) if os.path.isdir(folder) else []
        for seed in seeds:
            run = os.path.join(folder, f"seed{seed}")
            if (method, seed) in seen or not os.path.isfile(os.path.join(run, "rank.json")):
                continue  # measured already, or not finished
            rows.append({"method": method, "seed": seed, **measure(teacher, os.path.join(run, "last.pt"), args.images)})
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()), flush=True)
            pd.concat([done, pd.DataFrame(rows)]).to_csv(args.out, index=False, float_format="%.6g")
    frame = pd.read_csv(args.out)
    others = [m for m in args.methods if m != args.reference and m in set(frame.method)]
    claims = [(f"{m} vs {args.reference}", m, "beats", args.reference) for m in others]
    pd.set_option("display.width", 200)
    ref = frame[frame.method == args.reference]
    print(f"teacher (the same for every run): mean score {ref.t_mean.mean():.4f}, within-instance std {ref.t_std.mean():.4f}")
    for metric in [m for m in MEASURES if not m.startswith("t_")]:
        res = paired_claims(frame, claims, metric=metric)
        ref = frame[frame.method == args.reference][metric].mean()
        print(f"\n{metric}: {args.reference} mean {ref:.4f}; same-seed differences (95% t-interval, Holm over {len(claims)} methods)")
        print(res[["a", "n", "mean_diff", "ci_low", "ci_high", "p", "p_holm"]].to_string(index=False, float_format="%.4f"))


if __name__ == "__main__":
    main()
