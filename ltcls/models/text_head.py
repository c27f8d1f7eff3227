"""A classifier head started from CLIP text embeddings of the class names (``classifier.init: text``).

LIFT (Shi et al., ICML 2024; shijxcs/LIFT ``trainer.py`` ``init_head_text_feat``) starts its cosine classifier
from the CLIP text features of prompts built from the class names. Here the prompts are encoded by an
``open_clip`` text encoder and averaged per class exactly as open_clip's zero-shot classifier does
(:func:`open_clip.build_zero_shot_classifier`: each prompt's embedding L2-normalized, the mean over the templates
normalized again), so before any training a cosine head of scale ``s`` over CLIP *image embeddings* gives
``s`` times open_clip's zero-shot cosine similarities. The image embeddings must be in CLIP's joint
image-text space: ``model.clip_projection: true`` keeps the timm CLIP tower's projection (see
:func:`ltcls.models.backbone.create_backbone`); LIFT instead maps the text features back through the
projection's transpose onto the pre-projection features (``text_features @ proj.t()``), which is not the
zero-shot classifier.

The keys are common to every classifier section (:class:`HeadInit` is the ``common`` schema of the
``CLASSIFIERS`` registry, as the transform keys are for datasets): any head with a ``(classes, features)``
weight can start from text (LIFT's Table 15 does so for its linear, L2-normed and cosine heads). The text
encoder runs only when a run starts training; a model rebuilt to load a checkpoint skips it
(``Task.build(cfg, init_weights=False)``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import nn

log = logging.getLogger("ltcls")

#: open_clip's template sets by name (``open_clip.zero_shot_metadata``): OpenAI's 80 ImageNet prompts (LIFT's
#: ``prompt: ensemble``) and the 7 of open_clip's ``SIMPLE_IMAGENET_TEMPLATES``.
TEMPLATE_SETS = ("openai_imagenet", "simple_imagenet")
#: LIFT's default prompt (``utils/config.py`` ``prompt: default``; ``trainer.py`` ``get_tokenized_prompts``).
DEFAULT_TEMPLATE = "a photo of a {}."
_WNID = re.compile(r"n\d{8}")
#: Prompts per text-encoder forward (several classes' templates are encoded together).
_PROMPTS_PER_BATCH = 512


class TextEncoderUnavailable(FileNotFoundError):
    """The CLIP text encoder's weights cannot be had (no network and no local file); the message is one line
    saying what to download and which key to point at it."""


@dataclass(frozen=True)
class HeadInit:
    """How a classifier head starts (keys of every ``classifier:`` section).

    ``init``: ``default`` (the head's own initialization) or ``text`` (rows = CLIP text embeddings of the class
    names; a bias is zeroed). ``templates``: one prompt with ``{}`` for the class name (default LIFT's
    ``"a photo of a {}."``), a list of them (their embeddings are averaged), or the name of one of open_clip's sets
    (:data:`TEMPLATE_SETS`; ``openai_imagenet`` is LIFT's ensemble). ``text_model`` / ``text_pretrained``: the
    open_clip model and pretrained tag (``open_clip.list_pretrained()``); ``text_pretrained_file``: a local
    checkpoint of that model (open_clip's ``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors``) for
    machines without the hub; the tag still says whether the weights need QuickGELU (OpenAI's do).
    """

    init: Literal["default", "text"] = "default"
    templates: str | list[str] = DEFAULT_TEMPLATE
    text_model: str = "ViT-B-16"
    text_pretrained: str | None = "openai"
    text_pretrained_file: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> HeadInit:
        """The init keys of a classifier section's parameters (the others are ignored)."""
        return cls(**{k: params[k] for k in HEAD_INIT_KEYS if k in params})  # type: ignore[arg-type]


#: The keys :class:`HeadInit` adds to every classifier section (not passed to the head's constructor).
HEAD_INIT_KEYS: tuple[str, ...] = tuple(f.name for f in fields(HeadInit))


def without_init_keys(params: Mapping[str, object]) -> dict[str, object]:
    """A classifier section's parameters without the :class:`HeadInit` keys: the head constructor's own."""
    return {k: v for k, v in params.items() if k not in HEAD_INIT_KEYS}


# ----------------------------------------------------------------------------------------------- prompts


def _imagenet_names() -> dict[str, str]:
    """WordNet id -> open_clip's readable ImageNet-1k name. open_clip's ``IMAGENET_CLASSNAMES`` follow the
    ImageNet-1k label order, which is the sorted WordNet ids (timm's ``imagenet_synsets.txt``)."""
    from open_clip import IMAGENET_CLASSNAMES  # lazy: open_clip only when text prompts are built
    from timm.data import ImageNetInfo

    wnids = ImageNetInfo("imagenet-1k").label_names()
    if len(wnids) != len(IMAGENET_CLASSNAMES):
        raise RuntimeError(f"timm lists {len(wnids)} ImageNet-1k synsets, open_clip {len(IMAGENET_CLASSNAMES)} names")
    return dict(zip(wnids, IMAGENET_CLASSNAMES))


def readable_class_names(names: Sequence[str]) -> list[str]:
    """The names prompts are built from: an ImageNet WordNet id (ImageNet-LT's classes, an ImageNet folder) becomes
    open_clip's readable name (``n01440764`` -> ``tench``; an id outside ImageNet-1k its first WordNet lemma from
    timm), any other name has its underscores replaced by spaces as LIFT does (``get_tokenized_prompts``:
    ``art_gallery`` -> ``art gallery``; Places-LT's ``apartment_building-outdoor`` -> ``apartment
    building-outdoor``)."""
    names = [str(n) for n in names]
    table = _imagenet_names() if any(_WNID.fullmatch(n) for n in names) else {}
    lemmas = None
    out = []
    for name in names:
        if name in table:
            out.append(table[name])
        elif _WNID.fullmatch(name):
            if lemmas is None:
                from timm.data import ImageNetInfo  # lazy: as in _imagenet_names

                lemmas = ImageNetInfo("imagenet-22k")
            try:
                out.append(lemmas.label_name_to_description(name).split(",")[0].strip())
            except KeyError:
                out.append(name)
        else:
            out.append(name.replace("_", " ").strip())
    return out


def resolve_templates(templates: str | Sequence[str]) -> list[str | Callable[[str], str]]:
    """The prompt templates of ``classifier.templates``: a set's name, one template or a list; each template has
    exactly one ``{}`` (an error names the key and the template)."""
    if isinstance(templates, str) and templates in TEMPLATE_SETS:
        from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES  # lazy: as in _imagenet_names

        sets = {"openai_imagenet": OPENAI_IMAGENET_TEMPLATES, "simple_imagenet": SIMPLE_IMAGENET_TEMPLATES}
        return list(sets[templates])
    items = [templates] if isinstance(templates, str) else list(templates)
    if not items:
        raise ValueError(f"classifier.templates: expected a template, a list of them or one of {TEMPLATE_SETS}, "
                         "got an empty list")
    for i, t in enumerate(items):
        if not isinstance(t, str) or t.count("{}") != 1:
            where = "classifier.templates" + (f"[{i}]" if not isinstance(templates, str) else "")
            raise ValueError(f"{where}: {t!r} is not a prompt template with one '{{}}' for the class name (or a "
                             f"template set: {', '.join(TEMPLATE_SETS)})")
    return items


# ------------------------------------------------------------------------------------------ text encoder


def _download_hint(model: str, tag: str | None) -> str:
    """Where the weights of ``model`` / ``tag`` come from, for the no-network message."""
    from open_clip.pretrained import get_pretrained_cfg  # lazy: as in _imagenet_names

    cfg = get_pretrained_cfg(model, tag or "")
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)
        files = filename or "open_clip_model.safetensors (or open_clip_pytorch_model.bin)"
        return f"download {files} from https://huggingface.co/{repo}"
    if cfg.get("url"):
        return f"download {cfg['url']}"
    return f"download open_clip's {model} checkpoint for '{tag}'"


def load_text_encoder(init: HeadInit) -> tuple[nn.Module, Callable[[list[str]], torch.Tensor]]:
    """The open_clip model (eval mode, CPU) and tokenizer of ``init.text_model`` with its weights: the local
    ``text_pretrained_file`` if given, else the ``text_pretrained`` tag's (downloaded or from the hub cache).

    No network and no file: :class:`TextEncoderUnavailable`, one line naming what to download and where to point
    ``classifier.text_pretrained_file``. A file that does not fit the model: ``ValueError`` naming it.
    """
    import open_clip  # lazy: as in _imagenet_names
    from open_clip import pretrained as oc_pretrained

    model_name, tag, path = init.text_model, init.text_pretrained, init.text_pretrained_file
    if not path and not tag and not model_name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError("classifier.init: text needs CLIP weights: set classifier.text_pretrained (an open_clip tag, "
                         "e.g. openai) or classifier.text_pretrained_file")
    if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"classifier.text_model: '{model_name}' is not an open_clip model (open_clip.list_models(): "
                         "e.g. ViT-B-16, ViT-L-14)")
    tag_cfg = oc_pretrained.get_pretrained_cfg(model_name, tag or "") if tag else {}
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"classifier.text_pretrained_file: '{path}' not found (expected open_clip's "
                                    f"checkpoint of {model_name})")
    elif tag and tag_cfg:
        try:
            path = oc_pretrained.download_pretrained(tag_cfg)
        except Exception as err:  # no network, the hub down, a proxy: any failure to fetch the file
            cause = " ".join(str(err).split())[:160]
            raise TextEncoderUnavailable(
                f"classifier.init: text: cannot fetch the CLIP text encoder {model_name} '{tag}' "
                f"({type(err).__name__}: {cause}); {_download_hint(model_name, tag)} and set "
                "classifier.text_pretrained_file: PATH to the downloaded file") from None
    elif tag:
        known = ", ".join(oc_pretrained.list_pretrained_tags_by_model(model_name)) or "none"
        raise ValueError(f"classifier.text_pretrained: '{tag}' is not a pretrained tag of open_clip's {model_name} "
                         f"(known: {known}); or give classifier.text_pretrained_file")
    with torch.random.fork_rng(devices=[]):  # building the model draws random weights: leave the run's RNG alone
        try:
            model = open_clip.create_model(model_name, pretrained=path or None,
                                           force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)))
        except RuntimeError as err:
            first = " ".join(str(err).split())[:200]
            if path:
                raise ValueError(f"classifier.text_pretrained_file: '{path}' does not fit open_clip's {model_name}: "
                                 f"{first}") from None
            raise TextEncoderUnavailable(f"classifier.init: text: cannot load open_clip's {model_name} ({first}); "
                                         "give its checkpoint as classifier.text_pretrained_file") from None
    return model.eval(), open_clip.get_tokenizer(model_name)


def head_weight(head: nn.Module, head_name: str) -> nn.Parameter:
    """The ``(classes, features)`` weight a text initialization writes (linear, normalized, tau_norm heads)."""
    weight = getattr(head, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.ndim != 2:
        raise ValueError(f"classifier.init: text: {head_name} has no (classes x features) weight to start from text "
                         "embeddings (heads that have one: linear, normalized, tau_norm)")
    return weight


def _check_dims(weight: torch.Tensor, num_names: int, text_dim: int, head_name: str) -> None:
    if weight.shape[0] != num_names:
        raise ValueError(f"classifier.init: text: {num_names} class names for {head_name}'s {weight.shape[0]} classes")
    if weight.shape[1] != text_dim:
        raise ValueError(f"classifier.init: text: the CLIP text embeddings have {text_dim} dimensions but the backbone "
                         f"gives {weight.shape[1]}-d features to {head_name}: set model.clip_projection: true to keep "
                         "the CLIP image tower's projection into the joint image-text space (a CLIP model of the "
                         "same embedding width as classifier.text_model)")


@torch.no_grad()
def zero_shot_weights(model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], class_names: Sequence[str],
                      templates: Sequence[str | Callable[[str], str]], device: str | torch.device = "cpu"
                      ) -> torch.Tensor:
    """``(C, D)`` unit-norm class embeddings: each class's prompts (its name in every template) encoded by the CLIP
    text encoder, normalized, averaged and normalized again: open_clip's ``build_zero_shot_classifier``, whose
    ``(D, C)`` zero-shot weights this returns transposed."""
    from open_clip import build_zero_shot_classifier  # lazy: as in _imagenet_names

    weights = build_zero_shot_classifier(model, tokenizer, list(class_names), list(templates),
                                         num_classes_per_batch=max(1, _PROMPTS_PER_BATCH // len(templates)),
                                         device=device)
    return weights.T.float().cpu().contiguous()


@torch.no_grad()
def init_head(head: nn.Module, params: Mapping[str, object], class_names: Sequence[str], head_name: str,
              device: str | torch.device = "cpu") -> None:
    """Apply a classifier section's ``init`` to a freshly built ``head``: nothing for ``default``; for ``text`` the
    rows become the CLIP text embeddings of the (readable) ``class_names`` (:func:`zero_shot_weights`; a cosine
    head with ``init_norm`` gets rows of that norm) and a bias is zeroed (LIFT's heads start with a zero bias).
    Shapes are checked before the prompts are encoded; errors name the key."""
    init = HeadInit.from_params(params)
    if init.init != "text":
        return
    head_name = f"the '{head_name}' head"
    weight = head_weight(head, head_name)
    templates = resolve_templates(init.templates)
    names = readable_class_names(class_names)
    model, tokenizer = load_text_encoder(init)
    model.to(device)
    _check_dims(weight, len(names), int(model.encode_text(tokenizer(["a"]).to(device)).shape[-1]), head_name)
    log.info("classifier.init: text: %d classes x %d prompt template(s) through open_clip %s (%s) on %s",
             len(names), len(templates), init.text_model, init.text_pretrained_file or init.text_pretrained, device)
    rows = zero_shot_weights(model, tokenizer, names, templates, device).to(weight)
    norm = getattr(head, "init_norm", None)
    if norm is not None:
        rows = rows * (float(norm) / rows.norm(dim=1, keepdim=True))
    weight.copy_(rows)
    bias = getattr(head, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.zero_()
