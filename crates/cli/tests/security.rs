//! Security rules against the real binary (issue 13): who may choose where the server sends
//! requests and where it may send them, secrets bound to their project, locks on the project
//! record, a keyed audit chain, purge protection that only grows, and `/metrics` behind a key.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::cluster::oa;
use common::{Api, Opts, Server};
use serde_json::{Value, json};

/// A loopback HTTP server answering every request with `response` (a whole HTTP/1.1 response),
/// counting the requests it got. Runs until the test process ends.
fn canned(response: String) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let response = response.clone();
            std::thread::spawn(move || {
                let _ = common::cluster::read_request(&stream);
                let mut out = stream;
                let _ = out.write_all(response.as_bytes());
            });
        }
    });
    (port, hits)
}

fn http(status: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out
}

/// A key with `role` at `/projects/{project}` only.
fn scoped_key(admin: &Api, name: &str, role: &str, project: &str) -> String {
    let made = admin.post("/v1/keys", &json!({"name": name, "role": role, "scope": format!("/projects/{project}")})).ok(201);
    made["key"].as_str().expect("key").to_owned()
}

/// Runs a response through connection `conn` (a deployment `dep-{conn}` made for it) and
/// returns its error message.
fn response_error(admin: &Api, project: &str, conn: &str) -> String {
    let dep = format!("dep-{conn}");
    admin.post(&format!("/v1/projects/{project}/deployments"), &json!({"name": dep, "connection": conn, "model": "m"})).ok(201);
    let r = admin.post(&oa(project, "/responses"), &json!({"model": dep, "input": "hi"})).ok(200);
    assert_eq!(r["status"], "failed", "{r}");
    r["error"]["message"].as_str().expect("message").to_owned()
}

#[test]
fn connections_cannot_be_turned_against_the_server_or_its_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let admin = server.admin();
    admin.create_project("proj");

    // A data-plane user picks deployments; it does not choose where the server sends requests.
    let user = server.api(Some(&scoped_key(&admin, "app", "ai_user", "proj")));
    let target = format!("http://127.0.0.1:{}/admin/anything#", server.port);
    let e = user.post("/v1/projects/proj/connections", &json!({"name": "c", "target": target})).err(403, "forbidden");
    assert!(e.contains("projects/connections/write"), "{e}");

    // Refused targets, whoever asks, and nothing is journaled for them.
    let before = admin.journal("proj").len();
    let refused = [
        (format!("http://127.0.0.1:{}/v1#", server.port), "fragment"),
        (format!("http://127.0.0.1:{}/v1", server.port), "own listen address"),
        ("http://169.254.169.254/latest/meta-data".to_owned(), "link-local"),
        ("http://[fd00:ec2::254]/".to_owned(), "metadata"),
        ("http://user:pw@127.0.0.1:9/v1".to_owned(), "user name"),
        ("http://127.0.0.1:9/v1?api-version=1".to_owned(), "query"),
    ];
    for (target, why) in &refused {
        let e = admin.post("/v1/projects/proj/connections", &json!({"name": "c", "target": target})).err(400, "invalid_input");
        assert!(e.contains(why), "{target}: {e}");
    }
    assert_eq!(admin.journal("proj").len(), before, "a refused connection journals nothing");

    // A redirect is not followed: the server it points to is never called.
    let (elsewhere, elsewhere_hits) = canned(http("200 OK", &[("Content-Type", "application/json")], r#"{"secret":"metadata"}"#));
    let location = format!("http://127.0.0.1:{elsewhere}/latest/meta-data");
    let (redirector, _) = canned(http("303 See Other", &[("Location", &location)], ""));
    let target = format!("http://127.0.0.1:{redirector}/v1");
    admin.post("/v1/projects/proj/connections", &json!({"name": "redirect", "target": target})).ok(201);
    let message = response_error(&admin, "proj", "redirect");
    assert!(message.contains("HTTP 303"), "{message}");
    assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0, "the redirect was followed");

    // An upstream's page is never copied into the response; a model API's error message is.
    let page = "<html>internal admin console: db_password=hunter2</html>";
    let (internal, _) = canned(http("500 Internal Server Error", &[("Content-Type", "text/html")], page));
    admin.post("/v1/projects/proj/connections", &json!({"name": "page", "target": format!("http://127.0.0.1:{internal}/v1")})).ok(201);
    let message = response_error(&admin, "proj", "page");
    assert!(message.contains("HTTP 500") && !message.contains("hunter2") && !message.contains("html"), "{message}");
    let ok_page = http("200 OK", &[("Content-Type", "text/html")], page);
    let (internal_ok, _) = canned(ok_page);
    admin.post("/v1/projects/proj/connections", &json!({"name": "okpage", "target": format!("http://127.0.0.1:{internal_ok}/v1")})).ok(201);
    let message = response_error(&admin, "proj", "okpage");
    assert!(!message.contains("hunter2") && message.contains("neither an event stream"), "{message}");
    let model_error = r#"{"error":{"message":"model overloaded, retry later","type":"server_error"}}"#;
    let (model, _) = canned(http("503 Service Unavailable", &[("Content-Type", "application/json")], model_error));
    admin.post("/v1/projects/proj/connections", &json!({"name": "model", "target": format!("http://127.0.0.1:{model}/v1")})).ok(201);
    let message = response_error(&admin, "proj", "model");
    assert!(message.contains("HTTP 503: model overloaded, retry later"), "{message}");
}

#[test]
fn the_operator_can_close_private_ranges_and_name_the_allowed_hosts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = "listen = \"127.0.0.1:{port}\"\n[upstream]\nallow_private = false\nallow_hosts = [\"*.openai.azure.com\", \"localhost\"]\n";
    let server = Server::start_with(dir.path(), Opts { config: Some(config.to_owned()), ..Opts::default() });
    let admin = server.admin();
    admin.create_project("proj");
    let e = admin
        .post("/v1/projects/proj/connections", &json!({"name": "c", "target": "https://api.example.com/v1"}))
        .err(400, "invalid_input");
    assert!(e.contains("allow_hosts"), "{e}");
    let e = admin
        .post("/v1/projects/proj/connections", &json!({"name": "c", "target": "http://127.0.0.1:11434/v1"}))
        .err(400, "invalid_input");
    assert!(e.contains("allow_hosts"), "{e}");
    admin.post("/v1/projects/proj/connections", &json!({"name": "az", "target": "https://east.openai.azure.com/openai/v1"})).ok(201);
    // `localhost` is an allowed name, but it resolves to loopback, which is closed: refused at
    // call time, after resolution, and the model is never called.
    let (model, hits) = canned(http("200 OK", &[], "{}"));
    admin.post("/v1/projects/proj/connections", &json!({"name": "local", "target": format!("http://localhost:{model}/v1")})).ok(201);
    let message = response_error(&admin, "proj", "local");
    assert!(message.contains("allow_private"), "{message}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

/// The `body` column of connection `conn:{name}` in the project database under `data`.
fn stored_connection(data: &std::path::Path, project_id: &str, name: &str) -> Value {
    let db = rusqlite::Connection::open(data.join("projects").join(project_id).join("state.db")).expect("open state.db");
    let body: String = db
        .query_row("SELECT body FROM resources WHERE kind = 'connection' AND id = ?1", [format!("conn:{name}")], |r| r.get(0))
        .expect("connection row");
    serde_json::from_str(&body).expect("json")
}

#[test]
fn a_sealed_secret_opens_only_in_its_own_project() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let admin = server.admin();
    let a = admin.create_project("alpha")["id"].as_str().expect("id").to_owned();
    let b = admin.create_project("bravo")["id"].as_str().expect("id").to_owned();
    for (p, key) in [("alpha", "sk-project-a-0123456789"), ("bravo", "sk-project-b-0123456789")] {
        let conn = json!({"name": "up", "target": "http://127.0.0.1:9/v1", "api_key": key});
        admin.post(&format!("/v1/projects/{p}/connections"), &conn).ok(201);
    }
    let credentials = |p: &str| admin.post(&format!("/api/projects/{p}/connections/up/getConnectionWithCredentials"), &json!({}));
    assert_eq!(credentials("alpha").ok(200)["credentials"]["key"], "sk-project-a-0123456789");
    server.stop();

    // Copy project a's ciphertext into project b's row, as a stolen state.db or archive segment
    // pasted into another project would.
    let sealed = stored_connection(dir.path(), &a, "up")["secret"].clone();
    assert_eq!(sealed["v"], 3, "sealed under the project's data key: {sealed}");
    let mut body = stored_connection(dir.path(), &b, "up");
    body["secret"] = sealed;
    let db = rusqlite::Connection::open(dir.path().join("projects").join(&b).join("state.db")).expect("open");
    db.execute("UPDATE resources SET body = ?1 WHERE kind = 'connection' AND id = 'conn:up'", [body.to_string()]).expect("update");
    drop(db);

    let server = Server::start(dir.path());
    let admin = server.admin();
    let credentials = |p: &str| admin.post(&format!("/api/projects/{p}/connections/up/getConnectionWithCredentials"), &json!({}));
    assert_eq!(credentials("alpha").ok(200)["credentials"]["key"], "sk-project-a-0123456789");
    let moved = credentials("bravo");
    assert_eq!(moved.status, 500, "{}", moved.text);
    assert!(moved.text.contains("another project or connection") && !moved.text.contains("sk-project-a"), "{}", moved.text);
}

#[test]
fn a_version_one_secret_is_sealed_again_under_the_data_key_when_the_project_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let admin = server.admin();
    let a = admin.create_project("alpha")["id"].as_str().expect("id").to_owned();
    let conn = json!({"name": "up", "target": "http://127.0.0.1:9/v1", "api_key": "sk-legacy-0123456789"});
    admin.post("/v1/projects/alpha/connections", &conn).ok(201);
    server.stop();
    // Made as a version-1 secret would be: the same ciphertext without the version (and so
    // without associated data) cannot be forged here, so the test seals one with the node's
    // master key the way version 1 did.
    let master = std::fs::read_to_string(dir.path().join("master.key")).expect("master key");
    let legacy = seal_v1(master.trim(), "sk-legacy-0123456789");
    let mut body = stored_connection(dir.path(), &a, "up");
    body["secret"] = legacy;
    let db = rusqlite::Connection::open(dir.path().join("projects").join(&a).join("state.db")).expect("open");
    db.execute("UPDATE resources SET body = ?1 WHERE kind = 'connection' AND id = 'conn:up'", [body.to_string()]).expect("update");
    drop(db);

    let server = Server::start(dir.path());
    let admin = server.admin();
    let got = admin.post("/api/projects/alpha/connections/up/getConnectionWithCredentials", &json!({})).ok(200);
    assert_eq!(got["credentials"]["key"], "sk-legacy-0123456789");
    let journal = admin.journal("alpha");
    let last = journal.last().expect("a change");
    assert!(last.to_string().contains("\"v\":3"), "the open sealed the secret again under the data key, journaled: {last}");
    server.stop();
    assert_eq!(stored_connection(dir.path(), &a, "up")["secret"]["v"], 3);
}

/// A secret sealed as version 1 did: AES-256-GCM under the master key (hex), no associated data.
fn seal_v1(master_hex: &str, plaintext: &str) -> Value {
    use aes_gcm::aead::{Aead, KeyInit};
    use base64::Engine;
    let key = hex::decode(master_hex).expect("hex key");
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key).expect("key");
    let nonce = [3u8; 12];
    let ciphertext = cipher.encrypt(&aes_gcm::Nonce::from(nonce), plaintext.as_bytes()).expect("encrypt");
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({"alg": "aes-256-gcm", "nonce": b64.encode(nonce), "ciphertext": b64.encode(ciphertext)})
}

#[test]
fn purge_protection_lets_the_retention_only_grow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let admin = server.admin();
    admin.post("/v1/projects", &json!({"name": "kept", "purge_protection": true, "soft_delete_retention_days": 30})).ok(201);
    let contributor = server.api(Some(&scoped_key(&admin, "dev", "contributor", "kept")));
    let before = admin.journal("kept").len();
    let e = contributor.patch("/v1/projects/kept", &json!({"soft_delete_retention_days": 7})).err(400, "invalid_input");
    assert!(e.contains("can only grow"), "{e}");
    assert_eq!(admin.journal("kept").len(), before, "a refused change journals nothing");
    let grown = contributor.patch("/v1/projects/kept", &json!({"soft_delete_retention_days": 90})).ok(200);
    assert_eq!(grown["soft_delete_retention_days"], 90);
    let e = contributor.patch("/v1/projects/kept", &json!({"soft_delete_retention_days": 30})).err(400, "invalid_input");
    assert!(e.contains("can only grow"), "{e}");
    // Without purge protection the retention may shrink, as before.
    admin.create_project("loose");
    admin.patch("/v1/projects/loose", &json!({"soft_delete_retention_days": 30})).ok(200);
    assert_eq!(admin.patch("/v1/projects/loose", &json!({"soft_delete_retention_days": 7})).ok(200)["soft_delete_retention_days"], 7);
}

#[test]
fn a_divergence_record_needs_what_the_journal_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let admin = server.admin();
    admin.create_project("proj");
    let reader = server.api(Some(&scoped_key(&admin, "viewer", "reader", "proj")));
    let e = reader.get("/v1/projects/proj/divergences/div_x").err(403, "forbidden");
    assert!(e.contains("projects/journal/read"), "{e}");
    let e = reader.get("/v1/projects/proj/journal").err(403, "forbidden");
    assert!(e.contains("projects/journal/read"), "{e}");
    // The list (no changes in it) stays a project read.
    assert_eq!(reader.get("/v1/projects/proj/divergences").status, 200);
    admin.get("/v1/projects/proj/divergences/div_x").err(404, "not_found");
}

/// The server's OS threads (each open project has a writer thread of its own).
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status.lines().find_map(|l| l.strip_prefix("Threads:")).expect("Threads line").trim().parse().expect("number")
}

#[test]
fn idle_projects_are_closed_and_open_again_on_their_next_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = "listen = \"127.0.0.1:{port}\"\n[limits]\nidle_close_secs = 1\n";
    let server = Server::start_with(dir.path(), Opts { config: Some(config.to_owned()), ..Opts::default() });
    let admin = server.admin();
    let names: Vec<String> = (0..6).map(|i| format!("idle-{i}")).collect();
    let mut conversations = Vec::new();
    for name in &names {
        admin.create_project(name);
        let conv = admin.post(&oa(name, "/conversations"), &json!({"items": [{"role": "user", "content": "kept"}]})).ok(200);
        conversations.push(conv["id"].as_str().expect("id").to_owned());
    }
    let busy = threads(server.pid());
    // Bounded wait: the closer runs every second once a project has been idle for a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while threads(server.pid()) + names.len() > busy && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let idle = threads(server.pid());
    assert!(idle + names.len() <= busy, "writer threads were released: {busy} threads busy, {idle} idle");
    // Each project opens again on its next use, with everything it held.
    for (name, conv) in names.iter().zip(&conversations) {
        let items = admin.get(&oa(name, &format!("/conversations/{conv}/items"))).ok(200);
        assert_eq!(items["data"][0]["content"][0]["text"], "kept", "{items}");
        admin.post(&oa(name, &format!("/conversations/{conv}/items")), &json!({"items": [{"role": "user", "content": "more"}]})).ok(200);
    }
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn a_principal_holds_at_most_its_project_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = "listen = \"127.0.0.1:{port}\"\n[limits]\nmax_projects_per_principal = 2\n";
    let server = Server::start_with(dir.path(), Opts { config: Some(config.to_owned()), ..Opts::default() });
    let admin = server.admin();
    let contributor = server.api(Some(admin.create_key("builder", "contributor")["key"].as_str().expect("key")));
    contributor.create_project("first");
    contributor.create_project("second");
    let e = contributor.post("/v1/projects", &json!({"name": "third"})).err(403, "quota_exceeded");
    assert!(e.contains("max_projects_per_principal"), "{e}");
    assert_eq!(admin.get("/v1/projects/third").status, 404, "nothing was created");
    // A soft-deleted project still counts (it keeps its data until purged); Owners are not limited.
    contributor.delete("/v1/projects/second").ok(204);
    contributor.post("/v1/projects", &json!({"name": "third"})).err(403, "quota_exceeded");
    for name in ["owned-1", "owned-2", "owned-3"] {
        admin.create_project(name);
    }
}

#[test]
fn scans_of_divergences_and_cut_off_responses_are_paged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let admin = server.admin();
    admin.create_project("proj");
    assert_eq!(admin.get("/v1/projects/proj/divergences?limit=100").ok(200), json!([]));
    let e = admin.get("/v1/projects/proj/divergences?limit=100000").err(400, "invalid_input");
    assert!(e.contains("at most") || e.contains("between 1 and 1000"), "{e}");
    let e = admin.post("/v1/projects/proj/resubmit?limit=0", &json!({})).err(400, "invalid_input");
    assert!(e.contains("between 1 and 1000"), "{e}");
    assert_eq!(admin.post("/v1/projects/proj/resubmit?limit=5", &json!({})).ok(200), json!([]));
}
