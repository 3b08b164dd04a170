//! The readiness review (`Service::check`) at the node level: a fresh project is not ready
//! (no delete lock), and locking, archiving, verifying and purge protection make every finding
//! pass but the replica's (a single server has no replica in another region); role assignments that can delete show up by
//! principal and role until a lock or an unassignment takes the power away; without an archive,
//! backup and restore drill fail rather than pass.

use std::path::Path;

use holdfast_recovery::backup::ArchiveConfig;
use holdfast_core::Caller;
use holdfast_node::{Config, Holdfast};
use holdfast_types::api::{
    CheckStatus, Finding, IdentityCreate, KeyCreate, LockCreate, LockKind, ProjectCreate, ProjectUpdate, Readiness, Role,
    RoleAssignment, RoleDefinition, Severity,
};
use holdfast_types::{ErrorKind, RequestId};

const KEY: &str = "test-admin-key-0123456789";

fn open(dir: &Path, archive: Option<&Path>) -> Holdfast {
    let mut config = Config::new(dir.to_owned(), "test", Some(KEY.into()));
    config.recovery.archive = archive.map(|a| ArchiveConfig::new(&format!("file://{}", a.display())));
    Holdfast::open(config).expect("open node").node
}

fn as_key(node: &Holdfast, key: &str) -> Caller {
    Caller { principal: node.core.authenticate(Some(key)).expect("authenticate"), request_id: RequestId::generate() }
}

fn project(name: &str) -> ProjectCreate {
    ProjectCreate { name: name.into(), ..Default::default() }
}

fn lock(scope: &str, data_plane: bool) -> LockCreate {
    LockCreate { scope: scope.into(), kind: LockKind::CanNotDelete, data_plane, notes: String::new() }
}

async fn review(node: &Holdfast, caller: &Caller, name: &str) -> Readiness {
    let mut all = node.governance.check(caller, Some(name)).await.expect("check");
    assert_eq!(all.len(), 1, "one review for one project: {all:?}");
    all.remove(0)
}

fn finding<'a>(review: &'a Readiness, check: &str) -> &'a Finding {
    review.findings.iter().find(|f| f.check == check).unwrap_or_else(|| panic!("no {check} finding in {review:#?}"))
}

fn status(review: &Readiness, check: &str) -> CheckStatus {
    finding(review, check).status
}

#[tokio::test]
async fn a_fresh_project_is_not_ready_until_its_findings_are_fixed() {
    let (dir, archive) = (tempfile::tempdir().expect("data"), tempfile::tempdir().expect("archive"));
    let node = open(dir.path(), Some(archive.path()));
    let c = as_key(&node, KEY);
    node.governance.create_identity(&c, IdentityCreate { name: "worker".into() }).await.expect("identity");
    node.core.create_project(&c, ProjectCreate { identity: Some("worker".into()), ..project("prod") }).await.expect("create");
    node.core.create_project(&c, project("bare")).await.expect("create");

    let all = node.governance.check(&c, None).await.expect("check all");
    let mut names: Vec<&str> = all.iter().map(|r| r.project.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["bare", "prod"]);
    let prod = review(&node, &c, "prod").await;
    assert!(!prod.ok, "no lock: not ready");
    let lock_finding = finding(&prod, "delete_lock");
    assert_eq!((lock_finding.status, lock_finding.severity), (CheckStatus::Fail, Severity::High));
    assert_eq!(lock_finding.fix, "holdfast lock create --scope /projects/prod --kind CanNotDelete --data-plane");
    assert_eq!(status(&prod, "data_plane_lock"), CheckStatus::Fail);
    assert_eq!(finding(&prod, "restore_drill").fix, "holdfast backup verify --project prod");
    assert_eq!(status(&prod, "restore_drill"), CheckStatus::Fail, "no trial restore has run");
    assert_eq!(finding(&prod, "purge_protection").fix, "holdfast project update prod --purge-protection");
    assert_eq!(status(&prod, "identity"), CheckStatus::Pass, "{prod:#?}");
    assert_eq!(status(&prod, "standing_delete_rights"), CheckStatus::Pass, "only the admin key: {prod:#?}");
    let replica = finding(&prod, "replica");
    assert_eq!((replica.status, replica.severity), (CheckStatus::Fail, Severity::Medium));
    assert_eq!(replica.fix, "holdfast project replicate --project prod --to REGION --mode warm");
    let bare = review(&node, &c, "bare").await;
    assert_eq!(status(&bare, "identity"), CheckStatus::Fail);
    assert!(finding(&bare, "identity").fix.contains("holdfast identity create"), "{bare:#?}");

    // Fix it: a lock on both planes, purge protection, everything archived, a trial restore.
    node.governance.create_lock(&c, lock("/projects/prod", true)).await.expect("lock");
    let protect = ProjectUpdate { purge_protection: Some(true), ..Default::default() };
    node.core.update_project(&c, "prod", protect).await.expect("purge protection");
    node.recovery.backup_now(&c, "prod").await.expect("backup now");
    node.recovery.backup_verify(&c, "prod").await.expect("verify");
    let prod = review(&node, &c, "prod").await;
    assert!(prod.ok, "{prod:#?}");
    for f in &prod.findings {
        if f.check == "replica" {
            assert_eq!(f.status, CheckStatus::Fail, "one server has no other region: {f:#?}");
            continue;
        }
        assert_eq!(f.status, CheckStatus::Pass, "{f:#?}");
        assert_eq!(f.fix, "", "nothing to fix: {f:#?}");
    }
    // The other project is untouched by prod's fixes.
    assert!(!review(&node, &c, "bare").await.ok);
    // A deleted project is not reviewed; an unknown one is not found.
    node.core.delete_project(&c, "bare").await.expect("delete");
    let all = node.governance.check(&c, None).await.expect("check all");
    assert_eq!(all.iter().map(|r| r.project.as_str()).collect::<Vec<_>>(), ["prod"]);
    let missing = node.governance.check(&c, Some("bare")).await.expect_err("deleted project");
    assert_eq!(missing.kind, ErrorKind::NotFound);
    node.core.shutdown().await;
}

#[tokio::test]
async fn roles_that_can_delete_are_named_until_a_lock_or_an_unassignment_removes_the_power() {
    let (dir, archive) = (tempfile::tempdir().expect("data"), tempfile::tempdir().expect("archive"));
    let node = open(dir.path(), Some(archive.path()));
    let c = as_key(&node, KEY);
    node.core.create_project(&c, project("shared")).await.expect("create");
    // Readers and backup operators cannot delete: they are not counted.
    for (name, role) in [("auditor", Role::Reader), ("backups", Role::BackupOperator)] {
        node.governance.create_key(&c, KeyCreate { name: name.into(), role: Some(role), scope: None }).await.expect("key");
    }
    assert_eq!(status(&review(&node, &c, "shared").await, "standing_delete_rights"), CheckStatus::Pass);

    // A contributor at the project can delete it and its contents.
    let scope = Some("/projects/shared".to_owned());
    let dev = node.governance.create_key(&c, KeyCreate { name: "dev".into(), role: Some(Role::Contributor), scope }).await.expect("key");
    let rights = finding(&review(&node, &c, "shared").await, "standing_delete_rights").clone();
    assert_eq!((rights.status, rights.severity), (CheckStatus::Fail, Severity::Medium));
    assert!(rights.message.contains(&format!("{} (contributor at /projects/shared)", dev.principal_id)), "{}", rights.message);
    assert!(rights.message.starts_with("1 principal(s)"), "{}", rights.message);
    let unassign = format!("holdfast role unassign --principal {} --role contributor --scope /projects/shared", dev.principal_id);
    assert_eq!(rights.fix, unassign);

    // So can an identity (no key yet: it can be given one) holding a custom role that writes
    // contents, at `/`.
    let scribe = RoleDefinition {
        name: "scribe".into(),
        actions: vec!["projects/read".into()],
        data_actions: vec!["projects/data/*".into()],
        ..Default::default()
    };
    node.governance.create_role(&c, scribe).await.expect("custom role");
    let bot = node.governance.create_identity(&c, IdentityCreate { name: "bot".into() }).await.expect("identity");
    let held = RoleAssignment { principal_id: bot.principal_id.clone(), role: Role::Custom("scribe".into()), scope: "/".into() };
    node.governance.assign_role(&c, held).await.expect("assign");
    let rights = finding(&review(&node, &c, "shared").await, "standing_delete_rights").clone();
    assert!(rights.message.starts_with("2 principal(s)"), "{}", rights.message);
    assert!(rights.message.contains(&format!("{} (scribe at /)", bot.principal_id)), "{}", rights.message);

    // The contributor may review its own project, not every project.
    let as_dev = as_key(&node, &dev.key);
    assert!(!review(&node, &as_dev, "shared").await.ok);
    assert_eq!(node.governance.check(&as_dev, None).await.expect_err("all projects").kind, ErrorKind::Forbidden);

    // A lock on the project alone leaves their content deletes; with the data plane, none.
    let control = node.governance.create_lock(&c, lock("/projects/shared", false)).await.expect("lock");
    assert_eq!(status(&review(&node, &c, "shared").await, "standing_delete_rights"), CheckStatus::Fail);
    let both = node.governance.create_lock(&c, lock("/", true)).await.expect("lock");
    let rights = finding(&review(&node, &c, "shared").await, "standing_delete_rights").clone();
    assert_eq!(rights.status, CheckStatus::Pass, "{rights:#?}");
    assert!(rights.message.contains("locks refuse their deletes"), "{}", rights.message);

    // Without locks, taking the roles away (the fix) passes too.
    node.governance.delete_lock(&c, &both.id).await.expect("unlock");
    node.governance.delete_lock(&c, &control.id).await.expect("unlock");
    let contributor = RoleAssignment { principal_id: dev.principal_id.clone(), role: Role::Contributor, scope: "/projects/shared".into() };
    node.governance.unassign_role(&c, contributor).await.expect("unassign");
    node.governance.delete_identity(&c, "bot").await.expect("remove identity");
    let rights = finding(&review(&node, &c, "shared").await, "standing_delete_rights").clone();
    assert_eq!(rights.status, CheckStatus::Pass, "{rights:#?}");
    assert!(rights.message.starts_with("only Owners"), "{}", rights.message);
    node.core.shutdown().await;
}

#[tokio::test]
async fn without_an_archive_backup_and_drill_fail_rather_than_pass() {
    let dir = tempfile::tempdir().expect("data");
    let node = open(dir.path(), None);
    let c = as_key(&node, KEY);
    let req = ProjectCreate { system_identity: true, purge_protection: true, ..project("local") };
    node.core.create_project(&c, req).await.expect("create");
    node.governance.create_lock(&c, lock("/projects/local", true)).await.expect("lock");
    let local = review(&node, &c, "local").await;
    assert!(!local.ok, "a lock is not enough without continuous backup: {local:#?}");
    let backup = finding(&local, "continuous_backup");
    assert_eq!((backup.status, backup.severity), (CheckStatus::Fail, Severity::High));
    assert_eq!(backup.fix, "holdfast serve --archive URL");
    let drill = finding(&local, "restore_drill");
    assert_eq!(drill.status, CheckStatus::Fail);
    assert_eq!(drill.fix, "holdfast serve --archive URL, then holdfast backup verify --project local");
    assert_eq!(status(&local, "replica"), CheckStatus::Fail);
    // A system-assigned identity goes with the project; the practice asks for a user-assigned one.
    let identity = finding(&local, "identity");
    assert_eq!(identity.status, CheckStatus::Fail);
    assert!(identity.message.contains("system-assigned"), "{}", identity.message);
    for check in ["delete_lock", "data_plane_lock", "standing_delete_rights", "purge_protection"] {
        assert_eq!(status(&local, check), CheckStatus::Pass, "{check}: {local:#?}");
    }
    node.core.shutdown().await;
}

/// A replica region listed in the project's record without a wrap of its data key (a project
/// replicated before data keys) could not open the project's connection secrets after a
/// failover: the review fails the replica check, high, naming the region and the fix.
#[tokio::test]
async fn a_replica_that_cannot_open_the_projects_secrets_is_a_high_finding() {
    let dir = tempfile::tempdir().expect("data");
    let node = open(dir.path(), None);
    let c = as_key(&node, KEY);
    node.core.create_project(&c, project("keyed")).await.expect("create");
    let connection: holdfast_agents::connections::ConnectionCreate = serde_json::from_value(serde_json::json!({
        "name": "up", "target": "http://127.0.0.1:9/v1", "api_key": "sk-0123456789"
    }))
    .expect("connection");
    node.agents.create_connection(&c, "keyed", connection).await.expect("connection");
    // The record names a replica in region "far", whose key the project never learned.
    let entry = node.core.entry("keyed").await.expect("entry");
    let store = node.core.store(&entry).await.expect("store");
    let spec: holdfast_types::api::ReplicaSpec = serde_json::from_value(serde_json::json!({"region": "far", "mode": "warm"})).expect("spec");
    node.core
        .update_topology(&c, &entry, &store, false, move |primary, replicas| {
            primary.get_or_insert("test".into());
            replicas.push(spec);
        })
        .await
        .expect("topology");
    let replica = finding(&review(&node, &c, "keyed").await, "replica").clone();
    assert_eq!((replica.status, replica.severity), (CheckStatus::Fail, Severity::High), "{replica:#?}");
    assert!(replica.message.contains("far") && replica.message.contains("secrets"), "{replica:#?}");
    assert_eq!(replica.fix, "holdfast project replicate --project keyed --to far");
    // Once the project holds far's key (what replicate journals), the data key is wrapped for it
    // and the finding is only the replica's health.
    let far = holdfast_core::secrets::MasterKey::load(Some(&"0f".repeat(32)), Path::new("/nonexistent")).expect("key");
    let far = holdfast_core::secrets::RegionKey::of(&far);
    node.core.add_data_key_recipient(&c, &entry, &store, "far", far.public()).await.expect("wrap for far");
    let replica = finding(&review(&node, &c, "keyed").await, "replica").clone();
    assert!(!replica.message.contains("secrets") && replica.severity != Severity::High, "{replica:#?}");
}
