"""LVIS detection results as numpy columns, read a chunk at a time from LVIS's standard json or from ltcls's own
``.npz`` shards, and written shard by shard during inference.

LVIS v1 val is 19,809 images x 300 detections = 5.94M results; as the list of dicts ``json.load`` builds, the
boxes alone take 3.7 GB. Here a result set is a :class:`Detections`: image, category and score columns, boxes as
an (N, 4) array, masks as compressed RLE strings stored end to end (:class:`Masks`, pycocotools' string form,
never decoded before the IoU). Readers yield a chunk at a time, so the evaluation keeps only what it uses
(:func:`ltcls.detection.evaluation.select_results`).

:func:`iter_detections` reads

* an LVIS results json: a list of ``{"image_id", "category_id", "score", "bbox" | "segmentation"}`` (the format
  the ``lvis`` API, detectron2 and mmdetection write), parsed about 16 MB at a time by the standard json module
  (:func:`iter_json_results`);
* ltcls's shards, ``.npz`` files written by :class:`ShardWriter` (a folder of them, or :class:`Shards`): each holds
  the columns of some detections and the ids of the images they come from (images without detections included);
* a :class:`Detections`, or a sequence of result dicts.

No torch here: evaluating a results file does not import it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from pycocotools import mask as mask_utils

from ltcls.io import atomic_write

IOU_TYPES = ("bbox", "segm")
#: pycocotools 2.0.11's ``area`` fails on more than 255 RLEs per call under numpy 2: masks go in batches.
RLE_BATCH = 200
#: Bytes of json parsed at once by :func:`iter_json_results`.
JSON_CHUNK_BYTES = 16 << 20
#: Result dicts converted to columns at once (a sequence of dicts given in memory).
DICT_CHUNK = 100_000
SHARD_VERSION = 1
SHARD_SUFFIX = ".npz"


class RLE(TypedDict):
    """A compressed RLE mask as pycocotools takes it."""

    size: list[int]
    counts: bytes | str


def check_iou_type(iou_type: str) -> None:
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")


def ann_to_rle(segmentation: Any, height: int, width: int) -> RLE:
    """An annotation's polygons / uncompressed RLE / RLE as one compressed RLE (the LVIS API's rule)."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def mask_areas(rles: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Pixel count of each compressed RLE (pycocotools, in batches of :data:`RLE_BATCH`), float64."""
    if not rles:
        return np.zeros(0)
    return np.concatenate([mask_utils.area(list(rles[i:i + RLE_BATCH]))
                           for i in range(0, len(rles), RLE_BATCH)]).astype(np.float64)


def _counts_bytes(rle: Mapping[str, Any]) -> bytes:
    counts = rle["counts"]
    if isinstance(counts, str):
        return counts.encode("ascii")
    if isinstance(counts, bytes):
        return counts
    if isinstance(counts, list):  # uncompressed RLE
        h, w = rle["size"]
        return mask_utils.frPyObjects(dict(rle), h, w)["counts"]
    raise ValueError(f"a segmentation must be an RLE with 'counts' a string or a list, got {type(counts).__name__}")


@dataclass
class Masks:
    """Compressed RLE masks end to end: mask ``k`` is ``counts[offsets[k]:offsets[k + 1]]`` of ``size[k]`` (h, w)."""

    size: np.ndarray  # (N, 2) int64
    counts: bytes
    offsets: np.ndarray  # (N + 1,) int64

    def __len__(self) -> int:
        return len(self.size)

    @classmethod
    def from_rles(cls, rles: Sequence[Mapping[str, Any]]) -> Masks:
        """From RLE dicts (``{"size": [h, w], "counts": str | bytes | list}``)."""
        counts = [r["counts"] for r in rles]
        if all(isinstance(c, str) for c in counts):  # as json gives them: one encode for all
            joined, lengths = "".join(counts).encode("ascii"), [len(c) for c in counts]
        else:
            parts = [_counts_bytes(r) for r in rles]
            joined, lengths = b"".join(parts), [len(c) for c in parts]
        size = np.array([r["size"] for r in rles], dtype=np.int64).reshape(-1, 2)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(size, joined, offsets)

    @classmethod
    def concat(cls, parts: Sequence[Masks]) -> Masks:
        lengths = np.concatenate([np.diff(p.offsets) for p in parts]) if parts else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        size = np.concatenate([p.size for p in parts]) if parts else np.zeros((0, 2), np.int64)
        return cls(size, b"".join(p.counts for p in parts), offsets)

    def rles(self, index: Iterable[int] | None = None) -> list[RLE]:
        """RLE dicts (pycocotools' form, counts as bytes) of the masks at ``index`` (default: all)."""
        rows = range(len(self)) if index is None else index
        o, s, c = self.offsets, self.size, self.counts
        return [{"size": [int(s[k, 0]), int(s[k, 1])], "counts": c[o[k]:o[k + 1]]} for k in rows]

    def take(self, index: np.ndarray) -> Masks:
        index = np.asarray(index, dtype=np.int64)
        starts, lengths = self.offsets[index], self.offsets[index + 1] - self.offsets[index]
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        at = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - starts, lengths)  # each kept byte's position
        return Masks(self.size[index], np.frombuffer(self.counts, np.uint8)[at].tobytes(), offsets)

    def areas(self) -> np.ndarray:
        return mask_areas(self.rles())


@dataclass
class Detections:
    """Detections as columns: row ``k`` is one result (``bbox`` x, y, w, h and / or a compressed RLE mask)."""

    image_id: np.ndarray  # (N,) int64
    category_id: np.ndarray  # (N,) int64
    score: np.ndarray  # (N,) float64
    bbox: np.ndarray | None = None  # (N, 4) float64
    masks: Masks | None = None

    def __len__(self) -> int:
        return len(self.image_id)

    @classmethod
    def empty(cls, with_bbox: bool = True, with_masks: bool = True) -> Detections:
        masks = Masks(np.zeros((0, 2), np.int64), b"", np.zeros(1, np.int64)) if with_masks else None
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                   np.zeros((0, 4)) if with_bbox else None, masks)

    @classmethod
    def from_dicts(cls, results: Sequence[Mapping[str, Any]], iou_types: Sequence[str] = IOU_TYPES,
                   source: str = "results") -> Detections:
        """Columns of LVIS result dicts; the geometry of each of ``iou_types`` is read (and required)."""
        n = len(results)
        try:
            image_id = np.fromiter((r["image_id"] for r in results), np.int64, n)
            category_id = np.fromiter((r["category_id"] for r in results), np.int64, n)
            score = np.fromiter((r["score"] for r in results), np.float64, n)
            bbox = (np.array([r["bbox"] for r in results], dtype=np.float64).reshape(n, 4)
                    if "bbox" in iou_types else None)
            masks = Masks.from_rles([r["segmentation"] for r in results]) if "segm" in iou_types else None
        except KeyError as err:
            raise ValueError(f"{source}: a result has no {err} (LVIS results need image_id, category_id, score "
                             "and bbox for bbox evaluation / segmentation for segm evaluation)") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: a result field is malformed ({err}); LVIS results hold an integer "
                             "image_id and category_id, a float score, bbox [x, y, w, h] and an RLE segmentation"
                             ) from None
        return cls(image_id, category_id, score, bbox, masks)

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        if not parts:
            return cls.empty()
        bbox = np.concatenate([p.bbox for p in parts]) if all(p.bbox is not None for p in parts) else None
        masks = Masks.concat([p.masks for p in parts]) if all(p.masks is not None for p in parts) else None
        return cls(np.concatenate([p.image_id for p in parts]), np.concatenate([p.category_id for p in parts]),
                   np.concatenate([p.score for p in parts]), bbox, masks)

    def take(self, index: np.ndarray) -> Detections:
        index = np.asarray(index, dtype=np.int64)
        return Detections(self.image_id[index], self.category_id[index], self.score[index],
                          None if self.bbox is None else self.bbox[index],
                          None if self.masks is None else self.masks.take(index))

    def require(self, iou_type: str, source: str = "results") -> None:
        """A clear error when the geometry ``iou_type`` evaluates is missing."""
        if (self.bbox if iou_type == "bbox" else self.masks) is None:
            what = "boxes" if iou_type == "bbox" else "masks (segmentation RLEs)"
            raise ValueError(f"{source}: the results have no {what}, which {iou_type} evaluation needs")


# ------------------------------------------------------------------------------------------------ json


_SEPARATOR = re.compile(rb"\}\s*,\s*\{")


def _loads_list(body: bytes) -> list[Any]:
    return json.loads(b"[" + body + b"]")


def _split_complete(buf: bytes) -> tuple[list[Any], bytes] | None:
    """Parse the longest prefix of ``buf`` (a run of comma-separated objects of the top-level list) that ends with
    a whole object: cut after the last ``}`` followed by ``, {``. A cut inside a nested value or a string leaves
    unbalanced brackets or an open string, so such a prefix does not parse and the cut before it is tried."""
    tail_start = max(0, len(buf) - (1 << 20))
    cuts = [m.start() + 1 for m in _SEPARATOR.finditer(buf, tail_start)]
    for cut in reversed(cuts):
        try:
            items = _loads_list(buf[:cut])
        except ValueError:
            continue
        rest = buf[cut:].lstrip()
        return items, rest[1:]  # drop the comma
    return None


def iter_json_results(path: str | os.PathLike, chunk_bytes: int = JSON_CHUNK_BYTES) -> Iterator[list[Any]]:
    """The objects of an LVIS results json (a top-level list), in file order, a list of about ``chunk_bytes`` of
    json at a time: only one chunk's dicts exist at once."""
    path = Path(path)
    started, buf = False, b""
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk_bytes)
            buf += data
            if not started:
                buf = buf.lstrip()
                if not buf and data:
                    continue
                if buf[:1] != b"[":
                    raise ValueError(f"{path}: an LVIS results file is a json list of result objects")
                buf, started = buf[1:], True
            if not data:
                break
            split = _split_complete(buf)
            if split is not None:
                items, buf = split
                yield items
    body = buf.rstrip()
    if not body.endswith(b"]"):
        raise ValueError(f"{path}: truncated or not a json list (no closing ']')")
    try:
        items = _loads_list(body[:-1]) if body[:-1].strip() else []
    except ValueError as err:
        raise ValueError(f"{path}: not valid json ({err})") from None
    if items:
        yield items


# ------------------------------------------------------------------------------------------------ shards


def _shard_arrays(dets: Detections, image_ids: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {"version": np.array(SHARD_VERSION), "images": image_ids, "image_id": dets.image_id,
              "category_id": dets.category_id, "score": dets.score}
    if dets.bbox is not None:
        arrays["bbox"] = dets.bbox
    if dets.masks is not None:
        m = dets.masks
        arrays.update(mask_size=m.size, mask_offsets=m.offsets, mask_counts=np.frombuffer(m.counts, np.uint8))
    return arrays


def write_shard(path: str | os.PathLike, dets: Detections, image_ids: Iterable[int]) -> Path:
    """One shard file (atomically): ``dets`` and the ids of the images they come from."""
    path = Path(path)
    arrays = _shard_arrays(dets, np.asarray(list(image_ids), dtype=np.int64))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
    return path


def read_shard(path: str | os.PathLike, iou_types: Sequence[str] = IOU_TYPES) -> tuple[Detections, np.ndarray]:
    """A shard's detections (the geometry of ``iou_types`` only) and its image ids."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "mask_counts" or "segm" in iou_types}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable ltcls results shard ({err})") from None
    if "version" not in arrays or int(arrays["version"]) != SHARD_VERSION:
        raise ValueError(f"{path}: not an ltcls results shard of version {SHARD_VERSION}")
    bbox = arrays.get("bbox") if "bbox" in iou_types else None
    masks = None
    if "segm" in iou_types and "mask_counts" in arrays:
        masks = Masks(arrays["mask_size"], arrays["mask_counts"].tobytes(), arrays["mask_offsets"])
    return Detections(arrays["image_id"], arrays["category_id"], arrays["score"], bbox, masks), arrays["images"]


@dataclass(frozen=True)
class Shards:
    """A set of shard files (e.g. every rank's, gathered on rank 0)."""

    paths: tuple[Path, ...]

    @classmethod
    def in_folder(cls, folder: str | os.PathLike) -> Shards:
        folder = Path(folder)
        paths = tuple(sorted(folder.glob(f"*{SHARD_SUFFIX}")))
        if not paths:
            raise ValueError(f"{folder}: no ltcls results shards (*{SHARD_SUFFIX}) in this folder")
        return cls(paths)

    def image_ids(self) -> np.ndarray:
        """The sorted ids of every image the shards' detections were computed on."""
        ids = [np.load(p, allow_pickle=False)["images"] for p in self.paths]
        return np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)


class ShardWriter:
    """Writes detections to ``folder/PREFIX-NNNNN.npz``, a shard each time ``rows`` detections are buffered, so a
    process holds at most one shard's detections; ``close`` writes the rest and returns every shard's path;
    ``discard`` removes them (and ``folder`` itself when ``owns_folder``). Stale shards of the same prefix (an
    interrupted evaluation's) are removed first."""

    def __init__(self, folder: str | os.PathLike, prefix: str = "rank000", rows: int = 50_000,
                 owns_folder: bool = False) -> None:
        self.folder, self.prefix, self.rows, self.owns_folder = Path(folder), prefix, int(rows), owns_folder
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(f"{prefix}-*{SHARD_SUFFIX}"):
            stale.unlink()
        self.paths: list[Path] = []
        self._parts: list[Detections] = []
        self._images: list[int] = []
        self._buffered = 0

    def add(self, dets: Detections, image_ids: Iterable[int]) -> None:
        """Buffer ``dets`` and the ids of the images they come from (an image without detections included)."""
        self._parts.append(dets)
        self._images.extend(int(i) for i in image_ids)
        self._buffered += len(dets)
        if self._buffered >= self.rows:
            self.flush()

    def flush(self) -> None:
        if not self._parts and not self._images:
            return
        path = self.folder / f"{self.prefix}-{len(self.paths):05d}{SHARD_SUFFIX}"
        self.paths.append(write_shard(path, Detections.concat(self._parts), self._images))
        self._parts, self._images, self._buffered = [], [], 0

    def close(self) -> list[Path]:
        self.flush()
        return list(self.paths)

    def discard(self) -> None:
        for p in self.paths:
            p.unlink(missing_ok=True)
        self.paths, self._parts, self._images, self._buffered = [], [], [], 0
        if self.owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ sources

#: What :func:`iter_detections` reads: a json file or a shard folder (path), shards, columns, or result dicts.
ResultsSource = str | os.PathLike | Shards | Detections | Sequence[Mapping[str, Any]]


def iter_detections(source: ResultsSource, iou_type: str) -> Iterator[Detections]:
    """``source``'s detections a chunk at a time, with the geometry ``iou_type`` evaluates."""
    check_iou_type(iou_type)
    if isinstance(source, Detections):
        source.require(iou_type)
        yield source
    elif isinstance(source, Shards):
        for path in source.paths:
            dets = read_shard(path, (iou_type,))[0]
            dets.require(iou_type, str(path))
            yield dets
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            yield from iter_detections(Shards.in_folder(path), iou_type)
            return
        if not path.is_file():
            raise FileNotFoundError(f"LVIS results file {path} does not exist")
        for chunk in iter_json_results(path):
            yield Detections.from_dicts(chunk, (iou_type,), str(path))
    else:
        for start in range(0, len(source), DICT_CHUNK):
            yield Detections.from_dicts(source[start:start + DICT_CHUNK], (iou_type,))
