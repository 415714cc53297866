"""One MLflow run per training run: where it is tracked, what it records, and how it is found again.

The driver opens the run (params, resolved config, data manifest) and closes it (status); rank 0 of
the worker group logs metrics and the final adapter into it. Relaunching a run name finds the same run.
Opening waits for an unreachable server (tracking.startup_wait_s); every later write goes through a
Tracker (resilient.py), which never fails the run.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import yaml

from ..config import ConfigError
from .outage import PatientClient, wait_for
from .redact import redact, redact_text, redacting_client, secret_env_values
from . import tags as TAG

PACKAGES = ("torch", "transformers", "peft", "ray", "mlflow", "moss-orchestrator")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
#: environment variables recorded with each run (environment.json), secrets masked
ENV_PREFIXES = ("RAY_", "MLFLOW_", "MOSS_", "CUDA_", "NCCL_", "HF_", "TORCH_", "PYTORCH_", "AWS_", "OMP_NUM_THREADS",
                "TOKENIZERS_PARALLELISM")


def tracking_uri(configured: str | None = None) -> str:
    """The config's URI, else MLFLOW_TRACKING_URI, else sqlite:///<working dir>/mlflow.db (absolute)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"  # Ray workers run in other directories
    if urlparse(uri).scheme in ("http", "https") and not urlparse(uri).hostname:
        raise ConfigError(f"tracking URI {redact_text(uri)!r} names no host: jobs/runtime_env.yaml builds it from "
                          "MOSS_MLFLOW_ADDRESS, which cluster.yaml exports on every node; elsewhere set "
                          "MLFLOW_TRACKING_URI or tracking.tracking_uri")
    return uri


def artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store go beside the database (<dir>/mlruns); servers choose their own."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).parent / "mlruns")
    return None


def client(uri: str, wait_s: float | None = None):
    """An MlflowClient; with ``wait_s``, each call waits that long for an unreachable server."""
    mlc = redacting_client(uri)  # every write of the package passes its one redaction
    return mlc if wait_s is None else PatientClient(mlc, uri, wait_s)


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists and empty dicts as JSON, None as "null"."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            text = v if isinstance(v, str) else json.dumps(v)
            out[key] = text[:MAX_PARAM_CHARS]
    return out


def provenance() -> dict[str, str]:
    """Git commit (and whether the tree was dirty) of this package's checkout, and package versions."""
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[f"version.{pkg}"] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[f"version.{pkg}"] = "not installed"
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        ok = head.returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    out["git.commit"] = head.stdout.strip() if ok else "unknown"
    out["git.dirty"] = str(bool(dirty.stdout.strip())).lower() if ok else "unknown"
    return out


def environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The Ray / MLflow / CUDA / cloud variables this process runs with, secrets masked (tokens, passwords, keys)."""
    env = dict(os.environ if environ is None else environ)
    picked = {k: v for k, v in sorted(env.items()) if k.startswith(ENV_PREFIXES)}
    return redact(picked, secret_env_values(env))


def run_params(cfg) -> dict[str, str]:
    """Params of a run: the flattened, redacted resolved config + config hash + provenance."""
    params = flatten(redact(cfg.model_dump(mode="json")))
    params["config_hash"] = cfg.config_hash()
    params.update(provenance())
    return params


def ensure_experiment(mlc, name: str, uri: str) -> str:
    exp = mlc.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(uri)
    return mlc.create_experiment(name, artifact_location=Path(root, name).as_uri() if root else None)


def find_run(mlc, experiment_id: str, run_name: str):
    runs = mlc.search_runs([experiment_id], filter_string=f"tags.`{TAG.RUN_NAME}` = '{run_name}'", max_results=2)
    if len(runs) > 1:
        raise RuntimeError(f"MLflow has {len(runs)} runs tagged {TAG.RUN_NAME}={run_name!r}; expected at most one")
    return runs[0] if runs else None


def run_tags(cfg, run_name: str) -> dict[str, str]:
    return redact({TAG.RUN_NAME: run_name, TAG.BACKBONE: cfg.backbone.name, TAG.VARIANT: cfg.adapter.variant,
                   **cfg.tracking.tags})


def open_run(cfg, run_name: str, uri: str, run_id: str | None = None, extra_tags: dict | None = None) -> str:
    """Create the run (tagged with its name), or reopen ``run_id`` (a relaunch, or a sweep's child run);
    waits for an unreachable server for up to tracking.startup_wait_s."""
    wait_s = cfg.tracking.startup_wait_s
    mlc = client(uri, wait_s)
    if run_id is not None:
        mlc.update_run(run_id, status="RUNNING")
        return run_id
    exp_id = ensure_experiment(mlc, cfg.tracking.experiment, uri)
    return create_run(client(uri), exp_id, run_name, {**run_tags(cfg, run_name), **(extra_tags or {})}, uri, wait_s)


def create_run(mlc, experiment_id: str, run_name: str, tags: dict, uri: str, wait_s: float) -> str:
    """A new run tagged ``run_name``, waiting for an unreachable server; a retry first looks for the run
    (its creation may have gone through with the answer lost), so there is never a second one."""
    tries = []

    def create() -> str:
        if tries and (found := find_run(mlc, experiment_id, run_name)) is not None:
            return found.info.run_id
        tries.append(1)
        return mlc.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id

    return wait_for(create, f"create run {run_name!r}", uri, wait_s)


def log_run_inputs(cfg, tracker, run_id: str, resumed: bool) -> None:
    """Params (new ones; changes on a relaunch as tags) and the resolved config, all redacted, sent by
    ``tracker``; the launch count is read (waiting for the server: it names the artifacts)."""
    launches = int(client(tracker.uri, cfg.tracking.startup_wait_s).get_run(run_id).data.tags
                   .get(TAG.RELAUNCHES, "-1")) + 1
    tracker.log_params(run_id, run_params(cfg))
    tracker.set_tags(run_id, {TAG.RELAUNCHES: str(launches)})
    text = yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False)
    prefix = f"relaunch-{launches}/" if resumed else ""
    tracker.log_text(run_id, text, f"{prefix}config.yaml")
    tracker.log_text(run_id, json.dumps(environment(), indent=2), f"{prefix}environment.json")


def log_params_once(mlc, run_id: str, params: dict[str, str]) -> None:
    """Log new params; a relaunch whose value differs records it as a tag (MLflow params are immutable)."""
    from mlflow.entities import Param, RunTag

    logged = mlc.get_run(run_id).data.params
    new = [Param(k, v) for k, v in params.items() if k not in logged]
    changed = [RunTag(f"relaunch.{k}", v[:5000]) for k, v in params.items() if k in logged and logged[k] != v]
    for i in range(0, len(new), 100):  # MLflow's batch limit
        mlc.log_batch(run_id, params=new[i : i + 100])
    if changed:
        mlc.log_batch(run_id, tags=changed)


def log_manifest(tracker, run_id: str, manifest: dict, shards: str | None = None) -> None:
    """The manifest as an artifact, and the shards as the run's MLflow dataset input (context training):
    digest = a hash of the manifest's backbone + data config hash, input files, outputs and creation time (shards
    rebuilt from changed files are another dataset), profile = records and tokens per split."""
    tracker.log_text(run_id, json.dumps(redact(manifest), indent=2), "data/manifest.json")
    if shards is None:
        return
    scheme = urlparse(shards).scheme
    profile = {s: {k: manifest["tokens"][s][k] for k in ("records", "n_tokens", "n_image_tokens")}
               for s in ("train", "val") if s in manifest.get("tokens", {})}
    schema = {"columns": ["input_ids", "labels", "image_layout", "pixels"], "backbone": manifest["backbone"]["name"],
              "format_version": manifest.get("format_version")}
    import hashlib

    identity = {k: manifest.get(k) for k in ("config_hash", "inputs", "outputs", "tokens", "created")}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    tracker.log_dataset(run_id, name=f"shards/{manifest['backbone']['name']}", digest=digest,
                        source_type=scheme if scheme and len(scheme) > 1 else "local",
                        source=json.dumps({"uri": redact_text(shards)}), schema=json.dumps(schema),
                        profile=json.dumps(profile), context="training")


def run_summary(uri: str, run_id: str) -> dict:
    """Latest value of every metric, the run's status and where its artifacts are."""
    run = client(uri).get_run(run_id)
    return {"run_id": run_id, "experiment_id": run.info.experiment_id, "status": run.info.status,
            "artifact_uri": run.info.artifact_uri, "metrics": dict(run.data.metrics)}


def ui_hint(uri: str) -> str:
    if urlparse(uri).scheme in ("http", "https"):
        return f"open {redact_text(uri)}"
    return f"mlflow ui --backend-store-uri {redact_text(uri)}"
