"""Five-minute GPU check: CPU/GPU agreement of every loss, and the cost of an RM+PFI step.

    python benchmarks/gpu_check.py [--out gpu_check.json]          # on a machine with a GPU
    python benchmarks/gpu_check.py --device cpu --size 128 213 --batch 2 --repeat 2 \
        --teacher resnet18 --student resnet18                       # a dry run of the script on a CPU

1. Agreement: teacher and student built from the COCO recipes (random weights, no
   download), the same batch on the CPU and on the device in float32 (TF32 off);
   the detection losses and the RM and PFI terms must agree to 1e-3 (relative).
2. Speed at the paper's setting: 8 images per GPU of COCO's shape (640x480 photos,
   read at 800x1333), RetinaNet R101 -> R50, bf16 autocast. ``floor`` = teacher
   forward (no grad) + student forward/backward/step on the detection loss;
   ``distill`` = the same through the Distiller with RM (4) and PFI (1.5). Both
   timed interleaved (with CUDA synchronisation), medians; images per second of the
   distillation step; peak GPU memory of each.

Prints a table and writes the figures as JSON (``--out``), with the device's name.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from rmkd import jsonio  # noqa: E402
from rmkd.config import load_config  # noqa: E402
from rmkd.distill import Distiller  # noqa: E402
from rmkd.engine import autocast  # noqa: E402
from rmkd.models import dense_forward  # noqa: E402
from rmkd.run import build_model, build_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TERMS = {"rm": 4.0, "pfi": 1.5}


def coco_like_batch(batch: int, seed: int = 0, height: int = 480, width: int = 640, classes: int = 80):
    """Random 640x480 'photos' with 1-10 boxes each (the detector resizes them)."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, height, width, generator=g) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 11, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * torch.tensor([width - 64.0, height - 64.0])
        wh = 16 + torch.rand(n, 2, generator=g) * 200
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([width, height]))], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, classes + 1, (n,), generator=g)})
    return images, targets


def build_pair(args, device):
    sets = ["model.weights_backbone=null", f"model.image_size=[{args.size[0]}, {args.size[1]}]"]
    t_cfg = load_config(ROOT / "configs/coco/retinanet_r101_teacher.yaml", sets + [f"model.backbone={args.teacher}"])
    s_cfg = load_config(ROOT / "configs/coco/retinanet_r101_r50_1x.yaml", sets + [f"model.backbone={args.student}"])
    torch.manual_seed(0)
    teacher = build_model(t_cfg).eval().requires_grad_(False)
    student = build_model(s_cfg).train()
    for model in (teacher, student):
        # Fresh heads give every anchor the same prior score, so RM would be exactly 0 and
        # compare nothing; spread the class outputs as a trained head's are.
        torch.nn.init.normal_(model.head.classification_head.cls_logits.weight, std=0.5)
    return teacher.to(device), student.to(device), s_cfg


def on(device, images, targets):
    return [im.to(device) for im in images], [{k: v.to(device) for k, v in t.items()} for t in targets]


def agreement(args, device) -> dict:
    """Relative difference of each loss term between the CPU and the device (float32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    teacher, student, _ = build_pair(args, "cpu")
    images, targets = coco_like_batch(2, seed=1)
    kd = Distiller(teacher, student, TERMS).train()
    cpu = {k: v.item() for k, v in kd(images, targets).items()}
    kd = kd.to(device)
    dev = {k: v.item() for k, v in kd(*on(device, images, targets)).items()}
    return {k: {"cpu": cpu[k], "device": dev[k], "rel_diff": abs(cpu[k] - dev[k]) / max(abs(cpu[k]), 1e-12)} for k in cpu}


def timed(fns: dict, repeat: int, device) -> dict:
    """Median seconds of each fn, interleaved, synchronised; and each fn's peak memory (MiB)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    peaks = {}
    for name, fn in fns.items():  # warm-up, and the peak memory of each step on its own
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):
            fn()
        sync()
        peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            sync()
            tic = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - tic)
    return {name: (statistics.median(t), peaks[name]) for name, t in times.items()}


def speed(args, device) -> dict:
    torch.backends.cudnn.benchmark = True  # fixed shapes here: let cuDNN choose
    teacher, student, s_cfg = build_pair(args, device)
    images, targets = on(device, *coco_like_batch(args.batch))
    amp = "bf16" if args.amp == "bf16" else False
    kd = Distiller(teacher, student, TERMS).train()
    opt_kd = build_optimizer([p for p in kd.parameters() if p.requires_grad], s_cfg)
    opt_floor = build_optimizer([p for p in student.parameters() if p.requires_grad], s_cfg)

    def floor():
        with autocast(device, amp):
            with torch.no_grad():
                dense_forward(teacher, images)
            losses = dense_forward(student, images, targets).losses
        opt_floor.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt_floor.step()

    def distill():
        with autocast(device, amp):
            losses = kd(images, targets)
        opt_kd.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt_kd.step()

    return timed({"floor": floor, "distill": distill}, args.repeat, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("SHORT", "MAX"))
    parser.add_argument("--batch", type=int, default=8, help="images per GPU (default 8)")
    parser.add_argument("--teacher", default="resnet101")
    parser.add_argument("--student", default="resnet50")
    parser.add_argument("--amp", choices=["bf16", "none"], default="bf16")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; use --device cpu for a dry run")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()
    tic = time.perf_counter()

    agree = agreement(args, device)
    worst = max(v["rel_diff"] for v in agree.values())
    print(f"# rmkd GPU check on {name} (torch {torch.__version__})")
    print(f"\n## 1. CPU vs {device} losses, float32, same weights and batch (2 COCO-shaped images at {args.size[0]}x{args.size[1]})\n")
    print("| term | CPU | device | relative difference |")
    print("|---|---|---|---|")
    for k, v in agree.items():
        print(f"| {k} | {v['cpu']:.6f} | {v['device']:.6f} | {v['rel_diff']:.2e} |")
    print(f"\n{'PASS' if worst < 1e-3 else 'FAIL'}: largest relative difference {worst:.2e} (limit 1e-3)")

    t = speed(args, device)
    (floor, floor_mem), (kd, kd_mem) = t["floor"], t["distill"]
    print(f"\n## 2. One step, RetinaNet {args.teacher} -> {args.student}, batch {args.batch} at {args.size[0]}x{args.size[1]}, amp {args.amp}\n")
    print("| step | s (median of %d) | images/s | peak memory (MiB) |" % args.repeat)
    print("|---|---|---|---|")
    print(f"| floor: teacher fwd (no grad) + student fwd/bwd/step | {floor:.4f} | {args.batch / floor:.1f} | {floor_mem:.0f} |")
    print(f"| distill: Distiller RM 4 + PFI 1.5 | {kd:.4f} | {args.batch / kd:.1f} | {kd_mem:.0f} |")
    print(f"\noverhead of RM+PFI over the floor: {100 * (kd / floor - 1):+.1f}% (ratio {kd / floor:.3f}); wall {time.perf_counter() - tic:.0f} s")
    if args.out:
        figures = {
            "device": name, "torch": torch.__version__, "args": vars(args), "agreement": agree,
            "agreement_pass": worst < 1e-3, "floor_s": floor, "distill_s": kd, "ratio": kd / floor,
            "images_per_s": args.batch / kd, "peak_mib": {"floor": floor_mem, "distill": kd_mem},
        }  # fmt: skip
        Path(args.out).write_text(jsonio.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
