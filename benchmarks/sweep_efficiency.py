"""ASHA vs the full grid on the smoke space: training steps spent, and whether ASHA finds the grid's best.

    python benchmarks/sweep_efficiency.py [--out benchmarks/results/sweep_efficiency.json]

Runs search_spaces/smoke.yaml twice on a local Ray cluster (sample set -> shards once): with its ASHA
scheduler, and with FIFO (every trial to max_steps). Steps are counted from MLflow (each child run's
last train/loss step). Target: ASHA spends <= 40% of the grid's steps, and its best config is the
grid's best or within 1% of the grid's best metric.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from orchestrator.data.pipeline import preprocess
from orchestrator.data.sample import write_sample
from orchestrator.demo import SMOKE, demo_overrides
from orchestrator.runtime import init_ray
from orchestrator.sweeps.space import load_space
from orchestrator.sweeps.tuner import plan_sweep, run_sweep
from orchestrator.tracking.compare import collect


def variant(space_path: Path, work: Path, scheduler: dict) -> Path:
    tree = yaml.safe_load(space_path.read_text())
    tree["base"] = str((space_path.parent / tree["base"]).resolve())
    tree["scheduler"] = scheduler
    out = work / f"smoke-{scheduler['type']}.yaml"
    out.write_text(yaml.safe_dump(tree, sort_keys=False))
    return out


def run(space: Path, overrides: list[str], name: str, work: Path) -> dict:
    t0 = time.perf_counter()
    summary = run_sweep(plan_sweep(str(space), overrides, name=name), report_dir=str(work / "report" / name))
    c = collect(summary["tracking_uri"], parent_run_id=summary["parent_run_id"])
    trials = [{"config": json.dumps(r.sampled, sort_keys=True), "value": r.value, "step": r.step, "status": r.status,
               "steps_trained": max((s for s, _ in r.curve), default=0)} for r in c.rows]
    return {"name": name, "wall_s": time.perf_counter() - t0, "trials": trials,
            "steps": sum(t["steps_trained"] for t in trials),
            "early_stopped": sum(t["status"] == "early_stopped" for t in trials),
            "best": trials[0], "metric": c.metric}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/sweep_efficiency.json")
    ap.add_argument("--work", default="benchmarks/results/sweep_work")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    overrides = demo_overrides(work)
    write_sample(work / "sample", per_domain=60)
    init_ray()
    preprocess(load_space(SMOKE, overrides).base_config())
    steps_per_trial = load_space(SMOKE, overrides).base_config().train.max_steps
    stamp = time.strftime("%H%M%S")
    asha_space = variant(SMOKE, work, yaml.safe_load(SMOKE.read_text())["scheduler"])
    grid = run(variant(SMOKE, work, {"type": "fifo"}), overrides, f"grid-{stamp}", work)
    asha = run(asha_space, overrides, f"asha-{stamp}", work)

    grid_by_config = {t["config"]: t["value"] for t in grid["trials"]}
    best_grid = grid["best"]["value"]
    asha_pick_on_grid = grid_by_config[asha["best"]["config"]]
    result = {
        "space": str(SMOKE), "metric": grid["metric"], "steps_per_trial": steps_per_trial,
        "grid": grid, "asha": asha, "steps_fraction": asha["steps"] / grid["steps"],
        "asha_best_is_grid_best": asha["best"]["config"] == grid["best"]["config"],
        "asha_best_gap_pct": 100 * (asha_pick_on_grid - best_grid) / abs(best_grid),
    }
    print(f"| sweep | trials | early-stopped | training steps | % of grid steps | wall s | best config | best {grid['metric']} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in (grid, asha):
        print(f"| {r['name']} | {len(r['trials'])} | {r['early_stopped']} | {r['steps']} | "
              f"{100 * r['steps'] / grid['steps']:.0f}% | {r['wall_s']:.0f} | {r['best']['config']} | "
              f"{r['best']['value']:.4f} |")
    print(f"ASHA's best config scores {asha_pick_on_grid:.4f} in the grid run (grid best {best_grid:.4f}): "
          f"{result['asha_best_gap_pct']:+.2f}%; same config: {result['asha_best_is_grid_best']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
