"""Runs that differ only in their seed, taken together: mean ± 95% CI per configuration, and each
configuration's paired difference to LoRA at the same seed, rank and step budget."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..moss.variants import REFERENCE
from .stats import Interval, finite, mean_ci, paired_ci

#: the logged params that make a configuration: what is trained, on what, how (not where it is logged or stored)
IDENTITY = ("backbone.", "adapter.", "train.", "data.", "scaling.")
NOT_IDENTITY = ("train.seed", "train.run_name")


def identity(params: dict) -> dict:
    """A run's configuration: its params under IDENTITY, seed and run name left out."""
    return {k: v for k, v in params.items() if k.startswith(IDENTITY) and k not in NOT_IDENTITY}


@dataclass
class Group:
    """One configuration (everything but the seed): one run per seed, the interval read at ``step``, the last
    step every one of them reached (so an early-stopped seed is not averaged with finished ones)."""

    key: tuple
    rows: list  # compare.Row, one per seed, in seed order
    interval: Interval
    step: int | None
    repeats: int = 0  # further runs with a seed already counted (the one that got furthest is used)

    @property
    def first(self):
        return self.rows[0]

    def to_json(self) -> dict:
        r = self.first
        return {"backbone": r.backbone, "label": r.label, "rank": r.rank, "kernel_size": r.kernel_size, "lr": r.lr,
                "budget": r.budget, "step": self.step, "seeds": [x.seed for x in self.rows], "repeats": self.repeats,
                "runs": [x.run_name for x in self.rows], "trainable_parameters": r.trainable_parameters,
                **self.interval.to_json()}


def config_key(row) -> tuple:
    """What makes two runs the same configuration: all settings but the seed."""
    settings = row.settings or {k: v for k, v in row.sampled.items() if k != "train.seed"}
    return (row.backbone, row.label, row.rank, row.kernel_size, row.conv_space, row.lr, row.budget,
            json.dumps(settings, sort_keys=True, default=str))


def value_at(row, step: int) -> float | None:
    """The metric's value at ``step`` (or the last one logged before it)."""
    return curve_value(row.curve, step)


def curve_value(curve: list[tuple[int, float]], step: int) -> float | None:
    """A (step, value) history's value at ``step`` (or the last one logged before it)."""
    before = [v for s, v in curve if s <= step]
    return before[-1] if before else None


def _one_per_seed(rows: list) -> tuple[list, int]:
    best: dict = {}
    for r in rows:  # the run of a seed that got furthest (a repeat of a seed is not another sample)
        if r.seed not in best or (r.step or 0) > (best[r.seed].step or 0):
            best[r.seed] = r
    return sorted(best.values(), key=lambda r: (r.seed is None, r.seed or 0)), len(rows) - len(best)


def group_rows(rows: list, mode: str) -> list[Group]:
    """Configurations with a finite value, best mean first (``mode``: min or max)."""
    by_key: dict[tuple, list] = {}
    for r in rows:
        if finite([r.value]) and r.step is not None:
            by_key.setdefault(config_key(r), []).append(r)
    groups = []
    for key, members in by_key.items():
        chosen, repeats = _one_per_seed(members)
        step = min(r.step for r in chosen)
        values = finite(value_at(r, step) for r in chosen)
        if values:
            groups.append(Group(key, chosen, mean_ci(values), step, repeats))
    sign = 1 if mode == "min" else -1
    return sorted(groups, key=lambda g: sign * g.interval.mean)


def reference_rank(row) -> int | None:
    """The LoRA rank a run is compared with: the one its parameters were matched to (adapter.match_params),
    else its own rank."""
    if row.settings.get("adapter.match_params.variant") == REFERENCE:
        try:
            return int(row.settings["adapter.match_params.rank"])
        except (KeyError, ValueError):
            pass
    return row.rank


def paired_to_lora(groups: list[Group]) -> list[dict]:
    """Each non-LoRA configuration against the best LoRA configuration of the same backbone, rank (the matched
    one for equal-parameter runs) and budget: the mean over shared seeds of (its value - LoRA's), both read at
    the last step the two runs share."""
    lora: dict[tuple, Group] = {}
    for g in groups:  # best first: the first LoRA group of a (backbone, rank, budget) is its best
        r = g.first
        if r.variant == REFERENCE:
            lora.setdefault((r.backbone, r.rank, r.budget), g)
    out = []
    for g in groups:
        r = g.first
        base = lora.get((r.backbone, reference_rank(r), r.budget))
        if r.variant == REFERENCE or base is None:
            continue
        theirs = {x.seed: x for x in base.rows}
        mine, ref = {}, {}
        for x in g.rows:
            y = theirs.get(x.seed)
            if y is not None:
                step = min(x.step, y.step)
                mine[x.seed], ref[x.seed] = value_at(x, step), value_at(y, step)
        diff = paired_ci(mine, ref)
        if diff is None:
            continue
        out.append({"backbone": r.backbone, "label": r.label, "rank": r.rank, "kernel_size": r.kernel_size, "lr": r.lr,
                    "budget": r.budget, "lora_rank": base.first.rank, "lora_lr": base.first.lr,
                    "params_ratio": (r.trainable_parameters / base.first.trainable_parameters
                                     if r.trainable_parameters and base.first.trainable_parameters else None),
                    "pairs": diff.n, "diff": diff.mean,
                    "half_width": diff.half_width, "excludes_zero": diff.excludes_zero})
    return out


def markdown_sections(groups: list[Group], pairs: list[dict], metric: str, mode: str, table) -> list[str]:
    """The report's "Over seeds" and "Paired difference to LoRA" sections (``table``: compare.md_table)."""
    if not any(g.interval.n > 1 for g in groups):
        return ["## Over seeds", "", "One seed per configuration: no intervals, so no difference here is shown to "
                "be more than noise. Repeat seeds with `num_seeds` (or a `train.seed` grid) in the space.", ""]
    rows = [[g.first.backbone, g.first.label, g.first.rank, g.first.kernel_size, g.first.lr, g.step, g.interval.n,
             g.interval.text(), g.first.trainable_parameters] for g in groups]
    parts = ["## Over seeds", "", f"Runs that differ only in `train.seed`, as mean ± {int(100 * groups[0].interval.level)}% "
             f"CI (Student t) of {metric}, read at the last step every seed of the configuration reached.", "",
             table(["backbone", "variant", "rank", "kernel", "lr", "at step", "seeds", metric, "trainable params"], rows),
             ""]
    better = "negative" if mode == "min" else "positive"
    parts += ["## Paired difference to LoRA", "", f"Mean over shared seeds of (run - LoRA run with the same seed, "
              f"backbone, rank and step budget; the best LoRA configuration there; for an equal-parameter run "
              f"(adapter.match_params) the LoRA rank it was matched to), read at the last step both reached; "
              f"{better} = better than LoRA. *yes*: the interval excludes 0.", ""]
    parts.append(table(["backbone", "variant", "rank", "kernel", "lr", "vs LoRA rank", "params × LoRA", "steps", "pairs",
                        "difference", "± 95%", "≠ 0"],
                       [[p["backbone"], p["label"], p["rank"], p["kernel_size"], p["lr"], p["lora_rank"], p["params_ratio"],
                         p["budget"], p["pairs"], p["diff"], p["half_width"],
                         {True: "yes", False: "no", None: "–"}[p["excludes_zero"]]]
                        for p in pairs]) if pairs else "No LoRA runs with matching seeds, rank and budget.")
    return parts + [""]
