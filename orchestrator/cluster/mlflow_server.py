"""The cluster's MLflow tracking server: ``mlflow server`` with MLflow's basic-auth app.

Credentials come from the environment (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``,
the same variables the jobs authenticate with), never from the repo or a config file: the first
start creates that user as the admin of the user store in ``<root>/basic_auth.db``. The password
reaches ``mlflow server`` through its environment, not its command line (visible in ``ps``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

from ..config import ConfigError
from .secrets import write_private

AUTH_INI = "basic_auth.ini"
AUTH_DB = "basic_auth.db"
SECRET_KEY_FILE = "flask_secret_key"


def credentials(environ: dict[str, str] | None = None) -> tuple[str, str]:
    env = os.environ if environ is None else environ
    user, password = env.get("MLFLOW_TRACKING_USERNAME", ""), env.get("MLFLOW_TRACKING_PASSWORD", "")
    if not user or not password:
        raise ConfigError("MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD must be set: the server creates "
                          "that user as its admin (`moss cluster-secrets` writes them; source the file first)")
    if len(password) < 12:
        raise ConfigError("MLFLOW_TRACKING_PASSWORD is shorter than 12 characters")
    return user, password


def _secret_key(root: Path, env: dict[str, str]) -> str:
    """Flask's CSRF key: from the environment, else one generated once and kept in ``root`` (0600)."""
    if env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    path = root / SECRET_KEY_FILE
    if not path.exists():
        write_private(path, secrets.token_hex(32))
    return path.read_text().strip()


def check_user_store(root: Path, user: str, password: str) -> None:
    """Fail before starting when an existing user store holds another password for ``user``.

    MLflow creates the admin only on the first start, so after the secrets were regenerated every job
    would get 401 from a server that started fine.
    """
    db = root / AUTH_DB
    if not db.exists():
        return
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{db}")
    if store.has_user(user) and not store.authenticate_user(user, password):
        raise ConfigError(f"{db} holds another password for {user!r} (were the secrets regenerated?): "
                          f"start with the old secrets, or delete {db} to recreate the user")


def prepare(root: str | Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Write ``<root>/basic_auth.ini`` (no secrets in it) -> the environment for ``mlflow server``."""
    env = dict(os.environ if environ is None else environ)
    user, password = credentials(env)
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # the user store (password hashes) and the CSRF key live here
    check_user_store(root, user, password)
    write_private(root / AUTH_INI, "\n".join([
        "[mlflow]",
        "default_permission = READ",  # for users an admin adds later; requests without credentials get 401
        f"database_uri = sqlite:///{root / AUTH_DB}",
        f"admin_username = {user}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
    ]) + "\n")
    # MLflow's GenAI job runner (a supervisor + 7 huey consumers, ~250 MB each) is not used by training runs
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.pop("RAY_AUTH_TOKEN", None)  # sourced with the MLflow credentials; the server has no use for it
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(root / AUTH_INI), MLFLOW_AUTH_ADMIN_USERNAME=user,
               MLFLOW_AUTH_ADMIN_PASSWORD=password, MLFLOW_FLASK_SERVER_SECRET_KEY=_secret_key(root, env))
    return env


def command(root: str | Path, host: str, port: int, backend_store_uri: str | None = None,
            artifacts_destination: str | None = None, workers: int = 2) -> list[str]:
    """``mlflow server --app-name basic-auth ...``; stores default to ``<root>/mlflow.db`` and ``<root>/artifacts``.

    Artifacts are proxied by the server (``--artifacts-destination``), so clients upload through it
    with their credentials and need no S3 keys of their own.
    """
    root = Path(root).expanduser().resolve()
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if exe is None:
        raise ConfigError("the `mlflow` command is not installed next to this Python")
    return [exe, "server", "--app-name", "basic-auth", "--host", host, "--port", str(port),
            "--workers", str(workers),
            "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", artifacts_destination or str(root / "artifacts")]


def serve(root: str | Path, host: str, port: int, backend_store_uri: str | None = None,
          artifacts_destination: str | None = None, workers: int = 2) -> None:
    """Replace this process with the server (signals reach it directly)."""
    env = prepare(root)
    argv = command(root, host, port, backend_store_uri, artifacts_destination, workers)
    print(f"mlflow-server: http://{host}:{port}, basic auth (admin {env['MLFLOW_AUTH_ADMIN_USERNAME']!r}), "
          f"state in {Path(root).expanduser().resolve()}", flush=True)
    os.execve(argv[0], argv, env)
