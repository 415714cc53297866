"""Keep secrets out of MLflow: tokens, keys and passwords in config values, URLs and the environment.

Anything logged as a param, tag or artifact passes through ``redact`` first. A value is masked when its
key names a secret, when it is the value of a secret-named environment variable, when it is the
password of a URL (``scheme://user:password@host``) or when it is a secret-named URL query parameter.
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
SECRET_NAME = re.compile(
    r"(token(?!iz|s)|secret|passw(or)?d|_pwd$|api[_-]?key|access[_-]?key|private[_-]?key|credential|(^|_)auth$|"
    r"authorization|signature|(^|_)sig$|key$)",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<pw>[^/\s@]+)(?P<post>@)")
_URL_USER_ONLY = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]+)(?P<post>@)")  # a token as user
#: name=value after ? & # or ; (query strings, fragments, connection strings such as AccountKey=...)
_QUERY_PARAM = re.compile(r"(?P<pre>[?&#;](?P<name>[^=&#;\s]+)=)(?P<val>[^&#;\s]*)")
MIN_SECRET_LEN = 6  # shorter env values (e.g. "1", "true") are not masked inside other strings


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def secret_env_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names say they are secrets, longest first."""
    env = os.environ if environ is None else environ
    vals = {v for k, v in env.items() if is_secret_name(k) and len(v) >= MIN_SECRET_LEN}
    return sorted(vals, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """Mask URL passwords, secret-named query parameters and known secret values inside a string."""
    for value in secret_env_values() if secrets is None else secrets:
        text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(lambda m: m["pre"] + MASK + m["post"], text)
    text = _URL_USER_ONLY.sub(lambda m: m["pre"] + MASK + m["post"], text)
    return _QUERY_PARAM.sub(lambda m: m["pre"] + (MASK if is_secret_name(m["name"]) else m["val"]), text)


def redact(obj: Any, secrets: list[str] | None = None, key: str = "") -> Any:
    """A copy of a JSON-like tree with every secret masked (see the module docstring). Under a secret-named
    key everything is masked, whatever its type: a number, a list, a nested mapping of any key names."""
    secrets = secret_env_values() if secrets is None else secrets
    if key and is_secret_name(key) and obj not in (None, "", [], {}) and not isinstance(obj, bool):
        return MASK
    if isinstance(obj, dict):
        return {k: redact(v, secrets, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets, key) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj


def redact_document(text: str, name: str = "", secrets: list[str] | None = None) -> str:
    """A YAML or JSON document (by ``name``'s suffix) with its tree redacted, so a secret under a secret-named
    key is masked whatever its shape; other text, and text that does not parse, is redacted as text."""
    import json

    import yaml

    secrets = secret_env_values() if secrets is None else secrets
    if not name.endswith((".json", ".yaml", ".yml")):
        return redact_text(text, secrets)
    try:
        if name.endswith(".json"):
            tree = json.loads(text)
            return json.dumps(redact(tree, secrets), indent=2) if isinstance(tree, (dict, list)) else redact_text(text, secrets)
        tree = yaml.safe_load(text)
    except Exception:
        return redact_text(text, secrets)
    if not isinstance(tree, (dict, list)):
        return redact_text(text, secrets)
    return yaml.safe_dump(redact(tree, secrets), sort_keys=False)


TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".txt", ".csv", ".jsonl", ".log", ".html")


def redacting_client(uri: str):
    """An MlflowClient that redacts every param, tag, text and text artifact it sends: the one redaction
    pass every MLflow writer of the package goes through (train, sweeps, evaluate, compare, generate)."""
    from mlflow.tracking import MlflowClient

    class RedactingClient(MlflowClient):
        def create_run(self, experiment_id, start_time=None, tags=None, run_name=None):
            return super().create_run(experiment_id, start_time, redact(dict(tags or {})), run_name)

        def log_param(self, run_id, key, value, synchronous=None):
            return super().log_param(run_id, key, _value(key, value), synchronous)

        def set_tag(self, run_id, key, value, synchronous=None):
            return super().set_tag(run_id, key, _value(key, value), synchronous)

        def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
            from mlflow.entities import Param, RunTag

            params = [Param(p.key, _value(p.key, p.value)) for p in params]
            tags = [RunTag(t.key, _value(t.key, t.value)) for t in tags]
            return super().log_batch(run_id, metrics, params, tags, synchronous)

        def log_text(self, run_id, text, artifact_file):
            return super().log_text(run_id, redact_document(text, artifact_file), artifact_file)


        def log_artifact(self, run_id, local_path, artifact_path=None):
            with _scrubbed(local_path) as path:
                return super().log_artifact(run_id, path, artifact_path)

        def log_artifacts(self, run_id, local_dir, artifact_path=None):
            with _scrubbed(local_dir) as path:
                return super().log_artifacts(run_id, path, artifact_path)

        def create_logged_model(self, experiment_id, name=None, source_run_id=None, tags=None, params=None,
                                model_type=None):
            tags = {k: _value(k, v) for k, v in (tags or {}).items()}
            params = {k: _value(k, v) for k, v in (params or {}).items()}
            return super().create_logged_model(experiment_id, name, source_run_id, tags, params, model_type)

        def log_model_artifacts(self, model_id, local_dir, artifact_path=None):
            with _scrubbed(local_dir) as path:
                return super().log_model_artifacts(model_id, path, artifact_path)

    return RedactingClient(tracking_uri=uri)


def _value(key: str, value) -> str:
    return MASK if is_secret_name(key) and value not in (None, "") else redact_text(str(value))


class _scrubbed:
    """A copy of a file or folder whose text files (TEXT_SUFFIXES) have secret values, URL credentials and
    secret query parameters masked; binary files (weights, images) are linked or copied as they are."""

    def __init__(self, path):
        self.path = str(path)

    def __enter__(self) -> str:
        import os
        import shutil
        import tempfile

        self._tmp = tempfile.mkdtemp(prefix="moss-redacted-")
        src = self.path.rstrip("/")
        dst = os.path.join(self._tmp, os.path.basename(src))
        files = [(src, dst)] if os.path.isfile(src) else [
            (os.path.join(here, n), os.path.join(dst, os.path.relpath(os.path.join(here, n), src)))
            for here, _, names in os.walk(src) for n in names]
        os.makedirs(dst if not os.path.isfile(src) else self._tmp, exist_ok=True)
        for a, b in files:
            os.makedirs(os.path.dirname(b), exist_ok=True)
            if a.endswith(TEXT_SUFFIXES):
                with open(a, encoding="utf-8", errors="surrogateescape") as f:
                    text = f.read()
                with open(b, "w", encoding="utf-8", errors="surrogateescape") as f:
                    f.write(redact_text(text))  # values only: a model's config keys stay as PEFT wrote them
            else:
                try:
                    os.link(a, b)
                except OSError:
                    shutil.copyfile(a, b)
        return dst

    def __exit__(self, *exc) -> None:
        import shutil

        shutil.rmtree(self._tmp, ignore_errors=True)
