"""Image loading throughput: full JPEG decoding vs ltcls's reduced-size decoding, same transform, same run.

Generates full-size JPEGs (photograph-like: smooth structure plus sensor-like noise, quality 90) in a temp
folder and reads each through ``FileListDataset`` (open, decode to RGB, transform) twice: with
``decode_size: 0`` (plain full decoding, the baseline) and with the default ``decode_size: null`` (PIL draft
mode at the largest 1/2, 1/4, 1/8 reduction that keeps the short side the transform's first step needs:
224 for the training random-resized crop, 256 for the eval resize at 224 / 0.875). One thread, as in a
DataLoader worker; passes alternate (full, reduced, full, ...) and the median of each is taken.

    python benchmarks/bench_decode.py [--sizes 1000x750 1600x1200] [--images 64] [--img-size 224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ltcls.data.datasets.split_file import FileListDataset
from ltcls.data.transforms import build_transforms


def make_photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Smooth random structure (bicubic-upsampled 1/32 grid) plus Gaussian noise (sigma 5)."""
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    noisy = base + rng.normal(0.0, 5.0, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def time_pass(ds: FileListDataset, seed: int) -> float:
    torch.manual_seed(seed)  # the same random crops for both decoders
    start = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return time.perf_counter() - start


def bench_size(folder: Path, width: int, height: int, args: argparse.Namespace) -> list[str]:
    rng = np.random.default_rng(args.seed)
    names = []
    for k in range(args.images):
        name = f"{width}x{height}_{k:03d}.jpg"
        make_photo(width, height, rng).save(folder / name, quality=args.quality)
        names.append(name)
    mean_kb = np.mean([(folder / n).stat().st_size for n in names]) / 1024
    train_tf, eval_tf = build_transforms(args.img_size, augment="rrc")
    rows = []
    for label, tf in (("train (rrc)", train_tf), ("eval", eval_tf)):
        full = FileListDataset(str(folder), names, [0] * len(names), 1, transform=tf, decode_size=0)
        reduced = FileListDataset(str(folder), names, [0] * len(names), 1, transform=tf)
        time_pass(full, 0), time_pass(reduced, 0)  # warm-up (page cache, allocator)
        times: dict[str, list[float]] = {"full": [], "reduced": []}
        for r in range(args.repeats):
            times["full"].append(time_pass(full, r))
            times["reduced"].append(time_pass(reduced, r))
        rate = {k: len(names) / statistics.median(v) for k, v in times.items()}
        decoded = reduced.load(0).size
        rows.append(f"| {width}x{height} ({mean_kb:.0f} KB) | {label} | {decoded[0]}x{decoded[1]} | "
                    f"{rate['full']:.0f} | {rate['reduced']:.0f} | {rate['reduced'] / rate['full']:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1000x750", "1600x1200"], metavar="WxH",
                        help="image sizes to generate (default: 1000x750 1600x1200)")
    parser.add_argument("--images", type=int, default=64, help="images per size (default: 64)")
    parser.add_argument("--img-size", type=int, default=224, help="training resolution (default: 224)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default: 90)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per decoder (default: 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.images} JPEGs per size, quality {args.quality}, img_size {args.img_size}, 1 thread, median of "
          f"{args.repeats} alternating passes; images/s")
    print("| image size (mean file) | transform | reduced decode | full decode img/s | reduced decode img/s | ratio |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            width, height = (int(v) for v in size.lower().split("x"))
            bench_size(Path(tmp), width, height, args)


if __name__ == "__main__":
    main()
