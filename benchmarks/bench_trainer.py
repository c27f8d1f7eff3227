"""One epoch (+ test pass) of ltcls's Trainer vs a bare PyTorch loop, same model, data and batch size.

The bare loop is what a user would write by hand: the same dataset object and transforms, a shuffled
DataLoader, SGD with the same hyper-parameters, then an argmax pass over the test split. ltcls adds
its sampler, lr schedule, tqdm, TensorBoard-free logging, the per-epoch atomic checkpoint and the
many/medium/few report. Runs alternate (trainer, bare, trainer, ...) and the median of each is taken.

    python benchmarks/bench_trainer.py [--repeats 3] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ltcls import config as C
from ltcls.engine import Stage, Trainer, build_run, build_task, seed_everything
from ltcls.engine.trainer import resolve_device
from ltcls.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def time_trainer(cfg: C.Config) -> float:
    data, model, loss = build_run(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, data, cfg, RunDir(tmp), build_task(cfg))
        start = time.perf_counter()
        trainer.fit([Stage("stage1", loss, cfg.train, cfg.sampler)])
        return time.perf_counter() - start


def time_bare(cfg: C.Config) -> float:
    data, model, _ = build_run(cfg)
    t = cfg.train
    device = resolve_device(t.device)
    model.to(device)
    seed_everything(t.seed)
    train = DataLoader(data.train, batch_size=t.batch_size, shuffle=True, num_workers=t.num_workers,
                       drop_last=len(data.train) >= t.batch_size)
    test = DataLoader(data.test, batch_size=cfg.eval.batch_size, num_workers=t.num_workers)
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    start = time.perf_counter()
    model.train()
    for images, labels in train:
        images, labels = images.to(device), labels.to(device)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in test:
            correct += (model(images.to(device)).argmax(1).cpu() == labels).sum().item()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits_lt_ce.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        help="config overrides (default: balanced digits, 1440 images, so the epoch is not tiny)")
    args = parser.parse_args()
    overrides = ["data.imbalance_factor=1", "train.epochs=1", "eval.interval=0", "train.warmup_epochs=0",
                 *args.overrides]
    cfg = C.load(args.config, overrides)
    logging.disable(logging.INFO)
    time_bare(cfg)  # warm-up: imports, allocator, thread pools
    trainer_t, bare_t = [], []
    for _ in range(args.repeats):
        trainer_t.append(time_trainer(cfg))
        bare_t.append(time_bare(cfg))
    tr, ba = statistics.median(trainer_t), statistics.median(bare_t)
    print(f"model {cfg.model.name}, data {cfg.data.name}, batch {cfg.train.batch_size}, "
          f"device {resolve_device(cfg.train.device)}, torch threads {torch.get_num_threads()}")
    print(f"ltcls trainer  epoch+eval: median {tr:.3f}s  runs {[round(x, 3) for x in trainer_t]}")
    print(f"bare loop      epoch+eval: median {ba:.3f}s  runs {[round(x, 3) for x in bare_t]}")
    print(f"ratio trainer / bare: {tr / ba:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
