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


def autocast(device: torch.device, enabled: bool, dtype: str = "float16"):
    """Mixed-precision autocast on CUDA when enabled (fp16 or bf16); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=_DTYPES[dtype])
    return nullcontext()


def train_one_epoch(model: nn.Module, loader: DataLoader, step_fn: Callable[[nn.Module, Any], Any],
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, *,
                    scaler: torch.amp.GradScaler | None = None, clip_grad_norm: float | None = None,
                    accum_steps: int = 1, log: Callable[[int, float, float, dict[str, float]], None] | None = None,
                    log_interval: int = 10, desc: str = "train", step: int = 0) -> dict[str, float]:
    """Train for one pass over ``loader``; ``step_fn(model, batch)`` returns a ``StepOutput`` (``loss``,
    ``num_samples``, named ``parts``; see ``ltcls.engine.tasks``); ``log(step, loss, lr, parts)`` is called
    every ``log_interval`` optimizer steps.

    With ``accum_steps`` > 1 the gradients of that many micro-batches are averaged before each
    optimizer step (DDP synchronizes only on the last one); a trailing incomplete group is dropped.
    Returns the mean loss, images/s (this process) and the global step after the epoch.
    """
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=not info().is_main)
    can_skip_sync = hasattr(model, "no_sync")
    usable = len(loader) - len(loader) % accum_steps
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
                raise FloatingPointError(f"loss is {loss_value} at step {step}; lower train.lr or check the data")
            parts = {k: float(v) for k, v in out.parts.items()}
            if log is not None:
                log(step, loss_value, lr, parts)
            bar.set_postfix(loss=f"{loss_value:.4f}", **{k: f"{v:.3f}" for k, v in parts.items()}, lr=f"{lr:.3g}",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}")
    total_loss = float(total_loss)
    if not math.isfinite(total_loss):
        raise FloatingPointError(f"loss became {total_loss} during the epoch; lower train.lr or check the data")
    elapsed = time.perf_counter() - start
    return {"loss": total_loss / max(seen, 1), "images_per_s": seen / max(elapsed, 1e-9), "step": step,
            "seconds": elapsed}


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
