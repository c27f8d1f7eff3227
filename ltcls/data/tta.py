"""Test-time augmentation (``eval.tta``): K views of every evaluation image and the mean of the model's K outputs.

A TTA is a registered factory (``TTAS``) that builds, from the run's transform keys (``data.img_size``, ``mean``,
``std``, ``interpolation``, ``crop_pct``) and ``eval.tta_expand``, the transform giving a ``(K, 3, H, W)`` tensor
per image, or ``None`` for no augmentation; :class:`ViewAverage` runs the model on all ``N x K`` views of a batch
at once and averages its outputs over the views. :meth:`TTA.apply` puts both on an evaluation split and its model;
the engine, ``ltcls-eval`` and ``ltcls-predict`` call it and know no TTA by name.

- ``flip``: the eval view and its mirror image.
- ``five_crop``: LIFT's test-time ensembling (shijxcs/LIFT ``trainer.py``, ``build_data_loader`` with
  ``tte_mode: fivecrop`` and ``test``): the image resized so its short side is ``img_size + expand`` (``expand``
  24 by default, LIFT's ``utils/config.py``), ``FiveCrop(img_size)`` (the four corners and the centre), each crop
  normalized; the model's logits averaged over the five crops (``output.view(bsz, ncrops, -1).mean(dim=1)``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from timm.data.transforms import str_to_interp_mode
from torch import nn
from torchvision import transforms as T

from ltcls.config import Config
from ltcls.data.base import LTDataset
from ltcls.data.transforms import build_transforms
from ltcls.registries import TTAS
from ltcls.registry import signature_schema

log = logging.getLogger("ltcls")


class StackViews:
    """A tuple of K ``(3, H, W)`` views -> ``(K, 3, H, W)``."""

    def __call__(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(views))


class AddMirror:
    """``(3, H, W)`` -> ``(2, 3, H, W)``: the view and its horizontal mirror image."""

    def __call__(self, view: torch.Tensor) -> torch.Tensor:
        return torch.stack([view, view.flip(-1)])


@TTAS.register("none")
def no_views(params: Mapping[str, object], expand: int) -> Callable | None:
    """No test-time augmentation: the eval transform alone."""
    return None


@TTAS.register("flip")
def flip_views(params: Mapping[str, object], expand: int) -> Callable:
    """The eval transform's view and its mirror image (K = 2)."""
    eval_tf = build_transforms(**params)[1]
    return T.Compose([*eval_tf.transforms, AddMirror()])


@TTAS.register("five_crop")
def five_crop_views(params: Mapping[str, object], expand: int) -> Callable:
    """LIFT's five crops (K = 5): short side resized to ``img_size + expand``, the four corner crops and the centre
    crop of ``img_size`` (torchvision's ``FiveCrop`` order: top-left, top-right, bottom-left, bottom-right, centre),
    normalized. The resized image is converted and normalized once and cropped as a tensor: per-pixel steps commute
    with crops, so the crops equal LIFT's crop-then-normalize ones, with one conversion instead of five."""
    build_transforms(**params)  # the same checks of the transform keys as the eval transform
    size = int(params["img_size"])  # type: ignore[call-overload]
    return T.Compose([T.Resize(size + expand, interpolation=str_to_interp_mode(str(params["interpolation"]))),
                      T.ToTensor(), T.Normalize(params["mean"], params["std"]), T.FiveCrop(size), StackViews()])


class ViewAverage(nn.Module):
    """``module`` on ``(N, K, ...)`` views: run on each of the K views of the N images in turn, its outputs averaged
    over the views (LIFT averages the logits). One view at a time keeps each forward at the N images of a plain
    evaluation batch (LIFT loops over the views too beyond five, for GPU memory; on CPU, one 5N batch costs ~10x
    a plain evaluation in memory traffic instead of 5x)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        if views.ndim < 3:
            raise ValueError(f"expected views (N, K, ...), got shape {tuple(views.shape)}")
        return torch.stack([self.module(views[:, k]) for k in range(views.shape[1])], dim=1).mean(dim=1)


@dataclass(frozen=True)
class TTA:
    """A run's test-time augmentation: ``name`` (registered in ``TTAS``), ``expand`` (pixels added to the short
    side before five crops) and the run's transform keys."""

    name: str = "none"
    expand: int = 24
    transform_params: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Config, name: str | None = None) -> TTA:
        """``eval.tta`` of ``cfg`` (or ``name`` instead) with the run's transform keys, defaults filled in."""
        params: dict[str, object] = {k: d for k, (_, d) in signature_schema(build_transforms).items()}
        params.update({k: v for k, v in cfg.data.params.items() if k in params})
        return cls(name if name is not None else cfg.eval.tta, cfg.eval.tta_expand, params)

    def views(self) -> Callable | None:
        """The transform giving ``(K, 3, H, W)`` per image (``None``: no augmentation)."""
        return TTAS.get(self.name)(self.transform_params, self.expand)

    def apply(self, module: nn.Module, dataset: object) -> tuple[nn.Module, object]:
        """``(module, dataset)`` to evaluate with: the image split seen through :meth:`views` and ``module`` under
        :class:`ViewAverage`. Unchanged without augmentation, and for what is not an image classification split
        (cached stage-2 features, detection images), with a warning."""
        views = self.views()
        if views is None:
            return module, dataset
        if not isinstance(dataset, LTDataset):
            log.warning("eval.tta: '%s' applies to image classification splits; not applied to this evaluation of %s "
                        "(ltcls-eval RUN_DIR --tta %s evaluates the finished run's model on images)", self.name,
                        type(dataset).__name__, self.name)
            return module, dataset
        return ViewAverage(module), dataset.with_transform(views)

    def wrap(self, module: nn.Module, eval_transform: Callable) -> tuple[nn.Module, Callable]:
        """``(module, transform)`` for images read one by one (``ltcls-predict``): :meth:`views` and ``module`` under
        :class:`ViewAverage`, or both unchanged without augmentation."""
        views = self.views()
        if views is None:
            return module, eval_transform
        log.info("test-time augmentation %s: the model's outputs are averaged over the views of each image", self.name)
        return ViewAverage(module), views

    def export_note(self) -> str:
        """What an export's json says about test-time augmentation (the export is the plain model), logged."""
        if self.views() is None:
            return "none"
        log.info("the export is the plain model (one view per image): the run's test-time augmentation "
                 "eval.tta '%s' is not part of it", self.name)
        return f"none (the module takes one view per image; the run evaluates with eval.tta '{self.name}')"
