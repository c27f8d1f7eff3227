"""The catalogue: every registry of ltcls and the module behind each built-in name.

This module imports nothing heavy (no torch), so the command line can list names, check a config's
section names and build ``--help`` without importing an implementation; :meth:`Registry.get` imports the
module on first use, where an ``@REGISTRY.register(name)`` decorator attaches the object. Plug-ins (see
:mod:`ltcls.plugins`) declare their names into the same registries.
"""

from __future__ import annotations

from ltcls.registry import Registry

#: Dataset builders take their hyper-parameters from ``data.*`` and the two transforms at runtime; each
#: returns a ``DataSplits``. Every dataset also accepts the transform keys (the parameters of
#: ``build_transforms``). Metadata ``task``: the task that trains on it (default ``classification``).
DATASETS = Registry("dataset", runtime=("train_transform", "eval_transform"),
                    common="ltcls.data.transforms:build_transforms")
#: Samplers take their hyper-parameters from ``sampler.*``; the trainer passes the runtime facts.
SAMPLERS = Registry("sampler", runtime=("targets", "seed", "epochs", "num_replicas", "rank", "dataset"))
#: Classifier heads: ``(in_features, num_classes, **hyperparams)``.
CLASSIFIERS = Registry("classifier", runtime=("in_features", "num_classes"))
#: Losses: runtime facts ``num_classes`` and ``class_counts`` come from the data.
LOSSES = Registry("loss", runtime=("num_classes", "class_counts"))
#: Tasks: how the shared Trainer builds, trains and evaluates a run of a kind of dataset.
TASKS = Registry("task")
#: Decoupled second stages (``ltcls-train --stage2 METHOD``). Metadata: ``task`` (the kind of stage-1 run
#: it applies to), ``preset`` (config overrides applied to the stage-1 config before ``--set``: sections
#: replaced whole, except ``train`` / ``stage2`` / ``detection``, which are updated key by key),
#: ``summary`` (one line for ``--help``).
METHODS = Registry("stage-2 method")

#: The registry behind each config section that picks an implementation by ``name``.
SECTIONS: dict[str, Registry] = {"data": DATASETS, "classifier": CLASSIFIERS, "loss": LOSSES, "sampler": SAMPLERS}

for _name, _module in {
    "digits_lt": "digits", "cifar10_lt": "cifar", "cifar100_lt": "cifar", "split_file": "split_file",
    "imagenet_lt": "imagenet_lt", "places_lt": "places_lt", "inat2018": "inat2018", "image_folder": "image_folder",
    "glyphs_lt": "glyphs_lt",
}.items():
    DATASETS.declare(_name, f"ltcls.data.datasets.{_module}")

for _name in ("instance", "power", "class_balanced", "sqrt", "progressive", "class_aware", "repeat_factor"):
    SAMPLERS.declare(_name, "ltcls.data.samplers")

for _name, _module in {"linear": "classifiers", "normalized": "classifiers", "tau_norm": "decoupled",
                       "lws": "decoupled", "ncm": "decoupled"}.items():
    CLASSIFIERS.declare(_name, f"ltcls.models.{_module}")

for _name, _module in {
    "ce": "cross_entropy", "balanced_softmax": "balanced_softmax", "class_balanced": "class_balanced",
    "class_balanced_focal": "class_balanced", "focal": "focal", "gumbel": "gumbel", "gumbel_drop": "gumbel_drop",
    "ldam": "ldam", "logit_adjusted": "logit_adjusted", "seesaw": "seesaw", "seesaw_det": "seesaw_det",
}.items():
    LOSSES.declare(_name, f"ltcls.losses.{_module}")

TASKS.declare("classification", "ltcls.engine.tasks")

_SHORT = {"schedule": "cosine", "warmup_epochs": 0}
#: Kang et al.'s cRT / LWS sampler (classifier-balancing's ClassAwareSampler, num_samples_cls 4): an epoch is
#: max class count x C samples (ImageNet-LT: 1280 x 1000; 11x the instance epoch, Places-LT 29x).
_CLASS_AWARE = {"name": "class_aware", "num_samples_cls": 4}
METHODS.declare(
    "crt", "ltcls.stage2.methods", task="classification",
    summary="re-initialized classifier, class-aware sampler (4 per class; epoch = max count x C), CE, 10 epochs",
    # Kang et al.: cRT 10 epochs, LWS 5 epochs, both with class-balanced sampling and a cosine schedule.
    preset={"loss": {"name": "ce"}, "sampler": _CLASS_AWARE, "train": {"epochs": 10, **_SHORT}})
METHODS.declare(
    "lws", "ltcls.stage2.methods", task="classification",
    summary="stage-1 W, b frozen + learnable per-class scales, class-aware sampler, CE, 5 epochs",
    preset={"classifier": {"name": "lws"}, "loss": {"name": "ce"}, "sampler": _CLASS_AWARE,
            "train": {"epochs": 5, **_SHORT}})
METHODS.declare(
    "tau_norm", "ltcls.stage2.methods", task="classification",
    summary="no training; tau swept over stage2.tau_grid, chosen on stage2.tau_split (val)",
    preset={"classifier": {"name": "tau_norm"}})
METHODS.declare(
    "ncm", "ltcls.stage2.methods", task="classification",
    summary="no training; nearest class mean of the backbone features",
    preset={"classifier": {"name": "ncm"}})
METHODS.declare(
    "gumbel", "ltcls.stage2.methods", task="classification",
    summary="stage-1 classifier fine-tuned with the unclamped Gumbel loss, instance sampler; lr 1e-4 x 15 epochs "
            "(ImageNet-LT / Places-LT: 1e-5 x 10)",
    # GOL Sec. 5: only the classifier is re-trained, random sampling, lr 1e-4 for 15 epochs on CIFAR-100-LT,
    # 1e-5 for 10 epochs on ImageNet-LT / Places-LT. The loss is GOL's Gumbel without its clamp at 20
    # (ltcls.losses.gumbel.DECOUPLED_GUMBEL): summed over C classes, a softmax-trained head's loss is ~90 per
    # sample at C = 100 and ~900 at C = 1000, so the clamped loss has zero gradient and trains nothing.
    preset={"loss": {"name": "gumbel", "clamp_max": None}, "sampler": {"name": "instance"},
            "train": {"epochs": 15, "lr": 1e-4, **_SHORT}},
    preset_by_dataset={name: {"train": {"epochs": 10, "lr": 1e-5}} for name in ("imagenet_lt", "places_lt")})


def task_of(data_name: str) -> str:
    """The task that trains on the dataset ``data_name`` (its declaration's ``task``; classification by default)."""
    return DATASETS.meta(data_name).get("task", "classification")
