"""rmkd.machine: the machine label, the CPU's record, and the fingerprint check against a table's machine."""

import json
import os

import pytest

import rmkd.machine as M
from rmkd.config import ConfigError


def test_machine_names_the_cpu_vendor(tmp_path, monkeypatch):
    for vendor_id, name in (("GenuineIntel", "intel"), ("AuthenticAMD", "amd"), ("HygonGenuine", "hygongenuine")):
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nvendor_id\t: {vendor_id}\ncpu family\t: 6\n")
        assert M.cpu_vendor(str(tmp_path / "cpuinfo")) == name
    monkeypatch.setattr(M.platform, "machine", lambda: "aarch64")
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # an ARM cpuinfo names no vendor_id
    assert M.cpu_vendor(str(tmp_path / "cpuinfo")) == "aarch64" == M.cpu_vendor(str(tmp_path / "absent"))
    monkeypatch.setattr(M, "cpu_vendor", lambda: "amd")
    monkeypatch.setattr(M.torch.cuda, "is_available", lambda: False)
    assert M.machine_name() == f"cpu{os.cpu_count()}-amd"
    # the record names the model, from the first processor's block only
    two = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9B14\n\nmodel name\t: other\n"
    (tmp_path / "cpuinfo").write_text(two)
    assert M.cpu_model(str(tmp_path / "cpuinfo")) == "AMD EPYC 9B14 (family 25, model 17)"


def test_fingerprint_refuses_a_machine_that_computes_otherwise(tmp_path):
    path = str(tmp_path / "machine.json")
    fp = {"pretrained_backbone": "resnet10-600-4da81a1d5b.pt", "sha256": "ca38ea9a" + "0" * 56, "cpu": "Xeon"}
    M.check_fingerprint(path, "retinanet", fp)  # nothing recorded: no verdict
    M.record_fingerprint(path, "retinanet", fp)
    assert json.loads((tmp_path / "machine.json").read_text()) == {"retinanet": fp}
    M.check_fingerprint(path, "retinanet", fp)
    M.check_fingerprint(path, "retinanet", dict(fp, pretrained_backbone="other.pt", sha256="f" * 64))  # other pretraining
    M.check_fingerprint(path, "retinanet", None)  # no pretrained backbone: the teacher check decides
    other = dict(fp, sha256="8fb77c75" + "0" * 56, cpu="EPYC")
    with pytest.raises(ConfigError, match=r"machine.json: the table's machine \(Xeon\) pretrained resnet10-600-4da81a1d5b.pt "
                       r"to sha256 ca38ea9a\.\.\., this one \(EPYC\) to 8fb77c75\.\.\.: it computes differently"):
        M.check_fingerprint(path, "retinanet", other)
    M.record_fingerprint(path, "retinanet", other)  # a fingerprint already there is never replaced
    assert json.loads((tmp_path / "machine.json").read_text())["retinanet"]["sha256"] == fp["sha256"]
    # a recorded prefix (an earlier session wrote 8 hex digits down) compares as one; a shorter one never matches
    (tmp_path / "machine.json").write_text(json.dumps({"retinanet": dict(fp, sha256="ca38ea9a")}))
    M.check_fingerprint(path, "retinanet", fp)
    (tmp_path / "machine.json").write_text(json.dumps({"retinanet": dict(fp, sha256="ca38")}))
    with pytest.raises(ConfigError, match="computes differently"):
        M.check_fingerprint(path, "retinanet", fp)
    (tmp_path / "machine.json").write_text("{")
    with pytest.raises(ConfigError, match="machine.json: not valid JSON .*restore it from git"):
        M.check_fingerprint(path, "retinanet", fp)
