"""Session fixtures: the fake upstream model, the real `holdfast serve`, a project wired to the
fake model, and the official SDK clients pointed at it.

Project `compat` has connection `up` (the fake upstream, API key `x`) and deployment `gpt`
(model `fake-model`). Project `other` exists for the cross-project isolation test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_upstream import FakeUpstream  # noqa: E402
from harness import HoldfastServer, openai_client, project_client  # noqa: E402

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


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of the server log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when in ("call", "setup"):
        srv = item.funcargs.get("server") or item.funcargs.get("persist_server")
        if srv is not None:
            report.sections.append(("holdfast log (tail)", srv.log_tail(30)))
