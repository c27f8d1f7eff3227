"""``ltcls-data verify``: open every image of every split (in threads) and list the problems."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from tqdm import tqdm

from ltcls.data.base import LTDataset
from ltcls.data.datasets.split_file import FileListDataset

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------------------- verify


@dataclass
class Problem:
    """One bad entry: ``kind`` is ``missing``, ``unreadable`` or ``label`` (errors), or ``duplicate`` (an image
    listed more than once) or ``empty`` (a class without a training image; ``index`` is the class): warnings."""

    kind: str
    split: str
    index: int
    where: str | None
    path: str
    detail: str


_KIND_TITLES = {"missing": "MISSING: {n} image(s) not found under data.root",
                "unreadable": "UNREADABLE: {n} image(s) cannot be opened or decoded",
                "label": "LABEL: {n} label(s) out of range",
                "duplicate": "DUPLICATE (warning): {n} image(s) listed more than once, each copy counted as a sample",
                "empty": "EMPTY CLASS (warning): {n} class(es) without a training image"}
#: Kinds that are reported but do not fail ``verify``.
WARNING_KINDS = ("duplicate", "empty")


@dataclass
class VerifyReport:
    """What :func:`verify` found; ``format`` groups the problems by kind (first ``show`` of each)."""

    listed: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    in_memory: list[str] = field(default_factory=list)
    workers: int = 1

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.kind not in WARNING_KINDS]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.kind in WARNING_KINDS]

    @property
    def ok(self) -> bool:
        """No error (warnings allowed)."""
        return not self.errors

    def format(self, show: int = 10) -> str:
        total = sum(self.listed.values())
        parts = ", ".join(f"{s} {n:,}" for s, n in self.listed.items())
        lines = [f"checked {total:,} listed images ({parts}) with {self.workers} threads"] if self.listed else []
        if self.in_memory:
            lines.append(f"in-memory splits (no image files to check): {', '.join(self.in_memory)}")
        for kind, title in _KIND_TITLES.items():
            found = [p for p in self.problems if p.kind == kind]
            if not found:
                continue
            lines.append(title.format(n=f"{len(found):,}"))
            for p in found[:show]:
                detail = f": {p.detail}" if p.detail else ""
                lines.append(f"  {p.where or f'{p.split} #{p.index}'}: {p.path}{detail}")
            if len(found) > show:
                lines.append(f"  ... and {len(found) - show:,} more ({len(found):,} in all)")
        bad = len({(p.split, p.index) for p in self.errors})
        warned = f" ({len(self.warnings):,} warning(s) above)" if self.warnings else ""
        lines.append(f"OK: every listed image exists and decodes, and every label is in range{warned}" if self.ok
                     else f"FAILED: {bad:,} of {total:,} listed entries have problems{warned}")
        return "\n".join(lines)


def check_image(path: str) -> tuple[str, str] | None:
    """None if ``path`` opens and decodes in full; else ``('missing' | 'unreadable', detail)``."""
    try:
        with Image.open(path) as img:
            img.load()
    except FileNotFoundError:
        return "missing", ""
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for corrupt files
        return "unreadable", f"{type(err).__name__}: {err}"
    return None


def _check_chunk(paths: Sequence[str]) -> list[tuple[str, str] | None]:
    return [check_image(p) for p in paths]


def verify(splits: Mapping[str, LTDataset | None], workers: int | None = None, progress: bool = True,
           chunk: int = 64) -> VerifyReport:
    """Check every listed image of file-based splits (exists under root, decodes in full) with ``workers``
    threads (PIL decodes without holding the GIL), and that every label is in ``0..num_classes-1``."""
    workers = workers or os.cpu_count() or 1
    report = VerifyReport(listed={}, workers=workers)
    jobs: list[tuple[str, FileListDataset, int]] = []
    for name, ds in splits.items():
        if ds is None:
            continue
        bad = np.flatnonzero((ds.targets < 0) | (ds.targets >= ds.num_classes))
        for i in bad.tolist():
            where = ds.where(i) if isinstance(ds, FileListDataset) else None
            path = ds.paths[i] if isinstance(ds, FileListDataset) else ""
            report.problems.append(Problem("label", name, i, where, path,
                                           f"label {int(ds.targets[i])} not in 0..{ds.num_classes - 1}"))
        if name == "train":
            for c in np.flatnonzero(ds.class_counts == 0).tolist():
                source = ds.source if isinstance(ds, FileListDataset) else None
                label = f"class {c}" + (f" ({ds.classes[c]})" if ds.classes[c] != str(c) else "")
                report.problems.append(Problem("empty", name, c, source, label, ""))
        if not isinstance(ds, FileListDataset):
            report.in_memory.append(name)
            continue
        report.problems += duplicate_problems(name, ds)
        report.listed[name] = len(ds)
        jobs += [(name, ds, i) for i in range(len(ds))]
    chunks = [jobs[k:k + chunk] for k in range(0, len(jobs), chunk)]
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(jobs), desc="verify", unit="img", disable=not progress or not jobs) as bar:
        paths = ([os.path.join(ds.root, ds.paths[i]) for _, ds, i in c] for c in chunks)
        for c, results in zip(chunks, pool.map(_check_chunk, paths)):
            for (name, ds, i), result in zip(c, results):
                if result is not None:
                    report.problems.append(Problem(result[0], name, i, ds.where(i), ds.paths[i], result[1]))
            bar.update(len(c))
    order = {s: k for k, s in enumerate(splits)}
    report.problems.sort(key=lambda p: (order[p.split], p.index))
    return report


def duplicate_problems(name: str, ds: FileListDataset) -> list[Problem]:
    """One ``duplicate`` problem per image that split ``name`` lists more than once (same normalized path),
    at its first entry, with where every copy is (and the labels when the copies disagree)."""
    by_path: dict[str, list[int]] = {}
    for i, rel in enumerate(ds.paths):
        by_path.setdefault(os.path.normpath(rel), []).append(i)
    problems = []
    for copies in (c for c in by_path.values() if len(c) > 1):
        at = ", ".join((ds.where(i) or f"#{i}").replace(ds.source or "", "", 1).strip() for i in copies)
        labels = sorted({int(ds.targets[i]) for i in copies})
        clash = f", with different labels {', '.join(map(str, labels))}" if len(labels) > 1 else ""
        problems.append(Problem("duplicate", name, copies[0], ds.where(copies[0]), ds.paths[copies[0]],
                                f"listed {len(copies)} times (at {at}){clash}"))
    return problems
