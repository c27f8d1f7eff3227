"""``classifier.init: text``: a cosine head started from CLIP text embeddings (open_clip) over a timm CLIP image tower
that keeps its projection (``model.clip_projection``). On tiny randomly initialized models of the real architectures
(an open_clip ViT config, timm's ``vit_base_patch16_clip_quickgelu_224`` with the same weights through timm's
conversion of OpenAI-format checkpoints) the head's logits equal open_clip's zero-shot classifier's before any
training; class names become readable; without network and file one line says what to download."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip import IMAGENET_CLASSNAMES
from timm.data import ImageNetInfo

from ltcls import config as C
from ltcls.cli.train import train_main
from ltcls.data.datasets.imagenet_lt import imagenet_lt
from ltcls.data.datasets.places_lt import places_lt
from ltcls.data.datasets.split_file import split_file
from ltcls.engine.tasks import build_model, build_task
from ltcls.models import text_head
from ltcls.models.backbone import clip_projection_dim, create_backbone, feature_dim
from ltcls.models.classifiers import build_classifier
from ltcls.models.text_head import HeadInit, init_head, readable_class_names, resolve_templates

ROOT = Path(__file__).parents[1]
TINY_CLIP = "ltcls-tiny-clip"
#: An open_clip ViT (QuickGELU, as OpenAI's weights) in miniature: 32 px images, patches of 8, width 64, 2 layers;
#: the text tower 2 layers of width 32 with CLIP's tokenizer; the joint space keeps ViT-B/16's 512 dimensions.
TINY_CLIP_CFG = {"embed_dim": 512, "quick_gelu": True,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
#: The matching timm image tower: ViT-B/16's CLIP architecture (QuickGELU, pre-norm) at the tiny sizes.
TIMM_CLIP = "vit_base_patch16_clip_quickgelu_224.openai"
TIMM_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
NAMES = ["n01440764", "art_gallery", "apartment_building-outdoor", "n15075141"]
READABLE = ["tench", "art gallery", "apartment building-outdoor", "toilet paper"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}."]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, str]:
    """The tiny open_clip model (every parameter randomized, so no LayerNorm is the identity) and its checkpoint."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(folder / f"{TINY_CLIP}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "logit_scale":
                p.add_(torch.randn_like(p) * 0.05)
    path = folder / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return model, str(path)


def _cfg(weights: str, overrides: list[str] = ()) -> C.Config:
    return C.resolve({
        "model": {"name": TIMM_CLIP, "clip_projection": True, "pretrained_file": weights, "kwargs": TIMM_KWARGS},
        "classifier": {"name": "normalized", "tau": 25.0, "init": "text", "templates": TEMPLATES,
                       "text_model": TINY_CLIP, "text_pretrained": None, "text_pretrained_file": weights},
        "train": {"device": "cpu"}}, list(overrides))


def test_the_text_initialized_head_is_open_clips_zero_shot_classifier(tiny_clip) -> None:
    """timm's tower (the open_clip checkpoint through timm's conversion) + the text-initialized cosine head of scale
    25 give 25 x open_clip's zero-shot cosine similarities within 1e-5, before any training."""
    clip, weights = tiny_clip
    cfg = _cfg(weights)
    model = build_model(cfg, len(NAMES)).eval()
    init_head(model.classifier, cfg.classifier.params, NAMES, "normalized")
    assert model.num_features == 512 == clip_projection_dim(TIMM_CLIP)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = clip.encode_image(images)
        assert (model.backbone(images) - reference).abs().max() < 1e-5  # the same image tower, projection included
        tokenizer = open_clip.get_tokenizer(TINY_CLIP)
        zero_shot = open_clip.build_zero_shot_classifier(clip, tokenizer, READABLE, TEMPLATES)  # (D, C)
        expected = 25.0 * F.normalize(reference, dim=-1) @ zero_shot
        logits = model(images)
    assert (logits - expected).abs().max() < 1e-5
    assert logits.argmax(1).tolist() == expected.argmax(1).tolist()
    assert torch.allclose(model.classifier.weight.norm(dim=1), torch.ones(len(NAMES)), atol=1e-6)


def test_openai_template_set_and_a_linear_head(tiny_clip) -> None:
    """A template set by name is open_clip's list; a linear head gets the same unit rows and a zero bias."""
    clip, weights = tiny_clip
    assert resolve_templates("openai_imagenet") == list(open_clip.OPENAI_IMAGENET_TEMPLATES)
    assert len(resolve_templates("simple_imagenet")) == len(open_clip.SIMPLE_IMAGENET_TEMPLATES)
    head = build_classifier("linear", 512, 2)
    params = {**_cfg(weights).classifier.params, "templates": "openai_imagenet"}
    init_head(head, params, ["goldfish", "n01443537"], "linear")
    zero_shot = open_clip.build_zero_shot_classifier(clip, open_clip.get_tokenizer(TINY_CLIP), ["goldfish"] * 2,
                                                     open_clip.OPENAI_IMAGENET_TEMPLATES)
    assert torch.allclose(head.weight, zero_shot.T, atol=1e-6)  # n01443537 is open_clip's "goldfish"
    assert head.bias.abs().max() == 0


def test_only_a_fresh_run_encodes_text_and_the_rng_is_left_alone(tiny_clip, monkeypatch) -> None:
    """Task.build(init_weights=False) (a model whose checkpoint follows: ltcls-eval, --resume) never loads the text
    encoder; a fresh build does, without moving torch's random state."""
    _, weights = tiny_clip
    cfg = _cfg(weights, ["model.pretrained_file=null", "data.img_size=32",
                         "data.test_per_class=2"])
    task = build_task(cfg)
    built = task.build(cfg)
    state_text = torch.get_rng_state()
    plain = task.build(C.resolve(cfg, ["classifier.init=default"]))
    assert torch.equal(state_text, torch.get_rng_state())
    assert not torch.allclose(built.model.classifier.weight, plain.model.classifier.weight)

    def refuse(init: HeadInit):
        raise AssertionError("the text encoder was loaded for a model whose checkpoint follows")

    monkeypatch.setattr(text_head, "load_text_encoder", refuse)
    again = task.build(cfg, init_weights=False)
    assert torch.equal(again.model.classifier.weight, plain.model.classifier.weight)


def test_readable_class_names_of_each_dataset(tmp_path: Path) -> None:
    """ImageNet-LT's WordNet ids (label order = sorted ids), Places-LT's scene folders, a names file."""
    splits = tmp_path / "splits"
    splits.mkdir()
    wnids = ["n01440764", "n01443537", "n15075141"]
    for name in ("train", "test"):
        (splits / f"ImageNet_LT_{name}.txt").write_text("".join(f"train/{w}/{w}_0.JPEG {i}\n"
                                                                for i, w in enumerate(wnids)))
    data = imagenet_lt(root=str(tmp_path / "absent"), split_dir=str(splits), check_files=False)
    assert readable_class_names(data.class_names) == ["tench", "goldfish", "toilet paper"]
    assert readable_class_names(["n00004475"]) == ["organism"]  # outside ImageNet-1k: timm's first WordNet lemma

    places = tmp_path / "places"
    places.mkdir()
    scenes = ["airfield", "apartment_building-outdoor", "art_gallery"]
    for name in ("train", "test"):
        (places / f"Places_LT_{name}.txt").write_text("".join(f"train/{s}/0000000{i}.jpg {i}\n"
                                                              for i, s in enumerate(scenes)))
    data = places_lt(root=str(tmp_path / "absent"), split_dir=str(places), check_files=False)
    assert readable_class_names(data.class_names) == ["airfield", "apartment building-outdoor", "art gallery"]


def test_open_clip_imagenet_names_follow_the_sorted_wordnet_ids() -> None:
    """open_clip's IMAGENET_CLASSNAMES are in ImageNet-1k label order = the sorted WordNet ids (timm's list): at the
    same index open_clip's name and timm's WordNet lemmas share a word far more often than one index off."""
    info = ImageNetInfo("imagenet-1k")
    wnids = info.label_names()
    assert wnids == sorted(wnids) and len(wnids) == len(IMAGENET_CLASSNAMES) == 1000

    def agree(shift: int) -> float:
        hits = 0
        for i, name in enumerate(IMAGENET_CLASSNAMES):
            lemma = info.label_name_to_description(wnids[(i + shift) % 1000]).lower()
            hits += any(word in lemma for word in name.lower().replace("-", " ").split() if len(word) > 2)
        return hits / 1000

    assert agree(0) > 0.9 and agree(1) < 0.2


def test_names_file_of_a_split_file_dataset(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("a.png 0\nb.png 1\nc.png 2\n")
    names = tmp_path / "names.txt"
    names.write_text("\ufeffsea lion\n  polar_bear \nn01440764\n\n")
    kw = dict(root=str(tmp_path), train_split=str(tmp_path / "train.txt"), test_split=str(tmp_path / "train.txt"),
              check_files=False)
    data = split_file(class_names_file=str(names), **kw)
    assert data.class_names == ["sea lion", "polar_bear", "n01440764"] == data.test.classes
    assert readable_class_names(data.class_names) == ["sea lion", "polar bear", "tench"]
    assert split_file(**kw).class_names == ["0", "1", "2"]
    for text, message in (("a\n\nc\n", "line 2: empty class name"), ("a\nb\na\n", "line 3: class name 'a' repeats "
                          "line 1"), ("a\nb\n", "2 class names but the train split has 3 classes")):
        names.write_text(text)
        with pytest.raises(ValueError, match=message) as err:
            split_file(class_names_file=str(names), **kw)
        assert str(names) in str(err.value)
    with pytest.raises(FileNotFoundError, match="data.class_names_file"):
        split_file(class_names_file=str(tmp_path / "none.txt"), **kw)


def test_bad_settings_are_one_clear_error(tiny_clip) -> None:
    _, weights = tiny_clip
    params = _cfg(weights).classifier.params
    with pytest.raises(ValueError, match=r"classifier.templates\[1\]: 'no slot' is not a prompt template"):
        init_head(build_classifier("normalized", 512, 2), {**params, "templates": ["a {}", "no slot"]}, ["a", "b"],
                  "normalized")
    with pytest.raises(ValueError, match="the 'ncm' head has no \\(classes x features\\) weight"):
        init_head(build_classifier("ncm", 512, 2), params, ["a", "b"], "ncm")
    with pytest.raises(ValueError, match="gives 64-d features .* set model.clip_projection: true"):
        init_head(build_classifier("normalized", 64, 2), params, ["a", "b"], "normalized")
    with pytest.raises(ValueError, match="model.clip_projection: 'resnet18' is not a timm CLIP image tower"):
        create_backbone("resnet18", clip_projection=True)
    with pytest.raises(ValueError, match="not a timm CLIP image tower"):
        clip_projection_dim("vit_base_patch16_clip_224.openai_ft_in1k")
    assert feature_dim(create_backbone("cifar_resnet8")) == 64
    with pytest.raises(C.ConfigError, match="classifier.init: expected one of 'default', 'text'"):
        C.resolve({"classifier": {"name": "linear", "init": "txt"}})


def test_no_network_and_no_file_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """The hub unreachable, no text_pretrained_file: ltcls-train ends in one line naming the file to download and
    the key to set, exit 2, no traceback, no run directory."""
    from open_clip import pretrained

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co' (no network)")

    monkeypatch.setattr(pretrained, "hf_hub_download", offline)
    monkeypatch.setattr(pretrained, "download_pretrained_from_url", offline)
    work = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--config", str(ROOT / "configs" / "digits_lt_ce.yaml"), "--work-dir", str(work), "--set",
                    "model.name=cifar_resnet8", "data.img_size=16", "classifier.name=normalized",
                    "classifier.init=text"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    last = err[-1]
    assert last.startswith("ltcls-train: error: classifier.init: text: cannot fetch the CLIP text encoder ViT-B-16 "
                           "'openai'")
    assert "https://huggingface.co/timm/vit_base_patch16_clip_224.openai" in last
    assert "set classifier.text_pretrained_file: PATH" in last
    assert not work.exists()


@pytest.mark.slow
def test_eval_and_predict_need_no_text_encoder(tiny_clip, tmp_path: Path, monkeypatch) -> None:
    """A text-initialized run trains; ltcls-eval and ltcls-predict rebuild it without the text encoder (its weights
    come from the checkpoint) and ltcls-eval reproduces its metrics."""
    from ltcls.cli import eval as eval_cli
    from ltcls.cli import predict as predict_cli

    _, weights = tiny_clip
    run = tmp_path / "run"
    sets = ["model.name=" + TIMM_CLIP, "model.clip_projection=true", "model.kwargs=" + json.dumps(TIMM_KWARGS),
            "classifier.name=normalized", "classifier.init=text", f"classifier.text_model={TINY_CLIP}",
            f"classifier.text_pretrained_file={weights}", "classifier.text_pretrained=null", "data.img_size=32",
            "data.test_per_class=5", "train.epochs=1", "train.lr=0.01", "eval.interval=0"]
    assert train_main(["--config", str(ROOT / "configs" / "digits_lt_ce.yaml"), "--work-dir", str(run),
                       "--set", *sets]) == 0
    monkeypatch.setattr(text_head, "load_text_encoder", lambda init: pytest.fail("text encoder loaded"))
    assert eval_cli.main([str(run), "--out", str(tmp_path / "eval")]) == 0
    trained = json.loads((run / "metrics.json").read_text())
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert got["overall"] == trained["overall"] and got["per_class"] == trained["per_class"]
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    assert predict_cli.main([str(run), str(image), "--out", str(tmp_path / "p.csv")]) == 0
