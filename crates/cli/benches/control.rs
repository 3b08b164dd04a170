//! The control plane across regions, measured with real `holdfast` binaries on loopback
//! (docs/BENCHMARKS.md §Control plane has the figures and the targets):
//!
//! 1. `auth`: a request's cost at the hot replica's region against the primary's — the same
//!    authenticated read (`GET …/conversations/{id}` with an `ai_user` key scoped to the project)
//!    sent alternately to both, one request at a time; the ratio of the medians is the figure
//!    (each region authenticates and authorizes from its own copy of the control journal);
//! 2. `revoke`: how long a key revoked at the control primary keeps working at the other region
//!    — from the revoke's answer to the first 401 there, polled every 2 ms;
//! 3. `auto`: automatic failover of the control plane (etcd witness, lease 5 s): from `kill -9` of
//!    the control primary to the first key made at the other region.
//!
//! `cargo bench -p holdfast --bench control [-- PHASE…]`. Without `--bench` in its arguments
//! (`cargo test --all-targets` runs it that way) it prints how to run it and exits at once.
//! Every wait is bounded; every process is started and stopped through the test harness.

#[path = "../tests/common/mod.rs"]
mod common;

use std::thread::sleep;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{Api, Opts, Server, free_port};
use serde_json::{Value, json};

const SECRET: &str = "bench-cluster-secret-0123456789";
const BOUND: Duration = Duration::from_secs(30);
const AUTH_ROUNDS: usize = 2000;
const REVOCATIONS: usize = 100;
const AUTO_RUNS: usize = 3;
const PHASES: [&str; 3] = ["auth", "revoke", "auto"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("control-plane benchmark skipped: run it with `cargo bench -p holdfast --bench control [-- {}]`", PHASES.join(" "));
        return;
    }
    let wanted: Vec<&str> = args.iter().map(String::as_str).filter(|a| PHASES.contains(a)).collect();
    let run = |phase: &str| wanted.is_empty() || wanted.contains(&phase);
    eprintln!("binary: {} ({} cores)", common::bin(), std::thread::available_parallelism().map_or(0, usize::from));
    if run("auth") {
        phase_auth();
    }
    if run("revoke") {
        phase_revoke();
    }
    if run("auto") {
        phase_auto();
    }
}

fn region(data: &std::path::Path, name: &str, port: u16, peer: &str, peer_port: u16, etcd: Option<&str>) -> Server {
    let mut opts = Opts { port: Some(port), ..Opts::default() }
        .arg("--region")
        .arg(name)
        .arg("--peer")
        .arg(format!("{peer}=http://127.0.0.1:{peer_port}"))
        .env("HOLDFAST_CLUSTER_SECRET", SECRET)
        .env("HOLDFAST_LOG", "warn");
    if let Some(url) = etcd {
        opts = opts.arg("--etcd").arg(url);
    }
    Server::start_with(data, opts)
}

fn wait_until<T>(what: &str, mut ok: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = ok() {
            return v;
        }
        assert!(started.elapsed() < BOUND, "{what} did not happen within {BOUND:?}");
        sleep(Duration::from_millis(2));
    }
}

fn control_status(api: &Api) -> Value {
    api.try_get("/v1/status?project=holdfast-control").map_or(Value::Null, |r| r.json()[0].clone())
}

/// Two regions, b following a's control journal.
fn pair(etcd: Option<&str>) -> (Server, Server, tempfile::TempDir, tempfile::TempDir) {
    let (da, db) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"));
    let (pa, pb) = (free_port(), free_port());
    let a = region(da.path(), "a", pa, "b", pb, etcd);
    let b = region(db.path(), "b", pb, "a", pa, etcd);
    let a_id = control_status(&a.admin())["project_id"].clone();
    wait_until("b following a's control journal", || {
        let s = control_status(&b.admin());
        (s["role"] == "replica" && s["project_id"] == a_id).then_some(())
    });
    (a, b, da, db)
}

fn status_of(api: &Api, path: &str) -> u16 {
    api.try_get(path).map_or(0, |r| r.status)
}

fn quantiles(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[(((p / 100.0) * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(50.0), at(99.0), samples[samples.len() - 1])
}

fn phase_auth() {
    let (a, b, _da, _db) = pair(None);
    let admin = a.admin();
    admin.create_project("app");
    admin.post("/v1/projects/app/replicas", &json!({"region": "b", "mode": "hot"})).ok(200);
    let conv = admin.post("/api/projects/app/openai/v1/conversations", &json!({})).ok(200)["id"].as_str().expect("id").to_owned();
    let key = admin.post("/v1/keys", &json!({"name": "app", "role": "ai_user", "scope": "/projects/app"})).ok(201)["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let path = format!("/api/projects/app/openai/v1/conversations/{conv}");
    let (on_a, on_b) = (a.api(Some(&key)), b.api(Some(&key)));
    wait_until("the key and the conversation at b", || (status_of(&on_b, &path) == 200).then_some(()));
    let (mut ta, mut tb) = (Vec::with_capacity(AUTH_ROUNDS), Vec::with_capacity(AUTH_ROUNDS));
    for round in 0..AUTH_ROUNDS + 200 {
        for (api, times) in [(&on_a, &mut ta), (&on_b, &mut tb)] {
            let started = Instant::now();
            let r = api.get(&path);
            let took = started.elapsed().as_secs_f64() * 1e6;
            assert_eq!(r.status, 200, "{}", r.text);
            if round >= 200 {
                times.push(took);
            }
        }
    }
    let (pa, qa, _) = quantiles(&mut ta);
    let (pb, qb, _) = quantiles(&mut tb);
    println!("auth: {AUTH_ROUNDS} authenticated reads each, alternating: primary region p50 {pa:.0} µs p99 {qa:.0} µs; hot replica's region p50 {pb:.0} µs p99 {qb:.0} µs; ratio of medians (replica / primary) {:.3} (target ≤ 1.05)", pb / pa);
}

fn phase_revoke() {
    let (a, b, _da, _db) = pair(None);
    let admin = a.admin();
    let mut took = Vec::with_capacity(REVOCATIONS);
    for n in 0..REVOCATIONS {
        let made = admin.post("/v1/keys", &json!({"name": format!("k{n}"), "role": "reader"})).ok(201);
        let on_b = b.api(made["key"].as_str());
        wait_until("the key working at b", || (status_of(&on_b, "/v1/projects") == 200).then_some(()));
        let revoked = admin.delete(&format!("/v1/keys/{}", made["key_id"].as_str().expect("id")));
        let started = Instant::now();
        assert!(revoked.status == 204 || revoked.status == 200, "{}", revoked.text);
        wait_until("the revocation at b", || (status_of(&on_b, "/v1/projects") == 401).then_some(()));
        took.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p99, max) = quantiles(&mut took);
    println!("revoke: {REVOCATIONS} keys revoked at the control primary: still working at the other region for p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (target p99 < 250 ms)");
}

fn phase_auto() {
    let mut took = Vec::with_capacity(AUTO_RUNS);
    for _ in 0..AUTO_RUNS {
        let etcd = Etcd::start();
        let (a, b, _da, _db) = pair(Some(&etcd.url()));
        wait_until("a holding the control journal's lease", || (control_status(&a.admin())["lease"]["holder"] == "a").then_some(()));
        let admin_b = b.admin();
        a.kill9();
        let started = Instant::now();
        wait_until("a key made at b", || admin_b.try_post("/v1/keys", &json!({"name": "after", "role": "reader"})).filter(|r| r.status == 201).map(|_| ()));
        took.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, _, max) = quantiles(&mut took);
    println!("auto: control-plane automatic failover over {AUTO_RUNS} runs (lease 5 s): kill -9 to the first key made at the other region p50 {p50:.0} ms, max {max:.0} ms (target < 10 s)");
}
