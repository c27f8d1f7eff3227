"""Decoupled second stage (Kang et al., ICLR 2020; GOL; SimCal): a second Stage of the same Trainer.

The stage-1 run's resolved config and checkpoint are loaded, the backbone is frozen (parameters
and BatchNorm statistics: it stays in eval mode), and a method replaces or transforms the head:

* ``crt``      re-initialized classifier, class-balanced sampling, its own short schedule;
* ``lws``      stage-1 weights and bias frozen, learnable per-class scales, class-balanced sampling;
* ``tau_norm`` no training: ``W / ||W||^tau`` with tau swept and chosen on the validation split;
* ``ncm``      nearest class mean of the backbone features;
* ``gumbel``   GOL's decoupled re-training of the stage-1 classifier with the Gumbel loss.

The method presets below are config overrides applied on top of the stage-1 config; ``--set``
overrides come last, so any registered loss / classifier / sampler can be combined.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import nn

from ltcls.data import DataSplits, LTDataset, build_data
from ltcls.engine.build import build_model, build_stage_loss, seed_everything
from ltcls.engine.checkpoint import load_checkpoint
from ltcls.engine.features import FeatureSet, cache_key, cached_features, extract_features, file_digest
from ltcls.engine.loops import predict
from ltcls.engine.trainer import CHECKPOINT, Stage, Trainer
from ltcls.inference import dual_head_select
from ltcls.losses import LTLoss
from ltcls.metrics import GROUPS, accuracy_report
from ltcls.models import LTModel
from ltcls.models.decoupled import LWSClassifier, NCMClassifier, TauNormClassifier
from ltcls.registry import Registry
from ltcls.reporting import Reporter, write_json

log = logging.getLogger("ltcls")

METHODS = Registry("stage-2 method")

_SHORT = {"schedule": "cosine", "warmup_epochs": 0}
#: Config overrides each method applies to the stage-1 config (sections replaced whole, ``train`` updated).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Kang et al.: cRT 10 epochs, LWS 5 epochs, both with class-balanced sampling and a cosine schedule.
    "crt": {"loss": {"name": "ce"}, "sampler": {"name": "class_balanced"}, "train": {"epochs": 10, **_SHORT}},
    "lws": {"classifier": {"name": "lws"}, "loss": {"name": "ce"}, "sampler": {"name": "class_balanced"},
            "train": {"epochs": 5, **_SHORT}},
    "tau_norm": {"classifier": {"name": "tau_norm"}},
    "ncm": {"classifier": {"name": "ncm"}},
    # GOL Table 4: the classifier re-trained with the Gumbel loss, random sampling, lr 1e-4 for 15 epochs
    # (CIFAR-100-LT; 1e-5 for 10 epochs on ImageNet-LT / Places-LT).
    "gumbel": {"loss": {"name": "gumbel"}, "sampler": {"name": "instance"},
               "train": {"epochs": 15, "lr": 1e-4, **_SHORT}},
}
#: Where a feature cache gives exactly the result of re-running the frozen backbone.
EXACT_WITH_CACHE = {"tau_norm", "ncm"}


def stage2_base_config(stage1_cfg: Mapping[str, Any], method: str, stage1_dir: Path) -> dict[str, Any]:
    """The stage-1 config with the method's preset applied (to be resolved with the user's ``--set``)."""
    from ltcls.detection import is_detection

    if method == "simcal" or is_detection(stage1_cfg):  # detection runs: SimCal (checks the pairing)
        from ltcls.detection.simcal import simcal_base_config

        return simcal_base_config(stage1_cfg, stage1_dir, method)
    METHODS.get(method)
    cfg = copy.deepcopy(dict(stage1_cfg))
    for section, values in PRESETS[method].items():
        if section == "train":
            cfg["train"] = {**cfg["train"], **values}
        else:
            cfg[section] = dict(values)
    cfg["stage2"] = {**cfg.get("stage2", {}), "method": method, "from_run": str(stage1_dir)}
    return cfg


@dataclass
class Context:
    """What a stage-2 method works with."""

    cfg: Mapping[str, Any]
    stage1_cfg: Mapping[str, Any]
    data: DataSplits
    model: LTModel
    stage1_head: nn.Module
    trainer: Trainer
    reporter: Reporter | None
    cache_dir: Path
    checkpoint_digest: str
    extra: dict[str, Any] = field(default_factory=dict)
    _features: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.cfg["stage2"]["method"]

    def use_cache(self) -> bool:
        choice = self.cfg["stage2"]["cache_features"]
        return self.method in EXACT_WITH_CACHE if choice is None else choice

    def features(self, split: str, views: int = 1) -> FeatureSet:
        """Backbone features of a split (``views`` > 1: augmented train views), from the disk cache if on."""
        dataset = self.split(split)
        if views > 1:
            train_tf = self.data.train.transform
            dataset = dataset.with_transform(train_tf)
        elif split == "train":
            dataset = dataset.with_transform(self.data.test.transform)  # eval transforms
        if (split, views) not in self._features:
            seed = self.cfg["train"]["seed"]
            key = cache_key(self.checkpoint_digest, self.cfg["data"], split, dataset, views, seed)
            path = self.cache_dir / f"{split}_views{views}.pt" if self.use_cache() else None

            def compute() -> torch.Tensor:
                def predict_fn(ds, desc):
                    return self.trainer.predict_dataset(self.model.backbone, ds, desc=desc)

                return extract_features(predict_fn, dataset, views=views, seed=seed)

            self._features[(split, views)] = cached_features(path, key, compute)
        return FeatureSet(self._features[(split, views)], dataset.targets, self.data.num_classes)

    def split(self, name: str) -> LTDataset:
        dataset = getattr(self.data, name)
        if dataset is None:
            raise ValueError(f"the dataset '{self.cfg['data']['name']}' has no {name} split")
        return dataset

    def training_stage(self, loss: LTLoss) -> Stage:
        """A frozen-backbone training stage of the head, on cached features if the cache is on."""
        stage = Stage(f"stage2_{self.method}", loss, self.cfg["train"], self.cfg["sampler"], freeze_backbone=True)
        if self.use_cache():
            split = self.cfg["eval"]["split"]
            stage.module = self.model.classifier
            stage.train_set = self.features("train", self.cfg["stage2"]["cache_views"])
            stage.eval_sets = {split: self.features(split)}
        return stage

    def eval_stage(self, loss: LTLoss) -> Stage:
        """An evaluation-only stage of the current head on eval-split features."""
        split = self.cfg["eval"]["split"]
        return Stage(f"stage2_{self.method}", loss, None, self.cfg["sampler"], freeze_backbone=True,
                     module=self.model.classifier, eval_sets={split: self.features(split)})

    def loss(self) -> LTLoss:
        return build_stage_loss(self.cfg, self.data)


@METHODS.register("crt")
def crt(ctx: Context) -> Stage:
    """Classifier re-training: a freshly initialized head of the configured type."""
    from ltcls.models import build_classifier

    c = ctx.cfg["classifier"]
    ctx.model.classifier = build_classifier(c["name"], ctx.model.num_features, ctx.data.num_classes,
                                            **{k: v for k, v in c.items() if k != "name"})
    loss = ctx.loss()
    loss.init_classifier(ctx.model.classifier)
    return ctx.training_stage(loss)


@METHODS.register("lws")
def lws(ctx: Context) -> Stage:
    """Learnable weight scaling on the frozen stage-1 linear head."""
    ctx.model.classifier = LWSClassifier.from_linear(_linear_head(ctx.stage1_head, "lws"))
    return ctx.training_stage(ctx.loss())


@METHODS.register("gumbel")
def gumbel(ctx: Context) -> Stage:
    """GOL's decoupled Gumbel re-training: the stage-1 classifier, trained further with the configured loss."""
    ctx.model.classifier = copy.deepcopy(ctx.stage1_head)
    return ctx.training_stage(ctx.loss())


@METHODS.register("ncm")
def ncm(ctx: Context) -> Stage:
    """Nearest class mean of the train features (eval transforms)."""
    train = ctx.features("train")
    head = NCMClassifier(ctx.model.num_features, ctx.data.num_classes)
    head.fit(train.features[0], train.labels)
    ctx.model.classifier = head.to(ctx.trainer.device)
    return ctx.eval_stage(ctx.loss())


@METHODS.register("tau_norm")
def tau_norm(ctx: Context) -> Stage:
    """tau-normalization with tau chosen on the validation split (or the train split if there is none)."""
    linear = _linear_head(ctx.stage1_head, "tau_norm")
    s2 = ctx.cfg["stage2"]
    split = s2["tau_split"]
    if getattr(ctx.data, split) is None:
        log.warning("tau_norm: the dataset has no %s split; choosing tau on the train split (eval transforms)", split)
        split = "train"
    selected_on = "val" if split == "val" else "train (eval transforms)"
    feats = ctx.features(split)
    head = TauNormClassifier.from_linear(linear).to(ctx.trainer.device)
    loss = ctx.loss()
    e = ctx.cfg["eval"]
    sweep = []
    for tau in s2["tau_grid"]:
        head.tau = float(tau)
        logits, labels = predict(head, ctx.trainer._loader(feats, e["batch_size"]), ctx.trainer.device,
                                 progress=False)
        preds = ctx.trainer.predictions(loss, logits)
        r = accuracy_report(preds.numpy(), labels.numpy(), ctx.data.class_counts, e["many_threshold"],
                            e["few_threshold"])
        sweep.append({"tau": float(tau), **{k: r[k] for k in ("overall", "mean_per_class", *GROUPS)}})
    # The class-balanced accuracy: equal to overall on a balanced val split, and not biased to the head
    # classes when the (long-tailed) train split stands in for it.
    best = max(sweep, key=lambda r: r["mean_per_class"])
    head.tau = best["tau"]
    log.info("tau_norm: tau = %.2f chosen on %s (mean per-class accuracy %.2f)", best["tau"], selected_on,
             best["mean_per_class"])
    ctx.extra.update(tau=best["tau"], tau_selected_on=selected_on, tau_sweep=sweep)
    if ctx.reporter is not None:
        _report_sweep(ctx.reporter, sweep, selected_on)
    ctx.model.classifier = head
    return ctx.eval_stage(loss)


def _linear_head(head: nn.Module, method: str) -> nn.Module:
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or type(head).__name__ == "NormalizedClassifier":
        raise ValueError(f"{method} needs a stage-1 linear classifier (classifier.name: linear), "
                         f"got {type(head).__name__}")
    return head


def _report_sweep(reporter: Reporter, sweep: list[dict[str, Any]], selected_on: str) -> None:
    for i, row in enumerate(sweep):
        for k in ("overall", *GROUPS):
            if row[k] is not None:
                reporter.scalar(f"tau_sweep/{k}", row[k], i)
    fig, ax = plt.subplots(figsize=(6, 4))
    taus = [r["tau"] for r in sweep]
    for k in ("overall", *GROUPS):
        if all(r[k] is not None for r in sweep):
            ax.plot(taus, [r[k] for r in sweep], marker="o", markersize=3, label=k)
    ax.set_xlabel("tau")
    ax.set_ylabel(f"top-1 on {selected_on} (%)")
    ax.set_title("tau-norm sweep")
    ax.legend()
    fig.tight_layout()
    reporter.figure("tau_sweep", fig, 0)


def dual_head_report(ctx: Context, stage1_loss: LTLoss, stage2_loss: LTLoss, threshold: int) -> dict[str, Any]:
    """Accuracy of the stage-1 head, the stage-2 head and SimCal's dual-head combination on the eval split."""
    split = ctx.cfg["eval"]["split"]
    feats = ctx.features(split)
    e = ctx.cfg["eval"]
    loader = ctx.trainer._loader(feats, e["batch_size"])
    device = ctx.trainer.device
    s1 = stage1_loss.scores(predict(ctx.stage1_head.to(device), loader, device)[0])
    logits2, labels = predict(ctx.model.classifier, loader, device)
    s2 = stage2_loss.scores(logits2)
    combined = dual_head_select(s1, s2, torch.as_tensor(ctx.data.class_counts), threshold)
    out: dict[str, Any] = {"threshold": threshold}
    for name, scores in (("stage1_head", s1), ("stage2_head", s2), ("combined", combined)):
        r = accuracy_report(scores.argmax(1).numpy(), labels.numpy(), ctx.data.class_counts, e["many_threshold"],
                            e["few_threshold"])
        out[name] = {k: r[k] for k in ("overall", *GROUPS)}
    return out


def comparison_table(stage1: Mapping[str, Any], rows: list[tuple[str, Mapping[str, Any]]]) -> str:
    """Markdown table: overall / many / medium / few of stage 1 and each stage-2 row."""
    lines = ["| model | overall | many | medium | few |", "|---|---|---|---|---|"]
    for name, r in [("stage 1", stage1), *rows]:
        cells = ["n/a" if r.get(k) is None else f"{r[k]:.2f}" for k in ("overall", *GROUPS)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_stage2(cfg: Mapping[str, Any], stage1_dir: Path, work_dir: Path, reporter: Reporter | None,
               resume: bool = False, on_stage: Callable[[Stage], None] | None = None) -> dict[str, Any]:
    """Run the stage-2 method of ``cfg['stage2']['method']`` on the finished stage-1 run in ``stage1_dir``."""
    if cfg["stage2"]["method"] == "simcal":
        from ltcls.detection.simcal import run_simcal

        return run_simcal(cfg, stage1_dir, work_dir, reporter, resume=resume)
    stage1_cfg = _load_stage1_cfg(stage1_dir)
    ckpt_path = stage1_dir / CHECKPOINT
    seed_everything(cfg["train"]["seed"])
    data = build_data(cfg["data"])
    model = build_model(stage1_cfg, data.num_classes)
    state = load_checkpoint(ckpt_path)["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RuntimeError(f"the stage-1 checkpoint {ckpt_path} does not fit the stage-1 model "
                           f"(did the data's number of classes change?): {e}") from None
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    model.backbone.eval()
    trainer = Trainer(model, data, cfg, work_dir, reporter)
    stage1_head = copy.deepcopy(model.classifier)
    ctx = Context(cfg=cfg, stage1_cfg=stage1_cfg, data=data, model=model, stage1_head=stage1_head, trainer=trainer,
                  reporter=reporter, cache_dir=stage1_dir / "feature_cache", checkpoint_digest=file_digest(ckpt_path))
    stage = METHODS.get(cfg["stage2"]["method"])(ctx)
    model.to(trainer.device)
    if on_stage is not None:
        on_stage(stage)
    report = trainer.fit([stage], resume=resume)
    report.update(ctx.extra)
    report["feature_cache"] = ctx.use_cache()
    stage1_metrics = json.loads((stage1_dir / "metrics.json").read_text())
    rows = [(f"stage 2 ({ctx.method})", report)]
    threshold = cfg["stage2"]["dual_head_threshold"]
    if threshold is not None:
        stage1_loss = build_stage_loss(stage1_cfg, data)
        dual = dual_head_report(ctx, stage1_loss, stage.loss, threshold)
        report["dual_head"] = dual
        rows.append((f"dual head (T = {threshold})", dual["combined"]))
        if reporter is not None:
            for k in ("overall", *GROUPS):
                if dual["combined"][k] is not None:
                    reporter.scalar(f"dual_head/{k}", dual["combined"][k], 0)
    table = comparison_table(stage1_metrics, rows)
    (work_dir / "comparison.md").write_text(
        f"# {stage1_dir} -> {ctx.method}\n\ntop-1 (%) on the {report['split']} split\n\n" + table)
    write_json(work_dir / "metrics.json", report)
    log.info("stage 1 vs stage 2 (%s):\n%s", ctx.method, table)
    return report


def _load_stage1_cfg(stage1_dir: Path) -> dict[str, Any]:
    from ltcls import config as C

    for name in ("config.yaml", CHECKPOINT, "metrics.json"):
        if not (stage1_dir / name).is_file():
            hint = " (has stage 1 finished?)" if name == "metrics.json" else ""
            raise FileNotFoundError(f"{stage1_dir} is not a finished stage-1 run: {name} is missing{hint}")
    return C.resolve(C.load_yaml(stage1_dir / "config.yaml"), source=str(stage1_dir / "config.yaml"))
