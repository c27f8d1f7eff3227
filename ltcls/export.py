"""Export a trained model as a self-contained TorchScript module plus a json of what it expects.

The module takes a float RGB tensor ``(N, 3, H, W)`` in [0, 1] at the run's eval size, normalises it with
the run's mean / std inside, and returns the logits ``(N, C)`` (for a dual head: the selected scores). It is
made with ``torch.jit.trace`` (timm's models and every head of ``ltcls.models`` trace, most do not script),
on CPU, and checked against the eager model on a batch of another size, so it loads with
``torch.jit.load`` in a Python that has torch but not ltcls. Any nn.Module exports: parameter-efficient adapters
(``peft``'s LoRA, IA3, ...) are merged into the weights first (``merge_and_unload``), and the check compares the
merged, traced module with the model as trained.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ltcls.losses.base import LTLoss
from ltcls.models.dual_head import dual_head_average, dual_head_select
from ltcls.models.peft import adapter_names, merge_adapters

logger = logging.getLogger(__name__)

#: The largest difference allowed between the exported module's and the eager model's outputs.
EXPORT_TOLERANCE = 1e-5


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


def _size(input_size: int | Sequence[int]) -> tuple[int, int]:
    size = (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be an int or (height, width) of positive ints, got {input_size!r}")
    return size  # type: ignore[return-value]


def export_torchscript(model: nn.Module, out_path: str | Path, mean: Sequence[float], std: Sequence[float],
                       input_size: int | Sequence[int], class_names: Sequence[str], source_run: str | Path,
                       extra: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Trace ``model`` (expects normalised input, returns ``(N, C)``) with its normalisation into
    ``out_path`` and write ``out_path`` with suffix ``.json`` beside it; returns both paths.

    The json holds ``class_names``, ``num_classes``, ``input_size`` ([H, W]), ``mean`` / ``std``,
    ``source_run``, the input / output contract and ``extra`` (e.g. the chosen tau). Raises ``ValueError``
    when the number of class names differs from the model's outputs, and ``RuntimeError`` when the traced
    module differs from the eager model by more than :data:`EXPORT_TOLERANCE` on a batch of another size.
    """
    height, width = _size(input_size)
    out_path = Path(out_path)
    wrapped = Normalized(copy.deepcopy(model).cpu().float(), mean, std).eval()
    adapters = adapter_names(wrapped.model)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, height, width, generator=generator)
    check = torch.rand(3, 3, height, width, generator=generator)
    with torch.no_grad():
        eager = wrapped(check)  # the model as trained: the check below covers merging the adapters too
        if eager.ndim != 2 or eager.shape[1] != len(class_names):
            raise ValueError(f"the model returns shape {tuple(eager.shape)} but {len(class_names)} class names "
                             f"were given (expected (N, {len(class_names)}))")
        wrapped.model = merge_adapters(wrapped.model)  # LoRA & co. folded into plain layers: no peft at load time
        with warnings.catch_warnings():  # e.g. NCM's "is it fitted" check: constant here, and checked below
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(wrapped, example, check_trace=False)
        got = traced(check)
    if got.shape != eager.shape:
        raise RuntimeError(f"the traced module differs from the model on a batch of 3: shape {tuple(got.shape)} "
                           f"instead of {tuple(eager.shape)} (the model's forward depends on the batch size)")
    # -inf equals -inf (NCM's classes without training samples); NaN only matches NaN
    close = torch.isclose(got, eager, rtol=0.0, atol=EXPORT_TOLERANCE, equal_nan=True)
    if not bool(close.all()):
        raise RuntimeError(f"the traced module differs from the model by up to {(got - eager).abs()[~close].max():.3g}"
                           f" on a batch of 3 (expected at most {EXPORT_TOLERANCE}): the model's forward depends on "
                           "the batch size or on the data")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(out_path))
    meta = {
        "format": "torchscript",
        "file": out_path.name,
        "input": "float RGB tensor (N, 3, H, W) in [0, 1]; normalisation is done inside",
        "output": "logits (N, num_classes)",
        "input_size": [height, width],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "num_classes": len(class_names),
        "class_names": [str(c) for c in class_names],
        "source_run": str(source_run),
        "torch_version": torch.__version__,
        "extra": dict(extra or {}),
    }
    if adapters:
        meta["merged_adapters"] = list(adapters)
    json_path = out_path.with_suffix(".json")
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("exported %s (%d classes, input %dx%d) and %s", out_path, len(class_names), height, width,
                json_path.name)
    return out_path, json_path
