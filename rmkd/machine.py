"""Which machine a study's table belongs to, and a one-minute check that this one computes like it.

The same config and seed train to other weights on another CPU: the study's teacher scored 63.95
AP on an Intel Xeon, 63.11 on an AMD EPYC with AVX2 and 63.52 on an AMD EPYC with AVX-512
(docs/RESULTS.md). A table's rows are paired runs of one experiment only when every run computed
alike, so :func:`machine_name` labels the rows (cores and CPU vendor, or the GPU) and the
*fingerprint* tells machines apart that share a label: the SHA-256 of the student's pretrained
backbone file (``model.weights_backbone: pretrain``), which ``rmkd reproduce`` makes first
(600 steps, about a minute on 2 cores) and records in ``machine.json`` beside the table's CSV.
A machine whose file hashes otherwise is refused before it spends half an hour on the teacher;
the teacher check (``rmkd.reproduce._check_teacher``) remains for configs without a pretrained
backbone. Forcing a common instruction set does not make two CPUs agree: with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`` an AVX-512 Xeon
still made another file than the AVX2 EPYC (docs/RESULTS.md, "A common instruction set does not
make two CPUs agree").
"""

from __future__ import annotations

import hashlib
import json
import os
import platform

import torch

from . import jsonio
from .config import Config, ConfigError
from .pretrain import ensure_pretrained

CPU_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}
MIN_HASH = 8  # hex digits of a recorded fingerprint: a prefix this long is compared, as git compares short hashes


def machine_name() -> str:
    """``cpu2-intel`` (CPU cores and vendor) or the GPU's name: one table never mixes machines.

    A finer difference (another generation, same vendor) is caught by the fingerprint
    (:func:`check_fingerprint`) and the teacher check."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "_")
    return f"cpu{os.cpu_count()}-{cpu_vendor()}"


def _cpuinfo(cpuinfo: str) -> dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    if os.path.isfile(cpuinfo):
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block ends here
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    return fields


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """``intel``, ``amd``, or the architecture (``aarch64``, ...) where ``cpuinfo`` names no vendor we know."""
    vendor = _cpuinfo(cpuinfo).get("vendor_id")
    if vendor is not None:
        return CPU_VENDORS.get(vendor, vendor.lower() or platform.machine())
    return platform.machine() or "unknown"


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """``Intel(R) Xeon(R) Processor (family 6, model 167)``: what ``lscpu`` says, for the record."""
    fields = _cpuinfo(cpuinfo)
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def fingerprint(s_cfg: Config, progress: bool) -> dict | None:
    """This machine's fingerprint for ``s_cfg``'s study, pretraining the backbone if missing; None
    where the student has no pretrained backbone."""
    path = ensure_pretrained(s_cfg, progress)
    if path is None:
        return None
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {
        "pretrained_backbone": os.path.basename(path),  # named for everything that shapes it
        "sha256": digest,
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }


def machine_path(csv: str) -> str:
    """``machine.json`` beside the study's CSV."""
    return os.path.join(os.path.dirname(csv), "machine.json")


def _recorded(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}): restore it from git") from None


def check_fingerprint(path: str, det: str, fp: dict | None) -> None:
    """Refuse a machine whose pretrained backbone hashes otherwise than the table's machine's."""
    old = _recorded(path).get(det)
    if fp is None or old is None or old.get("pretrained_backbone") != fp["pretrained_backbone"]:
        return  # nothing recorded for this pretraining: the teacher check decides
    recorded = str(old.get("sha256", ""))
    if len(recorded) < MIN_HASH or not fp["sha256"].startswith(recorded):
        raise ConfigError(
            f"{path}: the table's machine ({old.get('cpu', '?')}) pretrained {fp['pretrained_backbone']} to sha256 "
            f"{recorded[:MIN_HASH]}..., this one ({fp['cpu']}) to {fp['sha256'][:MIN_HASH]}...: it computes differently, "
            "so its runs cannot join that table: pass --csv a new file"
        )


def record_fingerprint(path: str, det: str, fp: dict | None) -> None:
    """Write ``fp`` for ``det`` into ``path`` unless a fingerprint of the same pretraining is there."""
    stored = _recorded(path)
    if fp is None or stored.get(det, {}).get("pretrained_backbone") == fp["pretrained_backbone"]:
        return
    stored[det] = fp
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    jsonio.write(path, stored, indent=1)
