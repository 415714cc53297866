"""The plan of a run config or a sweep's trials as a table (or JSON), and the refusal that follows from it."""

from __future__ import annotations


from ..config import ConfigError, RunConfig
from ..console import warn
from .memory import GiB
from .planner import Plan, Planner

COLUMNS = ("trial", "backbone", "checkpoint", "variant", "rank", "k", "conv", "lands on", "GPUs", "GiB/GPU",
           "est. GiB", "fits", "img tokens", "img/seq")


def plan_configs(source: str, configs: list[tuple[str, dict, RunConfig]], memory: bool = True) -> Plan:
    """Plan (label, searched params, config) triples against the first config's plan.cluster;
    ``memory=False``: the checkpoint and the image budget only (what preprocessing needs)."""
    return Planner(configs[0][2].plan.cluster, memory=memory).plan_configs(source, configs)


def cells(row) -> list[str]:
    e = row.estimate
    tokens = row.image_tokens
    return [
        row.trial, row.backbone, _short(row.checkpoint, 26), row.variant, str(row.rank), _or_dash(row.kernel),
        _or_dash(row.conv_space), _short(row.placement.split(" (")[0], 22),
        f"{row.workers}x{row.gpus:g}" if row.gpus else f"{row.workers} cpu",
        _or_dash(row.device_gib), f"{e.total / GiB:.1f}" if e else "?",
        {True: "yes", False: "NO", None: "?"}[row.fits],
        (f"{tokens[0]}" if tokens[0] == tokens[1] else f"{tokens[0]}-{tokens[1]}") if tokens else "?",
        _or_dash(row.images_per_seq),
    ]


def format_plan(plan: Plan, verbose: bool = False) -> str:
    table = [list(COLUMNS)] + [cells(r) for r in plan.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = [f"plan: {plan.source}: {len(plan.rows)} trial(s)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    if verbose or len(plan.rows) == 1:
        for r in plan.rows:
            if r.estimate is not None:
                g = r.estimate.gib()
                lines.append(f"  {r.trial}: {r.trainable / 1e6:.1f}M trainable; per GPU GiB: weights {g['weights']}, "
                             f"adapter state {g['adapter']}, activations {g['activations']}, logits {g['logits']}, "
                             f"margin {g['margin']}; seq {r.seq_len}, {r.global_batch} sequences per step; "
                             f"image {r.image_size}")
    lines += [f"warning: {w}" for w in plan.warnings]
    lines += [f"PROBLEM: {p}" for p in plan.problems]
    lines.append("plan: OK" if plan.ok else f"plan: {len(plan.problems)} problem(s): these trials would not run "
                                                "as configured")
    return "\n".join(lines)


def enforce(plan: Plan, enforced: bool, what: str) -> None:
    """Refuse (ConfigError: exit 2, before Ray) when the plan found problems, unless plan.enforce is false."""
    if plan.ok:
        for w in plan.warnings:
            warn(f"{what}: warning: {w}")
        return
    text = format_plan(plan)
    if enforced:
        raise ConfigError(f"the plan found {len(plan.problems)} problem(s) (`moss plan` shows it; "
                          f"--set plan.enforce=false runs anyway):\n{text}")
    warn(f"{what}: WARNING: plan.enforce=false: going on despite:\n{text}")


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]


def _or_dash(v) -> str:
    return "-" if v is None else str(v)
