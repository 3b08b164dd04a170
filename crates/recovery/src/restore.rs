//! Point-in-time restore, always into a new project: replay the source's journal (its own, when
//! the project is live here, or the archive's) up to the target into a new database, copy the
//! blobs it references, then journal one change that makes the copy the new project's. The new
//! project is in the catalog as `creating` (invisible, rolled back by start-up recovery) until
//! all of that is durable.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use holdfast_archive::{Manifest, Progress, Target};
use holdfast_blob::BlobHash;
use holdfast_store::apply::Replayer;
use holdfast_store::control;
use holdfast_store::{ProjectStore, StateView};
use holdfast_types::api::{ErrorDetail, Operation, RestoreRequest, RestoreSummary};
use holdfast_types::{CHANGE_FORMAT_VERSION, Change, Error, Kind, Lsn, Micros, Op, ProjectId, now_micros, parse_rfc3339, rfc3339};

use holdfast_core::auth::{Action, Caller};
use holdfast_core::{Result, Service, validate};

use crate::Recovery;

/// Changes read from a live project's journal per page.
const PAGE: usize = 10_000;

/// Where a restore reads from.
pub enum RestoreSource {
    /// The live project's own journal (complete since its creation).
    Journal(Arc<ProjectStore>),
    /// The archive's copy (a deleted project, another region's, or on request).
    Archive(Box<Manifest>),
}

/// A running or finished operation, kept in memory (a restart forgets it; the restore it ran
/// was rolled back or completed).
pub(crate) struct OperationState {
    id: String,
    started_at: Micros,
    progress: Arc<Progress>,
    outcome: std::sync::Mutex<Option<Result<RestoreSummary>>>,
}

impl OperationState {
    fn view(&self) -> Operation {
        let outcome = self.outcome.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (status, result, error) = match outcome {
            None => ("running", None, None),
            Some(Ok(summary)) => ("succeeded", Some(summary), None),
            Some(Err(e)) => (
                "failed",
                None,
                Some(ErrorDetail { code: e.kind.code().into(), message: e.message, request_id: String::new() }),
            ),
        };
        Operation {
            id: self.id.clone(),
            kind: "restore".into(),
            status: status.into(),
            done: self.progress.done.load(Ordering::Relaxed),
            total: self.progress.total.load(Ordering::Relaxed),
            started_at: rfc3339(self.started_at),
            result,
            error,
        }
    }
}

/// The target a request names.
pub fn target_of(lsn: Option<Lsn>, at: Option<&str>) -> Result<Target> {
    match (lsn, at) {
        (Some(_), Some(_)) => Err(Error::invalid("give lsn or at, not both")),
        (Some(lsn), None) if lsn.0 == 0 => Err(Error::invalid("lsn must be at least 1")),
        (Some(lsn), None) => Ok(Target::Lsn(lsn)),
        (None, Some(at)) => parse_rfc3339(at)
            .map(Target::Time)
            .ok_or_else(|| Error::invalid(format!("at must be an RFC 3339 time such as 2026-11-22T10:00:00Z, got {at:?}"))),
        (None, None) => Ok(Target::Latest),
    }
}

impl Recovery {
    /// Starts restoring `project` into a new project; poll the operation for progress.
    pub async fn start_restore(self: &Arc<Self>, caller: &Caller, project: &str, req: RestoreRequest) -> Result<Operation> {
        caller.require(Action::Restore, &format!("/projects/{project}"))?;
        // The new project is the restore's own: a Backup Operator may make it.
        caller.require(Action::Restore, &format!("/projects/{}", req.into))?;
        validate::project_name(&req.into)?;
        let target = target_of(req.lsn, req.at.as_deref())?;
        let source = self.restore_source(project, req.from_archive).await?;
        let state = Arc::new(OperationState {
            id: format!("op_{}", ulid::Ulid::generate().to_string().to_lowercase()),
            started_at: now_micros(),
            progress: Arc::new(Progress::default()),
            outcome: std::sync::Mutex::new(None),
        });
        {
            let mut operations = self.operations.lock().unwrap_or_else(|e| e.into_inner());
            prune_operations(&mut operations);
            operations.insert(state.id.clone(), state.clone());
        }
        let (service, caller, op) = (self.clone(), caller.clone(), state.clone());
        tokio::spawn(async move {
            let outcome = service.restore(&caller, source, target, &req.into, req.allow_partial, &op.progress).await;
            if let Err(e) = &outcome {
                tracing::warn!(operation = %op.id, error = %e, "restore failed");
            }
            *op.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        });
        Ok(state.view())
    }

    pub fn operation(&self, caller: &Caller, id: &str) -> Result<Operation> {
        caller.require(Action::ProjectsRead, "/")?;
        let operations = self.operations.lock().unwrap_or_else(|e| e.into_inner());
        operations.get(id).map(|op| op.view()).ok_or_else(|| Error::not_found(format!("operation {id:?} not found")))
    }

    /// The live project's journal, unless it is gone or the archive is asked for.
    pub async fn restore_source(&self, project: &str, from_archive: bool) -> Result<RestoreSource> {
        if !from_archive {
            match self.core.project_store(project).await {
                Ok(store) => return Ok(RestoreSource::Journal(store)),
                Err(e) if e.kind == holdfast_types::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let Some(archiver) = &self.archiver else {
            return Err(Error::not_found(format!(
                "project {project:?} not found, and this server has no archive to restore it from"
            )));
        };
        let manifest = archiver.archive.find(project).await.map_err(Error::from)?;
        Ok(RestoreSource::Archive(Box::new(manifest)))
    }

    /// Restores `source` to `target` into the new project `into`; returns once it is active.
    pub async fn restore(
        &self,
        caller: &Caller,
        source: RestoreSource,
        target: Target,
        into: &str,
        allow_partial: bool,
        progress: &Progress,
    ) -> Result<RestoreSummary> {
        validate::project_name(into)?;
        let id = ProjectId::generate();
        let reserved = self.core.reserve_project(caller, &id, into).await?;
        if !reserved {
            return Err(Error::conflict(format!("a project named {into:?} exists already")));
        }
        match self.restore_into(caller, source, target, &id, into, allow_partial, progress).await {
            Ok(summary) => Ok(summary),
            Err(e) => {
                // A store opened before the failure (the index rebuild is the last step) closes
                // before its directory goes.
                if let Some(store) = self.core.open_stores().await.remove(&id) {
                    let _ = tokio::task::spawn_blocking(move || store.close()).await;
                }
                let _ = std::fs::remove_dir_all(self.core.project_dir(&id));
                self.core.unreserve_project(&id, into).await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn restore_into(
        &self,
        caller: &Caller,
        source: RestoreSource,
        target: Target,
        id: &ProjectId,
        into: &str,
        allow_partial: bool,
        progress: &Progress,
    ) -> Result<RestoreSummary> {
        let dir = self.core.project_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
        let db = self.core.project_db(id);
        let (replayer, source_id, lsn, ts, blobs, verified, partial, source_name) = match &source {
            RestoreSource::Journal(store) => {
                let (replayer, lsn, ts, blobs) = replay_journal(store, target, &db, id, progress).await?;
                (replayer, store.id().clone(), lsn, ts, blobs, None, None, "journal")
            }
            RestoreSource::Archive(manifest) => {
                let plan = manifest.plan(target).map_err(Error::from)?;
                let archive = &self.archiver()?.archive;
                let restored = holdfast_archive::restore(archive, manifest, plan, &db, id, allow_partial, progress)
                    .await
                    .map_err(Error::from)?;
                for hash in &restored.blobs {
                    let bytes = archive.get_blob(&manifest.project, hash).await.map_err(Error::from)?;
                    self.core.blobs().put(id, bytes).await.map_err(|e| Error::internal(format!("blob {hash}: {e}")))?;
                }
                let r = restored;
                (r.replayer, manifest.project.clone(), r.lsn, r.ts, r.blobs, r.verified_against, r.partial, "archive")
            }
        };
        if let RestoreSource::Journal(store) = &source {
            for hash in &blobs {
                let bytes = self.core.blobs().get(store.id(), hash).await.map_err(|e| Error::internal(format!("blob {hash}: {e}")))?;
                self.core.blobs().put(id, bytes).await.map_err(|e| Error::internal(format!("blob {hash}: {e}")))?;
            }
        }
        let (actor, request_id) = (caller.principal.id.as_str().to_owned(), caller.request_id.as_str().to_owned());
        let (pid, name, cid) = (source_id.clone(), into.to_owned(), id.clone());
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || adopt(replayer, &core, &pid, &cid, &name, &actor, &request_id))
            .await
            .map_err(|e| Error::internal(format!("restore task failed: {e}")))??;
        let (path, label) = (db.clone(), into.to_owned());
        let store = tokio::task::spawn_blocking(move || ProjectStore::open(&path, &label))
            .await
            .map_err(|e| Error::internal(format!("open task failed: {e}")))?
            .map_err(Error::from)?;
        let store = Arc::new(store);
        self.core.open_stores().await.insert(id.clone(), store.clone());
        // Projections are rebuilt before the project appears, so its first search is not slow.
        self.core.catch_up(&self.core.data_on(store.clone(), &Caller::system()), &Kind::ALL)
            .await?;
        let cid = id.clone();
        self.core.control().call(move |c| control::mark_active(c, &cid)).await.map_err(Error::from)?;
        let project = self.core.get_project(&Caller::system(), into).await?;
        Ok(RestoreSummary {
            project,
            source_project_id: source_id,
            source: source_name.into(),
            restored_lsn: lsn,
            restored_time: rfc3339(ts),
            blobs: blobs.len() as u64,
            verified_state_hash: verified,
            partial,
        })
    }
}

/// Replays a live project's journal up to `target` into a new database.
async fn replay_journal(
    store: &Arc<ProjectStore>,
    target: Target,
    db: &std::path::Path,
    id: &ProjectId,
    progress: &Progress,
) -> Result<(Replayer, Lsn, Micros, BTreeSet<BlobHash>)> {
    let (last, settled) = store.settled();
    let first_ts = store.read(|view| Ok(view.journal(Lsn::ZERO, 1)?.pop().map_or(0, |c| c.ts))).await.map_err(Error::from)?;
    let window = || {
        format!("the journal holds LSN 1 ({}) to LSN {last} ({})", rfc3339(first_ts), rfc3339(settled))
    };
    let (until_lsn, until_ts) = match target {
        Target::Latest => (last, None),
        Target::Lsn(n) if n.0 >= 1 && n <= last => (n, None),
        Target::Lsn(n) => return Err(Error::invalid(format!("LSN {n} is outside the window: {}", window()))),
        Target::Time(t) if t >= first_ts && t <= settled => (last, Some(t)),
        Target::Time(t) => return Err(Error::invalid(format!("{} is outside the window: {}", rfc3339(t), window()))),
    };
    progress.total.store(until_lsn.0, Ordering::Relaxed);
    let mut replayer = Replayer::create(db, id).map_err(Error::from)?;
    let mut blobs = BTreeSet::new();
    let mut ts = first_ts;
    'pages: loop {
        let after = replayer.last_lsn();
        if after >= until_lsn {
            break;
        }
        let limit = PAGE.min((until_lsn.0 - after.0) as usize);
        let page = store.read(move |view| view.journal(after, limit)).await.map_err(Error::from)?;
        if page.is_empty() {
            break;
        }
        let (back, stop) = tokio::task::spawn_blocking(move || -> Result<_> {
            let (passed, last) =
                holdfast_archive::apply_until(&mut replayer, &page, (until_lsn, until_ts), &mut blobs, |_, _| Ok(()))
                    .map_err(Error::from)?;
            Ok(((replayer, blobs, last.unwrap_or(ts)), passed))
        })
        .await
        .map_err(|e| Error::internal(format!("restore task failed: {e}")))??;
        (replayer, blobs, ts) = back;
        progress.done.store(replayer.last_lsn().0, Ordering::Relaxed);
        if stop {
            break 'pages;
        }
    }
    let lsn = replayer.last_lsn();
    Ok((replayer, lsn, ts, blobs))
}

/// Makes the replayed copy the new project's: one change that replaces the source's project
/// record with the new project's (same display name, description and tags; the new name) and
/// seals its connection secrets again for the new project's id, then makes the database durable.
fn adopt(
    mut replayer: Replayer,
    core: &Service,
    source: &ProjectId,
    id: &ProjectId,
    name: &str,
    actor: &str,
    request_id: &str,
) -> Result<()> {
    let view: StateView<'_> = replayer.view().map_err(Error::from)?;
    let last = view.last_lsn().map_err(Error::from)?;
    let epoch = view.epoch().map_err(Error::from)?;
    let last_ts = view.last_change().map_err(Error::from)?.map_or(0, |c| c.ts);
    let Some(record) = view.get(Kind::Project, source.as_str()).map_err(Error::from)? else {
        return Err(Error::invalid(format!(
            "at LSN {last} the project was already deleted; restore to a point before its deletion"
        )));
    };
    let mut body = record.body;
    body["name"] = serde_json::Value::String(name.to_owned());
    // A restored project is a live one, even when the point restored was after a soft delete.
    if let Some(fields) = body.as_object_mut() {
        fields.remove("deleted_us");
    }
    let mut ops = vec![
        Op::Delete { kind: Kind::Project, id: source.as_str().to_owned() },
        Op::Put { kind: Kind::Project, id: id.as_str().to_owned(), parent: None, body },
    ];
    ops.extend(core.rebind_ops(&view, source, id)?);
    let change = Change {
        v: CHANGE_FORMAT_VERSION,
        lsn: last.next(),
        epoch,
        ts: now_micros().max(last_ts),
        actor: actor.to_owned(),
        request_id: request_id.to_owned(),
        ops,
    };
    replayer.apply(&change).map_err(Error::from)?;
    replayer.finish().map_err(Error::from)
}

/// Keeps the operation table from growing without bound: finished operations older than a day
/// are forgotten.
pub(crate) fn prune_operations(operations: &mut HashMap<String, Arc<OperationState>>) {
    let cutoff = now_micros() - 24 * 3600 * 1_000_000;
    operations.retain(|_, op| op.started_at > cutoff || op.outcome.lock().map(|o| o.is_none()).unwrap_or(true));
}
