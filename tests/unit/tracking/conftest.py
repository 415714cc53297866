"""Fixtures of the tracking tests."""

import socket

import pytest
from mlflow.tracking import MlflowClient


@pytest.fixture
def dead_uri(monkeypatch) -> str:
    """An http URI nobody listens on; MLflow does not retry (each request fails at once)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating its schema takes seconds); each test makes its own runs."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlc = MlflowClient(uri)
    exp = mlc.create_experiment("moss", artifact_location=(root / "mlruns").as_uri())
    return uri, mlc, exp
