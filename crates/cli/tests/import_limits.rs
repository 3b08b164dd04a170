//! What an import may not do, with the real binary:
//!
//! - exceed the import limit (`--max-import-bytes`): 413, streamed or announced by
//!   `Content-Length` (refused before the body is read), and nothing is imported;
//! - take the disk below its reserve (`[limits] import_min_free_bytes`): 507, nothing imported;
//! - hold a line longer than its record can be: 400 "line N is longer than …", nothing imported;
//! - bring a connection's sealed secret: 400, nothing imported (connections import as
//!   references only);
//! - repoint a connection and keep its key: an overwrite that changes a connection's target
//!   drops its secret, one that keeps the target keeps it.

mod common;

use std::io::{Read, Write};
use std::path::Path;

use common::{ADMIN_KEY, Cli, Opts, Server};
use holdfast_recovery::export::{EXPORT_FORMAT, Encoder, ExportedProject, ExportedResource, Header};
use holdfast_types::Kind;
use serde_json::{Value, json};

/// An export file of the given resources, made with the encoder.
fn export_file(resources: &[ExportedResource]) -> Vec<u8> {
    let header = Header {
        format: EXPORT_FORMAT.into(),
        version: 1,
        project: ExportedProject {
            id: "proj_01m80mg0dm5fvcsadp142rt41a".into(),
            name: "made".into(),
            display_name: "Made".into(),
            description: String::new(),
            tags: Default::default(),
        },
        exported_at: 1_795_317_826_030_328,
        source_lsn: resources.len() as u64,
        kinds: vec![Kind::Connection, Kind::Conversation],
    };
    let (mut encoder, mut out) = Encoder::start(&header).expect("header");
    for r in resources {
        encoder.resource(r, &mut out).expect("resource");
    }
    out.extend(encoder.finish().expect("trailer").1);
    out
}

fn conversation(n: usize, metadata: Value) -> ExportedResource {
    ExportedResource {
        kind: Kind::Conversation,
        id: format!("conv_01m80mg0fd4ahn3x3q7{n:08}"),
        parent: None,
        created_us: 1_795_317_826_031_000 + n as i64,
        updated_us: 1_795_317_826_031_000 + n as i64,
        body: json!({ "metadata": metadata }),
        secret_removed: false,
    }
}

fn import(cli: &Cli, server: &Server, file: &Path, project: &str, mode: &str) -> common::Out {
    let path = file.to_str().expect("path");
    cli.run(&["--endpoint", &server.base, "--key", ADMIN_KEY, "-o", "json", "import", "--in", path, "--project", project, "--on-conflict", mode])
}

/// Sends only the head of an import whose `Content-Length` announces `length` bytes, and
/// returns the status and body of the answer (which must come without any body being sent).
fn announce(server: &Server, project: &str, length: u64) -> (u16, Value) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).expect("timeout");
    let head = format!(
        "POST /v1/projects/{project}/import HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("send head");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Read up to the end of the answer's body (its length is in its head).
    loop {
        let n = stream.read(&mut buf).expect("read answer");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().expect("length")))
                .expect("answer has a content-length");
            if answer.len() >= end + 4 + length {
                let status = text[9..12].parse().expect("status");
                let body = serde_json::from_slice(&answer[end + 4..end + 4 + length]).expect("JSON body");
                return (status, body);
            }
        }
        assert!(n > 0, "the connection closed before a whole answer: {text:?}");
    }
}

#[test]
fn imports_beyond_the_limits_are_refused_and_change_nothing() {
    let (d1, d2, d3, work) = (tempfile::tempdir().expect("1"), tempfile::tempdir().expect("2"), tempfile::tempdir().expect("3"), tempfile::tempdir().expect("w"));
    let cli = Cli::new();
    let small = work.path().join("small.jsonl");
    let conversations: Vec<_> = (0..400).map(|n| conversation(n, json!({"topic": format!("conversation {n} of a file larger than 64 KiB")}))).collect();
    std::fs::write(&small, export_file(&conversations)).expect("write");
    assert!(std::fs::metadata(&small).expect("size").len() > 65536);

    // The import limit, from a flag: announced by the CLI (Content-Length), streamed without a
    // length, and announced without a body.
    let limited = Server::start_with(d1.path(), Opts::default().arg("--max-import-bytes").arg("65536"));
    let refused = import(&cli, &limited, &small, "fresh", "skip");
    refused.code(1);
    assert!(refused.stderr.contains("import limit of 65536 bytes") && refused.stderr.contains("HTTP 413"), "{}", refused.stderr);
    let chunked = reqwest::blocking::Client::new()
        .post(format!("{}/v1/projects/fresh/import", limited.base))
        .bearer_auth(ADMIN_KEY)
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(std::fs::read(&small).expect("read"))))
        .send()
        .expect("chunked import");
    assert_eq!(chunked.status().as_u16(), 413);
    let body: Value = chunked.json().expect("JSON");
    assert!(body["error"]["message"].as_str().expect("message").starts_with("import file is larger than"), "{body}");
    let (status, body) = announce(&limited, "fresh", 1 << 40);
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(body["error"]["message"].as_str().expect("message").contains("import file is 1099511627776 bytes"), "{body}");
    assert_eq!(limited.admin().get("/v1/projects/fresh").status, 404, "nothing was imported");
    drop(limited);

    // The disk reserve, from the config file: no disk has an exabyte free.
    let config = "listen = \"127.0.0.1:{port}\"\n[limits]\nimport_min_free_bytes = 1152921504606846976\n".to_owned();
    let full = Server::start_with(d3.path(), Opts { config: Some(config), ..Opts::default() });
    let refused = import(&cli, &full, &small, "fresh", "skip");
    refused.code(1);
    assert!(refused.stderr.contains("not enough free disk space") && refused.stderr.contains("HTTP 507"), "{}", refused.stderr);
    let (status, body) = announce(&full, "fresh", 4096);
    assert_eq!((status, body["error"]["code"].clone()), (507, json!("insufficient_storage")), "{body}");
    assert_eq!(full.admin().get("/v1/projects/fresh").status, 404);
    let spools: Vec<_> = std::fs::read_dir(d3.path().join("tmp")).map(|d| d.collect()).unwrap_or_default();
    assert!(spools.is_empty(), "no spool is left behind: {spools:?}");
    drop(full);

    // Default limits: a resource line longer than any record can be (16 MiB), and a
    // connection that carries a sealed secret, are refused whole.
    let server = Server::start(d2.path());
    let api = server.admin();
    let long = work.path().join("long.jsonl");
    let huge = conversation(1, json!({"note": "x".repeat(17 << 20)}));
    std::fs::write(&long, export_file(&[conversation(0, json!({})), huge, conversation(2, json!({}))])).expect("write");
    let refused = import(&cli, &server, &long, "fresh", "skip");
    refused.code(1);
    assert!(refused.stderr.contains("corrupt export file: line 3 is longer than 16777216 bytes"), "{}", refused.stderr);
    assert!(refused.stderr.contains("HTTP 400"), "{}", refused.stderr);
    assert_eq!(api.get("/v1/projects/fresh").status, 404);

    let sealed = work.path().join("sealed.jsonl");
    let connection = ExportedResource {
        kind: Kind::Connection,
        id: "conn:up".into(),
        parent: None,
        created_us: 1_795_317_826_030_400,
        updated_us: 1_795_317_826_030_400,
        body: json!({"name": "up", "type": "openai", "target": "http://127.0.0.1:9/v1", "metadata": {},
            "secret": {"nonce": "AAAAAAAAAAAAAAAA", "ciphertext": "c2VhbGVkIGVsc2V3aGVyZQ=="}}),
        secret_removed: false,
    };
    std::fs::write(&sealed, export_file(&[connection, conversation(0, json!({}))])).expect("write");
    api.create_project("there");
    let lsn = api.get("/v1/projects/there").ok(200)["lsn"].clone();
    for project in ["fresh", "there"] {
        let refused = import(&cli, &server, &sealed, project, "overwrite");
        refused.code(1);
        assert!(
            refused.stderr.contains(r#"connections import without their secret; this file carries one for connection "up""#),
            "{}",
            refused.stderr
        );
        assert!(refused.stderr.contains("HTTP 400"), "{}", refused.stderr);
    }
    assert_eq!(api.get("/v1/projects/fresh").status, 404);
    assert_eq!(api.get("/v1/projects/there").ok(200)["lsn"], lsn, "nothing was imported");
    assert_eq!(api.get("/api/projects/there/connections/up").status, 404);
}

#[test]
fn an_import_that_repoints_a_connection_drops_its_key() {
    let (data, work) = (tempfile::tempdir().expect("data"), tempfile::tempdir().expect("work"));
    let server = Server::start(data.path());
    let api = server.admin();
    let cli = Cli::new();
    let connection = |project: &str, target: &str, key: &str| {
        api.create_project(project);
        let body = json!({"name": "up", "type": "openai", "target": target, "api_key": key});
        api.post(&format!("/v1/projects/{project}/connections"), &body).ok(201);
    };
    let credentials = |project: &str| {
        let path = format!("/api/projects/{project}/connections/up/getConnectionWithCredentials");
        api.post(&path, &json!({})).ok(200)["credentials"].clone()
    };
    connection("src", "http://upstream.test/v1", "sk-source-0123456789");
    let file = work.path().join("src.jsonl");
    let path = file.to_str().expect("path");
    cli.run(&["--endpoint", &server.base, "--key", ADMIN_KEY, "export", "--project", "src", "--out", path]).success();
    connection("same", "http://upstream.test/v1", "sk-same-0123456789");
    connection("moved", "http://elsewhere.test/v1", "sk-moved-0123456789");

    let same = import(&cli, &server, &file, "same", "overwrite").json();
    assert_eq!(same["kinds"]["connection"]["overwritten"], 1, "{same}");
    assert_eq!(same["secrets_removed"], json!([]), "{same}");
    assert_eq!(credentials("same"), json!({"type": "ApiKey", "key": "sk-same-0123456789"}), "the same target keeps its key");

    let moved = import(&cli, &server, &file, "moved", "overwrite").json();
    assert_eq!(moved["kinds"]["connection"]["overwritten"], 1, "{moved}");
    assert_eq!(moved["secrets_removed"], json!(["up"]), "{moved}");
    assert_eq!(credentials("moved"), json!({"type": "None"}), "a repointed connection keeps no key");
    assert_eq!(api.get("/api/projects/moved/connections/up").ok(200)["target"], "http://upstream.test/v1");
}
