//! Replication between two real servers on loopback (regions `a` and `b`): a replica bootstraps
//! from a snapshot with the blobs it names, follows the journal, refuses service while warm and
//! serves reads while hot; peers without the cluster secret are refused; a planned failover
//! under a steady write load loses no acknowledged write, the old primary follows the new one,
//! and a failback moves the project home.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::cluster::{BOUNDARY, SETTLE, multipart, oa, pair, region, scripted_model, status, wait_applied};
use common::{Api, Opts, free_port};
use reqwest::Method;
use serde_json::{Value, json};

#[test]
fn replicas_follow_and_a_planned_failover_loses_no_acknowledged_write() {
    let (a, b, _da, _db) = pair();
    let (api_a, api_b) = (a.admin(), b.admin());
    let project = api_a.create_project("repl");
    let id = project["id"].as_str().expect("id").to_owned();
    let conv = api_a.post(&oa("repl", "/conversations"), &json!({"items": [{"role": "user", "content": "first"}]})).ok(200);
    let conv = conv["id"].as_str().expect("conversation id").to_owned();
    let file = api_a.send_raw(
        Method::POST,
        &oa("repl", "/files"),
        Some(&format!("multipart/form-data; boundary={BOUNDARY}")),
        multipart("notes.txt", b"bytes that must reach the replica before the change naming them"),
    );
    let file = file.ok(200)["id"].as_str().expect("file id").to_owned();

    // Bad input changes nothing: an unknown region, this server's own region.
    api_a.post("/v1/projects/repl/replicas", &json!({"region": "nowhere", "mode": "warm"})).err(400, "invalid_input");
    api_a.post("/v1/projects/repl/replicas", &json!({"region": "a", "mode": "warm"})).err(400, "invalid_input");
    let replicated = api_a.post("/v1/projects/repl/replicas", &json!({"region": "b", "mode": "warm"})).ok(200);
    assert_eq!(replicated["primary_region"], "a", "{replicated:#}");
    assert_eq!(replicated["replicas"], json!([{"region": "b", "mode": "warm", "commit": "async"}]), "{replicated:#}");

    // The replica holds the journal, and the file's bytes (a blob) before the change naming it.
    let lsn = status(&api_a, "repl")["lsn"].as_u64().expect("lsn");
    let s = wait_applied(&api_b, "repl", lsn);
    assert_eq!((s["role"].as_str(), s["replica"]["mode"].as_str()), (Some("replica"), Some("warm")), "{s:#}");
    let journal_a = api_a.journal("repl");
    let blob_files: Vec<_> = walk(&b.data.join("blobs")).into_iter().filter(|p| p.is_file()).collect();
    assert_eq!(blob_files.len(), 1, "the replica stored the file's blob: {blob_files:?}");
    // Warm: nothing served until promoted.
    let refused = api_b.get("/v1/projects/repl").err(503, "unavailable");
    assert!(refused.contains("warm replica"), "{refused}");
    // Peers must prove the cluster secret.
    let pull = format!("/internal/v1/projects/{id}/journal?after=0&region=x");
    api_b.get(&pull).err(401, "unauthenticated");
    let forged = api_a.send(Method::GET, &pull, None, &[("x-holdfast-cluster-secret", "wrong-secret-0123456789")]);
    assert_eq!(forged.status, 401, "{}", forged.text);

    // A steady write load at the primary; a writer refused there (fenced, then a replica) tries
    // the other region, as a client with both endpoints does.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, conv) = (stop.clone(), conv.clone());
        let endpoints = [Api::new(&a.base, Some(common::ADMIN_KEY)), Api::new(&b.base, Some(common::ADMIN_KEY))];
        std::thread::spawn(move || {
            let (mut acked, mut refused, mut n) = (Vec::new(), 0, 0);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                n += 1;
                let body = json!({"items": [{"role": "user", "content": format!("write {n}")}]});
                let sent = endpoints.iter().map(|api| api.post(&oa("repl", &format!("/conversations/{conv}/items")), &body)).find(|r| r.status == 200);
                match sent {
                    Some(r) => acked.push(r.json()["data"][0]["id"].as_str().expect("item id").to_owned()),
                    None => refused += 1,
                }
            }
            (acked, refused)
        })
    };
    sleep(Duration::from_millis(400));
    let started = Instant::now();
    let moved = api_a.post("/v1/projects/repl/failover", &json!({"to": "b"})).ok(200);
    let took = started.elapsed();
    sleep(Duration::from_millis(400));
    stop.store(true, Ordering::SeqCst);
    let (acked, refused) = writer.join().expect("writer");
    eprintln!("planned failover took {took:?}; {} writes acknowledged, {refused} refused by both regions", acked.len());
    assert!(acked.len() > 10, "the load ran: {}", acked.len());
    assert_eq!((moved["from_region"].as_str(), moved["to_region"].as_str(), moved["forced"].as_bool()), (Some("a"), Some("b"), Some(false)), "{moved:#}");
    assert_eq!(status(&api_a, "repl")["role"], "replica", "the old primary follows the new one");

    // Every acknowledged write is on the new primary, at the next epoch.
    let s = status(&api_b, "repl");
    assert_eq!((s["role"].as_str(), s["epoch"].as_u64()), (Some("primary"), Some(2)), "{s:#}");
    for item in &acked {
        api_b.get(&oa("repl", &format!("/conversations/{conv}/items/{item}"))).ok(200);
    }
    let content = api_b.get(&oa("repl", &format!("/files/{file}/content")));
    assert_eq!((content.status, content.text.as_str()), (200, "bytes that must reach the replica before the change naming them"));
    let project_b = api_b.get("/v1/projects/repl").ok(200);
    assert_eq!(project_b["primary_region"], "b", "{project_b:#}");
    assert_eq!(project_b["replicas"], json!([{"region": "a", "mode": "warm", "commit": "async"}]), "{project_b:#}");
    // The journal before the failover is the same in both regions (same LSNs, same changes).
    let journal_b = api_b.journal("repl");
    assert_eq!(journal_b[..journal_a.len()], journal_a[..], "replica journal equals the primary's");

    // The old primary follows; the writes go to b now and reach a.
    api_b.post(&oa("repl", &format!("/conversations/{conv}/items")), &json!({"items": [{"role": "user", "content": "after"}]})).ok(200);
    let lsn_b = status(&api_b, "repl")["lsn"].as_u64().expect("lsn");
    wait_applied(&api_a, "repl", lsn_b);
    api_a.post(&oa("repl", &format!("/conversations/{conv}/items")), &json!({"items": [{"role": "user", "content": "x"}]}));
    assert_eq!(api_a.get("/v1/projects/repl").status, 503, "a warm replica again");

    // Failback.
    let back = api_b.post("/v1/projects/repl/failover", &json!({"to": "a"})).ok(200);
    assert_eq!(back["epoch"].as_u64(), Some(3), "{back:#}");
    assert_eq!(status(&api_b, "repl")["role"], "replica");
    let s = status(&api_a, "repl");
    assert_eq!((s["role"].as_str(), s["epoch"].as_u64(), s["primary_region"].as_str()), (Some("primary"), Some(3), Some("a")), "{s:#}");
    api_a.post(&oa("repl", &format!("/conversations/{conv}/items")), &json!({"items": [{"role": "user", "content": "home"}]})).ok(200);

    // A failover to a region without a replica changes nothing.
    api_a.post("/v1/projects/repl/failover", &json!({"to": "c"})).err(400, "invalid_input");
    assert_eq!(status(&api_a, "repl")["role"], "primary");
}

#[test]
fn a_hot_replica_serves_reads_and_resumes_after_a_restart() {
    let (a, b, _da, db) = pair();
    let (api_a, api_b) = (a.admin(), b.admin());
    api_a.create_project("hot");
    let conv = api_a.post(&oa("hot", "/conversations"), &json!({"items": [{"role": "user", "content": "one"}]})).ok(200);
    let conv = conv["id"].as_str().expect("conversation id").to_owned();
    api_a.post("/v1/projects/hot/replicas", &json!({"region": "b", "mode": "hot"})).ok(200);
    let lsn = status(&api_a, "hot")["lsn"].as_u64().expect("lsn");
    wait_applied(&api_b, "hot", lsn);
    // Reads are served from b's copy; a write sent to b is forwarded to the primary.
    api_b.get(&oa("hot", &format!("/conversations/{conv}"))).ok(200);
    let write = api_b.post(&oa("hot", &format!("/conversations/{conv}/items")), &json!({"items": [{"role": "user", "content": "x"}]}));
    let item = write.ok(200)["data"][0]["id"].as_str().expect("item id").to_owned();
    api_a.get(&oa("hot", &format!("/conversations/{conv}/items/{item}"))).ok(200);

    // The replica is killed; the primary keeps writing; the restarted replica resumes from its
    // own last LSN and catches up with no gap and no duplicate.
    let b_port = b.port;
    assert!(!b.kill9().success());
    for i in 0..20 {
        api_a.post(&oa("hot", &format!("/conversations/{conv}/items")), &json!({"items": [{"role": "user", "content": format!("m{i}")}]})).ok(200);
    }
    let b = region(db.path(), "b", b_port, "a", a.port, &|o| o);
    let api_b = b.admin();
    let lsn = status(&api_a, "hot")["lsn"].as_u64().expect("lsn");
    wait_applied(&api_b, "hot", lsn);
    assert_eq!(api_b.journal("hot"), api_a.journal("hot"), "the same journal in both regions");
    let primary_view = status(&api_a, "hot");
    assert_eq!(primary_view["replicas"][0]["applied_lsn"].as_u64(), Some(lsn), "{primary_view:#}");
    // The readiness review sees the caught-up replica in the primary's region.
    let review = api_a.get("/v1/check?project=hot").ok(200);
    let replica = review[0]["findings"].as_array().expect("findings").iter().find(|f| f["check"] == "replica").expect("replica finding").clone();
    assert_eq!(replica["status"], "pass", "{review:#}");

    // Unreplicate removes b's copy.
    api_a.delete("/v1/projects/hot/replicas/b").ok(200);
    api_b.get("/v1/projects/hot").err(404, "not_found");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}


/// Writes `n` items to `conv` through `api`; returns the ids of those acknowledged.
fn write_items(api: &Api, project: &str, conv: &str, tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .filter_map(|i| {
            let body = json!({"items": [{"role": "user", "content": format!("{tag} {i}")}]});
            let r = api.post(&oa(project, &format!("/conversations/{conv}/items")), &body);
            (r.status == 200).then(|| r.json()["data"][0]["id"].as_str().expect("item id").to_owned())
        })
        .collect()
}

#[test]
fn a_forced_failover_keeps_the_lost_primarys_unreplicated_writes_as_a_divergence_record() {
    let (a, b, da, _db) = pair();
    let (api_a, api_b) = (a.admin(), b.admin());
    let (a_port, b_port) = (a.port, b.port);
    api_a.create_project("lost");
    let conv = api_a.post(&oa("lost", "/conversations"), &json!({})).ok(200)["id"].as_str().expect("id").to_owned();
    api_a.post("/v1/projects/lost/replicas", &json!({"region": "b", "mode": "warm"})).ok(200);
    let replicated = write_items(&api_a, "lost", &conv, "replicated", 20);
    let lsn = status(&api_a, "lost")["lsn"].as_u64().expect("lsn");
    wait_applied(&api_b, "lost", lsn);

    // b stops pulling (SIGSTOP); a acknowledges more writes (async commit), then dies.
    common::send_signal(b.pid(), "STOP");
    let unreplicated = write_items(&api_a, "lost", &conv, "unreplicated", 15);
    assert_eq!(unreplicated.len(), 15);
    let lsn_a = status(&api_a, "lost")["lsn"].as_u64().expect("lsn");
    assert!(!a.kill9().success());
    common::send_signal(b.pid(), "CONT");

    // A forced failover must be sent to the target region; b promotes what it has.
    let report = api_b.post("/v1/projects/lost/failover", &json!({"to": "b", "force": true})).ok(200);
    assert_eq!((report["forced"].as_bool(), report["epoch"].as_u64()), (Some(true), Some(2)), "{report:#}");
    // A pull answered before the pause may still land: b has at least what it had.
    let applied = report["last_applied_lsn"].as_u64().expect("last applied");
    assert!((lsn..lsn_a).contains(&applied), "b had {applied}; a had {lsn_a}: {report:#}");
    assert!(report["message"].as_str().expect("message").contains("divergence"), "{report:#}");
    let after = write_items(&api_b, "lost", &conv, "after", 5);
    assert_eq!(after.len(), 5, "b takes writes at epoch 2");

    // a returns, learns it was deposed, hands over its unreplicated tail and follows b.
    let a = region(da.path(), "a", a_port, "b", b_port, &|o| o);
    let api_a = a.admin();
    let deadline = Instant::now() + SETTLE;
    let lsn_b = loop {
        // While a sets its copy aside and fetches b's, its status may answer 404 for a moment.
        let sa = api_a.get("/v1/status?project=lost").json()[0].clone();
        let sb = status(&api_b, "lost");
        if (sa["role"] == "replica" && sa["lsn"] == sb["lsn"]) || Instant::now() > deadline {
            assert_eq!((sa["role"].as_str(), &sa["lsn"]), (Some("replica"), &sb["lsn"]), "a follows b: {sa:#} {sb:#}");
            break sb["lsn"].as_u64().expect("lsn");
        }
        sleep(Duration::from_millis(50));
    };
    assert_eq!(api_b.journal("lost").len() as u64, lsn_b);
    let records = api_b.get("/v1/projects/lost/divergences").ok(200);
    let records = records.as_array().expect("records").clone();
    assert_eq!(records.len(), 1, "{records:#?}");
    let id = records[0]["id"].as_str().expect("record id").to_owned();
    assert_eq!((records[0]["from_region"].as_str(), records[0]["count"].as_u64()), (Some("a"), Some(lsn_a - applied)), "a had {lsn_a}, b {applied}: {records:#?}");
    let shown = api_b.get(&format!("/v1/projects/lost/divergences/{id}")).ok(200).to_string();

    // Every acknowledged write is on the new primary or in the record; none silently lost.
    for item in replicated.iter().chain(&after) {
        api_b.get(&oa("lost", &format!("/conversations/{conv}/items/{item}"))).ok(200);
    }
    let mut diverged = 0;
    for item in &unreplicated {
        let on_b = api_b.get(&oa("lost", &format!("/conversations/{conv}/items/{item}"))).status == 200;
        assert!(on_b != shown.contains(item.as_str()), "{item} is on b or in the divergence record, once");
        diverged += usize::from(!on_b);
    }
    assert_eq!(diverged as u64, lsn_a - applied, "one divergent change per write b lacks");

    // Replaying the record brings them onto b, as new changes; a second replay has nothing left.
    api_b.post(&format!("/v1/projects/lost/divergences/{id}/replay"), &json!({"lsns": [999_999]})).err(400, "invalid_input");
    let outcomes = api_b.post(&format!("/v1/projects/lost/divergences/{id}/replay"), &json!({})).ok(200);
    assert_eq!(outcomes.as_array().expect("outcomes").len(), diverged, "{outcomes:#}");
    assert!(outcomes.as_array().expect("outcomes").iter().all(|o| o["error"].is_null()), "{outcomes:#}");
    for item in &unreplicated {
        api_b.get(&oa("lost", &format!("/conversations/{conv}/items/{item}"))).ok(200);
    }
    let again = api_b.post(&format!("/v1/projects/lost/divergences/{id}/replay"), &json!({})).ok(200);
    assert_eq!(again, json!([]));
}

#[test]
fn with_sync_commit_a_killed_primary_loses_no_acknowledged_write_and_sync_resumes_when_it_returns() {
    let (a, b, da, _db) = pair();
    let (a_port, b_port) = (a.port, b.port);
    let (api_a, api_b) = (a.admin(), b.admin());
    api_a.create_project("sync");
    let conv = api_a.post(&oa("sync", "/conversations"), &json!({})).ok(200)["id"].as_str().expect("id").to_owned();
    api_a.post("/v1/projects/sync/replicas", &json!({"region": "b", "mode": "hot", "commit": "sync"})).ok(200);
    let lsn = status(&api_a, "sync")["lsn"].as_u64().expect("lsn");
    wait_applied(&api_b, "sync", lsn);

    // A steady write load; the primary is killed under it.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, conv) = (stop.clone(), conv.clone());
        let url = format!("{}{}", a.base, oa("sync", &format!("/conversations/{conv}/items")));
        std::thread::spawn(move || {
            // A plain client: once the primary is killed, requests fail to connect.
            let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
            let mut acked = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                n += 1;
                let body = json!({"items": [{"role": "user", "content": format!("sync {n}")}]});
                let sent = http.post(&url).bearer_auth(common::ADMIN_KEY).json(&body).send();
                if let Ok(r) = sent
                    && r.status().as_u16() == 200
                {
                    let v: Value = r.json().expect("json");
                    acked.push(v["data"][0]["id"].as_str().expect("item id").to_owned());
                }
            }
            acked
        })
    };
    sleep(Duration::from_millis(500));
    assert!(!a.kill9().success());
    stop.store(true, Ordering::SeqCst);
    let acked = writer.join().expect("writer");
    assert!(acked.len() > 5, "the load ran: {}", acked.len());

    let report = api_b.post("/v1/projects/sync/failover", &json!({"to": "b", "force": true})).ok(200);
    assert_eq!(report["epoch"].as_u64(), Some(2), "{report:#}");
    for item in &acked {
        api_b.get(&oa("sync", &format!("/conversations/{conv}/items/{item}"))).ok(200);
    }

    // The lost region no longer gates writes: the new primary takes them, and says it is not
    // synchronously protected (it used to answer 503 until the dead region came back).
    let items = oa("sync", &format!("/conversations/{conv}/items"));
    api_b.post(&items, &json!({"items": [{"role": "user", "content": "after the loss"}]})).ok(200);
    let lost = status(&api_b, "sync")["replicas"].as_array().expect("replicas").iter().find(|r| r["region"] == "a").cloned().expect("a listed");
    assert_eq!(lost["commit"], "sync", "{lost:#}");
    assert!(lost["sync_suspended_since"].is_string(), "{lost:#}");

    // a returns, steps down, catches up: sync commit applies again, by itself.
    let a = region(da.path(), "a", a_port, "b", b_port, &|o| o);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&api_b, "sync");
        let back = s["replicas"].as_array().expect("replicas").iter().find(|r| r["region"] == "a").cloned().expect("a listed");
        if back.get("sync_suspended_since").is_none_or(Value::is_null) {
            break;
        }
        assert!(Instant::now() < deadline, "sync commit never resumed: {s:#}");
        sleep(Duration::from_millis(100));
    }
    let written = api_b.post(&items, &json!({"items": [{"role": "user", "content": "protected again"}]})).ok(200);
    let item = written["data"][0]["id"].as_str().expect("item id").to_owned();
    // A sync write is acknowledged only once a has it.
    wait_applied(&a.admin(), "sync", status(&api_b, "sync")["lsn"].as_u64().expect("lsn"));
    a.admin().get(&format!("{items}/{item}")).ok(200);
}


#[test]
fn a_failover_runs_background_responses_again_and_fails_foreground_ones_for_resubmit() {
    let (a, b, _da, _db) = pair();
    let (api_a, api_b) = (a.admin(), b.admin());
    // The first two calls never finish (the model is still thinking when the region is lost).
    let model = scripted_model(|n| (n > 1).then(|| vec!["answered"]), Duration::ZERO);
    api_a.create_project("work");
    let target = format!("http://127.0.0.1:{model}/v1");
    api_a.post("/v1/projects/work/connections", &json!({"name": "up", "type": "openai", "target": target, "api_key": "sk-fake-0123456789"})).ok(201);
    api_a.post("/v1/projects/work/deployments", &json!({"name": "dep", "connection": "up", "model": "fake"})).ok(201);
    api_a.post("/v1/projects/work/replicas", &json!({"region": "b", "mode": "warm"})).ok(200);
    let running = api_a.post(&oa("work", "/responses"), &json!({"model": "dep", "input": "think hard", "background": true})).ok(200);
    let background = running["id"].as_str().expect("response id").to_owned();
    assert_eq!(running["status"], "in_progress", "{running:#}");
    // A foreground (streamed) response, its client waiting.
    let streaming = {
        let api = api_a.with_timeout(Duration::from_secs(60));
        std::thread::spawn(move || api.post(&oa("work", "/responses"), &json!({"model": "dep", "input": "stream it", "stream": true})).status)
    };
    let foreground = wait_for_response(&api_a, "work", false);
    let lsn = status(&api_a, "work")["lsn"].as_u64().expect("lsn");
    wait_applied(&api_b, "work", lsn);

    api_a.post("/v1/projects/work/failover", &json!({"to": "b"})).ok(200);
    // The background one runs again at the new primary, under its own id, to its end.
    let done = common::cluster::response_when_done(&api_b, "work", &background);
    assert_eq!(done["status"], "completed", "{done:#}");
    assert!(done.to_string().contains("answered"), "{done:#}");
    assert_eq!(done["holdfast"]["resumed"]["region"], "b", "{done:#}");
    assert_eq!(done["created_at"], running["created_at"]);

    // The foreground one failed with region_failover; resubmit runs it again, once.
    let failed = api_b.get(&oa("work", &format!("/responses/{foreground}"))).ok(200);
    assert_eq!((failed["status"].as_str(), failed["error"]["code"].as_str()), (Some("failed"), Some("region_failover")), "{failed:#}");
    let resubmitted = api_b.post("/v1/projects/work/resubmit", &json!({})).ok(200);
    assert_eq!(resubmitted.as_array().map(Vec::len), Some(1), "{resubmitted:#}");
    let new = resubmitted[0]["resubmitted_as"].as_str().expect("new id").to_owned();
    let done = common::cluster::response_when_done(&api_b, "work", &new);
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(api_b.get(&oa("work", &format!("/responses/{foreground}"))).ok(200)["resubmitted_as"], new.as_str());
    assert_eq!(api_b.post("/v1/projects/work/resubmit", &json!({})).ok(200), json!([]), "each runs again once");
    let _ = streaming.join();
}

/// The id of the project's first stored response of that `background` setting (bounded wait).
fn wait_for_response(api: &common::Api, project: &str, background: bool) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let found = api.journal(project).iter().flat_map(|c| c["ops"].as_array().cloned().unwrap_or_default()).find_map(|op| {
            (op["kind"] == "response" && op["type"] == "put" && op["body"]["background"] == background)
                .then(|| op["id"].as_str().unwrap_or_default().to_owned())
        });
        if let Some(id) = found {
            return id;
        }
        assert!(Instant::now() < deadline, "no response with background = {background} journaled");
        sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_sync_write_the_replica_does_not_confirm_fails_unless_fallback_is_on() {
    let (da, db) = (tempfile::tempdir().expect("data a"), tempfile::tempdir().expect("data b"));
    let (pa, pb) = (free_port(), free_port());
    let config = "listen = \"127.0.0.1:{port}\"\n[replication]\nsync_timeout_ms = 300\n".to_owned();
    let with_config = |o: Opts| Opts { config: Some(config.clone()), ..o };
    let a = region(da.path(), "a", pa, "b", pb, &with_config);
    let b = region(db.path(), "b", pb, "a", pa, &with_config);
    let api_a = a.admin();
    api_a.create_project("strict");
    let conv = api_a.post(&oa("strict", "/conversations"), &json!({})).ok(200)["id"].as_str().expect("id").to_owned();
    // sync_fallback without sync commit is refused.
    api_a.post("/v1/projects/strict/replicas", &json!({"region": "b", "mode": "warm", "sync_fallback": true})).err(400, "invalid_input");
    api_a.post("/v1/projects/strict/replicas", &json!({"region": "b", "mode": "warm", "commit": "sync"})).ok(200);
    assert_eq!(write_items(&api_a, "strict", &conv, "confirmed", 3).len(), 3, "the replica confirms");

    // The replica stops answering: a sync write is not acknowledged.
    common::send_signal(b.pid(), "STOP");
    let body = json!({"items": [{"role": "user", "content": "unconfirmed"}]});
    let refused = api_a.post(&oa("strict", &format!("/conversations/{conv}/items")), &body);
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(refused.text.contains("did not confirm"), "{}", refused.text);
    // It is committed, and the answer says so, with its LSN: a blind retry would write it twice.
    assert_eq!(refused.header("x-holdfast-committed").as_deref(), Some("true"), "{:?}", refused.headers);
    let committed: u64 = refused.header("x-holdfast-committed-lsn").expect("committed LSN").parse().expect("a number");
    let change = api_a.get(&format!("/v1/projects/strict/journal?after={}&limit=1", committed - 1)).ok(200);
    assert!(change["changes"][0].to_string().contains("unconfirmed"), "the change named is the write: {change}");
    common::send_signal(b.pid(), "CONT");

    // With the fallback on, the same outage acknowledges the write as async.
    api_a.post("/v1/projects/strict/replicas", &json!({"region": "b", "mode": "warm", "commit": "sync", "sync_fallback": true})).ok(200);
    common::send_signal(b.pid(), "STOP");
    let accepted = api_a.post(&oa("strict", &format!("/conversations/{conv}/items")), &body);
    common::send_signal(b.pid(), "CONT");
    assert_eq!(accepted.status, 200, "{}", accepted.text);
    let metrics = api_a.get("/metrics").text;
    assert!(metrics.contains("holdfast_sync_fallbacks_total"), "the fallback is counted");
}

#[test]
fn with_three_regions_the_other_replica_follows_the_new_primary() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("data")).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let names = ["a", "b", "c"];
    let servers: Vec<_> = (0..3)
        .map(|i| {
            let (j, k) = ((i + 1) % 3, (i + 2) % 3);
            let opts = common::cluster::region_opts(names[i], ports[i], names[j], &format!("http://127.0.0.1:{}", ports[j]))
                .arg("--peer")
                .arg(format!("{}=http://127.0.0.1:{}", names[k], ports[k]));
            common::Server::start_with(dirs[i].path(), opts)
        })
        .collect();
    let apis: Vec<_> = servers.iter().map(common::Server::admin).collect();
    apis[0].create_project("tri");
    let conv = apis[0].post(&oa("tri", "/conversations"), &json!({})).ok(200)["id"].as_str().expect("id").to_owned();
    for region in ["b", "c"] {
        apis[0].post("/v1/projects/tri/replicas", &json!({"region": region, "mode": "warm"})).ok(200);
    }
    let lsn = status(&apis[0], "tri")["lsn"].as_u64().expect("lsn");
    wait_applied(&apis[1], "tri", lsn);
    wait_applied(&apis[2], "tri", lsn);

    apis[0].post("/v1/projects/tri/failover", &json!({"to": "b"})).ok(200);
    let item = apis[1].post(&oa("tri", &format!("/conversations/{conv}/items")), &json!({"items": [{"role": "user", "content": "on b"}]}));
    assert_eq!(item.status, 200, "{}", item.text);
    let lsn_b = status(&apis[1], "tri")["lsn"].as_u64().expect("lsn");
    // c learns of the new primary from the promotion change and pulls from b from then on.
    let s = wait_applied(&apis[2], "tri", lsn_b);
    assert_eq!(s["replica"]["source_region"], "b", "{s:#}");
    // a, deposed by the planned failover, follows b too.
    let s = wait_applied(&apis[0], "tri", lsn_b);
    assert_eq!(s["replica"]["source_region"], "b", "{s:#}");
}

#[test]
fn a_planned_failover_to_a_silent_target_stays_fenced_until_the_target_answers() {
    let (a, b, _da, db) = pair();
    let (api_a, api_b) = (a.admin(), b.admin());
    api_a.create_project("unsure");
    let conv = api_a.post(&oa("unsure", "/conversations"), &json!({})).ok(200)["id"].as_str().expect("id").to_owned();
    api_a.post("/v1/projects/unsure/replicas", &json!({"region": "b", "mode": "warm"})).ok(200);
    let lsn = status(&api_a, "unsure")["lsn"].as_u64().expect("lsn");
    wait_applied(&api_b, "unsure", lsn);

    // The target is gone when the failover asks it: nobody knows whether it took over, so a
    // takes no writes (two primaries are worse than none)…
    let (a_port, b_port) = (a.port, b.port);
    assert!(!b.kill9().success());
    let refused = api_a.post("/v1/projects/unsure/failover", &json!({"to": "b"})).err(503, "unavailable");
    assert!(refused.contains("stays fenced"), "{refused}");
    assert_eq!(status(&api_a, "unsure")["role"], "fenced");
    let write = json!({"items": [{"role": "user", "content": "while unsure"}]});
    assert_eq!(api_a.post(&oa("unsure", &format!("/conversations/{conv}/items")), &write).status, 503);

    // …until the target answers that it did not: a takes writes again, b goes on following.
    let b = region(db.path(), "b", b_port, "a", a_port, &|o| o);
    let deadline = Instant::now() + SETTLE;
    while status(&api_a, "unsure")["role"] != "primary" {
        assert!(Instant::now() < deadline, "a never unfenced: {:#}", status(&api_a, "unsure"));
        sleep(Duration::from_millis(50));
    }
    api_a.post(&oa("unsure", &format!("/conversations/{conv}/items")), &write).ok(200);
    let lsn = status(&api_a, "unsure")["lsn"].as_u64().expect("lsn");
    let s = wait_applied(&b.admin(), "unsure", lsn);
    assert_eq!(s["role"], "replica", "{s:#}");
}
