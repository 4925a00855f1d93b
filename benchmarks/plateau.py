"""Calibration runs for the benchmark regime: is each model at its plateau, how large is the
capacity gap, how noisy is the seed? (docs/RESULTS.md, "Benchmark regime").

Each row trains one model with `rmkd train` (a subprocess, resumed if killed) and appends
``role, config, steps, seed, AP, sec_per_step_median, train_seconds`` to the CSV; rows
already in the CSV are skipped, so the script resumes after an interruption.

    python benchmarks/plateau.py --plan student teacher teacher_long   # S and 1.5 S steps, seed 0
    python benchmarks/plateau.py --plan seeds --steps 2700      # the student over seeds 0-5 at S steps
    python benchmarks/plateau.py --plan budget --config MNv3S-FPN16-1conv --steps 2400  # S and 1.5 S, seed 0

A config that loads a pretrained backbone (``PRETRAINED``) makes it first with ``rmkd pretrain``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pandas as pd

from rmkd import jsonio

# the ResNet-10 student's overrides (the base student config is ResNet-18, GroupNorm head, LR 2e-3)
R10 = ["model.backbone=resnet10", "train.lr=0.006", "model.head_norm=none"]
R10PRE = "model.weights_backbone=data/cache/pretrain/resnet10-digits-600.pt"  # rmkd pretrain, 600 steps
# data variants, each in its own folder (a cached set made with other parameters is refused)
N1000 = ["data.synth.num_train=1000", "data.synth.out=data/digits-n1000"]  # same val images as data/digits
BIG = ["data.synth.min_digit_size=20", "data.synth.out=data/digits-big"]  # a different val set too
# name -> (role, config file, overrides). The candidates are overrides of the two configs shipped
# while the regime was calibrated (kept under benchmarks/regime/: R34-FPN128 teacher, R18-FPN16
# student); configs/teacher.yaml and configs/student.yaml are now the regime those runs chose.
CONFIGS = {
    "teacher": ("teacher", "configs/teacher.yaml", []),  # = R18-FPN32-2conv at 6750 steps
    "student": ("student", "configs/student.yaml", []),  # = R10pre-frozen-FPN16-1conv-nonorm, weights re-made
    "R34-FPN128-4conv": ("teacher", "benchmarks/regime/teacher-r34-fpn128.yaml", []),
    "R18-FPN16-1conv": ("student", "benchmarks/regime/student-r18-fpn16.yaml", []),
    # candidates for a weaker student (issue 12's levers): a narrower backbone
    "MNv3S-FPN16-1conv": ("student", "benchmarks/regime/student-r18-fpn16.yaml", ["model.backbone=mobilenet_v3_small"]),
    "MNv3S-FPN32-2conv": ("student", "benchmarks/regime/student-r18-fpn16.yaml",
                          ["model.backbone=mobilenet_v3_small", "model.fpn_channels=32", "model.head_convs=2"]),
    # a schedule that reaches the plateau in fewer steps: the same student at a larger peak LR
    "R18-FPN16-1conv-lr6e-3": ("student", "benchmarks/regime/student-r18-fpn16.yaml", ["train.lr=0.006"]),
    "R18-FPN16-1conv-lr1.2e-2": ("student", "benchmarks/regime/student-r18-fpn16.yaml", ["train.lr=0.012"]),
    # GroupNorm of one channel per group on the 2x2 and 1x1 maps of P5/P6 keeps little but the bias
    "R18-FPN16-1conv-lr6e-3-nonorm": ("student", "benchmarks/regime/student-r18-fpn16.yaml", ["train.lr=0.006", "model.head_norm=none"]),
    # ResNet-18's widths with one block per stage: 0.61x its step time, a lower ceiling
    "R10-FPN16-1conv-lr6e-3-nonorm": ("student", "benchmarks/regime/student-r18-fpn16.yaml", R10),
    # a cheaper teacher, for a student with a low ceiling (the frozen-body student below): the trial
    # model (R18-FPN32, 2 head convs: 59.3 AP at 2700 steps, 0.099 s/step), trained to its plateau
    "R18-FPN32-2conv": ("teacher", "benchmarks/regime/teacher-r34-fpn128.yaml",
                        ["model.backbone=resnet18", "model.fpn_channels=32", "model.head_convs=2"]),
    "R34-FPN128-4conv-nonorm": ("teacher", "benchmarks/regime/teacher-r34-fpn128.yaml", ["model.head_norm=none"]),
    # the student's LR lever on the teacher: 2e-3 is still rising at 4500 steps (62.9 at 3000, 66.7 at 4500)
    "R34-FPN128-4conv-lr6e-3": ("teacher", "benchmarks/regime/teacher-r34-fpn128.yaml", ["train.lr=0.006"]),
    "R34pre-FPN128-4conv-nonorm": ("teacher", "benchmarks/regime/teacher-r34-fpn128.yaml",
                                   ["model.head_norm=none", "model.weights_backbone=data/cache/pretrain/resnet34-digits-600.pt"]),
    # the same ResNet-10 student starting from a backbone pretrained on digit crops (rmkd.pretrain)
    "R10pre-FPN16-1conv-lr6e-3-nonorm": ("student", "benchmarks/regime/student-r18-fpn16.yaml",
                                         [*R10, R10PRE]),
    # a lower ceiling for the gap: the same pretrained ResNet-10 feeding an FPN half as wide
    "R10pre-FPN8-1conv-lr6e-3-nonorm": ("student", "benchmarks/regime/student-r18-fpn16.yaml",
                                        ["model.backbone=resnet10", "model.fpn_channels=8", "train.lr=0.006",
                                         "model.head_norm=none",
                                         R10PRE]),
    # cheaper steps and a lower ceiling: the pretrained body frozen (torchvision's rule for a pretrained
    # detector; its BatchNorm statistics frozen too), all of it or stem + layer1 (t3: not run)
    "R10pre-frozen-FPN16-1conv-lr6e-3-nonorm": ("student", "benchmarks/regime/student-r18-fpn16.yaml",
                                                [*R10, R10PRE, "model.norm=frozen_bn", "model.trainable_layers=0"]),
    # at LR 6e-3 the frozen-body student collapsed in its 4050-step run (about step 600: loss 0.64 -> 1.47,
    # gradient norm 1.7 -> 0.12, AP 5.3; its 2700-step run did not); the default LR 2e-3 instead: flat at
    # 4050 steps (33.0 -> 33.7 at 6075), 6 seeds' std 0.74, 0.074 s/step (docs/RESULTS.md, fifth session)
    "R10pre-frozen-FPN16-1conv-nonorm": ("student", "benchmarks/regime/student-r18-fpn16.yaml",
                                         ["model.backbone=resnet10", "model.head_norm=none", R10PRE,
                                          "model.norm=frozen_bn", "model.trainable_layers=0"]),
    "R10pre-t3-FPN16-1conv-lr6e-3-nonorm": ("student", "benchmarks/regime/student-r18-fpn16.yaml",
                                            [*R10, R10PRE, "model.norm=frozen_bn", "model.trainable_layers=3"]),
    # does a longer-pretrained backbone (2400 steps, 4x) reach the detector's plateau in fewer steps?
    "R10pre2400-FPN16-1conv-lr6e-3-nonorm": ("student", "benchmarks/regime/student-r18-fpn16.yaml",
                                             [*R10,
                                              "model.weights_backbone=data/cache/pretrain/resnet10-digits-2400.pt"]),
    # do curves flatten sooner on the first 1000 of the 4000 training images? (the student's did not:
    # +3.4 AP from 1200 to 1800 steps; the teacher's variant is not run; docs/RESULTS.md)
    "R10-FPN16-1conv-lr6e-3-nonorm-n1000": ("student", "benchmarks/regime/student-r18-fpn16.yaml", [*R10, *N1000]),
    "R34-FPN128-4conv-n1000": ("teacher", "benchmarks/regime/teacher-r34-fpn128.yaml", N1000),
    # is an easier task's ceiling reached sooner? digits 20-40 px instead of 12-40 (the student's was not:
    # +9.5 AP from 1200 to 1800 steps; the teacher's variant is not run)
    "R10-FPN16-1conv-lr6e-3-nonorm-big": ("student", "benchmarks/regime/student-r18-fpn16.yaml", [*R10, *BIG]),
    "R34-FPN128-4conv-big": ("teacher", "benchmarks/regime/teacher-r34-fpn128.yaml", BIG),
}
# Each budget S is checked against 1.5 S (same seed); the student's 1800 was not a plateau
# (+13.5 AP at 2700), so 2700 is checked against 4050.
PLANS = {
    "student": [("R18-FPN16-1conv", 1800, 0), ("R18-FPN16-1conv", 2700, 0), ("R18-FPN16-1conv", 4050, 0)],
    "teacher": [("R34-FPN128-4conv", 3000, 0)],
    "teacher_long": [("R34-FPN128-4conv", 4500, 0)],  # the teacher's plateau check: about 50 min on cpu2
}


def seeds_plan(config: str, steps: int, seeds: int = 6) -> list:
    """``config`` over ``seeds`` seeds at ``steps``: the seed-noise row of the regime table."""
    return [(config, steps, s) for s in range(seeds)]


def budget_plan(config: str, steps: int) -> list:
    """``config`` at ``steps`` and at 1.5x as many, seed 0: the plateau test."""
    return [(config, steps, 0), (config, steps * 3 // 2, 0)]


# pretrained backbones the configs above load: file -> (config, overrides, steps) of `rmkd pretrain`.
# Made before rmkd.pretrain seeded the classifier after building the detector: re-made now,
# resnet10-digits-600.pt would equal the shipped student's file (its 'pretrain' weights), not itself.
PRETRAINED = {
    "data/cache/pretrain/resnet10-digits-600.pt": ("benchmarks/regime/student-r18-fpn16.yaml", ["model.backbone=resnet10"], 600),
    "data/cache/pretrain/resnet10-digits-2400.pt": ("benchmarks/regime/student-r18-fpn16.yaml", ["model.backbone=resnet10"], 2400),
    "data/cache/pretrain/resnet34-digits-600.pt": ("benchmarks/regime/teacher-r34-fpn128.yaml", [], 600),
}
COLUMNS = ["role", "config", "steps", "seed", "AP", "sec_per_step_median", "train_seconds", "machine"]


def run(config: str, steps: int, seed: int, out_root: str, extra: list[str]) -> dict:
    role, path, overrides = CONFIGS[config]
    out = os.path.join(out_root, f"{config}-{steps}-s{seed}")
    done = os.path.join(out, "metrics.json")
    weights = next((o.split("=", 1)[1] for o in overrides if o.startswith("model.weights_backbone=")), None)
    if weights in PRETRAINED and not os.path.isfile(weights):
        pre_config, pre_overrides, pre_steps = PRETRAINED[weights]
        subprocess.run([sys.executable, "-m", "rmkd.cli", "pretrain", "--config", pre_config, "--steps", str(pre_steps),
                        "--out", weights, *(["--set", *pre_overrides] if pre_overrides else [])], check=True)
    if not (os.path.isfile(done) and json.load(open(done)).get("step") == steps):  # a finished run is reused
        cmd = [sys.executable, "-m", "rmkd.cli", "train", "--config", path, "--out", out,
               "--set", f"train.max_steps={steps}", f"seed={seed}", "train.eval_every=0", *overrides, *extra]
        if os.path.isfile(os.path.join(out, "last.pt")):
            cmd.append("--resume")
        subprocess.run(cmd, check=True)
    m = jsonio.nan_for_none(json.load(open(done)))
    return {"role": role, "config": config, "steps": steps, "seed": seed, "AP": round(100 * m["AP"], 2),
            "sec_per_step_median": round(m["train_summary"]["sec_per_step_median"], 4),
            "train_seconds": m["train_summary"]["train_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", choices=[*PLANS, "seeds", "budget"], nargs="+", default=["student", "teacher", "teacher_long"])
    p.add_argument("--steps", type=int, default=2700, help="the budget for --plan seeds and budget (default: 2700)")
    p.add_argument("--config", choices=CONFIGS, default="R18-FPN16-1conv", help="the model for --plan seeds and budget")
    p.add_argument("--csv", default="docs/results/plateau.csv")
    p.add_argument("--out", default="runs/plateau")
    p.add_argument("--machine", default="cpu2", help="recorded in the CSV (one table never mixes machines)")
    p.add_argument("--set", nargs="*", default=[], dest="extra", help="overrides for every run")
    a = p.parse_args()
    owned = [o for o in a.extra if o.split("=", 1)[0] in ("seed", "train.max_steps", "train.eval_every")]
    if owned:  # the run would silently differ from its row's label
        p.error(f"--set {' '.join(owned)}: the plan sets seed, train.max_steps and train.eval_every of each run and "
                "labels its CSV row by them; choose them with --plan, --steps and --config instead")
    have = pd.read_csv(a.csv) if os.path.isfile(a.csv) else pd.DataFrame(columns=COLUMNS)
    for plan in a.plan:
        generated = {"seeds": seeds_plan, "budget": budget_plan}
        for config, steps, seed in PLANS[plan] if plan in PLANS else generated[plan](a.config, a.steps):
            key = (have.config == config) & (have.steps == steps) & (have.seed == seed)
            if key.any():
                continue
            row = run(config, steps, seed, a.out, a.extra) | {"machine": a.machine}
            # re-read: another plan may run beside this one (e.g. the teacher's check on one thread)
            have = pd.read_csv(a.csv) if os.path.isfile(a.csv) else pd.DataFrame(columns=COLUMNS)
            have = pd.concat([have, pd.DataFrame([row])], ignore_index=True)
            have.to_csv(a.csv, index=False)
            print(f"plateau: {config} {steps} steps seed {seed}: AP {row['AP']}", flush=True)


if __name__ == "__main__":
    main()
