"""Forward + backward time and peak memory of ltcls's Seesaw loss against two baselines, in one run.

* ``ce``: plain ``F.cross_entropy`` on the same logits (the floor any softmax loss pays);
* ``CxC``: the reference formulation, written below as mmpretrain's ``seesaw_ce_loss`` computes it: the
  full C x C ratio matrix every step, float masks multiplied in, then the batch's rows gathered. Its
  count update uses ``torch.bincount`` like ltcls (mmpretrain loops over the unique labels in Python,
  which would only add to its time), so the comparison is of the loss computation itself.

Labels are drawn from an exponential long-tailed profile (imbalance 100) and the counts start from
ten epochs of that profile, so the mitigation factor is active. Time is the minimum (and the median)
of ``--reps`` forward + backward passes after warm-up (fewer where they would take more than
``--budget`` seconds), the three taking turns. Peak memory is the most memory allocated above the
start of one forward + backward: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the allocator's
running total as recorded by ``torch.profiler`` (``profile_memory=True``, "Total Allocated" of its
memory events), measured in a separate, untimed pass.

    python benchmarks/bench_losses.py --device cpu            # N=512, C = 1000, 1203, 8142
    python benchmarks/bench_losses.py --device cpu --quick    # fewer repetitions, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ltcls.losses.base import build_loss


def reference_seesaw_cxc(cls_score: torch.Tensor, labels: torch.Tensor, cum_samples: torch.Tensor, p: float = 0.8,
                         q: float = 2.0, eps: float = 1e-2) -> torch.Tensor:
    """mmpretrain's ``seesaw_ce_loss`` (mean reduction, no sample weights): the C x C baseline."""
    num_classes = cls_score.size(-1)
    onehot_labels = F.one_hot(labels, num_classes)
    seesaw_weights = cls_score.new_ones(onehot_labels.size())
    if p > 0:
        sample_ratio_matrix = cum_samples[None, :].clamp(min=1) / cum_samples[:, None].clamp(min=1)
        index = (sample_ratio_matrix < 1.0).float()
        sample_weights = sample_ratio_matrix.pow(p) * index + (1 - index)
        seesaw_weights = seesaw_weights * sample_weights[labels.long(), :]
    if q > 0:
        scores = F.softmax(cls_score.detach(), dim=1)
        self_scores = scores[torch.arange(0, len(scores), device=scores.device).long(), labels.long()]
        score_matrix = scores / self_scores[:, None].clamp(min=eps)
        index = (score_matrix > 1.0).float()
        seesaw_weights = seesaw_weights * (score_matrix.pow(q) * index + (1 - index))
    cls_score = cls_score + (seesaw_weights.log() * (1 - onehot_labels))
    return F.cross_entropy(cls_score, labels, reduction="none").mean()


def long_tailed_probs(num_classes: int, imbalance: float = 100.0) -> torch.Tensor:
    """Class probabilities of the exponential profile ``n_i = (1/imbalance)**(i/(C-1))`` (LDAM-DRW)."""
    n = (1.0 / imbalance) ** (torch.arange(num_classes, dtype=torch.float64) / max(num_classes - 1, 1))
    return n / n.sum()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(steps: dict[str, Callable[[], None]], device: torch.device, reps: int, warmup: int,
            budget_s: float) -> dict[str, tuple[float, float]]:
    """(minimum, median) milliseconds per step over ``reps`` repetitions (at least 5, fewer than ``reps``
    if a repetition of all steps would exceed ``budget_s / reps``). The steps take turns in every
    repetition (rotating the order) so that load from other processes falls on all of them alike; the
    minimum is the estimate least affected by such load, the median shows how much there was."""
    names = list(steps)
    t0 = time.perf_counter()
    for _ in range(warmup):
        for name in names:
            steps[name]()
    _sync(device)
    per_rep = (time.perf_counter() - t0) / max(warmup, 1)
    reps = max(5, min(reps, int(budget_s / max(per_rep, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            t0 = time.perf_counter()
            steps[name]()
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def peak_mib(step: Callable[[], None], device: torch.device) -> float:
    """Most memory allocated above the starting point during one call of ``step``, in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max([0, *totals]) / 2**20


def bench_one(num_samples: int, num_classes: int, device: torch.device, reps: int, warmup: int, budget_s: float,
              seed: int = 0) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    probs = long_tailed_probs(num_classes)
    labels = torch.multinomial(probs, num_samples, replacement=True, generator=gen).to(device)
    logits = (2.0 * torch.randn(num_samples, num_classes, generator=gen)).to(device).requires_grad_()
    start_counts = (probs * 10 * 50 * num_classes).round()  # ten epochs of a ~50-images-per-class dataset

    seesaw = build_loss("seesaw", num_classes=num_classes).to(device)
    seesaw.cum_samples.copy_(start_counts.long())
    ref_counts = start_counts.float().to(device)

    def step_ce() -> None:
        F.cross_entropy(logits, labels).backward()
        logits.grad = None

    def step_seesaw() -> None:
        seesaw(logits, labels).backward()
        logits.grad = None

    def step_cxc() -> None:
        ref_counts.add_(torch.bincount(labels, minlength=num_classes).float())
        reference_seesaw_cxc(logits, labels, ref_counts).backward()
        logits.grad = None

    steps = {"ce": step_ce, "seesaw": step_seesaw, "cxc": step_cxc}
    row: dict[str, float] = {"C": num_classes}
    for name, (best, median) in time_ms(steps, device, reps, warmup, budget_s).items():
        row[f"{name}_ms"], row[f"{name}_median_ms"] = best, median
        row[f"{name}_mib"] = peak_mib(steps[name], device)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="5 repetitions after 1 warm-up (smoke run)")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 1203, 8142])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--budget", type=float, default=15.0, help="seconds of timed runs per class count, at most")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reps, warmup, budget = (5, 1, 2.0) if args.quick else (args.reps, 3, args.budget)

    print(f"Seesaw forward+backward, N={args.num_samples}, device={args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; ms = minimum (median) of up to {reps} runs")
    print("| C | CE ms | seesaw ms | CxC ms | seesaw / CE | CxC / seesaw | CE MiB | seesaw MiB | CxC MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for num_classes in args.classes:
        r = bench_one(args.num_samples, num_classes, device, reps, warmup, budget)
        ms = {k: f"{r[f'{k}_ms']:.2f} ({r[f'{k}_median_ms']:.2f})" for k in ("ce", "seesaw", "cxc")}
        print(f"| {num_classes} | {ms['ce']} | {ms['seesaw']} | {ms['cxc']} | "
              f"{r['seesaw_ms'] / r['ce_ms']:.2f}x | {r['cxc_ms'] / r['seesaw_ms']:.1f}x | "
              f"{r['ce_mib']:.1f} | {r['seesaw_mib']:.1f} | {r['cxc_mib']:.1f} |")


if __name__ == "__main__":
    main()
