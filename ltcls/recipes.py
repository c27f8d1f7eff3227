"""The shipped recipes: every method as users know it, declared once, as the config overrides that run it.

A recipe is what ``ltcls-compare`` trains and what the ``configs/*_<method>.yaml`` files are checked against
(``tests/test_recipes.py``): ``--set`` overrides of stage 1 on a base config (a loss and its classifier head),
or a second stage on the stage-1 run of another recipe (a ``ltcls-train --stage2`` method with its own
overrides), or an evaluation-time option of that run (``ltcls-eval``, no retraining). The base config supplies
everything else (data, backbone, sampler, schedule). Torch-free: ``ltcls-compare --help`` lists them.

The values are the published settings, with the head choices made on digits_lt (``configs/digits_lt_*.yaml``)
and then run unchanged on glyphs_lt (1,000 classes), 3 seeds on each set: BENCHMARKS.md, "Method table:
digits_lt" and "Method table: glyphs_lt". The comment above a recipe gives its paired difference to ``ce``
(few-shot / overall top-1, mean over seeds 0-2) on both sets; digits_lt's differences move by up to +-23 points
from seed to seed (5 few-shot classes of 30 test images), glyphs_lt's by about 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import yaml


@dataclass(frozen=True)
class Share:
    """A value given as a share of another config value, rounded to an integer: ``Share(0.8, "train.epochs")``
    is epoch 24 of 30 and 160 of 200 (LDAM-DRW's deferred re-weighting starts at 80% of the schedule)."""

    fraction: float
    of: str

    def resolve(self, base: Mapping[str, Mapping[str, object]]) -> int:
        section, key = self.of.split(".", 1)
        value = base[section][key]
        if not isinstance(value, (int, float)):
            raise ValueError(f"{self.of} is {value!r}, not a number to take {self.fraction:g} of")
        return round(self.fraction * value)


Value = object  # a yaml value, or a Share


@dataclass(frozen=True)
class Recipe:
    """One method as shipped. ``stage1``: overrides of the base config (a stage-1 recipe); ``on``: the stage-1
    recipe a second stage or an evaluation option builds on; ``stage2`` / ``stage2_set``: the ``ltcls-train
    --stage2`` method and its overrides; ``posthoc``: ``ltcls-eval`` options; ``result``: where in the run's
    ``metrics.json`` the row's overall / many / medium / few are (``""``: at the top level); ``run``: the name of
    its run directory when recipes share one run (each reads its own ``result``), else the recipe's name."""

    name: str
    summary: str
    stage1: Mapping[str, Value] = field(default_factory=dict)
    on: str | None = None
    stage2: str | None = None
    stage2_set: Mapping[str, Value] = field(default_factory=dict)
    posthoc: tuple[str, ...] = ()
    result: str = ""
    run: str = ""

    @property
    def run_name(self) -> str:
        return self.run or self.name

    @property
    def is_stage1(self) -> bool:
        return self.on is None

    @property
    def command(self) -> str:
        """The command that produces the recipe's run: ``train`` (stage 1 or 2) or ``eval`` (post-hoc)."""
        return "eval" if self.posthoc else "train"


def overrides(values: Mapping[str, Value], base: Mapping[str, Mapping[str, object]] | None = None) -> list[str]:
    """``--set`` items (``key=value``, values as yaml) of a recipe's overrides; a :class:`Share` is resolved on
    ``base`` (the resolved base config as plain sections)."""
    out = []
    for key, value in values.items():
        if isinstance(value, Share):
            if base is None:
                raise ValueError(f"{key} is {value.fraction:g} x {value.of}: the base config is needed to resolve it")
            value = value.resolve(base)
        out.append(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    return out


_LINEAR = {"classifier.name": "linear"}
#: The cosine head of the seed paper's classification recipe: unit rows (not mmdetection's N(0, 0.01), whose
#: first steps dwarf the rows: configs/digits_lt_seesaw.yaml) and tau 10, the only tau tried (10, 20) that beats
#: CE on both sets: at 10 classes tau 20 loses to CE on few-shot, at 1,000 classes (glyphs_lt) it adds +10.6
#: few-shot to tau 10 (BENCHMARKS.md, "Seesaw's tau depends on the number of classes").
_SEESAW_HEAD = {"classifier.name": "normalized", "classifier.tau": 10.0, "classifier.init_norm": 1.0}
#: LDAM's reference NormedLinear: a cosine head with s = 30 in the loss (tau 1), no bias, unit rows.
_LDAM_HEAD = {"classifier.name": "normalized", "classifier.tau": 1.0, "classifier.bias": False,
              "classifier.init_norm": 1.0}
_SEESAW_LOSS = {"loss.name": "seesaw", "loss.p": 0.8, "loss.q": 2.0, "loss.eps": 0.01}  # the paper's p and q
_DUAL_T = 20  # SimCal's selection threshold: the few-shot classes (< 20 training images) take the cRT head
_DUAL = {"stage2.dual_head_threshold": _DUAL_T}  # 'sel' with T, and score averaging with weight 0.5

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("ce", "softmax cross-entropy, linear head (the baseline)", {**_LINEAR, "loss.name": "ce"}),
    # digits_lt +23.3 / +11.9, glyphs_lt +25.5 / +11.5 (many -0.5); the cosine head beats a linear one on both
    Recipe("seesaw", "Seesaw loss (p 0.8, q 2), cosine head tau 10 with unit rows",
           {**_SEESAW_HEAD, **_SEESAW_LOSS}),
    # The head ablation of ``seesaw``: digits_lt -7.8 / -5.9, glyphs_lt +12.8 / +5.5: below ``seesaw`` on both sets
    Recipe("seesaw_linear", "Seesaw loss (p 0.8, q 2) on a plain linear head (the head ablation of seesaw)",
           {**_LINEAR, **_SEESAW_LOSS}),
    # digits_lt +24.2 / +11.0, glyphs_lt +29.1 / +11.3 (many -8.8)
    Recipe("balanced_softmax", "Balanced Softmax (logits + log prior in training), linear head",
           {**_LINEAR, "loss.name": "balanced_softmax"}),
    # = balanced_softmax at tau 1 (equal to the last digit on every seed of both sets)
    Recipe("logit_adjusted", "logit-adjusted loss (tau 1), linear head",
           {**_LINEAR, "loss.name": "logit_adjusted", "loss.tau": 1.0}),
    # digits_lt +22.9 / +10.8, glyphs_lt +25.4 / +10.3
    Recipe("logit_adjusted_posthoc", "CE stage 1 evaluated with post-hoc logit adjustment (tau 1), no retraining",
           on="ce", posthoc=("--logit-adjust-tau", "1")),
    # digits_lt +14.9 / +7.4, glyphs_lt +40.6 / +18.8 (the best glyphs_lt row)
    Recipe("ldam_drw", "LDAM (max margin 0.5, s 30) on a cosine head, class-balanced re-weighting from 80% of "
           "the epochs", {**_LDAM_HEAD, "loss.name": "ldam", "loss.max_m": 0.5, "loss.s": 30.0,
                          "loss.drw_epoch": Share(0.8, "train.epochs"), "loss.beta": 0.9999}),
    # digits_lt -10.0 / -6.8, glyphs_lt +3.3 / +1.1: at CE's level at best, as published
    Recipe("focal", "focal loss (gamma 2), linear head", {**_LINEAR, "loss.name": "focal", "loss.gamma": 2.0}),
    # digits_lt +32.0 / +15.7, glyphs_lt +4.4 / -18.5 (many -40.5: re-weighting from the first step)
    Recipe("class_balanced", "class-balanced re-weighted CE (beta 0.9999), linear head",
           {**_LINEAR, "loss.name": "class_balanced", "loss.beta": 0.9999}),
    # digits_lt +21.3 / +10.1, glyphs_lt +39.0 / +17.3
    Recipe("crt", "CE stage 1, then cRT: a re-initialized head on the class-aware sampler", on="ce", stage2="crt"),
    # digits_lt +15.3 / +6.9, glyphs_lt +32.5 / +13.1
    Recipe("lws", "CE stage 1, then LWS: learned per-class scales of the stage-1 head", on="ce", stage2="lws"),
    # digits_lt +5.8 / +2.7, glyphs_lt +30.8 / +11.0
    Recipe("tau_norm", "CE stage 1, then tau-normalized head (tau chosen on val, else train)", on="ce",
           stage2="tau_norm"),
    # digits_lt +13.1 / +5.4, glyphs_lt +32.5 / +10.2
    Recipe("ncm", "CE stage 1, then nearest class mean of the backbone features", on="ce", stage2="ncm"),
    # digits_lt -2.0 / -1.4, glyphs_lt -4.1 / -4.1: below its stage 1 on both (BENCHMARKS.md says what was checked)
    Recipe("gumbel", "CE stage 1, then the head fine-tuned with the Gumbel loss (GOL, the authors' recipe)", on="ce",
           stage2="gumbel"),
    # One cRT run with a dual head reports both rules (metrics.json "dual_head": "sel" and "avg").
    # digits_lt +17.1 / +8.1, glyphs_lt +29.7 / +11.3 (many -0.3)
    Recipe("dual_sel", f"cRT's dual head, SimCal's selection: classes with <= {_DUAL_T} images take the cRT head",
           on="ce", stage2="crt", stage2_set=_DUAL, result="dual_head.sel", run="crt_dual"),
    # digits_lt +16.9 / +8.2, glyphs_lt +27.0 / +12.6 (many -1.1)
    Recipe("dual_avg", "cRT's dual head, score averaging: (stage-1 + cRT scores) / 2 for every class", on="ce",
           stage2="crt", stage2_set=_DUAL, result="dual_head.avg", run="crt_dual"),
]}


def recipe(name: str) -> Recipe:
    """The recipe ``name``; a KeyError listing the recipes otherwise."""
    if name not in RECIPES:
        raise KeyError(f"unknown method '{name}'; the recipes are: {', '.join(RECIPES)}")
    return RECIPES[name]


def needed(names: Sequence[str]) -> list[Recipe]:
    """The recipes to run for ``names``: the stage-1 recipes first (those named, and those a named second
    stage or evaluation option builds on), then the others, each once, in the order given."""
    chosen = [recipe(n) for n in dict.fromkeys(names)]
    firsts = [recipe(r.on) if r.on else r for r in chosen]
    return list({r.name: r for r in [*firsts, *chosen]}.values())


def describe() -> str:
    """``--help`` lines: each recipe and its one-line summary."""
    return "\n".join(f"  {r.name:<23} {r.summary}" for r in RECIPES.values())
