"""Session fixtures: the fake upstream model, the real `holdfast serve`, a project wired to the
fake model, and the official SDK clients pointed at it.

Project `compat` has connection `up` (the fake upstream, API key `x`) and deployment `gpt`
(model `fake-model`). Project `other` exists for the cross-project isolation test.

The MLflow suite (test_mlflow_*.py) uses project `mlproj` through the official `mlflow` client: the
`ml` fixture sets the tracking URI `{server}/api/projects/mlproj/mlflow` and `MLFLOW_TRACKING_TOKEN`
for the session. With HOLDFAST_MLFLOW_PEER_URI set (e.g. to a real `mlflow server`), the same
tests run against that server instead, to check that they assert MLflow's own behaviour; the
Holdfast-only tests (test_mlflow_holdfast.py) need Holdfast.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_upstream import FakeUpstream  # noqa: E402
from harness import HoldfastServer, openai_client, project_client  # noqa: E402

# mlflow reports usage to a host of its own unless told not to (and this suite talks only to
# loopback): set before any test module imports mlflow.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

PROJECT = "compat"
OTHER_PROJECT = "other"
DEPLOYMENT = "gpt"
CONNECTION = "up"
UPSTREAM_MODEL = "fake-model"
UPSTREAM_KEY = "x"


@pytest.fixture(scope="session")
def upstream():
    server = FakeUpstream().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory, upstream):
    root = tmp_path_factory.mktemp("holdfast")
    hf = HoldfastServer(root / "data", root / "logs")
    hf.start()
    try:
        hf.setup_project(PROJECT, upstream.base_url, connection=CONNECTION, deployment=DEPLOYMENT,
                         model=UPSTREAM_MODEL, upstream_key=UPSTREAM_KEY)
        hf.setup_project(OTHER_PROJECT, upstream.base_url)
        yield hf
    finally:
        hf.stop()


@pytest.fixture(scope="session")
def key(server):
    return server.admin_key


@pytest.fixture(scope="session")
def project(server):
    client = project_client(server, PROJECT)
    with client:
        yield client


@pytest.fixture(scope="session")
def oai(project, key):
    client = openai_client(project, key)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def other_project(server):
    client = project_client(server, OTHER_PROJECT)
    with client:
        yield client


@pytest.fixture(scope="session")
def other_oai(other_project, key):
    client = openai_client(other_project, key)
    try:
        yield client
    finally:
        client.close()


ML_PROJECT = "mlproj"  # Holdfast project names are 3 to 63 characters, so not "ml"
ML_PEER_ENV = "HOLDFAST_MLFLOW_PEER_URI"


@dataclass
class MlTarget:
    """Where the MLflow tests point: a tracking URI, the key sent as MLFLOW_TRACKING_TOKEN (None
    for a peer `mlflow server` without auth) and the Holdfast server behind it (None for a peer)."""

    uri: str
    key: str | None
    holdfast: HoldfastServer | None

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


# The client's environment for the whole MLflow session; each test that changes one restores it
# (monkeypatch). Retries are off so a 5xx fails the test instead of being retried away.
_ML_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_TOKEN",
           "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_WORKSPACE",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


@pytest.fixture(scope="session")
def ml(request):
    """Project `mlproj` and the mlflow client's tracking URI and token pointed at it."""
    import mlflow

    peer = os.environ.get(ML_PEER_ENV)
    if peer:
        target = MlTarget(peer.rstrip("/"), None, None)
    else:
        server = request.getfixturevalue("server")
        server.cli("project", "create", ML_PROJECT)
        target = MlTarget(f"{server.url}/api/projects/{ML_PROJECT}/mlflow", server.admin_key, server)
    saved = {k: os.environ.get(k) for k in _ML_ENV}
    for k in _ML_ENV:
        os.environ.pop(k, None)
    os.environ["MLFLOW_TRACKING_URI"] = target.uri
    if target.key:
        os.environ["MLFLOW_TRACKING_TOKEN"] = target.key
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "30"
    mlflow.set_tracking_uri(target.uri)
    mlflow.set_registry_uri(target.uri)
    try:
        yield target
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def mlc(ml):
    """An `MlflowClient` on the `ml` target."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=ml.uri, registry_uri=ml.uri)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of the server log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when in ("call", "setup"):
        srv = item.funcargs.get("server") or item.funcargs.get("persist_server") or item.funcargs.get("ml_persist")
        if srv is None and item.funcargs.get("ml") is not None:
            srv = item.funcargs["ml"].holdfast
        if srv is not None:
            report.sections.append(("holdfast log (tail)", srv.log_tail(30)))
