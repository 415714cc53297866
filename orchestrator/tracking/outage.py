"""An unreachable tracking server: what its errors look like, waiting for it where a run cannot go on
without an answer (its start), and MLflow's own HTTP retries kept short everywhere else.
"""

from __future__ import annotations

import os
import re
import time

from ..config import ConfigError
from .redact import redact_text

#: MLflow retries a failed request 7 times over ~4 minutes and waits 120 s for a silent server. It reads
#: these variables on every request (mlflow/utils/rest_utils.py http_request), so processes that track
#: set them (os.environ.setdefault: an explicit setting wins): ~3 attempts of at most 30 s each. The
#: tracker (resilient.py) and the start-of-run waits below retry on their own schedule.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class Unreachable(ConfigError):
    """The tracking server stayed unreachable (a ConfigError, so the CLI prints it as one line, exit 2)."""


def bound_http() -> None:
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def request_bound_s() -> float:
    """The longest one MLflow request can take under those settings (a silent server, every retry)."""
    retries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", 7))
    timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", 120))
    backoff = float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 2))
    return (retries + 1) * timeout + sum(min(120.0, backoff * 2 ** i) + 1 for i in range(1, retries))


def say(line: str) -> None:
    """One line on stderr, the terminal's while the console is quiet (not print(): Ray Train patches it to
    write each line twice)."""
    from ..console import warn

    warn(f"moss tracking: {line}")


def unreachable(err: BaseException) -> bool:
    """Worth retrying later: no connection, a timeout, 5xx / 429 after MLflow's retries, a locked sqlite store."""
    import requests
    import urllib3

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                            requests.exceptions.RetryError, urllib3.exceptions.HTTPError, ConnectionError,
                            TimeoutError)):
            return True
        if type(err).__name__ == "OperationalError":  # sqlalchemy's: database locked, disk I/O
            return True
        err = err.__cause__ or err.__context__
    return False


def brief(err: BaseException) -> str:
    """The error in a few words: the socket's reason ("[Errno 111] Connection refused") when there is one."""
    text = " ".join(str(err).split())
    reason = re.search(r"\[Errno -?\d+\] [^'\")]+|Read timed out|Connection aborted|RemoteDisconnected[^'\")]*", text)
    text = reason.group(0).strip() if reason else text
    return redact_text(text if len(text) < 200 else text[:197] + "...")


def wait_for(call, what: str, uri: str, wait_s: float):
    """``call()``, retried with backoff (1 s doubling to 15 s) while the server is unreachable, for up to
    ``wait_s`` (tracking.startup_wait_s); says once that it waits; then Unreachable."""
    bound_http()  # each attempt short: this loop does the waiting
    deadline = time.monotonic() + wait_s
    delay, said = 1.0, False
    while True:
        try:
            return call()
        except Exception as err:
            if not unreachable(err):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unreachable(f"MLflow at {redact_text(uri)} stayed unreachable for {wait_s:g} s "
                                  f"(tracking.startup_wait_s; {what}): {brief(err)}") from err
            if not said:
                say(f"waiting up to {wait_s:g} s for MLflow at {redact_text(uri)} ({what}): {brief(err)}")
                said = True
            time.sleep(min(delay, left))
            delay = min(delay * 2, 15.0)


class PatientClient:
    """An MlflowClient each of whose calls waits for an unreachable server (``wait_for``)."""

    def __init__(self, mlc, uri: str, wait_s: float):
        self._mlc, self._uri, self._wait_s = mlc, uri, wait_s

    def __getattr__(self, name: str):
        attr = getattr(self._mlc, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: wait_for(lambda: attr(*args, **kwargs), name, self._uri, self._wait_s)
