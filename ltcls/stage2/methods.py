"""Decoupled second stages of classification runs (Kang et al., ICLR 2020; GOL; SimCal's dual head).

The backbone is frozen (parameters and BatchNorm statistics: it stays in eval mode) and a method replaces or
transforms the head:

* ``crt``      re-initialized classifier, class-balanced sampling, its own short schedule;
* ``lws``      stage-1 weights and bias frozen, learnable per-class scales, class-balanced sampling;
* ``tau_norm`` no training: ``W / ||W||^tau`` with tau swept and chosen on the validation split;
* ``ncm``      nearest class mean of the backbone features;
* ``gumbel``   GOL's decoupled re-training of the classifier with the Gumbel loss.

Presets (config overrides) are declared with the names in :mod:`ltcls.registries`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ltcls.config import Config
from ltcls.data.base import LTDataset
from ltcls.engine.evaluation import classification_predictions
from ltcls.engine.features import FeatureSet, cache_key, cached_features, extract_features
from ltcls.engine.loops import predict
from ltcls.engine.stage import Stage
from ltcls.engine.tasks import build_stage_loss
from ltcls.losses.base import LTLoss
from ltcls.metrics import GROUPS, accuracy_report
from ltcls.models.classifiers import build_classifier
from ltcls.models.decoupled import LWSClassifier, NCMClassifier, TauNormClassifier
from ltcls.models.dual_head import dual_head_average, dual_head_rule, dual_head_select
from ltcls.registries import METHODS
from ltcls.reporting import tau_sweep_figure
from ltcls.stage2.runner import Plan, Rows, Stage2Context

log = logging.getLogger("ltcls")

#: Where a feature cache gives exactly the result of re-running the frozen backbone.
EXACT_WITH_CACHE = {"tau_norm", "ncm"}


class Decoupled:
    """A classification stage 2 on the frozen backbone of ``ctx.model``: features (cached or not), the
    training / evaluation stage of the head, the stage-1 head and the comparison rows."""

    def __init__(self, ctx: Stage2Context) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.model = ctx.model
        for p in self.model.backbone.parameters():
            p.requires_grad_(False)
        self.model.backbone.eval()
        self.stage1_head = copy.deepcopy(self.model.classifier)
        self.extra: dict[str, Any] = {}
        self._features: dict[tuple[str, int], torch.Tensor] = {}

    @property
    def method(self) -> str:
        return self.cfg.stage2.method

    def use_cache(self) -> bool:
        choice = self.cfg.stage2.cache_features
        return self.method in EXACT_WITH_CACHE if choice is None else choice

    def split(self, name: str) -> LTDataset:
        dataset = getattr(self.ctx.data, name)
        if dataset is None:
            raise ValueError(f"the dataset '{self.cfg.data.name}' has no {name} split")
        return dataset

    def features(self, split: str, views: int = 1) -> FeatureSet:
        """Backbone features of a split (``views`` > 1: augmented train views), from the disk cache if on."""
        data = self.ctx.data
        dataset = self.split(split)
        if views > 1:
            dataset = dataset.with_transform(data.train.transform)
        elif split == "train":
            dataset = dataset.with_transform(data.test.transform)  # eval transforms
        if (split, views) not in self._features:
            seed = self.cfg.train.seed
            path = key = None
            if self.use_cache():  # the key reads the whole stage-1 checkpoint: only for a cache
                key = cache_key(self.ctx.digest(), self.cfg.data.to_dict(), split, dataset, views, seed)
                path = self.ctx.stage1_dir / "feature_cache" / f"{split}_views{views}.pt"
            trainer = self.ctx.trainer

            def compute() -> torch.Tensor:
                def predict_fn(ds, desc):
                    return trainer.predict_dataset(self.model.backbone, ds, desc)

                return extract_features(predict_fn, dataset, views=views, seed=seed)

            self._features[(split, views)] = cached_features(path, key, compute)
        return FeatureSet(self._features[(split, views)], dataset.targets, data.num_classes)

    def loss(self) -> LTLoss:
        return build_stage_loss(self.cfg, self.ctx.data)

    def training_stage(self, loss: LTLoss) -> Stage:
        """A frozen-backbone training stage of the head, on cached features if the cache is on."""
        stage = Stage(f"stage2_{self.method}", loss, self.cfg.train, self.cfg.sampler,
                      eval_modules=[self.model.backbone])
        if self.use_cache():
            split = self.cfg.eval.split
            stage.module = self.model.classifier
            stage.train_set = self.features("train", self.cfg.stage2.cache_views)
            stage.eval_sets = {split: self.features(split)}
        return stage

    def eval_stage(self, loss: LTLoss) -> Stage:
        """An evaluation-only stage of the current head on eval-split features."""
        split = self.cfg.eval.split
        return Stage(f"stage2_{self.method}", loss, None, self.cfg.sampler, eval_modules=[self.model.backbone],
                     module=self.model.classifier, eval_sets={split: self.features(split)})

    def plan(self, stage: Stage) -> Plan:
        self.stage = stage
        return Plan(stage, rows=self.rows)

    def rows(self, report: dict[str, Any]) -> Rows:
        """The stage-2 row, and the dual heads (SimCal's 'sel' with T, score averaging 'avg') when asked for."""
        report.update(self.extra)
        report["feature_cache"] = self.use_cache()
        rows: Rows = [(f"stage 2 ({self.method})", report)]
        s2 = self.cfg.stage2
        if dual_head_rule(s2.combine, s2.dual_head_threshold) is None:
            return rows
        dual = self.dual_head_report(self.stage.loss)
        report["dual_head"] = dual
        if "sel" in dual:
            rows.append((f"dual head sel (T = {s2.dual_head_threshold})", dual["sel"]))
        rows.append((f"dual head avg (w = {s2.combine_weight:g})", dual["avg"]))
        if self.ctx.reporter is not None:
            for name in ("combined", "sel", "avg"):
                tag = "dual_head" if name == "combined" else f"dual_head_{name}"
                for k in ("overall", *GROUPS):
                    if name in dual and dual[name][k] is not None:
                        self.ctx.reporter.scalar(f"{tag}/{k}", dual[name][k], 0)
        return rows

    def dual_head_report(self, stage2_loss: LTLoss) -> dict[str, Any]:
        """Accuracy of the stage-1 head, the stage-2 head, SimCal's selection ('sel', with T) and score averaging
        ('avg') on the eval split; ``combined`` is the one ``stage2.combine`` picks."""
        e, s2 = self.cfg.eval, self.cfg.stage2
        trainer = self.ctx.trainer
        loader = trainer.loader(self.features(e.split), e.batch_size)
        device = trainer.device
        stage1_loss = build_stage_loss(self.ctx.stage1_cfg, self.ctx.data)
        s1 = stage1_loss.scores(predict(self.stage1_head.to(device), loader, device)[0])
        logits2, labels = predict(self.model.classifier, loader, device)
        s2_scores = stage2_loss.scores(logits2)
        models = {"stage1_head": s1, "stage2_head": s2_scores,
                  "avg": dual_head_average(s1, s2_scores, s2.combine_weight)}
        if s2.dual_head_threshold is not None:
            counts = torch.as_tensor(self.ctx.data.class_counts)
            models["sel"] = dual_head_select(s1, s2_scores, counts, s2.dual_head_threshold)
        out: dict[str, Any] = {"threshold": s2.dual_head_threshold, "weight": s2.combine_weight,
                               "combine": dual_head_rule(s2.combine, s2.dual_head_threshold)}
        for name, scores in models.items():
            r = accuracy_report(scores.argmax(1).numpy(), labels.numpy(), self.ctx.data.class_counts,
                                e.many_threshold, e.few_threshold)
            out[name] = {k: r[k] for k in ("overall", *GROUPS)}
        out["combined"] = out[out["combine"]]
        return out


def _linear_head(head: nn.Module, method: str) -> nn.Linear:
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{method} needs a stage-1 linear classifier (classifier.name: linear), "
                         f"got {type(head).__name__}")
    return head


@METHODS.register("crt")
def crt(ctx: Stage2Context) -> Plan:
    """Classifier re-training: a freshly initialized head of the configured type."""
    d = Decoupled(ctx)
    c = ctx.cfg.classifier
    d.model.classifier = build_classifier(c.name, d.model.num_features, ctx.data.num_classes, **c.params)
    loss = d.loss()
    loss.init_classifier(d.model.classifier)
    return d.plan(d.training_stage(loss))


@METHODS.register("lws")
def lws(ctx: Stage2Context) -> Plan:
    """Learnable weight scaling on the frozen stage-1 linear head."""
    d = Decoupled(ctx)
    d.model.classifier = LWSClassifier.from_linear(_linear_head(d.stage1_head, "lws"))
    return d.plan(d.training_stage(d.loss()))


@METHODS.register("gumbel")
def gumbel(ctx: Stage2Context) -> Plan:
    """GOL's decoupled Gumbel re-training: the stage-1 classifier, trained further with the configured loss."""
    d = Decoupled(ctx)
    d.model.classifier = copy.deepcopy(d.stage1_head)
    return d.plan(d.training_stage(d.loss()))


@METHODS.register("ncm")
def ncm(ctx: Stage2Context) -> Plan:
    """Nearest class mean of the train features (eval transforms)."""
    d = Decoupled(ctx)
    train = d.features("train")
    head = NCMClassifier(d.model.num_features, ctx.data.num_classes)
    head.fit(train.features[0], train.labels)
    d.model.classifier = head.to(ctx.trainer.device)
    return d.plan(d.eval_stage(d.loss()))


@METHODS.register("tau_norm")
def tau_norm(ctx: Stage2Context) -> Plan:
    """tau-normalization with tau chosen on the validation split (or the train split if there is none)."""
    d = Decoupled(ctx)
    linear = _linear_head(d.stage1_head, "tau_norm")
    s2, e = ctx.cfg.stage2, ctx.cfg.eval
    split = s2.tau_split
    if getattr(ctx.data, split) is None:
        log.warning("tau_norm: the dataset has no %s split; choosing tau on the train split (eval transforms)", split)
        split = "train"
    selected_on = "val" if split == "val" else "train (eval transforms)"
    feats = d.features(split)
    device = ctx.trainer.device
    head = TauNormClassifier.from_linear(linear).to(device)
    loss = d.loss()
    sweep = []
    loader = ctx.trainer.loader(feats, e.batch_size)
    for tau in s2.tau_grid:
        head.tau = float(tau)
        logits, labels = predict(head, loader, device, progress=False)
        preds = classification_predictions(logits, ctx.data.class_counts, e.logit_adjust_tau, loss.scores)
        r = accuracy_report(preds.numpy(), labels.numpy(), ctx.data.class_counts, e.many_threshold, e.few_threshold)
        sweep.append({"tau": float(tau), **{k: r[k] for k in ("overall", "mean_per_class", *GROUPS)}})
    # The class-balanced accuracy: equal to overall on a balanced val split, and not biased to the head
    # classes when the (long-tailed) train split stands in for it.
    best = max(sweep, key=lambda r: r["mean_per_class"])
    head.tau = best["tau"]
    log.info("tau_norm: tau = %.2f chosen on %s (mean per-class accuracy %.2f)", best["tau"], selected_on,
             best["mean_per_class"])
    d.extra.update(tau=best["tau"], tau_selected_on=selected_on, tau_sweep=sweep)
    if ctx.reporter is not None:
        for i, row in enumerate(sweep):
            for k in ("overall", *GROUPS):
                if row[k] is not None:
                    ctx.reporter.scalar(f"tau_sweep/{k}", row[k], i)
        ctx.reporter.figure("tau_sweep", tau_sweep_figure(sweep, best["tau"], "mean_per_class", selected_on), 0)
    d.model.classifier = head
    return d.plan(d.eval_stage(loss))


#: ``head(cfg, num_features, num_classes, tau)``: the (untrained) head each method above leaves on the stage-1
#: backbone, built to load a finished run's checkpoint into (``ltcls.stage2.inference``); ``None``: the stage-1
#: head's type (``gumbel`` trains it further). A new method adds its entry here, beside its definition.
INFERENCE_HEADS: dict[str, Callable[[Config, int, int, float], nn.Module | None]] = {
    "crt": lambda cfg, dim, n, tau: build_classifier(cfg.classifier.name, dim, n, **cfg.classifier.params),
    "lws": lambda cfg, dim, n, tau: LWSClassifier(dim, n),
    "tau_norm": lambda cfg, dim, n, tau: TauNormClassifier(dim, n, tau),
    "ncm": lambda cfg, dim, n, tau: NCMClassifier(dim, n),
    "gumbel": lambda cfg, dim, n, tau: None,
}
