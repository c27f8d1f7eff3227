"""Loss values and gradients against independent computations written here from each formula.

Seesaw is checked against the reference's full C x C formulation (mmpretrain / mmdetection), written
below the way those projects compute it; everything runs in float64 with tight tolerances.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from ltcls.losses.base import LOSSES, build_loss
from ltcls.losses.gumbel import gumbel_probs
from ltcls.losses.logit_adjusted import logit_adjust
from ltcls.losses.seesaw import seesaw_cross_entropy
from ltcls.losses.seesaw_det import seesaw_det_scores
from ltcls.models.classifiers import LinearClassifier, NormalizedClassifier

D = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


def close(a: torch.Tensor, b: torch.Tensor, **tol) -> None:
    torch.testing.assert_close(a, b, **(tol or TOL))


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().to(D).requires_grad_()


def value_and_grad(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = leaf(x)
    out = fn(x)
    (g,) = torch.autograd.grad(out, x)
    return out.detach(), g


# --------------------------------------------------------------------------------------------------------------
# Independent references


def seesaw_cxc(logits: torch.Tensor, labels: torch.Tensor, cum: torch.Tensor, p: float = 0.8, q: float = 2.0,
               eps: float = 1e-2) -> torch.Tensor:
    """Per-sample Seesaw CE, the reference's way: full C x C ratio matrix, float masks, log of the weights."""
    num_classes = logits.shape[1]
    onehot = F.one_hot(labels, num_classes).to(logits.dtype)
    weights = torch.ones_like(logits)
    cum = cum.to(logits.dtype)
    if p > 0:
        ratio = cum[None, :].clamp(min=1) / cum[:, None].clamp(min=1)  # (C, C)
        lower = (ratio < 1.0).to(logits.dtype)
        weights = weights * (ratio.pow(p) * lower + (1 - lower))[labels]
    if q > 0:
        scores = F.softmax(logits.detach(), dim=1)
        ratio = scores / scores[torch.arange(len(scores)), labels][:, None].clamp(min=eps)
        higher = (ratio > 1.0).to(logits.dtype)
        weights = weights * (ratio.pow(q) * higher + (1 - higher))
    return F.cross_entropy(logits + weights.log() * (1 - onehot), labels, reduction="none")


def gumbel_bce_reference(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """GOL's activation (clamp to [-4, 10], p = 1 / exp(exp(-z))) and the binary cross-entropy formula
    ``-(t log p + (1 - t) log(1 - p))``, element-wise, formed naively (exact enough in float64)."""
    p = 1 / torch.exp(torch.exp(-torch.clamp(logits, min=-4, max=10)))
    t = target.to(logits.dtype)
    return -(t * torch.log(p) + (1 - t) * torch.log(1 - p))


def effective_weights_reference(counts: list[float], beta: float) -> torch.Tensor:
    w = torch.tensor([(1 - beta) / (1 - beta ** max(n, 1)) for n in counts], dtype=D)
    return w / w.sum() * len(counts)


# --------------------------------------------------------------------------------------------------------------
# Seesaw (classification)


def test_seesaw_matches_cxc_reference_step_by_step():
    torch.manual_seed(0)
    num_classes = 6
    loss = build_loss("seesaw", num_classes=num_classes)
    batches = [
        torch.tensor([0, 0, 0, 1, 2, 0, 0, 1]),
        torch.tensor([0, 0, 0, 0, 0]),  # head class only
        torch.tensor([3, 1, 0, 0, 2]),
        torch.tensor([5, 5, 0, 2, 0, 0]),  # class 4 is never seen
    ]
    cum = torch.zeros(num_classes, dtype=torch.long)
    for labels in batches:
        logits = 3.0 * torch.randn(len(labels), num_classes, dtype=D)
        cum += torch.bincount(labels, minlength=num_classes)
        got, g_got = value_and_grad(lambda z, y=labels: loss(z, y), logits)
        counts = cum.clone()
        want, g_want = value_and_grad(lambda z, y=labels, c=counts: seesaw_cxc(z, y, c).mean(), logits)
        assert torch.equal(loss.cum_samples, cum)
        close(got, want)
        close(g_got, g_want)
    assert loss.cum_samples.dtype == torch.long


def test_seesaw_count_evolution():
    loss = build_loss("seesaw", num_classes=4)
    steps = [([0, 0, 1], [2, 1, 0, 0]), ([2], [2, 1, 1, 0]), ([0, 3, 3], [3, 1, 1, 2]), ([1], [3, 2, 1, 2])]
    for labels, counts in steps:
        loss(torch.zeros(len(labels), 4, dtype=D), torch.tensor(labels))
        assert loss.cum_samples.tolist() == counts


def test_seesaw_counts_include_the_current_batch():
    # First step, labels [0, 0, 1]: with this batch counted, N = [2, 1, 0->1, 0->1], so rows of class 0 scale
    # every other class by (1/2)**p; counted after the loss, all counts would be 0 and nothing would change.
    p = 0.8
    logits = torch.tensor([[0.3, 0.2, -0.1, 0.5], [1.0, -1.0, 0.0, 0.2], [0.1, 0.4, 0.3, -0.3]], dtype=D)
    labels = torch.tensor([0, 0, 1])
    loss = build_loss("seesaw", num_classes=4, p=p, q=0.0)
    adjusted = logits.clone()
    adjusted[:2, 1:] += p * math.log(0.5)
    close(loss(logits, labels), F.cross_entropy(adjusted, labels))
    assert F.cross_entropy(adjusted, labels) != F.cross_entropy(logits, labels)


def test_seesaw_head_only_batch_hand_computed():
    p = 0.8
    loss = build_loss("seesaw", num_classes=4, p=p, q=0.0)
    loss.cum_samples.copy_(torch.tensor([7, 2, 1, 0]))
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 0.3, 0.6, 0.9], [-0.5, 0.5, 1.5, 0.0]], dtype=D)
    labels = torch.tensor([0, 0, 0])
    # counts become [10, 2, 1, 0->1]: a head sample scales class j by (N_j / 10)**p
    adjusted = logits + p * torch.log(torch.tensor([10.0, 2.0, 1.0, 1.0], dtype=D) / 10.0)
    got, g_got = value_and_grad(lambda z: loss(z, labels), logits)
    want, g_want = value_and_grad(lambda z: F.cross_entropy(z + (adjusted - logits), labels), logits)
    close(got, want)
    close(g_got, g_want)
    assert loss.cum_samples.tolist() == [10, 2, 1, 0]


def test_seesaw_unseen_classes_are_finite():
    counts = torch.tensor([50, 3, 0, 0, 1])
    logits = torch.tensor([[30.0, -30.0, 5.0, -2.0, 0.0], [-20.0, 25.0, 0.0, 0.0, 1.0]], dtype=D)
    labels = torch.tensor([1, 2])
    got, g_got = value_and_grad(lambda z: seesaw_cross_entropy(z, labels, counts), logits)
    want, g_want = value_and_grad(lambda z: seesaw_cxc(z, labels, counts).mean(), logits)
    assert torch.isfinite(got) and torch.isfinite(g_got).all()
    close(got, want)
    close(g_got, g_want)
    # with every count 0 (clamped to 1) mitigation is a no-op
    z = torch.randn(3, 5, dtype=D)
    y = torch.tensor([0, 3, 4])
    close(seesaw_cross_entropy(z, y, torch.zeros(5), q=0.0), F.cross_entropy(z, y))


def test_seesaw_mitigation_strict_edge():
    p = 0.8
    counts = torch.tensor([4, 4, 3, 5])  # against class 0: tie (factor 1), 3/4 < 1 (scaled), 5/4 > 1 (factor 1)
    logits = torch.tensor([[0.2, 0.7, -0.3, 0.1], [1.2, -0.4, 0.3, 0.9]], dtype=D)
    labels = torch.tensor([0, 0])
    shift = torch.tensor([0.0, 0.0, p * math.log(3 / 4), 0.0], dtype=D)
    got, g_got = value_and_grad(lambda z: seesaw_cross_entropy(z, labels, counts, p=p, q=0.0), logits)
    want, g_want = value_and_grad(lambda z: F.cross_entropy(z + shift, labels), logits)
    close(got, want)
    close(g_got, g_want)


def test_seesaw_compensation_strict_edge():
    q = 2.0
    # s_y is far above eps; column 1 ties with the label (S = 1, factor 1), column 2 is just above
    # (S = e**0.001, factor S**q), column 3 is below (factor 1)
    logits = torch.tensor([[1.0, 1.0, 1.001, 0.5]], dtype=D)
    labels = torch.tensor([0])
    shift = torch.tensor([0.0, 0.0, q * 0.001, 0.0], dtype=D)
    counts = torch.ones(4)
    got, g_got = value_and_grad(lambda z: seesaw_cross_entropy(z, labels, counts, p=0.0, q=q), logits)
    # the compensation is detached: the gradient is softmax(z') - onehot with z' fixed
    want, g_want = value_and_grad(lambda z: F.cross_entropy(z + shift, labels), logits)
    close(got, want)
    close(g_got, g_want)


def test_seesaw_eps_edge():
    q, eps = 2.0, 1e-2
    # row 0: s_y ~ 4e-5 < eps, so the divisor is eps: s_1, s_2 > eps are scaled by (s_j / eps)**q and s_3 ~ 3e-4
    # is left alone although s_3 > s_y. Row 1: s_y slightly above eps, the divisor is s_y itself.
    logits = torch.tensor([[-10.0, 0.0, -3.0, -8.0], [-3.0, 0.0, 0.5, -9.0]], dtype=D)
    labels = torch.tensor([0, 0])
    s = logits.softmax(dim=1)
    assert s[0, 0] < eps < s[0, 2] and s[0, 3] < eps and s[0, 3] > s[0, 0] and s[1, 0] > eps
    divisor = s[:, :1].clamp(min=eps)
    shift = torch.where(s / divisor > 1, q * torch.log(s / divisor), torch.zeros_like(s))
    got, g_got = value_and_grad(lambda z: seesaw_cross_entropy(z, labels, torch.ones(4), p=0.0, q=q, eps=eps), logits)
    want, g_want = value_and_grad(lambda z: F.cross_entropy(z + shift, labels), logits)
    close(got, want)
    close(g_got, g_want)
    assert shift[0, 3] == 0 and shift[0, 2] > 0 and shift[1, 1] > 0


@pytest.mark.parametrize("p, q", [(0.8, 2.0), (0.8, 1.0), (0.0, 2.0), (1.5, 0.0), (0.5, 0.7)])
def test_seesaw_factor_settings_match_cxc(p, q):
    torch.manual_seed(1)
    counts = torch.tensor([300, 120, 40, 9, 2, 1, 0])
    logits = 4.0 * torch.randn(9, 7, dtype=D)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 3])
    for reduction, reduce in (("mean", torch.mean), ("sum", torch.sum), ("none", lambda x: x)):
        got, g_got = value_and_grad(
            lambda z, r=reduction: seesaw_cross_entropy(z, labels, counts, p=p, q=q, reduction=r).sum(), logits)
        want, g_want = value_and_grad(lambda z, f=reduce: f(seesaw_cxc(z, labels, counts, p=p, q=q)).sum(), logits)
        close(got, want)
        close(g_got, g_want)


def test_seesaw_gradcheck_mitigation_only():
    # With q > 0 the compensation is detached by design, so the gradient is not the derivative of the
    # value (the C x C comparisons check it); with q = 0 it is, and gradcheck applies.
    counts = torch.tensor([20, 5, 1, 0])
    labels = torch.tensor([0, 1, 3, 0, 2])
    logits = leaf(torch.randn(5, 4, dtype=D))
    assert torch.autograd.gradcheck(lambda z: seesaw_cross_entropy(z, labels, counts, p=0.8, q=0.0), (logits,))


def test_seesaw_large_logits_and_underflowing_label_scores():
    # rows 2-3: s_y ~ 4e-44 and 1e-65 underflow in float32; row 4: s_y ~ 1e-348 underflows in float64 too
    counts = torch.tensor([1000, 10, 1])
    logits = torch.tensor([[60.0, -40.0, 20.0], [-30.0, 45.0, 10.0], [100.0, -40.0, 0.0], [150.0, 0.0, 0.0],
                           [800.0, 0.0, -1.0]], dtype=D)
    labels = torch.tensor([2, 0, 2, 1, 2])
    want, g_want = value_and_grad(lambda z: seesaw_cxc(z, labels, counts).sum(), logits)
    got, g_got = value_and_grad(lambda z: seesaw_cross_entropy(z, labels, counts, reduction="sum"), logits)
    close(got, want)
    close(g_got, g_want)
    got32 = seesaw_cross_entropy(logits[:4].float(), labels[:4], counts, reduction="none")
    close(got32.double(), seesaw_cxc(logits[:4], labels[:4], counts), rtol=1e-6, atol=1e-5)


def test_seesaw_state_dict_roundtrip():
    torch.manual_seed(2)
    loss = build_loss("seesaw", num_classes=5)
    for _ in range(3):
        loss(torch.randn(6, 5, dtype=D), torch.randint(0, 3, (6,)))
    state = loss.state_dict()
    assert "cum_samples" in state
    restored = build_loss("seesaw", num_classes=5)
    restored.load_state_dict(state)
    assert torch.equal(restored.cum_samples, loss.cum_samples)
    logits, labels = torch.randn(4, 5, dtype=D), torch.tensor([0, 1, 3, 4])
    fresh = build_loss("seesaw", num_classes=5)
    close(restored(logits, labels), loss(logits, labels))
    assert not torch.allclose(fresh(logits, labels), loss(logits, labels))


def _trace_allocated_bytes(fn) -> tuple[int, int]:
    """(total bytes allocated, peak bytes allocated) while ``fn`` runs, from the CPU profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e["args"] for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    total = sum(e["Bytes"] for e in events if e["Bytes"] > 0)
    return total, max([0, *(e["Total Allocated"] for e in events)])


def test_seesaw_never_builds_a_class_by_class_matrix():
    num_classes, n = 20000, 4  # a C x C float32 matrix would be 1.6 GB
    loss = build_loss("seesaw", num_classes=num_classes)
    logits = torch.randn(n, num_classes, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 19999])
    total, peak = _trace_allocated_bytes(lambda: loss(logits, labels).backward())
    row_bytes = n * num_classes * 4
    assert row_bytes <= total <= 12 * row_bytes
    assert peak <= 4 * row_bytes


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        loss = build_loss("seesaw", num_classes=4)
        labels = [torch.tensor([0, 0, 1]), torch.tensor([2, 3, 3, 3])][rank]
        value = loss(torch.zeros(len(labels), 4), labels)
        with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
            json.dump({"counts": loss.cum_samples.tolist(), "loss": value.item()}, f)
    finally:
        dist.destroy_process_group()


def test_seesaw_counts_are_all_reduced_across_ranks(tmp_path):
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert results[0]["counts"] == results[1]["counts"] == [2, 1, 1, 3]
    # rank 0's loss is the single-process loss with the global counts
    want = seesaw_cxc(torch.zeros(3, 4, dtype=D), torch.tensor([0, 0, 1]), torch.tensor([2, 1, 1, 3])).mean()
    assert results[0]["loss"] == pytest.approx(want.item(), rel=1e-6)


def test_seesaw_rejects_bad_input():
    loss = build_loss("seesaw", num_classes=3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="num_classes"):
        build_loss("seesaw")
    with pytest.raises(ValueError, match="eps"):
        build_loss("seesaw", num_classes=3, eps=0.0)


# --------------------------------------------------------------------------------------------------------------
# Seesaw (detection)


def seesaw_det_reference(class_logits, obj_logits, labels, cum_mm, p=0.8, q=2.0, eps=1e-2):
    """mmdetection's convention: C+2 channels, labels 0..C-1 classes and C background, objectness
    channel 0 = foreground, 1 = background; class term on foreground rows, both summed / #RoIs."""
    num_classes = class_logits.shape[1]
    mm_labels = torch.where(labels == 0, num_classes, labels - 1)
    cls_score = torch.cat([class_logits, obj_logits[:, [1, 0]]], dim=1)
    cum_mm += torch.bincount(mm_labels, minlength=num_classes + 1)
    pos = mm_labels < num_classes
    obj_labels = (mm_labels == num_classes).long()
    avg = max(len(labels), 1)
    loss_classes = seesaw_cxc(cls_score[pos, :num_classes], mm_labels[pos], cum_mm[:num_classes], p, q, eps).sum()
    loss_obj = F.cross_entropy(cls_score[:, num_classes:], obj_labels, reduction="sum")
    return loss_classes / avg, loss_obj / avg


def test_seesaw_det_matches_mmdetection_convention():
    torch.manual_seed(3)
    num_classes = 5
    loss = build_loss("seesaw_det", num_classes=num_classes)
    cum_mm = torch.zeros(num_classes + 1, dtype=torch.long)
    batches = [torch.tensor([0, 0, 0, 1, 1, 2, 0, 0]), torch.tensor([0, 0, 0, 0]),
               torch.tensor([3, 1, 1, 0, 0, 0]), torch.tensor([5, 0, 1, 1, 1, 1])]
    for labels in batches:
        n = len(labels)
        cls0, obj0 = leaf(3 * torch.randn(n, num_classes, dtype=D)), leaf(2 * torch.randn(n, 2, dtype=D))
        cls1, obj1 = leaf(cls0), leaf(obj0)
        got = loss.parts(torch.cat([cls0, obj0], dim=1), labels)
        want_cls, want_obj = seesaw_det_reference(cls1, obj1, labels, cum_mm)
        close(got["loss_cls_classes"], want_cls)
        close(got["loss_cls_objectness"], want_obj)
        g_got = torch.autograd.grad(got["loss_cls_classes"] + got["loss_cls_objectness"], (cls0, obj0))
        g_want = torch.autograd.grad(want_cls + want_obj, (cls1, obj1))
        close(g_got[0], g_want[0])
        close(g_got[1], g_want[1])
        assert loss.cum_samples[0] == cum_mm[num_classes] and torch.equal(loss.cum_samples[1:], cum_mm[:num_classes])


def test_seesaw_det_all_background_batch():
    loss = build_loss("seesaw_det", num_classes=3)
    cls, obj = leaf(torch.randn(4, 3, dtype=D)), leaf(torch.randn(4, 2, dtype=D))
    out = loss.parts(torch.cat([cls, obj], dim=1), torch.zeros(4, dtype=torch.long))
    assert out["loss_cls_classes"].item() == 0.0
    close(out["loss_cls_objectness"], F.cross_entropy(obj, torch.zeros(4, dtype=torch.long)))
    g_cls, g_obj = torch.autograd.grad(out["loss_cls_classes"] + out["loss_cls_objectness"], (cls, obj))
    assert torch.count_nonzero(g_cls) == 0 and torch.count_nonzero(g_obj) == 8
    assert loss.cum_samples.tolist() == [4, 0, 0, 0]


def test_seesaw_det_empty_batch():
    loss = build_loss("seesaw_det", num_classes=3)
    out = loss.parts(torch.zeros(0, 5, dtype=D), torch.zeros(0, dtype=torch.long))
    assert out["loss_cls_classes"].item() == 0.0 and out["loss_cls_objectness"].item() == 0.0


def test_seesaw_det_scores():
    torch.manual_seed(4)
    cls, obj = torch.randn(6, 4, dtype=D), torch.randn(6, 2, dtype=D)
    scores = seesaw_det_scores(cls, obj)
    assert scores.shape == (6, 5)
    close(scores.sum(dim=1), torch.ones(6, dtype=D))
    close(scores[:, 0], obj.softmax(1)[:, 0])
    close(scores[:, 1:], cls.softmax(1) * obj.softmax(1)[:, 1:])
    close(build_loss("seesaw_det", num_classes=4).scores(torch.cat([cls, obj], dim=1)), scores)


def test_seesaw_det_rejects_bad_shapes():
    loss = build_loss("seesaw_det", num_classes=3)
    with pytest.raises(ValueError, match=r"\(N, 5\).*objectness"):
        loss(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        loss.parts(torch.zeros(2, 6), torch.tensor([0, 1]))


def test_seesaw_det_is_an_ltloss_its_value_the_sum_of_its_parts():
    torch.manual_seed(5)
    logits, labels = torch.randn(6, 5, dtype=D), torch.tensor([0, 1, 2, 3, 0, 1])
    a, b = build_loss("seesaw_det", num_classes=3), build_loss("seesaw_det", num_classes=3)
    parts = a.parts(logits, labels)
    close(b(logits, labels), parts["loss_cls_classes"] + parts["loss_cls_objectness"])
    assert torch.equal(a.cum_samples, b.cum_samples) and a.cum_samples.tolist() == [2, 2, 1, 1]


# --------------------------------------------------------------------------------------------------------------
# Gumbel


def gumbel_reference(logits, labels, clamp_max=20.0):
    loss = gumbel_bce_reference(logits, F.one_hot(labels, logits.shape[1])).sum() / logits.shape[0]
    return torch.clamp(loss, min=0, max=clamp_max)


def test_gumbel_matches_reference():
    torch.manual_seed(5)
    logits = 3 * torch.randn(7, 5, dtype=D) - 1
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    loss = build_loss("gumbel")
    got, g_got = value_and_grad(lambda z: loss(z, labels), logits)
    want, g_want = value_and_grad(lambda z: gumbel_reference(z, labels), logits)
    assert want < 20
    close(got, want)
    close(g_got, g_want)


def test_gumbel_values_agree_with_torch_bce_and_gradients_are_exact():
    # GOL calls F.binary_cross_entropy, whose backward divides by max(p (1 - p), 1e-12): for a positive with
    # p < 1e-12 (z < -3.32) its gradient is damped. ltcls returns the exact derivative, d(-log p)/dz = -exp(-z).
    logits = torch.tensor([[-3.5, 0.2, 1.0], [0.5, 2.0, -1.0]], dtype=D)
    labels = torch.tensor([0, 1])
    p = 1 / torch.exp(torch.exp(-logits))
    torch_bce = F.binary_cross_entropy(p, F.one_hot(labels, 3).to(D), reduction="sum") / 2
    got, grad = value_and_grad(lambda z: build_loss("gumbel")(z, labels), logits)
    close(got, torch_bce)
    close(grad[0, 0], -torch.exp(torch.tensor(3.5, dtype=D)) / 2)


def test_gumbel_logit_clamp_edges():
    logits = torch.tensor([[-6.0, 11.0, 0.5], [12.0, -4.5, 9.0]], dtype=D)
    labels = torch.tensor([2, 2])
    loss = build_loss("gumbel")
    got, grad = value_and_grad(lambda z: loss(z, labels), logits)
    inside = (logits > -4) & (logits < 10)
    assert torch.all(grad[~inside] == 0) and torch.all(grad[inside] != 0)
    close(got, loss(logits.clamp(-4, 10), labels))
    close(got, gumbel_reference(logits, labels))


def test_gumbel_reduced_loss_clamp():
    logits = torch.full((3, 4), -4.5, dtype=D)  # -log p = e**4 ~ 54.6 per sample
    labels = torch.tensor([0, 1, 2])
    got, grad = value_and_grad(lambda z: build_loss("gumbel")(z, labels), logits)
    assert got.item() == 20.0 and torch.count_nonzero(grad) == 0
    unclamped = build_loss("gumbel", clamp_max=None)(logits, labels)
    close(unclamped, gumbel_reference(logits, labels, clamp_max=None))
    assert unclamped > 54


def test_gumbel_is_accurate_in_float32_near_the_upper_clamp():
    # 1 - exp(-exp(-9.5)) ~ 7.5e-5: forming 1 - p in float32 loses ~3 digits; log(-expm1(-e)) does not
    logits = torch.tensor([[9.5, 9.9, 9.7]], dtype=D)
    labels = torch.tensor([0])
    exact = build_loss("gumbel")(logits, labels)
    close(exact, gumbel_reference(logits, labels))
    got = build_loss("gumbel")(logits.float(), labels)
    assert abs(got.item() - exact.item()) / exact.item() < 2e-6
    naive = gumbel_reference(logits.float(), labels)
    assert abs(naive.item() - exact.item()) / exact.item() > 2e-6


def test_gumbel_gradcheck():
    torch.manual_seed(6)
    logits = leaf(torch.rand(4, 3, dtype=D) * 12 - 3.5)  # inside (-4, 10)
    labels = torch.tensor([0, 2, 1, 1])
    loss = build_loss("gumbel")
    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (logits,))


def test_gumbel_scores_are_not_softmax():
    logits = torch.tensor([[0.0, 1.0, -2.0], [3.0, 3.0, 3.0]], dtype=D)
    loss = build_loss("gumbel")
    scores = loss.scores(logits)
    close(scores, torch.exp(-torch.exp(-logits)))
    close(gumbel_probs(logits), scores)
    assert not torch.allclose(scores.sum(dim=1), torch.ones(2, dtype=D))
    assert not torch.allclose(scores, logits.softmax(dim=1))
    close(build_loss("gumbel_drop", num_classes=3, class_counts=[5, 5, 5]).scores(logits), scores)


@pytest.mark.parametrize("name", ["gumbel", "gumbel_drop"])
def test_gumbel_classifier_init(name):
    loss = build_loss(name, num_classes=4, class_counts=[9, 3, 2, 1])
    for head in (LinearClassifier(8, 4), NormalizedClassifier(8, 4)):
        loss.init_classifier(head)
        assert torch.all(head.weight == 0.001) and torch.all(head.bias == -2.0)
    with pytest.raises(TypeError, match="weight"):
        loss.init_classifier(nn.ReLU())


# --------------------------------------------------------------------------------------------------------------
# Gumbel + DropLoss


def drop_reference(logits, labels, counts, threshold, uniform):
    """GOL's DropLoss forward with use_classif='gumbel', the random draw given."""
    n, c = logits.shape
    target = torch.zeros(n, c + 1, dtype=logits.dtype)
    target[torch.arange(n), labels] = 1
    target = target[:, :c]
    freq = torch.as_tensor(counts, dtype=D) / sum(counts)
    tail_w = (freq < threshold).to(logits.dtype).view(1, c).expand(n, c)
    fg = (labels != c).to(logits.dtype).view(n, 1).expand(n, c)
    ratio = torch.mean((freq[labels[labels != c]] < threshold).to(logits.dtype))
    bg = 1 - fg
    random = uniform * bg
    random = torch.where(random > ratio, torch.ones_like(random), torch.zeros_like(random))
    drop_w = 1 - (random + fg) * tail_w * (1 - target)
    return torch.sum(gumbel_bce_reference(logits, target) * drop_w) / n


COUNTS = [500, 300, 40, 2, 1]  # frequencies 0.594, 0.356, 0.048, 0.0024, 0.0012: tail below 0.01 = {3, 4}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gumbel_drop_matches_reference(seed):
    torch.manual_seed(10 + seed)
    labels = torch.tensor([0, 1, 3, 5, 5, 5, 4, 5, 2, 5])  # 5 = background
    logits = 2 * torch.randn(10, 5, dtype=D) - 1
    loss = build_loss("gumbel_drop", num_classes=5, class_counts=COUNTS, tail_threshold=0.01)
    torch.manual_seed(seed)
    got, g_got = value_and_grad(lambda z: loss(z, labels), logits)
    torch.manual_seed(seed)
    uniform = torch.rand(10, 5, dtype=D)
    want, g_want = value_and_grad(lambda z: drop_reference(z, labels, COUNTS, 0.01, uniform), logits)
    close(got, want)
    close(g_got, g_want)


def _drop_grad(labels, logits=None):
    loss = build_loss("gumbel_drop", num_classes=5, class_counts=COUNTS, tail_threshold=0.01)
    logits = torch.zeros(len(labels), 5, dtype=D) if logits is None else logits
    return value_and_grad(lambda z: loss(z, torch.tensor(labels)), logits)


def test_gumbel_drop_foreground_rows_ignore_other_tail_classes():
    _, grad = _drop_grad([0, 3])
    assert torch.all(grad[0, [3, 4]] == 0) and torch.all(grad[0, :3] != 0)  # head RoI: tail negatives dropped
    assert grad[1, 3] != 0 and grad[1, 4] == 0  # tail RoI: its own class kept, the other tail class dropped


def test_gumbel_drop_background_rows_follow_the_tail_ratio():
    torch.manual_seed(0)
    _, grad = _drop_grad([3, 4] + [5] * 20)  # ratio 1: a background row never drops
    assert torch.all(grad[2:] != 0)
    _, grad = _drop_grad([0, 1] + [5] * 20)  # ratio 0: every background row drops the tail classes
    assert torch.all(grad[2:, [3, 4]] == 0) and torch.all(grad[2:, :3] != 0)


def test_gumbel_drop_without_foreground_drops_nothing():
    torch.manual_seed(7)
    logits = torch.randn(6, 5, dtype=D)
    got, _ = _drop_grad([5] * 6, logits)
    close(got, gumbel_bce_reference(logits, torch.zeros(6, 5)).sum() / 6)


def test_gumbel_drop_has_no_final_clamp_and_handles_unseen_classes():
    loss = build_loss("gumbel_drop", num_classes=3, class_counts=[10, 0, 0])
    logits = torch.full((2, 3), -4.5, dtype=D, requires_grad=True)
    value = loss(logits, torch.tensor([0, 1]))
    value.backward()
    assert value > 20 and torch.isfinite(logits.grad).all()
    assert loss.tail.tolist() == [False, True, True]


def test_gumbel_drop_gradcheck():
    logits = leaf(torch.rand(6, 5, dtype=D) * 12 - 3.5)
    labels = torch.tensor([0, 3, 5, 5, 4, 5])
    loss = build_loss("gumbel_drop", num_classes=5, class_counts=COUNTS, tail_threshold=0.01)

    def fn(z):
        torch.manual_seed(0)  # the same draw at every evaluation
        return loss(z, labels)

    assert torch.autograd.gradcheck(fn, (logits,))


# --------------------------------------------------------------------------------------------------------------
# Baselines


def focal_reference(logits, labels, gamma):
    log_p = F.log_softmax(logits, dim=1)[torch.arange(len(labels)), labels]
    return -((1 - log_p.exp()) ** gamma) * log_p


@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (0.5, 0.25), (0.0, None)])
def test_focal(gamma, alpha):
    torch.manual_seed(8)
    logits, labels = 2 * torch.randn(6, 4, dtype=D), torch.tensor([0, 1, 2, 3, 0, 0])
    loss = build_loss("focal", gamma=gamma, alpha=alpha)
    got, g_got = value_and_grad(lambda z: loss(z, labels), logits)
    want, g_want = value_and_grad(lambda z: (alpha or 1.0) * focal_reference(z, labels, gamma).mean(), logits)
    close(got, want)
    close(g_got, g_want)
    if gamma == 0:
        close(got, F.cross_entropy(logits, labels))
    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (leaf(logits),))


CB_COUNTS = [5000, 800, 60, 3, 0]


def test_class_balanced_softmax():
    torch.manual_seed(9)
    logits, labels = 2 * torch.randn(8, 5, dtype=D), torch.tensor([0, 0, 1, 2, 3, 4, 0, 2])
    weights = effective_weights_reference(CB_COUNTS, 0.9999)
    loss = build_loss("class_balanced", num_classes=5, class_counts=CB_COUNTS)
    got, g_got = value_and_grad(lambda z: loss(z, labels), logits)
    want, g_want = value_and_grad(lambda z: (weights[labels] * F.cross_entropy(z, labels, reduction="none")).mean(),
                                  logits)
    close(got, want)
    close(g_got, g_want)
    close(weights.sum(), torch.tensor(5.0, dtype=D))
    close(loss.class_weights, weights)  # a class with 0 samples weighs as one with 1 sample: finite
    assert torch.isfinite(weights).all()
    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (leaf(logits),))


def test_class_balanced_focal():
    torch.manual_seed(10)
    logits, labels = 2 * torch.randn(8, 5, dtype=D), torch.tensor([0, 0, 1, 2, 3, 4, 0, 2])
    weights = effective_weights_reference(CB_COUNTS, 0.999)
    loss = build_loss("class_balanced_focal", num_classes=5, class_counts=CB_COUNTS, beta=0.999, gamma=1.5)
    got, g_got = value_and_grad(lambda z: loss(z, labels), logits)
    want, g_want = value_and_grad(lambda z: (weights[labels] * focal_reference(z, labels, 1.5)).mean(), logits)
    close(got, want)
    close(g_got, g_want)


def ldam_reference(logits, labels, counts, max_m=0.5, s=30.0, weight=None):
    m = 1.0 / torch.tensor(counts, dtype=D).clamp(min=1) ** 0.25
    m = m * (max_m / m.max())
    index = F.one_hot(labels, logits.shape[1]).bool()
    output = torch.where(index, logits - m[labels][:, None], logits)
    return F.cross_entropy(s * output, labels, weight=weight)


def test_ldam_and_its_drw_switch():
    torch.manual_seed(11)
    counts = [500, 100, 20, 4, 0]
    logits, labels = torch.randn(8, 5, dtype=D) * 0.5, torch.tensor([0, 0, 1, 2, 3, 4, 0, 1])
    loss = build_loss("ldam", num_classes=5, class_counts=counts, drw_epoch=3)
    weights = effective_weights_reference(counts, 0.9999)
    plain = ldam_reference(logits, labels, counts)
    reweighted = ldam_reference(logits, labels, counts, weight=weights)
    assert not torch.allclose(plain, reweighted)
    for epoch, want in [(0, plain), (2, plain), (3, reweighted), (9, reweighted), (1, plain)]:
        loss.set_epoch(epoch, 10)
        got, g_got = value_and_grad(lambda z: loss(z, labels), logits)
        _, g_want = value_and_grad(
            lambda z, w=(weights if epoch >= 3 else None): ldam_reference(z, labels, counts, weight=w), logits)
        close(got, want)
        close(g_got, g_want)
    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (leaf(logits),))
    never = build_loss("ldam", num_classes=5, class_counts=counts, drw_epoch=None)
    never.set_epoch(10_000, 10_001)
    close(never(logits, labels), plain)
    default = build_loss("ldam", num_classes=5, class_counts=counts)
    default.set_epoch(159, 200)
    close(default(logits, labels), plain)
    default.set_epoch(160, 200)
    close(default(logits, labels), reweighted)


def test_balanced_softmax():
    torch.manual_seed(12)
    counts = [90, 9, 1, 0]
    logits, labels = torch.randn(6, 4, dtype=D), torch.tensor([0, 1, 2, 3, 0, 1])
    prior = torch.tensor([90, 9, 1, 1], dtype=D) / 100
    loss = build_loss("balanced_softmax", num_classes=4, class_counts=counts)
    got, g_got = value_and_grad(lambda z: loss(z, labels), logits)
    want, g_want = value_and_grad(lambda z: F.cross_entropy(z + prior.log(), labels), logits)
    close(got, want)
    close(g_got, g_want)
    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (leaf(logits),))


def test_logit_adjusted_loss_and_posthoc_adjustment():
    torch.manual_seed(13)
    counts = [90, 9, 1]
    prior = torch.tensor(counts, dtype=D) / 100
    logits, labels = torch.randn(6, 3, dtype=D), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = build_loss("logit_adjusted", num_classes=3, class_counts=counts, tau=0.7)
    got, g_got = value_and_grad(lambda z: loss(z, labels), logits)
    want, g_want = value_and_grad(lambda z: F.cross_entropy(z + 0.7 * prior.log(), labels), logits)
    close(got, want)
    close(g_got, g_want)
    close(build_loss("logit_adjusted", num_classes=3, class_counts=counts)(logits, labels),
          F.cross_entropy(logits + prior.log(), labels))
    close(logit_adjust(logits, counts, tau=1.5), logits - 1.5 * prior.log())
    # equal logits: the adjustment predicts the rarest class
    assert logit_adjust(torch.zeros(1, 3, dtype=D), counts).argmax().item() == 2
    assert torch.isfinite(logit_adjust(logits, [5, 0, 0])).all()


# --------------------------------------------------------------------------------------------------------------
# Registry


ALL_COUNTS = [400, 90, 30, 7, 1, 0]


def _run(name: str) -> torch.Tensor:
    torch.manual_seed(14)
    loss = build_loss(name, num_classes=6, class_counts=ALL_COUNTS)
    logits = torch.randn(8, 6, requires_grad=True)
    if name == "seesaw_det":  # C class logits then 2 objectness logits; labels 0 = background, 1..C
        obj = torch.randn(8, 2, requires_grad=True)
        value = loss(torch.cat([logits, obj], dim=1), torch.tensor([0, 1, 2, 0, 6, 0, 3, 0]))
    else:
        value = loss(logits, torch.tensor([0, 1, 2, 3, 4, 5, 0, 6 if name == "gumbel_drop" else 0]))
    value.backward()
    assert torch.isfinite(logits.grad).all()
    return value


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_registered_loss_builds_and_runs(name):
    assert torch.isfinite(_run(name))


def test_registered_names():
    assert set(LOSSES.names()) >= {"ce", "seesaw", "seesaw_det", "gumbel", "gumbel_drop", "focal", "class_balanced",
                                   "class_balanced_focal", "ldam", "balanced_softmax", "logit_adjusted"}


def test_build_loss_errors_name_the_culprit():
    with pytest.raises(KeyError, match="'seasaw'.*Did you mean 'seesaw'"):
        build_loss("seasaw", num_classes=3)
    with pytest.raises(TypeError, match="'gama'.*Did you mean 'gamma'"):
        build_loss("focal", gama=2.0)
    with pytest.raises(TypeError, match="'tau'"):
        build_loss("seesaw", num_classes=3, tau=2.0)
    with pytest.raises(ValueError, match="class_counts"):
        build_loss("class_balanced", num_classes=3)
    with pytest.raises(ValueError, match="4 entries but num_classes is 3"):
        build_loss("ldam", num_classes=3, class_counts=[1, 2, 3, 4])


def test_gumbel_mean_reduction_golden_values():
    # The first author's classification loss (kostas1515/iif GombitLoss, --reduction mean): BCE averaged over N x C.
    # logit 0: p = exp(-1); the positive costs -log p = 1, a negative -log(1 - exp(-1)) = 0.458675...
    logits = torch.zeros(1, 2, dtype=D)
    got = build_loss("gumbel", reduction="mean", clamp_max=None)(logits, torch.tensor([0]))
    close(got, torch.tensor((1.0 - math.log(1.0 - math.exp(-1.0))) / 2, dtype=D))
    torch.manual_seed(6)
    logits = 4 * torch.randn(9, 7, dtype=D)  # some outside [-4, 10]: clamped, as in GombitLoss
    labels = torch.randint(0, 7, (9,))
    loss = build_loss("gumbel", reduction="mean", clamp_max=None)
    got, g_got = value_and_grad(lambda z: loss(z, labels), logits)
    want, g_want = value_and_grad(lambda z: gumbel_bce_reference(z, F.one_hot(labels, 7)).mean(), logits)
    close(got, want)
    close(g_got, g_want)
    # torch's own BCE on GombitLoss's p = 1 / exp(exp(-clamp(z, -4, 10))), reduction 'mean'
    p = 1 / torch.exp(torch.exp(-logits.clamp(-4, 10)))
    close(got, F.binary_cross_entropy(p, F.one_hot(labels, 7).to(D)), rtol=1e-9, atol=1e-12)


def test_gumbel_mean_is_the_sum_form_divided_by_the_number_of_classes():
    torch.manual_seed(7)
    logits = 2 * torch.randn(5, 11, dtype=D)
    labels = torch.randint(0, 11, (5,))
    mean, g_mean = value_and_grad(lambda z: build_loss("gumbel", reduction="mean", clamp_max=None)(z, labels), logits)
    summed, g_sum = value_and_grad(lambda z: build_loss("gumbel", clamp_max=None)(z, labels), logits)
    close(mean * 11, summed)
    close(g_mean * 11, g_sum)
    with pytest.raises(ValueError, match="reduction"):
        build_loss("gumbel", reduction="none")
