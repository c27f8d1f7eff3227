"""Atomic file writes, shared by every layer: a file is written to ``NAME.tmp`` next to it, fsynced and renamed
over it, so a crash, an interrupt or a full disk never leaves half a file and the previous content survives."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".tmp"
#: Below this many free bytes on the destination's filesystem, a failed write counts as a full disk.
DISK_FULL_BYTES = 4 << 20
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write failed because the filesystem is full; the destination still holds its previous content."""

    def __init__(self, message: str) -> None:
        super().__init__(message)  # one argument: str() is the message alone, without "[Errno 28]"
        self.errno = errno.ENOSPC


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_write` (left behind only by a killed process)."""
    return Path(path).name.endswith(TMP_SUFFIX)


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
