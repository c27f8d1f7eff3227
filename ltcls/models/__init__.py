"""Backbones (:mod:`ltcls.models.backbone`: timm, plus the CIFAR ResNets registered into timm) and classifier
heads (:mod:`ltcls.models.classifiers`, :mod:`ltcls.models.decoupled`; names declared in
:mod:`ltcls.registries`). This package imports nothing heavy."""
