"""Everything created through the SDKs survives a restart of the server (SIGTERM, then start
again on the same data directory). This module runs its own server so restarts disturb no
other test."""

from __future__ import annotations

import json
import time

import openai
import pytest
from azure.ai.projects.models import PromptAgentDefinition

from harness import HoldfastServer, openai_client, project_client
from util import content_text, only_chat_request, wait_vector_store_ready

PROJECT = "keep"


@pytest.fixture(scope="module")
def persist_server(tmp_path_factory, upstream):
    root = tmp_path_factory.mktemp("persist")
    hf = HoldfastServer(root / "data", root / "logs")
    hf.start()
    try:
        hf.setup_project(PROJECT, upstream.base_url)
        yield hf
    finally:
        hf.stop()


class Clients:
    """Fresh SDK clients (no pooled connections to a server that has gone)."""

    def __init__(self, server: HoldfastServer):
        self.project = project_client(server, PROJECT)
        self.oai = openai_client(self.project, server.admin_key)

    def close(self):
        self.oai.close()
        self.project.close()


def restart(server: HoldfastServer) -> None:
    code = server.restart()
    assert code == 0, f"holdfast did not shut down cleanly on SIGTERM (exit {code}):\n{server.log_tail()}"


def test_agents_conversations_items_survive_restart(persist_server):
    c = Clients(persist_server)
    try:
        for i in (1, 2, 3):
            c.project.agents.create_version(
                "keeper", definition=PromptAgentDefinition(model="gpt", instructions=f"rules v{i}"),
                metadata={"n": str(i)})
        c.project.agents.delete_version("keeper", "3")
        conv = c.oai.conversations.create(
            items=[{"type": "message", "role": "user", "content": "kept"}], metadata={"keep": "yes"})
        more = c.oai.conversations.items.create(
            conv.id, items=[{"type": "message", "role": "user", "content": f"n{i}"} for i in range(130)])
        item_ids = [i.id for i in c.oai.conversations.items.list(conv.id, order="asc", limit=100)]
        assert len(item_ids) == 131
        assert item_ids[1:] == [i.id for i in more.data]
        gone = c.oai.conversations.create()
        c.oai.conversations.delete(gone.id)
    finally:
        c.close()

    restart(persist_server)

    c = Clients(persist_server)
    try:
        assert [v.version for v in c.project.agents.list_versions("keeper")] == ["2", "1"]
        v1 = c.project.agents.get_version("keeper", "1")
        assert v1.definition["instructions"] == "rules v1" and v1.metadata == {"n": "1"}
        assert c.project.agents.get("keeper").versions["latest"]["version"] == "2"
        # Version numbers are never reused, across restarts too.
        v4 = c.project.agents.create_version("keeper", definition=PromptAgentDefinition(model="gpt"))
        assert v4.version == "4"

        got = c.oai.conversations.retrieve(conv.id)
        assert got.metadata == {"keep": "yes"} and got.created_at == conv.created_at
        after = list(c.oai.conversations.items.list(conv.id, order="asc", limit=100))
        assert [i.id for i in after] == item_ids
        assert after[0].content[0].text == "kept"
        assert [i.content[0].text for i in after[1:]] == [f"n{i}" for i in range(130)]
        with pytest.raises(openai.NotFoundError):
            c.oai.conversations.retrieve(gone.id)

        assert c.project.connections.get("up", include_credentials=True).credentials.as_dict()["key"] == "x"
        assert c.project.deployments.get("gpt").model_name == "fake-model"
    finally:
        c.close()


def test_files_and_vector_stores_survive_restart(persist_server):
    text = b"Persistent fact: the lighthouse keeper is named Ingrid.\n"
    data = text + bytes(range(256))
    c = Clients(persist_server)
    try:
        f = c.oai.files.create(file=("keeper.txt", text, "text/plain"), purpose="assistants")
        blob = c.oai.files.create(file=("raw.bin", data, "application/octet-stream"), purpose="assistants")
        vs = c.oai.vector_stores.create(name="kept-store", file_ids=[f.id])
        wait_vector_store_ready(c.oai, vs.id, expect_files=1)
        before = [(r.file_id, r.content[0].text) for r in c.oai.vector_stores.search(vs.id, query="lighthouse keeper")]
        assert before and before[0][0] == f.id
    finally:
        c.close()

    restart(persist_server)

    c = Clients(persist_server)
    try:
        assert c.oai.files.retrieve(f.id).filename == "keeper.txt"
        assert c.oai.files.content(f.id).content == text
        assert c.oai.files.content(blob.id).content == data
        got = c.oai.vector_stores.retrieve(vs.id)
        assert got.name == "kept-store" and got.file_counts.completed == 1
        assert [x.id for x in c.oai.vector_stores.files.list(vs.id)] == [f.id]
        after = [(r.file_id, r.content[0].text) for r in c.oai.vector_stores.search(vs.id, query="lighthouse keeper")]
        assert after == before
    finally:
        c.close()


def test_responses_survive_restart(persist_server, upstream):
    c = Clients(persist_server)
    try:
        conv = c.oai.conversations.create()
        r1 = c.oai.responses.create(model="gpt", conversation=conv.id, input="before the restart")
        assert r1.output_text == "You said: before the restart"
        chained = c.oai.responses.create(model="gpt", input="chain start")
    finally:
        c.close()

    restart(persist_server)

    c = Clients(persist_server)
    try:
        got = c.oai.responses.retrieve(r1.id)
        assert got.status == "completed" and got.output_text == "You said: before the restart"
        texts = [i.content[0].text for i in c.oai.conversations.items.list(conv.id, order="asc")]
        assert texts == ["before the restart", "You said: before the restart"]

        # The chain continues from the stored response after the restart.
        mark = upstream.mark()
        r2 = c.oai.responses.create(model="gpt", input="chain next", previous_response_id=chained.id)
        assert r2.output_text == "You said: chain next"
        sent = only_chat_request(upstream, mark)
        pairs = [(m["role"], content_text(m.get("content"))) for m in sent["body"]["messages"]]
        assert pairs[-3:] == [("user", "chain start"), ("assistant", "You said: chain start"), ("user", "chain next")], \
            json.dumps(pairs)
    finally:
        c.close()


def test_background_response_cut_off_by_a_restart_runs_again_to_an_end(persist_server):
    """A background response whose model call is still running when the server stops is run
    again after the restart, under its own id, and ends (here the fake model hangs past the
    harness's upstream timeout again, so it ends failed); pollers never wait forever."""
    c = Clients(persist_server)
    try:
        r = c.oai.responses.create(model="gpt", input="please hang for a while", background=True)
        assert r.status in ("queued", "in_progress")
    finally:
        c.close()

    restart(persist_server)

    c = Clients(persist_server)
    try:
        deadline = time.monotonic() + 30
        got = c.oai.responses.retrieve(r.id)
        while got.status in ("queued", "in_progress") and time.monotonic() < deadline:
            time.sleep(0.1)
            got = c.oai.responses.retrieve(r.id)
        assert got.status in ("completed", "failed", "cancelled", "incomplete"), got.status
        assert got.id == r.id and got.created_at == r.created_at
        resumed = (got.to_dict().get("holdfast") or {}).get("resumed")
        assert resumed and resumed["region"], got.to_dict()
        if got.status == "failed":
            assert got.error is not None and got.error.message
    finally:
        c.close()
