"""glyphs_lt: the time to generate the default set, and the shipped CE run (configs/glyphs_lt_ce.yaml) against
the default job (configs/digits_lt_ce.yaml, 31 s on the quiet 2-core machine: README) in the same session, with
each run's overall / many / medium / few top-1.

On a shared machine the wall times move with the load; the ratio to the digits run, measured in the same
session, is the steadier figure (quiet estimate = ratio x the digits job's quiet time).

    python benchmarks/bench_glyphs_lt.py [--seeds 0 1] [--root DIR] [--set key=value ...]

``--root`` re-uses (or generates once into) a data folder; without it the set is generated into a temporary
folder and timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ltcls import config as C
from ltcls.data.datasets.glyphs_lt import GlyphsSpec, load_or_generate

ROOT = Path(__file__).resolve().parents[1]
GLYPHS = ROOT / "configs" / "glyphs_lt_ce.yaml"
DIGITS = ROOT / "configs" / "digits_lt_ce.yaml"


def train(config: Path, work_dir: Path, overrides: list[str]) -> tuple[float, dict[str, float]]:
    """Wall seconds of one ``ltcls-train`` process (start-up included) and its final top-1 by group."""
    cmd = [sys.executable, "-m", "ltcls.cli.train", "--config", str(config), "--work-dir", str(work_dir)]
    if overrides:
        cmd += ["--set", *overrides]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    metrics = json.loads((work_dir / "metrics.json").read_text())
    return seconds, {k: float(metrics[k]) for k in ("overall", "many", "medium", "few")}


def spec_of(overrides: list[str]) -> GlyphsSpec:
    data = C.load(GLYPHS, overrides).data.to_dict()
    return GlyphsSpec(**{k: data[k] for k in GlyphsSpec.__dataclass_fields__})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="train.seed of each CE run")
    parser.add_argument("--root", default=None, help="data folder to use (default: a temporary one, timed)")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], help="overrides for glyphs_lt_ce.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or Path(tmp) / "data")
        overrides = [f"data.root={root}", *args.overrides]
        start = time.perf_counter()
        data = load_or_generate(root, spec_of(overrides), progress=True)
        generation = time.perf_counter() - start
        print(f"generation: {generation:.1f} s wall ({data.meta['seconds']} s when generated), "
              f"{len(data.labels['train']):,} train / {len(data.labels['val']):,} val / "
              f"{len(data.labels['test']):,} test images", flush=True)
        digits, _ = train(DIGITS, Path(tmp) / "digits", [])
        print(f"digits_lt default job (baseline): {digits:.1f} s", flush=True)
        print("| run | wall | / digits job | overall | many | medium | few |\n|---|---:|---:|---:|---:|---:|---:|")
        for seed in args.seeds:
            seconds, acc = train(GLYPHS, Path(tmp) / f"glyphs_{seed}", [*overrides, f"train.seed={seed}"])
            print(f"| glyphs_lt CE, train.seed {seed} | {seconds:.0f} s | {seconds / digits:.1f} | "
                  + " | ".join(f"{acc[k]:.1f}" for k in ("overall", "many", "medium", "few")) + " |", flush=True)


if __name__ == "__main__":
    main()
