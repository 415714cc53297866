"""The sweep driver's view of each trial's MLflow child run: its final status.

A trial that ASHA stops is killed with its actor, so the trial itself never writes its end; this Tune
callback (on the sweep driver) does: finished (every planned step), early_stopped, or failed.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune import Callback

from ..tracking import mlflow as tracking
from ..tracking.redact import redact_text
from .trial import STATUS_TAG, child_tags, find_child, trial_run_name

MLFLOW_STATUS = {"finished": "FINISHED", "early_stopped": "KILLED", "failed": "FAILED"}


class ChildRunStatus(Callback):
    def __init__(self, sweep: str, parent_run_id: str, tracking_uri: str, experiment: str, max_t: int | None = None):
        self.sweep, self.parent_run_id, self.uri, self.experiment = sweep, parent_run_id, tracking_uri, experiment
        self.max_t = max_t  # ASHA stops every trial at max_t: reaching it is finishing

    def _child(self, trial) -> str:
        """The trial's child run id; created here (failed) when the trial died before creating it."""
        mlc, exp_id, run = find_child(self.uri, self.experiment, self.sweep, trial.trial_id)
        if run is not None:
            return run.info.run_id
        name = trial_run_name(self.sweep, trial.trial_id)
        tags = {tracking.RUN_NAME_TAG: name, **child_tags(self.sweep, self.parent_run_id, trial.trial_id)}
        return mlc.create_run(exp_id, run_name=name, tags=tags).info.run_id

    def _end(self, trial, status: str, error: str | None = None) -> None:
        mlc = tracking.client(self.uri)
        run_id = self._child(trial)
        mlc.set_tag(run_id, STATUS_TAG, status)
        if error:
            mlc.log_text(run_id, redact_text(error), "error.txt")
        mlc.set_terminated(run_id, status=MLFLOW_STATUS[status])

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        step, total = result.get("step"), result.get("total_steps")
        if total and self.max_t:
            total = min(total, self.max_t)
        if step is None:
            self._end(trial, "failed", "the trial ended without reporting a result")
        else:
            self._end(trial, "finished" if total and step >= total else "early_stopped")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "failed", _error_text(trial))

    def on_trial_recover(self, iteration, trials, trial, **info):
        mlc = tracking.client(self.uri)
        run_id = self._child(trial)
        mlc.set_tag(run_id, STATUS_TAG, "retrying")
        mlc.set_tag(run_id, "moss.retries", str(trial.run_metadata.num_failures))


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        return Path(path).read_text()[-20000:] if path else "no error file"
    except OSError:
        return f"error file {path} unreadable"
