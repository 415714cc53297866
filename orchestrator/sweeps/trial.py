"""One Tune trial = one training driver (the Train V2 pattern): it runs in the trial's actor and launches
a TorchTrainer whose rank-0 reports Tune sees through TuneReportCallback.

The trial's run name is ``<sweep>-<trial id>``, so a retried trial (or one re-run by a resumed sweep)
resumes its Train run from the latest checkpoint, and logs into the same MLflow child run.
"""

from __future__ import annotations

import json

from ..config import ConfigError, validate_tree
from ..tracking import mlflow as tracking
from ..tracking import tags as TAG
from .space import Space



def trial_run_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"


def sampled_values(config: dict) -> dict:
    """The trial's sampled params from Tune's config ({"grid": point, "sample": {...}})."""
    return {**(config.get("grid") or {}), **(config.get("sample") or {})}


def trial_config(space: Space, config: dict, run_name: str):
    """The trial's RunConfig (base + the params that apply, the trial's run name) and those params."""
    tree, applied = space.trial_tree(sampled_values(config))
    tree.setdefault("train", {})["run_name"] = run_name
    return validate_tree(tree, f"trial {run_name}"), applied


def find_child(uri: str, experiment: str, sweep: str, trial_id: str, wait_s: float | None = None):
    """(client, experiment id, the trial's child run or None), found by the trial's run name; with ``wait_s``,
    each call waits that long for an unreachable server."""
    mlc = tracking.client(uri, wait_s)
    exp_id = tracking.ensure_experiment(mlc, experiment, uri)
    return mlc, exp_id, tracking.find_run(mlc, exp_id, trial_run_name(sweep, trial_id))


def child_tags(sweep: str, parent_run_id: str, trial_id: str) -> dict[str, str]:
    return {TAG.PARENT: parent_run_id, TAG.SWEEP: sweep, TAG.TRIAL_ID: trial_id}


def ensure_child_run(cfg, run_name: str, sweep: dict, trial_id: str, applied: dict) -> str:
    """The trial's MLflow run under the sweep's parent: found by run name, else created (waiting for an
    unreachable server for up to tracking.startup_wait_s)."""
    uri = sweep["tracking_uri"]
    mlc, _, run = find_child(uri, cfg.tracking.experiment, sweep["name"], trial_id, cfg.tracking.startup_wait_s)
    if run is not None:
        if run.data.tags.get(TAG.PARENT) != sweep["parent_run_id"]:
            raise ConfigError(f"MLflow run {run.info.run_id} named {run_name!r} is not a child of sweep "
                              f"{sweep['name']!r} (parent {sweep['parent_run_id']})")
        mlc.set_tag(run.info.run_id, TAG.STATUS, "running")
        return run.info.run_id
    tags = {**child_tags(sweep["name"], sweep["parent_run_id"], trial_id),
            TAG.SAMPLED: json.dumps(applied, default=str)[:5000], TAG.STATUS: "running"}
    return tracking.open_run(cfg, run_name, uri, extra_tags=tags)


def run_trial(config: dict, sweep: dict) -> None:
    """Tune function trainable: config {"grid": point, "sample": {...}}; ``sweep``: the sweep's constants
    (name, parent run id, tracking URI, the space), bound with tune.with_parameters."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..training.driver import plan_run, run_training

    space = Space.from_state(sweep["space"])
    trial_id = ray.tune.get_context().get_trial_id()
    run_name = trial_run_name(sweep["name"], trial_id)
    cfg, applied = trial_config(space, config, run_name)
    run_id = ensure_child_run(cfg, run_name, sweep, trial_id, applied)  # first: a trial that fails has its run too
    plan = plan_run(cfg, mlflow_run_id=run_id)
    mlc = tracking.client(sweep["tracking_uri"], cfg.tracking.startup_wait_s)  # reads the trial needs to start
    child = mlc.get_run(run_id)
    final = {"step": plan.total_steps, "total_steps": plan.total_steps}
    if plan.relaunch and child.info.status == "FINISHED":
        # finished before the sweep driver died, but the sweep's state was saved before that: do not
        # train again, give Tune the final result it missed
        ray.tune.report({**child.data.metrics, **final})
        return
    trained = max((m.step for m in mlc.get_metric_history(run_id, "train/loss")), default=0)
    summary = run_training(cfg, plan, callbacks=[TuneReportCallback()])
    if plan.relaunch and trained >= plan.total_steps:  # nothing left to train: Train reported nothing
        ray.tune.report({**summary["metrics"], **final})
