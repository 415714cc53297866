"""Fixtures of the tracking tests."""

import socket

import pytest


@pytest.fixture
def dead_uri(monkeypatch) -> str:
    """An http URI nobody listens on; MLflow does not retry (each request fails at once)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
