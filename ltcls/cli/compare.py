"""``ltcls-compare``: train a grid of shipped recipes x seeds on one base config and write the method table
(``comparison.md`` / ``.csv`` / ``.png``). Each run is the real command, called in-process: ``ltcls-train`` for
stage 1 and stage 2, ``ltcls-eval`` for evaluation-time options. Torch-free until the first run starts."""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ltcls import config as C
from ltcls.cli.eval import main as eval_main
from ltcls.cli.train import train_main
from ltcls.cli.use import setup_logging
from ltcls.compare import Grid, Interrupted, Launcher, Outcome, plan, rows_of_runs, run_grid, write_outputs
from ltcls.plugins import load_plugins
from ltcls.recipes import RECIPES, describe

log = logging.getLogger("ltcls")

DESCRIPTION = """\
Train every METHOD (a shipped recipe) with every SEED on the base config and write the method table:
WORK_DIR/comparison.md, comparison.csv (one row per method: seeds, mean and sample sd of overall / many / medium
/ few top-1, the paired differences to the first method over the seeds both have, the seeds without a result)
and comparison.png (grouped bars with sd error bars).

Each run is the real command: ltcls-train --config BASE --work-dir WORK_DIR/seedS/METHOD --set ... train.seed=S
for stage-1 recipes; ltcls-train --stage2 M --from WORK_DIR/seedS/ce ... for second stages, which share one
stage 1 per seed; ltcls-eval for evaluation-time options. Only train.seed varies: the data (and its split's
data.seed) stay the base config's, so every method sees the same images. Runs that finished are re-read, runs
that were stopped are resumed (stop with Ctrl-C at any time; the same command continues), a run that fails is
reported with its error line and its cells are left out; the rest of the grid goes on. The arguments of each
run are kept in WORK_DIR/grid.json: a run directory started with other arguments or other values in the base
config is not reused.
--jobs N runs up to N runs at once, each in its own process (a second stage starts once its stage 1 has
finished): each run's console output goes to WORK_DIR/logs/seedS_RUN.log, and each gets CPUs / N torch threads
unless OMP_NUM_THREADS is set. Ctrl-C (or SIGTERM) is passed on to the running runs, which stop as a single
ltcls-train does; no new run starts.
Exit status: 0 every cell has a result; 1 some cells are missing (the table says which); 2 a usage error;
130 / 143 interrupted (the table so far is written)."""

EXAMPLES = """\
methods (recipes on top of the base config; --set applies to every stage-1 run, before the recipe):
{recipes}

examples:
  ltcls-compare --config configs/digits_lt_ce.yaml --methods ce,seesaw,crt --seeds 0 1 2 --work-dir runs/cmp
  ltcls-compare --config configs/digits_lt_ce.yaml --methods all --work-dir runs/cmp_all --jobs 2
  ltcls-compare --config my_data.yaml --methods ce,crt,tau_norm --seeds 0 1 --work-dir runs/quick \\
      --set train.epochs=2
"""


def _methods(text: str) -> list[str]:
    names = list(RECIPES) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from: {', '.join(RECIPES)} (or all)")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    load_plugins()
    p = argparse.ArgumentParser(prog="ltcls-compare", description=DESCRIPTION,
                                epilog=EXAMPLES.format(recipes=describe()),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="BASE.yaml", required=True, help="the base config every recipe starts from")
    p.add_argument("--methods", type=_methods, required=True, metavar="M1,M2,...",
                   help="comma-separated recipes (see below), or 'all'; differences are to the first one")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="S",
                   help="values of train.seed (default: 0 1 2)")
    p.add_argument("--work-dir", metavar="DIR", required=True, help="where the runs and the table go")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override the base config for every stage-1 run, e.g. --set train.epochs=10")
    p.add_argument("--jobs", type=_positive, default=1, metavar="N",
                   help="runs at once, each in its own process (default: 1, one after the other in this process)")
    return p


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of runs >= 1, got '{text}'")
    return n


def _last_error_line(text: str, prog: str) -> str:
    """The last ``prog: ...`` line of a command's console output (progress bars' ``\\r`` taken as line ends)."""
    lines = text.replace("\r", "\n").splitlines()
    return next((ln.strip() for ln in reversed(lines) if ln.startswith(f"{prog}: ")), "")


class _Tee:
    """A text stream that writes through to ``stream`` and keeps the tail of what went by (the error line)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tail: collections.deque[str] = collections.deque(maxlen=64)

    def write(self, text: str) -> int:
        self.tail.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> object:  # isatty, fileno, encoding, ... of the real stream
        return getattr(self.stream, name)

    def error_line(self, prog: str) -> str:
        return _last_error_line("".join(self.tail), prog)


def launch(command: str, argv: Sequence[str]) -> Outcome:
    """Run ``ltcls-train`` / ``ltcls-eval`` in this process; its exit status and its one error line. An
    unexpected exception of a run is logged with its traceback and reported as that run's failure."""
    entry, prog = (train_main, "ltcls-train") if command == "train" else (eval_main, "ltcls-eval")
    tee = _Tee(sys.stderr)
    error = ""
    try:
        with contextlib.redirect_stderr(tee):
            code = entry(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except Exception as e:  # an internal error of one run: reported in its cell, the grid goes on
        log.exception("%s %s raised", prog, " ".join(argv))
        code, error = 1, f"{type(e).__name__}: {' '.join(str(e).split())}"
    finally:
        setup_logging()  # the run logged to its train.log too: back to the console alone
    return Outcome(code or 0, error or tee.error_line(prog))


def _log_error_line(path: Path, prog: str) -> str:
    """The one error line of a run's console log, read from the log's last 64 KiB."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
        return _last_error_line(f.read().decode(errors="replace"), prog)


class ProcessLauncher:
    """Runs each command in its own process (``python -m ltcls.cli.train`` / ``ltcls.cli.eval``), safe to call
    from several threads: its console output to ``WORK_DIR/logs/seed<S>_<run>.log``, ``threads`` torch threads
    (``OMP_NUM_THREADS``, unless set already). The processes get a session of their own, so a Ctrl-C reaches
    them once, through :meth:`forward` (a second signal stops them hard, as it does a single ltcls-train); after
    a signal nothing new starts."""

    MODULES = {"train": ("ltcls.cli.train", "ltcls-train"), "eval": ("ltcls.cli.eval", "ltcls-eval")}

    def __init__(self, work_dir: Path, threads: int, python: Sequence[str] = (sys.executable, "-m")) -> None:
        self.logs = work_dir / "logs"
        self.python = list(python)
        self.env = dict(os.environ)
        self.env.setdefault("OMP_NUM_THREADS", str(threads))
        self.children: set[subprocess.Popen] = set()
        self.signum = 0  # the signal that stopped the grid, once one came
        self._lock = threading.Lock()

    def __call__(self, command: str, argv: Sequence[str]) -> Outcome:
        module, prog = self.MODULES[command]
        out = Path(argv[list(argv).index("--out" if command == "eval" else "--work-dir") + 1])
        log_path = self.logs / f"{out.parent.name}_{out.name}.log"
        self.logs.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self.signum:
                return Outcome(128 + self.signum, f"{prog}: not started: ltcls-compare was interrupted")
            with open(log_path, "ab") as log_file:
                proc = subprocess.Popen([*self.python, module, *argv], stdout=log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
            self.children.add(proc)
        code = proc.wait()
        with self._lock:
            self.children.discard(proc)
        code = 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N
        return Outcome(code, _log_error_line(log_path, prog) if code else "")

    def forward(self, signum: int, frame: object = None) -> None:
        """A signal handler: pass ``signum`` on to every running process; start nothing new."""
        with self._lock:
            self.signum = self.signum or signum
            for proc in self.children:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)


@contextlib.contextmanager
def _forwarding(launcher: ProcessLauncher):
    """SIGINT / SIGTERM go to the runs while the grid runs (in the main thread; elsewhere they keep theirs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, launcher.forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def compare_main(argv: Sequence[str] | None = None, launcher: Launcher | None = None) -> int:
    """``ltcls-compare``. ``launcher`` runs one command (tests pass their own); by default the commands run in
    this process, or each in its own with ``--jobs`` > 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    base, work_dir = Path(args.config), Path(args.work_dir)
    try:
        runs = plan(base, args.methods, args.seeds, work_dir, args.overrides)
    except (C.ConfigError, KeyError, ValueError, OSError) as e:
        parser.exit(2, f"ltcls-compare: error: {' '.join(str(e.args[0] if e.args else e).split())}\n")
    grid = Grid(work_dir, base, runs)
    start, code = time.perf_counter(), 0
    forwarding: contextlib.AbstractContextManager = contextlib.nullcontext()
    if launcher is None and args.jobs > 1:
        launcher = ProcessLauncher(work_dir, max(1, (os.cpu_count() or 1) // args.jobs))
        forwarding = _forwarding(launcher)
    try:
        with forwarding:
            run_grid(runs, grid, launcher or launch, args.jobs)
    except Interrupted as e:
        code = e.code
        sys.stderr.write(f"ltcls-compare: {e}; run the same command again to continue\n")
    rows = rows_of_runs(runs, args.methods, args.seeds)
    command = " ".join(["ltcls-compare", "--config", str(base), "--methods", ",".join(args.methods), "--seeds",
                        *map(str, args.seeds), "--work-dir", str(work_dir),
                        *(["--set", *args.overrides] if args.overrides else []),
                        *(["--jobs", str(args.jobs)] if args.jobs > 1 else [])])
    footer = (f"{len(runs)} runs ({command}); this call: {time.perf_counter() - start:.0f} s; the runs' own wall "
              f"time over every call: {grid.wall_seconds() / 60:.1f} min (grid.json).")
    write_outputs(work_dir, rows, f"# Method table: {base}", args.seeds, footer)
    sys.stdout.write((work_dir / "comparison.md").read_text())
    if code == 0 and any(r.missing for r in rows):
        code = 1
    return code


def main(argv: Sequence[str] | None = None) -> int:
    return compare_main(argv)


if __name__ == "__main__":
    sys.exit(main())
