"""Compare trained adapters from MLflow: a sweep's child runs, or every training run of an experiment.

Tables sorted by a metric, the best run per variant, each variant's gap to plain LoRA at the same
rank (with trainable parameters beside every score, for parameter-controlled comparisons), plots
(plots.py) and a markdown report, written to a folder and logged to the sweep's parent run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..moss.variants import REFERENCE, find_variant, label_of
from . import mlflow as tracking
from . import tags as TAG
from .seeds import group_rows, identity, markdown_sections, paired_to_lora, reference_rank, value_at
from .table import COST_COLUMNS, LOSS_COLUMNS, method_rows
from .table import markdown_section as methods_section
from .table import terminal as methods_terminal

REPORT_ARTIFACTS = "report"


@dataclass
class Row:
    run_id: str
    run_name: str
    status: str
    backbone: str
    variant: str
    label: str  # the variant's report label (moss/full, moss/lowrank count as two)
    rank: int | None
    kernel_size: int | None  # moss only
    conv_space: str | None  # moss only
    lr: float | None
    trainable_parameters: int | None
    value: float | None  # the metric's last logged value
    step: int | None  # the step it was logged at
    sampled: dict = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)
    seed: int | None = None  # train.seed: runs differing only in it are one configuration (seeds.py)
    budget: int | None = None  # train.max_steps
    settings: dict = field(default_factory=dict)  # the params that make a configuration (seeds.IDENTITY)
    experiment_id: str = ""
    curves: dict = field(default_factory=dict)  # the method table's loss columns (table.LOSS_COLUMNS) -> history


def _int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def search_all(mlc, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = mlc.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def latest_sweep(mlc, experiment: str):
    exp = mlc.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = mlc.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG.KIND}` = 'sweep'",
                           order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def to_row(mlc, run, metric: str) -> Row:
    p, tags = run.data.params, run.data.tags
    variant = p.get("adapter.variant", tags.get(TAG.VARIANT, "?"))
    known = find_variant(variant)
    conv = known is not None and known.uses_conv
    history = metric_history(mlc, run.info.run_id, metric)
    curves = {m: history if m == metric else metric_history(mlc, run.info.run_id, m) for m in LOSS_COLUMNS}
    status = tags.get(TAG.STATUS) or run.info.status.lower()
    return Row(
        run_id=run.info.run_id, run_name=tags.get(TAG.MLFLOW_RUN_NAME, run.info.run_name), status=status,
        backbone=p.get("backbone.name", tags.get(TAG.BACKBONE, "?")), variant=variant,
        label=label_of(variant, p.get("adapter.conv_space")) + _activation(p.get("adapter.conv_activation")),
        rank=_int(p.get("adapter.rank")), kernel_size=_int(p.get("adapter.kernel_size")) if conv else None,
        conv_space=p.get("adapter.conv_space") if conv else None, lr=_float(p.get("train.lr")),
        trainable_parameters=_int(p.get("trainable_parameters")), value=run.data.metrics.get(metric),
        step=history[-1][0] if history else None, sampled=json.loads(tags.get(TAG.SAMPLED, "{}")),
        curve=history, seed=_int(p.get("train.seed")), budget=_int(p.get("train.max_steps")), settings=identity(p),
        curves=curves, experiment_id=run.info.experiment_id)


def metric_history(mlc, run_id: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) in step order; a resumed run logs some steps twice: the later value is kept."""
    latest: dict[int, tuple[int, float]] = {}
    for m in mlc.get_metric_history(run_id, metric):
        if m.step not in latest or m.timestamp >= latest[m.step][0]:
            latest[m.step] = (m.timestamp, m.value)
    return sorted((step, v) for step, (_, v) in latest.items())


def evaluation_costs(mlc, experiment_ids: list[str], runs: list) -> dict[str, dict]:
    """Run id -> the cost metrics of its latest `moss evaluate` (a linked evaluation run, or the run's own
    metrics when it was evaluated --into-run)."""
    ids = {r.info.run_id for r in runs}
    costs = {r.info.run_id: {k: v for k, v in r.data.metrics.items() if k in COST_COLUMNS} for r in runs}
    evals = search_all(mlc, experiment_ids, f"tags.`{TAG.KIND}` = 'evaluation'")
    for e in sorted(evals, key=lambda e: e.info.start_time or 0):  # the latest evaluation wins
        source = e.data.tags.get(TAG.SOURCE_RUN)
        found = {k: v for k, v in e.data.metrics.items() if k in COST_COLUMNS}
        if source in ids and found:
            costs[source] = found
    return {k: v for k, v in costs.items() if v}


def ui_url(uri: str) -> str | None:
    """The MLflow UI's address for a tracking server URI (credentials removed), None for a local store."""
    from urllib.parse import urlparse

    parts = urlparse(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # IPv6
    netloc = host + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc, query="", fragment="").geturl().rstrip("/")  # no user, password, query


def _activation(name: str | None) -> str:
    """A low-rank conv with an activation is another method: moss/lowrank+gelu."""
    return f"+{name}" if name not in (None, "none") else ""


def sort_key(mode: str):
    sign = 1 if mode == "min" else -1
    return lambda r: (r.value is None or math.isnan(r.value), sign * (r.value or 0.0))


@dataclass
class Comparison:
    metric: str
    mode: str
    source: str  # what was compared (a sweep parent run, or an experiment)
    rows: list[Row]
    parent_run_id: str | None = None
    costs: dict = field(default_factory=dict)  # run id -> cost metrics of its evaluation (evaluation_costs)

    def best_per_variant(self) -> list[Row]:
        best: dict[tuple, Row] = {}
        for r in self.rows:  # rows are sorted: the first of each group is its best
            if r.value is not None:
                best.setdefault((r.backbone, r.label), r)
        return list(best.values())

    def lora_gaps(self) -> list[dict]:
        """Each non-LoRA run's metric minus the best LoRA run's at the same backbone and rank, both read
        at the last step the two runs share (a run stopped early is compared at the step it reached)."""
        lora: dict[tuple, Row] = {}
        for r in self.rows:
            if r.variant == REFERENCE and r.value is not None:
                lora.setdefault((r.backbone, r.rank), r)
        gaps = []
        for r in self.rows:
            base = lora.get((r.backbone, reference_rank(r)))  # equal-parameter runs: the LoRA rank they matched
            if r.variant == REFERENCE or base is None or r.value is None:
                continue
            step = min(r.step, base.step)
            mine, theirs = value_at(r, step), value_at(base, step)
            if mine is None or theirs is None:
                continue
            gaps.append({"run_name": r.run_name, "backbone": r.backbone, "label": r.label, "rank": r.rank,
                         "kernel_size": r.kernel_size, "step": step, "value": mine, "lora_value": theirs,
                         "gap": mine - theirs, "gap_pct": 100 * (mine - theirs) / abs(theirs) if theirs else None,
                         "trainable_parameters": r.trainable_parameters,
                         "lora_trainable_parameters": base.trainable_parameters,
                         "params_ratio": (r.trainable_parameters / base.trainable_parameters
                                          if r.trainable_parameters and base.trainable_parameters else None)})
        return gaps

    def groups(self):
        """Configurations over seeds, best mean first (seeds.Group)."""
        return group_rows(self.rows, self.mode)

    def methods(self):
        """The lead table: one row per configuration (table.MethodRow)."""
        return method_rows(self.groups(), self.costs)

    def to_json(self) -> dict:
        groups = self.groups()
        return {"metric": self.metric, "mode": self.mode, "source": self.source, "parent_run_id": self.parent_run_id,
                "methods": [m.to_json() for m in self.methods()],
                "rows": [{k: v for k, v in asdict(r).items() if k not in ("curve", "curves")} for r in self.rows],
                "best_per_variant": [r.run_name for r in self.best_per_variant()], "lora_gaps": self.lora_gaps(),
                "groups": [g.to_json() for g in groups], "paired_to_lora": paired_to_lora(groups)}


def collect(uri: str, parent_run_id: str | None = None, experiment: str | None = None, metric: str | None = None,
            mode: str | None = None) -> Comparison:
    """The runs to compare: a sweep's children (default: the latest sweep of ``experiment``), or, with
    ``experiment`` and no sweep in it, every training run of the experiment."""
    mlc = tracking.client(uri)
    parent = mlc.get_run(parent_run_id) if parent_run_id else latest_sweep(mlc, experiment or "moss")
    if parent is not None:
        exp_ids = [parent.info.experiment_id]
        runs = search_all(mlc, exp_ids, f"tags.`{TAG.PARENT}` = '{parent.info.run_id}'")
        source = f"sweep {parent.data.tags.get(TAG.SWEEP, parent.info.run_name)!r} (parent run {parent.info.run_id})"
        metric = metric or parent.data.tags.get(TAG.METRIC, "val/loss")
        mode = mode or parent.data.tags.get(TAG.MODE, "min")
    else:
        exp = mlc.get_experiment_by_name(experiment or "moss")
        if exp is None:
            raise LookupError(f"no MLflow experiment {experiment or 'moss'!r} at {tracking.redact_text(uri)}")
        runs = [r for r in search_all(mlc, [exp.experiment_id], f"tags.`{TAG.RUN_NAME}` != ''")
                if r.data.tags.get(TAG.KIND) != "sweep"]
        source, parent = f"experiment {exp.name!r}", None
        metric, mode = metric or "val/loss", mode or "min"
    if not runs:
        raise LookupError(f"no runs to compare in {source}")
    rows = sorted((to_row(mlc, r, metric) for r in runs), key=sort_key(mode))
    exp_ids = sorted({r.info.experiment_id for r in runs})
    return Comparison(metric, mode, source, rows, parent.info.run_id if parent is not None else None,
                      evaluation_costs(mlc, exp_ids, runs))


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 else f"{v:.{digits}f}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    if isinstance(v, Link):
        return v.text
    return str(v)


class Link(NamedTuple):
    """A table cell that links somewhere (the HTML report renders the link; markdown the text)."""

    text: str
    href: str


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(c).replace("\n", " ").replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run_cell(r: Row, ui: str | None):
    """A run's name, linked to its page in the MLflow UI at ``ui`` (a tracking server's http(s) URL)."""
    if not ui or not r.experiment_id:
        return r.run_name
    return Link(r.run_name, f"{ui.rstrip('/')}/#/experiments/{r.experiment_id}/runs/{r.run_id}")


def trials_table(c: Comparison, table=md_table, ui: str | None = None) -> str:
    headers = ["#", "run", "backbone", "variant", "rank", "kernel", "lr", "trainable params", c.metric, "at step",
               "status"]
    return table(headers, [[i + 1, run_cell(r, ui), r.backbone, r.label, r.rank, r.kernel_size, r.lr,
                            r.trainable_parameters, r.value, r.step, r.status] for i, r in enumerate(c.rows)])


def markdown(c: Comparison, plots: dict[str, str], table=md_table, ui: str | None = None) -> str:
    """The report (``table``: how a table is written, md_table or html.html_table; ``ui``: the MLflow UI to
    link runs to)."""
    counts: dict[str, int] = {}
    for r in c.rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    better = "lower" if c.mode == "min" else "higher"
    parts = [f"# MoSS comparison: {c.source}", "",
             f"{len(c.rows)} runs ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}), ranked by "
             f"**{c.metric}** ({better} is better). A run stopped early by the scheduler shows its last value, "
             "at the step it reached.", ""]
    parts += methods_section(c.methods(), table)
    parts += ["## All runs", "", trials_table(c, table, ui), ""]
    groups = c.groups()
    parts += markdown_sections(groups, paired_to_lora(groups), c.metric, c.mode, table)
    parts += ["## Best per variant", "",
             table(["backbone", "variant", "rank", "kernel", "trainable params", c.metric, "run"],
                      [[r.backbone, r.label, r.rank, r.kernel_size, r.trainable_parameters, r.value, run_cell(r, ui)]
                       for r in c.best_per_variant()]), ""]
    gaps = c.lora_gaps()
    parts += ["## Gap to LoRA at equal rank", "",
              f"Each run minus the best plain-LoRA run of the same backbone and rank (an equal-parameter run: the rank it was "
              f"matched to; {'negative' if c.mode == 'min' else 'positive'} "
              "= better than LoRA), both read at the last step the two runs share, with trainable parameters "
              "as a multiple of that LoRA's.", ""]
    parts.append(table(["backbone", "variant", "rank", "kernel", "at step", c.metric, "LoRA", "gap", "gap %",
                           "params × LoRA"],
                          [[g["backbone"], g["label"], g["rank"], g["kernel_size"], g["step"], g["value"],
                            g["lora_value"], g["gap"], g["gap_pct"], g["params_ratio"]] for g in gaps])
                 if gaps else "No LoRA run at a matching rank.")
    parts += ["", "## Plots", ""]
    parts += [f"![{title}]({name})" for title, name in plots.items()]
    return "\n".join(parts) + "\n"


def build_report(uri: str, parent_run_id: str | None = None, experiment: str | None = None, metric: str | None = None,
                 mode: str | None = None, out_dir: str | Path = "report") -> dict:
    """Collect, write report.md, report.html, results.json and PNG plots into ``out_dir``, log them to the
    parent run."""
    from .html import write_html
    from .plots import write_plots

    c = collect(uri, parent_run_id=parent_run_id, experiment=experiment, metric=metric, mode=mode)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(c, out)
    (out / "report.md").write_text(markdown(c, plots))
    (out / "results.json").write_text(json.dumps(c.to_json(), indent=2, default=str))
    html = write_html(c, plots, out, ui_url(uri))
    if c.parent_run_id is not None:
        tracking.client(uri).log_artifacts(c.parent_run_id, str(out), REPORT_ARTIFACTS)
    best = c.rows[0] if c.rows and c.rows[0].value is not None else None
    return {"dir": str(out), "markdown": str(out / "report.md"), "json": str(out / "results.json"), "html": str(html),
            "plots": [str(out / p) for p in plots.values()], "comparison": c, "best": best,
            "table_text": (methods_terminal(c.methods()) + "\n\n" if any(g.interval.n > 1 for g in c.groups()) else "")
            + terminal_table(c)}


def terminal_table(c: Comparison, limit: int = 12) -> str:
    w = max([3, *(len(r.run_name) for r in c.rows[:limit])])  # full names: they are what `moss generate --run` needs
    lines = [f"{'run':<{w}} {'variant':<13} {'rank':>4} {'k':>2} {'params':>10} {c.metric:>14} {'step':>5} status"]
    for r in c.rows[:limit]:
        lines.append(f"{r.run_name:<{w}} {r.label:<13} {_fmt(r.rank):>4} {_fmt(r.kernel_size):>2} "
                     f"{_fmt(r.trainable_parameters):>10} {_fmt(r.value):>14} {_fmt(r.step):>5} {r.status}")
    if len(c.rows) > limit:
        lines.append(f"... {len(c.rows) - limit} more in the report")
    return "\n".join(lines)
