"""Conversations and their items through the OpenAI client that azure-ai-projects hands out
(`project_client.get_openai_client()` -> `{endpoint}/openai/v1`)."""

from __future__ import annotations

import time

import openai
import pytest


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": text}


def texts(items) -> list[str]:
    return [i.content[0].text for i in items]


def test_create_get_update_delete(oai):
    conv = oai.conversations.create(
        items=[user("first"), {"type": "message", "role": "assistant", "content": "second"}],
        metadata={"topic": "compat", "owner": "tests"},
    )
    assert conv.id.startswith("conv_")
    assert conv.object == "conversation"
    assert conv.metadata == {"topic": "compat", "owner": "tests"}
    assert abs(conv.created_at - time.time()) < 300

    got = oai.conversations.retrieve(conv.id)
    assert got.id == conv.id
    assert got.metadata == {"topic": "compat", "owner": "tests"}
    assert got.created_at == conv.created_at

    items = list(oai.conversations.items.list(conv.id, order="asc"))
    assert [i.role for i in items] == ["user", "assistant"]
    assert texts(items) == ["first", "second"]
    assert items[0].content[0].type == "input_text"
    assert items[1].content[0].type == "output_text"

    updated = oai.conversations.update(conv.id, metadata={"topic": "changed"})
    assert updated.metadata == {"topic": "changed"}
    assert oai.conversations.retrieve(conv.id).metadata == {"topic": "changed"}

    deleted = oai.conversations.delete(conv.id)
    assert deleted.id == conv.id
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        oai.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError):
        oai.conversations.items.list(conv.id)


def test_empty_conversation(oai):
    conv = oai.conversations.create()
    assert conv.metadata in ({}, None)
    page = oai.conversations.items.list(conv.id)
    assert page.data == []
    assert page.has_more is False
    # An empty page has no cursor (the SDKs page until last_id is null).
    assert page.last_id is None
    assert list(page) == []


def test_items_create_get_delete(oai):
    conv = oai.conversations.create()
    created = oai.conversations.items.create(
        conv.id,
        items=[
            user("what is the weather?"),
            {"type": "function_call", "call_id": "call_abc", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call_output", "call_id": "call_abc", "output": '{"temp": -3}'},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "It is -3."}]},
        ],
    )
    assert [i.type for i in created.data] == ["message", "function_call", "function_call_output", "message"]
    ids = [i.id for i in created.data]
    assert len(set(ids)) == 4 and all(ids)
    assert created.first_id == ids[0] and created.last_id == ids[-1]

    fc = oai.conversations.items.retrieve(ids[1], conversation_id=conv.id)
    assert fc.type == "function_call"
    assert (fc.call_id, fc.name, fc.arguments) == ("call_abc", "get_weather", '{"city":"Oslo"}')
    out = oai.conversations.items.retrieve(ids[2], conversation_id=conv.id)
    assert out.type == "function_call_output"
    assert out.output == '{"temp": -3}'
    msg = oai.conversations.items.retrieve(ids[0], conversation_id=conv.id)
    assert msg.content[0].text == "what is the weather?"

    after_delete = oai.conversations.items.delete(ids[1], conversation_id=conv.id)
    assert after_delete.id == conv.id  # the API answers with the conversation
    remaining = [i.id for i in oai.conversations.items.list(conv.id, order="asc")]
    assert remaining == [ids[0], ids[2], ids[3]]
    with pytest.raises(openai.NotFoundError):
        oai.conversations.items.retrieve(ids[1], conversation_id=conv.id)


def test_item_of_another_conversation_is_not_found(oai):
    a = oai.conversations.create(items=[user("in a")])
    b = oai.conversations.create(items=[user("in b")])
    item_a = oai.conversations.items.list(a.id).data[0].id
    with pytest.raises(openai.NotFoundError):
        oai.conversations.items.retrieve(item_a, conversation_id=b.id)
    with pytest.raises(openai.NotFoundError):
        oai.conversations.items.delete(item_a, conversation_id=b.id)
    # Still there in its own conversation.
    assert oai.conversations.items.retrieve(item_a, conversation_id=a.id).id == item_a


def test_items_paging_over_more_than_100(oai):
    conv = oai.conversations.create()
    n = 250
    created_ids: list[str] = []
    for start in (0, 120):  # two requests: 120 + 130 items
        count = 120 if start == 0 else n - 120
        batch = [user(f"item {start + k:03d}") for k in range(count)]
        res = oai.conversations.items.create(conv.id, items=batch)
        assert len(res.data) == count
        created_ids += [i.id for i in res.data]
    assert len(set(created_ids)) == n

    # Raw pages, ascending: 100, 100, 50; has_more and last_id as the OpenAI API gives them.
    first = oai.conversations.items.list(conv.id, limit=100, order="asc")
    assert len(first.data) == 100
    assert first.has_more is True
    assert first.last_id == first.data[-1].id
    assert first.first_id == first.data[0].id
    second = first.get_next_page()
    assert len(second.data) == 100
    assert second.has_more is True
    assert second.data[0].id == created_ids[100]
    third = second.get_next_page()
    assert len(third.data) == 50
    assert third.has_more is False
    assert third.last_id == created_ids[-1]
    assert not third.has_next_page()

    # Auto-paging, ascending: every item once, in insertion order.
    asc = list(oai.conversations.items.list(conv.id, limit=100, order="asc"))
    assert [i.id for i in asc] == created_ids
    assert texts(asc) == [f"item {k:03d}" for k in range(n)]

    # Default order is newest first; the default page size is 20.
    desc_page = oai.conversations.items.list(conv.id)
    assert len(desc_page.data) == 20
    assert desc_page.data[0].id == created_ids[-1]
    desc = list(oai.conversations.items.list(conv.id, limit=100))
    assert [i.id for i in desc] == list(reversed(created_ids))

    # An explicit cursor.
    after = oai.conversations.items.list(conv.id, limit=5, order="asc", after=created_ids[9])
    assert [i.id for i in after.data] == created_ids[10:15]


def test_item_ids_given_by_client_are_kept(oai):
    conv = oai.conversations.create(items=[{**user("hello"), "id": "msg_clientchosen0001"}])
    items = oai.conversations.items.list(conv.id).data
    assert [i.id for i in items] == ["msg_clientchosen0001"]


def test_metadata_limits(oai):
    with pytest.raises(openai.BadRequestError):
        oai.conversations.create(metadata={f"k{i}": "v" for i in range(17)})
    with pytest.raises(openai.BadRequestError):
        oai.conversations.create(metadata={"k": "v" * 513})


def test_readme_example(project, oai):
    """The README's SDK example, as written there (items without a `type`)."""
    from azure.ai.projects.models import PromptAgentDefinition

    agent = project.agents.create_version(
        agent_name="readme-helper", definition=PromptAgentDefinition(model="gpt", instructions="Answer briefly."))
    assert agent.name == "readme-helper"
    conversation = oai.conversations.create(items=[{"role": "user", "content": "Hello!"}])
    items = oai.conversations.items.list(conversation.id).data
    assert len(items) == 1
    assert (items[0].type, items[0].role, items[0].content[0].text) == ("message", "user", "Hello!")


def test_concurrent_appends_keep_every_batch_whole(oai):
    """Ten clients append 20 items each at once: all 200 are kept, each batch contiguous and in
    its own order."""
    from concurrent.futures import ThreadPoolExecutor

    conv = oai.conversations.create()

    def append(t: int) -> list[str]:
        res = oai.conversations.items.create(conv.id, items=[user(f"t{t}-{k:02d}") for k in range(20)])
        return [i.id for i in res.data]

    with ThreadPoolExecutor(10) as pool:
        batches = list(pool.map(append, range(10)))
    listed = list(oai.conversations.items.list(conv.id, order="asc", limit=100))
    ids = [i.id for i in listed]
    assert len(ids) == 200 and len(set(ids)) == 200
    pos = {i: n for n, i in enumerate(ids)}
    for batch in batches:
        start = pos[batch[0]]
        assert ids[start:start + 20] == batch
    by_id = {i.id: i.content[0].text for i in listed}
    for t, batch in enumerate(batches):
        assert [by_id[i] for i in batch] == [f"t{t}-{k:02d}" for k in range(20)]
