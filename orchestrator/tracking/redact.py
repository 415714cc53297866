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
    """A copy of a JSON-like tree with every secret masked (see the module docstring)."""
    secrets = secret_env_values() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: redact(v, secrets, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets, key) for v in obj]
    if isinstance(obj, str):
        if key and is_secret_name(key) and obj:
            return MASK
        return redact_text(obj, secrets)
    return obj
