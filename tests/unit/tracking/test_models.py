"""Adapters as MLflow LoggedModels (tracking/models.py) in a real sqlite store: written through an outage by
the Tracker, replayed, sent twice without a second model; registered; refused where they cannot be."""

from __future__ import annotations

import pytest

from orchestrator.config import load_config
from orchestrator.moss import apply_moss, save_adapter
from orchestrator.tracking import ops
from orchestrator.tracking.journal import Journal
from orchestrator.tracking.models import MODEL_NAME, base_reference, parse_model_uri, register, save_model_dir
from orchestrator.tracking.replay import replay
from orchestrator.tracking.resilient import Tracker
from tests.helpers import ADAPTERS, spec_for


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    spec = spec_for("chameleon")
    adapter = save_adapter(apply_moss(spec.build(seed=0), ADAPTERS["moss-lowrank"], spec), root / "adapter")
    cfg = load_config(None, ["adapter.variant=moss", "backbone.revision=abc123"])
    return save_model_dir(adapter, cfg.model_dump(mode="json"), root / "model"), cfg


def models_of(mlc, exp, run_id):
    return [m for m in mlc.search_logged_models([exp]) if m.source_run_id == run_id]


def test_a_model_written_in_an_outage_is_replayed_and_a_second_send_changes_nothing(dead_uri, store, model_dir,
                                                                                      tmp_path):
    uri, mlc, exp = store
    path, cfg = model_dir
    run_id = mlc.create_run(exp).info.run_id
    mlc.log_metric(run_id, "val/loss", 1.25, step=8)
    mlc.log_metric(run_id, "system/node0/cpu_utilization_percentage", 50.0, step=40)  # not the model's
    tracker = Tracker(dead_uri, Journal(str(tmp_path / "run")), retry_every_s=60, flush_timeout_s=0)
    tracker.log_model(run_id, path, MODEL_NAME, base_reference(cfg), {"moss.variant": "moss"}, step=8)
    assert tracker.close(0) == 1  # journaled, with a copy of the model folder
    journal = Journal(str(tmp_path / "run"))
    (name,) = journal.names()
    assert journal.read(name)["op"]["kind"] == "model"

    assert replay(str(tmp_path / "run"), uri).sent == 1
    (model,) = models_of(mlc, exp, run_id)
    assert str(model.status).endswith("READY") and model.model_type == "moss-adapter"
    assert model.params["base.revision"] == "abc123" and model.params["config_hash"] == cfg.config_hash()
    assert model.tags["moss.variant"] == "moss"
    assert [(m.key, m.value, m.step) for m in model.metrics] == [("val/loss", 1.25, 8)]
    files = {f.path for f in mlc.list_logged_model_artifacts(model.model_id, "artifacts")}
    assert files == {"artifacts/adapter", "artifacts/config.yaml"}

    # an answer lost after the write went through: the op is sent again
    ops.apply(mlc, uri, ops.model(run_id, str(path), MODEL_NAME, base_reference(cfg), {}, step=8), {})
    (again,) = models_of(mlc, exp, run_id)
    assert again.model_id == model.model_id and len(again.metrics) == 1
    assert [(o.model_id, o.step) for o in mlc.get_run(run_id).outputs.model_outputs] == [(model.model_id, 8)]
    assert len(mlc.get_metric_history(run_id, "val/loss")) == 1  # the linked metric is not a second row


def test_a_model_left_pending_is_completed(store, model_dir):
    """The first send died after creating the model (no files, PENDING): the next one finishes that model."""
    uri, mlc, exp = store
    path, cfg = model_dir
    run_id = mlc.create_run(exp).info.run_id
    pending = mlc.create_logged_model(exp, MODEL_NAME, source_run_id=run_id, model_type="moss-adapter")
    ops.apply(mlc, uri, ops.model(run_id, str(path), MODEL_NAME, base_reference(cfg), {}, step=3), {})
    (model,) = models_of(mlc, exp, run_id)
    assert model.model_id == pending.model_id and str(model.status).endswith("READY")
    assert {f.path for f in mlc.list_logged_model_artifacts(model.model_id)} >= {"MLmodel", "artifacts"}


def test_register_needs_a_finished_model(store, model_dir):
    uri, mlc, exp = store
    path, cfg = model_dir
    bare = mlc.create_run(exp, run_name="no-model").info.run_id
    with pytest.raises(LookupError, match="has no finished adapter model"):
        register(mlc, mlc.get_run(bare), "moss-best", {})
    run_id = mlc.create_run(exp).info.run_id
    ops.apply(mlc, uri, ops.model(run_id, str(path), MODEL_NAME, base_reference(cfg), {}, step=1), {})
    first = register(mlc, mlc.get_run(run_id), "moss-best", {"moss.metric": "val/loss"})
    again = register(mlc, mlc.get_run(run_id), "moss-best", {})  # registered already: that version
    (model,) = models_of(mlc, exp, run_id)
    assert str(first.version) == str(again.version) == "1"
    assert mlc.get_model_version("moss-best", "1").tags == {"moss.metric": "val/loss", "moss.model_id": model.model_id}
    other = mlc.create_run(exp).info.run_id
    ops.apply(mlc, uri, ops.model(other, str(path), MODEL_NAME, base_reference(cfg), {}, step=1), {})
    assert str(register(mlc, mlc.get_run(other), "moss-best", {}).version) == "2"  # another model: a new version


@pytest.mark.parametrize("uri, parts", [
    ("models:/moss-best/3", {"name": "moss-best", "version": "3"}),
    ("models:/moss-best@champion", {"name": "moss-best", "alias": "champion"}),
    ("models:/m-0123abcd", {"id": "m-0123abcd"}),
    ("models:/moss-best", None),
    ("models:/a/b/1", None),
    ("runs:/abc/adapter", None),
])
def test_model_uris(uri, parts):
    assert parse_model_uri(uri) == parts
