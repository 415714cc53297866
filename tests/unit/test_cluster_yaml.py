"""cluster.yaml passes Ray's own launcher validation (no cloud calls) and keeps the security choices."""

import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).parents[2]
RAY_PORTS = {6379, 8265, 10001, 5000}  # GCS, dashboard/Jobs, Ray Client, MLflow


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def ray_pin() -> str:
    return re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (REPO / "pyproject.toml").read_text())[1]


def test_ray_launcher_validation_accepts_it(config):
    validate_config(prepare_config(config))


def test_validation_would_catch_a_broken_copy(config):
    broken = {**config, "head_node_type": "no_such_type"}
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))


def test_every_ray_start_uses_token_auth_and_the_secrets_file(config):
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for cmd in starts:
        before_start = cmd.split("ray start")[0]
        assert ". ~/.moss/cluster.env" in before_start and "export RAY_AUTH_MODE=token" in before_start
    assert config["file_mounts"]["~/.moss"] == "~/.moss"  # a folder: a single-file bind mount goes stale


def test_dashboard_listens_on_localhost_only(config):
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head.split("mlflow-server")[0]


def test_every_node_is_in_your_security_group_and_none_opens_a_port(config):
    assert not config["provider"].get("security_group"), "a group Ray creates opens SSH to 0.0.0.0/0"
    groups = {tuple(n["node_config"]["SecurityGroupIds"]) for n in config["available_node_types"].values()}
    assert len(groups) == 1  # one group: SSH from your CIDR + intra-cluster (docs/cluster.md creates it)
    setup = (REPO / "docs" / "cluster.md").read_text()
    assert "--port 22 --cidr $MY_CIDR" in setup and "--source-group $SG" in setup
    assert not [p for p in RAY_PORTS if f"--port {p}" in setup]
    # and the MLflow server on the head is started with basic auth through `moss mlflow-server`
    assert any("moss mlflow-server" in c for c in config["head_start_ray_commands"])


def test_least_privilege_profiles_and_imdsv2(config):
    import json

    types = dict(config["available_node_types"])
    head = types.pop(config["head_node_type"])
    assert head["node_config"]["IamInstanceProfile"] == {"Name": "moss-head"}
    assert {n["node_config"]["IamInstanceProfile"]["Name"] for n in types.values()} == {"moss-worker"}
    for node in [head, *types.values()]:
        assert node["node_config"]["MetadataOptions"]["HttpTokens"] == "required"
    for role in ("head", "worker"):
        policy = json.loads((REPO / "docs" / "iam" / f"{role}-policy.json").read_text())
        actions = [a for st in policy["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])]
        assert not [a for a in actions if a.endswith("*")], actions  # no wildcard actions
        s3 = [st for st in policy["Statement"] if any(str(a).startswith("s3:") for a in st["Action"])]
        assert all("BUCKET" in json.dumps(st["Resource"]) and st["Resource"] != "*" for st in s3)
        assert (role == "worker") == (not [a for a in actions if a.startswith(("ec2:", "iam:"))])


def test_no_secret_in_the_file():
    text = (REPO / "cluster.yaml").read_text()
    assert not re.search(r"(PASSWORD|TOKEN|SECRET)[A-Z_]*\s*[=:]\s*\S{8,}", text)
    assert not re.search(r"\b[0-9a-f]{64}\b", text)


def test_head_is_on_demand_and_the_only_train_driver_node(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"]
    assert head["resources"]["TRAIN_DRIVER"] > 0 and head["resources"]["CPU"] == 0
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert {"gpu_1x", "gpu_8x"} <= set(workers)
    for name, node in workers.items():
        assert node["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
        assert node["min_workers"] == 0 and node["max_workers"] >= 1, name
        assert "TRAIN_DRIVER" not in node["resources"], name
    assert config["max_workers"] >= sum(n["max_workers"] for n in workers.values())
    assert config["idle_timeout_minutes"] > 0


def test_ray_version_pinned_to_the_projects(config):
    pin = ray_pin()
    for key in ("head_image", "worker_image"):
        assert config["docker"][key].startswith(f"rayproject/ray:{pin}-py311-"), config["docker"][key]


def test_setup_installs_the_package_and_sync_leaves_data_and_results(config):
    assert config["file_mounts"]["~/moss-orchestrator"] == "."
    setups = config["head_setup_commands"] + config["worker_setup_commands"]
    assert sum("moss-orchestrator[cloud]" in c for c in setups) == 2
    excluded = set(config["rsync_exclude"])
    assert {".git", ".venv", "/data", "/shards", "/ray_results", "/mlruns", "/mlflow.db", "/demo_out"} <= excluded
    assert not [p for p in excluded if p.strip("/") in ("data", "runs", "report") and not p.startswith("/")]


def test_search_space_driver_resource_exists_on_the_cluster(config):
    space = yaml.safe_load((REPO / "search_spaces" / "paper_ablation.yaml").read_text())
    head = config["available_node_types"][config["head_node_type"]]
    for name in space["resources"]["driver"]:
        if name not in ("CPU", "memory"):
            assert name in head["resources"], name
