//! Resource locks with the real binary: `CanNotDelete` and `ReadOnly` at `/`, at a project and at
//! one resource, on the control plane and (with `--data-plane`) the data plane, through both the
//! `/v1` and the OpenAI-compatible routes and the CLI. A refusal is 409 `ScopeLocked` naming the
//! lock and its scope, and changes nothing; only an Owner sets or removes a lock.

mod common;

use common::{ADMIN_KEY, Api, Cli, Server};
use serde_json::{Value, json};

const CONV: &str = "/api/projects/guarded/openai/v1/conversations";

fn lock(api: &Api, scope: &str, kind: &str, data_plane: bool) -> String {
    let lock = api.post("/v1/locks", &json!({ "scope": scope, "kind": kind, "data_plane": data_plane })).ok(201);
    assert_eq!((lock["scope"].as_str(), lock["kind"].as_str()), (Some(scope), Some(kind)), "{lock}");
    lock["id"].as_str().expect("lock id").to_owned()
}

/// A conversation with two items; returns its id and its items' ids.
fn conversation(api: &Api) -> (String, Vec<String>) {
    let items = json!({ "items": [{ "role": "user", "content": "one" }, { "role": "user", "content": "two" }] });
    let conv = api.post(CONV, &items).ok(200);
    let id = conv["id"].as_str().expect("conversation id").to_owned();
    let listed = api.get(&format!("{CONV}/{id}/items?order=asc")).ok(200);
    let items = listed["data"].as_array().expect("items").iter().map(|i| i["id"].as_str().expect("id").to_owned()).collect();
    (id, items)
}

/// Asserts an OpenAI-shaped 409 `ScopeLocked` that names the lock; returns the message.
fn openai_locked(resp: &common::Resp, lock: &str) -> String {
    assert_eq!(resp.status, 409, "{}", resp.text);
    let body = resp.json();
    assert_eq!(body["error"]["code"], "ScopeLocked", "{body}");
    let message = body["error"]["message"].as_str().expect("message").to_owned();
    assert!(message.contains(lock), "the refusal names the lock: {message}");
    message
}

#[test]
fn project_locks_guard_the_control_plane_and_with_data_plane_the_contents() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let api = server.admin();
    api.create_project("guarded");
    let (conv, _) = conversation(&api);

    // Control plane only: the project cannot go, its contents can.
    let id = lock(&api, "/projects/guarded", "CanNotDelete", false);
    let message = api.delete("/v1/projects/guarded").err(409, "ScopeLocked");
    assert!(message.contains(&id) && message.contains("at scope /projects/guarded"), "{message}");
    api.get("/v1/projects/guarded").ok(200);
    api.patch("/v1/projects/guarded", &json!({ "description": "still writable" })).ok(200);
    let (other, _) = conversation(&api);
    api.delete(&format!("{CONV}/{other}")).ok(200);

    // With the data plane: deleting a conversation is refused and changes nothing.
    let data_lock = lock(&api, "/projects/guarded", "CanNotDelete", true);
    let before = api.get("/v1/projects/guarded").ok(200)["lsn"].clone();
    openai_locked(&api.delete(&format!("{CONV}/{conv}")), &data_lock);
    api.get(&format!("{CONV}/{conv}")).ok(200);
    assert_eq!(api.get("/v1/projects/guarded").ok(200)["lsn"], before, "a refusal journals nothing");
    // Writes still pass under CanNotDelete.
    api.post(&format!("{CONV}/{conv}/items"), &json!({ "items": [{ "role": "user", "content": "three" }] })).ok(200);

    // ReadOnly at the root reaches every project, on both planes.
    let root = lock(&api, "/", "ReadOnly", true);
    let message = api.patch("/v1/projects/guarded", &json!({ "description": "no" })).err(409, "ScopeLocked");
    assert!(message.contains(&root) || message.contains(&id), "{message}");
    openai_locked(&api.post(CONV, &json!({})), &root);

    // Removing the locks (an Owner) lets everything through again.
    for lock in [&root, &data_lock, &id] {
        api.delete(&format!("/v1/locks/{lock}")).ok(204);
    }
    api.delete(&format!("/v1/locks/{id}")).err(404, "not_found");
    api.delete(&format!("{CONV}/{conv}")).ok(200);
    api.delete("/v1/projects/guarded").ok(204);
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn a_resource_lock_guards_it_and_its_children_only() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let api = server.admin();
    api.create_project("guarded");
    let (kept, items) = conversation(&api);
    let (free, _) = conversation(&api);
    let id = lock(&api, &format!("/projects/guarded/conversations/{kept}"), "CanNotDelete", false);
    let listed = api.get(&format!("/v1/locks?scope=/projects/guarded/conversations/{kept}")).ok(200);
    assert_eq!(listed["data"][0]["data_plane"], true, "a resource lock always guards the data plane: {listed}");
    assert_eq!(api.get("/v1/locks?scope=/projects/other").ok(200)["data"], json!([]));

    openai_locked(&api.delete(&format!("{CONV}/{kept}")), &id);
    openai_locked(&api.delete(&format!("{CONV}/{kept}/items/{}", items[0])), &id);
    api.delete(&format!("{CONV}/{free}")).ok(200);
    let remaining = api.get(&format!("{CONV}/{kept}/items")).ok(200);
    assert_eq!(remaining["data"].as_array().map(Vec::len), Some(2), "{remaining}");

    // Read-only: not even a new item.
    api.delete(&format!("/v1/locks/{id}")).ok(204);
    let ro = lock(&api, &format!("/projects/guarded/conversations/{kept}"), "ReadOnly", false);
    openai_locked(&api.post(&format!("{CONV}/{kept}/items"), &json!({ "items": [{ "role": "user", "content": "x" }] })), &ro);
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn only_owners_manage_locks_and_bad_scopes_are_refused() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let api = server.admin();
    api.create_project("guarded");
    let contributor = api.create_key("dev", "contributor")["key"].as_str().expect("key").to_owned();
    let dev = server.api(Some(&contributor));
    let body = json!({ "scope": "/projects/guarded", "kind": "CanNotDelete" });
    let message = dev.post("/v1/locks", &body).err(403, "forbidden");
    assert!(message.contains("locks/manage"), "{message}");
    let id = lock(&api, "/projects/guarded", "CanNotDelete", false);
    dev.delete(&format!("/v1/locks/{id}")).err(403, "forbidden");
    assert_eq!(dev.get("/v1/locks").ok(200)["data"][0]["id"], id.as_str(), "readers may list locks");
    for bad in ["/projects", "/projects/guarded/items/msg_1", "projects/guarded", "/projects/Bad Name"] {
        api.post("/v1/locks", &json!({ "scope": bad, "kind": "ReadOnly" })).err(400, "invalid_input");
    }
    api.post("/v1/locks", &json!({ "scope": "/", "kind": "Frozen" })).err(400, "invalid_input");
    assert_eq!(api.get("/v1/locks").ok(200)["data"].as_array().map(Vec::len), Some(1), "nothing was added");
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn the_cli_sets_lists_and_removes_locks_and_they_survive_a_restart() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let cli = Cli::new();
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    cli.run_env(&["project", "create", "guarded"], &env).success();
    let created = cli
        .run_env(&["-o", "json", "lock", "create", "--scope", "/projects/guarded", "--kind", "CanNotDelete", "--notes", "prod"], &env)
        .json();
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["notes"], "prod");
    let refused = cli.run_env(&["project", "delete", "guarded"], &env);
    refused.code(4);
    assert!(refused.stderr.contains(&id), "the CLI says which lock: {}", refused.stderr);
    assert_eq!(server.stop().code(), Some(0));

    let server = Server::start(data.path());
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    let listed: Value = cli.run_env(&["-o", "json", "lock", "list", "--scope", "/projects/guarded"], &env).json();
    assert_eq!(listed[0]["id"], id.as_str(), "locks survive a restart: {listed}");
    cli.run_env(&["lock", "delete", &id], &env).success();
    cli.run_env(&["project", "delete", "guarded"], &env).success();
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn a_lock_holds_when_the_project_is_addressed_by_id_and_a_resource_lock_keeps_its_project() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let api = server.admin();
    let id = api.create_project("guarded")["id"].as_str().expect("project id").to_owned();
    let (conv, _) = conversation(&api);
    let by_id = format!("/api/projects/{id}/openai/v1/conversations/{conv}");

    let project_lock = lock(&api, "/projects/guarded", "CanNotDelete", true);
    api.delete(&format!("/v1/projects/{id}")).err(409, "ScopeLocked");
    openai_locked(&api.delete(&by_id), &project_lock);
    api.delete(&format!("/v1/locks/{project_lock}")).ok(204);

    // A lock on one conversation keeps the whole project from being deleted with it.
    let resource_lock = lock(&api, &format!("/projects/guarded/conversations/{conv}"), "CanNotDelete", false);
    openai_locked(&api.delete(&by_id), &resource_lock);
    let message = api.delete(&format!("/v1/projects/{id}")).err(409, "ScopeLocked");
    assert!(message.contains(&resource_lock), "{message}");
    api.get(&by_id).ok(200);
    api.delete(&format!("/v1/locks/{resource_lock}")).ok(204);
    api.delete(&format!("/v1/projects/{id}")).ok(204);
    assert_eq!(server.stop().code(), Some(0));
}

/// Project routes that write yet are not refused by a lock on the project's control plane, and
/// why. Every other such route of the route table must answer 409 `ScopeLocked` under one.
const NOT_GUARDED: &[(&str, &str, &str)] = &[
    ("POST", "/v1/projects/{project}/failover", "recovery: a lock never stands in the way of a failover"),
    ("POST", "/v1/projects/{project}/divergences/{id}/replay", "contents, as new changes: guarded by data-plane locks"),
    ("POST", "/v1/projects/{project}/import", "contents: guarded by data-plane locks (Data::commit)"),
    ("POST", "/v1/projects/{project}/resources/{id}/undelete", "contents: guarded by data-plane locks (Data::commit)"),
    ("POST", "/v1/projects/{project}/backup/snapshot", "writes the archive, not the project"),
    ("POST", "/v1/projects/{project}/backup/verify", "reads the archive"),
    ("POST", "/v1/projects/{project}/restore", "reads the source; the target is another project"),
    ("DELETE", "/v1/deleted-projects/{project}", "purge: refused by any lock that forbids deletes, its own check"),
];

#[test]
fn a_read_only_lock_refuses_every_control_plane_write_route_of_the_project() {
    use holdfast_api::authz::{Need, ROUTES};
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let admin = server.admin();
    admin.create_project("proj");
    admin.post("/v1/projects/proj/connections", &json!({"name": "up", "target": "http://127.0.0.1:9/v1"})).ok(201);
    let id = lock(&admin, "/projects/proj", "ReadOnly", false);
    let journal = admin.journal("proj").len();
    let mut refused = Vec::new();
    for (method, template, need) in ROUTES {
        let (Need::Action(action) | Need::ActionInBody(action)) = need else { continue };
        if *method == "GET" || !template.contains("{project}") || action.is_data() {
            continue;
        }
        if NOT_GUARDED.iter().any(|(m, t, _)| m == method && t == template) {
            continue;
        }
        let path = template.replace("{project}", "proj").replace("{region}", "west").replace("{name}", "up");
        let path = path.split('/').map(|s| if s.starts_with('{') { "x" } else { s }).collect::<Vec<_>>().join("/");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let body = (method != reqwest::Method::DELETE).then(|| json!({}));
        let resp = admin.send(method.clone(), &path, body.as_ref(), &[]);
        assert_eq!(resp.status, 409, "{method} {template} under a ReadOnly lock: {}", resp.text);
        let message = resp.err(409, "ScopeLocked");
        assert!(message.contains(&id), "{method} {template}: {message}");
        refused.push(format!("{method} {template}"));
    }
    for (method, template, _) in NOT_GUARDED {
        assert!(ROUTES.iter().any(|(m, t, _)| m == method && t == template), "stale row {method} {template}");
    }
    // The replica topology in particular (the finding): neither adding nor removing a replica.
    for route in ["POST /v1/projects/{project}/replicas", "DELETE /v1/projects/{project}/replicas/{region}"] {
        assert!(refused.iter().any(|r| r == route), "{route} is refused: {refused:?}");
    }
    assert!(refused.len() >= 7, "{refused:?}");
    assert_eq!(admin.journal("proj").len(), journal, "nothing was journaled");
    assert_eq!(server.stop().code(), Some(0));
}

/// A connection is the control plane's whatever route writes it: an import into a project under
/// a plain (not data-plane) ReadOnly lock may not bring one, though the contents stay writable.
#[test]
fn a_project_lock_guards_connections_an_import_would_write() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let admin = server.admin();
    admin.create_project("source");
    admin.create_project("target");
    admin.post("/v1/projects/source/connections", &json!({"name": "up", "target": "http://127.0.0.1:9/v1"})).ok(201);
    let exported = admin.send_raw(reqwest::Method::GET, "/v1/projects/source/export", None, Vec::new());
    assert_eq!(exported.status, 200);
    let id = lock(&admin, "/projects/target", "ReadOnly", false);
    let before = admin.journal("target").len();
    let resp = admin.send_raw(
        reqwest::Method::POST,
        "/v1/projects/target/import?on_conflict=skip",
        Some("application/x-ndjson"),
        exported.text.into_bytes(),
    );
    let message = resp.err(409, "ScopeLocked");
    assert!(message.contains(&id) && message.contains("connection"), "{message}");
    assert_eq!(admin.journal("target").len(), before, "nothing was imported");
    // The contents themselves stay writable under a lock without --data-plane.
    admin.post("/api/projects/target/openai/v1/conversations", &json!({})).ok(200);
}
