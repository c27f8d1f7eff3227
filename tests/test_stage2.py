"""Two-stage training: `ltcls-train --stage2 crt|lws|tau_norm|ncm|gumbel` on a tiny digits_lt stage-1 run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from ltcls.cli import train_main
from ltcls.engine.features import cached_features
from ltcls.models.decoupled import TauNormClassifier
from ltcls.models.dual_head import dual_head_average, dual_head_select

# Stage 1: CE, ResNet-8 on 16x16 digits, 15 epochs, with a balanced 10-per-class validation split.
STAGE1 = ["model.name=cifar_resnet8", "data.img_size=16", "data.val_per_class=10", "train.epochs=15",
          "train.batch_size=32", "train.num_workers=0", "eval.interval=0"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("stage1") / "digits_ce"
    cfg = Path(__file__).parents[1] / "configs" / "digits_lt_ce.yaml"
    assert train_main(["--config", str(cfg), "--work-dir", str(run), "--set", *STAGE1]) == 0
    return run


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _backbone_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["model"]
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


def _stage2(stage1: Path, method: str, *overrides: str, work_dir: Path | None = None) -> Path:
    out = work_dir or stage1 / f"stage2_{method}"
    args = ["--stage2", method, "--from", str(stage1), "--work-dir", str(out)]
    if overrides:
        args += ["--set", *overrides]
    assert train_main(args) == 0
    return out


@pytest.mark.parametrize("method,cache", [("crt", False), ("crt", True), ("lws", False), ("gumbel", True)])
def test_training_methods_keep_the_backbone_bit_identical(stage1, tmp_path, method, cache):
    run = _stage2(stage1, method, f"stage2.cache_features={str(cache).lower()}", "train.epochs=3",
                  work_dir=tmp_path / method)
    before, after = _backbone_state(stage1 / "checkpoint.pt"), _backbone_state(run / "checkpoint.pt")
    assert before.keys() == after.keys() and any("running_mean" in k for k in before)
    for k in before:  # weights AND BatchNorm running statistics
        assert torch.equal(before[k], after[k]), k
    m = _metrics(run)
    assert m["stage"] == f"stage2_{method}" and m["feature_cache"] is cache
    for key in ("overall", "many", "medium", "few", "per_class", "class_counts", "split"):
        assert key in m
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["stage2"]["method"] == method and cfg["stage2"]["from_run"] == str(stage1)
    counts = m["class_counts"]
    if method in ("crt", "lws"):  # Kang et al.'s class-aware sampler: an epoch is max count x C samples
        assert cfg["sampler"] == {"name": "class_aware", "num_samples_cls": 4}
        samples, batch = max(counts) * len(counts), cfg["train"]["batch_size"]
    else:
        samples, batch = sum(counts), cfg["train"]["batch_size"]
    log = (run / "train.log").read_text()  # what every stage will do, at its start
    assert f"stage2_{method}: 3 epochs x {samples // batch} steps ({samples} samples per epoch" in log, log
    head = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    s1 = torch.load(stage1 / "checkpoint.pt", weights_only=True)["model"]
    if method == "lws":  # W and b frozen, only the scales learned
        assert torch.equal(head["classifier.weight"], s1["classifier.weight"])
        assert torch.equal(head["classifier.bias"], s1["classifier.bias"])
        assert not torch.equal(head["classifier.scales"], torch.ones_like(head["classifier.scales"]))
    else:
        assert not torch.equal(head["classifier.weight"], s1["classifier.weight"])
    table = (run / "comparison.md").read_text()
    assert "| stage 1 |" in table and f"| stage 2 ({method}) |" in table


def test_crt_and_tau_norm_raise_few_shot_accuracy(stage1):
    # Measured (2-core CPU, seed 0): stage 1 few 31.3; cRT 67.3; tau-norm 44.7 (tau 1.3 on val).
    base = _metrics(stage1)["few"]
    crt = _metrics(_stage2(stage1, "crt"))
    tau = _metrics(_stage2(stage1, "tau_norm"))
    assert crt["few"] >= base + 10.0, (base, crt["few"])
    assert tau["few"] >= base + 5.0, (base, tau["few"])


def test_tau_is_chosen_on_val_not_test(stage1, tmp_path):
    run = _stage2(stage1, "tau_norm", work_dir=tmp_path / "tau")
    m = _metrics(run)
    assert m["tau_selected_on"] == "val" and m["split"] == "test"
    sweep = {row["tau"]: row for row in m["tau_sweep"]}
    assert m["tau"] == max(m["tau_sweep"], key=lambda r: r["mean_per_class"])["tau"]
    # Recompute the sweep independently on the cached *validation* features: it must match exactly.
    val = torch.load(stage1 / "feature_cache" / "val_views1.pt", weights_only=True)["features"][0]
    from ltcls.data.build import build_data

    data = build_data(yaml.safe_load((run / "config.yaml").read_text())["data"])
    linear = torch.nn.Linear(val.shape[1], 10)
    s1 = torch.load(stage1 / "checkpoint.pt", weights_only=True)["model"]
    linear.load_state_dict({"weight": s1["classifier.weight"], "bias": s1["classifier.bias"]})
    y = torch.as_tensor(data.val.targets)
    for tau in (0.0, m["tau"], 2.0):
        head = TauNormClassifier.from_linear(linear, tau)
        acc = (head(val).argmax(1) == y).double().mean().item() * 100
        assert acc == pytest.approx(sweep[tau]["overall"], abs=1e-9)
    assert any(t.startswith("stage2/tau_sweep") for t in _scalar_tags(run))


def _scalar_tags(run: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return acc.Tags()["scalars"]


def test_ncm_and_dual_head_report(stage1, tmp_path):
    run = _stage2(stage1, "ncm", "stage2.dual_head_threshold=20", work_dir=tmp_path / "ncm")
    m = _metrics(run)
    assert m["feature_cache"] is True and (stage1 / "feature_cache" / "train_views1.pt").is_file()
    dual = m["dual_head"]
    assert dual["threshold"] == 20 and set(dual) >= {"stage1_head", "stage2_head", "combined"}
    assert dual["stage2_head"]["overall"] == pytest.approx(m["overall"])
    assert dual["stage1_head"]["overall"] == pytest.approx(_metrics(stage1)["overall"])
    table = (run / "comparison.md").read_text()
    assert "| dual head sel (T = 20) |" in table and "| dual head avg (w = 0.5) |" in table
    assert dual["combine"] == "sel" and dual["combined"] == dual["sel"] and set(dual["avg"]) >= {"overall", "few"}
    tags = _scalar_tags(run)
    assert "stage2/acc/few" in tags and "stage2/dual_head/few" in tags


def test_dual_head_selection_follows_threshold_exactly():
    original = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]])
    calibrated = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.7, 0.6]])
    counts = [500, 300, 301, 5]
    out = dual_head_select(original, calibrated, counts, threshold=300)
    # columns with <= 300 training samples (1 and 3) from the calibrated head, the rest from the original
    expected = torch.tensor([[0.9, 0.2, 0.7, 0.4], [0.1, 0.8, 0.3, 0.6]])
    assert torch.equal(out, expected)
    assert torch.equal(dual_head_select(original, calibrated, counts, threshold=4), original)
    assert torch.equal(dual_head_select(original, calibrated, counts, threshold=500), calibrated)
    with pytest.raises(ValueError, match="class counts"):
        dual_head_select(original, calibrated, [1, 2], threshold=3)


def test_feature_cache_reuses_and_invalidates(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.full((1, 3, 2), float(len(calls)))

    path = tmp_path / "f.pt"
    a = cached_features(path, "key1", compute)
    b = cached_features(path, "key1", compute)
    assert len(calls) == 1 and torch.equal(a, b)
    c = cached_features(path, "key2", compute)  # checkpoint or data changed -> new key -> recompute
    assert len(calls) == 2 and not torch.equal(a, c)


def test_stage2_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Path(__file__).parents[1] / "configs" / "digits_lt_ce.yaml"
    with pytest.raises(SystemExit):
        train_main(["--config", str(cfg), "--stage2", "crt"])
    err = capsys.readouterr().err
    assert "no stage-1 run at runs/digits_lt_ce" in err and "ltcls-train --config" in err
    with pytest.raises(SystemExit):
        train_main(["--config", str(cfg), "--from", "x"])
    assert "--from needs --stage2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["--stage2", "bogus", "--from", "x"])
    assert "invalid choice" in capsys.readouterr().err


def test_score_averaging_rule():
    s1 = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    s2 = torch.tensor([[0.1, 0.1, 0.8], [0.5, 0.3, 0.2]])
    assert torch.allclose(dual_head_average(s1, s2), (s1 + s2) / 2)
    assert torch.allclose(dual_head_average(s1, s2, 0.25), 0.75 * s1 + 0.25 * s2)
    assert dual_head_average(s1, s2).argmax(1).tolist() == [2, 2]  # row 0 follows head 2, row 1 head 1
    with pytest.raises(ValueError, match="weight"):
        dual_head_average(s1, s2, 1.5)


def test_dual_head_module_follows_the_configured_rule():
    """What ltcls-eval / -predict / -export use as a run's dual head is the rule its stage2.combine asks for."""
    from ltcls.export import DualHeadClassifier
    from ltcls.models.dual_head import dual_head_rule

    assert [dual_head_rule("sel", 20), dual_head_rule("avg", None), dual_head_rule("avg", 20),
            dual_head_rule("sel", None)] == ["sel", "avg", "avg", None]
    torch.manual_seed(0)
    a, b, x, counts = nn.Linear(4, 3), nn.Linear(4, 3), torch.randn(5, 4), [50, 10, 2]
    s1, s2 = a(x).softmax(1), b(x).softmax(1)
    avg = DualHeadClassifier(a, b, counts, None, rule="avg", weight=0.25)
    sel = DualHeadClassifier(a, b, counts, 10)
    assert torch.allclose(avg(x), dual_head_average(s1, s2, 0.25))
    assert torch.allclose(sel(x), dual_head_select(s1, s2, torch.tensor(counts), 10))
    with pytest.raises(ValueError, match="rule"):
        DualHeadClassifier(a, b, counts, None, rule="sel")
