//! A project's connection secrets open in every region it lives in, each region with its own
//! generated master key and no key configuration shared between them: after a planned and then a
//! forced failover, a response that uses the connection succeeds at the new primary, and the
//! connection's key reads back the same.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::cluster::{oa, pair_with, scripted_model, status, wait_applied};
use serde_json::{Value, json};

const KEY: &str = "sk-fake-0123456789";

fn respond(api: &common::Api, project: &str) -> Value {
    let made = api.post(&oa(project, "/responses"), &json!({"model": "dep1", "input": "hi"}));
    assert_eq!(made.status, 200, "{}", made.text);
    let body = made.json();
    assert_eq!(body["status"], "completed", "{body:#}");
    body
}

fn credentials(api: &common::Api, project: &str) -> Value {
    api.post(&format!("/api/projects/{project}/connections/up/getConnectionWithCredentials"), &json!({})).ok(200)
}

#[test]
fn secrets_open_at_the_new_primary_after_planned_and_forced_failovers_with_per_region_master_keys() {
    // An empty HOLDFAST_MASTER_KEY: each region generates its own master.key.
    let (a, b, da, db) = pair_with(&|o| o.env("HOLDFAST_MASTER_KEY", ""));
    let read_key = |dir: &std::path::Path| std::fs::read_to_string(dir.join("master.key")).unwrap();
    assert_ne!(read_key(da.path()), read_key(db.path()), "each region has its own master key");
    let (api_a, api_b) = (a.admin(), b.admin());
    api_a.create_project("sec");
    let model = scripted_model(|_| Some(vec!["Hello ", "there"]), Duration::from_millis(10));
    let connection = json!({"name": "up", "type": "openai", "target": format!("http://127.0.0.1:{model}/v1"), "api_key": KEY});
    api_a.post("/v1/projects/sec/connections", &connection).ok(201);
    api_a.post("/v1/projects/sec/deployments", &json!({"name": "dep1", "connection": "up", "model": "fake"})).ok(201);
    respond(&api_a, "sec");
    // Another project is replicated before it has any secret; its first one is made later, by
    // whichever region leads then.
    api_a.create_project("late");
    api_a.post("/v1/projects/late/replicas", &json!({"region": "b", "mode": "hot"})).ok(200);

    // Replicated: the data key is wrapped for b's region key, so b's copy opens the secret too.
    api_a.post("/v1/projects/sec/replicas", &json!({"region": "b", "mode": "hot"})).ok(200);
    wait_applied(&api_b, "sec", status(&api_a, "sec")["lsn"].as_u64().unwrap());
    assert_eq!(credentials(&api_b, "sec")["credentials"]["key"], KEY, "the hot replica opens the secret");
    // A secret made after the replica exists is wrapped for it as well.
    let second = json!({"name": "up2", "type": "openai", "target": format!("http://127.0.0.1:{model}/v1"), "api_key": "sk-second-987654321"});
    api_a.post("/v1/projects/sec/connections", &second).ok(201);

    // Planned failover to b: b, with its own master key, serves responses with the connection.
    api_a.post("/v1/projects/sec/failover", &json!({"to": "b"})).ok(200);
    assert_eq!(status(&api_b, "sec")["role"], "primary");
    respond(&api_b, "sec");
    let second_at_b = api_b.post("/api/projects/sec/connections/up2/getConnectionWithCredentials", &json!({})).ok(200);
    assert_eq!(second_at_b["credentials"]["key"], "sk-second-987654321");
    // b seals a new secret under the same data key; a (a replica now) opens it.
    let third = json!({"name": "up3", "type": "openai", "target": format!("http://127.0.0.1:{model}/v1"), "api_key": "sk-third-555555555"});
    api_b.post("/v1/projects/sec/connections", &third).ok(201);
    wait_applied(&api_a, "sec", status(&api_b, "sec")["lsn"].as_u64().unwrap());

    // The late project fails over to b before its first secret; b's secret opens at a, the
    // old primary and now a hot replica.
    api_a.post("/v1/projects/late/failover", &json!({"to": "b"})).ok(200);
    let late = json!({"name": "up", "type": "openai", "target": format!("http://127.0.0.1:{model}/v1"), "api_key": "sk-late-000000000"});
    api_b.post("/v1/projects/late/connections", &late).ok(201);
    wait_applied(&api_a, "late", status(&api_b, "late")["lsn"].as_u64().unwrap());
    assert_eq!(credentials(&api_a, "late")["credentials"]["key"], "sk-late-000000000", "the old primary was wrapped for too");

    // b is lost; a forced failover to a: a serves responses with every secret.
    assert!(!b.kill9().success());
    let report = api_a.post("/v1/projects/sec/failover", &json!({"to": "a", "force": true})).ok(200);
    assert_eq!(report["forced"], true, "{report:#}");
    respond(&api_a, "sec");
    assert_eq!(credentials(&api_a, "sec")["credentials"]["key"], KEY);
    let third_at_a = api_a.post("/api/projects/sec/connections/up3/getConnectionWithCredentials", &json!({})).ok(200);
    assert_eq!(third_at_a["credentials"]["key"], "sk-third-555555555");

    // The record holds only wraps and public keys: neither master key nor any secret in clear.
    let journal = api_a.get("/v1/projects/sec/journal?limit=1000").ok(200).to_string();
    for secret in [KEY, "sk-second-987654321", "sk-third-555555555"] {
        assert!(!journal.contains(secret), "a secret in clear in the journal");
    }
    for dir in [da.path(), db.path()] {
        assert!(!journal.contains(read_key(dir).trim()), "a master key in the journal");
    }
    drop(a);
}
