"""The run directory: an OS lock held for the life of a run, atomic writes, and clean-up after a killed write.

:class:`RunDirLock` takes an exclusive, non-blocking ``fcntl.flock`` on ``RUN_DIR/.lock`` and writes the
holder's PID into it. The kernel drops the lock when the process ends however it ends (SIGKILL included),
so a killed run never leaves a stale lock: the ``.lock`` file itself stays and is harmless. A second run
into the same directory gets :class:`RunDirBusy` naming the directory and the holder's PID.

:func:`atomic_write` writes a file next to its destination (``NAME.tmp``), fsyncs it and renames it over the
destination, so a reader sees the old file or the new one, never half of one; on failure the temporary file
is removed, and a full disk is reported as :class:`DiskFullError` ("no space left on device while writing
PATH"). :func:`remove_stale_temps` removes the ``*.tmp`` a killed write left behind.

POSIX only (``fcntl``), like the rest of the trainer's process handling.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
TMP_SUFFIX = ".tmp"
#: Below this many free bytes on the destination's filesystem, a failed write counts as a full disk.
DISK_FULL_BYTES = 4 << 20
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class RunDirError(OSError):
    """The run directory cannot be used (not creatable, not writable, or in use)."""


class RunDirBusy(RunDirError):
    """Another live process holds the run directory's lock."""

    def __init__(self, run_dir: Path, pid: int | None) -> None:
        self.run_dir, self.pid = run_dir, pid
        holder = f"PID {pid}" if pid is not None else "PID unknown"
        super().__init__(f"run directory '{run_dir}' is in use by another ltcls process ({holder}); wait for it "
                         "to finish or stop it, or choose another --work-dir")


class DiskFullError(OSError):
    """A write failed because the filesystem is full; the destination still holds its previous content."""

    def __init__(self, message: str) -> None:
        super().__init__(message)  # one argument: str() is the message alone, without "[Errno 28]"
        self.errno = errno.ENOSPC


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


def tmp_path_of(path: str | os.PathLike) -> Path:
    """The temporary file :func:`atomic_write` writes before renaming: ``NAME.tmp`` next to ``path``."""
    path = Path(path)
    return path.with_name(path.name + TMP_SUFFIX)


def is_disk_full(err: BaseException, folder: str | os.PathLike) -> bool:
    """Whether ``err`` (or an exception it chains) is ENOSPC / EDQUOT, or is an I/O-like failure (``OSError``,
    ``RuntimeError``) while the filesystem of ``folder`` has almost no space left (torch's zip writer loses the
    errno: ``RuntimeError ... unexpected pos``)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    if not isinstance(err, (OSError, RuntimeError)):
        return False  # e.g. an object that cannot be pickled: never a disk problem
    try:
        return shutil.disk_usage(folder).free < DISK_FULL_BYTES
    except OSError:
        return False


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to write ``path``'s new content to ``path.tmp``, fsync it, rename it over ``path``.

    If anything fails (or the process is interrupted in Python), ``path.tmp`` is removed and ``path`` keeps
    its previous content; a full disk (checked before the partial file is removed) raises
    :class:`DiskFullError`; other errors propagate unchanged.
    """
    path = Path(path)
    tmp = tmp_path_of(path)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        full = isinstance(err, Exception) and is_disk_full(err, path.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFullError(f"no space left on device while writing {path} (the partial file was removed; "
                                f"the previous {path.name}, if any, is kept)") from err
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`): for config.yaml, metrics.json."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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
