"""The async clients (`azure.ai.projects.aio.AIProjectClient` and the `AsyncOpenAI` it hands
out), as the SDKs' async samples use them."""

from __future__ import annotations

import asyncio
import uuid

from azure.ai.projects.aio import AIProjectClient
from azure.ai.projects.models import PromptAgentDefinition
from azure.core.credentials import AzureKeyCredential
from azure.core.pipeline.policies import AzureKeyCredentialPolicy

from conftest import DEPLOYMENT, PROJECT

TIMEOUT = 60


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def async_project(server, key):
    credential = AzureKeyCredential(key)
    return AIProjectClient(
        endpoint=server.project_endpoint(PROJECT),
        credential=credential,  # type: ignore[arg-type]
        authentication_policy=AzureKeyCredentialPolicy(credential, "Authorization", prefix="Bearer"),
        retry_total=0,
    )


def test_async_agent_conversation_and_streamed_response(server, key):
    name = f"async-{uuid.uuid4().hex[:8]}"

    async def scenario():
        async with async_project(server, key) as project:
            agent = await project.agents.create_version(
                name, definition=PromptAgentDefinition(model=DEPLOYMENT, instructions="Async rules."))
            versions = [v.version async for v in project.agents.list_versions(name)]
            deployments = [d.name async for d in project.deployments.list()]
            openai = project.get_openai_client(api_key=key, timeout=60.0, max_retries=0)
            async with openai:
                conv = await openai.conversations.create(
                    items=[{"type": "message", "role": "user", "content": "async hello"}])
                stream = await openai.responses.create(
                    conversation=conv.id,
                    extra_body={"agent_reference": {"name": agent.name, "type": "agent_reference"}},
                    input="async question",
                    stream=True,
                )
                events = [e async for e in stream]
                items = [i async for i in openai.conversations.items.list(conv.id, order="asc")]
            return agent, versions, deployments, events, items

    agent, versions, deployments, events, items = run(scenario())
    assert agent.version == "1"
    assert versions == ["1"]
    assert DEPLOYMENT in deployments
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "You said: async question"
    assert [(i.role, i.content[0].text) for i in items] == [
        ("user", "async hello"), ("user", "async question"), ("assistant", "You said: async question")]


def test_async_concurrent_responses(server, key):
    """Many responses at once through one async client: each gets its own answer."""

    async def scenario():
        async with async_project(server, key) as project:
            openai = project.get_openai_client(api_key=key, timeout=60.0, max_retries=0)
            async with openai:
                return await asyncio.gather(*[
                    openai.responses.create(model=DEPLOYMENT, input=f"parallel {i}") for i in range(12)])

    results = run(scenario())
    assert [r.output_text for r in results] == [f"You said: parallel {i}" for i in range(12)]
    assert len({r.id for r in results}) == 12
