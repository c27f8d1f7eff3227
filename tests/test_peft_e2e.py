"""A LoRA run end to end on digits_lt with a small timm ViT: an interrupted run resumes bit-identically (AdamW,
layer decay and a head multiplier, so several parameter groups), stage 2 (cRT, tau-norm) runs on its frozen
backbone, and ltcls-eval / -predict / -export work on it, the export with LoRA merged into the weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import ltcls.engine.trainer as trainer_mod
from ltcls.cli import train_main
from ltcls.cli.eval import main as eval_main
from ltcls.cli.export import main as export_main
from ltcls.cli.predict import main as predict_main
from ltcls.stage2.inference import load_run

LORA = ["model.name=vit_tiny_patch16_224", "data.img_size=16",
        "model.kwargs={img_size: 16, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
        "model.peft.method=lora", "model.peft.r=4", "train.optimizer=adamw", "train.lr=0.003",
        "train.weight_decay=0.05", "train.layer_decay=0.8", "train.head_lr_mult=5", "train.batch_size=32",
        "train.num_workers=0", "train.log_interval=2", "eval.interval=0", "eval.batch_size=128"]


def _cfg(tmp_path: Path, epochs: int) -> Path:
    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "digits_lt_ce.yaml").read_text())
    cfg["train"]["epochs"] = epochs
    path = tmp_path / "digits_lora.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lora")
    run = tmp / "run"
    assert train_main(["--config", str(_cfg(tmp, 2)), "--work-dir", str(run), "--set", *LORA]) == 0
    return run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_lora_resume_is_exact(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, 3)
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert train_main(["--config", str(cfg), "--work-dir", str(full), "--set", *LORA]) == 0
    real, calls = trainer_mod.train_one_epoch, {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_main(["--config", str(cfg), "--work-dir", str(broken), "--set", *LORA])
    assert torch.load(broken / "checkpoint.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(trainer_mod, "train_one_epoch", real)
    assert train_main(["--work-dir", str(broken), "--resume"]) == 0
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (full, broken))
    assert a["per_class"] == b["per_class"] and a["overall"] == b["overall"]
    wa, wb = _weights(full), _weights(broken)
    assert any("lora_B" in k for k in wa) and wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    log = (full / "train.log").read_text()
    assert "parameters train (" in log and "layer decay 0.8" in log and "head lr x 5" in log


def test_stage2_crt_and_tau_norm_on_a_lora_run(lora_run):
    stage1 = _weights(lora_run)
    assert train_main(["--stage2", "crt", "--from", str(lora_run), "--set", "train.epochs=1"]) == 0
    crt = _weights(lora_run / "stage2_crt")
    backbone = [k for k in stage1 if k.startswith("backbone.")]
    assert any("lora_A" in k for k in backbone)
    for k in backbone:  # adapters and frozen weights alike: the stage-1 backbone, bit for bit
        assert torch.equal(crt[k], stage1[k]), k
    assert not torch.equal(crt["classifier.weight"], stage1["classifier.weight"])
    assert train_main(["--stage2", "tau_norm", "--from", str(lora_run)]) == 0
    report = json.loads((lora_run / "stage2_tau_norm" / "metrics.json").read_text())
    assert report["tau"] in [round(0.1 * i, 1) for i in range(21)]
    assert (lora_run / "stage2_crt" / "comparison.md").read_text().count("|") > 10


def test_eval_predict_export_on_a_lora_run(lora_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert eval_main([str(lora_run), "--out", str(out)]) == 0
    trained = json.loads((lora_run / "metrics.json").read_text())
    evaluated = json.loads((out / "metrics.json").read_text())
    assert evaluated["overall"] == trained["overall"] and evaluated["per_class"] == trained["per_class"]
    image = tmp_path / "img.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (20, 20, 3), dtype=np.uint8)).save(image)
    assert predict_main([str(lora_run), str(image), "--out", str(tmp_path / "p.csv")]) == 0
    assert (tmp_path / "p.csv").read_text().count("\n") == 2
    module_path = tmp_path / "lora.pt2"
    assert export_main([str(lora_run), "--out", str(module_path)]) == 0
    meta = json.loads((tmp_path / "lora.pt2.json").read_text())
    assert meta["extra"]["merged_adapters"] == ["LORA"]
    exported = torch.export.load(str(module_path)).module()
    assert not any("lora" in n.lower() for n, _ in exported.named_parameters())
    run = load_run(lora_run, with_data=False)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        reference = run.model.eval()((x - mean) / std)  # the PEFT model, adapters unmerged
        got = exported(x)
    assert (got - reference).abs().max() <= 1e-5
