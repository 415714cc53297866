"""The cluster path on 127.0.0.1: `ray start --head` with token auth, the real `ray job submit` CLI with
jobs/runtime_env.yaml, and `moss mlflow-server` (MLflow's basic-auth app) as the tracking server.

Secrets come from `moss cluster-secrets`' generator and reach Ray the way cluster.yaml delivers them:
in the environment of `ray start` (server) and of the `ray` CLI (client), RAY_AUTH_MODE=token on both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests
from mlflow.tracking import MlflowClient

from orchestrator.cluster.secrets import generate, read_env_file, write_env_file
from orchestrator.data.sample import write_sample

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
JOB_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_tree(proc: subprocess.Popen, grace: float = 45) -> None:
    """SIGTERM the process group ``proc`` leads (started with start_new_session), then SIGKILL whatever
    of its process tree is left (Ray's job drivers and workers may sit in groups of their own)."""
    try:
        tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    for pid in tree:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            continue


@pytest.fixture(scope="module")
def cluster_env(tmp_path_factory):
    """The secrets file `moss cluster-secrets` would write, read back as cluster.yaml's nodes source it."""
    path = write_env_file(tmp_path_factory.mktemp("secrets") / "cluster.env", generate())
    env = read_env_file(path)
    assert env["RAY_AUTH_MODE"] == "token" and len(env["RAY_AUTH_TOKEN"]) == 64
    return env


@pytest.fixture(scope="module")
def mlflow_server(cluster_env, tmp_path_factory):
    """`moss mlflow-server` with basic auth; not waited for here (it boots while the Ray head does)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")
    env = {**os.environ, **cluster_env}
    proc = subprocess.Popen([str(BIN / "moss"), "mlflow-server", "--host", "127.0.0.1", "--port", str(port),
                             "--root", str(root), "--workers", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "root": root, "proc": proc}
    stop_tree(proc, grace=20)
    log.close()


def wait_for(server: dict) -> dict:
    deadline = time.time() + 120
    while time.time() < deadline:
        assert server["proc"].poll() is None, (server["root"] / "server.log").read_text()
        try:
            if requests.get(f"{server['url']}/health", timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(1)
    pytest.fail("mlflow server did not come up:\n" + (server["root"] / "server.log").read_text()[-3000:])


@pytest.fixture(scope="module")
def ray_head(cluster_env, mlflow_server):
    """A real Ray head on this machine with token auth, its dashboard (Jobs API) on 127.0.0.1."""
    temp_dir = tempfile.mkdtemp(prefix="rayj", dir="/tmp")  # short: Unix socket paths are limited to 107 chars
    dash = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(cluster_env, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `python` is this venv's
               MOSS_MLFLOW_ADDRESS=f"127.0.0.1:{mlflow_server['port']}",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")  # stop at once (the 30 s drain is for Ray Serve)
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--port", str(free_port()),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(free_port()),
         "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", temp_dir, "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = {"address": f"http://127.0.0.1:{dash}", "client_env": client_env(cluster_env), "temp_dir": temp_dir}
    deadline = time.time() + 120
    while ray_cli(head, "job", "list").returncode != 0:
        assert proc.poll() is None and time.time() < deadline, (Path(temp_dir) / "head.log").read_text()[-3000:]
        time.sleep(2)
    yield head
    stop_tree(proc)
    left = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    log.close()
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"Ray processes left running: {left}"


def client_env(cluster_env: dict, **overrides: str) -> dict:
    """The `ray` CLI's environment: the same RAY_AUTH_MODE as the head, and its token."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update({"RAY_AUTH_MODE": cluster_env["RAY_AUTH_MODE"], "RAY_AUTH_TOKEN": cluster_env["RAY_AUTH_TOKEN"],
                **overrides})
    return env


def ray_cli(head: dict, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args, "--address", head["address"]], cwd=REPO, capture_output=True,
                          text=True, env=env or head["client_env"], timeout=120)


def submit(head: dict, job_id: str, *entrypoint: str) -> str:
    """`ray job submit --runtime-env jobs/runtime_env.yaml` from the repo root; poll `ray job status` to the end."""
    out = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", head["address"], "--submission-id", job_id,
                          "--runtime-env", "jobs/runtime_env.yaml", "--no-wait", "--", *entrypoint],
                         cwd=REPO, capture_output=True, text=True, env=head["client_env"], timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    deadline = time.time() + JOB_TIMEOUT
    while time.time() < deadline:
        status = ray_cli(head, "job", "status", job_id)
        text = status.stdout + status.stderr  # ray/dashboard/modules/job/cli.py: _log_job_status
        for state, line in (("SUCCEEDED", "succeeded"), ("FAILED", "failed"), ("STOPPED", "was stopped")):
            if f"Job '{job_id}' {line}" in text:
                return state
        time.sleep(3)
    ray_cli(head, "job", "stop", job_id)
    pytest.fail(f"job {job_id} still running after {JOB_TIMEOUT} s:\n{job_logs(head, job_id)[-3000:]}")


def job_logs(head: dict, job_id: str) -> str:
    out = ray_cli(head, "job", "logs", job_id)
    assert out.returncode == 0, out.stderr
    return out.stdout


def secret_values(cluster_env: dict) -> list[str]:
    return [cluster_env["RAY_AUTH_TOKEN"], cluster_env["MLFLOW_TRACKING_PASSWORD"]]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-jobs")
    write_sample(root / "sample", per_domain=6)
    return root


def config_args(root: Path) -> list[str]:
    return ["jobs/configs/sample.yaml", "--set", f"data.source={root / 'sample'}", "--set",
            f"data.output={root / 'shards'}", "--set", "data.val_fraction=0.25", "--set",
            f"storage.path={root / 'ray_results'}", "--set", "tracking.experiment=cluster-jobs"]


@pytest.fixture(scope="module")
def trained(ray_head, mlflow_server, workdir):
    """Two jobs, as on a cluster: preprocess the sample set, then fine-tune (1 worker, 6 steps)."""
    wait_for(mlflow_server)
    pre = submit(ray_head, "moss-preprocess", "python", "jobs/preprocess.py", *config_args(workdir))
    logs = {"moss-preprocess": job_logs(ray_head, "moss-preprocess")}
    assert pre == "SUCCEEDED", logs["moss-preprocess"][-3000:]
    state = submit(ray_head, "moss-train", "python", "jobs/train.py", *config_args(workdir),
                   "--set", "train.run_name=cluster-smoke", "--set", "train.max_steps=6", "--set", "train.eval_every=3",
                   "--set", "train.ckpt_every=3", "--set", "scaling.num_workers=1")
    logs["moss-train"] = job_logs(ray_head, "moss-train")
    assert state == "SUCCEEDED", logs["moss-train"][-4000:]
    return logs


def authed_client(mlflow_server, cluster_env, monkeypatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", cluster_env["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", cluster_env["MLFLOW_TRACKING_PASSWORD"])
    return MlflowClient(mlflow_server["url"])


def test_submitted_training_succeeds_and_logs_to_the_auth_server(trained, workdir, mlflow_server, cluster_env,
                                                                  monkeypatch):
    assert (workdir / "shards" / "chameleon" / "manifest.json").is_file()
    assert "cluster-smoke" in trained["moss-train"] and "FINISHED" in trained["moss-train"]
    mlc = authed_client(mlflow_server, cluster_env, monkeypatch)
    exp = mlc.get_experiment_by_name("cluster-jobs")
    runs = mlc.search_runs([exp.experiment_id], filter_string="tags.`moss.run_name` = 'cluster-smoke'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    # rank 0 (a Ray actor) logged every step through the server, with the credentials Ray inherited
    assert [m.step for m in mlc.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]
    assert {"config.yaml", "environment.json", "adapter"} <= {a.path for a in mlc.list_artifacts(run.info.run_id)}
    env = json.loads(Path(mlc.download_artifacts(run.info.run_id, "environment.json", str(workdir))).read_text())
    # runtime_env.yaml's ${MOSS_MLFLOW_ADDRESS} was expanded on the node; secrets are masked
    assert env["MLFLOW_TRACKING_URI"] == mlflow_server["url"]
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN"] == env["MLFLOW_TRACKING_PASSWORD"] == "***"
    assert env["MLFLOW_TRACKING_USERNAME"] == cluster_env["MLFLOW_TRACKING_USERNAME"]


def test_no_secret_in_job_logs_or_mlflow(trained, workdir, mlflow_server, cluster_env, monkeypatch):
    mlc = authed_client(mlflow_server, cluster_env, monkeypatch)
    exp = mlc.get_experiment_by_name("cluster-jobs")
    run = mlc.search_runs([exp.experiment_id])[0]
    texts = list(trained.values()) + list(run.data.params.values()) + list(run.data.tags.values())
    dest = Path(mlc.download_artifacts(run.info.run_id, "", str(workdir / "scan")))
    texts += [p.read_text(errors="replace") for p in dest.rglob("*") if p.suffix in (".yaml", ".json", ".md", ".txt")]
    for secret in secret_values(cluster_env):
        assert not [t[:200] for t in texts if secret in t]


def test_bad_config_job_fails_with_the_validation_message(ray_head, workdir):
    state = submit(ray_head, "moss-bad-config", "python", "jobs/train.py", *config_args(workdir),
                   "--set", "adapter.kernel_size=0")
    logs = job_logs(ray_head, "moss-bad-config")
    assert state == "FAILED", logs
    assert "moss train:" in logs and "invalid config" in logs and "adapter.kernel_size" in logs
    status = ray_cli(ray_head, "job", "status", "moss-bad-config")
    assert "exit code 2" in status.stdout + status.stderr


def test_ray_refuses_clients_without_the_token(ray_head, cluster_env):
    no_token = ray_cli(ray_head, "job", "list", env=client_env(cluster_env, RAY_AUTH_MODE="disabled"))
    assert no_token.returncode != 0 and "AuthenticationError" in no_token.stderr
    wrong = ray_cli(ray_head, "job", "list", env=client_env(cluster_env, RAY_AUTH_TOKEN="0" * 64))
    assert wrong.returncode != 0 and "AuthenticationError" in wrong.stderr
    assert ray_cli(ray_head, "job", "list").returncode == 0


def test_mlflow_server_refuses_requests_without_the_password(mlflow_server, cluster_env):
    wait_for(mlflow_server)
    api = f"{mlflow_server['url']}/api/2.0/mlflow/experiments/search?max_results=5"
    user = cluster_env["MLFLOW_TRACKING_USERNAME"]
    assert requests.get(api, timeout=10).status_code == 401
    assert requests.get(api, auth=(user, "not-the-password"), timeout=10).status_code == 401
    assert requests.get(api, auth=(user, cluster_env["MLFLOW_TRACKING_PASSWORD"]), timeout=10).status_code == 200
    # the config on disk holds no password; the user store holds a hash
    root = mlflow_server["root"]
    for path in root.iterdir():
        if path.is_file():
            assert cluster_env["MLFLOW_TRACKING_PASSWORD"].encode() not in path.read_bytes(), path
