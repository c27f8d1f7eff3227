"""Atomic checkpoints and the RNG state that makes ``--resume`` continue exactly.

Writing goes through :func:`ltcls.engine.rundir.atomic_write` (``NAME.tmp``, fsync, rename), so a killed or
failed write never replaces the previous checkpoint; a full disk or an unwritable folder is a
:class:`CheckpointWriteError`. Reading uses ``weights_only=True`` (a checkpoint cannot run code) and turns
every way a file can be unusable (missing, empty, truncated, not a checkpoint, holding Python objects) into
one :class:`CheckpointError` line naming the file and the reason.
"""

from __future__ import annotations

import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltcls.engine.rundir import DiskFullError, atomic_write

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save has written zip archives since torch 1.6
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or written; the message names the file and the reason in one line."""


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (disk full, folder not writable); the previous checkpoint is kept."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states as checkpoint-safe values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path.tmp``, fsync, then rename over ``path`` (atomic on POSIX).

    On failure the partial ``path.tmp`` is removed and ``path`` keeps the previous checkpoint; a full disk
    ("no space left on device while writing PATH") or another OS error (permissions, a missing folder)
    raises :class:`CheckpointWriteError`; anything else (e.g. an object that cannot be saved) propagates.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointWriteError(f"cannot write checkpoint {path}: folder '{path.parent}' does not exist")
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except OSError as e:
        message = (f"{e}; free some space, then resume with --resume" if isinstance(e, DiskFullError) else
                   f"cannot write checkpoint {path}: {e.strerror or e} (the previous checkpoint, if any, is kept)")
        err = CheckpointWriteError(message)
        err.errno = e.errno
        raise err from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from a checkpoint file).

    Raises :class:`FileNotFoundError` when there is no file, and :class:`CheckpointError` ("cannot load
    checkpoint PATH: REASON") for an empty, truncated or foreign file and for one holding Python objects
    other than tensors and plain containers (refused: unpickling them could run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    _check_container(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"cannot load checkpoint {path}: it holds Python objects other than tensors and plain "
                              f"values{what}, which ltcls refuses to unpickle because that can run arbitrary code; "
                              "resume only from checkpoints that ltcls wrote") from None
    except Exception as e:  # any other torch failure: keep its first line, never its advice paragraphs
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"cannot load checkpoint {path}: torch cannot read it ({type(e).__name__}: {first})"
                              ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot load checkpoint {path}: expected a dict of training state, got "
                              f"{type(state).__name__} (not an ltcls checkpoint)")
    return state


def _check_container(path: Path) -> None:
    """Refuse an empty, foreign or truncated file before torch parses it, with the reason."""
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if not head:
        raise CheckpointError(f"cannot load checkpoint {path}: the file is empty (0 bytes; a write that was "
                              "interrupted, or a full disk?)")
    if head != _ZIP_MAGIC:
        raise CheckpointError(f"cannot load checkpoint {path}: not a PyTorch checkpoint (expected the zip archive "
                              f"torch.save writes; the file starts with {head!r})")
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size
        raise CheckpointError(f"cannot load checkpoint {path}: the file is truncated or corrupt ({size:,} bytes; "
                              "the zip archive has no central directory: an interrupted copy?)")
