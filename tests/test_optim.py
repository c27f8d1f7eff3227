"""Optimizers from timm (``ltcls.engine.optim``): today's SGD unchanged, AdamW's groups, layer decay through
LTModel with the head on top, per-group learning rates under the schedule and across a resume, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import ltcls.engine.trainer as trainer_mod
from ltcls import config as C
from ltcls.cli import train_main
from ltcls.engine import Stage, Trainer, build_task
from ltcls.engine.optim import build_optimizer, check_optimizer, parameter_counts, scaled_lr
from ltcls.engine.tasks import build_model
from ltcls.engine.trainer import lr_factor
from ltcls.rundir import RunDir

#: A small timm ViT in its real architecture (patch embedding, class token, 2 blocks, final norm).
VIT = ["model.name=vit_tiny_patch16_224",
       "model.kwargs={img_size: 32, patch_size: 8, embed_dim: 48, depth: 2, num_heads: 2}"]
TINY = ["model.name=cifar_resnet8", "data.img_size=16", "train.batch_size=32", "train.num_workers=0",
        "train.log_interval=2", "eval.interval=0"]


def _vit(overrides: list[str], num_classes: int = 5) -> tuple[C.Config, torch.nn.Module]:
    cfg = C.resolve({}, [*VIT, *overrides])
    torch.manual_seed(0)
    return cfg, build_model(cfg, num_classes)


def _legacy_sgd(t, module):
    """The optimizer line of Trainer._setup before optimizers were configurable."""
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=scaled_lr(t), momentum=t.momentum, weight_decay=t.weight_decay,
                           nesterov=t.nesterov and t.momentum > 0)


def test_default_sgd_is_the_sgd_ltcls_always_built():
    cfg, model = _vit(["train.nesterov=true", "train.base_batch_size=64", "train.batch_size=32"])
    opt = build_optimizer(cfg.train, model)
    ref = _legacy_sgd(cfg.train, model)
    assert type(opt) is torch.optim.SGD and len(opt.param_groups) == 1
    got, want = opt.param_groups[0], ref.param_groups[0]
    assert [id(p) for p in got["params"]] == [id(p) for p in want["params"]]
    assert {k: v for k, v in got.items() if k != "params"} == {k: v for k, v in want.items() if k != "params"}
    assert got["lr"] == 0.05 and got["nesterov"] and got["weight_decay"] == 5e-4  # decay on every parameter


def _digits_cfg(tmp_path: Path, epochs: int) -> Path:
    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "digits_lt_ce.yaml").read_text())
    cfg["train"]["epochs"] = epochs
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_digits(tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    """The default job's config (tiny model, 1 epoch = 12 SGD steps with warm-up and Nesterov) through the
    Trainer; returns the weights after the last step."""
    cfg = C.load(Path(__file__).parents[1] / "configs" / "digits_lt_ce.yaml",
                 [*TINY, "train.epochs=1", "train.nesterov=true"])
    task = build_task(cfg)
    data, model, loss = task.build(cfg)
    trainer = Trainer(model, data, cfg, RunDir(tmp_path / name), task, hooks=[])
    trainer.fit([Stage("stage1", loss, cfg.train, cfg.sampler)])
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_digits_run_weights_are_bit_identical_to_the_legacy_sgd(tmp_path, monkeypatch):
    """The default job's optimizer through timm gives the very same weights as the hand-built SGD did."""
    new = _train_digits(tmp_path, "new")
    monkeypatch.setattr(trainer_mod, "build_optimizer", _legacy_sgd)
    old = _train_digits(tmp_path, "old")
    assert new.keys() == old.keys()
    for key, value in old.items():
        assert torch.equal(new[key], value), key


def test_adamw_groups_no_decay_on_1d_and_no_weight_decay_names():
    cfg, model = _vit(["train.optimizer=adamw", "train.lr=1e-3", "train.weight_decay=0.05", "train.betas=[0.9, 0.98]",
                       "train.eps=1e-6"])
    opt = build_optimizer(cfg.train, model)
    assert type(opt) is torch.optim.AdamW
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if not g["weight_decay"] for p in g["params"]}
    assert decayed and all(model.get_parameter(n).ndim >= 2 for n in decayed)
    assert {"backbone.pos_embed", "backbone.cls_token", "classifier.bias", "backbone.norm.weight"} <= plain
    assert "classifier.weight" in decayed and "backbone.blocks.0.attn.qkv.weight" in decayed
    assert len(decayed) + len(plain) == len(list(model.parameters()))
    assert all(g["betas"] == (0.9, 0.98) and g["eps"] == 1e-6 and g["lr"] == 1e-3 for g in opt.param_groups)
    sgd = build_optimizer(C.resolve({}, ["train.no_weight_decay_1d=true"]).train, model)
    assert {names[id(p)] for g in sgd.param_groups if not g["weight_decay"] for p in g["params"]} == plain


def test_layer_decay_puts_the_head_on_top_and_the_scales_survive_the_schedule():
    decay, mult, lr = 0.5, 10.0, 0.01
    cfg, model = _vit(["train.optimizer=adamw", f"train.lr={lr}", f"train.layer_decay={decay}",
                       f"train.head_lr_mult={mult}", "train.warmup_iters=4", "train.warmup_ratio=0.1"])
    opt = build_optimizer(cfg.train, model)
    lr_of = {n: g["lr"] for g in opt.param_groups for p in g["params"]
             for n, q in model.named_parameters() if q is p}
    # layers: 0 stem (patch embed, tokens), 1 block 0, 2 block 1 (+ final norm), 3 the head
    assert lr_of["backbone.patch_embed.proj.weight"] == pytest.approx(lr * decay ** 3)
    assert lr_of["backbone.cls_token"] == pytest.approx(lr * decay ** 3)
    assert lr_of["backbone.blocks.0.mlp.fc1.weight"] == pytest.approx(lr * decay ** 2)
    assert lr_of["backbone.blocks.1.attn.qkv.bias"] == pytest.approx(lr * decay)
    assert lr_of["backbone.norm.weight"] == pytest.approx(lr * decay)
    assert lr_of["classifier.weight"] == lr_of["classifier.bias"] == pytest.approx(lr * mult)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr * mult)  # the head's groups come first
    initial = [g["lr"] for g in opt.param_groups]
    t = cfg.train
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(
        s, steps_per_epoch=10, epochs=3, schedule="cosine", warmup_steps=t.warmup_iters,
        warmup_ratio=t.warmup_ratio, milestones=[], gamma=0.1))
    for step in range(7):
        factor = lr_factor(step, steps_per_epoch=10, epochs=3, schedule="cosine", warmup_steps=4, warmup_ratio=0.1,
                           milestones=[], gamma=0.1)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([x * factor for x in initial])
        opt.step()
        sched.step()
    # a resumed run gets every group's lr and state back
    state, sched_state = opt.state_dict(), sched.state_dict()
    cfg2, model2 = _vit(["train.optimizer=adamw", f"train.lr={lr}", f"train.layer_decay={decay}",
                         f"train.head_lr_mult={mult}"])
    opt2 = build_optimizer(cfg2.train, model2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0)
    opt2.load_state_dict(state)
    sched2.load_state_dict(sched_state)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert [g["initial_lr"] for g in opt2.param_groups] == initial


def test_layer_decay_with_lora_keeps_the_backbone_layers():
    cfg, model = _vit(["model.peft.method=lora", "train.optimizer=adamw", "train.lr=0.1", "train.layer_decay=0.5"])
    opt = build_optimizer(cfg.train, model)
    lr_of = {n: g["lr"] for g in opt.param_groups for p in g["params"] for n, q in model.named_parameters() if q is p}
    assert set(lr_of) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert lr_of["backbone.base_model.model.blocks.0.attn.qkv.lora_A.default.weight"] == pytest.approx(0.1 * 0.25)
    assert lr_of["backbone.base_model.model.blocks.1.attn.qkv.lora_B.default.weight"] == pytest.approx(0.1 * 0.5)
    assert lr_of["classifier.weight"] == pytest.approx(0.1)


@pytest.mark.parametrize("overrides, message", [
    (["train.optimizer=adamx"], "train.optimizer: unknown optimizer 'adamx'"),
    (["train.optimizer=adahessian"], "second-order"),
    (["train.betas=[0.9, 0.99]"], "train.betas: sgd takes no betas"),
    (["train.optimizer=adamw", "train.betas=[0.9]"], "train.betas: adamw takes 2 betas"),
    (["train.eps=1e-8"], "train.eps: sgd takes no eps"),
])
def test_optimizer_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_optimizer(C.resolve({}, overrides).train)


def test_layer_decay_needs_a_group_matcher_one_line(tmp_path, capsys):
    cfg = _digits_cfg(tmp_path, 1)
    with pytest.raises(SystemExit) as e:
        train_main(["--config", str(cfg), "--work-dir", str(tmp_path / "r"), "--set", *TINY, "train.layer_decay=0.7"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if "error" in x]  # one line (besides the data's INFO line)
    assert line.startswith("ltcls-train: error: train.layer_decay needs a backbone with timm's group_matcher")
    assert "CifarResNet" in line
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as e:
        train_main(["--config", str(cfg), "--work-dir", str(tmp_path / "r"), "--set", *TINY,
                    "train.optimizer=adamx"])
    assert e.value.code == 2 and "unknown optimizer 'adamx'" in capsys.readouterr().err


def test_parameter_counts():
    _, model = _vit(["model.freeze=true"])
    trainable, total = parameter_counts(model)
    assert trainable == 48 * 5 + 5 and total == sum(p.numel() for p in model.parameters())
