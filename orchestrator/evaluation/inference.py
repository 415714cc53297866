"""Which model `moss generate` / `moss evaluate` run: a backbone plus an adapter from a folder or an MLflow run."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..config import ConfigError, RunConfig, load_config, validate_tree, apply_override

FINAL_ADAPTER = "adapter"  # the artifact path training logs the final adapter under (training/loop.py)


@dataclass
class AdapterSource:
    """Where the adapter came from: a local folder, or a training run in MLflow (then ``run_id``)."""

    path: str | None  # local folder holding adapter_model.safetensors + moss_config.json; None: the base model
    run_id: str | None = None
    run_name: str | None = None

    @property
    def label(self) -> str:
        if self.run_name:
            return self.run_name
        return Path(self.path).name if self.path else "base-model"


def run_config(run_id: str, uri: str, overrides: list[str]) -> RunConfig:
    """The resolved config a training run logged (config.yaml), with ``--set`` overrides on top."""
    from ..tracking.mlflow import client

    mlc = client(uri)
    try:
        with tempfile.TemporaryDirectory() as d:
            tree = yaml.safe_load(Path(mlc.download_artifacts(run_id, "config.yaml", d)).read_text())
    except Exception as e:  # noqa: BLE001 - no run, no artifact, unreachable store: one clear message
        raise ConfigError(f"cannot read config.yaml of MLflow run {run_id} at {uri}: {e}"[:500]) from None
    for assignment in overrides:
        apply_override(tree, assignment)
    return validate_tree(tree, f"run {run_id} config.yaml")


def resolve(config_path: str | None, overrides: list[str], adapter: str | None, run_id: str | None,
            workdir: Path) -> tuple[RunConfig, AdapterSource]:
    """The run config and a local adapter folder, downloading the adapter of ``run_id`` into ``workdir``.

    With ``run_id`` and no config file, the run's own config is used (backbone, shards, loss weights).
    """
    from ..tracking.mlflow import client, tracking_uri

    if adapter and run_id:
        raise ConfigError("give --adapter or --run, not both")
    if run_id is None:
        cfg = load_config(config_path, overrides)
        if adapter is not None and "://" not in adapter and not Path(adapter).is_dir():
            raise ConfigError(f"--adapter {adapter!r} is not a folder (expected what save_adapter writes)")
        if adapter is not None and "://" in adapter:
            import mlflow.artifacts

            uri = tracking_uri(cfg.tracking.tracking_uri)
            adapter = mlflow.artifacts.download_artifacts(artifact_uri=adapter, dst_path=str(workdir), tracking_uri=uri)
        return cfg, AdapterSource(adapter)
    given = load_config(config_path, overrides)  # where the run is tracked: this config / --set, else the env
    uri = tracking_uri(given.tracking.tracking_uri)
    cfg = given if config_path else run_config(run_id, uri, overrides)
    mlc = client(uri)
    run = mlc.get_run(run_id)
    if not any(f.path == f"{FINAL_ADAPTER}/moss_config.json" for f in mlc.list_artifacts(run_id, FINAL_ADAPTER)):
        raise ConfigError(f"MLflow run {run_id} has no final adapter (artifact {FINAL_ADAPTER}/): did it finish?")
    path = mlc.download_artifacts(run_id, FINAL_ADAPTER, str(workdir))
    return cfg, AdapterSource(path, run_id, run.data.tags.get("moss.run_name", run.info.run_name))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(cfg: RunConfig, source: AdapterSource):
    """(model in eval mode on the best device, spec); the adapter is checked tensor by tensor."""
    from ..backbones import get_backbone
    from ..moss import AdapterLoadError, load_adapter

    spec = get_backbone(cfg.backbone.name, checkpoint=cfg.backbone.checkpoint)
    dev = device()
    base = spec.build(seed=cfg.backbone.seed, dtype=torch.bfloat16 if dev.type == "cuda" else None)
    if source.path is None:
        model = base
    else:
        try:
            model = load_adapter(base, source.path, spec)
        except (AdapterLoadError, FileNotFoundError) as e:
            raise ConfigError(f"adapter {source.path}: {e}") from None
    return model.to(dev).eval(), spec
