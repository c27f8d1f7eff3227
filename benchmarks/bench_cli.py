"""Command-line start-up: CPU time of ``--help`` and of config errors against ``import torch`` (the baseline),
measured in the same run.

The command line imports only torch-free layers (config, registries, stage-2 presets, plug-in declarations)
before it has a run to start, so ``--help`` and a config error need not pay for torch, timm, torchvision,
matplotlib or pycocotools. Each command runs in a fresh interpreter; the CPU time (user + system) of the child
process is taken from ``resource.getrusage(RUSAGE_CHILDREN)``; the median of ``--repeat`` runs is printed.

    python benchmarks/bench_cli.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent


def cpu_seconds(cmd: list[str]) -> float:
    """User + system CPU seconds of one run of ``cmd`` (its exit status is not checked: errors are the point)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fixed = Path(tmp) / "fixed.yaml"
        fixed.write_text("train:\n  epochs: ten\n")
        named = Path(tmp) / "named.yaml"
        named.write_text("loss:\n  name: seesaw\n  pp: 0.8\n")
        train = str(BIN / "ltcls-train")
        cases = {
            "python -c 'import torch' (baseline)": [sys.executable, "-c", "import torch"],
            "python -c 'import ltcls' ": [sys.executable, "-c", "import ltcls"],
            "ltcls-train --help": [train, "--help"],
            "ltcls-data --help": [str(BIN / "ltcls-data"), "--help"],
            "ltcls-train: error in train.epochs (fixed section)": [train, "--config", str(fixed)],
            "ltcls-train: error in loss.pp (a loss's parameter)": [train, "--config", str(named)],
        }
        cpu_seconds(cases["ltcls-train --help"])  # warm the file cache
        results = {name: statistics.median(cpu_seconds(cmd) for _ in range(args.repeat)) for name, cmd in cases.items()}
    torch_s = results["python -c 'import torch' (baseline)"]
    print(f"{'command':<55} {'CPU s':>7} {'vs import torch':>16}")
    for name, seconds in results.items():
        print(f"{name:<55} {seconds:7.2f} {seconds / torch_s:15.2f}x")


if __name__ == "__main__":
    main()
