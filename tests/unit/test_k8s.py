"""k8s/: every RayCluster and RayJob validates against the KubeRay CRD schemas (tests/data/kuberay) with no
field the API server would silently prune, the pinned versions agree with pyproject.toml, and the security
and layout rules of docs/cluster.md hold."""

from __future__ import annotations

import copy
import gzip
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SCHEMAS = {kind: json.loads(gzip.decompress((REPO / "tests" / "data" / "kuberay" / f"{kind.lower()}.v1.schema.json.gz")
                                            .read_bytes())) for kind in ("RayCluster", "RayJob")}
CORE = {("v1", "Service"), ("v1", "PersistentVolumeClaim"), ("apps/v1", "Deployment")}


def ray_version() -> str:
    return re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (REPO / "pyproject.toml").read_text()).group(1)


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def pruned(obj, schema: dict, path: str = "") -> list[str]:
    """Fields the API server would drop without a word: keys a structural schema does not declare (where it
    neither allows additional properties nor preserves unknown fields)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out = []
    if isinstance(obj, dict) and "properties" in schema:
        for k, v in obj.items():
            if k in schema["properties"]:
                out += pruned(v, schema["properties"][k], f"{path}.{k}")
            elif not schema.get("additionalProperties") and not (path == "" and k in ("apiVersion", "kind", "metadata")):
                out.append(f"{path}.{k}")
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for k, v in obj.items():
            out += pruned(v, schema["additionalProperties"], f"{path}.{k}")
    elif isinstance(obj, list) and "items" in schema:
        for i, v in enumerate(obj):
            out += pruned(v, schema["items"], f"{path}[{i}]")
    return out


def check(doc: dict) -> list[str]:
    """Schema errors and pruned fields of one RayCluster / RayJob."""
    schema = SCHEMAS[doc["kind"]]
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    return errors + [f"{p}: not in the CRD schema (the API server would drop it)" for p in pruned(doc, schema)]


def test_every_manifest_is_a_known_kind_and_every_ray_resource_validates():
    docs = manifests()
    kinds = {d["kind"] for _, d in docs}
    assert {"RayCluster", "RayJob", "Deployment", "Service", "PersistentVolumeClaim"} <= kinds
    for name, doc in docs:
        if doc["kind"] in SCHEMAS:
            assert doc["apiVersion"] == "ray.io/v1", name
            assert check(doc) == [], name
        else:
            assert (doc["apiVersion"], doc["kind"]) in CORE, name
            assert doc["metadata"]["name"], name


def test_the_check_catches_a_typo_and_a_wrong_type():
    cluster = next(d for _, d in manifests() if d["kind"] == "RayCluster")
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4
    assert any("maxReplica: not in the CRD schema" in e for e in check(typo))
    wrong = copy.deepcopy(cluster)
    wrong["spec"]["workerGroupSpecs"][0]["minReplicas"] = "0"
    assert any("minReplicas" in e and "not of type 'integer'" in e for e in check(wrong))


def test_versions_follow_pyproject_and_every_rayjob_runs_the_one_cluster():
    version = ray_version()
    dockerfile = (K8S / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(version)}-py311-\$\{{FLAVOR\}}$", dockerfile, re.M)
    docs = manifests()
    cluster = next(d for _, d in docs if d["kind"] == "RayCluster")
    assert cluster["spec"]["rayVersion"] == version
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    images = set(re.findall(r"image:\s*(\S+)", text))
    assert images and all(i.endswith((f":ray{version}-cpu", f":ray{version}-gpu")) for i in images), images
    jobs = {n: d for n, d in docs if d["kind"] == "RayJob"}
    assert set(jobs) == {"rayjob-preprocess.yaml", "rayjob-train.yaml", "rayjob-sweep.yaml"}
    for name, job in jobs.items():
        spec = job["spec"]
        expected = copy.deepcopy(cluster["spec"])
        if name == "rayjob-preprocess.yaml":  # the CPU group up from the start (render.job_cluster), nothing else
            group = next(g for g in expected["workerGroupSpecs"] if g["groupName"] == "cpu-preprocess")
            group["replicas"] = group["minReplicas"] = group["maxReplicas"]
        assert spec["rayClusterSpec"] == expected, f"{name} drifted from raycluster.yaml: python k8s/render.py"
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        assert spec["backoffLimit"] > 0
        entry = spec["entrypoint"]
        # KubeRay pastes it unquoted into the submitter pod's `bash -c`: a shell character would run there
        assert not re.search(r"[;&|$()<>`'\"\\*?]", entry), entry
        paths = re.findall(r"/home/ray/moss-orchestrator/(\S+)", entry)  # where k8s/Dockerfile puts the project
        assert paths and paths[0].startswith("jobs/") and entry.startswith("python /home/ray/moss-orchestrator/")
        for path in paths:
            assert (REPO / path).is_file(), path
    assert "--resume-or-start" in jobs["rayjob-sweep.yaml"]["spec"]["entrypoint"]
    assert "COPY --chown=ray:users jobs /home/ray/moss-orchestrator/jobs" in dockerfile


def test_layout_and_security_rules():
    docs = manifests()
    cluster = next(d for _, d in docs if d["kind"] == "RayCluster")["spec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and float(head["resources"]["TRAIN_DRIVER"]) > 0
    assert cluster["authOptions"] == {"mode": "token", "secretName": "moss-ray-token"}
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    for g in groups.values():
        assert g["minReplicas"] == 0  # every worker group scales from zero (on the long-lived cluster)
    # the node types the search spaces and configs ask for (scaling.node_type / resources.node_type) exist
    wanted = set()
    for path in [*REPO.glob("search_spaces/*.yaml"), *REPO.glob("jobs/configs/*.yaml")]:
        wanted |= set(re.findall(r"node_type:\s*(gpu_\w+)", path.read_text()))
    offered = {k for g in groups.values() for k in g.get("resources", {})}
    assert wanted and wanted <= offered, wanted - offered
    for _, doc in docs:
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP"
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    assert not re.search(r"(PASSWORD|TOKEN)\s*\n\s*value:", text)  # secrets only by secretKeyRef
    assert "secretKeyRef: {name: moss-mlflow-auth, key: MLFLOW_TRACKING_PASSWORD}" in text
    mlflow = next(d for _, d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    hosts = next(e["value"] for e in mlflow["env"] if e["name"] == "MLFLOW_SERVER_ALLOWED_HOSTS")
    assert "moss-mlflow:5000" in hosts.split(",")  # the Host header of MLFLOW_TRACKING_URI=http://moss-mlflow:5000
    root = mlflow["args"][mlflow["args"].index("--root") + 1]
    mount = mlflow["volumeMounts"][0]["mountPath"]
    assert root.startswith(mount + "/")  # its own folder inside the claim (the server chmods its root)


@pytest.mark.parametrize("name", ["preprocess", "train", "sweep"])
def test_render_writes_what_is_committed(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location("render", K8S / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    cluster = yaml.safe_load((K8S / "raycluster.yaml").read_text())["spec"]
    what, entrypoint = render.JOBS[name]
    assert render.rayjob(name, what, entrypoint, render.job_cluster(name, cluster)) == (K8S / f"rayjob-{name}.yaml").read_text()
