"""Every JSON file rmkd writes is strict JSON: ``null``, never ``NaN`` / ``Infinity``.

Python's :mod:`json` reads its own ``NaN`` tokens back without complaint, so each
file here is parsed with ``parse_constant`` set to refuse them, as a strict
reader (jq, JavaScript) would.
"""

import ast
import json
import math
from pathlib import Path

import pytest

import rmkd
from rmkd import jsonio
from rmkd.cli import main
from rmkd.demo import finished_metrics

PACKAGE = Path(rmkd.__file__).parent

# Files of rmkd/ allowed to call json.dump / json.dumps themselves.
ALLOWED = {
    "jsonio.py": "the helper itself",
    "config.py": "Config.digest hashes the config; it writes no file",
}
# Not part of this change (other owners): they still write with json.dump and are to be
# routed through rmkd.jsonio; delete each from this set when it is.
PENDING: set[str] = set()  # files not yet switched to rmkd.jsonio


def reject(token: str):
    raise ValueError(f"not strict JSON: {token}")


def strict(text: str):
    return json.loads(text, parse_constant=reject)


def test_reject_refuses_what_pythons_json_writes_for_nan():
    """The check below is not vacuous: plain json.dumps output fails it."""
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="not strict JSON"):
            strict(json.dumps({"APl": value}))


def test_non_finite_numbers_become_null_at_any_depth():
    record = {"AP": 0.5, "APl": math.nan, "nested": {"x": [1, math.inf, (-math.inf, 2.0)]}, "n": 3, "ok": True}
    text = jsonio.dumps(record)
    assert strict(text) == {"AP": 0.5, "APl": None, "nested": {"x": [1, None, [None, 2.0]]}, "n": 3, "ok": True}
    assert record["APl"] != record["APl"]  # the caller's dict is left as it was


def test_values_json_cannot_write_still_fail():
    with pytest.raises(TypeError):
        jsonio.dumps({"tensor": object()})


def test_readers_get_nan_back_for_a_null_metric(tmp_path):
    path = tmp_path / "metrics.json"
    jsonio.write(str(path), {"step": 2, "AP": 0.25, "APl": math.nan, "train_summary": {"skipped_images": None}}, indent=2)
    metrics = finished_metrics(str(tmp_path), 2)
    assert metrics["AP"] == 0.25 and math.isnan(metrics["APl"])
    assert metrics["train_summary"]["skipped_images"] is None  # nested None: "not counted", kept


def test_a_tiny_run_writes_strict_json(tmp_path, tiny_overrides, capsys):
    """metrics.json, metrics.jsonl, detections.json of ``rmkd train`` and ``rmkd eval``, and what they print."""
    run = tmp_path / "run"
    argv = ["train", "--out", str(run), "--no-progress", "--set", *tiny_overrides, "train.max_steps=2", "train.eval_every=2"]
    assert main(argv) == 0
    printed = strict(capsys.readouterr().out)
    final = strict((run / "metrics.json").read_text())
    # APl is NaN on the 64 px embedded images (no large objects): the case this is about
    assert final["APl"] is None and printed["APl"] is None
    assert final["AP"] == printed["AP"] and isinstance(final["AP"], float)
    records = [strict(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval" in r] == [2, 2]  # eval_every=2, then the final one
    assert all(r["eval"]["APl"] is None for r in records if "eval" in r)
    assert isinstance(strict((run / "detections.json").read_text()), list)

    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    assert strict(capsys.readouterr().out)["APl"] is None
    assert strict((tmp_path / "ev" / "metrics.json").read_text())["APl"] is None
    assert isinstance(strict((tmp_path / "ev" / "detections.json").read_text()), list)


def _raw_json_writes(path: Path) -> list[int]:
    """Lines of ``path`` that call ``json.dump`` / ``json.dumps`` (or names imported from json)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    from_json = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "json"]
    imported = {a.asname or a.name: a.name for n in from_json for a in n.names}  # local name -> json's name
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        attribute = isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "json"
        if (attribute and f.attr in ("dump", "dumps")) or (isinstance(f, ast.Name) and imported.get(f.id) in ("dump", "dumps")):
            lines.append(node.lineno)
    return lines


def test_rmkd_writes_json_only_through_jsonio():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name not in ALLOWED and name not in PENDING and (lines := _raw_json_writes(path)):
            found[name] = lines
    assert not found, f"json.dump/json.dumps outside rmkd.jsonio (use jsonio.dump/dumps/write): {found}"


def test_the_scan_finds_raw_writes(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import json\nfrom json import dumps as d\njson.dump(1, f)\nx = d(2)\njson.loads('1')\n")
    assert _raw_json_writes(path) == [3, 4]
