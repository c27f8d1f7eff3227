"""Worker programs that tests launch under ``torchrun`` (not collected by pytest).

    dist_worker.py train -- ARGS...      run `ltcls-train ARGS` in float64
    dist_worker.py crash N -- ARGS...    the same, interrupted at the start of epoch N
    dist_worker.py stop N -- ARGS...     the same, stopped after optimizer step N as by SIGTERM (every rank)
    dist_worker.py seesaw OUT_DIR        feed rank-specific label shards to a Seesaw loss, write its counts

Training runs in float64 (default dtype; ToTensor follows it) so that comparisons across process
counts test the data split, the gradient averaging and the global state, not float32 rounding that
training amplifies (one float32 process with 1 vs 2 threads already differs by ~1e-4 in the weights).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def crash(epoch: int, argv: list[str]) -> int:
    import ltcls.engine.trainer as trainer_mod
    from ltcls.cli import main

    real, calls = trainer_mod.train_one_epoch, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    trainer_mod.train_one_epoch = interrupted
    try:
        return main(argv)
    except KeyboardInterrupt:
        return 3


def stop(step: int, argv: list[str]) -> int:
    import ltcls.engine.trainer as trainer_mod
    from ltcls.cli import main

    polls = iter(range(1, 10**9))
    trainer_mod.stop_requested = lambda: next(polls) == step  # polled once per optimizer step
    return main(argv)


def seesaw(out_dir: Path) -> int:
    from ltcls.losses.base import build_loss

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    loss = build_loss("seesaw", num_classes=5, class_counts=[1] * 5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):  # the same global batches on every rank; each rank takes its share
        labels = torch.randint(0, 5, (12,), generator=gen)
        logits = torch.randn(12, 5, generator=gen)
        loss(logits[rank::world], labels[rank::world])
    (out_dir / f"rank{rank}.json").write_text(json.dumps(loss.cum_samples.tolist()))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "seesaw":
        sys.exit(seesaw(Path(sys.argv[2])))
    torch.set_default_dtype(torch.float64)
    if sys.argv[1] == "crash":
        sys.exit(crash(int(sys.argv[2]), sys.argv[4:]))
    if sys.argv[1] == "stop":
        sys.exit(stop(int(sys.argv[2]), sys.argv[4:]))
    from ltcls.cli import main

    sys.exit(main(sys.argv[3:]))
