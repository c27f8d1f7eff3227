"""Typed results, built once and read everywhere: a training epoch's :class:`EpochStats` and an evaluation's
:class:`EvalReport` (what ``metrics.json``, TensorBoard, ``comparison.md`` and the commands' summaries show).

An evaluator returns an :class:`Evaluation`: classification's :class:`Accuracy` and/or typed *sections* (LVIS
metrics, SimCal's models, a dual head, a tau sweep, calibration, ...). The trainer (or ``ltcls-eval``) wraps it
once into an :class:`EvalReport` with where it was measured (split, epoch, stage) and the class names; a later
layer that knows more adds a section with :meth:`EvalReport.with_sections`, which returns a new report.
``to_json()`` gives the ``metrics.json`` layout: the headline metrics at the top level, each section's keys
beside them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

GROUPS = ("many", "medium", "few")
#: The headline accuracy metrics of classification, in report order.
ACCURACY_KEYS = ("overall", "mean_per_class", *GROUPS)

Json = Mapping[str, object]


@dataclass(frozen=True)
class EpochStats:
    """One training epoch: mean loss, throughput (this process), the global optimizer step after it, its wall
    time, the micro-batches consumed and whether it stopped early on a signal."""

    loss: float
    images_per_s: float
    step: int
    seconds: float
    batches: int
    interrupted: bool = False


class Section(Protocol):
    """A typed part of a report beyond classification's accuracy (LVIS metrics, a dual head, a tau sweep, ...).

    ``metrics()``: the numbers it adds to the report's headline metrics (read by :meth:`EvalReport.metric`:
    history, summaries, ``comparison.md``); ``to_json()``: its keys in ``metrics.json``."""

    def metrics(self) -> Mapping[str, float | None]: ...

    def to_json(self) -> Json: ...


@dataclass(frozen=True)
class Accuracy:
    """Top-1 of a split in percent (:func:`ltcls.metrics.accuracy_report`): overall, class-balanced
    (``mean_per_class``), many / medium / few (Kang et al.'s groups; None for a group without a tested class),
    per class (None: no test sample), the training count of each class and the size of each group."""

    overall: float | None
    mean_per_class: float | None
    many: float | None
    medium: float | None
    few: float | None
    per_class: tuple[float | None, ...]
    class_counts: tuple[int, ...]
    group_sizes: Mapping[str, int]
    thresholds: Mapping[str, str]

    def metrics(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in ACCURACY_KEYS}

    def to_json(self) -> dict[str, object]:
        return {**self.metrics(), "group_sizes": dict(self.group_sizes), "thresholds": dict(self.thresholds),
                "per_class": list(self.per_class), "class_counts": list(self.class_counts)}


@dataclass(frozen=True)
class Values:
    """A section of plain named values (numbers, strings, lists): what a report records beside its metrics
    (``bad_images``, the source of an ``ltcls-eval`` report, a stage-2 run's feature-cache flag, ...)."""

    values: Json
    headline: tuple[str, ...] = ()

    def metrics(self) -> dict[str, float | None]:
        return {k: self.values.get(k) for k in self.headline}  # type: ignore[misc]

    def to_json(self) -> Json:
        return self.values


@dataclass(frozen=True)
class Nested:
    """A section stored under one key of ``metrics.json`` (``dual_head``, SimCal's per-model metrics, ...)."""

    key: str
    value: Json

    def metrics(self) -> dict[str, float | None]:
        return {}

    def to_json(self) -> Json:
        return {self.key: self.value}


@dataclass(frozen=True)
class Evaluation:
    """What an evaluator returns: classification's accuracy and/or typed sections."""

    accuracy: Accuracy | None = None
    sections: tuple[Section, ...] = ()


@dataclass(frozen=True)
class HistoryEntry:
    """One evaluation of a run, as ``metrics.json``'s ``history`` lists it."""

    stage: str
    epoch: int
    metrics: Mapping[str, float | None]

    def to_json(self) -> dict[str, object]:
        return {"stage": self.stage, "epoch": self.epoch, **self.metrics}

    @classmethod
    def from_json(cls, entry: Json) -> HistoryEntry:
        rest = {k: v for k, v in entry.items() if k not in ("stage", "epoch")}
        return cls(str(entry.get("stage", "")), int(entry.get("epoch", 0)), rest)  # type: ignore[arg-type]


S = TypeVar("S")


@dataclass(frozen=True)
class EvalReport:
    """One evaluation of a model on a split: where (split, epoch, stage), the classes, classification's
    :class:`Accuracy` (None for detection), typed sections, and the run's evaluation history up to it."""

    split: str
    epoch: int
    stage: str
    num_classes: int
    class_names: tuple[str, ...] = ()
    accuracy: Accuracy | None = None
    sections: tuple[Section, ...] = ()
    history: tuple[HistoryEntry, ...] = field(default=())

    @classmethod
    def of(cls, evaluation: Evaluation, *, split: str, epoch: int, stage: str, num_classes: int,
           class_names: Sequence[str] = ()) -> EvalReport:
        return cls(split, epoch, stage, num_classes, tuple(str(n) for n in class_names), evaluation.accuracy,
                   evaluation.sections)

    def metrics(self) -> dict[str, float | None]:
        """Every headline metric: the accuracy's, then each section's."""
        out = self.accuracy.metrics() if self.accuracy is not None else {}
        for s in self.sections:
            out.update(s.metrics())
        return out

    def metric(self, key: str) -> float | None:
        """A headline metric by name (``overall``, ``few``, ``AP``, ``APr``, ...); None if the report has none."""
        return self.metrics().get(key)

    def section(self, kind: type[S]) -> S | None:
        """The first section of type ``kind``, or None."""
        return next((s for s in self.sections if isinstance(s, kind)), None)

    def with_sections(self, *sections: Section) -> EvalReport:
        """A new report with ``sections`` added."""
        return dataclasses.replace(self, sections=(*self.sections, *sections))

    def with_history(self, history: Sequence[HistoryEntry]) -> EvalReport:
        return dataclasses.replace(self, history=tuple(history))

    def history_entry(self, keys: Sequence[str]) -> HistoryEntry:
        """This evaluation as a history entry with the metrics ``keys``."""
        metrics = self.metrics()
        return HistoryEntry(self.stage, self.epoch, {k: metrics.get(k) for k in keys})

    def to_json(self) -> dict[str, object]:
        """The ``metrics.json`` layout."""
        out: dict[str, object] = dict(self.accuracy.to_json()) if self.accuracy is not None else {}
        out["num_classes"] = self.num_classes
        for s in self.sections:
            out.update(s.to_json())
        out.update(split=self.split, epoch=self.epoch, stage=self.stage, class_names=list(self.class_names))
        if self.history:
            out["history"] = [h.to_json() for h in self.history]
        return out
