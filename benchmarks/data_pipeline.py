"""Records/s of the Ray Data preprocessing pipeline vs a plain single-process loop over the same stages.

For each size (default 5k and 50k records of the generated sample set, 64 px images), runs in fresh
subprocesses: the plain loop (``preprocess(engine="local")``) and the Ray pipeline on a local Ray
cluster with 2 CPUs (``ray.init`` done before the clock starts, as on a running cluster). Reports
records/s, the speed-up, and peak RSS of the driver and of the Ray worker processes (sampled every
0.2 s with psutil). Writes benchmarks/results/data_pipeline.json.

    python benchmarks/data_pipeline.py                    # 5k and 50k records, chameleon tiny
    python benchmarks/data_pipeline.py --records 5000 --runs local:1 local:2 ray:1   # + torch 2-thread loop
    python benchmarks/data_pipeline.py --records 2000 --backbone emu3

Each run is engine:torch_threads; the first "local" run of a size is the baseline of its speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class RssSampler(threading.Thread):
    """Peak RSS of Ray worker processes (sum over them, and the largest one), sampled in the background."""

    def __init__(self, period: float = 0.2):
        super().__init__(daemon=True)
        self.period, self.stop, self.peak_sum, self.peak_one = period, threading.Event(), 0, 0

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            rss = []
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if p.info["memory_info"] and ("ray::" in cmd or "default_worker.py" in cmd):
                    rss.append(p.info["memory_info"].rss)
            if rss:
                self.peak_sum, self.peak_one = max(self.peak_sum, sum(rss)), max(self.peak_one, max(rss))
            self.stop.wait(self.period)


def run_one(engine: str, source: str, out: str, backbone: str, threads: int) -> dict:
    """One measured run in this process; prints one JSON line."""
    from orchestrator.config import load_config
    from orchestrator.data.pipeline import preprocess

    cfg = load_config(None, [f"data.source={source}", f"data.output={out}", f"backbone.name={backbone}",
                             f"data.torch_threads={threads}"])
    sampler = None
    if engine == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        sampler = RssSampler()
        sampler.start()
    start = time.perf_counter()
    manifest = preprocess(cfg, engine=engine)
    seconds = time.perf_counter() - start
    result = {
        "engine": engine, "torch_threads": threads, "records": manifest["inputs"]["records"], "seconds": round(seconds, 2),
        "records_per_s": round(manifest["inputs"]["records"] / seconds, 1),
        "kept": manifest["outputs"]["train"] + manifest["outputs"]["val"],
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "timings": manifest.get("timings", {}),
    }
    if sampler is not None:
        sampler.stop.set()
        sampler.join()
        result.update(workers_peak_rss_mb=round(sampler.peak_sum / 2**20, 1), worker_max_rss_mb=round(sampler.peak_one / 2**20, 1))
    print("RESULT " + json.dumps(result), flush=True)
    return result


def measure(engine: str, source: Path, out: Path, backbone: str, threads: int) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--run", engine, "--source", str(source), "--out", str(out), "--backbone", backbone,
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{engine} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--backbone", default="chameleon")
    ap.add_argument("--workdir", default="/tmp/moss-bench-data")
    ap.add_argument("--runs", nargs="+", default=["local:1", "ray:1"],
                    help="engine:torch_threads per run, e.g. local:1 local:2 ray:1 (the first local is the baseline)")
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--run", choices=["ray", "local"], help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        run_one(args.run, args.source, args.out, args.backbone, args.threads)
        return
    sys.path.insert(0, str(ROOT))
    from orchestrator.data.sample import DOMAINS, write_sample

    rows = []
    for n in args.records:
        source = Path(args.workdir) / f"sample-{n}"
        if not (source / "howto.jsonl").exists():
            t = time.perf_counter()
            write_sample(source, per_domain=n // len(DOMAINS))
            print(f"generated {n} records in {time.perf_counter() - t:.0f} s -> {source}", flush=True)
        for run in args.runs:
            engine, threads = run.split(":")
            r = measure(engine, source, Path(args.workdir) / f"out-{n}-{engine}", args.backbone, int(threads))
            print(json.dumps(r), flush=True)
            rows.append(r)
    print(f"\n{'records':>8} {'engine':>6} {'threads':>7} {'s':>8} {'rec/s':>8} {'speed-up':>9} {'driver MB':>10} {'workers MB':>11} {'max worker MB':>14}")
    for r in rows:
        base = next(b for b in rows if b["records"] == r["records"] and b["engine"] == "local")
        print(f"{r['records']:>8} {r['engine']:>6} {r['torch_threads']:>7} {r['seconds']:>8} {r['records_per_s']:>8} "
              f"{r['records_per_s'] / base['records_per_s']:>8.2f}x {r['driver_peak_rss_mb']:>10} "
              f"{r.get('workers_peak_rss_mb', '-'):>11} {r.get('worker_max_rss_mb', '-'):>14}")
    out = ROOT / "benchmarks" / "results" / "data_pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"backbone": args.backbone, "cpus": os.cpu_count(), "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
