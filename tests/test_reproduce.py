"""rmkd reproduce: method configs, the tables' arithmetic, and a resumable study on tiny data."""

import math

import pandas as pd
import pytest

from rmkd.config import ConfigError, load_config
from rmkd.distill import TERMS
from rmkd.reproduce import METHODS, ablation_tables, method_config, run_study, summary_frame


def test_method_configs_turn_on_exactly_their_terms():
    s_cfg = load_config(None)
    weights = {t: 0.25 for t in ("soft_label", "fi_full", "fi_positive", "fi_negative", "fi_gt", "fgfi")}
    for method, spec in METHODS.items():
        cfg = method_config(s_cfg, method, 7, "t.pt", weights)
        assert cfg.seed == 7
        if spec is None:
            assert cfg.distill.teacher == "" and method == "baseline"
            continue
        on = {t: w for t, w in cfg.distill.weights().items()}
        expected = {k: (0.25 if v == "calibrated" else v) for k, v in spec.items() if k in TERMS}
        assert on == expected, method
        assert cfg.distill.teacher == "t.pt"
    assert method_config(s_cfg, "rm_iou", 0, "t", weights).distill.rm_score == "iou"
    assert method_config(s_cfg, "rm_cls_iou", 0, "t", weights).distill.rm_score == "cls+iou"
    assert method_config(s_cfg, "pfi_detach", 0, "t", weights).distill.pfi_detach is True
    assert method_config(s_cfg, "pfi", 0, "t", weights).distill.pfi_detach is False
    assert s_cfg.distill.rm == 4.0 and s_cfg.seed == 0  # the base config is not modified
    with pytest.raises(ConfigError, match="unknown method"):
        method_config(s_cfg, "rmx", 0, "t", weights)


def test_summary_means_stds_and_gap_closed():
    rows = [("teacher", 0, 50.0)] + [("baseline", s, ap) for s, ap in enumerate((20.0, 22.0, 24.0))]
    rows += [("pfi", s, ap) for s, ap in enumerate((30.0, 31.0, 35.0))]
    frame = pd.DataFrame(
        [{"detector": "retinanet", "method": m, "seed": s, "AP": ap, "AP50": ap + 10, "AP75": ap, "APs": ap, "APm": ap, "APl": math.nan, "weights": ""} for m, s, ap in rows]
    )
    summary = summary_frame(frame).set_index("method")
    assert summary.loc["pfi", "AP_mean"] == pytest.approx(32.0)
    assert summary.loc["pfi", "AP_std"] == pytest.approx(pd.Series([30.0, 31.0, 35.0]).std())
    assert summary.loc["pfi", "gap_closed"] == pytest.approx((32.0 - 22.0) / (50.0 - 22.0))
    assert summary.loc["baseline", "seeds"] == 3
    text = ablation_tables(frame)
    assert "| pfi |" in text and "32.0 ± 2.6" in text and "+10.0" in text and "36%" in text


def test_study_runs_resumes_and_skips(tmp_path, tiny_overrides, capsys):
    out, csv = tmp_path / "study", tmp_path / "results" / "ablation.csv"
    small = tiny_overrides + ["train.max_steps=2", "train.eval_every=0"]
    kw = dict(out=str(out), csv=str(csv), methods=["baseline", "fi_gt"], seeds=[0, 1], overrides=small,
              teacher_overrides=small, cache=str(tmp_path / "cache"), progress=False)  # fmt: skip
    frame = run_study(**kw)
    assert list(frame.method) == ["teacher"] + ["baseline"] * 2 + ["fi_gt"] * 2
    saved = pd.read_csv(csv)
    assert {"detector", "method", "seed", "AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(saved.columns)
    assert len(saved) == 5 and csv.with_suffix(".md").read_text().count("| fi_gt |") == 1
    weights = saved[saved.method == "fi_gt"].weights.iloc[0]
    assert weights.startswith("fi_gt=") and (out / "retinanet" / "calibration.json").is_file()
    from rmkd.checkpoint import load_checkpoint

    w0, w1 = (load_checkpoint(out / "retinanet" / "baseline" / f"seed{k}" / "last.pt")["model"] for k in (0, 1))
    assert any(not (w0[k] == w1[k]).all() for k in w0 if w0[k].is_floating_point())  # seeds give different students
    ckpt = out / "retinanet" / "baseline" / "seed1" / "last.pt"
    before = ckpt.stat().st_mtime_ns
    # a study killed during a run: that run's final metrics are missing; rerunning finishes it only
    (out / "retinanet" / "fi_gt" / "seed1" / "metrics.json").unlink()
    capsys.readouterr()
    again = run_study(**kw)
    printed = capsys.readouterr().out
    assert printed.count(": done") == 3 and printed.count(": running") == 1
    assert ckpt.stat().st_mtime_ns == before  # finished runs are not retrained
    pd.testing.assert_frame_equal(
        again.drop(columns="train_seconds"), frame.drop(columns="train_seconds"), check_exact=False, atol=1e-9
    )


def _frame(aps: dict) -> pd.DataFrame:
    rows = [{"detector": "retinanet", "method": "teacher", "seed": 0, "AP": 40.0, "weights": ""}]
    for method, values in aps.items():
        for seed, ap in enumerate(values):
            rows.append({"detector": "retinanet", "method": method, "seed": seed, "AP": ap, "weights": ""})
    frame = pd.DataFrame(rows)
    for m in ("AP50", "AP75", "APs", "APm", "APl"):
        frame[m] = frame.AP
    return frame


def test_claims_follow_the_stated_rule():
    from rmkd.reproduce import CLAIMS, claims_frame, claims_markdown

    frame = _frame({
        "baseline": [10, 11, 12], "rm": [20, 21, 22],  # +10 against a margin of 2: held, 3 of 3 seeds
        "soft_label": [21, 22, 23],  # rm - soft_label = -1, margin 2: within the noise
        "rm_iou": [5, 6, 7],  # cls at least as well as iou: held, and rm beats rm_iou
        "rm_cls_iou": [30, 31, 32],  # cls+iou beats cls: "at least as well as" did not hold
        "pfi": [12, 30, 13], "fi_full": [11, 12, 13],  # pfi wins on means (+3) but not beyond 10.4 + 1
        "fgfi": [1, 2],  # two seeds only
    })  # fmt: skip
    c = claims_frame(frame).set_index("claim")
    assert list(c.index) == [claim for claim, *_ in CLAIMS]
    assert c.loc["RM beats the baseline", "verdict"] == "held" and c.loc["RM beats the baseline", "paired"] == "3 of 3"
    assert c.loc["RM beats the baseline", "diff"] == pytest.approx(10) and c.loc["RM beats the baseline", "margin"] == pytest.approx(2)
    assert c.loc["RM beats soft-label KD", "verdict"] == "did not hold"
    assert "within the noise" in c.loc["RM beats soft-label KD", "note"] and c.loc["RM beats soft-label KD", "paired"] == "0 of 3"
    assert c.loc["ranking by cls works at least as well as by IoU", "verdict"] == "held"
    assert c.loc["ranking by cls works at least as well as by IoU", "note"] == "rm beats rm_iou"
    assert c.loc["ranking by cls works at least as well as by cls+IoU", "verdict"] == "did not hold"
    assert c.loc["PFI beats feature imitation on the full map", "verdict"] == "did not hold"
    assert c.loc["PFI beats feature imitation on the full map", "paired"] == "2 of 3"
    assert c.loc["PFI beats FGFI", "verdict"] == "not yet measured" and c.loc["PFI beats FGFI", "n_b"] == 2
    assert c.loc["RM+PFI beats RM alone", "verdict"] == "not yet measured" and c.loc["RM+PFI beats RM alone", "n_a"] == 0
    table = claims_markdown(claims_frame(frame))
    assert "| RM beats the baseline | rm 21.0 ± 1.0 (3) | baseline 11.0 ± 1.0 (3) | +10.0 | 2.0 | 3 of 3 | held |" in table


def test_defaults_are_chosen_by_mean_ap_once_every_variant_has_three_seeds():
    from rmkd.reproduce import chosen_defaults

    frame = _frame({"rm": [20, 21, 22], "rm_iou": [22, 23, 24], "rm_cls_iou": [1, 2, 3], "pfi": [5, 5, 5], "pfi_detach": [4, 4, 4]})
    chosen = chosen_defaults(frame)
    assert chosen["rm_score"] == "iou" and chosen["pfi_detach"] is False
    partial = _frame({"rm": [20, 21, 22], "rm_iou": [30, 31], "rm_cls_iou": [1, 2, 3], "pfi": [5, 5, 5], "pfi_detach": [6, 6, 6]})
    assert chosen_defaults(partial)["rm_score"] is None and chosen_defaults(partial)["pfi_detach"] is True


def test_readme_headline_is_the_csv():
    """README's ablation block is generated from docs/results/ablation.csv, never typed."""
    from pathlib import Path

    from rmkd.reproduce import readme_block

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    start, end = "<!-- ablation:start -->\n", "\n<!-- ablation:end -->"
    assert start in readme and end in readme
    block = readme.split(start)[1].split(end)[0]
    frame = pd.read_csv(root / "docs" / "results" / "ablation.csv", dtype={"weights": str})
    assert block == readme_block(frame), "README is stale: run python -m rmkd.reproduce --readme"


def test_shipped_defaults_are_the_studys_choice():
    """The library's RM score and P_dif detach defaults are what the committed study chose."""
    from pathlib import Path

    from rmkd.config import DistillConfig
    from rmkd.reproduce import chosen_defaults

    frame = pd.read_csv(Path(__file__).resolve().parent.parent / "docs" / "results" / "ablation.csv", dtype={"weights": str})
    chosen = chosen_defaults(frame)
    shipped = DistillConfig()
    for key in ("rm_score", "pfi_detach"):
        if chosen[key] is not None:  # decided once every compared method has 3 seeds
            assert getattr(shipped, key) == chosen[key], key
