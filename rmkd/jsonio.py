"""Strict JSON for every file rmkd writes (``metrics.json``, ``metrics.jsonl``, ``detections.json``, ...).

Python's :mod:`json` writes a NaN or infinite float as a bare ``NaN`` / ``Infinity``
token, which is not JSON: ``jq``, JavaScript and other strict readers reject the
whole file. Metrics are NaN where they cannot be measured (e.g. ``APl`` on a data
set without large objects), so every writer goes through :func:`dump` /
:func:`dumps`: a non-finite number becomes ``null``. Readers that compute with
metrics turn ``null`` back into NaN with :func:`nan_for_none`.

This module imports nothing from rmkd, so any module may use it.
"""

from __future__ import annotations

import json
import math
from typing import IO, Any


def finite(obj: Any) -> Any:
    """``obj`` with every NaN / +-inf float replaced by None, through dicts, lists and tuples.

    Tuples come back as lists, as JSON writes them anyway. Other values are returned as
    they are (a value :mod:`json` cannot write still fails in :func:`dumps`, loudly).
    """
    if isinstance(obj, float):  # numpy's float64 is a float too
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """:func:`json.dumps` of ``obj`` as strict JSON (non-finite numbers as ``null``)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def dump(obj: Any, f: IO[str], **kwargs) -> None:
    """:func:`json.dump` of ``obj`` to the text file ``f`` as strict JSON."""
    json.dump(finite(obj), f, allow_nan=False, **kwargs)


def write(path: str, obj: Any, **kwargs) -> None:
    """Write ``obj`` to ``path`` (UTF-8) as strict JSON; ``kwargs`` as for :func:`json.dump`."""
    with open(path, "w", encoding="utf-8") as f:
        dump(obj, f, **kwargs)


def nan_for_none(record: dict) -> dict:
    """``record`` with its top-level ``null`` values back as NaN.

    For a metrics record read from a file (``metrics.json``, a ``metrics.jsonl``
    line's ``"eval"``): there a ``null`` number is a metric that could not be
    measured, which rmkd's code (tables, means over seeds) handles as NaN.
    Nested dicts (e.g. ``train_summary``, where ``null`` means "not counted") are
    left as they are.
    """
    return {k: math.nan if v is None else v for k, v in record.items()}
