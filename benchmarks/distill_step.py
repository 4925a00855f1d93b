"""Cost of a distillation step (RM + PFI) over its floor, at the demo configuration.

    python benchmarks/distill_step.py [--repeat 15] [--terms rm pfi] [--student KEY=VALUE ...]

floor   = teacher forward without grad + student forward/backward/step
distill = the same through rmkd.distill.Distiller with the KD terms on
cached  = the Distiller reading the teacher's outputs from rmkd.teacher_cache
          (what `rmkd reproduce` does) instead of running the teacher
student = the student's own step (detection losses only): what a cached
          distillation run costs over its baseline run
computed = the same with a frozen body computed every step (model.body_cache 0), when
          the student's config caches its body (rmkd.models.body_cache)
``--student`` sets overrides of configs/student.yaml (a candidate for the benchmark regime).
All are timed interleaved on the same batch; the ratios of medians are printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import digits_batch, interleaved, machine  # noqa: E402

from rmkd.config import load_config  # noqa: E402
from rmkd.distill import Distiller  # noqa: E402
from rmkd.models import dense_forward  # noqa: E402
from rmkd.run import build_model, build_optimizer  # noqa: E402
from rmkd.teacher_cache import TeacherCache  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--terms", nargs="+", default=["rm", "pfi"])
    parser.add_argument("--student", nargs="*", default=[], help="overrides of configs/student.yaml")
    args = parser.parse_args()
    t_cfg = load_config(ROOT / "configs" / "teacher.yaml")
    s_cfg = load_config(ROOT / "configs" / "student.yaml", args.student)
    torch.manual_seed(0)
    # initial backbone weights do not change a step's cost: none are loaded (no pretraining needed)
    teacher = build_model(t_cfg, backbone_init=False).eval().requires_grad_(False)
    student = build_model(s_cfg, backbone_init=False).train()
    computed = None
    if s_cfg.model.body_cache:
        plain = load_config(ROOT / "configs" / "student.yaml", [*args.student, "model.body_cache=0"])
        computed = build_model(plain, backbone_init=False).train()
        computed.load_state_dict(student.state_dict())
        opt_computed = build_optimizer([p for p in computed.parameters() if p.requires_grad], s_cfg)
    images, targets = digits_batch(s_cfg.train.batch_size)
    distiller = Distiller(teacher, student, {t: 1.0 for t in args.terms}).train()
    opt_kd = build_optimizer([p for p in distiller.parameters() if p.requires_grad], s_cfg)
    for i, t in enumerate(targets):
        t["image_id"] = i
    cache = TeacherCache.build(teacher, list(zip(images, targets)), len(images), key={}, progress=False)
    cached = Distiller(teacher, student, {t: 1.0 for t in args.terms}).train()
    cached.teacher_cache = cache
    opt_cached = build_optimizer([p for p in cached.parameters() if p.requires_grad], s_cfg)
    opt_floor = build_optimizer([p for p in student.parameters() if p.requires_grad], s_cfg)
    opt_student = build_optimizer([p for p in student.parameters() if p.requires_grad], s_cfg)

    def floor():
        with torch.no_grad():
            dense_forward(teacher, images)
        losses = dense_forward(student, images, targets).losses
        opt_floor.zero_grad()
        sum(losses.values()).backward()
        opt_floor.step()

    def student_alone():
        losses = dense_forward(student, images, targets).losses
        opt_student.zero_grad()
        sum(losses.values()).backward()
        opt_student.step()

    def distill():
        losses = distiller(images, targets)
        opt_kd.zero_grad()
        sum(losses.values()).backward()
        opt_kd.step()

    def distill_cached():
        losses = cached(images, targets)
        opt_cached.zero_grad()
        sum(losses.values()).backward()
        opt_cached.step()

    def student_computed():
        losses = dense_forward(computed, images, targets).losses
        opt_computed.zero_grad()
        sum(losses.values()).backward()
        opt_computed.step()

    fns = {"floor": floor, "distill": distill, "cached": distill_cached, "student": student_alone}
    if computed is not None:
        fns["computed"] = student_computed
    times = interleaved(fns, args.repeat)
    ratio = times["distill"] / times["floor"]
    student_name = " ".join(args.student) or "configs/student.yaml"
    print(f"# distillation step ({'+'.join(args.terms)}) vs floor, student {student_name}, "
          f"batch {s_cfg.train.batch_size} of 64 px images read at {s_cfg.model.image_size[0]} px; {machine()}")
    print("| step | s (median) |")
    print("|---|---|")
    print(f"| floor: teacher fwd (no grad) + student fwd/bwd/step | {times['floor']:.4f} |")
    print(f"| Distiller {'+'.join(args.terms)} | {times['distill']:.4f} |")
    print(f"| Distiller {'+'.join(args.terms)}, teacher cache | {times['cached']:.4f} |")
    print(f"| student alone: fwd/bwd/step | {times['student']:.4f} |")
    if computed is not None:
        print(f"| student alone, frozen body computed every step (body_cache 0) | {times['computed']:.4f} |")
    print(f"overhead: {100 * (ratio - 1):+.1f}% (ratio {ratio:.3f}); "
          f"teacher cache: {times['cached'] / times['distill']:.3f} of the live step, "
          f"{times['cached'] / times['student']:.3f}x the student's own step")
    if computed is not None:
        print(f"body cache: the student's step is {times['student'] / times['computed']:.3f} of the step that computes its body")


if __name__ == "__main__":
    main()
