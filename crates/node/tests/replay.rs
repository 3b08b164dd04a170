//! The journal's invariants at the node level (DESIGN.md §The spine): whatever sequence of
//! project operations users make, valid or not,
//!
//! 1. **replay equals state**: each project's journal, read through [`Service::journal`] page by
//!    page, replays into an empty project with a dump byte-identical to the live store's;
//! 2. **dense LSNs**: the journal is 1..=n, and a request that is refused (bad input, conflict,
//!    forbidden) or changes nothing adds no entry;
//!
//! and the state survives a restart. Plus the rules around it: names, roles, key revocation and
//! the one-process-per-data-directory lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use holdfast_core::Caller;
use holdfast_node::{Config, Holdfast};
use holdfast_store::apply::Replayer;
use holdfast_types::api::{KeyCreate, Project, ProjectCreate, ProjectUpdate, Role};
use holdfast_types::{CHANGE_FORMAT_VERSION, Change, Epoch, ErrorKind, Lsn, Op, ProjectId, RequestId};
use proptest::prelude::*;

const ADMIN_KEY: &str = "test-admin-key-0123456789";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fn config(dir: &Path) -> Config {
    Config::new(dir.to_owned(), "test", Some(ADMIN_KEY.into()))
}

fn open(dir: &Path) -> Holdfast {
    Holdfast::open(config(dir)).expect("open node").node
}

/// A caller with `key`, under a fresh request id (so each journal entry can be traced to its
/// request).
fn caller(node: &Holdfast, key: &str) -> Caller {
    Caller {
        principal: node.core.authenticate(Some(key)).expect("authenticate"),
        request_id: RequestId::generate(),
    }
}

fn admin(node: &Holdfast) -> Caller {
    caller(node, ADMIN_KEY)
}

fn fail(message: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(message.into())
}

/// The whole journal of `name`, read through the node `page` changes at a time.
async fn read_journal(node: &Holdfast, name: &str, page: usize) -> Result<Vec<Change>, TestCaseError> {
    let caller = admin(node);
    let mut changes: Vec<Change> = Vec::new();
    loop {
        let after = changes.last().map_or(Lsn::ZERO, |c| c.lsn);
        let got = node
            .core.journal(&caller, name, after, Some(page), None)
            .await
            .map_err(|e| fail(format!("journal of {name} after {after}: {e}")))?;
        prop_assert!(got.changes.len() <= page, "a page of {} for a limit of {page}", got.changes.len());
        prop_assert!(got.changes.iter().all(|c| c.lsn > after), "a page holds LSNs not after {after}");
        if got.changes.is_empty() {
            prop_assert_eq!(got.last_lsn, after, "an empty page before the end of the journal");
            return Ok(changes);
        }
        changes.extend(got.changes);
    }
}

async fn last_lsn(node: &Holdfast, name: &str) -> Lsn {
    node.core.journal(&admin(node), name, Lsn::ZERO, Some(1), None).await.expect("journal").last_lsn
}

fn check_journal_shape(journal: &[Change]) -> Result<(), TestCaseError> {
    for (i, change) in journal.iter().enumerate() {
        prop_assert_eq!(change.lsn, Lsn(i as u64 + 1), "LSNs must be 1..=n with no gap");
        prop_assert_eq!(change.v, CHANGE_FORMAT_VERSION);
        prop_assert_eq!(change.epoch, Epoch::FIRST);
        prop_assert!(!change.ops.is_empty());
        if i > 0 {
            prop_assert!(change.ts >= journal[i - 1].ts, "timestamp went back at LSN {}", change.lsn);
        }
    }
    Ok(())
}

/// Reads `name`'s journal through the node, checks its shape, replays it into an empty project
/// and compares the result with the live store's dump. Returns the journal and the dump.
async fn verify_replay(
    node: &Holdfast,
    name: &str,
    page: usize,
    scratch: &Path,
) -> Result<(Vec<Change>, Vec<u8>), TestCaseError> {
    let project = node.core.get_project(&admin(node), name).await.map_err(|e| fail(e.to_string()))?;
    let journal = read_journal(node, name, page).await?;
    check_journal_shape(&journal)?;
    prop_assert_eq!(journal.last().map(|c| c.lsn), Some(project.lsn));
    // The first change creates the project's record; every op is on that record.
    prop_assert!(
        matches!(&journal[0].ops[..], [Op::Put { id, parent: None, .. }] if id == project.id.as_str()),
        "the first change of {name} is {:?}",
        journal[0].ops
    );
    prop_assert!(journal.iter().flat_map(|c| &c.ops).all(|op| op.id() == project.id.as_str()));

    let store = node.core.project_store(name).await.map_err(|e| fail(e.to_string()))?;
    prop_assert_eq!(store.id(), &project.id);
    prop_assert_eq!(store.last_lsn(), project.lsn);
    let dump = store.dump().await.map_err(|e| fail(e.to_string()))?;

    let path = scratch.join(format!("replay-{}.db", ProjectId::generate()));
    let mut replayer = Replayer::create(&path, &project.id).map_err(|e| fail(e.to_string()))?;
    for change in &journal {
        replayer.apply(change).map_err(|e| fail(format!("replaying {name} change {}: {e}", change.lsn)))?;
    }
    let replayed = replayer.dump().map_err(|e| fail(e.to_string()))?;
    prop_assert_eq!(
        String::from_utf8_lossy(&replayed),
        String::from_utf8_lossy(&dump),
        "replay of {} differs from its state",
        name
    );
    Ok((journal, dump))
}

// The model ----------------------------------------------------------------------------------------

/// What a project should look like, as far as the test can tell from the requests it made.
#[derive(Clone, Debug, PartialEq)]
struct Expected {
    id: Option<ProjectId>,
    display_name: String,
    description: String,
    tags: BTreeMap<String, String>,
    lsn: Lsn,
    /// The request ids of the changes that should be journaled.
    requests: BTreeSet<String>,
}

impl Expected {
    fn check(&self, name: &str, p: &Project) -> Result<(), TestCaseError> {
        prop_assert_eq!(p.name.as_str(), name);
        prop_assert_eq!(Some(&p.id), self.id.as_ref());
        prop_assert_eq!(&p.display_name, &self.display_name);
        prop_assert_eq!(&p.description, &self.description);
        prop_assert_eq!(&p.tags, &self.tags);
        prop_assert_eq!(p.lsn, self.lsn);
        prop_assert_eq!(p.epoch, Epoch::FIRST);
        Ok(())
    }

    /// Applies an update; returns whether anything changed (and so a change should be journaled).
    fn update(&mut self, req: &ProjectUpdate) -> bool {
        let mut changed = false;
        if let Some(v) = &req.display_name
            && *v != self.display_name
        {
            self.display_name = v.clone();
            changed = true;
        }
        if let Some(v) = &req.description
            && *v != self.description
        {
            self.description = v.clone();
            changed = true;
        }
        for (k, v) in req.tags.iter().flatten() {
            changed |= match v {
                Some(v) => self.tags.insert(k.clone(), v.clone()).as_ref() != Some(v),
                None => self.tags.remove(k).is_some(),
            };
        }
        if changed {
            self.lsn = self.lsn.next();
        }
        changed
    }
}

const NAMES: [&str; 3] = ["alpha", "beta-2", "c3p"];
const BAD_NAMES: [&str; 10] = ["ab", "-abc", "abc-", "ABC", "a_b", "a.b", "", "proj_x", "ab c", "é-ab"];

#[derive(Clone, Debug)]
enum Invalid {
    EmptyTagKey,
    LongTagKey,
    ControlInTagKey,
    LongTagValue,
    TooManyTags,
    LongDescription,
    LongDisplayName,
    ControlInDisplayName,
}

impl Invalid {
    fn update(&self) -> ProjectUpdate {
        let tags = |pairs: Vec<(String, Option<String>)>| Some(pairs.into_iter().collect());
        match self {
            Invalid::EmptyTagKey => {
                ProjectUpdate { tags: tags(vec![(String::new(), Some("v".into()))]), ..Default::default() }
            }
            Invalid::LongTagKey => {
                ProjectUpdate { tags: tags(vec![("k".repeat(129), Some("v".into()))]), ..Default::default() }
            }
            Invalid::ControlInTagKey => {
                ProjectUpdate { tags: tags(vec![("a\u{7}b".into(), Some("v".into()))]), ..Default::default() }
            }
            Invalid::LongTagValue => {
                ProjectUpdate { tags: tags(vec![("a".into(), Some("v".repeat(257)))]), ..Default::default() }
            }
            Invalid::TooManyTags => ProjectUpdate {
                tags: tags((0..51).map(|i| (format!("many-{i}"), Some(String::new()))).collect()),
                ..Default::default()
            },
            Invalid::LongDescription => {
                ProjectUpdate { description: Some("d".repeat(4001)), ..Default::default() }
            }
            Invalid::LongDisplayName => {
                ProjectUpdate { display_name: Some("n".repeat(201)), ..Default::default() }
            }
            Invalid::ControlInDisplayName => {
                ProjectUpdate { display_name: Some("line\nbreak".into()), ..Default::default() }
            }
        }
    }

    fn create(&self, name: &str) -> ProjectCreate {
        let valid_tags = |u: ProjectUpdate| -> BTreeMap<String, String> {
            u.tags.into_iter().flatten().map(|(k, v)| (k, v.unwrap_or_default())).collect()
        };
        let update = self.update();
        ProjectCreate {
            name: name.into(),
            display_name: update.display_name.clone(),
            description: update.description.clone(),
            tags: valid_tags(update),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    Create {
        name: usize,
        display_name: Option<String>,
        description: Option<String>,
        tags: BTreeMap<String, String>,
    },
    CreateBadName {
        name: usize,
    },
    /// A create with a valid name and an invalid field.
    CreateInvalid {
        name: usize,
        how: Invalid,
    },
    /// An update of `NAMES[name]`, which may not exist.
    Update {
        name: usize,
        update: ProjectUpdate,
    },
    /// An invalid update of an existing project.
    UpdateInvalid {
        target: usize,
        how: Invalid,
    },
    /// One update per tag, all at once, on an existing project.
    ConcurrentTags {
        target: usize,
        tags: BTreeMap<String, Option<String>>,
    },
    Delete {
        name: usize,
    },
}

fn text_strategy() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9 ]{0,12}", "\\PC{0,10}", Just(String::new())]
}

fn tag_key_strategy() -> impl Strategy<Value = String> {
    // At most 20 distinct keys, well under the limit of 50 tags.
    "[a-d]{1,2}"
}

fn tag_value_strategy() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9]{0,4}", "\\PC{0,6}"]
}

fn tag_changes_strategy() -> impl Strategy<Value = BTreeMap<String, Option<String>>> {
    prop::collection::btree_map(tag_key_strategy(), prop::option::weighted(0.6, tag_value_strategy()), 0..6)
}

fn invalid_strategy() -> impl Strategy<Value = Invalid> {
    prop_oneof![
        Just(Invalid::EmptyTagKey),
        Just(Invalid::LongTagKey),
        Just(Invalid::ControlInTagKey),
        Just(Invalid::LongTagValue),
        Just(Invalid::TooManyTags),
        Just(Invalid::LongDescription),
        Just(Invalid::LongDisplayName),
        Just(Invalid::ControlInDisplayName),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let name = 0..NAMES.len();
    prop_oneof![
        4 => (
            name.clone(),
            prop::option::of(text_strategy()),
            prop::option::of(text_strategy()),
            prop::collection::btree_map(tag_key_strategy(), tag_value_strategy(), 0..4),
        )
            .prop_map(|(name, display_name, description, tags)| Step::Create { name, display_name, description, tags }),
        1 => (0..BAD_NAMES.len()).prop_map(|name| Step::CreateBadName { name }),
        1 => (name.clone(), invalid_strategy()).prop_map(|(name, how)| Step::CreateInvalid { name, how }),
        12 => (
            name.clone(),
            prop::option::of(text_strategy()),
            prop::option::of(text_strategy()),
            prop::option::of(tag_changes_strategy()),
        )
            .prop_map(|(name, display_name, description, tags)| Step::Update {
                name,
                update: ProjectUpdate { display_name, description, tags, ..Default::default() },
            }),
        3 => (any::<usize>(), invalid_strategy()).prop_map(|(target, how)| Step::UpdateInvalid { target, how }),
        3 => (any::<usize>(), tag_changes_strategy()).prop_map(|(target, tags)| Step::ConcurrentTags { target, tags }),
        1 => name.prop_map(|name| Step::Delete { name }),
    ]
}

fn expect_err<T: std::fmt::Debug>(
    result: holdfast_core::Result<T>,
    kind: ErrorKind,
    what: &str,
) -> Result<(), TestCaseError> {
    match result {
        Err(e) if e.kind == kind => Ok(()),
        other => Err(fail(format!("{what}: expected {kind:?}, got {other:?}"))),
    }
}

async fn run_case(steps: Vec<Step>, page: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let node = Arc::new(open(dir.path()));
    let mut model: BTreeMap<String, Expected> = BTreeMap::new();

    for step in steps {
        match step {
            Step::Create { name, display_name, description, tags } => {
                let name = NAMES[name];
                let c = admin(&node);
                let req = ProjectCreate {
                    name: name.into(),
                    display_name: display_name.clone(),
                    description: description.clone(),
                    tags: tags.clone(),
                    ..Default::default()
                };
                let result = node.core.create_project(&c, req).await;
                if let Some(existing) = model.get(name) {
                    expect_err(result, ErrorKind::Conflict, &format!("second create of {name}"))?;
                    let now =
                        node.core.get_project(&admin(&node), name).await.map_err(|e| fail(e.to_string()))?;
                    existing.check(name, &now)?;
                } else {
                    let project = result.map_err(|e| fail(format!("create {name}: {e}")))?;
                    prop_assert!(
                        model.values().all(|e| e.id.as_ref() != Some(&project.id)),
                        "an id was reused"
                    );
                    let expected = Expected {
                        id: Some(project.id.clone()),
                        display_name: display_name.unwrap_or_else(|| name.to_owned()),
                        description: description.unwrap_or_default(),
                        tags,
                        lsn: Lsn(1),
                        requests: BTreeSet::from([c.request_id.to_string()]),
                    };
                    expected.check(name, &project)?;
                    prop_assert_eq!(&project.created_at, &project.updated_at);
                    model.insert(name.to_owned(), expected);
                }
            }
            Step::CreateBadName { name } => {
                let name = BAD_NAMES[name];
                let req = ProjectCreate { name: name.into(), ..Default::default() };
                expect_err(
                    node.core.create_project(&admin(&node), req).await,
                    ErrorKind::InvalidInput,
                    &format!("create {name:?}"),
                )?;
            }
            Step::CreateInvalid { name, how } => {
                let name = NAMES[name];
                let result = node.core.create_project(&admin(&node), how.create(name)).await;
                // Invalid input is refused before the name is looked at: InvalidInput, not Conflict.
                expect_err(result, ErrorKind::InvalidInput, &format!("create {name} with {how:?}"))?;
                // Nothing was created, and an existing project is untouched.
                match model.get(name) {
                    Some(existing) => {
                        let now = node
                            .core.get_project(&admin(&node), name)
                            .await
                            .map_err(|e| fail(e.to_string()))?;
                        existing.check(name, &now)?;
                    }
                    None => expect_err(
                        node.core.get_project(&admin(&node), name).await,
                        ErrorKind::NotFound,
                        name,
                    )?,
                }
            }
            Step::Update { name, update } => {
                let name = NAMES[name];
                let c = admin(&node);
                let result = node.core.update_project(&c, name, update.clone()).await;
                match model.get_mut(name) {
                    None => expect_err(result, ErrorKind::NotFound, &format!("update of missing {name}"))?,
                    Some(expected) => {
                        let project =
                            result.map_err(|e| fail(format!("update {name} with {update:?}: {e}")))?;
                        if expected.update(&update) {
                            expected.requests.insert(c.request_id.to_string());
                        }
                        expected.check(name, &project)?;
                    }
                }
            }
            Step::UpdateInvalid { target, how } => {
                let Some(name) = model.keys().nth(target % model.len().max(1)).cloned() else { continue };
                let before =
                    node.core.get_project(&admin(&node), &name).await.map_err(|e| fail(e.to_string()))?;
                let result = node.core.update_project(&admin(&node), &name, how.update()).await;
                expect_err(result, ErrorKind::InvalidInput, &format!("update {name} with {how:?}"))?;
                prop_assert_eq!(
                    last_lsn(&node, &name).await,
                    before.lsn,
                    "a refused update was journaled"
                );
                let after =
                    node.core.get_project(&admin(&node), &name).await.map_err(|e| fail(e.to_string()))?;
                prop_assert_eq!(after, before);
            }
            Step::ConcurrentTags { target, tags } => {
                let Some(name) = model.keys().nth(target % model.len().max(1)).cloned() else { continue };
                let mut tasks = Vec::new();
                for (k, v) in &tags {
                    let (node, name) = (node.clone(), name.clone());
                    let update = ProjectUpdate {
                        tags: Some(BTreeMap::from([(k.clone(), v.clone())])),
                        ..Default::default()
                    };
                    let c = admin(&node);
                    let rid = c.request_id.to_string();
                    tasks.push((
                        rid,
                        update.clone(),
                        tokio::spawn(async move { node.core.update_project(&c, &name, update).await }),
                    ));
                }
                let expected = model.get_mut(&name).expect("in the model");
                // Each task touches its own key, so the outcome does not depend on their order.
                for (rid, update, task) in tasks {
                    task.await
                        .expect("update task")
                        .map_err(|e| fail(format!("tag update of {name}: {e}")))?;
                    if expected.update(&update) {
                        expected.requests.insert(rid);
                    }
                }
                let now =
                    node.core.get_project(&admin(&node), &name).await.map_err(|e| fail(e.to_string()))?;
                expected.check(&name, &now)?;
            }
            Step::Delete { name } => {
                let name = NAMES[name];
                if model.contains_key(name) {
                    // Its journal goes with it: check it while it is there.
                    verify_replay(&node, name, page, scratch.path()).await?;
                }
                // A soft delete, then its purge: the name is free again, as the model has it.
                let result = node.core.delete_project(&admin(&node), name).await;
                match model.remove(name) {
                    None => expect_err(result, ErrorKind::NotFound, &format!("delete of missing {name}"))?,
                    Some(_) => {
                        result.map_err(|e| fail(format!("delete {name}: {e}")))?;
                        node.core.purge_project(&admin(&node), name).await.map_err(|e| fail(format!("purge {name}: {e}")))?;
                        expect_err(
                            node.core.get_project(&admin(&node), name).await,
                            ErrorKind::NotFound,
                            name,
                        )?;
                        expect_err(
                            node.core.journal(&admin(&node), name, Lsn::ZERO, None, None).await,
                            ErrorKind::NotFound,
                            &format!("journal of deleted {name}"),
                        )?;
                    }
                }
            }
        }
    }

    // Every project: the journal is dense, carries exactly the requests that changed something,
    // and replays to the live state.
    let listed =
        node.core.list_projects(&admin(&node), None, None).await.map_err(|e| fail(e.to_string()))?;
    prop_assert_eq!(
        listed.data.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        model.keys().cloned().collect::<Vec<_>>()
    );
    let mut before_restart = BTreeMap::new();
    for (name, expected) in &model {
        let project = node.core.get_project(&admin(&node), name).await.map_err(|e| fail(e.to_string()))?;
        expected.check(name, &project)?;
        let (journal, dump) = verify_replay(&node, name, page, scratch.path()).await?;
        let requests: BTreeSet<String> = journal.iter().map(|c| c.request_id.clone()).collect();
        prop_assert_eq!(requests.len(), journal.len(), "a request was journaled twice");
        prop_assert_eq!(&requests, &expected.requests, "journaled requests of {}", name);
        prop_assert!(journal.iter().all(|c| c.actor == "prn_admin"));
        before_restart.insert(name.clone(), (project, journal, dump));
    }

    // Restart: the same projects, journals and state.
    node.core.shutdown().await;
    drop(Arc::try_unwrap(node).ok().expect("no other handle"));
    let node = open(dir.path());
    for (name, (project, journal, dump)) in &before_restart {
        let now = node.core.get_project(&admin(&node), name).await.map_err(|e| fail(e.to_string()))?;
        prop_assert_eq!(&now, project);
        prop_assert_eq!(&read_journal(&node, name, page).await?, journal);
        let store = node.core.project_store(name).await.map_err(|e| fail(e.to_string()))?;
        prop_assert_eq!(&store.dump().await.map_err(|e| fail(e.to_string()))?, dump);
    }
    node.core.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn replay_equals_state(steps in prop::collection::vec(step_strategy(), 8..48), page in 1usize..8) {
        runtime().block_on(run_case(steps, page))?;
    }
}

// Plain tests ----------------------------------------------------------------------------------------

fn create_req(name: &str) -> ProjectCreate {
    ProjectCreate { name: name.into(), ..Default::default() }
}

#[tokio::test]
async fn bad_input_leaves_no_journal_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    let c = admin(&node);
    node.core.create_project(&c, create_req("proj-1")).await.expect("create");
    let tags = BTreeMap::from([("env".to_owned(), Some("prod".to_owned()))]);
    let updated = node
        .core.update_project(
            &admin(&node),
            "proj-1",
            ProjectUpdate { tags: Some(tags.clone()), ..Default::default() },
        )
        .await
        .expect("update");
    assert_eq!(updated.lsn, Lsn(2));
    assert_eq!(last_lsn(&node, "proj-1").await, Lsn(2));

    for how in [
        Invalid::EmptyTagKey,
        Invalid::LongTagKey,
        Invalid::ControlInTagKey,
        Invalid::LongTagValue,
        Invalid::TooManyTags,
        Invalid::LongDescription,
        Invalid::LongDisplayName,
        Invalid::ControlInDisplayName,
    ] {
        let err = node
            .core.update_project(&admin(&node), "proj-1", how.update())
            .await
            .expect_err("invalid update");
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{how:?}: {err}");
        assert_eq!(last_lsn(&node, "proj-1").await, Lsn(2), "{how:?} was journaled");
        assert_eq!(node.core.get_project(&admin(&node), "proj-1").await.expect("get"), updated, "{how:?}");
    }

    // An update that changes nothing journals nothing either.
    let same = node
        .core.update_project(
            &admin(&node),
            "proj-1",
            ProjectUpdate {
                display_name: Some("proj-1".into()),
                description: Some(String::new()),
                tags: Some(tags),
                ..Default::default()
            },
        )
        .await
        .expect("no-op update");
    assert_eq!(same, updated);
    let removing_absent =
        ProjectUpdate { tags: Some(BTreeMap::from([("absent".to_owned(), None)])), ..Default::default() };
    assert_eq!(
        node.core.update_project(&admin(&node), "proj-1", removing_absent).await.expect("no-op"),
        updated
    );
    assert_eq!(last_lsn(&node, "proj-1").await, Lsn(2));

    // A bad page size is refused, not clamped.
    for limit in [0, 1001] {
        let err = node
            .core.journal(&admin(&node), "proj-1", Lsn::ZERO, Some(limit), None)
            .await
            .expect_err("limit");
        assert_eq!(err.kind, ErrorKind::InvalidInput);
    }
    let err = node
        .core.update_project(&admin(&node), "nope", ProjectUpdate::default())
        .await
        .expect_err("missing");
    assert_eq!(err.kind, ErrorKind::NotFound);
    node.core.shutdown().await;
}

#[tokio::test]
async fn project_names_are_validated_and_unique() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    for bad in BAD_NAMES.iter().copied().chain([&*"x".repeat(64)]) {
        let err = node.core.create_project(&admin(&node), create_req(bad)).await.expect_err(bad);
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{bad:?}: {err}");
    }
    assert!(node.core.list_projects(&admin(&node), None, None).await.expect("list").data.is_empty());

    let first = node.core.create_project(&admin(&node), create_req("dup")).await.expect("create");
    let err = node
        .core.create_project(
            &admin(&node),
            ProjectCreate { description: Some("other".into()), ..create_req("dup") },
        )
        .await
        .expect_err("duplicate");
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert_eq!(node.core.get_project(&admin(&node), "dup").await.expect("get"), first);
    assert_eq!(last_lsn(&node, "dup").await, Lsn(1));

    // A deleted project's name is reserved until it is purged; then it can be taken again, by a
    // project with a new id and a new journal.
    node.core.delete_project(&admin(&node), "dup").await.expect("delete");
    let err = node.core.create_project(&admin(&node), create_req("dup")).await.expect_err("name reserved");
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert!(err.message.contains("holdfast project recover dup"), "{err}");
    node.core.purge_project(&admin(&node), "dup").await.expect("purge");
    let second = node.core.create_project(&admin(&node), create_req("dup")).await.expect("create again");
    assert_ne!(second.id, first.id);
    assert_eq!(second.lsn, Lsn(1));
    let journal = node.core.journal(&admin(&node), "dup", Lsn::ZERO, None, None).await.expect("journal");
    assert_eq!(journal.changes.len(), 1);
    assert!(matches!(&journal.changes[0].ops[..], [Op::Put { id, .. }] if id == second.id.as_str()));
    node.core.shutdown().await;
}

#[tokio::test]
async fn roles_are_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    node.core.create_project(&admin(&node), create_req("guarded")).await.expect("create");
    let reader_key = node
        .governance.create_key(&admin(&node), KeyCreate { name: "ro".into(), role: Some(Role::Reader), scope: None })
        .await
        .expect("key")
        .key;
    let contributor_key = node
        .governance.create_key(&admin(&node), KeyCreate { name: "rw".into(), role: Some(Role::Contributor), scope: None })
        .await
        .expect("key")
        .key;

    let reader = caller(&node, &reader_key);
    assert_eq!(reader.principal.role, Role::Reader);
    let forbidden = |r: holdfast_core::Result<_>, what: &str| match r {
        Err(e) if e.kind == ErrorKind::Forbidden => {}
        other => panic!("{what}: expected Forbidden, got {:?}", other.map(|_: ()| ())),
    };
    forbidden(node.core.create_project(&reader, create_req("sneaky")).await.map(drop), "reader create");
    let update = ProjectUpdate { description: Some("changed".into()), ..Default::default() };
    forbidden(node.core.update_project(&reader, "guarded", update.clone()).await.map(drop), "reader update");
    forbidden(node.core.delete_project(&reader, "guarded").await, "reader delete");
    forbidden(node.core.journal(&reader, "guarded", Lsn::ZERO, None, None).await.map(drop), "reader journal");
    forbidden(
        node.governance.create_key(&reader, KeyCreate { name: "x".into(), role: Some(Role::Admin), scope: None }).await.map(drop),
        "reader key create",
    );
    // Reading is what a reader may do; nothing it tried was journaled.
    let seen = node.core.get_project(&reader, "guarded").await.expect("reader get");
    assert_eq!(seen.lsn, Lsn(1));
    assert_eq!(last_lsn(&node, "guarded").await, Lsn(1));
    expect_err(node.core.get_project(&admin(&node), "sneaky").await, ErrorKind::NotFound, "sneaky")
        .expect("not created");

    // A contributor writes projects but may not read the raw journal or manage keys.
    let contributor = caller(&node, &contributor_key);
    let updated = node.core.update_project(&contributor, "guarded", update).await.expect("contributor update");
    assert_eq!(updated.lsn, Lsn(2));
    forbidden(
        node.core.journal(&contributor, "guarded", Lsn::ZERO, None, None).await.map(drop),
        "contributor journal",
    );
    forbidden(node.governance.list_keys(&contributor).await.map(drop), "contributor list keys");
    let journal =
        node.core.journal(&admin(&node), "guarded", Lsn::ZERO, None, None).await.expect("admin journal");
    assert_eq!(journal.changes.last().map(|c| c.actor.as_str()), Some(contributor.principal.id.as_str()));
    node.core.shutdown().await;
}

#[tokio::test]
async fn revoked_keys_stop_authenticating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    assert_eq!(node.core.authenticate(None).expect_err("no key").kind, ErrorKind::Unauthenticated);
    assert_eq!(
        node.core.authenticate(Some("hf_not-a-key")).expect_err("bad key").kind,
        ErrorKind::Unauthenticated
    );

    let by_key = node
        .governance.create_key(&admin(&node), KeyCreate { name: "one".into(), role: Some(Role::Reader), scope: None })
        .await
        .expect("key");
    let by_principal = node
        .governance.create_key(&admin(&node), KeyCreate { name: "two".into(), role: Some(Role::Contributor), scope: None })
        .await
        .expect("key");
    let kept = node
        .governance.create_key(&admin(&node), KeyCreate { name: "three".into(), role: Some(Role::Reader), scope: None })
        .await
        .expect("key");
    for k in [&by_key, &by_principal, &kept] {
        assert_eq!(node.core.authenticate(Some(&k.key)).expect("live key").id, k.principal_id);
    }

    assert_eq!(node.governance.revoke_key(&admin(&node), by_key.key_id.as_str()).await.expect("revoke"), 1);
    assert_eq!(
        node.governance.revoke_key(&admin(&node), by_principal.principal_id.as_str()).await.expect("revoke"),
        1
    );
    let err = node.governance.revoke_key(&admin(&node), "key_doesnotexist").await.expect_err("unknown key");
    assert_eq!(err.kind, ErrorKind::NotFound);
    for k in [&by_key, &by_principal] {
        assert_eq!(node.core.authenticate(Some(&k.key)).expect_err("revoked").kind, ErrorKind::Unauthenticated);
    }
    assert!(node.core.authenticate(Some(&kept.key)).is_ok());
    let listed = node.governance.list_keys(&admin(&node)).await.expect("list");
    for k in [&by_key, &by_principal] {
        let info = listed.data.iter().find(|i| i.key_id == k.key_id).expect("listed");
        assert!(info.revoked_at.is_some());
    }

    // Revocation survives a restart.
    node.core.shutdown().await;
    drop(node);
    let node = open(dir.path());
    for k in [&by_key, &by_principal] {
        assert_eq!(node.core.authenticate(Some(&k.key)).expect_err("revoked").kind, ErrorKind::Unauthenticated);
    }
    assert!(node.core.authenticate(Some(&kept.key)).is_ok());
    assert!(node.core.authenticate(Some(ADMIN_KEY)).is_ok());
    node.core.shutdown().await;
}

#[tokio::test]
async fn restart_keeps_projects_and_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    for name in ["one", "two", "three"] {
        node.core.create_project(&admin(&node), create_req(name)).await.expect("create");
    }
    for i in 0..5 {
        let update = ProjectUpdate {
            description: Some(format!("rev {i}")),
            tags: Some(BTreeMap::from([
                (format!("k{i}"), Some(format!("v{i}"))),
                ("k0".to_owned(), (i % 2 == 0).then(|| "x".into())),
            ])),
            ..Default::default()
        };
        node.core.update_project(&admin(&node), "two", update).await.expect("update");
    }
    node.core.delete_project(&admin(&node), "three").await.expect("delete");

    let mut before = BTreeMap::new();
    for name in ["one", "two"] {
        let project = node.core.get_project(&admin(&node), name).await.expect("get");
        let journal =
            node.core.journal(&admin(&node), name, Lsn::ZERO, None, None).await.expect("journal").changes;
        let dump = node.core.project_store(name).await.expect("store").dump().await.expect("dump");
        before.insert(name, (project, journal, dump));
    }
    assert_eq!(before["two"].0.lsn, Lsn(6));
    node.core.shutdown().await;
    drop(node);

    let node = open(dir.path());
    let listed = node.core.list_projects(&admin(&node), None, None).await.expect("list");
    assert_eq!(listed.data.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["one", "two"]);
    for (name, (project, journal, dump)) in &before {
        assert_eq!(&node.core.get_project(&admin(&node), name).await.expect("get"), project);
        assert_eq!(
            &node.core.journal(&admin(&node), name, Lsn::ZERO, None, None).await.expect("journal").changes,
            journal
        );
        assert_eq!(&node.core.project_store(name).await.expect("store").dump().await.expect("dump"), dump);
    }
    expect_err(node.core.get_project(&admin(&node), "three").await, ErrorKind::NotFound, "three")
        .expect("deleted");

    // The journal carries on where it stopped, and still replays.
    let update = ProjectUpdate { display_name: Some("Two".into()), ..Default::default() };
    let two = node.core.update_project(&admin(&node), "two", update).await.expect("update after restart");
    assert_eq!(two.lsn, Lsn(7));
    let scratch = tempfile::tempdir().expect("tempdir");
    let (journal, _) = verify_replay(&node, "two", 100, scratch.path()).await.expect("replay");
    assert!(journal[6].ts >= journal[5].ts);
    node.core.shutdown().await;
}

#[tokio::test]
async fn a_data_dir_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path());
    first.core.create_project(&admin(&first), create_req("held")).await.expect("create");

    let err = Holdfast::open(config(dir.path())).err().expect("second open must fail");
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert!(err.message.contains("in use"), "{err}");

    // The refused open left the running node alone.
    first
        .core.update_project(
            &admin(&first),
            "held",
            ProjectUpdate { description: Some("still".into()), ..Default::default() },
        )
        .await
        .expect("update");
    assert_eq!(last_lsn(&first, "held").await, Lsn(2));
    first.core.shutdown().await;
    drop(first);

    let second = open(dir.path());
    let project = second.core.get_project(&admin(&second), "held").await.expect("get");
    assert_eq!((project.description.as_str(), project.lsn), ("still", Lsn(2)));
    second.core.shutdown().await;
}
