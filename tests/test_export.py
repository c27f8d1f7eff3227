"""TorchScript export: every head's exported module, loaded where ltcls cannot be imported, gives the
model's logits; the json beside it describes the input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_without_ltcls
from torch import nn

from ltcls.export import DualHeadClassifier, LossScores, export_torchscript
from ltcls.losses.base import build_loss
from ltcls.models.backbone import LTModel, create_backbone
from ltcls.models.classifiers import build_classifier
from ltcls.models.decoupled import LWSClassifier, NCMClassifier, TauNormClassifier

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
COUNTS = [40, 20, 9, 3, 1]
NAMES = ["ant", "bee", "cat", "dog", "emu"]

# Run where ltcls cannot be imported (conftest.run_without_ltcls); compares every exported module.
_CHECK = """
import json
import torch
data = torch.load(sys.argv[1])
out = {}
for name, expected in data["expected"].items():
    module = torch.jit.load(sys.argv[2] + "/" + name + ".pt")
    got = module(data["x"])
    same_inf = torch.isinf(expected) == torch.isinf(got)
    finite = torch.isfinite(expected)
    out[name] = {"shape": list(got.shape), "same_inf": bool(same_inf.all()),
                 "max_diff": float((got - expected)[finite].abs().max())}
print(json.dumps(out))
"""


def _heads() -> dict[str, nn.Module]:
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
        "dual_head": DualHeadClassifier(linear, lws, COUNTS, threshold=9, original_scores=LossScores(gumbel)),
    }


def test_exported_modules_match_the_model_without_ltcls(tmp_path: Path) -> None:
    backbone = create_backbone("cifar_resnet8").eval()
    x = torch.rand(4, 3, 16, 16)
    normalized = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    expected = {}
    for name, head in _heads().items():
        model = LTModel(backbone, head).eval()
        with torch.no_grad():
            expected[name] = model(normalized)
        pt, meta_path = export_torchscript(model, tmp_path / f"{name}.pt", MEAN, STD, 16, NAMES,
                                           source_run="runs/toy", extra={"head": name})
        assert pt.is_file() and meta_path == tmp_path / f"{name}.json"
    assert torch.isinf(expected["ncm"][:, 4]).all()
    torch.save({"x": x, "expected": expected}, tmp_path / "check.pt")

    proc = run_without_ltcls(_CHECK, str(tmp_path / "check.pt"), str(tmp_path), cwd=tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == set(expected)
    for name, r in result.items():
        assert r["shape"] == [4, len(NAMES)], name
        assert r["same_inf"], name
        assert r["max_diff"] <= 1e-5, (name, r["max_diff"])

    meta = json.loads((tmp_path / "tau_norm.json").read_text())
    assert meta["class_names"] == NAMES and meta["num_classes"] == 5 and meta["input_size"] == [16, 16]
    assert meta["mean"] == pytest.approx(MEAN) and meta["std"] == pytest.approx(STD)
    assert meta["source_run"] == "runs/toy" and meta["extra"] == {"head": "tau_norm"} and meta["file"] == "tau_norm.pt"


class _BatchDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(int(x.shape[0]), 5) + x.mean()


def test_export_checks_class_names_and_batch_independence(tmp_path: Path) -> None:
    model = LTModel(create_backbone("cifar_resnet8"), build_classifier("linear", 64, 5))
    with pytest.raises(ValueError, match="4 class names"):
        export_torchscript(model, tmp_path / "m.pt", MEAN, STD, 32, NAMES[:4], source_run="r")
    with pytest.raises(RuntimeError, match="differs from the model"):
        export_torchscript(_BatchDependent(), tmp_path / "m.pt", MEAN, STD, (8, 8), NAMES, source_run="r")
    assert not (tmp_path / "m.pt").exists()
