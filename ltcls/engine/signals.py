"""Clean interrupts: SIGINT (Ctrl-C) and SIGTERM (what SLURM and other schedulers send before killing a job)
become a flag that the training loop polls between steps, so a run stops at a safe point instead of in the
middle of a step or a file write.

    with GracefulInterrupt() as interrupt:
        for step in ...:
            train_step()
            if interrupt.requested:
                save_or_note_checkpoint()
                raise Interrupted(interrupt.signal_name, interrupt.exit_code)

A second signal while the run is stopping falls back to the previous behaviour (Ctrl-C raises
``KeyboardInterrupt``, SIGTERM terminates), so a stuck run can still be stopped. Handlers are installed
only in the main thread (Python delivers signals there only) and restored on exit.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import Any

logger = logging.getLogger(__name__)

#: The signals a run stops on cleanly; the shell's exit status for each is 128 + the signal number.
SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: The innermost entered :class:`GracefulInterrupt` (what :func:`stop_requested` reads), or None.
_ACTIVE: list[GracefulInterrupt] = []


def stop_requested() -> bool:
    """Whether the active :class:`GracefulInterrupt` (entered by the command around a run) got a signal: the
    training loop polls this between steps without being handed the object. False when none is active."""
    return bool(_ACTIVE) and _ACTIVE[-1].requested


def active() -> GracefulInterrupt | None:
    """The innermost entered :class:`GracefulInterrupt`, or None."""
    return _ACTIVE[-1] if _ACTIVE else None


def exit_code_of(signum: int) -> int:
    """The shell convention for a process stopped by signal ``signum``: 128 + signum (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


class Interrupted(Exception):
    """A run stopped at a safe point on a signal; the CLI reports it in one line and exits with ``exit_code``."""

    def __init__(self, signal_name: str, exit_code: int, message: str = "", has_checkpoint: bool = True) -> None:
        super().__init__(message or f"interrupted by {signal_name}")
        self.signal_name, self.exit_code = signal_name, exit_code
        #: Whether the run has a checkpoint to ``--resume`` from (none yet: Ctrl-C in the first epoch).
        self.has_checkpoint = has_checkpoint


class GracefulInterrupt:
    """Context manager turning ``signals`` into :attr:`requested` (with :attr:`signal_name`, :attr:`exit_code`).

    Outside the main thread it installs nothing (:attr:`installed` is False) and :attr:`requested` stays
    False. Not re-entrant: one instance per run.
    """

    def __init__(self, signals: Sequence[int] = SIGNALS) -> None:
        self.signals = tuple(signals)
        self.signum: int | None = None
        self.installed = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal arrived: the loop should stop at its next safe point."""
        return self.signum is not None

    @property
    def signal_name(self) -> str | None:
        """``'SIGINT'`` / ``'SIGTERM'`` once a signal arrived."""
        return signal.Signals(self.signum).name if self.signum is not None else None

    @property
    def exit_code(self) -> int | None:
        """130 for SIGINT, 143 for SIGTERM (128 + the signal number) once a signal arrived."""
        return exit_code_of(self.signum) if self.signum is not None else None

    def raise_if_requested(self, message: str = "") -> None:
        """Raise :class:`Interrupted` if a signal arrived (``message``: e.g. where the last checkpoint is)."""
        if self.signum is not None:
            raise Interrupted(self.signal_name, self.exit_code, message)

    def __enter__(self) -> GracefulInterrupt:
        _ACTIVE.append(self)
        if threading.current_thread() is not threading.main_thread():
            logger.debug("not in the main thread: SIGINT / SIGTERM keep their handlers")
            return self
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        self.installed = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self._restore()

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self.installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            logger.warning("%s received: stopping at the next safe point (send it again to stop at once)",
                           signal.Signals(signum).name)
            return
        # A second signal: give up waiting; behave as if this context had never been entered.
        previous = self._previous.get(signum, signal.SIG_DFL)
        self._restore()
        if callable(previous):
            previous(signum, frame)  # Python's SIGINT handler: raises KeyboardInterrupt
        elif previous != signal.SIG_IGN:
            os.kill(os.getpid(), signum)  # SIG_DFL (or None): the default action, e.g. terminate on SIGTERM
