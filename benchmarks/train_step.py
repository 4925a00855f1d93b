"""Train-step time of the demo teacher and student (configs/teacher.yaml, configs/student.yaml).

    python benchmarks/train_step.py [--repeat 20] [--candidate model.backbone=mobilenet_v3_small ...]

Prints median seconds per optimiser step (forward + backward + AdamW) at the
demo batch size, and peak resident memory. Timed interleaved, so the ratio is
robust to a noisy machine. ``--candidate`` adds a third row: the student with
those overrides (a candidate for the benchmark regime).
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import digits_batch, interleaved, machine  # noqa: E402

from rmkd.config import load_config  # noqa: E402
from rmkd.engine import DetectionLoss  # noqa: E402
from rmkd.run import build_model, build_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def step_fn(cfg, images, targets):
    torch.manual_seed(0)
    objective = DetectionLoss(build_model(cfg, backbone_init=False)).train()  # a step costs the same with any weights
    opt = build_optimizer([p for p in objective.parameters() if p.requires_grad], cfg)

    def step():
        losses = objective(images, targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--candidate", nargs="*", default=[], help="overrides of the student: a third row")
    args = parser.parse_args()
    cfgs = {name: load_config(ROOT / "configs" / f"{name}.yaml") for name in ("teacher", "student")}
    if args.candidate:
        cfgs[" ".join(args.candidate)] = load_config(ROOT / "configs" / "student.yaml", args.candidate)
    images, targets = digits_batch(cfgs["student"].train.batch_size)
    fns = {name: step_fn(cfg, images, targets) for name, cfg in cfgs.items()}
    times = interleaved(fns, args.repeat)
    print(f"# train step, batch {cfgs['student'].train.batch_size} of 64 px images read at {cfgs['student'].model.image_size[0]} px, {machine()}")
    print("| model | s/step (median) | steps in 5 min | steps in 15 min |")
    print("|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.3f} | {int(300 / t)} | {int(900 / t)} |")
    print(f"teacher/student step-time ratio: {times['teacher'] / times['student']:.2f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
