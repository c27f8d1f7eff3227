"""The test oracle for SimCal's one-pass evaluation: the per-mode path ltcls used before (a copy), which runs the
whole detector once per mode with the RoI heads' box head, predictor and scoring swapped for each mode. Also the
baseline of ``benchmarks/bench_simcal.py``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ltcls.detection.heads import BoxClassification
from ltcls.detection.simcal import SimCalModel, _DualBoxHead, _DualBoxPredictor
from ltcls.models.dual_head import dual_head_average, dual_head_select


class _DualScoring(nn.Module):
    """Scores of the original head, the calibrated head, or SimCal's selection between them."""

    def __init__(self, original: BoxClassification, calibrated: BoxClassification, width: int, mode: str,
                 counts: torch.Tensor, threshold: int | None, weight: float) -> None:
        super().__init__()
        self.original, self.calibrated = original, calibrated
        self.width, self.mode, self.counts, self.threshold, self.weight = width, mode, counts, threshold, weight

    def scores(self, packed: torch.Tensor) -> torch.Tensor:
        s_cal = self.calibrated.scores(packed[:, self.width:])
        if self.mode == "calibrated":
            return s_cal
        s_orig = self.original.scores(packed[:, : self.width])
        if self.mode == "averaged":
            return dual_head_average(s_orig, s_cal, self.weight)
        return dual_head_select(s_orig, s_cal, self.counts.to(packed.device), self.threshold)


@contextmanager
def _dual_heads(model: SimCalModel, mode: str) -> Iterator[None]:
    rh = model.detector.roi_heads
    saved = rh.box_head, rh.box_predictor, rh.box_classification
    width = saved[2].packed_width
    rh.box_head = _DualBoxHead(saved[0], model.head)
    rh.box_predictor = _DualBoxPredictor(saved[1])
    rh.box_classification = _DualScoring(saved[2], model.head.box_classification, width, mode, model.counts,
                                         model.threshold, model.weight)
    try:
        yield
    finally:
        rh.box_head, rh.box_predictor, rh.box_classification = saved


@torch.no_grad()
def per_mode_detections(model: SimCalModel, images: list[torch.Tensor]) -> dict[str, list[dict[str, torch.Tensor]]]:
    """``{mode: detections}``: the whole detector once per mode (SimCalModel's eval forward before one-pass)."""
    out = {}
    for mode in model.modes:
        if mode == "original":
            out[mode] = model.detector(images)
            continue
        with _dual_heads(model, mode):
            out[mode] = model.detector(images)
    return out
