"""The planner's memory estimate against what a training step really holds, on CPU.

Parameter, gradient and optimizer bytes must be exact (they are counts); the activation + logits estimate
is checked against the peak torch's CPU allocator reports during a step's forward and backward (the
profiler's memory events), minus the gradients that step allocates. The estimate may be high (it is a
bound, with its margin on top) but must not be low: an underestimate is what costs GPU-hours.
"""

from __future__ import annotations

import json
import os
import tempfile

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from orchestrator.backbones import get_backbone
from orchestrator.config import load_config
from orchestrator.moss import apply_moss
from orchestrator.plan.memory import estimate
from orchestrator.plan.planner import Planner
from orchestrator.plan.sizing import model_shape, trainable_parameters
from orchestrator.training.optim import build_optimizer
from orchestrator.training.objective import loss_module
from tests.helpers import draw

pytestmark = pytest.mark.slow  # real training steps (~40 s): in `make test`, not `make test-fast`
#: estimate / measured peak must fall in this band (measured 1.09-1.32 when written)
LOW, HIGH = 0.95, 1.5
SEQ, PROMPT = 1024, 256


def allocated_peak(fn) -> int:
    """Peak bytes the CPU allocator held above the start of ``fn`` (torch profiler memory events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        events = json.load(open(path))["traceEvents"]
    mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    if not mem:
        return 0
    # the profiler's running total carries blocks of earlier sessions that were freed outside them: measure
    # from the total just before this session's first event
    start = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in mem) - start


def full_length_batch(spec, micro_batch: int, images: int) -> dict:
    """micro_batch sequences of exactly SEQ tokens, ``images`` answer images each, every token a target."""
    per_image = spec.image_budget(spec.random_config()).max_tokens
    text = SEQ - 2 - images * per_image  # BOS and EOS around
    out = []
    for b in range(micro_batch):
        segs = []
        for i in range(images):
            segs += ["abcdefgh"[(b + i) % 8] * (text // (images + 1)), draw(["red", "blue", "green"][i % 3], (64, 64))]
        segs.append("z" * (text - images * (text // (images + 1))))
        ex = spec.encode(segs, targets=[True] * len(segs))
        assert ex["input_ids"].numel() == SEQ
        out.append(ex)
    return spec.collate(out)


def measure(cfg) -> dict:
    spec = get_backbone(cfg.backbone.name, cfg.backbone.checkpoint)
    bf16 = cfg.train.precision == "bf16"
    torch.manual_seed(0)
    model = apply_moss(spec.build(dtype=torch.bfloat16 if bf16 else None), cfg.adapter.to_moss_config(), spec)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # as the training loop does
    if cfg.train.activation_checkpointing:
        spec.enable_activation_checkpointing(model)
    model.train()
    module = loss_module(model, spec, chunk=cfg.train.loss_chunk_tokens)
    optimizer, _ = build_optimizer(module, cfg.train, 10)
    shape = model_shape(cfg.backbone.name, cfg.backbone.checkpoint)
    fit = (SEQ - PROMPT) // shape.image.max_tokens
    batch = full_length_batch(spec, cfg.train.micro_batch, fit)

    def forward_backward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = module(batch)
        out.loss.backward()

    forward_backward()
    optimizer.step()  # allocates AdamW's moments
    trainable = [p for p in module.parameters() if p.requires_grad]
    grads = sum(p.grad.numel() * p.grad.element_size() for p in trainable)
    optimizer.zero_grad(set_to_none=True)
    peak = allocated_peak(forward_backward)
    return {
        "frozen": sum(p.numel() * p.element_size() for p in module.parameters() if not p.requires_grad),
        "trainable": sum(p.numel() * p.element_size() for p in trainable),
        "grads": grads,
        "optimizer": sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                         if torch.is_tensor(t) and t.dim() > 0),
        "activations": peak - grads,  # the step's peak without the gradients it allocated
    }


def config(preset: str, *sets: str):
    return load_config(None, ["backbone.name=chameleon", f"backbone.checkpoint={preset}", f"data.max_seq_len={SEQ}",
                              f"plan.prompt_tokens={PROMPT}", "train.micro_batch=2", *sets])


def planned(cfg):
    planner = Planner(None)
    shape = model_shape(cfg.backbone.name, cfg.backbone.checkpoint)
    n = trainable_parameters(shape, cfg.adapter.to_moss_config())
    return n, estimate(shape, n, planner.workload(cfg, shape), 0.0, 0.0)


CASES = {
    "lora": ("adapter.variant=lora", "adapter.rank=16"),
    "moss-full": ("adapter.variant=moss", "adapter.rank=16", "adapter.kernel_size=3"),
    "moss-full-ckpt": ("adapter.variant=moss", "adapter.rank=16", "train.activation_checkpointing=true"),
    "moss-lowrank": ("adapter.variant=moss", "adapter.rank=16", "adapter.conv_space=lowrank"),
    "moe_lora-bf16": ("adapter.variant=moe_lora", "adapter.rank=16", "train.precision=bf16"),
    "lora-bf16-ckpt": ("adapter.variant=lora", "adapter.rank=16", "train.precision=bf16",
                       "train.activation_checkpointing=true"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_small_preset_step_matches_the_estimate(case, capsys):
    cfg = config("small", *CASES[case])
    got = measure(cfg)
    n, est = planned(cfg)
    # counts: exact
    assert got["trainable"] == got["grads"] == 4 * n
    assert got["optimizer"] == 8 * n
    assert est.adapter == got["trainable"] + got["grads"] + got["optimizer"]
    assert est.weights == got["frozen"]
    # activations (+ logits, + the backward's transients): an upper bound, within the band
    ratio = (est.activations + est.logits) / got["activations"]
    with capsys.disabled():
        print(f"\n{case}: estimate {(est.activations + est.logits) / 2**20:.1f} MiB, measured peak "
              f"{got['activations'] / 2**20:.1f} MiB (x{ratio:.2f})")
    assert LOW <= ratio <= HIGH, (case, ratio)


def test_large_preset_counts_are_exact():
    """hidden 2048, 16 layers (0.8B parameters): weights, adapter, gradients and AdamW state byte for byte."""
    cfg = load_config(None, ["backbone.checkpoint=large", "adapter.variant=moe_lora", "adapter.rank=8"])
    spec = get_backbone("chameleon", "large")
    model = apply_moss(spec.build(), cfg.adapter.to_moss_config(), spec)
    module = loss_module(model, spec)
    optimizer, _ = build_optimizer(module, cfg.train, 10)
    # text only (an image is 1,026 tokens here): the image branch gets zero gradients, as DDP gives it
    batch = spec.collate([spec.encode(["a short text-only sequence"])])
    module(batch).loss.backward()
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    n, est = planned(cfg)
    held = sum(4 * p.numel() + p.grad.numel() * p.grad.element_size() for p in trainable)
    held += sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim() > 0)
    assert held == est.adapter == 16 * n
    assert sum(p.numel() * p.element_size() for p in module.parameters() if not p.requires_grad) == est.weights
