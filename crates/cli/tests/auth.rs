//! Authentication and authorization of a real server: bearer keys, the bootstrap admin key,
//! keys made and revoked through the CLI, and the reader/contributor/admin roles.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{ADMIN_KEY, Cli, Opts, Server};
use reqwest::Method;
use serde_json::json;

#[test]
fn missing_wrong_and_malformed_keys_are_401_with_a_challenge() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let anon = server.api(None);
    for (method, path) in [
        (Method::GET, "/v1/projects"),
        (Method::GET, "/v1/info"),
        (Method::GET, "/v1/keys"),
        (Method::DELETE, "/v1/projects/anything"),
        (Method::GET, "/v1/projects/anything/journal"),
    ] {
        let r = anon.send(method.clone(), path, None, &[]);
        let message = r.err(401, "unauthenticated");
        assert!(message.contains("Authorization"), "{message}");
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"), "{method} {path}");
    }
    // A write without a key changes nothing.
    let r = anon.post("/v1/projects", &json!({ "name": "sneaky" }));
    r.err(401, "unauthenticated");
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));

    let wrong = server.api(Some("hf_0000000000000000000000000000000000000000000000000000000000000000"));
    let r = wrong.get("/v1/projects");
    r.err(401, "unauthenticated");
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    // A prefix of the real key is not the key.
    server.api(Some(&ADMIN_KEY[..20])).get("/v1/projects").err(401, "unauthenticated");
    // Not a bearer scheme.
    let r = anon.send(Method::GET, "/v1/projects", None, &[("authorization", &format!("Basic {ADMIN_KEY}"))]);
    r.err(401, "unauthenticated");
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));

    // Nothing was created by any of it, and the right key works.
    let page = server.admin().get("/v1/projects").ok(200);
    assert_eq!(page["data"], json!([]));
}

#[test]
fn generated_admin_key_is_written_0600_printed_works_and_survives_restart() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(data.path(), Opts::without_admin_key());
    let printed = server.generated_key().unwrap_or_else(|| panic!("no key on stdout:\n{}", server.stdout()));
    assert!(printed.starts_with("hf_") && printed.len() == 67, "{printed}");
    let path = data.path().join("admin.key");
    let stored = std::fs::read_to_string(&path).expect("admin.key exists");
    assert_eq!(stored.trim(), printed, "admin.key holds the printed key");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.key mode is {mode:o}");
    // The key is an admin key: it may manage keys and read journals.
    let admin = server.api(Some(&printed));
    admin.get("/v1/keys").ok(200);
    admin.create_project("bootstrapped");
    assert_eq!(admin.journal("bootstrapped").len(), 1);
    assert_eq!(admin.journal("bootstrapped")[0]["actor"], "prn_admin");
    assert_eq!(server.stop().code(), Some(0));

    // A restart prints no key, keeps the file, and the first key still works.
    let again = Server::start_with(data.path(), Opts::without_admin_key());
    assert_eq!(again.generated_key(), None, "a restart generated a new key:\n{}", again.stdout());
    assert!(!again.stdout().contains("Generated"), "{}", again.stdout());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), stored, "admin.key changed");
    again.api(Some(&printed)).get("/v1/projects/bootstrapped").ok(200);
    let keys = again.api(Some(&printed)).get("/v1/keys").ok(200);
    let admin_keys: Vec<_> =
        keys["data"].as_array().unwrap().iter().filter(|k| k["role"] == "admin" && k["revoked_at"].is_null()).collect();
    assert_eq!(admin_keys.len(), 1, "exactly one live admin key: {keys}");
    assert_eq!(again.stop().code(), Some(0));
}

#[test]
fn env_admin_key_replaces_the_previous_env_key_and_short_keys_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let first = Server::start(data.path());
    first.admin().create_project("keyed");
    assert_eq!(first.stop().code(), Some(0));
    assert!(!data.path().join("admin.key").exists(), "no key file when HOLDFAST_ADMIN_KEY is set");

    let rotated = "rotated-admin-key-fedcba9876543210";
    let second = Server::start_with(data.path(), Opts { admin_key: Some(rotated.to_owned()), ..Opts::default() });
    assert_eq!(second.generated_key(), None);
    second.api(Some(ADMIN_KEY)).get("/v1/projects").err(401, "unauthenticated");
    second.api(Some(rotated)).get("/v1/projects/keyed").ok(200);
    assert_eq!(second.stop().code(), Some(0));

    // A key under 16 characters is refused at start-up.
    let logs = tempfile::tempdir().unwrap();
    let opts = Opts { admin_key: Some("short".to_owned()), ..Opts::default() };
    let (mut child, _out, err) = common::spawn_serve(data.path(), &opts, common::free_port(), logs.path());
    let status = common::wait_exit(&mut child, std::time::Duration::from_secs(20), "serve with a short key");
    assert!(!status.success(), "{status}");
    let stderr = std::fs::read_to_string(err).unwrap();
    assert!(stderr.contains("HOLDFAST_ADMIN_KEY"), "{stderr}");
}

#[test]
fn cli_key_create_list_revoke() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let cli = Cli::new();
    let ep = server.base.as_str();

    let made = cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "key", "create", "--name", "ci-bot", "-o", "json"]);
    made.success();
    let created = made.json();
    let key = created["key"].as_str().expect("key field").to_owned();
    let principal = created["principal_id"].as_str().expect("principal_id field").to_owned();
    let key_id = created["key_id"].as_str().expect("key_id field").to_owned();
    assert!(key.starts_with("hf_"), "{key}");
    assert!(principal.starts_with("prn_"), "{principal}");
    assert!(key_id.starts_with("key_"), "{key_id}");
    assert_eq!(created["name"], "ci-bot");
    // Without --role a key holds no role: it authenticates, may do nothing, and the CLI says
    // how to give it one.
    assert_eq!(created["role"], serde_json::Value::Null, "no standing rights by default");
    assert!(made.stderr.contains(&format!("holdfast role assign --principal {principal}")), "{}", made.stderr);
    let bot = server.api(Some(&key));
    bot.get("/v1/projects/none-yet").err(403, "forbidden");
    bot.post("/v1/projects", &json!({ "name": "not-by-bot" })).err(403, "forbidden");
    let row = server.admin().get("/v1/keys").ok(200)["data"].as_array().unwrap().iter().find(|k| k["key_id"] == key_id.as_str()).cloned().unwrap();
    assert_eq!((row["role"].clone(), row["scope"].clone()), (serde_json::Value::Null, serde_json::Value::Null), "{row}");
    cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "role", "assign", "--principal", &principal, "--role", "contributor", "--scope", "/"])
        .success();

    // With a role the key works, and its writes are attributed to its principal.
    bot.create_project("made-by-bot");
    assert_eq!(server.admin().journal("made-by-bot")[0]["actor"], principal.as_str());

    // `key list` shows the key by id and prefix, never the secret.
    let list = cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "key", "list", "-o", "json"]);
    assert!(!list.stdout.contains(&key), "key list printed a secret:\n{}", list.stdout);
    assert!(!list.stdout.contains(ADMIN_KEY), "key list printed the admin key:\n{}", list.stdout);
    let rows = list.json();
    let row = rows.as_array().unwrap().iter().find(|k| k["key_id"] == key_id.as_str()).expect("new key listed");
    assert_eq!(row["principal_id"], principal.as_str());
    assert_eq!(row["prefix"], &key[..10]);
    assert_eq!(row["revoked_at"], serde_json::Value::Null);
    assert!(row.get("key").is_none(), "{row}");
    // The table form does not show it either.
    let table = cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "key", "list", "-o", "table"]);
    table.success();
    assert!(table.stdout.contains(&key_id) && !table.stdout.contains(&key), "{}", table.stdout);

    // Revoke by key id: the key is refused from then on, and list shows when.
    let revoked = cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "key", "revoke", &key_id, "-o", "json"]).json();
    assert_eq!(revoked, json!({ "revoked": key_id }));
    bot.get("/v1/projects").err(401, "unauthenticated");
    let rows = cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "key", "list", "-o", "json"]).json();
    let row = rows.as_array().unwrap().iter().find(|k| k["key_id"] == key_id.as_str()).unwrap();
    assert!(row["revoked_at"].is_string(), "{row}");
    // Revoking an unknown id is "not found" (exit 3); the CLI as the revoked key is exit 5.
    cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "key", "revoke", "key_nope"]).code(3);
    cli.run(&["--endpoint", ep, "--key", &key, "project", "list"]).code(5);

    // Revoke by principal id revokes every key of the principal.
    let reader = cli
        .run(&["--endpoint", ep, "--key", ADMIN_KEY, "key", "create", "--name", "r", "--role", "reader", "-o", "json"])
        .json();
    let reader_key = reader["key"].as_str().unwrap();
    server.api(Some(reader_key)).get("/v1/projects").ok(200);
    cli.run(&["--endpoint", ep, "--key", ADMIN_KEY, "key", "revoke", reader["principal_id"].as_str().unwrap()])
        .success();
    server.api(Some(reader_key)).get("/v1/projects").err(401, "unauthenticated");
    // The admin key was not touched by any of it.
    server.admin().get("/v1/keys").ok(200);
}

#[test]
fn reader_and_contributor_roles_are_enforced() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let admin = server.admin();
    admin.create_project("shared");
    let reader = server.api(Some(admin.create_key("reader-1", "reader")["key"].as_str().unwrap()));
    let contributor = server.api(Some(admin.create_key("contrib-1", "contributor")["key"].as_str().unwrap()));

    // Reader: read only.
    let page = reader.get("/v1/projects").ok(200);
    assert_eq!(page["data"][0]["name"], "shared");
    reader.get("/v1/projects/shared").ok(200);
    reader.get("/v1/info").ok(200);
    let message = reader.post("/v1/projects", &json!({ "name": "by-reader" })).err(403, "forbidden");
    assert!(message.contains("reader"), "{message}");
    reader.patch("/v1/projects/shared", &json!({ "description": "x" })).err(403, "forbidden");
    reader.delete("/v1/projects/shared").err(403, "forbidden");
    reader.get("/v1/projects/shared/journal").err(403, "forbidden");
    reader.get("/v1/keys").err(403, "forbidden");
    reader.post("/v1/keys", &json!({ "name": "escalate", "role": "admin" })).err(403, "forbidden");

    // Contributor: projects yes; journal and keys no.
    contributor.create_project("by-contrib");
    contributor.patch("/v1/projects/by-contrib", &json!({ "description": "mine" })).ok(200);
    contributor.get("/v1/projects/shared/journal").err(403, "forbidden");
    contributor.get("/v1/projects/by-contrib/journal").err(403, "forbidden");
    contributor.get("/v1/keys").err(403, "forbidden");
    contributor.post("/v1/keys", &json!({ "name": "escalate", "role": "admin" })).err(403, "forbidden");
    let keys = admin.get("/v1/keys").ok(200);
    let some_key_id = keys["data"][0]["key_id"].as_str().unwrap().to_owned();
    contributor.delete(&format!("/v1/keys/{some_key_id}")).err(403, "forbidden");

    // None of the refused requests left a trace: no project by the reader, no new key, the
    // shared project's journal has its one change, the contributor's has two.
    let names: Vec<_> = admin.all_projects(100).iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["by-contrib", "shared"]);
    assert_eq!(admin.get("/v1/keys").ok(200)["data"].as_array().unwrap().len(), keys["data"].as_array().unwrap().len());
    assert_eq!(admin.journal("shared").len(), 1);
    assert_eq!(admin.journal("by-contrib").len(), 2);
    // And the contributor can delete its project, which the reader could not.
    assert_eq!(contributor.delete("/v1/projects/by-contrib").status, 204);
}

/// Finds the key id of `principal`'s live key.
fn live_key_of(admin: &common::Api, principal: &str) -> String {
    let keys = admin.get("/v1/keys").ok(200);
    let row = keys["data"].as_array().unwrap().iter().find(|k| k["principal_id"] == principal && k["revoked_at"].is_null());
    row.unwrap_or_else(|| panic!("no live key of {principal}: {keys}"))["key_id"].as_str().unwrap().to_owned()
}

#[test]
fn the_last_admin_keeps_its_role_and_admin_reset_is_the_break_glass() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(data.path(), Opts::without_admin_key());
    let first = server.generated_key().expect("a generated admin key");
    let admin = server.api(Some(&first));
    let unassign = |api: &common::Api, principal: &str| {
        api.post("/v1/role-assignments/remove", &json!({ "principal_id": principal, "role": "admin", "scope": "/" }))
    };

    // The only admin can neither drop its role nor revoke its key (by key id or principal id).
    let message = unassign(&admin, "prn_admin").err(409, "conflict");
    assert!(message.contains("last admin"), "{message}");
    let key_id = live_key_of(&admin, "prn_admin");
    for target in [key_id.as_str(), "prn_admin"] {
        let message = admin.delete(&format!("/v1/keys/{target}")).err(409, "conflict");
        assert!(message.contains("last live key of an admin"), "{message}");
    }
    // Nothing changed: the key still manages access.
    assert_eq!(live_key_of(&admin, "prn_admin"), key_id);
    admin.get("/v1/role-assignments").ok(200);

    // With a second admin the first may step down; the second is then the last one.
    let ops = admin.create_key("ops", "admin");
    let (ops_key, ops_principal) = (ops["key"].as_str().unwrap().to_owned(), ops["principal_id"].as_str().unwrap().to_owned());
    let ops_api = server.api(Some(&ops_key));
    assert_eq!(unassign(&admin, "prn_admin").status, 204);
    admin.get("/v1/keys").err(403, "forbidden");
    unassign(&ops_api, &ops_principal).err(409, "conflict");
    ops_api.delete(&format!("/v1/keys/{}", live_key_of(&ops_api, &ops_principal))).err(409, "conflict");

    // The break-glass path is refused while the server holds the data directory...
    let cli = Cli::new();
    let dir = data.path().to_str().unwrap();
    cli.run(&["admin", "reset", "--data", dir]).code(4);
    // ...and, with it stopped, prints a working admin key, recorded in the audit log.
    server.stop();
    let reset = cli.run(&["admin", "reset", "--data", dir, "-o", "json"]);
    reset.success();
    let made = reset.json();
    assert_eq!(made["role"], "admin", "{made}");
    let fresh = made["key"].as_str().unwrap().to_owned();
    let server = Server::start_with(data.path(), Opts::without_admin_key());
    let rescued = server.api(Some(&fresh));
    rescued.get("/v1/keys").ok(200);
    let audit = rescued.get("/v1/audit?limit=1000").ok(200);
    let entry = audit["data"].as_array().unwrap().iter().find(|e| e["route"] == "holdfast admin reset").cloned();
    let entry = entry.unwrap_or_else(|| panic!("no audit entry for the reset: {audit}"));
    assert_eq!((entry["scope"].as_str(), entry["status"].as_u64()), (Some("/"), Some(201)), "{entry}");
    assert!(entry["path"].as_str().unwrap().contains(made["principal_id"].as_str().unwrap()), "{entry}");
    // The lost keys can now be dealt with, and the others were left as they were.
    server.api(Some(&ops_key)).get("/v1/keys").ok(200);
}

#[test]
fn the_env_admin_key_is_an_admin_again_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let admin = server.admin();
    admin.create_key("ops", "admin");
    let removed = admin.post("/v1/role-assignments/remove", &json!({ "principal_id": "prn_admin", "role": "admin", "scope": "/" }));
    assert_eq!(removed.status, 204);
    admin.get("/v1/keys").err(403, "forbidden");
    server.stop();
    // HOLDFAST_ADMIN_KEY says this key is an admin key: a start makes it one again.
    let server = Server::start(data.path());
    server.admin().get("/v1/keys").ok(200);
    // Revoked while another admin holds on, it is live again at the next start.
    assert_eq!(server.admin().delete("/v1/keys/prn_admin").status, 204);
    server.admin().get("/v1/keys").err(401, "unauthenticated");
    server.stop();
    let server = Server::start(data.path());
    server.admin().get("/v1/keys").ok(200);
}
