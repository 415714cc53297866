"""`moss demo`: a short real run on the tiny backbones (grown into the full sweep later).

Generates the bundled LeafInstruct-format sample set, preprocesses it for each backbone with the Ray
Data pipeline (shards + manifest + rejects), then for each adapter variant trains a few AdamW steps on
examples read back from the shards and reports per-modality losses before and after.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .backbones import get_backbone
from .config import load_config
from .data.pipeline import output_dir, preprocess
from .data.sample import write_sample
from .data.shards import example_from_row
from .moss import MossConfig, apply_moss, expected_trainable_parameters, trainable_parameters

VARIANTS = {
    "lora": MossConfig(variant="lora", rank=8, alpha=16),
    "moe_lora": MossConfig(variant="moe_lora", rank=8, alpha=16),
    "moss-full": MossConfig(variant="moss", rank=8, alpha=16, kernel_size=3, conv_space="full"),
    "moss-lowrank": MossConfig(variant="moss", rank=8, alpha=16, kernel_size=3, conv_space="lowrank"),
}


def shard_examples(name: str, root: Path, per_domain: int = 2) -> tuple[list[dict], dict]:
    """Preprocess the sample set for one backbone with Ray Data; a few train examples per domain."""
    import ray

    cfg = load_config(None, [f"data.source={root / 'sample'}", f"data.output={root / 'shards'}", f"backbone.name={name}"])
    manifest = preprocess(cfg)
    rows = ray.data.read_parquet(f"{output_dir(cfg)}/split=train").take_all()
    by_domain: dict[str, list] = {}
    for row in sorted(rows, key=lambda r: r["order"]):
        by_domain.setdefault(row["domain"], []).append(row)
    # round-robin over domains, so batches of 2 mix text and image answers
    picked = [rs[i] for i in range(per_domain) for rs in by_domain.values() if i < len(rs)]
    return [example_from_row(r) for r in picked], manifest


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
    out = {}
    for k in ("loss", "text_loss", "image_loss"):  # a batch may hold no image (or no text) targets
        vals = [o[k] for o in outs if k in o]
        out[k] = sum(vals) / len(vals)
    return out


def run_demo(backbones=("chameleon", "emu3", "janus"), steps: int = 30, lr: float = 2e-3, out_dir: str = "demo_out"):
    torch.manual_seed(0)
    root = Path(out_dir)
    counts = write_sample(root / "sample", per_domain=12)
    print(f"sample set: {sum(counts.values())} records in {root / 'sample'}", flush=True)
    rows = []
    for name in backbones:
        spec = get_backbone(name)
        examples, manifest = shard_examples(name, root)
        out = manifest["outputs"]
        print(f"{name}: Ray Data preprocessing -> {out['train']} train / {out['val']} val / {out['rejected']} rejected "
              f"records in {root / 'shards' / name}", flush=True)
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
    (root / "demo.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {root / 'demo.json'}")
    return rows
