"""Use a finished run: load its model for inference (a stage-1 run or any stage-2 run directory), evaluate it
with calibration and per-class reports, classify image files, export it as TorchScript.

A run directory holds ``config.yaml``, ``checkpoint.pt`` and ``metrics.json``. The model is rebuilt the way
the run built it: the stage-1 config's model, then (stage 2) the method's head
(:data:`ltcls.stage2.methods.INFERENCE_HEADS`), then the checkpoint's weights. A method without an entry there
(SimCal) wraps the model in its plan; its plan is built (cheap: no data is read) and the checkpoint loaded into
the plan's model. Where ``stage2.combine`` asks for a dual head (SimCal's 'sel' with
``stage2.dual_head_threshold``, or 'avg'), :attr:`LoadedRun.dual_head` is that dual head over the stage-1 and
stage-2 heads as one module (scores, not logits). Prediction and export need no data: the class names and
count come from the checkpoint (``metrics.json`` for runs made before they were stored), the class counts
from ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from ltcls.config import Config, load
from ltcls.data.base import DataSplits
from ltcls.data.build import TRANSFORM_KEYS
from ltcls.data.datasets.split_file import read_split_file
from ltcls.data.transforms import build_transforms
from ltcls.data.tta import TTA
from ltcls.engine.checkpoint import CheckpointError, load_checkpoint
from ltcls.engine.evaluation import ClassificationEvaluator
from ltcls.engine.stage import Stage
from ltcls.engine.tasks import Task, build_stage_loss, build_task, seed_everything
from ltcls.engine.trainer import CHECKPOINT, Trainer, resolve_device
from ltcls.export import DualHeadClassifier, LossScores, export_torchscript
from ltcls.losses.base import LTLoss
from ltcls.losses.logit_adjusted import logit_adjust
from ltcls.metrics import GROUPS, accuracy_report, calibration_report, confusion_matrix, per_class_table
from ltcls.models.backbone import LTModel
from ltcls.models.decoupled import TauNormClassifier
from ltcls.models.dual_head import dual_head_rule
from ltcls.predict import Predictions, find_images, predict_topk
from ltcls.registries import METHODS
from ltcls.registry import signature_schema
from ltcls.reporting import (
    confusion_matrix_figure,
    per_class_figure,
    reliability_figure,
    write_json,
    write_per_class_csv,
)
from ltcls.stage2.methods import INFERENCE_HEADS
from ltcls.stage2.runner import Stage2Context

log = logging.getLogger("ltcls")

RUN_FILES = ("config.yaml", CHECKPOINT, "metrics.json")

@dataclass
class LoadedRun:
    """A finished run's model and what using it needs."""

    run_dir: Path
    cfg: Config
    task: Task
    #: Images -> logits (classification) or the detector; eval mode, on CPU.
    model: nn.Module
    #: The run's (last stage's) loss: ``loss.scores(logits)`` are its inference scores.
    loss: LTLoss
    class_names: list[str]
    class_counts: np.ndarray
    metrics: dict[str, Any]
    #: The stage-2 method, ``None`` for a stage-1 run.
    method: str | None = None
    #: tau-norm's tau in use (the run's chosen one, or the ``tau`` asked for).
    tau: float | None = None
    #: SimCal's dual head as one module (images -> scores), where the run has ``stage2.dual_head_threshold``.
    dual_head: nn.Module | None = None
    #: The run's data (``None`` when loaded without it).
    data: DataSplits | None = None

    @property
    def transform_params(self) -> dict[str, Any]:
        """The run's transform keys of ``data:`` (img_size, mean, std, ...), defaults filled in."""
        params = {k: default for k, (_, default) in signature_schema(build_transforms).items()}
        params.update({k: v for k, v in self.cfg.data.params.items() if k in TRANSFORM_KEYS})
        return params

    def eval_transform(self) -> Callable:
        return build_transforms(**self.transform_params)[1]

    def inference_model(self) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        """The module used for predictions and export (the dual head where the run has one) and what turns its
        outputs into scores (the dual head's outputs already are)."""
        if self.dual_head is not None:
            return self.dual_head, _identity
        return self.model, self.loss.scores


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def check_run_dir(run_dir: Path) -> None:
    """An error naming the run directory and the first missing file of a finished run."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory '{run_dir}'")
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            hint = {"metrics.json": " (has the run finished?)",
                    CHECKPOINT: " (tau_norm / ncm stage-2 runs made before they wrote one have none: run the stage 2 "
                                "again)",
                    }.get(name, "")
            raise FileNotFoundError(f"{run_dir} is not a finished run: {name} is missing{hint}")


def load_run(run_dir: str | Path, with_data: bool = True, tau: float | None = None) -> LoadedRun:
    """Rebuild a finished run's model with its checkpoint (see the module docstring).

    ``with_data=False`` builds no dataset (prediction, export; classification runs only). ``tau`` replaces
    the run's head by its tau-normalized version (a linear or tau-norm head), without retraining.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    cfg = load(run_dir / "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    method = cfg.stage2.method if cfg.stage2.from_run else None
    stage1_dir = Path(cfg.stage2.from_run) if method else run_dir
    if method and not (stage1_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is a stage-2 run of '{stage1_dir}' (stage2.from_run in "
                                f"{run_dir / 'config.yaml'}), which has no config.yaml (run the command from the "
                                "folder the run was started in, or fix stage2.from_run)")
    stage1_cfg = load(stage1_dir / "config.yaml") if method else cfg
    task = build_task(cfg)
    if with_data:  # the data and the loss as the run built them (the task seeds first)
        built = task.build(cfg, init_weights=False)  # the checkpoint's weights follow
        data: Any = built.data
        names, loss, model = [str(n) for n in data.class_names], built.loss, built.model
    else:
        seed_everything(cfg.train.seed)
        data = _facts(run_dir, ckpt, metrics)
        names, loss, model = data.class_names, build_stage_loss(cfg, data), None
    if ckpt.get("loss"):
        loss.load_state_dict(ckpt["loss"])
    chosen_tau = (ckpt.get("stage2") or {}).get("tau", metrics.get("tau"))
    if method is not None or model is None:
        model = task.build_model(stage1_cfg, data)
    if method in INFERENCE_HEADS:
        head = INFERENCE_HEADS[method](cfg, model.num_features, data.num_classes,
                                    1.0 if chosen_tau is None else float(chosen_tau))
        model.classifier = head if head is not None else model.classifier
    elif method is not None:  # a method that wraps the model (SimCal) builds it in its plan
        ctx = Stage2Context(cfg=cfg, stage1_cfg=stage1_cfg, stage1_dir=stage1_dir, data=data, model=model, task=task,
                            trainer=Trainer(model, data, cfg, run_dir, task, None, hooks=[]), reporter=None)
        plan = METHODS.get(method)(ctx)
        model, task = plan.model or model, plan.task or task
    _load_weights(model, ckpt, run_dir / CHECKPOINT)
    model.eval()
    run = LoadedRun(run_dir, cfg, task, model, loss, names, np.asarray(data.class_counts), metrics, method,
                    chosen_tau, data=data if with_data else None)
    if tau is not None:
        set_tau(run, tau)
    rule = dual_head_rule(cfg.stage2.combine, cfg.stage2.dual_head_threshold)
    if method and rule is not None and isinstance(model, LTModel):
        run.dual_head = _dual_head(run, stage1_cfg, stage1_dir, data, rule)
    return run


def _facts(run_dir: Path, ckpt: dict[str, Any], metrics: dict[str, Any]) -> SimpleNamespace:
    """What building a classification model and loss needs of the data, from the run's files."""
    counts = metrics.get("class_counts")
    if counts is None:
        raise ValueError(f"{run_dir} is not a classification run ({run_dir / 'metrics.json'} has no 'class_counts'): "
                         "prediction and export take classification runs")
    names = ckpt.get("class_names") or metrics.get("class_names") or [str(i) for i in range(len(counts))]
    if len(names) != len(counts):
        raise ValueError(f"{run_dir}: {len(names)} class names but {len(counts)} class counts in metrics.json")
    return SimpleNamespace(num_classes=len(counts), class_counts=np.asarray(counts), class_names=list(names))


def _load_weights(model: nn.Module, ckpt: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"the checkpoint {path} does not fit the model rebuilt from the run's config.yaml "
                              f"(expected the same model, head and number of classes): {first}") from None


def set_tau(run: LoadedRun, tau: float) -> None:
    """tau-normalize the run's head (Kang et al.): a tau-norm head gets ``tau``; a linear one is replaced by its
    tau-normalized version (bias dropped); other heads are an error."""
    head = getattr(run.model, "classifier", None)
    if isinstance(head, TauNormClassifier):
        head.tau = float(tau)
    elif isinstance(head, nn.Linear):
        run.model.classifier = TauNormClassifier.from_linear(head, tau=float(tau)).eval()
    else:
        raise ValueError(f"--tau {tau}: tau-norm applies to a linear or tau_norm head; {run.run_dir} has "
                         f"{type(head).__name__}")
    run.tau = float(tau)


def _dual_head(run: LoadedRun, stage1_cfg: Config, stage1_dir: Path, data: Any, rule: str) -> nn.Module:
    """The run's dual head as one module: SimCal's selection ('sel': the stage-1 head's scores for classes with
    more than T training images) or score averaging ('avg'), as ``stage2.combine`` asks."""
    stage1 = run.task.build_model(stage1_cfg, data)
    _load_weights(stage1, load_checkpoint(stage1_dir / CHECKPOINT), stage1_dir / CHECKPOINT)
    stage1_loss = build_stage_loss(stage1_cfg, data)
    s2 = run.cfg.stage2
    head = DualHeadClassifier(stage1.classifier, run.model.classifier, run.class_counts, s2.dual_head_threshold,
                              LossScores(stage1_loss), LossScores(run.loss), rule=rule, weight=s2.combine_weight)
    return LTModel(run.model.backbone, head).eval()


# ------------------------------------------------------------------------------------------------ evaluate


def default_eval_dir(run_dir: str | Path, split: str, split_file: str | None = None) -> Path:
    """``RUN_DIR/eval_<split>`` (``eval_<file stem>`` for a split file)."""
    return Path(run_dir) / f"eval_{Path(split_file).stem if split_file else split}"


def eval_dataset(run: LoadedRun, split: str, split_file: str | None = None) -> Any:
    """The split to evaluate, through the run's eval transform (the train split too)."""
    data = run.data
    if split_file is not None:
        root = run.cfg.data.params.get("root")
        if root is None:
            raise ValueError(f"--split-file needs a data.root in {run.run_dir / 'config.yaml'} (the folder the "
                             f"file's paths are relative to); the dataset '{run.cfg.data.name}' has none")
        entries = read_split_file(split_file, root, len(run.class_names))
        return entries.dataset(root, len(run.class_names), run.class_names, data.test.transform,
                               on_bad_image=run.cfg.data.params.get("on_bad_image", "error"))
    dataset = getattr(data, split, None)
    if dataset is None:
        raise ValueError(f"the dataset '{run.cfg.data.name}' of {run.run_dir} has no {split} split")
    return dataset.with_transform(data.test.transform) if split == "train" else dataset


def evaluate_run(run: LoadedRun, split: str = "test", split_file: str | None = None,
                 logit_adjust_tau: float | None = None, out_dir: str | Path | None = None,
                 tta: str | None = None) -> dict[str, Any]:
    """Evaluate ``run`` on a split (or a split file) into ``out_dir`` (default :func:`default_eval_dir`).

    ``metrics.json`` holds the task's metrics, computed as training computes them (for the same split and
    checkpoint: the same numbers), ``class_names``, and for classification the calibration (``ece``,
    ``ece_many`` / ``ece_medium`` / ``ece_few``, ``nll``, ``calibration_bins``) of the loss's scores, with
    ``reliability.png``, ``confusion_matrix.png``, ``per_class_accuracy.png`` and ``per_class.csv``; a dual
    head's accuracy under ``dual_head``. ``tta``: the test-time augmentation (default the run's ``eval.tta``;
    ``ltcls.data.tta``), recorded as ``tta``. Returns the report.
    """
    out = Path(out_dir) if out_dir is not None else default_eval_dir(run.run_dir, split, split_file)
    out.mkdir(parents=True, exist_ok=True)
    if run.data is None:
        raise ValueError("evaluate_run needs a run loaded with its data (load_run(..., with_data=True))")
    dataset = eval_dataset(run, split, split_file)
    trainer = Trainer(run.model, run.data, run.cfg, out, run.task, reporter=None, hooks=[])
    stage = Stage("eval", run.loss, None, run.cfg.sampler)
    ctx = trainer.eval_context(stage, step=0, epoch=0, split=split)
    if logit_adjust_tau is not None:
        ctx.logit_adjust_tau = float(logit_adjust_tau)
    evaluator = run.task.evaluator(dataset, ctx)
    augment = TTA.from_config(run.cfg, tta)
    model, views = augment.apply(run.model, dataset)
    report = trainer.run_inference(model, views, evaluator, f"eval {split}")
    report.update(split=split if split_file is None else str(split_file), stage="eval",
                  class_names=run.class_names, source_run=str(run.run_dir), method=run.method,
                  logit_adjust_tau=ctx.logit_adjust_tau, tta=augment.name)
    if run.tau is not None:
        report["tau"] = run.tau
    run.task.report(report, ctx)
    if isinstance(evaluator, ClassificationEvaluator):
        logits, labels = evaluator.outputs()
        _classification_reports(run, report, logits, labels, ctx.logit_adjust_tau, out)
        if run.dual_head is not None:
            dual_head, views = augment.apply(run.dual_head, dataset)
            scores, labels = trainer.predict_dataset(dual_head, views, "eval dual head")
            e = run.cfg.eval
            r = accuracy_report(scores.argmax(1).numpy(), labels.numpy(), run.class_counts, e.many_threshold,
                                e.few_threshold)
            s2 = run.cfg.stage2
            report["dual_head"] = {"threshold": s2.dual_head_threshold, "weight": s2.combine_weight,
                                   "combine": dual_head_rule(s2.combine, s2.dual_head_threshold),
                                   "combined": {k: r[k] for k in ("overall", "mean_per_class", *GROUPS)}}
    write_json(out / "metrics.json", report)
    log.info("wrote %s", out / "metrics.json")
    return report


def _classification_reports(run: LoadedRun, report: dict[str, Any], logits: torch.Tensor, labels: torch.Tensor,
                            logit_adjust_tau: float, out: Path) -> None:
    e, counts, names = run.cfg.eval, run.class_counts, run.class_names
    if logit_adjust_tau:
        logits = logit_adjust(logits, counts, logit_adjust_tau)
    probs = run.loss.scores(logits).float()
    preds, labels_np = probs.argmax(1).numpy(), labels.numpy()
    cal = calibration_report(probs.numpy(), labels_np, counts, e.many_threshold, e.few_threshold)
    report.update({k: cal[k] for k in ("ece", "ece_many", "ece_medium", "ece_few", "nll")},
                  calibration_bins=cal["bins"])
    rows = per_class_table(preds, labels_np, counts, names, e.many_threshold, e.few_threshold)
    write_per_class_csv(out / "per_class.csv", rows)
    figures = {
        "reliability.png": reliability_figure(cal["bins"], cal["ece"], f"reliability diagram ({report['split']})"),
        "confusion_matrix.png": confusion_matrix_figure(confusion_matrix(preds, labels_np, len(counts)), counts,
                                                        names, e.many_threshold, e.few_threshold),
        "per_class_accuracy.png": per_class_figure(
            np.array([np.nan if a is None else a for a in report["per_class"]], dtype=float), counts,
            "top-1 accuracy (%)", f"per-class accuracy ({report['split']})", e.many_threshold, e.few_threshold,
            names),
    }
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=100)
        plt.close(fig)


def summary_table(report: dict[str, Any], keys: Sequence[str]) -> str:
    """The printed table: one line per metric (``keys``, then calibration where present)."""
    lines = []
    for key in (*keys, "ece", "ece_many", "ece_medium", "ece_few", "nll"):
        if key in report:
            value = report[key]
            lines.append(f"{key:<12} {'n/a' if value is None else f'{value:.4f}' if key == 'nll' else f'{value:.2f}'}")
    if "dual_head" in report:
        combined = report["dual_head"]["combined"]
        dual = report["dual_head"]
        rule = f"sel, T = {dual['threshold']}" if dual.get("combine") == "sel" else f"avg, w = {dual.get('weight')}"
        lines.append(f"dual head ({rule}): " + "  ".join(
            f"{k} {'n/a' if combined[k] is None else f'{combined[k]:.2f}'}" for k in ("overall", *GROUPS)))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ predict / export


def predict_run(run: LoadedRun, paths: Sequence[str | Path], topk: int = 5, batch_size: int = 64,
                num_workers: int = 0, tta: str | None = None) -> Predictions:
    """Top-k class names and scores of every image under ``paths`` (files, or folders searched recursively),
    through the run's eval transform (with ``tta``, default the run's ``eval.tta``: its views, the scores of the
    averaged outputs); unreadable files are reported and skipped."""
    images = find_images(paths)
    if not images:
        raise FileNotFoundError(f"no image files under {', '.join(str(p) for p in paths)}")
    device = resolve_device(run.cfg.train.device)
    module, scores = run.inference_model()
    module, transform = TTA.from_config(run.cfg, tta).wrap(module, run.eval_transform())
    return predict_topk(module.to(device), images, transform, run.class_names, topk=topk,
                        batch_size=batch_size, device=device, num_workers=num_workers, scores=scores)


def export_run(run: LoadedRun, out_path: str | Path | None = None) -> tuple[Path, Path]:
    """TorchScript of the run's model (its dual head where it has one) with the normalisation inside, and the
    json beside it (:func:`ltcls.export.export_torchscript`); default ``RUN_DIR/model.torchscript.pt``."""
    module, _ = run.inference_model()
    p = run.transform_params
    extra = {"method": run.method or "stage1", "tau": run.tau,
             "dual_head_threshold": run.cfg.stage2.dual_head_threshold if run.dual_head is not None else None,
             "dual_head_rule": run.dual_head.classifier.rule if run.dual_head is not None else None,
             "outputs": "dual-head scores" if run.dual_head is not None else "logits",
             "tta": TTA.from_config(run.cfg).export_note()}
    out = Path(out_path) if out_path is not None else run.run_dir / "model.torchscript.pt"
    return export_torchscript(module, out, p["mean"], p["std"], p["img_size"], run.class_names, run.run_dir, extra)
