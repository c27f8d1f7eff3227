"""Decoupled Gumbel stage 2 at 100 and 1000 classes: which re-training actually trains (issue 10, item 1).

Synthetic ImageNet-LT-shaped features (Pareto counts 1280 ... 5; class ``c``'s samples ``relu(mean_c + noise)``,
a fixed frozen "backbone"), a linear head trained with softmax CE (stage 1), then the head re-trained for the
same number of steps, random sampling, SGD momentum 0.9, weight decay 5e-4, by:

* ``softmax (more steps)``: CE again (the baseline: separates "more training" from "Gumbel");
* ``copy + GOL clamp``: the softmax head with GOL's detection form, summed over classes / N, clamped at 20 (ltcls's
  first ``--stage2 gumbel``);
* ``GOL init + GOL clamp``: the head re-initialized with GOL's init (w 0.001, b -2), the same clamped loss;
* ``copy, sum, no clamp``: the softmax head, summed over classes / N without the clamp (the second preset): at
  C classes a C-times larger step than the authors' loss;
* ``copy, mean (authors')``: the softmax head with ``DECOUPLED_GUMBEL``, averaged over N x C as the first
  author's classification code (kostas1515/iif ``classification/custom.py`` ``GombitLoss``, ``--reduction mean``;
  the preset now). All rows use the same ``--lr`` (default 0.01, a hundred times the preset's 1e-4).

Prints overall / many / medium / few top-1 (Kang's groups: > 100, 20..100, < 20 training images) on a balanced
test set (20 per class), the ratio of overall and the few-shot difference to the baseline, and the share of
test predictions that changed, averaged over seeds.

With ``--runs DIR`` it reads an ``ltcls-compare`` grid that has the ``ce`` and ``gumbel`` recipes instead
(``DIR/seed<S>/ce`` and ``DIR/seed<S>/gumbel``: the real ``--stage2 gumbel`` on a real stage 1) and prints, per
seed, stage 1 against stage 2: overall / few-shot top-1, the test predictions that changed and the classes whose
test accuracy changed.

    python benchmarks/bench_decoupled_gumbel.py [--classes 100 1000] [--seeds 0 1] [--steps 300] [--lr 0.01]
    python benchmarks/bench_decoupled_gumbel.py --runs runs/cmp_digits
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltcls.data.tools.make_split import pareto_counts
from ltcls.losses.base import build_loss
from ltcls.losses.gumbel import DECOUPLED_GUMBEL
from ltcls.stage2.inference import eval_dataset, load_run


def make_data(num_classes: int, dim: int, seed: int) -> dict[str, torch.Tensor | np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    counts = np.asarray(pareto_counts(num_classes, seed=seed))
    means = torch.randn(num_classes, dim, generator=g)
    train_y = torch.from_numpy(np.repeat(np.arange(num_classes), counts))
    test_y = torch.arange(num_classes).repeat_interleave(20)
    return {"counts": counts, "train_y": train_y, "test_y": test_y,
            "train_x": F.relu(means[train_y] + torch.randn(len(train_y), dim, generator=g)),
            "test_x": F.relu(means[test_y] + torch.randn(len(test_y), dim, generator=g))}


def train(data: dict, head: nn.Module, loss_fn, lr: float, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    for _ in range(steps):
        idx = torch.randint(0, len(data["train_y"]), (1024,), generator=g)
        loss = loss_fn(head(data["train_x"][idx]), data["train_y"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def report(data: dict, preds: torch.Tensor) -> dict[str, float]:
    y = data["test_y"]
    n = torch.from_numpy(data["counts"])[y]
    right = (preds == y).double()
    out = {"overall": right.mean().item() * 100}
    for name, mask in (("many", n > 100), ("medium", (n >= 20) & (n <= 100)), ("few", n < 20)):
        out[name] = right[mask].mean().item() * 100 if mask.any() else float("nan")
    return out


def run(num_classes: int, seed: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    torch.manual_seed(seed)
    data = make_data(num_classes, args.dim, seed)
    stage1 = nn.Linear(args.dim, num_classes)
    train(data, stage1, F.cross_entropy, args.stage1_lr, args.stage1_steps, seed)
    with torch.no_grad():
        before = stage1(data["test_x"]).argmax(1)
    clamped = build_loss("gumbel")
    variants = {"softmax (more steps)": ("copy", F.cross_entropy), "copy + GOL clamp": ("copy", clamped),
                "GOL init + GOL clamp": ("gol", clamped),
                "copy, sum, no clamp": ("copy", build_loss("gumbel", clamp_max=None)),
                "copy, mean (authors')": ("copy", build_loss(**DECOUPLED_GUMBEL))}
    rows = {"stage 1 (softmax)": {**report(data, before), "changed": 0.0}}
    for name, (init, loss) in variants.items():
        head = copy.deepcopy(stage1)
        if init == "gol":
            clamped.init_classifier(head)
        train(data, head, loss, args.lr, args.steps, seed + 1)
        with torch.no_grad():
            preds = head(data["test_x"]).argmax(1)  # Gumbel scores are monotone in the logits: same argmax
        rows[name] = {**report(data, preds), "changed": (preds != before).double().mean().item() * 100}
    return rows


def test_predictions(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A finished run's argmax predictions on its test split, and the labels."""
    run = load_run(run_dir)
    loader = torch.utils.data.DataLoader(eval_dataset(run, "test"), batch_size=256)
    preds, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            preds.append(run.loss.scores(run.model(x)).argmax(1))
            labels.append(y)
    return torch.cat(preds), torch.cat(labels)


def compare_runs(grid: Path) -> None:
    """Stage 1 (``ce``) against ``--stage2 gumbel`` in each seed of an ``ltcls-compare`` grid."""
    print(f"{'seed':>4} {'stage 1 overall / few':>22} {'gumbel overall / few':>21} {'predictions changed':>20} "
          f"{'classes changed':>16}")
    for seed_dir in sorted(grid.glob("seed*")):
        s1, s2 = seed_dir / "ce", seed_dir / "gumbel"
        if not (s1 / "metrics.json").is_file() or not (s2 / "metrics.json").is_file():
            continue
        m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (s1, s2))
        (p1, y), (p2, _) = test_predictions(s1), test_predictions(s2)
        classes = sum(a != b for a, b in zip(m1["per_class"], m2["per_class"]))
        print(f"{seed_dir.name:>4} {m1['overall']:10.1f} / {m1['few']:5.1f}    {m2['overall']:9.1f} / {m2['few']:5.1f} "
              f"{int((p1 != p2).sum()):>9} of {len(y):<8} {classes:>7} of {len(m1['per_class'])}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, metavar="DIR", help="an ltcls-compare grid with the ce and gumbel recipes")
    p.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--stage1-steps", type=int, default=300)
    p.add_argument("--stage1-lr", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.01)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.runs is not None:
        compare_runs(args.runs)
        return
    for c in args.classes:
        start = time.perf_counter()
        runs = [run(c, s, args) for s in args.seeds]
        mean = {k: {m: float(np.mean([r[k][m] for r in runs])) for m in runs[0][k]} for k in runs[0]}
        base = mean["softmax (more steps)"]
        print(f"\nC = {c}, seeds {args.seeds}, stage 2: {args.steps} steps at lr {args.lr} "
              f"({time.perf_counter() - start:.0f} s)")
        print(f"{'head':<22} {'overall':>7} {'many':>6} {'medium':>6} {'few':>6} {'changed %':>9} "
              f"{'overall / baseline':>18} {'few - baseline':>14}")
        for name, r in mean.items():
            print(f"{name:<22} {r['overall']:7.1f} {r['many']:6.1f} {r['medium']:6.1f} {r['few']:6.1f} "
                  f"{r['changed']:9.1f} {r['overall'] / base['overall']:18.2f} {r['few'] - base['few']:+14.1f}")


if __name__ == "__main__":
    main()
