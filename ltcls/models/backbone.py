"""Backbone + classifier model: ``timm.create_model(name, pretrained, num_classes=0)`` plus a head.

CLIP image towers (timm's ``vit_*_clip_*``: OpenAI / open_clip checkpoints, which timm converts) end in a linear
projection into the joint image-text space, which timm keeps as the model's ``head`` (its pretrained config has
``num_classes`` = the embedding width, 512 for ViT-B/16). ``num_classes=0`` drops it: the features are then the
pre-projection 768-d token. ``clip_projection=True`` keeps it, so the backbone's features are CLIP's image
embeddings, the space of the text embeddings a text-initialized head starts from (``classifier.init: text``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import timm
import torch
from torch import nn

from ltcls.models import cifar_resnet  # noqa: F401  (registers cifar_resnet* into timm)
from ltcls.models.classifiers import build_classifier
from ltcls.models.peft import base_model
from ltcls.models.pretrained import check_hub_weights, check_pretrained_file, download_failed


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
                    pretrained_file: str | None = None, clip_projection: bool = False, **kwargs) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``): its forward returns pooled features.

    ``pretrained``: timm's weights (from the local Hugging Face cache, else downloaded; with neither, one line
    saying what to download: :mod:`ltcls.models.pretrained`); ``pretrained_file``: the weights from that file.
    ``clip_projection``: a CLIP image tower keeps its projection (see the module docstring); its forward returns
    CLIP image embeddings (:func:`feature_dim` wide)."""
    if name not in timm.list_models() and not timm.is_model(name):
        raise KeyError(f"unknown model '{name}': not a timm model name (see timm.list_models())")
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if pretrained_file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(check_pretrained_file(pretrained_file))}
        pretrained = True
    elif pretrained:
        check_hub_weights(name)
    num_classes = clip_projection_dim(name) if clip_projection else 0
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate, **kwargs)
    except OSError as e:  # a download that failed after the check (network lost meanwhile, a proxy, ...)
        if not pretrained or pretrained_file is not None:
            raise
        raise download_failed(name, e) from None


def feature_dim(backbone: nn.Module) -> int:
    """The width of a backbone's output: a kept head's (a CLIP projection: timm's ``num_classes``), else the
    pooled features' (``num_features``; a module that is not a timm model may have only that)."""
    return int(getattr(backbone, "num_classes", 0) or backbone.num_features)


class LTModel(nn.Module):
    """``backbone`` (features) followed by a replaceable ``classifier`` head.

    Follows timm's split: ``forward_features`` gives the pooled feature vector, ``forward_head``
    the logits, ``forward`` both in a row. ``frozen_backbone``: the backbone stays in eval mode when the model
    trains (``model.freeze``: BatchNorm statistics and dropout fixed). For timm's optimizer factory the model
    exposes its backbone's layer groups with the head as the top layer (:meth:`group_matcher`) and the
    backbone's ``no_weight_decay()`` names.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, frozen_backbone: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.frozen_backbone = frozen_backbone

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

    def train(self, mode: bool = True) -> LTModel:
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def group_matcher(self, coarse: bool = False) -> Callable[[str], tuple[float, ...]]:
        """timm's layer grouping of the backbone (its ``group_matcher``) for this model's parameter names: the
        backbone's groups in their order, the head after them (timm's rule for unmatched names: last).
        Raises ``ValueError`` when the backbone has no ``group_matcher`` (``train.layer_decay`` needs one)."""
        inner, prefix = base_model(self.backbone)
        spec = getattr(inner, "group_matcher", None)
        if spec is None:
            raise ValueError(f"train.layer_decay needs a backbone with timm's group_matcher (its layers in order); "
                             f"{type(inner).__name__} has none: set train.layer_decay: null")
        return _prefixed_matcher(spec(coarse=coarse), "backbone." + prefix)

    def no_weight_decay(self) -> set[str]:
        """The backbone's ``no_weight_decay()`` names (ViT: position embedding, class token) in this model."""
        inner, prefix = base_model(self.backbone)
        names = getattr(inner, "no_weight_decay", lambda: set())()
        return {f"backbone.{prefix}{n}" for n in names}


def _prefixed_matcher(spec: Mapping[str, object] | Callable[[str], object], prefix: str
                      ) -> Callable[[str], tuple[float, ...]]:
    """A timm group matcher (a dict of regexes, or a function of the name) for names under ``prefix``;
    other names (the head) map to infinity, after every backbone group."""
    if callable(spec):
        def match_fn(name: str) -> tuple[float, ...]:
            if not name.startswith(prefix):
                return (float("inf"),)
            order = spec(name[len(prefix):])
            return tuple(order) if isinstance(order, (tuple, list)) else (order,)

        return match_fn
    rules = []
    for ordinal, rule in enumerate(spec.values()):  # timm's group_with_matcher, names under the prefix
        for pattern, suffix in (rule if isinstance(rule, (tuple, list)) else [(rule, None)]) if rule else []:
            rules.append((re.compile(pattern), (float(ordinal),), tuple(float(s) for s in suffix or ())))

    def match_dict(name: str) -> tuple[float, ...]:
        if name.startswith(prefix):
            for regex, order, suffix in rules:
                found = regex.match(name[len(prefix):])
                if found:
                    return order + tuple(float(g) for g in found.groups() if g is not None) + suffix
        return (float("inf"),)

    return match_dict

def create_model(backbone: str, num_classes: int, classifier: str = "linear", pretrained: bool = False,
                 classifier_params: Mapping[str, object] | None = None, **backbone_kwargs: object) -> LTModel:
    """A timm backbone (``backbone`` by name, ``timm.create_model`` keyword arguments in ``backbone_kwargs``) with a
    registered classifier head (``classifier`` by name: linear, normalized, tau_norm, lws, ncm) for
    ``num_classes`` classes: what a config's ``model`` and ``classifier`` sections build."""
    features = create_backbone(backbone, pretrained=pretrained, **backbone_kwargs)
    head = build_classifier(classifier, features.num_features, num_classes, **(classifier_params or {}))
    return LTModel(features, head)
