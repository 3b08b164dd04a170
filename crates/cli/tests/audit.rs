//! The audit log with the real binary: every mutation and every denied request is recorded with
//! who, what, scope, when, address and outcome; queries filter by time, principal and scope; the
//! hash chain verifies, and an entry changed behind the server's back is found.

mod common;

use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{ADMIN_KEY, Cli, Server};
use serde_json::{Value, json};

/// The audit entries, once at least `n` are written (the writer runs beside the requests).
fn entries(cli: &Cli, env: &[(&str, &str)], extra: &[&str], n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut args = vec!["-o", "json", "audit-log"];
        args.extend_from_slice(extra);
        let all = cli.run_env(&args, env).json();
        let all = all.as_array().expect("entries").clone();
        if all.len() >= n || Instant::now() > deadline {
            return all;
        }
        sleep(Duration::from_millis(20));
    }
}

#[test]
fn mutations_and_refusals_are_audited_and_a_changed_entry_is_found() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let admin = server.admin();
    let before = common::now_us();
    admin.create_project("audited");
    admin.patch("/v1/projects/audited", &json!({ "description": "x" })).ok(200);
    let reader = admin.create_key("auditor", "reader");
    let reader_id = reader["principal_id"].as_str().expect("principal").to_owned();
    let ro = server.api(Some(reader["key"].as_str().expect("key")));
    ro.patch("/v1/projects/audited", &json!({ "description": "y" })).err(403, "forbidden");
    ro.get("/v1/projects/audited").ok(200); // a permitted read is not audited
    server.api(None).delete("/v1/projects/audited").err(401, "unauthenticated");

    let cli = Cli::new();
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    let all = entries(&cli, &env, &[], 5);
    assert_eq!(all.len(), 5, "create, update, key create, the reader's refusal, the anonymous one: {all:#?}");
    let denied: Vec<&Value> = all.iter().filter(|e| e["outcome"] == "denied").collect();
    assert_eq!(denied.len(), 2, "{all:#?}");
    let refused = denied.iter().find(|e| e["principal"] == reader_id.as_str()).expect("the reader's refusal");
    assert_eq!((refused["method"].as_str(), refused["status"].as_u64()), (Some("PATCH"), Some(403)));
    assert_eq!((refused["scope"].as_str(), refused["action"].as_str()), (Some("/projects/audited"), Some("projects/write")));
    assert_eq!(refused["address"], "127.0.0.1");
    assert!(denied.iter().any(|e| e["principal"] == "" && e["status"] == 401), "{denied:#?}");
    let created = &all[0];
    assert_eq!((created["route"].as_str(), created["outcome"].as_str()), (Some("/v1/projects"), Some("ok")));

    // Filters: by principal, by scope, by time.
    assert_eq!(entries(&cli, &env, &["--principal", &reader_id], 1).len(), 1);
    assert_eq!(entries(&cli, &env, &["--scope", "/projects/audited"], 3).len(), 3, "update and two refusals");
    let since = holdfast_types::rfc3339(before);
    assert_eq!(entries(&cli, &env, &["--since", &since, "--limit", "2"], 2).len(), 2);
    assert!(entries(&cli, &env, &["--until", "2000-01-01T00:00:00Z"], 0).is_empty());
    let bad = cli.run_env(&["audit-log", "--since", "yesterday"], &env);
    bad.code(1);
    assert!(bad.stderr.contains("RFC 3339"), "{}", bad.stderr);

    let verified = cli.run_env(&["-o", "json", "audit-log", "verify"], &env).json();
    assert_eq!((verified["ok"].as_bool(), verified["entries"].as_u64()), (Some(true), Some(5)), "{verified}");
    assert_eq!(server.stop().code(), Some(0));

    // Someone rewrites history in control.db while the server is down: verify names the entry.
    let db = rusqlite::Connection::open(data.path().join("control.db")).expect("open control.db");
    db.execute("UPDATE audit SET outcome = 'ok', status = 200 WHERE principal = ?1", [&reader_id]).expect("tamper");
    drop(db);
    let server = Server::start(data.path());
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    let out = cli.run_env(&["-o", "json", "audit-log", "verify"], &env);
    out.code(1);
    let report: Value = serde_json::from_str(&out.stdout).expect("the report is JSON");
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_bad_seq"], refused["seq"], "{report}");
    // Only admins read the log.
    server.api(Some(reader["key"].as_str().expect("key"))).get("/v1/audit").err(403, "forbidden");
    assert_eq!(server.stop().code(), Some(0));
}

/// `audit-log verify -o json`, with its exit code.
fn verify(cli: &Cli, env: &[(&str, &str)]) -> (i32, Value) {
    let out = cli.run_env(&["-o", "json", "audit-log", "verify"], env);
    let report = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("the report is JSON ({e}): {}", out.stdout));
    (out.code, report)
}

#[test]
fn the_archived_copy_finds_removed_newest_entries_and_its_own_corruption() {
    let (data, archive) = (tempfile::tempdir().expect("data"), tempfile::tempdir().expect("archive"));
    let config = format!(
        "listen = \"127.0.0.1:{{port}}\"\n\n[archive]\nurl = \"file://{}\"\ninterval_ms = 100\n",
        archive.path().display()
    );
    let opts = || common::Opts { config: Some(config.clone()), ..common::Opts::default() };
    let server = Server::start_with(data.path(), opts());
    let admin = server.admin();
    admin.create_project("watched");
    for i in 0..3 {
        admin.patch("/v1/projects/watched", &json!({ "description": format!("v{i}") })).ok(200);
    }
    let cli = Cli::new();
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    // The archiver ships every 100 ms: wait until the archive holds all four entries.
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let (code, report) = verify(&cli, &env);
        if report["archive"]["entries"] == 4 || Instant::now() > deadline {
            assert_eq!(code, 0, "{report:#}");
            break report;
        }
        sleep(Duration::from_millis(50));
    };
    assert_eq!((report["ok"].as_bool(), report["archive"]["ok"].as_bool()), (Some(true), Some(true)), "{report:#}");
    assert_eq!(report["archive"]["entries"], 4, "{report:#}");
    let region_dir = archive.path().join("audit").join("local");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(region_dir.join("manifest.json")).expect("audit manifest")).expect("json");
    assert_eq!(manifest["shipped_seq"], 4, "{manifest:#}");
    assert_eq!(server.stop().code(), Some(0));

    // A flipped byte in an archived segment: the archive check fails and names the object; the
    // local chain is still intact.
    let segment = std::fs::read_dir(region_dir.join("segments")).expect("segments").next().expect("a segment").expect("entry");
    let original = std::fs::read(segment.path()).expect("read segment");
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    std::fs::write(segment.path(), &flipped).expect("corrupt segment");
    let server = Server::start_with(data.path(), opts());
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    let (code, report) = verify(&cli, &env);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!((report["first_bad_seq"].is_null(), report["archive"]["ok"].as_bool()), (true, Some(false)), "{report:#}");
    let name = segment.file_name().into_string().expect("utf-8 name");
    assert!(report["archive"]["message"].as_str().expect("message").contains(&name), "{report:#}");
    assert_eq!(server.stop().code(), Some(0));
    std::fs::write(segment.path(), &original).expect("repair segment");

    // The newest entry removed from control.db: the local chain alone still verifies (nothing
    // follows the hole), the archived copy finds it.
    let db = rusqlite::Connection::open(data.path().join("control.db")).expect("open control.db");
    db.execute("DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)", []).expect("remove the newest entry");
    drop(db);
    let server = Server::start_with(data.path(), opts());
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    let (code, report) = verify(&cli, &env);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!((report["first_bad_seq"].is_null(), report["entries"].as_u64()), (true, Some(3)), "{report:#}");
    assert!(report["archive"]["message"].as_str().expect("message").contains("lacks entry 4"), "{report:#}");
    assert_eq!(server.stop().code(), Some(0));
}

/// The finding: rewriting every entry's principal in `control.db` and recomputing the chain's
/// hashes made verify report it intact. The chain is keyed now: plain sha256 hashes (what a
/// rewriter without the master key can compute) are refused.
#[test]
fn a_chain_rewritten_without_the_master_key_does_not_verify() {
    use sha2::{Digest, Sha256};
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let admin = server.admin();
    admin.create_project("audited");
    admin.patch("/v1/projects/audited", &json!({ "description": "x" })).ok(200);
    let cli = Cli::new();
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    let (code, report) = verify(&cli, &env);
    assert_eq!((code, report["ok"].as_bool(), report["unkeyed_entries"].as_u64()), (0, Some(true), Some(0)), "{report}");
    assert_eq!(server.stop().code(), Some(0));

    let db = rusqlite::Connection::open(data.path().join("control.db")).expect("open control.db");
    type Row = (i64, i64, String, String, String, String, String, String, u16, String, String);
    let rows: Vec<Row> = db
        .prepare("SELECT seq, ts_us, method, route, path, scope, action, address, status, outcome, request_id FROM audit ORDER BY seq")
        .expect("prepare")
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(rows.len() >= 2);
    let mut prev = "0".repeat(64);
    for (seq, ts, method, route, path, scope, action, address, status, outcome, request_id) in &rows {
        let principal = "prn_mallory";
        let line = format!("{prev}\n{seq}\n{ts}\n{principal}\n{method}\n{route}\n{path}\n{scope}\n{action}\n{address}\n{status}\n{outcome}\n{request_id}");
        let hash = hex::encode(Sha256::digest(line.as_bytes()));
        db.execute(
            "UPDATE audit SET principal = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![principal, prev, hash, seq],
        )
        .expect("rewrite");
        prev = hash;
    }
    drop(db);
    let server = Server::start(data.path());
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    let (code, report) = verify(&cli, &env);
    assert_eq!((code, report["ok"].as_bool(), report["first_bad_seq"].as_i64()), (1, Some(false), Some(1)), "{report}");
    assert_eq!(server.stop().code(), Some(0));
}

/// Probes are audited too (a path no route has, a method a route lacks), and a mutation's entry
/// is durable before its response: a kill -9 right after the answer keeps it.
#[test]
fn probes_are_audited_and_a_mutations_entry_survives_a_kill() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let admin = server.admin();
    assert_eq!(admin.get("/v1/no-such-route").status, 404);
    assert_eq!(admin.send(reqwest::Method::PUT, "/v1/projects", Some(&json!({})), &[]).status, 405);
    admin.create_project("durable");
    let made = admin.post("/v1/projects/durable/connections", &json!({"name": "up", "target": "http://127.0.0.1:9/v1"}));
    made.ok(201);
    let request_id = made.header("x-request-id").expect("request id");
    server.kill9();

    let server = Server::start(data.path());
    let page = server.admin().get("/v1/audit?limit=1000").ok(200);
    let all = page["data"].as_array().expect("entries").clone();
    assert!(all.iter().any(|e| e["request_id"] == request_id.as_str() && e["status"] == 201), "{all:#?}");
    assert!(all.iter().any(|e| e["status"] == 404 && e["route"] == "" && e["method"] == "GET"), "{all:#?}");
    assert!(all.iter().any(|e| e["status"] == 405 && e["method"] == "PUT" && e["route"] == "/v1/projects"), "{all:#?}");
    let cli = Cli::new();
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    assert_eq!(verify(&cli, &env).0, 0);
}
