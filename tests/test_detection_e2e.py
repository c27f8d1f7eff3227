"""End to end on a small toy LVIS: `ltcls-train` with each toy config (every box loss, both samplers, normalized
mask), LVIS evaluation into metrics.json and TensorBoard, exact resume, and `--stage2 simcal`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ltcls.engine.trainer as trainer_mod
from ltcls.cli import train_main
from ltcls.detection.task import BBOX_KEYS, SEGM_KEYS

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def load_toy_tool():
    spec = importlib.util.spec_from_file_location("make_toy_lvis", ROOT / "tools" / "make_toy_lvis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    return load_toy_tool().make_toy_lvis(tmp_path_factory.mktemp("toy_lvis"), num_train=24, num_val=6, image_size=64)


def overrides(toy: dict[str, Path], epochs: int = 1) -> list[str]:
    return [f"data.root={toy['root']}", f"data.train_ann={toy['train_ann']}", f"data.val_ann={toy['val_ann']}",
            f"train.epochs={epochs}", "train.lr=0.01", "train.log_interval=2",
            "eval.interval=0", "eval.batch_size=6", "detection.min_size=[64]", "detection.max_size=64"]


def scalars(run: Path) -> dict[str, list[float]]:
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [e.value for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


TOY_CONFIGS = ("toy_lvis_ce", "toy_lvis_rfs", "toy_lvis_seesaw", "toy_lvis_seesaw_rfs_normmask", "toy_lvis_gumbel",
               "toy_lvis_gol")


# toy_lvis_seesaw in make test; every config in make test-all
@pytest.mark.parametrize("config", [c if c == "toy_lvis_seesaw" else pytest.param(c, marks=pytest.mark.slow)
                                    for c in TOY_CONFIGS])
def test_toy_config_trains_and_evaluates(tmp_path, toy, config):
    run = tmp_path / config
    assert train_main(["--config", str(CONFIGS / f"{config}.yaml"), "--work-dir", str(run),
                       "--set", *overrides(toy)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for key in SEGM_KEYS + BBOX_KEYS:
        assert key in metrics, key
        assert metrics[key] is None or 0.0 <= metrics[key] <= 100.0, (key, metrics[key])
    assert metrics["AP"] is not None and metrics["APr"] is not None and metrics["bbox_APc"] is not None
    assert metrics["split"] == "val" and metrics["stage"] == "stage1" and metrics["epoch"] == 1
    assert metrics["num_images"] == 6 and metrics["num_detections"] >= 0
    assert metrics["history"][-1]["AP"] == metrics["AP"]
    tags = scalars(run)
    for tag in ("det/AP", "det/APr", "det/APc", "det/bbox_AP", "train/loss", "train/epoch_loss"):
        assert tag in tags, (tag, sorted(tags))
    # the detector's loss parts beside the total (RPN, box regression, mask, and the classification terms)
    classification = ("train/loss_cls_classes", "train/loss_cls_objectness") if "seesaw" in config \
        else ("train/loss_classifier",)
    for tag in ("train/loss_objectness", "train/loss_rpn_box_reg", "train/loss_box_reg", "train/loss_mask",
                *classification):
        assert tag in tags, (tag, sorted(tags))
    assert (run / "checkpoint.pt").is_file() and (run / "config.yaml").is_file()


@pytest.mark.slow  # two detection runs
def test_resume_after_interruption_matches_uninterrupted(tmp_path, toy, monkeypatch):
    """Seesaw (cumulative counts in the loss) with repeat-factor sampling: an interrupted run resumed from its
    checkpoint ends with the uninterrupted run's weights, loss state and metrics."""
    args = ["--config", str(CONFIGS / "toy_lvis_seesaw_rfs_normmask.yaml"), "--set", *overrides(toy, epochs=2)]
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert train_main([*args[:2], "--work-dir", str(full), *args[2:]]) == 0
    real = trainer_mod.train_one_epoch
    calls = {"n": 0}

    def crash_in_second_epoch(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(trainer_mod, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_main([*args[:2], "--work-dir", str(broken), *args[2:]])
    assert torch.load(broken / "checkpoint.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(trainer_mod, "train_one_epoch", real)
    assert train_main(["--work-dir", str(broken), "--resume"]) == 0
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(broken / "checkpoint.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    assert torch.equal(a["loss"]["cum_samples"], b["loss"]["cum_samples"]) and a["loss"]["cum_samples"].sum() > 0
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (full, broken))
    assert all(ma[k] == mb[k] for k in SEGM_KEYS + BBOX_KEYS)


@pytest.mark.slow  # a detection run and its SimCal stage
def test_simcal_calibrates_the_classifier_of_a_frozen_detector(tmp_path, toy):
    stage1 = tmp_path / "ce"
    assert train_main(["--config", str(CONFIGS / "toy_lvis_ce.yaml"), "--work-dir", str(stage1),
                       "--set", *overrides(toy)]) == 0
    assert train_main(["--stage2", "simcal", "--from", str(stage1), "--set", "train.epochs=2", "train.batch_size=4",
                       "stage2.dual_head_threshold=10", "eval.interval=0"]) == 0
    run = stage1 / "stage2_simcal"
    m = json.loads((run / "metrics.json").read_text())
    s1 = json.loads((stage1 / "metrics.json").read_text())
    assert set(m) >= {"original", "calibrated", "combined"} and m["dual_head_threshold"] == 10
    assert m["selected"] == "combined" and all(m[k] == m["combined"][k] for k in SEGM_KEYS + BBOX_KEYS)
    assert m["original"]["AP"] == pytest.approx(s1["AP"]) and m["original"]["bbox_APr"] == pytest.approx(s1["bbox_APr"])
    assert "| calibrated |" in (run / "comparison.md").read_text()
    tags = scalars(run)
    assert "stage2/det/AP" in tags and "stage2/simcal/calibrated/APr" in tags
    before = torch.load(stage1 / "checkpoint.pt", weights_only=True)["model"]
    after = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    for k, v in before.items():  # the detector is frozen: every stage-1 tensor unchanged
        assert torch.equal(after[f"detector.{k}"], v), k
    w0 = before["roi_heads.box_predictor.cls_score.weight"]
    assert not torch.equal(after["head.classifier.weight"], w0)  # the calibrated head trained from the original
    assert after["head.classifier.weight"].shape == w0.shape


def test_stage2_methods_match_the_task(tmp_path, toy, capsys):
    run = tmp_path / "det"
    assert train_main(["--config", str(CONFIGS / "toy_lvis_gumbel.yaml"), "--work-dir", str(run),
                       "--set", *overrides(toy), "detection.detections_per_img=20"]) == 0
    with pytest.raises(SystemExit):
        train_main(["--stage2", "crt", "--from", str(run)])
    assert "--stage2 simcal" in capsys.readouterr().err
    digits = tmp_path / "digits"
    digits.mkdir()
    (digits / "config.yaml").write_text("data:\n  name: digits_lt\n")
    with pytest.raises(SystemExit):
        train_main(["--stage2", "simcal", "--from", str(digits)])
    assert "--stage2 simcal applies to detection runs" in capsys.readouterr().err
