//! Scoped roles with the real binary: a key whose role holds at one project reaches that project
//! only; role assignments add and take away rights at a scope; the built-in roles do what their
//! names say (a Backup Operator restores but never deletes); assignments survive a restart.

mod common;

use common::{ADMIN_KEY, Cli, Server};
use serde_json::json;

const CONV: &str = "/openai/v1/conversations";

fn conversations(project: &str) -> String {
    format!("/api/projects/{project}{CONV}")
}

#[test]
fn a_project_scoped_key_reaches_its_project_only_and_assignments_move_that_line() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let admin = server.admin();
    admin.create_project("alpha");
    admin.create_project("beta");
    let cli = Cli::new();
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    let created = cli
        .run_env(&["-o", "json", "key", "create", "--name", "ci", "--role", "contributor", "--scope", "/projects/alpha"], &env)
        .json();
    let (key, principal) = (created["key"].as_str().expect("key"), created["principal_id"].as_str().expect("principal"));
    let ci = server.api(Some(key));

    ci.patch("/v1/projects/alpha", &json!({ "description": "ci was here" })).ok(200);
    ci.post(&conversations("alpha"), &json!({})).ok(200);
    let message = ci.patch("/v1/projects/beta", &json!({ "description": "no" })).err(403, "forbidden");
    assert!(message.contains("at scope /projects/beta") && message.contains("contributor at /projects/alpha"), "{message}");
    assert_eq!(ci.post(&conversations("beta"), &json!({})).status, 403);
    ci.get("/v1/projects").err(403, "forbidden"); // listing is at scope /

    // An AI Reader assignment on beta: read its contents, write nothing there.
    cli.run_env(&["role", "assign", "--principal", principal, "--role", "ai_reader", "--scope", "/projects/beta"], &env).success();
    assert_eq!(ci.get(&format!("{}/conv_missing", conversations("beta"))).status, 404, "reads pass the gate");
    assert_eq!(ci.post(&conversations("beta"), &json!({})).status, 403, "an AI Reader writes nothing");
    let listed = cli.run_env(&["-o", "json", "role", "list"], &env).json();
    let mine: Vec<_> = listed.as_array().expect("list").iter().filter(|a| a["principal_id"] == principal).collect();
    assert_eq!(mine.len(), 2, "{listed}");

    // Assignments survive a restart; taking one away closes the door again.
    assert_eq!(server.stop().code(), Some(0));
    let server = Server::start(data.path());
    let env = [("HOLDFAST_ENDPOINT", server.base.as_str()), ("HOLDFAST_KEY", ADMIN_KEY)];
    let ci = server.api(Some(key));
    assert_eq!(ci.get(&format!("{}/conv_missing", conversations("beta"))).status, 404);
    cli.run_env(&["role", "unassign", "--principal", principal, "--role", "ai_reader", "--scope", "/projects/beta"], &env)
        .success();
    assert_eq!(ci.get(&format!("{}/conv_missing", conversations("beta"))).status, 403);
    cli.run_env(&["role", "unassign", "--principal", principal, "--role", "ai_reader", "--scope", "/projects/beta"], &env)
        .code(3);
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn a_backup_operator_restores_and_exports_but_never_deletes_or_reads_contents() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let admin = server.admin();
    admin.create_project("alpha");
    let key = admin.create_key("ops", "backup_operator")["key"].as_str().expect("key").to_owned();
    let ops = server.api(Some(&key));
    let op = ops.post("/v1/projects/alpha/restore", &json!({ "into": "alpha-copy" })).ok(202);
    let id = op["id"].as_str().expect("operation id").to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let op = ops.get(&format!("/v1/operations/{id}")).ok(200);
        if op["status"] == "succeeded" {
            break;
        }
        assert!(op["status"] == "running" && std::time::Instant::now() < deadline, "{op}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ops.get("/v1/projects/alpha-copy").ok(200);
    assert_eq!(ops.get("/v1/projects/alpha/export").status, 200);
    let message = ops.delete("/v1/projects/alpha").err(403, "forbidden");
    assert!(message.contains("projects/write"), "{message}");
    assert_eq!(ops.get(&conversations("alpha")).status, 403, "no list of contents");
    assert_eq!(ops.get(&format!("{}/conv_x", conversations("alpha"))).status, 403, "no contents");
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn bad_assignments_are_refused_and_change_nothing() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let admin = server.admin();
    let dev = admin.create_key("dev", "contributor");
    let principal = dev["principal_id"].as_str().expect("principal").to_owned();
    let before = admin.get("/v1/role-assignments").ok(200);
    for scope in ["/projects", "/projects/alpha/conversations/c", "projects/alpha", "/projects/Bad"] {
        let body = json!({ "principal_id": principal, "role": "reader", "scope": scope });
        admin.post("/v1/role-assignments", &body).err(400, "invalid_input");
    }
    let unknown = json!({ "principal_id": "prn_01m8tsenfjbke8vhrbbh4222cq", "role": "reader", "scope": "/" });
    admin.post("/v1/role-assignments", &unknown).err(404, "not_found");
    admin.post("/v1/role-assignments", &json!({ "principal_id": principal, "role": "owner", "scope": "/" })).err(400, "invalid_input");
    let dev_api = server.api(Some(dev["key"].as_str().expect("key")));
    let grab = json!({ "principal_id": principal, "role": "admin", "scope": "/" });
    assert!(dev_api.post("/v1/role-assignments", &grab).err(403, "forbidden").contains("keys/manage"));
    assert_eq!(admin.get("/v1/role-assignments").ok(200), before, "nothing was assigned");
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn a_deleted_projects_role_assignments_do_not_pass_to_a_new_project_of_that_name() {
    let data = tempfile::tempdir().expect("data");
    let server = Server::start(data.path());
    let admin = server.admin();
    admin.create_project("gamma");
    let body = json!({ "name": "tenant", "role": "contributor", "scope": "/projects/gamma" });
    let key = admin.post("/v1/keys", &body).ok(201)["key"].as_str().expect("key").to_owned();
    let tenant = server.api(Some(&key));
    tenant.patch("/v1/projects/gamma", &json!({ "description": "mine" })).ok(200);
    admin.delete("/v1/projects/gamma").ok(204);
    // While soft-deleted the assignment stays (a recover gives the project back as it was);
    // the purge takes it.
    admin.delete("/v1/deleted-projects/gamma").ok(204);
    admin.create_project("gamma");
    let message = tenant.patch("/v1/projects/gamma", &json!({ "description": "still mine?" })).err(403, "forbidden");
    assert!(message.contains("roles: none"), "the assignment went with the project: {message}");
    assert_eq!(server.stop().code(), Some(0));
}
