"""The study's one weighting rule: every KD term pulls on the student as hard as 1.5 PFI.

Loss *values* are not comparable across terms (RM's KL is 0.002-0.005 where
soft-label KD's is near 1), and what moves the student is the gradient. So each
term, with its options, gets the weight that makes the norm of its gradient on
the student's parameters, averaged over training batches, equal to that of PFI
at the paper's weight 1.5:

    w_term = 1.5 * mean_b ||d PFI_b / d theta|| / mean_b ||d term_b / d theta||

*Where* the gradients are taken matters: the terms' pulls change by different
factors as the student learns. On the benchmark's frozen-body student, RM's
gradient norm grows about 400x from initialisation to the end of the baseline's
training and PFI's about 15x, while full-map feature imitation's barely moves
(docs/RESULTS.md, "Weights by the one rule"), so weights matched at
initialisation give RM about 27x PFI's pull for most of a run. The study
therefore matches the pulls on the **baseline student trained to its budget**
(``student_ckpt``): the regime measures distillation at convergence, where a
run spends most of its steps. Without a checkpoint a fresh student is used.

PFI itself therefore gets 1.5. A term's options change its gradient, so each
variant (``rm`` ranking by IoU, ``rm`` at T = 0.1, ``pfi`` with P_dif detached, ...)
is calibrated on its own; the key names them, e.g. ``rm[rm_score=iou]``.
``theta`` is the student's parameters only (not the adapters, which RM and
soft-label KD do not have).
"""

from __future__ import annotations

import copy

import pandas as pd
import torch
from torch import nn

from .config import Config

REFERENCE = ("pfi", 1.5)
# the Distiller options each term reads (a variant is a term with values for these)
TERM_OPTIONS = {
    "rm": ("rm_score", "rm_space", "rm_temperature"),
    "pfi": ("pfi_detach",),
    "soft_label": ("soft_label_temperature",),
    "fgfi": ("fgfi_psi",),
}
# The study's reference value of every Distiller option: the paper's choices (and, where it is
# silent, the public reimplementations'). Deliberately not DistillConfig's defaults, which may
# move with the study's decisions while a method's name ("rm", "pfi") must keep its meaning.
DEFAULT_OPTIONS = {"rm_score": "cls", "rm_space": "prob", "rm_temperature": 1.0, "pfi_detach": False,
                   "soft_label_temperature": 1.0, "fgfi_psi": 0.5}  # fmt: skip


def variant_key(term: str, options: dict | None = None) -> str:
    """``rm[rm_score=iou]``: the term and its options that differ from the defaults."""
    options = options or {}
    changed = [f"{k}={options[k]}" for k in TERM_OPTIONS.get(term, ()) if k in options and options[k] != DEFAULT_OPTIONS[k]]
    return f"{term}[{','.join(changed)}]" if changed else term


def _split(key: str) -> tuple[str, dict]:
    """``rm[rm_score=iou]`` -> ("rm", {"rm_score": "iou"}) with typed values."""
    term, _, rest = key.partition("[")
    options = {}
    for pair in filter(None, rest.rstrip("]").split(",")):
        k, v = pair.split("=", 1)
        default = DEFAULT_OPTIONS[k]
        options[k] = (v == "True") if isinstance(default, bool) else type(default)(v)
    return term, options


def gradient_norms(teacher: nn.Module, student: nn.Module, batches: list, keys: list[str]) -> dict[str, float]:
    """Mean over ``batches`` of ``||d term / d theta_student||`` for each variant key.

    The student is restored to its initial state before each variant (training-mode
    forwards update BatchNorm statistics), and adapters are re-made from the same
    seed, so every variant sees the same network.
    """
    from .distill import Distiller

    init = copy.deepcopy(student.state_dict())
    params = [p for p in student.parameters() if p.requires_grad]
    norms = {}
    for key in keys:
        term, options = _split(key)
        student.load_state_dict(init)
        torch.manual_seed(0)  # the same adapter initialisation for every feature term
        distiller = Distiller(teacher, student, {term: 1.0}, **options).train()
        total = 0.0
        for images, targets in batches:
            loss = distiller(images, targets)[term]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            total += float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
        norms[key] = total / len(batches)
    student.load_state_dict(init)
    return norms


def calibrate(teacher_ckpt: str, s_cfg: Config, keys: list[str], batches: int = 8, student_ckpt: str | None = None) -> dict:
    """The rule's weight for every variant key (and PFI's), with the norms behind them.

    ``student_ckpt``: the student whose gradients are matched (the study passes its
    baseline run, trained to its budget); None: a fresh student of ``s_cfg``.
    Returns ``{"rule", "reference", "batches", "seed", "student", "grad_norms", "weights"}``,
    as written to ``calibration.json``.
    """
    from .data.loader import train_loader
    from .run import build_datasets, build_model, load_model, seed_everything

    teacher, _ = load_model(teacher_ckpt)
    seed_everything(s_cfg.seed)
    train_set, _ = build_datasets(s_cfg, progress=False)
    student = load_model(student_ckpt)[0] if student_ckpt else build_model(s_cfg)
    data = list(train_loader(train_set, s_cfg.train.batch_size, s_cfg.seed, 0, batches))
    ref_term, ref_weight = REFERENCE
    all_keys = list(dict.fromkeys([ref_term, *keys]))
    norms = gradient_norms(teacher, student, data, all_keys)
    weights = {k: ref_weight * norms[ref_term] / norms[k] if norms[k] > 0 else 0.0 for k in all_keys}
    weights[ref_term] = ref_weight  # exactly (x * n / n need not round back to x)
    where = f"the trained student {student_ckpt}" if student_ckpt else "a fresh student"
    return {
        "rule": f"equal gradient norm on the student's parameters as 1.5 PFI, mean over {batches} training "
        f"batches, at {where} (rmkd.weighting)",
        "reference": {ref_term: ref_weight},
        "batches": batches,
        "seed": s_cfg.seed,
        "student": student_ckpt or "fresh",
        "grad_norms": norms,
        "weights": weights,
    }


def term_report(distiller: nn.Module, images: list, targets: list) -> pd.DataFrame:
    """One Distiller forward on a batch, term by term: what each loss is and how hard it pulls.

    One row per loss the Distiller returns (the student's detection losses, then each KD
    term): ``weight`` (1 for detection losses), ``value`` (as returned, weight included),
    ``grad_student`` and ``grad_adapters``: the norms of that loss's gradient on the
    student's parameters and on the Distiller's 1x1 adapters (only feature terms reach these).
    The models' parameters are not changed (no optimiser step; gradients are not accumulated).
    """
    losses = distiller(images, targets)
    groups = {
        "grad_student": [p for p in distiller.student.parameters() if p.requires_grad],
        "grad_adapters": [p for p in distiller.adapters.parameters() if p.requires_grad],
    }
    rows = []
    for name, loss in losses.items():
        row = {"loss": name, "weight": distiller.weights.get(name, 1.0), "value": float(loss.detach())}
        for column, params in groups.items():
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) if params else []
            row[column] = float(sum((g.double() ** 2).sum() for g in grads if g is not None)) ** 0.5
        rows.append(row)
    return pd.DataFrame(rows).set_index("loss")
