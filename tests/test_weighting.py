"""rmkd.weighting and the study's methods: one weighting rule for every method."""

import copy

import pytest
import torch

from rmkd.config import Config
from rmkd.distill import TERMS, Distiller
from rmkd.models import build_detector
from rmkd.reproduce import METHODS, RULE, method_config, method_variants, run_label
from rmkd.weighting import REFERENCE, gradient_norms, variant_key

K = 3
KW = dict(anchor_sizes=(12, 24, 48, 96, 160), scales_per_octave=2, aspect_ratios=(1.0, 1.5), image_size=64, min_level=2)


def _all_keys():
    return sorted({k for m in METHODS for k in method_variants(m).values()})


def test_every_method_gets_its_variants_rule_weight_and_says_so():
    keys = _all_keys()
    weights = {k: 0.1 + i for i, k in enumerate(keys)}  # distinct, so a wrong key shows
    assert "rm[rm_score=iou]" in keys and "rm[rm_temperature=0.1]" in keys and "pfi[pfi_detach=True]" in keys
    for method, spec in METHODS.items():
        cfg = method_config(Config(), method, 3, "t.pt", weights)
        assert cfg.seed == 3
        if spec is None:
            assert cfg.distill == Config().distill
            continue
        for term in TERMS:
            value = spec.get(term, 0.0)
            expected = weights[variant_key(term, spec)] if value == RULE else value
            assert getattr(cfg.distill, term) == pytest.approx(expected), (method, term)
        label = run_label(cfg)
        for term, w in cfg.distill.weights().items():
            assert f"{term}={w:.4g}" in label
        if "rm" in spec:
            assert f"rm_score={cfg.distill.rm_score}" in label and f"rm_temperature={cfg.distill.rm_temperature}" in label
        if "pfi" in spec:
            assert f"pfi_detach={cfg.distill.pfi_detach}" in label
    assert method_config(Config(), "rm_paper", 0, "t", weights).distill.rm == 4.0
    assert method_config(Config(), "rm_t0.1", 0, "t", weights).distill.rm_temperature == 0.1


def _pair():
    torch.manual_seed(0)
    teacher = build_detector("retinanet", "resnet18", K, fpn_channels=32, head_convs=2, **KW)
    student = build_detector("retinanet", "resnet18", K, fpn_channels=16, head_convs=1, **KW)
    # a teacher unlike the student's init, so every KD term has a gradient
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return teacher, student


def _batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
        targets = [{"boxes": torch.tensor([[6.0, 8.0, 30.0, 40.0], [34.0, 30.0, 58.0, 60.0]]), "labels": torch.tensor([1, 3])},
                   {"boxes": torch.tensor([[10.0, 10.0, 40.0, 36.0]]), "labels": torch.tensor([2])}]  # fmt: skip
        out.append((images, targets))
    return out


def test_rule_weights_give_every_method_pfis_gradient_norm():
    """Through the whole chain (variant keys -> config -> Distiller.from_config), each rule-weighted
    term pulls on the student's parameters exactly as hard as 1.5 PFI on the calibration batches."""
    teacher, student = _pair()
    batches = _batches()
    keys = _all_keys()
    norms = gradient_norms(teacher, student, batches, keys)
    ref = REFERENCE[1] * norms["pfi"]
    weights = {k: ref / norms[k] for k in keys}
    assert weights["pfi"] == pytest.approx(1.5)
    init = copy.deepcopy(student.state_dict())
    params = [p for p in student.parameters()]
    for method, spec in METHODS.items():
        if spec is None:
            continue
        cfg = method_config(Config(), method, 0, "t.pt", weights)
        for term, value in spec.items():
            if value != RULE:
                continue
            student.load_state_dict(init)
            torch.manual_seed(0)
            one = copy.deepcopy(cfg.distill)
            for other in TERMS:
                setattr(one, other, getattr(cfg.distill, other) if other == term else 0.0)
            kd = Distiller.from_config(teacher, student, one).train()
            total = 0.0
            for images, targets in batches:
                grads = torch.autograd.grad(kd(images, targets)[term], params, allow_unused=True)
                total += float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
            # float32 rounding only: scaling the loss by the weight changes the backward's rounding, and by
            # how much depends on the CPU (1.7e-6 relative seen on an AMD EPYC, under 1e-6 on an Intel Xeon);
            # a wrong weight (another variant's, a sum for a mean) is off by percents or more
            assert total / len(batches) == pytest.approx(ref, rel=1e-5), (method, term)
    # the variants really differ: options change the gradient, so one weight per term would not do
    assert norms["rm"] != pytest.approx(norms["rm[rm_temperature=0.1]"], rel=1e-3)


def test_rm_cls_iou_is_the_mean_of_its_two_terms():
    teacher, student = _pair()
    images, targets = _batches()[0]
    terms = {}
    for score in ("cls", "iou", "cls+iou"):
        torch.manual_seed(0)
        terms[score] = Distiller(teacher, student, {"rm": 1.0}, rm_score=score).eval()(images, targets)["rm"]
    assert terms["cls"] > 0 and terms["iou"] > 0
    assert terms["cls+iou"].item() == pytest.approx((terms["cls"] + terms["iou"]).item() / 2, rel=1e-6)


def test_every_distiller_option_has_the_studys_reference_value():
    from rmkd.distill import OPTIONS
    from rmkd.weighting import DEFAULT_OPTIONS

    assert set(DEFAULT_OPTIONS) == set(OPTIONS)


def test_term_report_matches_autograd_per_term():
    """Each row's gradient norms equal a separate backward of that loss alone; RM never reaches the
    adapters, PFI does; nothing in the student changes."""
    from rmkd.distill import Distiller
    from rmkd.weighting import term_report

    torch.manual_seed(0)
    teacher, student = _pair()
    kd = Distiller(teacher, student, {"rm": 4.0, "pfi": 1.5}).train()
    images, targets = _batches()[0]
    before = {k: v.clone() for k, v in student.state_dict().items() if "running" not in k and "num_batches" not in k}
    report = term_report(kd, images, targets)
    assert list(report.index) == ["classification", "bbox_regression", "rm", "pfi"]
    assert report.loc["rm", "weight"] == 4.0 and report.loc["classification", "weight"] == 1.0
    for name in report.index:
        torch.manual_seed(0)
        kd.zero_grad()
        kd(images, targets)[name].backward()
        student_norm = float(sum((p.grad.double() ** 2).sum() for p in student.parameters() if p.grad is not None)) ** 0.5
        adapter_norm = float(sum((p.grad.double() ** 2).sum() for p in kd.adapters.parameters() if p.grad is not None)) ** 0.5
        assert report.loc[name, "grad_student"] == pytest.approx(float(student_norm), rel=1e-5)
        assert report.loc[name, "grad_adapters"] == pytest.approx(float(adapter_norm), rel=1e-5, abs=1e-12)
    assert report.loc["rm", "grad_adapters"] == 0.0 and report.loc["pfi", "grad_adapters"] > 0
    after = student.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_calibrate_takes_the_gradients_on_the_student_it_is_given(tmp_path, tiny_overrides):
    """``calibrate(student_ckpt=...)``: the norms are those of that trained student (equal to
    gradient_norms on it, on the same training batches), not a fresh one's; the file says which."""
    from rmkd.data.loader import train_loader
    from rmkd.run import build_datasets, load_model, seed_everything, train
    from rmkd.config import load_config
    from rmkd.weighting import calibrate

    sets = tiny_overrides + ["train.max_steps=3", "train.lr=0.01", "data.hflip=0.0"]  # no flips: the same batches here
    cfg = load_config(None, sets)
    train(cfg, str(tmp_path / "teacher"), progress=False)
    train(load_config(None, sets + ["seed=1"]), str(tmp_path / "student"), progress=False)
    teacher_ckpt, student_ckpt = str(tmp_path / "teacher" / "last.pt"), str(tmp_path / "student" / "last.pt")
    keys = ["rm", "fi_full"]
    trained = calibrate(teacher_ckpt, cfg, keys, batches=2, student_ckpt=student_ckpt)
    fresh = calibrate(teacher_ckpt, cfg, keys, batches=2)
    seed_everything(cfg.seed)
    train_set, _ = build_datasets(cfg, progress=False)
    data = list(train_loader(train_set, cfg.train.batch_size, cfg.seed, 0, 2))
    expected = gradient_norms(load_model(teacher_ckpt)[0], load_model(student_ckpt)[0], data, ["pfi", *keys])
    assert trained["grad_norms"] == pytest.approx(expected, rel=1e-9)
    assert trained["grad_norms"]["rm"] != pytest.approx(fresh["grad_norms"]["rm"], rel=1e-3)
    assert trained["student"] == student_ckpt and fresh["student"] == "fresh" and "trained student" in trained["rule"]
    assert trained["weights"]["pfi"] == 1.5
