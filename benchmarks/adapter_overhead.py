"""Training-step time of each adapter at equal rank on the "small" random Chameleon config.

Forward + backward with the base frozen (the input embeddings require grad for `base`, so its
backward computes the same dX chain an adapter run needs). Batch: sequences of text and two
16 x 16-code images. Prints medians, ratios to `lora`, and the linear-layer FLOP ratio the adapters
should cost; writes JSON.

    python benchmarks/adapter_overhead.py [--device cuda] [--dtype bfloat16] [--out benchmarks/results]
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
from orchestrator.training.objective import adapter_loss
from orchestrator.wrappers import unwrap
from orchestrator.moss import MossConfig, apply_moss, trainable_parameters
from orchestrator.moss.variants import all_forms, get_variant

VARIANTS = {"base": None, **all_forms()}  # every registered variant's forms (lora, moe_lora, moss-full, ...)
TARGETS = {"moe_lora": 1.05, "moss-lowrank": 1.10, "moss-full": 1.30}


def synthetic_batch(spec, batch_size: int, text_len: int, seed: int = 0) -> dict:
    """text + image + text + image + text per sequence, ids drawn at random from the right vocabularies."""
    g = torch.Generator().manual_seed(seed)
    codes = spec.image_token_ids
    h, w = spec.grid
    boi, eoi = spec.token_id(spec.boi), spec.token_id(spec.eoi)

    def text(n):
        return torch.randint(16, 272, (n,), generator=g).tolist()

    def image():
        return [boi, *codes[torch.randint(len(codes), (h * w,), generator=g)].tolist(), eoi]

    seqs = []
    for _ in range(batch_size):
        ids = text(text_len) + image() + text(text_len) + image() + text(text_len // 2)
        t = torch.tensor(ids)
        seqs.append({"input_ids": t, "labels": t.clone(), "image_layout": spec.image_layout(t[None]).segments[0]})
    return spec.collate(seqs)


def linear_macs_per_token(model, spec, cfg: MossConfig | None, image_fraction: float) -> tuple[float, float]:
    """(base MACs, adapter MACs) per token, summed over the targeted linears."""
    import re

    base = adapter = 0.0
    for name, mod in unwrap(model).named_modules():
        if not re.fullmatch(spec.target_modules, name):
            continue
        d_in, d_out = mod.in_features, mod.out_features
        base += d_in * d_out
        if cfg is None:
            continue
        variant = get_variant(cfg.variant)
        text, img = variant.text_params(cfg.rank, d_in, d_out), variant.image_macs_per_token(cfg, d_in, d_out)
        adapter += (1 - image_fraction) * text + image_fraction * img
    return base, adapter


def build_variant(spec, kwargs, rank, device, dtype):
    """(model, cfg, trainable): the frozen base (input embeddings require grad) or an adapter."""
    model = spec.build(seed=0, dtype=dtype).to(device)
    if kwargs is None:
        for p in model.parameters():
            p.requires_grad_(False)
        model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))
        return model.train(), None, 0
    cfg = MossConfig(rank=rank, alpha=2 * rank, kernel_size=3, **kwargs)
    model = apply_moss(model, cfg, spec)
    return model.train(), cfg, trainable_parameters(model)


def time_step(spec, model, batch, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    adapter_loss(model, spec, batch).loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--text-len", type=int, default=48)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)

    spec = get_backbone("chameleon", checkpoint=args.preset)
    batch = synthetic_batch(spec, args.batch, args.text_len)
    n_tokens = int(batch["attention_mask"].sum())
    n_image = sum(s.n_cells for segs in batch["image_layout"].segments for s in segs)
    batch = {k: (v.to(args.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    built = {label: build_variant(spec, kw, args.rank, args.device, dtype) for label, kw in VARIANTS.items()}
    times = {label: [] for label in built}
    for rep in range(args.warmup + args.reps):  # round-robin, so drift hits every variant alike
        for label, (model, _, _) in built.items():
            t = time_step(spec, model, batch, args.device)
            if rep >= args.warmup:
                times[label].append(t)
    rows = []
    for label, (model, cfg, n_train) in built.items():
        median_s = statistics.median(times[label])
        base_macs, ad_macs = linear_macs_per_token(model, spec, cfg, n_image / n_tokens)
        # frozen base: forward + dX backward = 2 passes; adapter: forward + dX + dW = 3 passes
        rows.append(dict(variant=label, trainable=n_train, median_ms=1000 * median_s, tokens_per_s=n_tokens / median_s,
                         linear_flops=2 * base_macs + 3 * ad_macs))
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    lora = next(r for r in rows if r["variant"] == "lora")
    print(f"chameleon/{args.preset} rank {args.rank}, batch {args.batch} x {batch['input_ids'].shape[1]} tokens "
          f"({n_image} image cells of {n_tokens}), {args.device} {args.dtype}, {torch.get_num_threads()} threads")
    print(f"{'variant':14s} {'trainable':>10s} {'median ms':>10s} {'x lora':>7s} {'flop x lora':>11s} {'target':>7s}")
    for r in rows:
        r["ratio_to_lora"] = r["median_ms"] / lora["median_ms"]
        r["flop_ratio_to_lora"] = r["linear_flops"] / lora["linear_flops"]
        r["target"] = TARGETS.get(r["variant"])
        tgt = f"<={r['target']:.2f}" if r["target"] else ""
        print(f"{r['variant']:14s} {r['trainable']:>10d} {r['median_ms']:>10.1f} {r['ratio_to_lora']:>7.2f} "
              f"{r['flop_ratio_to_lora']:>11.2f} {tgt:>7s}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"adapter_overhead_{args.device}.json"
    meta = dict(args=vars(args), torch=torch.__version__, machine=platform.machine(), processor=platform.processor(),
                gpu=torch.cuda.get_device_name() if args.device == "cuda" else None, tokens=n_tokens, image_cells=n_image,
                peak_mib_all_variants=peak)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
