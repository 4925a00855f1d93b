"""The Distiller: student + adapters + a frozen teacher, returning named losses.

``Distiller(teacher, student, weights={"rm": 4.0, "pfi": 1.5})`` runs one
teacher forward (no grad) and one student dense forward per batch and returns
the student's detection losses plus each weighted KD term, so every term is
logged on its own. Term names are the study's method names:

=============  =========================================================
``rm``         Rank Mimicking (``rm_score``: cls, iou or cls+iou, the mean of both KLs)
``pfi``        Prediction-guided Feature Imitation
``soft_label`` soft-label KD on every non-ignored anchor's class outputs
``fi_full``    feature imitation over the whole map
``fi_full_level`` ... with PFI's per-level normalisation (mean per level, then over levels)
``fi_positive`` ... at locations with a positive anchor
``fi_negative`` ... at locations whose anchors are all background
``fi_gt``      ... at locations inside GT boxes
``fgfi``       ... at FGFI locations (Wang et al. 2019, ``fgfi_psi``)
=============  =========================================================

The teacher is held outside the module registry: it is not in ``parameters()``
(the optimiser never sees it), not in ``state_dict()`` (checkpoints hold the
student and adapters only), and stays in eval mode whatever ``train()`` says.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import candidates as cands
from . import losses as L
from .models import dense_forward, detector_family
from .models.build import detector_num_classes

TERMS = ("rm", "pfi", "soft_label", "fi_full", "fi_full_level", "fi_positive", "fi_negative", "fi_gt", "fgfi")
# the Distiller's keyword options, as named in the config's distill section
OPTIONS = ("rm_score", "rm_space", "rm_temperature", "pfi_detach", "soft_label_temperature", "fgfi_psi")
FEATURE_TERMS = ("pfi", "fi_full", "fi_full_level", "fi_positive", "fi_negative", "fi_gt", "fgfi")


class PairingError(ValueError):
    """Teacher and student cannot be distilled anchor for anchor."""


def check_pairing(teacher: nn.Module, student: nn.Module) -> None:
    """Same family, class count and anchor layout; a one-line error naming what differs."""
    t_family, s_family = detector_family(teacher), detector_family(student)
    if t_family != s_family:
        raise PairingError(f"teacher is {t_family} but student is {s_family}: distil within one family")
    t_k, s_k = detector_num_classes(teacher), detector_num_classes(student)
    if t_k != s_k:
        raise PairingError(f"teacher has {t_k} classes but student has {s_k}: build both with the same num_classes")
    ta, sa = teacher.anchor_generator, student.anchor_generator
    if ta.sizes != sa.sizes or ta.aspect_ratios != sa.aspect_ratios:
        raise PairingError(
            f"anchor layouts differ (teacher sizes {ta.sizes}, ratios {ta.aspect_ratios[0]}; "
            f"student sizes {sa.sizes}, ratios {sa.aspect_ratios[0]}): use the same model.anchor_sizes, "
            "scales_per_octave and aspect_ratios"
        )
    t_low, s_low = (getattr(m, "rmkd_min_level", 3) for m in (teacher, student))  # torchvision's own start at P3
    if t_low != s_low:
        raise PairingError(
            f"FPN levels differ (teacher P{t_low}-P{t_low + 4}, student P{s_low}-P{s_low + 4}): "
            "use the same model.min_level, so the same anchors sit on the same strides"
        )
    # The evaluation size (min_size[-1]); training sizes may differ since the teacher is fed the student's input.
    tt, st = teacher.transform, student.transform
    if (tt.min_size[-1], tt.max_size) != (st.min_size[-1], st.max_size):
        raise PairingError(
            f"input sizes differ (teacher {tt.min_size[-1]}/{tt.max_size}, student {st.min_size[-1]}/{st.max_size}): "
            "use the same model.image_size"
        )


class Distiller(nn.Module):
    """Distil ``teacher`` into ``student`` with any weighted combination of KD terms.

    Args:
        teacher, student: torchvision RetinaNet/FCOS with the same anchor layout.
        weights: ``{term: weight}``, terms in :data:`TERMS`; missing terms are off.
        rm_score: ``"cls"``, ``"iou"`` or ``"cls+iou"`` (the mean of the two KLs, so the
            term keeps the scale of one).
        rm_space: ``"prob"`` (sigmoid probabilities, as the paper states) or ``"logit"``.
        rm_temperature: T of the rank softmax.
        pfi_detach: stop the gradient through P_dif.
        soft_label_temperature: T of soft-label KD.
        fgfi_psi: FGFI's psi.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        weights: dict[str, float] | None = None,
        *,
        rm_score: str = "cls",
        rm_space: str = "prob",
        rm_temperature: float = 1.0,
        pfi_detach: bool = False,
        soft_label_temperature: float = 1.0,
        fgfi_psi: float = 0.5,
    ):
        super().__init__()
        weights = {"rm": 4.0, "pfi": 1.5} if weights is None else dict(weights)
        unknown = set(weights) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown distillation terms {sorted(unknown)}: choose from {', '.join(TERMS)}")
        if rm_score not in cands.SCORES:
            raise ValueError(f"unknown rm_score {rm_score!r}: choose one of {cands.SCORES}")
        if rm_space not in cands.SPACES:
            raise ValueError(f"unknown rm_space {rm_space!r}: choose one of {cands.SPACES}")
        check_pairing(teacher, student)
        self.student = student
        self._teacher = [teacher.eval().requires_grad_(False)]  # a list hides it from nn.Module's registry
        self.teacher_cache = None  # a rmkd.teacher_cache.TeacherCache, set by the caller when valid
        self.weights = {k: float(v) for k, v in weights.items() if v}
        self.rm_score, self.rm_space, self.rm_temperature = rm_score, rm_space, rm_temperature
        self.pfi_detach, self.soft_label_temperature, self.fgfi_psi = pfi_detach, soft_label_temperature, fgfi_psi
        t_ch, s_ch = teacher.backbone.out_channels, student.backbone.out_channels
        levels = len(teacher.anchor_generator.sizes)
        # One 1x1 conv per level maps student features to the teacher's width (identity if equal).
        make = (lambda: nn.Conv2d(s_ch, t_ch, kernel_size=1)) if t_ch != s_ch else nn.Identity
        self.adapters = nn.ModuleList(make() for _ in range(levels))

    @classmethod
    def from_config(cls, teacher: nn.Module, student: nn.Module, d) -> "Distiller":
        """From a ``distill`` config section (:class:`rmkd.config.DistillConfig`): its weights and options."""
        return cls(teacher, student, d.weights(), **{k: getattr(d, k) for k in OPTIONS})

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.teacher._apply(fn, recurse)  # .to(device) / .half() reach the teacher too
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # BN statistics and dropout of the teacher never change
        return self

    def forward(self, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        """Detection losses of the student plus each weighted KD term (scalars)."""
        # One resize/normalise/batch, the student's (in training it may draw a random
        # size: model.train_sizes); the teacher sees the very same input tensor.
        image_list, targets_t = self.student.transform(images, targets)
        with torch.no_grad():
            if self.teacher_cache is not None:  # the same outputs, computed once per image (rmkd.teacher_cache)
                t = self.teacher_cache.dense(self.teacher, [int(tg["image_id"]) for tg in targets], image_list)
            else:
                t = dense_forward(self.teacher, images, transformed=(image_list, None))
        s = dense_forward(self.student, images, targets, transformed=(image_list, targets_t))
        losses = dict(s.losses)
        if t.level_sizes != s.level_sizes or t.num_anchors != s.num_anchors:
            raise PairingError(f"teacher levels {t.level_sizes} x {t.num_anchors} anchors differ from the student's")
        if not self.weights:
            return losses
        s_feats = None
        if any(term in self.weights for term in FEATURE_TERMS):
            s_feats = [adapt(f) for adapt, f in zip(self.adapters, s.features)]
        for term, weight in self.weights.items():
            losses[term] = weight * self._term(term, t, s, s_feats)
        return losses

    def _term(self, term: str, t, s, s_feats) -> Tensor:
        if term == "rm":
            c = cands.positive_candidates(s)
            total = s.features[0].new_zeros(())
            scores = self.rm_score.split("+")
            for score in scores:
                t_scores = cands.candidate_scores(self.teacher, t, c, score, self.rm_space)
                s_scores = cands.candidate_scores(self.student, s, c, score, self.rm_space)
                total = total + L.rank_mimicking(t_scores, s_scores, c.instance, self.rm_temperature)
            return total / len(scores)
        if term == "pfi":
            return L.prediction_guided_feature_imitation(t.features, s_feats, t.cls_logits, s.cls_logits, self.pfi_detach)
        if term == "soft_label":
            keep = torch.stack(s.assignment) != -2  # [B, N]: drop the detector's ignored anchors
            return L.soft_label_kd(t.cls_flat, s.cls_flat, self.soft_label_temperature, keep)
        if term == "fi_full":
            return L.feature_imitation(t.features, s_feats)
        if term == "fi_full_level":
            return L.feature_imitation(t.features, s_feats, per_level=True)
        masks = {
            "fi_positive": cands.positive_mask,
            "fi_negative": cands.negative_mask,
            "fi_gt": cands.gt_mask,
            "fgfi": lambda d: cands.fgfi_mask(d, self.fgfi_psi),
        }[term](s)
        return L.feature_imitation(t.features, s_feats, masks)
