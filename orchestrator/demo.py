"""`moss demo`: the whole product on a laptop, offline: the bundled LeafInstruct-format sample set ->
Ray Data shards -> the demo sweep (Ray Tune over Ray Train, MLflow parent + child runs) -> report ->
`moss evaluate` of the best trial (held-out loss / perplexity, editing metrics, MLflow run linked to it).

Everything it writes goes under one folder (default demo_out/): sample/, shards/, ray_results/,
mlflow.db + mlruns/, report/, eval/.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from .console import quiet_now, say
from .data.manifest import format_summary as format_manifest
from .data.pipeline import output_dir, preprocess
from .data.sample import write_sample
from .runtime import init_ray
from .sweeps.space import load_space
from .sweeps.tuner import describe_plan, format_summary, plan_sweep, run_sweep

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
DEMO = SPACES / "demo.yaml"  # what the demo runs
SMOKE = SPACES / "smoke.yaml"  # its exploration twin (benchmarks/sweep_efficiency.py)


def demo_overrides(root: Path) -> list[str]:
    return [f"data.source={root / 'sample'}", f"data.output={root / 'shards'}",
            f"storage.path={root / 'ray_results'}", f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}"]


def run_demo(out_dir: str = "demo_out", space: str | Path = DEMO, per_domain: int = 60,
             extra: list[str] | tuple[str, ...] = ()) -> dict:
    t0 = time.perf_counter()
    root = Path(out_dir).resolve()
    overrides = [*demo_overrides(root), *extra]
    base = load_space(space, overrides).base_config()  # a bad space stops here, before any work
    counts = write_sample(root / "sample", per_domain=per_domain)
    say(f"demo: 1/4 sample set: {sum(counts.values())} LeafInstruct-format records in {root / 'sample'}")
    init_ray()
    manifest = preprocess(base)
    summary = format_manifest(manifest, output_dir(base))
    if quiet_now():  # the stage and domain tables go to the log; the console keeps the totals
        print(summary)
        summary = "\n".join(line for line in summary.splitlines()
                            if line.startswith(("preprocess:", "train:", "val:", "shards:")))
    say("demo: 2/4 Ray Data preprocessing\n" + summary)
    plan = plan_sweep(str(space), overrides)
    say(f"demo: 3/4 {describe_plan(plan)}")
    summary = run_sweep(plan, report_dir=str(root / "report"))
    say(format_summary(summary))
    best = summary["report"]["best"]
    if best is not None:
        say(f"best:        {best.run_name} ({best.label}, rank {best.rank}"
              + (f", kernel {best.kernel_size}" if best.kernel_size else "")
              + f"): {summary['report']['comparison'].metric} {best.value:.4f}")
        evaluate_best(best, root, overrides, summary["report"]["comparison"].rows)
    say(f"demo: done in {time.perf_counter() - t0:.0f} s")
    return summary


def evaluate_best(best, root: Path, overrides: list[str], rows: list | None = None) -> dict:
    """`moss evaluate --run <best trial>`: its logged config and final adapter -> results.json + MLflow. With
    ``rows`` (the sweep's runs) also its counterpart at the same seed (the LoRA run if the best is not LoRA,
    else the best other method's), and `moss compare --paired` of the two on the same records."""
    results = evaluate_run(best, root, overrides, "4/4")
    partner = counterpart(best, rows or [])
    if partner is not None:
        from .tracking.paired import ALL, compare_paired, terminal_table, write_report

        evaluate_run(partner, root, overrides, "4/4", quiet=True)
        paired = compare_paired(str(root / "eval" / best.run_name), str(root / "eval" / partner.run_name), reps=2000)
        shown = {**paired, "rows": [r for r in paired["rows"] if r["scope"] == ALL]}
        say(f"paired:      A = {best.run_name} ({best.label}), B = {partner.run_name} ({partner.label}), "
              "same seed, same records (* : the interval excludes 0)")
        say(terminal_table(shown))
        say(f"             per domain: {write_report(paired, root / 'report' / 'paired')}")
    return results


def counterpart(best, rows: list):
    """The run to pair with ``best``: same backbone, seed and budget, LoRA if ``best`` is not, else the best
    (rows are sorted) run of another method."""
    from .moss.variants import REFERENCE

    for r in rows:
        if (r is not best and r.value is not None and (r.backbone, r.seed, r.budget) == (best.backbone, best.seed, best.budget)
                and (r.variant == REFERENCE) != (best.variant == REFERENCE)):
            return r
    return None


def evaluate_run(row, root: Path, overrides: list[str], stage: str, quiet: bool = False) -> dict:
    """`moss evaluate --run <trial>` into <root>/eval/<trial> (+ an MLflow run linked to the trial)."""
    from .evaluation.evaluate import evaluate, log_to_mlflow
    from .evaluation.inference import resolve

    uri = next(o for o in overrides if o.startswith("tracking.tracking_uri="))
    out = root / "eval" / row.run_name
    shutil.rmtree(out, ignore_errors=True)  # a rerun of the demo: no stale files among this run's artifacts
    with tempfile.TemporaryDirectory() as tmp:
        cfg, source = resolve(None, [uri, "editing.max_records=4"], None, row.run_id, Path(tmp))
        say(f"demo: {stage} evaluating {row.run_name}: held-out loss on the val shards, editing metrics")
        results = evaluate(cfg, source, out)
    run_id = log_to_mlflow(cfg, source, results, out)
    if quiet:
        return results
    for key, value in sorted(results["metrics"].items()):
        if not key.startswith("heldout/by_domain/"):  # per domain: in results.json and MLflow
            say(f"  {key:28s} {value:.4f}")
    say(f"evaluation:  {out / 'results.json'}; MLflow run {run_id} (tag moss.source_run_id={row.run_id})")
    say(f"generate:    moss generate --run {row.run_id} --set {uri} --prompt 'Draw a red square:' --image-first")
    return results
