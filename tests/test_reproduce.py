"""rmkd reproduce: method configs, the tables' arithmetic, and a resumable study on tiny data."""

import json
import math
import os

import pandas as pd
import pytest

from rmkd.config import ConfigError, load_config
from rmkd.distill import TERMS
from rmkd.reproduce import METHODS, ablation_tables, method_config, run_study, summary_frame


def test_method_configs_turn_on_exactly_their_terms():
    from rmkd.reproduce import RULE, method_variants

    s_cfg = load_config(None)
    weights = {k: 0.25 for m in METHODS for k in method_variants(m).values()}
    for method, spec in METHODS.items():
        cfg = method_config(s_cfg, method, 7, "t.pt", weights)
        assert cfg.seed == 7
        if spec is None:
            assert cfg.distill.teacher == "" and method == "baseline"
            continue
        on = {t: w for t, w in cfg.distill.weights().items()}
        expected = {k: (0.25 if v == RULE else v) for k, v in spec.items() if k in TERMS}
        assert on == expected, method
        assert cfg.distill.teacher == "t.pt"
    assert method_config(s_cfg, "rm_iou", 0, "t", weights).distill.rm_score == "iou"
    assert method_config(s_cfg, "rm_cls_iou", 0, "t", weights).distill.rm_score == "cls+iou"
    assert method_config(s_cfg, "rm_t0.25", 0, "t", weights).distill.rm_temperature == 0.25
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
    assert "Cost: not recorded" in text
    timed = frame.assign(steps=[1800] + [900] * 6, sec_per_step=[2.0] + [0.5, 1.5, 1.0, 0.5, 0.5, math.nan])
    # 900 * (0.5 + 1.5 + 1.0 + 0.5 + 0.5) s of students = 1.00 h; the teacher 1800 * 2 s = 60 min
    assert "Cost: 1.00 h for 5 student runs (median s/step x steps, summed), 1 runs without a step time; teacher 60.0 min" in ablation_tables(timed)


def test_study_runs_resumes_and_skips(tmp_path, tiny_overrides, capsys):
    from rmkd.config import pretrained_backbone_file
    from rmkd.machine import machine_name

    out, csv = tmp_path / "study", tmp_path / "results" / "ablation.csv"
    small = tiny_overrides + ["train.max_steps=2", "train.eval_every=0"]
    kw = dict(out=str(out), csv=str(csv), methods=["baseline", "fi_gt"], seeds=[0, 1], overrides=small,
              teacher_overrides=small, cache=str(tmp_path / "cache"), progress=False)  # fmt: skip
    frame = run_study(**kw)
    assert list(frame.method) == ["teacher"] + ["baseline"] * 2 + ["fi_gt"] * 2
    saved = pd.read_csv(csv)
    assert {"detector", "method", "seed", "AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(saved.columns)
    assert len(saved) == 5 and csv.with_suffix(".md").read_text().count("| fi_gt |") == 2  # its table, the losses table
    weights = saved[saved.method == "fi_gt"].weights.iloc[0]
    calibration = json.loads((csv.parent / "calibration.json").read_text())["retinanet"]
    assert weights.startswith(f"fi_gt={calibration['weights']['fi_gt']:.4g}") and calibration["weights"]["pfi"] == 1.5
    # the rule's gradients are taken on the trained baseline (seed 0), which ran first
    assert calibration["student"] == str(out / "retinanet" / "baseline" / "seed0" / "last.pt")
    assert calibration["weight_rule"] == "grad_norm_trained" and set(saved.rule.dropna()) == {"grad_norm_trained"}
    assert set(saved.machine) == {machine_name()} and saved.rank_tau[1:].notna().all()
    import hashlib

    recorded = json.loads((csv.parent / "machine.json").read_text())["retinanet"]  # this machine's fingerprint
    backbone = pretrained_backbone_file(load_config("configs/student.yaml", small))
    assert recorded["pretrained_backbone"] == os.path.basename(backbone)
    assert recorded["sha256"] == hashlib.sha256(open(backbone, "rb").read()).hexdigest()
    summary = json.loads((out / "retinanet" / "fi_gt" / "seed1" / "metrics.json").read_text())["train_summary"]
    assert saved.sec_per_step.iloc[-1] == pytest.approx(summary["sec_per_step_median"], abs=1e-4)  # the study's cost
    logged = [json.loads(line)["train"] for line in open(out / "retinanet" / "fi_gt" / "seed1" / "metrics.jsonl") if '"train"' in line]
    n = max(1, round(0.1 * len(logged)))
    last = saved.iloc[-1]  # fi_gt seed 1: its detection loss at the end, its own (weighted) term at the start and end
    assert last.det_loss_end == pytest.approx(sum(r["classification"] + r["bbox_regression"] for r in logged[-n:]) / n, abs=1e-4)
    assert last.kd_loss_start == pytest.approx(sum(r["fi_gt"] for r in logged[:n]) / n, abs=1e-4)
    assert last.kd_loss_end == pytest.approx(sum(r["fi_gt"] for r in logged[-n:]) / n, abs=1e-4)
    assert saved.kd_loss_start[saved.method == "baseline"].isna().all() and "the terms in training" in csv.with_suffix(".md").read_text()
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
    assert "| claim | A - B | seeds | mean diff | SD | 95% CI |" in printed  # the paired-claims table
    assert ckpt.stat().st_mtime_ns == before  # finished runs are not retrained
    pd.testing.assert_frame_equal(
        *(f.drop(columns=["train_seconds", "sec_per_step"]) for f in (again, frame)), check_exact=False, atol=1e-9
    )
    # a fresh checkout: the run folders are gone, the committed CSV holds the rows; nothing is trained
    # again, not even the rule's reference (its calibration is current), and the CSV is rewritten unchanged
    import shutil

    written = csv.read_text()
    assert pd.read_csv(csv, dtype={"config": str}).config.str.fullmatch("[0-9a-f]{10}").all()
    shutil.rmtree(out)
    capsys.readouterr()
    run_study(**kw)
    printed = capsys.readouterr().out
    assert printed.count(": recorded") == 4 and ": running" not in printed and "4 runs kept from" in printed
    assert not out.exists() and csv.read_text() == written
    # a study run method by method adds to its table: the methods not asked for keep their rows
    run_study(**{**kw, "methods": ["baseline"]})
    printed = capsys.readouterr().out
    assert printed.count(": recorded") == 2 and ": running" not in printed and csv.read_text() == written
    # another machine trains the same teacher config to another teacher: its runs cannot join the table
    teacher_row = written.splitlines()[1]
    ap = teacher_row.split(",")[3]
    csv.write_text(written.replace(teacher_row, teacher_row.replace(f",{ap},", f",{float(ap) + 0.0001:.4f},", 1)))
    with pytest.raises(ConfigError, match=r"its teacher scored .* the same config trained here .* computes differently.*--csv a new file"):
        run_study(**kw)
    assert not out.exists()
    csv.write_text(written)
    # a machine whose pretrained backbone hashes otherwise is refused before its teacher trains
    fingerprint = (csv.parent / "machine.json").read_text()
    (csv.parent / "machine.json").write_text(fingerprint.replace(recorded["sha256"], "0" * 64))
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(ConfigError, match=r"machine.json: the table's machine .* computes differently.*--csv a new file"):
        run_study(**kw)
    assert not (tmp_path / "cache").exists() and not out.exists()
    (csv.parent / "machine.json").write_text(fingerprint)
    # a row trained with another config (here: its digest altered) is not kept: that run trains again
    row = written.splitlines()[-1]
    digest = row.split(",")[list(saved.columns).index("config")]
    csv.write_text(written.replace(row, row.replace(digest, "0" * 10)))
    run_study(**kw)
    printed = capsys.readouterr().out
    assert printed.count(": recorded") == 3 and "fi_gt seed 1: running" in printed
    assert (out / "retinanet" / "fi_gt" / "seed1" / "metrics.json").is_file() and not (out / "retinanet" / "baseline").exists()
    assert pd.read_csv(csv, dtype={"config": str}).config.iloc[-1] == digest
    # runs of other weights (the rule or its calibration changed) are neither counted nor resumed
    stored = json.loads((csv.parent / "calibration.json").read_text())
    stored["retinanet"]["weights"]["fi_gt"] *= 2
    (csv.parent / "calibration.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="fi_gt.seed1 holds a run of another config.*another --out") as e:
        run_study(**kw)
    assert "\n" not in str(e.value)
    shutil.rmtree(out / "retinanet" / "fi_gt")  # and the CSV's rows of the old weights are not kept either
    run_study(**kw)
    printed = capsys.readouterr().out
    assert printed.count(": recorded") == 2 and printed.count(": running") == 2


def _frame(aps: dict) -> pd.DataFrame:
    rows = [{"detector": "retinanet", "method": "teacher", "seed": 0, "AP": 40.0, "weights": ""}]
    for method, values in aps.items():
        for seed, ap in enumerate(values):
            rows.append({"detector": "retinanet", "method": method, "seed": seed, "AP": ap, "weights": ""})
    frame = pd.DataFrame(rows)
    for m in ("AP50", "AP75", "APs", "APm", "APl"):
        frame[m] = frame.AP
    return frame


def test_csv_rows_follow_the_methods_order_not_the_order_they_ran(tmp_path):
    from rmkd.reproduce import write_results

    frame = _frame({"pfi": [30.0, 31.0], "new_method": [1.0], "baseline": [29.0, 28.0]})
    shuffled = pd.concat([frame.iloc[[3, 5, 1]], frame.assign(detector="fcos").iloc[[0, 2]], frame.iloc[[4, 0, 2]]])
    write_results(shuffled, str(tmp_path / "ablation.csv"))
    saved = pd.read_csv(tmp_path / "ablation.csv")
    assert list(zip(saved.detector, saved.method, saved.seed)) == [
        ("retinanet", "teacher", 0), ("retinanet", "baseline", 0), ("retinanet", "baseline", 1),
        ("retinanet", "pfi", 0), ("retinanet", "pfi", 1), ("retinanet", "new_method", 0),
        ("fcos", "teacher", 0), ("fcos", "pfi", 1),
    ]  # fmt: skip


def test_tables_hold_the_paired_claims_and_decided_defaults_only():
    from rmkd.claims import CLAIMS
    from rmkd.reproduce import chosen_defaults, paired_claims

    frame = _frame({
        "baseline": [10, 14, 12, 18, 11, 16], "rm": [12.1, 15.9, 14.2, 19.8, 13.0, 18.1],  # +2 every seed
        "rm_iou": [14, 18, 16, 22, 15, 20],  # iou +4 over cls every seed: "cls at least as well" contradicted
        "rm_cls_iou": [12, 16, 14, 20, 13, 18],  # equal to rm: within the margin
        "pfi": [12, 30, 13], "pfi_detach": [11, 12, 13],  # 3 seeds, noisy: undecided
    })  # fmt: skip
    claims = paired_claims(frame).set_index("claim")
    assert list(claims.index) == [c for c, *_ in CLAIMS]
    assert claims.loc["RM beats the baseline", "verdict"] == "supported"
    assert claims.loc["ranking by cls works at least as well as by IoU", "verdict"] == "contradicted"
    assert claims.loc["ranking by cls works at least as well as by cls+IoU", "verdict"] == "supported"
    assert claims.loc["RM+PFI beats RM alone", "verdict"] == "undecided" and claims.loc["RM+PFI beats RM alone", "n"] == 0
    chosen = chosen_defaults(paired_claims(frame))
    assert chosen == {"rm_score": "iou", "pfi_detach": False, "rm_temperature": 1.0}
    text = ablation_tables(frame)
    assert "**contradicted**" in text and "`distill.rm_score=iou`" in text and "Holm" in text
    assert "the study decided against the paper's cls" in text and "the paper's T = 1 stays" in text
    # the paper's choice stays while nothing is decided
    undecided = _frame({"rm": [12, 13, 11], "rm_iou": [13, 11, 12], "pfi": [5, 6, 5], "pfi_detach": [6, 5, 6]})
    assert chosen_defaults(paired_claims(undecided)) == {"rm_score": "cls", "pfi_detach": False, "rm_temperature": 1.0}
    detach = _frame({"pfi": [5, 9, 7, 6], "pfi_detach": [7.1, 10.9, 9.2, 7.9], "rm": [5, 9, 7, 6], "rm_t0.1": [6.1, 9.9, 8.0, 7.1]})
    assert chosen_defaults(paired_claims(detach)) == {"rm_score": "cls", "pfi_detach": True, "rm_temperature": 0.1}
    # both variants beat cls: the one further ahead wins, whichever the claims list first
    further, nearer = [13, 17.1, 14.9, 21.2], [12, 16.2, 13.9, 20.1]  # iou-side ahead of rm by ~3 and ~2 AP
    both = _frame({"rm": [10, 14, 12, 18], "rm_iou": further, "rm_cls_iou": nearer})
    verdicts = paired_claims(both).set_index(["a", "b"]).verdict
    assert verdicts[("rm", "rm_iou")] == verdicts[("rm", "rm_cls_iou")] == "contradicted"
    assert chosen_defaults(paired_claims(both))["rm_score"] == "iou"
    both = _frame({"rm": [10, 14, 12, 18], "rm_iou": nearer, "rm_cls_iou": further})
    assert chosen_defaults(paired_claims(both))["rm_score"] == "cls+iou"
    from rmkd.reproduce import defaults_lines

    lines = "\n".join(defaults_lines(paired_claims(detach)))
    assert "the study decided detaching is better" in lines and "the study decided sharpening is better" in lines
    assert "the paper's cls stays" in lines


def test_readme_block_names_the_decided_claims_and_the_bounded_ones():
    from rmkd.reproduce import readme_block

    frame = _frame({
        "baseline": [10, 14, 12, 18, 11, 16], "rm": [12.1, 15.9, 14.2, 19.8, 13.0, 18.1],  # +2 every seed
        "pfi": [10.1, 13.9, 12.05, 18.1, 10.95, 15.9],  # within 0.1 AP of the baseline: bounded, undecided
    })  # fmt: skip
    block = readme_block(frame)
    assert "Supported: RM beats the baseline." in block
    assert "Within ±1 AP, whatever the verdict (two one-sided tests, Holm): PFI beats the baseline." in block
    assert "RM beats the baseline;" not in block.split("Within")[1]  # a 2-AP gain is not bounded by the margin


def test_one_table_never_mixes_machines(tmp_path):
    from rmkd.reproduce import _check_machine

    csv = tmp_path / "ablation.csv"
    pd.DataFrame([{"method": "baseline", "seed": 0, "AP": 1.0, "machine": "cpu2"}]).to_csv(csv, index=False)
    _check_machine(str(csv), "cpu2")
    with pytest.raises(ConfigError, match="holds runs from cpu2, this machine is NVIDIA_H200"):
        _check_machine(str(csv), "NVIDIA_H200")


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


def test_shipped_defaults_are_the_studys_decisions():
    """The library's RM score and P_dif detach defaults are what the committed study decided
    (the paper's choices while undecided)."""
    from pathlib import Path

    from rmkd.config import DistillConfig
    from rmkd.reproduce import chosen_defaults, paired_claims

    frame = pd.read_csv(Path(__file__).resolve().parent.parent / "docs" / "results" / "ablation.csv", dtype={"weights": str})
    chosen = chosen_defaults(paired_claims(frame))
    shipped = DistillConfig()
    for key in ("rm_score", "pfi_detach", "rm_temperature"):
        assert getattr(shipped, key) == chosen[key], key


def test_calibration_is_computed_once_and_again_only_when_configs_or_variants_change(tmp_path, monkeypatch):
    import rmkd.reproduce as R

    calls = []

    def fake(teacher, s_cfg, keys, batches=8, student_ckpt=None):
        calls.append(list(keys))
        return {"weights": {k: float(len(k)) for k in ["pfi", *keys]}, "grad_norms": {}}

    monkeypatch.setattr(R, "calibrate", fake)
    path = str(tmp_path / "calibration.json")
    t_cfg, s_cfg = load_config(None), load_config(None)
    assert R._calibration("t.pt", t_cfg, s_cfg, ["rm"], path, "retinanet") == {"pfi": 3.0, "rm": 2.0}
    R._calibration("t.pt", t_cfg, s_cfg, ["rm"], path, "retinanet")
    assert calls == [["rm"]]  # read back, not computed again
    R._calibration("t.pt", t_cfg, s_cfg, ["rm", "fgfi"], path, "retinanet")
    assert set(calls[-1]) - {"pfi"} == {"fgfi", "rm"}  # a new variant: computed with the stored ones
    s_cfg.model.fpn_channels = 64
    R._calibration("t.pt", t_cfg, s_cfg, ["rm"], path, "retinanet")
    assert calls[-1] == ["rm"] and len(calls) == 3  # another student: only what is asked for now
    stored = json.loads((tmp_path / "calibration.json").read_text())["retinanet"]
    assert stored["student_config"] == s_cfg.digest("model", "data", "train") and stored["seed"] == 0
