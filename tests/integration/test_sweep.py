"""Ray Tune sweeps over the training driver, on a real local Ray cluster and a real MLflow sqlite store."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.config import load_config
from orchestrator.data.pipeline import preprocess
from orchestrator.data.sample import write_sample
from orchestrator.sweeps.tuner import plan_sweep, run_sweep

from .secrets_scan import store_texts

pytestmark = pytest.mark.slow
SECRET = "tok-9c2e71d0a5b3f48e"  # in the base config and the driver's environment: must reach no MLflow store


@pytest.fixture(scope="module")
def root(ray_cluster, tmp_path_factory):
    """Sample set -> chameleon shards; a base run config with absolute paths."""
    root = tmp_path_factory.mktemp("sweep")
    write_sample(root / "sample", per_domain=8)
    base = {"data": {"source": str(root / "sample"), "output": str(root / "shards"), "val_fraction": 0.25},
            "train": {"lr": 3e-3, "warmup_steps": 1, "shuffle_buffer": 16, "max_steps": 8, "eval_every": 2,
                      "ckpt_every": 4},
            "tracking": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
                         "tags": {"hf_token": SECRET}},
            "storage": {"path": str(root / "ray_results")}}
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    preprocess(load_config(root / "base.yaml"))
    client(root).search_experiments()  # create the store's schema now, not racing a sweep subprocess that polls it
    return root


def write_space(root: Path, name: str, **fields) -> Path:
    space = {"name": name, "base": "base.yaml",
             "params": {"adapter.variant": {"grid": ["lora", "moss"]}, "adapter.rank": {"grid": [4, 8]}},
             "metric": "val/image_loss", "mode": "min", "max_concurrent_trials": 2,
             "resources": {"workers": 1, "cpus_per_worker": 0.5}, **fields}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def sweep_runs(root: Path, sweep: str):
    """(parent runs, child runs) of a sweep, straight from MLflow."""
    mlc = client(root)
    exp = mlc.get_experiment_by_name("moss")
    if exp is None:  # the store exists before the sweep's first run creates the experiment
        return [], []
    parents = mlc.search_runs([exp.experiment_id], f"tags.`moss.kind` = 'sweep' and tags.`moss.sweep` = '{sweep}'")
    children = [r for p in parents
                for r in mlc.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{p.info.run_id}'")]
    return parents, children


def steps(mlc, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(m.step for m in mlc.get_metric_history(run_id, key))


def test_asha_sweep_one_parent_four_children_and_report(root):
    space = write_space(root, "asha", scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 2})
    plan = plan_sweep(str(space), name="asha-sweep")
    os.environ["MOSS_TEST_API_TOKEN"] = SECRET
    try:
        summary = run_sweep(plan, report_dir=str(root / "report-asha"))
    finally:
        del os.environ["MOSS_TEST_API_TOKEN"]
    assert summary["trials"] == 4 and summary["errors"] == 0
    texts = store_texts(f"sqlite:///{root / 'mlflow.db'}", root / "store-scan")  # parent, children, report
    assert texts and not [t for t in texts if SECRET in t]

    parents, children = sweep_runs(root, "asha-sweep")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["moss.trials"] == "4"
    assert {a.path for a in client(root).list_artifacts(parent.info.run_id, "space")} == {
        "space/asha.yaml", "space/base_config.yaml"}
    sampled = sorted((c.data.params["adapter.variant"], c.data.params["adapter.rank"]) for c in children)
    assert sampled == [("lora", "4"), ("lora", "8"), ("moss", "4"), ("moss", "8")]
    mlc = client(root)
    for child in children:
        tags = child.data.tags
        assert json.loads(tags["moss.sampled"]) == {"adapter.variant": child.data.params["adapter.variant"],
                                                    "adapter.rank": int(child.data.params["adapter.rank"])}
        done = steps(mlc, child.info.run_id)
        assert done == list(range(1, len(done) + 1))  # every step once
        if tags["moss.status"] == "finished":
            assert child.info.status == "FINISHED" and done[-1] == 8
        else:  # ASHA stopped it at a rung
            assert tags["moss.status"] == "early_stopped" and child.info.status == "KILLED"
            # Tune saw a rung step; the Train workers, reporting asynchronously, may have run on before the stop
            assert int(tags["moss.stopped_at_step"]) < 8 and done[-1] >= int(tags["moss.stopped_at_step"])

    # the report's numbers are MLflow's numbers
    results = json.loads((root / "report-asha" / "results.json").read_text())
    assert results["metric"] == "val/image_loss" and len(results["rows"]) == 4
    by_id = {c.info.run_id: c for c in children}
    for row in results["rows"]:
        run = mlc.get_run(row["run_id"])
        assert row["value"] == run.data.metrics["val/image_loss"]
        assert row["trainable_parameters"] == int(run.data.params["trainable_parameters"])
        assert row["step"] == max(steps(mlc, row["run_id"], "val/image_loss"))
        assert row["run_id"] in by_id
    values = [r["value"] for r in results["rows"]]
    assert values == sorted(values)
    report = (root / "report-asha" / "report.md").read_text()
    assert "Gap to LoRA at equal rank" in report and "curves.png" in report
    logged = {a.path for a in mlc.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/results.json", "report/curves.png", "report/metric_vs_params.png"} <= logged
    assert any(p.startswith("report/heatmap_chameleon_moss") for p in logged)


def moss(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_killed_sweep_driver_resumes_without_duplicates(root):
    """SIGKILL the sweep's driver (its whole local Ray) after a trial finished; --resume completes the rest."""
    # 3 trials: after the kill one has finished, one is mid-run and one has not started
    space = write_space(root, "resumable", scheduler={"type": "fifo"}, max_concurrent_trials=1,
                        params={"adapter.variant": {"grid": ["moss"]}, "adapter.rank": {"grid": [4, 8, 16]}})
    proc = moss("sweep", str(space), "--name", "resumable", "--report-dir", str(root / "report-resume"), cwd=root)
    deadline = time.time() + 600
    finished_before = {}
    while time.time() < deadline and proc.poll() is None:
        time.sleep(2)
        if not (root / "mlflow.db").exists():
            continue
        _, children = sweep_runs(root, "resumable")
        done = [c for c in children if c.data.tags.get("moss.status") == "finished"]
        if done and len(children) > len(done):  # one trial finished, the next one started
            finished_before = {c.info.run_id: steps(client(root), c.info.run_id) for c in done}
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert finished_before, "the sweep ended before it could be killed mid-way"

    resumed = moss("sweep", str(space), "--name", "resumable", "--resume", "--report-dir", str(root / "report-resume"),
                   cwd=root)
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-4000:]

    parents, children = sweep_runs(root, "resumable")
    assert len(parents) == 1 and parents[0].data.tags["moss.resumes"] == "1"
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 3  # no duplicate child runs
    assert len({c.data.tags["moss.trial_id"] for c in children}) == 3
    mlc = client(root)
    for child in children:
        assert child.data.tags["moss.status"] == "finished" and child.info.status == "FINISHED"
        assert set(steps(mlc, child.info.run_id)) == set(range(1, 9))
        if child.info.run_id in finished_before:  # not trained again
            assert steps(mlc, child.info.run_id) == finished_before[child.info.run_id]
            assert child.data.tags["moss.relaunches"] == "0"
    assert (root / "report-resume" / "report.md").exists()


def test_failed_trial_is_retried_from_its_checkpoint(root):
    """The trial's driver actor dies mid-run: Tune retries it (max_failures=1), the Train run resumes."""
    space = write_space(root, "retry", scheduler={"type": "fifo"}, max_concurrent_trials=1, max_failures=1,
                        params={"adapter.variant": {"grid": ["moss"]}},
                        set={"train.max_steps": 200, "train.eval_every": 10, "train.ckpt_every": 20})
    mlc = client(root)
    killed = []

    def kill_once():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            time.sleep(1)
            _, children = sweep_runs(root, "retry")
            if children and len(steps(mlc, children[0].info.run_id)) >= 30:  # after a checkpoint (every 20)
                for p in psutil.process_iter(["cmdline"]):
                    if any(part.startswith("ray::ImplicitFunc") for part in (p.info["cmdline"] or [])):  # trial actors
                        p.send_signal(signal.SIGKILL)
                        killed.append(p.pid)
                return

    watcher = threading.Thread(target=kill_once, daemon=True)
    watcher.start()
    summary = run_sweep(plan_sweep(str(space), name="retry"), report_dir=str(root / "report-retry"))
    watcher.join(timeout=5)
    assert killed, "the trial driver was never killed"
    assert summary["errors"] == 0
    _, children = sweep_runs(root, "retry")
    assert len(children) == 1
    child = children[0]
    assert child.data.tags["moss.retries"] == "1" and child.data.tags["moss.status"] == "finished"
    assert set(steps(mlc, child.info.run_id)) == set(range(1, 201))
    resumed = [m.value for m in mlc.get_metric_history(child.info.run_id, "resumed_from_step")]
    assert len(resumed) == 1 and resumed[0] > 0 and resumed[0] % 20 == 0
