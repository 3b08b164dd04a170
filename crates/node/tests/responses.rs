//! The Responses API at the node level, against a scripted OpenAI-compatible upstream (a
//! real HTTP server on 127.0.0.1 speaking chat completions over SSE; a test double for the
//! model only): plain and streamed responses, function-call round trips through a conversation
//! and through `previous_response_id`, file search, upstream errors, the timeout, cancel,
//! `store: false`, refused requests that write nothing — and, after each, replaying the journal
//! reproduces the project's state byte for byte (DESIGN.md invariant 1: the model's output is
//! carried in the changes).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use holdfast_agents::responses::{Created, ResponseCreate, StreamEvent};
use holdfast_core::Caller;
use holdfast_node::{Config, Holdfast};
use holdfast_store::apply::Replayer;
use holdfast_types::api::ProjectCreate;
use holdfast_types::{ErrorKind, Lsn, RequestId};
use serde_json::{Value, json};

const KEY: &str = "test-admin-key-0123456789";
const PROJECT: &str = "demo";

// The scripted model ----------------------------------------------------------------------------

/// A request body and its Authorization header.
type Call = (Value, Option<String>);

/// What the fake model saw.
#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<Call>>>,
}

impl Seen {
    fn all(&self) -> Vec<Call> {
        self.requests.lock().expect("lock").clone()
    }

    fn last(&self) -> Value {
        self.all().last().map(|(b, _)| b.clone()).expect("the upstream was called")
    }

    fn count(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }
}

fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn sse(chunks: Vec<Value>) -> Response {
    let mut body = String::new();
    for chunk in chunks {
        body.push_str(&format!("data: {chunk}\n\n"));
    }
    body.push_str("data: [DONE]\n\n");
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m-1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}})
}

/// A text answer in three deltas, then usage.
fn text_answer(text: &str) -> Vec<Value> {
    let chars: Vec<char> = text.chars().collect();
    let third = chars.len().div_ceil(3).max(1);
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    for part in chars.chunks(third) {
        out.push(chunk(json!({"content": part.iter().collect::<String>()}), None));
    }
    out.push(chunk(json!({}), Some("stop")));
    out.push(usage(5, 3));
    out
}

/// A tool call with its arguments in two pieces, then usage.
fn tool_answer(id: &str, name: &str, arguments: &str) -> Vec<Value> {
    let (a, b) = arguments.split_at(arguments.len() / 2);
    vec![
        chunk(
            json!({"role": "assistant", "tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            None,
        ),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}), None),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}), None),
        chunk(json!({}), Some("tool_calls")),
        usage(7, 4),
    ]
}

/// The model: what it answers depends on the last message it is sent.
async fn chat(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    seen.requests.lock().expect("lock").push((body.clone(), auth));
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    if last["role"] == "tool" {
        let answer = text_of(&last);
        return if answer.contains("[1]") {
            sse(text_answer(&format!("From your files: {}", answer.lines().nth(1).unwrap_or_default())))
        } else {
            sse(text_answer(&format!("It is {answer} in Oslo.")))
        };
    }
    let said = text_of(&last);
    if said.contains("fail") {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "model exploded", "type": "server_error"}})),
        )
            .into_response();
    }
    if said.contains("hang") {
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    if said.contains("garbage") {
        return ([(header::CONTENT_TYPE, "text/event-stream")], "data: {\"choices\": [\n\n").into_response();
    }
    if said.contains("slow") {
        // Deltas 150 ms apart: time for a client to leave, or for a cancel.
        let chunks = text_answer("one two three four five six seven eight");
        let stream = futures::stream::unfold((chunks, 0usize), |(chunks, i)| async move {
            if i > chunks.len() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
            let text = match chunks.get(i) {
                Some(c) => format!("data: {c}\n\n"),
                None => "data: [DONE]\n\n".to_owned(),
            };
            Some((Ok::<_, Infallible>(Bytes::from(text)), (chunks, i + 1)))
        });
        return ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(stream)).into_response();
    }
    if said.contains("search") && !messages.iter().any(|m| m["role"] == "tool") {
        return sse(tool_answer("call_fs", "file_search", "{\"query\":\"anchor\"}"));
    }
    if said.contains("weather") {
        return sse(tool_answer("call_w1", "get_weather", "{\"city\":\"Oslo\"}"));
    }
    sse(text_answer(&format!("Hello! You said: {said}")))
}

/// Starts the fake model; answers its base URL (`http://127.0.0.1:port/v1`).
async fn start_upstream() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new().route("/v1/chat/completions", post(chat)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/v1"), seen)
}

// The node ------------------------------------------------------------------------------------

struct Env {
    dir: tempfile::TempDir,
    node: Holdfast,
    seen: Seen,
}

impl Env {
    async fn new(timeout: Duration) -> Env {
        let (url, seen) = start_upstream().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new(dir.path().join("data"), "test", Some(KEY.into()));
        config.agents.upstream_timeout = timeout;
        let node = Holdfast::open(config).expect("open").node;
        let env = Env { dir, node, seen };
        let c = env.caller();
        env.node
            .core.create_project(&c, ProjectCreate { name: PROJECT.into(), ..Default::default() })
            .await
            .expect("project");
        let connection =
            serde_json::from_value(json!({"name": "up", "target": url, "api_key": "sk-test"})).expect("conn");
        env.node.agents.create_connection(&c, PROJECT, connection).await.expect("connection");
        let deployment =
            serde_json::from_value(json!({"name": "gpt", "connection": "up", "model": "m-1"})).expect("dep");
        env.node.agents.create_deployment(&c, PROJECT, deployment).await.expect("deployment");
        env
    }

    fn caller(&self) -> Caller {
        Caller { principal: self.node.core.authenticate(Some(KEY)).expect("auth"), request_id: RequestId::generate() }
    }

    async fn create(&self, body: Value) -> holdfast_core::Result<Created> {
        let req: ResponseCreate = serde_json::from_value(body).expect("request body");
        self.node.agents.create_response(&self.caller(), PROJECT, req).await
    }

    /// Creates a non-streamed response and returns it.
    async fn respond(&self, body: Value) -> Value {
        match self.create(body).await.expect("create response") {
            Created::Done(v) => v,
            Created::Stream(_) => panic!("a stream for a request without stream: true"),
        }
    }

    async fn get(&self, id: &str) -> holdfast_core::Result<Value> {
        self.node.agents.get_response(&self.caller(), PROJECT, id).await
    }

    async fn lsn(&self) -> Lsn {
        self.node.core.project_store(PROJECT).await.expect("store").last_lsn()
    }

    /// Waits until a stored response is no longer in progress.
    async fn finished(&self, id: &str) -> Value {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.get(id).await.expect("get");
            if r["status"] != "in_progress" {
                return r;
            }
            assert!(Instant::now() < until, "response {id} still in progress");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replays the whole journal into an empty project and compares it with the live state.
    async fn verify_replay(&self) {
        let c = self.caller();
        let project = self.node.core.get_project(&c, PROJECT).await.expect("project");
        let mut changes = Vec::new();
        loop {
            let after = changes.last().map_or(Lsn::ZERO, |ch: &holdfast_types::Change| ch.lsn);
            let page = self.node.core.journal(&c, PROJECT, after, Some(7), None).await.expect("journal");
            if page.changes.is_empty() {
                break;
            }
            changes.extend(page.changes);
        }
        for (i, change) in changes.iter().enumerate() {
            assert_eq!(change.lsn, Lsn(i as u64 + 1), "dense LSNs");
        }
        let path = self.dir.path().join(format!("replay-{}.db", RequestId::generate()));
        let mut replayer = Replayer::create(&path, &project.id).expect("replayer");
        for change in &changes {
            replayer.apply(change).expect("replay");
        }
        let live = self.node.core.project_store(PROJECT).await.expect("store").dump().await.expect("dump");
        let replayed = replayer.dump().expect("replayed dump");
        assert_eq!(String::from_utf8_lossy(&replayed), String::from_utf8_lossy(&live), "replay differs from state");
    }
}

fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["text"].as_str().map(str::to_owned))
        .collect()
}

async fn collect(mut events: tokio::sync::mpsc::UnboundedReceiver<StreamEvent>) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(20), events.recv()).await.expect("events in time") {
        out.push(e);
    }
    out
}

// The tests ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_response_is_answered_stored_and_replayable() {
    let env = Env::new(Duration::from_secs(30)).await;
    let r = env
        .respond(json!({"model": "gpt", "input": "hi", "instructions": "Be kind.", "metadata": {"k": "v"}, "temperature": 0.5}))
        .await;
    assert_eq!(r["object"], "response");
    assert!(r["id"].as_str().expect("id").starts_with("resp_"));
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(r["model"], "gpt");
    assert_eq!(output_text(&r), "Hello! You said: hi");
    assert_eq!(r["output"][0]["type"], "message");
    assert_eq!(r["output"][0]["role"], "assistant");
    assert!(r["output"][0]["id"].as_str().expect("item id").starts_with("msg_"));
    assert_eq!(r["usage"]["input_tokens"], 5);
    assert_eq!(r["usage"]["output_tokens"], 3);
    assert_eq!(r["usage"]["total_tokens"], 8);
    assert_eq!(r["metadata"], json!({"k": "v"}));
    assert_eq!(r["instructions"], "Be kind.");
    assert!(r["completed_at"].is_i64());

    // What the model was sent.
    let (body, auth) = env.seen.all().pop().expect("a call");
    assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
    assert_eq!(body["model"], "m-1");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["messages"], json!([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}]));

    // Stored as answered; the input is listed.
    let id = r["id"].as_str().expect("id");
    assert_eq!(env.get(id).await.expect("get"), r);
    let items =
        env.node.agents.list_response_input_items(&env.caller(), PROJECT, id, Default::default()).await.expect("items");
    assert_eq!(items.data.len(), 1);
    assert_eq!(items.data[0]["content"][0]["text"], "hi");

    // Finished responses cannot be cancelled; deleted ones are gone.
    let e = env.node.agents.cancel_response(&env.caller(), PROJECT, id).await.expect_err("cancel finished");
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    let d = env.node.agents.delete_response(&env.caller(), PROJECT, id).await.expect("delete");
    assert_eq!(d, json!({"id": id, "object": "response", "deleted": true}));
    assert_eq!(env.get(id).await.expect_err("gone").kind, ErrorKind::NotFound);
    env.verify_replay().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_sends_the_sdk_events_in_order() {
    let env = Env::new(Duration::from_secs(30)).await;
    let Created::Stream(events) =
        env.create(json!({"model": "gpt", "input": "stream me", "stream": true})).await.expect("create")
    else {
        panic!("no stream")
    };
    let events = collect(events).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.data["sequence_number"], i as u64, "sequence numbers count up");
        assert_eq!(e.data["type"], e.event.as_str());
    }
    let deltas: String = events.iter().filter_map(|e| e.data["delta"].as_str()).collect();
    assert_eq!(deltas, "Hello! You said: stream me");
    assert_eq!(events[7].data["text"], "Hello! You said: stream me");
    assert_eq!(events[0].data["response"]["status"], "in_progress");
    let done = &events[10].data["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(output_text(done), "Hello! You said: stream me");
    assert_eq!(env.get(done["id"].as_str().expect("id")).await.expect("stored"), *done);
    env.verify_replay().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_calls_round_trip_through_a_conversation() {
    let env = Env::new(Duration::from_secs(30)).await;
    let c = env.caller();
    let conv = env.node.agents.create_conversation(&c, PROJECT, Default::default()).await.expect("conversation");
    let cid = conv["id"].as_str().expect("id").to_owned();
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);

    let first = env
        .respond(json!({"model": "gpt", "conversation": cid, "tools": tools, "input": "What is the weather in Oslo?"}))
        .await;
    assert_eq!(first["status"], "completed", "{first:#}");
    assert_eq!(first["conversation"], json!({"id": cid}));
    let call = &first["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["call_id"], "call_w1");
    assert_eq!(call["arguments"], "{\"city\":\"Oslo\"}");
    assert!(call["id"].as_str().expect("id").starts_with("fc_"));
    let sent = env.seen.last();
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(sent["tools"][0]["type"], "function");

    let second = env
        .respond(json!({"model": "gpt", "conversation": {"id": cid}, "tools": tools,
            "input": [{"type": "function_call_output", "call_id": "call_w1", "output": "sunny"}]}))
        .await;
    assert_eq!(second["status"], "completed", "{second:#}");
    assert_eq!(output_text(&second), "It is sunny in Oslo.");
    // The model saw the whole conversation: question, its call, the answer.
    let messages = env.seen.last()["messages"].clone();
    assert_eq!(messages[0], json!({"role": "user", "content": "What is the weather in Oslo?"}));
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["tool_calls"][0]["id"], "call_w1");
    assert_eq!(messages[1]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
    assert_eq!(messages[2], json!({"role": "tool", "tool_call_id": "call_w1", "content": "sunny"}));
    assert_eq!(messages.as_array().map(Vec::len), Some(3));

    // The conversation holds all four items, in order; usage adds up per response.
    let q = holdfast_agents::ListQuery { order: Some("asc".into()), ..Default::default() };
    let items = env.node.agents.list_items(&c, PROJECT, &cid, q).await.expect("items");
    let types: Vec<&str> = items.data.iter().map(|i| i["type"].as_str().unwrap_or_default()).collect();
    assert_eq!(types, vec!["message", "function_call", "function_call_output", "message"]);
    assert_eq!(items.data[1]["id"], call["id"]);
    assert_eq!(second["usage"]["total_tokens"], 8);
    assert_eq!(first["usage"]["total_tokens"], 11);
    env.verify_replay().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_calls_round_trip_through_previous_response_id() {
    let env = Env::new(Duration::from_secs(30)).await;
    let tools =
        json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]);
    let first =
        env.respond(json!({"model": "gpt", "tools": tools, "input": "weather?", "instructions": "Use tools."})).await;
    assert_eq!(first["output"][0]["type"], "function_call");
    let second = env
        .respond(json!({"model": "gpt", "tools": tools, "previous_response_id": first["id"],
            "input": [{"type": "function_call_output", "call_id": "call_w1", "output": "rainy"}]}))
        .await;
    assert_eq!(output_text(&second), "It is rainy in Oslo.");
    assert_eq!(second["previous_response_id"], first["id"]);
    // Instructions are not carried over from the previous response.
    let messages = env.seen.last()["messages"].clone();
    assert_eq!(messages[0], json!({"role": "user", "content": "weather?"}));
    assert_eq!(messages[2]["role"], "tool");

    let third = env.respond(json!({"model": "gpt", "previous_response_id": second["id"], "input": "thanks"})).await;
    assert_eq!(output_text(&third), "Hello! You said: thanks");
    assert_eq!(env.seen.last()["messages"].as_array().map(Vec::len), Some(5));

    let e = env
        .create(json!({"model": "gpt", "previous_response_id": "resp_nope", "input": "x"}))
        .await
        .expect_err("unknown");
    assert_eq!(e.kind, ErrorKind::NotFound);
    env.verify_replay().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_fail_the_response_with_the_upstreams_message() {
    let env = Env::new(Duration::from_secs(30)).await;
    let r = env.respond(json!({"model": "gpt", "input": "please fail"})).await;
    assert_eq!(r["status"], "failed");
    assert_eq!(r["error"]["code"], "server_error");
    let message = r["error"]["message"].as_str().expect("message");
    assert!(message.contains("model exploded") && message.contains("500"), "{message}");
    assert_eq!(r["output"], json!([]));
    assert_eq!(env.get(r["id"].as_str().expect("id")).await.expect("stored"), r);

    let r = env.respond(json!({"model": "gpt", "input": "send garbage"})).await;
    assert_eq!(r["status"], "failed");
    let message = r["error"]["message"].as_str().expect("message");
    // What the upstream sent is not repeated (it may not be a model server at all).
    assert!(message.contains("not JSON") && !message.contains("choices"), "{r:#}");

    // Streamed, the failure is the last event.
    let Created::Stream(events) =
        env.create(json!({"model": "gpt", "input": "fail", "stream": true})).await.expect("create")
    else {
        panic!("no stream")
    };
    let events = collect(events).await;
    let last = events.last().expect("events");
    assert_eq!(last.event, "response.failed");
    assert!(last.data["response"]["error"]["message"].as_str().unwrap_or_default().contains("model exploded"));

    // An upstream that is not there at all.
    let c = env.caller();
    let gone = serde_json::from_value(json!({"name": "gone", "target": "http://127.0.0.1:9/v1"})).expect("conn");
    env.node.agents.create_connection(&c, PROJECT, gone).await.expect("connection");
    let dep = serde_json::from_value(json!({"name": "nowhere", "connection": "gone", "model": "m"})).expect("dep");
    env.node.agents.create_deployment(&c, PROJECT, dep).await.expect("deployment");
    let r = env.respond(json!({"model": "nowhere", "input": "hi"})).await;
    assert_eq!(r["status"], "failed");
    assert!(r["error"]["message"].as_str().expect("message").contains("cannot reach"), "{r:#}");
    env.verify_replay().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_fails_after_the_timeout() {
    let env = Env::new(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let r = env.respond(json!({"model": "gpt", "input": "hang forever"})).await;
    let took = started.elapsed();
    assert_eq!(r["status"], "failed", "{r:#}");
    assert!(r["error"]["message"].as_str().expect("message").contains("timeout"), "{r:#}");
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(env.get(r["id"].as_str().expect("id")).await.expect("stored")["status"], "failed");
    env.verify_replay().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_write_nothing() {
    let env = Env::new(Duration::from_secs(30)).await;
    let before = env.lsn().await;
    let calls = env.seen.count();
    let cases = [
        (json!({"model": "nope", "input": "hi"}), ErrorKind::InvalidInput),
        (json!({"input": "hi"}), ErrorKind::InvalidInput),
        (json!({"model": "gpt", "input": [{"role": "robot", "content": "x"}]}), ErrorKind::InvalidInput),
        (json!({"model": "gpt", "input": 42}), ErrorKind::InvalidInput),
        (json!({"model": "gpt", "input": "hi", "conversation": "conv_missing"}), ErrorKind::NotFound),
        (json!({"model": "gpt", "input": "hi", "tools": [{"type": "web_search"}]}), ErrorKind::InvalidInput),
        (
            json!({"model": "gpt", "input": "hi", "tools": [{"type": "file_search", "vector_store_ids": ["vs_missing"]}]}),
            ErrorKind::InvalidInput,
        ),
        (json!({"model": "gpt", "input": "hi", "temperature": 3.0}), ErrorKind::InvalidInput),
        (json!({"model": "gpt", "input": "hi", "tool_choice": "sometimes"}), ErrorKind::InvalidInput),
        (json!({"model": "gpt", "input": "hi", "metadata": {"k": 1}}), ErrorKind::InvalidInput),
        (json!({"model": "gpt", "input": "hi", "background": true, "store": false}), ErrorKind::InvalidInput),
        (
            json!({"agent_reference": {"type": "agent_reference", "name": "ghost"}, "input": "hi"}),
            ErrorKind::InvalidInput,
        ),
    ];
    for (body, kind) in cases {
        let e = env.create(body.clone()).await.expect_err(&format!("{body} must be refused"));
        assert_eq!(e.kind, kind, "{body}: {}", e.message);
    }
    let c = env.caller();
    let conv = env.node.agents.create_conversation(&c, PROJECT, Default::default()).await.expect("conversation");
    let after_conv = env.lsn().await;
    let e = env
        .create(json!({"model": "gpt", "input": "hi", "conversation": conv["id"], "previous_response_id": "resp_x"}))
        .await
        .expect_err("both");
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert_eq!(env.lsn().await, after_conv, "refused requests wrote nothing");
    assert_eq!(after_conv.0, before.0 + 1);
    assert_eq!(env.seen.count(), calls, "refused requests called no model");

    // store: false answers, and writes nothing either.
    let r = env.respond(json!({"model": "gpt", "input": "hi", "store": false})).await;
    assert_eq!(r["status"], "completed");
    assert_eq!(r["store"], false);
    assert_eq!(env.lsn().await, after_conv);
    assert_eq!(env.get(r["id"].as_str().expect("id")).await.expect_err("not stored").kind, ErrorKind::NotFound);
    env.verify_replay().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_outlives_its_client_and_can_be_cancelled() {
    let env = Env::new(Duration::from_secs(30)).await;
    // The client leaves after the first event; the response still completes and is stored.
    let Created::Stream(mut events) =
        env.create(json!({"model": "gpt", "input": "slow please", "stream": true})).await.expect("create")
    else {
        panic!("no stream")
    };
    let first = events.recv().await.expect("first event");
    assert_eq!(first.event, "response.created");
    let id = first.data["response"]["id"].as_str().expect("id").to_owned();
    drop(events);
    let r = env.finished(&id).await;
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(output_text(&r), "one two three four five six seven eight");

    // A background response answers at once, in progress, and can be cancelled.
    let started = env.respond(json!({"model": "gpt", "input": "slow again", "background": true})).await;
    assert_eq!(started["status"], "in_progress");
    assert_eq!(started["background"], true);
    let id = started["id"].as_str().expect("id");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled = env.node.agents.cancel_response(&env.caller(), PROJECT, id).await.expect("cancel");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
    assert_eq!(env.get(id).await.expect("get")["status"], "cancelled");
    let e = env.node.agents.cancel_response(&env.caller(), PROJECT, id).await.expect_err("cancel twice");
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    // A background response that is left alone completes.
    let bg = env.respond(json!({"model": "gpt", "input": "in the background", "background": true})).await;
    let done = env.finished(bg["id"].as_str().expect("id")).await;
    assert_eq!(output_text(&done), "Hello! You said: in the background");
    env.verify_replay().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_supply_model_instructions_and_tools() {
    let env = Env::new(Duration::from_secs(30)).await;
    let c = env.caller();
    let version = serde_json::from_value(json!({"definition": {"kind": "prompt", "model": "gpt",
        "instructions": "You are a weather bot.",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]}}))
    .expect("version");
    env.node.agents.create_agent_version(&c, PROJECT, "bot", version).await.expect("agent");
    let r = env
        .respond(json!({"agent": {"type": "agent_reference", "name": "bot"}, "input": "weather now?", "instructions": "Be brief."}))
        .await;
    assert_eq!(r["output"][0]["type"], "function_call");
    assert_eq!(r["agent_reference"], json!({"type": "agent_reference", "name": "bot", "version": "1"}));
    let sent = env.seen.last();
    assert_eq!(sent["messages"][0], json!({"role": "system", "content": "You are a weather bot.\n\nBe brief."}));
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    let r = env
        .respond(
            json!({"agent_reference": {"type": "agent_reference", "name": "bot", "version": "1"}, "input": "hello"}),
        )
        .await;
    assert_eq!(output_text(&r), "Hello! You said: hello");
    env.verify_replay().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_search_runs_inside_the_response() {
    let env = Env::new(Duration::from_secs(30)).await;
    let c = env.caller();
    let upload = holdfast_agents::files::FileUpload {
        filename: Some("notes.txt".into()),
        purpose: "assistants".into(),
        bytes: b"The anchor of the ship is called the holdfast anchor.".to_vec().into(),
    };
    let file = env.node.agents.create_file(&c, PROJECT, upload).await.expect("file");
    let store = serde_json::from_value(json!({"name": "notes", "file_ids": [file["id"]]})).expect("store");
    let vs = env.node.agents.create_vector_store(&c, PROJECT, store).await.expect("vector store");
    let tools = json!([{"type": "file_search", "vector_store_ids": [vs["id"]]}]);
    let r = env.respond(json!({"model": "gpt", "tools": tools, "input": "search my notes"})).await;
    assert_eq!(r["status"], "completed", "{r:#}");
    let fs = &r["output"][0];
    assert_eq!(fs["type"], "file_search_call");
    assert_eq!(fs["status"], "completed");
    assert_eq!(fs["queries"], json!(["anchor"]));
    assert_eq!(fs["results"][0]["file_id"], file["id"]);
    assert!(fs["results"][0]["text"].as_str().unwrap_or_default().contains("holdfast anchor"), "{fs:#}");
    assert_eq!(r["output"][1]["type"], "message");
    assert!(output_text(&r).starts_with("From your files:"), "{r:#}");
    // Two model calls; the second carried the search results back.
    let calls = env.seen.all();
    assert_eq!(calls.len(), 2);
    let messages = calls[1].0["messages"].clone();
    assert_eq!(messages[1]["tool_calls"][0]["function"]["name"], "file_search");
    assert_eq!(messages[2]["role"], "tool");
    assert!(text_of(&messages[2]).contains("holdfast anchor"));
    // Usage sums both calls.
    assert_eq!(r["usage"]["total_tokens"], 19);
    env.verify_replay().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_fails_foreground_responses_and_runs_background_ones_again() {
    // A short deadline: the runs cut off here (in this process, their service stopped) end by
    // it, as a stopped process's would have at once.
    let env = Env::new(Duration::from_secs(2)).await;
    let started = env.respond(json!({"model": "gpt", "input": "hang forever", "background": true})).await;
    assert_eq!(started["status"], "in_progress");
    let background = started["id"].as_str().expect("id").to_owned();
    // A foreground (streamed) one, cut off with it.
    let Created::Stream(mut events) = env.create(json!({"model": "gpt", "input": "hang forever", "stream": true})).await.expect("stream") else {
        panic!("no stream for stream: true");
    };
    let first = events.recv().await.expect("response.created");
    let foreground = first.data["response"]["id"].as_str().expect("id").to_owned();
    env.node.core.shutdown().await;
    let Env { dir, node, .. } = env;
    drop(node);
    let mut config = Config::new(dir.path().join("data"), "test", Some(KEY.into()));
    config.agents.upstream_timeout = Duration::from_secs(10);
    let node = Holdfast::open(config).expect("reopen").node;
    let resumer = node.agents.spawn_resumer();
    let caller = Caller { principal: node.core.authenticate(Some(KEY)).expect("auth"), request_id: RequestId::generate() };
    let r = node.agents.get_response(&caller, PROJECT, &foreground).await.expect("get");
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["error"]["code"], "server_error", "{r:#}");
    // The background one runs again under its own id, and says where.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let again = loop {
        let r = node.agents.get_response(&caller, PROJECT, &background).await.expect("get");
        if !r["holdfast"]["resumed"].is_null() || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(again["status"], "in_progress", "{again:#}");
    assert_eq!(again["holdfast"]["resumed"]["region"], "test", "{again:#}");
    assert_eq!(again["created_at"], started["created_at"], "the same response, not a new one");
    assert!(holdfast_agents::responses::is_running(&background));
    node.core.shutdown().await;
    let _ = resumer.await;
    let again = Env { dir, node, seen: Seen::default() };
    again.verify_replay().await;
}
