"""The typed checkpoint of a run (:class:`Checkpoint`) and the RNG state that makes ``--resume`` continue exactly.

Writing goes through :func:`ltcls.io.atomic_write` (a temporary file, fsync, rename), so a killed or
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ltcls.config import Config, resolve
from ltcls.errors import CheckpointError
from ltcls.io import DiskFullError, atomic_write

#: A state dict, or any other mapping of checkpoint-safe values.
StateDict = Mapping[str, Any]
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save has written zip archives since torch 1.6
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (disk full, folder not writable); the previous checkpoint is kept."""


def rng_state() -> StateDict:
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


def set_rng_state(state: StateDict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainingState:
    """What ``--resume`` needs besides the model: where the run stopped and the state of everything that moves.

    ``batch`` > 0: an interrupt checkpoint (``train.checkpoint_on_signal``), ``batch`` micro-batches into epoch
    ``epoch``."""

    stage: int
    epoch: int
    step: int
    optimizer: StateDict
    scheduler: StateDict
    sampler: StateDict
    rng: StateDict
    scaler: StateDict | None = None
    batch: int = 0
    #: The number of processes that trained it (None: a checkpoint written before this was stored).
    world_size: int | None = None


@dataclass
class Checkpoint:
    """One checkpoint of a run, written and read here only (``RunDir.checkpoint_path``).

    ``model``: the model's state dict; ``config``: the resolved config the run trained with (plain values);
    ``history``: every evaluation so far; ``training``: the loop state (None for a stage that only evaluates:
    tau-norm, NCM); ``method`` / ``tau``: a stage-2 run's method and tau-norm's chosen tau. ``loss``: the
    loss's state (Seesaw's counts, ...), kept for a model that only evaluates too.
    """

    model: StateDict
    config: StateDict
    num_classes: int
    class_names: list[str]
    history: list[StateDict] = field(default_factory=list)
    training: TrainingState | None = None
    loss: StateDict | None = None
    method: str | None = None
    tau: float | None = None

    @property
    def cfg(self) -> Config:
        """The stored config, resolved (an error names the checkpoint)."""
        return resolve(self.config, source="the config stored in the checkpoint")

    @property
    def position(self) -> tuple[int, int, int]:
        """``(epoch, step, batch)`` the checkpoint was written at (zeros for a model that only evaluates)."""
        t = self.training
        return (t.epoch, t.step, t.batch) if t is not None else (0, 0, 0)

    def save(self, path: str | Path) -> None:
        """Write atomically (unique temporary file, fsync, rename): on failure ``path`` keeps the previous
        checkpoint; a full disk or another OS error (permissions, a missing folder) raises
        :class:`CheckpointWriteError`; anything else (e.g. an object that cannot be saved) propagates."""
        path = Path(path)
        if not path.parent.is_dir():
            raise CheckpointWriteError(f"cannot write checkpoint {path}: folder '{path.parent}' does not exist")
        payload = self._payload()
        try:
            atomic_write(path, lambda tmp: torch.save(payload, tmp))
        except OSError as e:
            message = (f"{e}; free some space, then resume with --resume" if isinstance(e, DiskFullError) else
                       f"cannot write checkpoint {path}: {e.strerror or e} (the previous checkpoint, if any, is kept)")
            err = CheckpointWriteError(message)
            err.errno = e.errno
            raise err from None

    def _payload(self) -> dict[str, object]:
        out: dict[str, object] = {"model": self.model, "config": _plain(self.config), "num_classes": self.num_classes,
                                  "class_names": [str(n) for n in self.class_names], "history": _plain(self.history),
                                  "loss": self.loss, "stage2": {"method": self.method, "tau": self.tau}}
        if self.training is not None:
            out.update(asdict_shallow(self.training))
        return out

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Read a checkpoint (``weights_only=True``: no code from a checkpoint file). :class:`FileNotFoundError`
        when there is no file; :class:`CheckpointError` ("cannot load checkpoint PATH: REASON") for an empty,
        truncated, foreign or unsafe file."""
        state = _read(Path(path), map_location)
        stage2 = state.get("stage2") or {}
        training = None
        if state.get("optimizer") is not None:
            training = TrainingState(stage=int(state["stage"]), epoch=int(state["epoch"]), step=int(state["step"]),
                                     optimizer=state["optimizer"], scheduler=state["scheduler"],
                                     sampler=state["sampler"], rng=state["rng"],
                                     scaler=state.get("scaler"), batch=int(state.get("batch", 0)),
                                     world_size=state.get("world_size"))
        names = state.get("class_names") or [str(i) for i in range(int(state.get("num_classes", 0)))]
        return cls(model=state["model"], config=state.get("config") or {}, num_classes=int(state.get("num_classes",
                   len(names))), class_names=list(names), history=list(state.get("history") or []),
                   training=training, loss=state.get("loss"), method=stage2.get("method"), tau=stage2.get("tau"))

    def load_into(self, model: nn.Module, path: str | Path,
                  what: str = "the model rebuilt from the run's config") -> None:
        """Load the weights into ``model``; a :class:`CheckpointError` naming ``path`` when they do not fit."""
        try:
            model.load_state_dict(self.model)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"the checkpoint {path} does not fit {what} (expected the same model, head and "
                                  f"number of classes): {first}") from None


def asdict_shallow(state: TrainingState) -> dict[str, object]:
    """The training state's fields as payload keys (the tensors themselves, not copies)."""
    return dict(vars(state))


def _plain(obj: object) -> object:
    """Plain dicts / lists / numbers (checkpoint-safe for ``weights_only`` loading)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _read(path: Path, map_location: str | torch.device) -> Mapping[str, Any]:
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
    if "model" not in state:
        raise CheckpointError(f"cannot load checkpoint {path}: it holds no model weights ('model'; keys: "
                              f"{', '.join(sorted(map(str, state))[:8])}; not an ltcls checkpoint)")
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
