"""CE vs Seesaw vs GOL Mask R-CNN on shapes-LVIS over several seeds (quality, not speed).

For each seed s, shapes-LVIS is generated with seed s (``ltcls-data make-shapes-lvis``: which shape x colour
categories are rare, common or frequent changes with the seed) and every variant trains on it with
``train.seed = s``, end to end, then LVIS's federated evaluation on its val split. Prints, per variant, the
mean and sample standard deviation over the seeds of segm AP / APr / APc / APf and bbox AP / APr / APc / APf,
and for every variant after the first the paired difference against the first (mean, min and max over seeds).

    python benchmarks/bench_shapes_lvis.py --work-dir /tmp/shapes_bench          # ce, seesaw, gol; seeds 0 1
    python benchmarks/bench_shapes_lvis.py --work-dir /tmp/b --seeds 0 1 2 --variant ce=shapes_lvis_ce \
        --variant seesaw_unit=shapes_lvis_seesaw:classifier.init_norm=1.0

Runs go one per process with one torch thread each, ``--jobs`` at a time, under ``nice``; a run whose
``metrics.json`` exists in the work directory is read, not trained again (the sweep can be stopped and restarted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ltcls.detection.shapes_lvis import make_shapes_lvis

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("AP", "APr", "APc", "APf", "bbox_AP", "bbox_APr", "bbox_APc", "bbox_APf")
DEFAULT_VARIANTS = ["ce=shapes_lvis_ce", "seesaw=shapes_lvis_seesaw", "gol=shapes_lvis_gol"]


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    """``NAME=CONFIG[:key=value:key=value...]`` -> (name, config path, overrides)."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise SystemExit(f"--variant {text!r}: expected NAME=CONFIG[:key=value...]")
    config, *overrides = rest.split(":")
    path = Path(config) if config.endswith(".yaml") else ROOT / "configs" / f"{config}.yaml"
    if not path.is_file():
        raise SystemExit(f"--variant {text!r}: no config file {path}")
    return name, str(path), overrides


def dataset(work_dir: Path, seed: int) -> Path:
    """shapes-LVIS of ``seed`` under ``work_dir`` (generated once)."""
    root = work_dir / f"shapes_lvis_s{seed}"
    if not (root / "annotations" / "lvis_v1_train.json").is_file():
        make_shapes_lvis(root, seed=seed, overwrite=True)
    return root


def train(config: str, overrides: list[str], seed: int, data_root: Path, work_dir: Path, threads: int, nice: int
          ) -> dict:
    """Train one run in a child process (or read the metrics of a finished one); return its metrics.json."""
    metrics = work_dir / "metrics.json"
    if not metrics.is_file():
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        code = "import sys; from ltcls.cli import train_main; sys.exit(train_main(sys.argv[1:]))"
        ann = data_root / "annotations"
        argv = ["nice", "-n", str(nice), sys.executable, "-c", code, "--config", config, "--work-dir", str(work_dir),
                "--set", f"train.seed={seed}", f"data.root={data_root}", f"data.train_ann={ann / 'lvis_v1_train.json'}",
                f"data.val_ann={ann / 'lvis_v1_val.json'}", "eval.interval=0", *overrides]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(metrics.read_text())


def summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):5.1f} +- {spread:4.1f}"


def print_table(variants: list[tuple[str, str, list[str]]], results: dict[str, dict[int, dict]],
                seeds: list[int]) -> None:
    print(f"{'variant':<14}" + "".join(f"{k:>15}" for k in KEYS))
    for name, _, _ in variants:
        print(f"{name:<14}" + "".join(f"{summary([results[name][s][k] for s in seeds]):>15}" for k in KEYS))
    base = variants[0][0]
    for name, _, _ in variants[1:]:
        diffs = {k: [results[name][s][k] - results[base][s][k] for s in seeds] for k in KEYS}
        print(f"{name + ' - ' + base:<14}" + "".join(
            f"{statistics.mean(d):>+6.1f} [{min(d):+.1f},{max(d):+.1f}]".rjust(15) for d in diffs.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True, help="datasets and run directories (kept)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variant", action="append", default=None,
                        help="NAME=CONFIG[:key=value...], CONFIG a file in configs/ without .yaml or a "
                             "yaml path; repeatable; the first is the baseline (default: "
                             + " ".join(DEFAULT_VARIANTS) + ")")
    parser.add_argument("--set", dest="common", nargs="+", default=[], help="overrides for every variant")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the runs (a shared machine)")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    roots = {s: dataset(args.work_dir, s) for s in args.seeds}
    results: dict[str, dict[int, dict]] = {name: {} for name, _, _ in variants}
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {(name, seed): pool.submit(train, config, [*args.common, *overrides], seed, roots[seed],
                                             args.work_dir / f"{name}_s{seed}", args.threads, args.nice)
                   for seed in args.seeds for name, config, overrides in variants}
        for (name, seed), future in futures.items():
            results[name][seed] = future.result()
    print(f"{len(futures)} runs in {time.perf_counter() - start:.0f} s, seeds {args.seeds}; LVIS AP (%) on each "
          "seed's val split, mean +- sample sd over seeds; paired differences: mean [min, max]")
    print_table(variants, results, args.seeds)


if __name__ == "__main__":
    main()
