"""Runs that differ only in their seed, taken together: mean ± 95% CI per configuration, and each
configuration's paired difference to LoRA at the same seed, rank and step budget."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..moss.variants import REFERENCE
from .stats import Interval, mean_ci, paired_ci


@dataclass
class Group:
    """The runs of one configuration (everything but the seed), best first."""

    key: tuple
    rows: list  # compare.Row
    interval: Interval

    @property
    def first(self):
        return self.rows[0]

    def to_json(self) -> dict:
        r = self.first
        return {"backbone": r.backbone, "label": r.label, "rank": r.rank, "kernel_size": r.kernel_size, "lr": r.lr,
                "budget": r.budget, "seeds": [x.seed for x in self.rows], "runs": [x.run_name for x in self.rows],
                "trainable_parameters": r.trainable_parameters, **self.interval.to_json()}


def config_key(row) -> tuple:
    """What makes two runs the same configuration: all settings but the seed."""
    sampled = {k: v for k, v in row.sampled.items() if k != "train.seed"}
    return (row.backbone, row.label, row.rank, row.kernel_size, row.conv_space, row.lr, row.budget,
            json.dumps(sampled, sort_keys=True, default=str))


def group_rows(rows: list, mode: str) -> list[Group]:
    """Configurations with at least one finished value, best mean first (``mode``: min or max)."""
    by_key: dict[tuple, list] = {}
    for r in rows:
        if r.value is not None:
            by_key.setdefault(config_key(r), []).append(r)
    groups = [Group(k, rs, mean_ci([r.value for r in rs])) for k, rs in by_key.items()]
    sign = 1 if mode == "min" else -1
    return sorted(groups, key=lambda g: sign * g.interval.mean)


def _value_at(row, step: int) -> float | None:
    before = [v for s, v in row.curve if s <= step]
    return before[-1] if before else None


def paired_to_lora(groups: list[Group]) -> list[dict]:
    """Each non-LoRA configuration against the best LoRA configuration of the same backbone, rank and budget:
    the mean over shared seeds of (its value - LoRA's), both read at the last step the two runs share."""
    lora: dict[tuple, Group] = {}
    for g in groups:  # best first: the first LoRA group of a (backbone, rank, budget) is its best
        r = g.first
        if r.variant == REFERENCE:
            lora.setdefault((r.backbone, r.rank, r.budget), g)
    out = []
    for g in groups:
        r = g.first
        base = lora.get((r.backbone, r.rank, r.budget))
        if r.variant == REFERENCE or base is None:
            continue
        theirs = {x.seed: x for x in base.rows}
        mine, ref = {}, {}
        for x in g.rows:
            y = theirs.get(x.seed)
            if y is None or x.step is None or y.step is None:
                continue
            step = min(x.step, y.step)
            mine[x.seed], ref[x.seed] = _value_at(x, step), _value_at(y, step)
        diff = paired_ci(mine, ref)
        if diff is None:
            continue
        out.append({"backbone": r.backbone, "label": r.label, "rank": r.rank, "kernel_size": r.kernel_size, "lr": r.lr,
                    "budget": r.budget, "lora_lr": base.first.lr, "pairs": diff.n, "diff": diff.mean,
                    "half_width": diff.half_width, "excludes_zero": None if diff.half_width is None
                    else abs(diff.mean) > diff.half_width})
    return out


def markdown_sections(groups: list[Group], pairs: list[dict], metric: str, mode: str, table) -> list[str]:
    """The report's "Over seeds" and "Paired difference to LoRA" sections (``table``: compare.md_table)."""
    if not any(g.interval.n > 1 for g in groups):
        return ["## Over seeds", "", "One seed per configuration: no intervals, so no difference here is shown to "
                "be more than noise. Repeat seeds with a `train.seed` grid in the space.", ""]
    rows = [[g.first.backbone, g.first.label, g.first.rank, g.first.kernel_size, g.first.lr, g.first.budget,
             g.interval.n, g.interval.text(), g.first.trainable_parameters] for g in groups]
    parts = ["## Over seeds", "", f"Runs that differ only in `train.seed`, as mean ± {int(100 * groups[0].interval.level)}% "
             f"CI (Student t) of {metric}.", "",
             table(["backbone", "variant", "rank", "kernel", "lr", "steps", "seeds", metric, "trainable params"], rows), ""]
    better = "negative" if mode == "min" else "positive"
    parts += ["## Paired difference to LoRA", "", f"Mean over shared seeds of (run - LoRA run with the same seed, "
              f"backbone, rank and step budget; the best LoRA configuration there), read at the last step both reached; "
              f"{better} = better than LoRA. *yes*: the interval excludes 0.", ""]
    parts.append(table(["backbone", "variant", "rank", "kernel", "lr", "steps", "pairs", "difference", "± 95%", "≠ 0"],
                       [[p["backbone"], p["label"], p["rank"], p["kernel_size"], p["lr"], p["budget"], p["pairs"],
                         p["diff"], p["half_width"], {True: "yes", False: "no", None: "–"}[p["excludes_zero"]]]
                        for p in pairs]) if pairs else "No LoRA runs with matching seeds, rank and budget.")
    return parts + [""]
