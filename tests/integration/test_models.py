"""Adapters as MLflow models against a real `mlflow server` on 127.0.0.1: each child run of a sweep logs its
adapter through the Tracker (the path training takes), `moss compare --register` registers the best finished
one, and `moss generate --model models:/…` (version, alias, model id) and the pyfunc flavour load it."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.moss import apply_moss, save_adapter
from orchestrator.tracking.journal import Journal
from orchestrator.tracking.resilient import MetricsLogger
from tests.helpers import ADAPTERS, randomize_adapter, spec_for
from tests.integration.mlflow_proxy import MlflowServer

pytestmark = pytest.mark.slow

PROMPT = "Describe the picture"
RUNS = [  # name, adapter form, final val/image_loss, status, logs a model
    ("sw-lora", "lora", 2.0, "finished", True),
    ("sw-moss", "moss-lowrank", 1.5, "finished", True),
    ("sw-stopped", "moss-lowrank", 1.2, "early_stopped", False),  # best value, no final adapter: not registrable
]


GENERATE = ["generate.max_new_tokens=6", "generate.temperature=1.0"]  # what the runs trained with, too


def gen_args(*extra: str) -> list[str]:
    return [*(a for s in GENERATE for a in ("--set", s)), "--prompt", PROMPT, *extra]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    server = MlflowServer(root / "server")
    try:
        spec, adapters = spec_for("chameleon"), {}
        for name, form, *_ in RUNS:
            model = apply_moss(spec.build(seed=0), ADAPTERS[form], spec)
            randomize_adapter(model, seed=len(adapters), std=0.05)
            adapters[name] = save_adapter(model, root / name)
        server.wait()
        mlc = MlflowClient(server.url)
        exp = mlc.create_experiment("moss")
        parent = mlc.create_run(exp, run_name="sw", tags={"moss.kind": "sweep", "moss.sweep": "sw",
                                                          "moss.metric": "val/image_loss", "moss.mode": "min"})
        for name, form, value, status, logs_model in RUNS:
            run_id = mlc.create_run(exp, run_name=name, tags={"mlflow.parentRunId": parent.info.run_id,
                                                              "moss.run_name": name, "moss.status": status}).info.run_id
            cfg = load_config(None, [f"adapter.variant={ADAPTERS[form].variant}", f"tracking.tracking_uri={server.url}",
                                     *GENERATE])
            mlc.log_param(run_id, "config_hash", cfg.config_hash())
            mlc.log_text(run_id, cfg.to_yaml(), "config.yaml")  # what --run reads, as a training run logs it
            logger = MetricsLogger(server.url, run_id, cfg.tracking, Journal(str(root / "journal" / name)))
            logger.log({"val/image_loss": value}, 4)
            if logs_model:
                logger.log_adapter(adapters[name], cfg, cfg.model_dump(mode="json"), "adapter", step=4)
            assert logger.close() == 0  # everything sent
            mlc.set_terminated(run_id, "FINISHED" if status == "finished" else "KILLED")
        yield root, server.url, parent.info.run_id, adapters
    finally:
        server.stop()


def answer(out) -> dict:
    return json.loads((out / "answer.json").read_text())


def test_each_run_logs_its_adapter_as_a_logged_model(site):
    root, url, parent, _ = site
    mlc = MlflowClient(url)
    run = mlc.search_runs([mlc.get_experiment_by_name("moss").experiment_id], "tags.`moss.run_name` = 'sw-moss'")[0]
    (model,) = [m for m in mlc.search_logged_models([run.info.experiment_id]) if m.source_run_id == run.info.run_id]
    assert str(model.status).endswith("READY") and model.model_type == "moss-adapter" and model.name == "moss-adapter"
    assert model.params["base.checkpoint"] == "tiny" and model.params["base.backbone"] == "chameleon"
    assert [(m.key, m.value, m.step) for m in model.metrics] == [("val/image_loss", 1.5, 4)]
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    assert {f.path for f in mlc.list_logged_model_artifacts(model.model_id)} >= {"MLmodel", "artifacts"}


def test_register_then_generate_by_version_alias_and_id(site, tmp_path, capsys):
    root, url, parent, adapters = site
    rc = main(["compare", "--parent-run", parent, "--tracking-uri", url, "--register", "moss-best",
               "--out", str(tmp_path / "report")])
    assert rc == 0
    assert "registered sw-moss (val/image_loss 1.5) as models:/moss-best/1" in capsys.readouterr().out
    mlc = MlflowClient(url)
    mv = mlc.get_model_version("moss-best", "1")
    run = mlc.get_run(mv.run_id)
    assert run.data.tags["moss.run_name"] == "sw-moss"  # the best *finished* run, not the early-stopped one
    assert mv.tags["moss.metric"] == "val/image_loss" and float(mv.tags["moss.value"]) == 1.5
    assert mv.tags["moss.config_hash"] == run.data.params["config_hash"] and "sw" in mv.tags["moss.sweep"]
    mlc.set_registered_model_alias("moss-best", "champion", "1")

    env = ["--set", f"tracking.tracking_uri={url}"]
    assert main(["generate", "--adapter", str(adapters["sw-moss"]), *gen_args("--out", str(tmp_path / "local"))]) == 0
    expected = answer(tmp_path / "local")["text"]
    # the run's adapter/ folder is still what --run reads (MLflow 3 resolves runs:/<run>/<name> to a model of
    # that name: the model must not be called "adapter")
    assert main(["generate", "--run", mv.run_id, *env, "--prompt", PROMPT, "--out", str(tmp_path / "run")]) == 0
    assert answer(tmp_path / "run")["text"] == expected
    assert main(["generate", *gen_args("--out", str(tmp_path / "base"))]) == 0
    assert answer(tmp_path / "base")["text"] != expected  # so an answer equal to `expected` did use the adapter
    model_id = mv.tags["moss.model_id"]
    for i, uri in enumerate(["models:/moss-best/1", "models:/moss-best@champion", f"models:/{model_id}"]):
        out = tmp_path / f"model-{i}"
        assert main(["generate", "--model", uri, *env, "--prompt", PROMPT, "--out", str(out)]) == 0  # its config
        got = answer(out)
        assert got["adapter"] == uri and got["run_id"] == mv.run_id
        assert got["text"] == expected, uri  # the registered adapter, on the base its config names

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(url)
    try:
        loaded = mlflow.pyfunc.load_model("models:/moss-best@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    (out,) = loaded.predict([PROMPT])
    assert out["text"] == expected  # the pyfunc flavour generates with the settings the run was trained with


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "models:/nope/1"], "cannot load models:/nope/1"),
    (["generate", "--model", "models:/moss-best"], "expected models:/NAME/VERSION"),
    (["compare", "--register", "a/b"], "cannot be in a registered model name"),
])
def test_bad_model_names_exit_2(site, argv, message, capsys):
    root, url, parent, _ = site
    extra = ["--set", f"tracking.tracking_uri={url}", "--prompt", "x"] if argv[0] == "generate" else \
        ["--tracking-uri", url, "--parent-run", parent]
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err
