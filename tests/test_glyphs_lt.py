"""glyphs_lt: the ImageNet-LT-shaped profile, the class choice (no look-alikes), deterministic generation, the
cache (re-used, parameter changes and broken files detected) and a tiny `ltcls-train` / `ltcls-data stats` run."""

from __future__ import annotations

import json
import re
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import yaml

from ltcls.cli import train_main
from ltcls.cli.data import main as data_main
from ltcls.data.build import build_data
from ltcls.data.datasets import glyph_render as render
from ltcls.data.datasets import glyphs_lt as G
from ltcls.data.tools.profiles import imagenet_lt_profile
from ltcls.metrics import shot_groups

#: Small settings: 12 classes, train counts 82 .. 5 (scale 0.06), 16 px.
SMALL = G.GlyphsSpec(num_classes=12, scale=0.06, seed=0, render_size=16, test_per_class=4, val_per_class=2)
ROOT = Path(__file__).parents[1]


def _groups(counts, many=100, few=20) -> dict[str, int]:
    g = shot_groups(counts, many, few)
    return {name: int((g == name).sum()) for name in ("many", "medium", "few")}


# ----------------------------------------------------------------------------------------- profile


def test_profile_has_imagenet_lt_shape_at_scale_one():
    counts = imagenet_lt_profile(1000, 1.0)
    assert max(counts) == 1280 and min(counts) == 5 and counts == sorted(counts, reverse=True)
    assert abs(sum(counts) - 115_846) < 0.005 * 115_846                     # published train size
    groups = _groups(counts)
    assert abs(groups["many"] - 385) <= 5 and abs(groups["medium"] - 479) <= 10 and abs(groups["few"] - 136) <= 10


def test_default_scale_populates_all_three_groups_at_1000_classes():
    counts = imagenet_lt_profile(1000, G.GlyphsSpec().scale)
    groups = _groups(counts)                       # eval.many_threshold 100 / few_threshold 20, the defaults
    assert groups["many"] >= 60 and groups["medium"] >= 300 and groups["few"] >= 200, groups
    assert min(counts) == 5 and sum(counts) < 50_000


def test_profile_keeps_its_shape_at_few_classes_and_rejects_bad_values():
    small = imagenet_lt_profile(30, 0.3)
    assert small[0] == imagenet_lt_profile(1000, 0.3)[0] and small[-1] == 5
    assert all(a >= b for a, b in zip(small, small[1:]))
    with pytest.raises(ValueError, match="scale"):
        imagenet_lt_profile(10, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        imagenet_lt_profile(1, 0.5)


# ----------------------------------------------------------------------------------------- classes


def test_look_alikes_keep_one_per_group():
    latin, greek, cyrillic = "AHo", "ΑΗο", "АНо"        # the same outlines in DejaVu / STIX
    candidates = [ord(c) for c in latin + greek + cyrillic + "Ж"]
    kept = render.select_classes(4, 32, candidates=candidates)
    assert [chr(k.codepoint) for k in kept] == ["A", "H", "o", "Ж"]
    assert kept[0].name == "A LATIN CAPITAL LETTER A"


def test_no_two_kept_classes_render_alike():
    classes = render.select_classes(60, 32)
    paths, cover = render.font_coverage()
    assert len({c.codepoint for c in classes}) == 60
    drawn = {(c.codepoint, f): render.render_glyph(paths[f], chr(c.codepoint), 32)
             for c in classes for f in cover[c.codepoint]}
    for a, b in combinations(classes, 2):
        for font in set(cover[a.codepoint]) & set(cover[b.codepoint]):
            diff = np.abs(drawn[a.codepoint, font] - drawn[b.codepoint, font]).mean()
            assert diff > 0.01, (a.name, b.name, paths[font])


# ----------------------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def small_set():
    return G.generate(SMALL, progress=False)


def test_generation_is_deterministic_and_seeded(small_set):
    again = G.generate(SMALL, progress=False)
    for split in G.SPLITS:
        assert small_set.images[split].tobytes() == again.images[split].tobytes()
        assert np.array_equal(small_set.labels[split], again.labels[split])
    other = G.generate(G.GlyphsSpec(**{**SMALL.__dict__, "seed": 1}), progress=False)
    assert other.classes == small_set.classes                    # the class list does not depend on the seed
    assert not np.array_equal(other.images["test"], small_set.images["test"])
    assert other.meta["counts"]["train"] != small_set.meta["counts"]["train"]


def test_counts_follow_the_profile_and_eval_splits_are_balanced(small_set):
    train = np.bincount(small_set.labels["train"], minlength=SMALL.num_classes)
    assert sorted(train.tolist(), reverse=True) == imagenet_lt_profile(SMALL.num_classes, SMALL.scale)
    assert _groups(train, 50, 10) == {"many": 2, "medium": 7, "few": 3}
    assert np.bincount(small_set.labels["test"]).tolist() == [SMALL.test_per_class] * SMALL.num_classes
    assert np.bincount(small_set.labels["val"]).tolist() == [SMALL.val_per_class] * SMALL.num_classes
    for split in G.SPLITS:
        images = small_set.images[split]
        assert images.dtype == np.uint8 and images.shape[1:] == (16, 16) and images.std() > 10
    # images of one class differ from one another (distortions), a class's test images do not depend on the profile
    assert len({img.tobytes() for img in small_set.images["test"]}) == len(small_set.images["test"])
    rescaled = G.generate(G.GlyphsSpec(**{**SMALL.__dict__, "scale": 0.04}), progress=False)
    assert np.array_equal(rescaled.images["test"], small_set.images["test"])


# ----------------------------------------------------------------------------------------- cache


def _file(root: Path, spec: G.GlyphsSpec) -> Path:
    return root / "glyphs_lt" / f"{spec.file_stem()}.npz"


def test_cache_is_reused_and_a_parameter_change_regenerates(tmp_path, monkeypatch, small_set):
    calls, real = [], G.generate

    def fake_generate(spec, progress=None):
        calls.append(spec)
        return small_set if spec == SMALL else real(spec, progress=False)

    monkeypatch.setattr(G, "generate", fake_generate)
    first = G.load_or_generate(tmp_path, SMALL)
    second = G.load_or_generate(tmp_path, SMALL)
    assert calls == [SMALL]                                        # read back, not generated again
    assert second.images["train"].tobytes() == first.images["train"].tobytes()
    meta = json.loads(_file(tmp_path, SMALL).with_suffix(".json").read_text())
    assert meta["params"] == SMALL.params() and meta["classes"] == small_set.classes

    changed = G.GlyphsSpec(**{**SMALL.__dict__, "test_per_class": 3})
    assert changed.file_stem() != SMALL.file_stem()
    # a file at the new name that holds other parameters (a copy, an edit) is not trusted
    shutil.copy(_file(tmp_path, SMALL), _file(tmp_path, changed))
    data = G.load_or_generate(tmp_path, changed)
    assert calls[-1] == changed and data.meta["params"]["test_per_class"] == 3
    assert np.bincount(data.labels["test"]).tolist() == [3] * SMALL.num_classes


def test_a_partial_file_is_never_used(tmp_path, monkeypatch, small_set):
    monkeypatch.setattr(G, "generate", lambda spec, progress=None: small_set)
    G.load_or_generate(tmp_path, SMALL)
    path = _file(tmp_path, SMALL)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])                   # a copy cut short
    assert G.load(path, SMALL) is None
    data = G.load_or_generate(tmp_path, SMALL)
    assert path.read_bytes() == whole and data.images["test"].tobytes() == small_set.images["test"].tobytes()

    # a generation killed while writing leaves only NAME.tmp, which nothing reads
    path.unlink()
    leftover = path.with_name(f".{path.name}.killed.tmp")
    leftover.write_bytes(whole[:1000])

    def killed(spec, progress=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(G, "generate", killed)
    with pytest.raises(KeyboardInterrupt):
        G.load_or_generate(tmp_path, SMALL)
    assert not path.exists()

    def failing_write(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):               # the atomic writer removes its partial file
        G.atomic_write(path, failing_write)
    assert not path.exists() and [p.name for p in path.parent.glob("*.tmp")] == [leftover.name]


def test_bad_values_are_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="data.scale must be in"):
        G.load_or_generate(tmp_path, G.GlyphsSpec(scale=1.5))
    with pytest.raises(ValueError, match="num_classes 99999 is more than"):
        render.select_classes(99999, 32, candidates=[ord("A")])


# ----------------------------------------------------------------------------------------- commands


def _tiny_config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "glyphs_lt_ce.yaml").read_text())
    cfg["data"].update(root=str(tmp_path / "data"), num_classes=SMALL.num_classes, scale=SMALL.scale,
                       render_size=16, img_size=16, test_per_class=4, val_per_class=2)
    cfg["model"]["name"] = "cifar_resnet8"
    cfg["train"].update(epochs=1, batch_size=32)
    cfg["eval"]["interval"] = 1
    path = tmp_path / "glyphs_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tiny_training_run_and_stats(tmp_path, capsys):
    cfg = _tiny_config(tmp_path)
    assert data_main(["stats", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "dataset 'glyphs_lt'" in out
    assert re.search(r"^train +12/12 +326 +82 +5 ", out, re.M) and re.search(r"^test +12/12 +48 +4 +4 ", out, re.M)
    assert data_main(["stats", "--config", str(cfg)]) == 0
    assert "many / medium / few classes" in capsys.readouterr().out
    with pytest.raises(SystemExit):                                 # neither a file nor --config
        data_main(["stats"])
    run = tmp_path / "run"
    assert train_main(["--config", str(cfg), "--work-dir", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["per_class"]) == SMALL.num_classes and 0.0 <= metrics["overall"] <= 100.0
    assert sorted(metrics["class_counts"], reverse=True) == imagenet_lt_profile(SMALL.num_classes, SMALL.scale)
    splits = build_data(yaml.safe_load(cfg.read_text())["data"])       # the run's file is re-used
    assert splits.class_names[0].startswith(splits.train.classes[0][0])
    assert len(list((tmp_path / "data" / "glyphs_lt").glob("*.npz"))) == 1
