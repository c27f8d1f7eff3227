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
SAMPLERS = Registry("sampler", runtime=("targets", "seed", "epochs", "num_replicas", "rank", "dataset"),
                    section="sampler")
#: Classifier heads: ``(in_features, num_classes, **hyperparams)``. Every classifier section also takes the keys of
#: how the head starts (``init: default | text`` and the text encoder's: ``ltcls.models.text_head.HeadInit``).
CLASSIFIERS = Registry("classifier", runtime=("in_features", "num_classes"), common="ltcls.models.text_head:HeadInit",
                       section="classifier")
#: Losses: runtime facts ``num_classes`` and ``class_counts`` come from the data.
LOSSES = Registry("loss", runtime=("num_classes", "class_counts"), section="loss")
#: Test-time augmentations (``eval.tta``): ``factory(transform_params, expand)`` -> the transform giving K views per
#: image, or None (``ltcls.data.tta``).
TTAS = Registry("test-time augmentation")
#: Tasks: how the shared Trainer builds, trains and evaluates a run of a kind of dataset.
TASKS = Registry("task")
#: Decoupled second stages (``ltcls-train --stage2 METHOD``). Metadata: ``task`` (the kind of stage-1 run
#: it applies to), ``preset`` (config overrides applied to the stage-1 config before ``--set``: a section that
#: picks a component by name (``loss``, ``sampler``, ...) is replaced whole, the others are updated key by key),
#: ``summary`` (one line for ``--help``).
METHODS = Registry("stage-2 method")
#: Formats of ``ltcls-export`` (:class:`ltcls.export.formats.ExportFormat` subclasses). Metadata: ``suffix`` (the
#: default file is ``RUN_DIR/model<suffix>``), ``summary`` (one line for ``--help``), ``legacy`` (kept for old
#: consumers only), ``requires`` (importable modules the format needs beyond torch).
EXPORT_FORMATS = Registry("export format")

#: Config sections a plug-in adds (a dataclass each, like ``train:``). Metadata ``task``: the task whose datasets
#: have the section (a config of another task's dataset must not set it).
CONFIG_SECTIONS = Registry("config section")
#: Parameter-efficient fine-tuning methods (``model.peft.method``): ``apply(backbone, peft_cfg) -> backbone``.
PEFT_METHODS = Registry("peft method")

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

for _name in ("none", "flip", "five_crop"):
    TTAS.declare(_name, "ltcls.data.tta")

TASKS.declare("classification", "ltcls.engine.tasks")

for _name in ("none", "lora", "dora", "loha", "lokr", "ia3", "ln_tuning", "bitfit"):
    PEFT_METHODS.declare(_name, "ltcls.models.peft")

#: A head-only stage: the stage-1 run's layer-wise lr decay and head multiplier (for its backbone) do not apply;
#: the head trains at the stage's train.lr with the stage-1 optimizer.
_SHORT = {"schedule": "cosine", "warmup_epochs": 0, "layer_decay": None, "head_lr_mult": 1.0}
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
#: Decoupled Gumbel as the first author's classification code runs it (kostas1515/iif, ``classification/``, e.g.
#: commit 8cc3e99; GOL's own repository is detection only): ``train.py --decoup`` freezes all but the classifier
#: and ``--load_from`` then loads the stage-1 checkpoint, so the softmax head is fine-tuned (``gumbel`` keeps the
#: stage-1 head); ``custom.py`` ``GombitLoss`` with ``--reduction mean``, logits clamped to [-4, 10], no clamp of
#: the reduced loss (``ltcls.losses.gumbel.DECOUPLED_GUMBEL``); random (instance) sampling; SGD momentum 0.9,
#: weight decay 5e-4; ``train_one_epoch`` warms up linearly from lr / 1000 over the first epoch, at most 1000
#: iterations (``utils.warmup_lr_scheduler``; ``warmup_epochs`` 1 and ``warmup_iters`` 1000 together: the shorter),
#: then the lr stays constant (its MultiStepLR milestones 160 / 180 are never reached in 15 epochs). GOL Table 4:
#: lr 1e-4 for 15 epochs on CIFAR-100-LT, 1e-5 for 10 epochs on ImageNet-LT / Places-LT.
_GUMBEL_TRAIN = {"epochs": 15, "lr": 1e-4, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
                 "schedule": "constant", "warmup_epochs": 1, "warmup_iters": 1000, "warmup_ratio": 0.001}
METHODS.declare(
    "gumbel", "ltcls.stage2.methods", task="classification",
    summary="stage-1 classifier fine-tuned with the Gumbel loss averaged over N x C (the authors' classification "
            "code), instance sampler; warm-up over epoch 1, then constant lr 1e-4 x 15 epochs "
            "(ImageNet-LT / Places-LT: 1e-5 x 10)",
    preset={"loss": {"name": "gumbel", "reduction": "mean", "clamp_max": None}, "sampler": {"name": "instance"},
            "train": _GUMBEL_TRAIN},
    preset_by_dataset={name: {"train": {"epochs": 10, "lr": 1e-5}} for name in ("imagenet_lt", "places_lt")})

EXPORT_FORMATS.declare(
    "pt2", "ltcls.export.formats", suffix=".pt2", legacy=False, requires=(),
    summary="torch.export ExportedProgram; load: torch.export.load(FILE).module()")
EXPORT_FORMATS.declare(
    "onnx", "ltcls.export.formats", suffix=".onnx", legacy=False, requires=("onnx", "onnxscript", "onnxruntime"),
    summary="ONNX (torch.onnx's dynamo exporter); ONNX Runtime, TensorRT, OpenVINO")
EXPORT_FORMATS.declare(
    "torchscript", "ltcls.export.formats", suffix=".torchscript.pt", legacy=True, requires=(),
    summary="LEGACY, old consumers only (torch.jit is deprecated); torch.jit.load(FILE)")


def task_of(data_name: str) -> str:
    """The task that trains on the dataset ``data_name`` (its declaration's ``task``; classification by default)."""
    return DATASETS.meta(data_name).get("task", "classification")
