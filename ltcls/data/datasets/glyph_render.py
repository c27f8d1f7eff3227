"""Glyph images for ``glyphs_lt``: the classes (characters that look different from one another) and the
distorted renderings of each, from the TrueType fonts matplotlib ships (no download).

A class is a Unicode character; its images are that glyph in every shipped font that has it (DejaVu Sans /
Serif / Sans Mono and STIX General in four styles each; the Computer Modern text fonts for ASCII letters and
digits only, their other code points hold TeX-encoded symbols), rasterized with PIL and then distorted in
batches with torch: stroke width (grey dilation / erosion), a random affine map (rotation, scale, shear,
translation) plus a smooth elastic displacement (one ``grid_sample``), area down-sampling, Gaussian blur,
contrast and pixel noise. Glyphs are drawn at one font size around the font's own middle line, so size and
height on the line ('o' / 'O', '.' / '·') stay part of a character's look.

Classes are chosen in a fixed pseudo-random order of the candidate characters (letters, digits, punctuation
and symbols present in at least :data:`MIN_FONTS` fonts), independent of the data seed, so that any
``num_classes`` takes a prefix of the same list. A candidate is dropped when it renders like an already kept
class in some font both have (normalized distance below :data:`DUPLICATE_DISTANCE`: Latin A / Greek Alpha /
Cyrillic A, two code points a font maps to one outline) or when a font draws it empty or as its .notdef box.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

#: Unicode fonts (file names under matplotlib's ``mpl-data/fonts/ttf``), every code point they map.
UNICODE_FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)
#: Computer Modern text fonts (BaKoMa, TeX-encoded through a Mac Roman cmap): only their ASCII letters and digits
#: are the characters their code points name. cmsy10 / cmex10 (symbols at letter positions), the STIX size
#: variants, STIXNonUni (private use), the two DejaVu *Display fonts and LastResort (boxes) are not used.
ASCII_FONTS: tuple[str, ...] = ("cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf", "cmmi10.ttf")
_ASCII_ALNUM = frozenset(map(ord, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"))
#: A character is a candidate class when at least this many fonts draw it (four styles of one family at least).
MIN_FONTS = 4
#: Seed of the fixed order in which candidates are considered (not the data seed: the class list is one list).
ORDER_SEED = 0
#: Two characters are near-duplicates when, in some font both have, 1 - 2<a,b> / (|a|^2 + |b|^2) of their
#: normalized renderings (undistorted, 16 x 16 area means) is below this (0: identical; 1: disjoint).
DUPLICATE_DISTANCE = 0.05
#: Unicode general categories kept: letters (not modifier letters), digits / numbers, punctuation, symbols (not
#: modifier symbols, tiny detached accents).
_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lo", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po",
                         "Sm", "Sc", "So"})
#: Font size as a fraction of the rendering canvas; a glyph whose box leaves :data:`_FIT` of it is shrunk to fit.
_FONT_SIZE = 0.7
_FIT = 0.46
_SIGNATURE = 16


@dataclass(frozen=True)
class Distortion:
    """Strength of each random distortion (every value is multiplied by ``glyphs_lt``'s ``distortion``)."""

    rotate_deg: float = 12.0        #: rotation, uniform in +-rotate_deg
    log_scale: float = 0.15         #: scale = exp(U(-log_scale, log_scale))
    shear: float = 0.2              #: horizontal shear, uniform in +-shear
    translate: float = 0.08         #: shift, uniform in +-translate x image side, each axis
    elastic: float = 0.03           #: std of the smooth displacement field, as a fraction of the image side
    stroke: float = 0.5             #: share of images with a changed stroke (see _STROKE_SHARE)
    blur: float = 0.8               #: Gaussian blur sigma (output pixels), uniform in [0, blur]
    noise: float = 0.08             #: pixel noise std, uniform in [0, noise] (intensities in [0, 1])
    contrast: float = 0.35          #: background uniform in [0, contrast]; foreground in [1 - contrast, 1]

    def scaled(self, factor: float) -> Distortion:
        kwargs = {k: v * factor for k, v in self.__dict__.items()}
        kwargs["stroke"] = min(1.0, kwargs["stroke"])
        kwargs["contrast"] = min(0.45, kwargs["contrast"])
        return Distortion(**kwargs)


@dataclass
class GlyphClass:
    """A kept character and its undistorted renderings, one per font that has it: (fonts, canvas, canvas)
    float32 in [0, 1] on a canvas twice the image side."""

    codepoint: int
    renders: np.ndarray

    @property
    def name(self) -> str:
        """The class name: the character and its Unicode name."""
        ch = chr(self.codepoint)
        return f"{ch} {unicodedata.name(ch)}"


def font_dir() -> str:
    """matplotlib's bundled TrueType folder."""
    import matplotlib  # lazy: only generation needs it (config checks import this module)

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def _is_candidate(codepoint: int) -> bool:
    ch = chr(codepoint)
    return unicodedata.category(ch) in _CATEGORIES and bool(unicodedata.name(ch, ""))


@lru_cache(maxsize=1)
def font_coverage() -> tuple[tuple[str, ...], dict[int, tuple[int, ...]]]:
    """``(font paths, {code point: indices of the fonts that map it to a glyph other than .notdef})`` for the
    candidate characters."""
    from fontTools.ttLib import TTFont  # lazy: as font_dir (fontTools is a matplotlib dependency)

    folder = font_dir()
    paths = tuple(os.path.join(folder, f) for f in UNICODE_FONTS + ASCII_FONTS)
    cover: dict[int, list[int]] = {}
    for i, path in enumerate(paths):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"font file missing: '{path}' (glyphs_lt renders matplotlib's bundled fonts)")
        cmap = TTFont(path, lazy=True).getBestCmap()
        codes = {c for c, glyph in cmap.items() if glyph != ".notdef" and _is_candidate(c)}
        if os.path.basename(path) in ASCII_FONTS:
            codes &= _ASCII_ALNUM
        for c in codes:
            cover.setdefault(c, []).append(i)
    return paths, {c: tuple(fonts) for c, fonts in sorted(cover.items())}


def candidate_order() -> list[int]:
    """Candidate code points (at least :data:`MIN_FONTS` fonts) in the fixed order classes are chosen in."""
    _, cover = font_coverage()
    codes = [c for c, fonts in cover.items() if len(fonts) >= MIN_FONTS]
    return [codes[i] for i in np.random.RandomState(ORDER_SEED).permutation(len(codes))]


@lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


def render_glyph(path: str, ch: str, canvas: int) -> np.ndarray:
    """``ch`` in the font at ``path``, white on black, centred on the font's middle line: (canvas, canvas)
    float32 in [0, 1]. A glyph too large for the canvas is drawn at a smaller size to fit."""
    size = max(4, round(_FONT_SIZE * canvas))
    x0, y0, x1, y1 = _font(path, size).getbbox(ch, anchor="mm")
    extent = max(-x0, x1, -y0, y1, 1)
    if extent > _FIT * canvas:
        size = max(4, int(size * _FIT * canvas / extent))
    img = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(img).text((canvas / 2, canvas / 2), ch, fill=255, font=_font(path, size), anchor="mm")
    return np.asarray(img, dtype=np.float32) / 255.0


def _signature(render: np.ndarray) -> np.ndarray:
    """A rendering reduced to :data:`_SIGNATURE` x :data:`_SIGNATURE` block means (flattened)."""
    k = render.shape[0] // _SIGNATURE
    side = k * _SIGNATURE
    return render[:side, :side].reshape(_SIGNATURE, k, _SIGNATURE, k).mean(axis=(1, 3)).ravel()


def _renders(codepoint: int, paths: Sequence[str], fonts: Sequence[int], canvas: int,
             blanks: Sequence[np.ndarray]) -> tuple[list[int], list[np.ndarray]]:
    """The fonts that draw ``codepoint`` visibly (not empty, not their .notdef box) and those renderings."""
    keep, out = [], []
    for i in fonts:
        r = render_glyph(paths[i], chr(codepoint), canvas)
        if r.sum() < 1.0 or np.abs(r - blanks[i]).sum() < 1.0:
            continue
        keep.append(i)
        out.append(r)
    return keep, out


class _SignatureBank:
    """Signatures of the kept classes, one growing matrix per font, and the nearest-distance query."""

    def __init__(self, num_fonts: int) -> None:
        dim = _SIGNATURE * _SIGNATURE
        self.rows = [np.zeros((64, dim), np.float32) for _ in range(num_fonts)]
        self.norms = [np.zeros(64, np.float32) for _ in range(num_fonts)]
        self.size = [0] * num_fonts

    def nearest(self, font: int, sig: np.ndarray) -> float:
        """Smallest 1 - 2<a,b> / (|a|^2 + |b|^2) between ``sig`` and the kept signatures of ``font`` (inf if none)."""
        n = self.size[font]
        if n == 0:
            return float("inf")
        dot = self.rows[font][:n] @ sig
        return float((1.0 - 2.0 * dot / np.maximum(self.norms[font][:n] + sig @ sig, 1e-12)).min())

    def add(self, font: int, sig: np.ndarray) -> None:
        n = self.size[font]
        if n == len(self.rows[font]):
            self.rows[font] = np.concatenate([self.rows[font], np.zeros_like(self.rows[font])])
            self.norms[font] = np.concatenate([self.norms[font], np.zeros_like(self.norms[font])])
        self.rows[font][n] = sig
        self.norms[font][n] = sig @ sig
        self.size[font] = n + 1


def select_classes(num_classes: int, canvas: int, progress: bool | None = False,
                   candidates: Sequence[int] | None = None) -> list[GlyphClass]:
    """The first ``num_classes`` characters of ``candidates`` (default :func:`candidate_order`) that at least
    :data:`MIN_FONTS` fonts draw visibly and that are no near-duplicate of an earlier kept one (see the module
    docstring). ``progress``: a tqdm bar (None: on a terminal only)."""
    from tqdm.auto import tqdm  # lazy: as font_dir

    paths, cover = font_coverage()
    blanks = [render_glyph(p, "\U0010fffd", canvas) for p in paths]  # a non-character: each font's .notdef
    bank = _SignatureBank(len(paths))
    kept: list[GlyphClass] = []
    bar = tqdm(total=num_classes, desc="glyphs_lt: choosing classes", leave=False,
               disable=None if progress is None else not progress)
    for c in candidate_order() if candidates is None else candidates:
        fonts, renders = _renders(c, paths, cover.get(c, ()), canvas, blanks)
        if len(fonts) < MIN_FONTS:
            continue
        own = [_signature(r) for r in renders]
        if any(bank.nearest(f, s) < DUPLICATE_DISTANCE for f, s in zip(fonts, own)):
            continue
        for f, s in zip(fonts, own):
            bank.add(f, s)
        kept.append(GlyphClass(c, np.stack(renders)))
        bar.update()
        if len(kept) == num_classes:
            break
    bar.close()
    if len(kept) < num_classes:
        raise ValueError(f"num_classes {num_classes} is more than the {len(kept)} distinct characters the shipped "
                         f"fonts offer")
    return kept


# ----------------------------------------------------------------------------------------- distortions


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64).float()


#: Stroke variants of each font's rendering, in :func:`stroke_bank`'s order, and the share of images drawn
#: from each (as fractions of ``Distortion.stroke``; the rest keep the font's own stroke).
_STROKES = ("thin", "normal", "bold", "bolder")
_STROKE_SHARE = (1 / 3, 0.0, 1 / 2, 1 / 6)


def stroke_bank(renders: np.ndarray, size: int) -> torch.Tensor:
    """Each font's rendering with a thinner, its own, a bolder and a still bolder stroke (grey erosion, none,
    one and two 3 x 3 dilations on the canvas, i.e. about half a pixel per step at ``size``), area-averaged down
    to ``size``: (fonts, 4, size, size)."""
    x = torch.from_numpy(renders).unsqueeze(1)
    bold = F.max_pool2d(x, 3, 1, 1)
    variants = torch.cat([-F.max_pool2d(-x, 3, 1, 1), x, bold, F.max_pool2d(bold, 3, 1, 1)], dim=1)
    return F.adaptive_avg_pool2d(variants, size)


def _pick_stroke(n: int, d: Distortion, gen: torch.Generator) -> torch.Tensor:
    """Index into :data:`_STROKES` of each image: a share ``d.stroke`` changed, split as :data:`_STROKE_SHARE`."""
    share = torch.tensor(_STROKE_SHARE, dtype=torch.float64) * d.stroke
    share[1] = 1.0 - d.stroke
    return torch.multinomial(share, n, replacement=True, generator=gen)


def _sampling_grid(n: int, side: int, d: Distortion, gen: torch.Generator) -> torch.Tensor:
    """Where each output pixel reads its input (normalized coordinates, ``grid_sample``'s layout): the inverse of a
    random rotation x shear x scale plus translation, plus a smooth elastic displacement."""
    angle = torch.deg2rad(_uniform(n, -d.rotate_deg, d.rotate_deg, gen))
    scale = torch.exp(_uniform(n, -d.log_scale, d.log_scale, gen))
    shear = _uniform(n, -d.shear, d.shear, gen)
    shift = torch.stack([_uniform(n, -2 * d.translate, 2 * d.translate, gen) for _ in range(2)], dim=1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    shr = torch.eye(2).repeat(n, 1, 1)
    shr[:, 0, 1] = shear
    forward = rot @ shr * scale.view(-1, 1, 1)
    inverse = torch.linalg.inv(forward)
    theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(2))], dim=2)
    grid = F.affine_grid(theta, [n, 1, side, side], align_corners=False)
    coarse = torch.randn(n, 2, 4, 4, generator=gen) * (2 * d.elastic)
    field = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    return grid + field.permute(0, 2, 3, 1)


def _blur(x: torch.Tensor, d: Distortion, gen: torch.Generator) -> torch.Tensor:
    """A Gaussian blur of per-image sigma uniform in [0, d.blur] (a 5 x 5 kernel; sigma 0 leaves the image)."""
    n = x.shape[0]
    sigma = _uniform(n, 0.0, d.blur, gen).clamp_min(1e-3).view(-1, 1)
    taps = torch.arange(-2, 3, dtype=torch.float32).view(1, -1)
    k1 = torch.exp(-0.5 * (taps / sigma) ** 2)
    k1 = k1 / k1.sum(1, keepdim=True)
    kernel = (k1.unsqueeze(2) * k1.unsqueeze(1)).unsqueeze(1)          # (n, 1, 5, 5)
    out = F.conv2d(F.pad(x.transpose(0, 1), (2, 2, 2, 2), mode="replicate"), kernel, groups=n)
    return out.transpose(0, 1)


def distort(bank: torch.Tensor, n: int, d: Distortion, gen: torch.Generator) -> np.ndarray:
    """``n`` distorted images of one class from its :func:`stroke_bank`: a random font and stroke, an affine +
    elastic warp, blur, contrast and noise. Returns (n, size, size) uint8. Every random draw comes from ``gen``,
    in a fixed order."""
    size = bank.shape[-1]
    if n == 0:
        return np.zeros((0, size, size), np.uint8)
    font = torch.randint(bank.shape[0], (n,), generator=gen)
    x = bank[font, _pick_stroke(n, d, gen)].unsqueeze(1)
    x = F.grid_sample(x, _sampling_grid(n, size, d, gen), mode="bilinear", padding_mode="zeros", align_corners=False)
    x = _blur(x, d, gen)
    low = _uniform(n, 0.0, d.contrast, gen).view(-1, 1, 1, 1)
    high = _uniform(n, 1.0 - d.contrast, 1.0, gen).view(-1, 1, 1, 1)
    x = low + (high - low) * x
    x = x + torch.randn(x.shape, generator=gen) * _uniform(n, 0.0, d.noise, gen).view(-1, 1, 1, 1)
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).squeeze(1).numpy()


def sample_stream(seed: int, codepoint: int, split: int) -> torch.Generator:
    """The generator of one class's images of one split: a function of the data seed, the character and the
    split alone (not of the class's position or count), so a class's test images are the same whatever
    ``num_classes`` and the train counts."""
    state = np.random.SeedSequence([int(seed), int(codepoint), int(split)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
