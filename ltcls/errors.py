"""User errors, the one-line way every command reports them (``PROG: error: MESSAGE`` and an exit status), and
the console log every command writes.

A :class:`UserError` is a failure the user can act on (a bad value, a missing file, a run directory in use, a
full disk). :func:`user_errors` turns the exception types a step is expected to raise into one; every command's
:func:`ltcls.cli.use.run_command` prints it in one line (``--debug`` / ``LTCLS_DEBUG=1`` show the traceback).
Torch-free."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ltcls.config import ConfigError

#: Errors found before any work that are the user's input (values, split files, paths): one line, exit 2.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ValueError, KeyError, FileNotFoundError,
                                                 NotADirectoryError, IsADirectoryError, PermissionError)


class UserError(Exception):
    """A failure reported as one line ``PROG: error: MESSAGE`` with exit status ``code`` (2: bad input found
    before any work; 1: a run or command that failed cleanly after starting)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or written, or does not fit its model; the message names the file and the
    reason in one line."""


def one_line(err: BaseException) -> str:
    """An exception's message on one line (a KeyError's without quotes; a DataLoader worker's re-raised
    traceback text reduced to its last line)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    text = str(text).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(err).__name__


@contextmanager
def user_errors(kinds: tuple[type[BaseException], ...], code: int = 2) -> Iterator[None]:
    """Turn ``kinds`` raised inside into :class:`UserError` (the original kept as ``__cause__`` for --debug)."""
    try:
        yield
    except UserError:
        raise
    except kinds as e:
        raise UserError(one_line(e), code) from e


def debug_requested(flag: bool = False) -> bool:
    """``--debug`` (``flag``) or ``LTCLS_DEBUG`` set (to anything but empty / 0): show tracebacks of user errors."""
    return flag or os.environ.get("LTCLS_DEBUG", "") not in ("", "0")


def is_main_process() -> bool:
    """Rank 0 of a torchrun job (``RANK``), or a single process; known before torch is imported."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """The number of processes of a torchrun job (``WORLD_SIZE``; 1 without torchrun), known before torch is
    imported."""
    return int(os.environ.get("WORLD_SIZE", "1"))


#: The format of every command's log lines (console and train.log).
LOG_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")


def setup_logging(level: int = logging.INFO) -> None:
    """``ltcls`` log lines from ``level`` up on stderr (stdout is left to what the command prints); replaces the
    handlers of an earlier call."""
    logger = logging.getLogger("ltcls")
    logger.setLevel(level)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LOG_FORMAT)
    logger.addHandler(handler)
    logger.propagate = False
