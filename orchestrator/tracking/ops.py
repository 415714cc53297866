"""The writes a Tracker sends, as small JSON-able dicts, and ``apply``: one write to MLflow, live or replayed.

An op names its run by id, or, for a sweep's child run that may not exist yet, by
{"experiment", "name", "tags"}: the run tagged with that name, created with those tags when there is none.
Metrics keep their step and original time, ``terminate`` its end time: a replay records what happened
when it happened, and sending an op twice (an answer lost with its connection) changes nothing, since
MLflow's SQL store keeps one row of identical metric values and params and tags are set to the same value.
"""

from __future__ import annotations

import time

from .mlflow import ensure_experiment, find_run, log_params_once

RunRef = str | dict
WITH_FILES = ("artifacts", "model")  # ops that carry a local folder (``dir``)


def now_ms() -> int:
    return int(time.time() * 1000)


def metrics(run: RunRef, values: dict[str, float], step: int) -> dict:
    t = now_ms()
    return {"kind": "metrics", "run": run, "metrics": [[k, float(v), t, int(step)] for k, v in values.items()]}


def params(run: RunRef, values: dict[str, str]) -> dict:
    """New params; on a relaunch a changed value becomes a tag (log_params_once)."""
    return {"kind": "params", "run": run, "params": dict(values)}


def tags(run: RunRef, values: dict[str, str]) -> dict:
    return {"kind": "tags", "run": run, "tags": dict(values)}


def text(run: RunRef, body: str, path: str) -> dict:
    return {"kind": "text", "run": run, "text": body, "path": path}


def artifacts(run: RunRef, directory: str, path: str) -> dict:
    """A local folder's files under ``path``; ``dir`` is replaced by the journal's copy once journaled."""
    return {"kind": "artifacts", "run": run, "dir": directory, "path": path}


def model(run: RunRef, directory: str, name: str, params: dict[str, str], tags: dict[str, str], step: int) -> dict:
    """The run's LoggedModel ``name`` made from the model folder ``directory`` at training step ``step``
    (models.log_logged_model); ``dir`` is replaced by the journal's copy once journaled, like an
    ``artifacts`` op's."""
    return {"kind": "model", "run": run, "dir": directory, "name": name, "params": dict(params), "tags": dict(tags),
            "step": int(step)}


def dataset(run: RunRef, name: str, digest: str, source_type: str, source: str, schema: str, profile: str,
            context: str) -> dict:
    """An MLflow dataset input of the run (what it trained on); logging it twice records it once."""
    return {"kind": "dataset", "run": run, "name": name, "digest": digest, "source_type": source_type,
            "source": source, "schema": schema, "profile": profile, "context": context}


def terminate(run: RunRef, status: str, only_if_running: bool = False) -> dict:
    """End the run; ``only_if_running``: unless something else ended it (a sweep's early stop)."""
    return {"kind": "terminate", "run": run, "status": status, "only_if_running": only_if_running,
            "end_time": now_ms()}


def resolve(mlc, uri: str, run: RunRef, runs: dict) -> str:
    """The run id of ``run``; ``runs`` caches named runs found or created."""
    if isinstance(run, str):
        return run
    key = (uri, run["experiment"], run["name"])
    if key not in runs:
        exp_id = ensure_experiment(mlc, run["experiment"], uri)
        found = find_run(mlc, exp_id, run["name"])
        runs[key] = (found.info.run_id if found is not None else
                     mlc.create_run(exp_id, run_name=run["name"], tags=run["tags"]).info.run_id)
    return runs[key]


def apply(mlc, uri: str, op: dict, runs: dict) -> None:
    """Send ``op`` (an ``artifacts`` op's files from ``op["dir"]``); raises what MLflow raises."""
    from mlflow.entities import Metric, RunTag

    run_id = resolve(mlc, uri, op["run"], runs)
    kind = op["kind"]
    if kind == "metrics":
        mlc.log_batch(run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in op["metrics"]])
    elif kind == "params":
        log_params_once(mlc, run_id, op["params"])
    elif kind == "tags":
        mlc.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
    elif kind == "text":
        mlc.log_text(run_id, op["text"], op["path"])
    elif kind == "artifacts":
        mlc.log_artifacts(run_id, op["dir"], op["path"])
    elif kind == "model":
        from .models import log_logged_model

        log_logged_model(mlc, uri, run_id, op)
    elif kind == "dataset":
        from mlflow.entities import Dataset, DatasetInput, InputTag

        data = Dataset(op["name"], op["digest"], op["source_type"], op["source"], op["schema"], op["profile"])
        mlc.log_inputs(run_id, datasets=[DatasetInput(data, [InputTag("mlflow.data.context", op["context"])])])
    elif kind == "terminate":
        if op["only_if_running"] and mlc.get_run(run_id).info.status != "RUNNING":
            return
        mlc.set_terminated(run_id, status=op["status"], end_time=op["end_time"])
    else:
        raise ValueError(f"unknown tracking op {kind!r}")
