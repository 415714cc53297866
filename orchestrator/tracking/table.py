"""The report's lead table, in the paper's layout: one row per method (a configuration over its seeds), and
columns image loss, text loss (mean ± 95% CI over seeds), trainable parameters and inference cost (ms per
generated image token, from `moss evaluate` runs of the method's runs, when there are any)."""

from __future__ import annotations

from dataclasses import dataclass

from .seeds import Group, curve_value
from .stats import Interval, finite, mean_ci

#: the loss columns, read for every run at its configuration's common step
LOSS_COLUMNS = ("val/image_loss", "val/text_loss")
#: the cost columns: metrics of evaluation runs (or of a training run evaluated --into-run)
COST_COLUMNS = ("cost/ms_per_image_token", "cost/ms_per_text_token")


@dataclass
class MethodRow:
    backbone: str
    label: str
    rank: int | None
    kernel_size: int | None
    lr: float | None
    trainable_parameters: int | None
    step: int | None
    seeds: int
    cells: dict  # column -> Interval | None

    def to_json(self) -> dict:
        return {"backbone": self.backbone, "label": self.label, "rank": self.rank, "kernel_size": self.kernel_size,
                "lr": self.lr, "trainable_parameters": self.trainable_parameters, "step": self.step, "seeds": self.seeds,
                **{k: v.to_json() if v is not None else None for k, v in self.cells.items()}}


def _interval(values) -> Interval | None:
    values = finite(values)
    return mean_ci(values) if values else None


def method_rows(groups: list[Group], costs: dict[str, dict]) -> list[MethodRow]:
    """One row per configuration, in the groups' order (best first). ``costs``: run id -> its evaluation's
    cost metrics."""
    out = []
    for g in groups:
        cells = {m: _interval(value_at_metric(r, m, g.step) for r in g.rows) for m in LOSS_COLUMNS}
        cells.update({m: _interval(costs.get(r.run_id, {}).get(m) for r in g.rows) for m in COST_COLUMNS})
        r = g.first
        out.append(MethodRow(r.backbone, r.label, r.rank, r.kernel_size, r.lr, r.trainable_parameters, g.step,
                             g.interval.n, cells))
    return out


def value_at_metric(row, metric: str, step: int | None) -> float | None:
    """A run's ``metric`` at ``step`` (or the last value logged before it)."""
    return curve_value(row.curves.get(metric, []), step) if step is not None else None


def _cell(iv: Interval | None, digits: int = 3) -> str:
    if iv is None:
        return "–"
    return f"{iv.mean:.{digits}f} ± {iv.half_width:.{digits}f}" if iv.half_width is not None else f"{iv.mean:.{digits}f}"


def method_name(r: MethodRow) -> str:
    return f"{r.label} r{r.rank}" + (f" k{r.kernel_size}" if r.kernel_size else "")


def markdown_section(rows: list[MethodRow], table) -> list[str]:
    """The "Methods" section (``table``: compare.md_table)."""
    if not rows:
        return []
    several = len({r.backbone for r in rows}) > 1
    headers = (["backbone"] if several else []) + ["method", "seeds", "at step", "image loss", "text loss",
                                                   "trainable params", "ms / image token", "ms / text token"]
    body = [([r.backbone] if several else []) + [method_name(r), r.seeds, r.step,
                                                 *(_cell(r.cells[m]) for m in LOSS_COLUMNS), r.trainable_parameters,
                                                 *(_cell(r.cells[m], 2) for m in COST_COLUMNS)] for r in rows]
    return ["## Methods", "", "One row per configuration: mean ± 95% CI (Student t) over its seeds of val/image_loss "
            "and val/text_loss (text tokens only), read at the last step every seed reached; inference cost from "
            "`moss evaluate` runs of these runs (generation time per token, on the machine that evaluated: compare "
            "costs measured on one machine). – : not measured.", "", table(headers, body), ""]


def terminal(rows: list[MethodRow], limit: int = 12) -> str:
    lines = [f"{'method':<26} {'seeds':>5} {'image loss':>17} {'text loss':>17} {'params':>12} {'ms/img tok':>10}"]
    for r in rows[:limit]:
        ms = r.cells["cost/ms_per_image_token"]
        lines.append(f"{method_name(r)[:26]:<26} {r.seeds:>5} {_cell(r.cells['val/image_loss']):>17} "
                     f"{_cell(r.cells['val/text_loss']):>17} {r.trainable_parameters or '–':>12} "
                     f"{f'{ms.mean:.2f}' if ms else '–':>10}")
    return "\n".join(lines)
