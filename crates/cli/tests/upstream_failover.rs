//! Upstream model failover with the real binary: a deployment that names two connections
//! completes a response from the second whenever the first fails before it answers — it refuses
//! connections, answers 503, or sends nothing within the attempt timeout — and a first that keeps
//! failing is skipped (its circuit breaker is open) until a probe finds it answering again. The
//! model servers are test doubles on loopback speaking real HTTP. Every wait is bounded.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::Duration;

use common::cluster::{oa, read_request, scripted_model};
use common::{Api, Opts, Server, free_port};
use serde_json::{Value, json};

/// Short, so the test is quick: a hung first upstream is left after 300 ms, an open breaker is
/// probed again after 1 s.
const CONFIG: &str = "listen = \"127.0.0.1:{port}\"\n[upstream]\nattempt_timeout_ms = 300\nbreaker_open_secs = 1\n";

/// A model server whose first `failures` calls answer HTTP `status` with a model API's error
/// body, and whose later ones stream `text`; returns its port and how many calls it has had.
fn flaky_model(failures: usize, status: u16, text: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counted = counted.clone();
            std::thread::spawn(move || {
                if read_request(&stream).is_none() {
                    return;
                }
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let mut out = stream;
                if n < failures {
                    let body = r#"{"error":{"message":"cannot answer","type":"server_error"}}"#;
                    let _ = write!(out, "HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    return;
                }
                let chunk = |delta: Value, finish: Value| {
                    let obj = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                    format!("data: {obj}\n\n")
                };
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
                let _ = out.write_all(chunk(json!({"role": "assistant", "content": text}), Value::Null).as_bytes());
                let _ = out.write_all(chunk(json!({}), json!("stop")).as_bytes());
                let _ = out.write_all(b"data: [DONE]\n\n");
            });
        }
    });
    (port, calls)
}

fn connect(api: &Api, name: &str, port: u16) {
    let body = json!({"name": name, "type": "openai", "target": format!("http://127.0.0.1:{port}/v1"), "api_key": "sk-fake-0123456789"});
    api.post("/v1/projects/app/connections", &body).ok(201);
}

/// A response to "hi" on `deployment`: its text and the connection that served it.
fn respond(api: &Api, deployment: &str) -> (String, String) {
    let r = api.post(&oa("app", "/responses"), &json!({"model": deployment, "input": "hi"})).ok(200);
    assert_eq!(r["status"], "completed", "{r:#}");
    let text = r["output"][0]["content"][0]["text"].as_str().unwrap_or_default().to_owned();
    (text, r["holdfast"]["upstream"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn a_deployment_falls_back_to_its_next_connection_and_skips_one_that_keeps_failing() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start_with(data.path(), Opts { config: Some(CONFIG.to_owned()), ..Opts::default() });
    let api = server.admin();
    api.create_project("app");
    let backup = scripted_model(|_| Some(vec!["from backup"]), Duration::ZERO);
    connect(&api, "backup", backup);

    // The first refuses connections (nothing listens on its port).
    connect(&api, "refusing", free_port());
    api.post("/v1/projects/app/deployments", &json!({"name": "d1", "connection": "refusing", "fallbacks": ["backup"], "model": "m"})).ok(201);
    assert_eq!(respond(&api, "d1"), ("from backup".to_owned(), "backup".to_owned()));

    // The first accepts and then sends nothing: left after the attempt timeout.
    let hung = scripted_model(|_| None, Duration::ZERO);
    connect(&api, "hung", hung);
    api.post("/v1/projects/app/deployments", &json!({"name": "d2", "connection": "hung", "fallbacks": ["backup"], "model": "m"})).ok(201);
    assert_eq!(respond(&api, "d2"), ("from backup".to_owned(), "backup".to_owned()));

    // The first answers 503 three times, then recovers.
    let (flaky, calls) = flaky_model(3, 503, "from primary");
    connect(&api, "flaky", flaky);
    api.post("/v1/projects/app/deployments", &json!({"name": "d3", "connection": "flaky", "fallbacks": ["backup"], "model": "m"})).ok(201);
    for _ in 0..3 {
        assert_eq!(respond(&api, "d3"), ("from backup".to_owned(), "backup".to_owned()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Three failures in a row opened its breaker: the next response does not try it, and the
    // region says so.
    assert_eq!(respond(&api, "d3"), ("from backup".to_owned(), "backup".to_owned()));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "an open breaker is skipped");
    let health = api.get("/v1/projects/app/upstreams").ok(200);
    let of = |name: &str| health["data"].as_array().expect("data").iter().find(|h| h["connection"] == name).cloned().expect("listed");
    assert_eq!((of("flaky")["state"].as_str(), of("flaky")["failures"].as_u64()), (Some("open"), Some(3)), "{health:#}");
    assert_eq!(of("backup")["state"], "healthy", "{health:#}");
    // Once the breaker's time is up, one response probes it; it answers, so it serves again.
    sleep(Duration::from_millis(1200));
    assert_eq!(respond(&api, "d3"), ("from primary".to_owned(), "flaky".to_owned()));
    assert_eq!(respond(&api, "d3"), ("from primary".to_owned(), "flaky".to_owned()));
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    let health = api.get("/v1/projects/app/upstreams").ok(200);
    assert!(health["data"].as_array().expect("data").iter().any(|h| h["connection"] == "flaky" && h["state"] == "healthy"), "{health:#}");

    // A request the upstream refuses as bad (400) is no reason to try another, nor to doubt it.
    let (picky, picky_calls) = flaky_model(usize::MAX, 400, "");
    connect(&api, "picky", picky);
    api.post("/v1/projects/app/deployments", &json!({"name": "d4", "connection": "picky", "fallbacks": ["backup"], "model": "m"})).ok(201);
    let refused = api.post(&oa("app", "/responses"), &json!({"model": "d4", "input": "hi"})).ok(200);
    assert_eq!((refused["status"].as_str(), refused["error"]["code"].as_str()), (Some("failed"), Some("invalid_prompt")), "{refused:#}");
    assert_eq!(picky_calls.load(Ordering::SeqCst), 1);

    // A deployment without fallbacks reports the failure as before, and bad lists are refused.
    api.post("/v1/projects/app/deployments", &json!({"name": "alone", "connection": "refusing", "model": "m"})).ok(201);
    let failed = api.post(&oa("app", "/responses"), &json!({"model": "alone", "input": "hi"}));
    assert!(failed.text.contains("cannot reach the upstream model"), "{}", failed.text);
    api.post("/v1/projects/app/deployments", &json!({"name": "twice", "connection": "backup", "fallbacks": ["backup"], "model": "m"}))
        .err(400, "invalid_input");
    api.post("/v1/projects/app/deployments", &json!({"name": "ghost", "connection": "backup", "fallbacks": ["nowhere"], "model": "m"}))
        .err(400, "invalid_input");
    // A connection a deployment falls back to cannot be deleted from under it.
    api.delete("/v1/projects/app/connections/backup").err(409, "conflict");
}
