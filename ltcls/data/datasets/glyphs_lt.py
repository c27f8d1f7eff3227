"""glyphs-LT: a download-free benchmark at ImageNet-LT's shape. 1,000 classes of characters rendered from the
fonts matplotlib ships, distorted (:mod:`ltcls.data.datasets.glyph_render`), with ImageNet-LT's count profile
scaled down (:func:`ltcls.data.tools.profiles.imagenet_lt_profile`) and balanced val / test splits.

Generated once into ``ROOT/glyphs_lt/`` (one ``.npz`` of uint8 images and labels per parameter set, its name
carrying a hash of the parameters, with a ``.json`` beside it for people: class list, counts, parameters,
versions). A later build with the same parameters reads the file; other parameters have their own file. The
file is written atomically, under a lock (concurrent processes generate once), and a file that does not read
back whole, or that holds other parameters, is generated again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, features

from ltcls.data.base import ArrayDataset, DataSplits
from ltcls.data.datasets import glyph_render as render
from ltcls.data.tools.profiles import imagenet_lt_profile
from ltcls.io import atomic_write, atomic_write_text
from ltcls.registries import DATASETS

logger = logging.getLogger(__name__)

#: Bumped whenever the images a parameter set gives change (rendering, fonts used, class choice, distortions):
#: files of another version are regenerated.
GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")
#: The stream number of each split's images in :func:`glyph_render.sample_stream`.
_STREAM = {"test": 0, "val": 1, "train": 2}


@dataclass(frozen=True)
class GlyphsSpec:
    """Everything the generated images depend on (the cache key)."""

    num_classes: int = 1000
    scale: float = 0.3
    seed: int = 0
    render_size: int = 32
    distortion: float = 1.0
    test_per_class: int = 20
    val_per_class: int = 10

    def check(self) -> None:
        """Raise ValueError naming the first out-of-range value."""
        rules = [("num_classes", self.num_classes >= 2, ">= 2"), ("scale", 0 < self.scale <= 1, "in (0, 1]"),
                 ("render_size", 8 <= self.render_size <= 256, "in [8, 256]"),
                 ("distortion", 0 <= self.distortion <= 3, "in [0, 3]"),
                 ("test_per_class", self.test_per_class >= 1, ">= 1"),
                 ("val_per_class", self.val_per_class >= 0, ">= 0")]
        for key, ok, want in rules:
            if not ok:
                raise ValueError(f"glyphs_lt: data.{key} must be {want}, got {getattr(self, key)}")

    def params(self) -> dict[str, object]:
        """The parameters as stored in the file (with the generator version and the distortion strengths)."""
        return {"version": GENERATOR_VERSION, **asdict(self),
                "distortions": asdict(render.Distortion().scaled(self.distortion))}

    def file_stem(self) -> str:
        digest = hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()[:10]
        return f"glyphs_lt-{self.num_classes}c-seed{self.seed}-{digest}"


@dataclass
class GlyphArrays:
    """A generated set: per split (N, S, S) uint8 images and int64 labels, and the metadata (class names,
    code points, counts, parameters)."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    meta: dict[str, object]

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.meta["classes"]]  # type: ignore[union-attr]


def train_counts(spec: GlyphsSpec) -> np.ndarray:
    """Training images of each class: the scaled ImageNet-LT profile, its counts dealt to the classes in a
    random order drawn from the seed (which classes are head or tail depends on the seed)."""
    profile = np.asarray(imagenet_lt_profile(spec.num_classes, spec.scale), dtype=np.int64)
    order = np.random.default_rng(spec.seed).permutation(spec.num_classes)
    counts = np.empty(spec.num_classes, dtype=np.int64)
    counts[order] = profile
    return counts


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one intra-op thread: the per-class batches are small, and OpenMP's thread synchronisation costs
    more than a second thread gains (2.3x slower with two on the shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def generate(spec: GlyphsSpec, progress: bool | None = None) -> GlyphArrays:
    """Choose the classes and render every split (``progress``: tqdm bar; None shows it on a terminal only)."""
    with _one_thread():
        return _generate(spec, progress)


def _generate(spec: GlyphsSpec, progress: bool | None) -> GlyphArrays:
    from tqdm.auto import tqdm  # lazy: only generation needs it

    start = time.perf_counter()
    classes = render.select_classes(spec.num_classes, 2 * spec.render_size, progress=progress)
    per_split = {"train": train_counts(spec), "val": np.full(spec.num_classes, spec.val_per_class),
                 "test": np.full(spec.num_classes, spec.test_per_class)}
    distortion = render.Distortion().scaled(spec.distortion)
    chunks: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    bar = tqdm(classes, desc="glyphs_lt: rendering", disable=None if progress is None else not progress, leave=False)
    for i, cls in enumerate(bar):
        bank = render.stroke_bank(cls.renders, spec.render_size)
        for split in SPLITS:
            stream = render.sample_stream(spec.seed, cls.codepoint, _STREAM[split])
            chunks[split].append(render.distort(bank, int(per_split[split][i]), distortion, stream))
    images = {s: np.concatenate(chunks[s]) for s in SPLITS}
    labels = {s: np.repeat(np.arange(spec.num_classes), per_split[s]) for s in SPLITS}
    meta = {"params": spec.params(), "classes": [c.name for c in classes],
            "codepoints": [c.codepoint for c in classes],
            "counts": {s: per_split[s].tolist() for s in SPLITS},
            "fonts": [os.path.basename(p) for p in render.font_coverage()[0]],
            "pillow": Image.__version__, "freetype": features.version("freetype2"),
            "seconds": round(time.perf_counter() - start, 1)}
    return GlyphArrays(images, labels, meta)


def save(path: Path, data: GlyphArrays) -> None:
    """Write the ``.npz`` (atomically), then the ``.json`` beside it."""
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(data.meta))}
    for s in SPLITS:
        arrays[f"{s}_images"] = data.images[s]
        arrays[f"{s}_labels"] = data.labels[s].astype(np.int32)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
    atomic_write_text(path.with_suffix(".json"), json.dumps(data.meta, indent=1) + "\n")


def load(path: Path, spec: GlyphsSpec, quiet: bool = False) -> GlyphArrays | None:
    """The set stored at ``path`` if it reads back whole and holds ``spec``'s parameters; None otherwise (the
    reason is logged as a warning, or at debug level when ``quiet``)."""
    log = logger.debug if quiet else logger.warning
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            images = {s: z[f"{s}_images"] for s in SPLITS}
            labels = {s: z[f"{s}_labels"].astype(np.int64) for s in SPLITS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        log("glyphs_lt: %s does not read back (%s); generating it again", path, e)
        return None
    if meta.get("params") != spec.params():
        log("glyphs_lt: %s holds other parameters; generating it again", path)
        return None
    bad = [s for s in SPLITS if len(images[s]) != len(labels[s])
           or len(labels[s]) != sum(meta["counts"][s]) or images[s].shape[1:] != (spec.render_size,) * 2]
    if bad:
        log("glyphs_lt: %s has inconsistent %s arrays; generating it again", path, bad[0])
        return None
    return GlyphArrays(images, labels, meta)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/.lock`` (waits for another process generating into the same folder)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ValueError(f"glyphs_lt: cannot write into data.root folder '{folder}': {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_or_generate(root: str | os.PathLike, spec: GlyphsSpec, progress: bool | None = None) -> GlyphArrays:
    """The set of ``spec`` under ``root/glyphs_lt/``: read if present and whole (no lock needed, so a read-only
    copy works), else generated and saved under the folder's lock (a process that waited re-reads instead)."""
    spec.check()
    folder = Path(root) / "glyphs_lt"
    path = folder / f"{spec.file_stem()}.npz"
    data = load(path, spec, quiet=True) if path.exists() else None
    if data is not None:
        return data
    with _locked(folder):
        data = load(path, spec) if path.exists() else None
        if data is None:
            logger.info("glyphs_lt: generating %s (%d classes, seed %d)", path, spec.num_classes, spec.seed)
            data = generate(spec, progress)
            save(path, data)
            logger.info("glyphs_lt: %d train / %d val / %d test images in %.1f s", *(len(data.labels[s]) for s in
                        SPLITS), data.meta["seconds"])
    return data


def _split(data: GlyphArrays, split: str, transform: Callable | None) -> ArrayDataset:
    return ArrayDataset(data.images[split], data.labels[split], len(data.classes), data.classes, transform)


@DATASETS.register("glyphs_lt")
def glyphs_lt(
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    root: str = "data",
    num_classes: int = 1000,
    scale: float = 0.3,
    seed: int = 0,
    render_size: int = 32,
    distortion: float = 1.0,
    test_per_class: int = 20,
    val_per_class: int = 10,
) -> DataSplits:
    """Characters of the shipped fonts, ``num_classes`` of them; train counts follow ImageNet-LT's profile
    scaled by ``scale`` (1: ImageNet-LT's 115,755 images at 1000 classes), balanced test and val splits
    (``test_per_class``, ``val_per_class``; 0: no val). Images are ``render_size`` pixels square, grayscale
    (loaded as RGB); ``distortion`` scales every random distortion (0: clean glyphs). Everything derives from
    ``seed``; generated once into ``root/glyphs_lt/``."""
    spec = GlyphsSpec(num_classes=num_classes, scale=scale, seed=seed, render_size=render_size,
                      distortion=distortion, test_per_class=test_per_class, val_per_class=val_per_class)
    data = load_or_generate(root, spec)
    return DataSplits(train=_split(data, "train", train_transform), test=_split(data, "test", eval_transform),
                      val=_split(data, "val", eval_transform) if val_per_class else None)

