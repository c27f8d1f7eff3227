"""Decoupled second stages of classification runs (Kang et al., ICLR 2020; GOL; SimCal's dual head).

The backbone is frozen (parameters and BatchNorm statistics: it stays in eval mode) and a method replaces or
transforms the head:

* ``crt``      re-initialized classifier, class-balanced sampling, its own short schedule;
* ``lws``      stage-1 weights and bias frozen, learnable per-class scales, class-balanced sampling;
* ``tau_norm`` no training: ``W / ||W||^tau`` with tau swept and chosen on the validation split;
* ``ncm``      nearest class mean of the backbone features;
* ``gumbel``   GOL's decoupled re-training of the classifier with the Gumbel loss.

Each is a registered :class:`ltcls.stage2.runner.Stage2Method`: ``plan`` (how it trains) and
``inference_head`` (the head a finished run of it predicts with). Presets (config overrides) are declared with
the names in :mod:`ltcls.registries`.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ltcls.config import Config
from ltcls.data.base import LTDataset
from ltcls.engine.checkpoint import Checkpoint
from ltcls.engine.evaluation import classification_predictions
from ltcls.engine.features import FeatureSet, cache_key, cached_features, extract_features
from ltcls.engine.stage import Stage
from ltcls.engine.tasks import build_stage_loss
from ltcls.losses.base import LTLoss
from ltcls.metrics import GROUPS, accuracy_report
from ltcls.models.backbone import LTModel
from ltcls.models.classifiers import build_classifier
from ltcls.models.decoupled import LWSClassifier, NCMClassifier, TauNormClassifier
from ltcls.models.dual_head import dual_head_average, dual_head_rule, dual_head_select
from ltcls.registries import METHODS
from ltcls.reporting import tau_sweep_figure
from ltcls.results import EvalReport, Nested, Values
from ltcls.stage2.runner import ClassFacts, Plan, Rows, Stage2Context, Stage2Method

log = logging.getLogger("ltcls")

#: Where a feature cache gives exactly the result of re-running the frozen backbone.
EXACT_WITH_CACHE = {"tau_norm", "ncm"}


class Decoupled:
    """A classification stage 2 on the frozen backbone of ``ctx.model``: features (cached or not), the
    training / evaluation stage of the head, the stage-1 head and the report's sections and rows."""

    def __init__(self, ctx: Stage2Context) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.model = ctx.model
        for p in self.model.backbone.parameters():
            p.requires_grad_(False)
        self.model.backbone.eval()
        self.stage1_head = copy.deepcopy(self.model.classifier)
        self.sections: list[Values] = []
        self._features: dict[tuple[str, int], torch.Tensor] = {}

    @property
    def method(self) -> str:
        return self.cfg.stage2.method

    def use_cache(self) -> bool:
        choice = self.cfg.stage2.cache_features
        return self.method in EXACT_WITH_CACHE if choice is None else choice

    def features(self, split: str, views: int = 1) -> FeatureSet:
        """Backbone features of a split (``views`` > 1: augmented train views), from the disk cache if on."""
        data = self.ctx.data
        dataset: LTDataset = data.get(split)
        if views > 1:
            dataset = dataset.with_transform(data.train.transform)
        elif split == "train":
            dataset = dataset.with_transform(data.test.transform)  # eval transforms
        if (split, views) not in self._features:
            seed = self.cfg.train.seed
            path = key = None
            if self.use_cache():  # the key reads the whole stage-1 checkpoint: only for a cache
                key = cache_key(self.ctx.digest(), self.cfg.data.to_dict(), split, dataset, views, seed)
                path = self.ctx.stage1_dir.feature_cache(split, views)
            backbone, runner = self.model.backbone, self.ctx.runner

            def compute() -> torch.Tensor:
                return extract_features(lambda ds, desc: runner.predict(backbone, ds, desc), dataset, views, seed)

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

    def plan(self, stage: Stage, tau: float | None = None) -> Plan:
        self.stage = stage
        return Plan(stage, finish=self.finish, tau=tau)

    def finish(self, report: EvalReport) -> tuple[EvalReport, Rows]:
        """The method's sections on the report, and the rows: the stage-2 head, and the dual heads (SimCal's 'sel'
        with T, score averaging 'avg') when asked for."""
        report = report.with_sections(*self.sections, Values({"feature_cache": self.use_cache()}))
        rows: Rows = [(f"stage 2 ({self.method})", report.metrics())]
        s2 = self.cfg.stage2
        if dual_head_rule(s2.combine, s2.dual_head_threshold) is None:
            return report, rows
        dual = self.dual_head_report(self.stage.loss)
        if "sel" in dual:
            rows.append((f"dual head sel (T = {s2.dual_head_threshold})", dual["sel"]))
        rows.append((f"dual head avg (w = {s2.combine_weight:g})", dual["avg"]))
        if self.ctx.reporter is not None:
            for name in ("combined", "sel", "avg"):
                tag = "dual_head" if name == "combined" else f"dual_head_{name}"
                for k in ("overall", *GROUPS):
                    if name in dual and dual[name][k] is not None:
                        self.ctx.reporter.scalar(f"{tag}/{k}", dual[name][k], 0)
        return report.with_sections(Nested("dual_head", dual)), rows

    def dual_head_report(self, stage2_loss: LTLoss) -> dict[str, object]:
        """Accuracy of the stage-1 head, the stage-2 head, SimCal's selection ('sel', with T) and score averaging
        ('avg') on the eval split; ``combined`` is the one ``stage2.combine`` picks."""
        e, s2, runner = self.cfg.eval, self.cfg.stage2, self.ctx.runner
        feats = self.features(e.split)
        stage1_loss = build_stage_loss(self.ctx.stage1_cfg, self.ctx.data)
        s1 = stage1_loss.scores(runner.predict(self.stage1_head.to(runner.device), feats, progress=False)[0])
        logits2, labels = runner.predict(self.model.classifier, feats, progress=False)
        s2_scores = stage2_loss.scores(logits2)
        models = {"stage1_head": s1, "stage2_head": s2_scores,
                  "avg": dual_head_average(s1, s2_scores, s2.combine_weight)}
        if s2.dual_head_threshold is not None:
            counts = torch.as_tensor(self.ctx.data.class_counts)
            models["sel"] = dual_head_select(s1, s2_scores, counts, s2.dual_head_threshold)
        out: dict[str, object] = {"threshold": s2.dual_head_threshold, "weight": s2.combine_weight,
                                  "combine": dual_head_rule(s2.combine, s2.dual_head_threshold)}
        for name, scores in models.items():
            r = accuracy_report(scores.argmax(1).numpy(), labels.numpy(), self.ctx.data.class_counts,
                                e.many_threshold, e.few_threshold)
            out[name] = {k: getattr(r, k) for k in ("overall", *GROUPS)}
        out["combined"] = out[out["combine"]]
        return out


def _linear_head(head: nn.Module, method: str) -> nn.Linear:
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{method} needs a stage-1 linear classifier (classifier.name: linear), "
                         f"got {type(head).__name__}")
    return head


class DecoupledMethod(Stage2Method):
    """A classification stage 2 that changes the head of the frozen stage-1 model (an :class:`LTModel`)."""

    def inference_head(self, cfg: Config, num_features: int, num_classes: int, ckpt: Checkpoint
                       ) -> nn.Module | None:
        """The (untrained) head a finished run of this method predicts with; None: the stage-1 head's type."""
        return None

    def inference_model(self, cfg: Config, stage1_model: nn.Module, data: ClassFacts, ckpt: Checkpoint
                        ) -> nn.Module:
        if not isinstance(stage1_model, LTModel):
            raise ValueError(f"--stage2 {cfg.stage2.method} applies to classification models, got "
                             f"{type(stage1_model).__name__}")
        head = self.inference_head(cfg, stage1_model.num_features, data.num_classes, ckpt)
        if head is not None:
            stage1_model.classifier = head
        return stage1_model


@METHODS.register("crt")
class CRT(DecoupledMethod):
    """Classifier re-training: a freshly initialized head of the configured type."""

    def plan(self, ctx: Stage2Context) -> Plan:
        d = Decoupled(ctx)
        c = ctx.cfg.classifier
        d.model.classifier = build_classifier(c.name, d.model.num_features, ctx.data.num_classes, **c.params)
        loss = d.loss()
        loss.init_classifier(d.model.classifier)
        return d.plan(d.training_stage(loss))

    def inference_head(self, cfg: Config, num_features: int, num_classes: int, ckpt: Checkpoint) -> nn.Module:
        return build_classifier(cfg.classifier.name, num_features, num_classes, **cfg.classifier.params)


@METHODS.register("lws")
class LWS(DecoupledMethod):
    """Learnable weight scaling on the frozen stage-1 linear head."""

    def plan(self, ctx: Stage2Context) -> Plan:
        d = Decoupled(ctx)
        d.model.classifier = LWSClassifier.from_linear(_linear_head(d.stage1_head, "lws"))
        return d.plan(d.training_stage(d.loss()))

    def inference_head(self, cfg: Config, num_features: int, num_classes: int, ckpt: Checkpoint) -> nn.Module:
        return LWSClassifier(num_features, num_classes)


@METHODS.register("gumbel")
class Gumbel(DecoupledMethod):
    """GOL's decoupled Gumbel re-training: the stage-1 classifier, trained further with the configured loss."""

    def plan(self, ctx: Stage2Context) -> Plan:
        d = Decoupled(ctx)
        d.model.classifier = copy.deepcopy(d.stage1_head)
        return d.plan(d.training_stage(d.loss()))


@METHODS.register("ncm")
class NCM(DecoupledMethod):
    """Nearest class mean of the train features (eval transforms)."""

    def plan(self, ctx: Stage2Context) -> Plan:
        d = Decoupled(ctx)
        train = d.features("train")
        head = NCMClassifier(d.model.num_features, ctx.data.num_classes)
        head.fit(train.features[0], train.labels)
        d.model.classifier = head.to(ctx.runner.device)
        return d.plan(d.eval_stage(d.loss()))

    def inference_head(self, cfg: Config, num_features: int, num_classes: int, ckpt: Checkpoint) -> nn.Module:
        return NCMClassifier(num_features, num_classes)


@METHODS.register("tau_norm")
class TauNorm(DecoupledMethod):
    """tau-normalization with tau chosen on the validation split (or the train split if there is none)."""

    def plan(self, ctx: Stage2Context) -> Plan:
        d = Decoupled(ctx)
        linear = _linear_head(d.stage1_head, "tau_norm")
        split = ctx.cfg.stage2.tau_split
        if not ctx.data.has(split):
            log.warning("tau_norm: the dataset has no %s split; choosing tau on the train split (eval transforms)",
                        split)
            split = "train"
        selected_on = "val" if split == "val" else "train (eval transforms)"
        head = TauNormClassifier.from_linear(linear).to(ctx.runner.device)
        loss = d.loss()
        sweep = self.sweep(ctx, head, d.features(split), loss)
        # The class-balanced accuracy: equal to overall on a balanced val split, and not biased to the head
        # classes when the (long-tailed) train split stands in for it.
        best = max(sweep, key=lambda r: r["mean_per_class"])
        head.tau = best["tau"]
        log.info("tau_norm: tau = %.2f chosen on %s (mean per-class accuracy %.2f)", best["tau"], selected_on,
                 best["mean_per_class"])
        d.sections.append(Values({"tau": best["tau"], "tau_selected_on": selected_on, "tau_sweep": sweep}))
        if ctx.reporter is not None:
            for i, row in enumerate(sweep):
                for k in ("overall", *GROUPS):
                    if row[k] is not None:
                        ctx.reporter.scalar(f"tau_sweep/{k}", row[k], i)
            ctx.reporter.figure("tau_sweep", tau_sweep_figure(sweep, best["tau"], "mean_per_class", selected_on), 0)
        d.model.classifier = head
        return d.plan(d.eval_stage(loss), tau=best["tau"])

    @staticmethod
    def sweep(ctx: Stage2Context, head: TauNormClassifier, feats: FeatureSet, loss: LTLoss) -> list[dict[str, float]]:
        """Accuracy of the head at every tau of ``stage2.tau_grid`` on ``feats``."""
        e, counts = ctx.cfg.eval, ctx.data.class_counts
        out = []
        for tau in ctx.cfg.stage2.tau_grid:
            head.tau = float(tau)
            logits, labels = ctx.runner.predict(head, feats, progress=False)
            preds = classification_predictions(logits, counts, e.logit_adjust_tau, loss.scores)
            r = accuracy_report(preds.numpy(), labels.numpy(), counts, e.many_threshold, e.few_threshold)
            out.append({"tau": float(tau), **{k: getattr(r, k) for k in ("overall", "mean_per_class", *GROUPS)}})
        return out

    def inference_head(self, cfg: Config, num_features: int, num_classes: int, ckpt: Checkpoint) -> nn.Module:
        return TauNormClassifier(num_features, num_classes, 1.0 if ckpt.tau is None else float(ckpt.tau))
