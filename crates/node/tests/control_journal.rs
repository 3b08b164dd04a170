//! The control journal keeps DESIGN.md's invariants 1 and 6 like any project: after random
//! control operations (keys made and revoked, roles assigned and taken away, custom roles,
//! identities, locks made and removed — refusals included), replaying the control journal into
//! an empty database gives exactly the live state, and the control tables (the projection every
//! key and lock check reads) hold exactly the journal's rows, also after a restart.

use std::path::Path;

use holdfast_core::Caller;
use holdfast_core::control_plane::CONTROL_PROJECT;
use holdfast_node::{Config, Holdfast};
use holdfast_store::apply::Replayer;
use holdfast_store::control;
use holdfast_types::api::{IdentityCreate, KeyCreate, LockCreate, LockKind, Role, RoleAssignment, RoleDefinition};
use holdfast_types::{Kind, Lsn, PrincipalId, ProjectId, RequestId};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const ADMIN_KEY: &str = "control-journal-admin-key-0123";

#[derive(Clone, Debug)]
enum Step {
    Key { role: Option<usize>, project_scope: bool },
    Revoke(usize),
    Assign { key: usize, role: usize },
    Unassign { key: usize, role: usize },
    CustomRole(u8),
    Identity(u8),
    Lock { project_scope: bool },
    Unlock(usize),
}

const ROLES: [&str; 4] = ["reader", "ai_user", "contributor", "custom-0"];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (proptest::option::of(0..ROLES.len()), any::<bool>()).prop_map(|(role, project_scope)| Step::Key { role, project_scope }),
        1 => (0usize..8).prop_map(Step::Revoke),
        2 => (0usize..8, 0..ROLES.len()).prop_map(|(key, role)| Step::Assign { key, role }),
        1 => (0usize..8, 0..ROLES.len()).prop_map(|(key, role)| Step::Unassign { key, role }),
        1 => (0u8..3).prop_map(Step::CustomRole),
        1 => (0u8..3).prop_map(Step::Identity),
        1 => any::<bool>().prop_map(|project_scope| Step::Lock { project_scope }),
        1 => (0usize..4).prop_map(Step::Unlock),
    ]
}

fn open(dir: &Path) -> Holdfast {
    Holdfast::open(Config::new(dir.to_owned(), "test", Some(ADMIN_KEY.into()))).expect("open node").node
}

fn admin(node: &Holdfast) -> Caller {
    Caller { principal: node.core.authenticate(Some(ADMIN_KEY)).expect("admin"), request_id: RequestId::generate() }
}

fn fail(message: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(message.into())
}

/// Runs the steps; refusals (an unknown role, a lock that is gone, the last admin) are part of
/// the test: they must leave nothing in the journal.
async fn run(node: &Holdfast, steps: &[Step]) {
    let gov = &node.governance;
    let mut principals: Vec<PrincipalId> = Vec::new();
    let mut keys = Vec::new();
    let mut locks = Vec::new();
    for step in steps {
        let caller = admin(node);
        match step {
            Step::Key { role, project_scope } => {
                let req = KeyCreate {
                    name: format!("k{}", keys.len()),
                    role: role.map(|r| Role::parse(ROLES[r])),
                    scope: project_scope.then(|| "/projects/app".to_owned()),
                };
                if let Ok(made) = gov.create_key(&caller, req).await {
                    principals.push(made.principal_id);
                    keys.push(made.key_id);
                }
            }
            Step::Revoke(i) => {
                if let Some(key) = keys.get(*i) {
                    let _ = gov.revoke_key(&caller, key.as_str()).await;
                }
            }
            Step::Assign { key, role } | Step::Unassign { key, role } => {
                let Some(principal) = principals.get(*key) else { continue };
                let req = RoleAssignment { principal_id: principal.clone(), role: Role::parse(ROLES[*role]), scope: "/".into() };
                if matches!(step, Step::Assign { .. }) {
                    let _ = gov.assign_role(&caller, req).await;
                } else {
                    let _ = gov.unassign_role(&caller, req).await;
                }
            }
            Step::CustomRole(n) => {
                let def = RoleDefinition { name: format!("custom-{n}"), actions: vec!["projects/read".into()], ..Default::default() };
                let _ = gov.create_role(&caller, def).await;
            }
            Step::Identity(n) => {
                let _ = gov.create_identity(&caller, IdentityCreate { name: format!("id-{n}") }).await;
            }
            Step::Lock { project_scope } => {
                let scope = if *project_scope { "/projects/app" } else { "/" }.to_owned();
                let req = LockCreate { scope, kind: LockKind::CanNotDelete, data_plane: false, notes: String::new() };
                if let Ok(lock) = gov.create_lock(&caller, req).await {
                    locks.push(lock.id);
                }
            }
            Step::Unlock(i) => {
                if let Some(id) = locks.get(*i) {
                    let _ = gov.delete_lock(&caller, id).await;
                }
            }
        }
    }
}

/// The control journal replayed into an empty database, and the rows of the control kinds in
/// the replayed state.
async fn replayed(node: &Holdfast, scratch: &Path) -> Result<(Vec<u8>, Vec<control::ControlRow>), TestCaseError> {
    let store = node.core.control_store().await.map_err(|e| fail(e.to_string()))?;
    let journal = store.journal(Lsn::ZERO, usize::MAX).await.map_err(|e| fail(e.to_string()))?;
    for (i, change) in journal.iter().enumerate() {
        prop_assert_eq!(change.lsn, Lsn(i as u64 + 1), "the control journal's LSNs are dense");
    }
    let path = scratch.join(format!("replay-{}.db", ProjectId::generate()));
    let mut replayer = Replayer::create(&path, store.id()).map_err(|e| fail(e.to_string()))?;
    for change in &journal {
        replayer.apply(change).map_err(|e| fail(format!("replaying control change {}: {e}", change.lsn)))?;
    }
    let dump = replayer.dump().map_err(|e| fail(e.to_string()))?;
    let live = store.dump().await.map_err(|e| fail(e.to_string()))?;
    prop_assert_eq!(String::from_utf8_lossy(&dump), String::from_utf8_lossy(&live), "replay of the control journal differs from its state");
    let mut rows: Vec<control::ControlRow> = store
        .read(|view| Ok(view.all()?.into_iter().filter(|r| Kind::CONTROL.contains(&r.kind)).map(|r| (r.kind, r.id, r.body)).collect()))
        .await
        .map_err(|e| fail(e.to_string()))?;
    rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok((dump, rows))
}

/// The control tables' rows, as the journal carries them.
async fn projection(node: &Holdfast) -> Vec<control::ControlRow> {
    let mut rows = node.core.control().call(control::control_rows).await.expect("control rows");
    rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    rows
}

async fn case(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    let scratch = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    let node = open(dir.path());
    run(&node, &steps).await;
    let (dump, rows) = replayed(&node, scratch.path()).await?;
    prop_assert_eq!(&projection(&node).await, &rows, "the control tables are the control journal's rows");
    // The last admin is never lost, whatever the steps did.
    prop_assert!(node.core.authenticate(Some(ADMIN_KEY)).is_ok());
    node.core.shutdown().await;
    drop(node);

    // After a restart: the same journal, the same projection (rebuilt from it).
    let node = open(dir.path());
    let (again, rows_again) = replayed(&node, scratch.path()).await?;
    prop_assert_eq!(&again, &dump);
    prop_assert_eq!(&projection(&node).await, &rows_again);
    prop_assert_eq!(&rows_again, &rows);
    node.core.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn control_replay_equals_state_and_the_projection_is_the_journal(steps in prop::collection::vec(step(), 4..32)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        runtime.block_on(case(steps))?;
    }
}

#[tokio::test]
async fn the_control_project_is_no_user_project() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    let caller = admin(&node);
    let listed = node.core.list_projects(&caller, None, Some(100)).await.expect("list");
    assert!(listed.data.iter().all(|p| p.name != CONTROL_PROJECT));
    let data = node.core.data(&caller, CONTROL_PROJECT, holdfast_core::Action::DataRead).await;
    assert_eq!(data.err().map(|e| e.kind), Some(holdfast_types::ErrorKind::NotFound));
    node.core.shutdown().await;
}
