"""Image files to 8-bit RGB, the one way every dataset, ``ltcls-predict`` and the detection plug-in read them.

PIL's own ``convert("RGB")`` is right for most modes (L, 1, P, CMYK, YCbCr, LAB, HSV) but not for these:

- 16-bit grey (``I;16*``: 16-bit PNG, TIFF, PGM) is clipped to 255, so nearly every pixel is white; here it is
  scaled by 1/257 (0..65535 onto 0..255, exact at both ends).
- 32-bit integer grey (``I``) likewise: values within 0..65535 are taken as 16-bit (the files PIL opens as
  ``I`` are 16-bit ones); an image with values outside that range (a 32-bit TIFF) has no fixed white, and its
  own min..max is mapped onto 0..255.
- float grey (``F``): values within [0, 1] are scaled by 255, values within [0, 255] taken as they are; other
  ranges are mapped from the image's own min..max.
- transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, and ``P`` / ``L`` / ``RGB`` with a transparency
  key): ``convert("RGB")`` drops the alpha channel and shows whatever colour transparent pixels happen to
  store; here the image is composited over white, as Hugging Face's image processors (``convert_to_rgb`` in
  transformers, e.g. ``models/idefics/image_processing_idefics.py``) and vLLM (``rgba_to_rgb`` in
  ``vllm/multimodal/image.py``) do.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Modes whose alpha channel is composited over white (``P``, ``L`` and ``RGB`` too when they carry a
#: transparency key in ``info``).
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WHITE = (255, 255, 255, 255)


def _grey_u8(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def _stretched(values: np.ndarray) -> np.ndarray:
    """``values`` mapped from their own min..max onto 0..255 (a constant image: 0)."""
    low, high = float(values.min()), float(values.max())
    return (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)


def _grey_deep(img: Image.Image) -> Image.Image:
    """8-bit grey of a 16-bit, 32-bit integer or float grey image (see the module docstring)."""
    values = np.asarray(img, dtype=np.float64)
    if values.size == 0:
        return _grey_u8(values)
    if img.mode.startswith("I;16"):
        return _grey_u8(values / 257.0)
    low, high = float(values.min()), float(values.max())
    if img.mode == "I":
        return _grey_u8(values / 257.0 if low >= 0 and high <= 65535 else _stretched(values))
    if not np.isfinite(values).all():
        values = np.nan_to_num(values, nan=0.0, posinf=high if np.isfinite(high) else 0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 1:
        return _grey_u8(values * 255.0)
    return _grey_u8(values if low >= 0 and high <= 255 else _stretched(values))


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ALPHA_MODES or (img.mode in ("P", "L", "RGB") and "transparency" in img.info)


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as an 8-bit RGB image with its true intensities, whatever its PIL mode (see the module
    docstring); an RGB image is returned as it is."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _grey_deep(img).convert("RGB")
    if _has_alpha(img):
        rgba = (img.convert("LA") if img.mode == "La" else img).convert("RGBA")  # La (premultiplied): via LA
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return img.convert("RGB")


def open_rgb(path: str, min_size: int = 0) -> Image.Image:
    """Open and decode an image as 8-bit RGB (:func:`to_rgb`); a JPEG is decoded at the largest DCT reduction
    (1/2, 1/4, 1/8) that keeps both sides >= ``min_size`` (0: full size). Other formats are always decoded in
    full."""
    with open(path, "rb") as f:
        img = Image.open(f)
        if min_size > 0:
            img.draft("RGB", (min_size, min_size))  # no-op for non-JPEG formats and images already small
        img.load()  # decode now, while the file is open (no copy, unlike convert() on an RGB image)
    return to_rgb(img)
