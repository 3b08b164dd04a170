"""Connections and deployments through azure-ai-projects 2.x (`project_client.connections`,
`project_client.deployments`). They are created with the `holdfast` CLI in conftest."""

from __future__ import annotations

import pytest
from azure.core.exceptions import ResourceNotFoundError

from conftest import CONNECTION, DEPLOYMENT, PROJECT, UPSTREAM_KEY, UPSTREAM_MODEL


def test_list_connections(project, upstream):
    conns = list(project.connections.list())
    by_name = {c.name: c for c in conns}
    assert CONNECTION in by_name, [c.name for c in conns]
    c = by_name[CONNECTION]
    assert c.target == upstream.base_url
    # Listing never reveals the secret.
    assert c.credentials.type == "ApiKey"
    assert "key" not in c.credentials.as_dict()


def test_get_connection_without_and_with_credentials(project, upstream):
    plain = project.connections.get(CONNECTION)
    assert plain.name == CONNECTION
    assert plain.target == upstream.base_url
    assert plain.credentials.type == "ApiKey"
    assert "key" not in plain.credentials.as_dict()

    secret = project.connections.get(CONNECTION, include_credentials=True)
    assert secret.name == CONNECTION
    assert secret.credentials.type == "ApiKey"
    assert secret.credentials.as_dict()["key"] == UPSTREAM_KEY


def test_unknown_connection_is_404(project):
    with pytest.raises(ResourceNotFoundError):
        project.connections.get("no-such-connection")


def test_list_and_get_deployments(project):
    deps = {d.name: d for d in project.deployments.list()}
    assert DEPLOYMENT in deps, list(deps)
    d = deps[DEPLOYMENT]
    assert d.type == "ModelDeployment"
    assert d.model_name == UPSTREAM_MODEL
    assert d.connection_name == CONNECTION

    got = project.deployments.get(DEPLOYMENT)
    assert got.name == DEPLOYMENT
    assert got.model_name == UPSTREAM_MODEL
    assert got.connection_name == CONNECTION


def test_unknown_deployment_get_is_404(project):
    with pytest.raises(ResourceNotFoundError):
        project.deployments.get("no-such-deployment")


def test_cli_lists_match_sdk(server, project):
    """The CLI (control plane, /v1) and the SDK (/api/projects) see the same objects."""
    cli_conns = server.cli_json("connection", "list", "--project", PROJECT)
    assert CONNECTION in [c["name"] for c in cli_conns]
    cli_deps = server.cli_json("deployment", "list", "--project", PROJECT)
    assert DEPLOYMENT in [d["name"] for d in cli_deps]
    assert {d.name for d in project.deployments.list()} == {d["name"] for d in cli_deps}


def test_list_connections_filters(project):
    """`connection_type` and `default_connection` are filters (query `connectionType`,
    `defaultConnection`): a connection that does not match must not be listed."""
    up = project.connections.get(CONNECTION)
    assert up.type != "AzureBlob" and up.is_default is False
    assert CONNECTION not in [c.name for c in project.connections.list(connection_type="AzureBlob")]
    assert CONNECTION not in [c.name for c in project.connections.list(default_connection=True)]
    assert CONNECTION in [c.name for c in project.connections.list(default_connection=False)]


def test_list_deployments_filters(server, project):
    """`model_name`, `model_publisher` and `deployment_type` are filters (query `modelName`,
    `modelPublisher`, `deploymentType`)."""
    server.cli("deployment", "create", "--project", PROJECT, "--name", "filter-other",
               "--connection", CONNECTION, "--model", "other-model")
    assert [d.name for d in project.deployments.list(model_name="other-model")] == ["filter-other"]
    by_fake = [d.name for d in project.deployments.list(model_name=UPSTREAM_MODEL)]
    assert DEPLOYMENT in by_fake and "filter-other" not in by_fake
    assert list(project.deployments.list(model_publisher="no-such-publisher")) == []
    assert "filter-other" in [d.name for d in project.deployments.list(deployment_type="ModelDeployment")]
