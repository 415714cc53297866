"""jobs/: thin entrypoints whose exit codes reach `ray job status`, and a runtime env that uploads only code."""

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from ray.runtime_env import RuntimeEnv

from orchestrator.tracking.redact import is_secret_name

REPO = Path(__file__).parents[2]
ENTRYPOINTS = {"demo.py": "demo", "preprocess.py": "preprocess", "train.py": "train", "sweep.py": "sweep",
               "evaluate.py": "evaluate", "generate.py": "generate"}


def runtime_env() -> dict:
    return yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())


def test_runtime_env_is_valid_for_ray():
    env = runtime_env()
    RuntimeEnv(**env)  # Ray's own validation of the fields
    assert env["working_dir"] == "."
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://${MOSS_MLFLOW_ADDRESS}"
    assert not [k for k in env["env_vars"] if is_secret_name(k)]  # secrets come from the nodes' environment


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_entrypoints_are_thin(name):
    source = (REPO / "jobs" / name).read_text()
    assert len(source.splitlines()) <= 40
    tree = ast.parse(source)
    assert ast.get_docstring(tree)
    assert f'main(["{ENTRYPOINTS[name]}", *sys.argv[1:]])' in source and "sys.exit(" in source


def test_a_bad_config_exits_2_before_ray_starts(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # would hang or fail loudly if Ray were contacted
    out = subprocess.run([sys.executable, "jobs/train.py", "jobs/configs/sample.yaml", "--set", "adapter.rank=0"],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "moss train:" in out.stderr and "adapter.rank" in out.stderr


def copy_tracked_tree(dest: Path) -> list[str]:
    """The repository as a fresh clone has it -> the tracked files copied."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    copied = []
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
            copied.append(rel)
    return copied


def test_upload_leaves_out_data_results_and_environments(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    tree = tmp_path / "repo"
    tracked = copy_tracked_tree(tree)
    junk = {".git/objects/pack/big.pack", ".venv/lib/torch.so", "data/leafinstruct/part-0.jsonl", "shards/x.parquet",
            "demo_out/ray_results/ck/optimizer.safetensors", "ray_results/sweep/trial/state.pkl", "mlruns/1/m.json",
            "mlflow.db", "runs/r/adapter_model.safetensors", "benchmarks/results/x.json", "report/compare/a.png",
            "model.bin", "orchestrator/__pycache__/cli.cpython-311.pyc"}
    for rel in junk:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(os.urandom(1024) * 1024)  # 1 MiB each
    pkg = tmp_path / "pkg.zip"
    # include_gitignore=False: the excludes alone must do it, whatever .gitignore says
    create_package(str(tree), pkg, include_gitignore=False, excludes=runtime_env()["excludes"])
    names = set(zipfile.ZipFile(pkg).namelist())
    code = {f for f in tracked if f.startswith(("orchestrator/", "jobs/", "search_spaces/"))}
    assert {"orchestrator/data/pipeline.py", "orchestrator/cli.py", "jobs/train.py", "jobs/runtime_env.yaml"} <= code
    assert not code - names, sorted(code - names)  # every file of the package, the jobs and the spaces
    assert not junk & names, junk & names
    assert pkg.stat().st_size < 2 * 2**20, pkg.stat().st_size
