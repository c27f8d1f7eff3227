"""Strict, schema-backed configuration: defaults <- ``yaml.safe_load(file)`` <- ``--set a.b=c``.

Fixed sections (``train``, ``eval``, ``model``) are dataclasses below. Sections that pick an
implementation by ``name`` (``data``, ``classifier``, ``loss``, ``sampler``) take the chosen
component's constructor signature as their schema (see ``ltcls.registry``), so a yaml key is
valid exactly when the code accepts it. An unknown key or a wrong type is a ``ConfigError``
naming the key (and the closest valid key); derived values (class counts, number of classes,
feature dimension) are never accepted from yaml.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import logging
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ltcls.registries import CONFIG_SECTIONS, PEFT_METHODS, SECTIONS, TTAS, task_of
from ltcls.registry import Schema, signature_schema

log = logging.getLogger("ltcls")

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
#: Ranges of component parameters that several components share (``data.img_size``, ...), checked by name.
PARAM_RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "img_size": (1, None, "an integer >= 1"), "decode_size": (0, None, "an integer >= 0 or null"),
    "crop_pct": (1e-9, 1.000001, "a fraction in (0, 1]"), "hflip": (0, 1.000001, "a probability in [0, 1]"),
    "imbalance_factor": (1, None, "a ratio >= 1"), "test_per_class": (1, None, "an integer >= 1"),
    "val_per_class": (0, None, "an integer >= 0")}


#: One section's keys and values (a component's parameters), as yaml gives them.
Params = dict[str, Any]
#: A whole config as plain yaml values: section name -> key -> value.
PlainConfig = dict[str, Params]


class ConfigError(ValueError):
    """A config file or override does not fit the schema; the message names the key."""


def check_range(section: str, obj: Any, rules: Mapping[str, tuple[float | None, float | None, str]]) -> None:
    """Raise ``ConfigError`` naming ``section.key`` when a value lies outside its range.

    ``rules`` maps a key to ``(low, high, what)``: ``low <= value`` and ``value < high`` (``None``: unbounded);
    ``None`` values (optional keys) are not checked; ``what`` is the expectation as the message says it."""
    for key, (low, high, what) in rules.items():
        values = getattr(obj, key)
        for value in values if isinstance(values, list) else [values]:
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if (low is not None and value < low) or (high is not None and value >= high) or value != value:
                raise ConfigError(f"{section}.{key}: expected {what}, got {values!r}")


@dataclass
class TrainConfig:
    """``train:`` the optimization schedule of the (first) stage.

    ``batch_size`` is the global batch of one optimizer step: with N processes and ``accum_steps``
    micro-batches each process runs ``batch_size / (N * accum_steps)`` images at a time. With
    ``base_batch_size`` set, ``lr`` is the learning rate for that batch and is scaled linearly to
    ``batch_size`` (Goyal et al.; mmdetection's auto-scale-lr, detectron2's reference-world-size rule).
    ``optimizer``: any name timm's ``create_optimizer_v2`` knows (``sgd``, ``adamw``, ``lamb``, ...; see
    :mod:`ltcls.engine.optim`), with ``momentum`` / ``nesterov`` where it has momentum and ``betas`` / ``eps``
    where it has them (null: the optimizer's defaults). ``no_weight_decay_1d``: no weight decay on 1-D parameters
    (biases, norms) and the backbone's ``no_weight_decay()`` (ViT: position embedding, class token), timm's
    grouping; null: on for every optimizer but ``sgd``, which decays every parameter as ltcls always did.
    ``layer_decay``: layer-wise lr decay over the backbone's layers (timm's ``group_matcher``; the head is the
    top layer, at ``lr``). ``head_lr_mult``: the classifier head's lr is ``lr`` times this.
    Warm-up rises linearly from ``warmup_ratio`` x lr over ``warmup_iters`` optimizer steps (mmdetection: 500
    from 0.001 for LVIS) or over ``warmup_epochs`` epochs; with both set, over the shorter of the two (the first
    epoch, at most 1000 steps: GOL's classification code). ``amp``,
    ``channels_last`` and ``sync_bn`` apply on CUDA only (ignored on CPU); ``compile`` wraps the
    trained module in ``torch.compile``.
    """

    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    no_weight_decay_1d: bool | None = None
    layer_decay: float | None = None
    head_lr_mult: float = 1.0
    betas: list[float] | None = None
    eps: float | None = None
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: int = 0
    warmup_iters: int = 0
    warmup_ratio: float = 0.0
    base_batch_size: int | None = None
    clip_grad_norm: float | None = None
    accum_steps: int = 1
    seed: int = 0
    num_workers: int = 2
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    device: str = "auto"
    log_interval: int = 10
    checkpoint_on_signal: bool = False

    def __post_init__(self) -> None:
        check_range("train", self, {
            "epochs": (1, None, "an integer >= 1"), "batch_size": (1, None, "an integer >= 1"),
            "lr": (0, None, "a learning rate >= 0"), "momentum": (0, 1, "a value in [0, 1)"),
            "weight_decay": (0, None, "a value >= 0"), "milestones": (1, None, "epochs >= 1"),
            "gamma": (0, None, "a factor >= 0"), "warmup_epochs": (0, None, "an integer >= 0"),
            "clip_grad_norm": (0, None, "a norm > 0 or null"), "accum_steps": (1, None, "an integer >= 1"),
            "seed": (0, 2**32, "an integer in [0, 2**32)"), "num_workers": (0, None, "an integer >= 0"),
            "log_interval": (1, None, "an integer >= 1"), "layer_decay": (1e-9, 1.000001, "a factor in (0, 1] or null"),
            "head_lr_mult": (0, None, "a factor >= 0"), "betas": (0, 1, "values in [0, 1) or null"),
            "eps": (1e-30, None, "a value > 0 or null")})
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.optimizer):
            raise ConfigError(f"train.optimizer: expected an optimizer name of timm's create_optimizer_v2 (sgd, adamw, "
                              f"lamb, ...), got {self.optimizer!r}")
        if self.clip_grad_norm == 0:
            raise ConfigError("train.clip_grad_norm: expected a norm > 0 or null (no clipping), got 0")
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"train.device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}")

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the linear warm-up: ``warmup_iters``, or ``warmup_epochs`` epochs of
        ``steps_per_epoch`` steps, or with both set the shorter (kostas1515/iif ``classification/train.py``
        ``train_one_epoch``: ``min(1000, len(data_loader) - 1)`` steps in the first epoch)."""
        by_epochs = self.warmup_epochs * steps_per_epoch
        if self.warmup_iters and by_epochs:
            return min(self.warmup_iters, by_epochs)
        return self.warmup_iters or by_epochs


@dataclass
class EvalConfig:
    """``eval:`` when and how to evaluate, and the many / medium / few thresholds (Kang et al.).

    ``tta``: test-time augmentation of every evaluation (``ltcls.data.tta``): ``none``, ``flip`` (the view and its
    mirror image) or ``five_crop`` (LIFT's: short side resized to ``img_size + tta_expand``, four corner crops and
    the centre one); the model's outputs are averaged over the views (run one view of a batch at a time, so a
    forward holds ``batch_size`` images as without augmentation). ``ltcls-eval`` / ``ltcls-predict`` use it too
    (``--tta`` overrides it).
    """

    interval: int = 0
    split: Literal["test", "val"] = "test"
    batch_size: int = 256
    many_threshold: int = 100
    few_threshold: int = 20
    logit_adjust_tau: float = 0.0
    tta: str = "none"
    tta_expand: int = 24

    def __post_init__(self) -> None:
        check_range("eval", self, {
            "interval": (0, None, "an integer >= 0 (0: evaluate only at the end)"),
            "batch_size": (1, None, "an integer >= 1"), "many_threshold": (1, None, "an integer >= 1"),
            "few_threshold": (0, None, "an integer >= 0"), "logit_adjust_tau": (0, None, "a value >= 0"),
            "tta_expand": (0, None, "an integer >= 0 (pixels)")})
        if self.tta not in TTAS:
            raise ConfigError(f"eval.tta: expected one of {', '.join(TTAS.names())}, got {self.tta!r}")
        if self.few_threshold >= self.many_threshold:
            raise ConfigError(f"eval.few_threshold ({self.few_threshold}) must be below eval.many_threshold "
                              f"({self.many_threshold})")


@dataclass
class PeftConfig:
    """``model.peft:`` parameter-efficient fine-tuning of the backbone (:mod:`ltcls.models.peft`); the head
    always trains. ``method``: ``none`` (every backbone parameter trains, unless ``model.freeze``), or a
    registered method (``PEFT_METHODS``): ``lora``, ``dora``, ``loha``, ``lokr``, ``ia3``, ``ln_tuning``
    through the ``peft`` library, ``bitfit`` (biases only, by hand). Any method freezes the backbone's own
    weights. ``r`` / ``alpha`` / ``dropout``: the low-rank methods' rank, scale (``alpha / r``) and dropout;
    ``target_modules``: module names the method adapts (null: the method's default for timm ViTs, e.g.
    ``[qkv]`` for LoRA, every LayerNorm for ``ln_tuning``); ``feedforward_modules``: IA3's (null: ``[fc2]``).
    """

    method: str = "none"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None

    def __post_init__(self) -> None:
        if self.method not in PEFT_METHODS:
            close = difflib.get_close_matches(self.method, PEFT_METHODS.names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"model.peft.method: expected one of {', '.join(PEFT_METHODS.names())}, got "
                              f"{self.method!r}{hint}")
        check_range("model.peft", self, {"r": (1, None, "an integer >= 1"), "alpha": (1e-12, None, "a value > 0"),
                                          "dropout": (0, 1, "a probability in [0, 1)")})


@dataclass
class ModelConfig:
    """``model:`` a timm backbone by name (``num_classes=0``); ``kwargs`` go to ``timm.create_model``.

    ``pretrained``: timm's weights (downloaded to the Hugging Face cache); ``pretrained_file``: the weights from
    a local file instead (any format timm's ``load_pretrained`` reads: the hub's ``.safetensors`` / ``.bin``;
    implies pretrained). ``freeze``: the backbone does not train (its parameters frozen, and without a
    ``peft`` method kept in eval mode: BatchNorm statistics and dropout fixed); the head trains.
    ``peft``: parameter-efficient fine-tuning (:class:`PeftConfig`).
    ``clip_projection``: a timm CLIP image tower (``vit_base_patch16_clip_quickgelu_224.openai``, ...) keeps its
    projection into CLIP's joint image-text space, so its features are CLIP image embeddings (what
    ``classifier.init: text`` needs; ``ltcls.models.backbone``)."""

    name: str = "cifar_resnet20"
    pretrained: bool = False
    pretrained_file: str | None = None
    freeze: bool = False
    drop_rate: float = 0.0
    drop_path_rate: float | None = None
    clip_projection: bool = False
    kwargs: dict = field(default_factory=dict)
    peft: PeftConfig = field(default_factory=PeftConfig)

    def __post_init__(self) -> None:
        if isinstance(self.peft, Mapping):
            self.peft = PeftConfig(**self.peft)
        check_range("model", self, {"drop_rate": (0, 1, "a probability in [0, 1)"),
                                     "drop_path_rate": (0, 1, "a probability in [0, 1) or null")})

    @property
    def frozen_backbone(self) -> bool:
        """Whether no backbone parameter of its own trains (``freeze``, or any ``peft`` method)."""
        return self.freeze or self.peft.method != "none"


@dataclass
class Stage2Config:
    """``stage2:`` the decoupled second stage (``ltcls-train --stage2 METHOD``); unused by stage 1.

    ``method`` and ``from_run`` are filled in by the command line. ``cache_features``: train the head
    on backbone features computed once (``None``: on where exact, i.e. tau_norm / ncm; off for
    crt / lws / gumbel, where cached features lose the per-epoch augmentation). ``cache_views``: with
    a cache, K > 1 stores K augmented views of the train split (train transforms) instead of one
    eval-transform view. ``tau_grid``: the tau-norm sweep, chosen on ``tau_split``.
    ``dual_head_threshold``: SimCal's dual-head selection (classes with at most T training images
    take the stage-2 head's scores, the rest the stage-1 head's); ``null`` turns it off.
    ``combine``: the dual-head model reported as the run's result: ``sel`` (SimCal's selection with T) or
    ``avg`` (score averaging, ``(1 - combine_weight) * stage-1 + combine_weight * stage-2`` for every class, as the
    Seesaw LVIS challenge report); both are reported whenever a dual head is asked for (T set, or ``avg``).
    """

    method: str | None = None
    from_run: str | None = None
    cache_features: bool | None = None
    cache_views: int = 1
    tau_grid: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(21)])
    tau_split: Literal["val", "train"] = "val"
    dual_head_threshold: int | None = None
    combine: Literal["sel", "avg"] = "sel"
    combine_weight: float = 0.5

    def __post_init__(self) -> None:
        check_range("stage2", self, {"cache_views": (1, None, "an integer >= 1"),
                                      "dual_head_threshold": (0, None, "an integer >= 0 or null")})


class Component:
    """A named section (``data``, ``classifier``, ``loss``, ``sampler``): the chosen implementation's ``name``
    and its hyper-parameters ``params``, read as attributes (``cfg.loss.p``) or passed on whole."""

    __slots__ = ("name", "params")

    def __init__(self, name: str, params: Mapping[str, Any]) -> None:
        self.name = name
        self.params = dict(params)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__") or key in ("name", "params"):
            raise AttributeError(key)
        try:
            return self.params[key]
        except KeyError:
            raise AttributeError(f"'{self.name}' has no parameter '{key}'") from None

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def to_dict(self) -> Params:
        return {"name": self.name, **copy.deepcopy(self.params)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Component) and (self.name, self.params) == (other.name, other.params)

    def __repr__(self) -> str:
        return f"Component({self.name!r}, {self.params!r})"

    def __getstate__(self) -> Params:
        return {"name": self.name, "params": self.params}

    def __setstate__(self, state: Params) -> None:
        self.name, self.params = state["name"], state["params"]


@dataclass
class Config:
    """A resolved config: typed sections read as attributes (``cfg.train.lr``, ``cfg.loss.name``)."""

    data: Component
    model: ModelConfig
    classifier: Component
    loss: Component
    sampler: Component
    train: TrainConfig
    eval: EvalConfig
    stage2: Stage2Config
    #: Sections a plug-in declares (``CONFIG_SECTIONS``; e.g. detection's ``detection``), by name.
    plugin: dict[str, object] = field(default_factory=dict)

    def __getattr__(self, key: str) -> object:
        if key.startswith("__") or key == "plugin":
            raise AttributeError(key)
        try:
            return self.plugin[key]
        except KeyError:
            raise AttributeError(f"the config has no section '{key}' (a plug-in's section exists only for the "
                                 "datasets of its task)") from None

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Mapping[str, Any]]) -> Config:
        """From resolved plain sections (every key present; see :func:`resolve`)."""
        out: dict[str, object] = {}
        for section in cfg:
            values = copy.deepcopy(dict(cfg[section]))
            if section in SECTIONS:
                name = values.pop("name")
                out[section] = Component(name, values)
            else:
                out[section] = fixed_section(section)(**values)
        core = {k: v for k, v in out.items() if k in SECTION_ORDER}
        return cls(**core, plugin={k: v for k, v in out.items() if k not in SECTION_ORDER})

    def to_dict(self) -> PlainConfig:
        """Plain dicts and lists, in section order (yaml, checkpoints)."""
        out = {}
        for section in (*SECTION_ORDER, *self.plugin):
            value = getattr(self, section)
            out[section] = value.to_dict() if isinstance(value, Component) else copy.deepcopy(dataclasses.asdict(value))
        return out


FIXED_SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "eval": EvalConfig,
                                   "stage2": Stage2Config}
DEFAULT_NAMES: dict[str, str] = {"data": "digits_lt", "classifier": "linear", "loss": "ce", "sampler": "instance"}
SECTION_ORDER = ("data", "model", "classifier", "loss", "sampler", "train", "eval", "stage2")


def fixed_section(section: str) -> type:
    """The dataclass of a fixed section: a core one, or one a plug-in declared (``CONFIG_SECTIONS``)."""
    return FIXED_SECTIONS[section] if section in FIXED_SECTIONS else CONFIG_SECTIONS.get(section)


def all_sections() -> tuple[str, ...]:
    """Every section a config may have: the core ones and the plug-ins' (those declared so far)."""
    return (*SECTION_ORDER, *CONFIG_SECTIONS.names())


def plugin_sections(data_name: str) -> list[str]:
    """The plug-in sections a config of the dataset ``data_name`` has (those declared for its task)."""
    try:
        task = task_of(data_name)
    except KeyError:
        return []  # an unknown dataset: its error comes from data.name
    return [s for s in CONFIG_SECTIONS.names() if CONFIG_SECTIONS.meta(s).get("task") == task]


def section_schema(section: str, name: str | None = None) -> Schema:
    """The allowed keys of a section as ``{key: (type, default)}`` (a named section: its component's signature)."""
    if section not in SECTIONS:
        cls = fixed_section(section)
        hints = typing.get_type_hints(cls)
        return {f.name: (hints[f.name], _field_default(f)) for f in dataclasses.fields(cls)}
    return SECTIONS[section].schema(name)  # raises KeyError listing the choices


def _plain_default(value: Any) -> Any:
    """Defaults as yaml would give them back (tuples as lists), so a saved config resolves to itself."""
    if isinstance(value, tuple):
        return [_plain_default(v) for v in value]
    return value


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp``; return it (ints widened to float where a float is due)."""
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return check_value(key, value, arg)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        item = args[0] if args else Any
        return [check_value(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads '5e-4' as a string; it means the number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _check_nested(key, value, tp)
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _check_nested(key: str, value: Any, tp: type) -> Any:
    """A nested section (``model.peft``): a mapping of the dataclass ``tp``'s keys, checked as strictly as a
    section (an unknown key names ``key.sub`` and the closest valid one); returns the built dataclass."""
    if isinstance(value, tp):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}, got "
                          f"{value!r}")
    hints = typing.get_type_hints(tp)
    names = [f.name for f in dataclasses.fields(tp)]
    checked = {}
    for sub, v in value.items():
        if sub not in names:
            raise _unknown(f"{key}.{sub}", names, f"in section '{key}'")
        checked[sub] = check_value(f"{key}.{sub}", v, hints[sub])
    return tp(**checked)


def _unknown(key: str, choices: Iterable[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(choices), n=1)
    hint = f" Did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}'?" if close else ""
    return ConfigError(f"unknown key '{key}' {where}.{hint} Valid keys: {', '.join(sorted(choices))}")


def defaults() -> PlainConfig:
    """The built-in defaults: every fixed section fully, and the default component of each named one."""
    cfg: PlainConfig = {}
    for section in SECTION_ORDER:
        name = DEFAULT_NAMES.get(section)
        cfg[section] = {k: d for k, (_, d) in section_schema(section, name).items()}
    return cfg


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'train.lr=0.1'`` -> ``(['train', 'lr'], 0.1)``; the value is parsed as yaml."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.sub=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: expected a dotted path like train.lr (section.key)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid yaml ({e})") from None
    return parts, value


def load_yaml(path: str | Path, allow_empty: bool = False) -> PlainConfig:
    """Read a yaml config file (``yaml.safe_load``); errors name the file.

    A file without content (empty, blank or only comments) is an error unless ``allow_empty`` (it would train
    the built-in defaults without a word); ``{}`` says "the defaults" on purpose and is accepted."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder (expected a yaml file, e.g. configs/digits_lt_ce.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid yaml: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not a text file (byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start} is not UTF-8; expected a yaml file)") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    if data is None:
        if allow_empty:
            return {}
        raise ConfigError(f"config file {path} is empty (expected a yaml mapping of sections such as 'train:'; "
                          "write '{}' to use the built-in defaults)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def resolve(file_cfg: Config | Mapping[str, Any] | None = None, overrides: Sequence[str] = (), source: str = "config"
            ) -> Config:
    """Merge defaults <- ``file_cfg`` <- ``overrides``, validate the result strictly, return typed sections.

    A named section whose ``name`` changes drops the previous component's defaults, so only keys
    that the chosen component accepts (set explicitly) remain; those are then checked. When ``--set``
    switches a section to another component (``--set data.name=split_file`` on a digits_lt yaml), the
    file's keys the new component does not accept are dropped with one logged line; keys given with
    ``--set`` are always checked. Fixed sections are checked first: their errors need no import. A plug-in's
    section (``detection``) belongs to the datasets of its task: set for another dataset it is an error
    (a section holding only its defaults, as older runs wrote it, is dropped).
    """
    file_cfg = file_cfg.to_dict() if isinstance(file_cfg, Config) else dict(file_cfg or {})
    explicit, from_set = _explicit(file_cfg, overrides, source)
    data_name = explicit["data"].get("name", DEFAULT_NAMES["data"])
    plugins = plugin_sections(data_name) if isinstance(data_name, str) else []
    _refuse_foreign_sections(explicit, plugins, data_name, source)
    fixed = [s for s in SECTION_ORDER if s in FIXED_SECTIONS] + plugins
    cfg: PlainConfig = {}
    for section in fixed + [s for s in SECTION_ORDER if s not in FIXED_SECTIONS]:
        cfg[section] = _resolve_section(section, explicit[section], from_set[section],
                                        file_cfg.get(section, {}), source)
    return Config.from_dict({s: cfg[s] for s in (*SECTION_ORDER, *plugins)})


def _explicit(file_cfg: Mapping[str, Any], overrides: Sequence[str], source: str
              ) -> tuple[PlainConfig, dict[str, set[str]]]:
    """The sections as the file and the ``--set`` overrides give them, and the keys each override set."""
    known = all_sections()
    for section in file_cfg:
        if section not in known:
            raise _unknown(section, known, f"at the top level of {source}")
        if not isinstance(file_cfg[section], Mapping):
            raise ConfigError(f"{source}: section '{section}' must be a mapping, got {file_cfg[section]!r}")
    explicit: PlainConfig = {s: copy.deepcopy(dict(file_cfg.get(s, {}))) for s in known}
    from_set: dict[str, set[str]] = {s: set() for s in known}
    for item in overrides:
        parts, value = parse_override(item)
        section = parts[0]
        if section not in known:
            raise _unknown(section, known, "in --set (sections)")
        target = explicit[section]
        for p in parts[1:-1]:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item}: '{p}' is not a mapping")
        target[parts[-1]] = value
        from_set[section].add(parts[1])
    return explicit, from_set


def _refuse_foreign_sections(explicit: PlainConfig, plugins: Sequence[str], data_name: object, source: str) -> None:
    """A plug-in section set for a dataset of another task is an error naming it (unless it holds only its
    defaults, as configs written before plug-ins owned their sections did)."""
    for section in CONFIG_SECTIONS.names():
        given = explicit[section]
        if section in plugins or not given:
            continue
        defaults = {k: _plain_default(d) for k, (_, d) in section_schema(section).items()}
        changed = sorted(k for k, v in given.items() if defaults.get(k, object()) != v)
        if changed:
            task = CONFIG_SECTIONS.meta(section).get("task")
            raise ConfigError(f"{source}: section '{section}' applies to {task} datasets only; data.name "
                              f"'{data_name}' is not one, so {section}.{changed[0]} would be ignored (remove the "
                              f"section)")


def _resolve_section(section: str, given: Params, from_set: set[str], file_section: Mapping[str, Any],
                     source: str) -> Params:
    """One section's values: its schema's defaults, then what was given, checked against the schema."""
    named = section in SECTIONS
    name = given.get("name", DEFAULT_NAMES.get(section)) if named else None
    if named and not isinstance(name, str):
        raise ConfigError(f"{section}.name: expected a registered name (str), got {name!r}")
    try:
        schema = section_schema(section, name)
    except KeyError as e:
        raise ConfigError(f"{section}.name: {e.args[0]} (a plug-in's names, e.g. detection's 'lvis', are "
                          "known once ltcls.plugins.load_plugins() has run, as every ltcls command does)") from None
    file_name = file_section.get("name") if named else None
    if "name" in from_set and file_name not in (None, name):
        dropped = sorted(k for k in given if k not in schema and k not in from_set)
        if dropped:
            log.warning("%s.name=%s (was %s in %s): dropped %s's parameters %s", section, name, file_name, source,
                        file_name, ", ".join(dropped))
            given = {k: v for k, v in given.items() if k not in dropped}
    values = {k: _plain_default(d) for k, (_, d) in schema.items()}
    for key, value in given.items():
        if key not in schema:
            where = f"in section '{section}'" + (f" ({section} '{name}' has no such parameter)" if name else "")
            raise _unknown(f"{section}.{key}", schema, where)
        values[key] = check_value(f"{section}.{key}", value, schema[key][0])
    if named:
        check_range(section, types.SimpleNamespace(**values), {k: r for k, r in PARAM_RANGES.items() if k in values})
    return values


def load(path: str | Path, overrides: Sequence[str] = (), allow_empty: bool = False) -> Config:
    """A config file resolved (defaults <- the file <- ``overrides``); errors name the file (an empty file is
    one, unless ``allow_empty``: see :func:`load_yaml`)."""
    return resolve(load_yaml(path, allow_empty), overrides, source=str(path))


def differences(a: Config, b: Config, name_a: str = "a", name_b: str = "b") -> str:
    """The keys where two configs differ, ``key: A (name_a) vs B (name_b)``, joined by ``; ``."""
    return "; ".join(f"{k}: {va!r} ({name_a}) vs {vb!r} ({name_b})" for k, va, vb in _diff(a.to_dict(), b.to_dict()))


def _diff(a: Mapping[str, Any], b: Mapping[str, Any], path: str = "") -> list[tuple[str, Any, Any]]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _diff(va, vb, f"{path}{k}.")
        elif va != vb:
            out.append((f"{path}{k}", va, vb))
    return out


def dump(cfg: Config | Mapping[str, Any]) -> str:
    """The resolved config as yaml, in section order (what is written to ``RUN_DIR/config.yaml``)."""
    plain = cfg.to_dict() if isinstance(cfg, Config) else cfg
    return yaml.safe_dump({k: dict(v) for k, v in plain.items()}, sort_keys=False)


def describe(components: bool = False) -> str:
    """Every section with its keys, types and defaults, and the registered names (for ``--help``).

    Without ``components`` only names are listed (nothing is imported: ``--help`` stays fast); with it,
    every component's parameters too (imports the implementations)."""
    lines = ["config sections (yaml paths; --set uses the same dotted paths):"]
    for section in all_sections():
        if section not in SECTIONS:
            schema = section_schema(section)
            keys = ", ".join(f"{k}={d!r}" if not dataclasses.is_dataclass(d) else
                             ", ".join(f"{k}.{n}={v!r}" for n, v in dataclasses.asdict(d).items())
                             for k, (_, d) in schema.items())
            task = CONFIG_SECTIONS.meta(section).get("task") if section in CONFIG_SECTIONS else None
            lines.append(f"  {section}{f' ({task} datasets only)' if task else ''}: {keys}")
            continue
        registry = SECTIONS[section]
        lines.append(f"  {section}.name: one of {', '.join(registry.names())} (default {DEFAULT_NAMES[section]!r})")
        if not components:
            continue
        common = registry.common()
        if common is not None:
            keys = ", ".join(f"{k}={d!r}" for k, (_, d) in signature_schema(common).items())
            lines.append(f"    {section} (every {registry.kind}): {keys}")
        for n in registry.names():
            params = signature_schema(registry.get(n), skip=registry.runtime)
            if params:
                lines.append(f"    {section} {n}: " + ", ".join(f"{k}={d!r}" for k, (_, d) in params.items()))
    return "\n".join(lines)
