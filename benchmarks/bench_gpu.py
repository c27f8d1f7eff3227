"""GPU throughput: ltcls's Trainer vs a bare PyTorch loop, ResNet-50 at 224, AMP + channels_last.

ImageNet-LT-shaped synthetic data (1000 classes, exponential profile from 1280 down to 5 images per
class) held as one uint8 tensor in pinned memory, so decoding is out of the picture and the figure is
the training step itself. Both loops use the same model, batch, optimizer and precision, in the same
run; the bare loop is the practical ceiling of the model on this GPU (no sampler, no logging, no
checkpoint). The theoretical ceiling printed beside it is model FLOPs (3x forward for a training step)
over the GPU's dense bf16/fp16 peak given with --peak-tflops.

    python benchmarks/bench_gpu.py [--batch 256] [--steps 50] [--amp-dtype bfloat16] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ltcls import config as C
from ltcls.data.build import DataSplits
from ltcls.data.tools.profiles import lt_counts
from ltcls.engine import Stage, Trainer, build_model, build_task
from ltcls.engine.loops import train_one_epoch
from ltcls.losses.base import build_loss
from ltcls.rundir import RunDir


class SyntheticLT(Dataset):
    """Random uint8 images (one shared pool, indexed modulo its size) with long-tailed labels."""

    in_memory = False

    def __init__(self, counts: list[int], img_size: int, pool: int = 512) -> None:
        self.targets = np.repeat(np.arange(len(counts)), counts)
        self.num_classes = len(counts)
        self.images = torch.randint(0, 256, (pool, 3, img_size, img_size), dtype=torch.uint8)
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.targets, minlength=self.num_classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return (self.images[i % len(self.images)].float() - self.mean) / self.std, int(self.targets[i])


def bare_loop(model, loader, steps: int, amp_dtype: torch.dtype, lr: float) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    model.train()
    it = iter(loader)
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            start = time.perf_counter()
        images, labels = next(it)
        images = images.cuda(non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=amp_dtype):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    torch.cuda.synchronize()
    return steps * loader.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16/fp16 tensor peak of the GPU (H100 SXM: 989; H200: 989)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    logging.disable(logging.INFO)
    torch.backends.cudnn.benchmark = True
    counts = lt_counts(1000, 256.0, "exp", 1280)  # 1280 .. 5 images per class, as ImageNet-LT
    steps_per_epoch = args.steps + 5
    data = SyntheticLT(counts, args.img_size)
    n = steps_per_epoch * args.batch
    data.targets = data.targets[np.random.RandomState(0).permutation(len(data.targets))[:n]]
    splits = DataSplits(train=data, test=data)
    cfg = C.resolve({"model": {"name": args.model}, "data": {"name": "digits_lt"},
                     "train": {"epochs": 1, "batch_size": args.batch, "lr": 0.2, "amp": True,
                               "amp_dtype": args.amp_dtype, "channels_last": True, "num_workers": args.workers,
                               "log_interval": 10**9, "device": "cuda", "warmup_epochs": 0}})
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, num_workers=args.workers, pin_memory=True,
                        drop_last=True, persistent_workers=True)
    model = build_model(cfg, 1000).cuda().to(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
    bare = bare_loop(model, loader, args.steps, dtype, 0.2)

    model = build_model(cfg, 1000)
    loss = build_loss("ce", num_classes=1000, class_counts=data.class_counts.tolist())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, splits, cfg, RunDir(tmp), build_task(cfg))
        stage = Stage("bench", loss, cfg.train, cfg.sampler)
        state = trainer._setup(0, stage)
        step_fn = trainer._step_fn(stage, state)
        for epoch in range(2):  # the first epoch warms up cudnn and the allocator; the second is measured
            state.sampler.set_epoch(epoch)
            trainer._set_mode(stage)
            stats = train_one_epoch(state.wrapped, state.loader, step_fn, state.optimizer, state.scheduler,
                                    state.opts, log_interval=10**9)
    # images/s of a whole epoch, DataLoader worker start-up included (ltcls does not keep workers alive)
    ltcls_ips = stats.images_per_s
    from torch.utils.flop_counter import FlopCounterMode

    probe = build_model(cfg, 1000).cuda()
    with FlopCounterMode(display=False) as fc:
        probe(torch.randn(1, 3, args.img_size, args.img_size, device="cuda"))
    train_flops = 3 * fc.get_total_flops()
    ceiling = args.peak_tflops * 1e12 / train_flops
    print(f"{torch.cuda.get_device_name()}  {args.model} {args.img_size}px batch {args.batch} "
          f"{args.amp_dtype} channels_last")
    print(f"bare PyTorch loop: {bare:8.0f} img/s")
    print(f"ltcls trainer:     {ltcls_ips:8.0f} img/s   ratio {ltcls_ips / bare:.3f} (target >= 0.95)")
    print(f"FLOP ceiling:      {ceiling:8.0f} img/s   ({train_flops / 1e9:.1f} GFLOP per training image at "
          f"{args.peak_tflops:.0f} TFLOP/s); bare loop reaches {100 * bare / ceiling:.1f}% of it")


if __name__ == "__main__":
    main()
