"""Throughput of rmkd.analysis.collect against the two models' inference alone.

    python benchmarks/collect.py [--images 128] [--repeat 3] [--teacher CKPT --student CKPT]

inference = teacher(images) and student(images) in eval mode (torchvision's own
            forward: resize, backbone, head, anchors, decoding and NMS), no analysis
collect   = rmkd.analysis.collect(teacher, student, loader): both dense forwards,
            the student's matching, candidate scores and IoUs, kept anchors,
            F_dif / P_dif statistics per level, rank agreement at the end
Both read the same loader over the embedded val split (data/digits, generated
if missing) and are timed in turn; the ratio of median images/s is printed
(goal: collect >= 90% of inference). Without checkpoints the demo's configs are
built with random weights (fewer boxes pass the score threshold than after training).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine  # noqa: E402

from rmkd.analysis import collect  # noqa: E402
from rmkd.config import load_config  # noqa: E402
from rmkd.data.loader import eval_loader  # noqa: E402
from rmkd.run import build_datasets, build_model, load_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="val images per pass")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--teacher", help="teacher checkpoint (default: random weights, configs/teacher.yaml)")
    parser.add_argument("--student", help="student checkpoint (default: random weights, configs/student.yaml)")
    args = parser.parse_args()
    s_cfg = load_config(ROOT / "configs" / "student.yaml")
    torch.manual_seed(0)
    teacher = load_model(args.teacher)[0] if args.teacher else build_model(load_config(ROOT / "configs" / "teacher.yaml"), backbone_init=False)
    student = load_model(args.student)[0] if args.student else build_model(s_cfg, backbone_init=False)
    teacher.eval(), student.eval()
    _, val = build_datasets(s_cfg, progress=False, train=False)
    loader = eval_loader(Subset(val, range(min(args.images, len(val)))), args.batch_size)
    n = len(loader.dataset)

    @torch.no_grad()
    def inference():
        for images, _ in loader:
            teacher(images)
            student(images)

    def analysis():
        collect(teacher, student, loader, progress=False)

    times = interleaved({"inference": inference, "collect": analysis}, args.repeat, warmup=1)
    weights = "trained checkpoints" if args.teacher and args.student else "random weights"
    print(f"# collect vs inference alone, {n} val images of the embedded set in batches of {args.batch_size}, {weights}; {machine()}")
    print("| pass | median s | images/s |")
    print("|---|---|---|")
    for name, sec in times.items():
        print(f"| {name} | {sec:.2f} | {n / sec:.1f} |")
    ratio = times["inference"] / times["collect"]
    print(f"collect throughput = {100 * ratio:.1f}% of inference alone (goal >= 90%)")


if __name__ == "__main__":
    main()
