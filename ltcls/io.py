"""Atomic file writes, shared by every layer and every command: a file's new content is written to a temporary
file of a unique name in the same folder (``.NAME.<random>.tmp``), fsynced and renamed over the destination, and
the folder is fsynced. A reader sees the old file or the new one, never half of one; a crash, an interrupt or a
full disk never leaves a partial file under the final name, and the previous content survives; two processes
writing the same path never share a temporary file (the last rename wins).

:class:`AtomicFiles` does the same for a set of files that belong together (``ltcls-eval``'s outputs): every
file is written and fsynced first, and only then are they all renamed, so a failure while writing changes none.

A failure is one exception naming the destination: :class:`DiskFullError` for a full disk (or quota),
:class:`WriteError` for any other OS error (permission, a missing folder, a read-only filesystem); errors that
are not I/O (an object that cannot be pickled) and interrupts propagate unchanged.

The temporary file is created with ``os.open(..., O_CREAT | O_EXCL, 0o666)`` rather than ``tempfile.mkstemp``,
so the final file gets the usual permissions (0o666 less the umask) instead of mkstemp's private 0o600.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

#: Every temporary file this module writes ends in this suffix (``remove_stale_temps`` finds them by it).
TMP_SUFFIX = ".tmp"
#: Below this many free bytes on the destination's filesystem, a failed write counts as a full disk.
DISK_FULL_BYTES = 4 << 20
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: Longest destination name kept in a temporary file's name (file names are limited to 255 bytes).
_NAME_KEPT = 200

Writer = Callable[[Path], None]


class WriteError(OSError):
    """A file could not be written (see the message: it names the file); the destination keeps its previous
    content, or stays absent. ``errno`` / ``strerror`` are the underlying error's."""

    def __init__(self, message: str, cause: OSError | None = None) -> None:
        super().__init__(message)  # one argument: str() is the message alone, without "[Errno N]"
        self.message = message
        if cause is not None:
            self.errno, self.strerror = cause.errno, cause.strerror

    def __str__(self) -> str:
        return self.message


class DiskFullError(WriteError):
    """A write failed because the filesystem is full; the destination still holds its previous content."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno, self.strerror = errno.ENOSPC, os.strerror(errno.ENOSPC)


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


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_write` (left behind only by a killed process)."""
    return Path(path).name.endswith(TMP_SUFFIX)


def _new_temp(path: Path) -> Path:
    """Create an empty temporary file of a unique name next to ``path`` (``.NAME.<16 hex>.tmp``)."""
    while True:
        tmp = path.with_name(f".{path.name[:_NAME_KEPT]}.{secrets.token_hex(8)}{TMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:  # 2**64 names: only a leftover of the same draw; draw again
            continue
        os.close(fd)
        return tmp


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a filesystem that cannot fsync a folder is not an error."""
    try:
        _fsync(folder)
    except OSError:
        pass


def _failure(err: BaseException, path: Path, kept: str) -> BaseException:
    """The exception to raise for ``err`` while writing ``path``: :class:`DiskFullError`, :class:`WriteError`
    (another OS error), or ``err`` itself (not an I/O error: an interrupt, a bug, an object torch cannot save)."""
    if isinstance(err, WriteError) or not isinstance(err, Exception):
        return err
    if is_disk_full(err, path.parent):
        return DiskFullError(f"no space left on device while writing {path} (the partial file was removed; {kept})")
    if isinstance(err, OSError):
        return WriteError(f"cannot write {path}: {err.strerror or err} ({kept})", err)
    return err


def _kept(path: Path) -> str:
    return f"the previous {path.name}, if any, is kept"


def _stage(path: Path, write: Writer, kept: str) -> Path:
    """Write ``path``'s new content to a new temporary file beside it and fsync it; returns the temporary file.
    On failure the temporary file is removed and the error translated (:func:`_failure`)."""
    tmp: Path | None = None
    try:
        tmp = _new_temp(path)
        write(tmp)
        _fsync(tmp)
        return tmp
    except BaseException as err:
        failure = _failure(err, path, kept)  # the free space is looked at before the partial file goes
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if failure is err:
            raise
        raise failure from err


def _publish(tmp: Path, path: Path, replace: bool) -> None:
    """Rename ``tmp`` to ``path``; with ``replace=False`` an existing ``path`` is never replaced (a hard link
    then fails with ``FileExistsError``). ``tmp`` is gone afterwards in every case."""
    try:
        if replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # atomic "create if absent" (POSIX has no portable rename without replace)
        except FileExistsError:
            raise FileExistsError(f"{path} already exists (it was left as it is)") from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if os.path.lexists(path):  # a filesystem without hard links: check, then rename
                raise FileExistsError(f"{path} already exists (it was left as it is)") from None
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Writer, replace: bool = True) -> None:
    """Call ``write(tmp)`` to write ``path``'s new content to a temporary file beside it, fsync it, rename it
    over ``path`` and fsync the folder.

    If anything fails (or the process is interrupted in Python), the temporary file is removed and ``path``
    keeps its previous content: a full disk raises :class:`DiskFullError`, another OS error
    :class:`WriteError` (both name ``path``); other errors propagate unchanged. ``replace=False`` never
    replaces an existing ``path`` (``FileExistsError``), even one created while ``write`` ran.
    """
    path = Path(path)
    tmp = _stage(path, write, _kept(path))
    try:
        _publish(tmp, path, replace)
    except FileExistsError:
        raise
    except BaseException as err:
        failure = _failure(err, path, _kept(path))
        if failure is err:
            raise
        raise failure from err
    _fsync_folder(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, replace: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`): config.yaml, metrics.json."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), replace)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, replace: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`): figures, binary outputs."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data), replace)


class AtomicFiles:
    """A set of files written all together or not at all (a context manager).

    Each :meth:`write` writes a file's new content to its own temporary file and fsyncs it; leaving the ``with``
    block without an error renames them all over their destinations, in the order written (write last the file
    whose presence marks a complete set, e.g. ``metrics.json``), then fsyncs their folders. An error inside the
    block (a full disk while writing any of them, an interrupt) removes every temporary file: no destination
    changes. Only a crash between two of the final renames (microseconds) can leave part of a set renamed.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def write(self, path: str | os.PathLike, write: Writer) -> None:
        """Write ``path``'s new content with ``write(tmp)`` (as :func:`atomic_write`); renamed at the end."""
        path = Path(path)
        kept = f"nothing in {path.parent} was changed"
        self._staged.append((_stage(path, write, kept), path))

    def write_text(self, path: str | os.PathLike, text: str) -> None:
        self.write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def write_bytes(self, path: str | os.PathLike, data: bytes) -> None:
        self.write(path, lambda tmp: tmp.write_bytes(data))

    def commit(self) -> None:
        """Rename every written file over its destination (in order) and fsync their folders."""
        staged, self._staged = self._staged, []
        try:
            for tmp, path in staged:
                try:
                    os.replace(tmp, path)
                except OSError as e:
                    raise _failure(e, path, _kept(path)) from e
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
        for folder in dict.fromkeys(path.parent for _, path in staged):
            _fsync_folder(folder)

    def discard(self) -> None:
        """Remove every written temporary file; no destination changes."""
        staged, self._staged = self._staged, []
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFiles:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
