"""Does the conv's 2-D inductive bias work end to end? Adapters on image-code rules with known floors.

Each rule (orchestrator/data/locality.py) fills 8 x 8 code grids of the tiny base from the cell above-left
(and the left one), with 10% noise, so a perfect model pays a known loss (the floor). Every adapter trains
on fresh grids behind a short text prompt, in-process (real transformers + PEFT, no Ray: this measures the
adapter, not the cluster), and is scored on 64 held-out grids: image loss (nats per code) against the
floor. Configurations: LoRA, MoE-LoRA, MoSS k = 1, 2, 3 at equal rank, and MoSS k = 2, 3 with their image
rank solved to LoRA's parameter count (adapter.match_params; their text branch at the largest rank up to half
LoRA's for which an image rank matches within 2%: at these widths one image-rank step is ~15% of the count). Each over --seeds seeds: mean +- 95% t CI.

The verdicts per rule, at equal rank and at equal parameters: every MoSS k >= 2 configuration of the group
beats every linear adapter (LoRA, MoE-LoRA, MoSS k = 1) by more than the intervals (its interval lies wholly
below theirs; None: undetermined, e.g. one seed). It can come out against MoSS: the table says so.

    python benchmarks/locality.py                                # 3 rules x 7 configs x 3 seeds, 2 processes
    python benchmarks/locality.py --base real --seeds 2          # the base drawn like a real checkpoint
Writes benchmarks/results/locality.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: name -> MossConfig fields (rank and alpha come from --rank)
CONFIGS = {
    "lora": dict(variant="lora"),
    "moe_lora": dict(variant="moe_lora"),
    "moss k1": dict(variant="moss", kernel_size=1),
    "moss k2": dict(variant="moss", kernel_size=2),
    "moss k3": dict(variant="moss", kernel_size=3),
    "moss k2 =params": dict(variant="moss", kernel_size=2, match_params={"variant": "lora"}),
    "moss k3 =params": dict(variant="moss", kernel_size=3, match_params={"variant": "lora"}),
}
LINEAR = ("lora", "moe_lora", "moss k1")


def equal_parameters(model, spec, fields: dict, rank: int):
    """MoSS matched to LoRA at ``rank``: the largest text rank <= rank / 2 whose solved image rank lands within 2%."""
    from orchestrator.moss import MossConfig
    from orchestrator.moss.config import match_parameters
    from orchestrator.moss.peft import target_dims

    for text_rank in range(max(1, rank // 2), 0, -1):
        cfg = MossConfig(rank=text_rank, alpha_per_rank=2.0, **{**fields, "match_params": {"variant": "lora", "rank": rank}})
        try:
            return match_parameters(cfg, target_dims(model, cfg, spec))
        except ValueError:
            continue
    raise ValueError(f"no text rank <= {rank // 2} lets {fields} match LoRA rank {rank} within 2%")


def train_one(job: dict) -> dict:
    import torch

    from orchestrator.backbones import get_backbone
    from orchestrator.backbones.heads import config_std
    from orchestrator.data.locality import RuleGrids
    from orchestrator.moss import MossConfig
    from orchestrator.moss.peft import apply_moss, trainable_parameters
    from orchestrator.training.objective import adapter_loss

    torch.set_num_threads(1)
    spec = get_backbone(job["backbone"])
    grids = RuleGrids(job["rule"], spec.grid[0])
    prompt = spec.text_ids(f"Draw the {job['rule']} pattern:")
    # spread the alphabet over the codebook; the ids are the same for every adapter
    codes = torch.tensor(random.Random(7).sample(range(len(spec.image_token_ids)), grids.alphabet))

    def batch(rng: random.Random, n: int) -> dict:
        return spec.collate([spec.assemble([prompt, spec.image_tokens(codes[grids.sample(rng)])], [False, True])
                             for _ in range(n)])

    model = spec.build(seed=0)
    if job["base"] == "real":  # the logit heads drawn at the config's std, as a real checkpoint's init would
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for path in spec.logit_heads + spec.head_inputs:
                w = model.get_submodule(path).weight
                w.copy_(torch.randn(w.shape, generator=g) * config_std(model))
    fields = dict(CONFIGS[job["config"]])
    if "match_params" in fields:
        cfg = equal_parameters(model, spec, fields, job["rank"])
    else:
        cfg = MossConfig(rank=job["rank"], alpha_per_rank=2.0, **fields)
    torch.manual_seed(job["seed"])
    model = apply_moss(model, cfg, spec)
    params = trainable_parameters(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=job["lr"], weight_decay=0.0)
    rng, val = random.Random(job["seed"]), batch(random.Random(10**6), 64)
    t0 = time.perf_counter()
    model.train()
    for _ in range(job["steps"]):
        out = adapter_loss(model, spec, batch(rng, job["batch"]))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        held = adapter_loss(model, spec, val)
    return {**job, "params": params, "text_rank": cfg.rank, "image_rank": cfg.image_r, "image_loss": float(held.image_loss), "floor": grids.floor(),
            "seconds": time.perf_counter() - t0}


def summarize(results: list[dict], rules: list[str]) -> dict:
    from orchestrator.tracking.stats import mean_ci

    out = {}
    for rule in rules:
        rows = {}
        for name in CONFIGS:
            runs = [r for r in results if r["rule"] == rule and r["config"] == name]
            if runs:
                ci = mean_ci([r["image_loss"] for r in runs])
                rows[name] = {"n": ci.n, "mean": ci.mean, "half_width": ci.half_width, "low": ci.low, "high": ci.high,
                              "params": runs[0]["params"], "floor": runs[0]["floor"]}
        linear = [rows[n] for n in LINEAR if n in rows]
        wins = {n: beats_all(rows[n], linear) for n in rows if n.startswith(("moss k2", "moss k3"))}
        out[rule] = {"rows": rows, "moss_k2plus_beats_every_linear": wins,
                     "verdict_equal_rank": verdict([w for n, w in wins.items() if "=params" not in n]),
                     "verdict_equal_params": verdict([w for n, w in wins.items() if "=params" in n])}
    return out


def beats_all(row: dict, linear: list[dict]) -> bool | None:
    """row's interval wholly below every linear adapter's; None: undetermined (no linear row, or n < 2)."""
    if not linear or row["high"] is None or any(r["low"] is None for r in linear):
        return None
    return all(row["high"] < r["low"] for r in linear)


def verdict(wins: list) -> bool | None:
    """True: every conv configuration of the group wins; None: none ran or some are undetermined."""
    return None if not wins or any(w is None for w in wins) else all(wins)


def print_table(summary: dict) -> None:
    for rule, s in summary.items():
        floor = next(iter(s["rows"].values()))["floor"]
        print(f"\nrule {rule}: floor {floor:.3f} nats per code")
        print(f"  {'adapter':18s} {'params':>8s}  {'image loss (mean +- 95% CI)':>30s}  {'above floor':>11s}")
        for name, r in s["rows"].items():
            hw = f"{r['half_width']:.3f}" if r["half_width"] is not None else "  n/a"
            print(f"  {name:18s} {r['params']:8,d}  {r['mean']:22.3f} +- {hw:5s} (n={r['n']})  {r['mean'] - floor:11.3f}")
        print(f"  MoSS k>=2 below every linear adapter's interval: equal rank {s['verdict_equal_rank']}, "
              f"equal parameters {s['verdict_equal_params']} {s['moss_k2plus_beats_every_linear']}")


def main() -> None:
    from orchestrator.data.locality import RULES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="chameleon", choices=["chameleon"],
                    help="a fixed-grid VQ family whose codes are vocabulary ids (the grids are written as such)")
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--base", choices=["learnable", "real"], default="learnable",
                    help="learnable: the preset as built (heads.py); real: logit heads at the config's std")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "locality.json"))
    args = ap.parse_args()
    jobs = [dict(backbone=args.backbone, rule=rule, config=name, seed=seed, rank=args.rank, steps=args.steps,
                 batch=args.batch, lr=args.lr, base=args.base)
            for seed in range(args.seeds) for rule in args.rules for name in args.configs]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.processes) as pool:
        results = []
        for r in pool.imap_unordered(train_one, jobs):
            results.append(r)
            print(f"[{len(results)}/{len(jobs)}] {r['rule']:15s} {r['config']:16s} seed {r['seed']}: "
                  f"image loss {r['image_loss']:.3f} (floor {r['floor']:.3f}) in {r['seconds']:.0f} s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "runs": results}, indent=1))  # kept if summarizing fails
    summary = summarize([r for r in results if math.isfinite(r["image_loss"])], args.rules)
    print_table(summary)
    diverged = [f"{r['rule']}/{r['config']}/seed {r['seed']}" for r in results if not math.isfinite(r["image_loss"])]
    if diverged:
        print(f"diverged (left out of the means): {', '.join(diverged)}")
    print(f"\n{len(jobs)} runs in {time.perf_counter() - t0:.0f} s ({args.backbone} tiny, base {args.base}, rank "
          f"{args.rank}, {args.steps} steps x batch {args.batch}, lr {args.lr})")
    out.write_text(json.dumps({"args": vars(args), "runs": results, "summary": summary}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
