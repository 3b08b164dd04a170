//! The control plane on the journal. Principals, API key hashes, role assignments, custom
//! roles, managed identities and locks are resources of one project, the **control project**
//! ([`CONTROL_PROJECT`]): journaled like any project (one writer, group commit, dense LSNs,
//! epochs), replicated to every peer region as a hot replica, failed over like a project, and
//! archived like one. Each region serves key lookups, role checks and lock checks from its own
//! copy.
//!
//! The control tables of `control.db` (`principals`, `api_keys`, `role_assignments`, `roles`,
//! `locks`) are this journal's projection in each region: rebuilt from the control project's
//! state whenever its LSN moves ([`Service::refresh_control`]), never written any other way.
//! A control write ([`Service::control_write`]) runs its SQL against the projection inside a
//! transaction it rolls back, journals the difference it made as `put`/`delete` ops of the
//! control kinds ([`Kind::CONTROL`]), and then rebuilds the projection from the journal. The
//! SQL of every control operation (its checks included) is thus written once, and the journal
//! stays the only source of the state.
//!
//! A control write is planned against the projection at LSN `base` and commits only if the
//! control journal is still at `base` when the writer (here, or at the control primary in
//! another region, through [`Domain::forward_control`]) takes it; otherwise it is planned
//! again on the newer state. Control writes are therefore serialisable across regions.
//!
//! Architecture Invariant: nothing but [`Service::refresh_control`] changes the control tables
//! outside a rolled-back planning transaction.
//!
//! [`Domain::forward_control`]: crate::Domain::forward_control

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use holdfast_store::control::{self, ControlRow};
use holdfast_store::{ProjectStore, Role, StoreError};
pub use holdfast_types::api::{ControlCommitted, ControlOps};
use holdfast_types::{Error, ErrorKind, Kind, Lsn, Op, ProjectId};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Caller;
use crate::{Result, Service};

pub use crate::projects::CONTROL_PROJECT;

/// What a refused stale plan's error says, so the planner knows to plan again.
pub const STALE_CONTROL_PLAN: &str = "the control journal moved on since this control write was planned";

/// How many times a control write is planned again when another one committed first.
const MAX_ATTEMPTS: usize = 16;

/// How long a control write made through another region waits for this region's copy to apply
/// it before it answers (the answer is true either way; only the local read of it may lag).
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// How often a region makes sure the names of the projects it leads are registered.
const REGISTER_EVERY: Duration = Duration::from_secs(10);

/// A control operation's SQL, run against the control tables (see [`Service::control_write`]).
type ControlPlan<R> = Arc<dyn Fn(&Connection) -> std::result::Result<R, StoreError> + Send + Sync>;

/// What this region's copy of the control journal is, for `holdfast status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ControlPosition {
    pub project_id: ProjectId,
    /// `primary` or `replica`.
    pub role: String,
    /// The LSN the control tables here reflect.
    pub applied_lsn: Lsn,
}

/// The ops that turn `before` into `after`: a `put` for every new or changed row, a `delete`
/// for every row that went.
pub fn diff_rows(before: &[ControlRow], after: &[ControlRow]) -> Vec<Op> {
    let old: BTreeMap<(Kind, &str), &Value> = before.iter().map(|(k, id, body)| ((*k, id.as_str()), body)).collect();
    let new: BTreeMap<(Kind, &str), &Value> = after.iter().map(|(k, id, body)| ((*k, id.as_str()), body)).collect();
    let mut ops = Vec::new();
    for (&(kind, id), body) in &new {
        if old.get(&(kind, id)) != Some(body) {
            ops.push(Op::Put { kind, id: id.to_owned(), parent: None, body: (*body).clone() });
        }
    }
    for &(kind, id) in old.keys() {
        if !new.contains_key(&(kind, id)) {
            ops.push(Op::Delete { kind, id: id.to_owned() });
        }
    }
    ops
}

/// The control rows a control project's state holds.
pub(crate) fn rows_of(view: &holdfast_store::StateView<'_>) -> Result<(Lsn, Vec<ControlRow>), StoreError> {
    let lsn = view.last_lsn()?;
    let rows = view
        .all()?
        .into_iter()
        .filter(|r| Kind::CONTROL.contains(&r.kind))
        .map(|r| (r.kind, r.id, r.body))
        .collect();
    Ok((lsn, rows))
}

/// Runs `plan` against the control tables in a savepoint it rolls back, and returns its result
/// with the ops that describe what it changed.
fn plan_rows<R>(conn: &Connection, plan: &(dyn Fn(&Connection) -> std::result::Result<R, StoreError> + Send + Sync)) -> std::result::Result<(R, Vec<Op>), StoreError> {
    let before = control::control_rows(conn)?;
    conn.execute_batch("SAVEPOINT control_plan")?;
    let planned = plan(conn).and_then(|out| Ok((out, control::control_rows(conn)?)));
    conn.execute_batch("ROLLBACK TO control_plan; RELEASE control_plan")?;
    let (out, after) = planned?;
    Ok((out, diff_rows(&before, &after)))
}

impl Service {
    /// The control project's catalog entry here.
    pub async fn control_entry(&self) -> Result<control::CatalogEntry> {
        self.control
            .call(|c| control::find_project(c, CONTROL_PROJECT))
            .await
            .map_err(Error::from)?
            .filter(|e| e.active)
            .ok_or_else(|| Error::unavailable("this region holds no control journal yet"))
    }

    /// The control project's store here, opened on first use.
    pub async fn control_store(&self) -> Result<Arc<ProjectStore>> {
        // Held here as well as in the project map, so a control write never waits for the map
        // (a store being opened holds it while it finishes a purge, which is a control write).
        let held = self.control_handle.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(store) = held.filter(|s| s.is_open()) {
            return Ok(store);
        }
        let entry = self.control_entry().await?;
        let store = Box::pin(self.store(&entry)).await?;
        *self.control_handle.lock().unwrap_or_else(|e| e.into_inner()) = Some(store.clone());
        Ok(store)
    }

    /// This region's copy of the control journal.
    pub async fn control_position(&self) -> Result<ControlPosition> {
        let store = self.control_store().await?;
        let applied = self.projected.lock().unwrap_or_else(|e| e.into_inner()).1;
        Ok(ControlPosition {
            project_id: store.id().clone(),
            role: if store.role() == Role::Replica { "replica" } else { "primary" }.to_owned(),
            applied_lsn: applied,
        })
    }

    /// Changes the control plane: `plan` runs against this region's control tables (and may
    /// refuse), what it changed is journaled in the control journal — here when this region
    /// holds the control primary, else at the region that does — and the control tables, keys
    /// and locks here are rebuilt from the journal before this returns. `plan` may run more than
    /// once (when another control write committed first); it may change only the control tables
    /// (anything else it writes is rolled back).
    pub async fn control_write<R, F>(&self, caller: &Caller, plan: F) -> Result<R>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> std::result::Result<R, StoreError> + Send + Sync + 'static,
    {
        self.control_write_in(None, caller, plan).await
    }

    /// [`Service::control_write`] on `store` when given (start-up holds the control journal
    /// open itself), else on the control journal the service has open.
    pub(crate) async fn control_write_in<R, F>(&self, store: Option<&Arc<ProjectStore>>, caller: &Caller, plan: F) -> Result<R>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> std::result::Result<R, StoreError> + Send + Sync + 'static,
    {
        let plan: ControlPlan<R> = Arc::new(plan);
        let _serial = self.keys_update.lock().await;
        for _ in 0..MAX_ATTEMPTS {
            let store = match store {
                Some(store) => store.clone(),
                None => self.control_store().await?,
            };
            self.refresh_control_locked(&store).await?;
            let base = self.projected.lock().unwrap_or_else(|e| e.into_inner()).1;
            let planning = plan.clone();
            let (out, ops) = self.control.call(move |c| plan_rows(c, planning.as_ref())).await.map_err(Error::from)?;
            if ops.is_empty() {
                return Ok(out);
            }
            if self.commit_control(&store, caller, base, ops).await? {
                return Ok(out);
            }
        }
        Err(Error::unavailable("the control journal changed under every attempt of this control write; try again"))
    }

    /// Journals `ops` (of the control kinds) as one control write, as they are: a divergence
    /// record's control changes replayed by an Owner.
    pub async fn control_write_ops(&self, caller: &Caller, ops: Vec<Op>) -> Result<()> {
        let _serial = self.keys_update.lock().await;
        for _ in 0..MAX_ATTEMPTS {
            let store = self.control_store().await?;
            self.refresh_control_locked(&store).await?;
            let base = self.projected.lock().unwrap_or_else(|e| e.into_inner()).1;
            if self.commit_control(&store, caller, base, ops.clone()).await? {
                return Ok(());
            }
        }
        Err(Error::unavailable("the control journal changed under every attempt of this control write; try again"))
    }

    /// Commits `ops`, planned at `base`, to the control journal — here, or at the control
    /// primary — and rebuilds the projection; `false` when the journal had moved on (plan
    /// again).
    async fn commit_control(&self, store: &Arc<ProjectStore>, caller: &Caller, base: Lsn, ops: Vec<Op>) -> Result<bool> {
        let request = ControlOps {
            base,
            actor: caller.principal.id.as_str().to_owned(),
            request_id: caller.request_id.as_str().to_owned(),
            ops,
        };
        let committed = if store.role() == Role::Replica {
            self.forward_control(store.id(), request).await
        } else {
            self.commit_ops(store, request).await
        };
        match committed {
            Ok(lsn) => {
                if store.role() == Role::Replica {
                    let mut applied = store.subscribe();
                    let _ = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|l| *l >= lsn)).await;
                }
                self.refresh_control_locked(store).await?;
                Ok(true)
            }
            Err(e) if e.message.contains(STALE_CONTROL_PLAN) => {
                // Another control write won: wait (briefly) for it to arrive, plan again.
                let mut applied = store.subscribe();
                let _ = tokio::time::timeout(Duration::from_millis(500), applied.wait_for(|l| *l > base)).await;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// `POST /internal/v1/control/ops`: commits a control write another region planned, if the
    /// control journal is still where it was planned.
    pub async fn commit_control_ops(&self, request: ControlOps) -> Result<ControlCommitted> {
        let store = self.control_store().await?;
        if store.role() == Role::Replica {
            return Err(Error::conflict(format!(
                "region {} holds a replica of the control journal, not its primary",
                self.region
            )));
        }
        // Serialised with this region's own control writes, checked against the projection of
        // the journal as it is now, and projected here before it answers.
        let _serial = self.keys_update.lock().await;
        self.refresh_control_locked(&store).await?;
        let lsn = self.commit_ops(&store, request).await?;
        self.refresh_control_locked(&store).await?;
        Ok(ControlCommitted { lsn })
    }

    /// Start-up: makes sure this region has a control journal — creating it, with what the
    /// control tables held (an upgrade in place) as its first changes — rebuilds the control
    /// tables from it, and makes sure of the admin key. The journal is closed again before this
    /// returns; the running service opens it on first use. Returns a generated admin key.
    pub(crate) async fn open_control_plane(&self, admin_key: Option<&str>) -> Result<Option<String>> {
        let found = self.control.call(|c| control::find_project(c, CONTROL_PROJECT)).await.map_err(Error::from)?;
        let entry = match found {
            Some(entry) => entry,
            None => self.create_control_project().await?,
        };
        let id = entry.id.clone();
        let replica = self.control.call(control::list_replicas).await.map_err(Error::from)?.iter().any(|r| r.project_id == id);
        let path = self.project_db(&id);
        if replica && !path.exists() {
            // A replica's copy set aside (a new lineage) and not bootstrapped again before a
            // stop: its replicator bootstraps it; until then this region has no control tables
            // newer than it last had.
            tracing::warn!(id = %id, "this region's copy of the control journal is being bootstrapped again");
            return Ok(None);
        }
        let store = tokio::task::spawn_blocking(move || ProjectStore::open(&path, CONTROL_PROJECT))
            .await
            .map_err(|e| Error::internal(format!("open task failed: {e}")))?
            .map_err(Error::from)?;
        let store = Arc::new(store);
        store.set_role(if replica { Role::Replica } else { Role::Primary });
        let outcome = async {
            self.refresh_control_locked(&store).await?;
            let generated = self.bootstrap_admin(&store, admin_key).await?;
            let pid = id.clone();
            let (_, replicas) = store.read(move |view| crate::projects::topology(view, &pid)).await.map_err(Error::from)?;
            if !replica && replicas.is_empty() {
                // Alone, this catalog holds every project: a system identity whose project it
                // does not hold belongs to a create a crash cut off.
                self.control_write_in(Some(&store), &Caller::system(), |c| control::remove_system_identities(c, None)).await?;
            }
            Ok(generated)
        }
        .await;
        let closing = store.clone();
        let _ = tokio::task::spawn_blocking(move || closing.close()).await;
        outcome
    }

    /// Creates this region's control journal: the control project's record and data key, then
    /// every row the control tables hold (none on a new data directory; an earlier version's
    /// principals, keys, assignments, roles and locks on an upgrade).
    async fn create_control_project(&self) -> Result<control::CatalogEntry> {
        let id = ProjectId::generate();
        let reserved = self.control.call({
            let id = id.clone();
            move |c| control::insert_creating(c, &id, CONTROL_PROJECT)
        });
        if !reserved.await.map_err(Error::from)? {
            return Err(Error::conflict(format!(
                "a project named {CONTROL_PROJECT:?} exists in this data directory; that name now belongs to the control plane: \
                 export the project, purge it, and import it under another name with the previous release"
            )));
        }
        let (dir, path, pid) = (self.project_dir(&id), self.project_db(&id), id.clone());
        let store = tokio::task::spawn_blocking(move || -> Result<ProjectStore> {
            std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
            ProjectStore::create(&path, &pid, CONTROL_PROJECT).map_err(Error::from)
        })
        .await
        .map_err(|e| Error::internal(format!("create task failed: {e}")))??;
        let system = Caller::system();
        let (actor, request) = (system.principal.id.as_str().to_owned(), system.request_id.as_str().to_owned());
        let record = crate::projects::record_op(&id, CONTROL_PROJECT, "Holdfast control plane")?;
        store.write(&actor, &request, Box::new(move |_| Ok(vec![record]))).await.map_err(Error::from)?;
        let (rid, region, key) = (id.clone(), self.region.clone(), self.region_key.clone());
        store
            .write(&actor, &request, Box::new(move |view| crate::projects::data_key_for_sealing(view, &rid, &rid, &region, &key).map(|(_, ops)| ops)))
            .await
            .map_err(Error::from)?;
        let rows = self.control.call(control::control_rows).await.map_err(Error::from)?;
        let ops: Vec<Op> = rows.into_iter().map(|(kind, id, body)| Op::Put { kind, id, parent: None, body }).collect();
        if !ops.is_empty() {
            tracing::info!(rows = ops.len(), "upgrading in place: this region's principals, keys, roles and locks become the control journal's first changes");
        }
        for chunk in ops.chunks(holdfast_types::change::MAX_OPS_PER_CHANGE) {
            let chunk = chunk.to_vec();
            store.write(&actor, &request, Box::new(move |_| Ok(chunk))).await.map_err(Error::from)?;
        }
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        let cid = id.clone();
        self.control.call(move |c| control::mark_active(c, &cid)).await.map_err(Error::from)?;
        self.control
            .call(|c| control::find_project(c, CONTROL_PROJECT))
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::internal("the control project vanished"))
    }

    /// Rebuilds the control tables, keys and locks from the control journal when it has moved
    /// since they were last built.
    pub async fn refresh_control(&self) -> Result<()> {
        let store = self.control_store().await?;
        let _serial = self.keys_update.lock().await;
        self.refresh_control_locked(&store).await
    }

    async fn refresh_control_locked(&self, store: &Arc<ProjectStore>) -> Result<()> {
        let current = self.projected.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // A Weak keeps its allocation, so no other store can have the address it points to.
        let same = current.0.as_ref().is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(store)));
        if same && current.1 == store.last_lsn() {
            return Ok(());
        }
        let id = store.id().clone();
        let region = self.region.clone();
        let region_key = self.region_key.clone();
        let (lsn, rows, pepper) = store
            .read(move |view| {
                let (lsn, rows) = rows_of(view)?;
                let pepper = crate::projects::data_key(view, &id, &region, &region_key).ok().flatten().map(|k| k.derive(crate::auth::CONTROL_KEY_HASH_LABEL));
                Ok((lsn, rows, pepper))
            })
            .await
            .map_err(Error::from)?;
        self.install_control(store, lsn, rows, pepper).await
    }

    /// Replaces the control tables with `rows` (the control journal at `lsn`) and reloads the
    /// keys and locks from them.
    async fn install_control(&self, store: &Arc<ProjectStore>, lsn: Lsn, rows: Vec<ControlRow>, pepper: Option<[u8; 32]>) -> Result<()> {
        // One transaction: the tables replaced, then the keys and locks read back from them.
        let (loaded, locks) = self
            .control
            .call(move |c| {
                control::replace_control_rows(c, &rows)?;
                Ok((control::keys_and_assignments(c)?, control::list_locks(c)?))
            })
            .await
            .map_err(Error::from)?;
        self.key_hasher.set_control_pepper(pepper);
        self.install_keys(loaded);
        self.install_locks(locks)?;
        *self.projected.lock().unwrap_or_else(|e| e.into_inner()) = (Some(Arc::downgrade(store)), lsn);
        Ok(())
    }

    /// Keeps this region's control tables, keys and locks following the control journal as it
    /// moves (a replica's applies), until the server stops.
    pub fn spawn_control_follower(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            let mut stopping = service.stopping();
            let mut last_registered = std::time::Instant::now() - REGISTER_EVERY;
            loop {
                if *stopping.borrow() {
                    break;
                }
                let mut moved = match service.control_store().await {
                    Ok(store) => {
                        let rx = store.subscribe();
                        if let Err(e) = service.refresh_control().await {
                            tracing::warn!(error = %e, "cannot rebuild the control tables from the control journal; retrying");
                        }
                        service.release_unreleased_names().await;
                        if last_registered.elapsed() >= REGISTER_EVERY {
                            service.register_local_names().await;
                            last_registered = std::time::Instant::now();
                        }
                        Some(rx)
                    }
                    Err(_) => None,
                };
                // The store may be replaced (a region joining another's control plane): look
                // again at least every second.
                let wait = async {
                    match moved.as_mut() {
                        Some(rx) => {
                            let _ = rx.changed().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = wait => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
            }
        })
    }
}

impl Service {
    /// Registers across regions the name of every project this region leads that the control
    /// journal does not list (projects made before the control journal, or in a region before it
    /// joined another's control plane). A name another project holds is a conflict to resolve by
    /// hand: logged, and left as it is.
    pub(crate) async fn register_local_names(&self) {
        let Ok(entries) = self.control.call(control::all_projects).await else { return };
        for entry in entries.into_iter().filter(|e| !e.creating() && !self.is_control_project(e)) {
            if self.role_here(&entry.id) != Role::Primary {
                continue;
            }
            let name = entry.name.clone();
            let held = self.control.call(move |c| control::name_holder(c, &name)).await;
            match held {
                Ok(Some((holder, _))) if holder == entry.id.as_str() => continue,
                Ok(Some((holder, region))) => {
                    tracing::warn!(project = %entry.name, id = %entry.id, %holder, %region,
                        "another project, made in region {region}, holds this project's name across regions: rename one (export, import under another name)");
                    continue;
                }
                Ok(None) => {}
                Err(_) => return,
            }
            let (n, id, region) = (entry.name.clone(), entry.id.clone(), self.region.clone());
            if let Err(e) = self.control_write(&Caller::system(), move |c| control::register_name(c, &n, &id, &region).map(|_| ())).await {
                tracing::debug!(project = %entry.name, error = %e, "cannot register the project's name across regions yet");
                return;
            }
        }
    }
}

impl Service {
    /// Commits `request`'s ops to the control journal if it is still at the LSN they were
    /// planned at and they leave the control tables valid ([`control::check_control_ops`]).
    async fn commit_ops(&self, store: &ProjectStore, request: ControlOps) -> Result<Lsn> {
        let ControlOps { base, actor, request_id, ops } = request;
        let checked = ops.clone();
        self.control.call(move |c| control::check_control_ops(c, &checked)).await.map_err(Error::from)?;
        let committed = store
            .write(
                &actor,
                &request_id,
                Box::new(move |view| {
                    let last = view.last_lsn().map_err(Error::from)?;
                    if last != base {
                        return Err(Error::new(ErrorKind::Conflict, format!("{STALE_CONTROL_PLAN} (planned at {base}, now at {last})")));
                    }
                    Ok(ops)
                }),
            )
            .await
            .map_err(Error::from)?;
        committed.lsn.ok_or_else(|| Error::internal("a control write journaled nothing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_difference_of_two_row_sets_is_puts_then_deletes() {
        let row = |kind, id: &str, v| (kind, id.to_owned(), json!({ "id": id, "v": v }));
        let before = vec![row(Kind::Principal, "prn_a", 1), row(Kind::ApiKey, "key_a", 1), row(Kind::Lock, "lock_a", 1)];
        let after = vec![row(Kind::Principal, "prn_a", 1), row(Kind::ApiKey, "key_a", 2), row(Kind::ApiKey, "key_b", 1)];
        let ops = diff_rows(&before, &after);
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert!(matches!(&ops[0], Op::Put { kind: Kind::ApiKey, id, .. } if id == "key_a"));
        assert!(matches!(&ops[1], Op::Put { kind: Kind::ApiKey, id, .. } if id == "key_b"));
        assert!(matches!(&ops[2], Op::Delete { kind: Kind::Lock, id } if id == "lock_a"));
        assert!(diff_rows(&after, &after).is_empty());
    }
}
