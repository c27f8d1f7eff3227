"""Export: every head in every format, loaded where ltcls cannot be imported and run on a batch of another size,
gives the model's outputs; a part a format cannot express is one line naming it; the output rules (a run's files,
files an export did not create, the json's name) and the faults (a full disk, SIGKILL mid-write) leave every
previous file intact."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_without_ltcls
from torch import nn

from ltcls.export import (
    DualHeadClassifier,
    ExportError,
    ExportSpec,
    LossScores,
    OutputRefused,
    export_model,
    exporter,
    meta_path,
    plan_output,
)
from ltcls.losses.base import build_loss
from ltcls.models.backbone import LTModel, create_backbone
from ltcls.models.classifiers import build_classifier
from ltcls.models.decoupled import LWSClassifier, NCMClassifier, TauNormClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
COUNTS = [40, 20, 9, 3, 1]
NAMES = ["ant", "bee", "cat", "dog", "emu"]
SUFFIX = {"pt2": ".pt2", "onnx": ".onnx", "torchscript": ".torchscript.pt"}


def _spec(size: int = 16, **kw: object) -> ExportSpec:
    return ExportSpec(MEAN, STD, size, NAMES, "runs/toy", **kw)  # type: ignore[arg-type]


# Run where ltcls cannot be imported (conftest.run_without_ltcls): each format loaded the way a consumer does.
_RUN_EXPORTS = """
import json
import torch
data = torch.load(sys.argv[1])
out = {}
for key, expected in data["expected"].items():
    name, fmt = key.split(":")
    x = data["x"][name]
    path = sys.argv[2] + "/" + name + {"pt2": ".pt2", "onnx": ".onnx", "torchscript": ".torchscript.pt"}[fmt]
    if fmt == "pt2":
        got = torch.export.load(path).module()(x)
    elif fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    else:
        got = torch.jit.load(path)(x)
    finite = torch.isfinite(expected)
    out[key] = {"shape": list(got.shape), "same_inf": bool((torch.isinf(expected) == torch.isinf(got)).all()),
                "max_diff": float((got - expected)[finite].abs().max())}
print(json.dumps(out))
"""


def _heads() -> dict[str, nn.Module]:
    """Every head ltcls trains, on 64-d features, 5 classes."""
    torch.manual_seed(0)
    linear = build_classifier("linear", 64, len(COUNTS))
    lws = LWSClassifier.from_linear(linear)
    with torch.no_grad():
        lws.scales.copy_(torch.tensor([0.5, 0.8, 1.0, 1.5, 2.0]))
    ncm = NCMClassifier(64, len(COUNTS)).fit(torch.randn(30, 64), torch.tensor([0, 1, 2, 3] * 7 + [0, 1]))
    gumbel = build_loss("gumbel", num_classes=len(COUNTS), class_counts=COUNTS)
    return {
        "linear": linear,
        "normalized": build_classifier("normalized", 64, len(COUNTS)),
        "tau_norm": TauNormClassifier.from_linear(linear, tau=0.7),
        "lws": lws,
        "ncm": ncm,  # class 'emu' has no training feature: -inf
        "gumbel_scores": nn.Sequential(linear, LossScores(gumbel)),
        "dual_sel": DualHeadClassifier(linear, lws, COUNTS, threshold=9, original_scores=LossScores(gumbel)),
        "dual_avg": DualHeadClassifier(linear, ncm, COUNTS, threshold=None, rule="avg", weight=0.3),
    }


def _normalized(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _run_without_ltcls(expected: dict[str, torch.Tensor], x: dict[str, torch.Tensor], tmp_path: Path) -> dict:
    """Load every ``tmp_path/NAME<suffix>`` of ``expected``'s ``NAME:FORMAT`` keys where ltcls cannot be imported
    and run it on ``x[NAME]``: ``{key: {shape, same_inf, max_diff}}`` against ``expected``."""
    torch.save({"x": x, "expected": expected}, tmp_path / "check.pt")
    proc = run_without_ltcls(_RUN_EXPORTS, str(tmp_path / "check.pt"), str(tmp_path), cwd=tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == set(expected)
    return result


class _AllHeads(nn.Module):
    """Every head on one CIFAR ResNet's features, side by side: one export per format covers them all."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = create_backbone("cifar_resnet8")
        self.heads = nn.ModuleDict(_heads())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        return torch.cat([head(features) for head in self.heads.values()], dim=1)


def _vit() -> nn.Module:
    """A timm ViT (2 blocks, 32 px, patch 8: attention, LayerNorm, GELU, the class token) with a linear head."""
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)
    return LTModel(backbone, build_classifier("linear", backbone.num_features, len(NAMES))).eval()


@pytest.mark.slow
def test_every_head_and_backbone_exports_and_runs_without_ltcls(tmp_path: Path) -> None:
    """Every head in every format, and a timm ViT in pt2 (the default), each run where ltcls is not importable."""
    torch.manual_seed(0)
    model = _AllHeads().eval()
    names = NAMES * len(model.heads)
    x, x32 = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 32, 32)  # the export's example has 2 images, its check 3
    with torch.no_grad():
        eager, vit = model(_normalized(x)), _vit()(_normalized(x32))
    ncm = list(model.heads).index("ncm")
    assert torch.isinf(eager[:, ncm * len(NAMES) + 4]).all()  # NCM's class without training features
    for fmt in SUFFIX:
        paths = export_model(model, ExportSpec(MEAN, STD, 16, names, "runs/toy", extra={"heads": "all"}), fmt,
                             tmp_path / f"all{SUFFIX[fmt]}")
        assert paths.module.is_file() and paths.meta == tmp_path / f"all{SUFFIX[fmt]}.json"
    export_model(_vit(), _spec(32), "pt2", tmp_path / "vit.pt2")
    result = _run_without_ltcls({**{f"all:{fmt}": eager for fmt in SUFFIX}, "vit:pt2": vit},
                                {"all": x, "vit": x32}, tmp_path)
    for key, r in result.items():
        assert r["shape"] == [4, len(names) if key.startswith("all") else len(NAMES)] and r["same_inf"], (key, r)
        assert r["max_diff"] <= (1e-4 if key.endswith("onnx") else 1e-5), (key, r["max_diff"])

    meta = json.loads((tmp_path / "all.onnx.json").read_text())
    assert meta["class_names"] == names and meta["num_classes"] == len(names) and meta["input_size"] == [16, 16]
    assert meta["mean"] == pytest.approx(MEAN) and meta["std"] == pytest.approx(STD) and meta["format"] == "onnx"
    assert meta["source_run"] == "runs/toy" and meta["extra"] == {"heads": "all"}
    assert meta["file"] == "all.onnx" and meta["exported_by"] == "ltcls-export" and meta["output_name"] == "logits"
    assert meta["checked"]["max_abs_diff"] <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_timm_vit_exports(tmp_path: Path, fmt: str) -> None:
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = _vit()(_normalized(x))
    export_model(_vit(), _spec(32), fmt, tmp_path / f"vit{SUFFIX[fmt]}")
    r = _run_without_ltcls({f"vit:{fmt}": expected}, {"vit": x}, tmp_path)[f"vit:{fmt}"]
    assert r["shape"] == [4, len(NAMES)] and r["max_diff"] <= (1e-4 if fmt == "onnx" else 1e-5), r


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pt2", "onnx", "torchscript"])
def test_each_head_exports_alone(tmp_path: Path, fmt: str) -> None:
    """Each head as the exported contract has it (normalisation, CIFAR ResNet, head) in its own file."""
    backbone = create_backbone("cifar_resnet8").eval()
    x = torch.rand(4, 3, 16, 16)
    expected = {}
    for name, head in _heads().items():
        model = LTModel(backbone, head).eval()
        with torch.no_grad():
            expected[f"{name}:{fmt}"] = model(_normalized(x))
        export_model(model, _spec(16), fmt, tmp_path / f"{name}{SUFFIX[fmt]}")
    for key, r in _run_without_ltcls(expected, dict.fromkeys(_heads(), x), tmp_path).items():
        assert r["shape"] == [4, len(NAMES)] and r["same_inf"], (key, r)
        assert r["max_diff"] <= (1e-4 if fmt == "onnx" else 1e-5), (key, r["max_diff"])


class _DataDependent(nn.Module):
    """A head that branches on the data: torch.export (and so ONNX) cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, len(NAMES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class _Stateful(nn.Module):
    """Its output changes from call to call: the export captures one call, the check sees the difference."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.flatten(1)[:, :len(NAMES)] * self.calls


class _NoONNXOp(nn.Module):
    """A head using an op ONNX has no function for (singular values)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, len(NAMES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.linalg.svdvals(x.view(-1, 2, 2)))


@pytest.mark.parametrize("fmt, head, where, reason", [
    ("pt2", _DataDependent, "'if x.sum() > 0:'", "data-dependent"),
    ("onnx", _DataDependent, "'if x.sum() > 0:'", "data-dependent"),
    ("onnx", _NoONNXOp, "'return self.fc(torch.linalg.svdvals(x.view(-1, 2, 2)))', op aten._linalg_svd.default",
     "No ONNX function found"),
])
def test_a_part_a_format_cannot_express_is_one_line_naming_it(tmp_path: Path, fmt: str, head: type, where: str,
                                                              reason: str) -> None:
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = LTModel(backbone, head() if head is _NoONNXOp else nn.Sequential(nn.Linear(4, 64), head()))
    with pytest.raises(ExportError) as e:
        export_model(model, _spec(8), fmt, tmp_path / "m.out")
    message = str(e.value)
    assert "\n" not in message and len(message) < 600, message
    name = "model.classifier" if head is _NoONNXOp else "model.classifier.1"
    assert message.startswith(f"cannot export the model to {fmt}: it fails in {name} ({head.__name__}) at "), message
    assert "test_export.py:" in message and where in message and reason in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["pt2", "torchscript"])
def test_export_is_checked_against_the_model_before_it_is_kept(tmp_path: Path, fmt: str) -> None:
    with pytest.raises(ValueError, match="4 class names"):
        export_model(LTModel(create_backbone("cifar_resnet8"), build_classifier("linear", 64, 5)),
                     ExportSpec(MEAN, STD, 16, NAMES[:4], "r"), fmt, tmp_path / "m")
    with pytest.raises(ExportError, match=f"the {fmt} file .*m differs from the model by up to"):
        export_model(_Stateful(), _spec(8), fmt, tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # the tolerance scales with outputs above 1 in magnitude (float32's resolution); infinities are left out
    assert exporter.allowed_difference(torch.tensor([[float("-inf"), -300.0, 2.0]]), 1e-4) == pytest.approx(0.03)
    assert exporter.allowed_difference(torch.tensor([[0.5, -0.2]]), 1e-5) == 1e-5


# ------------------------------------------------------------------------------------------ output rules
def _fake_run(root: Path) -> Path:
    """A run directory with its files, and a stage-2 run inside it."""
    run = root / "run"
    (run / "tb").mkdir(parents=True)
    (run / "stage2_crt").mkdir()
    for name in ("config.yaml", "checkpoint.pt", "metrics.json", "train.log", "stage2_crt/config.yaml"):
        (run / name).write_text(name)
    return run


def test_outputs_never_name_a_run_file_or_a_foreign_file(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    for out, expected in [
        (run / "checkpoint.pt", "one of the run's own files (checkpoint.pt)"),
        (run / "config.yaml", "one of the run's own files (config.yaml)"),
        (run / "tb" / "m.pt2", "one of the run's own files (tb)"),
        (run / "metrics", "the json beside metrics: 'RUN/metrics.json' is one of the run's own files"),
        (run / "train.log.old" / ".." / "train.log", "one of the run's own files (train.log)"),
        (run, "is the run directory itself"),
        (run / ".." / "run", "is the run directory itself"),
        (tmp_path / "notes.txt", "exists and was not written by ltcls-export"),
        (run / "stage2_crt" / "m.pt2", "lies in another run's directory"),
    ]:
        if out.name == "notes.txt":
            out.write_text("mine")
        with pytest.raises(OutputRefused) as e:
            plan_output(out, ".pt2", run)
        assert expected.replace("RUN", str(run)) in str(e.value), (out, str(e.value))
    assert not (run / "model.pt2").exists()

    # the json's name: FILE.json, never the module itself, one per format
    assert meta_path(tmp_path / "model.json") == tmp_path / "model.json.json"
    paths = plan_output(tmp_path / "model.json", ".pt2", run)
    assert (paths.module, paths.meta) == (tmp_path / "model.json", tmp_path / "model.json.json")
    assert plan_output(None, ".pt2", run).meta != plan_output(None, ".onnx", run).meta
    (tmp_path / "other.pt2.json").write_text("{}")  # a json an export did not write
    with pytest.raises(OutputRefused, match="is not ltcls-export's json for other.pt2"):
        plan_output(tmp_path / "other.pt2", ".pt2", run)
    with pytest.raises(OutputRefused, match="notes.txt' is not a folder"):  # a file where a folder should be
        plan_output(tmp_path / "notes.txt" / "m.pt2", ".pt2", run)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputRefused, match="is not writable"):
            plan_output(locked / "sub" / "m.pt2", ".pt2")
    finally:
        locked.chmod(0o700)


def _tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, len(NAMES)))


def test_an_earlier_export_is_replaced_only_when_asked(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    first = export_model(_tiny(0), _spec(8), "pt2", run_dir=run)
    assert first.module == run / "model.pt2" and first.meta == run / "model.pt2.json" and not first.replaces
    with pytest.raises(OutputRefused, match="a default output name never replaces a file: pass --out"):
        export_model(_tiny(1), _spec(8), "pt2", run_dir=run)
    old = first.module.read_bytes()
    again = export_model(_tiny(1), _spec(8), "pt2", first.module, run)
    assert again.replaces and first.module.read_bytes() != old
    assert sorted(p.name for p in run.iterdir()) == sorted(["config.yaml", "checkpoint.pt", "metrics.json",
                                                            "train.log", "tb", "stage2_crt", "model.pt2",
                                                            "model.pt2.json"])


# ------------------------------------------------------------------------------------------ faults
class _FullDisk:
    """``open`` for the exporter whose files take ``room`` bytes and then fail with ENOSPC, as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, path: os.PathLike, mode: str = "r"):
        f = open(path, mode)  # noqa: SIM115 - handed back to the caller's with statement
        room, real_write = self.room, f.write

        def write(data: bytes) -> int:
            real_write(data[:room])
            if len(data) > room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return len(data)

        f.write = write  # type: ignore[method-assign]
        return f


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_full_disk_leaves_the_previous_export_and_no_partial_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.pt2"
    export_model(_tiny(0), _spec(8), "pt2", out)
    before = _snapshot(tmp_path)
    monkeypatch.setattr(exporter, "open", _FullDisk(1000), raising=False)
    with pytest.raises(ExportError) as e:
        export_model(_tiny(1), _spec(8), "pt2", out)
    assert str(e.value).startswith(f"no space left on device while writing {out} (the partial file was removed")
    assert _snapshot(tmp_path) == before
    monkeypatch.undo()

    def no_room_for_text(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", no_room_for_text)  # the module fits, its json does not
    with pytest.raises(ExportError, match=re.escape(f"no space left on device while writing {out}.json")):
        export_model(_tiny(1), _spec(8), "pt2", out)
    assert _snapshot(tmp_path) == before


# Imports ltcls (the exporter) and stops half-way through writing the module, to be killed there.
_EXPORT_AND_HANG = """
import sys, time
import torch
from torch import nn
from ltcls.export import ExportSpec, export_model, exporter

def hanging_open(path, mode="r"):
    f = open(path, mode)
    real_write = f.write
    def write(data):
        real_write(data[: len(data) // 2])
        f.flush()
        print("writing", flush=True)
        time.sleep(120)
    f.write = write
    return f

exporter.open = hanging_open
torch.manual_seed(1)
model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
export_model(model, ExportSpec([0.5] * 3, [0.5] * 3, 8, list("abcde"), "r"), "pt2", sys.argv[1])
"""


def test_sigkill_while_writing_leaves_the_previous_export(tmp_path: Path) -> None:
    out = tmp_path / "m.pt2"
    export_model(_tiny(0), _spec(8), "pt2", out)
    before = _snapshot(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", _EXPORT_AND_HANG, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "writing", proc.stderr.read()  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)  # half the new module is in the writer's temporary file
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert torch.export.load(out).module()(torch.rand(2, 3, 8, 8)).shape == (2, len(NAMES))
