"""`moss demo`, `plan`, `validate`, `preprocess`, `train` and `sweep`: check a run config or a search space,
then run it."""

from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import DEMO, run_demo

    summary = run_demo(out_dir=args.out, space=args.space or DEMO, per_domain=args.per_domain, extra=args.set)
    return 0 if summary["errors"] == 0 and not summary["interrupted"] else 1


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from ..plan.report import format_plan

    overrides = [*args.set, *([f"plan.cluster={args.cluster}"] if args.cluster else [])]
    plan = preflight(args.target, overrides)
    print(json.dumps(plan.to_json(), indent=2) if args.json else format_plan(plan, verbose=args.verbose))
    return 0 if plan.ok else 2


def preflight(target: str | None, overrides: list[str], memory: bool = True):
    """`moss plan` of a run config (one row) or a search space (one row per trial)."""
    from ..config import load_config
    from ..plan.report import plan_configs
    from ..sweeps.space import is_space_file, load_space
    from ..sweeps.tuner import preflight_space

    if target and is_space_file(target):
        return preflight_space(load_space(target, overrides))
    cfg = load_config(target, overrides)
    return plan_configs(target or "(defaults)", [("run", {}, cfg)], memory=memory)


def cmd_validate(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..data.sources import list_files
    from ..plan.report import enforce, format_plan
    from ..sweeps.space import is_space_file

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
    from ..config import ConfigError
    from ..plan.report import format_plan
    from ..sweeps.tuner import absolutize, describe_plan, plan_sweep, preflight_space
    from ..sweeps.space import load_space

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
    from ..data.pipeline import output_dir
    from ..files import absolute, read_json
    from ..training.driver import plan_run

    if read_json(f"{absolute(output_dir(cfg))}/manifest.json") is None:
        return f"no shards yet in {output_dir(cfg)} (moss preprocess builds them)"
    plan = plan_run(cfg)
    verb = "resumes" if plan.relaunch else "starts"
    return f"{verb} run {plan.name!r}: {plan.total_steps} steps over {plan.train_rows} train rows, {plan.val_rows} val rows"


def cmd_preprocess(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..data.manifest import format_summary
    from ..data.pipeline import output_dir, preprocess

    from ..plan.report import enforce
    from ..console import say

    cfg = load_config(args.config, args.set)
    # the checkpoint and the image budget (a sequence too short for any answer image), before any work
    enforce(preflight(args.config, args.set, memory=False), cfg.plan.enforce, "preprocess")
    manifest = preprocess(cfg, engine="local" if args.local else "ray")
    say(format_summary(manifest, output_dir(cfg)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..console import say
    from ..runtime import init_ray, refuse_unplaceable
    from ..lease import Lease
    from ..training.driver import format_summary, plan_run, run_training

    from ..plan.report import enforce

    cfg = load_config(args.config, args.set)
    enforce(preflight(args.config, args.set), cfg.plan.enforce, "train")  # checkpoint, images, GPU memory
    plan = plan_run(cfg)  # shards, run name, MLflow: everything that can fail before Ray starts
    with Lease(plan.run_dir, f"run {plan.name!r}"):  # a second launch of this name exits 2 here
        say(f"train: run {plan.name!r}, {plan.total_steps} steps on {cfg.scaling.num_workers} worker(s); "
            f"checkpoints in {plan.run_dir}")
        init_ray()
        refuse_unplaceable([cfg.scaling.ray_resources()], "train")
        summary = run_training(cfg, plan)
    say(format_summary(summary))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..console import say
    from ..runtime import init_ray
    from ..lease import Lease
    from ..sweeps.tuner import describe_plan, format_summary, plan_sweep, run_sweep

    plan = plan_sweep(args.space, args.set, name=args.name, resume=args.resume, or_start=args.resume_or_start)
    with Lease(plan.sweep_dir, f"sweep {plan.name!r}"):  # a second --resume of this sweep exits 2 here
        say(f"sweep: {describe_plan(plan)}; Tune state in {plan.sweep_dir}")
        init_ray()
        summary = run_sweep(plan, report_dir=args.report_dir)
    say(format_summary(summary))
    return 0 if summary["errors"] == 0 and not summary["interrupted"] else 1
