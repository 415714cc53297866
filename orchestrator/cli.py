"""The `moss` command: one function per subcommand, each calling into one part of the package."""

from __future__ import annotations

import argparse
import sys
import warnings


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    rows = run_demo(backbones=args.backbones, steps=args.steps, out_dir=args.out)
    fell = [r for r in rows if r["after"]["loss"] < r["before"]["loss"]]
    print(f"demo: {len(rows)} runs (backbone x adapter), training loss fell in {len(fell)}")
    return 0 if len(fell) == len(rows) else 1


def cmd_validate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data.sources import list_files

    cfg = load_config(args.config, args.set)
    print(cfg.to_yaml(), end="")
    if cfg.data.source is not None:
        files = list_files(cfg.data.sources())
        print(f"# data.source: {len(files)} file(s)")
    print(f"# train: {train_check(cfg)}")
    print(f"# valid; config hash {cfg.config_hash()}")
    return 0


def train_check(cfg) -> str:
    """What `moss train` would do with this config, when its shards exist (raises ConfigError otherwise)."""
    from .data.pipeline import output_dir
    from .training.driver import absolute, plan_run, read_json

    if read_json(f"{absolute(output_dir(cfg))}/manifest.json") is None:
        return f"no shards yet in {output_dir(cfg)} (moss preprocess builds them)"
    plan = plan_run(cfg)
    verb = "resumes" if plan.mlflow_run_id else "starts"
    return f"{verb} run {plan.name!r}: {plan.total_steps} steps over {plan.train_rows} train rows, {plan.val_rows} val rows"


def cmd_preprocess(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data.manifest import format_summary
    from .data.pipeline import output_dir, preprocess

    cfg = load_config(args.config, args.set)
    manifest = preprocess(cfg, engine="local" if args.local else "ray")
    print(format_summary(manifest, output_dir(cfg)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runtime import init_ray
    from .training.driver import format_summary, plan_run, run_training

    cfg = load_config(args.config, args.set)
    plan = plan_run(cfg)  # shards, run name, MLflow: everything that can fail before Ray starts
    print(f"train: run {plan.name!r}, {plan.total_steps} steps on {cfg.scaling.num_workers} worker(s); "
          f"checkpoints in {plan.run_dir}", flush=True)
    init_ray()
    summary = run_training(cfg, plan)
    print(format_summary(summary))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .data.sample import write_sample

    counts = write_sample(args.out, per_domain=args.per_domain, seed=args.seed)
    print(f"sample: {sum(counts.values())} records in {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


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
    demo = sub.add_parser(
        "demo", help="sample set -> Ray Data shards -> a few training steps of every adapter variant, per tiny backbone"
    )
    demo.add_argument("--backbones", nargs="+", default=["chameleon", "emu3", "janus"])
    demo.add_argument("--steps", type=int, default=30)
    demo.add_argument("--out", default="demo_out", help="folder for the sample set, its shards and demo.json")
    demo.set_defaults(func=cmd_demo)
    _config_command(sub, "validate", cmd_validate,
                    "check a config (its data source, and what `moss train` would do) without starting Ray")
    pre = _config_command(sub, "preprocess", cmd_preprocess, "LeafInstruct records -> tokenized shards with Ray Data")
    pre.add_argument("--local", action="store_true", help="run the same stages in one process, without Ray")
    _config_command(sub, "train", cmd_train, "fine-tune an adapter on the shards with Ray Train, tracked in MLflow")
    sample = sub.add_parser("sample", help="write the bundled LeafInstruct-format sample set (PIL-drawn images)")
    sample.add_argument("out", help="folder to write into")
    sample.add_argument("--per-domain", type=int, default=60)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=cmd_sample)
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
