"""ltcls-export's formats on CPU: export time per format, and inference latency per batch of each exported file
against the eager model it came from, in the same run.

Two models, randomly initialised (no download): the CIFAR ResNet-32 of the long-tail literature (32 px, 100
classes) and timm's ViT-Tiny/16 (224 px, 1000 classes), each behind the normalisation an export carries. Export
time is :func:`ltcls.export.export_model` end to end (capture, serialize, write, load back, compare, rename).
Latency: each file loaded as a consumer loads it (``torch.export.load(...).module()``, an ONNX Runtime CPU
session, ``torch.jit.load``) and the eager module under ``torch.inference_mode``; the runners take turns batch
by batch (so load changes hit all alike), after warm-up, and the median per batch is reported with its ratio to
the eager model's. Torch and ONNX Runtime get the same number of threads (``--threads``).

    python benchmarks/bench_export.py                      # both models, batches 1 and 32 (ViT: 1 and 8)
    python benchmarks/bench_export.py --models cifar_resnet32 --reps 50
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import onnxruntime
import torch
from torch import nn

from ltcls.export import ExportSpec, Normalized, export_model
from ltcls.models.backbone import LTModel, create_backbone
from ltcls.models.classifiers import build_classifier

#: name -> (timm name, image size, classes, batch sizes)
MODELS = {
    "cifar_resnet32": ("cifar_resnet32", 32, 100, (1, 32)),
    "vit_tiny": ("vit_tiny_patch16_224", 224, 1000, (1, 8)),
}
FORMATS = {"pt2": ".pt2", "onnx": ".onnx", "torchscript": ".torchscript.pt"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build(timm_name: str, classes: int) -> nn.Module:
    torch.manual_seed(0)
    backbone = create_backbone(timm_name)
    return LTModel(backbone, build_classifier("linear", backbone.num_features, classes)).eval()


def load(fmt: str, path: Path, threads: int) -> Callable[[torch.Tensor], object]:
    """The exported file as a consumer runs it."""
    if fmt == "onnx":
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"images": x.numpy()})
    if fmt == "pt2":
        module = torch.export.load(path).module()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path))

    def run(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return module(x)

    return run


def latencies(runners: dict[str, Callable[[torch.Tensor], object]], x: torch.Tensor, reps: int) -> dict[str, float]:
    """Median seconds per batch of each runner, the runners taking turns."""
    for run in runners.values():
        for _ in range(3):
            run(x)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(reps):
        for name, run in runners.items():
            start = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_model(name: str, reps: int, threads: int, folder: Path) -> None:
    timm_name, size, classes, batches = MODELS[name]
    model = build(timm_name, classes)
    spec = ExportSpec(MEAN, STD, size, [str(c) for c in range(classes)], "bench")
    files = {}
    for fmt, suffix in FORMATS.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            files[fmt] = export_model(model, spec, fmt, folder / f"{name}{suffix}").module
        size_mb = files[fmt].stat().st_size / 2**20
        print(f"| {name} | export {fmt} | {time.perf_counter() - start:.2f} s | {size_mb:.1f} MiB |", flush=True)
    eager = Normalized(model, MEAN, STD).eval()

    def run_eager(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return eager(x)

    runners = {"eager": run_eager, **{fmt: load(fmt, path, threads) for fmt, path in files.items()}}
    for batch in batches:
        x = torch.rand(batch, 3, size, size)
        result = latencies(runners, x, reps)
        for runner, seconds in result.items():
            print(f"| {name} | batch {batch} | {runner} | {seconds * 1e3:.2f} ms | {seconds / result['eager']:.2f}x |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--reps", type=int, default=30, help="timed batches per runner and batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} thread(s), "
          f"median of {args.reps}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            bench_model(name, args.reps, args.threads, Path(tmp))


if __name__ == "__main__":
    main()
