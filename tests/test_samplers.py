"""Samplers: class frequencies against n_j**q / sum and the progressive formula, rank sharding, determinism,
state round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltcls.data.build import SAMPLERS, build_sampler
from ltcls.data.samplers import LTSampler

COUNTS = np.array([50000, 25000, 12000, 6000, 3000, 1500, 600, 200, 60, 20])


@pytest.fixture(scope="module")
def targets() -> np.ndarray:
    """A long-tailed label vector (98,380 samples, head/tail 2500), shuffled so order carries no class info."""
    return np.random.default_rng(0).permutation(np.repeat(np.arange(len(COUNTS)), COUNTS))


def _frequencies(sampler: LTSampler, epoch: int) -> np.ndarray:
    sampler.set_epoch(epoch)
    labels = sampler.targets[list(sampler)].numpy()
    return np.bincount(labels, minlength=len(COUNTS)) / len(labels)


def _assert_close(freq: np.ndarray, expected: np.ndarray, draws: int) -> None:
    """Tolerance: 5 binomial standard deviations per class (the draws are seeded, so this is not flaky)."""
    tol = 5 * np.sqrt(expected * (1 - expected) / draws) + 1e-12
    assert np.all(np.abs(freq - expected) <= tol), (freq, expected, tol)


@pytest.mark.parametrize(("cfg", "q"), [
    ({"name": "instance"}, 1.0),
    ({"name": "class_balanced"}, 0.0),
    ({"name": "sqrt"}, 0.5),
    ({"name": "power", "q": 1.0}, 1.0),
    ({"name": "power", "q": 0.25}, 0.25),
    ({"name": "power", "q": 2.0}, 2.0),
])
def test_class_frequencies_follow_power_law(targets, cfg, q):
    sampler = build_sampler(cfg, targets, seed=0, epochs=1)
    expected = COUNTS.astype(float) ** q / (COUNTS.astype(float) ** q).sum()
    assert len(sampler) == len(targets)  # an epoch is N draws whatever the sampler
    _assert_close(_frequencies(sampler, 0), expected, len(targets))


def test_instance_is_a_fresh_permutation_each_epoch(targets):
    sampler = build_sampler({"name": "instance"}, targets, seed=0, epochs=2)
    a, b = sampler.global_indices(0), sampler.global_indices(1)
    assert sorted(a.tolist()) == list(range(len(targets))) and not torch.equal(a, b)


def test_class_balanced_draws_uniformly_within_a_class(targets):
    sampler = build_sampler({"name": "class_balanced"}, targets, seed=0, epochs=1)
    drawn = sampler.global_indices(0).numpy()
    tail = np.where(targets == 9)[0]  # 20 samples, each expected ~492 times
    hits = np.bincount(drawn, minlength=len(targets))[tail]
    expected = len(targets) / 10 / 20
    assert np.all(np.abs(hits - expected) <= 5 * math.sqrt(expected))


def test_sqrt_equals_power_half(targets):
    sqrt = build_sampler({"name": "sqrt"}, targets, seed=3, epochs=1)
    power = build_sampler({"name": "power", "q": 0.5}, targets, seed=3, epochs=1)
    assert torch.equal(sqrt.global_indices(2), power.global_indices(2))


@pytest.mark.parametrize("epoch", [0, 5, 9])
def test_progressive_follows_its_formula(targets, epoch):
    epochs = 10
    sampler = build_sampler({"name": "progressive"}, targets, seed=0, epochs=epochs)
    t = epoch / epochs
    expected = (1 - t) * COUNTS / COUNTS.sum() + t / len(COUNTS)
    np.testing.assert_allclose(sampler.class_probs(epoch).numpy(), expected, rtol=1e-12)
    _assert_close(_frequencies(sampler, epoch), expected, len(targets))


@pytest.mark.parametrize("name", ["instance", "class_balanced", "progressive"])
@pytest.mark.parametrize("num_replicas", [2, 3])
def test_rank_shards_reconstruct_the_global_sequence(name, num_replicas):
    targets = np.random.default_rng(1).integers(0, 7, 1001)  # 1001 is divisible by neither 2 nor 3
    single = build_sampler({"name": name}, targets, seed=5, epochs=4)
    single.set_epoch(2)
    glob = single.global_indices(2).tolist()
    assert list(single) == glob

    shards = []
    for rank in range(num_replicas):
        sampler = build_sampler({"name": name}, targets, seed=5, epochs=4, num_replicas=num_replicas, rank=rank)
        sampler.set_epoch(2)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == math.ceil(1001 / num_replicas)
    pad = len(shards[0]) * num_replicas - 1001
    interleaved = [shard[i] for i in range(len(shards[0])) for shard in shards]
    assert interleaved == glob + glob[:pad]  # padded by wrapping around
    assert sorted(sum(shards, [])) == sorted(glob + glob[:pad])
    assert set(sum(shards, [])) == set(glob)


def test_padding_wraps_when_fewer_samples_than_ranks():
    sampler = build_sampler({"name": "instance"}, [0, 1], seed=0, epochs=1, num_replicas=5, rank=4)
    glob = sampler.global_indices(0).tolist()
    assert len(sampler) == 1 and list(sampler) == [glob[0]]  # global + wrap = g0 g1 g0 g1 g0


@pytest.mark.parametrize("name", ["instance", "sqrt", "progressive"])
def test_same_seed_and_epoch_same_sequence(targets, name):
    a = build_sampler({"name": name}, targets, seed=7, epochs=3)
    b = build_sampler({"name": name}, targets, seed=7, epochs=3)
    c = build_sampler({"name": name}, targets, seed=8, epochs=3)
    assert torch.equal(a.global_indices(1), b.global_indices(1))
    assert not torch.equal(a.global_indices(1), a.global_indices(2))
    assert not torch.equal(a.global_indices(1), c.global_indices(1))


def test_state_dict_round_trip(targets):
    a = build_sampler({"name": "power", "q": 0.5}, targets, seed=11, epochs=5)
    a.set_epoch(3)
    state = a.state_dict()
    assert state == {"epoch": 3, "seed": 11} and all(type(v) is int for v in state.values())
    b = build_sampler({"name": "power", "q": 0.5}, targets, seed=0, epochs=5)
    assert list(b) != list(a)
    b.load_state_dict(state)
    assert list(b) == list(a)


def test_validation_and_registry():
    assert set(SAMPLERS.names()) >= {"instance", "class_balanced", "sqrt", "power", "progressive", "class_aware"}
    assert all(issubclass(SAMPLERS.get(n), LTSampler) for n in SAMPLERS.names())
    with pytest.raises(ValueError, match="rank"):
        build_sampler({"name": "instance"}, [0, 1], seed=0, epochs=1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="q must be >= 0"):
        build_sampler({"name": "power", "q": -1.0}, [0, 1], seed=0, epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        build_sampler({"name": "progressive"}, [0, 1], seed=0, epochs=0)
    with pytest.raises(TypeError, match="no parameter 'q'"):
        build_sampler({"name": "class_balanced", "q": 0.0}, [0, 1], seed=0, epochs=1)
    with pytest.raises(ValueError, match="derived"):
        build_sampler({"name": "instance", "seed": 3}, [0, 1], seed=0, epochs=1)


def test_empty_classes_are_never_drawn():
    sampler = build_sampler({"name": "class_balanced"}, [0, 0, 0, 2], seed=0, epochs=1)
    probs = sampler.class_probs(0).numpy()
    np.testing.assert_allclose(probs, [0.5, 0.0, 0.5])
    drawn = np.asarray([0, 0, 0, 2])[sampler.global_indices(0).numpy()]
    assert 1 not in drawn


# ----------------------------------------------------------------------------------------- class-aware (Kang)

SMALL = np.array([40, 17, 9, 5, 1, 0, 3])  # class 5 has no samples


@pytest.fixture(scope="module")
def small_targets() -> np.ndarray:
    return np.random.default_rng(2).permutation(np.repeat(np.arange(len(SMALL)), SMALL))


@pytest.mark.parametrize("s", [1, 4, 3])
def test_class_aware_epoch_runs_and_frequencies(small_targets, s):
    sampler = build_sampler({"name": "class_aware", "num_samples_cls": s}, small_targets, seed=0, epochs=1)
    present = int((SMALL > 0).sum())
    assert len(sampler) == SMALL.max() * present == 240  # max_class_count * C, not N
    seq = sampler.global_indices(0).numpy()
    labels = small_targets[seq]
    assert len(seq) == 240
    # Runs of s consecutive images of one class (the last run may be cut by the epoch length).
    runs = [labels[i:i + s] for i in range(0, len(labels), s)]
    assert all(len(set(r.tolist())) == 1 for r in runs)
    # Classes cycle through shuffled passes: every class equally often (to within one run per pass boundary).
    counts = np.bincount(labels, minlength=len(SMALL))
    assert counts[5] == 0
    assert counts[SMALL > 0].max() - counts[SMALL > 0].min() <= s
    # Each pass over the classes is a permutation of the present classes.
    picks = labels[::s][: (len(runs) // present) * present].reshape(-1, present)
    assert all(sorted(row.tolist()) == [0, 1, 2, 3, 4, 6] for row in picks)


def test_class_aware_cycles_within_a_class(small_targets):
    """A class's images are drawn in shuffled passes: no image repeats before all of its class were drawn."""
    sampler = build_sampler({"name": "class_aware", "num_samples_cls": 4}, small_targets, seed=1, epochs=1)
    seq = sampler.global_indices(0).numpy()
    for c, n in enumerate(SMALL):
        if n == 0:
            continue
        drawn = seq[small_targets[seq] == c]
        full = (len(drawn) // n) * n
        passes = drawn[:full].reshape(-1, n)
        members = sorted(np.where(small_targets == c)[0].tolist())
        assert all(sorted(p.tolist()) == members for p in passes), c
    first_passes = [seq[small_targets[seq] == 0][:40], seq[small_targets[seq] == 0][40:80]]
    assert not np.array_equal(*first_passes)  # reshuffled at every pass


def test_class_aware_imagenet_lt_epoch_length():
    """Kang's cRT epoch on ImageNet-LT-shaped counts (Pareto, 1280 ... 5): max * C draws, ~11x the dataset."""
    from ltcls.data.tools.make_split import pareto_counts

    counts = np.asarray(pareto_counts(1000))
    targets = np.repeat(np.arange(1000), counts)
    sampler = build_sampler({"name": "class_aware"}, targets, seed=0, epochs=10)
    assert len(sampler) == 1280 * 1000
    assert len(sampler) / len(targets) > 8
    labels = targets[sampler.global_indices(0).numpy()]
    np.testing.assert_array_less(np.abs(np.bincount(labels, minlength=1000) - 1280), 5)


@pytest.mark.parametrize("num_replicas", [2, 3])
def test_class_aware_rank_shards_partition_the_global_order(small_targets, num_replicas):
    single = build_sampler({"name": "class_aware", "num_samples_cls": 4}, small_targets, seed=5, epochs=4)
    single.set_epoch(2)
    glob = single.global_indices(2).tolist()
    assert list(single) == glob
    shards = []
    for rank in range(num_replicas):
        sampler = build_sampler({"name": "class_aware", "num_samples_cls": 4}, small_targets, seed=5, epochs=4,
                                num_replicas=num_replicas, rank=rank)
        sampler.set_epoch(2)
        shards.append(list(sampler))
        assert len(shards[-1]) == math.ceil(240 / num_replicas)
    pad = len(shards[0]) * num_replicas - 240
    assert [shard[i] for i in range(len(shards[0])) for shard in shards] == glob + glob[:pad]


def test_class_aware_determinism_and_state(small_targets):
    cfg = {"name": "class_aware", "num_samples_cls": 4}
    a = build_sampler(cfg, small_targets, seed=7, epochs=3)
    b = build_sampler(cfg, small_targets, seed=7, epochs=3)
    c = build_sampler(cfg, small_targets, seed=8, epochs=3)
    assert torch.equal(a.global_indices(1), b.global_indices(1))
    assert not torch.equal(a.global_indices(1), a.global_indices(2))
    assert not torch.equal(a.global_indices(1), c.global_indices(1))
    a.set_epoch(2)
    state = a.state_dict()
    assert state == {"epoch": 2, "seed": 7, "num_samples_cls": 4}
    c.load_state_dict(state)
    assert list(c) == list(a)
    with pytest.raises(ValueError, match="num_samples_cls"):
        build_sampler({"name": "class_aware", "num_samples_cls": 0}, small_targets, seed=0, epochs=1)
