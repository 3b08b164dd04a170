//! A hot replica serves the project from either region (real servers on loopback, regions `a`
//! and `b`): writes sent to the replica's endpoint are forwarded to the primary and answered as
//! the primary answered (JSON, multipart uploads, streamed responses, errors); responses carry
//! `x-holdfast-lsn` and `x-holdfast-lag-ms`; `x-holdfast-min-lsn` gives read-your-writes across
//! regions, bounded; a loop and an unreachable primary are refused with 503; a warm replica
//! forwards nothing.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use common::cluster::{BOUNDARY, multipart, oa, pair_with, scripted_model, status, wait_applied};
use reqwest::Method;
use serde_json::{Value, json};

/// `HOLDFAST_MIN_LSN_WAIT_MS` for both servers: short, so the bound is quick to test.
const MIN_LSN_WAIT_MS: u64 = 400;

/// Regions `a` and `b` with a short min-LSN bound.
fn pair() -> (Server, Server, tempfile::TempDir, tempfile::TempDir) {
    pair_with(&|o| o.env("HOLDFAST_MIN_LSN_WAIT_MS", MIN_LSN_WAIT_MS.to_string()))
}

fn lsn_of(api: &common::Api, project: &str) -> u64 {
    status(api, project)["lsn"].as_u64().expect("lsn")
}

fn header_u64(r: &common::Resp, name: &str) -> u64 {
    r.header(name).unwrap_or_else(|| panic!("no {name} header on {} {:?}", r.status, r.text)).parse().expect("a number")
}



#[test]
fn a_hot_replica_forwards_writes_and_reads_its_own_writes() {
    let (a, b, _da, _db) = pair();
    let (api_a, api_b) = (a.admin(), b.admin());
    api_a.create_project("hot");
    let conv = api_a.post(&oa("hot", "/conversations"), &json!({"items": [{"role": "user", "content": "one"}]})).ok(200);
    let conv = conv["id"].as_str().expect("conversation id").to_owned();
    let model = scripted_model(|_| Some(vec!["Hello ", "from ", "a"]), Duration::from_millis(30));
    api_a
        .post("/v1/projects/hot/connections", &json!({"name": "up", "type": "openai", "target": format!("http://127.0.0.1:{model}/v1"), "api_key": "sk-fake-0123456789"}))
        .ok(201);
    api_a.post("/v1/projects/hot/deployments", &json!({"name": "dep1", "connection": "up", "model": "fake"})).ok(201);
    api_a.post("/v1/projects/hot/replicas", &json!({"region": "b", "mode": "hot"})).ok(200);
    wait_applied(&api_b, "hot", lsn_of(&api_a, "hot"));

    // Every project route answers with the copy's position: the primary is never behind.
    let read_a = api_a.get(&oa("hot", &format!("/conversations/{conv}")));
    read_a.ok(200);
    assert_eq!((header_u64(&read_a, "x-holdfast-lsn"), header_u64(&read_a, "x-holdfast-lag-ms")), (lsn_of(&api_a, "hot"), 0));
    let read_b = api_b.get("/v1/projects/hot");
    read_b.ok(200);
    assert_eq!(header_u64(&read_b, "x-holdfast-lsn"), lsn_of(&api_a, "hot"), "b's copy is caught up");
    header_u64(&read_b, "x-holdfast-lag-ms");
    assert!(api_b.get("/v1/keys").header("x-holdfast-lsn").is_none(), "only project routes carry an LSN");

    // A write through b's endpoint is the primary's: committed on a, answered as a answered.
    let items = oa("hot", &format!("/conversations/{conv}/items"));
    let write = api_b.post(&items, &json!({"items": [{"role": "user", "content": "written via b"}]}));
    let item = write.ok(200)["data"][0]["id"].as_str().expect("item id").to_owned();
    let written = header_u64(&write, "x-holdfast-lsn");
    assert_eq!(written, lsn_of(&api_a, "hot"), "the LSN is the primary's, after the write");
    assert_eq!(header_u64(&write, "x-holdfast-lag-ms"), 0, "the primary answered");
    api_a.get(&format!("{}/{item}", items)).ok(200);
    // Read-your-writes through b: wait (bounded) until b has applied the write's LSN.
    let read = api_b.send(Method::GET, &format!("{items}/{item}"), None, &[("x-holdfast-min-lsn", &written.to_string())]);
    assert_eq!(read.ok(200)["id"], item.as_str());
    assert!(header_u64(&read, "x-holdfast-lsn") >= written);

    // Errors come back as the primary gave them (OpenAI shape, its status).
    let missing = api_b.post(&oa("hot", "/conversations/conv_nope/items"), &json!({"items": [{"role": "user", "content": "x"}]}));
    assert_eq!(missing.status, 404, "{}", missing.text);
    assert_eq!(missing.json()["error"]["type"], "invalid_request_error", "{}", missing.text);
    // Multipart bodies and their content type go through unchanged; so does the control plane.
    let file = api_b.send_raw(Method::POST, &oa("hot", "/files"), Some(&format!("multipart/form-data; boundary={BOUNDARY}")), multipart("n.txt", b"uploaded via b"));
    let file = file.ok(200)["id"].as_str().expect("file id").to_owned();
    let content = api_a.get(&oa("hot", &format!("/files/{file}/content")));
    assert_eq!((content.status, content.text.as_str()), (200, "uploaded via b"));
    api_b.delete(&oa("hot", &format!("/conversations/{conv}/items/{item}"))).ok(200);
    api_a.get(&format!("{items}/{item}")).err_oa(404);

    // A streamed response (server-sent events) streams through the forward.
    let streamed = api_b.send(Method::POST, &oa("hot", "/responses"), Some(&json!({"model": "dep1", "input": "hi", "stream": true})), &[]);
    assert_eq!(streamed.status, 200, "{}", streamed.text);
    assert!(streamed.header("content-type").is_some_and(|c| c.starts_with("text/event-stream")), "{:?}", streamed.headers);
    assert!(streamed.text.contains("response.completed") && streamed.text.contains("Hello "), "{}", streamed.text);
    let done = streamed.text.lines().filter_map(|l| l.strip_prefix("data: ")).filter_map(|d| serde_json::from_str::<Value>(d).ok()).find(|e| e["type"] == "response.completed").expect("a completed event");
    let response = done["response"]["id"].as_str().expect("response id").to_owned();
    let stored = api_a.get(&oa("hot", &format!("/responses/{response}"))).ok(200);
    assert_eq!(stored["status"], "completed", "{stored:#}");

    // Bounded wait: an LSN b never reaches is 503 after the bound, naming both LSNs.
    let lsn_b = lsn_of(&api_b, "hot");
    let future = (lsn_b + 1000).to_string();
    let started = Instant::now();
    let late = api_b.send(Method::GET, "/v1/projects/hot", None, &[("x-holdfast-min-lsn", &future)]);
    let waited = started.elapsed();
    let message = late.err(503, "unavailable");
    assert!(message.contains(&future) && message.contains(&lsn_b.to_string()), "{message}");
    assert!(waited >= Duration::from_millis(MIN_LSN_WAIT_MS) && waited < Duration::from_secs(5), "{waited:?}");
    let late = api_b.send(Method::GET, &oa("hot", &format!("/conversations/{conv}")), None, &[("x-holdfast-min-lsn", &future)]);
    assert_eq!(late.err_oa(503)["code"], "unavailable");
    // A malformed LSN is the client's mistake: 400, and nothing is written.
    let before = lsn_of(&api_a, "hot");
    api_b.send(Method::GET, "/v1/projects/hot", None, &[("x-holdfast-min-lsn", "soon")]).err(400, "invalid_input");
    let bad = api_b.send(Method::POST, &items, Some(&json!({"items": [{"role": "user", "content": "x"}]})), &[("x-holdfast-min-lsn", "-1")]);
    assert_eq!(bad.err_oa(400)["code"], "invalid_input");
    // A write that was already forwarded once is never forwarded again: a loop.
    let looped = api_b.send(Method::POST, &items, Some(&json!({"items": [{"role": "user", "content": "x"}]})), &[("x-holdfast-forwarded-by", "a")]);
    let looped = looped.err_oa(503);
    assert!(looped["message"].as_str().is_some_and(|m| m.contains("loop")), "{looped}");
    assert_eq!(lsn_of(&api_a, "hot"), before, "nothing was written");

    // The primary unreachable: 503 saying so; reads are still served from b's copy.
    assert!(!a.kill9().success());
    let down = api_b.post(&items, &json!({"items": [{"role": "user", "content": "x"}]}));
    let down = down.err_oa(503);
    assert!(down["message"].as_str().is_some_and(|m| m.contains("unreachable")), "{down}");
    api_b.get(&oa("hot", &format!("/conversations/{conv}"))).ok(200);
}

#[test]
fn a_warm_replica_refuses_writes_and_forwards_nothing() {
    let (a, b, _da, _db) = pair();
    let (api_a, api_b) = (a.admin(), b.admin());
    api_a.create_project("warm");
    let conv = api_a.post(&oa("warm", "/conversations"), &json!({"items": [{"role": "user", "content": "one"}]})).ok(200);
    let conv = conv["id"].as_str().expect("conversation id").to_owned();
    api_a.post("/v1/projects/warm/replicas", &json!({"region": "b", "mode": "warm"})).ok(200);
    let lsn = lsn_of(&api_a, "warm");
    wait_applied(&api_b, "warm", lsn);
    let write = api_b.post(&oa("warm", &format!("/conversations/{conv}/items")), &json!({"items": [{"role": "user", "content": "x"}]}));
    let refused = write.err_oa(503);
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("warm replica")), "{refused}");
    api_b.patch("/v1/projects/warm", &json!({"description": "x"})).err(503, "unavailable");
    assert_eq!(lsn_of(&api_a, "warm"), lsn, "nothing reached the primary");
}

/// OpenAI-shape error assertions for the Foundry routes.
trait OaErr {
    fn err_oa(&self, status: u16) -> Value;
}

impl OaErr for common::Resp {
    fn err_oa(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        let error = self.json()["error"].clone();
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "an OpenAI error: {}", self.text);
        error
    }
}
