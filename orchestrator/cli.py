"""The `moss` command: its argument parser, one subcommand per function of ``orchestrator/commands/``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .commands.inference import cmd_evaluate, cmd_generate
from .commands.runs import cmd_demo, cmd_plan, cmd_preprocess, cmd_sweep, cmd_train, cmd_validate
from .commands.tools import cmd_cluster_secrets, cmd_compare, cmd_mlflow_server, cmd_sample, cmd_tracking_replay


def _adapter_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--adapter", help="adapter folder (what training saves), or an MLflow artifact URI "
                                         "(runs:/<id>/adapter); neither: the base model")
    which.add_argument("--run", help="MLflow run id of a training run: its final adapter and (without CONFIG) "
                                     "its logged config")
    which.add_argument("--model", help="an adapter logged as an MLflow model: models:/NAME/VERSION, "
                                       "models:/NAME@ALIAS (registered) or models:/<model id>; without CONFIG, "
                                       "the config it was trained with")
    p.add_argument("--out", help="output folder")


def _config_command(sub, name: str, func, help: str) -> argparse.ArgumentParser:
    """A subcommand taking an optional run config YAML and repeatable --set overrides."""
    p = sub.add_parser(name, help=help)
    p.add_argument("config", nargs="?", help="run config YAML (default: every default of orchestrator/config.py)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key, e.g. --set data.max_seq_len=1024 (repeatable)")
    p.set_defaults(func=func)
    return p


def _verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="show Ray's, Tune's and the libraries' output here "
                                                          "(default: in a log file, its path printed first)")
    p.set_defaults(quiet_log=True)


def quiet_log(args: argparse.Namespace):
    """Where a long command's library output goes (console.quiet): the demo's folder, else a temp folder;
    None: not quiet."""
    from pathlib import Path

    from .console import default_log

    if not getattr(args, "quiet_log", False) or os.environ.get("RAY_ADDRESS"):
        return None  # inside a Ray job (RAY_ADDRESS): the job's own logs keep everything
    return Path(args.out) / "logs" / "moss-demo.log" if args.command == "demo" else default_log(args.command)


def _run_parsers(sub) -> None:
    """demo, plan, validate, preprocess, train, sweep."""
    demo = sub.add_parser("demo", help="sample set -> Ray Data shards -> the demo sweep (Tune + Train + MLflow, 3 seeds) -> report")
    demo.add_argument("--out", default="demo_out", help="folder for everything it writes (sample, shards, runs, report)")
    demo.add_argument("--space", help="search space (default: search_spaces/demo.yaml)")
    demo.add_argument("--per-domain", type=int, default=60, help="sample records per domain")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a dotted key of the space's base config (repeatable)")
    _verbose(demo)
    demo.set_defaults(func=cmd_demo)
    plan = sub.add_parser("plan", help="per trial: node type, GPU memory estimate vs the GPU, tokens per image vs "
                                       "the sequence budget, checkpoint format; exit 2 when any cannot run. No Ray")
    plan.add_argument("target", nargs="?", help="search space or run config YAML (default: every default)")
    plan.add_argument("--cluster", help="cluster launcher YAML whose node types give the GPUs (default: "
                                        "plan.cluster, cluster.yaml in the working directory)")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a dotted key of the config (of a space's base config) (repeatable)")
    plan.add_argument("--json", action="store_true", help="the same rows as JSON")
    plan.add_argument("--verbose", action="store_true", help="the estimate's parts for every trial")
    plan.set_defaults(func=cmd_plan)
    _config_command(sub, "validate", cmd_validate,
                    "check a config (its data source, its plan, and what `moss train` would do) without starting Ray")
    pre = _config_command(sub, "preprocess", cmd_preprocess, "LeafInstruct records -> tokenized shards with Ray Data")
    pre.add_argument("--local", action="store_true", help="run the same stages in one process, without Ray")
    _verbose(pre)
    _verbose(_config_command(sub, "train", cmd_train,
                             "fine-tune an adapter on the shards with Ray Train, tracked in MLflow"))
    sweep = sub.add_parser("sweep", help="a Ray Tune sweep over a search space; MLflow parent + child runs; report")
    sweep.add_argument("space", help="search space YAML (search_spaces/*.yaml)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a dotted key of the space's base config (repeatable)")
    sweep.add_argument("--name", help="sweep name (default: <space>-<time>-<hex>); names its Tune state and parent run")
    sweep.add_argument("--resume", action="store_true",
                       help="continue an interrupted sweep (--name, else the latest of this space)")
    sweep.add_argument("--resume-or-start", action="store_true",
                       help="with --name: continue that sweep if it exists, else start it (for a job's retries)")
    sweep.add_argument("--report-dir", help="where the report goes (default: report/<sweep name>)")
    _verbose(sweep)
    sweep.set_defaults(func=cmd_sweep)


def _tracking_parsers(sub) -> None:
    """compare, tracking replay."""
    compare = sub.add_parser("compare", help="compare runs in MLflow: tables, plots, markdown report")
    which = compare.add_mutually_exclusive_group()
    which.add_argument("--parent-run", help="a sweep's parent run id")
    which.add_argument("--experiment", help="the latest sweep of this experiment, else all its training runs")
    which.add_argument("--paired", nargs=2, metavar=("A", "B"),
                       help="two `moss evaluate` outputs (folder, results.json or MLflow run id): A - B per metric over "
                            "the records both scored, with paired bootstrap intervals")
    compare.add_argument("--metric", help="default: the sweep's metric, else val/loss")
    compare.add_argument("--mode", choices=["min", "max"], help="default: the sweep's mode, else min")
    compare.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    compare.add_argument("--register", metavar="NAME",
                         help="register the best finished run's adapter model as a new version of the MLflow "
                              "registered model NAME (tags: sweep, metric, value, config hash)")
    compare.add_argument("--out", default="report/compare", help="folder for report.md, results.json and plots "
                                                                  "(--paired: paired.md, paired.json)")
    compare.add_argument("--reps", type=int, default=10_000, help="--paired: bootstrap resamples (default 10000)")
    compare.set_defaults(func=cmd_compare)
    tracking = sub.add_parser("tracking", help="the local journal of MLflow writes a run kept while its server was away")
    tracking_sub = tracking.add_subparsers(dest="tracking_command", required=True)
    replay = tracking_sub.add_parser("replay", help="send RUN_DIR/journal to MLflow in order, deleting what was sent; "
                                                    "exit 1 while the server is unreachable")
    replay.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder, <storage.path>/<run name> (a sweep's: "
                                                           "<storage.path>/<sweep name>)")
    replay.add_argument("--tracking-uri", help="default: the URI the journal recorded (none when it held a password), "
                                               "else MLFLOW_TRACKING_URI")
    replay.set_defaults(func=cmd_tracking_replay)


def _inference_parsers(sub) -> None:
    """generate, evaluate."""
    gen = _config_command(sub, "generate", cmd_generate,
                          "interleaved text + image answer to a prompt (KV cache + MoSS conv cache)")
    _adapter_args(gen)
    gen.add_argument("--prompt", default="", help="prompt text; <image> marks where each --image goes")
    gen.add_argument("--image", action="append", default=[], help="prompt image file (repeatable)")
    gen.add_argument("--image-first", action="store_true", help="start the answer with an image (editing, text-to-image)")
    gen.add_argument("--samples", type=int, default=1, help="answers to the prompt, seeds generate.seed + 0..N-1")
    gen.add_argument("--batch-size", type=int, help="answers decoded together (default: evaluate.batch_size)")
    ev = _config_command(sub, "evaluate", cmd_evaluate,
                         "held-out loss/ppl, MagicBrush-style editing metrics, InterleavedBench answers -> JSON + MLflow")
    _adapter_args(ev)
    ev.add_argument("--interleavedbench", help="interleaved_bench.json to answer (sets interleavedbench.path)")
    ev.add_argument("--judge", action="store_true", help="score InterleavedBench answers with the OpenAI-compatible "
                                                        "judge in MOSS_JUDGE_BASE_URL / MOSS_JUDGE_MODEL / MOSS_JUDGE_API_KEY")
    ev.add_argument("--into-run", action="store_true", help="log into the training run (--run) instead of a new run")
    ev.add_argument("--batch-size", type=int, help="answers decoded together (sets evaluate.batch_size)")


def _tool_parsers(sub) -> None:
    """sample, cluster-secrets, mlflow-server."""
    sample = sub.add_parser("sample", help="write the bundled LeafInstruct-format sample set (PIL-drawn images)")
    sample.add_argument("out", help="folder to write into")
    sample.add_argument("--per-domain", type=int, default=60)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--format", choices=["native", "sharegpt", "messages"], default="native",
                        help="native: our segments/placeholders shapes; sharegpt / messages: the same records as "
                             "conversations (same shards)")
    sample.set_defaults(func=cmd_sample)
    secrets = sub.add_parser("cluster-secrets", help="generate the cluster's Ray token and MLflow credentials "
                                                     "into a private env file (never commit it)")
    secrets.add_argument("--out", default="~/.moss/cluster.env", help="the file cluster.yaml copies to the nodes")
    secrets.add_argument("--user", default="moss", help="MLflow user name")
    secrets.add_argument("--force", action="store_true", help="replace an existing file (locks out a running cluster)")
    secrets.set_defaults(func=cmd_cluster_secrets)
    server = sub.add_parser("mlflow-server", help="`mlflow server` with basic auth; the admin user and password "
                                                  "come from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
    server.add_argument("--host", default="127.0.0.1", help="0.0.0.0 on a cluster head (GPU workers log to it)")
    server.add_argument("--port", type=int, default=5000)
    server.add_argument("--root", default="~/mlflow", help="user store, default run store and artifacts")
    server.add_argument("--backend-store-uri", help="default: sqlite:///<root>/mlflow.db")
    server.add_argument("--artifacts-destination", help="default: <root>/artifacts; s3://bucket/prefix on AWS")
    server.add_argument("--workers", type=int, default=2)
    server.set_defaults(func=cmd_mlflow_server)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moss", description="MoSS experiments on Ray + MLflow")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parsers(sub)
    _tracking_parsers(sub)
    _inference_parsers(sub)
    _tool_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # PEFT calls transformers' deprecated is_gradient_checkpointing on every wrap; not ours to fix
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    args = build_parser().parse_args(argv)
    from .config import ConfigError
    from .console import quiet, warn
    from .runtime import shutdown_local_ray

    with quiet(quiet_log(args), getattr(args, "verbose", False)):
        try:
            return args.func(args)
        except ConfigError as e:
            warn(f"moss {args.command}: {e}")
            return 2
        finally:
            shutdown_local_ray()  # while quiet: its shutdown lines go to the log too


if __name__ == "__main__":
    sys.exit(main())
