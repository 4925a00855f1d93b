"""The ``rmkd`` command line: ``rmkd {data,train,pretrain,distill,eval,analyze,reproduce,demo} --help``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from . import jsonio  # what a command prints is strict JSON too: a NaN metric as null, as in metrics.json

CONFIG_HELP = (
    "YAML config; its keys override the defaults (see configs/*.yaml and rmkd/config.py). "
    "Without it the embedded digits benchmark and a small RetinaNet student are used."
)
SET_HELP = (
    "override config keys, e.g. --set train.max_steps=200 model.backbone=resnet34 "
    "(values parsed as YAML; repeatable)"
)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--set", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help=SET_HELP)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (e.g. in logs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmkd",
        description=(
            "Knowledge distillation for one-stage object detectors (Rank Mimicking and "
            "Prediction-guided Feature Imitation, Li et al., AAAI 2022). Runs on a laptop CPU with "
            "an embedded data set; reads any COCO-format data."
        ),
        epilog="Start with 'make demo', or: rmkd data synth && rmkd train --out runs/student",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="make or convert data sets", description="Make or convert data sets.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = data_sub.add_parser(
        "synth",
        help="write the embedded 'digits on photos' COCO data set",
        description=(
            "Write the embedded 'digits on photos' data set (scikit-learn digits pasted on scikit-image "
            "photos and noise; 10 classes; COCO json) under --out. Deterministic for a seed; reused if "
            "already there with the same parameters."
        ),
    )
    from .config import SynthConfig

    d = SynthConfig()  # the same defaults the configs use, so both make the same data set
    synth.add_argument("--out", default=d.out, help=f"output folder (default: {d.out})")
    synth.add_argument("--num-train", type=int, default=d.num_train, help=f"training images (default: {d.num_train})")
    synth.add_argument("--num-val", type=int, default=d.num_val, help=f"validation images (default: {d.num_val})")
    synth.add_argument("--image-size", type=int, default=d.image_size, help=f"square image side in pixels (default: {d.image_size})")
    synth.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default: {d.seed})")
    synth.add_argument("--overwrite", action="store_true", help="replace a data set made with other parameters")
    _add_common(synth)
    voc = data_sub.add_parser(
        "voc2coco",
        help="convert PASCAL VOC XML annotations to COCO json",
        description=(
            "Convert PASCAL VOC annotations (VOCdevkit layout) to one COCO json. file_name entries are "
            "relative to VOC_ROOT, so point data.*.images at VOC_ROOT."
        ),
    )
    voc.add_argument("voc_root", help="VOCdevkit folder (or one VOC20xx folder inside it)")
    voc.add_argument("--image-set", default="trainval", help="ImageSets/Main list to convert (default: trainval)")
    voc.add_argument("--years", nargs="+", help="VOC years to include, e.g. 2007 2012 (default: all found)")
    voc.add_argument("--out", required=True, help="output COCO json path")

    train = sub.add_parser(
        "train",
        help="train one detector (a teacher or a baseline student)",
        description=(
            "Train one detector. Writes DIR/last.pt (atomically, every train.checkpoint_every steps), "
            "DIR/metrics.jsonl, DIR/config.yaml and, at the end, DIR/metrics.json (COCO AP on the val split)."
        ),
    )
    _add_config_args(train)
    train.add_argument("--out", required=True, metavar="DIR", help="run folder")
    train.add_argument("--resume", action="store_true", help="continue the run in DIR from its last.pt")
    _add_common(train)

    pre = sub.add_parser(
        "pretrain",
        help="pretrain a backbone on crops of the training objects (no download)",
        description=(
            "Pretrain the torchvision network named by model.backbone to classify a square crop around every "
            "training object, as the detector reads the image (rmkd.pretrain). Writes FILE (a state_dict "
            "without the classifier, for model.weights_backbone) and FILE.json (steps, seconds, val accuracy)."
        ),
    )
    _add_config_args(pre)
    pre.add_argument("--steps", type=int, default=None, help="optimiser steps (default: model.pretrain_steps)")
    pre.add_argument(
        "--out", metavar="FILE",
        help="weights file, e.g. data/cache/pretrain/r10.pt (default: the cached file that "
        "model.weights_backbone: pretrain loads, named for the config)",
    )  # fmt: skip
    _add_common(pre)

    dist = sub.add_parser(
        "distill",
        help="train a student distilled from a frozen teacher (RM, PFI and baselines)",
        description=(
            "Train the configured student with its detection losses plus weighted KD terms against a frozen "
            "teacher checkpoint. Terms (weights in the distill section, 0 = off): rm, pfi, soft_label, fi_full, "
            "fi_full_level, fi_positive, fi_negative, fi_gt, fgfi; default rm=4 pfi=1.5 (the paper's). Options: "
            "distill.rm_score (cls|iou|cls+iou, the mean of both KLs; default cls, the paper's), distill.rm_space "
            "(prob|logit), distill.rm_temperature, distill.pfi_detach. "
            "Same run folder as 'rmkd train'; evaluate the result with 'rmkd eval'."
        ),
    )
    _add_config_args(dist)
    dist.add_argument("--teacher", metavar="CKPT", help="teacher checkpoint (last.pt of 'rmkd train'); or distill.teacher")
    dist.add_argument("--out", required=True, metavar="DIR", help="run folder")
    dist.add_argument("--resume", action="store_true", help="continue the run in DIR from its last.pt")
    _add_common(dist)

    ev = sub.add_parser(
        "eval",
        help="COCO mAP of a checkpoint",
        description=(
            "Evaluate a checkpoint on the val split of its own config (override with --config/--set). "
            "Writes detections.json (COCO results) and metrics.json to --out (default: CKPT's folder/eval)."
        ),
    )
    ev.add_argument("--checkpoint", required=True, metavar="CKPT", help="an rmkd last.pt")
    ev.add_argument("--set", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help=SET_HELP)
    ev.add_argument("--out", metavar="DIR", help="where to write detections.json and metrics.json")
    _add_common(ev)

    an = sub.add_parser(
        "analyze",
        help="rank agreement and the F_dif vs P_dif gap of teacher/student pairs",
        description=(
            "Measure the paper's two observations on the val split of the first student's config: per GT "
            "instance, how teacher and student rank its candidate boxes (Kendall tau-b, Spearman, top-1 "
            "agreement, IoU of each top-ranked box, which anchor each model's kept box came from); per image "
            "and FPN level, how F_dif and P_dif relate (Pearson, Spearman, top-10%% overlap, mass inside GT "
            "boxes). Writes instances/levels frames, PNG figures, summary.md and summary.json to --out. "
            "Options via --set: analysis.score=cls|iou, analysis.adapter=fit|trained, data.val_limit=N."
        ),
    )
    an.add_argument("--teacher", required=True, metavar="CKPT", help="teacher checkpoint (last.pt)")
    an.add_argument(
        "--student",
        required=True,
        action="append",
        metavar="[NAME=]CKPT",
        help="student checkpoint, optionally named (repeatable; the first is the reference for deltas)",
    )
    an.add_argument("--set", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help=SET_HELP)
    an.add_argument("--out", required=True, metavar="DIR", help="where to write frames, figures and the summary")
    an.add_argument("--details", type=int, default=4, metavar="N", help="images kept for the heat-map and box figures (default: 4)")
    an.add_argument("--format", choices=("csv", "parquet"), default="csv", help="frame file format (default: csv)")
    _add_common(an)

    rep = sub.add_parser(
        "reproduce",
        help="the paper's ablations on the embedded benchmark over several seeds (resumable)",
        description=(
            "Train the teacher once (cached), then the student with each method over each seed on the same "
            "step budget (rmkd.reproduce.METHODS: baseline, rm, pfi, rm+pfi, soft_label, the paper's own weights, "
            "RM variants, feature-imitation controls), 6 seeds for the main methods and RM rows, 3 for the others. "
            "Every KD weight follows one rule (equal gradient norm with 1.5 PFI, computed once: calibration.json). "
            "Finished runs are skipped and partial ones resumed, so rerunning the command continues a killed study. "
            "Writes the CSV (detector, method, seed, AP, ..., weights, machine, rank_tau) and the tables beside it "
            "(.md) after every run, and prints the paired-claims table (same-seed differences, 95% CIs, Holm). "
            "--quick is a pipeline check in minutes."
        ),
    )
    rep.add_argument("--out", default="runs/reproduce", metavar="DIR", help="run folders (default: runs/reproduce)")
    rep.add_argument("--csv", default=None, metavar="FILE", help="results CSV (default: docs/results/ablation.csv; with --quick DIR/ablation.csv)")
    rep.add_argument("--methods", nargs="+", metavar="M", help="subset of methods (default: all); the CSV keeps its other rows")
    rep.add_argument("--seeds", nargs="+", type=int, metavar="S", help="the same student seeds for every method (default: 6 or 3 per method, rmkd.reproduce.SEEDS); the CSV keeps its other seeds")
    rep.add_argument("--detectors", nargs="+", metavar="D", help="detectors (default: retinanet)")
    rep.add_argument("--set", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help="overrides for every student, e.g. train.max_steps=200 for a quicker look")
    rep.add_argument("--teacher-set", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help="overrides for the teacher")
    rep.add_argument("--cache", default="data/cache", metavar="DIR", help="where trained teachers are kept (default: data/cache)")
    rep.add_argument("--quick", action="store_true", help="tiny data and budgets (numbers meaningless): checks the pipeline")
    rep.add_argument(
        "--no-teacher-cache", action="store_true",
        help="run the teacher live in every step instead of computing its outputs once per image (identical results, slower)",
    )  # fmt: skip
    _add_common(rep)

    imp = sub.add_parser(
        "import-teacher",
        help="torchvision's COCO-trained RetinaNet/FCOS as an rmkd teacher checkpoint",
        description=(
            "Write torchvision's COCO-trained detector as an rmkd checkpoint (80 classes, labels in COCO's "
            "category order, torchvision's anchors) that rmkd distill --teacher and rmkd eval read. "
            "Downloads torchvision's weights unless --weights gives that model's state_dict."
        ),
    )
    imp.add_argument("name", choices=["retinanet_resnet50_fpn", "fcos_resnet50_fpn"], help="torchvision model")
    imp.add_argument("--out", required=True, metavar="FILE", help="checkpoint to write, e.g. teachers/retinanet_r50_coco.pt")
    imp.add_argument("--weights", default=None, metavar="FILE", help="the model's state_dict, instead of downloading it")

    demo = sub.add_parser(
        "demo",
        help="the main job on the embedded data: teacher, student, table",
        description=(
            "Generate the embedded data set, train a teacher (cached under data/cache, keyed by its config) "
            "and a baseline student for fixed step budgets, evaluate both and print a table. "
            "The first run takes about 25 minutes on a 2-core CPU; later runs reuse the teacher."
        ),
    )
    demo.add_argument("--out", default="runs/demo", metavar="DIR", help="run folder for the student(s) (default: runs/demo)")
    demo.add_argument("--teacher-config", default=None, metavar="FILE", help="teacher config (default: configs/teacher.yaml)")
    demo.add_argument("--student-config", default=None, metavar="FILE", help="student config (default: configs/student.yaml)")
    demo.add_argument("--cache", default="data/cache", metavar="DIR", help="where trained teachers are kept (default: data/cache)")
    demo.add_argument(
        "--quick", action="store_true", help="tiny data and budgets: checks the pipeline in about a minute (numbers meaningless)"
    )
    demo.add_argument("--set", metavar="KEY=VALUE", nargs="+", action="extend", default=[], help="overrides for both models")
    _add_common(demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .engine import NonFiniteLossError

    progress = not getattr(args, "no_progress", False)
    # One line per warning ("rmkd: warning: ..."), not Python's file:line + source echo.
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return _dispatch(args, progress)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError, NonFiniteLossError) as e:
        if os.environ.get("RMKD_DEBUG"):
            raise
        print(f"rmkd {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        # A user error raised inside a DataLoader worker comes back as a RuntimeError
        # carrying the worker's traceback; its last line is the message.
        if "Original Traceback" not in str(e) or os.environ.get("RMKD_DEBUG"):
            raise
        print(f"rmkd {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rmkd {args.command}: interrupted (a checkpoint was saved where a run was training)", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning


def _one_line(e: BaseException) -> str:
    """The message of ``e`` on one line; a worker's re-raised traceback gives its last line."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last  # drop "module.ErrorType: "
    return " ".join(text.split())


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"rmkd: warning: {' '.join(str(message).split())}\n"


def _dispatch(args, progress: bool) -> int:
    if args.command == "data":
        if args.data_command == "synth":
            from .config import Config
            from .run import data_splits

            cfg = Config()
            s = cfg.data.synth
            s.out, s.num_train, s.num_val = args.out, args.num_train, args.num_val
            s.image_size, s.seed = args.image_size, args.seed
            print(jsonio.dumps(data_splits(cfg, progress, overwrite=args.overwrite), indent=2))
        else:
            from .data import voc_to_coco

            coco = voc_to_coco(args.voc_root, image_set=args.image_set, out_json=args.out, years=args.years)
            print(f"wrote {args.out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes")
        return 0

    if args.command == "train":
        from .config import load_config
        from .run import train

        cfg = load_config(args.config, args.set)
        metrics = train(cfg, args.out, resume=args.resume, progress=progress)
        print(jsonio.dumps(metrics, indent=2))
        return 0

    if args.command == "pretrain":
        from .config import load_config, pretrained_backbone_file
        from .pretrain import pretrain_backbone

        cfg = load_config(args.config, args.set)
        steps = cfg.model.pretrain_steps if args.steps is None else args.steps
        cfg.model.pretrain_steps = steps  # the default file is named for the steps actually run
        out = args.out or pretrained_backbone_file(cfg)
        summary = pretrain_backbone(cfg, out, steps, progress)
        print(f"wrote {out}")
        print(jsonio.dumps(summary, indent=2))
        return 0

    if args.command == "distill":
        from .config import load_config
        from .run import distill

        cfg = load_config(args.config, args.set)
        if args.teacher:
            cfg.distill.teacher = args.teacher  # a path, never parsed as YAML
        metrics = distill(cfg, args.out, resume=args.resume, progress=progress)
        print(jsonio.dumps(metrics, indent=2))
        return 0

    if args.command == "eval":
        from .run import evaluate_checkpoint

        metrics = evaluate_checkpoint(args.checkpoint, args.out, args.set, progress)
        print(jsonio.dumps(metrics, indent=2))
        return 0

    if args.command == "analyze":
        from .analysis.report import analyze, parse_students

        analyze(args.teacher, parse_students(args.student), args.out, args.set, args.details, args.format, progress)
        with open(os.path.join(args.out, "summary.md"), encoding="utf-8") as f:
            print(f.read())
        return 0

    if args.command == "import-teacher":
        from .models.zoo import TEACHERS, import_torchvision

        cfg = import_torchvision(args.name, args.out, args.weights)
        ap = TEACHERS[args.name][3]
        print(f"wrote {args.out}: {cfg.model.family} {cfg.model.backbone}, {cfg.model.num_classes} classes "
              f"(torchvision reports {ap} COCO AP); use it with rmkd distill --teacher {args.out}")
        return 0

    if args.command == "reproduce":
        from .demo import QUICK
        from .reproduce import STUDY_OVERRIDES, run_study

        quick = QUICK if args.quick else []
        csv = args.csv or (os.path.join(args.out, "ablation.csv") if args.quick else "docs/results/ablation.csv")
        run_study(
            out=args.out,
            csv=csv,
            methods=args.methods,
            seeds=args.seeds,
            detectors=args.detectors,
            overrides=STUDY_OVERRIDES + quick + args.set,
            teacher_overrides=quick + args.teacher_set,
            cache=os.path.join(args.cache, "quick") if args.quick else args.cache,
            progress=progress,
            teacher_cache=not args.no_teacher_cache,
        )
        with open(os.path.splitext(csv)[0] + ".md", encoding="utf-8") as f:
            print(f.read())
        return 0

    if args.command == "demo":
        from .demo import run_demo

        run_demo(
            out=args.out,
            teacher_config=args.teacher_config,
            student_config=args.student_config,
            cache=args.cache,
            quick=args.quick,
            overrides=args.set,
            progress=progress,
        )
        return 0
    raise AssertionError(args.command)  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
