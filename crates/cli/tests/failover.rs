//! Automatic failover with a real etcd (Debian's etcd-server, started on loopback by the test)
//! as the witness, and two real servers: the primary's 5 s lease lapses when it is killed or cut
//! off, the most up-to-date replica takes the next epoch, a partitioned primary fences itself
//! before that can happen (never two primaries at once), and the old primary comes back as a
//! replica with what it alone had kept as a divergence record. Every wait is bounded.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::proxy::{Mode, Proxy, loopback};
use common::cluster::{oa, region_opts};
use common::{ADMIN_KEY, Api, Server, free_port};
use serde_json::{Value, json};

/// Far above the 5 s lease plus a promotion; a bound, not a target (docs/BENCHMARKS.md has the figure).
const TAKEOVER: Duration = Duration::from_secs(30);

fn start(data: &std::path::Path, region: &str, port: u16, peer: &str, peer_url: &str, etcd: &str) -> Server {
    Server::start_with(data, region_opts(region, port, peer, peer_url).arg("--etcd").arg(etcd))
}

/// The project's status at a server; `Value::Null` when it does not answer 200.
fn status(base: &str, project: &str) -> Value {
    let r = Api::new(base, Some(ADMIN_KEY)).with_timeout(Duration::from_secs(3)).try_get(&format!("/v1/status?project={project}"));
    match r {
        Some(r) if r.status == 200 => r.json()[0].clone(),
        _ => Value::Null,
    }
}

fn wait_for(what: &str, bound: Duration, mut ok: impl FnMut() -> Option<Value>) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        if let Some(v) = ok() {
            return (v, started.elapsed());
        }
        if started.elapsed() >= bound {
            panic!("{what} did not happen within {bound:?}");
        }
        sleep(Duration::from_millis(25));
    }
}

fn write_item(api: &Api, project: &str, conv: &str, text: &str) -> Option<String> {
    let body = json!({"items": [{"role": "user", "content": text}]});
    let r = api.try_post(&oa(project, &format!("/conversations/{conv}/items")), &body)?;
    (r.status == 200).then(|| r.json()["data"][0]["id"].as_str().expect("item id").to_owned())
}

/// A replicated project whose lease region `a` holds, with one conversation.
fn replicated(a: &Server, b: &Server, project: &str) -> String {
    let api = a.admin();
    api.create_project(project);
    let conv = api.post(&oa(project, "/conversations"), &json!({})).ok(200)["id"].as_str().expect("id").to_owned();
    api.post(&format!("/v1/projects/{project}/replicas"), &json!({"region": "b", "mode": "warm"})).ok(200);
    let started = Instant::now();
    loop {
        let s = status(&a.base, project);
        if s["lease"]["holder"] == "a" {
            break;
        }
        assert!(started.elapsed() < TAKEOVER, "a never held the lease: {s:#}\n{}", a.stderr());
        sleep(Duration::from_millis(25));
    }
    let lsn = status(&a.base, project)["lsn"].clone();
    wait_for("b catches up", TAKEOVER, || (status(&b.base, project)["lsn"] == lsn).then_some(Value::Null));
    conv
}

#[test]
fn the_replica_takes_over_when_the_primarys_lease_lapses_and_failback_works() {
    let etcd = Etcd::start();
    let (da, db) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"));
    let (pa, pb) = (free_port(), free_port());
    let a = start(da.path(), "a", pa, "b", &format!("http://127.0.0.1:{pb}"), &etcd.url());
    let b = start(db.path(), "b", pb, "a", &format!("http://127.0.0.1:{pa}"), &etcd.url());
    let conv = replicated(&a, &b, "auto");
    let acked: Vec<String> = (0..10).filter_map(|i| write_item(&a.admin(), "auto", &conv, &format!("before {i}"))).collect();
    let lsn = status(&a.base, "auto")["lsn"].clone();
    wait_for("b catches up", TAKEOVER, || (status(&b.base, "auto")["lsn"] == lsn).then_some(Value::Null));

    // The primary dies; its lease lapses after 5 s; b takes epoch 2 by itself.
    assert!(!a.kill9().success());
    let (promoted, rto) = wait_for("b is promoted", TAKEOVER, || {
        let s = status(&b.base, "auto");
        (s["role"] == "primary").then_some(s)
    });
    eprintln!("automatic failover: b took over {rto:?} after the primary was killed (lease 5 s)");
    assert_eq!((promoted["epoch"].as_u64(), promoted["primary_region"].as_str()), (Some(2), Some("b")), "{promoted:#}");
    let api_b = b.admin();
    for item in &acked {
        api_b.get(&oa("auto", &format!("/conversations/{conv}/items/{item}"))).ok(200);
    }
    assert!(write_item(&api_b, "auto", &conv, "on b").is_some(), "b takes writes");
    wait_for("b holds the lease", TAKEOVER, || {
        let s = status(&b.base, "auto");
        (s["lease"]["holder"] == "b" && s["lease"]["epoch"] == 2).then_some(s)
    });

    // a returns, sees b's lease at a newer epoch, and follows b.
    let a = start(da.path(), "a", pa, "b", &format!("http://127.0.0.1:{pb}"), &etcd.url());
    let lsn_b = status(&b.base, "auto")["lsn"].clone();
    wait_for("a follows b", TAKEOVER, || {
        let s = status(&a.base, "auto");
        (s["role"] == "replica" && s["lsn"] == lsn_b).then_some(s)
    });

    // Failback: a planned failover moves the project home; the lease follows.
    let report = api_b.post("/v1/projects/auto/failover", &json!({"to": "a"})).ok(200);
    assert_eq!(report["epoch"].as_u64(), Some(3), "{report:#}");
    wait_for("a holds the lease at epoch 3", TAKEOVER, || {
        let s = status(&a.base, "auto");
        (s["role"] == "primary" && s["lease"]["holder"] == "a" && s["lease"]["epoch"] == 3).then_some(s)
    });
    assert!(write_item(&a.admin(), "auto", &conv, "home").is_some());
    // b, now a replica, does not campaign while a's lease is alive.
    sleep(Duration::from_secs(1));
    assert_eq!(status(&b.base, "auto")["role"], "replica");
}

#[test]
fn a_partitioned_primary_fences_itself_before_the_replica_takes_over() {
    let etcd = Etcd::start();
    let (da, db) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"));
    let (pa, pb) = (free_port(), free_port());
    // a reaches etcd through one proxy; b reaches a (its replication pulls) through another.
    let a_to_etcd = Proxy::start(etcd.addr());
    let b_to_a = Proxy::start(loopback(pa));
    let a = start(da.path(), "a", pa, "b", &format!("http://127.0.0.1:{pb}"), &a_to_etcd.url());
    let b = start(db.path(), "b", pb, "a", &b_to_a.url(), &etcd.url());
    let conv = replicated(&a, &b, "split");

    // Sample both regions' view and write to a continuously, from before the partition until b
    // has taken over.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stop, samples, a, b) = (stop.clone(), samples.clone(), a.base.clone(), b.base.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let (sa, sb) = (status(&a, "split"), status(&b, "split"));
                samples.lock().expect("samples").push((Instant::now(), sa["role"].clone(), sa["epoch"].clone(), sb["role"].clone(), sb["epoch"].clone()));
                sleep(Duration::from_millis(20));
            }
        })
    };
    let writer = {
        let (stop, base, conv) = (stop.clone(), a.base.clone(), conv.clone());
        std::thread::spawn(move || {
            let api = Api::new(&base, Some(ADMIN_KEY)).with_timeout(Duration::from_secs(3));
            let (mut acked, mut n) = (Vec::new(), 0);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                n += 1;
                if let Some(id) = write_item(&api, "split", &conv, &format!("w{n}")) {
                    acked.push((Instant::now(), id));
                }
                sleep(Duration::from_millis(10));
            }
            acked
        })
    };
    sleep(Duration::from_millis(300));
    a_to_etcd.partition_with(Mode::Refuse);
    b_to_a.partition_with(Mode::Refuse);
    let (_, took) = wait_for("b takes over", TAKEOVER, || {
        let s = status(&b.base, "split");
        (s["role"] == "primary").then_some(s)
    });
    eprintln!("partition: b took over {took:?} after the partition");
    sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");
    let acked = writer.join().expect("writer");
    let samples = samples.lock().expect("samples").clone();

    // Never two primaries: whenever b answered as primary, a did not.
    let both = samples.iter().filter(|(_, ra, _, rb, _)| *ra == "primary" && *rb == "primary").count();
    assert_eq!(both, 0, "both regions answered as primary in {both} samples");
    let b_primary_at = samples.iter().find(|(_, _, _, rb, _)| *rb == "primary").map(|s| s.0).expect("b became primary");
    let last_ack = acked.last().map(|(at, _)| *at).expect("a acknowledged writes before the partition");
    assert!(last_ack < b_primary_at, "a acknowledged a write after b took over");
    assert!(samples.iter().any(|(_, ra, _, _, _)| *ra == "fenced"), "a fenced itself while cut off");

    // Heal: a learns it was deposed, hands over what b lacks, and follows b.
    a_to_etcd.heal();
    b_to_a.heal();
    let lsn_b = wait_for("a follows b", TAKEOVER, || {
        let (sa, sb) = (status(&a.base, "split"), status(&b.base, "split"));
        (sa["role"] == "replica" && sa["lsn"] == sb["lsn"]).then_some(sb["lsn"].clone())
    })
    .0;
    assert!(lsn_b.as_u64().is_some());
    let api_b = b.admin();
    let records = api_b.get("/v1/projects/split/divergences").ok(200);
    let mut kept = String::new();
    for r in records.as_array().expect("records") {
        kept.push_str(&api_b.get(&format!("/v1/projects/split/divergences/{}", r["id"].as_str().expect("id"))).ok(200).to_string());
    }
    for (_, item) in &acked {
        let on_b = api_b.get(&oa("split", &format!("/conversations/{conv}/items/{item}"))).status == 200;
        assert!(on_b || kept.contains(item.as_str()), "acknowledged write {item} is on b or in a divergence record");
    }
}
