//! Helpers for tests with several regions on loopback: a region's server options, two regions
//! that know each other, the replication status and a bounded wait for a replica to catch up, an
//! upload body, and a scripted OpenAI-compatible model server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use super::{Api, Opts, Server, free_port};

/// The cluster secret every test region shares.
pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789";
/// The master key every test region shares (connection secrets are replicated sealed).
pub const MASTER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
/// Bound on every wait for a replica to catch up.
pub const SETTLE: Duration = Duration::from_secs(30);
/// The multipart boundary of [`multipart`].
pub const BOUNDARY: &str = "holdfast-cluster-test-boundary";

/// A project's OpenAI-compatible route.
pub fn oa(project: &str, rest: &str) -> String {
    format!("/api/projects/{project}/openai/v1{rest}")
}

/// Options of region `region` listening on `port` and knowing `peer` at `peer_url`.
pub fn region_opts(region: &str, port: u16, peer: &str, peer_url: &str) -> Opts {
    region_opts_without_secret(region, port, peer, peer_url).env("HOLDFAST_CLUSTER_SECRET", CLUSTER_SECRET)
}

/// [`region_opts`] without the cluster secret (the test gives it its own way).
pub fn region_opts_without_secret(region: &str, port: u16, peer: &str, peer_url: &str) -> Opts {
    Opts {
        port: Some(port),
        ..Opts::default()
            .arg("--region")
            .arg(region)
            .arg("--peer")
            .arg(format!("{peer}={peer_url}"))
            .env("HOLDFAST_MASTER_KEY", MASTER_KEY)
    }
}

/// Starts region `region` on `data` at `port`, knowing `peer` at `peer_port`, with `extra`
/// applied to its options.
pub fn region(data: &Path, region: &str, port: u16, peer: &str, peer_port: u16, extra: &dyn Fn(Opts) -> Opts) -> Server {
    Server::start_with(data, extra(region_opts(region, port, peer, &format!("http://127.0.0.1:{peer_port}"))))
}

/// Regions `a` and `b`, each knowing the other, with `extra` applied to both servers' options.
pub fn pair_with(extra: &dyn Fn(Opts) -> Opts) -> (Server, Server, TempDir, TempDir) {
    let (da, db) = (tempfile::tempdir().expect("data a"), tempfile::tempdir().expect("data b"));
    let (pa, pb) = (free_port(), free_port());
    let a = region(da.path(), "a", pa, "b", pb, extra);
    let b = region(db.path(), "b", pb, "a", pa, extra);
    (a, b, da, db)
}

/// Regions `a` and `b` with the default options.
pub fn pair() -> (Server, Server, TempDir, TempDir) {
    pair_with(&|o| o)
}

/// A project's replication status at the server `api` talks to.
pub fn status(api: &Api, project: &str) -> Value {
    api.get(&format!("/v1/status?project={project}")).ok(200)[0].clone()
}

/// Waits (bounded) until `replica`'s copy of `project` holds `lsn`; its status then.
pub fn wait_applied(replica: &Api, project: &str, lsn: u64) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let s = status(replica, project);
        if s["lsn"].as_u64() == Some(lsn) {
            return s;
        }
        assert!(Instant::now() < deadline, "the replica did not catch up to {lsn}: {s:#}");
        sleep(Duration::from_millis(20));
    }
}

/// A file upload body (`purpose=assistants`) with [`BOUNDARY`].
pub fn multipart(filename: &str, bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n").bytes());
    body.extend(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: text/plain\r\n\r\n")
            .bytes(),
    );
    body.extend(bytes);
    body.extend(format!("\r\n--{BOUNDARY}--\r\n").bytes());
    body
}

/// Reads one HTTP/1.1 request (headers, then a `Content-Length` body) from `stream`; `None`
/// when the client went away first.
pub fn read_request(stream: &std::net::TcpStream) -> Option<Vec<u8>> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(body)
}

/// A minimal OpenAI-compatible model on loopback. Call `n` (from 0) of `POST …/chat/completions`
/// is answered by `reply(n)`: `Some(pieces)` streams a completion of those text pieces, `pause`
/// apart; `None` holds the connection without answering for up to 15 s (a model still thinking).
/// Runs until the test process ends.
pub fn scripted_model(reply: fn(usize) -> Option<Vec<&'static str>>, pause: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake model");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().flatten().enumerate() {
            std::thread::spawn(move || {
                if read_request(&stream).is_none() {
                    return;
                }
                let Some(pieces) = reply(n) else {
                    sleep(Duration::from_secs(15));
                    return;
                };
                let mut out = stream;
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
                let chunk = |delta: Value, finish: Value| {
                    let obj = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                    format!("data: {obj}\n\n")
                };
                let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
                events.extend(pieces.iter().map(|p| chunk(json!({"content": p}), Value::Null)));
                events.push(chunk(json!({}), json!("stop")));
                events.push("data: [DONE]\n\n".to_owned());
                for event in events {
                    if out.write_all(event.as_bytes()).and_then(|()| out.flush()).is_err() {
                        return;
                    }
                    sleep(pause);
                }
            });
        }
    });
    port
}

/// Waits (bounded by [`SETTLE`]) until response `id` of `project` is no longer in progress, and
/// returns it.
#[allow(dead_code)]
pub fn response_when_done(api: &Api, project: &str, id: &str) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let r = api.get(&oa(project, &format!("/responses/{id}"))).ok(200);
        if r["status"] != "in_progress" || Instant::now() > deadline {
            return r;
        }
        sleep(Duration::from_millis(50));
    }
}
