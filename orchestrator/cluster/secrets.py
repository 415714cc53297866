"""The cluster's secrets, generated on the user's machine and never committed.

One env file (default ``~/.moss/cluster.env``, mode 0600) holds the Ray auth token and the MLflow
credentials. ``cluster.yaml`` copies it to every node (``file_mounts``) and sources it before ``ray
start``, so Ray's processes (job drivers, Train workers) inherit the variables; the user sources it
before ``ray job submit``. Values are hex / URL-safe, so the file is safe to source from sh.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from ..config import ConfigError

MLFLOW_USER = "moss"
_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def generate(username: str = MLFLOW_USER) -> dict[str, str]:
    """Fresh secrets: Ray token auth on, a 256-bit Ray token, an MLflow user and password."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", username):
        raise ConfigError(f"MLflow user name {username!r}: use letters, digits, '_', '.', '-'")
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),  # the format `ray get-auth-token --generate` writes
        "MLFLOW_TRACKING_USERNAME": username,
        "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(24),
    }


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only: a fresh 0600 file (never an existing one or a symlink's
    target, so no moment with the new text under old permissions) renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_env_file(path: str | Path, values: dict[str, str], force: bool = False) -> Path:
    """Write ``values`` as KEY=VALUE lines readable only by the owner; refuse to replace a file unless forced.

    Replacing the secrets of a running cluster locks its jobs out (the MLflow server keeps the old
    password in its user store), so it takes ``force``.
    """
    path = Path(path).expanduser()
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; it may hold a running cluster's secrets (--force replaces them)")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = ["# moss cluster secrets: copied to every node by cluster.yaml; never commit this file"]
    lines += [f"{k}={v}" for k, v in values.items()]
    write_private(path, "\n".join(lines) + "\n")
    return path


def read_env_file(path: str | Path) -> dict[str, str]:
    """KEY=VALUE lines (``export`` and comments allowed) -> dict; a malformed line is an error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path} not found (`moss cluster-secrets` writes it)")
    out = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ConfigError(f"{path}:{n}: expected KEY=VALUE")
        out[m[1]] = m[2].strip().strip("'\"")
    return out
