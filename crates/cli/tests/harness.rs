//! Self-tests of the test utilities the fault tests stand on: the fault-injecting TCP proxy
//! (`common::proxy`) in front of a real `holdfast serve` and of a std echo server, and the
//! throwaway etcd (`common::etcd`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use common::Server;
use common::etcd::Etcd;
use common::proxy::{Mode, Proxy, loopback};
use reqwest::blocking::Client;
use serde_json::{Value, json};

fn client(timeout: Duration) -> Client {
    Client::builder().timeout(timeout).build().expect("HTTP client")
}

/// `GET {base}/healthz`: the status, or the error, and how long it took.
fn healthz(http: &Client, base: &str) -> (Result<u16, reqwest::Error>, Duration) {
    let t = Instant::now();
    let r = http.get(format!("{base}/healthz")).send().map(|r| r.status().as_u16());
    (r, t.elapsed())
}

#[test]
fn proxy_forwards_delays_partitions_and_heals_in_front_of_a_server() {
    let data = tempfile::tempdir().expect("data dir");
    let server = Server::start(data.path());
    let proxy = Proxy::start(loopback(server.port));
    let base = proxy.url();
    let http = client(Duration::from_secs(5));

    let (r, _) = healthz(&http, &base);
    assert_eq!(r.expect("through the proxy"), 200);
    assert_eq!(proxy.connections(), 1, "the client's keep-alive connection is forwarded");

    // 50 ms each way: a request and its answer take at least 100 ms.
    proxy.set_delay(Duration::from_millis(50));
    let (r, took) = healthz(&client(Duration::from_secs(5)), &base);
    assert_eq!(r.expect("delayed"), 200);
    assert!(took >= Duration::from_millis(90), "a 50 ms one-way delay gave a round trip of {took:?}");
    proxy.set_delay(Duration::ZERO);

    // Blackhole: the live connection is cut, a new one hangs until the client's timeout.
    proxy.partition();
    assert_eq!(proxy.connections(), 0, "a partition cuts live connections");
    let (r, took) = healthz(&client(Duration::from_secs(1)), &base);
    assert!(r.is_err(), "a request crossed a blackhole: {r:?}");
    assert!(took >= Duration::from_millis(900), "a blackholed request failed before its timeout: {took:?}");

    proxy.heal();
    let (r, _) = healthz(&http, &base);
    assert_eq!(r.expect("healed"), 200);

    // Refuse: the pooled connection is cut and a new one is closed at once, so the client fails
    // fast (its timeout is 5 s).
    proxy.partition_with(Mode::Refuse);
    let (r, took) = healthz(&http, &base);
    assert!(r.is_err(), "a request crossed a refusing partition: {r:?}");
    assert!(took < Duration::from_millis(800), "a refused request waited for its timeout: {took:?}");

    proxy.heal();
    let (r, _) = healthz(&client(Duration::from_secs(5)), &base);
    assert_eq!(r.expect("healed again"), 200);
}

/// An echo server for one connection on loopback; accepts for at most 10 s.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    listener.set_nonblocking(true).expect("nonblocking");
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).expect("blocking");
                    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
                    let mut buf = [0; 4096];
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s.shutdown(Shutdown::Write);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => sleep(Duration::from_millis(5)),
                Err(_) => return,
            }
        }
    });
    addr
}

#[test]
fn proxy_delay_pipelines_chunks_passes_half_close_and_drop_cuts_everything() {
    let proxy = Proxy::start(echo_server());
    proxy.set_delay(Duration::from_millis(100));

    // 20 chunks 10 ms apart, then a half-close. Delivered in order, with the delay once per
    // chunk each way: ~200 ms of sending + 200 ms of delay. A proxy that slept per chunk in turn
    // would need 20 × 100 ms in each direction.
    let mut conn = TcpStream::connect(proxy.addr()).expect("connect through the proxy");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let sent: Vec<u8> = (0..20 * 1024).map(|i| (i % 251) as u8).collect();
    let t = Instant::now();
    let mut writer = conn.try_clone().expect("clone");
    let chunks = sent.clone();
    let sender = thread::spawn(move || {
        for chunk in chunks.chunks(1024) {
            writer.write_all(chunk).expect("send a chunk");
            sleep(Duration::from_millis(10));
        }
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut got = Vec::new();
    conn.read_to_end(&mut got).expect("read the echo to its end (the half-close came back)");
    let took = t.elapsed();
    sender.join().expect("sender");
    assert!(got == sent, "the echo differs from what was sent ({} of {} bytes)", got.len(), sent.len());
    assert!(took >= Duration::from_millis(300), "100 ms each way, over 200 ms of sending, took only {took:?}");
    assert!(took < Duration::from_millis(1500), "the delay was serialized per chunk: {took:?}");

    // Dropping the proxy closes the listener and cuts a connection it was holding (the echo
    // server accepts one connection only, so this one is never answered).
    let addr = proxy.addr();
    proxy.set_delay(Duration::ZERO);
    let mut idle = TcpStream::connect(addr).expect("second connection");
    idle.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    sleep(Duration::from_millis(100));
    let t = Instant::now();
    drop(proxy);
    assert!(t.elapsed() < Duration::from_secs(5), "dropping the proxy took {:?}", t.elapsed());
    match idle.read(&mut [0; 16]) {
        Ok(0) => {}
        Ok(n) => panic!("read {n} bytes from a dropped proxy"),
        Err(e) => assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "the dropped proxy left its connection open: {e}"
        ),
    }
    assert!(TcpStream::connect(addr).is_err(), "the dropped proxy still listens on {addr}");
}

/// Whether a process with this pid exists (`kill -0`).
fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run kill")
        .success()
}

/// Polls `etcd`'s health until it is true, at most 10 s.
fn wait_healthy(etcd: &Etcd) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !etcd.healthy(Duration::from_secs(1)) {
        assert!(Instant::now() < deadline, "etcd did not become healthy again:\n{}", etcd.log());
        sleep(Duration::from_millis(20));
    }
}

#[test]
fn etcd_starts_pauses_resumes_and_its_handle_stops_it() {
    let etcd = Etcd::start();
    let pid = etcd.pid();
    assert!(alive(pid));
    let health: Value = client(Duration::from_secs(2))
        .get(format!("{}/health", etcd.url()))
        .send()
        .and_then(|r| r.json())
        .expect("GET /health");
    assert_eq!(health["health"], "true", "{health}");

    // Through a proxy as well (how fault tests put a node's etcd behind a partition).
    let proxy = Proxy::start(etcd.addr());
    let through: Value =
        client(Duration::from_secs(2)).get(format!("{}/health", proxy.url())).send().and_then(|r| r.json()).expect("health via proxy");
    assert_eq!(through["health"], "true", "{through}");
    drop(proxy);

    etcd.pause();
    let t = Instant::now();
    assert!(!etcd.healthy(Duration::from_millis(500)), "a paused etcd answered /health");
    assert!(t.elapsed() < Duration::from_secs(3), "the health check was not bounded: {:?}", t.elapsed());
    etcd.resume();
    wait_healthy(&etcd);

    drop(etcd);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(Instant::now() < deadline, "etcd (pid {pid}) outlived its handle");
        sleep(Duration::from_millis(20));
    }
}

#[test]
fn etcd_keeps_its_data_across_kill9_and_stop() {
    let mut etcd = Etcd::start();
    let http = client(Duration::from_secs(5));
    // etcd 3.4's JSON gateway; keys and values are base64 ("k" = "aw==", "v" = "dg==").
    let put = http.post(format!("{}/v3/kv/put", etcd.url())).json(&json!({ "key": "aw==", "value": "dg==" })).send();
    assert_eq!(put.expect("put").status().as_u16(), 200);

    let status = etcd.kill9();
    assert!(!status.success(), "a SIGKILLed etcd exited {status}");
    etcd.restart();
    let range: Value = http
        .post(format!("{}/v3/kv/range", etcd.url()))
        .json(&json!({ "key": "aw==" }))
        .send()
        .and_then(|r| r.json())
        .expect("range");
    assert_eq!(range["kvs"][0]["value"], "dg==", "the key did not survive a kill -9: {range}");

    let pid = etcd.pid();
    etcd.pause();
    let status = etcd.stop(); // SIGTERM reaches a paused etcd too
    assert!(!alive(pid), "etcd (pid {pid}) is still running after stop ({status})");
    etcd.restart();
    wait_healthy(&etcd);
}
