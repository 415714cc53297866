"""MLflow outages during training and sweeps: a real `mlflow server` behind a TCP proxy that the tests cut
(every connection closed, new ones refused) and restore, on a real local Ray (2 CPUs). Training never
notices; what could not be sent is sent later, in order, once."""

import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.config import load_config
from orchestrator.data.pipeline import preprocess
from orchestrator.data.sample import write_sample
from orchestrator.sweeps.tuner import plan_sweep, run_sweep
from orchestrator.tracking.journal import Journal
from orchestrator.tracking.resilient import Tracker
from orchestrator.training.driver import format_summary, plan_run, run_training
from tests.integration.mlflow_proxy import BIN, MlflowServer, Proxy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(ray_cluster, tmp_path_factory):
    """Sample set -> chameleon shards, while the tracking server boots."""
    root = tmp_path_factory.mktemp("outage")
    server = MlflowServer(root / "server")
    try:
        write_sample(root / "sample", per_domain=8)
        preprocess(load_config(None, [f"data.source={root / 'sample'}", f"data.output={root / 'shards'}",
                                      "data.val_fraction=0.25"]))
        yield SimpleNamespace(root=root, server=server.wait())
    finally:
        server.stop()


@pytest.fixture
def proxy(site):
    p = Proxy(site.server.url)
    yield p
    if p.up:
        p.cut()


def direct(site) -> MlflowClient:
    """The server itself, not through the proxy."""
    return MlflowClient(site.server.url)


def train_config(root: Path, uri: str, name: str, *overrides: str):
    return load_config(None, [
        f"data.source={root / 'sample'}", f"data.output={root / 'shards'}", "data.val_fraction=0.25",
        f"tracking.tracking_uri={uri}", f"storage.path={root / 'ray_results'}", f"train.run_name={name}",
        "train.lr=3e-3", "train.warmup_steps=2", "train.shuffle_buffer=16", "train.eval_every=100",
        "scaling.num_workers=1", "scaling.cpus_per_worker=1", "tracking.retry_every_s=1", *overrides])


def steps(mlc, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(m.step for m in mlc.get_metric_history(run_id, key))


def tracking_lines(run_dir: str, capfd) -> list[str]:
    """`moss tracking:` lines about this run's journal, from this process and every Ray worker's log."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    texts = [capfd.readouterr().err]
    texts += [p.read_text(errors="replace") for p in logs.glob("worker-*") if p.suffix in (".out", ".err")]
    return [line for t in texts for line in t.splitlines() if "moss tracking:" in line and run_dir in line]


class Training:
    """run_training in a thread; Train workers seen while it runs (a restart would start new ones)."""

    def __init__(self, cfg):
        self.plan = plan_run(cfg)
        self.summary, self.error, self.workers = None, None, set()
        self._started = time.time() - 1
        self._thread = threading.Thread(target=self._run, args=(cfg,), daemon=True)
        self._thread.start()

    def _run(self, cfg):
        try:
            self.summary = run_training(cfg, self.plan)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def watch(self) -> None:
        for p in psutil.process_iter(["cmdline", "create_time"]):
            if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker") and p.info["create_time"] >= self._started:
                self.workers.add(p.pid)

    def wait_for_steps(self, mlc, n: int, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while True:
            self.watch()
            assert self._thread.is_alive() and time.time() < deadline, f"no {n} steps logged ({self.error!r})"
            run_id = self.plan.mlflow_run_id
            if run_id and len(steps(mlc, run_id)) >= n:
                return
            time.sleep(0.2)

    def join(self, timeout: float = 600) -> dict:
        while self._thread.is_alive() and timeout > 0:
            self.watch()
            self._thread.join(0.5)
            timeout -= 0.5
        assert self.error is None, repr(self.error)
        assert self.summary is not None, "the run did not end"
        return self.summary


def journal_entries(run_dir: str) -> list[str]:
    folder = Path(run_dir, "journal")
    return sorted(p.name for p in folder.glob("*.json")) if folder.exists() else []


def test_training_rides_out_a_short_outage(site, proxy, capfd):
    """Cut mid-run, restored a few seconds later: no worker restart, one warning, every step once."""
    run = Training(train_config(site.root, proxy.url, "short-outage", "train.max_steps=24", "train.ckpt_every=12"))
    mlc = direct(site)
    run.wait_for_steps(mlc, 4)
    proxy.cut()
    time.sleep(4)
    cut_mid_run = run.alive
    proxy.restore()
    summary = run.join()
    assert cut_mid_run, "the run ended before the outage was over: nothing tested"
    assert summary["status"] == "FINISHED" and summary["tracking"] is None and summary["step"] == 24
    run_id = summary["run_id"]
    assert steps(mlc, run_id) == list(range(1, 25))  # every step once, none lost, none twice
    assert mlc.get_run(run_id).info.status == "FINISHED"
    assert mlc.get_metric_history(run_id, "resumed_from_step") == []  # the worker group never restarted
    assert len(run.workers) == 1, run.workers
    assert "adapter" in {f.path for f in mlc.list_artifacts(run_id)}
    lines = tracking_lines(run.plan.run_dir, capfd)
    warned = [line for line in lines if "is unreachable" in line]
    back = [line for line in lines if "reachable again" in line]
    assert len(warned) == 1 and proxy.url in warned[0] and f"{run.plan.run_dir}/journal" in warned[0], lines
    assert len(back) == 1 and "sent the 0 " not in back[0], lines
    assert journal_entries(run.plan.run_dir) == []


def test_tracker_sends_the_journal_in_order_when_the_server_is_back(site, proxy, tmp_path, capfd):
    """Writes made while the server is cut are journaled; once it is back the journal goes first (the last tag
    set wins), nothing is sent twice, and one line says it went away, one that it is back."""
    mlc = direct(site)
    run_id = mlc.create_run(mlc.create_experiment("tracker")).info.run_id
    tracker = Tracker(proxy.url, Journal(str(tmp_path / "run")), retry_every_s=60, flush_timeout_s=30)
    tracker.log_metrics(run_id, {"loss": 1.0}, 1)
    assert tracker.flush(30)
    proxy.cut()
    for step in range(2, 12):
        tracker.log_metrics(run_id, {"loss": float(step)}, step)
        tracker.set_tags(run_id, {"phase": f"cut-{step}"})
    deadline = time.time() + 60
    while len(journal_entries(str(tmp_path / "run"))) < 20:  # the first refused (after MLflow's retries), the rest behind it
        assert time.time() < deadline, journal_entries(str(tmp_path / "run"))
        time.sleep(0.2)
    proxy.restore()
    tracker.set_tags(run_id, {"phase": "after"})  # before the next retry (60 s): must wait behind the journal
    tracker.log_metrics(run_id, {"loss": 12.0}, 12)
    assert tracker.close() == 0
    assert steps(mlc, run_id, "loss") == list(range(1, 13))
    assert mlc.get_run(run_id).data.tags["phase"] == "after"
    err = capfd.readouterr().err
    assert err.count("is unreachable") == 1 and err.count("reachable again: sent the 22 write(s)") == 1, err
    assert journal_entries(str(tmp_path / "run")) == []


def moss(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "moss"), *args], capture_output=True, text=True, timeout=300)


def test_outage_past_the_end_is_replayed_by_the_cli(site, proxy):
    """The server stays away until the run ends: it still finishes, the journal keeps the rest, and
    `moss tracking replay` sends it once the server is back (exit 1 while it is not; a second replay sends nothing)."""
    run = Training(train_config(site.root, proxy.url, "long-outage", "train.max_steps=12", "train.ckpt_every=6",
                                "tracking.flush_timeout_s=2"))
    mlc = direct(site)
    run.wait_for_steps(mlc, 3)
    proxy.cut()
    summary = run.join()
    ended_ms = time.time() * 1000
    run_dir = run.plan.run_dir
    assert summary["step"] == 12 and summary["status"] == "FINISHED"
    assert summary["tracking"] and f"moss tracking replay {run_dir}" in summary["tracking"]
    printed = format_summary(summary)
    assert "MLflow unreachable" in printed and f"moss tracking replay {run_dir}" in printed
    assert "train/loss" in summary["metrics"]  # Ray Train's last report, not MLflow's
    left = journal_entries(run_dir)
    assert left
    run_id = summary["run_id"]
    assert mlc.get_run(run_id).info.status == "RUNNING" and len(steps(mlc, run_id)) < 12

    refused = moss("tracking", "replay", run_dir)
    assert refused.returncode == 1 and "unreachable" in refused.stderr, refused.stderr
    assert journal_entries(run_dir) == left

    proxy.restore()
    done = moss("tracking", "replay", run_dir)
    assert done.returncode == 0, done.stderr
    assert f"sent {len(left)} write(s)" in done.stdout
    assert steps(mlc, run_id) == list(range(1, 13))
    finished = mlc.get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.info.end_time <= ended_ms  # when it ended, not replayed
    assert "adapter" in {f.path for f in mlc.list_artifacts(run_id)}
    assert journal_entries(run_dir) == [] and not list(Path(run_dir, "journal").glob("*.files"))
    again = moss("tracking", "replay", run_dir)
    assert again.returncode == 0 and "sent 0 write(s)" in again.stdout
    assert steps(mlc, run_id) == list(range(1, 13))


def test_sweep_rides_out_an_outage(site, proxy):
    """An ASHA sweep of two trials, the server cut mid-sweep and restored: the sweep finishes, every child
    run has its status, every step it trained once, and the report is written."""
    root = site.root
    base = {"data": {"source": str(root / "sample"), "output": str(root / "shards"), "val_fraction": 0.25},
            "train": {"lr": 3e-3, "warmup_steps": 1, "shuffle_buffer": 16, "max_steps": 8, "eval_every": 2,
                      "ckpt_every": 4},
            "tracking": {"tracking_uri": proxy.url, "retry_every_s": 1, "flush_timeout_s": 30},
            "storage": {"path": str(root / "ray_results")}}
    (root / "sweep_base.yaml").write_text(yaml.safe_dump(base))
    space = {"name": "outage", "base": "sweep_base.yaml", "params": {"adapter.rank": {"grid": [4, 8]}},
             "metric": "val/image_loss", "mode": "min", "max_concurrent_trials": 2,
             "resources": {"workers": 1, "cpus_per_worker": 0.5},
             "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2}}
    (root / "outage.yaml").write_text(yaml.safe_dump(space))
    mlc = direct(site)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=run_sweep(
        plan_sweep(str(root / "outage.yaml"), name="outage-sweep"), report_dir=str(root / "report"))), daemon=True)
    thread.start()
    deadline = time.time() + 400
    while True:
        assert thread.is_alive() and time.time() < deadline, "no trial logged a step"
        children = children_of(mlc, "outage-sweep")
        if any(len(steps(mlc, c.info.run_id)) >= 1 for c in children):
            break
        time.sleep(0.3)
    proxy.cut()
    time.sleep(4)
    proxy.restore()
    thread.join(600)
    summary = result["summary"]
    assert summary["errors"] == 0 and summary["trials"] == 2 and not summary["interrupted"]
    assert not summary["report"].get("skipped") and (root / "report" / "report.md").exists()
    children = children_of(mlc, "outage-sweep")
    assert len(children) == 2
    for child in children:
        done = steps(mlc, child.info.run_id)
        assert done == list(range(1, len(done) + 1)), done  # every step once
        status = child.data.tags["moss.status"]
        if status == "finished":
            assert child.info.status == "FINISHED" and done[-1] == 8
        else:
            assert status == "early_stopped" and child.info.status == "KILLED"
            stopped = int(child.data.tags["moss.stopped_at_step"])  # Tune's last step; Train may have run on
            assert stopped < 8 and done[-1] >= stopped
    parent = mlc.search_runs([children[0].info.experiment_id], "tags.`moss.kind` = 'sweep' and "
                             "tags.`moss.sweep` = 'outage-sweep'")[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["moss.trials"] == "2"
    for folder in [Path(summary["sweep_dir"]), *Path(root / "ray_results").glob("outage-sweep-*")]:
        assert journal_entries(str(folder)) == [], folder


def children_of(mlc, sweep: str):
    exp = mlc.get_experiment_by_name("moss")
    if exp is None:
        return []
    runs = mlc.search_runs([exp.experiment_id], f"tags.`moss.sweep` = '{sweep}'")
    return [r for r in runs if r.data.tags.get("moss.kind") != "sweep"]
