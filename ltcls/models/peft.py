"""Parameter-efficient fine-tuning of a timm backbone (``model.peft``), and a frozen backbone (``model.freeze``).

The low-rank and scaling methods come from Hugging Face's ``peft`` library, through its support for custom
models: ``get_peft_model(backbone, config)`` wraps the timm model in a ``PeftModel`` (attributes such as
``num_features`` pass through to the timm model), marks only the adapter's parameters trainable, and
``merge_and_unload()`` folds the adapter back into plain timm layers for export (:func:`merge_adapters`).

* ``lora`` / ``dora``: ``LoraConfig`` (``use_dora`` for DoRA); B starts at zero, so the adapted model's outputs
  equal the backbone's before the first step;
* ``loha`` / ``lokr``: ``LoHaConfig`` / ``LoKrConfig``;
* ``ia3``: ``IA3Config`` (learned scaling vectors; ``feedforward_modules`` scale their input);
* ``ln_tuning``: ``LNTuningConfig`` on every LayerNorm of the backbone (peft trains a copy of each);
* ``bitfit``: written here (peft has no BitFit): only the backbone's biases train.

AdaptFormer (LIFT's adapter) and VPT are not in ``peft``; the LIFT configs use LoRA instead.
``peft`` imports ``transformers`` (3 to 6 s here), so it is imported only when a method needs it.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Sequence

from torch import nn

from ltcls.config import PeftConfig
from ltcls.registries import PEFT_METHODS

#: ``target_modules`` when the config leaves it null: timm ViTs' fused attention projection (LoRA on q, k and v
#: at once; LIFT puts LoRA on q and v) and, for IA3, the MLP's output layer as well.
DEFAULT_TARGETS = {"lora": ["qkv"], "dora": ["qkv"], "loha": ["qkv"], "lokr": ["qkv"], "ia3": ["qkv", "fc2"]}


def adapt_backbone(backbone: nn.Module, peft: PeftConfig, freeze: bool = False) -> nn.Module:
    """``backbone`` frozen (``freeze``) and adapted by ``peft.method``; returns the module to use as backbone
    (a ``PeftModel`` wrapping it for the ``peft`` library's methods)."""
    if freeze:
        backbone.requires_grad_(False)
    return PEFT_METHODS.get(peft.method)(backbone, peft)


def _targets(backbone: nn.Module, peft: PeftConfig) -> list[str]:
    targets = peft.target_modules if peft.target_modules is not None else DEFAULT_TARGETS[peft.method]
    names = [n for n, _ in backbone.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(f"model.peft.target_modules: no module of the backbone is named {', '.join(missing)} "
                         f"({type(backbone).__name__}; timm ViTs have qkv, proj, fc1, fc2)")
    return list(targets)


def _wrap(backbone: nn.Module, config: object) -> nn.Module:
    from peft import get_peft_model  # lazy: peft imports transformers (seconds); only PEFT runs pay for it

    return get_peft_model(backbone, config)


@PEFT_METHODS.register("none")
def no_peft(backbone: nn.Module, peft: PeftConfig) -> nn.Module:
    """The backbone as it is (full fine-tuning, or frozen with ``model.freeze``)."""
    return backbone


@PEFT_METHODS.register("lora")
def lora(backbone: nn.Module, peft: PeftConfig) -> nn.Module:
    """LoRA (Hu et al., 2022): ``W x + (alpha / r) B A x`` on the target layers, B initialized to zero."""
    from peft import LoraConfig  # lazy: see _wrap

    return _wrap(backbone, LoraConfig(r=peft.r, lora_alpha=peft.alpha, lora_dropout=peft.dropout,
                                      target_modules=_targets(backbone, peft), use_dora=peft.method == "dora"))


PEFT_METHODS.register("dora")(lora)  # DoRA (Liu et al., 2024): LoRA with a learned magnitude per output


@PEFT_METHODS.register("loha")
def loha(backbone: nn.Module, peft: PeftConfig) -> nn.Module:
    """LoHa: a low-rank Hadamard product update."""
    from peft import LoHaConfig  # lazy: see _wrap

    return _wrap(backbone, LoHaConfig(r=peft.r, alpha=peft.alpha, module_dropout=peft.dropout,
                                      target_modules=_targets(backbone, peft)))


@PEFT_METHODS.register("lokr")
def lokr(backbone: nn.Module, peft: PeftConfig) -> nn.Module:
    """LoKr: a low-rank Kronecker product update."""
    from peft import LoKrConfig  # lazy: see _wrap

    return _wrap(backbone, LoKrConfig(r=peft.r, alpha=peft.alpha, module_dropout=peft.dropout,
                                      target_modules=_targets(backbone, peft)))


@PEFT_METHODS.register("ia3")
def ia3(backbone: nn.Module, peft: PeftConfig) -> nn.Module:
    """IA3 (Liu et al., 2022): learned per-channel scales of the target layers' outputs (of the feed-forward
    layers' inputs)."""
    from peft import IA3Config  # lazy: see _wrap

    targets = _targets(backbone, peft)
    feedforward = peft.feedforward_modules if peft.feedforward_modules is not None else ["fc2"]
    if not set(feedforward) <= set(targets):
        raise ValueError(f"model.peft.feedforward_modules {feedforward} must be among model.peft.target_modules "
                         f"{targets} (IA3)")
    return _wrap(backbone, IA3Config(target_modules=targets, feedforward_modules=feedforward))


@PEFT_METHODS.register("ln_tuning")
def ln_tuning(backbone: nn.Module, peft: PeftConfig) -> nn.Module:
    """LayerNorm tuning (Zhao et al., 2024): only the LayerNorms' scales and shifts train. Targets every affine
    ``nn.LayerNorm`` by its full name (a suffix such as ``norm`` would also match timm's ``attn.norm``, an
    ``Identity``), or the modules named in ``target_modules``."""
    from peft import LNTuningConfig  # lazy: see _wrap

    names = peft.target_modules if peft.target_modules is not None else [
        n for n, m in backbone.named_modules() if isinstance(m, nn.LayerNorm) and m.elementwise_affine]
    if not names:
        raise ValueError(f"model.peft.method ln_tuning: the backbone ({type(backbone).__name__}) has no LayerNorm")
    pattern = "|".join(re.escape(n) for n in names) if peft.target_modules is None else None
    with warnings.catch_warnings():  # timm's LayerNorm subclasses nn.LayerNorm; peft copies it, which works
        warnings.filterwarnings("ignore", message="Unsupported layer type")
        return _wrap(backbone, LNTuningConfig(target_modules=pattern or names))


@PEFT_METHODS.register("bitfit")
def bitfit(backbone: nn.Module, peft: PeftConfig) -> nn.Module:
    """BitFit (Ben Zaken et al., 2022), by hand (peft has no BitFit): only parameters named ``*.bias`` train."""
    biases = 0
    for name, p in backbone.named_parameters():
        p.requires_grad_(name.endswith("bias"))
        biases += name.endswith("bias")
    if not biases:
        raise ValueError(f"model.peft.method bitfit: the backbone ({type(backbone).__name__}) has no bias")
    return backbone


def _peft_models(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, PeftModel)`` of every ``peft`` wrapper inside ``module`` (none if peft was never imported: then
    no module can hold one)."""
    if "peft" not in sys.modules:
        return []
    from peft import PeftModel  # lazy: already imported (see above)

    return [(n, m) for n, m in module.named_modules() if isinstance(m, PeftModel)]


def merge_adapters(module: nn.Module) -> nn.Module:
    """``module`` with every ``peft`` adapter inside folded into plain layers (``PeftModel.merge_and_unload``):
    the same function (to rounding) without the ``peft`` wrappers; changes ``module`` in place and returns it
    (or the merged model if ``module`` is itself a ``PeftModel``)."""
    found = _peft_models(module)
    for name, wrapper in sorted(found, key=lambda item: -item[0].count(".")):  # innermost first
        merged = wrapper.merge_and_unload()
        if not name:
            return merged
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, merged)
    return module


def adapter_names(module: nn.Module) -> Sequence[str]:
    """The ``peft`` method(s) applied inside ``module`` (e.g. ``['LORA']``), for reports."""
    return sorted({str(cfg.peft_type.value) for _, m in _peft_models(module) for cfg in m.peft_config.values()})


def base_model(backbone: nn.Module) -> tuple[nn.Module, str]:
    """The timm model inside a (peft-wrapped) backbone and the prefix of its parameter names there."""
    for name, wrapper in _peft_models(backbone):
        if not name:
            return wrapper.get_base_model(), "base_model.model."
    return backbone, ""
