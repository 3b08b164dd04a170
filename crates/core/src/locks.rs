//! Resource locks: `CanNotDelete` and `ReadOnly` at `/`, at a project, or at one resource of a
//! project, inherited downward. A lock on the control plane guards the project itself (its
//! update and delete); with `data_plane` (always, for a lock on one resource) it also guards the
//! project's contents: every data-plane change goes through `Data::commit`, which checks the
//! ops the plan made against the locks before they are journaled, so no route can forget it.
//!
//! Locks apply to every principal, Owners included: an Owner removes the lock first. Refusals
//! are [`ErrorKind::Locked`](holdfast_types::ErrorKind::Locked) (409 `ScopeLocked`), naming the
//! lock and the scope where it sits.

use std::sync::{Arc, RwLock};

use holdfast_store::control::{self, LockRecord};
use holdfast_store::StateView;
use holdfast_types::api::{Lock, LockKind};
use holdfast_types::{Error, Kind, Op, rfc3339};

use crate::{Result, Service, validate};

/// What a lock applies to, parsed from its scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `/`: every project.
    Root,
    /// `/projects/{name}`.
    Project(String),
    /// `/projects/{name}/{collection}/{id}`: one top-level resource, by its stored id.
    Resource { project: String, kind: Kind, id: String },
}

/// A lock with its scope parsed.
#[derive(Clone, Debug)]
pub struct ActiveLock {
    pub lock: Lock,
    pub target: Target,
}

/// The collections a resource lock can name, the kind each holds, and how the wire id becomes
/// the stored one.
const COLLECTIONS: [(&str, Kind, &str); 10] = [
    ("agents", Kind::Agent, "agent:"),
    ("conversations", Kind::Conversation, ""),
    ("files", Kind::File, ""),
    ("vector_stores", Kind::VectorStore, ""),
    ("connections", Kind::Connection, "conn:"),
    ("deployments", Kind::Deployment, "dep:"),
    ("responses", Kind::Response, ""),
    ("experiments", Kind::MlExperiment, ""),
    ("runs", Kind::MlRun, ""),
    ("registered_models", Kind::MlRegisteredModel, "rm:"),
];

/// How many parents up a resource lock reaches (a run's artifacts under a locked experiment).
const MAX_LOCK_DEPTH: usize = 4;

pub fn parse_scope(scope: &str) -> Result<Target> {
    let bad = || {
        Error::invalid(format!(
            "scope {scope:?} is not a lock scope: use /, /projects/NAME or /projects/NAME/COLLECTION/ID with \
             COLLECTION one of {}",
            COLLECTIONS.map(|c| c.0).join(", ")
        ))
    };
    if scope == "/" {
        return Ok(Target::Root);
    }
    let parts: Vec<&str> = scope.strip_prefix("/projects/").ok_or_else(bad)?.split('/').collect();
    match parts.as_slice() {
        [project] => {
            validate::project_name(project)?;
            Ok(Target::Project((*project).to_owned()))
        }
        [project, collection, id] if !id.is_empty() => {
            validate::project_name(project)?;
            let (_, kind, prefix) = COLLECTIONS.iter().find(|c| c.0 == *collection).ok_or_else(bad)?;
            Ok(Target::Resource { project: (*project).to_owned(), kind: *kind, id: format!("{prefix}{id}") })
        }
        _ => Err(bad()),
    }
}

impl ActiveLock {
    pub fn from_record(r: LockRecord) -> Result<Self> {
        let kind = LockKind::parse(&r.kind).ok_or_else(|| Error::internal(format!("lock {} has kind {:?}", r.id, r.kind)))?;
        let target = parse_scope(&r.scope)?;
        let lock = Lock {
            id: r.id,
            scope: r.scope,
            kind,
            data_plane: r.data_plane,
            notes: r.notes,
            created_by: r.created_by,
            created_at: rfc3339(r.created_us),
        };
        Ok(Self { lock, target })
    }

    /// Whether the lock sits at `project` or above it.
    fn covers_project(&self, project: &str) -> bool {
        match &self.target {
            Target::Root => true,
            Target::Project(p) => p == project,
            Target::Resource { .. } => false,
        }
    }

    fn forbids(&self, deleting: bool) -> bool {
        deleting || self.lock.kind == LockKind::ReadOnly
    }

    fn refusal(&self, what: &str, scope: &str) -> Error {
        let verb = if self.lock.kind == LockKind::ReadOnly { "changes and deletes" } else { "deletes" };
        Error::locked(format!(
            "cannot {what} {scope}: lock {} ({}) at scope {} forbids {verb}{}; an Owner can remove it with \
             `holdfast lock delete {}`",
            self.lock.id,
            self.lock.kind.as_str(),
            self.lock.scope,
            if self.lock.notes.is_empty() { String::new() } else { format!(" ({})", self.lock.notes) },
            self.lock.id,
        ))
    }
}

/// The service's locks, shared with every [`crate::data::Data`] so a plan is checked against
/// the locks as they are when it runs on the writer, not when its request began.
pub(crate) type SharedLocks = Arc<RwLock<Arc<Vec<ActiveLock>>>>;

/// Refuses the first op a lock on `project`'s contents forbids: a data-plane lock at `/` or at
/// the project, or a lock on one resource, which also guards its children (items of a
/// conversation, versions of an agent, files of a vector store).
/// `soft_delete`: the plan deletes what it changes in its domain's terms (a mark, as MLflow's
/// deletes of runs and experiments are), so its ops are judged as deletes.
pub fn check_data_locks(locks: &SharedLocks, project: &str, view: &StateView<'_>, ops: &[Op], soft_delete: bool) -> Result<()> {
    let all = locks.read().unwrap_or_else(|e| e.into_inner()).clone();
    // The project's record and its connections are the control plane's, whichever route wrote
    // them (an import, an undelete, a divergence replay): any lock on the project guards them.
    for op in ops.iter().filter(|op| matches!(op.kind(), Kind::Project | Kind::Connection)) {
        let deleting = matches!(op, Op::Delete { .. });
        if let Some(lock) = all.iter().find(|l| project_lock_forbids(l, project, deleting)) {
            let what = if deleting { "delete" } else { "change" };
            return Err(lock.refusal(what, &format!("{} in project {project}", op.kind().as_str())));
        }
    }
    let guarding: Vec<&ActiveLock> = all
        .iter()
        .filter(|l| match &l.target {
            Target::Root | Target::Project(_) => l.lock.data_plane && l.covers_project(project),
            Target::Resource { project: p, .. } => p == project,
        })
        .collect();
    if guarding.is_empty() {
        return Ok(());
    }
    for op in ops {
        let (kind, id, deleting) = match op {
            Op::Put { kind, id, .. } | Op::Patch { kind, id, .. } | Op::Stamp { kind, id, .. } => (*kind, id, soft_delete),
            Op::Delete { kind, id } => (*kind, id, true),
        };
        let parent = match op {
            Op::Put { parent, .. } => parent.clone(),
            _ => view.get(kind, id).map_err(Error::from)?.and_then(|r| r.parent),
        };
        let ancestors = if guarding.iter().any(|l| matches!(l.target, Target::Resource { .. })) {
            ancestors_of(view, parent)?
        } else {
            Vec::new()
        };
        for lock in &guarding {
            let applies = match &lock.target {
                Target::Root | Target::Project(_) => true,
                Target::Resource { kind: locked_kind, id: locked, .. } => {
                    (*locked_kind == kind && locked == id) || ancestors.iter().any(|(k, a)| k == locked_kind && a == locked)
                }
            };
            if applies && lock.forbids(deleting) {
                let what = if deleting { "delete" } else { "change" };
                return Err(lock.refusal(what, &format!("{} {id} in project {project}", kind.as_str())));
            }
        }
    }
    Ok(())
}

/// A resource's parent and the parents above it, nearest first, each with its kind (ids are
/// unique across kinds, so the first resource found under an id is it).
fn ancestors_of(view: &StateView<'_>, parent: Option<String>) -> Result<Vec<(Kind, String)>> {
    let mut out = Vec::new();
    let mut next = parent;
    while let Some(id) = next.take() {
        if out.len() == MAX_LOCK_DEPTH {
            break;
        }
        let Some(found) = Kind::ALL.into_iter().find_map(|k| view.get(k, &id).ok().flatten()) else { break };
        next = found.parent.clone();
        out.push((found.kind, id));
    }
    Ok(out)
}

impl Service {
    pub(crate) fn install_locks(&self, records: Vec<LockRecord>) -> Result<()> {
        let locks = records.into_iter().map(ActiveLock::from_record).collect::<Result<Vec<_>>>()?;
        *self.locks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(locks);
        Ok(())
    }

    /// The locks in force now.
    pub fn current_locks(&self) -> Arc<Vec<ActiveLock>> {
        self.locks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Refuses a change (`deleting`: a delete) of the project named `project` (its catalog name,
    /// never an id) that a lock at or above it forbids, whatever its `data_plane` setting. A
    /// delete is also refused while any resource of the project is locked.
    pub fn check_project_locks(&self, project: &str, deleting: bool) -> Result<()> {
        let what = if deleting { "delete" } else { "change" };
        match self.current_locks().iter().find(|l| project_lock_forbids(l, project, deleting)) {
            Some(lock) => Err(lock.refusal(what, &format!("project {project}"))),
            None => Ok(()),
        }
    }

    /// [`check_project_locks`](Self::check_project_locks) for a project named by name or id, in
    /// any state (a deleted project's recover is a change too). The API gate calls it for every
    /// route that changes a project's record or its control-plane resources
    /// ([`Action::changes_project`]), before the request body is read; an unknown project
    /// passes (the operation answers 404).
    pub async fn check_project_locks_by_ref(&self, project: &str, deleting: bool) -> Result<()> {
        let key = project.to_owned();
        let found = self.control.call(move |c| control::find_project(c, &key)).await.map_err(Error::from)?;
        match found {
            Some(entry) => self.check_project_locks(&entry.name, deleting),
            None => Ok(()),
        }
    }

    /// Wraps a plan that changes the project's own record so the locks are checked again when
    /// it runs on the writer (a lock created while the request waited still refuses it).
    pub fn record_plan(&self, project: &str, deleting: bool, plan: holdfast_store::Plan) -> holdfast_store::Plan {
        let (locks, project) = (self.shared_locks(), project.to_owned());
        Box::new(move |view| {
            let all = locks.read().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(lock) = all.iter().find(|l| project_lock_forbids(l, &project, deleting)) {
                let what = if deleting { "delete" } else { "change" };
                return Err(lock.refusal(what, &format!("project {project}")));
            }
            plan(view)
        })
    }

    /// The locks, shared with the data plane (see [`check_data_locks`]).
    pub fn shared_locks(&self) -> SharedLocks {
        self.locks.clone()
    }
}

/// Whether `lock` forbids a change (`deleting`: a delete) of the project named `project`.
fn project_lock_forbids(lock: &ActiveLock, project: &str, deleting: bool) -> bool {
    match &lock.target {
        Target::Resource { project: p, .. } => deleting && p == project,
        _ => lock.covers_project(project) && lock.forbids(deleting),
    }
}

/// Whether a lock at `lock_scope` applies at `scope` (it sits there or above it).
pub fn inherits(scope: &str, lock_scope: &str) -> bool {
    lock_scope == "/" || scope == lock_scope || scope.starts_with(&format!("{lock_scope}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_bad_ones_say_what_is_allowed() {
        assert_eq!(parse_scope("/").expect("root"), Target::Root);
        assert_eq!(parse_scope("/projects/demo").expect("project"), Target::Project("demo".into()));
        assert_eq!(
            parse_scope("/projects/demo/agents/bot").expect("agent"),
            Target::Resource { project: "demo".into(), kind: Kind::Agent, id: "agent:bot".into() }
        );
        for bad in ["", "/projects", "/projects/demo/items/msg_1", "/projects/demo/conversations/", "/x"] {
            let e = parse_scope(bad).expect_err(bad);
            assert!(e.message.contains("conversations"), "{bad}: {}", e.message);
        }
        assert!(inherits("/projects/demo/conversations/c", "/projects/demo"));
        assert!(!inherits("/projects/demo2", "/projects/demo"));
        assert!(inherits("/projects/x", "/"));
    }
}
