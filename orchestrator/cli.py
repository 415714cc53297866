"""The `moss` command: one function per subcommand, each calling into one part of the package."""

from __future__ import annotations

import argparse
import sys
import warnings


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import SMOKE, run_demo

    summary = run_demo(out_dir=args.out, space=args.space or SMOKE, per_domain=args.per_domain, extra=args.set)
    return 0 if summary["errors"] == 0 and not summary["interrupted"] else 1


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from .plan.report import format_plan

    overrides = [*args.set, *([f"plan.cluster={args.cluster}"] if args.cluster else [])]
    plan = preflight(args.target, overrides)
    print(json.dumps(plan.to_json(), indent=2) if args.json else format_plan(plan, verbose=args.verbose))
    return 0 if plan.ok else 2


def preflight(target: str | None, overrides: list[str], memory: bool = True):
    """`moss plan` of a run config (one row) or a search space (one row per trial)."""
    from .config import load_config
    from .plan.report import plan_configs
    from .sweeps.space import is_space_file, load_space
    from .sweeps.tuner import preflight_space

    if target and is_space_file(target):
        return preflight_space(load_space(target, overrides))
    cfg = load_config(target, overrides)
    return plan_configs(target or "(defaults)", [("run", {}, cfg)], memory=memory)


def cmd_validate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data.sources import list_files
    from .plan.report import enforce, format_plan
    from .sweeps.space import is_space_file

    if args.config and is_space_file(args.config):
        return validate_space(args)
    cfg = load_config(args.config, args.set)
    print(cfg.to_yaml(), end="")
    plan = preflight(args.config, args.set)
    print(format_plan(plan))
    enforce(plan, cfg.plan.enforce, "validate")
    if cfg.data.source is not None:
        files = list_files(cfg.data.sources())
        print(f"# data.source: {len(files)} file(s)")
    print(f"# train: {train_check(cfg)}")
    print(f"# valid; config hash {cfg.config_hash()}")
    return 0


def validate_space(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .plan.report import format_plan
    from .sweeps.tuner import absolutize, describe_plan, plan_sweep, preflight_space
    from .sweeps.space import load_space

    space = load_space(args.config, args.set)
    print(format_plan(preflight_space(space)))
    absolutize(space)
    print(space.base_config().to_yaml(), end="")
    print(space.describe())
    try:
        print(f"# {describe_plan(plan_sweep(args.config, args.set))}")
    except ConfigError as e:
        if "no shards" not in str(e):
            raise
        print(f"# shards missing, `moss sweep` would stop: {e}")
    print(f"# valid search space; digest {space.digest}")
    return 0


def train_check(cfg) -> str:
    """What `moss train` would do with this config, when its shards exist (raises ConfigError otherwise)."""
    from .data.pipeline import output_dir
    from .files import read_json
    from .training.driver import absolute, plan_run

    if read_json(f"{absolute(output_dir(cfg))}/manifest.json") is None:
        return f"no shards yet in {output_dir(cfg)} (moss preprocess builds them)"
    plan = plan_run(cfg)
    verb = "resumes" if plan.relaunch else "starts"
    return f"{verb} run {plan.name!r}: {plan.total_steps} steps over {plan.train_rows} train rows, {plan.val_rows} val rows"


def cmd_preprocess(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data.manifest import format_summary
    from .data.pipeline import output_dir, preprocess

    from .plan.report import enforce

    cfg = load_config(args.config, args.set)
    # the checkpoint and the image budget (a sequence too short for any answer image), before any work
    enforce(preflight(args.config, args.set, memory=False), cfg.plan.enforce, "preprocess")
    manifest = preprocess(cfg, engine="local" if args.local else "ray")
    print(format_summary(manifest, output_dir(cfg)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runtime import init_ray, refuse_unplaceable
    from .lease import Lease
    from .training.driver import format_summary, plan_run, run_training

    from .plan.report import enforce

    cfg = load_config(args.config, args.set)
    enforce(preflight(args.config, args.set), cfg.plan.enforce, "train")  # checkpoint, images, GPU memory
    plan = plan_run(cfg)  # shards, run name, MLflow: everything that can fail before Ray starts
    with Lease(plan.run_dir, f"run {plan.name!r}"):  # a second launch of this name exits 2 here
        print(f"train: run {plan.name!r}, {plan.total_steps} steps on {cfg.scaling.num_workers} worker(s); "
              f"checkpoints in {plan.run_dir}", flush=True)
        init_ray()
        refuse_unplaceable([cfg.scaling.ray_resources()], "train")
        summary = run_training(cfg, plan)
    print(format_summary(summary))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .runtime import init_ray
    from .lease import Lease
    from .sweeps.tuner import describe_plan, format_summary, plan_sweep, run_sweep

    plan = plan_sweep(args.space, args.set, name=args.name, resume=args.resume)
    with Lease(plan.sweep_dir, f"sweep {plan.name!r}"):  # a second --resume of this sweep exits 2 here
        print(f"sweep: {describe_plan(plan)}; Tune state in {plan.sweep_dir}", flush=True)
        init_ray()
        summary = run_sweep(plan, report_dir=args.report_dir)
    print(format_summary(summary))
    return 0 if summary["errors"] == 0 and not summary["interrupted"] else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .tracking.compare import build_report
    from .tracking.mlflow import tracking_uri

    uri = tracking_uri(args.tracking_uri)
    try:
        report = build_report(uri, parent_run_id=args.parent_run, experiment=args.experiment, metric=args.metric,
                              mode=args.mode, out_dir=args.out)
    except LookupError as e:
        raise ConfigError(str(e)) from None
    c = report["comparison"]
    print(f"compare: {len(c.rows)} runs of {c.source}, by {c.metric} ({c.mode})")
    print(report["table_text"])
    print(f"report: {report['markdown']}; plots: {', '.join(report['plots'])}")
    if c.parent_run_id:
        print(f"logged to MLflow run {c.parent_run_id} (artifacts: report/)")
    return 0


def cmd_tracking_replay(args: argparse.Namespace) -> int:
    from .tracking.outage import Unreachable
    from .tracking.replay import replay

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
    from .data.sample import write_sample

    counts = write_sample(args.out, per_domain=args.per_domain, seed=args.seed)
    print(f"sample: {sum(counts.values())} records in {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_cluster_secrets(args: argparse.Namespace) -> int:
    from .cluster.secrets import generate, write_env_file

    path = write_env_file(args.out, generate(args.user), force=args.force)
    print(f"cluster-secrets: wrote {path} (mode 0600): Ray token auth on, a Ray token, MLflow user {args.user!r} "
          "and password. cluster.yaml copies it to every node. Before `ray job submit` / `moss compare`, load it:")
    print(f"  set -a; . {path}; set +a")
    return 0


def cmd_mlflow_server(args: argparse.Namespace) -> int:
    from .cluster.mlflow_server import serve

    serve(args.root, args.host, args.port, args.backend_store_uri, args.artifacts_destination, args.workers)
    return 0  # serve() replaces this process


def _out_dir(args, source, default_root: str):
    """--out (which must be empty: its files are logged as this run's), else <root>/<label>-<time>."""
    import datetime as dt
    from pathlib import Path

    from .config import ConfigError

    if args.out:
        out = Path(args.out)
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"--out {out} is not empty: choose a new folder (its files would mix with these)")
        return out
    return Path(default_root) / f"{source.label}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def cmd_generate(args: argparse.Namespace) -> int:
    import json
    import tempfile
    from pathlib import Path

    from .config import ConfigError
    from .evaluation.generate import Generator, SamplingConfig
    from .evaluation.inference import load_model, resolve

    prompt = parse_prompt(args.prompt, args.image)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, source = resolve(args.config, args.set, args.adapter, args.run, Path(tmp))
        out = _out_dir(args, source, "generated")
        model, spec = load_model(cfg, source)
    g = cfg.generate
    try:
        sampling = SamplingConfig.from_section(g, open_image=args.image_first)
        spec.generation_grid(g.image_size)
    except ValueError as e:
        raise ConfigError(f"generate: {e}") from None
    try:
        answer = Generator(model, spec).generate(prompt, sampling)
    except ValueError as e:  # a prompt longer than the model's context
        raise ConfigError(f"generate: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for p in answer.parts:
        if isinstance(p, str):
            parts.append({"type": "text", "text": p})
            continue
        k = sum(x["type"] == "image" for x in parts)
        entry = {"type": "image", "height": p.size[0], "width": p.size[1], **p.save(out, f"image_{k}")}
        if p.image is None:
            entry["note"] = spec.pixel_note
        parts.append(entry)
    n_img = len(answer.image_token_seconds)
    summary = {"prompt": args.prompt, "images_in": args.image, "adapter": source.origin, "run_id": source.run_id,
               "parts": parts, "text": answer.text, "stop": answer.stop, "seconds": round(answer.seconds, 3),
               "image_tokens_per_s": round(n_img / sum(answer.image_token_seconds), 1) if n_img else None}
    (out / "answer.json").write_text(json.dumps(summary, indent=2))
    print(f"generate: {answer.text!r} (stopped: {answer.stop}, {answer.seconds:.1f}s)")
    for p in parts:
        if p["type"] == "image":
            print(f"  image {p['height']}x{p['width']}: {out / p.get('image', p.get('codes', p.get('embeddings')))}")
    print(f"answer: {out / 'answer.json'}")
    return 0


def parse_prompt(text: str, images: list[str]) -> list:
    """--prompt with <image> placeholders + --image paths -> interleaved segments (images appended if no placeholder)."""
    from .config import ConfigError
    from .data.images import ImageError
    from .evaluation.editing import load_image
    from .evaluation.generate import interleave

    try:
        loaded = [load_image(p) for p in images]
    except ImageError as e:
        raise ConfigError(f"--image: {e}") from None
    n = text.count("<image>")
    if n > len(loaded):
        raise ConfigError(f"--prompt has {n} <image> placeholder(s) but only {len(loaded)} --image")
    segments = interleave(text, loaded) + loaded[n:]
    if not segments:
        raise ConfigError("an empty prompt: give --prompt and/or --image")
    return segments


def cmd_evaluate(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from .evaluation.evaluate import evaluate, log_to_mlflow
    from .evaluation.inference import resolve

    from .config import ConfigError

    if args.into_run and not args.run:
        raise ConfigError("--into-run writes into a training run: give it with --run")
    with tempfile.TemporaryDirectory() as tmp:
        cfg, source = resolve(args.config, args.set, args.adapter, args.run, Path(tmp))
        if args.interleavedbench:  # set directly: a path is not YAML
            cfg.interleavedbench.path = args.interleavedbench
        out = _out_dir(args, source, cfg.evaluate.output)
        results = evaluate(cfg, source, out, judge=args.judge)
    run_id = log_to_mlflow(cfg, source, results, out, into_training_run=args.into_run)
    for key, value in sorted(results["metrics"].items()):
        print(f"  {key:32s} {value:.6g}")
    for section in ("editing", "interleavedbench"):
        for note in results.get(section, {}).get("notes", []):
            print(f"  note ({section}): {note}")
    where = "the training run" if args.into_run else "a new run linked to it" if source.run_id else "a new run"
    print(f"evaluate: results in {out / 'results.json'}; logged to MLflow run {run_id} ({where})")
    return 0


def _adapter_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--adapter", help="adapter folder (what training saves), or an MLflow artifact URI "
                                         "(runs:/<id>/adapter); neither: the base model")
    which.add_argument("--run", help="MLflow run id of a training run: its final adapter and (without CONFIG) "
                                     "its logged config")
    p.add_argument("--out", help="output folder")


def _config_command(sub, name: str, func, help: str) -> argparse.ArgumentParser:
    """A subcommand taking an optional run config YAML and repeatable --set overrides."""
    p = sub.add_parser(name, help=help)
    p.add_argument("config", nargs="?", help="run config YAML (default: every default of orchestrator/config.py)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key, e.g. --set data.max_seq_len=1024 (repeatable)")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moss", description="MoSS experiments on Ray + MLflow")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="sample set -> Ray Data shards -> the smoke sweep (Tune + Train + MLflow) -> report")
    demo.add_argument("--out", default="demo_out", help="folder for everything it writes (sample, shards, runs, report)")
    demo.add_argument("--space", help="search space (default: search_spaces/smoke.yaml)")
    demo.add_argument("--per-domain", type=int, default=60, help="sample records per domain")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a dotted key of the space's base config (repeatable)")
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
    _config_command(sub, "train", cmd_train, "fine-tune an adapter on the shards with Ray Train, tracked in MLflow")
    sweep = sub.add_parser("sweep", help="a Ray Tune sweep over a search space; MLflow parent + child runs; report")
    sweep.add_argument("space", help="search space YAML (search_spaces/*.yaml)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a dotted key of the space's base config (repeatable)")
    sweep.add_argument("--name", help="sweep name (default: <space>-<time>-<hex>); names its Tune state and parent run")
    sweep.add_argument("--resume", action="store_true",
                       help="continue an interrupted sweep (--name, else the latest of this space)")
    sweep.add_argument("--report-dir", help="where the report goes (default: report/<sweep name>)")
    sweep.set_defaults(func=cmd_sweep)
    compare = sub.add_parser("compare", help="compare runs in MLflow: tables, plots, markdown report")
    which = compare.add_mutually_exclusive_group()
    which.add_argument("--parent-run", help="a sweep's parent run id")
    which.add_argument("--experiment", help="the latest sweep of this experiment, else all its training runs")
    compare.add_argument("--metric", help="default: the sweep's metric, else val/loss")
    compare.add_argument("--mode", choices=["min", "max"], help="default: the sweep's mode, else min")
    compare.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    compare.add_argument("--out", default="report/compare", help="folder for report.md, results.json and plots")
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
    gen = _config_command(sub, "generate", cmd_generate,
                          "interleaved text + image answer to a prompt (KV cache + MoSS conv cache)")
    _adapter_args(gen)
    gen.add_argument("--prompt", default="", help="prompt text; <image> marks where each --image goes")
    gen.add_argument("--image", action="append", default=[], help="prompt image file (repeatable)")
    gen.add_argument("--image-first", action="store_true", help="start the answer with an image (editing, text-to-image)")
    ev = _config_command(sub, "evaluate", cmd_evaluate,
                         "held-out loss/ppl, MagicBrush-style editing metrics, InterleavedBench answers -> JSON + MLflow")
    _adapter_args(ev)
    ev.add_argument("--interleavedbench", help="interleaved_bench.json to answer (sets interleavedbench.path)")
    ev.add_argument("--judge", action="store_true", help="score InterleavedBench answers with the OpenAI-compatible "
                                                        "judge in MOSS_JUDGE_BASE_URL / MOSS_JUDGE_MODEL / MOSS_JUDGE_API_KEY")
    ev.add_argument("--into-run", action="store_true", help="log into the training run (--run) instead of a new run")
    sample = sub.add_parser("sample", help="write the bundled LeafInstruct-format sample set (PIL-drawn images)")
    sample.add_argument("out", help="folder to write into")
    sample.add_argument("--per-domain", type=int, default=60)
    sample.add_argument("--seed", type=int, default=0)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    # PEFT calls transformers' deprecated is_gradient_checkpointing on every wrap; not ours to fix
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    args = build_parser().parse_args(argv)
    from .config import ConfigError

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"moss {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
