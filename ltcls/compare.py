"""``ltcls-compare``'s logic, torch-free: the grid of runs (recipes x seeds), which of them to start, resume or
re-read, and the method table (means, sample standard deviations and paired differences to the first method
over seeds) as markdown, csv and a figure.

Runs are launched by a :data:`Launcher` the command passes in (``ltcls.cli.compare`` calls ``ltcls-train`` /
``ltcls-eval``'s entry points in-process), so this module knows the commands' arguments and their run
directories' ``metrics.json``, nothing of their internals. Layout under the work directory ``DIR``::

    DIR/seed<S>/<recipe>/     one run per recipe and seed (a stage-2 or post-hoc recipe reads DIR/seed<S>/<on>/)
    DIR/grid.json             the arguments each run was started with, and its wall time
    DIR/comparison.md|csv|png the table and figure
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from ltcls import config as C
from ltcls.io import atomic_write, atomic_write_text
from ltcls.recipes import RECIPES, Recipe, needed, overrides
from ltcls.rundir import METRICS, RunDir

log = logging.getLogger("ltcls")

GROUPS = ("overall", "many", "medium", "few")
#: csv columns: the method, how many seeds it has results for, mean and sample sd of each group, the paired
#: differences to the first method (mean and sd over the seeds both have), the seeds without a result.
CSV_COLUMNS = ("method", "seeds", *[f"{g}_{s}" for g in GROUPS for s in ("mean", "sd")],
               *[f"d_{g}_{s}" for g in GROUPS for s in ("mean", "sd")], "missing")
MANIFEST = "grid.json"


@dataclass
class Outcome:
    """How a launched command ended: its exit status and, when it failed, its one error line."""

    code: int
    error: str = ""


#: ``launcher(command, argv)``: run ``ltcls-train`` (command ``train``) or ``ltcls-eval`` (``eval``) with ``argv``.
Launcher = Callable[[str, Sequence[str]], Outcome]


class Interrupted(Exception):
    """A run was stopped by SIGINT / SIGTERM: the grid stops too (a second call continues it)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Run:
    """One run of the grid at a seed: its directory, the command and arguments that produce it, the run it builds
    on, the recipes that read it (several recipes may share one run, each reading its own entry) and, once run,
    their results (``results[recipe name]``) or the run's error."""

    seed: int
    dir: Path
    command: str
    argv: list[str]
    recipes: list[Recipe]
    depends: Run | None = None
    results: dict[str, dict] = field(default_factory=dict)
    error: str = ""

    @property
    def finished(self) -> bool:
        return RunDir(self.dir).metrics_path.is_file()

    @property
    def started(self) -> bool:
        return RunDir(self.dir).has_checkpoint()

    @property
    def ok(self) -> bool:
        return not self.error and self.finished


def run_dir(work_dir: Path, seed: int, name: str) -> Path:
    return work_dir / f"seed{seed}" / name


def _new_run(r: Recipe, seed: int, d: Path, base: Path, resolved: Mapping, user_set: Sequence[str],
             made: Mapping[str, Run]) -> Run:
    if r.is_stage1:
        sets = [*user_set, *overrides(r.stage1, resolved), f"train.seed={seed}"]
        return Run(seed, d, "train", ["--config", str(base), "--work-dir", str(d), "--set", *sets], [r])
    first = made[r.on]
    if r.command == "eval":
        return Run(seed, d, "eval", [str(first.dir), *r.posthoc, "--out", str(d)], [r], depends=first)
    sets = overrides(r.stage2_set)
    argv = ["--stage2", r.stage2, "--from", str(first.dir), "--work-dir", str(d), *(["--set", *sets] if sets else [])]
    return Run(seed, d, "train", argv, [r], depends=first)


def plan(base: Path, methods: Sequence[str], seeds: Sequence[int], work_dir: Path,
         user_set: Sequence[str] = ()) -> list[Run]:
    """Every run the table needs, seed by seed: the stage-1 recipes (also those only built on), then the second
    stages and evaluation options, each on its seed's stage-1 run. ``user_set`` overrides the base config of every
    stage-1 run (before the recipe's own overrides); ``train.seed`` is varied, the data split's seed is not."""
    resolved = C.load(base, user_set).to_dict()  # a bad base or --set: one error before anything runs
    out: list[Run] = []
    for seed in seeds:
        made: dict[str, Run] = {}
        for r in needed(methods):
            if r.run_name in made:  # a run another recipe reads too
                made[r.run_name].recipes.append(r)
                continue
            made[r.run_name] = _new_run(r, seed, run_dir(work_dir, seed, r.run_name), base, resolved, user_set, made)
            out.append(made[r.run_name])
    return out


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def config_digest(path: Path) -> str:
    """A digest of the config's resolved values: an edited comment or a reordered key keeps a grid's runs, a
    changed value does not."""
    values = json.dumps(C.load(path).to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(values.encode()).hexdigest()[:16]


@dataclass
class Grid:
    """The runs of one work directory and what they were started with (``grid.json``)."""

    work_dir: Path
    base: Path
    runs: list[Run]
    manifest: dict = field(default_factory=dict)
    base_digest: str = ""  # of the base config's values (config_digest)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # runs may finish side by side

    def __post_init__(self) -> None:
        path = self.work_dir / MANIFEST
        self.manifest = json.loads(path.read_text()) if path.is_file() else {}
        self.base_digest = config_digest(self.base)

    def _key(self, run: Run) -> str:
        return str(run.dir.relative_to(self.work_dir))

    def _entry(self, run: Run) -> dict:
        return {"command": run.command, "argv": run.argv, "config": self.base_digest}

    def _save(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.work_dir / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True) + "\n")

    def conflict(self, run: Run) -> str:
        """Why an existing run directory cannot be used for ``run`` (empty if it can)."""
        if not (run.finished or run.started):
            return ""
        old = self.manifest.get(self._key(run))
        if old is None:
            return f"{run.dir} holds a run this grid did not start; remove it or use another --work-dir"
        mine = self._entry(run)
        # grid.json entries written before the digest of values ("config") have the file's bytes' ("base")
        same = old["config"] == mine["config"] if "config" in old else old.get("base") == _file_digest(self.base)
        if not same:
            return f"{run.dir} was run on another version of {self.base}; remove it or use another --work-dir"
        if old.get("argv") != mine["argv"]:
            return (f"{run.dir} was run with other arguments ({' '.join(old.get('argv', []))}); remove it or use "
                    "another --work-dir")
        return ""

    def execute(self, run: Run, launcher: Launcher) -> None:
        """Re-read a finished run, resume a started one, or start it; sets ``run.results`` or ``run.error``."""
        if run.depends is not None and not run.depends.ok:
            run.error = f"its stage 1 ({run.depends.dir.name}) has no result: {run.depends.error or 'not run'}"
            return
        if (why := self.conflict(run)):
            run.error = why
            return
        if not run.finished:
            argv = run.argv + (["--resume"] if run.started and run.command == "train" else [])
            key = self._key(run)
            with self._lock:
                before = self.manifest.get(key, {}).get("wall_s", 0.0) if run.started else 0.0  # a resumed run's
                self.manifest[key] = self._entry(run)
                self._save()  # before the run: a finished run always has its entry
            log.info("compare: %s seed %d: %s %s", run.dir.name, run.seed, run.command, " ".join(argv))
            start = time.perf_counter()
            outcome = launcher(run.command, argv)
            with self._lock:
                self.manifest[key]["wall_s"] = round(before + time.perf_counter() - start, 1)
                self._save()
            if outcome.code in (130, 143):
                run.error = "interrupted (the same command resumes it)"
                raise Interrupted(outcome.code, outcome.error or f"interrupted (exit status {outcome.code})")
            if outcome.code != 0 or not run.finished:
                run.error = outcome.error or f"exit status {outcome.code}, no {METRICS} in {run.dir}"
                log.error("compare: %s seed %d failed: %s", run.dir.name, run.seed, run.error)
                return
        for r in run.recipes:
            got = read_result(RunDir(run.dir).metrics_path, r.result)
            if got is not None:
                run.results[r.name] = got

    def wall_seconds(self) -> float:
        """Seconds the runs of this grid took when they were launched (over every call)."""
        keys = {self._key(r) for r in self.runs}
        return sum(v.get("wall_s", 0.0) for k, v in self.manifest.items() if k in keys)


def read_result(path: Path, where: str) -> dict | None:
    """The overall / many / medium / few of a ``metrics.json`` (``where``: a dotted path into it, e.g.
    ``dual_head.sel``; ``""`` for the top level); ``None`` if the path is not there."""
    node: object = json.loads(path.read_text())
    for part in filter(None, where.split(".")):
        node = node.get(part) if isinstance(node, Mapping) else None
    if not isinstance(node, Mapping):
        return None
    return {g: node.get(g) for g in GROUPS}


def run_grid(runs: list[Run], grid: Grid, launcher: Launcher, jobs: int = 1) -> None:
    """Every run; a failure is recorded on its cell and the grid goes on (an interrupt stops it). ``jobs`` > 1:
    up to that many runs at once (``launcher`` must then be safe to call from several threads, e.g. one process
    per run), each started as soon as the run it builds on has finished, in the plan's order otherwise; after an
    interrupt no run starts, the running ones end (they were sent the signal too) and the interrupt is raised."""
    if jobs <= 1:
        for run in runs:
            grid.execute(run, launcher)
        return
    pending, finished = list(runs), set()
    interrupted: Interrupted | None = None
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="ltcls-compare") as pool:
        running: dict[Future, Run] = {}
        while True:
            for run in [] if interrupted else list(pending):
                if len(running) >= jobs:
                    break
                if run.depends is None or id(run.depends) in finished:
                    pending.remove(run)
                    running[pool.submit(grid.execute, run, launcher)] = run
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                finished.add(id(running.pop(future)))
                try:
                    future.result()
                except Interrupted as e:
                    interrupted = interrupted or e
    if interrupted is not None:
        raise interrupted


# ------------------------------------------------------------------------------------------------- the table

Results = Mapping[str, Mapping[int, Mapping[str, float | None]]]


@dataclass
class Stat:
    """Mean and sample standard deviation (``n - 1``; ``None`` below 2 values) of ``n`` values."""

    mean: float | None
    sd: float | None
    n: int


def summarize(values: Sequence[float | None]) -> Stat:
    """:class:`Stat` of the values that are not ``None`` (an empty shot group of a run has ``None``)."""
    vals = [float(v) for v in values if v is not None]
    return Stat(statistics.fmean(vals) if vals else None, statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


def paired(a: Mapping[int, float | None], b: Mapping[int, float | None]) -> Stat:
    """:class:`Stat` of ``a[s] - b[s]`` over the seeds ``s`` both have a value for."""
    return summarize([a[s] - b[s] for s in a if s in b and a[s] is not None and b[s] is not None])


@dataclass
class Row:
    """A method's line of the table: its seeds with a result, the others with their error, the group statistics
    and the paired differences to the first method (empty for the first method itself)."""

    method: str
    seeds: list[int]
    missing: dict[int, str]
    groups: dict[str, Stat]
    diffs: dict[str, Stat]


def method_rows(results: Results, errors: Mapping[str, Mapping[int, str]], methods: Sequence[str],
                seeds: Sequence[int]) -> list[Row]:
    """One :class:`Row` per method; ``results[method][seed]`` holds overall / many / medium / few."""
    ref = results.get(methods[0], {})
    rows = []
    for m in methods:
        got = results.get(m, {})
        missing = {s: errors.get(m, {}).get(s, "not run") for s in seeds if s not in got}
        groups = {g: summarize([got[s].get(g) for s in got]) for g in GROUPS}
        diffs = {} if m == methods[0] else {
            g: paired({s: v.get(g) for s, v in got.items()}, {s: v.get(g) for s, v in ref.items()}) for g in GROUPS}
        rows.append(Row(m, sorted(got), missing, groups, diffs))
    return rows


def rows_of_runs(runs: Sequence[Run], methods: Sequence[str], seeds: Sequence[int]) -> list[Row]:
    """The table of a grid's runs (the recipes only built on are not rows)."""
    results: dict[str, dict[int, Mapping[str, float | None]]] = {}
    errors: dict[str, dict[int, str]] = {}
    for run in runs:
        for r in run.recipes:
            if r.name in run.results:
                results.setdefault(r.name, {})[run.seed] = run.results[r.name]
            else:
                why = run.error or ("not run" if not run.finished else
                                    f"{RunDir(run.dir).metrics_path} has no '{r.result}' entry")
                errors.setdefault(r.name, {})[run.seed] = why
    return method_rows(results, errors, methods, seeds)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def csv_text(rows: Sequence[Row]) -> str:
    """``comparison.csv``: :data:`CSV_COLUMNS`, one line per method (empty fields where there is no value)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        stats = [_num(x) for g in GROUPS for x in (r.groups[g].mean, r.groups[g].sd)]
        diffs = [_num(x) for g in GROUPS for x in ((r.diffs[g].mean, r.diffs[g].sd) if r.diffs else (None, None))]
        w.writerow([r.method, len(r.seeds), *stats, *diffs, " ".join(map(str, sorted(r.missing)))])
    return buf.getvalue()


def _cell(s: Stat, signed: bool = False) -> str:
    if s.mean is None:
        return "n/a"
    mean = f"{s.mean:+.1f}" if signed else f"{s.mean:.1f}"
    return mean if s.sd is None else f"{mean} ± {s.sd:.1f}"


def markdown(rows: Sequence[Row], header: str, seeds: Sequence[int], footer: str = "") -> str:
    """``comparison.md``: the table (mean ± sample sd over seeds; paired differences to the first method), the
    missing cells with their errors, the recipes' summaries and ``footer``."""
    first = rows[0].method
    lines = [header, "", f"Top-1 accuracy (%), mean ± sample sd over seeds {' '.join(map(str, seeds))}; "
             f"Δ: the paired difference to {first} over the seeds both have.", "",
             "| method | seeds | " + " | ".join(GROUPS) + " | " + " | ".join(f"Δ {g}" for g in GROUPS) + " |",
             "|---|---:|" + "---:|" * (2 * len(GROUPS))]
    for r in rows:
        diffs = [_cell(r.diffs[g], signed=True) if r.diffs else "" for g in GROUPS]
        lines.append(f"| {r.method} | {len(r.seeds)}/{len(seeds)} | " + " | ".join(_cell(r.groups[g]) for g in GROUPS)
                     + " | " + " | ".join(diffs) + " |")
    missing = [f"- {r.method}, seed {s}: {e}" for r in rows for s, e in sorted(r.missing.items())]
    if missing:
        lines += ["", "Missing cells (their rows average the other seeds):", *missing]
    lines += ["", "Recipes:", *[f"- {r.method}: {RECIPES[r.method].summary}" for r in rows if r.method in RECIPES]]
    return "\n".join(lines + ([f"\n{footer}"] if footer else [])) + "\n"


def figure_png(rows: Sequence[Row], title: str) -> bytes:
    """Grouped bars: per method, overall / many / medium / few means with sample-sd error bars (PNG bytes)."""
    import matplotlib  # matplotlib (not torch) only when the figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(GROUPS)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows) + 2), 4.0))
    for i, g in enumerate(GROUPS):
        xs = [j + (i - (len(GROUPS) - 1) / 2) * width for j in range(len(rows))]
        means = [r.groups[g].mean if r.groups[g].mean is not None else math.nan for r in rows]  # no bar
        sds = [r.groups[g].sd or 0.0 for r in rows]
        ax.bar(xs, means, width, yerr=sds, capsize=2, label=g)
    ax.set_xticks(range(len(rows)), [r.method for r in rows], rotation=45, ha="right")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, pad=24)
    ax.legend(ncols=len(GROUPS), fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(work_dir: Path, rows: Sequence[Row], header: str, seeds: Sequence[int], footer: str = "") -> None:
    """``comparison.md``, ``comparison.csv`` and ``comparison.png`` in ``work_dir``, each written atomically."""
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work_dir / "comparison.md", markdown(rows, header, seeds, footer))
    atomic_write_text(work_dir / "comparison.csv", csv_text(rows))
    png = figure_png(rows, header.lstrip("# "))
    atomic_write(work_dir / "comparison.png", lambda tmp: tmp.write_bytes(png))
