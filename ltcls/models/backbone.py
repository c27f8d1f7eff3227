"""Backbone + classifier model: ``timm.create_model(name, pretrained, num_classes=0)`` plus a head.

CLIP image towers (timm's ``vit_*_clip_*``: OpenAI / open_clip checkpoints, which timm converts) end in a linear
projection into the joint image-text space, which timm keeps as the model's ``head`` (its pretrained config has
``num_classes`` = the embedding width, 512 for ViT-B/16). ``num_classes=0`` drops it: the features are then the
pre-projection 768-d token. ``clip_projection=True`` keeps it, so the backbone's features are CLIP's image
embeddings, the space of the text embeddings a text-initialized head starts from (``classifier.init: text``).
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from ltcls.models import cifar_resnet  # noqa: F401  (registers cifar_resnet* into timm)


def clip_projection_dim(name: str) -> int:
    """The width of a timm CLIP image tower's projection (its pretrained config's ``num_classes``: 512 for
    ``vit_base_patch16_clip_224.openai``); an error naming the model for anything else."""
    cfg = timm.models.get_pretrained_cfg(name)
    tag = (cfg.tag or "") if cfg is not None else ""
    if cfg is None or "clip" not in name.lower() or "_ft_" in f"_{tag}_" or not cfg.num_classes:
        raise ValueError(f"model.clip_projection: '{name}' is not a timm CLIP image tower with its image-text "
                         "projection (expected a CLIP model with its pretrained tag, e.g. "
                         "vit_base_patch16_clip_quickgelu_224.openai; fine-tuned tags such as *_ft_in1k have a "
                         "classifier instead)")
    return int(cfg.num_classes)


def create_backbone(name: str, pretrained: bool = False, drop_rate: float = 0.0, drop_path_rate: float | None = None,
                    clip_projection: bool = False, **kwargs) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``): its forward returns pooled features.

    ``clip_projection``: a CLIP image tower keeps its projection (see the module docstring); its forward returns
    CLIP image embeddings (:func:`feature_dim` wide)."""
    if name not in timm.list_models() and not timm.is_model(name):
        raise KeyError(f"unknown model '{name}': not a timm model name (see timm.list_models())")
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    num_classes = clip_projection_dim(name) if clip_projection else 0
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate, **kwargs)


def feature_dim(backbone: nn.Module) -> int:
    """The width of a backbone's output: a kept head's (a CLIP projection: timm's ``num_classes``), else the
    pooled features' (``num_features``; a module that is not a timm model may have only that)."""
    return int(getattr(backbone, "num_classes", 0) or backbone.num_features)


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
        """The width of the features the head sees (:func:`feature_dim`)."""
        return feature_dim(self.backbone)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
