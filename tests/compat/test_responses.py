"""Responses through the OpenAI client that azure-ai-projects hands out: plain, with instructions,
chained, in a conversation, streamed, function calls, agents by reference, file_search, and
upstream failures. The model is the scripted fake upstream (see fake_upstream.py)."""

from __future__ import annotations

import json
import time
import uuid

import openai
import pytest
from azure.ai.projects.models import FunctionTool, PromptAgentDefinition

from conftest import DEPLOYMENT, UPSTREAM_KEY, UPSTREAM_MODEL
from fake_upstream import PARALLEL_ARGUMENTS, UPSTREAM_FAILURE_MESSAGE, WEATHER_ARGUMENTS
from harness import UPSTREAM_TIMEOUT_SECS
from util import content_text, header, messages_of, only_chat_request, wait_vector_store_ready

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def user_texts(request: dict) -> list[str]:
    return [content_text(m.get("content")) for m in messages_of(request) if m.get("role") == "user"]


def system_texts(request: dict) -> list[str]:
    return [content_text(m.get("content")) for m in messages_of(request) if m.get("role") in ("system", "developer")]


# --- plain ------------------------------------------------------------------------------------


def test_plain_response(oai, upstream):
    mark = upstream.mark()
    r = oai.responses.create(model=DEPLOYMENT, input="hello")
    assert r.status == "completed"
    assert r.object == "response"
    assert r.output_text == "You said: hello"
    messages = [o for o in r.output if o.type == "message"]
    assert len(messages) == 1
    assert messages[0].role == "assistant"
    assert messages[0].content[0].type == "output_text"
    assert messages[0].content[0].text == "You said: hello"
    assert r.id and messages[0].id and r.id != messages[0].id

    sent = only_chat_request(upstream, mark)
    assert sent["body"]["model"] == UPSTREAM_MODEL  # the deployment's model, not its name
    assert header(sent, "authorization") == f"Bearer {UPSTREAM_KEY}"  # the connection's key
    assert messages_of(sent)[-1]["role"] == "user"
    assert content_text(messages_of(sent)[-1]["content"]) == "hello"


def test_response_usage(oai):
    r = oai.responses.create(model=DEPLOYMENT, input="count my tokens please")
    assert r.usage is not None
    assert r.usage.input_tokens > 0
    assert r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_response_retrieve_input_items_delete(oai):
    r = oai.responses.create(model=DEPLOYMENT, input="keep me")
    got = oai.responses.retrieve(r.id)
    assert got.id == r.id
    assert got.status == "completed"
    assert got.output_text == "You said: keep me"
    inputs = list(oai.responses.input_items.list(r.id))
    assert [i.type for i in inputs] == ["message"]
    assert inputs[0].content[0].text == "keep me"

    deleted = oai.responses.delete(r.id)
    assert deleted is None  # the SDK returns None on success
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(r.id)


def test_instructions_reach_upstream(oai, upstream):
    mark = upstream.mark()
    r = oai.responses.create(model=DEPLOYMENT, instructions="Talk like a pirate.", input="ahoy")
    assert r.output_text == "You said: ahoy"
    assert r.instructions == "Talk like a pirate."
    sent = only_chat_request(upstream, mark)
    first = messages_of(sent)[0]
    assert first["role"] in ("system", "developer")
    assert content_text(first["content"]) == "Talk like a pirate."


def test_input_as_message_list(oai, upstream):
    mark = upstream.mark()
    r = oai.responses.create(
        model=DEPLOYMENT,
        input=[
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "ack"},
            {"role": "user", "content": [{"type": "input_text", "text": "two"}]},
        ],
    )
    assert r.output_text == "You said: two"
    sent = only_chat_request(upstream, mark)
    assert [m["role"] for m in messages_of(sent)][-3:] == ["user", "assistant", "user"]
    assert "Be terse." in system_texts(sent)
    assert user_texts(sent) == ["one", "two"]


def test_previous_response_id_carries_history(oai, upstream):
    r1 = oai.responses.create(model=DEPLOYMENT, input="my name is Ada")
    mark = upstream.mark()
    r2 = oai.responses.create(model=DEPLOYMENT, input="what is my name?", previous_response_id=r1.id)
    assert r2.output_text == "You said: what is my name?"
    assert r2.previous_response_id == r1.id
    sent = only_chat_request(upstream, mark)
    roles_texts = [(m["role"], content_text(m.get("content"))) for m in messages_of(sent)]
    assert roles_texts[-3:] == [
        ("user", "my name is Ada"),
        ("assistant", "You said: my name is Ada"),
        ("user", "what is my name?"),
    ]


def test_response_in_conversation_appends_items(oai, upstream):
    conv = oai.conversations.create(items=[{"type": "message", "role": "user", "content": "remember: blue"}])
    mark = upstream.mark()
    r = oai.responses.create(model=DEPLOYMENT, conversation=conv.id, input="what did I say?")
    assert r.output_text == "You said: what did I say?"
    sent = only_chat_request(upstream, mark)
    assert user_texts(sent) == ["remember: blue", "what did I say?"]

    items = list(oai.conversations.items.list(conv.id, order="asc"))
    assert [(i.type, i.role) for i in items] == [("message", "user"), ("message", "user"), ("message", "assistant")]
    assert items[1].content[0].text == "what did I say?"
    assert items[2].content[0].text == "You said: what did I say?"
    assert items[2].id == r.output[0].id

    # A second turn sees the whole conversation, the model's answer included.
    mark = upstream.mark()
    r2 = oai.responses.create(model=DEPLOYMENT, conversation=conv.id, input="and now?")
    assert r2.output_text == "You said: and now?"
    sent = only_chat_request(upstream, mark)
    assert [(m["role"], content_text(m.get("content"))) for m in messages_of(sent)][-4:] == [
        ("user", "remember: blue"),
        ("user", "what did I say?"),
        ("assistant", "You said: what did I say?"),
        ("user", "and now?"),
    ]
    assert len(list(oai.conversations.items.list(conv.id))) == 5


def test_instructions_are_not_carried_over_by_previous_response_id(oai, upstream):
    """OpenAI: with previous_response_id, the previous response's instructions are not carried over."""
    r1 = oai.responses.create(model=DEPLOYMENT, instructions="OLD-INSTRUCTIONS", input="one")
    mark = upstream.mark()
    oai.responses.create(model=DEPLOYMENT, input="two", previous_response_id=r1.id)
    sent = only_chat_request(upstream, mark)
    assert "OLD-INSTRUCTIONS" not in json.dumps(sent["body"])
    assert user_texts(sent) == ["one", "two"]

    mark = upstream.mark()
    oai.responses.create(model=DEPLOYMENT, input="three", previous_response_id=r1.id, instructions="NEW-INSTRUCTIONS")
    assert system_texts(only_chat_request(upstream, mark)) == ["NEW-INSTRUCTIONS"]


def test_request_parameters_reach_upstream(oai, upstream):
    mark = upstream.mark()
    r = oai.responses.create(
        model=DEPLOYMENT, input="tuned", temperature=0.25, top_p=0.5, max_output_tokens=77,
        text={"format": {"type": "json_object"}}, metadata={"run": "params"},
    )
    assert r.temperature == 0.25 and r.top_p == 0.5 and r.max_output_tokens == 77
    assert r.metadata == {"run": "params"}
    body = only_chat_request(upstream, mark)["body"]
    assert body["temperature"] == 0.25
    assert body["top_p"] == 0.5
    assert 77 in (body.get("max_tokens"), body.get("max_completion_tokens")), body
    assert body["response_format"] == {"type": "json_object"}

    mark = upstream.mark()
    oai.responses.create(model=DEPLOYMENT, input="weather?", tools=[WEATHER_TOOL],
                         tool_choice={"type": "function", "name": "get_weather"})
    body = only_chat_request(upstream, mark)["body"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_unicode_round_trips(oai, upstream):
    text = "héllo wörld — 世界 🎉 \u2028 end"
    mark = upstream.mark()
    r = oai.responses.create(model=DEPLOYMENT, input=text)
    assert r.output_text == f"You said: {text}"
    assert content_text(messages_of(only_chat_request(upstream, mark))[-1]["content"]) == text
    events = collect(oai.responses.create(model=DEPLOYMENT, input=text, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == f"You said: {text}"
    assert oai.responses.retrieve(r.id).output_text == f"You said: {text}"


def test_store_false_is_not_retrievable(oai):
    r = oai.responses.create(model=DEPLOYMENT, input="do not keep", store=False)
    assert r.status == "completed"
    assert r.output_text == "You said: do not keep"
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(r.id)


def test_background_response_is_polled_to_completion(oai):
    r = oai.responses.create(model=DEPLOYMENT, input="in the background", background=True)
    assert r.background is True
    assert r.status in ("queued", "in_progress", "completed")
    deadline = time.monotonic() + 30
    while r.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.1)
        r = oai.responses.retrieve(r.id)
    assert r.status == "completed"
    assert r.output_text == "You said: in the background"


def test_conversation_and_previous_response_id_together_is_400(oai):
    conv = oai.conversations.create()
    r1 = oai.responses.create(model=DEPLOYMENT, input="one")
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model=DEPLOYMENT, input="two", conversation=conv.id, previous_response_id=r1.id)


# --- streaming --------------------------------------------------------------------------------


def collect(stream) -> list:
    events = []
    deadline = time.monotonic() + 60
    with stream:
        for ev in stream:
            events.append(ev)
            assert time.monotonic() < deadline, "stream did not end within 60s"
    return events


def test_streaming_text(oai):
    events = collect(oai.responses.create(model=DEPLOYMENT, input="stream these words please", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created", types
    assert types[-1] == "response.completed", types
    assert "response.output_text.delta" in types, types
    first_delta = types.index("response.output_text.delta")
    for t in ("response.output_item.added", "response.content_part.added"):
        assert t in types and types.index(t) < first_delta, types
    for t in ("response.output_text.done", "response.content_part.done", "response.output_item.done"):
        assert t in types and types.index(t) > first_delta, types

    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    completed = events[-1].response
    assert completed.status == "completed"
    assert deltas == "You said: stream these words please"
    assert completed.output_text == deltas
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == deltas
    assert events[0].response.status in ("in_progress", "queued")
    assert events[0].response.id == completed.id

    seq = [e.sequence_number for e in events]
    assert seq == sorted(seq) and len(set(seq)) == len(seq), seq

    # A streamed response is stored like any other.
    assert oai.responses.retrieve(completed.id).output_text == deltas


def test_streaming_function_call(oai):
    events = collect(oai.responses.create(
        model=DEPLOYMENT, input="what's the weather in Paris?", tools=[WEATHER_TOOL], stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    added = [e for e in events if e.type == "response.output_item.added"]
    assert added and added[0].item.type == "function_call", types
    args_deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    args_done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(args_done.arguments) == WEATHER_ARGUMENTS
    assert args_deltas == args_done.arguments
    call = [o for o in events[-1].response.output if o.type == "function_call"]
    assert len(call) == 1 and call[0].name == "get_weather"


def test_streaming_in_conversation_appends_items(oai):
    conv = oai.conversations.create()
    events = collect(oai.responses.create(model=DEPLOYMENT, conversation=conv.id, input="streamed turn", stream=True))
    assert events[-1].type == "response.completed"
    items = [(i.role, i.content[0].text) for i in oai.conversations.items.list(conv.id, order="asc")]
    assert items == [("user", "streamed turn"), ("assistant", "You said: streamed turn")]


# --- function calls ---------------------------------------------------------------------------


def test_function_call_round_trip(oai, upstream):
    mark = upstream.mark()
    r1 = oai.responses.create(model=DEPLOYMENT, input="What's the weather in Paris?", tools=[WEATHER_TOOL])
    assert r1.status == "completed"
    calls = [o for o in r1.output if o.type == "function_call"]
    assert len(calls) == 1, r1.output
    call = calls[0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == WEATHER_ARGUMENTS
    assert call.call_id

    # The tool reached the model in chat-completions form.
    sent = only_chat_request(upstream, mark)
    tools = sent["body"].get("tools") or []
    fn = [t for t in tools if t.get("type") == "function" and t.get("function", {}).get("name") == "get_weather"]
    assert len(fn) == 1, tools
    assert fn[0]["function"]["parameters"]["required"] == ["city"]

    mark = upstream.mark()
    r2 = oai.responses.create(
        model=DEPLOYMENT,
        previous_response_id=r1.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 21}'}],
        tools=[WEATHER_TOOL],
    )
    assert r2.status == "completed"
    assert r2.output_text == 'The tool said: {"temperature": 21}'

    sent = only_chat_request(upstream, mark)
    msgs = messages_of(sent)
    assert msgs[-1]["role"] == "tool"
    assert msgs[-1]["tool_call_id"] == call.call_id
    assert content_text(msgs[-1]["content"]) == '{"temperature": 21}'
    assistant = msgs[-2]
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"][0]["id"] == call.call_id
    assert assistant["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == WEATHER_ARGUMENTS
    assert "What's the weather in Paris?" in user_texts(sent)


def test_parallel_function_calls(oai, upstream):
    r1 = oai.responses.create(model=DEPLOYMENT, input="weather in two cities?", tools=[WEATHER_TOOL])
    calls = [o for o in r1.output if o.type == "function_call"]
    assert [json.loads(c.arguments) for c in calls] == PARALLEL_ARGUMENTS
    assert len({c.call_id for c in calls}) == 2
    mark = upstream.mark()
    r2 = oai.responses.create(
        model=DEPLOYMENT, previous_response_id=r1.id, tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": c.call_id, "output": f"out-{i}"} for i, c in enumerate(calls)],
    )
    assert r2.output_text == "The tool said: out-0; out-1"
    msgs = messages_of(only_chat_request(upstream, mark))
    assert [m["role"] for m in msgs[-3:]] == ["assistant", "tool", "tool"]
    assert [c["id"] for c in msgs[-3]["tool_calls"]] == [c.call_id for c in calls]
    assert [m["tool_call_id"] for m in msgs[-2:]] == [c.call_id for c in calls]

    # Streamed, each call is its own output item with its own arguments.
    events = collect(oai.responses.create(model=DEPLOYMENT, input="weather in two cities?", tools=[WEATHER_TOOL],
                                          stream=True))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert sorted((e.output_index, json.loads(e.arguments)["city"]) for e in done) == [(0, "Paris"), (1, "Oslo")]
    assert [o.type for o in events[-1].response.output] == ["function_call", "function_call"]

    # parallel_tool_calls=false reaches the model.
    mark = upstream.mark()
    r3 = oai.responses.create(model=DEPLOYMENT, input="weather in two cities?", tools=[WEATHER_TOOL],
                              parallel_tool_calls=False)
    assert only_chat_request(upstream, mark)["body"].get("parallel_tool_calls") is False
    assert len([o for o in r3.output if o.type == "function_call"]) == 1


def test_responses_stream_helper(oai):
    """The SDK's `responses.stream()` helper rebuilds the response from the events' indexes."""
    with oai.responses.stream(model=DEPLOYMENT, input="helper please") as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas == final.output_text == "You said: helper please"
    with oai.responses.stream(model=DEPLOYMENT, input="weather?", tools=[WEATHER_TOOL]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert [(o.type, json.loads(o.arguments)) for o in final.output] == [("function_call", WEATHER_ARGUMENTS)]


def test_image_input_reaches_upstream(oai, upstream):
    image = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    mark = upstream.mark()
    r = oai.responses.create(model=DEPLOYMENT, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "what is in this picture?"},
        {"type": "input_image", "image_url": image, "detail": "low"},
    ]}])
    assert r.output_text == "You said: what is in this picture?"
    content = messages_of(only_chat_request(upstream, mark))[-1]["content"]
    images = [p for p in content if p.get("type") == "image_url"]
    assert images == [{"type": "image_url", "image_url": {"url": image, "detail": "low"}}]


def test_function_call_output_for_unknown_call_is_400(oai, upstream):
    """OpenAI refuses this synchronously: "No tool call found for function call output with
    call_id …" (400, invalid_request_error)."""
    mark = upstream.mark()
    try:
        r = oai.responses.create(
            model=DEPLOYMENT, input=[{"type": "function_call_output", "call_id": "call_nope", "output": "x"}])
    except openai.BadRequestError as e:
        assert "call_nope" in str(e)
    else:
        pytest.fail(f"expected HTTP 400; got a response with status={r.status!r}, error={r.error}, "
                    f"after {len(upstream.chat_requests_since(mark))} upstream call(s)")
    assert upstream.chat_requests_since(mark) == [], "an invalid request should not reach the model"


def test_pending_function_call_needs_its_output_is_400(oai, upstream):
    """OpenAI refuses a turn that leaves a function call unanswered: "No tool output found for
    function call …" (400, invalid_request_error)."""
    r1 = oai.responses.create(model=DEPLOYMENT, input="weather in Paris?", tools=[WEATHER_TOOL])
    call = next(o for o in r1.output if o.type == "function_call")
    mark = upstream.mark()
    try:
        r = oai.responses.create(model=DEPLOYMENT, previous_response_id=r1.id, input="never mind", tools=[WEATHER_TOOL])
    except openai.BadRequestError as e:
        assert call.call_id in str(e)
    else:
        pytest.fail(f"expected HTTP 400; got a response with status={r.status!r}, error={r.error}, "
                    f"after {len(upstream.chat_requests_since(mark))} upstream call(s)")
    assert upstream.chat_requests_since(mark) == [], "an invalid request should not reach the model"


def test_function_call_round_trip_in_conversation(oai):
    conv = oai.conversations.create()
    r1 = oai.responses.create(model=DEPLOYMENT, conversation=conv.id, input="weather in Paris?", tools=[WEATHER_TOOL])
    call = next(o for o in r1.output if o.type == "function_call")
    r2 = oai.responses.create(
        model=DEPLOYMENT,
        conversation=conv.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER_TOOL],
    )
    assert r2.output_text == "The tool said: sunny"
    types = [i.type for i in oai.conversations.items.list(conv.id, order="asc")]
    assert types == ["message", "function_call", "function_call_output", "message"]


# --- agents by reference ----------------------------------------------------------------------


def test_agent_reference(project, oai, upstream):
    name = unique("pirate")
    project.agents.create_version(
        name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions="You are a pirate agent."))
    mark = upstream.mark()
    r = oai.responses.create(
        input=[{"role": "user", "content": "hello agent"}],
        extra_body={"agent_reference": {"name": name, "type": "agent_reference"}},
    )
    assert r.status == "completed"
    assert r.output_text == "You said: hello agent"
    sent = only_chat_request(upstream, mark)
    assert sent["body"]["model"] == UPSTREAM_MODEL
    assert system_texts(sent) == ["You are a pirate agent."]


def test_agent_reference_pins_a_version(project, oai, upstream):
    name = unique("versioned")
    project.agents.create_version(name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions="Old rules."))
    project.agents.create_version(name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions="New rules."))

    mark = upstream.mark()
    oai.responses.create(input="latest?", extra_body={"agent_reference": {"name": name, "type": "agent_reference"}})
    assert system_texts(only_chat_request(upstream, mark)) == ["New rules."]

    mark = upstream.mark()
    oai.responses.create(
        input="pinned?", extra_body={"agent_reference": {"name": name, "version": "1", "type": "agent_reference"}})
    assert system_texts(only_chat_request(upstream, mark)) == ["Old rules."]


def test_agent_reference_in_conversation(project, oai, upstream):
    """The shape of the azure-ai-projects 2.x samples: a conversation plus an agent reference."""
    name = unique("helper")
    agent = project.agents.create_version(
        name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions="You are helpful."))
    conv = oai.conversations.create(items=[{"type": "message", "role": "user", "content": "Tell me a joke"}])
    r = oai.responses.create(
        conversation=conv.id,
        extra_body={"agent_reference": {"name": agent.name, "type": "agent_reference"}},
        input="",
    )
    assert r.output_text == "You said: Tell me a joke"
    items = list(oai.conversations.items.list(conv.id, order="asc"))
    assert items[-1].role == "assistant"
    assert items[-1].content[0].text == "You said: Tell me a joke"


def test_agent_with_function_tool(project, oai, upstream):
    name = unique("weatherbot")
    tool = FunctionTool(name="get_weather", parameters=WEATHER_TOOL["parameters"], strict=False,
                        description="Current weather in a city")
    project.agents.create_version(
        name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions="Use tools.", tools=[tool]))
    ref = {"agent_reference": {"name": name, "type": "agent_reference"}}
    r1 = oai.responses.create(input="what's the weather in Paris?", extra_body=ref)
    call = next(o for o in r1.output if o.type == "function_call")
    assert call.name == "get_weather"
    r2 = oai.responses.create(
        previous_response_id=r1.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rainy"}],
        extra_body=ref,
    )
    assert r2.output_text == "The tool said: rainy"


def test_agent_sampling_settings_reach_upstream(project, oai, upstream):
    name = unique("tuned")
    project.agents.create_version(name, definition=PromptAgentDefinition(
        model=DEPLOYMENT, instructions="Tuned.", temperature=0.3, top_p=0.7))
    ref = {"agent_reference": {"name": name, "type": "agent_reference"}}
    mark = upstream.mark()
    oai.responses.create(input="x", extra_body=ref)
    body = only_chat_request(upstream, mark)["body"]
    assert (body.get("temperature"), body.get("top_p")) == (0.3, 0.7)


def test_unknown_agent_reference_is_an_error(oai):
    ghost = unique("ghost")
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as e:
        oai.responses.create(input="hi", extra_body={"agent_reference": {"name": ghost, "type": "agent_reference"}})
    assert ghost in str(e.value)


# --- file_search ------------------------------------------------------------------------------

FACTS = (
    b"Holdfast compatibility notes.\n"
    b"FACT: The launch code for project Bluebird is tangerine-42.\n"
    b"Unrelated: the cafeteria serves soup on Tuesdays.\n"
)


def vector_store_with_facts(oai, filename: str):
    f = oai.files.create(file=(filename, FACTS, "text/plain"), purpose="assistants")
    vs = oai.vector_stores.create(name=unique("facts"), file_ids=[f.id])
    wait_vector_store_ready(oai, vs.id, expect_files=1)
    return f, vs


def test_file_search(oai, upstream):
    f, vs = vector_store_with_facts(oai, "bluebird.txt")
    mark = upstream.mark()
    r = oai.responses.create(
        model=DEPLOYMENT,
        input="What is the launch code for project Bluebird?",
        tools=[{"type": "file_search", "vector_store_ids": [vs.id]}],
    )
    assert r.status == "completed", r.error
    searches = [o for o in r.output if o.type == "file_search_call"]
    assert len(searches) == 1, [o.type for o in r.output]
    assert searches[0].status == "completed"
    assert searches[0].queries, searches[0]
    assert "tangerine-42" in r.output_text
    assert r.output[-1].type == "message"
    # The model saw the file's text (as a tool result or as injected context).
    sent = upstream.chat_requests_since(mark)
    assert any("tangerine-42" in json.dumps(req["body"]) for req in sent)


def test_file_search_include_results(oai):
    f, vs = vector_store_with_facts(oai, "bluebird-results.txt")
    r = oai.responses.create(
        model=DEPLOYMENT,
        input="What is the launch code for project Bluebird?",
        tools=[{"type": "file_search", "vector_store_ids": [vs.id]}],
        include=["file_search_call.results"],
    )
    search = next(o for o in r.output if o.type == "file_search_call")
    assert search.results, "include=['file_search_call.results'] should return the hits"
    hit = next(h for h in search.results if "tangerine-42" in (h.text or ""))
    assert hit.file_id == f.id
    assert hit.filename == "bluebird-results.txt"


def test_file_search_in_conversation_then_another_turn(oai, upstream):
    """The stored file_search_call is replayed to the model on the next turn as a tool call and
    its result."""
    f, vs = vector_store_with_facts(oai, "bluebird-conv.txt")
    conv = oai.conversations.create()
    tools = [{"type": "file_search", "vector_store_ids": [vs.id]}]
    r1 = oai.responses.create(model=DEPLOYMENT, conversation=conv.id, tools=tools,
                              input="What is the launch code for project Bluebird?")
    assert "tangerine-42" in r1.output_text
    types = [i.type for i in oai.conversations.items.list(conv.id, order="asc")]
    assert types == ["message", "file_search_call", "message"]
    mark = upstream.mark()
    r2 = oai.responses.create(model=DEPLOYMENT, conversation=conv.id, input="thanks!")
    assert r2.status == "completed", r2.error
    assert r2.output_text == "You said: thanks!"
    sent = only_chat_request(upstream, mark)
    assert "tangerine-42" in json.dumps(messages_of(sent))


def test_file_search_tool_filters(oai):
    """The file_search tool's `filters` (on vector-store file attributes) limit what is found."""
    en = oai.files.create(file=("walrus-en.txt", b"Walrus facts: the walrus has tusks.\n", "text/plain"),
                          purpose="assistants")
    fr = oai.files.create(file=("walrus-fr.txt", b"Walrus: le walrus a des tusks.\n", "text/plain"),
                          purpose="assistants")
    vs = oai.vector_stores.create(name=unique("filtered"))
    oai.vector_stores.files.create(vs.id, file_id=en.id, attributes={"lang": "en"})
    oai.vector_stores.files.create(vs.id, file_id=fr.id, attributes={"lang": "fr"})
    wait_vector_store_ready(oai, vs.id, expect_files=2)
    r = oai.responses.create(
        model=DEPLOYMENT,
        input="walrus tusks",
        tools=[{"type": "file_search", "vector_store_ids": [vs.id],
                "filters": {"type": "eq", "key": "lang", "value": "fr"}}],
        include=["file_search_call.results"],
    )
    search = next(o for o in r.output if o.type == "file_search_call")
    assert search.results, "the fr file matches"
    assert {h.file_id for h in search.results} == {fr.id}, [(h.filename, h.attributes) for h in search.results]


def test_agent_with_file_search(project, oai):
    f, vs = vector_store_with_facts(oai, "bluebird-agent.txt")
    name = unique("librarian")
    project.agents.create_version(name, definition=PromptAgentDefinition(
        model=DEPLOYMENT, instructions="Answer from the files.",
        tools=[{"type": "file_search", "vector_store_ids": [vs.id]}]))
    r = oai.responses.create(
        input="What is the launch code for project Bluebird?",
        extra_body={"agent_reference": {"name": name, "type": "agent_reference"}},
    )
    assert any(o.type == "file_search_call" for o in r.output), [o.type for o in r.output]
    assert "tangerine-42" in r.output_text


# --- upstream failures ------------------------------------------------------------------------


def test_upstream_failure_fails_the_response(oai):
    r = oai.responses.create(model=DEPLOYMENT, input="please fail upstream now")
    assert r.status == "failed"
    assert r.error is not None
    assert UPSTREAM_FAILURE_MESSAGE in r.error.message
    assert oai.responses.retrieve(r.id).status == "failed"


def test_upstream_failure_streaming(oai):
    events = collect(oai.responses.create(model=DEPLOYMENT, input="stream but fail upstream", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created", types
    assert types[-1] == "response.failed", types
    failed = events[-1].response
    assert failed.status == "failed"
    assert UPSTREAM_FAILURE_MESSAGE in failed.error.message


def test_upstream_timeout_fails_the_response(oai):
    started = time.monotonic()
    r = oai.responses.create(model=DEPLOYMENT, input="please hang forever")
    elapsed = time.monotonic() - started
    assert r.status == "failed"
    assert r.error is not None and r.error.message
    # Bounded by --upstream-timeout-secs, far below the fake's hang.
    assert UPSTREAM_TIMEOUT_SECS - 0.5 <= elapsed < UPSTREAM_TIMEOUT_SECS + 10, elapsed


def test_failed_conversation_turn_keeps_conversation_usable(oai):
    conv = oai.conversations.create()
    bad = oai.responses.create(model=DEPLOYMENT, conversation=conv.id, input="fail upstream please")
    assert bad.status == "failed"
    good = oai.responses.create(model=DEPLOYMENT, conversation=conv.id, input="second try")
    assert good.status == "completed"
    assert good.output_text == "You said: second try"
    texts = [i.content[0].text for i in oai.conversations.items.list(conv.id, order="asc") if i.type == "message"]
    assert texts[-2:] == ["second try", "You said: second try"]


# --- request errors ---------------------------------------------------------------------------


def test_unknown_model_is_400(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model="no-such-deployment", input="hi")
    assert "no-such-deployment" in str(e.value)


def test_unknown_conversation_in_response_is_404(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.responses.create(model=DEPLOYMENT, conversation="conv_doesnotexist000000000000", input="hi")
    # Not found because of the conversation (not for want of a route).
    assert "conv_doesnotexist000000000000" in str(e.value)


def test_unknown_previous_response_is_an_error(oai):
    with pytest.raises((openai.NotFoundError, openai.BadRequestError)) as e:
        oai.responses.create(model=DEPLOYMENT, previous_response_id="resp_doesnotexist0000000000", input="hi")
    assert "resp_doesnotexist0000000000" in str(e.value)


def test_unsupported_tool_type_is_400(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model=DEPLOYMENT, input="hi", tools=[{"type": "web_search_preview"}])
    assert "web_search_preview" in str(e.value)
