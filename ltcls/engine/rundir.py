"""The run directory: an OS lock held for the life of a run, atomic writes, and clean-up after a killed write.

:class:`RunDirLock` takes an exclusive, non-blocking ``fcntl.flock`` on ``RUN_DIR/.lock`` and writes the
holder's PID into it. The kernel drops the lock when the process ends however it ends (SIGKILL included),
so a killed run never leaves a stale lock: the ``.lock`` file itself stays and is harmless. A second run
into the same directory gets :class:`RunDirBusy` naming the directory and the holder's PID.

:func:`atomic_write` writes a file next to its destination (``.NAME.<random>.tmp``), fsyncs it and renames it over
the destination, so a reader sees the old file or the new one, never half of one; on failure the temporary file
is removed, and a full disk is reported as :class:`DiskFullError` ("no space left on device while writing
PATH"). :func:`remove_stale_temps` removes the ``*.tmp`` a killed write left behind.

POSIX only (``fcntl``), like the rest of the trainer's process handling.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

from ltcls.io import (  # noqa: F401  (re-exported: the engine's writers import them from here)
    TMP_SUFFIX,
    DiskFullError,
    atomic_write,
    atomic_write_text,
    is_disk_full,
)

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunDirError(OSError):
    """The run directory cannot be used (not creatable, not writable, or in use)."""


class RunDirBusy(RunDirError):
    """Another live process holds the run directory's lock."""

    def __init__(self, run_dir: Path, pid: int | None) -> None:
        self.run_dir, self.pid = run_dir, pid
        holder = f"PID {pid}" if pid is not None else "PID unknown"
        super().__init__(f"run directory '{run_dir}' is in use by another ltcls process ({holder}); wait for it "
                         "to finish or stop it, or choose another --work-dir")


class RunDirLock:
    """Exclusive lock on a run directory for the life of a run (context manager; creates the directory).

    ``with RunDirLock(work_dir): ...`` raises :class:`RunDirBusy` if another process (or another lock object
    of this process) holds it. The lock is an ``flock`` on an open file description: a forked child (e.g. a
    DataLoader worker) shares it, and it is released when every holder of that description has closed it or
    died. The ``.lock`` file is never deleted (deleting it would let two processes lock two different files).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
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
        path = Path(run_dir) / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
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


# ----------------------------------------------------------------------------------------- atomic writes


def remove_stale_temps(run_dir: str | os.PathLike) -> list[Path]:
    """Remove every ``*.tmp`` file under ``run_dir`` (left by a write that was killed before its rename),
    logging each; returns them. Call it only while holding the :class:`RunDirLock`."""
    removed = []
    for tmp in sorted(Path(run_dir).rglob("*" + TMP_SUFFIX)):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink()
            logger.warning("removed %s, left by an interrupted write", tmp)
            removed.append(tmp)
    return removed
