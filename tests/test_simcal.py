"""SimCal's evaluation in one detector pass: every mode's detections (boxes, labels, scores, masks) and LVIS metrics
equal the per-mode path's (``tests/simcal_oracle.py``, the path ltcls used before), for each box loss's scoring,
with and without SimCal's selection; the backbone runs once per batch instead of once per mode."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from simcal_oracle import per_mode_detections
from test_detection_e2e import load_toy_tool
from test_detection_model import batch, tiny_cfg

from ltcls.detection.build import build_detector
from ltcls.detection.data import LVISDataset
from ltcls.detection.model import compact_masks
from ltcls.detection.simcal import CalibratedHead, SimCalEvaluator, SimCalModel, simcal_modes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def simcal_model(loss: str = "ce", num_classes: int = 3, threshold: int | None = 10, seed: int = 0) -> SimCalModel:
    """A tiny random detector and a calibrated head whose classifier is the detector's, perturbed."""
    torch.manual_seed(seed)
    counts = np.array([40, 8, 2, 30, 1, 5, 12, 3][:num_classes])
    data = SimpleNamespace(num_classes=num_classes, class_counts=counts, train=[None] * 50)
    detector = build_detector(tiny_cfg(loss), data)
    rh = detector.roi_heads
    classifier = copy.deepcopy(rh.box_predictor.cls_score)
    with torch.no_grad():
        for p in classifier.parameters():
            p.add_(torch.randn_like(p) * p.std().clamp_min(0.05))
    head = CalibratedHead(copy.deepcopy(rh.box_head), classifier, copy.deepcopy(rh.box_classification))
    return SimCalModel(detector, head, counts, threshold, weight=0.3).eval()


def assert_same_detections(new: dict, old: dict, masks: str) -> None:
    assert set(new) == set(old)
    for mode in old:
        assert len(new[mode]) == len(old[mode])
        for a, b in zip(new[mode], old[mode]):
            assert set(a) == set(b), mode
            assert len(b["scores"]) > 0, mode  # the comparison is not vacuous
            for key in ("boxes", "labels", "scores"):
                assert torch.equal(a[key], b[key]), (mode, key)
            torch.testing.assert_close(a[masks], b[masks], rtol=0, atol=1e-6, msg=mode)


@pytest.mark.parametrize("loss,threshold", [("ce", 10), ("seesaw_det", 10), ("gumbel_drop", 5), ("ce", None)])
def test_one_pass_gives_every_modes_detections(loss, threshold):
    model = simcal_model(loss, threshold=threshold)
    images, _ = batch(2)
    with torch.no_grad():
        with compact_masks(model):
            new = model(images)
            assert_same_detections(new, per_mode_detections(model, images), "mask_probs")
        if loss == "ce" and threshold is not None:  # masks pasted into the image (outside ltcls's evaluation)
            assert_same_detections(model(images), per_mode_detections(model, images), "masks")
    assert set(new) == set(simcal_modes(threshold))


def test_the_backbone_runs_once_per_batch():
    model = simcal_model()
    calls = []
    model.detector.backbone.register_forward_hook(lambda *a: calls.append(1))
    images, _ = batch(2)
    with torch.no_grad():
        model(images)
        assert len(calls) == 1
        per_mode_detections(model, images)
        assert len(calls) == 1 + len(model.modes)


def test_one_pass_gives_the_per_mode_lvis_metrics(tmp_path):
    """On a toy LVIS split, SimCal's evaluator fed by one pass reports what it reports fed by the per-mode path."""
    toy = load_toy_tool().make_toy_lvis(tmp_path / "toy", num_train=16, num_val=6, image_size=64)
    split = LVISDataset(toy["root"], toy["val_ann"], keep_json=True)
    model = simcal_model("ce", num_classes=split.num_classes, threshold=10)
    reports = []
    for forward in (model, lambda images: per_mode_detections(model, images)):
        ev = SimCalEvaluator(split, model.modes, "combined", 0.5, 300, 10, 0.5, shard_dir=tmp_path / "shards")
        ev.reset()
        with torch.no_grad(), compact_masks(model):
            for start in range(0, len(split), 3):
                items = [split[i] for i in range(start, min(start + 3, len(split)))]
                images, targets = [i for i, _ in items], [t for _, t in items]
                ev.process((images, targets), forward(images))
        reports.append(ev.evaluate().sections[0].to_json())
    new, old = reports
    assert new == old
    assert {"original", "calibrated", "combined", "averaged"} <= set(new) and new["AP"] == new["combined"]["AP"]
    assert new["original"]["num_detections"] > 0 and new["calibrated"] != new["original"]
