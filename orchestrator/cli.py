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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moss", description="MoSS experiments on Ray + MLflow")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train every adapter variant a few steps on each tiny backbone")
    demo.add_argument("--backbones", nargs="+", default=["chameleon", "emu3", "janus"])
    demo.add_argument("--steps", type=int, default=30)
    demo.add_argument("--out", default="demo_out", help="folder for demo.json")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    # PEFT calls transformers' deprecated is_gradient_checkpointing on every wrap; not ours to fix
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
