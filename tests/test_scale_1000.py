"""1000-class scale tests on synthetic ImageNet-LT-shaped features.

A fixed frozen "backbone" is just features: class ``c`` has a random mean, a sample is ``relu(mean + noise)``
(non-negative, as after a ReLU and average pooling), with the published profile's counts (Pareto, alpha 6,
1280 ... 5 per class, ``pareto_counts``). A linear head trained with softmax cross-entropy on them is the
stage-1 head. These are the tests that 10-class toys cannot be: at C = 1000 GOL's clamped Gumbel loss is far
above its clamp for such a head.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltcls.data.tools.make_split import pareto_counts
from ltcls.losses.base import LOSSES, build_loss
from ltcls.losses.gumbel import DECOUPLED_GUMBEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_CLASSES = 1000
DIM = 32
FEW = 20  # Kang: few-shot classes have < 20 training images


class Features:
    """Train features with ImageNet-LT-shaped counts, a balanced test set (20 per class), a CE-trained head."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.counts = np.asarray(pareto_counts(NUM_CLASSES))
        means = torch.randn(NUM_CLASSES, DIM, generator=g)

        def sample(labels: torch.Tensor) -> torch.Tensor:
            return F.relu(means[labels] + torch.randn(len(labels), DIM, generator=g))

        self.train_y = torch.from_numpy(np.repeat(np.arange(NUM_CLASSES), self.counts))
        self.train_x = sample(self.train_y)
        self.test_y = torch.arange(NUM_CLASSES).repeat_interleave(20)
        self.test_x = sample(self.test_y)
        self.few = torch.from_numpy(self.counts < FEW)[self.test_y]
        torch.manual_seed(seed)
        self.head = nn.Linear(DIM, NUM_CLASSES)
        train(self, self.head, F.cross_entropy, lr=0.5, steps=300, seed=seed)

    def predict(self, head: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return head(self.test_x).argmax(1)

    def few_accuracy(self, preds: torch.Tensor) -> float:
        return (preds[self.few] == self.test_y[self.few]).double().mean().item()


def train(data: Features, head: nn.Module, loss_fn, lr: float, steps: int, seed: int = 0, batch: int = 1024,
          weight_decay: float = 5e-4) -> list[float]:
    """SGD (momentum 0.9) on random batches of the train features (instance sampling); the loss of every step."""
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(data.train_y), (batch,), generator=g)
        loss = loss_fn(head(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def data() -> Features:
    return Features()


def test_the_synthetic_features_are_imagenet_lt_shaped(data):
    assert data.counts.max() == 1280 and data.counts.min() == 5 and len(data.counts) == NUM_CLASSES
    assert 0 < data.few.double().mean() < 0.5
    preds = data.predict(data.head)
    overall = (preds == data.test_y).double().mean().item()
    assert overall > 0.2 and data.few_accuracy(preds) < overall / 4  # a working, head-biased softmax head


# ----------------------------------------------------------------------------------------------- item 6


#: How classification uses each loss where that differs from the registered defaults (the decoupled Gumbel
#: setting: GOL's detection clamp would zero the gradient, see the next test).
CLASSIFICATION_PARAMS = {"gumbel": {k: v for k, v in DECOUPLED_GUMBEL.items() if k != "name"}}


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_gives_finite_nonzero_gradients_from_a_ce_head_at_1000_classes(data, name):
    loss = build_loss(name, num_classes=NUM_CLASSES, class_counts=data.counts.tolist(),
                      **CLASSIFICATION_PARAMS.get(name, {}))
    x, y = data.train_x[::50], data.train_y[::50]  # ~1.9k samples over the whole profile
    with torch.no_grad():
        logits = data.head(x)
    logits.requires_grad_()
    if name == "seesaw_det":  # class logits + (background, foreground) objectness; every sample foreground
        objectness = torch.zeros(len(y), 2, requires_grad=True)
        value = loss(torch.cat([logits, objectness], dim=1), y)
    else:
        value = loss(logits, y)
    value.backward()
    assert torch.isfinite(value) and value > 0
    assert torch.isfinite(logits.grad).all()
    # Every misclassified sample gets a gradient; a confidently right one may not (its softmax gradient underflows
    # to 0 in float32: LDAM's s = 30 on a linear head's logits does that to ~11% of these samples, measured).
    per_sample = logits.grad.abs().sum(1)
    wrong = logits.detach().argmax(1) != y
    assert wrong.any() and (per_sample[wrong] > 0).all(), f"{name}: {(per_sample[wrong] == 0).sum()} wrong, no grad"
    assert (per_sample > 0).double().mean() > 0.5, f"{name}: {(per_sample == 0).sum()} samples get no gradient"


def test_gol_clamp_zeroes_the_gradient_of_a_softmax_head_at_100_and_1000_classes(data):
    """The issue-10 no-op: the Gumbel loss summed over C classes is far above GOL's clamp (20) for a softmax head."""
    x, y = data.train_x[::50], data.train_y[::50]
    for c in (100, 1000):
        keep = y < c
        logits = data.head(x[keep])[:, :c].detach().requires_grad_()
        clamped = build_loss("gumbel")(logits, y[keep])
        clamped.backward()
        unclamped = build_loss("gumbel", clamp_max=None)(logits, y[keep])
        assert clamped.item() == 20.0 and torch.count_nonzero(logits.grad) == 0
        assert unclamped > 3 * 20 * c / 100  # measured here: 88 per sample at C = 100, 717 at C = 1000


def test_gol_init_alone_does_not_escape_the_clamp_with_wide_relu_features():
    """GOL's init (w 0.001, b -2) starts below the clamp only while 0.001 * sum(x) is small: with 2048-d ReLU
    features of mean 0.3 (sum 614) the loss at C = 1000 starts at ~22 and the clamp zeroes its gradient."""
    loss = build_loss("gumbel")
    head = nn.Linear(2048, NUM_CLASSES)
    loss.init_classifier(head)
    logits = head(torch.full((4, 2048), 0.3)).detach().requires_grad_()
    value = loss(logits, torch.arange(4))
    value.backward()
    assert value.item() == 20.0 and torch.count_nonzero(logits.grad) == 0
    assert build_loss("gumbel", clamp_max=None)(logits, torch.arange(4)) > 20


# ----------------------------------------------------------------------------------------------- item 1


def test_decoupled_gumbel_retrains_the_softmax_head_at_1000_classes(data):
    """Stage 2 as GOL describes it (the softmax-trained classifier re-trained with the Gumbel loss, random
    sampling). With GOL's detection form (summed over classes, clamped at 20) the loss stays at 20 with zero
    gradient and weight decay alone cannot change an argmax (it scales all logits alike); unclamped, the head's
    predictions change and few-shot accuracy rises. The decoupled setting (``DECOUPLED_GUMBEL``: the mean over
    N x C of the authors' classification code) is that sum divided by C: at lr x C (weight decay / C) it takes
    exactly the same steps, i.e. at the same lr a C-times smaller one."""
    before = data.predict(data.head)

    old = copy.deepcopy(data.head)
    old_losses = train(data, old, build_loss("gumbel"), lr=0.01, steps=30)
    assert set(old_losses) == {20.0}
    assert not torch.equal(old.weight, data.head.weight)  # weight decay moved it ...
    assert torch.equal(data.predict(old), before)  # ... but not a single prediction

    summed = copy.deepcopy(data.head)
    sum_losses = train(data, summed, build_loss("gumbel", clamp_max=None), lr=0.01, steps=100)
    assert sum_losses[0] > 20 * 10 and sum_losses[-1] < 20  # ~700 -> ~4 (measured)
    after = data.predict(summed)  # Gumbel scores are monotone in the logits: the same argmax
    assert (after != before).double().mean() > 0.1  # measured 24% of the test predictions
    overall = (before == data.test_y).double().mean(), (after == data.test_y).double().mean()
    assert overall[1] > overall[0] and data.few_accuracy(after) > data.few_accuracy(before)

    mean = copy.deepcopy(data.head)
    mean_losses = train(data, mean, build_loss(**DECOUPLED_GUMBEL), lr=0.01 * NUM_CLASSES, steps=100,
                        weight_decay=5e-4 / NUM_CLASSES)
    np.testing.assert_allclose(np.array(mean_losses) * NUM_CLASSES, sum_losses, rtol=1e-3)
    torch.testing.assert_close(mean.weight, summed.weight, rtol=1e-3, atol=1e-4)
