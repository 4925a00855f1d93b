"""Rank Mimicking up close: the tables and figures of notebook 02, computed (and tested) here.

The method is described in ``docs/METHOD.md``, section 2; the loss itself is
:func:`rmkd.losses.rank_mimicking`. This module only arranges what a reader of the
lesson looks at:

- toy instances: :func:`toy_students`, :func:`toy_table`, :func:`compare_rows`,
  :func:`temperature_sweep`, :func:`plot_temperature`;
- one batch of real candidates: :func:`batch_candidates` (one forward per model),
  :func:`rm_table` (RM, soft-label KD and rank agreement per model),
  :func:`instance_view` and :func:`plot_instance_ranks` (one instance's candidates);
- the val split: :func:`cached_collect` (``rmkd.analysis.collect`` once per
  teacher/student/data, kept under ``data/cache/collect``) and :func:`rank_summary`;
- the closing section: :func:`paper_vs_measured` and :func:`markdown_table`.

Shapes: ``[P]`` one entry per candidate of a batch (flat, as :mod:`rmkd.candidates`),
``[P, K]`` the K class logits of each candidate anchor, ``[M]`` one per distinct
instance, ``[n]`` the candidates of a single instance. Figures are built with
``Figure(...)``, never pyplot (see :mod:`rmkd.plots`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from .analysis.collect import Collection, summarize
from .analysis.rank import rank_agreement
from .candidates import Candidates, positive_candidates
from .losses import rank_mimicking, soft_label_kd
from .models import dense_forward, level_names

# The toy instance of the lesson: one teacher's logits of five candidates, best first.
TOY_TEACHER = (3.0, 2.8, 0.0, -1.0, -2.0)
# The rank-agreement rows of rmkd.analysis.summarize that the lesson compares across students.
RANK_KEYS = ("instances", "kendall_tau", "spearman_rho", "top1_agree", "t_top1_iou", "s_top1_iou", "s_best_iou",
             "kept_anchor_differs")
RM_UNIT = "nats"  # KL divergences here use the natural log


def _t(label: float) -> str:
    return f"T={label:g}"


# ----------------------------------------------------------------------------- toy instances


def toy_students(t: Tensor) -> dict[str, Tensor]:
    """Five students of one instance whose teacher scores are ``t`` ``[n]`` (n >= 2, distinct).

    ``copy`` (``t`` itself), ``shift -1`` (every score lowered by 1), ``scale x0.5``
    (every score halved), ``swap top two`` (the values of the teacher's two best
    candidates exchanged) and ``reversed`` (the teacher's sorted values handed out in
    the opposite order: the teacher's best candidate gets the lowest score). Each
    ``[n]``, same dtype as ``t``.
    """
    if t.ndim != 1 or t.numel() < 2:
        raise ValueError(f"toy_students needs one instance's [n] scores with n >= 2, got shape {tuple(t.shape)}")
    order = torch.argsort(t, descending=True, stable=True)  # [n] teacher's best first
    swap = t.clone()
    swap[order[:2]] = t[order[:2].flip(0)]
    reversed_ = torch.empty_like(t)
    reversed_[order] = t[order].flip(0)
    return {"copy": t.clone(), "shift -1": t - 1.0, "scale x0.5": t * 0.5, "swap top two": swap, "reversed": reversed_}


def toy_table(t: Tensor, students: Mapping[str, Tensor], temperature: float = 1.0) -> pd.DataFrame:
    """What each loss charges each student of one instance.

    Args:
        t: ``[n]`` teacher logits of the instance's candidates.
        students: name -> ``[n]`` student logits of the same candidates.
        temperature: T of both RM columns.

    Returns:
        One row per student (index ``student``), columns ``logits`` (the student's
        scores, rounded, as a list), ``kendall_tau`` (tau-b against the teacher),
        ``same top-1`` (bool), ``RM logits T=..`` (RM with the logits as scores),
        ``RM probs T=..`` (RM with the sigmoid probabilities as scores, the paper's
        space) and ``soft-label KD`` (each candidate an anchor with one class,
        ``rmkd.losses.soft_label_kd``). Losses in nats, computed in float64.
    """
    t = t.to(torch.float64)
    ids = torch.zeros(len(t), dtype=torch.long)
    rows = []
    for name, s in students.items():
        s = s.to(torch.float64)
        agree = rank_agreement(t, s, ids).iloc[0]
        rows.append({
            "student": name,
            "logits": np.round(s.numpy(), 2).tolist(),
            "kendall_tau": float(agree["kendall_tau"]),
            "same top-1": bool(agree["top1_agree"]),
            f"RM logits {_t(temperature)}": float(rank_mimicking(t, s, ids, temperature)),
            f"RM probs {_t(temperature)}": float(rank_mimicking(t.sigmoid(), s.sigmoid(), ids, temperature)),
            "soft-label KD": float(soft_label_kd(t[:, None], s[:, None])),  # [n anchors, K = 1]
        })
    return pd.DataFrame(rows).set_index("student")


def compare_rows(table: pd.DataFrame, a: str, b: str, columns: Sequence[str]) -> pd.DataFrame:
    """Row ``a`` against row ``b`` of ``table`` in each of ``columns``.

    Returns one row per column (index ``loss``) with the two values, ``a / b``
    (``inf`` when only b is 0, NaN when both are) and ``costlier``: ``a``, ``b`` or
    ``"equal"``. Written so that a lesson's sentence about which student a loss
    charges more is printed from the table, not typed next to it.
    """
    rows = []
    for col in columns:
        va, vb = float(table.loc[a, col]), float(table.loc[b, col])
        if vb != 0:
            ratio = va / vb
        else:
            ratio = math.inf if va > 0 else (-math.inf if va < 0 else math.nan)
        costlier = a if va > vb else (b if vb > va else "equal")
        rows.append({"loss": col, a: va, b: vb, f"{a} / {b}": ratio, "costlier": costlier})
    return pd.DataFrame(rows).set_index("loss")


def temperature_sweep(t: Tensor, s: Tensor, temperatures: Sequence[float]) -> pd.DataFrame:
    """RM of one instance (``t``, ``s``: ``[n]`` logits) at each temperature, in both score spaces.

    Returns index ``T`` and columns ``RM probs`` (scores = sigmoid probabilities)
    and ``RM logits`` (scores = logits), in nats, computed in float64.
    """
    t, s = t.to(torch.float64), s.to(torch.float64)
    ids = torch.zeros(len(t), dtype=torch.long)
    return pd.DataFrame({
        "T": [float(x) for x in temperatures],
        "RM probs": [float(rank_mimicking(t.sigmoid(), s.sigmoid(), ids, x)) for x in temperatures],
        "RM logits": [float(rank_mimicking(t, s, ids, x)) for x in temperatures],
    }).set_index("T")


def rank_distribution(scores: Tensor, temperature: float = 1.0) -> Tensor:
    """``softmax(scores / T)`` of one instance's ``[n]`` scores: RM's rank distribution."""
    return torch.softmax(scores.to(torch.float64) / temperature, dim=0)


TOY_SETTINGS = (("probs", 1.0), ("probs", 0.1), ("logits", 1.0))


def plot_temperature(t: Tensor, sweep: pd.DataFrame, student: str = "swap top two",
                     settings: Sequence[tuple[str, float]] = TOY_SETTINGS) -> Figure:
    """Two panels: the teacher's rank distribution per (space, T) setting; RM vs T.

    Args:
        t: ``[n]`` teacher logits of one instance (drawn in this order).
        sweep: :func:`temperature_sweep` of a student of that instance.
        student: the student's name, for the right panel's axis label.
        settings: ``(space, T)`` pairs of the left panel, space ``"probs"`` or ``"logits"``.

    Left: one bar group per candidate, one bar per setting, with the uniform
    distribution dotted. Right: RM against T on log-log axes, one line per column
    of ``sweep``.
    """
    t = t.to(torch.float64)
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    n = len(t)
    x = np.arange(n)
    width = 0.8 / len(settings)
    for i, (space, temp) in enumerate(settings):
        if space not in ("probs", "logits"):
            raise ValueError(f"space must be 'probs' or 'logits', got {space!r}")
        scores = t.sigmoid() if space == "probs" else t
        r = rank_distribution(scores, temp).numpy()
        ax1.bar(x + (i - (len(settings) - 1) / 2) * width, r, width=width, label=f"{space}, {_t(temp)}")
    ax1.axhline(1 / n, color="0.4", ls=":", lw=1.0, label=f"uniform (1/{n})")
    ax1.set_xticks(x, [f"cand {i}\n({float(v):.1f})" for i, v in enumerate(t)], fontsize="small")
    ax1.set_xlabel("candidate (teacher's logit in brackets)")
    ax1.set_ylabel("teacher's rank probability r_i\n(unitless, sums to 1)")
    ax1.set_title("the teacher's rank distribution", fontsize="medium")
    ax1.legend(fontsize="small")
    for column in sweep.columns:
        ax2.plot(sweep.index, sweep[column], marker="o", label=column)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("temperature T (unitless, log scale)")
    ax2.set_ylabel(f"RM of the '{student}' student\n(KL, {RM_UNIT}, log scale)")
    ax2.set_title("RM against the temperature", fontsize="medium")
    ax2.legend(fontsize="small")
    return fig


# ----------------------------------------------------------------------------- one batch of real candidates


@dataclass
class CandidateScores:
    """One model's scores of a batch's candidates.

    prob ``[P]``: sigmoid probability of the GT class; logit ``[P]``: its logit;
    cls ``[P, K]``: all K class logits of the candidate anchor.
    """

    prob: Tensor
    logit: Tensor
    cls: Tensor


@dataclass
class BatchCandidates:
    """The candidates of one batch and every model's scores of them.

    cand: :class:`rmkd.candidates.Candidates` (``[P]`` each) from the first student's
    assignment. scores: model name -> :class:`CandidateScores`, the teacher (key
    ``"teacher"``) first. levels: ``[P]`` each candidate's FPN level, named by its
    stride (``"P3"``). same_assignment: every student's assignment equals the first's.
    image_ids: the COCO id of each image of the batch.
    """

    cand: Candidates
    scores: dict[str, CandidateScores]
    levels: np.ndarray
    level_order: list[str]
    same_assignment: bool
    image_ids: list[int]
    gt_boxes: int

    def describe(self) -> str:
        """One paragraph: images, GT boxes, instances, P, candidates per instance and per level."""
        _, inverse = torch.unique(self.cand.instance, return_inverse=True)
        per = torch.bincount(inverse) if len(inverse) else torch.zeros(0, dtype=torch.long)
        sizes = (f"per instance: min {int(per.min())}, median {float(per.float().median()):g}, max {int(per.max())}"
                 if len(per) else "none")
        counts = pd.Series(self.levels).value_counts()
        by_level = ", ".join(f"{name} {int(counts.get(name, 0))}" for name in self.level_order)
        return (f"{len(self.image_ids)} images, {self.gt_boxes} GT boxes, {len(per)} instances with candidates, "
                f"P = {len(self.cand.anchor)} candidates ({sizes}); per FPN level: {by_level}; "
                f"same assignment for every student: {self.same_assignment}")


def _scores(dense, cand: Candidates) -> CandidateScores:
    cls = dense.cls_flat[cand.batch, cand.anchor]  # [P, K]
    logit = cls.gather(1, (cand.label - 1)[:, None])[:, 0] if len(cand.label) else cls.new_zeros(0)  # [P]
    return CandidateScores(prob=logit.sigmoid(), logit=logit, cls=cls)


def anchor_levels(anchor: Tensor, anchors_per_level: Sequence[int], names: Sequence[str]) -> np.ndarray:
    """``[P]`` level name of each flat anchor index, from the per-level anchor counts ``[L]``."""
    if len(names) < len(anchors_per_level):
        raise ValueError(f"{len(anchors_per_level)} levels but {len(names)} names")
    index = np.searchsorted(np.cumsum(anchors_per_level), np.asarray(anchor), side="right")
    if len(index) and index.max() >= len(anchors_per_level):
        raise ValueError("an anchor index lies beyond the last level")
    return np.asarray(names, dtype=object)[index]


@torch.no_grad()
def batch_candidates(teacher: nn.Module, students: Mapping[str, nn.Module], images: list[Tensor],
                     targets: list[dict]) -> BatchCandidates:
    """One forward per model over one batch; the candidates and every model's scores of them.

    The students' forwards carry the targets, so they record the detector's own
    assignment; the candidates (:func:`rmkd.candidates.positive_candidates`) come from
    the first student's. Teacher and students must share the anchor layout (as
    ``rmkd.distill.check_pairing`` requires), so the same anchors are named for all.
    Models are run as they are (put them in eval mode first).
    """
    if not students:
        raise ValueError("batch_candidates needs at least one student")
    t_dense = dense_forward(teacher, images)
    s_dense = {name: dense_forward(model, images, targets, losses=False) for name, model in students.items()}
    first = next(iter(s_dense.values()))
    reference = torch.stack(first.assignment)  # [B, N]
    same = all(torch.equal(torch.stack(d.assignment), reference) for d in s_dense.values())
    cand = positive_candidates(first)
    names = level_names(teacher)
    scores = {"teacher": _scores(t_dense, cand)} | {name: _scores(d, cand) for name, d in s_dense.items()}
    return BatchCandidates(cand=cand, scores=scores, levels=anchor_levels(cand.anchor, first.anchors_per_level, names),
                           level_order=list(names[: len(first.anchors_per_level)]), same_assignment=same,
                           image_ids=[int(t.get("image_id", i)) for i, t in enumerate(targets)],
                           gt_boxes=sum(len(t["labels"]) for t in targets))


def rm_table(scores: Mapping[str, CandidateScores], instance_ids: Tensor, reference: str = "teacher",
             temperatures: Sequence[float] = (1.0, 0.1)) -> pd.DataFrame:
    """RM, soft-label KD and rank agreement of every model against ``reference``.

    Args:
        scores: model name -> :class:`CandidateScores` of the same ``[P]`` candidates
            (the reference among them: its row is the sanity check, all 0 and tau 1).
        instance_ids: ``[P]`` each candidate's instance.
        temperatures: T of the ``RM probs`` columns (the paper's space).

    Returns:
        One row per model (index ``model``), columns ``RM probs T=..`` per temperature,
        ``RM logits T=1``, ``soft-label KD (candidate anchors)`` (mean over the P
        anchors of the Bernoulli KL summed over K classes), ``mean Kendall tau`` (of
        the probabilities, over instances with a defined tau) and ``top-1 agreement``
        (share of instances with >= 2 candidates whose best candidate is the
        reference's). Losses in nats.
    """
    t = scores[reference]
    multi = torch.bincount(torch.unique(instance_ids, return_inverse=True)[1]) >= 2  # [M]
    rows = {}
    for name, s in scores.items():
        row = {f"RM probs {_t(x)}": float(rank_mimicking(t.prob, s.prob, instance_ids, x)) for x in temperatures}
        row["RM logits T=1"] = float(rank_mimicking(t.logit, s.logit, instance_ids))
        row["soft-label KD (candidate anchors)"] = float(soft_label_kd(t.cls, s.cls))
        agree = rank_agreement(t.prob, s.prob, instance_ids)  # sorted by instance id, as torch.unique
        row["mean Kendall tau"] = float(agree["kendall_tau"].mean())
        row["top-1 agreement"] = float(agree["top1_agree"].to_numpy()[multi.numpy()].mean()) if multi.any() else math.nan
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def instance_view(batch: BatchCandidates, instance: int | None = None) -> pd.DataFrame:
    """One instance's candidates, every model's score and rank of each.

    Args:
        batch: :func:`batch_candidates`.
        instance: an instance id of ``batch.cand.instance``; default: the instance
            with the most candidates (the first such id).

    Returns:
        One row per candidate (index ``anchor``, the flat anchor index), sorted by
        the teacher's rank: ``level`` (FPN level by stride), then per model
        ``<model> prob``, ``<model> logit`` and ``<model> rank`` (1 = the model's
        best; ranked by the logit, ties to the earlier candidate). ``attrs`` holds
        ``instance``, ``image`` (batch index), ``image_id`` (COCO id), ``gt`` (GT index
        in its image) and ``label``.
    """
    ids = batch.cand.instance
    if instance is None:
        uniq, inverse = torch.unique(ids, return_inverse=True)
        instance = int(uniq[int(torch.bincount(inverse).argmax())])
    mask = (ids == instance).numpy()
    if not mask.any():
        raise ValueError(f"no candidate of instance {instance}")
    view = pd.DataFrame({"anchor": batch.cand.anchor[mask].numpy(), "level": batch.levels[mask]})
    for name, s in batch.scores.items():
        logit = s.logit[mask].detach().to(torch.float64).numpy()
        view[f"{name} prob"] = s.prob[mask].detach().to(torch.float64).numpy()
        view[f"{name} logit"] = logit
        rank = np.empty(len(logit), dtype=np.int64)
        rank[np.argsort(-logit, kind="stable")] = np.arange(1, len(logit) + 1)
        view[f"{name} rank"] = rank
    first = next(iter(batch.scores))
    view = view.sort_values(f"{first} rank").set_index("anchor")
    pos = int(np.flatnonzero(mask)[0])
    image = int(batch.cand.batch[pos])
    view.attrs.update(instance=int(instance), image=image, image_id=batch.image_ids[image], gt=int(batch.cand.gt[pos]),
                      label=int(batch.cand.label[pos]))
    return view


def plot_instance_ranks(view: pd.DataFrame, temperature: float = 1.0) -> Figure:
    """One instance's rank distributions, from probabilities (left) and from logits (right).

    ``view``: :func:`instance_view`. Each panel has one bar group per candidate (in
    the teacher's order, labelled by level and anchor) and one bar per model:
    ``softmax(score / T)`` over the instance's candidates. The dotted line is the
    uniform distribution.
    """
    models = [c[: -len(" rank")] for c in view.columns if c.endswith(" rank")]
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=False)
    n = len(view)
    x = np.arange(n)
    width = 0.8 / max(len(models), 1)
    for ax, space in zip(axes, ("prob", "logit")):
        for i, model in enumerate(models):
            r = rank_distribution(torch.tensor(view[f"{model} {space}"].to_numpy(np.float64)), temperature).numpy()
            ax.bar(x + (i - (len(models) - 1) / 2) * width, r, width=width, label=model)
        ax.axhline(1 / n, color="0.4", ls=":", lw=1.0, label=f"uniform (1/{n})")
        ax.set_xticks(x, [f"{lv} #{a}" for a, lv in zip(view.index, view["level"])], rotation=90, fontsize="small")
        ax.set_xlabel("candidate anchor (FPN level #flat index), teacher's order")
        what = "probabilities" if space == "prob" else "logits"
        ax.set_ylabel("rank probability r_i\n(unitless, sums to 1)")
        ax.set_title(f"rank distribution from the {what}, {_t(temperature)}", fontsize="medium")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small", title="model")
    a = view.attrs
    if a:
        fig.suptitle(f"instance {a.get('instance')}: image id {a.get('image_id')}, GT #{a.get('gt')}, "
                     f"{n} candidates", fontsize="medium")
    return fig


# ----------------------------------------------------------------------------- the val split


# The study's RM-only student, seed 0, where a study may have put it: `rmkd reproduce`'s default
# --out, then the v2 study's two tables (docs/RESULTS.md: one per CPU, never mixed).
RM_ONLY_RUNS = (
    "runs/reproduce/retinanet/rm/seed0/last.pt",
    "runs/study-v2/retinanet/rm/seed0/last.pt",
    "runs/study-v2-amd/retinanet/rm/seed0/last.pt",
)


def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def study_run_problem(checkpoint: str, teacher_ckpt: str) -> str | None:
    """Why a study run (e.g. one of :data:`RM_ONLY_RUNS`) cannot stand beside this teacher's students; None if it can.

    It can when the checkpoint exists, its run finished all its steps
    (``metrics.json`` at ``train.max_steps``) and it was distilled from
    ``teacher_ckpt`` (the same file, or a file with the same bytes).
    """
    from .checkpoint import load_checkpoint
    from .config import load_config
    from .demo import finished_metrics

    if not os.path.isfile(checkpoint):
        return f"no run at {checkpoint}; `rmkd reproduce --methods rm --seeds 0` trains it"
    cfg = load_config(base=load_checkpoint(checkpoint).get("config", {}))
    run_dir = os.path.dirname(checkpoint)
    if finished_metrics(run_dir, cfg.train.max_steps) is None:
        return f"the run in {run_dir} has not finished its {cfg.train.max_steps} steps"
    used = cfg.distill.teacher
    if not used or not os.path.isfile(used):
        return f"its teacher ({used or 'none'}) is not here to compare with {teacher_ckpt}"
    if not (os.path.samefile(used, teacher_ckpt) or _file_digest(used) == _file_digest(teacher_ckpt)):
        return f"it was distilled from {used}, another teacher than {teacher_ckpt}"
    return None


def rm_only_run(teacher_ckpt: str, candidates: Sequence[str] = RM_ONLY_RUNS) -> tuple[str | None, str]:
    """``(checkpoint, "")``: the first of ``candidates`` that can stand beside ``teacher_ckpt``'s
    students (:func:`study_run_problem`), or ``(None, why)`` naming why none can."""
    problems = []
    for path in candidates:
        why = study_run_problem(path, teacher_ckpt)
        if why is None:
            return path, ""
        problems.append(why)
    return None, "; ".join(problems)


def rank_summary(collections: Mapping[str, Collection], reference: str = "baseline",
                 keys: Sequence[str] = RANK_KEYS) -> pd.DataFrame:
    """``rmkd.analysis.summarize`` of each collection, rank rows only, with changes against ``reference``.

    Returns index = ``keys``, one column per collection (in the given order), then
    ``<name> - <reference>`` for every other collection.
    """
    side = pd.DataFrame({name: summarize(c) for name, c in collections.items()}).loc[list(keys)]
    for name in [n for n in collections if n != reference]:
        side[f"{name} - {reference}"] = side[name] - side[reference]
    return side


# ----------------------------------------------------------------------------- the paper says / we measured


PAPER_SAYS = {
    "rank discrepancy": "Teacher and student order an object's candidate boxes differently, so the box kept "
    "after NMS comes from a different anchor (docs/METHOD.md, section 1).",
    "RM improves rank agreement": "Rank Mimicking makes the student order each object's candidates like the teacher.",
    "RM improves AP": "RM alone raises the student's AP over the plainly trained baseline.",
    "RM beats soft-label KD": "Distilling the order (RM) works better than distilling each anchor's class "
    "probabilities (soft-label KD).",
    "rank by cls, not IoU": "Ranking the candidates by the classification score works at least as well as by IoU "
    "or by both.",
    "temperature": "The paper ranks by the classification probability; rmkd keeps its T = 1 as the default "
    "(docs/METHOD.md, section 2). Sharpening (T < 1) is our control, not a claim of the paper.",
}
# claim row of the closing table -> rmkd.claims.CLAIMS entries deciding it
STUDY_CLAIMS = {
    "RM improves AP": ["RM beats the baseline"],
    "RM beats soft-label KD": ["RM beats soft-label KD"],
    "rank by cls, not IoU": ["ranking by cls works at least as well as by IoU",
                             "ranking by cls works at least as well as by cls+IoU"],
    "temperature": ["RM sharpened to T = 0.1 beats RM at T = 1", "RM sharpened to T = 0.25 beats RM at T = 1"],
}


def _fmt(x: float, spec: str) -> str:
    """``format(x, spec)``, or ``n/a`` for NaN (e.g. no GT found by both models)."""
    return "n/a" if x != x else format(x, spec)


def _claim_text(r: pd.Series) -> str:
    """``a - b: +1.77 AP, 95% CI [-1.4, +4.9], 3 seeds`` of one ``paired_claims`` row."""
    if r["n"] < 2:
        return f"{r['a']} - {r['b']}: {r['n']} paired seed(s) in the CSV, nothing to test"
    return (f"{r['a']} - {r['b']}: {r['mean_diff']:+.2f} AP, 95% CI [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}], "
            f"{r['n']} seeds")


def _study_tau(study: pd.DataFrame | None) -> str:
    if study is None or "rank_tau" not in study or study["rank_tau"].isna().all():
        return "not measured (no rank_tau in docs/results/ablation.csv)"
    tau = study.groupby("method")["rank_tau"].mean()
    parts = [f"{m} {tau[m]:.3f}" for m in ("baseline", "rm", "rm+pfi") if m in tau and tau[m] == tau[m]]
    return "study's mean Kendall tau (no paired test): " + ", ".join(parts)


OBSERVATION_ROWS = {"rank discrepancy": "rank discrepancy", "RM improves rank agreement": "RM aligns ranks"}
OBSERVATION_SOURCE = "per-object 95% CI, rmkd.analysis.observations"
STUDY_SOURCE = "docs/results/ablation.md"


def paper_vs_measured(summary: pd.DataFrame, claims: pd.DataFrame, study: pd.DataFrame | None = None,
                      sweep: pd.DataFrame | None = None, reference: str = "baseline",
                      observations: pd.DataFrame | None = None) -> pd.DataFrame:
    """The lesson's closing table: per observation or claim, the paper's word beside our numbers.

    Args:
        summary: :func:`rank_summary` (val split; columns per student and ``<name> -
            <reference>`` changes).
        claims: ``rmkd.claims.paired_claims`` of the study's CSV.
        study: the CSV itself (for its ``rank_tau`` and ``rule`` columns), optional.
        sweep: :func:`temperature_sweep` of the toy "swap top two" student, optional.
        observations: ``rmkd.analysis.observations.observation_verdicts`` of the same
            collections (index ``statement``, columns ``we measured`` and ``verdict``),
            optional: its ``rank discrepancy`` and ``RM aligns ranks`` rows then give the
            first two rows their per-object measurement and verdict.

    Returns one row per observation or claim (index ``claim``): ``the paper says``,
    ``we measured`` (numbers from the arguments) and ``verdict``, each naming where it
    comes from: the study's (``supported``, ``contradicted`` or ``undecided``, as
    ``claims`` says), the per-object one of ``observations``, or why neither decides.
    ``attrs["notes"]``: what the CSV's rows were trained with where it differs from
    their names today.
    """
    verdicts = claims.set_index("claim")
    base = summary[reference]
    rows = {"rank discrepancy": [
        f"{reference} vs teacher, {int(base['instances'])} instances: mean Kendall tau {_fmt(base['kendall_tau'], '.3f')}, "
        f"same top-1 candidate {_fmt(base['top1_agree'], '.0%')}, kept box from another anchor "
        f"{_fmt(base['kept_anchor_differs'], '.0%')}",
        "no verdict: an observation, not a claim of the study"]}
    changes = [c for c in summary.columns if c.endswith(f" - {reference}")]
    rows["RM improves rank agreement"] = [
        "; ".join(f"{c}: Kendall tau {_fmt(summary.loc['kendall_tau', c], '+.3f')}, "
                  f"top-1 {_fmt(summary.loc['top1_agree', c], '+.3f')} (means, one run)" for c in changes)
        or f"no distilled student beside the {reference}",
        "the study: " + _study_tau(study)]
    for key, statement in OBSERVATION_ROWS.items():
        if observations is not None and statement in observations.index:
            obs = observations.loc[statement]
            if key == "rank discrepancy":
                rows[key] = [obs["we measured"], f"{obs['verdict']} ({OBSERVATION_SOURCE})"]
            else:
                rows[key] = [f"{rows[key][0]}; per object: {obs['we measured']}",
                             f"{obs['verdict']} ({OBSERVATION_SOURCE}); {rows[key][1]}"]
    for key, names in STUDY_CLAIMS.items():
        found = [verdicts.loc[n] for n in names if n in verdicts.index]
        measured = "; ".join(_claim_text(r) for r in found)
        if key == "temperature" and sweep is not None and {0.1, 1.0} <= set(sweep.index):
            factor = sweep.loc[0.1, "RM probs"] / sweep.loc[1.0, "RM probs"]
            measured = f"toy 'swap top two', probabilities: RM at T=0.1 is {factor:.0f}x RM at T=1; " + measured
        verdict = "; ".join(f"{r.name}: {r['verdict']}" for r in found)
        rows[key] = [measured or "not in the claims table",
                     f"{verdict} ({STUDY_SOURCE})" if verdict else "not one of rmkd.claims.CLAIMS"]
    frame = pd.DataFrame({
        "the paper says": {k: PAPER_SAYS[k] for k in rows},
        "we measured": {k: v[0] for k, v in rows.items()},
        "verdict": {k: v[1] for k, v in rows.items()},
    }).rename_axis("claim")
    notes = []
    if study is not None and "rule" in study and (study["rule"] == "loss_value_v1").any():
        notes.append("this CSV is the first study (rule loss_value_v1, docs/results/v1/): its `rm` row is RM at the "
                     "paper's weight 4 and its `rm_cls_iou` summed the two KL terms (today cls+iou is their mean).")
    frame.attrs["notes"] = notes
    return frame


def markdown_table(frame: pd.DataFrame) -> str:
    """A frame as a markdown table (index first), then ``attrs["notes"]`` as lines below it."""
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    head = [frame.index.name or "", *frame.columns]
    lines = [line(head), "|" + "---|" * len(head)]
    lines += [line([index, *row]) for index, row in frame.iterrows()]
    lines += ["", *frame.attrs.get("notes", [])]
    return "\n".join(lines).rstrip()
