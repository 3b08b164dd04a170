"""Small helpers shared by the compat tests."""

from __future__ import annotations

import time


def header(request: dict, name: str) -> str | None:
    """A header of a recorded upstream request, by case-insensitive name."""
    for k, v in request["headers"].items():
        if k.lower() == name.lower():
            return v
    return None


def content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def messages_of(request: dict) -> list[dict]:
    return request["body"]["messages"]


def only_chat_request(upstream, mark: int) -> dict:
    """The single chat-completion request the upstream received since ``mark``."""
    reqs = upstream.chat_requests_since(mark)
    assert len(reqs) == 1, f"expected exactly one upstream call, got {len(reqs)}: {[r['body'] for r in reqs]}"
    return reqs[0]


def wait_vector_store_ready(oai, vector_store_id: str, *, expect_files: int, timeout: float = 30.0):
    """Polls a vector store until its files are processed (bounded); returns it."""
    deadline = time.monotonic() + timeout
    vs = oai.vector_stores.retrieve(vector_store_id)
    while time.monotonic() < deadline:
        vs = oai.vector_stores.retrieve(vector_store_id)
        counts = vs.file_counts
        if counts.in_progress == 0 and counts.total >= expect_files:
            return vs
        time.sleep(0.2)
    raise AssertionError(f"vector store {vector_store_id} not ready after {timeout}s: {vs}")
