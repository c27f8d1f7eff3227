"""Shared data fixtures: CIFAR-format pickle folders and a tiny tree of real images."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltcls.plugins import load_plugins

load_plugins()  # as every ltcls command does: the plug-ins' names (lvis, detection, simcal) are known in every test

# Python 3's pickle protocol 2 stores bytes as latin-1 text (1.5x the size, ~20x slower to write and read);
# torchvision reads any protocol, so the fixture writes protocol 4.
_PROTOCOL = 4


@dataclass
class CifarFiles:
    """Where the fake CIFAR folders live, and what was written (train data rows and labels, in file order)."""

    root: str
    train10: np.ndarray
    labels10: np.ndarray
    train100: np.ndarray
    labels100: np.ndarray


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=_PROTOCOL)


def _shuffled_labels(rng: np.random.Generator, num_classes: int, per_class: int) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


@pytest.fixture(scope="session")
def cifar_files(tmp_path_factory: pytest.TempPathFactory) -> CifarFiles:
    """``cifar-10-batches-py`` and ``cifar-100-python`` with the real file and key names and the real class
    sizes (5000 / 500 per class in train, 1000 / 100 in test), random uint8 pixels (N, 3072)."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)

    c10 = root / "cifar-10-batches-py"
    c10.mkdir()
    data10 = rng.integers(0, 256, (50000, 3072), dtype=np.uint8)
    labels10 = _shuffled_labels(rng, 10, 5000)
    for b in range(5):
        rows = slice(b * 10000, (b + 1) * 10000)
        _dump(c10 / f"data_batch_{b + 1}", {"batch_label": f"training batch {b + 1} of 5", "data": data10[rows],
                                            "labels": labels10[rows].tolist()})
    _dump(c10 / "test_batch", {"batch_label": "testing batch 1 of 1",
                               "data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8),
                               "labels": _shuffled_labels(rng, 10, 1000).tolist()})
    names10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(c10 / "batches.meta", {"label_names": names10, "num_cases_per_batch": 10000, "num_vis": 3072})

    c100 = root / "cifar-100-python"
    c100.mkdir()
    data100 = rng.integers(0, 256, (50000, 3072), dtype=np.uint8)
    labels100 = _shuffled_labels(rng, 100, 500)
    _dump(c100 / "train", {"data": data100, "fine_labels": labels100.tolist(),
                           "coarse_labels": (labels100 // 5).tolist()})
    test100 = _shuffled_labels(rng, 100, 100)
    _dump(c100 / "test", {"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8),
                          "fine_labels": test100.tolist(), "coarse_labels": (test100 // 5).tolist()})
    _dump(c100 / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                          "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return CifarFiles(str(root), data10, labels10, data100, labels100)


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """``root/`` with 2 PNG and 2 JPEG images of two classes (non-square, RGB and grayscale), and a file
    ``outside.png`` next to (not under) root for the escape checks."""
    root = tmp_path / "images"
    for rel, mode, color in [("cls0/a.png", "RGB", (255, 0, 0)), ("cls0/b.jpg", "L", 128),
                             ("cls1/c.png", "RGB", (0, 0, 255)), ("cls1/sub/d.jpg", "RGB", (0, 255, 0))]:
        path = root / rel
        os.makedirs(path.parent, exist_ok=True)
        Image.new(mode, (40, 30), color).save(path)
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): on a
    2-core machine shared with other jobs, two OpenMP threads spin against each other and make CPU-bound
    detection tests several times slower; one thread keeps their time predictable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Prepended to a script run by :func:`run_without_ltcls`: torch's folder on the path, and proof that ltcls is not.
_WITHOUT_LTCLS = """
import sys
sys.path.append(sys.argv.pop(1))
try:
    import ltcls  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("ltcls is importable here: " + ltcls.__file__)
"""


def run_without_ltcls(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``script`` in a Python that cannot import ltcls (``-I -S``: no site-packages processing, so the
    editable install's .pth file is invisible; PYTHONPATH dropped) but has torch; fails the test on an error."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    site = str(Path(torch.__file__).parents[1])
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", _WITHOUT_LTCLS + script, site, *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.stderr + proc.stdout)[-3000:]
    return proc
