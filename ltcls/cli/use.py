"""What the commands share: the console log, plug-ins loaded, ``--debug``, and :func:`run_command`, which runs a
command and reports every expected failure as one line ``PROG: error: MESSAGE`` with its exit status.
Torch-free: each command imports the engine after parsing its arguments."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from ltcls.errors import (
    CheckpointError,
    UserError,
    debug_requested,
    is_main_process,
    one_line,
    setup_logging,
)
from ltcls.io import WriteError
from ltcls.plugins import load_plugins

#: Failures of ltcls-eval / -predict / -export reported as one line, exit 2 (a missing file, a bad value, an
#: unknown name, an unreadable or unfitting checkpoint); other errors keep their traceback.
USE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, CheckpointError)


def parser(prog: str, description: str, epilog: str = "", run_dir: bool = True) -> argparse.ArgumentParser:
    """An argument parser (plug-ins loaded, so their names are known) with ``--debug``, and RUN_DIR first for the
    commands that use a finished run."""
    load_plugins()
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if run_dir:
        p.add_argument("run_dir", metavar="RUN_DIR",
                       help="a finished run directory (stage 1, or stage 2: RUN_DIR/stage2_METHOD) with config.yaml, "
                            "checkpoint.pt and metrics.json")
    add_debug(p)
    return p


def add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of user errors too (or set LTCLS_DEBUG=1)")


def run_command(p: argparse.ArgumentParser, argv: Sequence[str] | None,
                command: Callable[[argparse.Namespace], int],
                expected: tuple[type[BaseException], ...] = USE_ERRORS, ctrl_c: bool = True,
                name: Callable[[argparse.Namespace], str] | None = None) -> int:
    """Parse ``argv``, set up the console log (warnings only on the other ranks of a torchrun job) and run
    ``command(args)``. A :class:`UserError`, or one of ``expected``, ends the process with ``PROG: error:
    MESSAGE`` (one line) and its exit status (2 unless the error says otherwise); ``--debug`` / ``LTCLS_DEBUG=1``
    show the traceback instead. With ``ctrl_c``, Ctrl-C is one line too (exit 130; ltcls-train handles its own:
    a run stops at a safe point). ``name(args)``: the command's name in the message (default: the program's)."""
    args = p.parse_args(argv)
    setup_logging(logging.INFO if is_main_process() else logging.WARNING)
    prog = name(args) if name is not None else p.prog
    try:
        return _interruptible(command, args, ctrl_c)
    except UserError as e:
        if debug_requested(args.debug):
            raise (e.__cause__ or e) from None
        p.exit(e.code, f"{prog}: error: {e}\n")
    except expected as e:
        if debug_requested(args.debug):
            raise
        code = 1 if isinstance(e, WriteError) else 2  # an output that could not be written (disk full): exit 1
        p.exit(code, f"{prog}: error: {one_line(e)}\n")
    return 2  # not reached: p.exit raises SystemExit


def _interruptible(command: Callable[[argparse.Namespace], int], args: argparse.Namespace, ctrl_c: bool) -> int:
    try:
        return command(args)
    except KeyboardInterrupt:
        if not ctrl_c or debug_requested(args.debug):
            raise
        raise UserError("interrupted by SIGINT; no file was written or changed (an output is written whole or not "
                        "at all)", 130) from None
