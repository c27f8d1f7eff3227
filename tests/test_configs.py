"""Every shipped config resolves strictly; the ImageNet-LT Seesaw config trains as soon as data is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltcls import config as C
from ltcls.engine import Stage, Trainer, build_run, build_task
from ltcls.rundir import RunDir

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_resolves(path):
    cfg = C.load(path)
    assert C.resolve(cfg) == cfg


def _tiny_imagenet_lt(tmp_path: Path, counts=(6, 3, 2)) -> tuple[Path, Path]:
    """An ILSVRC-2012-style folder and the three official ImageNet-LT split files, tiny."""
    root, splits = tmp_path / "imagenet", tmp_path / "splits"
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    rng = np.random.RandomState(0)
    for label, n in enumerate(counts):
        wnid = f"n{label:08d}"
        for k in range(n + 2):
            rel = f"train/{wnid}/{wnid}_{k}.JPEG" if k <= n else f"val/{wnid}/ILSVRC2012_val_{label:04d}{k:04d}.JPEG"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / rel)
            lines["train" if k < n else "val" if k == n else "test"].append(f"{rel} {label}")
    splits.mkdir()
    for split, rows in lines.items():
        (splits / f"ImageNet_LT_{split}.txt").write_text("\n".join(rows) + "\n")
    return root, splits


def test_imagenet_lt_seesaw_config_reaches_its_first_step(tmp_path):
    root, splits = _tiny_imagenet_lt(tmp_path)
    path = CONFIGS[0].parent / "imagenet_lt_seesaw.yaml"
    # only the data location and what tiny data forces (batch, workers) change; model, head, loss,
    # sampler and optimizer are the config's own (ResNeXt-50, normalized tau 20, Seesaw p 0.8 q 1, SGD)
    cfg = C.load(path, [f"data.root={root}", f"data.split_dir={splits}", "train.batch_size=4",
                                        "train.num_workers=0"])
    assert cfg.model.name == "resnext50_32x4d" and cfg.loss.q == 1.0
    data, model, loss = build_run(cfg)
    assert data.num_classes == 3 and data.class_counts.tolist() == [6, 3, 2]
    trainer = Trainer(model, data, cfg, RunDir(tmp_path / "run"), task=build_task(cfg))
    stage = Stage("stage1", loss, cfg.train, cfg.sampler)
    state = trainer._setup(0, stage)
    images, labels = next(iter(state.loader))
    assert images.shape == (4, 3, 224, 224)
    before = model.classifier.weight.detach().clone()
    out = trainer.task.train_step(state.wrapped, (images, labels), loss, trainer.device, state.amp)
    out.loss.backward()
    state.optimizer.step()
    assert out.num_samples == 4 and torch.isfinite(out.loss)
    assert int(loss.cum_samples.sum()) == 4  # Seesaw counted the batch
    assert not torch.equal(before, model.classifier.weight)
