"""`moss cluster-secrets`: a private env file that sh can source and the nodes read back unchanged."""

import stat
import subprocess

import pytest

from orchestrator.cli import main
from orchestrator.cluster.secrets import generate, read_env_file, write_env_file
from orchestrator.config import ConfigError


def test_generated_secrets_are_fresh_and_strong():
    a, b = generate(), generate()
    assert a["RAY_AUTH_MODE"] == "token" and a["MLFLOW_TRACKING_USERNAME"] == "moss"
    assert len(a["RAY_AUTH_TOKEN"]) == 64 and int(a["RAY_AUTH_TOKEN"], 16) >= 0
    assert len(a["MLFLOW_TRACKING_PASSWORD"]) >= 24
    assert a["RAY_AUTH_TOKEN"] != b["RAY_AUTH_TOKEN"] and a["MLFLOW_TRACKING_PASSWORD"] != b["MLFLOW_TRACKING_PASSWORD"]
    with pytest.raises(ConfigError):
        generate("bad user; rm -rf /")


def test_file_is_private_sourceable_and_round_trips(tmp_path):
    values = generate()
    path = write_env_file(tmp_path / "sub" / "cluster.env", values)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_env_file(path) == values
    shell = subprocess.run(["sh", "-c", f"set -a; . {path}; set +a; env"], capture_output=True, text=True, check=True)
    env = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
    assert {k: env[k] for k in values} == values


def test_existing_file_is_kept_unless_forced(tmp_path):
    path = write_env_file(tmp_path / "cluster.env", generate())
    before = path.read_text()
    with pytest.raises(ConfigError, match="--force"):
        write_env_file(path, generate())
    assert path.read_text() == before
    path.chmod(0o644)
    write_env_file(path, generate(), force=True)
    assert path.read_text() != before and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_malformed_or_missing_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.env"
    bad.write_text("# comment\nexport A=1\nnot a line\n")
    with pytest.raises(ConfigError, match="bad.env:3"):
        read_env_file(bad)
    with pytest.raises(ConfigError, match="cluster-secrets"):
        read_env_file(tmp_path / "missing.env")


def test_cli_writes_the_file_and_never_prints_a_secret(tmp_path, capsys):
    out = tmp_path / "c.env"
    assert main(["cluster-secrets", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    values = read_env_file(out)
    assert str(out) in printed and values["RAY_AUTH_TOKEN"] not in printed
    assert values["MLFLOW_TRACKING_PASSWORD"] not in printed
    assert main(["cluster-secrets", "--out", str(out)]) == 2  # refuses to replace


def test_private_write_never_follows_a_symlink_or_widens_a_mode(tmp_path):
    from orchestrator.cluster.secrets import write_private

    target = tmp_path / "elsewhere.txt"
    target.write_text("untouched")
    link = tmp_path / "cluster.env"
    link.symlink_to(target)
    write_private(link, "SECRET=1\n")
    assert target.read_text() == "untouched" and not link.is_symlink()
    assert link.read_text() == "SECRET=1\n" and stat.S_IMODE(link.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
