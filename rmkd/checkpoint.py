"""Checkpoints: written atomically, read without running code.

A checkpoint is a dict of tensors and plain containers:
``{"rmkd_checkpoint": 1, "model": state_dict, "step": int, "config": dict, ...}``
(plus ``optimizer``, ``scheduler`` and ``rng`` for resuming). It is written to a
temporary file in the same folder and renamed over the target, so a run killed
mid-write leaves the previous checkpoint intact. It is read with
``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import os
import pickle
import zipfile

import torch

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable rmkd checkpoint."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically (temporary file + fsync + rename)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save({"rmkd_checkpoint": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read an rmkd checkpoint, with a one-line error for anything else."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path!r} refused: it holds objects other than tensors and plain containers "
            f"(loading it could run code). {first[:200]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path!r} is truncated or not a torch file ({first[:200]})") from None
    if not isinstance(state, dict) or "rmkd_checkpoint" not in state or "model" not in state:
        raise CheckpointError(
            f"{path!r} is not an rmkd checkpoint (expected a dict with 'rmkd_checkpoint' and 'model'); "
            "give a last.pt written by 'rmkd train' or 'rmkd distill'"
        )
    return state
