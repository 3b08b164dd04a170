//! Governance through the real binary and its CLI: soft delete → recover → purge with purge
//! protection, a custom role from a file, and a user-assigned identity with its own key.

mod common;

use common::{ADMIN_KEY, Cli, Server};
use serde_json::{Value, json};

#[test]
fn soft_delete_recover_and_purge_through_the_cli() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let cli = Cli::new();
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    let hf = |args: &[&str]| cli.run_env(args, &env);

    let made = hf(&["-o", "json", "project", "create", "vault", "--purge-protection", "--retention-days", "30"]).json();
    assert_eq!((made["purge_protection"].as_bool(), made["soft_delete_retention_days"].as_u64()), (Some(true), Some(30)));
    hf(&["project", "create", "scratch"]).success();
    hf(&["project", "create", "bad", "--retention-days", "3"]).code(1);
    hf(&["project", "delete", "vault"]).success();
    hf(&["project", "delete", "scratch"]).success();
    hf(&["project", "show", "vault"]).code(3);

    let deleted = hf(&["-o", "json", "project", "list", "--deleted"]).json();
    let names: Vec<&str> = deleted.as_array().expect("list").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["scratch", "vault"]);
    assert!(deleted[1]["purge_after"].is_string(), "{deleted}");
    let taken = hf(&["project", "create", "vault"]);
    taken.code(4);
    assert!(taken.stderr.contains("holdfast project recover vault"), "{}", taken.stderr);

    // Purge protection refuses the purge; a recover brings the project back.
    let refused = hf(&["project", "purge", "vault"]);
    refused.code(4);
    assert!(refused.stderr.contains("purge protection"), "{}", refused.stderr);
    let back = hf(&["-o", "json", "project", "recover", "vault"]).json();
    assert_eq!(back["name"], "vault");
    hf(&["project", "show", "vault"]).success();
    assert_eq!(hf(&["-o", "json", "project", "purge", "scratch"]).json(), json!({ "purged": "scratch" }));
    hf(&["project", "create", "scratch"]).success();
    let none: Value = hf(&["-o", "json", "project", "list", "--deleted"]).json();
    assert_eq!(none, json!([]));
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn custom_role_and_identity_through_the_cli() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let cli = Cli::new();
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    let hf = |args: &[&str]| cli.run_env(args, &env);
    hf(&["project", "create", "kbase"]).success();

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("role.json");
    let role = json!({ "name": "lister", "actions": ["projects/read"], "data_actions": ["projects/data/read"] });
    std::fs::write(&file, role.to_string()).expect("write role");
    hf(&["role", "create", "--file", file.to_str().expect("path")]).success();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, json!({ "name": "typo", "actions": ["projects/reed"] }).to_string()).expect("write");
    let refused = hf(&["role", "create", "--file", bad.to_str().expect("path")]);
    refused.code(1);
    assert!(refused.stderr.contains("matches no action"), "{}", refused.stderr);
    let defs = hf(&["-o", "json", "role", "definitions"]).json();
    let names: Vec<&str> = defs.as_array().expect("defs").iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["admin", "contributor", "reader", "ai_user", "ai_reader", "ml_user", "ml_reader", "backup_operator", "monitoring_reader", "lister"]);

    let identity = hf(&["-o", "json", "identity", "create", "indexer"]).json();
    let principal = identity["principal_id"].as_str().expect("principal").to_owned();
    let key = hf(&["-o", "json", "identity", "key", "indexer"]).json();
    let key = key["key"].as_str().expect("key").to_owned();
    let as_identity = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", key.as_str())];
    // No role yet: refused. With the custom role at the project: it reads, and writes nothing.
    cli.run_env(&["project", "show", "kbase"], &as_identity).code(5);
    hf(&["role", "assign", "--principal", &principal, "--role", "lister", "--scope", "/projects/kbase"]).success();
    cli.run_env(&["project", "show", "kbase"], &as_identity).success();
    cli.run_env(&["project", "update", "kbase", "--description", "x"], &as_identity).code(5);
    hf(&["role", "delete", "lister"]).code(4);
    hf(&["identity", "delete", "indexer"]).success();
    cli.run_env(&["project", "show", "kbase"], &as_identity).code(5);
    hf(&["role", "delete", "lister"]).success();
    assert_eq!(server.stop().code(), Some(0));
}
