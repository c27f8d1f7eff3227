"""Test-time augmentation (``eval.tta``): the views each TTA makes, the average of the model's outputs over them,
and evaluation with it in training, ``ltcls-eval``, ``ltcls-predict`` (``--tta``) and ``ltcls-export`` (plain)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ltcls import config as C
from ltcls.cli import eval as eval_cli
from ltcls.cli import export as export_cli
from ltcls.cli import predict as predict_cli
from ltcls.cli.train import train_main
from ltcls.data.base import ArrayDataset
from ltcls.data.datasets.split_file import transform_min_size
from ltcls.data.transforms import build_transforms
from ltcls.data.tta import TTA, ViewAverage
from ltcls.registries import TTAS
from ltcls.rundir import RunDir

ROOT = Path(__file__).parents[1]
PARAMS = {"img_size": 8, "augment": "none", "crop_pct": 1.0, "hflip": 0.0, "mean": (0.0, 0.0, 0.0),
          "std": (1.0, 1.0, 1.0), "interpolation": "bilinear"}


class MirrorInvariant(nn.Module):
    """``g(x + mirror(x))``: exactly the same outputs for an image and its mirror image (addition commutes)."""

    def __init__(self, invariant: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.invariant = invariant
        self.g = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(x + x.flip(-1) if self.invariant else x)


def _logits(module: nn.Module, dataset) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([module(x) for x, _ in DataLoader(dataset, batch_size=4)])


def test_flip_on_a_mirror_invariant_model_gives_the_plain_logits() -> None:
    rng = np.random.default_rng(0)
    dataset = ArrayDataset(rng.integers(0, 256, (6, 11, 9, 3), dtype=np.uint8), [0, 1, 2, 0, 1, 2], 3,
                           transform=build_transforms(**PARAMS)[1])
    for invariant in (True, False):
        model = MirrorInvariant(invariant).eval()
        plain = _logits(model, dataset)
        module, views = TTA("flip", 24, PARAMS).apply(model, dataset)
        assert isinstance(module, ViewAverage) and views[0][0].shape == (2, 3, 8, 8)
        assert torch.equal(views[0][0][1], views[0][0][0].flip(-1))
        flipped = _logits(module, views)
        if invariant:
            assert torch.allclose(flipped, plain, rtol=0, atol=1e-6)
        else:  # the mirror view is really used
            assert not torch.allclose(flipped, plain, atol=1e-3)
            both = views.transform
            mirror = _logits(model, dataset.with_transform(lambda img, both=both: both(img)[1]))
            assert torch.allclose(flipped, (plain + mirror) / 2, atol=1e-6)


def test_five_crop_gives_lifts_five_crops() -> None:
    """Short side resized to img_size + expand (12 here: the image already is, so no resampling), then the four
    corners and the centre of 8 x 8, as torchvision's FiveCrop orders them."""
    pixels = np.arange(12 * 16 * 3, dtype=np.int64).reshape(12, 16, 3) % 251
    image = Image.fromarray(pixels.astype(np.uint8))
    views = TTA("five_crop", 4, PARAMS).views()(image)
    assert views.shape == (5, 3, 8, 8)
    expected = [pixels[:8, :8], pixels[:8, 8:], pixels[4:, :8], pixels[4:, 8:], pixels[2:10, 4:12]]
    for view, crop in zip(views, expected):
        assert torch.equal(view, torch.from_numpy(crop).permute(2, 0, 1).float() / 255)
    larger = TTA("five_crop", 24, {**PARAMS, "img_size": 16}).views()
    assert transform_min_size(larger) == 40  # JPEGs are decoded at no less than the short side the crops need
    assert larger(Image.new("RGB", (100, 50))).shape == (5, 3, 16, 16)


def test_none_keeps_model_and_split_and_features_are_left_alone(caplog) -> None:
    model = MirrorInvariant()
    dataset = ArrayDataset(np.zeros((2, 8, 8, 3), dtype=np.uint8), [0, 1], 2, transform=build_transforms(**PARAMS)[1])
    assert TTA("none", 24, PARAMS).apply(model, dataset) == (model, dataset)
    features = TensorDataset(torch.zeros(2, 5), torch.zeros(2))
    with caplog.at_level(logging.WARNING, logger="ltcls"):
        assert TTA("flip", 24, PARAMS).apply(model, features) == (model, features)
    assert "not applied to this evaluation of TensorDataset" in caplog.text
    assert set(TTAS.names()) == {"none", "flip", "five_crop"}
    with pytest.raises(C.ConfigError, match="eval.tta: expected one of five_crop, flip, none, got 'ten_crop'"):
        C.resolve({"eval": {"tta": "ten_crop"}})
    with pytest.raises(ValueError, match=r"expected views \(N, K, ...\)"):
        ViewAverage(model)(torch.zeros(2, 5))


def test_trainings_evaluation_runs_the_model_on_every_view(tmp_path: Path) -> None:
    """eval.tta=five_crop: the Trainer's evaluation feeds the model 5 views of each test image, and reports one
    prediction per image."""
    from ltcls.engine import Stage, Trainer, build_task

    cfg = C.load(ROOT / "configs" / "digits_lt_ce.yaml", ["model.name=cifar_resnet8", "data.img_size=16",
                                                           "data.test_per_class=3", "eval.tta=five_crop"])
    task = build_task(cfg)
    run = task.build(cfg)
    seen: list[tuple[int, ...]] = []
    run.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    report = Trainer(run.model, run.data, cfg, RunDir(tmp_path), task, hooks=[]).evaluate(
        Stage("eval", run.loss, None, cfg.sampler), 0, 0)
    assert sum(shape[0] for shape in seen) == 5 * 30 and all(shape[1:] == (3, 16, 16) for shape in seen)
    assert sum(report.accuracy.group_sizes.values()) == 10 and len(report.accuracy.per_class) == 10


@pytest.mark.slow
def test_evaluation_with_tta_end_to_end(tmp_path: Path, capsys) -> None:
    """A digits run evaluated with eval.tta=flip in training; ltcls-eval (its eval.tta by default) gives the same
    numbers; --tta five_crop and ltcls-predict --tta run; ltcls-export is the plain model and says so."""
    run = tmp_path / "run"
    assert train_main(["--config", str(ROOT / "configs" / "digits_lt_ce.yaml"), "--work-dir", str(run), "--set",
                       "model.name=cifar_resnet8", "data.img_size=16", "data.test_per_class=10", "train.epochs=1",
                       "eval.interval=0",
                       "eval.tta=flip"]) == 0
    trained = json.loads((run / "metrics.json").read_text())
    assert eval_cli.main([str(run), "--out", str(tmp_path / "flip")]) == 0
    flip = json.loads((tmp_path / "flip" / "metrics.json").read_text())
    assert flip["tta"] == "flip" and flip["per_class"] == trained["per_class"]
    assert eval_cli.main([str(run), "--tta", "none", "--out", str(tmp_path / "none")]) == 0
    assert eval_cli.main([str(run), "--tta", "five_crop", "--out", str(tmp_path / "five")]) == 0
    five = json.loads((tmp_path / "five" / "metrics.json").read_text())
    assert five["tta"] == "five_crop" and len(five["per_class"]) == 10 and five["overall"] is not None
    image = tmp_path / "a.png"
    Image.fromarray(np.full((20, 18, 3), 200, dtype=np.uint8)).save(image)
    assert predict_cli.main([str(run), str(image), "--tta", "five_crop", "--out", str(tmp_path / "p.json")]) == 0
    assert len(json.loads((tmp_path / "p.json").read_text())["predictions"]) == 1
    capsys.readouterr()
    assert export_cli.main([str(run), "--out", str(tmp_path / "m.pt")]) == 0
    assert "the export is the plain model (one view per image)" in capsys.readouterr().err
    assert "eval.tta 'flip'" in json.loads((tmp_path / "m.pt.json").read_text())["extra"]["tta"]
