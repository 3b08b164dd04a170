//! Replication between regions, measured with real `holdfast` binaries on loopback (README
//! §Replication between regions; docs/BENCHMARKS.md has the figures and the targets):
//!
//! 1. `lag`: replication lag of a warm async replica under 200 writes/s for 15 s;
//! 2. `delay`: the same with 20 ms one-way added between the regions (b pulls from a through
//!    a fault-injecting proxy);
//! 3. `sync`: write latency at the primary with a sync replica against an async one;
//! 4. `switchover`: RTO of a planned switchover seen by a client writing continuously;
//! 5. `auto`: RTO of automatic failover (etcd witness) after `kill -9` of the primary.
//!
//! `cargo bench -p holdfast --bench replication [-- PHASE…]`. Without `--bench` in its arguments
//! (`cargo test --all-targets` runs it that way) it prints how to run it and exits at once.
//!
//! Lag is measured from the client's side only: a write's acknowledgement time at a and its LSN
//! (the response's `x-holdfast-lsn`; one sequential writer, so it is the write's own LSN), and a
//! poller reading b's `/v1/status?project=P` `lsn` every 5 ms; a write counts as applied at the
//! moment the first poll answer showing its LSN arrived. `x-holdfast-min-lsn` cannot be used
//! here: a warm replica does not wait on it (it serves nothing), so the figures are upper bounds
//! with a resolution of one poll interval plus one status request.
//!
//! Every wait is bounded; every process is started and stopped through the test harness.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, sleep};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::proxy::{Proxy, loopback};
use common::{ADMIN_KEY, Api, Opts, Server, free_port};
use serde_json::{Value, json};

const SECRET: &str = "bench-cluster-secret-0123456789";
/// Bound on every wait for a replica, a promotion or a restart.
const BOUND: Duration = Duration::from_secs(30);
const LAG_RATE: u32 = 200;
const LAG_SECS: u64 = 15;
const WARMUP: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(5);
const PROXY_DELAY: Duration = Duration::from_millis(20);
const SYNC_WRITES: usize = 500;
const SWITCHOVERS: usize = 5;
const AUTO_RUNS: usize = 3;
/// Pause of the continuous writer between attempts (and the RTO figures' resolution).
const WRITER_PAUSE: Duration = Duration::from_millis(2);

const PHASES: [&str; 5] = ["lag", "delay", "sync", "switchover", "auto"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("replication benchmark skipped: run it with `cargo bench -p holdfast --bench replication [-- {}]`", PHASES.join(" "));
        return;
    }
    let wanted: Vec<&str> = args.iter().map(String::as_str).filter(|a| PHASES.contains(a)).collect();
    let run = |phase: &str| wanted.is_empty() || wanted.contains(&phase);
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    eprintln!("binary: {} ({cores} cores)", common::bin());
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    if run("lag") {
        rows.extend(phase_lag(false));
    }
    if run("delay") {
        rows.extend(phase_lag(true));
    }
    if run("sync") {
        rows.extend(phase_sync());
    }
    if run("switchover") {
        rows.extend(phase_switchover());
    }
    if run("auto") {
        rows.extend(phase_auto());
    }
    print_table(&rows);
    println!("whole run: {:.1} s, binary {}", started.elapsed().as_secs_f64(), common::bin());
}

// ---------------------------------------------------------------------------------------------
// Results

/// One line of the table: samples in milliseconds, and a target on p99 or max.
struct Row {
    figure: String,
    samples: Vec<f64>,
    target: Option<Target>,
    note: String,
}

enum Target {
    P99Below(f64),
    MaxBelow(f64),
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| figure | n | p50 ms | p99 ms | max ms | target | met | note |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let s = sorted(&r.samples);
        let (p50, p99, max) = (percentile(&s, 50.0), percentile(&s, 99.0), s.last().copied().unwrap_or(f64::NAN));
        let (target, met) = match r.target {
            None => ("—".to_owned(), "—"),
            Some(Target::P99Below(t)) => (format!("p99 < {t} ms"), if p99 < t { "met" } else { "NOT met" }),
            Some(Target::MaxBelow(t)) => (format!("every run < {t} ms"), if max < t { "met" } else { "NOT met" }),
        };
        println!("| {} | {} | {p50:.1} | {p99:.1} | {max:.1} | {target} | {met} | {} |", r.figure, s.len(), r.note);
    }
}

// ---------------------------------------------------------------------------------------------
// Servers and requests

fn oa(project: &str, rest: &str) -> String {
    format!("/api/projects/{project}/openai/v1{rest}")
}

/// `holdfast serve --region NAME --peer PEER=URL [--etcd URL]` with the cluster secret.
fn region(data: &std::path::Path, name: &str, port: u16, peer: &str, peer_url: &str, etcd: Option<&str>) -> Server {
    let mut opts = Opts::default()
        .arg("--region")
        .arg(name)
        .arg("--peer")
        .arg(format!("{peer}={peer_url}"))
        .env("HOLDFAST_CLUSTER_SECRET", SECRET);
    if let Some(url) = etcd {
        opts = opts.arg("--etcd").arg(url);
    }
    Server::start_with(data, Opts { port: Some(port), ..opts })
}

/// Regions `a` and `b` on fresh data directories.
struct Pair {
    servers: [Option<Server>; 2],
    data: [tempfile::TempDir; 2],
    ports: [u16; 2],
    peer_urls: [String; 2],
    etcd: Option<String>,
}

const NAMES: [&str; 2] = ["a", "b"];

impl Pair {
    /// Starts a and b; with `proxy_in_front_of_a`, b knows a by a proxy's URL (b pulls through it).
    fn new(etcd: Option<String>, proxy_in_front_of_a: bool) -> (Pair, Option<Proxy>) {
        let data = [tempfile::tempdir().expect("data a"), tempfile::tempdir().expect("data b")];
        let ports = [free_port(), free_port()];
        let proxy = proxy_in_front_of_a.then(|| Proxy::start(loopback(ports[0])));
        let b_to_a = proxy.as_ref().map_or_else(|| format!("http://127.0.0.1:{}", ports[0]), Proxy::url);
        let mut pair =
            Pair { servers: [None, None], data, ports, peer_urls: [format!("http://127.0.0.1:{}", ports[1]), b_to_a], etcd };
        pair.boot(0);
        pair.boot(1);
        (pair, proxy)
    }

    /// Starts region `i` (again) on its data directory and port.
    fn boot(&mut self, i: usize) {
        let server = region(self.data[i].path(), NAMES[i], self.ports[i], NAMES[1 - i], &self.peer_urls[i], self.etcd.as_deref());
        self.servers[i] = Some(server);
    }

    fn server(&self, i: usize) -> &Server {
        self.servers[i].as_ref().expect("region is running")
    }

    fn admin(&self, i: usize) -> Api {
        self.server(i).admin()
    }

    fn base(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn kill9(&mut self, i: usize) {
        let server = self.servers[i].take().expect("region is running");
        assert!(!server.kill9().success());
    }
}

/// The project's status at a region; `Value::Null` when it does not answer 200.
fn status(api: &Api, project: &str) -> Value {
    match api.try_get(&format!("/v1/status?project={project}")) {
        Some(r) if r.status == 200 => r.json()[0].clone(),
        _ => Value::Null,
    }
}

fn wait_for<T>(what: &str, bound: Duration, mut ok: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = ok() {
            return v;
        }
        assert!(started.elapsed() < bound, "{what} did not happen within {bound:?}");
        sleep(Duration::from_millis(10));
    }
}

/// Creates `project` at a with one conversation, replicates it to b (warm, `commit`), waits until
/// b has applied a's last LSN; returns the conversation id.
fn replicated(pair: &Pair, project: &str, commit: &str) -> String {
    let (api_a, api_b) = (pair.admin(0).with_timeout(Duration::from_secs(10)), pair.admin(1).with_timeout(Duration::from_secs(10)));
    api_a.create_project(project);
    let conv = api_a.post(&oa(project, "/conversations"), &json!({})).ok(200)["id"].as_str().expect("conversation id").to_owned();
    api_a.post(&format!("/v1/projects/{project}/replicas"), &json!({"region": "b", "mode": "warm", "commit": commit})).ok(200);
    let lsn = status(&api_a, project)["lsn"].as_u64().expect("lsn at a");
    wait_for("b applies the bootstrap", BOUND, || (status(&api_b, project)["lsn"].as_u64() >= Some(lsn)).then_some(()));
    conv
}

fn item(project: &str, conv: &str) -> String {
    oa(project, &format!("/conversations/{conv}/items"))
}

fn body(n: usize) -> Value {
    json!({"items": [{"role": "user", "content": format!("benchmark write {n}")}]})
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: lag

fn phase_lag(delayed: bool) -> Vec<Row> {
    let label = if delayed { "lag, 20 ms one-way between regions" } else { "lag" };
    eprintln!("== {label}: {LAG_RATE} writes/s for {LAG_SECS} s at a, warm async replica on b, b's status polled every {POLL:?}");
    let (pair, proxy) = Pair::new(None, delayed);
    let project = if delayed { "lagdelay" } else { "lag" };
    let conv = replicated(&pair, project, "async");
    if let Some(p) = &proxy {
        p.set_delay(PROXY_DELAY);
    }

    // The poller: (answer received, b's lsn).
    let stop = Arc::new(AtomicBool::new(false));
    let polls: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let poller = {
        let (stop, polls, api_b, project) = (stop.clone(), polls.clone(), pair.admin(1).with_timeout(Duration::from_secs(5)), project.to_owned());
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                if let Some(lsn) = status(&api_b, &project)["lsn"].as_u64() {
                    polls.lock().expect("polls").push((Instant::now(), lsn));
                }
                next += POLL;
                let now = Instant::now();
                if next > now {
                    sleep(next - now);
                } else {
                    next = now;
                }
            }
        })
    };

    // The writer: open loop at LAG_RATE, one request at a time; (acknowledged, lsn).
    let api_a = pair.admin(0).with_timeout(Duration::from_secs(5));
    let interval = Duration::from_secs(1) / LAG_RATE;
    let total = WARMUP + Duration::from_secs(LAG_SECS);
    let (mut acks, mut failed, mut late) = (Vec::new(), 0usize, 0usize);
    let t0 = Instant::now();
    let path = item(project, &conv);
    for n in 0.. {
        let at = t0 + interval * n;
        if at >= t0 + total {
            break;
        }
        let now = Instant::now();
        if at > now {
            sleep(at - now);
        } else if now - at > interval {
            late += 1;
        }
        match api_a.try_post(&path, &body(n as usize)) {
            Some(r) if r.status == 200 => {
                let lsn = r.header("x-holdfast-lsn").and_then(|v| v.parse::<u64>().ok()).expect("x-holdfast-lsn on the write");
                if at >= t0 + WARMUP {
                    acks.push((Instant::now(), lsn));
                }
            }
            _ => failed += 1,
        }
    }
    let elapsed = t0.elapsed() - WARMUP;
    let last = acks.last().map_or(0, |a| a.1);
    let caught_up = Instant::now();
    let seen_all = loop {
        if polls.lock().expect("polls").last().is_some_and(|p| p.1 >= last) {
            break true;
        }
        if caught_up.elapsed() > Duration::from_secs(10) {
            break false;
        }
        sleep(POLL);
    };
    stop.store(true, Ordering::SeqCst);
    poller.join().expect("poller");
    let polls = polls.lock().expect("polls").clone();

    let mut lags = Vec::with_capacity(acks.len());
    let mut missing = 0;
    for &(acked, lsn) in &acks {
        let i = polls.partition_point(|p| p.1 < lsn);
        match polls.get(i) {
            Some(&(seen, _)) => lags.push(ms(seen.saturating_duration_since(acked))),
            None => missing += 1,
        }
    }
    let poll_gaps: Vec<f64> = polls.windows(2).map(|w| ms(w[1].0 - w[0].0)).collect();
    let gaps = sorted(&poll_gaps);
    let note = format!(
        "{} writes in {:.1} s ({:.0}/s), {failed} failed, {late} sent late, {missing} never seen applied{}; poll interval p50 {:.1} / p99 {:.1} ms",
        acks.len(),
        elapsed.as_secs_f64(),
        acks.len() as f64 / elapsed.as_secs_f64(),
        if seen_all { "" } else { " (b did not catch up within 10 s)" },
        percentile(&gaps, 50.0),
        percentile(&gaps, 99.0),
    );
    eprintln!("   {note}");
    drop(proxy);
    let target = if delayed { 300.0 } else { 250.0 };
    vec![Row { figure: format!("replication {label}"), samples: lags, target: Some(Target::P99Below(target)), note }]
}

// ---------------------------------------------------------------------------------------------
// 3: sync commit

fn phase_sync() -> Vec<Row> {
    eprintln!("== sync commit: {SYNC_WRITES} sequential writes each to a project with an async and one with a sync warm replica, alternating");
    let (pair, _) = Pair::new(None, false);
    let conv_async = replicated(&pair, "async", "async");
    let conv_sync = replicated(&pair, "sync", "sync");
    let api_a = pair.admin(0).with_timeout(Duration::from_secs(10));
    let (path_async, path_sync) = (item("async", &conv_async), item("sync", &conv_sync));
    for n in 0..20 {
        api_a.post(&path_async, &body(n)).ok(200);
        api_a.post(&path_sync, &body(n)).ok(200);
    }
    let (mut lat_async, mut lat_sync) = (Vec::new(), Vec::new());
    let mut failed = 0;
    let started = Instant::now();
    for n in 0..SYNC_WRITES {
        for (path, out) in [(&path_async, &mut lat_async), (&path_sync, &mut lat_sync)] {
            let t = Instant::now();
            let r = api_a.try_post(path, &body(n));
            let took = t.elapsed();
            match r {
                Some(r) if r.status == 200 => out.push(ms(took)),
                _ => failed += 1,
            }
        }
    }
    let (sa, ss) = (sorted(&lat_async), sorted(&lat_sync));
    let overhead = format!(
        "sync − async: p50 {:+.2} ms, p99 {:+.2} ms",
        percentile(&ss, 50.0) - percentile(&sa, 50.0),
        percentile(&ss, 99.0) - percentile(&sa, 99.0)
    );
    eprintln!("   {} s, {failed} failed; {overhead}", started.elapsed().as_secs());
    vec![
        Row { figure: "write latency at a, async replica".into(), samples: lat_async, target: None, note: format!("{failed} failed (both kinds)") },
        Row { figure: "write latency at a, sync replica".into(), samples: lat_sync, target: None, note: overhead },
    ]
}

// ---------------------------------------------------------------------------------------------
// 4 and 5: a client writing continuously, trying a, then b

/// Every acknowledged write: when the answer arrived, and which region (0 = a, 1 = b) gave it.
type Acks = Arc<Mutex<Vec<(Instant, usize)>>>;

fn continuous_writer(pair: &Pair, project: &str, conv: &str, timeout: Duration, stop: &Arc<AtomicBool>, acks: &Acks) -> JoinHandle<usize> {
    let endpoints = [Api::new(&pair.base(0), Some(ADMIN_KEY)).with_timeout(timeout), Api::new(&pair.base(1), Some(ADMIN_KEY)).with_timeout(timeout)];
    let (stop, acks, path) = (stop.clone(), acks.clone(), item(project, conv));
    std::thread::spawn(move || {
        let mut refused = 0;
        let deadline = Instant::now() + Duration::from_secs(150);
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            n += 1;
            let acked = endpoints.iter().position(|api| api.try_post(&path, &body(n)).is_some_and(|r| r.status == 200));
            match acked {
                Some(i) => acks.lock().expect("acks").push((Instant::now(), i)),
                None => refused += 1,
            }
            sleep(WRITER_PAUSE);
        }
        refused
    })
}

/// The median time between two consecutive acknowledgements over the whole phase (the client's
/// rhythm when nothing happens: an RTO includes one such interval).
fn steady_gap(acks: &Acks) -> f64 {
    let acks = acks.lock().expect("acks");
    let gaps: Vec<f64> = acks.windows(2).map(|w| ms(w[1].0 - w[0].0)).collect();
    percentile(&sorted(&gaps), 50.0)
}

/// The first write acknowledged by `region` after `since`, and the acknowledgement before it.
fn gap_after(acks: &Acks, region: usize, since: Instant, bound: Duration) -> (Instant, Option<Instant>) {
    wait_for("a write acknowledged by the new primary", bound, || {
        let acks = acks.lock().expect("acks");
        let i = acks.iter().position(|&(at, r)| r == region && at > since)?;
        Some((acks[i].0, i.checked_sub(1).map(|j| acks[j].0)))
    })
}

fn phase_switchover() -> Vec<Row> {
    eprintln!("== planned switchover: {SWITCHOVERS} switchovers back and forth under a continuous writer (a, then b)");
    let (pair, _) = Pair::new(None, false);
    let conv = replicated(&pair, "switch", "async");
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Acks = Arc::default();
    let writer = continuous_writer(&pair, "switch", &conv, Duration::from_secs(5), &stop, &acks);
    let (mut rto, mut commands) = (Vec::new(), Vec::new());
    let mut primary = 0;
    sleep(Duration::from_secs(1));
    for k in 0..SWITCHOVERS {
        let to = 1 - primary;
        let sent = Instant::now();
        let report = pair.admin(primary).with_timeout(BOUND).post("/v1/projects/switch/failover", &json!({"to": NAMES[to]})).ok(200);
        let took = sent.elapsed();
        let (first, before) = gap_after(&acks, to, sent, BOUND);
        let gap = first - before.expect("an acknowledged write before the switchover");
        eprintln!(
            "   #{k} {} → {}: command {:.0} ms, client saw no acknowledgement for {:.0} ms (epoch {})",
            NAMES[primary],
            NAMES[to],
            ms(took),
            ms(gap),
            report["epoch"]
        );
        rto.push(ms(gap));
        commands.push(ms(took));
        primary = to;
        sleep(Duration::from_millis(800));
    }
    stop.store(true, Ordering::SeqCst);
    let refused = writer.join().expect("writer");
    let n = acks.lock().expect("acks").len();
    vec![
        Row {
            figure: "planned switchover RTO (client)".into(),
            samples: rto,
            target: Some(Target::MaxBelow(2000.0)),
            note: format!("{SWITCHOVERS} switchovers; {n} writes acknowledged, {refused} refused by both; steady interval between acknowledgements {:.1} ms", steady_gap(&acks)),
        },
        Row { figure: "planned switchover command".into(), samples: commands, target: None, note: "POST …/failover, sent to the primary".into() },
    ]
}

fn phase_auto() -> Vec<Row> {
    eprintln!("== automatic failover: {AUTO_RUNS} × kill -9 of the primary under a continuous writer (a, then b); etcd witness, 5 s lease");
    let etcd = Etcd::start();
    let (mut pair, _) = Pair::new(Some(etcd.url()), false);
    let conv = replicated(&pair, "auto", "async");
    let lease_held = |pair: &Pair, i: usize| {
        let s = status(&pair.admin(i).with_timeout(Duration::from_secs(3)), "auto");
        (s["role"] == "primary" && s["lease"]["holder"] == NAMES[i]).then_some(())
    };
    wait_for("a holds the lease", BOUND, || lease_held(&pair, 0));
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Acks = Arc::default();
    let writer = continuous_writer(&pair, "auto", &conv, Duration::from_secs(2), &stop, &acks);
    let (mut rto, mut from_kill) = (Vec::new(), Vec::new());
    let mut primary = 0;
    for k in 0..AUTO_RUNS {
        sleep(Duration::from_secs(1));
        let survivor = 1 - primary;
        let killed = Instant::now();
        pair.kill9(primary);
        let (first, before) = gap_after(&acks, survivor, killed, BOUND);
        let gap = first - before.expect("an acknowledged write before the kill");
        eprintln!(
            "   #{k} kill -9 {}: {} acknowledged a write {:.0} ms after the kill; client saw no acknowledgement for {:.0} ms",
            NAMES[primary],
            NAMES[survivor],
            ms(first - killed),
            ms(gap)
        );
        rto.push(ms(gap));
        from_kill.push(ms(first - killed));
        // The old primary comes back, follows the new one; the new one holds the lease.
        pair.boot(primary);
        let back = Instant::now();
        let api = pair.admin(primary).with_timeout(Duration::from_secs(3));
        let api_new = pair.admin(survivor).with_timeout(Duration::from_secs(3));
        let target = wait_for("the new primary's status", BOUND, || status(&api_new, "auto")["lsn"].as_u64());
        wait_for("the old primary follows the new one", BOUND, || {
            let s = status(&api, "auto");
            (s["role"] == "replica" && s["lsn"].as_u64()? >= target).then_some(())
        });
        wait_for("the new primary holds the lease", BOUND, || lease_held(&pair, survivor));
        eprintln!("   {} back as a replica {:.1} s after its restart", NAMES[primary], back.elapsed().as_secs_f64());
        primary = survivor;
    }
    stop.store(true, Ordering::SeqCst);
    let refused = writer.join().expect("writer");
    vec![
        Row {
            figure: "automatic failover RTO (client)".into(),
            samples: rto,
            target: Some(Target::MaxBelow(10_000.0)),
            note: format!(
                "{AUTO_RUNS} kills; last acknowledgement before → first after; {refused} attempts refused by both; steady interval between acknowledgements {:.1} ms",
                steady_gap(&acks)
            ),
        },
        Row { figure: "automatic failover, kill → first write acknowledged".into(), samples: from_kill, target: None, note: String::new() },
    ]
}
