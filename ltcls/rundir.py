"""The run directory: the one module that names a run's files, knows whether a run finished, and locks it.

A run directory holds ``config.yaml`` (the resolved config), ``checkpoint.pt`` (written every epoch, see
:class:`ltcls.engine.checkpoint.Checkpoint`), ``metrics.json`` (written when the run finishes, so a run is
*finished* when all three exist), ``train.log``, TensorBoard events in ``tb/``, and for a stage-2 run
``comparison.md``; a stage-1 run may hold a ``feature_cache/`` of its frozen backbone and its stage-2 runs
(``stage2_METHOD/``). Every other module asks a :class:`RunDir` for these paths.

:class:`RunDirLock` takes an exclusive, non-blocking ``fcntl.flock`` on ``RUN_DIR/.lock`` and writes the
holder's PID into it. The kernel drops the lock when the process ends however it ends (SIGKILL included), so
a killed run never leaves a stale lock: the ``.lock`` file itself stays and is harmless. A second run into the
same directory gets :class:`RunDirBusy` naming the directory and the holder's PID.

Torch-free (the command line uses it before importing the engine); POSIX only (``fcntl``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from types import TracebackType

from ltcls import config as C
from ltcls.io import atomic_write_text, is_temp_file

log = logging.getLogger("ltcls")

CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
LOG = "train.log"
TENSORBOARD = "tb"
COMPARISON = "comparison.md"
FEATURE_CACHE = "feature_cache"
EVAL_SCRATCH = "eval_scratch"
LOCK = ".lock"
#: The files that make a run directory a finished run, in the order they are checked.
FINISHED = (CONFIG, CHECKPOINT, METRICS)
#: What a run writes into its directory (files and folders); no other command may write over them.
RUN_FILES = (CONFIG, CHECKPOINT, METRICS, LOG, TENSORBOARD, COMPARISON, FEATURE_CACHE, EVAL_SCRATCH, LOCK)


class RunDirError(OSError):
    """The run directory cannot be used (not creatable, not writable, in use, holding another run)."""


class RunDirBusy(RunDirError):
    """Another live process holds the run directory's lock."""

    def __init__(self, run_dir: Path, pid: int | None) -> None:
        self.run_dir, self.pid = run_dir, pid
        holder = f"PID {pid}" if pid is not None else "PID unknown"
        super().__init__(f"run directory '{run_dir}' is in use by another ltcls process ({holder}); wait for it "
                         "to finish or stop it, or choose another --work-dir")


class NotFinishedError(FileNotFoundError):
    """A finished run was expected; the message names the directory and the first missing file."""


class RunDir:
    """A run directory (it need not exist yet): its files, whether it holds a (finished) run, its lock."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ------------------------------------------------------------------------------------------- files
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def comparison_path(self) -> Path:
        return self.path / COMPARISON

    def feature_cache(self, split: str, views: int) -> Path:
        """Where a frozen backbone's features of ``split`` (``views`` augmented views) are cached."""
        return self.path / FEATURE_CACHE / f"{split}_views{views}.pt"

    @property
    def eval_scratch(self) -> Path:
        """Where an evaluation keeps its intermediate files (LVIS detections as shards, removed afterwards): in
        the run directory, which every process of a multi-node job reaches."""
        return self.path / EVAL_SCRATCH

    def stage2(self, method: str) -> RunDir:
        """The default directory of this run's second stage ``method``."""
        return RunDir(self.path / f"stage2_{method}")

    def eval_dir(self, name: str) -> Path:
        """The default output folder of ``ltcls-eval`` on a split (or a split file's stem)."""
        return self.path / f"eval_{name}"

    def owns(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` is this run directory, one of the files or folders a run writes into it, or lies inside
        one of them (an output of another command must never replace them)."""
        target = Path(os.path.abspath(path))
        root = Path(os.path.abspath(self.path))
        if target == root:
            return True
        return any(target == root / name or root / name in target.parents for name in RUN_FILES)

    # -------------------------------------------------------------------------------------------- state
    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def holds_run(self) -> bool:
        """A run has started here (a checkpoint) or finished here (metrics)."""
        return self.has_checkpoint() or self.metrics_path.is_file()

    def missing(self) -> str | None:
        """The first file of :data:`FINISHED` that is missing, or None for a finished run."""
        return next((name for name in FINISHED if not (self.path / name).is_file()), None)

    def is_finished(self) -> bool:
        return self.missing() is None

    def require_finished(self, what: str = "run") -> None:
        """Raise :class:`NotFinishedError` naming the directory and the missing file (and a live run's PID)."""
        if not self.path.is_dir():
            raise NotFinishedError(f"no run directory '{self.path}'")
        name = self.missing()
        if name is None:
            return
        hint = {METRICS: " (has the run finished?)"}.get(name, "")
        pid = self.holder()
        busy = f"; a run is in progress there (PID {pid})" if pid is not None else ""
        raise NotFinishedError(f"{self.path} is not a finished {what}: {name} is missing{hint}{busy}")

    def config(self, allow_empty: bool = False) -> C.Config:
        """The resolved config the run stored (errors name the file; ``allow_empty``: an emptied file resolves to
        the defaults, so a comparison names the keys that differ)."""
        return C.load(self.config_path, allow_empty=allow_empty)

    def metrics(self) -> dict[str, object]:
        """The run's ``metrics.json``; an unreadable file is a ``ValueError`` naming it."""
        try:
            return json.loads(self.metrics_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.metrics_path} is not valid json ({e}); was it written by ltcls?") from None

    def stage1(self) -> RunDir | None:
        """The stage-1 run a stage-2 run was made from (``stage2.from_run`` of its config), else None."""
        origin = self.config().stage2.from_run
        return RunDir(origin) if origin else None

    # ------------------------------------------------------------------------------------------ writing
    def write_config(self, cfg: C.Config) -> None:
        atomic_write_text(self.config_path, C.dump(cfg))

    def write_metrics(self, report: object) -> None:
        atomic_write_text(self.metrics_path, json.dumps(report, indent=2) + "\n")

    def write_comparison(self, text: str) -> None:
        atomic_write_text(self.comparison_path, text)

    def refuse_existing(self) -> None:
        """A :class:`RunDirError` if this directory already holds a run (naming a live holder's PID)."""
        for existing in (self.checkpoint_path, self.metrics_path):
            if existing.exists():
                pid = self.holder()
                if pid is not None:
                    raise RunDirBusy(self.path, pid)
                raise RunDirError(f"{self.path} already holds a run ({existing.name}); pass --resume to continue "
                                  "it, or --work-dir NEW_DIR for a new run (nothing is overwritten)")

    def remove_stale_temps(self) -> list[Path]:
        """Remove the temporary files an interrupted atomic write left under this directory (call it only while
        holding the lock), logging each; returns them."""
        removed = []
        for tmp in sorted(self.path.rglob("*")):
            if tmp.is_file() and not tmp.is_symlink() and is_temp_file(tmp):
                tmp.unlink()
                log.warning("removed %s, left by an interrupted write", tmp)
                removed.append(tmp)
        return removed

    # --------------------------------------------------------------------------------------------- lock
    def lock(self) -> RunDirLock:
        return RunDirLock(self.path)

    def holder(self) -> int | None:
        """The PID holding this directory's lock, or None."""
        return RunDirLock.holder(self.path)


def refuse_run_files(path: str | os.PathLike, what: str = "--out") -> None:
    """A :class:`RunDirError` if writing ``path`` would replace a run's own files: ``path`` is a run directory,
    one of the files or folders a run keeps there, or lies inside one (outputs of other commands go elsewhere,
    e.g. ``RUN_DIR/eval_test/``)."""
    target = Path(os.path.abspath(path))
    for folder in (target, *target.parents):
        run = RunDir(folder)
        if run.config_path.is_file() and run.owns(target):
            where = ("is the run directory itself" if folder == target else
                     f"is one of the run's own files ({target.relative_to(folder).parts[0]}) in {folder}")
            raise RunDirError(f"{what} '{path}' {where}; a command never writes over a run's files: choose another "
                              "path")


class RunDirLock:
    """Exclusive lock on a run directory for the life of a run (context manager; creates the directory).

    ``with RunDirLock(work_dir): ...`` raises :class:`RunDirBusy` if another process (or another lock object
    of this process) holds it. The lock is an ``flock`` on an open file description: a forked child (e.g. a
    DataLoader worker) shares it, and it is released when every holder of that description has closed it or
    died. The ``.lock`` file is never deleted (deleting it would let two processes lock two different files).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunDirLock:
        if self._fd is not None:
            raise RuntimeError(f"the lock on '{self.run_dir}' is already held by this object")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RunDirError(f"cannot use run directory '{self.run_dir}': {e.strerror or e} "
                              "(expected a writable folder)") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise RunDirBusy(self.run_dir, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (the PID is cleared first); a no-op if not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor of the open file description drops the flock

    @staticmethod
    def holder(run_dir: str | os.PathLike) -> int | None:
        """The PID holding ``run_dir``'s lock, or None if nobody holds it (or the PID is not written yet)."""
        path = Path(run_dir) / LOCK
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_pid(fd)
            return None
        finally:
            os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None
