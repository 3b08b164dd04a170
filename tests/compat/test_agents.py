"""Agents and their versions through azure-ai-projects 2.x (`project_client.agents`)."""

from __future__ import annotations

import time
import uuid

import pytest
from azure.ai.projects.models import FileSearchTool, FunctionTool, PromptAgentDefinition
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from conftest import DEPLOYMENT


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_create_version_twice_numbers_versions(project):
    name = unique("agent")
    v1 = project.agents.create_version(
        name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions="First instructions."))
    v2 = project.agents.create_version(
        name,
        definition=PromptAgentDefinition(model=DEPLOYMENT, instructions="Second instructions."),
        description="the second one",
        metadata={"team": "compat"},
    )
    assert (v1.name, v1.version) == (name, "1")
    assert (v2.name, v2.version) == (name, "2")
    assert v1.definition["kind"] == "prompt"
    assert v1.definition["model"] == DEPLOYMENT
    assert v1.definition["instructions"] == "First instructions."
    assert v2.definition["instructions"] == "Second instructions."
    assert v2.description == "the second one"
    assert v2.metadata == {"team": "compat"}
    # created_at is Unix seconds on the wire; the SDK makes it a datetime.
    assert abs(v2.created_at.timestamp() - time.time()) < 300
    assert v1.id != v2.id


def test_get_agent_and_version(project):
    name = unique("getter")
    project.agents.create_version(name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions="A"))
    project.agents.create_version(name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions="B"))

    agent = project.agents.get(name)
    assert agent.name == name
    assert agent.versions["latest"]["version"] == "2"
    assert agent.versions["latest"]["definition"]["instructions"] == "B"

    v1 = project.agents.get_version(name, "1")
    assert v1.version == "1"
    assert v1.definition["instructions"] == "A"


def test_list_agents_includes_created_and_pages(project):
    names = [unique("lister") for _ in range(5)]
    for n in names:
        project.agents.create_version(n, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions=n))
    # limit=2 forces the SDK to follow `last_id` across several pages.
    listed = [a.name for a in project.agents.list(limit=2)]
    assert len(listed) == len(set(listed)), f"duplicates while paging: {listed}"
    for n in names:
        assert n in listed
    by_name = {a.name: a for a in project.agents.list(limit=100)}
    assert by_name[names[0]].versions["latest"]["definition"]["instructions"] == names[0]


def test_list_versions_pages_newest_first(project):
    name = unique("pager")
    for i in range(1, 6):
        project.agents.create_version(name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions=f"v{i}"))
    assert [v.version for v in project.agents.list_versions(name, limit=2)] == ["5", "4", "3", "2", "1"]
    assert [v.version for v in project.agents.list_versions(name, limit=2, order="asc")] == ["1", "2", "3", "4", "5"]
    assert [v.definition["instructions"] for v in project.agents.list_versions(name)] == [f"v{i}" for i in range(5, 0, -1)]


def test_delete_version_and_agent(project):
    name = unique("deleter")
    for i in range(3):
        project.agents.create_version(name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions=f"v{i + 1}"))

    deleted = project.agents.delete_version(name, "1")
    assert deleted["deleted"] is True
    assert [v.version for v in project.agents.list_versions(name)] == ["3", "2"]
    with pytest.raises(ResourceNotFoundError):
        project.agents.get_version(name, "1")

    # Deleting the latest moves `latest` back; numbers are never reused.
    project.agents.delete_version(name, "3")
    assert project.agents.get(name).versions["latest"]["version"] == "2"
    v4 = project.agents.create_version(name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions="v4"))
    assert v4.version == "4"

    gone = project.agents.delete(name)
    assert gone["deleted"] is True
    with pytest.raises(ResourceNotFoundError):
        project.agents.get(name)
    with pytest.raises(ResourceNotFoundError):
        project.agents.get_version(name, "2")
    assert name not in [a.name for a in project.agents.list(limit=100)]


def test_agent_with_tools_round_trips(project):
    name = unique("tooled")
    tool = FunctionTool(
        name="get_weather",
        description="Current weather in a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        strict=True,
    )
    v = project.agents.create_version(
        name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions="Use tools.", tools=[tool]))
    got = project.agents.get_version(name, v.version)
    tools = got.definition["tools"]
    assert len(tools) == 1
    assert tools[0]["type"] == "function"
    assert tools[0]["name"] == "get_weather"
    assert tools[0]["parameters"]["required"] == ["city"]


def test_unknown_deployment_is_400(project):
    with pytest.raises(HttpResponseError) as e:
        project.agents.create_version(unique("nodep"), definition=PromptAgentDefinition(model="no-such-deployment"))
    assert e.value.status_code == 400
    assert "no-such-deployment" in str(e.value)


def test_unknown_vector_store_in_file_search_is_400(project):
    with pytest.raises(HttpResponseError) as e:
        project.agents.create_version(
            unique("novs"),
            definition=PromptAgentDefinition(model=DEPLOYMENT, tools=[FileSearchTool(vector_store_ids=["vs_nope"])]),
        )
    assert e.value.status_code == 400


def test_unsupported_agent_tool_is_400(project):
    with pytest.raises(HttpResponseError) as e:
        project.agents.create_version(
            unique("badtool"),
            body={"definition": {"kind": "prompt", "model": DEPLOYMENT, "tools": [{"type": "computer_use_preview"}]}},
        )
    assert e.value.status_code == 400


def test_invalid_agent_name_is_400(project):
    with pytest.raises(HttpResponseError) as e:
        project.agents.create_version("bad name!", definition=PromptAgentDefinition(model=DEPLOYMENT))
    assert e.value.status_code == 400


def test_unknown_agent_is_404(project):
    with pytest.raises(ResourceNotFoundError):
        project.agents.get(unique("ghost"))
    with pytest.raises(ResourceNotFoundError):
        project.agents.delete(unique("ghost"))


def test_concurrent_create_version_numbers_are_unique(project):
    from concurrent.futures import ThreadPoolExecutor

    name = unique("race")

    def create(i: int) -> str:
        v = project.agents.create_version(name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions=str(i)))
        return v.version

    with ThreadPoolExecutor(8) as pool:
        versions = list(pool.map(create, range(16)))
    assert sorted(versions, key=int) == [str(i) for i in range(1, 17)]
    listed = {v.version: v.definition["instructions"] for v in project.agents.list_versions(name, limit=100)}
    assert sorted(listed.values(), key=int) == [str(i) for i in range(16)]
    assert project.agents.get(name).versions["latest"]["version"] == "16"
