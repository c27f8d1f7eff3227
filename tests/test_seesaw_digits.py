"""The shipped digits_lt Seesaw config: the mechanisms Seesaw's few-shot effect relies on, in seconds.

How the config compares with digits_lt_ce on few-shot accuracy is a quality comparison over several
seeds, so it lives in ``benchmarks/bench_heads.py`` (BENCHMARKS.md, "Seesaw on digits_lt"), not here.
These tests pin that Seesaw's factors change the tail logits' gradients as designed, at the config's
p, q and eps: mitigation lowers the push a head-class sample gives a rare class's logit, compensation
raises the push a rare-class sample gives a head-class logit that outscores it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from ltcls.losses.base import build_loss
from ltcls.models.classifiers import build_classifier

CONFIGS = Path(__file__).parents[1] / "configs"
D = torch.float64
#: digits_lt's per-class training counts (imbalance factor 50, seed 0; the run's train.log prints them)
COUNTS = [144, 93, 60, 39, 25, 16, 10, 6, 4, 2]


def shipped(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


def logit_grad(loss: torch.nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    z = logits.clone().requires_grad_(True)
    loss(z, labels).backward()
    return z.grad


def seesaw_with_counts(counts: list[int]) -> torch.nn.Module:
    """The shipped config's loss for ``len(counts)`` classes."""
    cfg = shipped("digits_lt_seesaw")["loss"]
    params = {k: v for k, v in cfg.items() if k != "name"}
    return build_loss(cfg["name"], num_classes=len(counts), class_counts=counts, **params)


def test_mitigation_lowers_the_penalty_on_tail_logits_from_a_head_sample():
    cfg = shipped("digits_lt_seesaw")["loss"]
    assert cfg["name"] == "seesaw" and cfg["p"] > 0
    loss = seesaw_with_counts(COUNTS)
    loss.cum_samples.copy_(torch.tensor(COUNTS)).sub_(torch.eye(10, dtype=torch.long)[0])  # the batch adds 1
    logits = torch.zeros(1, 10, dtype=D)  # a fresh head: every class equally likely, no compensation
    grad = logit_grad(loss, logits, torch.tensor([0]))[0]
    counts = torch.tensor(COUNTS, dtype=D)
    mitigation = (counts / counts[0]) ** cfg["p"]  # M[0, j] = (N_j / N_0)^p, every N_j <= N_0
    expected = mitigation / mitigation.sum()
    expected[0] -= 1
    torch.testing.assert_close(grad, expected)
    ce = torch.full((10,), 0.1, dtype=D)  # cross-entropy's push on every other logit: softmax = 1/10
    assert grad[9] < ce[9] / 5  # the rarest class is pushed ~10x less than by CE
    assert torch.all(grad[1:].diff() < 0)  # rarer classes are pushed down less


def test_compensation_raises_the_penalty_on_a_head_logit_that_beats_a_tail_sample():
    cfg = shipped("digits_lt_seesaw")["loss"]
    assert cfg["q"] > 0
    loss = seesaw_with_counts(COUNTS)
    loss.cum_samples.copy_(torch.tensor(COUNTS)).sub_(torch.eye(10, dtype=torch.long)[9])
    logits = torch.zeros(1, 10, dtype=D)
    logits[0, 0] = 2.0  # a digit-9 sample scored as a 0: a false positive for class 0
    grad = logit_grad(loss, logits, torch.tensor([9]))[0]
    # no mitigation for the rarest label (every other class is more frequent); class 0's logit gains
    # q * log(s_0 / s_9) = 2q, the others (s_j = s_9) are unchanged
    shifted = logits[0].clone()
    shifted[0] += cfg["q"] * 2.0
    expected = shifted.softmax(0)
    expected[9] -= 1
    torch.testing.assert_close(grad, expected)
    ce = logits[0].softmax(0)
    assert grad[0] > 2 * ce[0]  # the offending head logit is pushed down harder than by CE
    assert torch.all(grad[1:9] < ce[1:9])  # the others take less of the penalty


def test_shipped_head_starts_from_unit_rows_so_the_first_step_stays_smaller_than_the_row():
    cfg = shipped("digits_lt_seesaw")
    params = {k: v for k, v in cfg["classifier"].items() if k != "name"}
    torch.manual_seed(0)
    head = build_classifier(cfg["classifier"]["name"], in_features=64, num_classes=10, **params)  # ResNet-20: 64-d
    before = head.weight.detach().norm(dim=1)
    torch.testing.assert_close(before, torch.ones(10))
    x, labels = torch.rand(64, 64), torch.tensor(COUNTS, dtype=torch.float).multinomial(64, replacement=True)
    loss = seesaw_with_counts(COUNTS)
    loss(head(x), labels).backward()
    with torch.no_grad():
        head.weight -= cfg["train"]["lr"] * head.weight.grad
    assert (head.weight.norm(dim=1) / before).max() < 1.5  # mmdetection's N(0, 0.01) rows grow ~50x here
