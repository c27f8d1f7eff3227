"""End to end: `ltcls-train` on digits_lt writes metrics, TensorBoard events and resumes exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ltcls.engine.trainer as trainer_mod
from ltcls.cli import train_main

# A tiny, fast version of the default job: ResNet-8 on 16x16 digits, a few epochs.
TINY = ["model.name=cifar_resnet8", "data.img_size=16", "train.batch_size=32", "train.num_workers=0",
        "train.log_interval=2", "eval.interval=2"]


def _cfg(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / "digits_tiny.yaml"
    text = (Path(__file__).parents[1] / "configs" / "digits_lt_ce.yaml").read_text()
    cfg = yaml.safe_load(text)
    cfg["train"]["epochs"] = epochs
    path.write_text(yaml.safe_dump(cfg))
    return path


def _scalars(run: Path) -> dict[str, list[float]]:
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {t: [e.value for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}, acc.Tags()


def test_cli_end_to_end_writes_metrics_and_tensorboard(tmp_path):
    run = tmp_path / "run"
    cmd = [shutil.which("ltcls-train") or str(Path(sys.executable).with_name("ltcls-train")),
           "--config", str(_cfg(tmp_path, 3)), "--work-dir", str(run), "--set", *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("overall", "many", "medium", "few", "per_class", "class_counts", "split"):
        assert key in metrics
    assert metrics["split"] == "test" and len(metrics["per_class"]) == 10
    assert metrics["group_sizes"]["many"] >= 1 and metrics["group_sizes"]["few"] >= 1
    assert 0.0 <= metrics["overall"] <= 100.0
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["model"]["name"] == "cifar_resnet8" and resolved["train"]["epochs"] == 3
    assert "num_classes" not in resolved["classifier"]
    scalars, tags = _scalars(run)
    for tag in ("train/loss", "train/lr", "acc/overall", "acc/many", "acc/medium", "acc/few"):
        assert tag in scalars, tags
    assert len(scalars["acc/few"]) == 2  # epoch 2 (interval) and the final evaluation
    assert "acc/per_class_accuracy" in tags["images"] and "classifier/weight_norm" in tags["images"]
    assert (run / "acc_per_class_accuracy.png").stat().st_size > 1000
    assert any(t.startswith("config") for t in tags["tensors"])
    assert (run / "train.log").read_text().count("epoch") >= 3

    # a second start in the same directory must refuse and leave the run untouched
    before = (run / "checkpoint.pt").stat().st_mtime_ns, (run / "metrics.json").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--resume" in again.stderr
    assert before == ((run / "checkpoint.pt").stat().st_mtime_ns, (run / "metrics.json").read_text())


def test_resume_after_interruption_matches_uninterrupted(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, 4)
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert train_main(["--config", str(cfg), "--work-dir", str(full), "--set", *TINY]) == 0

    real = trainer_mod.train_one_epoch
    calls = {"n": 0}

    def crash_on_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_one_epoch", crash_on_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_main(["--config", str(cfg), "--work-dir", str(broken), "--set", *TINY])
    ckpt = torch.load(broken / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and not (broken / "metrics.json").exists()
    monkeypatch.setattr(trainer_mod, "train_one_epoch", real)

    assert train_main(["--work-dir", str(broken), "--resume"]) == 0
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((broken / "metrics.json").read_text())
    assert a["per_class"] == b["per_class"] and a["overall"] == b["overall"]
    sa = torch.load(full / "checkpoint.pt", weights_only=True)["model"]
    sb = torch.load(broken / "checkpoint.pt", weights_only=True)["model"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_resume_errors(tmp_path, capsys):
    cfg = _cfg(tmp_path, 1)
    with pytest.raises(SystemExit):
        train_main(["--config", str(cfg), "--work-dir", str(tmp_path / "none"), "--resume"])
    assert "no checkpoint" in capsys.readouterr().err
    run = tmp_path / "r"
    assert train_main(["--config", str(cfg), "--work-dir", str(run), "--set", *TINY]) == 0
    with pytest.raises(SystemExit):
        train_main(["--config", str(cfg), "--work-dir", str(run), "--resume", "--set", *TINY, "train.lr=0.5"])
    assert "train.lr" in capsys.readouterr().err
