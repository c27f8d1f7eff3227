"""Datasets described by split files (ImageNet-LT, Places-LT, iNaturalist, ...): one ``relative/path label``
per line, paths relative to ``data.root``. The label is the last whitespace-separated field and the path
everything before it (so a path may hold spaces; spaces or tabs separate them); the file is UTF-8, with or
without a byte-order mark. Duplicated entries and classes without a training image are logged as warnings.

:class:`FileListDataset` is what every file-based builder returns. It decodes JPEGs at a reduced size when
the transform does not need the full resolution (PIL's draft mode: the JPEG decoder scales by 1/2, 1/4 or
1/8 in the DCT domain, which is much cheaper than decoding in full and resizing afterwards), and handles a
corrupt or missing image either as an error naming the file and its split line (``on_bad_image: error``) or
by logging it once, counting it and loading another image of the same class (``on_bad_image: skip``).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from ltcls.data.base import DataSplits, ImageFileList, LTDataset
from ltcls.data.images import open_rgb
from ltcls.registries import DATASETS

logger = logging.getLogger(__name__)

_FORMAT = "(expected 'relative/path label')"
_BOM = b"\xef\xbb\xbf"
#: Entries listed in a warning before the rest are only counted.
_WARN_SHOWN = 5
#: A train split whose largest label + 1 exceeds both this many times its distinct labels and
#: :data:`SPARSE_LABELS_MIN` is refused (:meth:`SplitList.class_count`): such a label is not a class index.
SPARSE_LABELS_FACTOR = 10
SPARSE_LABELS_MIN = 1000
BAD_IMAGE_MODES = ("error", "skip")

#: Maps a path as written in a split file (and its label) to the path under data.root (a layout change).
PathMap = Callable[[str, int], str]


class BadImageError(RuntimeError):
    """An image listed in a split cannot be opened or decoded (``on_bad_image: error``)."""


# ----------------------------------------------------------------------------------------- decoding


def transform_min_size(transform: Callable | None) -> int:
    """The short side (pixels) an image needs so that ``transform``'s first step never upsamples it.

    Read off the first step of a ``Compose``: a ``Resize`` (its size; eval: ``img_size / crop_pct``) or a
    random-resized crop (its output size: a crop of the whole image is not upsampled; smaller crops come
    from the reduced image, as they do from any image of that size). 0 (decode in full) for anything else,
    e.g. a crop without resize, which needs the original pixels.
    """
    from timm.data.transforms import RandomResizedCropAndInterpolation  # lazy: config checks import this module
    from torchvision import transforms as T

    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    if not steps:
        return 0
    first = steps[0]
    if isinstance(first, T.Resize):
        size = first.size
        return int(size) if isinstance(size, int) else int(max(size))
    if isinstance(first, (T.RandomResizedCrop, RandomResizedCropAndInterpolation)):
        size = first.size
        return int(size) if isinstance(size, int) else int(max(size))
    return 0


# ----------------------------------------------------------------------------------------- dataset


class FileListDataset(LTDataset):
    """Images on disk at ``root/paths[i]``, decoded to RGB with PIL.

    ``decode_size``: the short side a JPEG keeps at least when decoded; ``None`` reads it off the transform
    (:func:`transform_min_size`), 0 always decodes in full. ``on_bad_image``: ``"error"`` raises
    :class:`BadImageError` naming the file (and its split line when ``source`` / ``lines`` are given);
    ``"skip"`` logs the file once, counts it and returns another image of the same class. The count
    (:attr:`bad_image_count`, distinct files) lives in shared memory, so it also counts what DataLoader
    worker processes met; views made by :meth:`with_transform` share it.
    """

    def __init__(self, root: str, paths: Sequence[str], targets: Sequence[int], num_classes: int,
                 classes: Sequence[str] | None = None, transform: Callable | None = None,
                 decode_size: int | None = None, on_bad_image: str = "error", source: str | None = None,
                 lines: Sequence[int] | None = None, where_format: str = "{source} line {n}") -> None:
        super().__init__(targets, num_classes, classes, transform)
        if len(paths) != len(self.targets):
            raise ValueError(f"{len(paths)} paths but {len(self.targets)} targets")
        if on_bad_image not in BAD_IMAGE_MODES:
            raise ValueError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_MODES)}, got {on_bad_image!r}")
        if decode_size is not None and decode_size < 0:
            raise ValueError(f"decode_size must be >= 0 (0: full decoding) or null (from the transform), "
                             f"got {decode_size}")
        if lines is not None and len(lines) != len(paths):
            raise ValueError(f"{len(lines)} line numbers but {len(paths)} paths")
        self.root = root
        self.paths = list(paths)
        self.decode_size = decode_size
        self.on_bad_image = on_bad_image
        self.source = source
        self.lines = np.asarray(lines, dtype=np.int64) if lines is not None else None
        self.where_format = where_format
        self._by_class: dict[int, np.ndarray] = {}
        # One flag per sample in shared memory (inherited by, or pickled into, DataLoader workers).
        self._bad = multiprocessing.RawArray("B", len(self.paths)) if on_bad_image == "skip" else None
        self._bad_lock = multiprocessing.Lock() if on_bad_image == "skip" else None

    # -- decoding
    def min_decode_size(self) -> int:
        """The short side JPEGs are decoded to at least, for the current transform (0: full size)."""
        return transform_min_size(self.transform) if self.decode_size is None else self.decode_size

    def load(self, index: int) -> Image.Image:
        return open_rgb(os.path.join(self.root, self.paths[index]), self.min_decode_size())

    def where(self, index: int) -> str | None:
        """``'split.txt line 17'`` for sample ``index`` when the dataset knows its split file."""
        if self.source is None or self.lines is None:
            return None
        return self.where_format.format(source=self.source, n=int(self.lines[index]))

    def __getitem__(self, index: int):
        return self.apply_transform(self._load_or_replace(index), index), int(self.targets[index])

    def image_files(self) -> ImageFileList | None:
        """The files to check before training, when a bad image stops the run (``on_bad_image: error``)."""
        return ImageFileList(self.root, self.paths, self.where) if self.on_bad_image == "error" else None

    # -- bad images
    @property
    def bad_image_count(self) -> int:
        """Number of distinct unreadable images met so far (in this process and its DataLoader workers)."""
        if self._bad is None:
            return 0
        return int(np.frombuffer(self._bad, dtype=np.uint8).sum())

    @property
    def bad_image_paths(self) -> list[str]:
        """The unreadable images met so far (paths under root)."""
        if self._bad is None:
            return []
        return [self.paths[i] for i in np.flatnonzero(np.frombuffer(self._bad, dtype=np.uint8))]

    def _describe(self, index: int) -> str:
        where = self.where(index)
        return f"image '{self.paths[index]}' under data.root '{self.root}'" + (f" ({where})" if where else "")

    def _load_or_replace(self, index: int) -> Image.Image:
        try:
            return self.load(index)
        except Exception as err:  # any failure to open / decode this one file (PIL raises many types)
            if self.on_bad_image == "error":
                raise BadImageError(f"cannot read {self._describe(index)}: {type(err).__name__}: {err} "
                                    "(set data.on_bad_image: skip to log, count and skip unreadable images)") from err
            self._record_bad(index, err)
        for other in self._same_class(index):
            if self._bad[other]:
                continue
            try:
                return self.load(other)
            except Exception as err:
                self._record_bad(other, err)
        label = int(self.targets[index])
        raise BadImageError(f"every image of class {label} ({self.classes[label]}) is unreadable; the first was "
                            f"{self._describe(index)}")

    def _record_bad(self, index: int, err: Exception) -> None:
        with self._bad_lock:
            first = not self._bad[index]
            self._bad[index] = 1
        if first:
            logger.warning("skipping unreadable %s: %s: %s (data.on_bad_image: skip)", self._describe(index),
                           type(err).__name__, err)

    def _same_class(self, index: int) -> Iterator[int]:
        """The other samples of ``index``'s class, starting after it and wrapping around."""
        label = int(self.targets[index])
        if label not in self._by_class:
            self._by_class[label] = np.flatnonzero(self.targets == label)
        members = self._by_class[label]
        start = int(np.searchsorted(members, index, side="right"))
        for k in range(len(members) - 1):
            yield int(members[(start + k) % len(members)])


# ----------------------------------------------------------------------------------------- split files


@dataclass
class SplitList:
    """The entries of one split: paths under root, labels and where each came from (1-based line, or the
    index of the entry in a json list; ``where_format`` turns one into text)."""

    source: str
    paths: list[str]
    labels: np.ndarray
    lines: np.ndarray
    where_format: str = "{source} line {n}"
    #: Entries listed more than once: one per path, the 0-based entry indices of every copy.
    duplicates: list[list[int]] = field(default_factory=list)

    def where(self, i: int) -> str:
        return self.where_format.format(source=self.source, n=int(self.lines[i]))

    def class_count(self) -> int:
        """The number of classes this (train) split's labels imply: the largest label + 1.

        A largest label far above the number of distinct labels (a class count over
        :data:`SPARSE_LABELS_FACTOR` times the labels present, and over :data:`SPARSE_LABELS_MIN`) is an error
        naming its file and line: a typo or an id that is not a class index, which would otherwise build a head
        (and per-class tables) of that many classes. Labels are class indices 0..K-1."""
        top = int(self.labels.max())
        distinct = len(np.unique(self.labels))
        if top + 1 > max(SPARSE_LABELS_MIN, SPARSE_LABELS_FACTOR * distinct):
            raise ValueError(f"{self.where(int(np.argmax(self.labels)))}: label {top} is far above the {distinct} "
                             f"distinct labels of the split (it would make {top + 1:,} classes, most of them empty); "
                             "expected class indices 0..K-1: number the classes consecutively")
        return top + 1

    def empty_classes(self, num_classes: int) -> list[int]:
        """The labels in ``0..num_classes-1`` that no entry of this split has."""
        return np.flatnonzero(np.bincount(self.labels, minlength=num_classes) == 0).tolist()

    def dataset(self, root: str, num_classes: int, classes: Sequence[str] | None = None,
                transform: Callable | None = None, decode_size: int | None = None,
                on_bad_image: str = "error") -> FileListDataset:
        return FileListDataset(root, self.paths, self.labels, num_classes, classes, transform, decode_size,
                               on_bad_image, self.source, self.lines, self.where_format)


class EntryChecker:
    """Checks entries (label, path) of a split as they are read; shared by the text and json readers.

    Errors name ``where`` (file and line): a negative label, a label ``>= num_classes``, a path outside
    ``root`` (absolute, or escaping with ``..``), a ``path_map`` failure; with ``check_files``, missing
    images are collected and reported together by :meth:`finish` (the first, and how many). An image listed
    more than once (same path after ``path_map``) is kept, counted every time, and logged as a warning by
    :meth:`finish` naming the file, the lines and how many.
    """

    def __init__(self, source: str, root: str, num_classes: int | None = None, path_map: PathMap | None = None,
                 check_files: bool = True, where_format: str = "{source} line {n}") -> None:
        self.source, self.root, self.num_classes = source, root, num_classes
        self.path_map, self.check_files, self.where_format = path_map, check_files, where_format
        self.root_abs = os.path.abspath(root)
        self.paths: list[str] = []
        self.labels: list[int] = []
        self.lines: list[int] = []
        self.missing: list[tuple[int, str, str]] = []
        self._full: list[str] = []  # normalized absolute path of each entry, to find duplicates

    def where(self, n: int) -> str:
        return self.where_format.format(source=self.source, n=n)

    def add(self, n: int, rel: str, label: int) -> None:
        where = self.where(n)
        if label < 0:
            raise ValueError(f"{where}: label {label} is negative (expected a class index >= 0)")
        if self.num_classes is not None and label >= self.num_classes:
            raise ValueError(f"{where}: label {label} out of range (expected 0..{self.num_classes - 1}: "
                             f"the train split has {self.num_classes} classes)")
        written = rel
        if self.path_map is not None:
            try:
                rel = self.path_map(rel, label)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        # Lexical resolution: '..' and absolute paths cannot escape root, but symlinked folders inside
        # root (a common way to mount a dataset) stay allowed.
        full = os.path.normpath(os.path.join(self.root_abs, rel))
        if os.path.isabs(rel) or os.path.commonpath([self.root_abs, full]) != self.root_abs:
            raise ValueError(f"{where}: path {rel!r} resolves outside data.root '{self.root}' "
                             f"(expected a path relative to data.root)")
        if self.check_files and not os.path.exists(full):
            self.missing.append((n, rel, written))
        self._full.append(full)
        self.paths.append(rel)
        self.labels.append(label)
        self.lines.append(n)

    def finish(self) -> SplitList:
        if self.missing:
            n, rel, written = self.missing[0]
            mapped = f" (written {written!r} in the split file)" if written != rel else ""
            more = f" (and {len(self.missing) - 1} more missing images)" if len(self.missing) > 1 else ""
            raise FileNotFoundError(f"{self.where(n)}: image {rel!r}{mapped} not found under data.root "
                                    f"'{self.root}'{more}")
        if not self.paths:
            raise ValueError(f"{self.source}: no entries {_FORMAT}")
        duplicates = self._duplicates()
        if duplicates:
            logger.warning("%s", self.describe_duplicates(duplicates))
        return SplitList(self.source, self.paths, np.asarray(self.labels, dtype=np.int64),
                         np.asarray(self.lines, dtype=np.int64), self.where_format, duplicates)

    def _duplicates(self) -> list[list[int]]:
        """Indices of every copy of each path listed more than once (in order of first appearance)."""
        if len(set(self._full)) == len(self._full):  # the common case, checked in C
            return []
        copies: dict[str, list[int]] = {}
        for i, full in enumerate(self._full):
            copies.setdefault(full, []).append(i)
        return [c for c in copies.values() if len(c) > 1]

    def describe_duplicates(self, duplicates: list[list[int]]) -> str:
        """The warning text for images listed more than once: the file, how many, the first few with their
        lines (and their labels when the copies disagree)."""
        shown = []
        for copies in duplicates[:_WARN_SHOWN]:
            at = ", ".join(self.where_format.format(source="", n=self.lines[i]).strip() for i in copies)
            labels = sorted({self.labels[i] for i in copies})
            clash = f" with different labels {', '.join(map(str, labels))}" if len(labels) > 1 else ""
            shown.append(f"{self.paths[copies[0]]!r} at {at}{clash}")
        more = f"; and {len(duplicates) - _WARN_SHOWN} more" if len(duplicates) > _WARN_SHOWN else ""
        extra = sum(len(c) - 1 for c in duplicates)
        return (f"{self.source}: {len(duplicates)} image(s) listed more than once ({extra} extra entries, each "
                f"counted as a sample): {'; '.join(shown)}{more}")


def parse_split_line(line: str, where: str) -> tuple[str, int] | None:
    """``(path, label)`` of one split-file line, ``None`` for a blank line. The label is the last
    whitespace-separated field, the path everything before it (stripped; it may contain spaces)."""
    fields = line.split()
    if len(fields) == 2:
        rel, label_str = fields
    elif not fields:
        return None
    elif len(fields) == 1:
        raise ValueError(f"{where}: 1 fields in {line.strip()!r} {_FORMAT}")  # wording kept: tests match it
    else:
        rel, label_str = line.strip().rsplit(None, 1)
        rel = rel.strip()
    try:
        return rel, int(label_str)
    except ValueError:
        hint = " (the label is the last field; a path may contain spaces)" if len(fields) > 2 else ""
        raise ValueError(f"{where}: label {label_str!r} is not an integer {_FORMAT}{hint}") from None


def split_file_lines(split: str) -> list[str]:
    """The lines of a UTF-8 split file (line ``n`` at index ``n - 1``); a byte-order mark is dropped. Invalid
    UTF-8 is an error naming the file, the line and the byte."""
    with open(split, "rb") as f:
        data = f.read()
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"{split} line {lineno}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column}; "
                         "expected a UTF-8 text file, e.g. re-save it with 'iconv -f latin1 -t utf-8')") from None
    return list(io.StringIO(text, newline=None))  # universal newlines (\n, \r\n, \r), as open() in text mode


def read_split_file(split: str, root: str, num_classes: int | None = None, path_map: PathMap | None = None,
                    check_files: bool = True) -> SplitList:
    """Parse and check one split file (see :class:`EntryChecker` for the checks).

    Every error names the file and the 1-based line, including a line that is not ``path label``, a
    non-integer label and invalid UTF-8. ``path_map`` rewrites each path (e.g. onto another folder layout)
    before the checks; ``check_files=False`` skips the existence check (fast, for statistics).
    """
    if not os.path.isfile(split):
        raise FileNotFoundError(f"split file not found: '{split}'")
    checker = EntryChecker(split, root, num_classes, path_map, check_files)
    for lineno, line in enumerate(split_file_lines(split), start=1):
        entry = parse_split_line(line, f"{split} line {lineno}")
        if entry is not None:
            checker.add(lineno, *entry)
    return checker.finish()


def warn_empty_classes(split: SplitList, num_classes: int, classes: Sequence[str] | None = None) -> list[int]:
    """Log a warning naming ``split``'s file and the classes in ``0..num_classes-1`` without an entry (a
    class the model can never learn from the training split); returns those labels."""
    empty = split.empty_classes(num_classes)
    if empty:
        names = [f"{c} ({classes[c]})" if classes is not None else str(c) for c in empty[:_WARN_SHOWN * 2]]
        more = f" and {len(empty) - len(names)} more" if len(empty) > len(names) else ""
        logger.warning("%s: %d of %d classes have no training image: %s%s", split.source, len(empty),
                       num_classes, ", ".join(names), more)
    return empty


def read_class_names(path: str, num_classes: int) -> list[str]:
    """The class names of a names file: UTF-8, one name per line, line n naming label n - 1 (surrounding spaces
    dropped, a byte-order mark and trailing blank lines ignored). An empty or repeated name, or a count other than
    ``num_classes``, is an error naming the file (and the line)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.class_names_file: '{path}' not found (expected one class name per line)")
    lines = [line.strip() for line in split_file_lines(path)]
    while lines and not lines[-1]:
        lines.pop()
    seen: dict[str, int] = {}
    for n, name in enumerate(lines, start=1):
        if not name:
            raise ValueError(f"{path} line {n}: empty class name (expected one name per line; line n names label n-1)")
        if name in seen:
            raise ValueError(f"{path} line {n}: class name {name!r} repeats line {seen[name]} (expected distinct "
                             "names)")
        seen[name] = n
    if len(lines) != num_classes:
        raise ValueError(f"{path}: {len(lines)} class names but the train split has {num_classes} classes (labels "
                         f"0..{num_classes - 1}; line n names label n-1)")
    return lines


@DATASETS.register("split_file")
def split_file(
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    root: str = "",
    train_split: str = "",
    test_split: str = "",
    val_split: str | None = None,
    decode_size: int | None = None,
    on_bad_image: Literal["error", "skip"] = "error",
    check_files: bool = True,
    class_names_file: str | None = None,
) -> DataSplits:
    """Train / test (/ val) splits from split files under image folder ``root``.

    ``num_classes`` is the largest train label + 1 (:meth:`SplitList.class_count`: a label far above the number
    of distinct labels is an error); val/test labels must fall in that range. ``class_names_file``: the class
    names, one per line (line n names label n-1; :func:`read_class_names`); without it a class is named by its
    label.
    ``decode_size``: short side JPEGs keep when decoded (null: from the transform, 0: full decoding).
    ``on_bad_image``: ``error`` (name the file and line) or ``skip`` (log, count, use another image of
    the class). ``check_files: false`` skips checking at start-up that every listed image exists.
    """
    for key, value in (("root", root), ("train_split", train_split), ("test_split", test_split)):
        if not value:
            raise ValueError(f"split_file dataset: data.{key} must be set")
    if check_files and not os.path.isdir(root):
        raise FileNotFoundError(f"data.root folder not found: '{root}'")
    train = read_split_file(train_split, root, check_files=check_files)
    num_classes = train.class_count()
    names = read_class_names(class_names_file, num_classes) if class_names_file else None
    warn_empty_classes(train, num_classes, names)

    def split(path: str, transform: Callable | None) -> FileListDataset:
        entries = read_split_file(path, root, num_classes, check_files=check_files)
        return entries.dataset(root, num_classes, names, transform, decode_size, on_bad_image)

    splits = DataSplits(
        train=train.dataset(root, num_classes, names, train_transform, decode_size, on_bad_image),
        test=split(test_split, eval_transform),
        val=split(val_split, eval_transform) if val_split else None,
    )
    logger.info("split_file %s: %d classes, train %d, val %s, test %d", root, num_classes, len(splits.train),
                len(splits.val) if splits.val is not None else "-", len(splits.test))
    return splits
