//! `holdfast history` and `holdfast undelete` with the real binary: a conversation with 1,000
//! items is deleted through the OpenAI route and brought back, with the same ids, order and
//! times; its history lists the create, the appends, the delete and the undelete; an undelete of
//! a resource that exists is refused (exit 4) with nothing written.

mod common;

use common::{ADMIN_KEY, Cli, Server};
use serde_json::{Value, json};

fn oa(project: &str, rest: &str) -> String {
    format!("/api/projects/{project}/openai/v1{rest}")
}

fn cli_run(cli: &Cli, server: &Server, args: &[&str]) -> common::Out {
    let mut all = vec!["--endpoint", server.base.as_str(), "--key", ADMIN_KEY, "-o", "json"];
    all.extend_from_slice(args);
    cli.run(&all)
}

/// Every item of a conversation, oldest first, following pages.
fn all_items(api: &common::Api, project: &str, conv: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let mut path = oa(project, &format!("/conversations/{conv}/items?order=asc&limit=100"));
        if let Some(last) = all.last() {
            path.push_str(&format!("&after={}", last["id"].as_str().expect("id")));
        }
        let page = api.get(&path).ok(200);
        all.extend(page["data"].as_array().expect("data").iter().cloned());
        if !page["has_more"].as_bool().expect("has_more") {
            return all;
        }
    }
}

fn lsn(api: &common::Api, project: &str) -> u64 {
    api.get(&format!("/v1/projects/{project}")).ok(200)["lsn"].as_u64().expect("lsn")
}

#[test]
fn undelete_a_conversation_with_1000_items() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path());
    let api = server.admin();
    let cli = Cli::new();
    api.create_project("proj");
    let conv = api.post(&oa("proj", "/conversations"), &json!({"metadata": {"topic": "undelete"}})).ok(200);
    let id = conv["id"].as_str().expect("id").to_owned();
    for batch in 0..2 {
        let items: Vec<Value> =
            (0..500).map(|i| json!({"type": "message", "role": "user", "content": format!("m{batch}-{i}")})).collect();
        api.post(&oa("proj", &format!("/conversations/{id}/items")), &json!({"items": items})).ok(200);
    }
    let before = all_items(&api, "proj", &id);
    assert_eq!(before.len(), 1000);
    let gone = api.delete(&oa("proj", &format!("/conversations/{id}")));
    assert_eq!(gone.status, 200, "{}", gone.text);
    let deleted_lsn = lsn(&api, "proj");
    assert_eq!(api.get(&oa("proj", &format!("/conversations/{id}"))).status, 404);

    let history = cli_run(&cli, &server, &["history", "--project", "proj", "--id", &id]).json();
    let ops: Vec<&str> = history["entries"].as_array().expect("entries").iter().map(|e| e["operation"].as_str().expect("op")).collect();
    assert_eq!(ops, vec!["create", "children", "children", "delete"]);
    assert_eq!(history["entries"][3]["lsn"], json!(deleted_lsn));
    assert!(history["entries"][0]["time"].as_str().expect("time").ends_with('Z'));

    let summary = cli_run(&cli, &server, &["undelete", "--project", "proj", "--id", &id]).json();
    assert_eq!(summary["resources"], json!(1001));
    assert_eq!(summary["deleted_lsn"], json!(deleted_lsn));
    assert_eq!(api.get(&oa("proj", &format!("/conversations/{id}"))).ok(200), conv);
    assert_eq!(all_items(&api, "proj", &id), before, "same ids, order and bodies");

    // Exists now: refused, nothing written.
    let now = lsn(&api, "proj");
    cli_run(&cli, &server, &["undelete", "--project", "proj", "--id", &id]).code(4);
    // Outside the journal: a usage error naming the window.
    let out = cli_run(&cli, &server, &["undelete", "--project", "proj", "--id", &id, "--lsn", "999999"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("covers LSN 1 to"), "{}", out.stderr);
    assert_eq!(lsn(&api, "proj"), now);

    // The HTTP route takes an empty body too, and is admin only.
    let reader = api.create_key("rdr", "reader");
    let as_reader = api.with_key(reader["key"].as_str());
    as_reader.get(&format!("/v1/projects/proj/resources/{id}/history")).err(403, "forbidden");
    server.stop();
}
