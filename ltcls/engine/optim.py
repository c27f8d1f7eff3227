"""The optimizer of a stage, built with timm's ``create_optimizer_v2`` (``train.optimizer``: ``sgd``, ``adamw``,
``lamb``, ... every name ``timm.optim.list_optimizers()`` gives).

Parameter groups (timm's ``param_groups_weight_decay`` / ``param_groups_layer_decay``):

* ``train.no_weight_decay_1d``: no weight decay on 1-D parameters, biases and the backbone's
  ``no_weight_decay()`` names (null: on for every optimizer but ``sgd``, which decays every parameter as
  ltcls always did, so SGD configs keep their numbers: the default builds exactly
  ``torch.optim.SGD(params, lr, momentum, weight_decay, nesterov)`` over one group);
* ``train.layer_decay``: layer-wise lr decay, ``lr x decay ** (top - layer)`` over the layers of the backbone's
  timm ``group_matcher`` with the head as the top layer (BEiT's rule, timm's implementation);
* ``train.head_lr_mult``: the classifier head's parameters at ``lr x head_lr_mult``.

Each group's scale is folded into the group's own ``lr`` (and recorded as ``lr_scale``): the trainer's
``LambdaLR`` multiplies every group's initial lr by the same schedule factor, so warm-up and the cosine /
step schedule keep the ratios between groups. The head's groups come first, so ``param_groups[0]`` (the lr in
the progress bar and TensorBoard) is the head's.
"""

from __future__ import annotations

import torch
from timm.optim import (
    create_optimizer_v2,
    get_optimizer_info,
    list_optimizers,
    param_groups_layer_decay,
    param_groups_weight_decay,
)
from torch import nn

from ltcls.config import TrainConfig
from ltcls.models.backbone import LTModel

#: Optimizer names that are torch's SGD: weight decay on every parameter unless ``no_weight_decay_1d`` says so.
SGD_NAMES = ("sgd", "momentum")

#: A parameter group as torch optimizers take it (``params``, ``lr``, ``weight_decay``, ``lr_scale``).
ParamGroup = dict[str, object]


def scaled_lr(t: TrainConfig) -> float:
    """``train.lr``, scaled linearly from ``train.base_batch_size`` to the global ``train.batch_size`` if set."""
    return t.lr * t.batch_size / t.base_batch_size if t.base_batch_size else t.lr


def no_decay_1d(t: TrainConfig) -> bool:
    """Whether 1-D parameters and biases go without weight decay (``train.no_weight_decay_1d``, null: not SGD)."""
    return t.no_weight_decay_1d if t.no_weight_decay_1d is not None else t.optimizer not in SGD_NAMES


def check_optimizer(t: TrainConfig) -> None:
    """``train.optimizer`` is one of timm's, first-order, and takes the ``betas`` / ``eps`` given: a ``ValueError``
    naming the key otherwise (found before training starts)."""
    name = t.optimizer.split("_")[-1]  # timm's parsing: 'lookahead_adamw' is AdamW inside Lookahead
    prefix = t.optimizer[: -len(name) - 1]
    if name not in list_optimizers() or prefix not in ("", "lookahead"):
        raise ValueError(f"train.optimizer: unknown optimizer {t.optimizer!r} (timm's create_optimizer_v2 knows: "
                         f"{', '.join(list_optimizers())}; 'lookahead_' may prefix any)")
    info = get_optimizer_info(name)
    if info.second_order:
        raise ValueError(f"train.optimizer: {t.optimizer} is a second-order optimizer (it needs "
                         "loss.backward(create_graph=True)), which ltcls's training loop does not do")
    if t.betas is not None and (not info.has_betas or len(t.betas) != info.num_betas):
        want = f"{info.num_betas} betas" if info.has_betas else "no betas"
        raise ValueError(f"train.betas: {t.optimizer} takes {want}, got {t.betas} (null: its defaults)")
    if t.eps is not None and not info.has_eps:
        raise ValueError(f"train.eps: {t.optimizer} takes no eps, got {t.eps} (set train.eps: null)")


def param_groups(t: TrainConfig, module: nn.Module, lr: float) -> list[ParamGroup]:
    """The trainable parameters of ``module`` in groups (see the module docstring), each with its own ``lr``,
    ``weight_decay`` and ``lr_scale``; the head's first."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    is_lt = isinstance(module, LTModel)
    skip = module.no_weight_decay() if is_lt and no_decay_1d(t) else set()
    if t.layer_decay is not None:
        groups = param_groups_layer_decay(module, weight_decay=t.weight_decay, layer_decay=t.layer_decay,
                                          no_weight_decay_list=skip, weight_decay_exclude_1d=no_decay_1d(t))
    elif no_decay_1d(t):
        groups = param_groups_weight_decay(module, weight_decay=t.weight_decay, no_weight_decay_list=skip)
    else:
        groups = [{"params": trainable, "weight_decay": t.weight_decay}]
    head = {id(p) for p in module.classifier.parameters()} if is_lt else set()
    out: list[ParamGroup] = []
    for in_head in (True, False):
        for g in groups:
            params = [p for p in g["params"] if (id(p) in head) == in_head]
            scale = float(g.get("lr_scale", 1.0)) * (t.head_lr_mult if in_head else 1.0)
            if params:
                out.append({"params": params, "weight_decay": g["weight_decay"], "lr": lr * scale, "lr_scale": scale})
    return out


def _plain_sgd(t: TrainConfig) -> bool:
    """The configuration every SGD config had before optimizers were configurable: one group, decay on all."""
    return t.optimizer in SGD_NAMES and t.layer_decay is None and not no_decay_1d(t) and t.head_lr_mult == 1.0


def build_optimizer(t: TrainConfig, module: nn.Module) -> torch.optim.Optimizer:
    """``train.optimizer`` over the trainable parameters of ``module``, by timm's ``create_optimizer_v2``.

    The default (``sgd``, no layer decay, no 1-D exclusion, head at ``lr``) passes the plain parameter list, so
    timm builds ``torch.optim.SGD(params, lr, momentum, weight_decay, nesterov)`` exactly as ltcls always did."""
    check_optimizer(t)
    lr = scaled_lr(t)
    info = get_optimizer_info(t.optimizer.split("_")[-1])
    kwargs: dict[str, object] = {}
    if "nesterov" in (info.defaults or {}):  # timm's 'sgd' defaults to Nesterov; ltcls's train.nesterov decides
        kwargs["nesterov"] = t.nesterov and t.momentum > 0
    if t.betas is not None:
        kwargs["betas"] = tuple(t.betas)
    if t.eps is not None:
        kwargs["eps"] = t.eps
    params: list[object] = ([p for p in module.parameters() if p.requires_grad] if _plain_sgd(t)
                         else param_groups(t, module, lr))
    return create_optimizer_v2(params, opt=t.optimizer, lr=lr, weight_decay=t.weight_decay, momentum=t.momentum,
                               **kwargs)


def parameter_counts(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` numbers of parameters of ``module`` (shared tensors counted once)."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def describe_optimizer(t: TrainConfig, optimizer: torch.optim.Optimizer) -> str:
    """One log line: the optimizer, its groups' lr scales, and what weight decay applies to."""
    groups = optimizer.param_groups
    scales = [float(g.get("lr_scale", 1.0)) for g in groups]
    decayed = sum(len(g["params"]) for g in groups if g["weight_decay"])
    plain = sum(len(g["params"]) for g in groups if not g["weight_decay"])
    parts = [f"optimizer {t.optimizer} (timm), {len(groups)} parameter group{'s' * (len(groups) > 1)}"]
    if t.layer_decay is not None:
        parts.append(f"layer decay {t.layer_decay:g} (lr x {min(scales):.3g} .. {max(scales):.3g})")
    if t.head_lr_mult != 1.0:
        parts.append(f"head lr x {t.head_lr_mult:g}")
    parts.append(f"weight decay {t.weight_decay:g} on {decayed} tensors" + (
        f", none on {plain} (1-D, biases, no_weight_decay)" if plain else ""))
    return "; ".join(parts)
