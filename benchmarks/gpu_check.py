"""One prepared check for a GPU machine (<= 8 minutes): does the real-size path run, and does `moss plan` hold?

1. A random-init Chameleon-7B-shape model (ChameleonForConditionalGeneration at facebook/chameleon-7b's
   config) in bf16 on one GPU; 4,096-token sequences holding two 32x32-code images (all tokens targets);
   LoRA, MoE-LoRA, MoSS full and low-rank (k = 3) at rank 64 and 256, activation checkpointing, AdamW:
   step time, tokens/s, MFU, and the peak memory next to the planner's estimate for the same workload.
   A cell whose estimate exceeds the GPU is skipped (and says so): that is the planner at work.
2. `moss sample` -> `moss preprocess --local` (the `large` preset: hidden 2048, 16 layers, 32x32 grid) ->
   `moss train` for 20 steps on one GPU through Ray Train (bf16, activation checkpointing).

    python benchmarks/gpu_check.py [--out benchmarks/results] [--skip-train]
    python benchmarks/gpu_check.py --dry-run      # the same code paths on CPU at the `small` preset
Writes benchmarks/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.backbones import get_backbone  # noqa: E402
from orchestrator.config import load_config  # noqa: E402
from orchestrator.moss import apply_moss  # noqa: E402
from orchestrator.plan.memory import GiB, estimate  # noqa: E402
from orchestrator.plan.planner import Planner  # noqa: E402
from orchestrator.plan.sizing import ModelShape, read_shape, trainable_parameters  # noqa: E402
from orchestrator.training.objective import loss_module  # noqa: E402
from orchestrator.training.optim import build_optimizer  # noqa: E402
from orchestrator.moss.variants import all_forms  # noqa: E402

# every registered variant's forms but Conv-LoRA's GELU (moss-lowrank's shapes plus one activation per image
# token: left out to keep the check within its minutes)
CELLS = [(v, r) for r in (64, 256) for v in all_forms() if v != "moss-lowrank-gelu"]
#: dense bf16 peak FLOP/s by device name fragment (datasheets, without sparsity)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def adapter_sets(variant: str, rank: int) -> list[str]:
    kind = [f"adapter.{k}={v}" for k, v in all_forms()[variant].items()]
    return [*kind, f"adapter.rank={rank}", f"adapter.alpha={2 * rank}", "adapter.kernel_size=3"]


def batch_for(spec, seq: int, micro_batch: int, device) -> dict:
    """micro_batch sequences of exactly ``seq`` ids: text, image, text, image, text; every token a target.
    Built without the tokenizer (a hub checkpoint's would be downloaded): ids drawn from the vocabulary."""
    from orchestrator.backbones.frame import ImageFrame
    from orchestrator.layout import ImageLayout, ImageSegment

    g = torch.Generator().manual_seed(0)
    h, w = shape_grid(spec)
    codes = spec.image_token_ids
    lo_code, hi_code = int(codes.min()), int(codes.max())
    if lo_code > 300:  # the random presets: codes at the top of the vocabulary
        boi, eoi, low, high = lo_code - 1, lo_code - 2, 16, lo_code - 2
    else:  # Chameleon-7B: codes 4..8195, text above
        boi, eoi, low, high = hi_code + 1, hi_code + 2, hi_code + 3, spec.model_config.vocab_size
    # (boi / eoi only mark where images sit: the layout is given explicitly)
    text = seq - 2 * (h * w + 2)
    rows, layouts = [], []
    for _ in range(micro_batch):
        ids, segs = [], []
        for part in (text // 3, text // 3):
            ids += torch.randint(low, high, (part,), generator=g).tolist() + [boi]
            segs.append(ImageSegment(len(ids), h, w, w, h * w))
            ids += codes[torch.randint(len(codes), (h * w,), generator=g)].tolist() + [eoi]
        ids += torch.randint(low, high, (seq - len(ids),), generator=g).tolist()
        rows.append(torch.tensor(ids))
        layouts.append(tuple(segs))
    ids = torch.stack(rows)
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids),
             "image_layout": ImageLayout(tuple(layouts), seq)}
    # the loss finds frame tokens through spec.image_frame, which asks the tokenizer for boi / eoi: give it
    # this batch's own (a hub checkpoint's tokenizer would be downloaded)
    spec.image_frame = lambda hh, ww: ImageFrame(boi, (), (), (eoi,), hh, ww)
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def shape_grid(spec) -> tuple[int, int]:
    return spec.config_grid(spec.model_config)


def build_model(spec, config, device, dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = spec.model_class(config) if config is not None else spec.build()
    finally:
        torch.set_default_dtype(previous)
    return model.to(device=device, dtype=dtype)


def measure_cell(spec, config, shape: ModelShape, cfg, device, dtype, steps: int, warmup: int) -> dict:
    n_trainable = trainable_parameters(shape, cfg.adapter.to_moss_config())
    planner = Planner(None)
    est = estimate(shape, n_trainable, planner.workload(cfg, shape), cfg.plan.margin_gb, cfg.plan.margin_fraction)
    row = {"trainable": n_trainable, "plan_gib": est.gib()}
    total_gib = torch.cuda.get_device_properties(0).total_memory / GiB if device == "cuda" else None
    if total_gib is not None and est.total / GiB > total_gib:
        row["skipped"] = f"the plan estimates {est.total / GiB:.1f} GiB > {total_gib:.1f} GiB on this GPU"
        return row
    model = build_model(spec, config, device, dtype)
    model = apply_moss(model, cfg.adapter.to_moss_config(), spec)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    spec.enable_activation_checkpointing(model)
    model.train()
    module = loss_module(model, spec, chunk=cfg.train.loss_chunk_tokens)
    optimizer, _ = build_optimizer(module, cfg.train, steps + warmup)
    batch = batch_for(spec, cfg.data.max_seq_len, cfg.train.micro_batch, device)
    times = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = module(batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = sorted(times)[len(times) // 2]
    tokens = batch["input_ids"].numel()
    # model FLOPs per step (recomputation not counted): the frozen layers' forward + input gradient (4 per
    # parameter and token), the adapter's forward + both gradients (6), causal attention (fwd + bwd)
    attn = 3 * 2 * shape.layers * cfg.data.max_seq_len * shape.hidden * tokens
    flops = 4 * shape.layer_params * tokens + 6 * n_trainable * tokens + attn
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in (torch.cuda.get_device_name() if device == "cuda" else "")), None)
    row.update(step_s=round(step, 3), tokens_per_s=round(tokens / step, 1),
               mfu=round(flops / step / peak_flops, 3) if peak_flops else None,
               peak_gib=round(torch.cuda.max_memory_allocated() / GiB, 2) if device == "cuda" else None)
    if row["peak_gib"] is not None:
        row["plan_over_peak"] = round((est.total - est.margin) / GiB / row["peak_gib"], 2)
    del module, model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def throughput(args, device, dtype) -> dict:
    if args.dry_run:
        spec, config, base_sets, seq = get_backbone("chameleon", "small"), None, ["backbone.checkpoint=small"], 1024
    else:
        spec = get_backbone("chameleon", "facebook/chameleon-7b")
        config, base_sets, seq = spec.real_size_config("7b"), ["backbone.checkpoint=facebook/chameleon-7b"], 4096
        spec.__dict__["model_config"] = config  # the published size, not the hub's config (no download)
    with torch.device("meta"):
        meta = spec.model_class(config if config is not None else spec.random_config())
    shape = read_shape(spec, meta, config if config is not None else spec.random_config(), "gpu_check")
    results = {}
    for variant, rank in CELLS if not args.dry_run else CELLS[:2]:
        cfg = load_config(None, ["backbone.name=chameleon", *base_sets, *adapter_sets(variant, rank),
                                 f"data.max_seq_len={seq}", "plan.prompt_tokens=0", "train.micro_batch=1",
                                 "train.activation_checkpointing=true", "scaling.use_gpu=" + str(device == "cuda"),
                                 "train.precision=" + ("bf16" if dtype == torch.bfloat16 else "fp32")])
        t0 = time.perf_counter()
        row = measure_cell(spec, config, shape, cfg, device, dtype, steps=args.steps, warmup=2)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        results[f"{variant}-r{rank}"] = row
        print(f"{variant:13s} r{rank:<4d} " + (row.get("skipped") or
              f"{row['step_s']:.3f} s/step  {row['tokens_per_s']:>9.0f} tok/s  mfu {row['mfu']}  peak "
              f"{row['peak_gib']} GiB  plan {row['plan_gib']['total']} GiB (without margin x{row.get('plan_over_peak')})"),
              flush=True)
    return results


def moss_train(args, device) -> dict:
    """sample -> preprocess (local engine) -> 20 steps of `moss train` on one GPU via Ray Train."""
    preset = "small" if args.dry_run else "large"
    with tempfile.TemporaryDirectory() as d:
        sets = [f"backbone.checkpoint={preset}", f"data.source={d}/sample", f"data.output={d}/shards",
                f"storage.path={d}/ray_results", f"tracking.tracking_uri=sqlite:///{d}/mlflow.db",
                "data.max_seq_len=4096", "train.max_steps=" + str(args.train_steps), "train.eval_every=10",
                "train.ckpt_every=10", "train.micro_batch=2", "train.warmup_steps=2", "scaling.num_workers=1",
                "train.activation_checkpointing=true", "train.run_name=gpu-check"]
        if device == "cuda":
            sets += ["scaling.use_gpu=true", "scaling.cpus_per_worker=4", "train.precision=bf16"]
        moss = [sys.executable, "-m", "orchestrator.cli"]
        t0 = time.perf_counter()
        steps = [moss + ["sample", f"{d}/sample", "--per-domain", "20"],
                 moss + ["preprocess", "jobs/configs/sample.yaml", "--local", *[a for s in sets for a in ("--set", s)]],
                 moss + ["train", "jobs/configs/sample.yaml", *[a for s in sets for a in ("--set", s)]]]
        out = {}
        for cmd in steps:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.train_timeout)
            out[cmd[3]] = {"rc": proc.returncode, "tail": (proc.stdout + proc.stderr)[-1500:]}
            print(f"moss {cmd[3]}: exit {proc.returncode}", flush=True)
            if proc.returncode:
                print(out[cmd[3]]["tail"])
                break
        out["seconds"] = round(time.perf_counter() - t0, 1)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per cell (after 2 warm-up steps)")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--train-timeout", type=int, default=240)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="CPU, small preset: check this script's code paths")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    if device == "cpu" and not args.dry_run:
        sys.exit("no CUDA device: run on a GPU machine, or --dry-run")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    meta = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "gpu_gib": round(torch.cuda.get_device_properties(0).total_memory / GiB, 1) if device == "cuda" else None,
            "torch": torch.__version__, "dry_run": args.dry_run}
    print(f"gpu_check on {meta['device']} ({meta['gpu_gib']} GiB)", flush=True)
    results = {"meta": meta, "throughput": throughput(args, device, dtype)}
    if not args.skip_train:
        results["moss_train"] = moss_train(args, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("gpu_check_dry_run.json" if args.dry_run else "gpu_check.json")
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
