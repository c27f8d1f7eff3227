"""One cRT epoch on cached features at ImageNet-LT scale: the class-aware sampler's epoch (max class count x C =
1,280,000 samples for 1000 Pareto-profile classes, 1280 ... 5), batch 512, a linear head on D-dim features, run
by ltcls's Trainer, with the cached features indexed a whole batch at a time (``FeatureSet.batched``) against
the same stage with per-sample indexing and collation (the previous implementation), in the same run.

    python benchmarks/bench_feature_epoch.py [--dim 512] [--batch 512]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import numpy as np
import torch

from ltcls import config as C
from ltcls.data.base import DataSplits
from ltcls.data.tools.make_split import pareto_counts
from ltcls.engine.features import FeatureSet
from ltcls.engine.hooks import EpochLogHook
from ltcls.engine.stage import Stage
from ltcls.engine.tasks import ClassificationTask
from ltcls.engine.trainer import Trainer
from ltcls.losses.base import build_loss
from ltcls.models.classifiers import build_classifier
from ltcls.rundir import RunDir


class PerSampleFeatureSet(FeatureSet):
    """The baseline: each sample indexed on its own and the batch collated from a list of pairs."""

    batched = False

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.as_tensor(indices)
        return list(zip(self.features[0, idx], self.labels[idx]))


class FeatureSplit(FeatureSet):
    """Cached features standing in as a dataset split (DataSplits asks for class counts)."""

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.targets, minlength=self.num_classes)


def epoch_seconds(dataset: FeatureSet, dim: int, batch: int, counts: np.ndarray) -> tuple[float, int]:
    cfg = C.resolve({}, [f"train.batch_size={batch}", "train.epochs=1", "train.num_workers=0", "train.lr=0.1",
                         "train.log_interval=1000000", "sampler.name=class_aware", "eval.batch_size=4096"])
    data = DataSplits(train=FeatureSplit(dataset.features, dataset.targets, len(counts)),
                      test=FeatureSplit(dataset.features[:, :1000], dataset.targets[:1000], len(counts)))
    head = build_classifier("linear", dim, len(counts))
    loss = build_loss("ce", num_classes=len(counts))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(head, data, cfg, RunDir(tmp), ClassificationTask(cfg), hooks=[EpochLogHook()])
        stage = Stage("crt", loss, cfg.train, cfg.sampler, module=head, train_set=dataset)
        start = time.perf_counter()
        trainer.fit([stage])
        seconds = time.perf_counter() - start
    return seconds, int(counts.max()) * len(counts) // batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    counts = np.asarray(pareto_counts(1000))
    labels = np.repeat(np.arange(1000), counts)
    features = torch.randn(len(labels), args.dim)
    print(f"{len(labels):,} training samples, 1000 classes (max {counts.max()}, min {counts.min()}), "
          f"D = {args.dim}, batch {args.batch}, torch threads {torch.get_num_threads()}")
    fast, steps = epoch_seconds(FeatureSet(features, labels, 1000), args.dim, args.batch, counts)
    slow, _ = epoch_seconds(PerSampleFeatureSet(features, labels, 1000), args.dim, args.batch, counts)
    print(f"class-aware epoch ({steps:,} steps of {args.batch}) incl. sampler and a 1000-sample test pass")
    print(f"  ltcls (batched FeatureSet): {fast:7.1f} s")
    print(f"  per-sample indexing:        {slow:7.1f} s")
    print(f"  speed-up: {slow / fast:.2f}x")


if __name__ == "__main__":
    main()
