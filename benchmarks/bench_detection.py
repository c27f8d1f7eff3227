"""Mask R-CNN adapter: training-step time with Seesaw vs stock torchvision, and evaluation throughput.

1. Training step (forward + backward + SGD step) of the ltcls adapter with Seesaw (objectness branch and
   normalized linear classifier, tau 20) against stock torchvision ``MaskRCNN`` with its cross-entropy:
   the same backbone weights, heads, images and targets, LVIS's 1203 categories, steps alternating
   (stock, adapter, stock, ...) in one process; the medians are compared (target: adapter <= 1.10x).
2. Evaluation throughput at 300 detections per image (score threshold 0, so every image keeps 300):
   images/s of the adapter's inference + ltcls's chunked mask pasting and RLE encoding, against
   torchvision's output (300 full-image float masks pasted by its transform) encoded afterwards; and the
   peak size of the mask tensors each holds per image.

    python benchmarks/bench_detection.py [--backbone resnet50] [--size 320] [--steps 4] [--eval-images 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image

from ltcls import config as C
from ltcls.detection.build import build_detector
from ltcls.detection.model import compact_masks
from ltcls.detection.task import encode_detections

NUM_CLASSES = 1203  # LVIS v1


def make_batch(n: int, size: int, seed: int) -> tuple[list[torch.Tensor], list[dict]]:
    """Images of ``size`` x ``1.25 size`` with 8 box-shaped instances each (masks = boxes)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size, int(size * 1.25)
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g))
        xy = torch.rand(8, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 16 + torch.rand(8, 2, generator=g) * torch.tensor([w * 0.25, h * 0.25])
        boxes = torch.cat([xy, xy + wh], dim=1).floor()
        masks = torch.zeros(8, h, w, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.randint(1, NUM_CLASSES + 1, (8,), generator=g),
                        "masks": masks})
    return images, targets


def build_models(backbone: str, size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(adapter with Seesaw + objectness + normalized classifier, stock torchvision Mask R-CNN with CE)."""
    cfg = C.resolve({"data": {"name": "lvis"}, "model": {"name": backbone}, "classifier": {"name": "normalized"},
                     "loss": {"name": "seesaw_det"},
                     "detection": {"min_size": [size], "max_size": int(size * 1.25), "score_thresh": 0.0}})
    counts = np.random.default_rng(0).integers(1, 1000, NUM_CLASSES)
    data = SimpleNamespace(num_classes=NUM_CLASSES, class_counts=counts, train=[None] * 100_000)
    torch.manual_seed(0)
    adapter = build_detector(cfg, data)
    rh = adapter.roi_heads
    stock = MaskRCNN(copy.deepcopy(adapter.backbone), num_classes=None, min_size=size, max_size=int(size * 1.25),
                     box_head=copy.deepcopy(rh.box_head), box_predictor=FastRCNNPredictor(1024, NUM_CLASSES + 1),
                     mask_head=copy.deepcopy(rh.mask_head), mask_predictor=MaskRCNNPredictor(256, 256, NUM_CLASSES + 1),
                     box_score_thresh=0.0, box_detections_per_img=300)
    return adapter, stock


def box_classification_times(adapter, rois: int, repeats: int) -> tuple[float, float]:
    """Median forward + backward time of the box classification alone on ``rois`` sampled RoIs (1024-d features):
    stock nn.Linear(C+1) + cross-entropy vs the adapter's NormedLinear(C+2) + Seesaw (and the cross-entropy
    torchvision computes on the packed logits, which the adapter discards)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rois, 1024, generator=g)
    labels = torch.where(torch.rand(rois, generator=g) < 0.25, torch.randint(1, NUM_CLASSES + 1, (rois,), generator=g),
                         0)
    linear = torch.nn.Linear(1024, NUM_CLASSES + 1)
    cls = adapter.roi_heads.box_predictor.cls_score
    head = adapter.roi_heads.box_classification

    def stock_step() -> None:
        torch.nn.functional.cross_entropy(linear(x), labels).backward()

    def adapter_step() -> None:
        packed = head.pack(cls(x))
        torch.nn.functional.cross_entropy(packed, labels)  # torchvision's, discarded
        sum(head.losses(packed, labels).values()).backward()

    times: dict = {stock_step: [], adapter_step: []}
    for i in range(repeats + 2):
        for fn in (stock_step, adapter_step):
            start = time.perf_counter()
            fn()
            if i >= 2:
                times[fn].append(time.perf_counter() - start)
    return statistics.median(times[adapter_step]), statistics.median(times[stock_step])


def train_step_times(adapter, stock, batch, steps: int) -> tuple[list[float], list[float]]:
    opts = {m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
            for m in (adapter, stock)}
    times: dict = {adapter: [], stock: []}
    for i in range(steps + 1):  # the first round warms up
        for model in (stock, adapter) if i % 2 == 0 else (adapter, stock):
            model.train()
            start = time.perf_counter()
            loss = sum(model(*batch).values())
            opts[model].zero_grad(set_to_none=True)
            loss.backward()
            opts[model].step()
            if i:
                times[model].append(time.perf_counter() - start)
    return times[adapter], times[stock]


@torch.no_grad()
def eval_throughput(model, images: list[torch.Tensor], compact: bool) -> tuple[float, int, int]:
    """(images/s, mean detections, peak bytes of mask tensors per image) for inference + RLE encoding."""
    model.eval()
    dets, peak = 0, 0
    start = time.perf_counter()
    for image in images:
        if compact:
            with compact_masks(model):
                out = model([image])[0]
            peak = max(peak, 32 * image.shape[-2] * image.shape[-1] * 4)  # one chunk of pasted float masks
        else:
            out = model([image])[0]
            peak = max(peak, out["masks"].numel() * out["masks"].element_size())
        if compact:
            encode_detections(out, 0, tuple(image.shape[-2:]), list(range(1, NUM_CLASSES + 1)))
        else:
            binary = (out["masks"][:, 0] > 0.5).numpy().astype(np.uint8)
            mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        dets += len(out["scores"])
    return len(images) / (time.perf_counter() - start), dets // len(images), peak


def encode_times(height: int, width: int, dets: int, repeats: int) -> tuple[float, float]:
    """Seconds per image to turn 300 RoI masks (28 x 28 probabilities) into RLE: torchvision's paste of all masks
    into full-image float tensors then one encode, vs ltcls's chunked paste + encode (``encode_detections``)."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(dets, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
    boxes = torch.cat([xy, xy + 8 + torch.rand(dets, 2, generator=g) * torch.tensor([width * 0.3, height * 0.3])], 1)
    grid = torch.linspace(-1, 1, 28)
    radius = 0.3 + 0.6 * torch.rand(dets, 1, 1, 1, generator=g)
    blobs = torch.exp(-(grid[None, None, :, None] ** 2 + grid[None, None, None, :] ** 2) / radius**2)  # smooth masks
    out = {"boxes": boxes, "scores": torch.rand(dets, generator=g), "mask_probs": blobs,
           "labels": torch.randint(1, 10, (dets,), generator=g)}
    full, chunked = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        pasted = paste_masks_in_image(out["mask_probs"], boxes, (height, width), padding=1)
        binary = (pasted[:, 0] > 0.5).numpy().astype(np.uint8)
        mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        full.append(time.perf_counter() - start)
        start = time.perf_counter()
        encode_detections(out, 0, (height, width), list(range(1, 10)))
        chunked.append(time.perf_counter() - start)
    return statistics.median(full), statistics.median(chunked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=320, help="shorter image side (default 320)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--eval-images", type=int, default=3, help="0: skip the full-model evaluation timing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for h, w in ((480, 640), (800, 1333)):
        full, chunked = encode_times(h, w, 300, repeats=5)
        print(f"mask encoding only, 300 detections on a {w}x{h} image:")
        print(f"  torchvision: paste all 300 ({300 * h * w * 4 / 2**20:5.0f} MiB of float masks) + encode "
              f"{1 / full:6.2f} img/s")
        print(f"  ltcls: paste 32 at a time ({32 * h * w * 4 / 2**20:5.0f} MiB) + encode                 "
              f"{1 / chunked:6.2f} img/s")
    adapter, stock = build_models(args.backbone, args.size)
    rois = args.batch * 512
    ours_cls, theirs_cls = box_classification_times(adapter, rois, repeats=30)
    print(f"box classification alone ({rois} RoIs x 1024 features, {NUM_CLASSES} classes, forward + backward):")
    print(f"  Linear + cross-entropy                        {theirs_cls * 1e3:.2f} ms")
    print(f"  NormedLinear + Seesaw (+ discarded CE)        {ours_cls * 1e3:.2f} ms   "
          f"ratio {ours_cls / theirs_cls:.2f}x")
    batch = make_batch(args.batch, args.size, seed=0)
    ours, theirs = train_step_times(adapter, stock, batch, args.steps)
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"train step ({args.backbone}-FPN, {NUM_CLASSES} classes, batch {args.batch} x {args.size}x"
          f"{int(args.size * 1.25)}, {torch.get_num_threads()} threads, median of {args.steps}):")
    print(f"  stock torchvision Mask R-CNN + CE             {statistics.median(theirs):.3f} s")
    print(f"  ltcls adapter + Seesaw (objectness, NormLinear) {statistics.median(ours):.3f} s   ratio {ratio:.3f}x")
    if args.eval_images == 0:
        return
    images = make_batch(args.eval_images, args.size, seed=1)[0]
    fast, dets, peak = eval_throughput(adapter, images, compact=True)
    slow, dets2, peak2 = eval_throughput(adapter, images, compact=False)
    print(f"evaluation ({dets} detections per image, inference + mask RLE encoding, {args.eval_images} images):")
    print(f"  torchvision full-image masks, then encode   {slow:.2f} img/s   masks held: {peak2 / 2**20:.0f} MiB/img")
    print(f"  ltcls chunked paste + encode (32 at a time) {fast:.2f} img/s   masks held: {peak / 2**20:.0f} MiB/img")
    assert dets == dets2 == 300, (dets, dets2)


if __name__ == "__main__":
    main()
