"""Use a finished run: load its model for inference (a stage-1 run or any stage-2 run directory), evaluate it
with calibration and per-class reports, classify image files, export it (pt2, ONNX, TorchScript).

The model is rebuilt the way the run built it: the stage-1 config's model, then (stage 2) the method's
inference model (:meth:`ltcls.stage2.runner.Stage2Method.inference_model`: a head, or SimCal's wrapper), then
the checkpoint's weights; no training machinery is built. Where ``stage2.combine`` asks for a dual head
(SimCal's 'sel' with ``stage2.dual_head_threshold``, or 'avg'), :attr:`LoadedRun.dual_head` is that dual head
over the stage-1 and stage-2 heads as one module (scores, not logits). Prediction and export need no data: the
class names and count come from the checkpoint, the class counts from ``metrics.json``. Inference runs through
the one :class:`ltcls.engine.inference.InferenceRunner`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ltcls.config import Config
from ltcls.data.base import DataSplits, Split
from ltcls.data.build import TRANSFORM_KEYS
from ltcls.data.datasets.split_file import read_split_file
from ltcls.data.transforms import build_transforms
from ltcls.data.tta import TTA
from ltcls.engine.checkpoint import Checkpoint
from ltcls.engine.evaluation import ClassificationEvaluator, EvalContext
from ltcls.engine.inference import InferenceRunner
from ltcls.engine.tasks import Task, build_stage_loss, build_task, seed_everything
from ltcls.export import DualHeadClassifier, ExportPaths, ExportSpec, LossScores, export_model
from ltcls.io import AtomicFiles
from ltcls.losses.base import LTLoss
from ltcls.losses.logit_adjusted import logit_adjust
from ltcls.metrics import GROUPS, accuracy_report, calibration_report, confusion_matrix, per_class_table
from ltcls.models.backbone import LTModel
from ltcls.models.decoupled import TauNormClassifier
from ltcls.models.dual_head import dual_head_rule
from ltcls.predict import ImageFiles, Predictions, TopK, find_images, write_predictions_csv, write_predictions_json
from ltcls.registry import signature_schema
from ltcls.reporting import (
    confusion_matrix_figure,
    per_class_figure,
    reliability_figure,
    save_figure,
    write_json,
    write_per_class_csv,
)
from ltcls.results import EvalReport, Nested, Values
from ltcls.rundir import METRICS, NotFinishedError, RunDir
from ltcls.stage2.runner import ClassFacts, method_of

log = logging.getLogger("ltcls")


@dataclass
class LoadedRun:
    """A finished run's model and what using it needs."""

    run_dir: RunDir
    cfg: Config
    task: Task
    #: Images -> logits (classification) or the detector; eval mode, on CPU.
    model: nn.Module
    #: The run's (last stage's) loss: ``loss.scores(logits)`` are its inference scores.
    loss: LTLoss
    class_names: list[str]
    class_counts: np.ndarray
    #: The stage-2 method, ``None`` for a stage-1 run.
    method: str | None = None
    #: tau-norm's tau in use (the run's chosen one, or the ``tau`` asked for).
    tau: float | None = None
    #: SimCal's dual head as one module (images -> scores), where the run has ``stage2.dual_head_threshold``.
    dual_head: nn.Module | None = None
    #: The run's data (``None`` when loaded without it).
    data: DataSplits | None = None

    @property
    def transform_params(self) -> dict[str, object]:
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

    def runner(self) -> InferenceRunner:
        return InferenceRunner.for_config(self.cfg, self.task)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def load_run(run_dir: str | Path, with_data: bool = True, tau: float | None = None) -> LoadedRun:
    """Rebuild a finished run's model with its checkpoint (see the module docstring).

    ``with_data=False`` builds no dataset (prediction, export; classification runs only). ``tau`` replaces
    the run's head by its tau-normalized version (a linear or tau-norm head), without retraining.
    """
    rd = RunDir(run_dir)
    rd.require_finished()
    cfg, ckpt = rd.config(), Checkpoint.load(rd.checkpoint_path)
    method = cfg.stage2.method if cfg.stage2.from_run else None
    stage1 = _stage1_of(rd, cfg) if method else rd
    stage1_cfg = stage1.config() if method else cfg
    task = build_task(cfg)
    seed_everything(cfg.train.seed)
    data = task.build_data(cfg) if with_data else _facts(rd, ckpt)
    loss, names = task.build_loss(cfg, data), [str(n) for n in data.class_names]
    if ckpt.loss:
        loss.load_state_dict(ckpt.loss)
    if ckpt.tau is None and method:
        ckpt.tau = rd.metrics().get("tau")  # a run written before the checkpoint stored it
    model = task.build_model(stage1_cfg, data)
    if method is not None:
        impl = method_of(method)
        model, task = impl.inference_model(cfg, model, data, ckpt), impl.inference_task(cfg, task)
    ckpt.load_into(model, rd.checkpoint_path)
    model.eval()
    run = LoadedRun(rd, cfg, task, model, loss, names, np.asarray(data.class_counts), method, ckpt.tau,
                    data=data if with_data else None)
    if tau is not None:
        set_tau(run, tau)
    rule = dual_head_rule(cfg.stage2.combine, cfg.stage2.dual_head_threshold)
    if method and rule is not None and isinstance(model, LTModel):
        run.dual_head = _dual_head(run, stage1_cfg, stage1, data, rule)
    return run


def _stage1_of(run_dir: RunDir, cfg: Config) -> RunDir:
    stage1 = RunDir(cfg.stage2.from_run)
    if not stage1.config_path.is_file():
        raise NotFinishedError(f"{run_dir} is a stage-2 run of '{stage1}' (stage2.from_run in {run_dir.config_path}), "
                               "which has no config.yaml (run the command from the folder the run was started in, "
                               "or fix stage2.from_run)")
    return stage1


def _facts(run_dir: RunDir, ckpt: Checkpoint) -> ClassFacts:
    """What building a classification model and loss needs of the data, from the run's files."""
    counts = run_dir.metrics().get("class_counts")
    if counts is None:
        raise ValueError(f"{run_dir} is not a classification run ({run_dir.metrics_path} has no 'class_counts'): "
                         "prediction and export take classification runs")
    names = ckpt.class_names or [str(i) for i in range(len(counts))]
    if len(names) != len(counts):
        raise ValueError(f"{run_dir}: {len(names)} class names but {len(counts)} class counts in metrics.json")
    return ClassFacts(num_classes=len(counts), class_counts=np.asarray(counts), class_names=list(names))


def set_tau(run: LoadedRun, tau: float) -> None:
    """tau-normalize the run's head (Kang et al.): a tau-norm head gets ``tau``; a linear one is replaced by its
    tau-normalized version (bias dropped); other heads are an error."""
    head = run.model.classifier if isinstance(run.model, LTModel) else None
    if isinstance(head, TauNormClassifier):
        head.tau = float(tau)
    elif isinstance(head, nn.Linear):
        run.model.classifier = TauNormClassifier.from_linear(head, tau=float(tau)).eval()
    else:
        raise ValueError(f"--tau {tau}: tau-norm applies to a linear or tau_norm head; {run.run_dir} has "
                         f"{type(head).__name__}")
    run.tau = float(tau)


def _dual_head(run: LoadedRun, stage1_cfg: Config, stage1_dir: RunDir, data: DataSplits | ClassFacts,
               rule: str) -> nn.Module:
    """The run's dual head as one module: SimCal's selection ('sel': the stage-1 head's scores for classes with
    more than T training images) or score averaging ('avg'), as ``stage2.combine`` asks."""
    stage1 = run.task.build_model(stage1_cfg, data)
    Checkpoint.load(stage1_dir.checkpoint_path).load_into(stage1, stage1_dir.checkpoint_path)
    stage1_loss = build_stage_loss(stage1_cfg, data)
    s2 = run.cfg.stage2
    head = DualHeadClassifier(stage1.classifier, run.model.classifier, run.class_counts, s2.dual_head_threshold,
                              LossScores(stage1_loss), LossScores(run.loss), rule=rule, weight=s2.combine_weight)
    return LTModel(run.model.backbone, head).eval()


# ------------------------------------------------------------------------------------------------ evaluate


def default_eval_dir(run_dir: str | Path | RunDir, split: str, split_file: str | None = None) -> Path:
    """``RUN_DIR/eval_<split>`` (``eval_<file stem>`` for a split file)."""
    return RunDir(str(run_dir)).eval_dir(Path(split_file).stem if split_file else split)


def eval_dataset(run: LoadedRun, split: str, split_file: str | None = None) -> Split:
    """The split to evaluate, through the run's eval transform (the train split too)."""
    data = run.data
    if split_file is not None:
        root = run.cfg.data.params.get("root")
        if root is None:
            raise ValueError(f"--split-file needs a data.root in {run.run_dir.config_path} (the folder the file's "
                             f"paths are relative to); the dataset '{run.cfg.data.name}' has none")
        entries = read_split_file(split_file, root, len(run.class_names))
        return entries.dataset(root, len(run.class_names), run.class_names, data.test.transform,
                               on_bad_image=run.cfg.data.params.get("on_bad_image", "error"))
    if not data.has(split):
        raise ValueError(f"the dataset '{run.cfg.data.name}' of {run.run_dir} has no {split} split")
    dataset = data.get(split)
    return dataset.with_transform(data.test.transform) if split == "train" else dataset


def evaluate_run(run: LoadedRun, split: str = "test", split_file: str | None = None,
                 logit_adjust_tau: float | None = None, out_dir: str | Path | None = None,
                 tta: str | None = None) -> EvalReport:
    """Evaluate ``run`` on a split (or a split file) into ``out_dir`` (default :func:`default_eval_dir`).

    ``metrics.json`` holds the task's metrics, computed as training computes them (for the same split and
    checkpoint: the same numbers), ``class_names``, and for classification the calibration (``ece``,
    ``ece_many`` / ``ece_medium`` / ``ece_few``, ``nll``, ``calibration_bins``) of the loss's scores, with
    ``reliability.png``, ``confusion_matrix.png``, ``per_class_accuracy.png`` and ``per_class.csv``; a dual
    head's accuracy under ``dual_head``. ``tta``: the test-time augmentation (default the run's ``eval.tta``;
    ``ltcls.data.tta``), recorded as ``tta``. Returns the report.
    """
    if run.data is None:
        raise ValueError("evaluate_run needs a run loaded with its data (load_run(..., with_data=True))")
    out = Path(out_dir) if out_dir is not None else default_eval_dir(run.run_dir, split, split_file)
    out.mkdir(parents=True, exist_ok=True)
    dataset = eval_dataset(run, split, split_file)
    runner = run.runner()
    e = run.cfg.eval
    ctx = EvalContext(class_counts=run.data.class_counts, many_threshold=e.many_threshold,
                      few_threshold=e.few_threshold, scores=run.loss.scores, model=run.model, stage="eval", split=split,
                      logit_adjust_tau=e.logit_adjust_tau if logit_adjust_tau is None else float(logit_adjust_tau))
    evaluator = run.task.evaluator(dataset, ctx)
    augment = TTA.from_config(run.cfg, tta)
    model, views = augment.apply(run.model, dataset)
    evaluation = runner.evaluate(model, views, evaluator, f"eval {split}")
    report = EvalReport.of(evaluation, split=split if split_file is None else str(split_file), epoch=0, stage="eval",
                           num_classes=len(run.class_names), class_names=run.class_names)
    source = {"source_run": str(run.run_dir), "method": run.method, "logit_adjust_tau": ctx.logit_adjust_tau,
              "tta": augment.name}
    report = report.with_sections(Values(source if run.tau is None else {**source, "tau": run.tau}))
    run.task.report(report, ctx)
    with AtomicFiles() as files:  # every output is renamed into place only once all are written; none on failure
        if isinstance(evaluator, ClassificationEvaluator):
            logits, labels = evaluator.outputs()
            report = report.with_sections(_classification_reports(run, report, logits, labels,
                                                                  ctx.logit_adjust_tau, out, files))
            if run.dual_head is not None:
                report = report.with_sections(_dual_head_section(run, runner, *augment.apply(run.dual_head, dataset)))
        write_json(out / METRICS, report.to_json(), files)  # renamed last: its presence marks a complete set
    log.info("wrote %s", out / METRICS)
    return report


def _dual_head_section(run: LoadedRun, runner: InferenceRunner, dual_head: nn.Module, dataset: Split) -> Nested:
    """The dual head's accuracy on ``dataset`` (``dual_head`` in metrics.json; with the test-time augmentation
    the evaluation uses)."""
    scores, labels = runner.predict(dual_head, dataset, "eval dual head")
    e, s2 = run.cfg.eval, run.cfg.stage2
    r = accuracy_report(scores.argmax(1).numpy(), labels.numpy(), run.class_counts, e.many_threshold, e.few_threshold)
    return Nested("dual_head", {"threshold": s2.dual_head_threshold, "weight": s2.combine_weight,
                                "combine": dual_head_rule(s2.combine, s2.dual_head_threshold),
                                "combined": {k: getattr(r, k) for k in ("overall", "mean_per_class", *GROUPS)}})


def _classification_reports(run: LoadedRun, report: EvalReport, logits: torch.Tensor, labels: torch.Tensor,
                            logit_adjust_tau: float, out: Path, files: AtomicFiles) -> Values:
    """Calibration (returned as a section), ``per_class.csv`` and the figures of a classification evaluation."""
    e, counts, names = run.cfg.eval, run.class_counts, run.class_names
    if logit_adjust_tau:
        logits = logit_adjust(logits, counts, logit_adjust_tau)
    probs = run.loss.scores(logits).float()
    preds, labels_np = probs.argmax(1).numpy(), labels.numpy()
    cal = calibration_report(probs.numpy(), labels_np, counts, e.many_threshold, e.few_threshold)
    rows = per_class_table(preds, labels_np, counts, names, e.many_threshold, e.few_threshold)
    write_per_class_csv(out / "per_class.csv", rows, files)
    per_class = np.array([np.nan if a is None else a for a in report.accuracy.per_class], dtype=float)
    figures = {
        "reliability.png": reliability_figure(cal["bins"], cal["ece"], f"reliability diagram ({report.split})"),
        "confusion_matrix.png": confusion_matrix_figure(confusion_matrix(preds, labels_np, len(counts)), counts,
                                                        names, e.many_threshold, e.few_threshold),
        "per_class_accuracy.png": per_class_figure(per_class, counts, "top-1 accuracy (%)",
                                                   f"per-class accuracy ({report.split})", e.many_threshold,
                                                   e.few_threshold, names),
    }
    for name, fig in figures.items():
        save_figure(out / name, fig, files)
    return Values({**{k: cal[k] for k in ("ece", "ece_many", "ece_medium", "ece_few", "nll")},
                   "calibration_bins": cal["bins"]})


def summary_table(report: EvalReport, keys: Sequence[str]) -> str:
    """The printed table: one line per metric (``keys``, then calibration where present)."""
    values = {**report.to_json(), **report.metrics()}
    lines = []
    for key in (*keys, "ece", "ece_many", "ece_medium", "ece_few", "nll"):
        if key in values:
            value = values[key]
            lines.append(f"{key:<12} {'n/a' if value is None else f'{value:.4f}' if key == 'nll' else f'{value:.2f}'}")
    if "dual_head" in values:
        dual = values["dual_head"]
        combined = dual["combined"]
        rule = f"sel, T = {dual['threshold']}" if dual.get("combine") == "sel" else f"avg, w = {dual.get('weight')}"
        lines.append(f"dual head ({rule}): " + "  ".join(
            f"{k} {'n/a' if combined[k] is None else f'{combined[k]:.2f}'}" for k in ("overall", *GROUPS)))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ predict / export


def predict_images(runner: InferenceRunner, module: nn.Module, paths: Sequence[str], transform: Callable,
                   class_names: Sequence[str], topk: int = 5,
                   scores: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Predictions:
    """The ``topk`` classes (names) and probabilities of every image in ``paths``, in the order given, through
    ``transform``. ``scores`` turns logits into probabilities (default softmax; a run's loss's ``scores``, e.g.
    Gumbel). Unreadable files are logged, skipped and listed in ``Predictions.unreadable``."""
    top = TopK(paths, class_names, topk, scores)
    device = runner.device

    def step(m: nn.Module, batch: Sequence[object]) -> torch.Tensor | None:
        images = batch[1]
        return m(images.to(device)) if images is not None else None

    runner.evaluate(module.to(device), ImageFiles(paths, transform), top, "predict", step=step)
    log.info("predicted %d images, %d unreadable", len(top.result.rows), len(top.result.unreadable))
    return top.result


def predict_run(run: LoadedRun, paths: Sequence[str | Path], topk: int = 5, batch_size: int = 64,
                tta: str | None = None) -> Predictions:
    """Top-k class names and scores of every image under ``paths`` (files, or folders searched recursively),
    through the run's eval transform (with ``tta``, default the run's ``eval.tta``: its views, the scores of the
    averaged outputs); unreadable files are reported and skipped."""
    images = find_images(paths)
    if not images:
        raise FileNotFoundError(f"no image files under {', '.join(str(p) for p in paths)}")
    module, scores = run.inference_model()
    module, transform = TTA.from_config(run.cfg, tta).wrap(module, run.eval_transform())
    runner = run.runner()
    runner.batch_size = batch_size
    return predict_images(runner, module, images, transform, run.class_names, topk, scores)


def save_predictions(out: str | Path, predictions: Predictions, replace: bool = True) -> None:
    """Write ``predictions`` as CSV or JSON, as the extension of ``out`` says (its folder is created); without
    ``replace`` an existing file is a ``FileExistsError``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    (write_predictions_json if out.suffix.lower() == ".json" else write_predictions_csv)(out, predictions, replace)


def export_run(run: LoadedRun, out_path: str | Path | None = None, fmt: str = "pt2") -> ExportPaths:
    """The run's model (its dual head where it has one) with the normalisation inside, in format ``fmt``, and the
    json beside it (:func:`ltcls.export.export_model`); default ``RUN_DIR/model.<format's suffix>``."""
    module, _ = run.inference_model()
    p = run.transform_params
    extra = {"method": run.method or "stage1", "tau": run.tau,
             "dual_head_threshold": run.cfg.stage2.dual_head_threshold if run.dual_head is not None else None,
             "dual_head_rule": run.dual_head.classifier.rule if run.dual_head is not None else None,
             "outputs": "dual-head scores" if run.dual_head is not None else "logits",
             "tta": TTA.from_config(run.cfg).export_note()}
    spec = ExportSpec(p["mean"], p["std"], p["img_size"], run.class_names, run.run_dir.path,
                      "scores" if run.dual_head is not None else "logits", extra)
    return export_model(module, spec, fmt, out_path, run.run_dir.path)
