"""`ltcls-eval`, `ltcls-predict` and `ltcls-export` on finished runs: evaluation reproduces the run's metrics.json,
prediction skips unreadable files, the exported module gives the model's logits where ltcls cannot be imported,
stage-2 runs (tau-norm's checkpoint, a dual head) work, and an image_folder run goes end to end."""

from __future__ import annotations

import csv
import errno
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_without_ltcls
from PIL import Image

from ltcls.cli import eval as eval_cli
from ltcls.cli import export as export_cli
from ltcls.cli import predict as predict_cli
from ltcls.cli import train_main
from ltcls.engine.checkpoint import Checkpoint
from ltcls.export import exporter, meta_path
from ltcls.stage2.inference import load_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).parents[1]
#: The tiny recipe: ResNet-8 on 16x16 images, 2 epochs, no loader workers.
TINY = ["model.name=cifar_resnet8", "data.img_size=16", "train.epochs=2", "train.num_workers=0", "eval.interval=0"]
#: What a run's metrics.json and ltcls-eval's must agree on exactly.
SAME = ("overall", "many", "medium", "few", "mean_per_class", "per_class", "class_counts", "group_sizes",
        "num_classes", "class_names")
DIGITS = [str(d) for d in range(10)]

# Run where ltcls cannot be imported (conftest.run_without_ltcls): each exported file loaded as a consumer does.
_LOAD_WITHOUT_LTCLS = """
import torch
x = torch.load(sys.argv[1])
outputs = []
for path in sys.argv[3:]:
    if path.endswith(".onnx"):
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        outputs.append(torch.from_numpy(session.run(None, {"images": x.numpy()})[0]))
    elif path.endswith(".torchscript.pt"):
        outputs.append(torch.jit.load(path)(x))
    else:
        outputs.append(torch.export.load(path).module()(x))
torch.save(outputs, sys.argv[2])
"""


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "digits"
    assert train_main(["--config", str(ROOT / "configs" / "digits_lt_ce.yaml"), "--work-dir", str(run),
                       "--set", *TINY]) == 0
    return run


def _images(root: Path, n: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"img{i}.png" for i in range(n)]
    for p in paths:
        Image.fromarray(rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(p)
    return paths


def _exported_logits(modules: list[Path], x: torch.Tensor, tmp_path: Path) -> list[torch.Tensor]:
    """The exported files' outputs on ``x`` (pt2, ``.onnx`` or ``.torchscript.pt``), computed in a Python that
    cannot import ltcls."""
    torch.save(x, tmp_path / "x.pt")
    run_without_ltcls(_LOAD_WITHOUT_LTCLS, str(tmp_path / "x.pt"), str(tmp_path / "y.pt"), *map(str, modules),
                      cwd=tmp_path)
    return torch.load(tmp_path / "y.pt")


def _normalized(x: torch.Tensor, meta: dict) -> torch.Tensor:
    return (x - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom ltcls.cli import eval, predict, export\nfor m in (eval, predict, export):\n"
            "    try:\n        m.main(['--help'])\n    except SystemExit as e:\n        assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for prog in ("ltcls-eval", "ltcls-predict", "ltcls-export"):
        assert f"usage: {prog}" in proc.stdout


def test_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for main, argv, expected in [
        (eval_cli.main, [str(tmp_path / "nope")], "no run directory"),
        (export_cli.main, [str(tmp_path)], "config.yaml is missing"),
        (predict_cli.main, [str(tmp_path), "a.png", "--out", "x.txt"], "expected a .csv or .json file"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("ltcls-") and expected in err[0], err


def test_eval_reproduces_the_runs_metrics(digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = Checkpoint.load(digits_run / "checkpoint.pt")
    assert ckpt.class_names == DIGITS and ckpt.num_classes == 10
    trained = json.loads((digits_run / "metrics.json").read_text())
    assert trained["class_names"] == DIGITS

    assert eval_cli.main([str(digits_run)]) == 0
    out = digits_run / "eval_test"
    got = json.loads((out / "metrics.json").read_text())
    assert {k: got[k] for k in SAME} == {k: trained[k] for k in SAME}
    printed = capsys.readouterr().out
    assert f"overall      {trained['overall']:.2f}" in printed and "ece" in printed
    assert 0.0 <= got["ece"] <= 100.0 and got["nll"] > 0 and len(got["calibration_bins"]) == 15
    assert sum(b["count"] for b in got["calibration_bins"]) == 300  # digits_lt: 30 test images per class
    for name in ("reliability.png", "confusion_matrix.png", "per_class_accuracy.png"):
        assert (out / name).stat().st_size > 1000, name
    with open(out / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == DIGITS
    assert [int(r["train_count"]) for r in rows] == trained["class_counts"]
    assert [float(r["accuracy"]) if r["accuracy"] else None for r in rows] == pytest.approx(trained["per_class"])

    # the train split through the eval transform, with post-hoc logit adjustment: another set of numbers
    assert eval_cli.main([str(digits_run), "--split", "train", "--logit-adjust-tau", "1.0",
                          "--out", str(tmp_path / "train")]) == 0
    train = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert train["split"] == "train" and train["logit_adjust_tau"] == 1.0
    assert sum(b["count"] for b in train["calibration_bins"]) == sum(trained["class_counts"])


def test_eval_tau_equals_a_tau_norm_head(digits_run: Path, tmp_path: Path) -> None:
    """``--tau`` evaluates the tau-normalized stage-1 head: its logits are x W^T / ||W||^tau without bias."""
    run = load_run(digits_run, with_data=False, tau=0.5)
    plain = load_run(digits_run, with_data=False)
    feats = torch.randn(5, plain.model.num_features)
    w = plain.model.classifier.weight.detach()
    expected = feats @ (w / w.norm(dim=1, keepdim=True) ** 0.5).T
    with torch.no_grad():
        assert torch.allclose(run.model.classifier(feats), expected, atol=1e-6)
    assert eval_cli.main([str(digits_run), "--tau", "0.5", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["tau"] == 0.5


def test_predict_skips_a_corrupt_file(digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = _images(tmp_path / "photos" / "sub", 3, seed=1)
    bad = tmp_path / "photos" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    assert predict_cli.main([str(digits_run), str(tmp_path / "photos"), "--topk", "3", "--out",
                             str(tmp_path / "p.csv"), "--batch-size", "2"]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "top1", "prob1", "top2", "prob2", "top3", "prob3"]
    assert sorted(r[0] for r in rows[1:]) == sorted(str(p) for p in good)
    assert all(r[1] in DIGITS and 0.0 <= float(r[2]) <= 1.0 and float(r[2]) >= float(r[4]) for r in rows[1:])

    assert predict_cli.main([str(digits_run), str(tmp_path / "photos"), "--out", str(tmp_path / "p.json")]) == 0
    data = json.loads((tmp_path / "p.json").read_text())
    assert len(data["predictions"]) == 3 and [u["path"] for u in data["unreadable"]] == [str(bad)]
    captured = capsys.readouterr()
    assert f"skipping unreadable image '{bad}'" in captured.err and "1 unreadable (skipped)" in captured.out


@pytest.mark.slow
def test_exported_module_equals_the_model_without_ltcls(digits_run: Path, tmp_path: Path) -> None:
    """The default format (pt2) and ONNX, run on a batch of another size than the export's where ltcls is not
    importable, give the run's logits."""
    out, onnx = tmp_path / "digits.pt2", tmp_path / "digits.onnx"
    assert export_cli.main([str(digits_run), "--out", str(out)]) == 0
    assert export_cli.main([str(digits_run), "--out", str(onnx), "--format", "onnx"]) == 0
    meta = json.loads(meta_path(out).read_text())
    assert meta["class_names"] == DIGITS and meta["input_size"] == [16, 16] and meta["mean"] == [0.5, 0.5, 0.5]
    assert meta["source_run"] == str(digits_run) and meta["format"] == "pt2"
    assert json.loads(meta_path(onnx).read_text())["format"] == "onnx"
    x = torch.rand(5, 3, 16, 16)
    got, got_onnx = _exported_logits([out, onnx], x, tmp_path)
    model = load_run(digits_run, with_data=False).model
    with torch.no_grad():
        expected = model(_normalized(x, meta))
    assert got.shape == (5, 10) and (got - expected).abs().max() <= 1e-5
    assert got_onnx.shape == (5, 10) and (got_onnx - expected).abs().max() <= 1e-4


def test_export_never_writes_over_a_run_and_fails_in_one_line(digits_run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """--out naming a run's file is refused (exit 2, the file untouched); the default name is written once and
    never replaced, an explicit --out of an earlier export is; --out model.json keeps its json apart
    (model.json.json); a full disk is one line naming the file, exit 1, the previous export intact (Ctrl-C too,
    exit 130); the legacy
    torchscript format warns in one log line, not with torch's FutureWarnings."""
    def refused(argv: list[str], code: int, expected: str) -> None:
        with pytest.raises(SystemExit) as e:
            export_cli.main([str(digits_run), *argv])
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert e.value.code == code and last.startswith("ltcls-export: ") and expected in last, err
        assert "Traceback" not in err

    checkpoint = (digits_run / "checkpoint.pt").read_bytes()
    refused(["--out", str(digits_run / "checkpoint.pt")], 2, "is one of the run's own files (checkpoint.pt)")
    refused(["--out", str(digits_run / "metrics")], 2, "is one of the run's own files (metrics.json)")
    assert (digits_run / "checkpoint.pt").read_bytes() == checkpoint

    assert export_cli.main([str(digits_run)]) == 0
    default = digits_run / "model.pt2"
    assert default.is_file() and meta_path(default).is_file()
    refused([], 2, "a default output name never replaces a file: pass --out")
    assert export_cli.main([str(digits_run), "--out", str(default)]) == 0
    assert "replacing the earlier export" in capsys.readouterr().err

    out = tmp_path / "model.json"
    assert export_cli.main([str(digits_run), "--out", str(out)]) == 0
    assert json.loads((tmp_path / "model.json.json").read_text())["file"] == "model.json"
    assert torch.export.load(out).module()(torch.rand(1, 3, 16, 16)).shape == (1, 10)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk_open(path: Path, mode: str = "r"):
        f = open(path, mode)  # noqa: SIM115 - closed by the caller's with statement
        real_write = f.write

        def write(data: bytes) -> int:
            real_write(data[:4096])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        f.write = write
        return f

    monkeypatch.setattr(exporter, "open", full_disk_open, raising=False)
    refused(["--out", str(out)], 1, f"no space left on device while writing {out} (the partial file was removed")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "open", interrupted, raising=False)  # Ctrl-C while writing
    refused(["--out", str(out)], 130, "interrupted by SIGINT; no file was written or changed")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert export_cli.main([str(digits_run), "--format", "torchscript", "--out", str(tmp_path / "m.ts")]) == 0
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))], caught
    assert "torchscript is a legacy format" in capsys.readouterr().err


@pytest.mark.slow
def test_tau_norm_stage2_with_dual_head(digits_run: Path, tmp_path: Path) -> None:
    """tau-norm (evaluation only) leaves a checkpoint with its chosen tau; eval reproduces the stage-2
    metrics.json (its head and the dual head); the export is the dual head as one module."""
    stage2 = tmp_path / "tau_norm"
    assert train_main(["--stage2", "tau_norm", "--from", str(digits_run), "--work-dir", str(stage2),
                       "--set", "stage2.dual_head_threshold=20", "stage2.cache_features=false"]) == 0
    trained = json.loads((stage2 / "metrics.json").read_text())
    ckpt = Checkpoint.load(stage2 / "checkpoint.pt")
    assert (ckpt.method, ckpt.tau, ckpt.training) == ("tau_norm", trained["tau"], None) and ckpt.class_names == DIGITS

    assert eval_cli.main([str(stage2), "--out", str(tmp_path / "eval")]) == 0
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {k: got[k] for k in SAME if k != "class_names"} == {k: trained[k] for k in SAME if k != "class_names"}
    assert got["tau"] == trained["tau"]
    for k in ("overall", "many", "medium", "few"):
        assert got["dual_head"]["combined"][k] == trained["dual_head"]["combined"][k], k

    out = tmp_path / "dual.pt2"
    assert export_cli.main([str(stage2), "--out", str(out)]) == 0
    meta = json.loads(meta_path(out).read_text())
    assert meta["output_name"] == "scores"
    assert meta["extra"]["tau"] == trained["tau"] and meta["extra"]["dual_head_threshold"] == 20
    x = torch.rand(2, 3, 16, 16)
    run = load_run(stage2, with_data=False)
    stage1 = load_run(digits_run, with_data=False).model
    with torch.no_grad():
        expected = run.dual_head(_normalized(x, meta))
        s1, s2 = stage1(_normalized(x, meta)).softmax(1), run.model(_normalized(x, meta)).softmax(1)
    few = torch.as_tensor(run.class_counts <= 20)  # the tau-norm head's scores for these, stage 1's for the others
    assert few.any() and not few.all()
    assert torch.allclose(expected, torch.where(few[None, :], s2, s1), atol=1e-6)
    assert (_exported_logits([out], x, tmp_path)[0] - expected).abs().max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("method", ["crt", "lws", "ncm", "gumbel"])
def test_stage2_runs_evaluate_and_export(digits_run: Path, tmp_path: Path, method: str) -> None:
    stage2 = tmp_path / method
    assert train_main(["--stage2", method, "--from", str(digits_run), "--work-dir", str(stage2),
                       "--set", "train.epochs=1", "train.num_workers=0"]) == 0
    trained = json.loads((stage2 / "metrics.json").read_text())
    assert eval_cli.main([str(stage2), "--out", str(tmp_path / "eval")]) == 0
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {k: got[k] for k in SAME if k != "class_names"} == {k: trained[k] for k in SAME if k != "class_names"}
    out = tmp_path / f"{method}.pt2"
    assert export_cli.main([str(stage2), "--out", str(out)]) == 0
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = load_run(stage2, with_data=False).model(_normalized(x, json.loads(meta_path(out).read_text())))
        got_logits = torch.export.load(out).module()(x)
    finite = torch.isfinite(expected)
    assert torch.equal(finite, torch.isfinite(got_logits)) and (got_logits - expected)[finite].abs().max() <= 1e-5


def test_image_folder_end_to_end(tmp_path: Path) -> None:
    """Train on a generated ImageFolder tree, then eval, predict and export with the folder names as classes."""
    names = ["cat", "dog", "emu"]
    for c, (name, n_train) in enumerate(zip(names, (8, 4, 2))):
        _images(tmp_path / "data" / "train" / name, n_train, seed=c)
        if name != "dog":  # a class without test images is allowed
            _images(tmp_path / "data" / "test" / name, 2, seed=10 + c)
    cfg = {"data": {"name": "image_folder", "root": str(tmp_path / "data"), "img_size": 16, "augment": "none"},
           "model": {"name": "cifar_resnet8"}, "classifier": {"name": "linear"}, "loss": {"name": "ce"},
           "sampler": {"name": "instance"},
           "train": {"epochs": 2, "batch_size": 4, "lr": 0.05, "num_workers": 0, "warmup_epochs": 0},
           "eval": {"interval": 0, "many_threshold": 6, "few_threshold": 3}}
    (tmp_path / "folder.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert train_main(["--config", str(tmp_path / "folder.yaml"), "--work-dir", str(run)]) == 0
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["class_names"] == names and trained["class_counts"] == [8, 4, 2]

    assert eval_cli.main([str(run)]) == 0
    got = json.loads((run / "eval_test" / "metrics.json").read_text())
    assert {k: got[k] for k in SAME} == {k: trained[k] for k in SAME}
    with open(run / "eval_test" / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["name"], r["group"], r["test_count"], r["accuracy"]) for r in rows][1] == ("dog", "medium", "0", "")

    # a split file of other images under data.root: 3 of cat (label 0), 1 of emu (label 2)
    extra = _images(tmp_path / "data" / "more", 4, seed=42)
    (tmp_path / "more.txt").write_text("".join(f"more/{p.name} {0 if i < 3 else 2}\n" for i, p in enumerate(extra)))
    assert eval_cli.main([str(run), "--split-file", str(tmp_path / "more.txt")]) == 0
    more = json.loads((run / "eval_more" / "metrics.json").read_text())
    assert sum(b["count"] for b in more["calibration_bins"]) == 4 and more["per_class"][1] is None

    assert predict_cli.main([str(run), str(tmp_path / "data" / "test"), "--topk", "2",
                             "--out", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 4 and all(p["top1"] in names and p["top2"] in names for p in preds)

    out = tmp_path / "folder.pt2"
    assert export_cli.main([str(run), "--out", str(out)]) == 0
    meta = json.loads(meta_path(out).read_text())
    assert meta["class_names"] == names and meta["num_classes"] == 3
    assert torch.export.load(out).module()(torch.rand(2, 3, 16, 16)).shape == (2, 3)


@pytest.mark.slow
def test_detection_runs_evaluate_to_their_metrics(tmp_path: Path) -> None:
    """A toy LVIS run and its SimCal stage 2: ltcls-eval gives the LVIS metrics of their metrics.json."""
    spec = importlib.util.spec_from_file_location("make_toy_lvis", ROOT / "tools" / "make_toy_lvis.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    toy = tool.make_toy_lvis(tmp_path / "toy", num_train=24, num_val=6, image_size=64)
    run = tmp_path / "det"
    assert train_main(["--config", str(ROOT / "configs" / "toy_lvis_ce.yaml"), "--work-dir", str(run), "--set",
                       f"data.root={toy['root']}", f"data.train_ann={toy['train_ann']}",
                       f"data.val_ann={toy['val_ann']}", "train.epochs=1", "train.lr=0.01", "eval.interval=0",
                       "eval.batch_size=6", "detection.min_size=[64]", "detection.max_size=64"]) == 0
    assert train_main(["--stage2", "simcal", "--from", str(run), "--set", "train.epochs=1"]) == 0
    for run_dir, keys in ((run, ("AP", "APr", "bbox_AP")), (run / "stage2_simcal", ("original", "combined"))):
        assert eval_cli.main([str(run_dir), "--out", str(tmp_path / "eval")]) == 0
        trained = json.loads((run_dir / "metrics.json").read_text())
        got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
        assert {k: got[k] for k in keys} == {k: trained[k] for k in keys}
