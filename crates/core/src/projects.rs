//! Projects: the catalog entry in the control store plus the project's own record, which lives
//! (and is journaled) in the project's database.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use holdfast_store::control::{self, CatalogEntry};
use holdfast_store::{ProjectStore, Resource, StateView, StoreError};
use holdfast_types::api::{
    JournalPage, Page, Project, ProjectCreate, ProjectIdentity, ProjectPage, ProjectUpdate, CommitMode, ReplicaMode, ReplicaSpec,
};
use holdfast_types::{Error, ErrorKind, Kind, Lsn, Micros, Op, ProjectId, now_micros, rfc3339};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{Action, Caller};
use crate::secrets::{DataKey, DataKeyRecord, RegionKey, wrap_key};
use crate::{Result, Service, validate};

/// The control project's name (`control_plane`); no user can create a project of that name (it
/// is refused at create), list it among projects, or reach its contents through a facade.
pub const CONTROL_PROJECT: &str = "holdfast-control";

pub const DEFAULT_PAGE: usize = 20;
pub const MAX_PAGE: usize = 100;
pub const DEFAULT_JOURNAL_PAGE: usize = 100;
pub const MAX_JOURNAL_PAGE: usize = 1000;
pub const MAX_JOURNAL_WAIT: Duration = Duration::from_secs(30);

/// How long a deleted project is kept when its create named no retention, and the range a
/// project may choose.
pub const DEFAULT_RETENTION_DAYS: u32 = 14;
pub const RETENTION_DAYS: std::ops::RangeInclusive<u32> = 7..=90;
const DAY_US: Micros = 86_400_000_000;

/// The body of a project's own resource (`kind = project`, `id = proj_…`). Fields added after
/// the first format are left out while they hold their default, so older bodies read the same.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ProjectBody {
    name: String,
    display_name: String,
    description: String,
    tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    soft_delete_retention_days: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    purge_protection: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<ProjectIdentity>,
    /// Set while the project is soft-deleted (µs since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleted_us: Option<Micros>,
    /// The region whose copy takes writes; set when the project is first replicated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    primary_region: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    replicas: Vec<ReplicaSpec>,
    /// The project's data key, wrapped for each region it lives in (`secrets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_key: Option<DataKeyRecord>,
}

impl Service {
    /// Whether `entry` is the control project's.
    pub fn is_control_project(&self, entry: &CatalogEntry) -> bool {
        entry.name == CONTROL_PROJECT
    }
}

/// Refuses to change or delete the control project's record as a project's.
fn refuse_control(entry: &CatalogEntry) -> Result<()> {
    if entry.name == CONTROL_PROJECT {
        return Err(Error::invalid(format!(
            "{} holds the control plane: it is replicated and failed over like a project, never changed or deleted as one",
            entry.name
        )));
    }
    Ok(())
}

/// The first op of a project made by the server itself (the control project): its record.
pub(crate) fn record_op(id: &ProjectId, name: &str, display_name: &str) -> Result<Op> {
    let body = ProjectBody {
        name: name.to_owned(),
        display_name: display_name.to_owned(),
        description: String::new(),
        tags: BTreeMap::new(),
        soft_delete_retention_days: None,
        purge_protection: false,
        identity: None,
        deleted_us: None,
        primary_region: None,
        replicas: Vec::new(),
        data_key: None,
    };
    let body = serde_json::to_value(&body).map_err(|e| Error::internal(e.to_string()))?;
    Ok(Op::Put { kind: Kind::Project, id: id.as_str().to_owned(), parent: None, body })
}

/// The project's primary region (when replicated) and its replicas, from its record.
pub fn topology(view: &StateView<'_>, id: &ProjectId) -> Result<(Option<String>, Vec<ReplicaSpec>), StoreError> {
    Ok(read_body(view, id)?.map(|(b, _)| (b.primary_region, b.replicas)).unwrap_or_default())
}

/// The project's data key as `region` opens it with `key`; `None` while it has none (no secret
/// was sealed under one yet). Read from the record `id`.
pub fn data_key(view: &StateView<'_>, id: &ProjectId, region: &str, key: &RegionKey) -> Result<Option<DataKey>> {
    let Some((body, _)) = read_body(view, id).map_err(Error::from)? else { return Ok(None) };
    let Some(record) = body.data_key.filter(|r| !r.wraps.is_empty()) else { return Ok(None) };
    let wrapped = record.wraps.get(region).ok_or_else(|| {
        Error::internal(format!(
            "this region ({region}) holds no wrap of the project's data key, so its secrets cannot be opened here: \
             run `holdfast project replicate --project NAME --to {region}` at the primary again"
        ))
    })?;
    key.unwrap_key(wrapped, region).map(Some)
}

/// The project's data key for sealing: the one it has, or a new one, wrapped for every region
/// whose key the record lists (this one always), with the op that records what changed. The
/// record is read at `id` and written at `write_id` (a restore reads the source's and writes the
/// copy's).
pub fn data_key_for_sealing(
    view: &StateView<'_>,
    id: &ProjectId,
    write_id: &ProjectId,
    region: &str,
    key: &RegionKey,
) -> Result<(DataKey, Vec<Op>)> {
    let (body, _) = read_body(view, id).map_err(Error::from)?.ok_or_else(|| not_found(id.as_str()))?;
    let before = body.data_key.clone();
    let mut record = body.data_key.unwrap_or_default();
    record.keys.insert(region.to_owned(), key.public().to_owned());
    let data_key = match record.wraps.get(region) {
        Some(wrapped) => key.unwrap_key(wrapped, region)?,
        None if record.wraps.is_empty() => DataKey::generate()?,
        None => return Err(Error::internal(format!(
            "this region ({region}) holds no wrap of the project's data key: run `holdfast project replicate --project NAME --to \
             {region}` at the primary again"
        ))),
    };
    wrap_missing(&mut record, &data_key)?;
    Ok((data_key, record_ops(before, record, write_id)))
}

/// Adds `peer`'s public key to the project's data-key record and, when the project has a data
/// key, wraps it for `peer` too: journaled when the project is replicated there.
pub fn data_key_recipient_ops(view: &StateView<'_>, id: &ProjectId, region: &str, key: &RegionKey, peer: &str, peer_key: &str) -> Result<Vec<Op>> {
    let (body, _) = read_body(view, id).map_err(Error::from)?.ok_or_else(|| not_found(id.as_str()))?;
    let before = body.data_key.clone();
    let mut record = body.data_key.unwrap_or_default();
    // This region's key too: a data key made later, by whichever region then leads, is wrapped
    // for the region replicating now as well.
    record.keys.insert(region.to_owned(), key.public().to_owned());
    record.keys.insert(peer.to_owned(), peer_key.to_owned());
    if !record.wraps.is_empty() {
        let wrapped = record.wraps.get(region).ok_or_else(|| {
            Error::conflict(format!(
                "this region ({region}) cannot open the project's data key, so it cannot wrap it for {peer}: \
                 replicate from a region that holds the project's secrets"
            ))
        })?;
        let data_key = key.unwrap_key(wrapped, region)?;
        wrap_missing(&mut record, &data_key)?;
    }
    Ok(record_ops(before, record, id))
}

/// Wraps `data_key` for every listed region without a wrap for its current key.
fn wrap_missing(record: &mut DataKeyRecord, data_key: &DataKey) -> Result<()> {
    for (region, public) in &record.keys {
        if record.wraps.get(region).is_none_or(|w| &w.to != public) {
            let wrapped = wrap_key(data_key, public, region)?;
            record.wraps.insert(region.clone(), wrapped);
        }
    }
    Ok(())
}

fn record_ops(before: Option<DataKeyRecord>, after: DataKeyRecord, id: &ProjectId) -> Vec<Op> {
    if before.as_ref() == Some(&after) {
        return Vec::new();
    }
    vec![Op::Patch { kind: Kind::Project, id: id.as_str().to_owned(), patch: json!({ "data_key": after }) }]
}

/// The regions listed in the project's record whose copy cannot open its secrets: they have a
/// key but no wrap for it (replicated before data keys existed). Empty while no secret exists.
pub fn regions_without_data_key(view: &StateView<'_>, id: &ProjectId, regions: &[String]) -> Result<Vec<String>> {
    let Some((body, _)) = read_body(view, id).map_err(Error::from)? else { return Ok(Vec::new()) };
    let Some(record) = body.data_key.filter(|r| !r.wraps.is_empty()) else { return Ok(Vec::new()) };
    Ok(regions
        .iter()
        .filter(|r| record.keys.get(*r).is_none_or(|public| record.wraps.get(*r).is_none_or(|w| &w.to != public)))
        .cloned()
        .collect())
}

/// The first change of a new epoch: `region` is the primary, and the old primary a replica in
/// the mode `region` had. `lost_at` (a forced or automatic failover: the old primary's region is
/// lost) suspends its sync commit from then, so writes here do not wait for a region that is gone.
pub fn topology_promotion_ops(
    view: &StateView<'_>,
    id: &ProjectId,
    region: &str,
    old_primary: &str,
    mode: ReplicaMode,
    lost_at: Option<Micros>,
) -> Result<Vec<Op>> {
    let (mut body, _) = read_body(view, id).map_err(Error::from)?.ok_or_else(|| not_found(id.as_str()))?;
    // The old primary replicates as the new one did: same commit setting.
    let (commit, sync_fallback) =
        body.replicas.iter().find(|r| r.region == region).map(|r| (r.commit, r.sync_fallback)).unwrap_or_default();
    body.replicas.retain(|r| r.region != region && r.region != old_primary);
    let sync_suspended_us = lost_at.filter(|_| commit == CommitMode::Sync);
    body.replicas.push(ReplicaSpec { region: old_primary.to_owned(), mode, commit, sync_fallback, sync_suspended_us });
    body.primary_region = Some(region.to_owned());
    let topology = json!({ "primary_region": body.primary_region, "replicas": body.replicas });
    Ok(vec![Op::Patch { kind: Kind::Project, id: id.as_str().to_owned(), patch: topology }])
}

impl ProjectBody {
    fn retention_days(&self) -> u32 {
        self.soft_delete_retention_days.unwrap_or(DEFAULT_RETENTION_DAYS)
    }
}

fn retention(days: u32) -> Result<()> {
    if RETENTION_DAYS.contains(&days) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "soft_delete_retention_days must be {} to {}, got {days}",
            RETENTION_DAYS.start(),
            RETENTION_DAYS.end()
        )))
    }
}

fn read_body(view: &StateView<'_>, id: &ProjectId) -> Result<Option<(ProjectBody, Resource)>, StoreError> {
    let Some(resource) = view.get(Kind::Project, id.as_str())? else {
        return Ok(None);
    };
    let body: ProjectBody = serde_json::from_value(resource.body.clone())?;
    Ok(Some((body, resource)))
}

fn scope(name: &str) -> String {
    format!("/projects/{name}")
}

fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(Error::invalid(format!("limit must be 1 to {max}, got {n}"))),
    }
}

/// Reads the project's own record; `None` once the project's delete is journaled.
fn read_project(view: &StateView<'_>, id: &ProjectId) -> Result<Option<Project>, StoreError> {
    let Some((body, Resource { created_us, updated_us, .. })) = read_body(view, id)? else {
        return Ok(None);
    };
    let retention_days = body.retention_days();
    Ok(Some(Project {
        id: id.clone(),
        name: body.name,
        display_name: body.display_name,
        description: body.description,
        tags: body.tags,
        created_at: rfc3339(created_us),
        updated_at: rfc3339(updated_us),
        lsn: view.last_lsn()?,
        epoch: view.epoch()?,
        soft_delete_retention_days: retention_days,
        purge_protection: body.purge_protection,
        identity: body.identity,
        primary_region: body.primary_region,
        replicas: body.replicas,
        deleted_at: body.deleted_us.map(rfc3339),
        purge_after: body.deleted_us.map(|at| rfc3339(at + i64::from(retention_days) * DAY_US)),
    }))
}

pub(crate) fn not_found(name: &str) -> Error {
    Error::not_found(format!("project {name:?} not found"))
}

/// The open project stores, locked: while this is held no request opens or closes one.
pub struct OpenStores<'a>(tokio::sync::MutexGuard<'a, HashMap<ProjectId, Arc<ProjectStore>>>);

impl OpenStores<'_> {
    /// Registers a store opened outside [`Service::store`] (a restore's, a new replica's).
    pub fn insert(&mut self, id: ProjectId, store: Arc<ProjectStore>) {
        self.0.insert(id, store);
    }

    /// Takes a store out of the map; the caller closes it.
    pub fn remove(&mut self, id: &ProjectId) -> Option<Arc<ProjectStore>> {
        self.0.remove(id)
    }

    /// Every open store.
    pub fn stores(&self) -> Vec<Arc<ProjectStore>> {
        self.0.values().cloned().collect()
    }
}

impl Service {
    /// Locks the map of open stores.
    pub async fn open_stores(&self) -> OpenStores<'_> {
        OpenStores(self.projects.lock().await)
    }

    /// Locks the map of open stores unless another holds it now.
    pub fn try_open_stores(&self) -> Option<OpenStores<'_>> {
        self.projects.try_lock().ok().map(OpenStores)
    }

    /// Reserves `name` for a project being created by `caller` (state `creating`), within the
    /// caller's project quota: `[limits] max_projects_per_principal` counts the projects a
    /// principal created that the catalog still holds; Owners (who may manage keys at `/`) are
    /// not limited. `false` when the name is taken.
    pub async fn reserve_project(&self, caller: &Caller, id: &ProjectId, name: &str) -> Result<bool> {
        let quota = match caller.require(Action::KeysManage, "/") {
            Ok(()) => None,
            Err(_) => self.max_projects_per_principal,
        };
        let (cid, cname, principal) = (id.clone(), name.to_owned(), caller.principal.id.as_str().to_owned());
        let outcome = self
            .control
            .call(move |c| {
                if let Some(quota) = quota {
                    let held = control::projects_created_by(c, &principal)?;
                    if held >= quota {
                        return Ok(Err(held));
                    }
                }
                control::insert_created_by(c, &cid, &cname, Some(&principal)).map(Ok)
            })
            .await
            .map_err(Error::from)?;
        let reserved = outcome.map_err(|held| {
            Error::new(
                ErrorKind::QuotaExceeded,
                format!(
                    "principal {} holds {held} projects, its quota ([limits] max_projects_per_principal); purge one or \
                     ask an Owner",
                    caller.principal.id
                ),
            )
        })?;
        if !reserved {
            return Ok(false);
        }
        // Across regions: the control journal's name registry (a control write, at the control
        // primary). Taken by another project, in any region: the local reservation goes again.
        let (n, pid, region) = (name.to_owned(), id.clone(), self.region.clone());
        let registered = self.control_write(caller, move |c| control::register_name(c, &n, &pid, &region)).await;
        let refusal = match registered {
            Ok(Ok(())) => return Ok(true),
            Ok(Err((holder, made_in))) => Error::conflict(format!(
                "the project name {name:?} is taken across regions: project {holder} (made in region {made_in}) holds it"
            )),
            Err(e) => e,
        };
        let pid = id.clone();
        let _ = self.control.call(move |c| control::remove_project(c, &pid)).await;
        Err(refusal)
    }

    /// Undoes [`Service::reserve_project`] for a create or restore that failed: the catalog
    /// entry, the name across regions, and a system-assigned identity made for it.
    pub async fn unreserve_project(&self, id: &ProjectId, name: &str) {
        if let Err(e) = self.release_reservation(id, name).await {
            tracing::warn!(project = %name, id = %id, error = %e, "cannot release the name of a failed create across regions yet; it is tried again");
            self.unreleased.lock().unwrap_or_else(|e| e.into_inner()).push((id.clone(), name.to_owned()));
        }
        let pid = id.clone();
        let _ = self.control.call(move |c| control::remove_project(c, &pid)).await;
    }

    /// Releases the names of creates that failed while the control primary could not be
    /// reached (and of those a crash cut off); the control follower calls it.
    pub(crate) async fn release_unreleased_names(&self) {
        let pending: Vec<_> = std::mem::take(&mut *self.unreleased.lock().unwrap_or_else(|e| e.into_inner()));
        for (id, name) in pending {
            if self.release_reservation(&id, &name).await.is_err() {
                self.unreleased.lock().unwrap_or_else(|e| e.into_inner()).push((id, name));
            }
        }
    }

    /// What a failed create holds on the control plane: its name across regions and a
    /// system-assigned identity made for it.
    async fn release_reservation(&self, id: &ProjectId, name: &str) -> Result<()> {
        let (pid, n) = (id.clone(), name.to_owned());
        self.control_write(&Caller::system(), move |c| {
            control::remove_system_identities(c, Some(&pid))?;
            control::release_name(c, &n, &pid)
        })
        .await
    }

    /// The catalog entry of an active project, by name or id.
    pub async fn entry(&self, name: &str) -> Result<CatalogEntry> {
        let entry = self.entry_any(name).await?;
        self.check_serving(&entry)?;
        Ok(entry)
    }

    /// [`Service::entry`], also for a project this region holds as a warm replica.
    pub async fn entry_any(&self, name: &str) -> Result<CatalogEntry> {
        let key = name.to_owned();
        self.control
            .call(move |c| control::find_project(c, &key))
            .await
            .map_err(Error::from)?
            .filter(|e| e.active)
            .ok_or_else(|| not_found(name))
    }

    /// The open store of a project, opening it on first use.
    pub async fn store(&self, entry: &CatalogEntry) -> Result<Arc<ProjectStore>> {
        if !self.is_control_project(entry) {
            // The control journal is open before any project is opened under the project map's
            // lock: finishing a project's purge there is a control write, which must not wait
            // for that lock. (A region that holds no control journal yet has none to open.)
            let _ = self.control_store().await;
        }
        self.used.lock().unwrap_or_else(|e| e.into_inner()).insert(entry.id.clone(), std::time::Instant::now());
        let mut open = self.projects.lock().await;
        if let Some(store) = open.get(&entry.id) {
            return Ok(store.clone());
        }
        let (path, label) = (self.project_db(&entry.id), entry.name.clone());
        if !path.exists() {
            // Deleted since the catalog was read: a delete holds this lock until the directory
            // has moved to the trash.
            return Err(not_found(&entry.name));
        }
        let store = tokio::task::spawn_blocking(move || ProjectStore::open(&path, &label))
            .await
            .map_err(|e| Error::internal(format!("open task failed: {e}")))?
            .map_err(Error::from)?;
        let store = Arc::new(store);
        // The catalog says which copies are replicas too: before geo has registered them (the
        // first moments of a start, or a tool's offline open), a replica must never open as a
        // primary and take a local write.
        let rid = entry.id.clone();
        let listed = self.control.call(move |c| Ok(control::list_replicas(c)?.iter().any(|r| r.project_id == rid))).await;
        let role = match self.role_here(&entry.id) {
            holdfast_store::Role::Primary if listed.unwrap_or(true) => holdfast_store::Role::Replica,
            role => role,
        };
        store.set_role(role);
        if role != holdfast_store::Role::Primary {
            // A replica's copy changes only by its primary's journal.
            open.insert(entry.id.clone(), store.clone());
            return Ok(store);
        }
        if store.is_deleted() {
            // A delete journaled before a crash (or a failure) kept the catalog from forgetting
            // the project: finish it now, so the name is free again.
            tracing::warn!(project = %entry.name, id = %entry.id, "finishing a project delete interrupted by a crash");
            // What the crash kept from the archive, the deletion included, goes there first.
            self.deleting(entry, &store).await;
            let closing = store.clone();
            let _ = tokio::task::spawn_blocking(move || closing.close_deleted()).await;
            // The map is released first: forgetting is a control write, which may open the
            // control journal. A request that opens this project meanwhile finds it deleted and
            // finishes the same way.
            drop(open);
            self.forget_project(entry).await?;
            self.move_to_trash(&self.project_dir(&entry.id), entry.id.as_str())?;
            return Err(not_found(&entry.name));
        }
        // What a crash left to the domains (responses cut off, secrets to re-seal) is done first.
        self.opened(&store).await?;
        if entry.active {
            // A soft delete journals its mark before the catalog hides the project; a crash in
            // between is finished here, before any request sees the project.
            let id = entry.id.clone();
            let body = store.read(move |view| read_body(view, &id)).await.map_err(Error::from)?;
            if let Some((body, _)) = body.filter(|(b, _)| b.deleted_us.is_some()) {
                tracing::warn!(project = %entry.name, "finishing a soft delete interrupted by a crash");
                self.mark_soft_deleted(entry, &body).await?;
                return Err(not_found(&entry.name));
            }
        }
        self.serving(&store).await?;
        open.insert(entry.id.clone(), store.clone());
        Ok(store)
    }

    /// Closes every project nobody has asked for in `idle` (releasing its writer thread and its
    /// connections; [`Service::store`] opens it again on its next use), that nothing holds now
    /// (no request, no running response), that this region holds as an unreplicated primary,
    /// and whose archive, if any, has every change. Returns how many it closed.
    pub async fn close_idle(&self, idle: std::time::Duration) -> usize {
        let now = std::time::Instant::now();
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Held until the stores are closed: a request for one of them waits, then opens it anew
        // (never beside a closing writer).
        let mut open = self.projects.lock().await;
        let mut closing = Vec::new();
        for (id, store) in open.iter() {
            let idle_enough = used.get(id).is_none_or(|at| now.duration_since(*at) >= idle);
            let alone = Arc::strong_count(store) == 1;
            // The control journal is read at every control write and followed all the time.
            let control = store.name() == CONTROL_PROJECT;
            if control || !idle_enough || !alone || store.role() != holdfast_store::Role::Primary || store.is_deleted() {
                continue;
            }
            let topology_id = id.clone();
            let replicated = match store.read(move |view| topology(view, &topology_id)).await {
                Ok((primary, replicas)) => primary.is_some() || !replicas.is_empty(),
                Err(_) => true,
            };
            let archived = self.may_rest(id, store.last_lsn());
            if !replicated && archived {
                closing.push(id.clone());
            }
        }
        let stores: Vec<Arc<ProjectStore>> = closing.iter().filter_map(|id| open.remove(id)).collect();
        let closed = stores.len();
        if closed > 0 {
            let _ = tokio::task::spawn_blocking(move || stores.iter().for_each(|s| s.close())).await;
            // A request that asked for one meanwhile (it now waits to open it again) keeps its mark.
            let mut now_used = self.used.lock().unwrap_or_else(|e| e.into_inner());
            for id in &closing {
                if now_used.get(id) == used.get(id) {
                    now_used.remove(id);
                }
            }
            tracing::debug!(closed, "closed idle projects");
        }
        metrics::gauge!("holdfast_open_projects").set(open.len() as f64);
        closed
    }

    /// Runs [`Service::close_idle`] until shutdown, when `[limits] idle_close_secs` is set.
    pub fn spawn_idle_closer(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let idle = self.idle_close?;
        let every = (idle / 4).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(60));
        let service = self.clone();
        Some(tokio::spawn(async move {
            let mut stopping = service.stopping.subscribe();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
                service.close_idle(idle).await;
            }
        }))
    }

    /// For a project whose store is closed now: a time up to which its journal is complete (a
    /// change after this can only come from a store opened later, so its time is later).
    pub async fn settled_if_closed(&self, id: &ProjectId) -> Option<holdfast_types::Micros> {
        let open = self.projects.lock().await;
        (!open.contains_key(id)).then(|| now_micros() - 1)
    }

    async fn mark_soft_deleted(&self, entry: &CatalogEntry, body: &ProjectBody) -> Result<()> {
        let at = body.deleted_us.unwrap_or_else(now_micros);
        let purge_after = at + i64::from(body.retention_days()) * DAY_US;
        let id = entry.id.clone();
        self.control.call(move |c| control::mark_deleted(c, &id, at, purge_after)).await.map_err(Error::from)
    }

    /// Drops a purged project from the catalog, with the role assignments at its scope (so a
    /// later project of that name starts with none) and its system-assigned identity.
    async fn forget_project(&self, entry: &CatalogEntry) -> Result<()> {
        let (cid, scope) = (entry.id.clone(), format!("/projects/{}", entry.name));
        // The control plane first: a crash between the two leaves a catalog entry whose purge
        // is finished again, never assignments waiting for a later project of the name.
        let (owner, name) = (cid.clone(), entry.name.clone());
        self.control_write(&Caller::system(), move |c| {
            control::remove_scope_assignments(c, &scope)?;
            control::remove_system_identities(c, Some(&owner))?;
            control::release_name(c, &name, &owner)
        })
        .await?;
        self.control.call(move |c| control::remove_project(c, &cid)).await.map_err(Error::from)
    }

    /// The open store of the project named (or with id) `name`.
    pub async fn project_store(&self, name: &str) -> Result<Arc<ProjectStore>> {
        let entry = self.entry(name).await?;
        self.store(&entry).await
    }

    pub async fn create_project(&self, caller: &Caller, req: ProjectCreate) -> Result<Project> {
        caller.require(Action::ProjectsWrite, "/")?;
        validate::project_name(&req.name)?;
        if req.name == CONTROL_PROJECT {
            return Err(Error::invalid(format!("the project name {:?} is the control plane's", req.name)));
        }
        if let Some(days) = req.soft_delete_retention_days {
            retention(days)?;
        }
        if req.identity.is_some() && req.system_identity {
            return Err(Error::invalid("give either identity (a user-assigned one) or system_identity, not both"));
        }
        let user_identity = match &req.identity {
            Some(name) => Some(self.user_identity(name).await?),
            None => None,
        };
        let mut body = ProjectBody {
            display_name: req.display_name.unwrap_or_else(|| req.name.clone()),
            description: req.description.unwrap_or_default(),
            tags: req.tags,
            name: req.name,
            soft_delete_retention_days: req.soft_delete_retention_days,
            purge_protection: req.purge_protection,
            identity: user_identity,
            data_key: None,
            deleted_us: None,
            primary_region: None,
            replicas: Vec::new(),
        };
        validate::display_name(&body.display_name)?;
        validate::description(&body.description)?;
        validate::tags(&body.tags)?;

        let id = ProjectId::generate();
        let name = body.name.clone();
        let reserved = self.reserve_project(caller, &id, &name).await?;
        if !reserved {
            return Err(self.name_taken(&name).await);
        }
        if req.system_identity {
            // Made after the name is reserved; a crash before the create finishes leaves an
            // identity whose project the catalog does not know, removed at start-up.
            match self.create_system_identity(&id, &name).await {
                Ok(identity) => body.identity = Some(identity),
                Err(e) => {
                    self.unreserve_project(&id, &name).await;
                    return Err(e);
                }
            }
        }
        match self.initialise_project(caller, &id, body).await {
            Ok(store) => {
                // The store is registered before the project turns active (requests cannot see
                // a `creating` project), so no request ever opens a second writer on it.
                self.projects.lock().await.insert(id.clone(), store.clone());
                let cid = id.clone();
                self.control.call(move |c| control::mark_active(c, &cid)).await.map_err(Error::from)?;
                store
                    .read(move |view| read_project(view, &id))
                    .await
                    .map_err(Error::from)?
                    .ok_or_else(|| Error::internal("created project vanished"))
            }
            Err(e) => {
                tracing::error!(project = %name, error = %e, "project create failed; rolling back");
                let _ = std::fs::remove_dir_all(self.project_dir(&id));
                self.unreserve_project(&id, &name).await;
                Err(e)
            }
        }
    }

    /// Creates the project's database and journals its first change.
    async fn initialise_project(&self, caller: &Caller, id: &ProjectId, body: ProjectBody) -> Result<Arc<ProjectStore>> {
        let dir = self.project_dir(id);
        let (path, pid, label) = (self.project_db(id), id.clone(), body.name.clone());
        let store = tokio::task::spawn_blocking(move || -> Result<ProjectStore> {
            std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
            ProjectStore::create(&path, &pid, &label).map_err(Error::from)
        })
        .await
        .map_err(|e| Error::internal(format!("create task failed: {e}")))??;
        let store = Arc::new(store);
        let op = Op::Put {
            kind: Kind::Project,
            id: id.as_str().to_owned(),
            parent: None,
            body: serde_json::to_value(&body).map_err(|e| Error::internal(e.to_string()))?,
        };
        store
            .write(caller.principal.id.as_str(), caller.request_id.as_str(), Box::new(move |_| Ok(vec![op])))
            .await
            .map_err(Error::from)?;
        Ok(store)
    }

    pub async fn list_projects(&self, caller: &Caller, after: Option<String>, limit: Option<usize>) -> Result<ProjectPage> {
        self.list_catalog(caller, after, limit, false).await
    }

    /// The names of the active projects where `caller` may perform `action`, in name order:
    /// what a key scoped to some projects sees of the catalog (MLflow's workspaces).
    pub async fn project_names_where(&self, caller: &Caller, action: Action) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let from = after.clone();
            let entries = self
                .control
                .call(move |c| control::list_projects(c, from.as_deref(), MAX_PAGE, false))
                .await
                .map_err(Error::from)?;
            let Some(last) = entries.last() else { break };
            after = Some(last.name.clone());
            for e in entries.iter().filter(|e| !self.is_control_project(e)) {
                if caller.require(action, &format!("/projects/{}", e.name)).is_ok() {
                    names.push(e.name.clone());
                }
            }
        }
        Ok(names)
    }

    /// Soft-deleted projects, with when each was deleted and will be purged.
    pub async fn list_deleted_projects(
        &self,
        caller: &Caller,
        after: Option<String>,
        limit: Option<usize>,
    ) -> Result<ProjectPage> {
        self.list_catalog(caller, after, limit, true).await
    }

    async fn list_catalog(
        &self,
        caller: &Caller,
        after: Option<String>,
        limit: Option<usize>,
        deleted: bool,
    ) -> Result<ProjectPage> {
        caller.require(Action::ProjectsRead, "/")?;
        let limit = page_limit(limit, DEFAULT_PAGE, MAX_PAGE)?;
        // One more than the page, and one more for the control journal, which is no project.
        let entries: Vec<_> = self
            .control
            .call(move |c| control::list_projects(c, after.as_deref(), limit + 2, deleted))
            .await
            .map_err(Error::from)?
            .into_iter()
            .filter(|e| !self.is_control_project(e))
            .collect();
        let has_more = entries.len() > limit;
        let mut data = Vec::with_capacity(limit);
        for entry in entries.into_iter().take(limit) {
            let id = entry.id.clone();
            let read = async { self.store(&entry).await?.read(move |view| read_project(view, &id)).await.map_err(Error::from) };
            // A project deleted since the catalog was read is left out.
            match read.await {
                Ok(Some(p)) => data.push(p),
                Ok(None) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let next_after = if has_more { data.last().map(|p| p.name.clone()) } else { None };
        Ok(Page { data, has_more, next_after })
    }

    pub async fn get_project(&self, caller: &Caller, name: &str) -> Result<Project> {
        caller.require(Action::ProjectsRead, &scope(name))?;
        let entry = self.entry(name).await?;
        let store = self.store(&entry).await?;
        let id = entry.id.clone();
        store.read(move |view| read_project(view, &id)).await.map_err(Error::from)?.ok_or_else(|| not_found(name))
    }

    pub async fn update_project(&self, caller: &Caller, name: &str, req: ProjectUpdate) -> Result<Project> {
        caller.require(Action::ProjectsWrite, &scope(name))?;
        // Locks name projects by name: resolve an id first, so a lock cannot be stepped around.
        let entry = self.entry(name).await?;
        refuse_control(&entry)?;
        self.check_project_locks(&entry.name, false)?;
        if let Some(v) = &req.display_name {
            validate::display_name(v)?;
        }
        if let Some(v) = &req.description {
            validate::description(v)?;
        }
        if let Some(days) = req.soft_delete_retention_days {
            retention(days)?;
        }
        let entry = self.entry(name).await?;
        let store = self.store(&entry).await?;
        let (id, missing) = (entry.id.clone(), not_found(name));
        let plan_id = id.clone();
        store
            .write(
                caller.principal.id.as_str(),
                caller.request_id.as_str(),
                self.record_plan(&entry.name, false, Box::new(move |view| {
                    let current = read_project(view, &plan_id).map_err(Error::from)?.ok_or(missing)?;
                    let mut patch = serde_json::Map::new();
                    if let Some(v) = req.display_name.filter(|v| *v != current.display_name) {
                        patch.insert("display_name".into(), json!(v));
                    }
                    if let Some(v) = req.description.filter(|v| *v != current.description) {
                        patch.insert("description".into(), json!(v));
                    }
                    if let Some(changes) = req.tags {
                        let mut after = current.tags.clone();
                        let mut tag_patch = serde_json::Map::new();
                        for (k, v) in changes {
                            match v {
                                Some(v) if after.get(&k) != Some(&v) => {
                                    after.insert(k.clone(), v.clone());
                                    tag_patch.insert(k, json!(v));
                                }
                                None if after.remove(&k).is_some() => {
                                    tag_patch.insert(k, serde_json::Value::Null);
                                }
                                _ => {}
                            }
                        }
                        validate::tags(&after)?;
                        if !tag_patch.is_empty() {
                            patch.insert("tags".into(), serde_json::Value::Object(tag_patch));
                        }
                    }
                    if let Some(days) = req.soft_delete_retention_days.filter(|d| *d != current.soft_delete_retention_days) {
                        // With purge protection a deleted project is kept for its whole retention,
                        // so the retention may only grow (as Key Vault's does).
                        if current.purge_protection && days < current.soft_delete_retention_days {
                            return Err(Error::invalid(format!(
                                "project {:?} has purge protection: its soft_delete_retention_days ({}) can only grow, not \
                                 become {days}",
                                current.name, current.soft_delete_retention_days
                            )));
                        }
                        patch.insert("soft_delete_retention_days".into(), json!(days));
                    }
                    match req.purge_protection {
                        Some(false) if current.purge_protection => {
                            return Err(Error::invalid("purge protection, once on, cannot be turned off"));
                        }
                        Some(true) if !current.purge_protection => {
                            patch.insert("purge_protection".into(), json!(true));
                        }
                        _ => {}
                    }
                    if patch.is_empty() {
                        return Ok(Vec::new()); // nothing changes, nothing is journaled
                    }
                    Ok(vec![Op::Patch { kind: Kind::Project, id: plan_id.as_str().to_owned(), patch: patch.into() }])
                })),
            )
            .await
            .map_err(Error::from)?;
        store.read(move |view| read_project(view, &id)).await.map_err(Error::from)?.ok_or_else(|| not_found(name))
    }

    /// Soft-deletes a project: journals the deletion mark on its record, then the catalog
    /// hides it and keeps its name for the retention period. Its data stays where it is; it is
    /// recovered with [`recover_project`](Self::recover_project) or purged with
    /// [`purge_project`](Self::purge_project) (or by the purger once the retention has passed).
    pub async fn delete_project(&self, caller: &Caller, name: &str) -> Result<()> {
        caller.require(Action::ProjectsWrite, &scope(name))?;
        let entry = self.entry(name).await?;
        refuse_control(&entry)?;
        self.check_project_locks(&entry.name, true)?;
        let store = self.store(&entry).await?;
        let (id, missing) = (entry.id.clone(), not_found(name));
        let plan_id = id.clone();
        let now = now_micros();
        store
            .write(
                caller.principal.id.as_str(),
                caller.request_id.as_str(),
                self.record_plan(&entry.name, true, Box::new(move |view| {
                    read_body(view, &plan_id).map_err(Error::from)?.ok_or(missing)?;
                    Ok(vec![Op::Patch {
                        kind: Kind::Project,
                        id: plan_id.as_str().to_owned(),
                        patch: json!({ "deleted_us": now }),
                    }])
                })),
            )
            .await
            .map_err(Error::from)?;
        let body = store.read(move |view| read_body(view, &id)).await.map_err(Error::from)?;
        let (body, _) = body.ok_or_else(|| not_found(name))?;
        // The store stays open (a second writer on one database must never exist); requests
        // cannot reach it, since only active projects resolve.
        self.mark_soft_deleted(&entry, &body).await
    }

    /// A soft-deleted project's catalog entry, by name or id.
    async fn deleted_entry(&self, name: &str) -> Result<CatalogEntry> {
        let key = name.to_owned();
        self.control
            .call(move |c| control::find_project(c, &key))
            .await
            .map_err(Error::from)?
            .filter(|e| e.deleted.is_some())
            .ok_or_else(|| Error::not_found(format!("no deleted project {name:?} (holdfast project list --deleted)")))
    }

    /// Why a create could not reserve `name`.
    async fn name_taken(&self, name: &str) -> Error {
        let key = name.to_owned();
        let found = self.control.call(move |c| control::find_project(c, &key)).await.ok().flatten();
        match found.and_then(|e| e.deleted) {
            Some((_, purge_after)) => Error::conflict(format!(
                "a deleted project named {name:?} holds the name until {}: recover it (holdfast project recover {name}) \
                 or purge it (holdfast project purge {name})",
                rfc3339(purge_after)
            )),
            None => Error::conflict(format!("a project named {name:?} exists already")),
        }
    }

    /// `holdfast project recover`: brings a soft-deleted project back as it was.
    pub async fn recover_project(&self, caller: &Caller, name: &str) -> Result<Project> {
        caller.require(Action::ProjectsWrite, &scope(name))?;
        let entry = self.deleted_entry(name).await?;
        self.check_project_locks(&entry.name, false)?;
        let store = self.store(&entry).await?;
        let (id, plan_id) = (entry.id.clone(), entry.id.clone());
        // The record first, then the catalog: a crash in between leaves the project deleted in
        // the catalog with a clean record, and recovering again finishes it.
        store
            .write(
                caller.principal.id.as_str(),
                caller.request_id.as_str(),
                self.record_plan(&entry.name, false, Box::new(move |view| {
                    let deleted = read_body(view, &plan_id).map_err(Error::from)?.is_some_and(|(b, _)| b.deleted_us.is_some());
                    Ok(if deleted {
                        vec![Op::Patch {
                            kind: Kind::Project,
                            id: plan_id.as_str().to_owned(),
                            patch: json!({ "deleted_us": null }),
                        }]
                    } else {
                        Vec::new()
                    })
                })),
            )
            .await
            .map_err(Error::from)?;
        let cid = entry.id.clone();
        self.control.call(move |c| control::mark_recovered(c, &cid)).await.map_err(Error::from)?;
        store.read(move |view| read_project(view, &id)).await.map_err(Error::from)?.ok_or_else(|| not_found(name))
    }

    /// `holdfast project purge`: removes a soft-deleted project for good (its data goes to the
    /// trash, its name is free). Refused while purge protection is on and the retention has
    /// not passed.
    pub async fn purge_project(&self, caller: &Caller, name: &str) -> Result<()> {
        caller.require(Action::ProjectsPurge, &scope(name))?;
        let entry = self.deleted_entry(name).await?;
        let store = self.store(&entry).await?;
        let id = entry.id.clone();
        let body = store.read(move |view| read_body(view, &id)).await.map_err(Error::from)?;
        let purge_after = entry.deleted.map_or(0, |(_, after)| after);
        if body.is_some_and(|(b, _)| b.purge_protection) && now_micros() < purge_after {
            return Err(Error::conflict(format!(
                "project {name:?} has purge protection: it can be purged after {} (or recovered now)",
                rfc3339(purge_after)
            )));
        }
        self.check_project_locks(&entry.name, true)?;
        self.purge(caller, &entry, store).await
    }

    /// Purges every soft-deleted project whose retention ended before `now`; the purger's pass.
    /// Returns the names purged. A project that cannot be purged (a lock) is left and logged.
    pub async fn purge_expired(&self, now: Micros) -> Result<Vec<String>> {
        let entries = self.control.call(control::all_projects).await.map_err(Error::from)?;
        let mut purged = Vec::new();
        for entry in entries.into_iter().filter(|e| e.deleted.is_some_and(|(_, after)| after <= now)) {
            let outcome = async {
                self.check_project_locks(&entry.name, true)?;
                let store = self.store(&entry).await?;
                self.purge(&Caller::system(), &entry, store).await
            };
            match outcome.await {
                Ok(()) => {
                    tracing::info!(project = %entry.name, "purged a deleted project whose retention ended");
                    purged.push(entry.name);
                }
                Err(e) => tracing::warn!(project = %entry.name, error = %e, "cannot purge a deleted project"),
            }
        }
        Ok(purged)
    }

    /// Runs [`purge_expired`](Self::purge_expired) now and then every `every`, until the
    /// service stops.
    pub fn spawn_purger(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            let mut stopping = service.stopping.subscribe();
            loop {
                if let Err(e) = service.purge_expired(now_micros()).await {
                    tracing::warn!(error = %e, "purger cannot read the catalog");
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
            }
        })
    }

    /// The end of a project: journals the deletion of its record, ships the journal's tail to
    /// the archive, removes it from the catalog and moves its directory to the trash.
    async fn purge(&self, caller: &Caller, entry: &CatalogEntry, store: Arc<ProjectStore>) -> Result<()> {
        let (id, missing) = (entry.id.as_str().to_owned(), not_found(&entry.name));
        store
            .write(
                caller.principal.id.as_str(),
                caller.request_id.as_str(),
                Box::new(move |view| {
                    view.get(Kind::Project, &id).map_err(Error::from)?.ok_or(missing)?;
                    Ok(vec![Op::Delete { kind: Kind::Project, id }])
                }),
            )
            .await
            .map_err(Error::from)?;
        // The writer now refuses every write (nothing follows a project's deletion in its
        // journal). The archive gets every change up to and including the deletion, so the
        // project can be restored from it after its directory is gone. The catalog forgets the
        // project, then the store is closed as deleted, so requests still holding it answer
        // "not found" (and start-up recovery trashes the directory if we crash before moving
        // it). The open-stores lock is held until the directory has moved, so no request
        // reopens the store in between.
        self.deleting(entry, &store).await;
        self.forget_project(entry).await?;
        let mut open = self.projects.lock().await;
        open.remove(&entry.id);
        let closing = store.clone();
        let _ = tokio::task::spawn_blocking(move || closing.close_deleted()).await;
        self.move_to_trash(&self.project_dir(&entry.id), entry.id.as_str())?;
        drop(open);
        Ok(())
    }

    /// Changes with `lsn > after`, in order. With `wait`, blocks up to that long (at most 30 s)
    /// for a change when there is none yet: a long poll for followers.
    pub async fn journal(
        &self,
        caller: &Caller,
        name: &str,
        after: Lsn,
        limit: Option<usize>,
        wait: Option<Duration>,
    ) -> Result<JournalPage> {
        caller.require(Action::JournalRead, &scope(name))?;
        let limit = page_limit(limit, DEFAULT_JOURNAL_PAGE, MAX_JOURNAL_PAGE)?;
        let store = self.project_store(name).await?;
        if let Some(wait) = wait {
            let mut lsn = store.subscribe();
            let mut stopping = self.stopping.subscribe();
            let _ = tokio::time::timeout(wait.min(MAX_JOURNAL_WAIT), async {
                tokio::select! {
                    _ = lsn.wait_for(|l| *l > after) => {}
                    _ = stopping.wait_for(|s| *s) => {}
                }
            })
            .await;
        }
        store
            .read(move |view| Ok(JournalPage { changes: view.journal(after, limit)?, last_lsn: view.last_lsn()? }))
            .await
            .map_err(Error::from)
    }
}

impl Service {
    /// Journals `peer`'s region key in the project's record and wraps the project's data key for
    /// it, so the project's secrets open there (`holdfast project replicate`).
    pub async fn add_data_key_recipient(&self, caller: &Caller, entry: &CatalogEntry, store: &ProjectStore, peer: &str, peer_key: &str) -> Result<()> {
        let (id, region, key, peer, peer_key) =
            (entry.id.clone(), self.region.clone(), self.region_key.clone(), peer.to_owned(), peer_key.to_owned());
        let plan: holdfast_store::Plan =
            Box::new(move |view| data_key_recipient_ops(view, &id, &region, &key, &peer, &peer_key).map_err(Into::into));
        let plan = self.record_plan(&entry.name, false, plan);
        store.write(caller.principal.id.as_str(), caller.request_id.as_str(), plan).await.map_err(Error::from)?;
        Ok(())
    }

    /// Journals a change of the project's topology (primary region, replicas) made by `f`, as
    /// the project's locks allow (`deleting`: it removes a copy).
    pub async fn update_topology(
        &self,
        caller: &Caller,
        entry: &CatalogEntry,
        store: &ProjectStore,
        deleting: bool,
        f: impl FnOnce(&mut Option<String>, &mut Vec<ReplicaSpec>) + Send + 'static,
    ) -> Result<()> {
        let id = entry.id.clone();
        let plan: holdfast_store::Plan = Box::new(move |view| {
            let (mut body, _) = read_body(view, &id).map_err(Error::from)?.ok_or_else(|| not_found(id.as_str()))?;
            let before = (body.primary_region.clone(), body.replicas.clone());
            f(&mut body.primary_region, &mut body.replicas);
            if (body.primary_region.clone(), body.replicas.clone()) == before {
                return Ok(Vec::new());
            }
            let topology = json!({ "primary_region": body.primary_region, "replicas": body.replicas });
            Ok(vec![Op::Patch { kind: Kind::Project, id: id.as_str().to_owned(), patch: topology }])
        });
        let plan = self.record_plan(&entry.name, deleting, plan);
        store.write(caller.principal.id.as_str(), caller.request_id.as_str(), plan).await.map_err(Error::from)?;
        Ok(())
    }
}
