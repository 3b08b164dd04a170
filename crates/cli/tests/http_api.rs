//! The control-plane HTTP API of a real `holdfast serve`: projects, info, OpenAPI, metrics and
//! the journal.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Opts, Server, now_us};
use reqwest::Method;
use serde_json::{Value, json};

fn names(projects: &[Value]) -> Vec<String> {
    projects.iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn projects_create_list_page_get_update_delete() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let api = server.admin();

    // Empty to begin with.
    let page = api.get("/v1/projects").ok(200);
    assert_eq!(page, json!({ "data": [], "has_more": false, "next_after": null }));

    // Create with every field, and four more with defaults (out of name order).
    let created = api
        .post(
            "/v1/projects",
            &json!({ "name": "alpha", "display_name": "Alpha One", "description": "first", "tags": { "env": "prod", "team": "ml" } }),
        )
        .ok(201);
    assert_eq!(created["name"], "alpha");
    assert_eq!(created["display_name"], "Alpha One");
    assert_eq!(created["description"], "first");
    assert_eq!(created["tags"], json!({ "env": "prod", "team": "ml" }));
    assert_eq!(created["lsn"], 1);
    assert_eq!(created["epoch"], 1);
    assert_eq!(created["created_at"], created["updated_at"]);
    let alpha_id = created["id"].as_str().unwrap().to_owned();
    assert!(alpha_id.starts_with("proj_"), "{alpha_id}");
    for name in ["echo", "bravo", "delta", "charlie"] {
        let p = api.create_project(name);
        assert_eq!(p["display_name"], name, "display name defaults to the name");
        assert_eq!(p["description"], "");
        assert_eq!(p["tags"], json!({}));
    }

    // Paging: limit 2 over 5 projects gives 2 + 2 + 1, in name order, linked by next_after.
    let p1 = api.get("/v1/projects?limit=2").ok(200);
    assert_eq!(names(p1["data"].as_array().unwrap()), ["alpha", "bravo"]);
    assert_eq!(p1["has_more"], true);
    assert_eq!(p1["next_after"], "bravo");
    let p2 = api.get("/v1/projects?limit=2&after=bravo").ok(200);
    assert_eq!(names(p2["data"].as_array().unwrap()), ["charlie", "delta"]);
    assert_eq!(p2["has_more"], true);
    assert_eq!(p2["next_after"], "delta");
    let p3 = api.get("/v1/projects?limit=2&after=delta").ok(200);
    assert_eq!(names(p3["data"].as_array().unwrap()), ["echo"]);
    assert_eq!(p3["has_more"], false);
    assert_eq!(p3["next_after"], Value::Null);
    // An exact fit: the last full page says there is no more.
    let p = api.get("/v1/projects?limit=5").ok(200);
    assert_eq!(p["data"].as_array().unwrap().len(), 5);
    assert_eq!(p["has_more"], false);
    assert_eq!(p["next_after"], Value::Null);
    assert_eq!(names(&api.all_projects(3)), ["alpha", "bravo", "charlie", "delta", "echo"]);
    assert_eq!(names(&api.all_projects(1)), ["alpha", "bravo", "charlie", "delta", "echo"]);

    // Get by name and by id: the same project.
    let by_name = api.get("/v1/projects/alpha").ok(200);
    let by_id = api.get(&format!("/v1/projects/{alpha_id}")).ok(200);
    assert_eq!(by_name, created);
    assert_eq!(by_id, created);

    // PATCH: change display name, set one tag, remove another with null; absent fields stay.
    let updated = api
        .patch("/v1/projects/alpha", &json!({ "display_name": "Alpha 1", "tags": { "team": null, "tier": "gold" } }))
        .ok(200);
    assert_eq!(updated["display_name"], "Alpha 1");
    assert_eq!(updated["description"], "first");
    assert_eq!(updated["tags"], json!({ "env": "prod", "tier": "gold" }));
    assert_eq!(updated["lsn"], 2);
    assert_eq!(updated["created_at"], created["created_at"]);
    assert!(updated["updated_at"].as_str().unwrap() >= created["updated_at"].as_str().unwrap());
    // PATCH by id, and removal of a tag that does not exist is a no-op.
    let updated2 = api
        .patch(&format!("/v1/projects/{alpha_id}"), &json!({ "description": "changed", "tags": { "nope": null } }))
        .ok(200);
    assert_eq!(updated2["description"], "changed");
    assert_eq!(updated2["tags"], json!({ "env": "prod", "tier": "gold" }));
    assert_eq!(updated2["lsn"], 3);
    // A PATCH that changes nothing is not journaled.
    let same =
        api.patch("/v1/projects/alpha", &json!({ "display_name": "Alpha 1", "tags": { "env": "prod" } })).ok(200);
    assert_eq!(same["lsn"], 3);
    assert_eq!(api.get("/v1/projects/alpha").ok(200), same);

    // Delete: 204, then 404 by name and by id, gone from the list, everything else untouched.
    let r = api.delete("/v1/projects/alpha");
    assert_eq!(r.status, 204, "{}", r.text);
    api.get("/v1/projects/alpha").err(404, "not_found");
    api.get(&format!("/v1/projects/{alpha_id}")).err(404, "not_found");
    api.patch("/v1/projects/alpha", &json!({ "description": "x" })).err(404, "not_found");
    api.delete("/v1/projects/alpha").err(404, "not_found");
    api.get("/v1/projects/alpha/journal").err(404, "not_found");
    assert_eq!(names(&api.all_projects(100)), ["bravo", "charlie", "delta", "echo"]);
    // Soft-deleted: listed as deleted and holding its name, until the purge.
    let deleted = api.get("/v1/deleted-projects").ok(200);
    assert_eq!(deleted["data"][0]["id"], alpha_id.as_str(), "{deleted}");
    api.post("/v1/projects", &json!({ "name": "alpha" })).err(409, "conflict");
    api.delete("/v1/deleted-projects/alpha").ok(204);
    api.delete("/v1/deleted-projects/alpha").err(404, "not_found");

    // After the purge the name is reusable; the new project has a new id and a fresh journal.
    let again = api.create_project("alpha");
    assert_ne!(again["id"].as_str().unwrap(), alpha_id);
    assert_eq!(again["lsn"], 1);
    assert_eq!(again["description"], "");
    assert_eq!(api.journal("alpha").len(), 1);
    api.get(&format!("/v1/projects/{alpha_id}")).err(404, "not_found");
    assert_eq!(names(&api.all_projects(2)), ["alpha", "bravo", "charlie", "delta", "echo"]);
}

#[test]
fn info_shows_the_region() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(data.path(), Opts::default().arg("--region").arg("eu-west-7"));
    let info = server.admin().get("/v1/info").ok(200);
    assert_eq!(info["region"], "eu-west-7");
    assert_eq!(info["name"], "holdfast");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["journal_format"], 1);
    // /v1/info needs a key; the operations endpoints do not.
    server.api(None).get("/v1/info").err(401, "unauthenticated");
    let api = server.api(None);
    assert_eq!(api.get("/healthz").ok_text(200), "ok");
    assert_eq!(api.get("/readyz").ok_text(200), "ready");
}

trait OkText {
    fn ok_text(&self, status: u16) -> String;
}

impl OkText for common::Resp {
    fn ok_text(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text);
        self.text.clone()
    }
}

/// Fills `{param}` segments of an OpenAPI path with values that name nothing.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg {
            "{project}" => "no-such-project",
            "{id}" => "key_00000000000000000000000000",
            s if s.starts_with('{') => "x-unknown",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn openapi_lists_every_route_and_every_listed_route_answers() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let anon = server.api(None);
    let spec = anon.get("/openapi.json").ok(200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."), "{}", spec["openapi"]);
    let paths = spec["paths"].as_object().expect("paths");

    let mut listed: BTreeSet<(String, String)> = BTreeSet::new();
    for (path, item) in paths {
        for method in ["get", "post", "put", "patch", "delete", "head", "options", "trace"] {
            if item.get(method).is_some() {
                listed.insert((path.clone(), method.to_owned()));
            }
        }
    }
    let expected = [
        ("/v1/projects", "get"),
        ("/v1/projects", "post"),
        ("/v1/projects/{project}", "get"),
        ("/v1/projects/{project}", "patch"),
        ("/v1/projects/{project}", "delete"),
        ("/v1/projects/{project}/journal", "get"),
        ("/v1/keys", "get"),
        ("/v1/keys", "post"),
        ("/v1/keys/{id}", "delete"),
        ("/v1/info", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ];
    for (path, method) in expected {
        assert!(
            listed.contains(&(path.to_owned(), method.to_owned())),
            "{method} {path} missing from the spec: {listed:?}"
        );
    }

    // Every (path, method) in the spec is routed: no "no route" 404 and no 405.
    let admin = server.admin();
    for (path, method) in &listed {
        let url = concrete(path);
        // A 5xx is a failure unless the route documents it as its answer (MLflow's multipart
        // and OTLP routes answer 501 NOT_IMPLEMENTED, on which the client falls back).
        let documented_501 = paths[path][method.as_str()]["responses"].get("501").is_some();
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let body = matches!(method, Method::POST | Method::PATCH | Method::PUT).then(|| json!({}));
        let r = admin.send(method.clone(), &url, body.as_ref(), &[]);
        assert_ne!(r.status, 405, "{method} {url} (spec {path}) is not allowed: {}", r.text);
        assert!(r.status < 500 || (r.status == 501 && documented_501), "{method} {url}: {} {}", r.status, r.text);
        if r.status == 404 {
            // Facades differ in error shape: error.message (Holdfast's, OpenAI's) or MLflow's
            // top-level message; only the fallback says "no route" (ENDPOINT_NOT_FOUND in MLflow's).
            let body = r.json();
            let message = body["error"]["message"].as_str().or(body["message"].as_str()).unwrap_or_else(|| panic!("{method} {url}: {body}"));
            assert!(!message.starts_with("no route"), "{method} {url} (spec {path}) is not routed: {message}");
            assert_ne!(body["error_code"], "ENDPOINT_NOT_FOUND", "{method} {url} (spec {path}) is not routed: {message}");
        }
    }

    // And a path that is not in the spec is the JSON "no route" 404, so the check above can fail.
    let message = admin.get("/v1/not-a-route").err(404, "not_found");
    assert!(message.starts_with("no route"), "{message}");
    // Every listed route has a security decision and documented responses.
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if op.is_object() && op.get("responses").is_some() {
                assert!(!op["responses"].as_object().unwrap().is_empty(), "{method} {path} documents no responses");
            }
        }
    }
}

#[test]
fn metrics_after_a_write() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let api = server.admin();
    api.create_project("metered");
    api.patch("/v1/projects/metered", &json!({ "description": "d" })).ok(200);
    // They name every project: a key with metrics/read, and only that, reads them.
    assert_eq!(server.api(None).get("/metrics").status, 401);
    let reader = api.create_key("reader", "reader")["key"].as_str().unwrap().to_owned();
    let e = server.api(Some(&reader)).get("/metrics").err(403, "forbidden");
    assert!(e.contains("metrics/read"), "{e}");
    let scraper = api.create_key("prometheus", "monitoring_reader")["key"].as_str().unwrap().to_owned();
    let scraper = server.api(Some(&scraper));
    assert_eq!(scraper.get("/v1/projects").status, 403, "a monitoring key reads nothing else");
    let r = scraper.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"), "{:?}", r.header("content-type"));
    for name in [
        "holdfast_http_requests_total",
        "holdfast_project_lsn",
        "holdfast_commit_batch_size",
        "holdfast_commit_seconds",
    ] {
        assert!(
            r.text.lines().any(|l| !l.starts_with('#') && l.starts_with(name)),
            "metric {name} missing from:\n{}",
            r.text
        );
    }
    // Requests are counted by route template, not by raw path.
    assert!(
        r.text.lines().any(|l| l.starts_with("holdfast_http_requests_total")
            && l.contains("route=\"/v1/projects/{project}\"")
            && l.contains("method=\"PATCH\"")
            && l.contains("status=\"200\"")),
        "PATCH /v1/projects/{{project}} not counted:\n{}",
        r.text
    );
    // The project's LSN gauge reads 2 after a create and an update.
    let lsn_line = r
        .text
        .lines()
        .find(|l| l.starts_with("holdfast_project_lsn") && l.contains("metered"))
        .unwrap_or_else(|| panic!("no holdfast_project_lsn for the project:\n{}", r.text));
    assert_eq!(lsn_line.rsplit(' ').next().unwrap().parse::<f64>().unwrap(), 2.0, "{lsn_line}");
}

#[test]
fn journal_is_dense_ordered_and_attributed() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let admin = server.admin();
    // Writes come from a contributor, so the actor is that principal, not the admin.
    let created = admin.create_key("writer", "contributor");
    let writer = server.api(Some(created["key"].as_str().unwrap()));
    let principal = created["principal_id"].as_str().unwrap().to_owned();
    assert!(principal.starts_with("prn_"), "{principal}");

    let started = now_us();
    let mut request_ids = Vec::new();
    let r = writer.send(
        Method::POST,
        "/v1/projects",
        Some(&json!({ "name": "journaled" })),
        &[("x-request-id", "mine-create-1")],
    );
    r.ok(201);
    assert_eq!(r.header("x-request-id").as_deref(), Some("mine-create-1"), "a sane x-request-id round-trips");
    request_ids.push("mine-create-1".to_owned());
    for i in 0..4 {
        let own = format!("mine.update:{i}");
        let r = writer.send(
            Method::PATCH,
            "/v1/projects/journaled",
            Some(&json!({ "tags": { format!("k{i}"): format!("v{i}") } })),
            &[("x-request-id", own.as_str())],
        );
        r.ok(200);
        assert_eq!(r.header("x-request-id").as_deref(), Some(own.as_str()));
        request_ids.push(own);
    }
    // Without an x-request-id the server makes one and it is what the journal records.
    let r = writer.patch("/v1/projects/journaled", &json!({ "description": "last" }));
    r.ok(200);
    let generated = r.header("x-request-id").expect("a generated x-request-id");
    assert!(generated.starts_with("req_"), "{generated}");
    request_ids.push(generated);
    // An insane x-request-id (a space) is replaced, not echoed.
    let r = writer.send(
        Method::PATCH,
        "/v1/projects/journaled",
        Some(&json!({ "description": "very last" })),
        &[("x-request-id", "has space")],
    );
    r.ok(200);
    let replaced = r.header("x-request-id").unwrap();
    assert!(replaced.starts_with("req_"), "{replaced}");
    request_ids.push(replaced);
    let ended = now_us();

    let journal = admin.journal("journaled");
    assert_eq!(journal.len(), request_ids.len(), "{journal:?}");
    let mut last_ts = 0;
    for (i, change) in journal.iter().enumerate() {
        assert_eq!(change["lsn"].as_u64(), Some(i as u64 + 1), "dense LSNs from 1: {change}");
        assert_eq!(change["epoch"], 1, "{change}");
        assert_eq!(change["v"], 1, "{change}");
        assert_eq!(change["actor"], principal.as_str(), "{change}");
        assert_eq!(change["request_id"], request_ids[i].as_str(), "{change}");
        let ts = change["ts"].as_i64().expect("ts is an integer");
        // Microseconds since the epoch: between the test's own clock readings.
        assert!(ts >= started - 1_000_000 && ts <= ended + 1_000_000, "ts {ts} not in [{started}, {ended}] µs");
        assert!(ts >= last_ts, "ts decreases at lsn {}", i + 1);
        last_ts = ts;
        assert!(!change["ops"].as_array().unwrap().is_empty(), "{change}");
    }
    assert_eq!(journal[0]["ops"][0]["type"], "put");
    assert_eq!(journal[0]["ops"][0]["kind"], "project");
    assert_eq!(journal[1]["ops"][0]["type"], "patch");
    assert_eq!(journal[1]["ops"][0]["patch"], json!({ "tags": { "k0": "v0" } }));

    // `after` and `limit` page the journal; last_lsn is the head.
    let page = admin.get("/v1/projects/journaled/journal?after=2&limit=2").ok(200);
    let lsns: Vec<u64> = page["changes"].as_array().unwrap().iter().map(|c| c["lsn"].as_u64().unwrap()).collect();
    assert_eq!(lsns, [3, 4]);
    assert_eq!(page["last_lsn"].as_u64(), Some(request_ids.len() as u64));
    let tail = admin.get(&format!("/v1/projects/journaled/journal?after={}", request_ids.len())).ok(200);
    assert_eq!(tail["changes"], json!([]));
    // The journal can be read by project id too.
    let id = admin.get("/v1/projects/journaled").ok(200)["id"].as_str().unwrap().to_owned();
    assert_eq!(admin.journal(&id), journal);
}

#[test]
fn journal_long_poll_returns_a_change_made_while_waiting() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let admin = server.admin();
    admin.create_project("polled");

    // With nothing new, a short wait returns an empty page at the head.
    let page = admin.get("/v1/projects/polled/journal?after=1&wait_ms=200").ok(200);
    assert_eq!(page["changes"], json!([]));
    assert_eq!(page["last_lsn"], 1);

    // A waiter for lsn > 1 (with the longest allowed wait) gets the change another thread writes.
    // The waiter gives up (and the test fails) well before the server's 30 s wait would end on
    // its own, so only a wake-up by the write can satisfy it.
    let writer = admin.clone();
    let waiter = admin.with_timeout(Duration::from_secs(20));
    let poll = std::thread::spawn(move || waiter.get("/v1/projects/polled/journal?after=1&wait_ms=30000"));
    std::thread::sleep(Duration::from_millis(300)); // let the poll start waiting (not required for correctness)
    writer
        .send(
            Method::PATCH,
            "/v1/projects/polled",
            Some(&json!({ "description": "woke" })),
            &[("x-request-id", "wake-up")],
        )
        .ok(200);
    let r = poll.join().expect("the poll was answered (not timed out)");
    let page = r.ok(200);
    let changes = page["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{page}");
    assert_eq!(changes[0]["lsn"], 2);
    assert_eq!(changes[0]["request_id"], "wake-up");
    assert_eq!(changes[0]["ops"][0]["patch"], json!({ "description": "woke" }));

    // A long poll on a project that does not exist is a 404, not a wait.
    admin
        .with_timeout(Duration::from_secs(20))
        .get("/v1/projects/nobody/journal?after=0&wait_ms=30000")
        .err(404, "not_found");
}

#[test]
fn deleting_a_project_in_use_gives_404s_never_server_errors() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let api = server.admin();
    api.create_project("bystander");
    let mut seen: BTreeSet<(String, u16)> = BTreeSet::new();
    for round in 0..20 {
        let name = format!("doomed-{round}");
        api.create_project(&name);
        // Readers and writers of the project keep going while it is deleted (twice at once).
        let users: Vec<_> = (0..8)
            .map(|t| {
                let (api, name) = (api.clone(), name.clone());
                std::thread::spawn(move || {
                    (0..12)
                        .map(|i| {
                            let (what, r) = match t % 5 {
                                0 => ("get", api.get(&format!("/v1/projects/{name}"))),
                                1 => (
                                    "patch",
                                    api.patch(
                                        &format!("/v1/projects/{name}"),
                                        &json!({ "description": format!("{t}-{i}") }),
                                    ),
                                ),
                                2 => ("journal", api.get(&format!("/v1/projects/{name}/journal?after=0&wait_ms=20"))),
                                3 => ("list", api.get("/v1/projects?limit=100")),
                                _ => ("delete", api.delete(&format!("/v1/projects/{name}"))),
                            };
                            (what, r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let r = api.delete(&format!("/v1/projects/{name}"));
        assert!(r.status == 204 || r.status == 404, "delete: {} {}", r.status, r.text);
        for user in users {
            for (what, r) in user.join().unwrap() {
                assert!(r.status < 500, "{what} during a delete: {} {}", r.status, r.text);
                match r.status {
                    200 | 204 => {}
                    404 => {
                        r.err(404, "not_found");
                    }
                    other => panic!("{what} during a delete: {other} {}", r.text),
                }
                if what == "list" && r.status == 200 {
                    let page = r.json();
                    assert!(page["data"].as_array().unwrap().iter().any(|p| p["name"] == "bystander"), "{page}");
                }
                seen.insert((what.to_owned(), r.status));
            }
        }
        api.get(&format!("/v1/projects/{name}")).err(404, "not_found");
        api.delete(&format!("/v1/deleted-projects/{name}")).ok(204);
    }
    // Only the bystander is left, in the catalog and on disk; every deleted project is in the trash.
    assert_eq!(names(&api.all_projects(100)), ["bystander"]);
    assert_eq!(common::project_dirs(data.path()), 1);
    assert_eq!(std::fs::read_dir(data.path().join("trash")).unwrap().count(), 20);
    assert_eq!(api.journal("bystander").len(), 1);
    // The races really happened: some requests saw the project, some did not.
    assert!(seen.contains(&("patch".to_owned(), 404)) && seen.contains(&("get".to_owned(), 404)), "{seen:?}");
    // Names are reusable at once, and the server still stops cleanly.
    api.create_project("doomed-0");
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn concurrent_creates_of_one_name_make_one_project() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let api = server.admin();
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let api = api.clone();
            std::thread::spawn(move || {
                api.post("/v1/projects", &json!({ "name": "contested", "description": format!("racer {i}") }))
            })
        })
        .collect();
    let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    let winners: Vec<_> = results.iter().filter(|r| r.status == 201).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in results.iter().filter(|r| r.status != 201) {
        r.err(409, "conflict");
    }
    let winner = winners[0].json();
    assert_eq!(api.get("/v1/projects/contested").ok(200), winner);
    assert_eq!(api.journal("contested").len(), 1);
    assert_eq!(common::project_dirs(data.path()), 1, "one project directory");
}
