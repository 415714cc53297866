"""Adapters as MLflow models: each training run's final adapter becomes a LoggedModel, a sweep's best one a
registered model version, and ``models:/`` URIs name them to `moss generate` / `moss evaluate`.

The model folder is an ``mlflow.pyfunc`` model: the adapter folder and the run's resolved config (the base
checkpoint is named there and in the model's params, by id + revision, never copied). Loading it rebuilds
base + adapter (evaluation.inference.load_model), and ``predict`` generates an answer per prompt. Logging
goes through the run's Tracker (ops.model), so it is journaled through an outage like every other write;
sending it twice finds the model made the first time.
"""

from __future__ import annotations

import importlib.metadata
import re
import tempfile
from pathlib import Path

import mlflow.pyfunc
import yaml

from . import tags as TAG

#: the LoggedModel's name within its run; not "adapter": MLflow 3 resolves runs:/<run>/<name> to the run's model
#: of that name (and looks it up in the process's default store), so the artifact path adapter/ must differ
MODEL_NAME = "moss-adapter"
MODEL_TYPE = "moss-adapter"
PINNED = ("torch", "transformers", "peft", "moss-orchestrator")
#: registered model version tags (`moss compare --register`)
REG_SWEEP, REG_METRIC, REG_VALUE, REG_CONFIG = "moss.sweep", "moss.metric", "moss.value", "moss.config_hash"
REG_MODEL = "moss.model_id"  # the LoggedModel a version was made from (a sqlite registry keeps no model_id)


class MossAdapterModel(mlflow.pyfunc.PythonModel):
    """The pyfunc flavour: load_context builds base + adapter; predict generates one answer per prompt
    (``<image>`` placeholders are not filled: text prompts) with the config's ``generate:`` settings."""

    def load_context(self, context) -> None:
        import warnings

        from ..config import validate_tree
        from ..evaluation.generate import Generator, SamplingConfig
        from ..evaluation.inference import AdapterSource, load_model

        # PEFT calls transformers' deprecated is_gradient_checkpointing on every wrap (as in cli.main)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        cfg = validate_tree(yaml.safe_load(Path(context.artifacts["config"]).read_text()), "model config.yaml")
        model, spec = load_model(cfg, AdapterSource(context.artifacts["adapter"]))
        self._generator, self._sampling = Generator(model, spec), SamplingConfig.from_section(cfg.generate)
        self._batch = cfg.evaluate.batch_size

    def predict(self, context, model_input: list[str], params=None) -> list[dict[str, str]]:
        """``model_input``: prompts -> [{"text", "stop", "images": "HxW,HxW" (the generated images' grids)}]."""
        answers = dict(self._generator.generate_many([([p], self._sampling) for p in model_input], self._batch))
        out = []
        for i in range(len(model_input)):
            if isinstance(answers[i], Exception):
                raise answers[i]
            out.append({"text": answers[i].text, "stop": answers[i].stop,
                        "images": ",".join(f"{p.size[0]}x{p.size[1]}" for p in answers[i].images)})
        return out


def base_reference(cfg) -> dict[str, str]:
    """The base model by reference: what rebuilds it (no weights are copied into the model)."""
    b = cfg.backbone
    return {"base.backbone": b.name, "base.checkpoint": b.checkpoint, "base.revision": b.revision or "default branch",
            "base.seed": str(b.seed), "adapter.variant": cfg.adapter.variant, "adapter.rank": str(cfg.adapter.rank),
            "config_hash": cfg.config_hash()}


def requirements() -> list[str]:
    out = []
    for pkg in PINNED:
        try:
            out.append(f"{pkg}=={importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(pkg)
    return out


def save_model_dir(adapter_dir: str | Path, config_tree: dict, dst: str | Path) -> Path:
    """The pyfunc model folder for ``adapter_dir`` trained under the config ``config_tree`` (a resolved
    config's dump, redacted where the secrets are known: the driver; redacted here again)."""
    from .redact import redact

    dst = Path(dst)
    config = dst / "config.yaml"
    dst.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(redact(config_tree), sort_keys=False))
    path = dst / "model"
    mlflow.pyfunc.save_model(str(path), python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                             artifacts={"adapter": str(adapter_dir), "config": str(config)},
                             pip_requirements=requirements())
    return path


def ready(model) -> bool:
    """A LoggedModel whose files are all there (finalized READY); None is not."""
    return model is not None and str(model.status).endswith("READY")


def find_logged_model(mlc, experiment_id: str, run_id: str, name: str = MODEL_NAME):
    """The run's LoggedModel called ``name`` (the newest, should a lost answer have made two), else None."""
    found = list(mlc.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}' AND "
                                          f"name = '{name}'", order_by=[{"field_name": "creation_timestamp",
                                                                         "ascending": False}]))
    return ([m for m in found if ready(m)] or found or [None])[0]


def log_logged_model(mlc, uri: str, run_id: str, op: dict) -> str:
    """ops.model's write: the LoggedModel of ``run_id`` (found, or created), its files, the run's latest metrics
    (not the system ones) linked to it, the run's output at the op's step, READY. -> its model id.

    Sent twice, it changes nothing on a SQL store (sqlite, or a server on one), which keeps one row per
    identical metric; a file store would keep a second row, so there the metrics are not linked."""
    from urllib.parse import urlparse

    from mlflow.entities import LoggedModelOutput, Metric

    run = mlc.get_run(run_id)
    exp = run.info.experiment_id
    model = find_logged_model(mlc, exp, run_id, op["name"])
    if model is None:
        model = mlc.create_logged_model(exp, op["name"], source_run_id=run_id, tags=op["tags"], params=op["params"],
                                        model_type=MODEL_TYPE)
    finished = ready(model)
    if not finished:
        mlc.log_model_artifacts(model.model_id, op["dir"])
    dataset = next(iter(run.inputs.dataset_inputs), None) if run.inputs else None
    latest = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model.model_id,
                     dataset_name=dataset.dataset.name if dataset else None,
                     dataset_digest=dataset.dataset.digest if dataset else None) for m in run.data._metric_objs
              if not m.key.startswith("system/")]
    if urlparse(uri).scheme not in ("", "file"):
        for i in range(0, len(latest), 1000):
            mlc.log_batch(run_id, metrics=latest[i : i + 1000])
    if not any(o.model_id == model.model_id for o in (run.outputs.model_outputs if run.outputs else [])):
        mlc.log_outputs(run_id, [LoggedModelOutput(model.model_id, op.get("step", 0))])
    if not finished:
        mlc.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def register(mlc, run, name: str, tags: dict[str, str]):
    """Register ``run``'s adapter model as a new version of ``name`` (created when new), unless a version
    of ``name`` holds it already -> the ModelVersion."""
    from mlflow.exceptions import MlflowException

    model = find_logged_model(mlc, run.info.experiment_id, run.info.run_id)
    if not ready(model):
        raise LookupError(f"run {run.info.run_id} ({run.data.tags.get(TAG.RUN_NAME, run.info.run_name)}) has no "
                          "finished adapter model: it did not finish, or was trained before adapters were logged "
                          "as models")
    done = mlc.search_model_versions(f"name = '{name}' AND tags.`{REG_MODEL}` = '{model.model_id}'")
    if done:  # registered already (compare --register run again): that version
        return done[0]
    try:
        mlc.create_registered_model(name, description="MoSS adapters (moss compare --register)")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # the model's storage location, not models:/<id>: a sqlite registry would look that up in the process's
    # default tracking store rather than this client's (MLflow's own TODO in create_model_version)
    return mlc.create_model_version(name, source=model.artifact_location, run_id=run.info.run_id,
                                    tags={**tags, REG_MODEL: model.model_id}, model_id=model.model_id)


MODEL_NAME_BAD = re.compile(r"[/@:%\s]|^$")  # what a models:/ URI could not name
MODEL_URI = re.compile(r"^models:/(?:(?P<id>m-[0-9a-f]+)|(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w\-]+)))$")


def parse_model_uri(uri: str) -> dict | None:
    """``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``models:/<model id>`` -> its parts, else None."""
    m = MODEL_URI.match(uri)
    return None if m is None else {k: v for k, v in m.groupdict().items() if v is not None}


def download_model(mlc, uri: str, name: str, parts: dict, workdir: Path) -> tuple[Path, Path, str | None, str | None]:
    """(adapter folder, config.yaml, source run id, a label) of the model ``name`` (a models:/ URI, ``parts``
    parsed) tracked at ``uri``, downloaded into ``workdir``."""
    if "id" in parts:
        model_id = parts["id"]
    else:
        mv = (mlc.get_model_version(parts["name"], parts["version"]) if "version" in parts
              else mlc.get_model_version_by_alias(parts["name"], parts["alias"]))
        model_id = mv.model_id or mv.tags.get(REG_MODEL)
        if not model_id:
            raise LookupError(f"{name} was not registered from a LoggedModel (no model id): register it with "
                              "`moss compare --register`")
    model = mlc.get_logged_model(model_id)
    if model.model_type != MODEL_TYPE:
        raise LookupError(f"{name} is a {model.model_type or 'untyped'} model, not a MoSS adapter ({MODEL_TYPE})")
    local = Path(tempfile.mkdtemp(dir=workdir, prefix="model-"))
    import mlflow.artifacts

    # its storage location, not models:/<id>, which MLflow resolves in the process's default tracking store
    path = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=str(local),
                                                    tracking_uri=uri))
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    arts = mlmodel["flavors"]["python_function"]["artifacts"]
    label = (f"{parts['name']}-v{parts['version']}" if "version" in parts else
             f"{parts['name']}-{parts['alias']}" if "alias" in parts else model.model_id)
    return path / arts["adapter"]["path"], path / arts["config"]["path"], model.source_run_id, label
