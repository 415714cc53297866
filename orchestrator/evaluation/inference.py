"""Which model `moss generate` / `moss evaluate` run: a backbone plus an adapter from a folder or an MLflow run."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..config import ConfigError, RunConfig, apply_override, load_config, validate_tree
from ..tracking import tags as TAG
from ..training.checkpoint import FINAL_ADAPTER



@dataclass
class AdapterSource:
    """Where the adapter came from: a local folder, or a training run in MLflow (then ``run_id``)."""

    path: str | None  # local folder holding adapter_model.safetensors + moss_config.json; None: the base model
    run_id: str | None = None
    run_name: str | None = None
    origin: str | None = None  # what the user named: the folder, runs:/<id>/adapter, or the run's artifact

    @property
    def label(self) -> str:
        if self.run_name:
            return self.run_name
        return Path(self.path).name if self.path else "base-model"


def run_config(mlc, run_id: str, overrides: list[str]) -> RunConfig:
    """The resolved config a training run logged (config.yaml), with ``--set`` overrides on top."""
    with tempfile.TemporaryDirectory() as d:
        tree = yaml.safe_load(Path(mlc.download_artifacts(run_id, "config.yaml", d)).read_text())
    for assignment in overrides:
        apply_override(tree, assignment)
    return validate_tree(tree, f"run {run_id} config.yaml")


def resolve(config_path: str | None, overrides: list[str], adapter: str | None, run_id: str | None,
            workdir: Path) -> tuple[RunConfig, AdapterSource]:
    """The run config and a local adapter folder, downloading the adapter of a run into ``workdir``.

    ``--run ID`` (or ``--adapter runs:/ID/adapter``): that training run's final adapter and, without a
    config file, the run's own config (backbone, shards, loss weights).
    """
    from ..tracking.mlflow import tracking_uri

    if adapter and run_id:
        raise ConfigError("give --adapter or --run, not both")
    given = load_config(config_path, overrides)
    if adapter is not None and adapter.startswith("models:/"):
        return from_model(given, config_path is not None, overrides, adapter, workdir)
    if adapter is not None and adapter.startswith("runs:/"):
        run_id, _, artifact = adapter[len("runs:/"):].partition("/")
    else:
        artifact = FINAL_ADAPTER
    if run_id is None:
        if adapter is not None and "://" not in adapter and not Path(adapter).is_dir():
            raise ConfigError(f"--adapter {adapter!r} is not a folder (expected what save_adapter writes)")
        if adapter is not None and "://" in adapter:
            import mlflow.artifacts

            try:
                path = mlflow.artifacts.download_artifacts(artifact_uri=adapter, dst_path=str(workdir),
                                                           tracking_uri=tracking_uri(given.tracking.tracking_uri))
            except Exception as e:  # noqa: BLE001 - any store / network error: one clear message, exit 2
                raise ConfigError(f"cannot download --adapter {adapter}: {e}"[:500]) from None
            return given, AdapterSource(path, origin=adapter)
        return given, AdapterSource(adapter, origin=adapter)
    from mlflow.exceptions import MlflowException

    from ..tracking.mlflow import client

    uri = tracking_uri(given.tracking.tracking_uri)  # where the run is tracked: this config / --set, else the env
    mlc = client(uri)
    try:
        run = mlc.get_run(run_id)
        cfg = given if config_path else run_config(mlc, run_id, overrides)
        listed = mlc.list_artifacts(run_id, artifact)
        if not any(f.path == f"{artifact}/moss_config.json" for f in listed):
            raise ConfigError(f"MLflow run {run_id} has no adapter under {artifact}/: did it finish?")
        path = mlc.download_artifacts(run_id, artifact, str(workdir))
    except (MlflowException, OSError) as e:
        raise ConfigError(f"cannot read MLflow run {run_id} at {uri}: {e}"[:500]) from None
    name = run.data.tags.get(TAG.RUN_NAME, run.info.run_name)
    return cfg, AdapterSource(path, run_id, name, origin=f"runs:/{run_id}/{artifact}")


def from_model(given: RunConfig, has_config: bool, overrides: list[str], uri_text: str,
               workdir: Path) -> tuple[RunConfig, AdapterSource]:
    """An adapter logged as an MLflow model (tracking/models.py): its folder and, without a config file, the
    config it was trained with (``--set`` on top)."""
    from mlflow.exceptions import MlflowException

    from ..tracking.mlflow import client, tracking_uri
    from ..tracking.models import download_model, parse_model_uri
    from ..tracking.redact import redact_text

    parts = parse_model_uri(uri_text)
    if parts is None:
        raise ConfigError(f"{uri_text!r}: expected models:/NAME/VERSION, models:/NAME@ALIAS or models:/<model id>")
    uri = tracking_uri(given.tracking.tracking_uri)
    try:
        adapter, config, run_id, label = download_model(client(uri), uri, uri_text, parts, workdir)
    except (MlflowException, LookupError, OSError) as e:
        raise ConfigError(f"cannot load {uri_text} from {redact_text(uri)}: {e}"[:500]) from None
    cfg = given
    if not has_config:
        tree = yaml.safe_load(config.read_text())
        for assignment in overrides:
            apply_override(tree, assignment)
        cfg = validate_tree(tree, f"{uri_text} config.yaml")
    return cfg, AdapterSource(str(adapter), run_id, label, origin=uri_text)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(cfg: RunConfig, source: AdapterSource):
    """(model in eval mode on the best device, spec); the adapter is checked tensor by tensor."""
    from ..backbones import backbone_from_config
    from ..moss import AdapterLoadError, load_adapter

    from ..training.metrics import use_bf16

    spec = backbone_from_config(cfg)
    dev = device()
    base = spec.build(seed=cfg.backbone.seed, dtype=torch.bfloat16 if use_bf16(cfg, dev) else None)
    if source.path is None:
        model = base
    else:
        try:
            model = load_adapter(base, source.path, spec)
        except (AdapterLoadError, FileNotFoundError) as e:
            raise ConfigError(f"adapter {source.path}: {e}") from None
    return model.to(dev).eval(), spec
