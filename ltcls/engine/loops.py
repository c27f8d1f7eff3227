"""Plain epoch loops: one training epoch and one pass of inference. The Trainer owns the state."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ltcls.engine.distributed import info

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


def train_one_epoch(model: nn.Module, loader: DataLoader, step_fn: Callable[[nn.Module, Any], Any],
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, *,
                    scaler: torch.amp.GradScaler | None = None, clip_grad_norm: float | None = None,
                    accum_steps: int = 1, log: Callable[[int, float, float, dict[str, float]], None] | None = None,
                    log_interval: int = 10, desc: str = "train", step: int = 0,
                    should_stop: Callable[[int], bool] | None = None, on_start: Callable[[], None] | None = None
                    ) -> dict[str, Any]:
    """Train for one pass over ``loader``; ``step_fn(model, batch)`` returns a ``StepOutput`` (``loss``,
    ``num_samples``, named ``parts``; see ``ltcls.engine.tasks``); ``log(step, loss, lr, parts)`` is called
    every ``log_interval`` optimizer steps.

    With ``accum_steps`` > 1 the gradients of that many micro-batches are averaged before each
    optimizer step (DDP synchronizes only on the last one); a trailing incomplete group is dropped.
    ``should_stop(step)`` is polled after each optimizer step (the safe point of an interrupt): when it is true
    the epoch ends there with ``interrupted`` set. ``on_start()`` runs once the loader's iterator exists,
    before the first batch (a mid-epoch resume restores the RNG state there: creating the iterator draws
    from it). Returns the mean loss, images/s (this process), the global step, the micro-batches consumed
    (``batches``) and ``interrupted``. A NaN / infinite loss raises :class:`NonFiniteLossError`.
    """
    total_loss, seen, start, first_step = 0.0, 0, time.perf_counter(), step
    iterator = iter(loader)
    if on_start is not None:
        on_start()
    bar = tqdm(iterator, total=len(loader), desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
               disable=not info().is_main)
    can_skip_sync = hasattr(model, "no_sync")
    usable = len(loader) - len(loader) % accum_steps
    interrupted, batches = False, 0
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar):
        if i >= usable:
            break
        last = (i + 1) % accum_steps == 0
        with model.no_sync() if (can_skip_sync and not last) else nullcontext():
            out = step_fn(model, batch)
            loss, n = out.loss, out.num_samples
            scaled = loss / accum_steps if accum_steps > 1 else loss
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total_loss += loss.detach() * n  # stays on the device: no host sync on every step
        seen += n
        batches = i + 1
        if not last:
            continue
        if scaler is not None:
            scaler.unscale_(optimizer)
        if clip_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        step += 1
        if step % log_interval == 0:
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(loss_value, step, True, first_step)
            parts = {k: float(v) for k, v in out.parts.items()}
            if log is not None:
                log(step, loss_value, lr, parts)
            bar.set_postfix(loss=f"{loss_value:.4f}", **{k: f"{v:.3f}" for k, v in parts.items()}, lr=f"{lr:.3g}",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}")
        if should_stop is not None and should_stop(step):
            interrupted = True
            break
    bar.close()
    total_loss = float(total_loss)
    if not math.isfinite(total_loss):
        raise NonFiniteLossError(total_loss, step, False, first_step)
    elapsed = time.perf_counter() - start
    return {"loss": total_loss / max(seen, 1), "images_per_s": seen / max(elapsed, 1e-9), "step": step,
            "seconds": elapsed, "batches": batches, "interrupted": interrupted}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, *, amp: bool = False,
            amp_dtype: str = "float16", desc: str = "eval", progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels of every sample of ``loader``, model in eval mode."""
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
                               disable=not (progress and info().is_main)):
        with autocast(device, amp, amp_dtype):
            logits = model(images.to(device, non_blocking=True))
        all_logits.append(logits.float().cpu())
        all_labels.append(labels)
    model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_labels)
