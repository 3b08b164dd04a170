"""A scripted, OpenAI-compatible model server: the test double of the MODEL only.

Holdfast talks to it over real HTTP on 127.0.0.1 exactly as it would talk to OpenAI, vLLM or
Ollama (`POST {target}/chat/completions`). Replies are deterministic, decided from the request:

* the last user text contains "fail upstream"  -> HTTP 500 with an OpenAI error body
  (message: ``UPSTREAM_FAILURE_MESSAGE``);
* it contains the word "hang"                   -> sleeps ``HANG_SECONDS`` (bounded; far longer
  than the harness's ``--upstream-timeout-secs``), then answers normally;
* the last message is a tool result             -> "The tool said: <its content>" (the contents
  of all the trailing tool results, joined with "; ");
* a function tool is offered and the text contains "weather"
                                                -> a tool call to that function (prefers a
  function whose name contains "weather") with arguments ``WEATHER_ARGUMENTS``; if the text
  also says "two cities", two parallel calls with ``PARALLEL_ARGUMENTS`` (unless the request
  sets ``parallel_tool_calls: false``);
* a function tool whose name contains "search" is offered (how a server may expose
  file_search to a chat-completions model)       -> a tool call to it with {"query": <text>};
* a system/developer message carries lines with "FACT:" (how a server may inject file_search
  results directly)                              -> "From the files: <those lines>";
* otherwise                                      -> "You said: <text>".

Like OpenAI's chat completions, it refuses (HTTP 400) an empty message list, a `tool` message
that answers no preceding assistant `tool_calls`, and `tool_calls` left unanswered.

Both non-streaming and streaming (SSE ``data: {chat.completion.chunk}`` lines ending with
``data: [DONE]``, with a final usage chunk when ``stream_options.include_usage``) are spoken.

Every request is recorded (path, headers, JSON body) so tests can assert what Holdfast sent.
The recorded requests are also served at ``GET /_requests`` for manual exploration.

Run standalone: ``python fake_upstream.py --port 9999``.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

UPSTREAM_FAILURE_MESSAGE = "fake upstream exploded (scripted failure)"
HANG_SECONDS = 30.0
WEATHER_ARGUMENTS = {"city": "Paris", "unit": "celsius"}
PARALLEL_ARGUMENTS = [{"city": "Paris", "unit": "celsius"}, {"city": "Oslo", "unit": "celsius"}]
FACT_MARKER = "FACT:"


def content_text(content: Any) -> str:
    """The text of a chat message's content (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)
            elif isinstance(part, str):
                out.append(part)
        return "".join(out)
    return json.dumps(content)


def last_user_text(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return content_text(m.get("content"))
    return ""


def function_tools(tools: Any) -> list[dict]:
    """The function tools offered, normalised to {"name", "parameters"}."""
    out = []
    for t in tools or []:
        if not isinstance(t, dict):
            continue
        if t.get("type") == "function":
            fn = t.get("function") if isinstance(t.get("function"), dict) else t
            name = fn.get("name")
            if isinstance(name, str) and name:
                out.append({"name": name, "parameters": fn.get("parameters")})
    return out


class Reply:
    """What the script decided: text, or a tool call, or an error."""

    def __init__(self, *, text: str | None = None, tool_calls: list[dict] | None = None,
                 error: tuple[int, dict] | None = None, delay: float = 0.0):
        self.text = text
        self.tool_calls = tool_calls or []
        self.error = error
        self.delay = delay


def check_tool_pairing(messages: list[dict]) -> str | None:
    """Refuses what OpenAI's chat completions refuses: a `tool` message that answers no
    preceding assistant `tool_calls`, and `tool_calls` left without their `tool` answers."""
    pending: list[str] = []
    for m in messages:
        role = m.get("role")
        if role == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in pending:
                return ("Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                        f"message with 'tool_calls' (tool_call_id {call_id!r}).")
            pending.remove(call_id)
            continue
        if pending:
            return ("An assistant message with 'tool_calls' must be followed by tool messages responding to "
                    f"each 'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(pending)}")
        if role == "assistant":
            pending = [c.get("id") for c in m.get("tool_calls") or []]
    if pending:
        return ("An assistant message with 'tool_calls' must be followed by tool messages responding to "
                f"each 'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(pending)}")
    return None


def decide(body: dict) -> Reply:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return Reply(error=(400, error_body("messages must be a non-empty list", "invalid_request_error")))
    problem = check_tool_pairing(messages)
    if problem:
        return Reply(error=(400, error_body(problem, "invalid_request_error")))
    text = last_user_text(messages)
    last = messages[-1]
    if "fail upstream" in text.lower() and last.get("role") != "tool":
        return Reply(error=(500, error_body(UPSTREAM_FAILURE_MESSAGE, "server_error")))
    hang = re.search(r"\bhang\b", text, re.IGNORECASE) is not None
    delay = HANG_SECONDS if hang and last.get("role") != "tool" else 0.0
    if last.get("role") == "tool":
        # All the tool results that end the conversation (parallel calls answer together).
        results = []
        for m in reversed(messages):
            if m.get("role") != "tool":
                break
            results.insert(0, content_text(m.get("content")))
        return Reply(text="The tool said: " + "; ".join(results), delay=delay)
    fns = function_tools(body.get("tools"))
    if fns and "weather" in text.lower():
        fn = next((f for f in fns if "weather" in f["name"].lower()), fns[0])
        if "two cities" in text.lower() and body.get("parallel_tool_calls") is not False:
            return Reply(tool_calls=[{"name": fn["name"], "arguments": json.dumps(a)} for a in PARALLEL_ARGUMENTS],
                         delay=delay)
        return Reply(tool_calls=[{"name": fn["name"], "arguments": json.dumps(WEATHER_ARGUMENTS)}], delay=delay)
    search = next((f for f in fns if "search" in f["name"].lower()), None)
    if search is not None:
        return Reply(tool_calls=[{"name": search["name"], "arguments": json.dumps({"query": text})}], delay=delay)
    facts = []
    for m in messages:
        if m.get("role") in ("system", "developer"):
            for line in content_text(m.get("content")).splitlines():
                if FACT_MARKER in line:
                    facts.append(line.strip())
    if facts:
        return Reply(text="From the files: " + " ".join(facts), delay=delay)
    return Reply(text=f"You said: {text}", delay=delay)


def error_body(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def usage_for(body: dict, completion: str) -> dict:
    prompt = sum(len(content_text(m.get("content")).split()) for m in body.get("messages") or [])
    done = max(1, len(completion.split()))
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def split_deltas(text: str) -> list[str]:
    """Splits text into several deltas (word by word, spaces kept) so streams have many chunks."""
    parts, current = [], ""
    for ch in text:
        current += ch
        if ch == " ":
            parts.append(current)
            current = ""
    if current:
        parts.append(current)
    return parts or [""]


class FakeUpstream:
    """The server; ``start()`` binds 127.0.0.1 on a free port (or ``port``)."""

    def __init__(self, port: int = 0):
        self._requests: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counter = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet
                pass

            def _send_json(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                if self.path.rstrip("/") == "/_requests":
                    self._send_json(200, upstream.requests())
                elif self.path.rstrip("/") == "/v1/models":
                    self._send_json(200, {"object": "list", "data": [
                        {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]})
                else:
                    self._send_json(404, error_body(f"no route GET {self.path}", "invalid_request_error"))

            def do_POST(self):  # noqa: N802
                try:
                    self._post()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client (Holdfast) gave up, e.g. on its upstream timeout

            def _post(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = None
                upstream._record(self.path, dict(self.headers.items()), body)
                if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
                    self._send_json(404, error_body(f"no route POST {self.path}", "invalid_request_error"))
                    return
                if not isinstance(body, dict):
                    self._send_json(400, error_body("body must be a JSON object", "invalid_request_error"))
                    return
                reply = decide(body)
                if reply.delay:
                    # Bounded and interruptible: stop() releases it.
                    upstream._stop.wait(reply.delay)
                if reply.error:
                    status, err = reply.error
                    self._send_json(status, err)
                    return
                rid = upstream._next_id()
                model = body.get("model", "fake-model")
                if body.get("stream"):
                    self._stream(rid, model, body, reply)
                else:
                    self._send_json(200, self._completion(rid, model, body, reply))

            def _completion(self, rid, model, body, reply: Reply) -> dict:
                if reply.tool_calls:
                    message = {"role": "assistant", "content": None, "tool_calls": [{
                        "id": f"call_{rid}_{i}", "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]},
                    } for i, call in enumerate(reply.tool_calls)]}
                    finish, counted = "tool_calls", " ".join(c["arguments"] for c in reply.tool_calls)
                else:
                    message = {"role": "assistant", "content": reply.text}
                    finish, counted = "stop", reply.text or ""
                return {
                    "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": usage_for(body, counted),
                }

            def _stream(self, rid, model, body, reply: Reply) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                created = int(time.time())

                def chunk(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> None:
                    obj = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": created,
                           "model": model,
                           "choices": [] if delta is None else
                           [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
                    if usage is not None:
                        obj["usage"] = usage
                    self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
                    self.wfile.flush()

                if reply.tool_calls:
                    chunk({"role": "assistant", "content": None})
                    for i, call in enumerate(reply.tool_calls):
                        args = call["arguments"]
                        half = len(args) // 2
                        chunk({"tool_calls": [{
                            "index": i, "id": f"call_{rid}_{i}", "type": "function",
                            "function": {"name": call["name"], "arguments": ""}}]})
                        for piece in (args[:half], args[half:]):
                            chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                    chunk({}, "tool_calls")
                    counted = " ".join(c["arguments"] for c in reply.tool_calls)
                else:
                    chunk({"role": "assistant", "content": ""})
                    for piece in split_deltas(reply.text or ""):
                        chunk({"content": piece})
                    chunk({}, "stop")
                    counted = reply.text or ""
                opts = body.get("stream_options") or {}
                if opts.get("include_usage"):
                    chunk(None, usage=usage_for(body, counted))
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """What a connection's target is: the OpenAI base URL, ending in /v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeUpstream":
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-upstream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _next_id(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _record(self, path: str, headers: dict, body: Any) -> None:
        with self._lock:
            self._requests.append({"path": path, "headers": headers, "body": body, "at": time.time()})

    def requests(self) -> list[dict]:
        """A copy of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def chat_requests_since(self, mark: int) -> list[dict]:
        """The chat-completion requests received after ``mark`` (a ``len(requests())``)."""
        return [r for r in self.requests()[mark:] if r["path"].split("?")[0].rstrip("/") == "/v1/chat/completions"]

    def mark(self) -> int:
        with self._lock:
            return len(self._requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = FakeUpstream(args.port).start()
    print(f"fake upstream on {server.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
