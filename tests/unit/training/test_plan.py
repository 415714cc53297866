"""Run planning: step counts, and the checks that keep run names from mixing runs (no Ray needed)."""

import json

import pytest

from orchestrator.config import ConfigError, load_config
from orchestrator.training.driver import MARKER, fixed_settings, plan_run, planned_steps, write_json


def cfg_for(tmp_path, *overrides):
    return load_config(None, [f"data.output={tmp_path / 'shards'}", f"storage.path={tmp_path / 'runs'}",
                              f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides])


def fake_manifest(tmp_path, name="chameleon", checkpoint="tiny", train=40, val=8):
    d = tmp_path / "shards" / "chameleon"
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"backbone": {"name": name, "checkpoint": checkpoint},
                                                 "outputs": {"train": train, "val": val, "rejected": 0}}))


def test_planned_steps_by_steps_or_epochs(tmp_path):
    c = cfg_for(tmp_path, "scaling.num_workers=2", "train.micro_batch=3", "train.grad_accum=2", "train.max_steps=100",
                "train.max_epochs=3")
    assert planned_steps(c, 40) == (3 * ((40 // 2) // 3)) // 2  # 3 epochs of 6 micro-batches, 2 per step = 9
    assert planned_steps(c.model_copy(update={"train": c.train.model_copy(update={"max_epochs": None})}), 40) == 100
    with pytest.raises(ConfigError, match="fewer than"):
        planned_steps(c, 5)


def test_plan_needs_matching_shards(tmp_path):
    with pytest.raises(ConfigError, match="moss preprocess"):
        plan_run(cfg_for(tmp_path))
    fake_manifest(tmp_path, checkpoint="small")
    with pytest.raises(ConfigError, match="tokenized for chameleon \\(small\\)"):
        plan_run(cfg_for(tmp_path))


def test_unnamed_runs_get_fresh_names(tmp_path):
    fake_manifest(tmp_path)
    a, b = plan_run(cfg_for(tmp_path)), plan_run(cfg_for(tmp_path))
    assert a.name != b.name and a.name.startswith("chameleon-moss-") and a.mlflow_run_id is None


def test_relaunch_must_match_the_marker(tmp_path):
    fake_manifest(tmp_path)
    cfg = cfg_for(tmp_path, "train.run_name=r1")
    plan = plan_run(cfg)
    write_json(f"{plan.run_dir}/{MARKER}", {"identity": plan.identity, "fixed": fixed_settings(cfg),
                                            "mlflow_run_id": "abc", "experiment": "moss", "tracking_uri": plan.tracking_uri})
    assert plan_run(cfg_for(tmp_path, "train.run_name=r1", "train.max_steps=500", "train.eval_every=7",
                            "train.strategy=fsdp")).mlflow_run_id == "abc"
    with pytest.raises(ConfigError, match=r"changed train.lr: 0.0002 -> 0.001, scaling.num_workers: 1 -> 4"):
        plan_run(cfg_for(tmp_path, "train.run_name=r1", "train.lr=1e-3", "scaling.num_workers=4"))
    with pytest.raises(ConfigError, match="different backbone/adapter/data"):
        plan_run(cfg_for(tmp_path, "train.run_name=r1", "adapter.kernel_size=5"))
    with pytest.raises(ConfigError, match="same tracking settings"):
        plan_run(cfg_for(tmp_path, "train.run_name=r1", "tracking.experiment=other"))


def test_a_run_marked_before_loss_normalization_existed_resumes_as_it_trained(tmp_path):
    """A marker without train.loss_normalization meant the token mean: a CE backbone resumes under auto; a
    run whose auto now means per_modality (Emu2) is refused unless the run keeps tokens."""
    fake_manifest(tmp_path)
    cfg = cfg_for(tmp_path, "train.run_name=old")
    plan = plan_run(cfg)
    old = {k: v for k, v in fixed_settings(cfg).items() if k != "train.loss_normalization"}
    assert fixed_settings(cfg)["train.loss_normalization"] == "tokens"  # auto, resolved for chameleon
    write_json(f"{plan.run_dir}/{MARKER}", {"identity": plan.identity, "fixed": old, "mlflow_run_id": "abc",
                                            "experiment": "moss", "tracking_uri": plan.tracking_uri})
    assert plan_run(cfg).mlflow_run_id == "abc"
    write_json(f"{plan.run_dir}/{MARKER}", {"identity": plan.identity, "mlflow_run_id": "abc", "experiment": "moss",
                                            "fixed": {**old, "train.loss_normalization": "auto"},  # as kept unresolved
                                            "tracking_uri": plan.tracking_uri})
    assert plan_run(cfg_for(tmp_path, "train.run_name=old", "train.loss_normalization=tokens")).mlflow_run_id == "abc"
    with pytest.raises(ConfigError, match=r"changed train.loss_normalization: 'tokens' -> 'per_modality'"):
        plan_run(cfg_for(tmp_path, "train.run_name=old", "train.loss_normalization=per_modality"))
    assert fixed_settings(load_config(None, ["backbone.name=emu2"]))["train.loss_normalization"] == "per_modality"


def test_foreign_ray_run_is_not_adopted(tmp_path):
    fake_manifest(tmp_path)
    (tmp_path / "runs" / "r2").mkdir(parents=True)
    (tmp_path / "runs" / "r2" / "checkpoint_manager_snapshot.json").write_text("{}")
    with pytest.raises(ConfigError, match="did not create"):
        plan_run(cfg_for(tmp_path, "train.run_name=r2"))


def test_validate_reports_what_train_would_do(tmp_path, capsys):
    from orchestrator.cli import main

    base = ["--set", f"data.output={tmp_path / 'shards'}", "--set", f"storage.path={tmp_path / 'runs'}",
            "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "--set", "train.run_name=r3"]
    assert main(["validate", *base]) == 0
    assert "# train: no shards yet" in capsys.readouterr().out
    fake_manifest(tmp_path, train=40, val=8)
    assert main(["validate", *base, "--set", "train.max_steps=7"]) == 0
    assert "# train: starts run 'r3': 7 steps over 40 train rows, 8 val rows" in capsys.readouterr().out
    assert main(["validate", *base, "--set", "train.micro_batch=50"]) == 2
    assert "fewer than train.micro_batch=50" in capsys.readouterr().err


def test_a_second_launch_of_a_live_run_exits_2_before_ray(tmp_path, capsys, monkeypatch):
    import subprocess
    import sys

    from orchestrator import runtime
    from orchestrator.cli import main
    from tests.unit.test_lease import HOLD

    fake_manifest(tmp_path)
    run_dir = tmp_path / "runs" / "r1"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = []  # the suite may share one Ray cluster, so watch for the call rather than Ray's state
        monkeypatch.setattr(runtime, "init_ray", lambda *a, **k: started.append(a))
        args = ["train", "--set", f"data.output={tmp_path / 'shards'}", "--set", f"storage.path={tmp_path / 'runs'}",
                "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "--set", "train.run_name=r1"]
        assert main(args) == 2
    finally:
        holder.kill()
        holder.wait()
    assert "is live elsewhere" in capsys.readouterr().err and not started


def test_a_damaged_marker_is_exit_2_with_what_to_do(tmp_path):
    fake_manifest(tmp_path)
    cfg = cfg_for(tmp_path, "train.run_name=r1")
    marker = tmp_path / "runs" / "r1" / MARKER
    marker.parent.mkdir(parents=True)
    marker.write_text('{"identity": "abc", "fix')
    with pytest.raises(ConfigError, match=r"moss_run.json is damaged .* new train.run_name"):
        plan_run(cfg)


def test_a_new_head_address_resumes_when_the_store_holds_the_run(tmp_path):
    from orchestrator.tracking.mlflow import client, ensure_experiment

    fake_manifest(tmp_path)
    cfg = cfg_for(tmp_path, "train.run_name=r1")
    plan = plan_run(cfg)
    uri = plan.tracking_uri
    mlc = client(uri)
    run = mlc.create_run(ensure_experiment(mlc, "moss", uri), tags={"moss.run_name": "r1"}).info.run_id
    marker = {"identity": plan.identity, "fixed": fixed_settings(cfg), "mlflow_run_id": run, "experiment": "moss",
              "tracking_uri": "http://10.0.0.12:5000"}  # the old head's server
    write_json(f"{plan.run_dir}/{MARKER}", marker)
    assert plan_run(cfg).mlflow_run_id == run  # the same store under a new address
    write_json(f"{plan.run_dir}/{MARKER}", {**marker, "mlflow_run_id": "0" * 32})
    with pytest.raises(ConfigError, match="same tracking settings"):
        plan_run(cfg)
