"""Classifier heads: each formula against a computation written here, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ltcls.models.classifiers import CLASSIFIERS, NormalizedClassifier, build_classifier, cosine_logits
from ltcls.models.decoupled import LWSClassifier, NCMClassifier, TauNormClassifier

D = torch.float64


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def trained_linear(in_features: int = 6, num_classes: int = 4, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, num_classes).to(D)
    with torch.no_grad():
        linear.weight.mul_(torch.arange(1, num_classes + 1, dtype=D)[:, None])  # rows of different norms
        linear.bias.normal_()
    return linear


def test_registered_heads():
    assert {"linear", "normalized", "tau_norm", "lws", "ncm"} <= set(CLASSIFIERS.names())
    for name in ("tau_norm", "lws", "ncm"):
        head = build_classifier(name, in_features=5, num_classes=3)
        assert isinstance(head, nn.Module)
    with pytest.raises(TypeError, match="'tua'"):
        build_classifier("tau_norm", in_features=5, num_classes=3, tua=1.0)


def test_normalized_classifier_formula():
    torch.manual_seed(1)
    head = NormalizedClassifier(5, 3, tau=20.0).to(D)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.1, -0.2, 0.3], dtype=D))
    x = torch.randn(4, 5, dtype=D)
    w = head.weight / (head.weight.norm(dim=1, keepdim=True) + 1e-6)
    xn = 20.0 * x / (x.norm(dim=1, keepdim=True) + 1e-6)
    close(head(x), xn @ w.T + head.bias)
    fresh = NormalizedClassifier(512, 100)
    assert torch.all(fresh.bias == 0) and abs(fresh.weight.std().item() - 0.01) < 1e-3
    assert head(x).abs().max() <= 20.0 + 1.0  # cosine logits bounded by tau (plus the bias)


def test_tau_norm_formula_and_edges():
    linear = trained_linear()
    x = torch.randn(5, 6, dtype=D)
    for tau in (0.0, 0.5, 1.0, 2.0):
        head = TauNormClassifier.from_linear(linear, tau=tau)
        norms = linear.weight.norm(dim=1, keepdim=True)
        close(head(x), x @ (linear.weight / norms**tau).T)
    close(TauNormClassifier.from_linear(linear, tau=0.0)(x), x @ linear.weight.T)  # W itself, bias dropped
    unit = TauNormClassifier.from_linear(linear, tau=1.0).normalized_weight()
    close(unit.norm(dim=1), torch.ones(4, dtype=D))
    head = TauNormClassifier.from_linear(linear, tau=1.0)
    head.tau = 0.0  # swept in place on the validation split
    close(head(x), x @ linear.weight.T)
    with torch.no_grad():
        head.weight[2] = 0.0
    head.tau = 1.0
    assert torch.isfinite(head(x)).all() and torch.all(head(x)[:, 2] == 0)
    assert TauNormClassifier(6, 4).weight.shape == (4, 6)


def test_lws_only_trains_scales_and_starts_from_the_linear_head():
    linear = trained_linear()
    head = LWSClassifier.from_linear(linear)
    x = torch.randn(5, 6, dtype=D)
    close(head(x), linear(x))
    assert [name for name, p in head.named_parameters() if p.requires_grad] == ["scales"]
    assert set(head.state_dict()) == {"weight", "bias", "scales"}
    weight, bias = head.weight.clone(), head.bias.clone()
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    head(x).pow(2).sum().backward()
    opt.step()
    assert torch.equal(head.weight, weight) and torch.equal(head.bias, bias)
    assert not torch.allclose(head.scales, torch.ones(4, dtype=D))
    close(head(x), linear(x) * head.scales)


def test_lws_loads_a_linear_state_dict_and_handles_no_bias():
    linear = trained_linear()
    head = build_classifier("lws", in_features=6, num_classes=4).to(D)
    missing, unexpected = head.load_state_dict(linear.state_dict(), strict=False)
    assert missing == ["scales"] and unexpected == []
    x = torch.randn(3, 6, dtype=D)
    close(head(x), linear(x))
    no_bias = nn.Linear(6, 4, bias=False).to(D)
    close(LWSClassifier.from_linear(no_bias)(x), no_bias(x))


def test_ncm_fit_and_predict_hand_made():
    # train features: class 0 around (3, 1), class 1 around (1, 3); the global mean is (2, 2)
    feats = torch.tensor([[3.0, 1.0], [3.0, 1.0], [1.0, 3.0], [1.0, 3.0]], dtype=D)
    labels = torch.tensor([0, 0, 1, 1])
    head = NCMClassifier(2, 3).to(D)
    with pytest.raises(RuntimeError, match="fit"):
        head(feats)
    head.fit(feats, labels)
    close(head.global_mean, torch.tensor([2.0, 2.0], dtype=D))
    r = 1 / 2**0.5
    close(head.class_means[:2], torch.tensor([[r, -r], [-r, r]], dtype=D))
    x = torch.tensor([[5.0, 2.0], [2.0, 2.5], [2.0, 2.0 + 1e-3]], dtype=D)
    xn = (x - 2.0) / (x - 2.0).norm(dim=1, keepdim=True)
    logits = head(x)
    close(logits[:, :2], -((xn[:, None, :] - head.class_means[None, :2]) ** 2).sum(-1))
    assert logits[:, :2].argmax(dim=1).tolist() == [0, 1, 1]
    assert torch.all(logits[:, 2] == float("-inf"))  # class 2 has no training sample
    assert logits.argmax(dim=1).tolist() == [0, 1, 1]


def test_ncm_class_means_are_means_of_normalized_centred_features():
    torch.manual_seed(2)
    feats, labels = torch.randn(30, 4, dtype=D) + 1.0, torch.arange(30) % 3
    head = build_classifier("ncm", in_features=4, num_classes=3).to(D).fit(feats, labels)
    centred = feats - feats.mean(0)
    unit = centred / centred.norm(dim=1, keepdim=True)
    for c in range(3):
        close(head.class_means[c], unit[labels == c].mean(0))
    restored = NCMClassifier(4, 3).to(D)
    restored.load_state_dict(head.state_dict())
    close(restored(feats), head(feats))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        NCMClassifier(4, 3).fit(feats, labels + 1)


def test_cosine_logits_is_the_normalized_head_and_ignores_row_scale():
    torch.manual_seed(3)
    x, weight, bias = torch.randn(4, 5, dtype=D), torch.randn(3, 5, dtype=D), torch.randn(3, dtype=D)
    expected = 7.0 * (x / (x.norm(dim=1, keepdim=True) + 1e-6)) @ (weight / (weight.norm(dim=1, keepdim=True) + 1e-6)).T
    close(cosine_logits(x, weight, 7.0, 1e-6, bias), expected + bias)
    scaled = weight * torch.tensor([[1.0], [10.0], [0.1]], dtype=D)
    torch.testing.assert_close(cosine_logits(x, scaled, 7.0, 0.0), cosine_logits(x, weight, 7.0, 0.0))


def test_cosine_weight_gradient_scales_with_tau_over_row_norm():
    # the property behind the normalized head's init: SGD's step on a row is tau / ||W_row|| times a
    # unit-scale direction orthogonal to the row, so a small row takes a huge step
    torch.manual_seed(4)
    x, labels = torch.randn(8, 6, dtype=D).relu(), torch.arange(8) % 3
    weight = torch.randn(3, 6, dtype=D)

    def grad(w: torch.Tensor, tau: float) -> torch.Tensor:
        w = w.clone().requires_grad_(True)
        nn.functional.cross_entropy(cosine_logits(x, w, tau, 0.0), labels).backward()
        return w.grad

    g = grad(weight, 20.0)
    close((g * weight).sum(dim=1), torch.zeros(3, dtype=D))  # orthogonal to each row
    scale = torch.tensor([[0.01], [1.0], [100.0]], dtype=D)
    torch.testing.assert_close(grad(weight * scale, 20.0), g / scale)


def test_init_norm_sets_the_initial_row_norm_and_bounds_the_first_step():
    torch.manual_seed(5)
    default, unit = NormalizedClassifier(64, 10), NormalizedClassifier(64, 10, init_norm=1.0)
    assert abs(default.weight.std().item() - 0.01) < 2e-3  # mmdetection's N(0, 0.01): rows of norm ~0.08
    torch.testing.assert_close(unit.weight.norm(dim=1), torch.ones(10))
    x, labels = torch.rand(64, 64), torch.arange(64) % 10  # non-negative, like pooled ReLU features
    growth = {}
    for name, head in (("default", default), ("unit", unit)):
        before = head.weight.detach().norm(dim=1)
        nn.functional.cross_entropy(head(x), labels).backward()
        with torch.no_grad():
            head.weight -= 0.1 * head.weight.grad  # one SGD step at the digits_lt recipe's lr
        growth[name] = (head.weight.norm(dim=1) / before).max().item()
    assert growth["default"] > 10  # the step dwarfs the row: its direction is replaced, its norm explodes
    assert growth["unit"] < 1.5
    with pytest.raises(ValueError, match="init_norm"):
        NormalizedClassifier(4, 2, init_norm=0.0)
