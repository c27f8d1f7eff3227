"""Strict config: defaults <- file <- --set, errors that name the key, resolved config on disk."""

from __future__ import annotations

import pytest
import yaml

from ltcls import config as C
from ltcls.cli import build_train_parser, train_main
from ltcls.registry import Registry


def test_defaults_cover_every_section_and_component_defaults():
    cfg = C.resolve({})
    assert list(cfg.to_dict()) == list(C.SECTION_ORDER)
    assert cfg.train.epochs == C.TrainConfig().epochs
    assert cfg.loss.to_dict() == {"name": "ce", "label_smoothing": 0.0}
    assert cfg.data.name == "digits_lt" and "imbalance_factor" in cfg.data.params and "img_size" in cfg.data.params


def test_file_then_set_override_order():
    cfg = C.resolve({"train": {"lr": 0.5, "epochs": 3}}, ["train.lr=0.05", "loss.label_smoothing=0.1"])
    assert cfg.train.lr == 0.05 and cfg.train.epochs == 3
    assert cfg.loss.label_smoothing == 0.1


def test_typo_names_key_and_closest():
    with pytest.raises(C.ConfigError, match=r"unknown key 'train\.wieght_decay'.*Did you mean 'train\.weight_decay'"):
        C.resolve({"train": {"wieght_decay": 0.1}})
    with pytest.raises(C.ConfigError) as e:
        C.resolve({"train": {"epoch": 3}})
    assert "train.epoch" in str(e.value) and "train.epochs" in str(e.value)


def test_unknown_section_and_unknown_component():
    with pytest.raises(C.ConfigError, match="trian"):
        C.resolve({"trian": {}})
    with pytest.raises(C.ConfigError, match=r"loss\.name: unknown loss 'cee'.*Did you mean 'ce'"):
        C.resolve({"loss": {"name": "cee"}})


def test_component_parameters_are_checked_against_the_chosen_component():
    with pytest.raises(C.ConfigError, match=r"loss\.gamma"):
        C.resolve({"loss": {"name": "ce", "gamma": 2.0}})


def test_type_errors_name_key():
    with pytest.raises(C.ConfigError, match=r"train\.epochs: expected int, got 'ten'"):
        C.resolve({"train": {"epochs": "ten"}})
    with pytest.raises(C.ConfigError, match=r"train\.amp: expected bool"):
        C.resolve({"train": {"amp": 1}})
    with pytest.raises(C.ConfigError, match=r"train\.schedule: expected one of"):
        C.resolve({"train": {"schedule": "linear"}})
    with pytest.raises(C.ConfigError, match=r"train\.milestones\[1\]: expected int"):
        C.resolve({"train": {"milestones": [1, "x"]}})


def test_float_widening_and_yaml_exponent_strings():
    cfg = C.resolve({"train": {"lr": 1, "weight_decay": "5e-4"}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == 5e-4


def test_derived_values_are_rejected():
    # number of classes / class counts come from the data, never from yaml
    with pytest.raises(C.ConfigError, match="class_counts"):
        C.resolve({"loss": {"class_counts": [1, 2]}})
    with pytest.raises(C.ConfigError, match="num_classes"):
        C.resolve({"classifier": {"num_classes": 10}})


def test_set_parsing_errors():
    with pytest.raises(C.ConfigError, match="expected key.sub=value"):
        C.resolve({}, ["train.lr"])
    with pytest.raises(C.ConfigError, match="dotted path"):
        C.resolve({}, ["lr=0.1"])
    with pytest.raises(C.ConfigError, match="unknown key 'tran'"):
        C.resolve({}, ["tran.lr=0.1"])


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(C.ConfigError, match="bad.yaml: invalid yaml"):
        C.load_yaml(bad)
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load_yaml(tmp_path / "missing.yaml")
    top = tmp_path / "top.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(C.ConfigError, match="mapping of sections"):
        C.load_yaml(top)


def test_set_flag_repeatable_and_multi(tmp_path):
    args = build_train_parser().parse_args(
        ["--config", "x.yaml", "--set", "train.lr=0.1", "train.epochs=2", "--set", "eval.interval=1"])
    assert args.overrides == ["train.lr=0.1", "train.epochs=2", "eval.interval=1"]


def test_resolved_config_written_and_roundtrips(tmp_path, capsys):
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text(yaml.safe_dump({"train": {"epochs": 2}}))
    assert train_main(["--config", str(cfg_file), "--set", "train.lr=0.01", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 0.01 and printed["train"]["epochs"] == 2
    assert C.resolve(printed).to_dict() == printed  # the resolved config is itself a valid, complete config


def test_cli_reports_config_errors_with_key(tmp_path, capsys):
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("train:\n  epochz: 2\n")
    with pytest.raises(SystemExit) as e:
        train_main(["--config", str(cfg_file), "--work-dir", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "train.epochz" in err and "train.epochs" in err
    assert not (tmp_path / "run").exists()


def test_help_lists_sections_and_registered_names(capsys):
    with pytest.raises(SystemExit):
        train_main(["--help"])
    out = capsys.readouterr().out
    for text in ("--set", "--work-dir", "--resume", "train: epochs=", "loss.name: one of", "digits_lt"):
        assert text in out


def test_registry_is_loud():
    reg = Registry("thing")

    @reg.register("a")
    def make_a(x: int = 1):
        return x

    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(make_a)
    with pytest.raises(KeyError, match="unknown thing 'b'.*Registered things: a"):
        reg.get("b")
    with pytest.raises(TypeError, match="has no parameter 'y'"):
        reg.build("a", {"y": 2})
    assert reg.build("a", {"x": 3}) == 3


def test_set_name_to_another_component_drops_the_files_other_parameters(caplog):
    """`--set data.name=split_file` on a digits_lt yaml: digits_lt's keys the new dataset does not take are dropped
    with one line naming them; keys that both take stay; a typo given with --set is still an error."""
    file_cfg = {"data": {"name": "digits_lt", "imbalance_factor": 10.0, "test_per_class": 5, "img_size": 16}}
    with caplog.at_level("WARNING", logger="ltcls"):
        cfg = C.resolve(file_cfg, ["data.name=split_file", "data.root=/d", "data.train_split=t.txt",
                                   "data.test_split=s.txt"], source="exp.yaml")
    assert cfg.data.name == "split_file" and cfg.data.img_size == 16 and "imbalance_factor" not in cfg.data.params
    assert "dropped digits_lt's parameters imbalance_factor, test_per_class" in caplog.text
    with pytest.raises(C.ConfigError, match="data.trian_split"):
        C.resolve(file_cfg, ["data.name=split_file", "data.trian_split=t.txt"])
    with pytest.raises(C.ConfigError, match="data.imbalance_factor"):  # without a name change: still a typo
        C.resolve({"data": {"name": "split_file", "imbalance_factor": 10.0}})


def test_warmup_steps_epochs_iters_and_the_shorter_of_both():
    assert C.TrainConfig(warmup_epochs=2).warmup_steps(7) == 14
    assert C.TrainConfig(warmup_iters=500).warmup_steps(7) == 500
    assert C.TrainConfig().warmup_steps(7) == 0
    # both: the shorter (GOL's classification code: the first epoch, at most 1000 iterations)
    assert C.TrainConfig(warmup_epochs=1, warmup_iters=1000).warmup_steps(7) == 7
    assert C.TrainConfig(warmup_epochs=1, warmup_iters=1000).warmup_steps(2500) == 1000


def test_decoupled_gumbel_preset_is_the_authors_classification_recipe(tmp_path):
    """kostas1515/iif classification/: GombitLoss with --reduction mean (no reduced-loss clamp), random sampling,
    SGD momentum 0.9, wd 5e-4, warm-up from lr / 1000 over the first epoch (at most 1000 steps), constant lr."""
    from ltcls.engine.trainer import lr_factor
    from ltcls.stage2.presets import stage2_base_config

    stage1 = C.load("configs/digits_lt_ce.yaml")
    cfg = C.resolve(stage2_base_config(stage1, "gumbel", tmp_path))
    assert cfg.loss.to_dict() == {"name": "gumbel", "reduction": "mean", "clamp_max": None}
    assert cfg.sampler.name == "instance" and cfg.classifier == stage1.classifier
    t = cfg.train
    assert (t.lr, t.epochs, t.momentum, t.weight_decay, t.schedule) == (1e-4, 15, 0.9, 5e-4, "constant")
    steps = 7
    warmup = t.warmup_steps(steps)
    factors = [lr_factor(s, steps_per_epoch=steps, epochs=t.epochs, schedule=t.schedule, warmup_steps=warmup,
                         warmup_ratio=t.warmup_ratio, milestones=t.milestones, gamma=t.gamma) for s in range(50)]
    assert warmup == steps and factors[0] < 0.2 and factors[steps - 1] == 1.0 and set(factors[steps:]) == {1.0}
    assert factors == sorted(factors)
    assert t.warmup_steps(5000) == 1000
