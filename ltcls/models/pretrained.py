"""Pretrained weights for a timm backbone: from timm's hub (``model.pretrained``) or a local file
(``model.pretrained_file``, passed to timm as ``pretrained_cfg_overlay=dict(file=...)``, which timm's
``load_pretrained`` reads with the model's own checkpoint filter, like a downloaded file).

On a machine without network the hub download would retry for about a minute per file and end in a
traceback. :func:`check_hub_weights` looks first: weights in the local Hugging Face cache are used as they
are; otherwise one request without retries tells whether the hub answers, and if it does not, a
:class:`PretrainedWeightsUnavailable` says in one line what to download and where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

from timm.models import get_pretrained_cfg


class PretrainedWeightsUnavailable(FileNotFoundError):
    """The pretrained weights are neither cached nor downloadable; the message says what to download."""


def _hub_files(hub_id: str, filename: str | None) -> tuple[str, str | None, list[str]]:
    """The hub repository, revision and the files timm tries, in its order (safetensors first)."""
    repo, _, revision = hub_id.partition("@")
    name = filename or "pytorch_model.bin"
    safe = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
    files = [name] if name.endswith(".safetensors") else [safe.get(name, name), name]
    return repo, revision or None, list(dict.fromkeys(files))


def _advice(url: str, filename: str) -> str:
    return (f"on a machine with network, download {url}, copy it to this machine and set "
            f"model.pretrained_file=/path/to/{filename} (or copy that machine's Hugging Face cache, "
            f"{_hub_cache()}, here); nothing was trained")


def _hub_cache() -> str:
    from huggingface_hub import constants  # lazy: only when the weights are missing

    return str(constants.HF_HUB_CACHE)


def check_hub_weights(name: str) -> None:
    """Raise :class:`PretrainedWeightsUnavailable` when timm would fetch ``name``'s weights from the Hugging Face
    hub and neither the local cache has them nor the hub answers (``ValueError`` when timm has none for ``name``);
    return otherwise (timm then loads them)."""
    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ValueError(f"model.pretrained: timm has no pretrained weights for '{name}' (set model.pretrained: false, "
                         "or give model.pretrained_file)")
    if not cfg.hf_hub_id:
        return  # an old-style url: timm's own download reports a failure (see download_failed)
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache  # lazy: as above
    from huggingface_hub.errors import HfHubHTTPError  # lazy: as above

    repo, revision, files = _hub_files(cfg.hf_hub_id, cfg.hf_hub_filename)
    if any(isinstance(try_to_load_from_cache(repo, f, revision=revision), str) for f in files):
        return
    url = hf_hub_url(repo, files[0], revision=revision)
    try:
        get_hf_file_metadata(url, timeout=10)  # one request, no retries
    except HfHubHTTPError:
        return  # the hub answered (e.g. 404 for one of the files): timm's download will handle it
    except Exception as e:  # no network, DNS failure, timeout, HF_HUB_OFFLINE: nothing can be downloaded
        reason = " ".join(str(e).split())[:160]
        raise PretrainedWeightsUnavailable(
            f"model.pretrained: the weights of '{name}' are not in the local Hugging Face cache and the hub cannot "
            f"be reached ({type(e).__name__}: {reason}); {_advice(url, files[0])}") from None


def check_pretrained_file(path: str) -> Path:
    """``model.pretrained_file`` exists and is a file (the error names the key and the path)."""
    file = Path(os.path.expanduser(path))
    if not file.is_file():
        raise FileNotFoundError(f"model.pretrained_file: no file '{path}' (expected the pretrained weights, e.g. "
                                "the hub's model.safetensors for this model)")
    return file


def download_failed(name: str, err: BaseException) -> PretrainedWeightsUnavailable:
    """The one-line error for a download that failed inside timm (after :func:`check_hub_weights` passed)."""
    cfg = get_pretrained_cfg(name)
    if cfg is not None and cfg.hf_hub_id:
        repo, revision, files = _hub_files(cfg.hf_hub_id, cfg.hf_hub_filename)
        url, filename = f"https://huggingface.co/{repo}/resolve/{revision or 'main'}/{files[0]}", files[0]
    else:
        url = (cfg.url if cfg is not None else None) or f"the weights of {name}"
        filename = Path(url).name
    reason = " ".join(str(err).split())[:160]
    return PretrainedWeightsUnavailable(f"model.pretrained: downloading the weights of '{name}' failed "
                                        f"({type(err).__name__}: {reason}); {_advice(url, filename)}")

