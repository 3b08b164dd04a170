//! Durable background responses with the real binary: one whose server is killed with SIGKILL
//! mid-run is picked up again after the restart, under its own id, and completes once. The
//! model is a test double on loopback speaking real HTTP. Every wait is bounded.

mod common;

use std::time::Duration;

use common::cluster::{oa, response_when_done, scripted_model};
use common::Server;
use serde_json::json;

#[test]
fn a_background_response_cut_off_by_kill_9_completes_after_the_restart_once() {
    let data = tempfile::tempdir().expect("data");
    // The first two calls never answer (the model is thinking when the server dies); later ones do.
    let model = scripted_model(|n| (n > 1).then(|| vec!["the ", "answer"]), Duration::ZERO);
    let server = Server::start(data.path());
    let api = server.admin();
    api.create_project("bgr");
    let target = format!("http://127.0.0.1:{model}/v1");
    api.post("/v1/projects/bgr/connections", &json!({"name": "up", "type": "openai", "target": target, "api_key": "sk-fake-0123456789"})).ok(201);
    api.post("/v1/projects/bgr/deployments", &json!({"name": "dep", "connection": "up", "model": "fake"})).ok(201);
    let conv = api.post(&oa("bgr", "/conversations"), &json!({})).ok(200)["id"].as_str().expect("id").to_owned();
    let started = api
        .post(&oa("bgr", "/responses"), &json!({"model": "dep", "input": "think", "background": true, "conversation": conv}))
        .ok(200);
    let id = started["id"].as_str().expect("id").to_owned();
    assert_eq!(started["status"], "in_progress");
    // Another, whose deployment is gone by the restart: it cannot run again, so it fails.
    api.post("/v1/projects/bgr/deployments", &json!({"name": "doomed", "connection": "up", "model": "fake"})).ok(201);
    let orphan = api.post(&oa("bgr", "/responses"), &json!({"model": "doomed", "input": "think", "background": true})).ok(200);
    let orphan = orphan["id"].as_str().expect("id").to_owned();
    api.delete("/v1/projects/bgr/deployments/doomed");
    assert_eq!(server.kill9().code(), None, "killed by a signal");

    let server = Server::start(data.path());
    let api = server.admin();
    let done = response_when_done(&api, "bgr", &id);
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["output"][0]["content"][0]["text"], "the answer", "{done:#}");
    assert_eq!(done["created_at"], started["created_at"], "the same response");
    assert!(!done["holdfast"]["resumed"].is_null(), "{done:#}");
    // Once: the conversation holds its input and one answer.
    let items = api.get(&oa("bgr", &format!("/conversations/{conv}/items?order=asc"))).ok(200);
    let roles: Vec<&str> = items["data"].as_array().expect("items").iter().filter_map(|i| i["role"].as_str()).collect();
    assert_eq!(roles, ["user", "assistant"], "{items:#}");
    let failed = response_when_done(&api, "bgr", &orphan);
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert!(failed["error"]["message"].as_str().unwrap_or_default().contains("could not be run again"), "{failed:#}");
}
