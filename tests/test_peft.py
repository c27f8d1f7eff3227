"""Parameter-efficient fine-tuning on a small timm ViT in its real architecture (``ltcls.models.peft``): a
zero-initialized LoRA changes nothing at step 0, each method trains only what it should, adapters merge on
export to the same function, ``model.freeze`` keeps the backbone fixed, pretrained weights come from a file or
fail in one line, and the LIFT config trains under 2% of CLIP ViT-B/16."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from ltcls import config as C
from ltcls.engine.optim import build_optimizer, parameter_counts
from ltcls.engine.tasks import build_model
from ltcls.models.backbone import create_backbone
from ltcls.models.peft import adapt_backbone, merge_adapters
from ltcls.models.pretrained import PretrainedWeightsUnavailable

VIT_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2}
VIT = ["model.name=vit_tiny_patch16_224", "model.kwargs={img_size: 32, patch_size: 8, embed_dim: 48, depth: 2, "
       "num_heads: 2}"]
CONFIGS = Path(__file__).parents[1] / "configs"

#: What each method may train besides the head (a substring of the parameter's name; bitfit: the backbone's biases).
TRAINS = {"lora": "lora_", "dora": "lora_", "loha": "hada_", "lokr": "lokr_", "ia3": "ia3_",
          "ln_tuning": "ln_tuning_layers", "bitfit": ".bias", "freeze": None}


def _model(overrides: list[str], num_classes: int = 5, seed: int = 0) -> torch.nn.Module:
    cfg = C.resolve({}, [*VIT, *overrides])
    torch.manual_seed(seed)
    return build_model(cfg, num_classes)


def _batch(n: int = 6, num_classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, num_classes, (n,), generator=g)


def test_zero_initialized_lora_leaves_the_outputs_bit_identical():
    plain = _model([]).eval()
    adapted = copy.deepcopy(plain)
    adapted.backbone = adapt_backbone(adapted.backbone, C.PeftConfig(method="lora", r=4, alpha=8, dropout=0.0))
    images, _ = _batch()
    with torch.no_grad():
        assert torch.equal(adapted(images), plain(images))
        adapted.train(), plain.train()
        assert torch.equal(adapted(images), plain(images))
    assert any("lora_B" in n for n, _ in adapted.named_parameters())


@pytest.mark.parametrize("method", sorted(TRAINS))
def test_only_the_intended_parameters_change(method):
    overrides = ["model.freeze=true"] if method == "freeze" else [f"model.peft.method={method}", "model.peft.r=2"]
    model = _model([*overrides, "train.weight_decay=0", "train.lr=0.5"])
    cfg = C.resolve({}, [*VIT, *overrides, "train.weight_decay=0", "train.lr=0.5"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = build_optimizer(cfg.train, model)
    model.train()
    images, labels = _batch()
    for _ in range(2):  # two steps: a LoRA A matrix gets a gradient only once B has left zero
        opt.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    pattern = TRAINS[method]
    intended = {n for n in trainable if n.startswith("classifier.") or (pattern and pattern in n)}
    assert trainable == intended and changed <= trainable, sorted(changed - trainable)
    assert {"classifier.weight", "classifier.bias"} <= changed
    if pattern:
        assert any(pattern in n for n in changed)
    if method in ("lora", "dora"):
        assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    if method == "bitfit":
        assert {n for n in trainable if n.startswith("backbone.")} == {
            n for n, _ in model.named_parameters() if n.startswith("backbone.") and n.endswith(".bias")}


def test_freeze_keeps_batchnorm_statistics_and_trains_the_head_only():
    cfg = C.resolve({}, ["model.name=cifar_resnet8", "model.freeze=true"])
    torch.manual_seed(0)
    model = build_model(cfg, 4)
    assert parameter_counts(model)[0] == model.num_features * 4 + 4
    model.train()
    assert model.training and not model.backbone.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model(torch.randn(8, 3, 16, 16))
    assert all(torch.equal(v, before[k]) for k, v in model.backbone.state_dict().items())


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "ln_tuning", "loha", "lokr"])
def test_merged_adapters_equal_the_peft_model(method):
    model = _model([f"model.peft.method={method}", "model.peft.r=2"]).eval()
    with torch.no_grad():  # move every trainable tensor off its initial value, so the adapter matters
        for n, p in model.named_parameters():
            if p.requires_grad and n.startswith("backbone."):
                p.add_(0.05 * torch.randn_like(p))
    images, _ = _batch()
    with torch.no_grad():
        reference = model(images)
        merged = merge_adapters(copy.deepcopy(model))
        out = merged(images)
    assert type(merged.backbone).__name__ == "VisionTransformer"
    adapters = ("lora_", "ia3_", "hada_", "lokr_", "ln_tuning")
    assert not any(k in n for n, _ in merged.named_parameters() for k in adapters)
    assert (out - reference).abs().max() <= 1e-5
    plain = _model([])
    plain.load_state_dict(merged.state_dict())  # a plain timm model of the same architecture
    assert torch.allclose(plain.eval()(images), reference, atol=1e-5, rtol=0)


def test_peft_config_errors_are_one_line():
    with pytest.raises(C.ConfigError, match=r"unknown key 'model.peft.alhpa' in section 'model.peft'. Did you mean "
                                            r"'model.peft.alpha'\?"):
        C.resolve({"model": {"peft": {"method": "lora", "alhpa": 4}}})
    with pytest.raises(C.ConfigError, match="model.peft.method: expected one of .* got 'lroa' .did you mean 'lora'"):
        C.resolve({}, ["model.peft.method=lroa"])
    with pytest.raises(C.ConfigError, match=r"model.peft.r: expected an integer >= 1, got 0"):
        C.resolve({}, ["model.peft.r=0"])
    with pytest.raises(ValueError, match="model.peft.target_modules: no module of the backbone is named qkvv"):
        _model(["model.peft.method=lora", "model.peft.target_modules=[qkvv]"])
    cfg = C.resolve({"model": {"peft": {"method": "lora"}}}, ["model.peft.r=4"])
    assert (cfg.model.peft.method, cfg.model.peft.r, cfg.model.peft.alpha) == ("lora", 4, 16.0)
    assert C.resolve(cfg.to_dict()) == cfg


def test_pretrained_file_is_loaded(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=0, **VIT_KWARGS)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(4)
    loaded = create_backbone("vit_tiny_patch16_224", pretrained_file=str(path), **VIT_KWARGS)
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(FileNotFoundError, match="model.pretrained_file: no file 'missing.safetensors'"):
        create_backbone("vit_tiny_patch16_224", pretrained_file="missing.safetensors", **VIT_KWARGS)


def test_no_network_and_no_cache_is_one_line_before_any_download(monkeypatch):
    import huggingface_hub
    import timm.models._hub as timm_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    def download(*args, **kwargs):
        raise AssertionError("timm's download (with its retries) must not start")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    monkeypatch.setattr(timm_hub, "hf_hub_download", download)
    with pytest.raises(PretrainedWeightsUnavailable) as e:
        create_backbone("vit_base_patch16_clip_224.openai", pretrained=True)
    message = str(e.value)
    assert "\n" not in message and "ConnectionError" in message and "nothing was trained" in message
    assert "https://huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/main/model.safetensors" in message
    assert "model.pretrained_file=/path/to/model.safetensors" in message
    with pytest.raises(ValueError, match="model.pretrained: timm has no pretrained weights for 'cifar_resnet8'"):
        create_backbone("cifar_resnet8", pretrained=True)


def test_cli_without_network_says_what_to_download(tmp_path):
    """The real command, offline (HF_HUB_OFFLINE and an empty cache): one line, exit 2, nothing written."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ltcls.cli", "train", "--config", str(CONFIGS / "digits_lt_ce.yaml"), "--work-dir",
           str(run), "--set", "model.name=vit_tiny_patch16_224", "model.pretrained=true", "train.num_workers=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("ltcls-train: error: model.pretrained: the weights of "
                                                     "'vit_tiny_patch16_224' are not in the local Hugging Face cache")
    assert "model.safetensors" in errors[0] and "model.pretrained_file=" in errors[0]
    assert not run.exists()


def test_lift_config_trains_under_two_percent_of_clip_vit_b16():
    """ViT-B/16 on the meta device (no weights): the LIFT ImageNet-LT config's trainable fraction."""
    raw = C.load_yaml(CONFIGS / "imagenet_lt_clip_lift.yaml")
    m = raw["model"]
    with torch.device("meta"):
        backbone = create_backbone(m["name"], **m.get("kwargs", {}))
        backbone = adapt_backbone(backbone, C.PeftConfig(**m["peft"]), freeze=m.get("freeze", False))
        head = torch.nn.Linear(backbone.num_features, 1000, bias=raw["classifier"].get("bias", True))
    model = torch.nn.ModuleDict({"backbone": backbone, "classifier": head})
    trainable, total = parameter_counts(model)
    assert 86e6 < total < 88e6 and trainable / total < 0.02
