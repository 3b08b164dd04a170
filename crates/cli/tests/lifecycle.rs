//! The server process's life: restarts, signals, the data-directory lock, configuration
//! layering, and durability of acknowledged writes across SIGKILL.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{ADMIN_KEY, Api, Opts, Server, spawn_serve, wait_exit};
use reqwest::Method;
use serde_json::{Value, json};

/// Everything a client can observe about the server's state.
fn snapshot(api: &Api) -> (Vec<Value>, BTreeMap<String, Vec<Value>>, Value) {
    let projects = api.all_projects(2);
    let journals = projects
        .iter()
        .map(|p| {
            let name = p["name"].as_str().unwrap().to_owned();
            let journal = api.journal(&name);
            (name, journal)
        })
        .collect();
    let keys = api.get("/v1/keys").ok(200);
    (projects, journals, keys)
}

#[test]
fn state_and_journals_survive_a_graceful_restart() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let api = server.admin();
    api.post("/v1/projects", &json!({ "name": "one", "display_name": "One", "tags": { "x": "1" } })).ok(201);
    api.create_project("two");
    api.create_project("three");
    api.create_project("four");
    api.patch("/v1/projects/one", &json!({ "description": "updated", "tags": { "x": null, "y": "2" } })).ok(200);
    api.patch("/v1/projects/two", &json!({ "display_name": "Two!" })).ok(200);
    api.patch("/v1/projects/two", &json!({ "tags": { "z": "3" } })).ok(200);
    assert_eq!(api.delete("/v1/projects/three").status, 204);
    api.create_key("survivor", "reader");
    let before = snapshot(&api);
    assert_eq!(before.0.len(), 3);
    assert_eq!(before.1["two"].len(), 3);

    let status = server.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");

    let server = Server::start(data.path());
    let api = server.admin();
    let after = snapshot(&api);
    assert_eq!(after.0, before.0, "projects differ after restart");
    assert_eq!(after.1, before.1, "journals differ after restart");
    assert_eq!(after.2, before.2, "keys differ after restart");
    api.get("/v1/projects/three").err(404, "not_found");
    // The journal continues densely after the restart.
    let p = api.patch("/v1/projects/one", &json!({ "description": "after restart" })).ok(200);
    assert_eq!(p["lsn"], 3);
    let journal = api.journal("one");
    assert_eq!(journal.iter().map(|c| c["lsn"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(&journal[..2], &before.1["one"][..]);
    assert!(
        journal[2]["ts"].as_i64().unwrap() >= journal[1]["ts"].as_i64().unwrap(),
        "ts never decreases across a restart"
    );
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let first = Server::start(data.path());
    first.admin().create_project("owned");

    let logs = tempfile::tempdir().unwrap();
    let (mut second, _out, err) = spawn_serve(data.path(), &Opts::default(), common::free_port(), logs.path());
    let status = wait_exit(&mut second, Duration::from_secs(20), "second holdfast serve");
    let stderr = std::fs::read_to_string(err).unwrap();
    assert_eq!(status.code(), Some(4), "exit code of the second server; stderr:\n{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(stderr.contains(&first.pid().to_string()), "names the holder's pid: {stderr}");

    // The first keeps serving, reads and writes.
    let api = first.admin();
    api.get("/healthz").ok_status(200);
    api.patch("/v1/projects/owned", &json!({ "description": "still mine" })).ok(200);
    assert_eq!(api.journal("owned").len(), 2);
    assert_eq!(first.stop().code(), Some(0));

    // Once it has stopped, the directory can be served again.
    let third = Server::start(data.path());
    assert_eq!(third.admin().get("/v1/projects/owned").ok(200)["description"], "still mine");
}

trait OkStatus {
    fn ok_status(&self, status: u16);
}

impl OkStatus for common::Resp {
    fn ok_status(&self, status: u16) {
        assert_eq!(self.status, status, "{}", self.text);
    }
}

#[test]
fn sigint_exits_zero_and_keeps_writes() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    server.admin().create_project("interrupted");
    let status = server.stop_with("INT");
    assert_eq!(status.code(), Some(0), "SIGINT exits 0");
    let server = Server::start(data.path());
    server.admin().get("/v1/projects/interrupted").ok(200);
}

#[test]
fn sigterm_ends_an_in_flight_long_poll_and_exits_zero() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let api = server.admin();
    api.create_project("waiting");
    let url = format!("{}/v1/projects/waiting/journal?after=1&wait_ms=30000", server.base);
    let poll = std::thread::spawn(move || {
        let r = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(40))
            .build()
            .unwrap()
            .get(url)
            .bearer_auth(ADMIN_KEY)
            .send();
        r.map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
    });
    std::thread::sleep(Duration::from_millis(800)); // let the poll reach the server
    // The harness gives the server 20 s to exit, less than the poll's 30 s wait: the poll must
    // be ended by the shutdown, not by its own timeout.
    assert_eq!(server.stop().code(), Some(0));
    let (status, body) = poll.join().unwrap().expect("the poll was answered before the server stopped");
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["changes"], json!([]));
}

#[test]
fn config_file_then_env_then_flags() {
    let data = tempfile::tempdir().unwrap();
    let config = "region = \"file-region\"\nlisten = \"127.0.0.1:{port}\"\n\n[limits]\nmax_body_bytes = 1024\n\n[log]\nlevel = \"info\"\n".to_owned();

    // The file alone: its region, its listen address (no --listen is passed), its body limit.
    let server = Server::start_with(data.path(), Opts { config: Some(config.clone()), ..Opts::default() });
    let api = server.admin();
    assert_eq!(api.get("/v1/info").ok(200)["region"], "file-region");
    api.post("/v1/projects", &json!({ "name": "limited", "description": "x".repeat(1100) }))
        .err(413, "payload_too_large");
    assert_eq!(server.stop().code(), Some(0));

    // The environment overrides the file.
    let opts = Opts { config: Some(config.clone()), ..Opts::default() }.env("HOLDFAST_REGION", "env-region");
    let server = Server::start_with(data.path(), opts.clone());
    assert_eq!(server.admin().get("/v1/info").ok(200)["region"], "env-region");
    assert_eq!(server.stop().code(), Some(0));

    // A flag overrides the environment.
    let server = Server::start_with(data.path(), opts.arg("--region").arg("flag-region"));
    assert_eq!(server.admin().get("/v1/info").ok(200)["region"], "flag-region");
    assert_eq!(server.stop().code(), Some(0));

    // HOLDFAST_CONFIG names the file as --config does; here it sets the region alone.
    let file = data.path().join("by-env.toml");
    std::fs::write(&file, "region = \"env-file-region\"\n").unwrap();
    let server = Server::start_with(data.path(), Opts::default().env("HOLDFAST_CONFIG", file.to_str().unwrap()));
    assert_eq!(server.admin().get("/v1/info").ok(200)["region"], "env-file-region");
    assert_eq!(server.stop().code(), Some(0));
}

/// Runs `serve` with a config file that must be refused; returns stderr.
fn refused_config(text: &str) -> String {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let opts = Opts { config: Some(text.to_owned()), ..Opts::default() };
    let (mut child, out, err) = spawn_serve(data.path(), &opts, common::free_port(), logs.path());
    let status = wait_exit(&mut child, Duration::from_secs(20), "serve with a bad config");
    let stderr = std::fs::read_to_string(err).unwrap();
    assert!(
        !status.success(),
        "a bad config was accepted ({status}); stdout:\n{}",
        std::fs::read_to_string(out).unwrap()
    );
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn invalid_config_files_fail_with_a_clear_message() {
    let stderr = refused_config("listen = \"127.0.0.1:{port}\"\nregoin = \"typo\"\n");
    assert!(stderr.contains("invalid config file"), "{stderr}");
    assert!(stderr.contains("regoin"), "names the unknown field: {stderr}");
    let stderr = refused_config("listen = \"127.0.0.1:{port}\"\n[limits]\nmax_body = 5\n");
    assert!(stderr.contains("max_body"), "{stderr}");
    let stderr = refused_config("listen = \"127.0.0.1:{port}\"\nregion = \"Not A Region\"\n");
    assert!(stderr.contains("invalid region"), "{stderr}");
    let stderr = refused_config("listen = \"nowhere\"\n");
    assert!(stderr.contains("invalid listen address"), "{stderr}");
    let stderr = refused_config("listen = [\n");
    assert!(stderr.contains("invalid config file"), "{stderr}");

    // A config file that does not exist.
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let missing = data.path().join("missing.toml");
    let opts = Opts::default().arg("--config").arg(missing.to_str().unwrap());
    let (mut child, _out, err) = spawn_serve(data.path(), &opts, common::free_port(), logs.path());
    let status = wait_exit(&mut child, Duration::from_secs(20), "serve with a missing config");
    assert!(!status.success());
    let stderr = std::fs::read_to_string(err).unwrap();
    assert!(stderr.contains("cannot read config file"), "{stderr}");
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    const WRITERS: usize = 4;
    const EACH: usize = 10;
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let api = server.admin();
    api.create_project("durable");
    api.create_project("bystander");

    // Concurrent writers, so commits are batched; each update is acknowledged before the kill.
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let api = api.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..EACH {
                    let rid = format!("w{w}-u{i}");
                    let r = api.send(
                        Method::PATCH,
                        "/v1/projects/durable",
                        Some(&json!({ "tags": { format!("w{w}"): i.to_string() } })),
                        &[("x-request-id", rid.as_str())],
                    );
                    assert_eq!(r.status, 200, "{}", r.text);
                    acked.push(rid);
                }
                acked
            })
        })
        .collect();
    let mut acked: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let state_before = api.get("/v1/projects/durable").ok(200);
    let journal_before = api.journal("durable");
    let status = server.kill9();
    assert_eq!(status.code(), None, "killed by a signal");

    let server = Server::start(data.path());
    let api = server.admin();
    let journal = api.journal("durable");
    assert_eq!(journal.len(), 1 + WRITERS * EACH, "every acknowledged write is in the journal");
    for (i, change) in journal.iter().enumerate() {
        assert_eq!(change["lsn"].as_u64(), Some(i as u64 + 1), "dense after a crash");
    }
    let mut journaled: Vec<String> =
        journal[1..].iter().map(|c| c["request_id"].as_str().unwrap().to_owned()).collect();
    acked.sort();
    journaled.sort();
    assert_eq!(journaled, acked, "the journal holds exactly the acknowledged writes");
    assert_eq!(journal, journal_before);
    let state = api.get("/v1/projects/durable").ok(200);
    assert_eq!(state, state_before);
    let expected: BTreeMap<String, String> = (0..WRITERS).map(|w| (format!("w{w}"), (EACH - 1).to_string())).collect();
    assert_eq!(state["tags"], json!(expected));
    assert_eq!(state["lsn"].as_u64(), Some((1 + WRITERS * EACH) as u64));
    api.get("/v1/projects/bystander").ok(200);
    // And it takes writes again.
    assert_eq!(
        api.patch("/v1/projects/durable", &json!({ "description": "alive" })).ok(200)["lsn"].as_u64(),
        Some((2 + WRITERS * EACH) as u64)
    );
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn a_create_acknowledged_just_before_sigkill_survives() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let api = server.admin();
    let names: Vec<String> = (0..8).map(|i| format!("crash-{i}")).collect();
    for name in &names {
        api.create_project(name);
    }
    assert_eq!(api.delete("/v1/projects/crash-3").status, 204);
    let before = api.all_projects(100);
    server.kill9();
    let server = Server::start(data.path());
    assert_eq!(server.admin().all_projects(100), before);
    server.admin().get("/v1/projects/crash-3").err(404, "not_found");
    // Soft-deleted across the kill: the name is held until the purge frees it.
    server.admin().post("/v1/projects", &json!({ "name": "crash-3" })).err(409, "conflict");
    server.admin().delete("/v1/deleted-projects/crash-3").ok(204);
    server.admin().create_project("crash-3");
}
