"""`moss compare`, `tracking replay`, `sample`, `cluster-secrets` and `mlflow-server`: around the runs."""

from __future__ import annotations

import argparse
import sys


def cmd_compare(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..tracking.compare import build_report
    from ..tracking.mlflow import tracking_uri
    from ..tracking.models import MODEL_NAME_BAD

    if args.paired:
        if args.register:
            raise ConfigError("--register takes the best run of a sweep: not with --paired")
        return _compare_paired(args)
    if args.register is not None and (bad := MODEL_NAME_BAD.search(args.register)):
        raise ConfigError(f"--register {args.register!r}: {bad.group(0)!r} cannot be in a registered model name "
                          "(it must stay addressable as models:/NAME/VERSION)")
    uri = tracking_uri(args.tracking_uri)
    try:
        report = build_report(uri, parent_run_id=args.parent_run, experiment=args.experiment, metric=args.metric,
                              mode=args.mode, out_dir=args.out)
    except LookupError as e:
        raise ConfigError(str(e)) from None
    c = report["comparison"]
    print(f"compare: {len(c.rows)} runs of {c.source}, by {c.metric} ({c.mode})")
    print(report["table_text"])
    print(f"report: {report['markdown']} and {report['html']}; plots: {', '.join(report['plots'])}")
    if c.parent_run_id:
        print(f"logged to MLflow run {c.parent_run_id} (artifacts: report/)")
    if args.register:
        _register(uri, c, args.register)
    return 0


def _register(uri: str, c, name: str) -> None:
    """The best finished run of comparison ``c`` -> a new version of registered model ``name``."""
    from ..config import ConfigError
    from ..tracking import models
    from ..tracking.mlflow import client

    best = next((r for r in c.rows if r.status == "finished" and r.value is not None), None)
    if best is None:
        raise ConfigError(f"--register: no finished run with {c.metric} in {c.source}")
    mlc = client(uri)
    run = mlc.get_run(best.run_id)
    tags = {models.REG_SWEEP: c.source, models.REG_METRIC: c.metric, models.REG_VALUE: repr(best.value),
            models.REG_CONFIG: run.data.params.get("config_hash", "unknown"), "moss.run_name": best.run_name}
    try:
        mv = models.register(mlc, run, name, tags)
    except LookupError as e:
        raise ConfigError(f"--register: {e}") from None
    print(f"registered {best.run_name} ({c.metric} {best.value:.4g}) as models:/{name}/{mv.version}")


def _compare_paired(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..tracking.paired import compare_paired, terminal_table, write_report

    if args.reps < 100:
        raise ConfigError(f"--reps {args.reps}: at least 100 resamples")
    try:
        result = compare_paired(*args.paired, uri=args.tracking_uri, reps=args.reps)
    except (LookupError, ValueError) as e:
        raise ConfigError(str(e)) from None
    print(f"compare --paired: A = {result['a']}, B = {result['b']} (* : the interval excludes 0)")
    print(terminal_table(result))
    for note in result["notes"]:
        print(f"  {note}")
    print(f"report: {write_report(result, args.out)}")
    return 0


def cmd_tracking_replay(args: argparse.Namespace) -> int:
    from ..tracking.outage import Unreachable
    from ..tracking.replay import replay

    try:
        done = replay(args.run_dir, args.tracking_uri)
    except Unreachable as e:
        print(f"moss tracking replay: {e}", file=sys.stderr)
        return 1
    for line in done.rejected:
        print(f"moss tracking replay: refused by the server, set aside: {line}", file=sys.stderr)
    print(f"tracking replay: sent {done.sent} write(s) from {args.run_dir}"
          + (f"; {len(done.rejected)} refused" if done.rejected else ""))
    return 1 if done.rejected else 0


def cmd_sample(args: argparse.Namespace) -> int:
    from ..data.sample import write_sample

    counts = write_sample(args.out, per_domain=args.per_domain, seed=args.seed, fmt=args.format)
    print(f"sample: {sum(counts.values())} records in {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_cluster_secrets(args: argparse.Namespace) -> int:
    from ..cluster.secrets import generate, write_env_file

    path = write_env_file(args.out, generate(args.user), force=args.force)
    print(f"cluster-secrets: wrote {path} (mode 0600): Ray token auth on, a Ray token, MLflow user {args.user!r} "
          "and password. cluster.yaml copies it to every node. Before `ray job submit` / `moss compare`, load it:")
    print(f"  set -a; . {path}; set +a")
    return 0


def cmd_mlflow_server(args: argparse.Namespace) -> int:
    from ..cluster.mlflow_server import serve

    serve(args.root, args.host, args.port, args.backend_store_uri, args.artifacts_destination, args.workers)
    return 0  # serve() replaces this process
