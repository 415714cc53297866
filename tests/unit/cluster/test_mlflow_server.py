"""`moss mlflow-server`: basic auth from the environment, no password on disk or on the command line."""

import configparser
import stat

import pytest

from orchestrator.cli import main
from orchestrator.cluster.mlflow_server import AUTH_DB, AUTH_INI, command, prepare
from orchestrator.config import ConfigError

CREDS = {"MLFLOW_TRACKING_USERNAME": "moss", "MLFLOW_TRACKING_PASSWORD": "pw-0123456789abcdef"}


def test_prepare_writes_an_auth_config_without_the_password(tmp_path):
    (tmp_path / "srv").mkdir(mode=0o755)  # as `mkdir -p ~/mlflow` leaves it
    env = prepare(tmp_path / "srv", {"PATH": "/bin", "RAY_AUTH_TOKEN": "ab" * 32, **CREDS})
    ini = tmp_path / "srv" / AUTH_INI
    assert stat.S_IMODE((tmp_path / "srv").stat().st_mode) == 0o700
    assert "RAY_AUTH_TOKEN" not in env
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    parsed = configparser.ConfigParser()
    parsed.read(ini)
    assert parsed["mlflow"]["admin_username"] == "moss"
    assert parsed["mlflow"]["database_uri"] == f"sqlite:///{tmp_path / 'srv' / AUTH_DB}"
    assert CREDS["MLFLOW_TRACKING_PASSWORD"] not in ini.read_text()
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(ini)
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == CREDS["MLFLOW_TRACKING_PASSWORD"]
    assert len(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == 64  # generated once, kept for restarts
    assert prepare(tmp_path / "srv", {**CREDS})["MLFLOW_FLASK_SERVER_SECRET_KEY"] == env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


@pytest.mark.parametrize("env", [{}, {"MLFLOW_TRACKING_USERNAME": "moss"},
                                 {"MLFLOW_TRACKING_USERNAME": "moss", "MLFLOW_TRACKING_PASSWORD": "short"}])
def test_missing_or_weak_credentials_are_refused(tmp_path, env):
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_PASSWORD"):
        prepare(tmp_path, env)


def test_command_runs_the_basic_auth_app_and_carries_no_secret(tmp_path):
    argv = command(tmp_path, "127.0.0.1", 5123)
    assert argv[1:5] == ["server", "--app-name", "basic-auth", "--host"]
    assert f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}" in argv and str(tmp_path.resolve() / "artifacts") in argv
    assert not [a for a in argv if CREDS["MLFLOW_TRACKING_PASSWORD"] in a]
    s3 = command(tmp_path, "0.0.0.0", 5000, "postgresql://db/mlflow", "s3://bucket/mlflow")
    assert "postgresql://db/mlflow" in s3 and "s3://bucket/mlflow" in s3


def test_a_user_store_with_another_password_stops_the_start(tmp_path):
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{tmp_path / AUTH_DB}")
    store.create_user("moss", "the-old-password-123", is_admin=True)
    with pytest.raises(ConfigError, match="another password"):
        prepare(tmp_path, CREDS)
    prepare(tmp_path, {"MLFLOW_TRACKING_USERNAME": "moss", "MLFLOW_TRACKING_PASSWORD": "the-old-password-123"})


def test_cli_without_credentials_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert main(["mlflow-server", "--root", str(tmp_path)]) == 2
    assert "MLFLOW_TRACKING_USERNAME" in capsys.readouterr().err
