//! History and undelete of one resource, from the project's own journal (never truncated, so
//! both reach back to the project's first change).
//!
//! - [`Service::resource_history`]: every change that touched a resource — puts, patches,
//!   stamps and deletes of it, its deletion through an ancestor (a cascade), and changes to its
//!   descendants (items appended to a conversation, versions of an agent…), with LSN, time,
//!   actor and request id.
//! - [`Service::undelete_resource`]: rebuilds the state just before the resource's deletion by
//!   replaying the journal into a scratch database, and writes the resource and all its
//!   descendants back into the live project as one new change (`put` for each, parents first,
//!   then `stamp` with their original times), keeping their ids.
//!
//! Known cost: both scan the whole journal (O(journal)), in pages of 1000 changes, on a reader;
//! undelete also replays the journal up to the deletion into a scratch database under
//! `<data>/tmp`. There is no index of changes by resource yet.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use holdfast_store::apply::Replayer;
use holdfast_store::StateView;
use holdfast_types::change::MAX_OPS_PER_CHANGE;
use holdfast_types::{Change, Error, Kind, Lsn, Micros, Op, ProjectId};
use serde::{Deserialize, Serialize};

use holdfast_core::DumpRow;
use holdfast_core::{Action, Caller, Result};

use crate::Recovery;

/// Changes read per page while scanning a journal.
const PAGE: usize = 1000;
/// Deepest parent chain followed (resources nest two levels today).
const MAX_DEPTH: usize = 32;

/// One change that touched a resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub lsn: u64,
    /// Commit time, RFC 3339 (UTC, microseconds).
    pub time: String,
    pub ts_us: Micros,
    pub actor: String,
    pub request_id: String,
    /// `create`, `put` (replace), `patch`, `stamp`, `delete`, `cascade_delete` (deleted with an
    /// ancestor, named in `deleted_via`), or `children` (only its descendants changed).
    pub operation: String,
    /// The op types of this change on the resource itself, in order.
    pub ops: Vec<String>,
    /// For `cascade_delete`: the ancestor whose deletion deleted this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_via: Option<String>,
    /// Ops of this change on the resource's descendants, counted by `"{op} {kind}"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub children: BTreeMap<String, u64>,
}

/// The history of one resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub project: String,
    /// The id as the store keeps it (`agent:{name}` for an agent).
    pub id: String,
    pub kind: Option<Kind>,
    /// Whether the resource exists at `last_lsn`.
    pub exists: bool,
    /// The journal was scanned up to this LSN.
    pub last_lsn: u64,
    pub entries: Vec<HistoryEntry>,
}

/// Which deletion to undo.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UndeleteRequest {
    /// The latest deletion at or before this time (RFC 3339).
    #[serde(default)]
    pub at: Option<String>,
    /// The latest deletion at or before this LSN.
    #[serde(default)]
    pub lsn: Option<u64>,
}

/// The outcome of an undelete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UndeleteSummary {
    pub project: String,
    pub id: String,
    pub kind: Kind,
    /// The change that deleted it, and its time.
    pub deleted_lsn: u64,
    pub deleted_at: String,
    /// Set when it was deleted with an ancestor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_via: Option<String>,
    /// The state it was read from: the journal replayed up to this LSN.
    pub restored_from_lsn: u64,
    /// The new change that brought it back.
    pub lsn: u64,
    /// Resources written back (the resource and its descendants), by kind.
    pub kinds: BTreeMap<String, u64>,
    pub resources: u64,
}

/// A deletion of the tracked resource.
#[derive(Clone, Debug)]
struct Deletion {
    lsn: Lsn,
    ts: Micros,
    via: Option<String>,
}

/// What one scan of the journal learns about one resource id.
#[derive(Default)]
struct Tracker {
    id: String,
    kind: Option<Kind>,
    alive: bool,
    entries: Vec<HistoryEntry>,
    deletions: Vec<Deletion>,
}

/// The whole journal, scanned once for a few candidate ids.
struct Scan {
    trackers: Vec<Tracker>,
    first_ts: Option<Micros>,
    last_ts: Option<Micros>,
    last_lsn: Lsn,
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Put { .. } => "put",
        Op::Patch { .. } => "patch",
        Op::Delete { .. } => "delete",
        Op::Stamp { .. } => "stamp",
    }
}

impl Tracker {
    fn observe(&mut self, change: &Change, parents: &HashMap<String, String>) {
        let mut own = Vec::new();
        let mut created = false;
        let mut via = None;
        let mut deleted = false;
        let mut children: BTreeMap<String, u64> = BTreeMap::new();
        // The parent map as it was before this change is what a cascade follows; ops of one
        // change are applied in order, so this tracks puts of the change as it goes.
        let mut local: HashMap<&str, Option<&str>> = HashMap::new();
        let parent_of = |id: &str, local: &HashMap<&str, Option<&str>>| -> Option<String> {
            match local.get(id) {
                Some(p) => p.map(str::to_owned),
                None => parents.get(id).cloned(),
            }
        };
        for op in &change.ops {
            let id = op.id();
            if id == self.id {
                own.push(op_name(op).to_owned());
                match op {
                    Op::Put { kind, parent, .. } => {
                        if !self.alive {
                            created = true;
                        }
                        self.alive = true;
                        self.kind = Some(*kind);
                        local.insert(id, parent.as_deref());
                    }
                    Op::Delete { .. } => {
                        self.alive = false;
                        deleted = true;
                    }
                    _ => {}
                }
                continue;
            }
            // Is this op about a descendant, or a delete of an ancestor?
            let parent = match op {
                Op::Put { parent, .. } => parent.clone(),
                _ => parent_of(id, &local),
            };
            if let Op::Delete { .. } = op
                && self.alive
            {
                let mut p = parent_of(&self.id, &local);
                let mut hit = false;
                for _ in 0..MAX_DEPTH {
                    match p {
                        Some(ref x) if x == id => {
                            hit = true;
                            break;
                        }
                        Some(ref x) => p = parent_of(x, &local),
                        None => break,
                    }
                }
                if hit {
                    self.alive = false;
                    deleted = true;
                    via = Some(id.to_owned());
                    continue;
                }
            }
            let mut p = parent;
            let mut under = false;
            for _ in 0..MAX_DEPTH {
                match p {
                    Some(ref x) if *x == self.id => {
                        under = true;
                        break;
                    }
                    Some(ref x) => p = parent_of(x, &local),
                    None => break,
                }
            }
            if under {
                *children.entry(format!("{} {}", op_name(op), op.kind().as_str())).or_default() += 1;
            }
            if let Op::Put { parent, .. } = op {
                local.insert(id, parent.as_deref());
            }
        }
        if own.is_empty() && via.is_none() && children.is_empty() {
            return;
        }
        let operation = if via.is_some() {
            "cascade_delete"
        } else if deleted {
            "delete"
        } else if created {
            "create"
        } else if let Some(first) = own.first() {
            match first.as_str() {
                "put" => "put",
                "patch" => "patch",
                "stamp" => "stamp",
                _ => "delete",
            }
        } else {
            "children"
        };
        if deleted {
            self.deletions.push(Deletion { lsn: change.lsn, ts: change.ts, via: via.clone() });
        }
        self.entries.push(HistoryEntry {
            lsn: change.lsn.0,
            time: holdfast_types::rfc3339(change.ts),
            ts_us: change.ts,
            actor: change.actor.clone(),
            request_id: change.request_id.clone(),
            operation: operation.to_owned(),
            ops: own,
            deleted_via: via,
            children,
        });
    }
}

/// Applies a change's puts and deletes to the map of parents (`id → parent`).
fn track_parents(parents: &mut HashMap<String, String>, change: &Change) {
    for op in &change.ops {
        if let Op::Put { id, parent, .. } = op {
            match parent {
                Some(p) => {
                    parents.insert(id.clone(), p.clone());
                }
                None => {
                    parents.remove(id);
                }
            }
        }
    }
}

/// Reads the whole journal once, following each candidate id.
fn scan(view: &StateView<'_>, ids: &[String]) -> std::result::Result<Scan, holdfast_store::StoreError> {
    let mut trackers: Vec<Tracker> = ids.iter().map(|id| Tracker { id: id.clone(), ..Default::default() }).collect();
    let mut parents: HashMap<String, String> = HashMap::new();
    let (mut first_ts, mut last_ts, mut after) = (None, None, Lsn::ZERO);
    loop {
        let page = view.journal(after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.lsn;
        for change in &page {
            first_ts.get_or_insert(change.ts);
            last_ts = Some(change.ts);
            for t in &mut trackers {
                t.observe(change, &parents);
            }
            track_parents(&mut parents, change);
        }
        if page.len() < PAGE {
            break;
        }
    }
    Ok(Scan { trackers, first_ts, last_ts, last_lsn: after })
}

/// The ids a user-given id may mean: itself, and for an agent's name, `agent:{name}`.
fn candidates(id: &str) -> Result<Vec<String>> {
    if id.is_empty() {
        return Err(Error::invalid("resource id is empty"));
    }
    let mut out = vec![id.to_owned()];
    if !id.contains(':') {
        out.push(format!("agent:{id}"));
    }
    Ok(out)
}

/// The tracker the user meant: the exact id if the journal knows it, else an agent's.
fn pick(scan: Scan) -> (Tracker, Option<Micros>, Option<Micros>, Lsn) {
    let Scan { trackers, first_ts, last_ts, last_lsn } = scan;
    let mut trackers = trackers.into_iter();
    let exact = trackers.next().unwrap_or_default();
    let chosen = if exact.entries.is_empty() { trackers.find(|t| !t.entries.is_empty()).unwrap_or(exact) } else { exact };
    (chosen, first_ts, last_ts, last_lsn)
}


/// Removes the scratch directory however the undelete ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}


impl Recovery {
    /// Every change that touched resource `id` of `project` (admin: reads the journal).
    pub async fn resource_history(&self, caller: &Caller, project: &str, id: &str) -> Result<History> {
        caller.require(Action::JournalRead, &format!("/projects/{project}"))?;
        let ids = candidates(id)?;
        let store = self.core.project_store(project).await?;
        let scan = store.read(move |view| scan(view, &ids)).await.map_err(Error::from)?;
        let (t, _, _, last) = pick(scan);
        if t.entries.is_empty() {
            return Err(Error::not_found(format!("the journal of project {project:?} never touched resource {id:?}")));
        }
        Ok(History { project: project.to_owned(), id: t.id, kind: t.kind, exists: t.alive, last_lsn: last.0, entries: t.entries })
    }

    /// Brings a deleted resource and all its descendants back into the live project, as one
    /// new change, keeping ids and creation/update times (admin only).
    pub async fn undelete_resource(&self, caller: &Caller, project: &str, id: &str, req: UndeleteRequest) -> Result<UndeleteSummary> {
        caller.require(Action::Undelete, &format!("/projects/{project}"))?;
        if req.at.is_some() && req.lsn.is_some() {
            return Err(Error::invalid("give 'at' or 'lsn', not both"));
        }
        let at = match &req.at {
            Some(text) => Some(holdfast_types::parse_rfc3339(text).ok_or_else(|| {
                Error::invalid(format!("'at' must be an RFC 3339 time such as 2026-01-02T03:04:05Z, got {text:?}"))
            })?),
            None => None,
        };
        let ids = candidates(id)?;
        let store = self.core.project_store(project).await?;
        let scan = store.read(move |view| scan(view, &ids)).await.map_err(Error::from)?;
        let (t, first_ts, last_ts, last) = pick(scan);
        let window = || match (first_ts, last_ts) {
            (Some(f), Some(l)) => format!(
                "the journal of project {project:?} covers LSN 1 to {} ({} to {})",
                last.0,
                holdfast_types::rfc3339(f),
                holdfast_types::rfc3339(l)
            ),
            _ => format!("the journal of project {project:?} is empty"),
        };
        if let Some(n) = req.lsn
            && (n == 0 || n > last.0)
        {
            return Err(Error::invalid(format!("LSN {n} is outside the journal: {}", window())));
        }
        if let Some(a) = at {
            let now = holdfast_types::now_micros();
            if first_ts.is_none_or(|f| a < f) || a > now {
                return Err(Error::invalid(format!(
                    "time {} is outside the journal: {}",
                    req.at.as_deref().unwrap_or_default(),
                    window()
                )));
            }
        }
        if t.alive {
            return Err(Error::conflict(format!("resource {:?} exists in project {project:?}; only a deleted resource can be undeleted", t.id)));
        }
        let deletion = t
            .deletions
            .iter()
            .rev()
            .find(|d| req.lsn.is_none_or(|n| d.lsn.0 <= n) && at.is_none_or(|a| d.ts <= a))
            .cloned()
            .ok_or_else(|| match (&req.at, req.lsn) {
                (Some(a), _) => Error::not_found(format!("resource {id:?} was not deleted at or before {a} in project {project:?}")),
                (_, Some(n)) => Error::not_found(format!("resource {id:?} was not deleted at or before LSN {n} in project {project:?}")),
                _ => Error::not_found(format!("the journal of project {project:?} never deleted resource {id:?}")),
            })?;
        let target = t.id.clone();

        // Rebuild the state just before the deletion in a scratch database.
        let dir = self.core.scratch_dir().join(format!("undelete-{}", ulid::Ulid::generate().to_string().to_lowercase()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
        let scratch = Scratch(dir);
        let db = scratch.0.join("state.db");
        let upto = Lsn(deletion.lsn.0 - 1);
        let pid: ProjectId = store.id().clone();
        let dump = store
            .read(move |view| {
                let mut replayer = Replayer::create(&db, &pid)?;
                let mut after = Lsn::ZERO;
                while after < upto {
                    let page = view.journal(after, PAGE.min((upto.0 - after.0) as usize))?;
                    let Some(last) = page.last() else { break };
                    after = last.lsn;
                    for change in &page {
                        replayer.apply(change)?;
                    }
                }
                replayer.dump()
            })
            .await
            .map_err(Error::from)?;
        drop(scratch);

        // The resource and its descendants, parents before children, siblings in order.
        let rows: Vec<DumpRow> = dump
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).map_err(|e| Error::internal(format!("bad dump line: {e}"))))
            .collect::<Result<_>>()?;
        let mut by_parent: HashMap<&str, Vec<&DumpRow>> = HashMap::new();
        let mut root = None;
        for r in &rows {
            if r.id == target {
                root = Some(r);
            }
            if let Some(p) = &r.parent {
                by_parent.entry(p.as_str()).or_default().push(r);
            }
        }
        let root = root.ok_or_else(|| Error::internal(format!("{target} is missing from the state before its deletion")))?;
        let mut subtree = vec![root];
        let mut level = vec![root];
        for _ in 0..MAX_DEPTH {
            let mut next: Vec<&DumpRow> = level.iter().flat_map(|r| by_parent.get(r.id.as_str()).cloned().unwrap_or_default()).collect();
            if next.is_empty() {
                break;
            }
            next.sort_by_key(|r| r.seq);
            subtree.extend(next.iter().copied());
            level = next;
        }
        if subtree.len() * 2 > MAX_OPS_PER_CHANGE {
            return Err(Error::invalid(format!(
                "{target} has {} resources with its descendants; undelete writes at most {} in one change",
                subtree.len(),
                MAX_OPS_PER_CHANGE / 2
            )));
        }
        // Blobs are never deleted, but a change may only reference a durable one (invariant 3).
        for r in &subtree {
            if let Some(hash) = holdfast_blob::referenced_by(&r.body) {
                let there = self
                    .core
                    .blobs()
                    .exists(store.id(), &hash)
                    .await
                    .map_err(|e| Error::internal(format!("cannot check blob {}: {e}", hash.as_str())))?;
                if !there {
                    return Err(Error::conflict(format!(
                        "{} {} references blob {}, which the blob store no longer holds; nothing was undeleted",
                        r.kind.as_str(),
                        r.id,
                        hash.as_str()
                    )));
                }
            }
        }
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        for r in &subtree {
            *kinds.entry(r.kind.as_str().to_owned()).or_default() += 1;
        }
        let touches_index = subtree.iter().any(|r| matches!(r.kind, Kind::VectorStore | Kind::VectorStoreFile));
        let resources = subtree.len() as u64;
        let kind = root.kind;
        let root_parent = root.parent.clone();
        let puts: Vec<Op> = subtree
            .iter()
            .map(|r| Op::Put { kind: r.kind, id: r.id.clone(), parent: r.parent.clone(), body: r.body.clone() })
            .collect();
        let stamps: Vec<Op> = subtree
            .iter()
            .map(|r| Op::Stamp { kind: r.kind, id: r.id.clone(), created_us: r.created_us, updated_us: r.updated_us })
            .collect();
        let checks: Vec<(Kind, String)> = subtree.iter().map(|r| (r.kind, r.id.clone())).collect();
        // A vector store's file links (`vsf:{store}:{file}`) need their files.
        let linked: Vec<String> = subtree
            .iter()
            .filter(|r| r.kind == Kind::VectorStoreFile)
            .filter_map(|r| r.parent.as_ref().and_then(|p| r.id.strip_prefix(&format!("vsf:{p}:"))).map(str::to_owned))
            .collect();
        drop(rows);

        let data = self.core.data_on(store.clone(), caller);
        let project_name = project.to_owned();
        let core = self.core.clone();
        let committed = data
            .commit(Box::new(move |view| {
                // Checked in the writer, so nothing can appear between the check and the write.
                // Ids are unique within a project across kinds.
                for (k, rid) in &checks {
                    for kind in Kind::ALL {
                        if view.get(kind, rid).map_err(Error::from)?.is_some() {
                            let what = if kind == *k { k.as_str() } else { kind.as_str() };
                            return Err(Error::conflict(format!(
                                "{what} {rid} exists in project {project_name:?}; nothing was undeleted"
                            )));
                        }
                    }
                }
                if let Some(p) = &root_parent {
                    let alive = Kind::ALL.into_iter().any(|kind| view.get(kind, p).ok().flatten().is_some());
                    if !alive {
                        return Err(Error::conflict(format!(
                            "the parent {p} of {} does not exist in project {project_name:?}; undelete it first",
                            checks.first().map(|c| c.1.as_str()).unwrap_or_default()
                        )));
                    }
                }
                for file in &linked {
                    if view.get(Kind::File, file).map_err(Error::from)?.is_none() {
                        return Err(Error::conflict(format!(
                            "file {file}, linked to a vector store being undeleted, does not exist in project \
                             {project_name:?}; undelete it first; nothing was undeleted"
                        )));
                    }
                }
                let mut ops = puts;
                ops.extend(stamps);
                core.check_joining(view, &ops).map_err(|e| Error::new(e.kind, format!("{}; nothing was undeleted", e.message)))?;
                Ok(ops)
            }))
            .await?;
        if touches_index {
            self.core.catch_up(&data, &Kind::ALL).await?;
        }
        Ok(UndeleteSummary {
            project: project.to_owned(),
            id: target,
            kind,
            deleted_lsn: deletion.lsn.0,
            deleted_at: holdfast_types::rfc3339(deletion.ts),
            deleted_via: deletion.via,
            restored_from_lsn: upto.0,
            lsn: committed.lsn.map_or(0, |l| l.0),
            kinds,
            resources,
        })
    }
}

#[cfg(test)]
mod tests {
    use holdfast_types::parse_rfc3339;

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.5Z"), Some(1_500_000));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800_000_000));
        assert_eq!(parse_rfc3339("2000-03-01T01:00:00+01:00"), Some(951_868_800_000_000));
        assert_eq!(parse_rfc3339(&holdfast_types::rfc3339(1_763_788_257_123_456)), Some(1_763_788_257_123_456));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2000-13-01T00:00:00Z"), None);
    }
}
