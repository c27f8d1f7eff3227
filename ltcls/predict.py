"""Classify image files with a trained model: find the images, load them with the run's eval transform
(unreadable files are reported and skipped, never ending the run), keep the top-k classes, write CSV / JSON."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import torch

from ltcls.data.base import SplitBase
from ltcls.data.datasets.image_folder import image_extensions
from ltcls.data.datasets.split_file import transform_min_size
from ltcls.data.images import open_rgb
from ltcls.io import atomic_write_text
from ltcls.results import Evaluation

logger = logging.getLogger(__name__)


def find_images(paths: Sequence[str | Path]) -> list[str]:
    """The image files among ``paths``: a file is taken as given, a folder is searched recursively (sorted)
    for files with an extension PIL reads. A path that does not exist is an error naming it."""
    extensions = set(image_extensions())
    found: list[str] = []
    for path in paths:
        path = str(path)
        if os.path.isfile(path):
            found.append(path)
        elif os.path.isdir(path):
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                found.extend(os.path.join(folder, f) for f in sorted(files) if os.path.splitext(f)[1].lower()
                             in extensions)
        else:
            raise FileNotFoundError(f"no such image file or folder: '{path}'")
    return found


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> tuple[list[int], torch.Tensor | None,
                                                                                  list[tuple[int, str]]]:
    good = [(i, x) for i, x, err in items if err is None]
    bad = [(i, err) for i, _, err in items if err is not None]
    images = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], images, bad


class ImageFiles(SplitBase):
    """Image files through ``transform``; an item is ``(index, tensor, None)``, or ``(index, None, error)``
    for a file PIL cannot open or decode (so the caller can report and skip it). JPEGs are decoded at the
    reduced size the transform allows (:func:`ltcls.data.images.open_rgb`: every PIL mode as 8-bit RGB). Batches
    are ``(indices, images or None, [(index, error), ...])`` (:attr:`collate_fn`)."""

    collate_fn = staticmethod(_collate)

    def __init__(self, paths: Sequence[str], transform: Callable) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.decode_size = transform_min_size(transform)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = open_rgb(self.paths[index], self.decode_size)
        except Exception as err:  # any failure to open / decode this one file (PIL raises many types)
            return index, None, f"{type(err).__name__}: {err}"
        return index, self.transform(image), None


class PredictionRow(TypedDict):
    """One readable image: its path, its top-k class names and their probabilities (decreasing)."""

    path: str
    classes: list[str]
    probs: list[float]


@dataclass
class Predictions:
    """Top-k predictions, one row per readable image (``path``, ``classes``, ``probs``), and the files that
    could not be read (``path``, ``error``)."""

    topk: int
    rows: list[PredictionRow] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)


class TopK:
    """Collects the ``topk`` classes and probabilities of each batch of :class:`ImageFiles` (an evaluator for
    the inference runner: ``reset`` / ``process`` / ``evaluate``); the result is :attr:`result`.

    ``scores`` turns logits into probabilities (default softmax; a run's loss's ``scores``, e.g. Gumbel).
    ``topk`` larger than the number of classes is cut to it. Unreadable files are logged and listed."""

    def __init__(self, paths: Sequence[str], class_names: Sequence[str], topk: int = 5,
                 scores: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.paths, self.class_names = list(paths), list(class_names)
        self.k = min(topk, len(class_names))
        self.scores = scores if scores is not None else (lambda logits: logits.softmax(dim=-1))
        self.reset()

    def reset(self) -> None:
        self.result = Predictions(topk=self.k)

    def process(self, batch: tuple[list[int], torch.Tensor | None, list[tuple[int, str]]],
                logits: torch.Tensor | None) -> None:
        indices, _, bad = batch
        for i, err in bad:
            logger.warning("skipping unreadable image '%s': %s", self.paths[i], err)
            self.result.unreadable.append({"path": str(self.paths[i]), "error": err})
        if logits is None:
            return
        probs = self.scores(logits.float())
        if probs.shape[1] != len(self.class_names):
            raise ValueError(f"the model gives {probs.shape[1]} scores per image but {len(self.class_names)} class "
                             "names were given")
        top_p, top_c = probs.topk(self.k, dim=1)
        for i, p, c in zip(indices, top_p.cpu().tolist(), top_c.cpu().tolist()):
            self.result.rows.append({"path": str(self.paths[i]), "classes": [self.class_names[j] for j in c],
                                     "probs": p})

    def evaluate(self) -> Evaluation:
        return Evaluation()


def predictions_csv(predictions: Predictions) -> str:
    """CSV ``path,top1,prob1,top2,prob2,...`` (class names, probabilities with 6 decimals), one row an image.
    Unreadable files are not rows (see :func:`predictions_json`, or ``predictions.unreadable``)."""
    header = ["path"] + [f"{name}{r}" for r in range(1, predictions.topk + 1) for name in ("top", "prob")]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    for row in predictions.rows:
        cells = [row["path"]]
        for c, p in zip(row["classes"], row["probs"]):
            cells += [c, f"{p:.6f}"]
        writer.writerow(cells)
    return text.getvalue()


def predictions_json(predictions: Predictions) -> str:
    """JSON ``{"topk": k, "predictions": [{"path", "classes", "probs"}, ...], "unreadable": [{"path", "error"}]}``."""
    data = {"topk": predictions.topk, "predictions": predictions.rows, "unreadable": predictions.unreadable}
    return json.dumps(data, indent=2) + "\n"


def write_predictions_csv(path: str | Path, predictions: Predictions, replace: bool = True) -> None:
    """Write :func:`predictions_csv` to ``path`` atomically (:func:`ltcls.io.atomic_write_text`: never a partial
    or empty file); ``replace=False`` never replaces an existing file (``FileExistsError``)."""
    atomic_write_text(path, predictions_csv(predictions), replace)


def write_predictions_json(path: str | Path, predictions: Predictions, replace: bool = True) -> None:
    """Write :func:`predictions_json` to ``path`` atomically, as :func:`write_predictions_csv`."""
    atomic_write_text(path, predictions_json(predictions), replace)
