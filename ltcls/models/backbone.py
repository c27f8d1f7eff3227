"""Backbone + classifier model: ``timm.create_model(name, pretrained, num_classes=0)`` plus a head."""

from __future__ import annotations

from collections.abc import Mapping

import timm
import torch
from torch import nn

from ltcls.models import cifar_resnet  # noqa: F401  (registers cifar_resnet* into timm)
from ltcls.models.classifiers import build_classifier


def create_backbone(name: str, pretrained: bool = False, drop_rate: float = 0.0, drop_path_rate: float | None = None,
                    **kwargs) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``): its forward returns pooled features."""
    if name not in timm.list_models() and not timm.is_model(name):
        raise KeyError(f"unknown model '{name}': not a timm model name (see timm.list_models())")
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    return timm.create_model(name, pretrained=pretrained, num_classes=0, drop_rate=drop_rate, **kwargs)


class LTModel(nn.Module):
    """``backbone`` (features) followed by a replaceable ``classifier`` head.

    Follows timm's split: ``forward_features`` gives the pooled feature vector, ``forward_head``
    the logits, ``forward`` both in a row.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def create_model(backbone: str, num_classes: int, classifier: str = "linear", pretrained: bool = False,
                 classifier_params: Mapping[str, object] | None = None, **backbone_kwargs: object) -> LTModel:
    """A timm backbone (``backbone`` by name, ``timm.create_model`` keyword arguments in ``backbone_kwargs``) with a
    registered classifier head (``classifier`` by name: linear, normalized, tau_norm, lws, ncm) for
    ``num_classes`` classes: what a config's ``model`` and ``classifier`` sections build."""
    features = create_backbone(backbone, pretrained=pretrained, **backbone_kwargs)
    head = build_classifier(classifier, features.num_features, num_classes, **(classifier_params or {}))
    return LTModel(features, head)
