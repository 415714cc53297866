"""Per-token latency and throughput of generating images: MoSS with the conv cache vs plain LoRA, at batch 1/4/8.

Emu3's random "small" config (hidden 512, 4 layers) generates --grid x --grid images (Emu3 takes any size;
EOL after each row) after a short text prompt, through orchestrator.evaluation.generate: the same sampling
loop for every variant, so the per-token times differ only by the model step. At batch B, B answers (seeds
0..B-1) are decoded together (Generator.generate_many, one forward per step for all rows).

- cached (lora, moe_lora, moss-full, moss-lowrank...): KV cache, and for MoSS the conv cache.
  ms/token: a row's latency per image token (its head, sampling and the batched step); tok/s: image tokens
  per second over the batch (B / latency: the rows step together).
- recompute (moss-full, batch 1): a full forward over the whole sequence for every new token (no cache).
  Timed at the midpoints of --recompute-points equal slices of the image and averaged: the cost of a
  step grows linearly with its position, so this is the mean over all the image's tokens.

Targets: cached moss-full <= 1.15 x lora per token at batch 1; batch 8 >= 5 x the tokens/s of batch 1 for
every variant; cached >= 10 x faster than recompute for a 32 x 32 grid.

    python benchmarks/generation.py [--grid 32] [--rank 16] [--batch 1 4 8] [--device cuda] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from orchestrator.backbones import get_backbone
from orchestrator.evaluation.generate import Generator, SamplingConfig
from orchestrator.moss import ImageLayout, MossConfig, apply_moss, set_layout
from orchestrator.moss.variants import all_forms

VARIANTS = all_forms()  # every registered variant's forms (lora, moe_lora, moss-full, moss-lowrank)
PROMPT = ["Draw a red house with a blue roof on a green hill, in a flat cartoon style:"]


def build(spec, kwargs, rank: int, device: str, dtype):
    model = spec.build(seed=0, dtype=dtype)
    model = apply_moss(model, MossConfig(rank=rank, alpha=2 * rank, kernel_size=3, **kwargs), spec)
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero B: the image branch really contributes
        for n, p in model.named_parameters():
            if "lora_B" in n or "lora_img_B" in n:
                p.normal_(0, 0.02)
    return model.to(device).eval()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cached_seconds(gen: Generator, grid: int, batch: int, device: str) -> tuple[float, float, int]:
    """(mean, median) seconds per image token of a row, ``batch`` answers decoded together; the sequence length."""
    cfgs = [SamplingConfig(max_new_tokens=0, image_size=(grid, grid), open_image=True, max_images=1, temperature=1.0,
                           seed=i) for i in range(batch)]
    sync(device)
    answers = [a for _, a in gen.generate_many([(PROMPT, c) for c in cfgs], batch_size=batch, decode=False)]
    sync(device)
    t = [s for a in answers for s in a.image_token_seconds]
    return sum(t) / len(t), statistics.median(t), len(answers[0].ids)


@torch.no_grad()
def recompute_seconds(spec, model, gen: Generator, grid: int, points: int, device: str) -> float:
    """Mean seconds of one no-cache step (full forward + image logits) over the image's positions."""
    answer = gen.generate(PROMPT, SamplingConfig(max_new_tokens=0, image_size=(grid, grid), open_image=True,
                                                 max_images=1, seed=0))
    ids = torch.tensor([answer.ids], device=device)
    frame = spec.image_frame(grid, grid)
    start = answer.prompt_length + 1 + len(frame.header)  # first cell
    end = start + grid * frame.row_stride
    times = []
    for p in range(points):
        t_len = start + int((p + 0.5) * (end - start) / points)  # predict the token at t_len from ids[:t_len]
        prefix = ids[:, :t_len]
        layout = spec.image_layout(prefix.cpu())
        sync(device)
        t0 = time.perf_counter()
        set_layout(model, ImageLayout(layout.segments, t_len))
        h = spec.hidden_states(model, {"input_ids": prefix})
        spec.image_logits(model, h[0, -1])
        sync(device)
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--grid", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--recompute-points", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    spec = get_backbone("emu3", checkpoint=args.preset)
    models = {label: build(spec, kw, args.rank, args.device, dtype) for label, kw in VARIANTS.items()}
    gens = {label: Generator(m, spec) for label, m in models.items()}
    for gen in gens.values():  # warm-up: a small image, at the largest batch
        cfg = SamplingConfig(max_new_tokens=0, image_size=(4, 4), open_image=True, max_images=1)
        list(gen.generate_many([(PROMPT, cfg)] * max(args.batch), batch_size=max(args.batch), decode=False))
    runs = {(label, b): [] for label in models for b in args.batch}
    seq_len = 0
    for _ in range(args.reps):  # round-robin, so drift hits every variant and batch size alike
        for b in args.batch:
            for label, gen in gens.items():
                mean_s, median_s, seq_len = cached_seconds(gen, args.grid, b, args.device)
                runs[label, b].append((mean_s, median_s))
    rows = []
    for b in args.batch:
        for label in models:
            mean_s = statistics.median(r[0] for r in runs[label, b])
            rows.append(dict(variant=label, batch=b, mode="kv+conv cache" if "moss" in label else "kv cache",
                             mean_ms=1000 * mean_s, median_ms=1000 * statistics.median(r[1] for r in runs[label, b]),
                             tokens_per_s=b / mean_s))
    rec = recompute_seconds(spec, models["moss-full"], gens["moss-full"], args.grid, args.recompute_points, args.device)
    rows.append(dict(variant="moss-full", batch=1, mode="recompute (no cache)", mean_ms=1000 * rec, median_ms=None,
                     tokens_per_s=1 / rec))
    cached = {(r["variant"], r["batch"]): r for r in rows if r["mode"] != "recompute (no cache)"}
    b1 = min(args.batch)
    print(f"emu3/{args.preset}: {args.grid}x{args.grid} images ({args.grid * (args.grid + 1)} tokens, sequence "
          f"{seq_len}), rank {args.rank}, k 3, {args.device} {args.dtype}, {torch.get_num_threads()} threads, "
          f"median of {args.reps} reps")
    print(f"{'variant':18s} {'batch':>5s} {'mode':21s} {'ms/token':>9s} {'median':>7s} {'tok/s':>7s} {'x lora':>7s} "
          f"{'x b' + str(b1) + ' tok/s':>11s}")
    for r in rows:
        lora = cached["lora", r["batch"]]["mean_ms"]
        r["ratio_to_lora"] = r["mean_ms"] / lora
        base = cached.get((r["variant"], b1))
        r["throughput_vs_batch1"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
        med = f"{r['median_ms']:.2f}" if r["median_ms"] is not None else "-"
        print(f"{r['variant']:18s} {r['batch']:>5d} {r['mode']:21s} {r['mean_ms']:>9.2f} {med:>7s} "
              f"{r['tokens_per_s']:>7.0f} {r['ratio_to_lora']:>7.2f} {r['throughput_vs_batch1']:>11.2f}")
    full = cached["moss-full", b1]["ratio_to_lora"]
    worst = max(r["ratio_to_lora"] for (v, b), r in cached.items() if "moss" in v and b == b1)
    bmax = max(args.batch)
    scaling = {v: cached[v, bmax]["throughput_vs_batch1"] for v in models}
    speedup = rec * 1000 / cached["moss-full", b1]["mean_ms"]
    print(f"batch {b1}: cached moss-full / lora {full:.2f}x (target <= 1.15), worst moss form {worst:.2f}x; "
          f"recompute / cached moss-full: {speedup:.1f}x (target >= 10)")
    print(f"batch {bmax} / batch {b1} tokens/s: " + ", ".join(f"{v} {x:.1f}x" for v, x in scaling.items())
          + " (target >= 5)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"generation_{args.device}.json"
    meta = dict(args=vars(args), torch=torch.__version__, machine=platform.machine(), threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name() if args.device == "cuda" else None, sequence_tokens=seq_len,
                peak_mib=torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None)
    path.write_text(json.dumps({"meta": meta, "rows": rows, "moss_full_over_lora_batch1": full,
                                "worst_cached_moss_over_lora_batch1": worst, "recompute_over_cached": speedup,
                                "throughput_scaling": scaling}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
