"""``rmkd reproduce``: the paper's ablations on the embedded benchmark, resumable.

For each detector, the teacher is trained once (cached like the demo's), then
the student is trained with every method over its seeds, all on the same step
budget. A run folder per (detector, method, seed) under ``--out``; a finished
run (``metrics.json`` at the full step count) is skipped, a partial one resumes
from its ``last.pt``, so a killed study picks up where it stopped. After every
run the CSV (``detector, method, seed, AP, ..., sec_per_step, weights, machine, rank_tau,
det_loss_end, kd_loss_start, kd_loss_end, config``) and the markdown beside it are rewritten.
A run whose folder is gone (a fresh checkout: run folders are not committed) but whose
row is in the CSV with the same config digest and machine is kept from the CSV, not
trained again, so a study spread over several checkouts only adds the runs it lacks. Such a
checkout must compute like the table's machine: :mod:`rmkd.machine` checks the student's
pretrained backbone against ``machine.json`` before the teacher trains, and the teacher's AP
against the CSV's after.

Weights: one rule for every method (:mod:`rmkd.weighting`): each term's weight
gives it the gradient norm of 1.5 PFI on the baseline student trained to its
budget (seed 0, the study's first run), computed once per study
(``calibration.json``). The paper's own weights (RM 4,
PFI 1.5) are rows of their own (``rm_paper``, ``rm+pfi_paper``). The seed
changes the student's initialisation and data order and is shared by every
method, so methods are compared through same-seed differences
(:func:`rmkd.claims.paired_claims`). The teacher is the same for every run.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pandas as pd

from . import jsonio
from .claims import ALPHA, MARGIN, claims_markdown, paired_claims
from .config import Config, ConfigError, load_config
from .distill import TERMS
from .machine import check_fingerprint, fingerprint, machine_name, machine_path, record_fingerprint
from .models import DETECTION_LOSSES
from .weighting import DEFAULT_OPTIONS, TERM_OPTIONS, calibrate, variant_key

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
PAPER_WEIGHTS = {"rm": 4.0, "pfi": 1.5}
RULE = "rule"  # a weight set by the study's weighting rule (rmkd.weighting)
# method -> the distill section it trains with (weights left out here are 0); None = plain training.
# Ordered so that a study stopped early has the paper's main ablation complete first.
METHODS: dict[str, dict | None] = {
    "baseline": None,
    "rm": {"rm": RULE},
    "pfi": {"pfi": RULE},  # the rule's reference: 1.5 by definition
    "rm+pfi": {"rm": RULE, "pfi": RULE},
    "soft_label": {"soft_label": RULE},
    "rm_paper": {"rm": 4.0},
    "rm+pfi_paper": {"rm": 4.0, "pfi": 1.5},
    "rm_iou": {"rm": RULE, "rm_score": "iou"},
    "rm_cls_iou": {"rm": RULE, "rm_score": "cls+iou"},
    "rm_t0.25": {"rm": RULE, "rm_temperature": 0.25},
    "rm_t0.1": {"rm": RULE, "rm_temperature": 0.1},
    "fi_full": {"fi_full": RULE},
    "fi_full_level": {"fi_full_level": RULE},
    "soft_label+fi_full": {"soft_label": RULE, "fi_full": RULE},
    "fi_positive": {"fi_positive": RULE},
    "fi_negative": {"fi_negative": RULE},
    "fi_gt": {"fi_gt": RULE},
    "fgfi": {"fgfi": RULE},
    "pfi_detach": {"pfi": RULE, "pfi_detach": True},  # P_dif without gradient (the paper does not say)
}
# Seeds per method: the main comparisons and every RM row get 6, the other controls 3.
MAIN_METHODS = ("baseline", "soft_label", "rm", "pfi", "rm+pfi", "rm_paper", "rm_iou", "rm_cls_iou", "rm_t0.25", "rm_t0.1")
SEEDS = {m: 6 if m in MAIN_METHODS else 3 for m in METHODS}
# The paper's tables, as (title, methods) over the study's rows.
TABLES = [
    ("RM and PFI (the paper's Table 1 ablation)", ["baseline", "rm", "pfi", "rm+pfi"]),
    ("The paper's own weights (RM 4, PFI 1.5)", ["baseline", "rm_paper", "pfi", "rm+pfi_paper"]),
    ("Soft-label KD vs RM; the dense baselines together", ["baseline", "soft_label", "rm", "soft_label+fi_full", "rm+pfi"]),
    ("What RM ranks by: classification score, IoU, both", ["baseline", "rm", "rm_iou", "rm_cls_iou"]),
    ("RM sharpened: temperature in probability space", ["baseline", "rm", "rm_t0.25", "rm_t0.1"]),
    ("PFI vs feature imitation on hand-picked regions", ["baseline", "fi_full", "fi_full_level", "fi_positive", "fi_negative", "fi_gt", "fgfi", "pfi"]),
    ("PFI with P_dif detached or not", ["baseline", "pfi", "pfi_detach"]),
]
# How a CSV's KD weights were set (its ``rule`` column) -> what the tables say about it.
WEIGHT_RULES = {
    "grad_norm_trained": "every KD term's weight gives it the gradient norm of 1.5 PFI on the student's parameters "
    "over 8 training batches, at the baseline student trained to its budget (seed 0) (`rmkd.weighting`, "
    "`calibration.json`); the paper's weights (RM 4, PFI 1.5) are rows of their own",
    "grad_norm": "every KD term's weight gives it the gradient norm of 1.5 PFI on the student's parameters over the "
    "first 8 training batches of a fresh student (`rmkd.weighting`, `calibration.json`); the paper's weights "
    "(RM 4, PFI 1.5) are rows of their own",
    "loss_value_v1": "the first study's rule: RM at the paper's 4 and PFI at 1.5; each baseline's weight made its loss "
    "*value* on the first batches equal to 1.5 PFI's (not comparable pull: RM at 4 had 30-90x less than soft-label "
    "KD); `rm_score=cls+iou_summed` summed the two KL terms",
}
WEIGHT_RULE = "grad_norm_trained"  # the rule this code applies
REFERENCE_SEED = 0  # the baseline run whose trained student the rule's gradients are taken on
CLAIMS_RULE = (
    "Claims: the same-seed differences A - B, their 95% t-interval and paired t-test (`rmkd.claims.paired_claims`, "
    f"equal to `scipy.stats.ttest_rel`), Holm's correction at alpha {ALPHA} over every claim the table can test "
    "(two or more paired seeds: all of them once the study is complete; until then the family grows as runs land, "
    "so a verdict near alpha can still change). *Supported*: the "
    "corrected test rejects and the interval is above 0; *contradicted*: it rejects and the interval is below 0; "
    f"otherwise *undecided* (the data cannot tell). \"A works at least as well as B\" tests against a margin of "
    f"{MARGIN} AP fixed in advance: supported only when the interval's lower end is above -{MARGIN}. "
    "Seeds for 80% power: to detect the observed difference (or 1.5 AP when smaller) at the observed SD, before "
    f"the correction. *Within ±{MARGIN:g} AP* (\"beats\" claims): the two one-sided tests of |mean difference| "
    f">= {MARGIN:g} AP at the same margin (TOST), Holm over the claims as a family of its own; *yes* bounds the "
    "effect, whatever its sign and verdict, below the margin."
)
DETECTORS = {"retinanet": ("teacher.yaml", "student.yaml")}
# No intermediate evaluations: the study needs the final AP only.
STUDY_OVERRIDES = ["train.eval_every=0"]
RANK_IMAGES = 200  # val images the study's rank agreement (mean Kendall tau) is measured on


def method_variants(method: str) -> dict[str, str]:
    """``{term: variant key}`` for each rule-weighted term of ``method``."""
    spec = METHODS[method] or {}
    return {t: variant_key(t, spec) for t, v in spec.items() if t in TERMS and v == RULE}


def method_config(s_cfg: Config, method: str, seed: int, teacher: str, weights: dict[str, float]) -> Config:
    """The student's config for one run: its seed, and for KD methods the distill section.

    ``weights``: the rule's weight per variant key (:func:`rmkd.weighting.calibrate`).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    cfg = copy.deepcopy(s_cfg)
    cfg.seed = seed
    spec = METHODS[method]
    if spec is None:
        return cfg
    for term in TERMS:
        setattr(cfg.distill, term, 0.0)
    for key, value in DEFAULT_OPTIONS.items():
        setattr(cfg.distill, key, value)  # every option explicit: a method differs only where it says
    variants = method_variants(method)
    for key, value in spec.items():
        setattr(cfg.distill, key, weights[variants[key]] if value == RULE else value)
    cfg.distill.teacher = teacher
    return cfg


def run_label(cfg: Config) -> str:
    """Every non-zero weight and the options of the terms in use: ``rm=0.91 rm_score=cls ...``."""
    weights = cfg.distill.weights()
    options = [k for t in weights for k in TERM_OPTIONS.get(t, ())]
    return " ".join([f"{k}={v:.4g}" for k, v in weights.items()] + [f"{k}={getattr(cfg.distill, k)}" for k in options])


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

    ``seeds``: the same seeds for every method; default :data:`SEEDS` per method.
    With ``teacher_cache`` (the default) the teacher's outputs on the training set are
    computed once per detector, when the first distillation run starts, and reused by
    every run (:mod:`rmkd.teacher_cache`: identical outputs, a third less time per step).
    """
    from .demo import _config_path, teacher_dir, train_cached
    from .run import data_splits

    methods = list(methods or METHODS)
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}: choose from {', '.join(METHODS)}")
    for d in detectors or []:
        if d not in DETECTORS:
            raise ConfigError(f"unknown detector {d!r}: configs exist for {', '.join(DETECTORS)}")
    machine = machine_name()
    _check_machine(csv, machine)
    dets = detectors or list(DETECTORS)
    todo = [(m, s) for m in methods for s in (seeds if seeds is not None else range(SEEDS[m]))]
    plan = {(d, m, s) for d in dets for m, s in todo}
    rows = untouched_rows(csv, dets, plan)  # the table's other methods and seeds stay in it
    for det in dets:
        t_file, s_file = DETECTORS[det]
        t_cfg = load_config(_config_path(None, t_file), list(teacher_overrides or []))
        s_cfg = load_config(_config_path(None, s_file), list(overrides or []))
        data_splits(t_cfg, progress)
        # the student's backbone first: its file tells in a minute whether this machine computes
        # like the table's (rmkd.machine), before the teacher's half hour
        fp = fingerprint(s_cfg, progress)
        check_fingerprint(machine_path(csv), det, fp)
        t_dir = teacher_dir(t_cfg, cache)
        print(f"[{det}] teacher ({t_dir})")
        rows.append(_row(det, "teacher", t_cfg.seed, train_cached(t_cfg, t_dir, progress), t_cfg, machine, t_dir))
        _check_teacher(csv, rows[-1])
        record_fingerprint(machine_path(csv), det, fp)  # only a machine whose teacher agreed writes it
        teacher = os.path.join(t_dir, "last.pt")
        keys = sorted({k for m in methods for k in method_variants(m).values()})
        weights = _weights(out, det, teacher, t_cfg, s_cfg, keys, calibration_path(csv), progress) if keys else {}
        runs = {k: (method_config(s_cfg, k[0], k[1], teacher, weights), os.path.join(out, det, k[0], f"seed{k[1]}")) for k in todo}
        results = _finished(det, runs, teacher, machine)  # in the CSV from the start: complete whenever the study stops
        absent = {k: v for k, v in runs.items() if not os.path.exists(v[1])}  # a folder there is reused or resumed
        kept = recorded_rows(csv, det, absent, machine)
        if kept:
            print(f"[{det}] {len(kept)} runs kept from {csv} (same config, run folders absent)")
        results.update(kept)
        write_results(pd.DataFrame(rows + [results[k] for k in todo if k in results]), csv)
        outputs = None  # the teacher cache, built when the first distillation needs it
        for i, (method, seed) in enumerate(todo, 1):
            cfg, run_dir = runs[method, seed]
            state = "recorded" if (method, seed) in kept else "done" if (method, seed) in results else "running"
            print(f"[{det} {i}/{len(todo)}] {method} seed {seed}: {state} ({run_dir})")
            if state == "running":
                kd = METHODS[method] is not None
                if kd and teacher_cache and outputs is None:
                    outputs, teacher_cache = _teacher_outputs(cfg, det, progress)
                metrics = run_one(cfg, run_dir, kd, progress, outputs)
                results[method, seed] = _row(det, method, seed, metrics, cfg, machine, run_dir, rank_tau(run_dir, teacher, cfg))
                write_results(pd.DataFrame(rows + [results[k] for k in todo if k in results]), csv)
        rows += [results[k] for k in todo]
    frame = _canonical_order(pd.DataFrame(rows))
    write_results(frame, csv)
    print(claims_markdown(paired_claims(frame)))
    return frame


def _weights(out: str, det: str, teacher: str, t_cfg: Config, s_cfg: Config, keys: list[str], path: str,
             progress: bool) -> dict[str, float]:
    """The rule's weights: read from ``path`` when current, else measured on the trained
    reference baseline (:data:`REFERENCE_SEED`), which is trained first for that."""
    ref_cfg = method_config(s_cfg, "baseline", REFERENCE_SEED, teacher, {})
    ref_dir = os.path.join(out, det, "baseline", f"seed{REFERENCE_SEED}")
    ref = os.path.join(ref_dir, "last.pt")
    stored = _stored_weights(path, det, _made_for(t_cfg, s_cfg, ref), keys)
    if stored is not None:
        return stored
    print(f"[{det}] the weighting rule's reference student: baseline seed {REFERENCE_SEED} ({ref_dir})")
    _check_same_config(ref_cfg, ref_dir)
    run_one(ref_cfg, ref_dir, False, progress)
    return _calibration(teacher, t_cfg, s_cfg, keys, path, det, ref)


def untouched_rows(csv: str, detectors: list[str], plan: set) -> list[dict]:
    """Rows of ``csv`` this invocation neither trains nor rewrites: methods, seeds or detectors
    outside ``plan`` (``{(detector, method, seed)}``) and teachers of detectors outside ``detectors``.
    A study run method by method (``--methods``) so adds to its table and never drops the rest."""
    if not os.path.isfile(csv):
        return []
    old = pd.read_csv(csv, dtype={"config": str, "weights": str})
    return [
        r for r in old.to_dict("records")
        if (r["detector"], r["method"], int(r["seed"])) not in plan and not (r["method"] == "teacher" and r["detector"] in detectors)
    ]  # fmt: skip


def recorded_rows(csv: str, det: str, runs: dict, machine: str) -> dict:
    """Rows of ``csv`` for ``runs`` trained with exactly their config (``config`` digest) on this
    machine: ``{(method, seed): row}``. Rows without a digest are never kept."""
    if not os.path.isfile(csv):
        return {}
    old = pd.read_csv(csv, dtype={"config": str})
    if "config" not in old:
        return {}
    out = {}
    for r in old[(old.detector == det) & (old.machine == machine)].to_dict("records"):
        key = (r["method"], int(r["seed"]))
        if key in runs and r["config"] == runs[key][0].digest():
            out[key] = r
    return out


def _finished(det: str, runs: dict, teacher: str, machine: str) -> dict:
    """Rows of the runs already finished (their rank agreement measured if not yet)."""
    from .demo import finished_metrics

    out = {}
    for (method, seed), (cfg, run_dir) in runs.items():
        _check_same_config(cfg, run_dir)
        metrics = finished_metrics(run_dir, cfg.train.max_steps)
        if metrics is not None:
            out[method, seed] = _row(det, method, seed, metrics, cfg, machine, run_dir, rank_tau(run_dir, teacher, cfg))
    return out


def _check_same_config(cfg: Config, run_dir: str) -> None:
    """A run folder is reused or resumed only for the config it was started with: a study whose
    weights changed (another rule, a new calibration) must not count or continue the old runs."""
    saved = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(saved) and load_config(saved).digest() != cfg.digest():
        raise ConfigError(
            f"{run_dir} holds a run of another config (weights or options differ, e.g. after the weighting "
            "rule or its calibration changed): move the folder away or pass another --out"
        )


def _teacher_outputs(cfg: Config, det: str, progress: bool):
    """(the teacher cache, whether the cache stays on) for the study's distillation runs."""
    from .demo import teacher_outputs

    print(f"[{det}] computing the teacher's outputs once for every run (teacher cache, where the config allows it)")
    outputs = teacher_outputs(cfg, progress)
    return outputs, outputs is not None


def _check_machine(csv: str, machine: str) -> None:
    """One table never mixes machines: a CSV from another machine is an error."""
    if not os.path.isfile(csv):
        return
    old = pd.read_csv(csv)
    others = sorted(set(old.get("machine", pd.Series(dtype=str)).dropna()) - {machine})
    if others:
        raise ConfigError(f"{csv} holds runs from {', '.join(others)}, this machine is {machine}: pass --csv a new file")


def _check_teacher(csv: str, teacher: dict) -> None:
    """The teacher trained here must score what the CSV's teacher of the same config scored, to
    every recorded digit: if not, this machine computes differently (another CPU, another torch)
    and its runs cannot join that table, whose rows would otherwise be kept beside them."""
    if not os.path.isfile(csv):
        return
    old = pd.read_csv(csv, dtype={"config": str})
    if "config" not in old:
        return
    same = old[(old.method == "teacher") & (old.detector == teacher["detector"]) & (old.config == teacher["config"])]
    for r in same.itertuples():
        if any(f"{getattr(r, k):.4f}" != f"{teacher[k]:.4f}" for k in ("AP", "AP50", "AP75")):  # as the CSV writes them
            raise ConfigError(
                f"{csv}: its teacher scored {r.AP:.4f} AP, the same config trained here {teacher['AP']:.4f}: this "
                f"machine ({teacher['machine']}) computes differently, so its runs cannot join that table: pass --csv a new file"
            )


def rank_tau(run_dir: str, teacher: str, cfg: Config) -> float:
    """Mean Kendall tau of teacher vs student candidate rankings on the first
    :data:`RANK_IMAGES` val images (what ``rmkd analyze`` reports), measured once per run."""
    from .analysis import collect
    from .data.loader import eval_loader
    from .run import build_datasets, load_model, val_subset

    path = os.path.join(run_dir, "rank.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return jsonio.nan_for_none(json.load(f))["kendall_tau_mean"]
    t_model, _ = load_model(teacher)
    s_model, _ = load_model(os.path.join(run_dir, "last.pt"))
    _, val = build_datasets(cfg, progress=False, train=False)
    loader = eval_loader(val_subset(val, RANK_IMAGES), cfg.eval.batch_size, 0)
    col = collect(t_model, s_model, loader, score="cls", progress=False)
    tau = float(col.instances.kendall_tau.mean())
    with open(path, "w", encoding="utf-8") as f:
        jsonio.dump({"kendall_tau_mean": tau, "instances": int(col.instances.kendall_tau.notna().sum()), "images": RANK_IMAGES}, f)
    return tau


def _calibration(
    teacher: str, t_cfg: Config, s_cfg: Config, keys: list[str], path: str, det: str, student: str | None = None
) -> dict[str, float]:
    """The rule's weights for ``det``, computed once and kept in ``path`` (committed beside the
    CSV); computed again when the teacher's or the student's config, the reference student
    (``student``: a trained checkpoint, see :mod:`rmkd.weighting`) or the rule changed, or a
    variant is new."""
    stored = _read_calibration(path)
    made_for = _made_for(t_cfg, s_cfg, student)
    result = stored.get(det, {})
    stale = {k: v for k, v in made_for.items() if result.get(k) != v}
    missing = [k for k in keys if k not in result.get("weights", {})]
    if stale or missing:
        why = f"configs changed ({', '.join(stale)})" if stale and result else f"new variants {', '.join(missing)}"
        print(f"[{det}] calibrating weights (equal gradient norm with 1.5 PFI): {why if result else 'first time'}")
        kept = set() if stale else set(result.get("weights", {}))  # still valid: recomputed with the new ones
        result = {**made_for, **calibrate(teacher, s_cfg, sorted(set(keys) | kept), student_ckpt=student)}
        stored[det] = result
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            jsonio.dump(stored, f, indent=2)
    return result["weights"]


def _read_calibration(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _made_for(t_cfg: Config, s_cfg: Config, student: str | None) -> dict:
    """What a calibration depends on: it is current only while all of these are unchanged."""
    return {"teacher_config": t_cfg.digest(), "student_config": s_cfg.digest("model", "data", "train"), "seed": s_cfg.seed,
            "weight_rule": WEIGHT_RULE if student else "grad_norm"}


def _stored_weights(path: str, det: str, made_for: dict, keys: list[str]) -> dict[str, float] | None:
    """The stored weights when current for ``made_for`` and holding every variant in ``keys``, else None."""
    result = _read_calibration(path).get(det, {})
    current = all(result.get(k) == v for k, v in made_for.items()) and set(keys) <= set(result.get("weights", {}))
    return result["weights"] if current else None


def calibration_path(csv: str) -> str:
    """``calibration.json`` beside the study's CSV (``docs/results/calibration.json`` by default)."""
    return os.path.join(os.path.dirname(csv), "calibration.json")


def _row(detector: str, method: str, seed: int, metrics: dict, cfg: Config, machine: str, run_dir: str,
         tau: float = math.nan) -> dict:
    summary = metrics.get("train_summary", {})
    return {
        "detector": detector,
        "method": method,
        "seed": seed,
        **{k: 100 * metrics[k] if metrics[k] is not None else math.nan for k in METRICS},
        "steps": metrics["step"],
        "train_seconds": summary.get("train_seconds"),  # the last invocation only, if the run was resumed
        "sec_per_step": summary.get("sec_per_step_median"),  # median over logged steps: robust to pauses
        "weights": run_label(cfg) if METHODS.get(method) else "",
        "backbone": f"{cfg.model.backbone}-FPN{cfg.model.fpn_channels}",
        "machine": machine,
        "rank_tau": tau,
        "rule": WEIGHT_RULE if METHODS.get(method) else "",
        "config": cfg.digest(),  # what the run was trained with: a later study keeps the row only for this config
        **(training_losses(run_dir) if method != "teacher" else {}),
    }


LOSS_WINDOW = 0.1  # the share of a run's logged steps averaged at its start and at its end


def training_losses(run_dir: str) -> dict[str, float]:
    """What the terms did during a run, from its ``metrics.jsonl``: the detection loss over the
    last :data:`LOSS_WINDOW` of the logged steps, and the weighted distillation terms (summed)
    over the first and the last. A term the student cannot lower, or a detection loss that ends
    above the baseline's, is something AP alone does not show."""
    from .plots import read_metrics

    frame = read_metrics(run_dir, prefix="train").drop_duplicates("step", keep="last")  # a resumed run re-logs steps
    n = max(1, round(LOSS_WINDOW * len(frame)))
    det = [c for c in DETECTION_LOSSES if c in frame]
    kd = [c for c in TERMS if c in frame]
    kd_mean = lambda part: float(part[kd].sum(axis=1).mean()) if kd else math.nan  # noqa: E731
    return {"det_loss_end": float(frame.tail(n)[det].sum(axis=1).mean()),
            "kd_loss_start": kd_mean(frame.head(n)), "kd_loss_end": kd_mean(frame.tail(n))}


def losses_lines(frame: pd.DataFrame, det: str) -> list[str]:
    """Markdown section ``det: the terms in training``: per method, means over seeds of
    :func:`training_losses`' columns (nothing for a CSV without them)."""
    if "det_loss_end" not in frame:
        return []
    students = frame[frame.method != "teacher"]
    means = students.groupby("method", sort=False)[["det_loss_end", "kd_loss_start", "kd_loss_end"]].mean()
    base = means.det_loss_end.get("baseline", math.nan)
    lines = [f"## {det}: the terms in training", "",
             f"Training losses, means over seeds (first / last {LOSS_WINDOW:.0%} of the logged steps; KD terms weighted "
             "and summed): does a method lower its own term, and what does it do to the detection loss?", "",
             "| method | detection loss at the end | vs baseline | KD terms at the start | at the end |", "|---|---|---|---|---|"]
    for method, r in means.iterrows():
        change = "" if method == "baseline" or base != base else f"{100 * (r.det_loss_end / base - 1):+.0f}%"
        kd = ("-", "-") if r.kd_loss_start != r.kd_loss_start else (f"{r.kd_loss_start:.4f}", f"{r.kd_loss_end:.4f}")
        lines.append(f"| {method} | {r.det_loss_end:.4f} | {change} | {kd[0]} | {kd[1]} |")
    return lines + [""]


def write_results(frame: pd.DataFrame, csv: str) -> None:
    """The CSV and, beside it, the markdown tables (``.md``); rows in :data:`METHODS` order (the
    teacher first), then by seed, whatever order ``--methods`` ran them in."""
    frame = _canonical_order(frame)
    Path(csv).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=False, float_format="%.4f")
    Path(csv).with_suffix(".md").write_text(ablation_tables(frame), encoding="utf-8")


def _canonical_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Detectors in the order they first appear; within one, the teacher, then :data:`METHODS`
    order (methods it does not know last), then seeds."""
    if frame.empty or not {"detector", "method", "seed"} <= set(frame.columns):
        return frame
    rank = {m: i for i, m in enumerate(["teacher", *METHODS])}
    keys = {
        "detector": lambda c: c.map({d: i for i, d in enumerate(pd.unique(c))}),
        "method": lambda c: c.map(rank).fillna(len(rank)),
        "seed": lambda c: c,
    }
    return frame.sort_values(list(keys), key=lambda c: keys[c.name](c), kind="stable").reset_index(drop=True)


def summary_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per (detector, method), the mean rank
    agreement, and the share of the teacher - baseline gap each method closes (means)."""
    students = frame[frame.method != "teacher"]
    if "rank_tau" not in students:
        students = students.assign(rank_tau=math.nan)
    agg = students.groupby(["detector", "method"], sort=False)[[*METRICS, "rank_tau"]].agg(["mean", "std", "count"])
    out = pd.DataFrame(
        {
            "AP_mean": agg[("AP", "mean")],
            "AP_std": agg[("AP", "std")],
            "seeds": agg[("AP", "count")].astype(int),
            "AP50_mean": agg[("AP50", "mean")],
            "AP75_mean": agg[("AP75", "mean")],
            "APs_mean": agg[("APs", "mean")],
            "tau_mean": agg[("rank_tau", "mean")],
        }
    ).reset_index()
    teacher = frame[frame.method == "teacher"].groupby("detector")["AP"].mean()
    base = out[out.method == "baseline"].set_index("detector")["AP_mean"]
    gap = out.detector.map(teacher) - out.detector.map(base)
    out["gap_closed"] = (out.AP_mean - out.detector.map(base)) / gap.where(gap > 0)
    return out


def ablation_tables(frame: pd.DataFrame) -> str:
    """The paper's tables (mean +- std over seeds), the paired claims and the defaults, as markdown."""
    summary = summary_frame(frame)
    machines = _values(frame, "machine")
    students = frame[frame.method != "teacher"]
    keys = [k for k in ("backbone", "steps") if k in students]
    regime = ", ".join(" ".join(map(str, k)) for k in students.groupby(keys).size().index) if len(keys) == 2 else "n/a"
    lines = ["# Ablation on the embedded benchmark", "",
             f"Generated by `rmkd reproduce` from the CSV beside this file; AP on 0-100; machine: {machines}; "
             f"students: {regime}. "
             "Kendall tau: mean rank agreement of teacher and student over each object's candidates "
             f"(first {RANK_IMAGES} val images).", ""]  # fmt: skip
    lines += [study_cost(frame), ""]
    for det, group in summary.groupby("detector", sort=False):
        runs = frame[frame.detector == det]
        t = runs[runs.method == "teacher"]
        t_ap = f"{t.AP.mean():.1f}" if len(t) else "n/a"
        base = group[group.method == "baseline"]
        for title, methods in TABLES:
            rows = group.set_index("method").reindex([m for m in methods if m in set(group.method)])
            if rows.empty:
                continue
            lines += [f"## {det}: {title}", "", f"teacher {t_ap} AP", "",
                      "| method | weights | seeds | AP | AP50 | AP75 | APs | change | gap closed | Kendall tau |",
                      "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
            for method, r in rows.iterrows():
                w = runs[runs.method == method].weights.iloc[0]
                change = r.AP_mean - base.AP_mean.iloc[0] if len(base) and method != "baseline" else math.nan
                lines.append(
                    f"| {method} | {w if isinstance(w, str) and w else '-'} | {r.seeds} | {r.AP_mean:.1f} ± {_std(r.AP_std)} | "
                    f"{r.AP50_mean:.1f} | {r.AP75_mean:.1f} | {r.APs_mean:.1f} | {_signed(change)} | "
                    f"{_pct(r.gap_closed) if method != 'baseline' else ''} | {_std(r.tau_mean, '.3f')} |"
                )
            lines.append("")
        lines += losses_lines(runs, det)
        claims = paired_claims(runs)
        rules = sorted(set(runs.get("rule", pd.Series(dtype=str)).dropna()) - {""})
        weights = "; ".join(f"`{r}`: {WEIGHT_RULES.get(r, 'unknown')}" for r in rules) or "none"
        lines += [f"## {det}: the paper's claims, paired by seed", "", f"Weights: {weights}.", "", CLAIMS_RULE, "",
                  claims_markdown(claims), ""]  # fmt: skip
        lines += [f"## {det}: defaults", "", *defaults_lines(claims), ""]
    return "\n".join(lines)


def study_cost(frame: pd.DataFrame) -> str:
    """One line: the study's compute, median s/step x steps summed over its student runs (a
    resumed or paused run's wall clock would miscount it), and the teacher's the same way."""
    if "sec_per_step" not in frame or frame.sec_per_step.isna().all():
        return "Cost: not recorded in this CSV (no `sec_per_step` column)."
    cost = frame.sec_per_step * frame.steps
    students = frame.method != "teacher"
    missing = int(frame.sec_per_step[students].isna().sum())
    return (f"Cost: {cost[students].sum() / 3600:.2f} h for {int(students.sum()) - missing} student runs "
            f"(median s/step x steps, summed){f', {missing} runs without a step time' if missing else ''}; "
            f"teacher {cost[~students].sum() / 60:.1f} min, trained once.")


def _values(frame: pd.DataFrame, column: str) -> str:
    """The distinct non-empty values of ``column``, comma-separated ("n/a" if none or no column)."""
    values = sorted(set(frame.get(column, pd.Series(dtype=str)).dropna()) - {""})
    return ", ".join(values) or "n/a"


def _std(x: float, fmt: str = ".1f") -> str:
    return "n/a" if x != x else format(x, fmt)


def _signed(x: float) -> str:
    return "" if x != x else f"{x:+.1f}"


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.0f}%"


def chosen_defaults(claims: pd.DataFrame) -> dict:
    """The library defaults the study decides: a choice moves away from the paper's (or,
    where the paper is silent, the public reimplementations') only on a decided claim.

    ``rm_score``: "iou" or "cls+iou" only if "ranking by cls works at least as well as"
    that variant is *contradicted*; else "cls". If both are, the one further ahead of cls
    (the more negative mean of cls - variant; the two are not compared with each other,
    so this is a stated tie-break, not a decided claim). ``pfi_detach``: True only if "PFI with
    P_dif's gradient beats P_dif detached" is *contradicted*. ``rm_temperature``: the
    sharper T whose "beats RM at T = 1" is *supported* (0.25 before 0.1); else 1.0.
    """
    indexed = claims.set_index(["a", "b"])
    verdict = indexed.verdict.to_dict()
    ahead = {score: indexed.mean_diff[("rm", method)] for method, score in (("rm_iou", "iou"), ("rm_cls_iou", "cls+iou"))
             if verdict.get(("rm", method)) == "contradicted"}  # fmt: skip
    rm_score = min(ahead, key=ahead.get) if ahead else "cls"
    temperature = 1.0
    for method, t in (("rm_t0.1", 0.1), ("rm_t0.25", 0.25)):
        if verdict.get((method, "rm")) == "supported":
            temperature = t
    pfi_detach = verdict.get(("pfi", "pfi_detach")) == "contradicted"
    return {"rm_score": rm_score, "pfi_detach": pfi_detach, "rm_temperature": temperature}


def defaults_lines(claims: pd.DataFrame) -> list[str]:
    chosen = chosen_defaults(claims)
    v = claims.set_index(["a", "b"]).verdict.to_dict()
    # Say which way each line went: "stays unless" reads wrong under a default the study moved.
    score = ("the study decided against the paper's cls" if chosen["rm_score"] != "cls"
             else "the paper's cls stays unless the study decides against it")
    detach = ("the study decided detaching is better (the paper does not say)" if chosen["pfi_detach"]
              else "P_dif passes its gradient unless the study decides detaching is better (the paper does not say)")
    temperature = ("the study decided sharpening is better than the paper's T = 1" if chosen["rm_temperature"] != 1.0
                   else "the paper's T = 1 stays unless sharpening is decided better")
    return [
        f"- `distill.rm_score={chosen['rm_score']}`: cls vs IoU {v.get(('rm', 'rm_iou'))}, cls vs cls+IoU "
        f"{v.get(('rm', 'rm_cls_iou'))}; {score}.",
        f"- `distill.pfi_detach={str(chosen['pfi_detach']).lower()}`: gradient vs detached {v.get(('pfi', 'pfi_detach'))}; "
        f"{detach}.",
        f"- `distill.rm_temperature={chosen['rm_temperature']}`: T = 0.25 vs 1 {v.get(('rm_t0.25', 'rm'))}, T = 0.1 vs 1 "
        f"{v.get(('rm_t0.1', 'rm'))}; {temperature}.",
    ]


def readme_block(frame: pd.DataFrame, detector: str = "retinanet") -> str:
    """The README's headline: the main ablation table and the claims' verdicts, from the CSV."""
    runs = frame[frame.detector == detector]
    summary = summary_frame(runs).set_index("method")
    teacher = runs[runs.method == "teacher"].AP.mean()
    base = summary.AP_mean.get("baseline", math.nan)
    machines = _values(runs, "machine")
    lines = [
        f"Teacher {teacher:.1f} AP. Students: mean ± std over seeds of COCO AP on the embedded val split "
        f"(`docs/results/ablation.csv`, written by `rmkd reproduce`; machine {machines}).",
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
    claims = paired_claims(runs)
    counts = claims.verdict.value_counts()
    lines += ["", f"The paper's {len(claims)} claims and controls at this scale, paired by seed with Holm's correction "
              "(`rmkd.claims.paired_claims`): " + ", ".join(f"{counts.get(v, 0)} {v}" for v in ("supported", "contradicted", "undecided")) + "."]
    for verdict in ("supported", "contradicted"):
        names = claims[claims.verdict == verdict].claim.tolist()
        if names:
            lines.append(f"{verdict.capitalize()}: {'; '.join(names)}.")
    within = claims[claims.equivalent].claim.tolist()
    if within:
        lines.append(f"Within ±{MARGIN:g} AP, whatever the verdict (two one-sided tests, Holm): {'; '.join(within)}.")
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
    parser.add_argument("--compare", nargs="+", metavar="LABEL=CSV", default=None,
                        help="instead: the claims of several machines' tables side by side and pooled (rmkd.replication), "
                             "the first the reference, e.g. cpu2-amd=docs/results/ablation.csv")  # fmt: skip
    parser.add_argument("--compare-out", default="docs/results/replication.md", help="where --compare writes")
    args = parser.parse_args()
    if args.compare:
        from .replication import replication_report

        specs = [s.split("=", 1) for s in args.compare]
        if any(len(s) != 2 or not all(s) for s in specs):
            parser.error(f"--compare takes LABEL=CSV pairs, got {' '.join(args.compare)!r}")
        try:
            report = replication_report(dict(specs))
        except ValueError as e:
            parser.error(str(e))
        Path(args.compare_out).write_text(report, encoding="utf-8")
        print(report)
        raise SystemExit(0)
    write_results(pd.read_csv(args.csv, dtype={"weights": str}).fillna({"weights": ""}), args.csv)
    if args.readme:
        print(f"{args.readme}: {'updated' if update_readme(args.readme, args.csv) else 'unchanged'}")
