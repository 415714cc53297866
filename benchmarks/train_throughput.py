"""Training tokens/s on CPU: 1 vs 2 Ray Train workers, and lora vs moss, measured in one invocation.

Writes the sample set, preprocesses it for the chosen backbone preset with Ray Data, then runs
`moss train` (the real driver: TorchTrainer, DDP over gloo, MLflow) once per variant x worker count on
one local Ray cluster, interleaved so machine noise hits every configuration alike. Each worker
uses one torch thread (1 worker: 1 CPU; 2 workers: 0.5 logical CPU each, so Ray Data keeps a CPU).
tokens/s counts every non-pad token of the global batch (all workers) per optimizer step; the
first --skip steps (start-up, warm caches) are left out of the medians. Reads the per-step metrics
back from MLflow; writes benchmarks/results/train_throughput.json.

    python benchmarks/train_throughput.py                          # chameleon "small" preset, 12 steps
    python benchmarks/train_throughput.py --checkpoint tiny --steps 20 --runs moss-full:1 moss-full:2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from orchestrator.moss.variants import all_forms

ROOT = Path(__file__).resolve().parents[1]
#: --set overrides per form of every registered variant (lora, moe_lora, moss-full, moss-lowrank), kernel 3
VARIANTS = {slug: [f"adapter.{k}={v}" for k, v in kw.items()] + ["adapter.kernel_size=3"]
            for slug, kw in all_forms().items()}


def median_after(mlc, run_id: str, key: str, skip: int) -> float:
    values = [m.value for m in sorted(mlc.get_metric_history(run_id, key), key=lambda m: m.step) if m.step > skip]
    return statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="chameleon")
    ap.add_argument("--checkpoint", default="small", help="random-init preset (tiny / small)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=2)
    ap.add_argument("--per-domain", type=int, default=8)
    ap.add_argument("--runs", nargs="+", default=["lora:1", "moss-full:1", "lora:2", "moss-full:2"], help="variant:workers")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_throughput.json"))
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from orchestrator.config import load_config
    from orchestrator.data.pipeline import preprocess
    from orchestrator.data.sample import write_sample
    from orchestrator.runtime import init_ray
    from orchestrator.tracking.mlflow import client
    from orchestrator.training.driver import plan_run, run_training

    work = Path(tempfile.mkdtemp(prefix="moss-train-bench-"))
    base = [f"backbone.name={args.backbone}", f"backbone.checkpoint={args.checkpoint}",
            f"data.source={work / 'sample'}", f"data.output={work / 'shards'}", "data.val_fraction=0.1",
            f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}", f"storage.path={work / 'ray_results'}",
            f"adapter.rank={args.rank}", f"train.micro_batch={args.micro_batch}", f"train.max_steps={args.steps}",
            "train.eval_every=100000", "train.ckpt_every=100000", "train.lr=1e-3"]
    write_sample(work / "sample", per_domain=args.per_domain)
    init_ray()
    manifest = preprocess(load_config(None, base))
    print(f"shards: {manifest['outputs']['train']} train records, mean {manifest['tokens']['train']['mean_tokens']} "
          f"tokens each ({args.backbone} {args.checkpoint})", flush=True)
    rows = []
    for run in args.runs:
        variant, workers = run.split(":")
        workers = int(workers)
        cfg = load_config(None, base + VARIANTS[variant] + [
            f"train.run_name=bench-{variant}-{workers}w", f"scaling.num_workers={workers}",
            f"scaling.cpus_per_worker={1.0 if workers == 1 else 0.5}"])
        t0 = time.perf_counter()
        summary = run_training(cfg, plan_run(cfg))
        mlc, rid = client(summary["plan"]["tracking_uri"]), summary["run_id"]
        rows.append({
            "variant": variant, "workers": workers, "steps": args.steps,
            "tokens_per_s": round(median_after(mlc, rid, "train/tokens_per_s", args.skip), 1),
            "step_time_s": round(median_after(mlc, rid, "train/step_time_s", args.skip), 3),
            "peak_rss_mb_rank0": round(median_after(mlc, rid, "train/peak_mem_mb", args.skip)),
            "final_train_loss": round(summary["metrics"]["train/loss"], 4),
            "trainable_params": int(mlc.get_run(rid).data.params.get("trainable_parameters", 0) or 0),
            "wall_s": round(time.perf_counter() - t0, 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    by = {(r["variant"], r["workers"]): r for r in rows}
    print(f"\n{'variant':<14}{'workers':>8}{'tokens/s':>11}{'step s':>9}{'vs 1 worker':>13}{'vs lora':>9}{'rss MB':>8}")
    for r in rows:
        one = by.get((r["variant"], 1))
        lora = by.get(("lora", r["workers"]))
        print(f"{r['variant']:<14}{r['workers']:>8}{r['tokens_per_s']:>11.1f}{r['step_time_s']:>9.3f}"
              f"{(r['tokens_per_s'] / one['tokens_per_s'] if one else float('nan')):>12.2f}x"
              f"{(r['tokens_per_s'] / lora['tokens_per_s'] if lora else float('nan')):>8.2f}x{r['peak_rss_mb_rank0']:>8}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"backbone": args.backbone, "checkpoint": args.checkpoint, "rank": args.rank,
                               "micro_batch": args.micro_batch, "cpus": os.cpu_count(), "runs": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
