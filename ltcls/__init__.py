"""ltcls: long-tailed visual recognition toolkit.

The short public API (imported on first use, so ``import ltcls`` stays light)::

    model = ltcls.create_model("resnet50", num_classes=1000, classifier="normalized")
    loss = ltcls.build_loss("seesaw", num_classes=1000, class_counts=counts, p=0.8, q=2.0)
    head = ltcls.build_classifier("tau_norm", in_features=2048, num_classes=1000, tau=1.0)
    run = ltcls.load_run("runs/digits_lt_ce")            # a finished run's model, for inference
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public names and the module each lives in.
_API = {
    "build_loss": "ltcls.losses.base",
    "build_classifier": "ltcls.models.classifiers",
    "create_model": "ltcls.models.backbone",
    "create_backbone": "ltcls.models.backbone",
    "LTModel": "ltcls.models.backbone",
    "load_run": "ltcls.stage2.inference",
    "RunDir": "ltcls.rundir",
    "Checkpoint": "ltcls.engine.checkpoint",
    "EvalReport": "ltcls.results",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> object:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ltcls' has no attribute '{name}'")
