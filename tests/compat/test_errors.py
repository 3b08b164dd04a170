"""Errors as the SDKs see them: the right exception classes, status codes and error shapes."""

from __future__ import annotations

import openai
import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from conftest import CONNECTION, DEPLOYMENT, PROJECT
from harness import MAX_FILE_BYTES, openai_client, project_client


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": text}


def test_unknown_conversation_is_not_found(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.conversations.retrieve("conv_doesnotexist0000000000")
    # The OpenAI error shape: {"error": {"message", "type", "param", "code"}}.
    assert isinstance(e.value.body, dict)
    assert "conv_doesnotexist0000000000" in e.value.body["message"]
    assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        oai.conversations.items.create("conv_doesnotexist0000000000", items=[user("hi")])
    with pytest.raises(openai.NotFoundError):
        oai.conversations.delete("conv_doesnotexist0000000000")


@pytest.mark.parametrize(
    "item",
    [
        {"type": "message", "role": "robot", "content": "beep"},
        {"type": "message", "role": "user"},
        {"type": "function_call", "name": "f"},
        {"type": "function_call_output", "call_id": "c1"},
        {"type": "message", "role": "user", "content": [{"type": "input_audio"}]},
        {"type": "no_such_item_type"},
    ],
    ids=["bad-role", "no-content", "call-without-call_id", "output-without-output", "bad-part", "bad-type"],
)
def test_malformed_item_is_bad_request(oai, item):
    conv = oai.conversations.create()
    with pytest.raises(openai.BadRequestError) as e:
        oai.conversations.items.create(conv.id, items=[user("fine"), item])
    assert e.value.status_code == 400
    assert e.value.body["type"] == "invalid_request_error"
    # Nothing of a refused request is kept.
    assert oai.conversations.items.list(conv.id).data == []
    with pytest.raises(openai.BadRequestError):
        oai.conversations.create(items=[item])


def test_malformed_json_is_bad_request(server, key):
    import httpx2

    r = httpx2.post(
        server.project_endpoint(PROJECT) + "/openai/v1/conversations",
        content=b"{not json",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400
    body = r.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]


def test_unsupported_tool_type_is_bad_request(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model=DEPLOYMENT, input="hi", tools=[{"type": "computer_use_preview",
                                                                    "display_width": 1, "display_height": 1,
                                                                    "environment": "linux"}])
    assert "computer_use_preview" in e.value.body["message"]


def test_file_over_the_size_limit_is_413(oai):
    with pytest.raises(openai.APIStatusError) as e:
        oai.files.create(file=("big.bin", b"x" * (MAX_FILE_BYTES + 1), "application/octet-stream"),
                         purpose="assistants")
    assert e.value.status_code == 413
    # Exactly the limit is allowed.
    ok = oai.files.create(file=("limit.bin", b"y" * MAX_FILE_BYTES, "application/octet-stream"), purpose="assistants")
    assert ok.bytes == MAX_FILE_BYTES
    assert oai.files.content(ok.id).content == b"y" * MAX_FILE_BYTES


def test_conversation_of_another_project_is_404(oai, other_oai):
    theirs = other_oai.conversations.create(items=[user("secret of the other project")], metadata={"p": "other"})
    assert other_oai.conversations.retrieve(theirs.id).id == theirs.id
    with pytest.raises(openai.NotFoundError):
        oai.conversations.retrieve(theirs.id)
    with pytest.raises(openai.NotFoundError):
        oai.conversations.items.list(theirs.id)
    with pytest.raises(openai.NotFoundError):
        oai.conversations.update(theirs.id, metadata={"p": "stolen"})
    with pytest.raises(openai.NotFoundError):
        oai.conversations.delete(theirs.id)
    with pytest.raises(openai.NotFoundError) as e:
        oai.responses.create(model=DEPLOYMENT, conversation=theirs.id, input="leak it")
    assert theirs.id in str(e.value)  # refused for the conversation, not for want of a route
    # Untouched.
    assert other_oai.conversations.retrieve(theirs.id).metadata == {"p": "other"}
    assert len(other_oai.conversations.items.list(theirs.id).data) == 1


def test_file_of_another_project_is_404(oai, other_oai):
    theirs = other_oai.files.create(file=("theirs.txt", b"not yours", "text/plain"), purpose="assistants")
    with pytest.raises(openai.NotFoundError) as e:
        oai.files.retrieve(theirs.id)
    assert theirs.id in str(e.value)
    with pytest.raises(openai.NotFoundError):
        oai.files.content(theirs.id)


def test_agent_of_another_project_is_404(project, other_project):
    from azure.ai.projects.models import PromptAgentDefinition
    from azure.core.exceptions import ResourceNotFoundError

    other_project.agents.create_version("only-there", definition=PromptAgentDefinition(model=DEPLOYMENT))
    with pytest.raises(ResourceNotFoundError):
        project.agents.get("only-there")


def test_unknown_project_is_404(server, key):
    pc = project_client(server, "no-such-project")
    with pc:
        with pytest.raises(HttpResponseError) as e:
            list(pc.agents.list())
        assert e.value.status_code == 404
        assert "no-such-project" in str(e.value)
        client = openai_client(pc, key)
        with pytest.raises(openai.NotFoundError) as e2:
            client.conversations.create()
        assert "no-such-project" in str(e2.value)


def test_wrong_key_is_authentication_error(server):
    bad = "hf_this_is_not_a_real_key_000000"
    pc = project_client(server, PROJECT, key=bad)
    with pc:
        with pytest.raises(ClientAuthenticationError):
            list(pc.agents.list())
        with pytest.raises(ClientAuthenticationError):
            pc.connections.get(CONNECTION)
        client = openai_client(pc, bad)
        with pytest.raises(openai.AuthenticationError) as e:
            client.conversations.create()
        assert e.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            client.responses.create(model=DEPLOYMENT, input="hi")


def test_missing_key_is_authentication_error(server, project):
    import httpx2

    r = httpx2.post(server.project_endpoint(PROJECT) + "/openai/v1/conversations", json={}, timeout=30)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_reader_key_can_read_but_not_write_or_see_secrets(server):
    created = server.cli_json("key", "create", "--name", "compat-reader", "--role", "reader")
    reader_key = created["key"]
    pc = project_client(server, PROJECT, key=reader_key)
    with pc:
        assert DEPLOYMENT in [d.name for d in pc.deployments.list()]
        assert pc.connections.get(CONNECTION).name == CONNECTION
        with pytest.raises(HttpResponseError) as e:
            pc.connections.get(CONNECTION, include_credentials=True)
        assert e.value.status_code == 403
        client = openai_client(pc, reader_key)
        with pytest.raises(openai.PermissionDeniedError):
            client.conversations.create()
        with pytest.raises(openai.PermissionDeniedError):
            client.responses.create(model=DEPLOYMENT, input="may I?")
        with pytest.raises(openai.PermissionDeniedError):
            client.files.create(file=("r.txt", b"r", "text/plain"), purpose="assistants")
        # Reading is allowed.
        assert isinstance(list(client.files.list()), list)
