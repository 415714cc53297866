"""The sweep's progress on the terminal while the console is quiet (console.py): a trial table redrawn in
place on a terminal, else one line per trial event (started, finished, stopped early, failed, retrying).
Tune's own tables go to the log file."""

from __future__ import annotations

from ray.tune import Callback

from .. import console
from .trial import trial_run_name


def flat(tree: dict, prefix: str = "") -> dict:
    """Tune's evaluated params ({"grid": {"adapter.variant": "lora"}} for a grid) -> dotted keys."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v)


class TrialProgress(Callback):
    def __init__(self, sweep: str, metric: str, total: int, max_t: int | None = None):
        self.sweep, self.metric, self.total, self.max_t = sweep, metric, total, max_t  # max_t: as ChildRunStatus
        self.rows: dict[str, dict] = {}  # trial id -> name, what it samples, status, step, metric value
        self._live = None

    def _row(self, trial) -> dict:
        if trial.trial_id not in self.rows:
            sampled = {k.rpartition(".")[2]: v for k, v in flat(trial.evaluated_params or {}).items()}
            self.rows[trial.trial_id] = {"name": trial_run_name(self.sweep, trial.trial_id), "status": "pending",
                                         "sampled": " ".join(f"{k}={v}" for k, v in sampled.items()),
                                         "step": None, "value": None}
        return self.rows[trial.trial_id]

    def _event(self, trial, status: str) -> None:
        row = self._row(trial)
        row["status"] = status
        result = trial.last_result or {}
        row["step"] = result.get("step", row["step"])
        row["value"] = result.get(self.metric, row["value"])
        if not console.quiet_now():
            return
        if console.interactive():
            self._draw()
            return
        done = sum(r["status"] in ("finished", "stopped early", "failed") for r in self.rows.values())
        value = f"  {self.metric} {_fmt(row['value'])} at step {row['step']}" if row["value"] is not None else ""
        console.say(f"sweep: [{done}/{self.total}] {row['name']} {status}{value}  ({row['sampled']})")

    def _draw(self) -> None:
        if self._live is None:
            self._live = console.Live()
        w = max(len(r["name"]) for r in self.rows.values())
        lines = [f"{'trial':<{w}}  {'status':<13} {'step':>5} {self.metric:>14}  sampled"]
        lines += [f"{r['name']:<{w}}  {r['status']:<13} {_fmt(r['step']):>5} {_fmt(r['value']):>14}  {r['sampled']}"
                  for r in self.rows.values()]
        self._live.draw(lines)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._event(trial, "started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row["step"], row["value"] = result.get("step", row["step"]), result.get(self.metric, row["value"])
        row["status"] = "running"
        if console.quiet_now() and console.interactive():
            self._draw()

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        step, total = result.get("step"), result.get("total_steps")
        if total and self.max_t:
            total = min(total, self.max_t)
        self._event(trial, "failed" if step is None else "finished" if total and step >= total else "stopped early")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._event(trial, "failed")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._event(trial, "retrying")
