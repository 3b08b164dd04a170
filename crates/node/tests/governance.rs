//! Governance at the node level: soft delete (hidden, name reserved, recovered as it was,
//! purged by hand or after its retention, purge protection), custom roles with wildcards, and
//! managed identities that do or do not outlive their project.

use std::path::Path;

use holdfast_agents::conversations::ConversationCreate;
use holdfast_core::Caller;
use holdfast_node::{Config, Holdfast};
use holdfast_types::api::{
    IdentityCreate, KeyCreate, ProjectCreate, ProjectUpdate, Role, RoleAssignment, RoleDefinition,
};
use holdfast_types::{ErrorKind, Kind, Op, RequestId, now_micros};
use serde_json::json;

const KEY: &str = "test-admin-key-0123456789";
const DAY_US: i64 = 86_400_000_000;

fn open(dir: &Path) -> Holdfast {
    Holdfast::open(Config::new(dir.to_owned(), "test", Some(KEY.into()))).expect("open node").node
}

fn as_key(node: &Holdfast, key: &str) -> Caller {
    Caller { principal: node.core.authenticate(Some(key)).expect("authenticate"), request_id: RequestId::generate() }
}

fn admin(node: &Holdfast) -> Caller {
    as_key(node, KEY)
}

fn project(name: &str) -> ProjectCreate {
    ProjectCreate { name: name.into(), ..Default::default() }
}

fn kind<T: std::fmt::Debug>(result: holdfast_core::Result<T>, want: ErrorKind, what: &str) -> String {
    let err = result.expect_err(what);
    assert_eq!(err.kind, want, "{what}: {err}");
    err.message
}

async fn deleted_names(node: &Holdfast) -> Vec<String> {
    let page = node.core.list_deleted_projects(&admin(node), None, None).await.expect("list deleted");
    page.data.into_iter().map(|p| p.name).collect()
}

#[tokio::test]
async fn soft_delete_hides_keeps_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    let c = admin(&node);
    node.core.create_project(&c, project("keep")).await.expect("create");
    let conv = node.agents.create_conversation(&c, "keep", ConversationCreate::default()).await.expect("conversation");
    let conv_id = conv["id"].as_str().expect("id").to_owned();
    let before = node.core.get_project(&c, "keep").await.expect("get");
    assert_eq!(before.soft_delete_retention_days, 14);

    node.core.delete_project(&c, "keep").await.expect("delete");
    // Hidden from every route…
    kind(node.core.get_project(&c, "keep").await, ErrorKind::NotFound, "get deleted");
    kind(node.agents.get_conversation(&c, "keep", &conv_id).await, ErrorKind::NotFound, "contents of deleted");
    kind(node.core.delete_project(&c, "keep").await, ErrorKind::NotFound, "second delete");
    assert!(node.core.list_projects(&c, None, None).await.expect("list").data.is_empty());
    // …listed as deleted, with its purge time 14 days on…
    let deleted = node.core.list_deleted_projects(&c, None, None).await.expect("deleted").data;
    assert_eq!(deleted.len(), 1);
    let (at, after) = (deleted[0].deleted_at.clone().expect("deleted_at"), deleted[0].purge_after.clone().expect("purge_after"));
    let parse = |t: &str| t.parse::<jiff::Timestamp>().expect("rfc3339").as_microsecond();
    assert_eq!(parse(&after) - parse(&at), 14 * DAY_US);
    // …its name reserved, and that kept over a restart.
    kind(node.core.create_project(&c, project("keep")).await, ErrorKind::Conflict, "namesake");
    node.core.shutdown().await;
    drop(node);
    let node = open(dir.path());
    let c = admin(&node);
    assert_eq!(deleted_names(&node).await, ["keep"]);
    kind(node.core.get_project(&c, "keep").await, ErrorKind::NotFound, "deleted after restart");

    // Recovered as it was: same id, same contents; the journal holds the mark and its removal.
    let back = node.core.recover_project(&c, "keep").await.expect("recover");
    assert_eq!(back.id, before.id);
    assert!(back.deleted_at.is_none());
    assert_eq!(back.lsn.0, before.lsn.0 + 2);
    node.agents.get_conversation(&c, "keep", &conv_id).await.expect("contents back");
    assert!(deleted_names(&node).await.is_empty());
    kind(node.core.recover_project(&c, "keep").await, ErrorKind::NotFound, "recover an active project");
    node.core.shutdown().await;
}

#[tokio::test]
async fn purge_protection_and_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    let c = admin(&node);
    for bad in [6, 91] {
        let req = ProjectCreate { soft_delete_retention_days: Some(bad), ..project("bad-retention") };
        let message = kind(node.core.create_project(&c, req).await, ErrorKind::InvalidInput, "retention");
        assert!(message.contains("7 to 90"), "{message}");
    }
    kind(node.core.get_project(&c, "bad-retention").await, ErrorKind::NotFound, "nothing created");

    let req = ProjectCreate { soft_delete_retention_days: Some(7), purge_protection: true, ..project("guarded") };
    node.core.create_project(&c, req).await.expect("create protected");
    node.core.create_project(&c, project("loose")).await.expect("create");
    let off = ProjectUpdate { purge_protection: Some(false), ..Default::default() };
    kind(node.core.update_project(&c, "guarded", off).await, ErrorKind::InvalidInput, "protection off");
    node.core.delete_project(&c, "guarded").await.expect("delete");
    node.core.delete_project(&c, "loose").await.expect("delete");

    // A contributor may delete, never purge.
    let key = node.governance.create_key(&c, KeyCreate { name: "dev".into(), role: Some(Role::Contributor), scope: None }).await.expect("key");
    let dev = as_key(&node, &key.key);
    kind(node.core.purge_project(&dev, "loose").await, ErrorKind::Forbidden, "contributor purge");

    // Protection holds until the retention has passed, by hand and for the purger.
    let message = kind(node.core.purge_project(&c, "guarded").await, ErrorKind::Conflict, "protected purge");
    assert!(message.contains("purge protection"), "{message}");
    assert!(node.core.purge_expired(now_micros()).await.expect("purger").is_empty());
    assert_eq!(deleted_names(&node).await, ["guarded", "loose"]);
    // Without protection, a purge by hand is at once.
    node.core.purge_project(&c, "loose").await.expect("purge");
    assert_eq!(deleted_names(&node).await, ["guarded"]);
    node.core.create_project(&c, project("loose")).await.expect("the name is free");
    // Eight days on, the purger takes the 7-day one.
    assert_eq!(node.core.purge_expired(now_micros() + 8 * DAY_US).await.expect("purger"), ["guarded"]);
    assert!(deleted_names(&node).await.is_empty());
    let fresh = node.core.create_project(&c, project("guarded")).await.expect("name free after purge");
    assert_eq!(fresh.lsn.0, 1);
    node.core.shutdown().await;
}

/// A crash between the deletion mark and the catalog: the next open finishes the soft delete
/// before any request sees the project.
#[tokio::test]
async fn an_interrupted_soft_delete_is_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    let c = admin(&node);
    let made = node.core.create_project(&c, project("half")).await.expect("create");
    // Journal the mark the way a delete does, without the catalog step that follows it.
    let store = node.core.project_store("half").await.expect("store");
    let id = made.id.as_str().to_owned();
    store
        .write("test", "req", Box::new(move |_| Ok(vec![Op::Patch { kind: Kind::Project, id, patch: json!({ "deleted_us": now_micros() }) }])))
        .await
        .expect("mark");
    node.core.shutdown().await;
    drop((store, node));
    let node = open(dir.path());
    let c = admin(&node);
    kind(node.core.get_project(&c, "half").await, ErrorKind::NotFound, "half-deleted project");
    assert_eq!(deleted_names(&node).await, ["half"]);
    node.core.recover_project(&c, "half").await.expect("recover");
    node.core.get_project(&c, "half").await.expect("back");
    node.core.shutdown().await;
}

#[tokio::test]
async fn custom_roles_with_wildcards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    let c = admin(&node);
    node.core.create_project(&c, project("kbase")).await.expect("create");
    let conv = node.agents.create_conversation(&c, "kbase", ConversationCreate::default()).await.expect("conversation");
    let conv = conv["id"].as_str().expect("id").to_owned();

    // Refused definitions write nothing.
    let bad = [
        RoleDefinition { name: "reader".into(), actions: vec!["projects/read".into()], ..Default::default() },
        RoleDefinition { name: "typo".into(), actions: vec!["project/red".into()], ..Default::default() },
        RoleDefinition { name: "plane".into(), actions: vec!["projects/data/read".into()], ..Default::default() },
        RoleDefinition { name: "empty".into(), ..Default::default() },
        RoleDefinition { name: "Bad Name".into(), actions: vec!["*".into()], ..Default::default() },
    ];
    for def in bad {
        let name = def.name.clone();
        kind(node.governance.create_role(&c, def).await, ErrorKind::InvalidInput, &name);
    }
    assert_eq!(node.governance.list_roles(&c).await.expect("roles").data.len(), Role::BUILT_IN.len());

    // Everything of the control plane but writes and purges; reads contents, never secrets.
    let auditor = RoleDefinition {
        name: "auditor".into(),
        description: "reads everything it may, changes nothing".into(),
        actions: vec!["*".into()],
        not_actions: vec!["*/write".into(), "*manage".into(), "projects/purge".into(), "projects/import".into()],
        data_actions: vec!["projects/*".into()],
        not_data_actions: vec!["projects/data/write".into(), "*/secrets/*".into()],
        built_in: true, // the server sets this; a client's value is ignored
    };
    let made = node.governance.create_role(&c, auditor.clone()).await.expect("create role");
    assert!(!made.built_in);
    kind(node.governance.create_role(&c, auditor).await, ErrorKind::Conflict, "same name");
    let missing = RoleAssignment { principal_id: made_principal(&node, &c).await, role: Role::parse("nope"), scope: "/".into() };
    kind(node.governance.assign_role(&c, missing).await, ErrorKind::InvalidInput, "unknown role");

    let key = node
        .governance.create_key(&c, KeyCreate { name: "aud".into(), role: Some(Role::parse("auditor")), scope: Some("/projects/kbase".into()) })
        .await
        .expect("key with custom role");
    let aud = as_key(&node, &key.key);
    node.core.get_project(&aud, "kbase").await.expect("projects/read");
    node.core.journal(&aud, "kbase", holdfast_types::Lsn::ZERO, None, None).await.expect("projects/journal/read");
    node.agents.get_conversation(&aud, "kbase", &conv).await.expect("projects/data/read");
    kind(node.agents.create_conversation(&aud, "kbase", ConversationCreate::default()).await, ErrorKind::Forbidden, "data write");
    let update = ProjectUpdate { description: Some("x".into()), ..Default::default() };
    kind(node.core.update_project(&aud, "kbase", update).await, ErrorKind::Forbidden, "projects/write");
    kind(node.core.delete_project(&aud, "kbase").await, ErrorKind::Forbidden, "delete");
    // Held at /projects/kbase only.
    kind(node.core.list_projects(&aud, None, None).await, ErrorKind::Forbidden, "list at /");

    let message = kind(node.governance.delete_role(&c, "auditor").await, ErrorKind::Conflict, "assigned role");
    assert!(message.contains("1 assignment"), "{message}");
    kind(node.governance.delete_role(&c, "admin").await, ErrorKind::InvalidInput, "built-in");
    let held = RoleAssignment { principal_id: key.principal_id.clone(), role: Role::parse("auditor"), scope: "/projects/kbase".into() };
    node.governance.unassign_role(&c, held).await.expect("unassign");
    node.governance.delete_role(&c, "auditor").await.expect("delete role");
    kind(node.core.get_project(&as_key(&node, &key.key), "kbase").await, ErrorKind::Forbidden, "role gone");
    node.core.shutdown().await;
}

async fn made_principal(node: &Holdfast, c: &Caller) -> holdfast_types::PrincipalId {
    node.governance.create_key(c, KeyCreate { name: "spare".into(), role: Some(Role::Reader), scope: None }).await.expect("key").principal_id
}

#[tokio::test]
async fn identities_outlive_or_end_with_their_project() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    let c = admin(&node);
    node.core.create_project(&c, project("shared")).await.expect("shared");
    let conv = node.agents.create_conversation(&c, "shared", ConversationCreate::default()).await.expect("conversation");
    let conv = conv["id"].as_str().expect("id").to_owned();
    let runner = node.governance.create_identity(&c, IdentityCreate { name: "runner".into() }).await.expect("identity");
    kind(node.governance.create_identity(&c, IdentityCreate { name: "runner".into() }).await, ErrorKind::Conflict, "same name");
    kind(node.governance.create_identity(&c, IdentityCreate { name: "Not Valid".into() }).await, ErrorKind::InvalidInput, "name");
    // The workloads' identity reads the shared knowledge base.
    let grant = RoleAssignment { principal_id: runner.principal_id.clone(), role: Role::AiReader, scope: "/projects/shared".into() };
    node.governance.assign_role(&c, grant).await.expect("assign");

    let req = ProjectCreate { identity: Some("runner".into()), ..project("app") };
    let app = node.core.create_project(&c, req).await.expect("app");
    assert_eq!(app.identity.as_ref().map(|i| i.principal_id.clone()), Some(runner.principal_id.clone()));
    let sys = node.core.create_project(&c, ProjectCreate { system_identity: true, ..project("tool") }).await.expect("tool");
    let sys_identity = sys.identity.clone().expect("system identity");
    assert_eq!(sys_identity.kind, "system_assigned");
    let both = ProjectCreate { identity: Some("runner".into()), system_identity: true, ..project("both") };
    kind(node.core.create_project(&c, both).await, ErrorKind::InvalidInput, "both identities");
    let taken = ProjectCreate { identity: Some(sys_identity.name.clone()), ..project("steal") };
    kind(node.core.create_project(&c, taken).await, ErrorKind::InvalidInput, "another's system identity");

    let runner_key = node.governance.create_identity_key(&c, "runner").await.expect("runner key");
    let sys_key = node.governance.create_identity_key(&c, &sys_identity.name).await.expect("sys key");
    let sys_grant = RoleAssignment { principal_id: sys_identity.principal_id.clone(), role: Role::AiReader, scope: "/projects/shared".into() };
    node.governance.assign_role(&c, sys_grant).await.expect("assign sys");
    // A system identity ends with its project: it can never be an Owner of everything (its
    // purge would then remove the last admin without the guard seeing it).
    let owner = RoleAssignment { principal_id: sys_identity.principal_id.clone(), role: Role::Admin, scope: "/".into() };
    let message = kind(node.governance.assign_role(&c, owner).await, ErrorKind::InvalidInput, "system identity as admin at /");
    assert!(message.contains("system-assigned"), "{message}");
    let at_project = RoleAssignment { principal_id: sys_identity.principal_id.clone(), role: Role::Admin, scope: "/projects/tool".into() };
    node.governance.assign_role(&c, at_project).await.expect("admin of its own project is fine");
    node.agents.get_conversation(&as_key(&node, &runner_key.key), "shared", &conv).await.expect("runner reads");
    node.agents.get_conversation(&as_key(&node, &sys_key.key), "shared", &conv).await.expect("sys reads");

    // Both projects deleted, purged and made again.
    for name in ["app", "tool"] {
        node.core.delete_project(&c, name).await.expect("delete");
        node.core.purge_project(&c, name).await.expect("purge");
    }
    let again = node.core.create_project(&c, ProjectCreate { identity: Some("runner".into()), ..project("app") }).await.expect("app again");
    assert_eq!(again.identity.map(|i| i.principal_id), Some(runner.principal_id.clone()));
    // The user-assigned identity kept its id, key and assignment; the system one is gone.
    node.agents.get_conversation(&as_key(&node, &runner_key.key), "shared", &conv).await.expect("still reads");
    assert!(node.core.authenticate(Some(&sys_key.key)).is_err(), "a purged project's identity authenticates no more");
    let listed: Vec<String> = node.governance.list_identities(&c).await.expect("list").data.into_iter().map(|i| i.name).collect();
    assert_eq!(listed, ["runner"]);
    let assignments = node.governance.list_role_assignments(&c).await.expect("assignments").data;
    assert!(assignments.iter().all(|a| a.principal_id != sys_identity.principal_id));
    kind(node.governance.delete_identity(&c, "nobody").await, ErrorKind::NotFound, "unknown identity");
    node.governance.delete_identity(&c, "runner").await.expect("delete identity");
    assert!(node.core.authenticate(Some(&runner_key.key)).is_err(), "a removed identity's key stops working");
    node.core.shutdown().await;
}
