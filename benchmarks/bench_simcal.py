"""SimCal's evaluation: every mode (original, calibrated, combined 'sel', averaged) from one detector pass, against
the per-mode path ltcls used before (the whole detector once per mode; ``tests/simcal_oracle.py``) and against one
plain pass of the detector alone, in one process on the same images, alternating; medians per image.

A Mask R-CNN of LVIS's 1203 categories (ltcls's adapter with Seesaw, objectness and a normalized classifier, as
``bench_detection.py``), random weights, score threshold 1e-4 and 300 detections per image (LVIS's test settings),
a calibrated head whose classifier is the original's perturbed (``--shift``: how far the modes' detections differ),
SimCal's T = 300 on random instance counts. The one pass runs the mask branch once on the union of the modes'
detections, so its cost depends on their overlap (reported). The
outputs of both paths are checked equal (boxes, labels, scores; masks to 1e-6).

    python benchmarks/bench_simcal.py [--backbone resnet50] [--size 320] [--images 2] [--repeats 3]
                                      [--detections 300] [--shift 0.5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ltcls import config as C
from ltcls.detection.build import build_detector
from ltcls.detection.model import compact_masks
from ltcls.detection.simcal import CalibratedHead, SimCalModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from simcal_oracle import per_mode_detections  # noqa: E402  (the previous path, kept as the tests' oracle)

NUM_CLASSES = 1203


def build(backbone: str, size: int, threshold: int, detections: int, shift: float) -> SimCalModel:
    cfg = C.resolve({"data": {"name": "lvis"}, "model": {"name": backbone}, "classifier": {"name": "normalized"},
                     "loss": {"name": "seesaw_det"},
                     "detection": {"min_size": [size], "max_size": int(size * 1.25),
                                   "detections_per_img": detections}})
    counts = np.random.default_rng(0).integers(1, 1000, NUM_CLASSES)
    data = SimpleNamespace(num_classes=NUM_CLASSES, class_counts=counts, train=[None] * 100_000)
    torch.manual_seed(0)
    detector = build_detector(cfg, data)
    rh = detector.roi_heads
    classifier = copy.deepcopy(rh.box_predictor.cls_score)
    with torch.no_grad():
        for p in classifier.parameters():
            p.add_(torch.randn_like(p) * p.std() * shift)
    head = CalibratedHead(copy.deepcopy(rh.box_head), classifier, copy.deepcopy(rh.box_classification))
    return SimCalModel(detector, head, counts, threshold).eval()


def check_equal(new: dict, old: dict) -> None:
    for mode in old:
        for a, b in zip(new[mode], old[mode]):
            for key in ("boxes", "labels", "scores"):
                assert torch.equal(a[key], b[key]), (mode, key)
            torch.testing.assert_close(a["mask_probs"], b["mask_probs"], rtol=0, atol=1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=320, help="shorter image side (default 320)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threshold", type=int, default=300)
    parser.add_argument("--detections", type=int, default=300, help="detections per image (LVIS: 300)")
    parser.add_argument("--shift", type=float, default=0.5,
                        help="calibrated classifier = original + N(0, (shift x weight std)^2) noise")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args.backbone, args.size, args.threshold, args.detections, args.shift)
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, args.size, int(args.size * 1.25), generator=g) for _ in range(args.images)]
    paths = {"per-mode (before)": lambda ims: per_mode_detections(model, ims), "one pass": model,
             "detector alone, one mode": model.detector}
    times: dict[str, list[float]] = {name: [] for name in paths}
    with torch.no_grad(), compact_masks(model):
        check_equal(model(images[:1]), per_mode_detections(model, images[:1]))
        for i in range(args.repeats + 1):  # the first round warms up
            for image in images:
                for name, fn in paths.items():
                    start = time.perf_counter()
                    fn([image])
                    if i:
                        times[name].append(time.perf_counter() - start)
        new = model([images[0]])
    dets = {mode: len(r[0]["scores"]) for mode, r in new.items()}
    union = len({(tuple(b.tolist()), int(lab)) for r in new.values() for b, lab in zip(r[0]["boxes"], r[0]["labels"])})
    base = statistics.median(times["detector alone, one mode"])
    print(f"SimCal evaluation, {args.backbone}-FPN Mask R-CNN, {NUM_CLASSES} classes, {args.size}x"
          f"{int(args.size * 1.25)} images, {torch.get_num_threads()} threads, modes {', '.join(model.modes)}, "
          f"median of {args.repeats * args.images} images:")
    for name, t in times.items():
        m = statistics.median(t)
        print(f"  {name:28s} {m:7.3f} s/image   {m / base:5.2f}x one detector pass")
    old, one = statistics.median(times["per-mode (before)"]), statistics.median(times["one pass"])
    print(f"  one pass is {old / one:.2f}x faster than per-mode; detections per mode {dets}, "
          f"{union} distinct (RoI, label) detections through the mask head in one pass "
          f"(per-mode: {sum(len(r[0]['scores']) for r in new.values())})")


if __name__ == "__main__":
    main()
