"""`moss demo`: a short real demonstration on the tiny backbones (grown into the full sweep later).

For each backbone and adapter variant: build the tiny model, apply the adapter, train a few AdamW
steps on interleaved examples encoded by the backbone's own tokenizer and VQ, report per-modality
losses before and after, and the trainable parameters.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .backbones import get_backbone
from .moss import MossConfig, apply_moss, expected_trainable_parameters, trainable_parameters

VARIANTS = {
    "lora": MossConfig(variant="lora", rank=8, alpha=16),
    "moe_lora": MossConfig(variant="moe_lora", rank=8, alpha=16),
    "moss-full": MossConfig(variant="moss", rank=8, alpha=16, kernel_size=3, conv_space="full"),
    "moss-lowrank": MossConfig(variant="moss", rank=8, alpha=16, kernel_size=3, conv_space="lowrank"),
}
COLORS = ["red", "blue", "green", "orange", "purple", "black"]
SHAPES = ["square", "circle"]


def drawing(color: str, shape: str, size=(32, 32)) -> Image.Image:
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    box = [size[0] // 5, size[1] // 5, size[0] * 4 // 5, size[1] * 4 // 5]
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=color)
    return im


def demo_examples(spec, n: int = 8) -> list[dict]:
    """Instruction -> interleaved answer pairs whose images follow the text (prompt masked)."""
    out = []
    for i in range(n):
        c1, c2, s = COLORS[i % len(COLORS)], COLORS[(i + 2) % len(COLORS)], SHAPES[i % 2]
        segments = [f"Draw a {c1} {s}, then a {c2} one.", f"Here is the {c1} {s}:", drawing(c1, s),
                    f"and the {c2} {s}:", drawing(c2, s)]
        out.append(spec.encode(segments, targets=[False, True, True, True, True]))
    return out


def train_steps(spec, model, batches: list[dict], steps: int, lr: float) -> list[dict]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    history = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        t0 = time.perf_counter()
        out = spec.loss(model, batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append({**out.metrics(), "step": step, "step_s": time.perf_counter() - t0})
    return history


def evaluate(spec, model, batches: list[dict]) -> dict:
    model.eval()
    with torch.no_grad():
        outs = [spec.loss(model, b).metrics() for b in batches]
    return {k: sum(o[k] for o in outs) / len(outs) for k in ("loss", "text_loss", "image_loss")}


def run_demo(backbones=("chameleon", "emu3", "janus"), steps: int = 30, lr: float = 2e-3, out_dir: str | None = None):
    torch.manual_seed(0)
    rows = []
    for name in backbones:
        spec = get_backbone(name)
        examples = demo_examples(spec)
        batches = [spec.collate(examples[i : i + 2]) for i in range(0, len(examples), 2)]
        for label, cfg in VARIANTS.items():
            model = apply_moss(spec.build(seed=0), cfg, spec)
            n_train = trainable_parameters(model)
            assert n_train == expected_trainable_parameters(model, cfg, spec)
            before = evaluate(spec, model, batches)
            history = train_steps(spec, model, batches, steps, lr)
            after = evaluate(spec, model, batches)
            step_ms = 1000 * sorted(h["step_s"] for h in history)[len(history) // 2]
            rows.append({"backbone": name, "adapter": label, "trainable": n_train, "before": before,
                         "after": after, "median_step_ms": step_ms})
            print(f"{name:9s} {label:12s} trainable {n_train:7d} | text {before['text_loss']:.3f} -> "
                  f"{after['text_loss']:.3f} | image {before['image_loss']:.3f} -> {after['image_loss']:.3f} "
                  f"| {step_ms:.0f} ms/step", flush=True)
    if out_dir:
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "demo.json").write_text(json.dumps(rows, indent=2))
        print(f"wrote {path / 'demo.json'}")
    return rows
