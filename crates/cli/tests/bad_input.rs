//! Every kind of bad request gets Holdfast's JSON error envelope with the right 4xx status,
//! never a 500, and leaves no trace: no project, no journal entry.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Opts, Resp, Server};
use reqwest::Method;
use serde_json::{Value, json};

/// Checks the envelope and status, and that no server error is hiding behind it.
fn refused(r: &Resp, status: u16, code: &str, what: &str) -> String {
    assert!(r.status < 500, "{what}: server error {} {}", r.status, r.text);
    assert_eq!(r.status, status, "{what}: {}", r.text);
    r.err(status, code)
}

#[test]
fn bad_requests_are_json_4xx_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(data.path(), Opts::default().arg("--max-body-bytes").arg("2048"));
    let api = server.admin();

    // The state every bad request must leave alone.
    api.post("/v1/projects", &json!({ "name": "steady", "description": "before", "tags": { "a": "1" } })).ok(201);
    api.patch("/v1/projects/steady", &json!({ "tags": { "b": "2" } })).ok(200);
    let list_before = api.all_projects(100);
    let journal_before = api.journal("steady");
    let project_before = api.get("/v1/projects/steady").ok(200);
    assert_eq!(journal_before.len(), 2);

    let json_post =
        |path: &str, body: &str| api.send_raw(Method::POST, path, Some("application/json"), body.as_bytes().to_vec());
    let json_patch =
        |path: &str, body: &str| api.send_raw(Method::PATCH, path, Some("application/json"), body.as_bytes().to_vec());

    // Malformed JSON.
    for body in ["{", "{\"name\": ", "not json", "", "[1,2", "{\"name\":\"abc\"} trailing"] {
        refused(&json_post("/v1/projects", body), 400, "invalid_input", &format!("malformed create {body:?}"));
        refused(&json_patch("/v1/projects/steady", body), 400, "invalid_input", &format!("malformed patch {body:?}"));
    }
    // Wrong types.
    for body in [
        json!({ "name": 5 }),
        json!({ "name": null }),
        json!({ "name": "typed", "tags": { "a": 1 } }),
        json!({ "name": "typed", "tags": ["a"] }),
        json!({ "name": "typed", "display_name": false }),
        json!([{ "name": "typed" }]),
        json!("typed"),
        json!({}),
    ] {
        refused(&api.post("/v1/projects", &body), 400, "invalid_input", &format!("wrong type {body}"));
    }
    for body in [
        json!({ "tags": { "a": 2 } }),
        json!({ "tags": "a" }),
        json!({ "description": 7 }),
        json!({ "display_name": ["x"] }),
    ] {
        refused(&api.patch("/v1/projects/steady", &body), 400, "invalid_input", &format!("wrong type patch {body}"));
    }
    // Unknown fields, in a create, a patch and a key create.
    let m = refused(
        &api.post("/v1/projects", &json!({ "name": "extra", "colour": "red" })),
        400,
        "invalid_input",
        "unknown field",
    );
    assert!(m.contains("colour"), "{m}");
    refused(
        &api.patch("/v1/projects/steady", &json!({ "name": "renamed" })),
        400,
        "invalid_input",
        "patch of the name",
    );
    refused(&api.patch("/v1/projects/steady", &json!({ "lsn": 99 })), 400, "invalid_input", "patch of the lsn");
    refused(
        &api.post("/v1/keys", &json!({ "name": "k", "role": "admin", "expires": "never" })),
        400,
        "invalid_input",
        "key field",
    );
    refused(&api.post("/v1/keys", &json!({ "name": "k", "role": "superuser" })), 400, "invalid_input", "unknown role");
    refused(&api.post("/v1/keys", &json!({ "name": "" })), 400, "invalid_input", "empty key name");
    // Invalid names.
    for name in [
        "UPPER",
        "Mixed-case",
        "ab",
        "a",
        "",
        &"x".repeat(64),
        "under_score",
        "-lead",
        "trail-",
        "dot.ted",
        "sp ace",
        "proj_x",
    ] {
        let m = refused(
            &api.post("/v1/projects", &json!({ "name": name })),
            400,
            "invalid_input",
            &format!("name {name:?}"),
        );
        assert!(m.contains("project name"), "{name:?}: {m}");
    }
    // Invalid values in otherwise well-formed bodies.
    refused(
        &api.post("/v1/projects", &json!({ "name": "valid-name", "display_name": "x".repeat(201) })),
        400,
        "invalid_input",
        "long display name",
    );
    refused(
        &api.post("/v1/projects", &json!({ "name": "valid-name", "tags": { "": "v" } })),
        400,
        "invalid_input",
        "empty tag key",
    );
    refused(
        &api.post("/v1/projects", &json!({ "name": "valid-name", "description": "bell\u{7}" })),
        400,
        "invalid_input",
        "control char",
    );
    refused(
        &api.patch("/v1/projects/steady", &json!({ "display_name": "x".repeat(201) })),
        400,
        "invalid_input",
        "long display name patch",
    );
    refused(
        &api.patch("/v1/projects/steady", &json!({ "tags": { "": "v" } })),
        400,
        "invalid_input",
        "empty tag key patch",
    );
    refused(
        &api.patch("/v1/projects/steady", &json!({ "description": "line\nbreak" })),
        400,
        "invalid_input",
        "control char patch",
    );
    let many: serde_json::Map<String, Value> = (0..51).map(|i| (format!("t{i}"), json!(""))).collect();
    refused(&api.patch("/v1/projects/steady", &json!({ "tags": many })), 400, "invalid_input", "too many tags");
    // Missing or wrong content type.
    refused(
        &api.send_raw(Method::POST, "/v1/projects", None, br#"{"name":"no-type"}"#.to_vec()),
        400,
        "invalid_input",
        "no content type",
    );
    refused(
        &api.send_raw(Method::POST, "/v1/projects", Some("text/plain"), br#"{"name":"no-type"}"#.to_vec()),
        400,
        "invalid_input",
        "text/plain",
    );

    // Duplicate name: 409, and the existing project is untouched.
    let m = refused(
        &api.post("/v1/projects", &json!({ "name": "steady", "description": "usurper" })),
        409,
        "conflict",
        "duplicate",
    );
    assert!(m.contains("steady"), "{m}");

    // Bodies over --max-body-bytes 2048: 413 with the JSON envelope, for create and patch,
    // with or without a Content-Length the server can check up front.
    let big = json!({ "name": "too-big", "description": "x".repeat(3000) });
    let m = refused(&api.post("/v1/projects", &big), 413, "payload_too_large", "big create");
    assert!(m.contains("limit"), "{m}");
    refused(
        &api.patch("/v1/projects/steady", &json!({ "description": "y".repeat(3000) })),
        413,
        "payload_too_large",
        "big patch",
    );
    let streamed = [br#"{"name":"chunked","description":""#.as_slice(), &[b'z'; 4096], br#""}"#].concat();
    // A body from a reader has no Content-Length: it is sent chunked.
    let chunked = reqwest::blocking::Client::new()
        .post(format!("{}/v1/projects", server.base))
        .bearer_auth(common::ADMIN_KEY)
        .header("content-type", "application/json")
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(streamed)))
        .send()
        .unwrap();
    let status = chunked.status().as_u16();
    let text = chunked.text().unwrap();
    assert_eq!(status, 413, "streamed body over the limit: {text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["code"], "payload_too_large", "{text}");
    // Just under the limit is fine (and is rolled back below by deleting it).
    let fits = json!({ "name": "fits", "description": "f".repeat(1900) });
    assert!(serde_json::to_vec(&fits).unwrap().len() < 2048);
    api.post("/v1/projects", &fits).ok(201);
    assert_eq!(api.delete("/v1/projects/fits").status, 204);
    api.delete("/v1/deleted-projects/fits").ok(204); // purged: its directory goes to the trash

    // Unknown routes and methods.
    for path in ["/v1/nothing", "/v2/projects", "/v1/projects/steady/nothing", "/", "/v1/projects/steady/journal/1"] {
        let m = refused(&api.get(path), 404, "not_found", path);
        assert!(m.starts_with("no route"), "{path}: {m}");
    }
    refused(
        &api.send(Method::PUT, "/v1/projects/steady", Some(&json!({ "name": "steady" })), &[]),
        405,
        "invalid_input",
        "PUT",
    );
    refused(
        &api.send(Method::POST, "/v1/projects/steady/journal", Some(&json!({})), &[]),
        405,
        "invalid_input",
        "POST journal",
    );
    // Unknown projects.
    refused(&api.get("/v1/projects/ghost"), 404, "not_found", "get ghost");
    refused(&api.patch("/v1/projects/ghost", &json!({ "description": "boo" })), 404, "not_found", "patch ghost");
    refused(&api.delete("/v1/projects/ghost"), 404, "not_found", "delete ghost");
    refused(&api.get("/v1/projects/ghost/journal"), 404, "not_found", "journal ghost");
    refused(&api.get("/v1/projects/proj_01aaaaaaaaaaaaaaaaaaaaaaaa"), 404, "not_found", "unknown id");
    refused(&api.delete("/v1/keys/key_nope"), 404, "not_found", "unknown key");
    // Bad queries.
    for query in [
        "/v1/projects?limit=0",
        "/v1/projects?limit=abc",
        "/v1/projects?limit=101",
        "/v1/projects?limit=-1",
        "/v1/projects?limit=",
        "/v1/projects?unknown=1",
        "/v1/projects/steady/journal?limit=0",
        "/v1/projects/steady/journal?limit=1001",
        "/v1/projects/steady/journal?after=-1",
        "/v1/projects/steady/journal?after=abc",
        "/v1/projects/steady/journal?wait_ms=soon",
        "/v1/projects/steady/journal?since=1",
    ] {
        refused(&api.get(query), 400, "invalid_input", query);
    }

    // Nothing above left a trace.
    assert_eq!(api.all_projects(100), list_before, "the project list changed");
    assert_eq!(api.journal("steady"), journal_before, "the journal changed");
    assert_eq!(api.get("/v1/projects/steady").ok(200), project_before, "the project changed");
    for name in ["extra", "typed", "valid-name", "too-big", "chunked", "no-type", "renamed"] {
        refused(&api.get(&format!("/v1/projects/{name}")), 404, "not_found", name);
    }
    // No project directory was left behind either: one live, the deleted one in the trash.
    let dirs = common::project_dirs(data.path());
    assert_eq!(dirs, 1, "project directories after refused creates");
    // And the server is still healthy and writable.
    api.patch("/v1/projects/steady", &json!({ "description": "after" })).ok(200);
    assert_eq!(api.journal("steady").len(), 3);
    assert_eq!(server.stop().code(), Some(0));
}
