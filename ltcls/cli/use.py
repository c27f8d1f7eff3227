"""What ``ltcls-eval``, ``ltcls-predict`` and ``ltcls-export`` share: a RUN_DIR argument, logging to the
console (``ltcls-train`` uses the same), plug-ins loaded, and every expected failure as one line
``PROG: error: MESSAGE`` with exit status 2. Torch-free: the commands import the engine after parsing their
arguments."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from ltcls.io import WriteError
from ltcls.plugins import load_plugins

#: Failures reported as one line (a missing file, a bad value, an unknown name); an unreadable or unfitting
#: checkpoint too (``CheckpointError``, a RuntimeError: see :func:`run_command`). Other errors keep their traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError)


def parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """An argument parser with RUN_DIR first (plug-ins loaded, so their names are known)."""
    load_plugins()
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="a finished run directory (stage 1, or stage 2: RUN_DIR/stage2_METHOD) with config.yaml, "
                        "checkpoint.pt and metrics.json")
    return p


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


def run_command(p: argparse.ArgumentParser, argv: Sequence[str] | None,
                command: Callable[[argparse.Namespace], int]) -> int:
    """Parse ``argv``, set up logging and run ``command(args)``; an expected failure ends the process with
    ``PROG: error: MESSAGE`` (one line) and exit status 2 (1 for an output that could not be written)."""
    args = p.parse_args(argv)
    setup_logging()
    try:
        return command(args)
    except (*EXPECTED_ERRORS, RuntimeError) as e:
        if isinstance(e, RuntimeError):
            from ltcls.engine.checkpoint import CheckpointError  # lazy: the command imported the engine already

            if not isinstance(e, CheckpointError):
                raise  # an internal error: its traceback
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        code = 1 if isinstance(e, WriteError) else 2  # an output that could not be written (disk full): exit 1
        p.exit(code, f"{p.prog}: error: {' '.join(str(message).split())}\n")
    return 2  # not reached: p.exit raises SystemExit
