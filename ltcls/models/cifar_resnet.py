"""The CIFAR ResNets of the long-tail literature (He et al., 2016, Sec. 4.2), registered into timm.

ResNet-6n+2 on 32x32 inputs: a 3x3 stem with 16 channels, three stages of ``n`` basic blocks
with 16 / 32 / 64 channels (stride 2 between stages), option-A shortcuts (stride-2 subsampling
plus zero-padded channels, no parameters), global average pooling and a 64-dim feature. This is
the ResNet-32 that LDAM-DRW, logit adjustment and GOL's CIFAR-100-LT experiments use
(kaiming-normal init). Registered as ``cifar_resnet{8,20,32,44,56,110}`` so that
``timm.create_model('cifar_resnet32', num_classes=0)`` gives the feature extractor; ResNet-8
is a tiny model for tests and quick runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["CifarResNet"]


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images, following timm's model interface."""

    def __init__(self, depth: int = 32, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0,
                 global_pool: str = "avg") -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        if global_pool != "avg":
            raise ValueError(f"CifarResNet supports global_pool='avg' only, got '{global_pool}'")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(_BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = self.head_hidden_size = 64
        self.feature_info = [dict(num_chs=c, reduction=r, module=f"layer{i + 1}")
                             for i, (c, r) in enumerate(((16, 1), (32, 2), (64, 4)))]
        self.fc = nn.Linear(64, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    return {"num_classes": 100, "input_size": (3, 32, 32), "pool_size": (8, 8), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": (0.4914, 0.4822, 0.4465), "std": (0.2023, 0.1994, 0.2010),
            "first_conv": "conv1", "classifier": "fc", **kwargs}


_DEPTHS = (8, 20, 32, 44, 56, 110)
default_cfgs = generate_default_cfgs({f"cifar_resnet{d}": _cfg() for d in _DEPTHS})


def _create(depth: int, pretrained: bool, **kwargs) -> CifarResNet:
    if pretrained:
        raise ValueError(f"no pretrained weights exist for cifar_resnet{depth}; set model.pretrained: false")
    for key in ("pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return build_model_with_cfg(CifarResNet, f"cifar_resnet{depth}", pretrained=False, depth=depth, **kwargs)


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-8 for 32x32 inputs (one block per stage): a tiny model for tests and quick runs."""
    return _create(8, pretrained, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 for 32x32 inputs."""
    return _create(20, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 for 32x32 inputs, the long-tail literature's CIFAR-LT backbone."""
    return _create(32, pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44 for 32x32 inputs."""
    return _create(44, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 for 32x32 inputs."""
    return _create(56, pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 for 32x32 inputs."""
    return _create(110, pretrained, **kwargs)
