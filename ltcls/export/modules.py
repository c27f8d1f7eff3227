"""The modules an export is made of: the normalisation in front of the model (:class:`Normalized`), a loss's
inference scores as a module (:class:`LossScores`) and a stage-1 and a stage-2 head as one dual head
(:class:`DualHeadClassifier`). Plain tensor code, so every export format (torch.export, ONNX, TorchScript) can
capture it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ltcls.losses.base import LTLoss
from ltcls.models.dual_head import dual_head_average, dual_head_select


class Normalized(nn.Module):
    """``model((x - mean) / std)`` for images ``x`` in [0, 1]: the normalisation travels with the model."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need one value per RGB channel (3), got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {list(std)}")
        self.model = model
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


class LossScores(nn.Module):
    """``loss.scores(logits)`` as a module (e.g. Gumbel probabilities), so the inference scores of a stage's
    loss can be part of an exported dual head without a second copy of the formula."""

    def __init__(self, loss: LTLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.loss.scores(logits)


class DualHeadClassifier(nn.Module):
    """A stage-1 and a stage-2 head as one module: ``rule`` ``'sel'`` is SimCal's selection
    (:func:`ltcls.models.dual_head.dual_head_select`: the calibrated head's scores for classes with at most
    ``threshold`` training samples, the original head's for the others), ``'avg'`` score averaging
    (:func:`ltcls.models.dual_head.dual_head_average` with ``weight`` on the calibrated head).

    ``original_scores`` / ``calibrated_scores`` turn each head's logits into the scores compared at inference
    (``LossScores(stage_loss)``; default softmax; ``nn.Identity()`` selects between raw logits).
    """

    def __init__(self, original: nn.Module, calibrated: nn.Module, class_counts: Sequence[int] | torch.Tensor,
                 threshold: int | None, original_scores: nn.Module | None = None,
                 calibrated_scores: nn.Module | None = None, rule: str = "sel", weight: float = 0.5) -> None:
        super().__init__()
        self.original = original
        self.calibrated = calibrated
        self.original_scores = original_scores if original_scores is not None else nn.Softmax(dim=-1)
        self.calibrated_scores = calibrated_scores if calibrated_scores is not None else nn.Softmax(dim=-1)
        self.register_buffer("class_counts", torch.as_tensor(class_counts, dtype=torch.long).clone())
        if rule not in ("sel", "avg") or (rule == "sel" and threshold is None):
            raise ValueError(f"dual-head rule must be 'sel' (with a threshold) or 'avg', got {rule!r} (threshold "
                             f"{threshold})")
        self.threshold = -1 if threshold is None else int(threshold)
        self.rule, self.weight = rule, float(weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        original = self.original_scores(self.original(features))
        calibrated = self.calibrated_scores(self.calibrated(features))
        if self.rule == "avg":
            return dual_head_average(original, calibrated, self.weight)
        return dual_head_select(original, calibrated, self.class_counts, self.threshold)
