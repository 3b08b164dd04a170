//! `Idempotency-Key` on writes: a retry returns the first answer and writes nothing, the same
//! key with another request is 422, and it holds at the new primary after a failover.

#![allow(clippy::unwrap_used)]

mod common;

use common::cluster::{oa, pair, status, wait_applied};
use common::{Api, Server};
use reqwest::Method;
use serde_json::{Value, json};

fn keyed(api: &Api, path: &str, body: &Value, key: &str) -> common::Resp {
    api.send(Method::POST, path, Some(body), &[("Idempotency-Key", key)])
}

fn lsn(api: &Api, project: &str) -> u64 {
    api.get(&format!("/v1/projects/{project}")).header("x-holdfast-lsn").unwrap().parse().unwrap()
}

#[test]
fn a_retried_write_returns_the_first_answer_and_writes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let api = server.admin();
    api.create_project("idem");

    let first = keyed(&api, &oa("idem", "/conversations"), &json!({"metadata": {"n": "1"}}), "conv-create-1");
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(first.header("idempotent-replayed").is_none());
    let after_first = lsn(&api, "idem");
    let again = keyed(&api, &oa("idem", "/conversations"), &json!({"metadata": {"n": "1"}}), "conv-create-1");
    assert_eq!((again.status, again.json()), (200, first.json()), "the first answer, ids and all");
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(lsn(&api, "idem"), after_first, "the retry journals nothing");
    assert_eq!(api.get(&oa("idem", "/conversations")).ok(200)["data"].as_array().unwrap().len(), 1);

    // An item append, twice: one item.
    let conv = first.json()["id"].as_str().unwrap().to_owned();
    let items = oa("idem", &format!("/conversations/{conv}/items"));
    let body = json!({"items": [{"role": "user", "content": "once"}]});
    let appended = keyed(&api, &items, &body, "append-1");
    assert_eq!(appended.status, 200, "{}", appended.text);
    assert_eq!(keyed(&api, &items, &body, "append-1").json(), appended.json());
    assert_eq!(api.get(&items).ok(200)["data"].as_array().unwrap().len(), 1);

    // The same key with another request: 422, and nothing written.
    let before = lsn(&api, "idem");
    let other = keyed(&api, &items, &json!({"items": [{"role": "user", "content": "twice?"}]}), "append-1");
    assert_eq!(other.status, 422, "{}", other.text);
    assert_eq!(other.json()["error"]["type"], "invalid_request_error", "{}", other.text);
    assert!(other.text.contains("append-1"), "{}", other.text);
    assert_eq!(lsn(&api, "idem"), before);

    // The control plane's project routes too (a 201 replays as a 201).
    let connection = json!({"name": "up", "type": "openai", "target": "http://127.0.0.1:9/v1"});
    let made = keyed(&api, "/v1/projects/idem/connections", &connection, "conn-1");
    assert_eq!(made.status, 201, "{}", made.text);
    let replay = keyed(&api, "/v1/projects/idem/connections", &connection, "conn-1");
    assert_eq!((replay.status, replay.header("idempotent-replayed").as_deref()), (201, Some("true")), "{}", replay.text);
    // A keyed request's own errors keep the request's id (it is served in a task of its own).
    let other = json!({"name": "up", "type": "openai", "target": "http://127.0.0.1:8/v1"});
    let clash = keyed(&api, "/v1/projects/idem/connections", &json!({"name": "other", "type": "openai", "target": "http://127.0.0.1:8/v1"}), "conn-2");
    assert_eq!(clash.status, 201, "{}", clash.text);
    let exists = keyed(&api, "/v1/projects/idem/connections", &other, "conn-3");
    assert_eq!(exists.status, 409, "{}", exists.text);
    assert!(exists.json()["error"]["request_id"].as_str().is_some_and(|id| id.starts_with("req_")), "{}", exists.text);

    // A key that is no key: 400, nothing written.
    let before = lsn(&api, "idem");
    let bad = keyed(&api, &oa("idem", "/conversations"), &json!({}), &"k".repeat(300));
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(lsn(&api, "idem"), before);
}

#[test]
fn a_retry_at_the_new_primary_after_a_failover_writes_nothing() {
    let (a, b, _da, _db) = pair();
    let (api_a, api_b) = (a.admin(), b.admin());
    api_a.create_project("moving");
    let conv = api_a.post(&oa("moving", "/conversations"), &json!({})).ok(200)["id"].as_str().unwrap().to_owned();
    api_a.post("/v1/projects/moving/replicas", &json!({"region": "b", "mode": "hot"})).ok(200);
    let items = oa("moving", &format!("/conversations/{conv}/items"));
    let body = json!({"items": [{"role": "user", "content": "sent before the failover"}]});
    let first = keyed(&api_a, &items, &body, "before-failover");
    assert_eq!(first.status, 200, "{}", first.text);
    wait_applied(&api_b, "moving", status(&api_a, "moving")["lsn"].as_u64().unwrap());
    api_a.post("/v1/projects/moving/failover", &json!({"to": "b"})).ok(200);

    // The client did not see the answer and retries at the other region: the record came with
    // the journal, so the new primary answers as the old one did.
    let retry = keyed(&api_b, &items, &body, "before-failover");
    assert_eq!((retry.status, retry.json()), (200, first.json()), "{}", retry.text);
    assert_eq!(retry.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(api_b.get(&items).ok(200)["data"].as_array().unwrap().len(), 1);
}

#[test]
fn the_openapi_document_describes_the_header_and_its_statuses_on_keyed_writes() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let doc = server.api(None).get("/openapi.json").ok(200);
    let post = &doc["paths"]["/api/projects/{project}/openai/v1/conversations"]["post"];
    assert!(post["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"), "{post:#}");
    assert!(post["responses"].get("422").is_some() && post["responses"].get("409").is_some(), "{post:#}");
    // Reads and streamed uploads are not keyed.
    let get = &doc["paths"]["/api/projects/{project}/openai/v1/conversations"]["get"];
    assert!(get["parameters"].as_array().unwrap().iter().all(|p| p["name"] != "Idempotency-Key"), "{get:#}");
    let upload = &doc["paths"]["/api/projects/{project}/openai/v1/files"]["post"];
    assert!(upload["parameters"].as_array().unwrap().iter().all(|p| p["name"] != "Idempotency-Key"), "{upload:#}");
}
