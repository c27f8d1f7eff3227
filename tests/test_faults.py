"""Issue 21's faults, kept as a suite: writers racing on one path, a full disk (an injected ENOSPC) while
ltcls-eval / ltcls-predict / training write their outputs, what ltcls-predict may replace, the start-up checks
that must end in one line with exit 2 and no run directory, and image modes (16-bit PNGs, alpha, palettes) read
as their true intensities."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltcls import io as ltcls_io
from ltcls.cli import eval as eval_cli
from ltcls.cli import predict as predict_cli
from ltcls.cli import train_main
from ltcls.data.datasets.split_file import SplitList, split_file
from ltcls.data.images import open_rgb, to_rgb
from ltcls.data.transforms import build_transforms
from ltcls.io import AtomicFiles, DiskFullError, WriteError, atomic_write, atomic_write_text
from ltcls.registry import Registry
from ltcls.rundir import RunDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).parents[1]
CONFIG = str(ROOT / "configs" / "digits_lt_ce.yaml")
#: ResNet-8 on 16x16 digits, one epoch of 12 steps, no loader workers.
TINY = ["model.name=cifar_resnet8", "data.img_size=16", "train.epochs=1", "train.batch_size=32",
        "train.num_workers=0", "eval.interval=0"]


def _error_line(capsys: pytest.CaptureFixture, prog: str) -> str:
    """The command's one error line, after checking that nothing else went wrong on stderr (no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _fail_writes_of(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Writing a file named ``name`` hits a full disk: part of it is written, then fsync fails with ENOSPC."""
    real = ltcls_io._fsync

    def fsync(path: Path) -> None:
        if path.name.startswith(f".{name}.") and path.name.endswith(ltcls_io.TMP_SUFFIX):
            path.write_bytes(b"\x89PNG half a fi")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path)

    monkeypatch.setattr(ltcls_io, "_fsync", fsync)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (hidden ones too: a left temporary file would show) and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny digits run."""
    path = tmp_path_factory.mktemp("faults") / "run"
    assert train_main(["--config", CONFIG, "--work-dir", str(path), "--set", *TINY]) == 0
    return path


# ------------------------------------------------------------------------------------------ the atomic writer

WRITER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("ltcls_io", sys.argv[1])
io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io)
path, me, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for k in range(n):
    io.atomic_write_text(path, json.dumps({"writer": me, "k": k, "pad": str(me) * (2000 + 97 * k)}))
"""


def test_concurrent_writers_of_one_path_never_fail_nor_show_half_a_file(tmp_path: Path) -> None:
    """4 processes write the same file 150 times each while this one reads it: no writer fails (the old fixed
    NAME.tmp lost files to each other's renames), every read is one whole file, and no temporary file stays."""
    path = tmp_path / "metrics.json"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, ltcls_io.__file__, str(path), str(me), "150"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in range(4)]
    reads, corrupt, seen = 0, [], False
    deadline = time.monotonic() + 240
    while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
        try:
            text = path.read_text()
        except FileNotFoundError:
            assert not seen, "the file vanished between two writes"
            continue
        seen = True
        reads += 1
        try:
            data = json.loads(text)
            assert data["pad"] == str(data["writer"]) * (2000 + 97 * data["k"])
        except (ValueError, KeyError, AssertionError):
            corrupt.append(text[:80])
    for w in writers:
        _, err = w.communicate(timeout=240)
        assert w.returncode == 0 and not err, err
    assert reads > 0 and corrupt == []
    assert json.loads(path.read_text())["k"] == 149
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_temporary_files_are_unique_and_get_the_usual_permissions(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    names = []

    def write(tmp: Path) -> None:
        names.append(tmp.name)
        tmp.write_text("x")

    atomic_write(path, write)
    atomic_write(path, write)
    assert names[0] != names[1] and all(n.startswith(".out.txt.") and n.endswith(".tmp") for n in names)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


def test_write_error_names_the_file_and_keeps_the_previous_content(tmp_path: Path) -> None:
    path = tmp_path / "per_class.csv"
    path.write_text("previous\n")

    def denied(tmp: Path) -> None:
        tmp.write_text("half")
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(WriteError) as info:
        atomic_write(path, denied)
    assert not isinstance(info.value, DiskFullError) and info.value.errno == errno.EACCES
    assert str(info.value) == f"cannot write {path}: Permission denied (the previous per_class.csv, if any, is kept)"
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'nowhere' / 'x.json'}: No such file"):
        atomic_write_text(tmp_path / "nowhere" / "x.json", "{}")
    assert _files(tmp_path) == {"per_class.csv": b"previous\n"}


def test_no_replace_keeps_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "predictions.csv"
    atomic_write_text(path, "first\n", replace=False)
    with pytest.raises(FileExistsError, match="already exists"):
        atomic_write_text(path, "second\n", replace=False)
    assert _files(tmp_path) == {"predictions.csv": b"first\n"}


def test_a_set_of_files_appears_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.csv").write_text("old a")
    with AtomicFiles() as files:
        files.write_text(tmp_path / "a.csv", "new a")
        files.write_text(tmp_path / "b.png", "new b")
        assert _files(tmp_path)["a.csv"] == b"old a" and "b.png" not in _files(tmp_path)  # nothing renamed yet
    assert _files(tmp_path) == {"a.csv": b"new a", "b.png": b"new b"}
    _fail_writes_of(monkeypatch, "metrics.json")
    with pytest.raises(DiskFullError, match=f"while writing {tmp_path / 'metrics.json'} .*nothing in {tmp_path}"):
        with AtomicFiles() as files:
            files.write_text(tmp_path / "a.csv", "newer a")
            files.write_text(tmp_path / "metrics.json", "{}")
    with pytest.raises(KeyboardInterrupt):
        with AtomicFiles() as files:
            files.write_text(tmp_path / "a.csv", "newer a")
            raise KeyboardInterrupt
    assert _files(tmp_path) == {"a.csv": b"new a", "b.png": b"new b"}


def test_remove_stale_temps_finds_the_unique_names(tmp_path: Path) -> None:
    left = tmp_path / ".checkpoint.pt.0123456789abcdef.tmp"
    left.write_bytes(b"partial")
    (tmp_path / "checkpoint.pt").write_bytes(b"whole")
    assert RunDir(tmp_path).remove_stale_temps() == [left]
    assert _files(tmp_path) == {"checkpoint.pt": b"whole"}


# ---------------------------------------------------------------------------- a full disk during a command


def test_eval_disk_full_is_one_line_exit_1_and_changes_no_output(run: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """The first and the last file of the set: each time one line naming it, exit 1, and the previous
    evaluation's files (metrics.json included) exactly as they were; a first evaluation leaves nothing."""
    out = tmp_path / "eval"
    assert eval_cli.main([str(run), "--out", str(out)]) == 0
    before = _files(out)
    assert set(before) == {"metrics.json", "per_class.csv", "reliability.png", "confusion_matrix.png",
                           "per_class_accuracy.png"}
    capsys.readouterr()
    for name in ("per_class.csv", "metrics.json"):
        with monkeypatch.context() as m:
            _fail_writes_of(m, name)
            with pytest.raises(SystemExit) as info:  # other numbers than before: a changed file would show
                eval_cli.main([str(run), "--out", str(out), "--logit-adjust-tau", "1.0"])
        line = _error_line(capsys, "ltcls-eval")
        assert info.value.code == 1 and f"no space left on device while writing {out / name}" in line, line
        assert _files(out) == before
    fresh = tmp_path / "fresh"
    _fail_writes_of(monkeypatch, "reliability.png")
    with pytest.raises(SystemExit) as info:
        eval_cli.main([str(run), "--out", str(fresh)])
    assert info.value.code == 1 and str(fresh / "reliability.png") in _error_line(capsys, "ltcls-eval")
    assert _files(fresh) == {}


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"img{i}.png" for i in range(n)]
    for p in paths:
        Image.fromarray(rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(p)
    return paths


def test_predict_disk_full_leaves_no_file(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    _images(tmp_path / "photos", 3)
    out = tmp_path / "out" / "p.csv"
    _fail_writes_of(monkeypatch, "p.csv")
    with pytest.raises(SystemExit) as info:
        predict_cli.main([str(run), str(tmp_path / "photos"), "--out", str(out)])
    assert info.value.code == 1 and f"while writing {out}" in _error_line(capsys, "ltcls-predict")
    assert _files(out.parent) == {}  # no 0-byte file, no temporary file


def test_predict_replaces_only_what_it_is_told_to(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    """The default ./predictions.csv never replaces a file; an explicit --out does; a folder without a readable
    image is one line, exit 2, and writes nothing."""
    _images(tmp_path / "photos", 2)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "predictions.csv").write_text("my own notes\n")
    with pytest.raises(SystemExit) as info:
        predict_cli.main([str(run), "photos"])
    line = _error_line(capsys, "ltcls-predict")
    assert info.value.code == 2 and "predictions.csv already exists" in line and "--out" in line
    assert (tmp_path / "predictions.csv").read_text() == "my own notes\n"
    assert predict_cli.main([str(run), "photos", "--out", "predictions.csv"]) == 0
    assert (tmp_path / "predictions.csv").read_text().startswith("path,top1,prob1")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "broken.png").write_bytes(b"not a png")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        predict_cli.main([str(run), "nothing", "--out", "n.json"])
    line = _error_line(capsys, "ltcls-predict")
    assert info.value.code == 2 and "none of the 1 image file(s) under nothing could be read" in line
    assert not (tmp_path / "n.json").exists()


def test_training_disk_full_at_the_final_figure_is_one_line_then_resumes(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "run"
    with monkeypatch.context() as m:
        _fail_writes_of(m, "acc_per_class_accuracy.png")
        with pytest.raises(SystemExit) as info:
            train_main(["--config", CONFIG, "--work-dir", str(work), "--set", *TINY])
    line = _error_line(capsys, "ltcls-train")
    assert info.value.code == 1 and f"no space left on device while writing {work / 'acc_per_class_accuracy.png'}" \
        in line
    assert not list(work.glob("*.tmp")) and not (work / "metrics.json").exists()
    assert train_main(["--work-dir", str(work), "--resume"]) == 0  # space freed: the run finishes
    assert (work / "metrics.json").is_file() and (work / "acc_per_class_accuracy.png").stat().st_size > 1000


# ----------------------------------------------------------------------------------------- start-up checks


def _split_dataset(tmp_path: Path, train_labels: list[int]) -> list[str]:
    """A split_file dataset of 8x8 PNGs with the given train labels (test: the first two of them)."""
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    lines = []
    for i, label in enumerate(train_labels):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(root / f"{i}.png")
        lines.append(f"{i}.png {label}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(lines[:2]) + "\n")
    return ["data.name=split_file", f"data.root={root}", f"data.train_split={tmp_path / 'train.txt'}",
            f"data.test_split={tmp_path / 'test.txt'}"]


@pytest.mark.parametrize("case", ["accum", "world_size", "no_step", "label", "negative_label", "config_dir",
                                  "empty_config", "loss_value"])
def test_start_up_error_is_one_line_exit_2_without_run_directory(case: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    config, extra, expected = CONFIG, [], ""
    if case == "accum":
        extra, expected = ["train.batch_size=3", "train.accum_steps=2"], "train.batch_size (3) must be a multiple"
    elif case == "world_size":  # what torchrun's environment says before the engine starts
        monkeypatch.setenv("WORLD_SIZE", "2")
        extra, expected = ["train.batch_size=63"], "number of processes (2)"
    elif case == "no_step":
        extra, expected = ["train.batch_size=1000", "train.accum_steps=2"], "gives no optimizer step"
    elif case in ("label", "negative_label"):
        bad = 1000000000 if case == "label" else -1
        extra = _split_dataset(tmp_path, [0, 1, 0, bad])
        expected = f"{tmp_path / 'train.txt'} line 4: label {bad}"
    elif case == "config_dir":
        config, expected = str(tmp_path), f"config file {tmp_path} is a folder"
    elif case == "empty_config":
        config, expected = str(tmp_path / "empty.yaml"), "is empty"
        Path(config).write_text("# nothing yet\n")
    elif case == "loss_value":
        extra, expected = ["loss.name=seesaw", "loss.p=-1"], "loss.p=-1.0"
    work = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        train_main(["--config", config, "--work-dir", str(work), "--set", *TINY, *extra])
    line = _error_line(capsys, "ltcls-train")
    assert info.value.code == 2 and expected in line, line
    assert not work.exists()


@pytest.mark.slow  # two torchrun processes importing torch: ~30-60 s on 2 cores
def test_torchrun_batch_not_divisible_by_processes_is_one_line_per_rank(tmp_path: Path) -> None:
    work = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                           "-m", "ltcls.cli", "train", "--config", CONFIG, "--work-dir", str(work), "--set", *TINY,
                           "train.batch_size=63"], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "LTCLS_DEBUG": ""})
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ltcls-train: error:")]
    assert len(lines) == 2 and all("number of processes (2)" in line for line in lines), proc.stderr[-3000:]
    assert "/ltcls/" not in proc.stderr  # torchrun's own report follows, but no traceback through ltcls's code
    assert not work.exists()


def test_a_batch_larger_than_the_epoch_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "defaults.yaml").write_text("{}\n")  # an explicit empty mapping: the defaults, on purpose
    assert train_main(["--config", str(tmp_path / "defaults.yaml"), "--print-config", "--set", *TINY,
                       "train.batch_size=1000"]) == 0
    err = capsys.readouterr().err
    assert "train.batch_size (1000) is larger than the epoch: an epoch of the train split is 399 samples" in err


def test_sparse_labels_are_refused_but_a_subset_of_1000_classes_is_not() -> None:
    def split(labels: list[int]) -> SplitList:
        n = len(labels)
        return SplitList("t.txt", [f"{i}.png" for i in range(n)], np.asarray(labels), np.arange(1, n + 1))

    assert split([0, 5, 999]).class_count() == 1000  # e.g. 3 ImageNet classes under their own indices
    assert split(list(range(200)) + [1999]).class_count() == 2000
    with pytest.raises(ValueError, match="t.txt line 3: label 5000 is far above the 3 distinct labels"):
        split([0, 1, 5000]).class_count()


def test_a_component_error_names_its_config_key() -> None:
    reg = Registry("loss", section="loss")

    @reg.register("toy")
    def toy(num_classes: int = 1, p: float = 0.8, q: float = 2.0) -> None:
        if p < 0:
            raise ValueError(f"p must be >= 0, got {p}")
        raise ValueError("something else entirely")

    with pytest.raises(ValueError, match=r"^loss\.p=-1 \(loss 'toy'\): p must be >= 0, got -1$"):
        reg.build("toy", {"p": -1})
    with pytest.raises(ValueError, match="^something else entirely$"):  # names no key: left as it is
        reg.build("toy", {"q": 1.0})


# ------------------------------------------------------------------------------------------------ images


def test_16_bit_png_reads_as_its_true_intensities(tmp_path: Path) -> None:
    """A 16-bit grey PNG (PIL: I;16) is scaled by 1/257, not clipped to white; a random one equals its 8-bit
    twin exactly. Big-endian 16-bit TIFF too."""
    Image.fromarray(np.array([[0, 2570, 25700, 65535]], dtype=np.uint16)).save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as img:
        assert img.mode == "I;16"
    assert np.asarray(open_rgb(str(tmp_path / "ramp.png"))).tolist() == [[[v] * 3 for v in (0, 10, 100, 255)]]
    eight = np.random.default_rng(0).integers(0, 256, (12, 10), dtype=np.uint8)
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    Image.fromarray(eight.astype(">u2") * 257).save(tmp_path / "sixteen_be.tif")
    for name in ("sixteen.png", "sixteen_be.tif"):
        assert np.array_equal(np.asarray(open_rgb(str(tmp_path / name))), np.repeat(eight[..., None], 3, axis=2))


def test_other_modes_read_as_rgb(tmp_path: Path) -> None:
    """32-bit integer and float grey by their range, alpha and palette transparency over white, 1-bit, CMYK."""
    Image.fromarray(np.array([[-5, 0, 100000]], dtype=np.int32)).save(tmp_path / "i32.tif")  # no fixed white
    assert np.asarray(open_rgb(str(tmp_path / "i32.tif")))[0, :, 0].tolist() == [0, 0, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(floats))[0, :, 0].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[[100, 0], [100, 255], [100, 128]]], dtype=np.uint8), "LA").save(tmp_path / "la.png")
    assert np.asarray(open_rgb(str(tmp_path / "la.png")))[0, :, 0].tolist() == [255, 100, 177]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 255, 0])
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(open_rgb(str(tmp_path / "p.png"))).tolist() == [[[255, 255, 255], [0, 255, 0]]]
    Image.new("1", (2, 2), 1).save(tmp_path / "bits.png")
    assert np.asarray(open_rgb(str(tmp_path / "bits.png"))).max() == 255
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    assert open_rgb(str(tmp_path / "cmyk.jpg")).getpixel((0, 0)) == (255, 0, 0)


def test_a_dataset_of_16_bit_pngs_trains_on_what_its_8_bit_twin_shows(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lines = []
    for depth in (8, 16):
        (tmp_path / str(depth)).mkdir()
    for i in range(4):
        grey = rng.integers(0, 256, (20, 20), dtype=np.uint8)
        Image.fromarray(grey).save(tmp_path / "8" / f"{i}.png")
        Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16" / f"{i}.png")
        lines.append(f"{i}.png {i % 2}")
    (tmp_path / "split.txt").write_text("\n".join(lines) + "\n")
    _, eval_tf = build_transforms(img_size=16, augment="none")
    views = [split_file(eval_transform=eval_tf, train_transform=eval_tf, root=str(tmp_path / str(depth)),
                        train_split=str(tmp_path / "split.txt"), test_split=str(tmp_path / "split.txt")).test
             for depth in (8, 16)]
    for i in range(4):
        assert views[0][i][0].equal(views[1][i][0])
