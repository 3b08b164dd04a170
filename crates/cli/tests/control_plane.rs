//! The control plane on the journal, with two real servers on loopback, each with its own
//! generated master key: region `a` (the first name, so the designated control primary)
//! replicates its control journal to `b`; a key, a role and a lock made in either region hold in
//! both, before and after a failover of a project and of the control plane itself. Every wait is
//! bounded.

mod common;

use common::etcd::Etcd;

use std::thread::sleep;
use std::time::{Duration, Instant};

use common::cluster::{CLUSTER_SECRET, oa};
use common::{Api, Opts, Server, free_port};
use serde_json::{Value, json};

/// A bound on every wait for the other region to see a control change; not a target
/// (docs/BENCHMARKS.md has the measured propagation).
const SETTLE: Duration = Duration::from_secs(20);
const CONTROL: &str = "holdfast-control";

/// Region `region` on `port`, knowing `peer` on `peer_port`, with a master key of its own.
fn region(data: &std::path::Path, region: &str, port: u16, peer: &str, peer_port: u16) -> Server {
    Server::start_with(data, region_opts(region, port, peer, peer_port))
}

fn region_opts(region: &str, port: u16, peer: &str, peer_port: u16) -> Opts {
    Opts { port: Some(port), ..Opts::default() }
        .arg("--region")
        .arg(region)
        .arg("--peer")
        .arg(format!("{peer}=http://127.0.0.1:{peer_port}"))
        .env("HOLDFAST_CLUSTER_SECRET", CLUSTER_SECRET)
}

fn wait_until<T>(what: &str, mut ok: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = ok() {
            return v;
        }
        assert!(started.elapsed() < SETTLE, "{what} did not happen within {SETTLE:?}");
        sleep(Duration::from_millis(50));
    }
}

/// The status of the control journal at a server.
fn control_status(api: &Api) -> Value {
    api.get(&format!("/v1/status?project={CONTROL}")).ok(200)[0].clone()
}

/// Waits until region `b` follows region `a`'s control journal.
fn joined(a: &Server, b: &Server) {
    let a_id = control_status(&a.admin())["project_id"].clone();
    wait_until("region b following region a's control journal", || {
        let s = b.admin().try_get(&format!("/v1/status?project={CONTROL}"))?;
        let s = s.json()[0].clone();
        (s["role"] == "replica" && s["project_id"] == a_id).then_some(())
    });
}

/// A delete the lock refuses, on an OpenAI-compatible route (OpenAI's error shape).
fn refused_by_lock(api: &Api, path: &str) {
    let r = api.delete(path);
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (409, Some("ScopeLocked")), "{}", r.text);
}

fn status_of(api: &Api, path: &str) -> u16 {
    api.with_timeout(Duration::from_secs(5)).try_get(path).map_or(0, |r| r.status)
}

#[test]
fn keys_roles_and_locks_hold_in_every_region_and_across_failovers() {
    let (da, db) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"));
    let (pa, pb) = (free_port(), free_port());
    let a = region(da.path(), "a", pa, "b", pb);
    let b = region(db.path(), "b", pb, "a", pa);
    joined(&a, &b);
    let (admin_a, admin_b) = (a.admin(), b.admin());

    // The project lives in a, replicated hot to b.
    admin_a.create_project("app");
    admin_a.post("/v1/projects/app/replicas", &json!({"region": "b", "mode": "hot"})).ok(200);
    let conv = admin_a.post(&oa("app", "/conversations"), &json!({})).ok(200)["id"].as_str().expect("id").to_owned();

    // A key made in a, scoped to the project, works at b's replica.
    let made = admin_a.post("/v1/keys", &json!({"name": "app", "role": "ai_user", "scope": "/projects/app"})).ok(201);
    let app_key = made["key"].as_str().expect("key").to_owned();
    let app_b = b.api(Some(&app_key));
    wait_until("a's key authenticating at b", || (status_of(&app_b, &oa("app", &format!("/conversations/{conv}"))) == 200).then_some(()));
    // It holds only its role: the control plane is not its to read.
    assert_eq!(status_of(&app_b, "/v1/keys"), 403);

    // A lock made in a refuses the delete at b once b is the project's primary.
    let lock = admin_a
        .post("/v1/locks", &json!({"scope": "/projects/app", "kind": "CanNotDelete", "data_plane": true, "notes": "prod"}))
        .ok(201);
    wait_until("a's lock listed at b", || {
        let locks = admin_b.get("/v1/locks").ok(200);
        locks["data"].as_array()?.iter().any(|l| l["id"] == lock["id"]).then_some(())
    });
    admin_a.post("/v1/projects/app/failover", &json!({"to": "b"})).ok(200);
    wait_until("b taking writes for app", || {
        let r = app_b.try_post(&oa("app", "/conversations"), &json!({}))?;
        (r.status == 200).then_some(())
    });
    refused_by_lock(&admin_b, &oa("app", &format!("/conversations/{conv}")));

    // A key made in b (committed at a, the control primary) works in a; revoked in a, it
    // stops working in b.
    let made_b = admin_b.post("/v1/keys", &json!({"name": "from-b", "role": "reader"})).ok(201);
    let key_b = made_b["key"].as_str().expect("key").to_owned();
    assert_eq!(status_of(&b.api(Some(&key_b)), "/v1/projects"), 200, "a control write made here is read here when it answers");
    wait_until("b's key authenticating at a", || (status_of(&a.api(Some(&key_b)), "/v1/projects") == 200).then_some(()));
    let revoked = admin_a.delete(&format!("/v1/keys/{}", made_b["key_id"].as_str().expect("key id")));
    assert!(revoked.status == 200 || revoked.status == 204, "revoke: {}", revoked.status);
    wait_until("the revocation reaching b", || (status_of(&b.api(Some(&key_b)), "/v1/projects") == 401).then_some(()));

    // A custom role and an identity made in a exist in b.
    admin_a
        .post("/v1/roles", &json!({"name": "auditor", "description": "reads", "actions": ["projects/read"], "not_actions": []}))
        .ok(201);
    admin_a.post("/v1/identities", &json!({"name": "pipeline"})).ok(201);
    wait_until("a's role and identity at b", || {
        let roles = admin_b.get("/v1/roles").ok(200);
        let ids = admin_b.get("/v1/identities").ok(200);
        let role = roles["data"].as_array()?.iter().any(|r| r["name"] == "auditor");
        let id = ids["data"].as_array()?.iter().any(|i| i["name"] == "pipeline");
        (role && id).then_some(())
    });

    // A project name is unique across regions: b cannot make a project a holds (and does not
    // replicate to b); a's name frees when a purges its project.
    admin_a.create_project("solo");
    let taken = admin_b.post("/v1/projects", &json!({"name": "solo"}));
    assert_eq!(taken.status, 409, "{}", taken.text);
    assert!(taken.text.contains("across regions"), "{}", taken.text);
    admin_a.delete("/v1/projects/solo");
    admin_a.delete("/v1/deleted-projects/solo");
    wait_until("the name free at b", || (admin_b.post("/v1/projects", &json!({"name": "solo"})).status == 201).then_some(()));
    admin_a.post("/v1/projects", &json!({"name": "solo"})).err(409, "conflict");

    // The control journal is not a project users can reach.
    assert_eq!(status_of(&admin_a, &oa(CONTROL, "/conversations")), 404);
    admin_a.delete(&format!("/v1/projects/{CONTROL}")).err(400, "invalid_input");
    let listed = admin_a.all_projects(100);
    assert!(listed.iter().all(|p| p["name"] != CONTROL), "{listed:?}");
    admin_a.post("/v1/projects", &json!({"name": CONTROL})).err(400, "invalid_input");

    // The control primary is lost: b takes the control plane over; keys and locks go on
    // working there, and new keys can be made.
    let control_lsn = control_status(&admin_a)["lsn"].as_u64().expect("lsn");
    wait_until("b holding all of a's control journal", || (control_status(&admin_b)["lsn"].as_u64() == Some(control_lsn)).then_some(()));
    a.kill9();
    assert_eq!(status_of(&app_b, &oa("app", &format!("/conversations/{conv}"))), 200, "b authenticates with what it applied");
    admin_b.post(&format!("/v1/projects/{CONTROL}/failover"), &json!({"to": "b", "force": true})).ok(200);
    let late = admin_b.post("/v1/keys", &json!({"name": "after", "role": "reader"})).ok(201);
    assert_eq!(status_of(&b.api(late["key"].as_str()), "/v1/projects"), 200);
    refused_by_lock(&admin_b, &oa("app", &format!("/conversations/{conv}")));
    assert_eq!(control_status(&admin_b)["role"], "primary");

    // a returns: it finds b leading the control journal at a newer epoch and follows it.
    let a = region(da.path(), "a", pa, "b", pb);
    let b_epoch = control_status(&admin_b)["epoch"].clone();
    wait_until("a following b's control journal", || {
        let s = a.admin().try_get(&format!("/v1/status?project={CONTROL}"))?.json()[0].clone();
        (s["role"] == "replica" && s["epoch"] == b_epoch).then_some(())
    });
    wait_until("the key made at b working at a", || (status_of(&a.api(late["key"].as_str()), "/v1/projects") == 200).then_some(()));
}

#[test]
fn the_control_plane_fails_over_by_itself_when_its_primary_is_lost() {
    let etcd = Etcd::start();
    let (da, db) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"));
    let (pa, pb) = (free_port(), free_port());
    let with_etcd = |o: Opts| o.arg("--etcd").arg(etcd.url());
    let a = Server::start_with(da.path(), with_etcd(region_opts("a", pa, "b", pb)));
    let b = Server::start_with(db.path(), with_etcd(region_opts("b", pb, "a", pa)));
    joined(&a, &b);
    let (admin_a, admin_b) = (a.admin(), b.admin());
    wait_until("a holding the control journal's lease", || {
        (control_status(&admin_a)["lease"]["holder"] == "a").then_some(())
    });
    let lock = admin_a.post("/v1/locks", &json!({"scope": "/", "kind": "CanNotDelete", "notes": "all"})).ok(201);
    let reader = admin_a.post("/v1/keys", &json!({"name": "reader", "role": "reader"})).ok(201);
    let reader_b = b.api(reader["key"].as_str());
    wait_until("a's key and lock at b", || {
        let locks = admin_b.get("/v1/locks").ok(200);
        let listed = locks["data"].as_array()?.iter().any(|l| l["id"] == lock["id"]);
        (listed && status_of(&reader_b, "/v1/projects") == 200).then_some(())
    });

    // The control primary dies: its lease lapses, b takes the control journal's next epoch.
    a.kill9();
    let started = Instant::now();
    let promoted = wait_until("b leading the control plane", || {
        let s = control_status(&admin_b);
        (s["role"] == "primary").then_some(s)
    });
    eprintln!("control-plane automatic failover: b took over {:?} after the control primary was killed (lease 5 s)", started.elapsed());
    assert_eq!(promoted["primary_region"], "b", "{promoted:#}");
    assert_eq!(status_of(&reader_b, "/v1/projects"), 200, "keys keep working");
    let made = admin_b.post("/v1/keys", &json!({"name": "new", "role": "reader"})).ok(201);
    assert_eq!(status_of(&b.api(made["key"].as_str()), "/v1/projects"), 200, "new keys can be made");
    let locks = admin_b.get("/v1/locks").ok(200);
    assert!(locks["data"].as_array().expect("locks").iter().any(|l| l["id"] == lock["id"]), "locks keep holding: {locks}");
}

#[test]
fn a_region_that_worked_alone_hands_what_it_made_to_the_control_plane_it_joins() {
    let (da, db) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"));
    let (pa, pb) = (free_port(), free_port());
    // b starts first and alone (a, the designated control primary, is not up): it serves, and
    // an Owner makes a lock there.
    let b = region(db.path(), "b", pb, "a", pa);
    let admin_b = b.admin();
    let lock = admin_b.post("/v1/locks", &json!({"scope": "/", "kind": "CanNotDelete", "notes": "made alone"})).ok(201);
    let b_own = control_status(&admin_b)["project_id"].clone();

    // a comes up: b joins a's control plane, and what b made alone is kept at a as a
    // divergence record of the control journal, never dropped.
    let a = region(da.path(), "a", pa, "b", pb);
    joined(&a, &b);
    let admin_a = a.admin();
    assert_ne!(control_status(&admin_b)["project_id"], b_own, "b follows a's control journal now");
    let records = admin_a.get(&format!("/v1/projects/{CONTROL}/divergences")).ok(200);
    let record = records.as_array().expect("records").iter().find(|r| r["from_region"] == "b").cloned();
    let record = record.unwrap_or_else(|| panic!("no divergence record from b: {records}"));
    let locks = admin_a.get("/v1/locks").ok(200);
    assert!(!locks["data"].as_array().expect("locks").iter().any(|l| l["id"] == lock["id"]), "not applied until replayed");

    // Replayed by an Owner, the lock is in force in both regions.
    let id = record["id"].as_str().expect("id");
    let outcomes = admin_a.post(&format!("/v1/projects/{CONTROL}/divergences/{id}/replay"), &json!({})).ok(200);
    assert!(outcomes.as_array().expect("outcomes").iter().all(|o| o["error"].is_null()), "{outcomes}");
    for admin in [&admin_a, &admin_b] {
        wait_until("the replayed lock in force", || {
            let locks = admin.get("/v1/locks").ok(200);
            locks["data"].as_array()?.iter().any(|l| l["id"] == lock["id"]).then_some(())
        });
    }
}
