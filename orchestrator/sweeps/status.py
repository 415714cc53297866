"""The sweep driver's view of each trial's MLflow child run: its final status.

A trial that ASHA stops is killed with its actor, so the trial itself never writes its end; this Tune
callback (on the sweep driver) does: finished (every planned step), early_stopped, or failed. Its writes go
through the sweep's Tracker (journal in the sweep's folder), naming the child run by its run name, so an
unreachable server never raises into Tune and a child run that does not exist yet is created when sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ray.tune import Callback

from ..config import TrackingSection
from ..tracking.journal import Journal
from ..tracking.redact import redact_text
from ..tracking.resilient import Tracker
from ..tracking import tags as TAG
from .trial import child_tags, trial_run_name

MLFLOW_STATUS = {"finished": "FINISHED", "early_stopped": "KILLED", "failed": "FAILED"}


@dataclass
class SweepTracking:
    """The sweep driver's Tracker, the trials it saw start, and those not ended (interrupted, if fit() returns)."""

    tracker: Tracker
    started: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)


#: per sweep name, set by run_sweep (the callback is pickled with Tune's state, so it holds no Tracker)
SWEEPS: dict[str, SweepTracking] = {}


class ChildRunStatus(Callback):
    def __init__(self, sweep: str, parent_run_id: str, tracking_uri: str, experiment: str, max_t: int | None = None):
        self.sweep, self.parent_run_id, self.uri, self.experiment = sweep, parent_run_id, tracking_uri, experiment
        self.max_t = max_t  # ASHA stops every trial at max_t: reaching it is finishing

    def _tracking(self, trial) -> SweepTracking:
        """run_sweep's; else (a Tuner fitted directly) one journaling in the sweep's folder, default settings."""
        if self.sweep not in SWEEPS:
            journal = Journal.on(trial.storage.storage_filesystem, trial.storage.experiment_fs_path)
            settings = TrackingSection()
            SWEEPS[self.sweep] = SweepTracking(Tracker(self.uri, journal, settings.retry_every_s,
                                                       settings.flush_timeout_s))
        return SWEEPS[self.sweep]

    def child(self, trial_id: str) -> dict:
        return child_run(self.sweep, self.parent_run_id, self.experiment, trial_id)

    def _end(self, trial, status: str, error: str | None = None, tags: dict[str, str] | None = None) -> None:
        sweep = self._tracking(trial)
        sweep.running.discard(trial.trial_id)
        run = self.child(trial.trial_id)
        sweep.tracker.set_tags(run, {TAG.STATUS: status, **(tags or {})})
        if error:
            sweep.tracker.log_text(run, redact_text(error), "error.txt")
        sweep.tracker.terminate(run, MLFLOW_STATUS[status])

    def on_trial_start(self, iteration, trials, trial, **info):
        sweep = self._tracking(trial)
        sweep.started.add(trial.trial_id)
        sweep.running.add(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        step, total = result.get("step"), result.get("total_steps")
        if total and self.max_t:
            total = min(total, self.max_t)
        if step is None:
            self._end(trial, "failed", "the trial ended without reporting a result")
        elif total and step >= total:
            self._end(trial, "finished")
        else:  # the Train workers report asynchronously: the run may hold steps past this one, run before the stop
            self._end(trial, "early_stopped", tags={TAG.STOPPED_AT: str(int(step))})

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "failed", _error_text(trial))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._tracking(trial).tracker.set_tags(self.child(trial.trial_id), {
            TAG.STATUS: "retrying", TAG.RETRIES: str(trial.run_metadata.num_failures)})


def child_run(sweep: str, parent_run_id: str, experiment: str, trial_id: str) -> dict:
    """A trial's child run named for a Tracker (ops.py); created when sent if the trial died before creating it."""
    name = trial_run_name(sweep, trial_id)
    return {"experiment": experiment, "name": name,
            "tags": {TAG.RUN_NAME: name, **child_tags(sweep, parent_run_id, trial_id)}}


def send_trial_journals(storage: str, sweep: str, trial_ids, tracking_uri: str) -> list[str]:
    """Send what trials left in their run folders' journals (a trial stopped by ASHA dies with its actor,
    its rank 0 with it, whatever MLflow's state); -> the folders still holding some: MLflow is unreachable."""
    from ..tracking.outage import Unreachable, say
    from ..tracking.replay import replay

    left = []
    for trial_id in sorted(trial_ids):
        run_dir = f"{storage.rstrip('/')}/{trial_run_name(sweep, trial_id)}"
        try:
            for line in replay(run_dir, tracking_uri).rejected:
                say(f"refused by the server, set aside: {line}")
        except Unreachable:
            left.append(run_dir)
    return left


def settle_statuses(tracking_uri: str, parent_run_id: str) -> int:
    """Give each child run the MLflow status its ``moss.status`` tag (this callback's word) maps to; -> how many
    changed. A trial's own driver also ends its run (FAILED, only if still running, when Tune stops it right after
    its last report), and that check-then-set on the server can interleave with this callback's end, leaving a
    finished trial FAILED. Called once every writer is done (all trials ended, their journals sent)."""
    from ..tracking.compare import search_all
    from ..tracking.mlflow import client

    mlc = client(tracking_uri)
    parent = mlc.get_run(parent_run_id)
    changed = 0
    for run in search_all(mlc, [parent.info.experiment_id], f"tags.`{TAG.PARENT}` = '{parent_run_id}'"):
        want = MLFLOW_STATUS.get(run.data.tags.get(TAG.STATUS, ""))
        if want and run.info.status != want:
            mlc.set_terminated(run.info.run_id, status=want, end_time=run.info.end_time)
            changed += 1
    return changed


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        return Path(path).read_text()[-20000:] if path else "no error file"
    except OSError:
        return f"error file {path} unreadable"
