"""Parameter-efficient fine-tuning: what trains, and what a training step costs.

1. Trainable fraction of CLIP ViT-B/16 with each LIFT config (``configs/*_clip_lift.yaml``) and the full
   fine-tune config, the model built on the meta device (no weights, no memory): the configs' own backbone,
   ``model.freeze`` / ``model.peft`` and head. Where the configs' text-head keys are not known to this checkout
   (``classifier.init``, ``model.clip_projection``: another branch), the head is built on the backbone's 768-d
   features, which counts 0.26M more head parameters than the 512-d CLIP embedding head and a 0.39M smaller model.
2. One training step (forward, backward, AdamW step) of a small ViT (timm ``vit_small_patch16_224``, random
   weights, 224 px, batch ``--batch``) fine-tuned fully and with LoRA (rank 16 on qkv), built by ltcls
   (``build_model``, ``build_optimizer``), the two taking turns in the same run: time per step (minimum and median,
   ``bench_losses.time_ms``), the most memory allocated above the start during one step (``bench_losses.peak_mib``:
   the profiler's allocator total on CPU, ``max_memory_allocated`` on CUDA), and the optimizer state kept between
   steps.

    python benchmarks/bench_peft.py                     # CPU, batch 8
    python benchmarks/bench_peft.py --device cuda --batch 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_losses import peak_mib, time_ms

from ltcls import config as C
from ltcls.engine.optim import build_optimizer, parameter_counts
from ltcls.engine.tasks import build_model
from ltcls.models.backbone import LTModel, create_backbone
from ltcls.models.classifiers import build_classifier
from ltcls.models.peft import adapt_backbone

CONFIGS = Path(__file__).parents[1] / "configs"
NUM_CLASSES = {"imagenet_lt": 1000, "places_lt": 365, "cifar100_lt": 100}


def meta_model(path: Path) -> tuple[torch.nn.Module, str]:
    """The config's model on the meta device, and how it was built."""
    raw = C.load_yaml(path)
    num_classes = NUM_CLASSES[raw["data"]["name"]]
    try:
        cfg = C.load(path, ["model.pretrained=false", "classifier.init=default"])
    except C.ConfigError:
        cfg = None
    with torch.device("meta"):
        if cfg is not None:
            return build_model(cfg, num_classes), "build_model (the config as it resolves)"
        m, head = raw["model"], dict(raw["classifier"])
        backbone = create_backbone(m["name"], **m.get("kwargs", {}))
        backbone = adapt_backbone(backbone, C.PeftConfig(**m.get("peft", {})), freeze=m.get("freeze", False))
        params = {k: v for k, v in head.items() if k in ("tau", "bias", "eps", "init_norm")}
        classifier = build_classifier(head["name"], backbone.num_features, num_classes, **params)
        return LTModel(backbone, classifier), "768-d head (text-head keys unknown to this checkout)"


def fractions() -> None:
    print("| config | trainable | total | fraction | built by |")
    print("|---|---:|---:|---:|---|")
    for path in sorted(CONFIGS.glob("*_clip_*.yaml")):
        model, how = meta_model(path)
        trainable, total = parameter_counts(model)
        print(f"| {path.name} | {trainable:,} | {total:,} | {100 * trainable / total:.2f}% | {how} |")


def step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
            amp: bool):
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()

    return step


def step_costs(device: torch.device, batch: int, reps: int) -> None:
    base = ["model.name=vit_small_patch16_224", "train.optimizer=adamw", "train.lr=1e-4", "train.weight_decay=0.05"]
    variants = {"full fine-tuning": [], "LoRA r=16 (qkv)": ["model.peft.method=lora", "model.peft.r=16"]}
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 224, 224, generator=g).to(device)
    labels = torch.randint(0, 100, (batch,), generator=g).to(device)
    steps, info = {}, {}
    for name, overrides in variants.items():
        cfg = C.resolve({}, [*base, *overrides])
        torch.manual_seed(0)
        model = build_model(cfg, 100).to(device).train()
        opt = build_optimizer(cfg.train, model)
        steps[name] = step_fn(model, opt, images, labels, device.type == "cuda")
        steps[name]()  # the optimizer's state exists from here on
        state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                    if torch.is_tensor(t))
        info[name] = (parameter_counts(model)[0], state / 2**20)
    times = time_ms(steps, device, reps=reps, warmup=1, budget_s=600)
    peaks = {name: peak_mib(step, device) for name, step in steps.items()}
    print(f"\nvit_small_patch16_224, 224 px, batch {batch}, AdamW, {device}: one training step")
    print("| fine-tuning | trainable | step ms (median) | peak MiB in a step | optimizer state MiB |")
    print("|---|---:|---:|---:|---:|")
    for name in steps:
        print(f"| {name} | {info[name][0]:,} | {times[name][0]:.0f} ({times[name][1]:.0f}) | {peaks[name]:.0f} | "
              f"{info[name][1]:.1f} |")
    full, lora = list(steps)
    print(f"LoRA / full: step time {times[lora][0] / times[full][0]:.2f}x (minimum), "
          f"{times[lora][1] / times[full][1]:.2f}x (median); peak memory {peaks[lora] / peaks[full]:.2f}x; "
          f"optimizer state {info[lora][1] / info[full][1]:.4f}x")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--skip-steps", action="store_true", help="only the trainable fractions")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    fractions()
    if not args.skip_steps:
        step_costs(torch.device(args.device), args.batch, args.reps)


if __name__ == "__main__":
    main()
