"""Backbones (timm, plus the CIFAR ResNets registered into timm) and classifier heads.

This file is the only registration site of the classifier registry: it imports every module
that registers a head.
"""

from ltcls.models import decoupled  # noqa: F401  (registers 'tau_norm', 'lws', 'ncm')
from ltcls.models.backbone import LTModel, create_backbone
from ltcls.models.classifiers import CLASSIFIERS, build_classifier

__all__ = ["CLASSIFIERS", "LTModel", "build_classifier", "create_backbone"]
