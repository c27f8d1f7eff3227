"""Top-k prediction over image files: folders recursed, unreadable files reported and skipped, CSV / JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltcls import config as C
from ltcls.data.transforms import build_transforms
from ltcls.engine.inference import InferenceRunner
from ltcls.engine.tasks import ClassificationTask
from ltcls.models.backbone import LTModel, create_backbone
from ltcls.models.classifiers import build_classifier
from ltcls.predict import find_images, write_predictions_csv, write_predictions_json
from ltcls.stage2.inference import predict_images

NAMES = ["ant", "bee", "cat", "dog"]


def _folder(root: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    good = [root / "a.png", root / "b.jpg", root / "sub" / "c.bmp", root / "sub" / "deeper" / "d.JPG"]
    for path in good:
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = "JPEG" if path.suffix.lower() == ".jpg" else None
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path, format=fmt)
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "readme.txt").write_text("not an image")
    return good


@pytest.fixture()
def model() -> LTModel:
    torch.manual_seed(0)
    return LTModel(create_backbone("cifar_resnet8"), build_classifier("linear", 64, len(NAMES))).eval()


def predict_topk(model, paths, transform, names, topk=5, batch_size=64):
    """Top-k predictions through the one inference runner, on CPU with no loader workers."""
    cfg = C.resolve({"train": {"device": "cpu", "num_workers": 0}, "eval": {"batch_size": batch_size}})
    runner = InferenceRunner.for_config(cfg, ClassificationTask(cfg))
    return predict_images(runner, model, paths, transform, names, topk)


def test_find_images(tmp_path: Path) -> None:
    good = _folder(tmp_path)
    found = find_images([tmp_path])
    assert sorted(found) == sorted(str(p) for p in [*good, tmp_path / "sub" / "broken.jpg"])
    assert find_images([tmp_path / "readme.txt"]) == [str(tmp_path / "readme.txt")]  # a file is taken as given
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images([tmp_path / "nowhere"])


def test_corrupt_file_is_reported_and_skipped(tmp_path: Path, model: LTModel) -> None:
    good = _folder(tmp_path / "imgs")
    paths = find_images([tmp_path / "imgs"])
    _, eval_tf = build_transforms(img_size=16, augment="none")
    result = predict_topk(model, paths, eval_tf, NAMES, topk=3, batch_size=2)
    assert len(paths) == 5 and len(result.rows) == 4
    assert [u["path"] for u in result.unreadable] == [str(tmp_path / "imgs" / "sub" / "broken.jpg")]
    assert "broken.jpg" not in " ".join(r["path"] for r in result.rows)
    assert sorted(r["path"] for r in result.rows) == sorted(str(p) for p in good)

    # the probabilities are the model's softmax of the eval-transformed image, top-3 in decreasing order
    row = next(r for r in result.rows if r["path"].endswith("c.bmp"))
    with torch.no_grad():
        probs = model(eval_tf(Image.open(good[2]).convert("RGB"))[None]).softmax(1)[0]
    top = probs.topk(3)
    assert row["classes"] == [NAMES[i] for i in top.indices.tolist()]
    np.testing.assert_allclose(row["probs"], top.values.numpy(), rtol=1e-5)

    write_predictions_csv(tmp_path / "p.csv", result)
    with open(tmp_path / "p.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["path", "top1", "prob1", "top2", "prob2", "top3", "prob3"]
    assert len(table) == 1 + 4 and all(cell in NAMES for r in table[1:] for cell in r[1::2])
    write_predictions_json(tmp_path / "p.json", result)
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["topk"] == 3 and len(data["predictions"]) == 4 and data["unreadable"][0]["path"].endswith("broken.jpg")


def test_topk_cut_to_classes_and_all_unreadable(tmp_path: Path, model: LTModel) -> None:
    _folder(tmp_path)
    _, eval_tf = build_transforms(img_size=16, augment="none")
    result = predict_topk(model, [str(tmp_path / "a.png")], eval_tf, NAMES, topk=10)
    assert result.topk == 4 and result.rows[0]["probs"] == sorted(result.rows[0]["probs"], reverse=True)
    assert sum(result.rows[0]["probs"]) == pytest.approx(1.0, abs=1e-5)
    only_bad = predict_topk(model, [str(tmp_path / "sub" / "broken.jpg"), str(tmp_path / "readme.txt")], eval_tf,
                            NAMES)
    assert only_bad.rows == [] and len(only_bad.unreadable) == 2
    with pytest.raises(ValueError, match="3 class names"):
        predict_topk(model, [str(tmp_path / "a.png")], eval_tf, NAMES[:3])
