"""The plain training loop: one epoch of optimizer steps. The Trainer owns the state."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ltcls.engine.distributed import info
from ltcls.results import EpochStats

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite. ``step`` is the optimizer step where it was seen (``exact``:
    that step; otherwise it was seen in the epoch's mean, somewhere after ``first_step``), ``value`` the loss."""

    def __init__(self, value: float, step: int, exact: bool, first_step: int) -> None:
        self.value, self.step, self.exact, self.first_step = value, step, exact, first_step
        where = f"at step {step}" if exact else f"in steps {first_step + 1}..{step}"
        super().__init__(f"the training loss is {value} {where}")


def autocast(device: torch.device, enabled: bool, dtype: str = "float16"):
    """Mixed-precision autocast on CUDA when enabled (fp16 or bf16); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=_DTYPES[dtype])
    return nullcontext()


@dataclass
class StepOptions:
    """How an optimizer step is taken: gradient scaler (fp16 AMP), gradient clipping, micro-batches per step,
    and DDP's ``no_sync`` (gradients are synchronized on the last micro-batch of a step only)."""

    scaler: torch.amp.GradScaler | None = None
    clip_grad_norm: float | None = None
    accum_steps: int = 1
    no_sync: Callable[[], AbstractContextManager] | None = None


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, opts: StepOptions) -> float:
    """Unscale (AMP), clip, step the optimizer and the schedule, zero the gradients; returns the lr used."""
    if opts.scaler is not None:
        opts.scaler.unscale_(optimizer)
    if opts.clip_grad_norm:
        nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad_norm)
    if opts.scaler is not None:
        opts.scaler.step(optimizer)
        opts.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    return lr


def train_one_epoch(model: nn.Module, loader: DataLoader, step_fn: Callable[[nn.Module, Any], Any],
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    opts: StepOptions, *, log: Callable[[int, float, float, dict[str, float]], None] | None = None,
                    log_interval: int = 10, desc: str = "train", step: int = 0,
                    should_stop: Callable[[int], bool] | None = None, on_start: Callable[[], None] | None = None
                    ) -> EpochStats:
    """Train for one pass over ``loader``; ``step_fn(model, batch)`` returns a ``StepOutput`` (``loss``,
    ``num_samples``, named ``parts``; see ``ltcls.engine.tasks``); ``log(step, loss, lr, parts)`` is called
    every ``log_interval`` optimizer steps.

    With ``opts.accum_steps`` > 1 the gradients of that many micro-batches are averaged before each
    optimizer step (DDP synchronizes only on the last one); a trailing incomplete group is dropped.
    ``should_stop(step)`` is polled after each optimizer step (the safe point of an interrupt): when it is true
    the epoch ends there with ``interrupted`` set. ``on_start()`` runs once the loader's iterator exists,
    before the first batch (a mid-epoch resume restores the RNG state there: creating the iterator draws
    from it). A NaN / infinite loss raises :class:`NonFiniteLossError`.
    """
    total_loss, seen, start, first_step = 0.0, 0, time.perf_counter(), step
    iterator = iter(loader)
    if on_start is not None:
        on_start()
    bar = tqdm(iterator, total=len(loader), desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
               disable=not info().is_main)
    accum = opts.accum_steps
    usable = len(loader) - len(loader) % accum
    interrupted, batches = False, 0
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar):
        if i >= usable:
            break
        last = (i + 1) % accum == 0
        with opts.no_sync() if (opts.no_sync is not None and not last) else nullcontext():
            out = step_fn(model, batch)
            scaled = out.loss / accum if accum > 1 else out.loss
            (opts.scaler.scale(scaled) if opts.scaler is not None else scaled).backward()
        total_loss += out.loss.detach() * out.num_samples  # stays on the device: no host sync on every step
        seen += out.num_samples
        batches = i + 1
        if not last:
            continue
        lr = optimizer_step(model, optimizer, scheduler, opts)
        step += 1
        if step % log_interval == 0:
            _log_step(out, step, lr, first_step, seen / (time.perf_counter() - start), bar, log)
        if should_stop is not None and should_stop(step):
            interrupted = True
            break
    bar.close()
    total_loss = float(total_loss)
    if not math.isfinite(total_loss):
        raise NonFiniteLossError(total_loss, step, False, first_step)
    elapsed = time.perf_counter() - start
    return EpochStats(total_loss / max(seen, 1), seen / max(elapsed, 1e-9), step, elapsed, batches, interrupted)


def _log_step(out: Any, step: int, lr: float, first_step: int, images_per_s: float, bar: tqdm,
              log: Callable[[int, float, float, dict[str, float]], None] | None) -> None:
    """Check the loss of a logged step (a non-finite one raises) and report it to ``log`` and the progress bar."""
    loss_value = out.loss.item()
    if not math.isfinite(loss_value):
        raise NonFiniteLossError(loss_value, step, True, first_step)
    parts = {k: float(v) for k, v in out.parts.items()}
    if log is not None:
        log(step, loss_value, lr, parts)
    bar.set_postfix(loss=f"{loss_value:.4f}", **{k: f"{v:.3f}" for k, v in parts.items()}, lr=f"{lr:.3g}",
                    img_s=f"{images_per_s:.0f}")
