//! Export/import with the real binary across two servers (two data directories): a project with
//! a 150-item conversation, an agent with two versions, a connection with a secret, a file in a
//! vector store is exported from server A and imported into a new project on server B; ids,
//! bodies and times survive, the secret does not, re-importing writes nothing, and a newer or
//! corrupt file is refused with nothing written.

mod common;

use std::path::Path;

use common::{ADMIN_KEY, Cli, Server};
use reqwest::Method;
use serde_json::{Value, json};

fn two_xx(resp: &common::Resp, what: &str) -> Value {
    assert!((200..300).contains(&resp.status), "{what}: HTTP {} {}", resp.status, resp.text);
    resp.json()
}

fn oa(project: &str, rest: &str) -> String {
    format!("/api/projects/{project}/openai/v1{rest}")
}

const BOUNDARY: &str = "holdfast-export-test-boundary";

fn multipart(filename: &str, bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n").bytes());
    body.extend(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: text/plain\r\n\r\n"
        )
        .bytes(),
    );
    body.extend(bytes);
    body.extend(format!("\r\n--{BOUNDARY}--\r\n").bytes());
    body
}

/// Populates `project` on a server; returns (conversation id, file id, vector store id).
fn populate(api: &common::Api, project: &str) -> (String, String, String) {
    api.create_project(project);
    two_xx(
        &api.post(
            &format!("/v1/projects/{project}/connections"),
            &json!({"name": "up", "type": "openai", "target": "http://127.0.0.1:9/v1", "api_key": "sk-very-secret-0123456789"}),
        ),
        "connection",
    );
    two_xx(
        &api.post(&format!("/v1/projects/{project}/deployments"), &json!({"name": "dep1", "connection": "up", "model": "gpt-x"})),
        "deployment",
    );
    for n in 1..=2 {
        two_xx(
            &api.post(
                &format!("/api/projects/{project}/agents/helper/versions"),
                &json!({"definition": {"kind": "prompt", "model": "dep1", "instructions": format!("version {n}")}}),
            ),
            "agent version",
        );
    }
    let items: Vec<Value> =
        (0..150).map(|i| json!({"type": "message", "role": "user", "content": format!("message number {i}")})).collect();
    let conv = two_xx(&api.post(&oa(project, "/conversations"), &json!({"metadata": {"topic": "export"}, "items": items})), "conversation");
    let conv = conv["id"].as_str().expect("conversation id").to_owned();
    let file = api.send_raw(
        Method::POST,
        &oa(project, "/files"),
        Some(&format!("multipart/form-data; boundary={BOUNDARY}")),
        multipart("notes.txt", b"Holdfast keeps project state safe across regions."),
    );
    let file = two_xx(&file, "file")["id"].as_str().expect("file id").to_owned();
    let store = two_xx(&api.post(&oa(project, "/vector_stores"), &json!({"name": "kb", "file_ids": [file]})), "vector store");
    let store = store["id"].as_str().expect("store id").to_owned();
    (conv, file, store)
}

/// Every item of a conversation, oldest first.
fn all_items(api: &common::Api, project: &str, conv: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = oa(project, &format!("/conversations/{conv}/items?limit=100&order=asc"));
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page = two_xx(&api.get(&path), "items");
        out.extend(page["data"].as_array().expect("data").iter().cloned());
        if page["has_more"] != true {
            return out;
        }
        after = page["last_id"].as_str().map(str::to_owned);
    }
}

/// What the APIs show of the populated resources.
fn snapshot(api: &common::Api, project: &str, conv: &str, file: &str, store: &str) -> Value {
    let get = |path: &str| two_xx(&api.get(path), path);
    json!({
        "conversation": get(&oa(project, &format!("/conversations/{conv}"))),
        "items": all_items(api, project, conv),
        "agent": get(&format!("/api/projects/{project}/agents/helper")),
        "versions": get(&format!("/api/projects/{project}/agents/helper/versions?order=asc")),
        "deployment": get(&format!("/api/projects/{project}/deployments/dep1")),
        "file": get(&oa(project, &format!("/files/{file}"))),
        "content": api.get(&oa(project, &format!("/files/{file}/content"))).text,
        "store": get(&oa(project, &format!("/vector_stores/{store}"))),
        "store_files": get(&oa(project, &format!("/vector_stores/{store}/files"))),
    })
}

fn cli_run(cli: &Cli, server: &Server, args: &[&str]) -> common::Out {
    let mut all = vec!["--endpoint", server.base.as_str(), "--key", ADMIN_KEY, "-o", "json"];
    all.extend_from_slice(args);
    cli.run(&all)
}

fn lsn(api: &common::Api, project: &str) -> u64 {
    two_xx(&api.get(&format!("/v1/projects/{project}")), "project")["lsn"].as_u64().expect("lsn")
}

fn import(cli: &Cli, server: &Server, file: &Path, project: &str, mode: &str) -> common::Out {
    cli_run(cli, server, &["import", "--in", file.to_str().expect("path"), "--project", project, "--on-conflict", mode])
}

#[test]
fn export_import_round_trip_across_servers() {
    let (dir_a, dir_b, work) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"), tempfile::tempdir().expect("w"));
    let a = Server::start(dir_a.path());
    // B's body limit is far below the file's size: import bodies are limited by the service
    // (limits.max_import_bytes, 1 GiB by default), not by the global limit.
    let b = Server::start_with(dir_b.path(), common::Opts::default().arg("--max-body-bytes").arg("4096"));
    let (api_a, api_b) = (a.admin(), b.admin());
    let cli = Cli::new();
    let (conv, file, store) = populate(&api_a, "src");
    let source = snapshot(&api_a, "src", &conv, &file, &store);
    assert_eq!(source["items"].as_array().expect("items").len(), 150);
    assert_eq!(source["versions"]["data"].as_array().expect("versions").len(), 2);

    // Export from A.
    let out = work.path().join("src.holdfast.jsonl");
    let summary = cli_run(&cli, &a, &["export", "--project", "src", "--out", out.to_str().expect("path")]).json();
    assert_eq!(summary["kinds"]["item"], 150, "{summary}");
    assert_eq!(summary["kinds"]["agent_version"], 2);
    assert_eq!(summary["kinds"]["vector_store_file"], 1);
    assert_eq!(summary["blobs"], 1);
    let text = std::fs::read_to_string(&out).expect("read export");
    assert!(text.len() > 4096);
    assert!(text.starts_with(r#"{"format":"holdfast-export","version":1,"#), "{}", &text[..100]);
    assert!(!text.contains("ciphertext") && !text.contains("sk-very-secret"), "secrets never leave");

    // Import into a new project on B, in a later second, so kept creation times are visible.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let imported = import(&cli, &b, &out, "dst", "skip").json();
    assert_eq!(imported["created_project"], true, "{imported}");
    assert_eq!(imported["kinds"]["item"]["imported"], 150);
    assert_eq!(imported["secrets_removed"], json!(["up"]));
    let copy = snapshot(&api_b, "dst", &conv, &file, &store);
    assert_eq!(copy, source, "ids, bodies and created_at survive");
    let connection = two_xx(&api_b.get("/api/projects/dst/connections/up"), "connection");
    assert_eq!(connection["target"], "http://127.0.0.1:9/v1");
    let search = two_xx(&api_b.post(&oa("dst", &format!("/vector_stores/{store}/search")), &json!({"query": "regions"})), "search");
    assert!(!search["data"].as_array().expect("results").is_empty(), "the imported store is searchable: {search}");

    // Idempotent: the same file again writes nothing, in every mode.
    let before = lsn(&api_b, "dst");
    for mode in ["skip", "overwrite", "fail"] {
        let again = import(&cli, &b, &out, "dst", mode).json();
        assert_eq!(again["changes"], 0, "{mode}: {again}");
        assert_eq!(lsn(&api_b, "dst"), before, "{mode} re-import journals nothing");
    }

    // A conflicting change on B: fail refuses (409, exit 4) and writes nothing; skip keeps it;
    // overwrite restores the file's version.
    two_xx(&api_b.post(&oa("dst", &format!("/conversations/{conv}")), &json!({"metadata": {"topic": "changed"}})), "update");
    let before = lsn(&api_b, "dst");
    let refused = import(&cli, &b, &out, "dst", "fail");
    refused.code(4);
    assert!(refused.stderr.contains("nothing was imported"), "{}", refused.stderr);
    assert_eq!(lsn(&api_b, "dst"), before);
    let skipped = import(&cli, &b, &out, "dst", "skip").json();
    assert_eq!((skipped["changes"].clone(), skipped["kinds"]["conversation"]["skipped"].clone()), (json!(0), json!(1)));
    let overwritten = import(&cli, &b, &out, "dst", "overwrite").json();
    assert_eq!(overwritten["changes"], 1, "{overwritten}");
    assert_eq!(snapshot(&api_b, "dst", &conv, &file, &store), source);

    // A newer format version is refused with a clear message, and nothing is written (not
    // even the project).
    let newer = work.path().join("newer.jsonl");
    std::fs::write(&newer, text.replacen(r#""version":1,"#, r#""version":2,"#, 1)).expect("write");
    let refused = import(&cli, &b, &newer, "fresh", "skip");
    refused.code(1);
    assert!(refused.stderr.contains("newer"), "{}", refused.stderr);
    assert_eq!(api_b.get("/v1/projects/fresh").status, 404);

    // Corrupt (a changed byte) and truncated files: refused, nothing written.
    let corrupt = work.path().join("corrupt.jsonl");
    std::fs::write(&corrupt, text.replacen("message number 77", "message number 78", 1)).expect("write");
    let truncated = work.path().join("truncated.jsonl");
    std::fs::write(&truncated, &text.as_bytes()[..text.len() - 40]).expect("write");
    for (bad, why) in [(&corrupt, "checksum"), (&truncated, "truncated")] {
        let refused = import(&cli, &b, bad, "fresh", "skip");
        refused.code(1);
        assert!(refused.stderr.contains(why), "{why}: {}", refused.stderr);
        assert_eq!(api_b.get("/v1/projects/fresh").status, 404);
        let refused = import(&cli, &b, bad, "dst", "overwrite");
        refused.code(1);
        assert_eq!(lsn(&api_b, "dst"), before + 1);
    }

    // A selection: only conversations and their items.
    let partial = work.path().join("partial.jsonl");
    let summary = cli_run(&cli, &a, &["export", "--project", "src", "--out", partial.to_str().expect("path"), "--include", "conversation,item"]).json();
    assert_eq!(summary["kinds"], json!({"conversation": 1, "item": 150}));
    assert_eq!(summary["blobs"], 0);
}
