"""The run layer: a cached-feature stage 2 interrupted mid-epoch resumes to the uninterrupted run's metrics; the
printed resume command is the one that works; the loader factory starts mid-epoch for every kind of dataset;
loading a finished run for inference builds no training machinery."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from ltcls.cli.train import train_main
from ltcls.engine import trainer as trainer_module
from ltcls.engine.features import FeatureSet
from ltcls.engine.loaders import LoaderFactory
from ltcls.engine.trainer import Trainer
from ltcls.stage2.inference import evaluate_run, load_run

ROOT = Path(__file__).parents[1]
TINY = ["model.name=cifar_resnet8", "data.img_size=16", "train.batch_size=32", "train.num_workers=0",
        "train.epochs=1", "eval.batch_size=128"]
#: cRT on cached features, 3 class-aware epochs of 144 x 10 samples (22 steps of 64 each), checkpoint on signal.
STAGE2 = ["train.epochs=3", "stage2.cache_features=true", "train.checkpoint_on_signal=true", "train.log_interval=1",
          "train.batch_size=64"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("stage1") / "run"
    assert train_main(["--config", str(ROOT / "configs" / "digits_lt_ce.yaml"), "--work-dir", str(run),
                       "--set", *TINY]) == 0
    return run


def _stop_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Stop the next run as SIGTERM would, after its optimizer step ``step`` (the loop polls once per step)."""
    polls = iter(range(1, 10**9))
    monkeypatch.setattr(trainer_module, "stop_requested", lambda: next(polls) == step)


def test_cached_feature_stage2_resumes_mid_epoch_exactly(stage1, tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference"
    assert train_main(["--stage2", "crt", "--from", str(stage1), "--work-dir", str(reference), "--set", *STAGE2]) == 0

    run = tmp_path / "interrupted"
    _stop_at(monkeypatch, 30)  # 8 steps into the second epoch: an interrupt checkpoint inside it
    assert train_main(["--stage2", "crt", "--from", str(stage1), "--work-dir", str(run), "--set", *STAGE2]) == 143
    monkeypatch.undo()
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("ltcls-train:")][-1]
    assert "batch 8 of epoch 2" in line and not (run / "metrics.json").exists()
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command == ["ltcls-train", "--work-dir", str(run), "--resume"]  # the checkpoint holds the stage-2 config
    assert train_main(command[1:]) == 0

    a, b = (json.loads((d / "metrics.json").read_text()) for d in (reference, run))
    assert b["per_class"] == a["per_class"] and b["overall"] == a["overall"] and b["stage"] == "stage2_crt"
    wa = torch.load(reference / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=0, msg=k)
    assert (run / "comparison.md").read_text().splitlines()[2:] == (reference / "comparison.md").read_text(
    ).splitlines()[2:]


def test_interrupt_before_the_first_checkpoint_gives_no_resume_hint(stage1, tmp_path, monkeypatch, capsys):
    run = tmp_path / "early"
    _stop_at(monkeypatch, 3)
    assert train_main(["--stage2", "crt", "--from", str(stage1), "--work-dir", str(run), "--set", *STAGE2,
                       "train.checkpoint_on_signal=false"]) == 143
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("ltcls-train:")][-1]
    assert "resume with" not in line and "nothing to resume: run the same command again" in line
    monkeypatch.undo()
    assert train_main(["--stage2", "crt", "--from", str(stage1), "--work-dir", str(run), "--set", *STAGE2,
                       "train.checkpoint_on_signal=false"]) == 0


def _batches(loader) -> list[list[int]]:
    return [batch[1].tolist() for batch in loader]


@pytest.mark.parametrize("batched", [True, False])
def test_loader_factory_skips_micro_batches_for_every_kind_of_dataset(batched):
    features = FeatureSet(torch.arange(20, dtype=torch.float32)[:, None], np.arange(20), 20)
    features.batched = batched  # the same samples, indexed by batch or one at a time
    loaders = LoaderFactory(num_workers=0, device=torch.device("cpu"))
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0)).tolist()  # one epoch's sampler order
    whole = _batches(loaders(features, 6, order, train=True))
    rest = _batches(loaders(features, 6, order, train=True, skip=2))
    assert len(whole) == 3 and rest == whole[2:]  # drop_last as the whole epoch's loader


def test_loading_a_run_for_inference_builds_no_trainer(stage1, tmp_path, monkeypatch):
    def no_trainer(*args, **kwargs):
        raise AssertionError("a Trainer was built to load or evaluate a finished run")

    monkeypatch.setattr(Trainer, "__init__", no_trainer)
    run = load_run(stage1)
    report = evaluate_run(run, out_dir=tmp_path / "eval")
    trained = json.loads((stage1 / "metrics.json").read_text())
    assert report.metric("overall") == trained["overall"] and report.accuracy.per_class == tuple(trained["per_class"])
