"""Training throughput with N processes under torchrun (gloo on CPU) vs one process, same global batch.

Runs the default job's model on balanced digits (1440 images) for a few epochs in each mode, in the
same run, and reads the per-epoch images/s that the trainer logs (each process's images/s times the
number of processes; the first epoch is left out as warm-up). One process uses every core through
intra-op threads; N processes get cores / N threads each.

    python benchmarks/bench_distributed.py [--nproc 2] [--epochs 3] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(nproc: int, work_dir: Path, overrides: list[str]) -> float:
    args = ["--config", str(ROOT / "configs" / "digits_lt_ce.yaml"), "--work-dir", str(work_dir), "--set",
            *overrides]
    threads = max((os.cpu_count() or 1) // nproc, 1)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if nproc == 1:
        cmd = [sys.executable, "-m", "ltcls.cli", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "ltcls.cli", "train", *args]
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
    rates = [float(m) for m in re.findall(r"([\d.]+) img/s", (work_dir / "train.log").read_text())]
    return statistics.median(rates[1:]) * nproc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[])
    args = parser.parse_args()
    overrides = ["data.imbalance_factor=1", f"train.epochs={args.epochs}", "eval.interval=0", "train.batch_size=64",
                 "train.num_workers=0", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, Path(tmp) / "one", overrides)
        many = run(args.nproc, Path(tmp) / "many", overrides)
    print(f"{os.cpu_count()} cores; global batch 64; model from configs/digits_lt_ce.yaml")
    print(f"1 process:  {one:8.1f} img/s")
    print(f"{args.nproc} processes: {many:8.1f} img/s   ratio {many / one:.2f}")


if __name__ == "__main__":
    main()
