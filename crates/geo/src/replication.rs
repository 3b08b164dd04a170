//! Replication between regions (docs/formats/replication.md): a project's primary region ships
//! its journal to replicas in peer regions, which apply it as it is (`ProjectStore::
//! apply_replicated`), so every copy is the same journal (invariant 1) at the same LSNs
//! (invariant 2). A planned failover fences the primary, lets the target apply the last LSN and
//! promotes it at the next epoch (invariant 4: `apply_change` refuses an older epoch).
//!
//! The replica pulls: it bootstraps from a snapshot of the primary's database (fetching every
//! blob the snapshot references first, invariant 3), then long-polls the primary's journal after
//! its own last LSN, fetching the blobs a change references before applying it. Its position is
//! its own database's last LSN, so it resumes from there after any restart or outage; each pull
//! also tells the primary what the replica has durably applied (the primary's view of the lag,
//! and the acknowledgement a sync commit waits for).
//!
//! Peers authenticate each other with the cluster secret (`x-holdfast-cluster-secret`), checked
//! by the API gate for every `/internal` route.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use holdfast_blob::{BlobHash, referenced_by};
use holdfast_store::control::{self, CatalogEntry, ReplicaRecord};
use holdfast_store::{ProjectStore, Role as StoreRole, SyncCommit};
use holdfast_types::api::{
    CommitMode, JournalBatch, Project, ProjectStatus, ReplicaCreate, ReplicaMode, ReplicaProgress, ReplicaSpec,
    PromoteRequest, ReplicaStart, ReplicaStatus, FailoverRequest, FailoverReport, Position, DivergenceReport, RegionKeyInfo,
};
use holdfast_types::{Change, Epoch, Error, ErrorKind, Lsn, Micros, Op, ProjectId, now_micros, rfc3339};

use holdfast_core::{Action, Caller};
use holdfast_core::Result;

use crate::{Geo, GeoState};

/// The header peers prove the cluster secret with.
pub const CLUSTER_SECRET_HEADER: &str = "x-holdfast-cluster-secret";
/// How long a replica's pull waits on the primary for new changes.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// Most changes one pull returns.
const PULL_LIMIT: usize = 1000;
/// Longest pause between failed pulls.
const MAX_RETRY: Duration = Duration::from_secs(2);
/// How long a planned failover waits for the target to apply the primary's last LSN.
const CATCH_UP: Duration = Duration::from_secs(30);
/// Pull refusals the replica acts on (in the 409's message).
const NOT_PRIMARY: &str = "not the primary";
const OTHER_LINEAGE: &str = "another lineage";
/// How often a primary asks its replicas' regions whether one of them leads the project now.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a sync-commit write waits for its replica by default.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// `[[peers]]` and the cluster secret.
#[derive(Clone, Debug, Default)]
pub struct ClusterConfig {
    /// Peer regions by name: the base URL of their server.
    pub peers: BTreeMap<String, String>,
    /// Required of every call between regions; without it `/internal` routes refuse everything.
    pub secret: Option<String>,
    /// How long a write under sync commit waits for its replica before it fails.
    pub sync_timeout: Duration,
    /// The region that leads the control plane before any region replicated it (`[cluster]
    /// control_primary`); `None`: the first region name in order among this one and its peers.
    pub control_primary: Option<String>,
}

/// Replication state of this server.
pub(crate) struct Replication {
    pub(crate) config: ClusterConfig,
    /// sha256 of the cluster secret, what a presented secret's digest is compared with.
    secret_digest: Option<[u8; 32]>,
    http: reqwest::Client,
    /// Projects this region holds as replicas, by id.
    replicas: Mutex<HashMap<ProjectId, Arc<ReplicaState>>>,
    /// What each replica of this region's primaries has applied: project → region → follower.
    followers: Mutex<HashMap<ProjectId, BTreeMap<String, Follower>>>,
    /// Planned failovers whose outcome is unknown (the target did not answer): project → the
    /// target, the epoch it was to take, and the mode this region then replicates in.
    pending: Mutex<HashMap<ProjectId, (String, Epoch, ReplicaMode)>>,
}

#[derive(Clone, Copy, Debug)]
struct Follower {
    applied: Lsn,
    last_contact: Micros,
}

/// One project replicated into this region.
pub(crate) struct ReplicaState {
    mode: ReplicaMode,
    source_region: Mutex<String>,
    progress: Mutex<Progress>,
    stop: tokio::sync::watch::Sender<bool>,
}

#[derive(Clone, Debug, Default)]
struct Progress {
    primary_lsn: Lsn,
    last_contact: Option<Micros>,
    /// When the replica last had everything the primary had.
    caught_up_at: Option<Micros>,
    last_error: Option<String>,
}

impl ReplicaState {
    /// The region this copy follows.
    pub(crate) fn source(&self) -> String {
        self.source_region.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Replication {
    pub(crate) fn new(config: ClusterConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::internal(format!("cannot build the peer client: {e}")))?;
        let secret_digest = config.secret.as_deref().map(secret_digest);
        Ok(Self { config, secret_digest, http, replicas: Mutex::default(), followers: Mutex::default(), pending: Mutex::default() })
    }

    /// Whether `secret` is the cluster secret. The sha256 digests of both are compared, in
    /// constant time: how long a refusal takes tells nothing of the secret's bytes or length.
    pub(crate) fn admits(&self, secret: Option<&str>) -> Result<()> {
        use subtle::ConstantTimeEq;
        let given = secret.ok_or_else(|| Error::unauthenticated(format!("{CLUSTER_SECRET_HEADER} is required")))?;
        let Some(expected) = &self.secret_digest else {
            return Err(Error::forbidden("traffic between regions is off on this server: start it with --cluster-secret-file"));
        };
        let same: bool = secret_digest(given).ct_eq(expected).into();
        if same { Ok(()) } else { Err(Error::unauthenticated("wrong cluster secret")) }
    }

    fn peer(&self, region: &str) -> Result<&str> {
        self.config.peers.get(region).map(String::as_str).ok_or_else(|| {
            let known: Vec<&str> = self.config.peers.keys().map(String::as_str).collect();
            Error::invalid(format!(
                "{region:?} is not a peer region of this server; peers: {}",
                if known.is_empty() { "none (configure [[peers]] or --peer REGION=URL)".to_owned() } else { known.join(", ") }
            ))
        })
    }

    pub(crate) fn request(&self, method: reqwest::Method, region: &str, path: &str) -> Result<reqwest::RequestBuilder> {
        let base = self.peer(region)?;
        let secret = self.config.secret.as_deref().ok_or_else(|| {
            Error::invalid("this server has no cluster secret: start it with --cluster-secret-file to talk to other regions")
        })?;
        Ok(self.http.request(method, format!("{}{path}", base.trim_end_matches('/'))).header(CLUSTER_SECRET_HEADER, secret))
    }

    pub(crate) fn replica(&self, id: &ProjectId) -> Option<Arc<ReplicaState>> {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    pub(crate) fn is_replica(&self, id: &ProjectId) -> bool {
        self.replica(id).is_some()
    }
}

fn secret_digest(secret: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

/// Sends a request to a peer and decodes its JSON answer; a peer's error keeps its kind.
pub(crate) async fn call<T: serde::de::DeserializeOwned>(request: reqwest::RequestBuilder, what: &str) -> Result<T> {
    let response = request.send().await.map_err(|e| Error::unavailable(format!("{what}: {e}")))?;
    let status = response.status();
    if status.is_success() {
        return response.json().await.map_err(|e| Error::unavailable(format!("{what}: bad answer: {e}")));
    }
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or("no message").to_owned();
    let kind = match status.as_u16() {
        400 => ErrorKind::InvalidInput,
        401 | 403 => ErrorKind::Forbidden,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        _ => ErrorKind::Unavailable,
    };
    Err(Error::new(kind, format!("{what}: the peer answered {status}: {message}")))
}

async fn bytes_of(request: reqwest::RequestBuilder, what: &str) -> Result<Bytes> {
    let response = request.send().await.map_err(|e| Error::unavailable(format!("{what}: {e}")))?;
    if !response.status().is_success() {
        return Err(Error::unavailable(format!("{what}: the peer answered {}", response.status())));
    }
    response.bytes().await.map_err(|e| Error::unavailable(format!("{what}: {e}")))
}

/// How long ago a replica that has applied `applied` last had everything its primary had.
fn lag_ms(progress: &Progress, applied: Lsn, now: Micros) -> u64 {
    if progress.primary_lsn <= applied {
        return 0;
    }
    progress.caught_up_at.map_or(0, |t| (now - t).max(0) as u64 / 1000)
}

fn role_name(role: StoreRole) -> &'static str {
    match role {
        StoreRole::Primary => "primary",
        StoreRole::Replica => "replica",
        StoreRole::Fenced => "fenced",
    }
}

fn mode_str(mode: ReplicaMode) -> &'static str {
    match mode {
        ReplicaMode::Hot => "hot",
        ReplicaMode::Warm => "warm",
    }
}

fn blobs_of(changes: &[Change]) -> Vec<BlobHash> {
    let mut out = Vec::new();
    for change in changes {
        for op in &change.ops {
            if let Op::Put { body, .. } = op
                && let Some(hash) = referenced_by(body)
                && !out.contains(&hash)
            {
                out.push(hash);
            }
        }
    }
    out
}

impl GeoState {
    /// What a copy opened here must be: a replica when this region replicates the project.
    pub(crate) fn role_here(&self, id: &ProjectId) -> StoreRole {
        if self.replication.is_replica(id) { StoreRole::Replica } else { StoreRole::Primary }
    }

    /// Refuses user requests for a project this region holds as a warm replica (it serves only
    /// once promoted); hot replicas serve reads.
    pub(crate) fn check_serving(&self, entry: &CatalogEntry) -> Result<()> {
        match self.replication.replica(&entry.id) {
            Some(r) if r.mode == ReplicaMode::Warm => Err(Error::unavailable(format!(
                "project {:?} is a warm replica in region {}: it serves only after a failover to this region \
                 (holdfast failover --project {} --to {})",
                entry.name, self.region, entry.name, self.region
            ))),
            _ => Ok(()),
        }
    }

    /// Sets the store's sync-commit wait from the project's record (on while any replica is
    /// sync) and, with a coordinator, the write gate of a replicated primary (writes only while
    /// this node's etcd lease is live).
    pub(crate) async fn apply_sync_setting(&self, store: &ProjectStore) -> Result<()> {
        let id = store.id().clone();
        let (_, replicas) = store.read(move |view| holdfast_core::projects::topology(view, &id)).await.map_err(Error::from)?;
        let gate = self.coordinator.as_ref().filter(|_| !replicas.is_empty()).map(|c| c.write_gate());
        store.set_write_gate(gate);
        // A region a failover declared lost gates nothing until it has caught up again.
        let sync: Vec<&ReplicaSpec> =
            replicas.iter().filter(|r| r.commit == CommitMode::Sync && r.sync_suspended_us.is_none()).collect();
        let regions: Vec<String> = sync.iter().map(|r| r.region.clone()).collect();
        let fallback = !sync.is_empty() && sync.iter().all(|r| r.sync_fallback);
        let timeout = self.replication.config.sync_timeout;
        store.set_sync((!regions.is_empty()).then_some(SyncCommit { regions, timeout, fallback }));
        Ok(())
    }
}

impl Geo {
    fn replication(&self) -> &Replication {
        &self.state.replication
    }

    /// This region's public key, for a peer that replicates a project here.
    pub fn region_key_for_peer(&self) -> RegionKeyInfo {
        RegionKeyInfo { region: self.core.region().to_owned(), key: self.core.region_key().public().to_owned() }
    }

    /// Checks a peer's cluster secret (the API gate calls it for every `/internal` route).
    pub fn admit_peer(&self, secret: Option<&str>) -> Result<()> {
        self.replication().admits(secret)
    }

    /// Loads the replicas this region holds and starts following their primaries.
    pub fn spawn_replicators(self: &Arc<Self>) -> Result<()> {
        let records = self.core.control().call_blocking(control::list_replicas).map_err(Error::from)?;
        for record in records {
            let mode = if record.mode == "hot" { ReplicaMode::Hot } else { ReplicaMode::Warm };
            let state = self.register_replica(&record.project_id, &record.source_region, mode);
            self.spawn_replicator(record.project_id.clone(), state);
        }
        Ok(())
    }

    /// The replica state of a project, made anew unless a running one exists (a stopped one's
    /// task may still be winding down: it keeps its own).
    fn register_replica(&self, id: &ProjectId, source: &str, mode: ReplicaMode) -> Arc<ReplicaState> {
        let mut replicas = self.replication().replicas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = replicas.get(id).filter(|r| !*r.stop.borrow()) {
            return running.clone();
        }
        let state = Arc::new(ReplicaState {
            mode,
            source_region: Mutex::new(source.to_owned()),
            progress: Mutex::default(),
            stop: tokio::sync::watch::Sender::new(false),
        });
        replicas.insert(id.clone(), state.clone());
        state
    }

    /// A replica's mode, its primary's region and how long ago it last had everything the
    /// primary had (ms; 0 when caught up); `None` when this region does not replicate the project.
    pub(crate) fn replica_progress(&self, id: &ProjectId, applied: Lsn) -> Option<(ReplicaMode, String, u64)> {
        let state = self.replication().replica(id)?;
        let source = state.source_region.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let progress = state.progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some((state.mode, source, lag_ms(&progress, applied, now_micros())))
    }

    /// A peer region's base URL.
    pub(crate) fn peer_url(&self, region: &str) -> Option<String> {
        self.replication().config.peers.get(region).cloned()
    }

    // Primary side ------------------------------------------------------------------------------

    /// `holdfast project replicate`: asks `region` to hold a replica, then lists it in the
    /// project's record (journaled, so every copy knows the topology).
    pub async fn replicate(&self, caller: &Caller, project: &str, request: ReplicaCreate) -> Result<Project> {
        caller.require(Action::ProjectsWrite, &format!("/projects/{project}"))?;
        if request.region == self.core.region() {
            return Err(Error::invalid(format!("{} is this server's own region; name a peer region", request.region)));
        }
        self.replication().peer(&request.region)?;
        if request.sync_fallback && request.commit != CommitMode::Sync {
            return Err(Error::invalid("sync_fallback applies to sync commit only: add commit: sync"));
        }
        let entry = self.core.entry(project).await?;
        if self.core.is_control_project(&entry) {
            // Where the control plane lives is the Owners' to decide, as access is.
            caller.require(Action::KeysManage, "/")?;
        }
        self.core.check_project_locks(&entry.name, false)?;
        let store = self.core.store(&entry).await?;
        if store.role() != StoreRole::Primary {
            return Err(Error::conflict(format!("project {project:?} is not primary in region {}", self.core.region())));
        }
        // The project's secrets must open there: its data key is wrapped for the peer's key.
        let peer_key: RegionKeyInfo = call(
            self.replication().request(reqwest::Method::GET, &request.region, "/internal/v1/region-key")?,
            &format!("asking region {} for its region key (is it running this version of holdfast?)", request.region),
        )
        .await?;
        if peer_key.region != request.region {
            return Err(Error::conflict(format!(
                "the server configured as region {} says it is region {}: fix the --peer setting",
                request.region, peer_key.region
            )));
        }
        self.core.add_data_key_recipient(caller, &entry, &store, &request.region, &peer_key.key).await?;
        let start = ReplicaStart {
            project_id: entry.id.clone(),
            name: entry.name.clone(),
            source_region: self.core.region().to_owned(),
            mode: request.mode,
        };
        let peer = self.replication().request(reqwest::Method::POST, &request.region, "/internal/v1/replicas")?;
        let _: serde_json::Value = call(peer.json(&start), &format!("starting the replica in {}", request.region)).await?;
        let spec = ReplicaSpec {
            region: request.region.clone(),
            mode: request.mode,
            commit: request.commit,
            sync_fallback: request.sync_fallback,
            sync_suspended_us: None,
        };
        let region = self.core.region().to_owned();
        self.core.update_topology(caller, &entry, &store, false, move |primary, replicas| {
            primary.get_or_insert(region);
            replicas.retain(|r| r.region != spec.region);
            replicas.push(spec);
        })
        .await?;
        self.state.apply_sync_setting(&store).await?;
        self.core.get_project(caller, project).await
    }

    /// `holdfast project unreplicate`: stops the replica in `region` and removes its copy there.
    pub async fn unreplicate(&self, caller: &Caller, project: &str, region: &str) -> Result<Project> {
        caller.require(Action::ProjectsWrite, &format!("/projects/{project}"))?;
        let entry = self.core.entry(project).await?;
        if self.core.is_control_project(&entry) {
            caller.require(Action::KeysManage, "/")?;
        }
        // Removing a replica deletes that region's copy: refused as a delete is.
        self.core.check_project_locks(&entry.name, true)?;
        let store = self.core.store(&entry).await?;
        let peer = self.replication().request(reqwest::Method::DELETE, region, &format!("/internal/v1/replicas/{}", entry.id))?;
        let _: serde_json::Value = call(peer, &format!("removing the replica in {region}")).await?;
        let region = region.to_owned();
        let gone = region.clone();
        self.core.update_topology(caller, &entry, &store, true, move |_, replicas| replicas.retain(|r| r.region != region)).await?;
        self.replication().followers.lock().unwrap_or_else(|e| e.into_inner()).entry(entry.id.clone()).or_default().remove(&gone);
        self.state.apply_sync_setting(&store).await?;
        self.core.get_project(caller, project).await
    }

    /// `GET /internal/v1/projects/{id}/journal`: changes after `after` for a replica in
    /// `region`, waiting up to `wait` for some; records that the replica has applied `after`.
    pub async fn journal_for_replica(
        &self,
        id: &str,
        after: Lsn,
        epoch: Option<Epoch>,
        limit: usize,
        wait: Duration,
        region: &str,
    ) -> Result<JournalBatch> {
        let entry = self.entry_by_id(id).await?;
        let store = self.core.store(&entry).await?;
        if store.role() == StoreRole::Replica {
            return Err(Error::conflict(format!("{NOT_PRIMARY}: region {} holds a replica of {}", self.core.region(), entry.name)));
        }
        // The replica's copy must be a prefix of this journal: same last LSN's epoch, not past it.
        let last = store.last_lsn();
        if after > last {
            return Err(Error::conflict(format!("{OTHER_LINEAGE}: the replica holds LSN {after}, past this primary's {last}")));
        }
        if let Some(epoch) = epoch.filter(|_| after > Lsn::ZERO) {
            let here = store.journal(Lsn(after.0 - 1), 1).await.map_err(Error::from)?.pop().map(|c| c.epoch);
            if here != Some(epoch) {
                return Err(Error::conflict(format!(
                    "{OTHER_LINEAGE}: the replica's LSN {after} is of epoch {epoch}, this primary's of {}",
                    here.map_or("none".to_owned(), |e| e.to_string())
                )));
            }
        }
        {
            let mut followers = self.replication().followers.lock().unwrap_or_else(|e| e.into_inner());
            followers.entry(entry.id.clone()).or_default().insert(region.to_owned(), Follower { applied: after, last_contact: now_micros() });
        }
        store.acknowledge(region, after);
        // Within one pull of the tip: once its sync commit applies, every later write waits for
        // it anyway, so a region never has to land exactly on the tip under steady writes.
        if store.last_lsn().0.saturating_sub(after.0) <= PULL_LIMIT as u64
            && let Err(e) = self.resume_sync_if_suspended(&entry, &store, region).await
        {
            // The pull goes on; the next one tries again.
            tracing::warn!(project = %entry.name, region, error = %e.message, "cannot resume sync commit");
        }
        if store.last_lsn() <= after && !wait.is_zero() {
            let mut lsn = store.subscribe();
            let mut stopping = self.core.stopping();
            let _ = tokio::time::timeout(wait, async {
                tokio::select! {
                    _ = lsn.wait_for(|l| *l > after) => {}
                    _ = stopping.wait_for(|s| *s) => {}
                }
            })
            .await;
        }
        let changes = store.journal(after, limit.clamp(1, PULL_LIMIT)).await.map_err(Error::from)?;
        let last = store.read(|view| Ok((view.last_lsn()?, view.last_change()?.map_or(0, |c| c.ts)))).await.map_err(Error::from)?;
        Ok(JournalBatch { changes, last_lsn: last.0, epoch: store.epoch(), last_ts: last.1 })
    }

    /// A region whose sync commit a failover suspended is (nearly) caught up: its sync commit
    /// applies again. Journaled as the system (no lock may keep a project unprotected), and the
    /// store's sync set is taken from the record whatever happened to the write.
    async fn resume_sync_if_suspended(&self, entry: &CatalogEntry, store: &ProjectStore, region: &str) -> Result<()> {
        let id = entry.id.clone();
        let (_, replicas) = store.read(move |view| holdfast_core::projects::topology(view, &id)).await.map_err(Error::from)?;
        if !replicas.iter().any(|r| r.region == region && r.sync_suspended_us.is_some()) {
            return Ok(());
        }
        let (id, back) = (entry.id.clone(), region.to_owned());
        let resumed = self
            .core
            .commit_repair(store, Box::new(move |view| {
                let (_, mut replicas) = holdfast_core::projects::topology(view, &id)?;
                let mut changed = false;
                for r in replicas.iter_mut().filter(|r| r.region == back && r.sync_suspended_us.is_some()) {
                    r.sync_suspended_us = None;
                    changed = true;
                }
                Ok(if changed {
                    vec![Op::Patch { kind: holdfast_types::Kind::Project, id: id.as_str().to_owned(), patch: serde_json::json!({ "replicas": replicas }) }]
                } else {
                    Vec::new()
                })
            }))
            .await;
        // Committed or not, the store waits for exactly the regions the record names.
        self.state.apply_sync_setting(store).await?;
        resumed?;
        tracing::info!(project = %entry.name, region, "the region caught up: sync commit applies again");
        Ok(())
    }

    /// `GET /internal/v1/projects/{id}/snapshot`: a consistent copy of the project's database.
    pub async fn snapshot_for_replica(&self, id: &str) -> Result<(Lsn, Vec<u8>)> {
        let entry = self.entry_by_id(id).await?;
        let store = self.core.store(&entry).await?;
        let path = self.scratch_path("replica-snapshot");
        let result = async {
            let info = store.snapshot_into(&path).await.map_err(Error::from)?;
            let bytes = tokio::fs::read(&path).await.map_err(|e| Error::internal(format!("cannot read the snapshot: {e}")))?;
            Ok((info.lsn, bytes))
        }
        .await;
        let _ = std::fs::remove_file(&path);
        result
    }

    /// `GET /internal/v1/projects/{id}/blobs/{hash}`.
    pub async fn blob_for_replica(&self, id: &str, hash: &str) -> Result<Bytes> {
        let entry = self.entry_by_id(id).await?;
        let hash = BlobHash::parse(hash).map_err(|e| Error::invalid(format!("bad blob hash: {e}")))?;
        self.core.blobs().get(&entry.id, &hash).await.map_err(|e| Error::not_found(format!("blob {hash}: {e}")))
    }

    async fn entry_by_id(&self, id: &str) -> Result<CatalogEntry> {
        let key = id.to_owned();
        self.core.control()
            .call(move |c| control::find_project(c, &key))
            .await
            .map_err(Error::from)?
            .filter(|e| e.active && e.id.as_str() == id)
            .ok_or_else(|| Error::not_found(format!("no project with id {id} here")))
    }

    fn scratch_path(&self, what: &str) -> std::path::PathBuf {
        let dir = self.core.scratch_dir();
        let _ = std::fs::create_dir_all(&dir);
        dir.join(format!("{what}-{}.db", ulid::Ulid::generate().to_string().to_lowercase()))
    }

    // Replica side ------------------------------------------------------------------------------

    /// `POST /internal/v1/replicas`: bootstraps a replica from the primary's snapshot (and the
    /// blobs it references) and starts following the primary's journal. Idempotent.
    pub async fn start_replica(self: &Arc<Self>, start: ReplicaStart) -> Result<serde_json::Value> {
        let existing = self.core.control().call({
            let id = start.project_id.clone();
            move |c| control::find_project(c, id.as_str())
        });
        let existing = existing.await.map_err(Error::from)?;
        if let Some(entry) = existing.filter(|e| e.id == start.project_id) {
            if !self.replication().is_replica(&entry.id) {
                return Err(Error::conflict(format!("project {} is primary in region {}, not a replica", entry.name, self.core.region())));
            }
            return Ok(serde_json::json!({ "project_id": entry.id, "status": "replicating" }));
        }
        if start.name == holdfast_core::control_plane::CONTROL_PROJECT {
            let own = self.core.control().call(|c| control::find_project(c, holdfast_core::control_plane::CONTROL_PROJECT));
            if let Some(own) = own.await.map_err(Error::from)?.filter(|e| e.id != start.project_id) {
                self.join_control_plane(&start, &own).await?;
            }
        }
        let (id, name) = (start.project_id.clone(), start.name.clone());
        let reserved = self.core.control().call({
            let (id, name) = (id.clone(), name.clone());
            move |c| control::insert_creating(c, &id, &name)
        });
        if !reserved.await.map_err(Error::from)? {
            return Err(Error::conflict(format!("region {} has another project named {name:?}", self.core.region())));
        }
        match self.bootstrap(&start).await {
            Ok(()) => {}
            Err(e) => {
                let _ = std::fs::remove_dir_all(self.core.project_dir(&id));
                let id = id.clone();
                let _ = self.core.control().call(move |c| control::remove_project(c, &id)).await;
                return Err(e);
            }
        }
        let record = ReplicaRecord { project_id: id.clone(), source_region: start.source_region.clone(), mode: mode_str(start.mode).into() };
        let state = self.register_replica(&id, &start.source_region, start.mode);
        self.core.control()
            .call(move |c| {
                control::put_replica(c, &record)?;
                control::mark_active(c, &record.project_id)
            })
            .await
            .map_err(Error::from)?;
        tracing::info!(project = %name, source = %start.source_region, mode = mode_str(start.mode), "replica bootstrapped");
        self.spawn_replicator(id.clone(), state);
        Ok(serde_json::json!({ "project_id": id, "status": "replicating" }))
    }

    /// Fetches the primary's snapshot and every blob it references into the project's directory.
    async fn bootstrap(&self, start: &ReplicaStart) -> Result<()> {
        let id = &start.project_id;
        let request = self.replication().request(reqwest::Method::GET, &start.source_region, &format!("/internal/v1/projects/{id}/snapshot"))?;
        let bytes = bytes_of(request, "fetching the snapshot").await?;
        let dir = self.core.project_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
        let staged = dir.join("state.db.partial");
        tokio::fs::write(&staged, &bytes).await.map_err(|e| Error::internal(format!("cannot write the snapshot: {e}")))?;
        let check = staged.clone();
        let info = tokio::task::spawn_blocking(move || holdfast_store::describe(&check))
            .await
            .map_err(|e| Error::internal(format!("snapshot check failed: {e}")))?
            .map_err(|e| Error::unavailable(format!("the snapshot from {} is unusable: {e}", start.source_region)))?;
        if &info.project != id {
            return Err(Error::internal(format!("the snapshot holds project {}, not {id}", info.project)));
        }
        // Blobs first: every file the snapshot's state names is stored before the copy opens.
        let label = start.name.clone();
        let store = tokio::task::spawn_blocking({
            let staged = staged.clone();
            move || ProjectStore::open(&staged, &label)
        })
        .await
        .map_err(|e| Error::internal(format!("open task failed: {e}")))?
        .map_err(Error::from)?;
        store.set_role(StoreRole::Replica);
        let resources = store.read(|view| view.all()).await.map_err(Error::from)?;
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        let mut hashes: Vec<BlobHash> = resources.iter().filter_map(|r| referenced_by(&r.body)).collect();
        hashes.sort_by_key(|h| h.to_string());
        hashes.dedup();
        self.fetch_blobs(&start.source_region, id, &hashes).await?;
        std::fs::rename(&staged, self.core.project_db(id)).map_err(|e| Error::internal(format!("cannot place the snapshot: {e}")))?;
        Ok(())
    }

    async fn fetch_blobs(&self, source: &str, id: &ProjectId, hashes: &[BlobHash]) -> Result<()> {
        for hash in hashes {
            if self.core.blobs().exists(id, hash).await.unwrap_or(false) {
                continue;
            }
            let request = self.replication().request(reqwest::Method::GET, source, &format!("/internal/v1/projects/{id}/blobs/{hash}"))?;
            let bytes = bytes_of(request, &format!("fetching blob {hash}")).await?;
            let stored = self.core.blobs().put(id, bytes).await.map_err(|e| Error::internal(format!("blob {hash}: {e}")))?;
            if &stored != hash {
                return Err(Error::unavailable(format!("blob {hash} arrived with other bytes ({stored})")));
            }
        }
        Ok(())
    }

    fn spawn_replicator(self: &Arc<Self>, id: ProjectId, state: Arc<ReplicaState>) {
        let service = self.clone();
        tokio::spawn(async move {
            let mut stop = state.stop.subscribe();
            let mut stopping = service.core.stopping();
            let mut retry = Duration::from_millis(100);
            loop {
                if *stop.borrow() || *stopping.borrow() {
                    break;
                }
                let step = tokio::select! {
                    step = service.replicate_step(&id, &state) => step,
                    _ = stop.wait_for(|s| *s) => break,
                    _ = stopping.wait_for(|s| *s) => break,
                };
                match step {
                    Ok(()) => retry = Duration::from_millis(100),
                    Err(e) => {
                        let source = state.source_region.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        tracing::warn!(project = %id, source = %source, error = %e, "replication pull failed; retrying");
                        state.progress.lock().unwrap_or_else(|e| e.into_inner()).last_error = Some(e.message);
                        metrics::counter!("holdfast_replica_pull_failures_total").increment(1);
                        tokio::select! {
                            _ = tokio::time::sleep(retry) => {}
                            _ = stop.wait_for(|s| *s) => break,
                            _ = stopping.wait_for(|s| *s) => break,
                        }
                        retry = (retry * 2).min(MAX_RETRY);
                    }
                }
            }
        });
    }

    /// One pull: the changes after what this copy has, their blobs, then the changes. A source
    /// that is no longer the primary is replaced by the one that is; a primary whose journal does
    /// not continue this copy's (a failover chose another lineage) gets this copy's extra changes
    /// as a divergence record, and the copy starts again from the primary's.
    async fn replicate_step(self: &Arc<Self>, id: &ProjectId, state: &ReplicaState) -> Result<()> {
        let entry = self.entry_by_id(id.as_str()).await?;
        if !self.core.project_db(id).exists() {
            // A copy set aside (a new lineage), or a crash before it was replaced.
            let source = state.source_region.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let start = ReplicaStart { project_id: id.clone(), name: entry.name.clone(), source_region: source, mode: state.mode };
            self.bootstrap(&start).await?;
        }
        let store = self.core.store(&entry).await?;
        let after = store.last_lsn();
        let source = state.source_region.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let path = format!(
            "/internal/v1/projects/{id}/journal?after={after}&epoch={}&limit={PULL_LIMIT}&wait_ms={}&region={}",
            store.epoch().0,
            PULL_WAIT.as_millis(),
            self.core.region()
        );
        let request = self.replication().request(reqwest::Method::GET, &source, &path)?.timeout(PULL_WAIT + Duration::from_secs(5));
        let batch: JournalBatch = match call(request, &format!("pulling from {source}")).await {
            Ok(batch) => batch,
            Err(e) if e.kind == ErrorKind::Conflict && e.message.contains(NOT_PRIMARY) => {
                if let Some((primary, _)) = self.find_primary(id).await {
                    tracing::info!(project = %entry.name, from = %source, to = %primary, "following the project's new primary");
                    *state.source_region.lock().unwrap_or_else(|e| e.into_inner()) = primary;
                }
                return Err(e);
            }
            Err(e) if e.kind == ErrorKind::Conflict && e.message.contains(OTHER_LINEAGE) => {
                let position = self.position_at(&source, id).await.ok_or_else(|| Error::unavailable(format!("{source} does not answer")))?;
                let pid = id.clone();
                let (named, _) = store.read(move |view| holdfast_core::projects::topology(view, &pid)).await.map_err(Error::from)?;
                if named.as_deref() == Some(self.core.region()) && store.epoch() > position.epoch {
                    // This copy was promoted (its journal names this region primary at a newer
                    // epoch than the source's) and a crash kept it from forgetting the replica.
                    self.finish_promotion(&entry, &store).await?;
                    return Ok(());
                }
                if self.hand_over_divergence(&entry, &store, &source, &position).await? {
                    self.set_copy_aside(&entry).await?;
                }
                store.set_role(StoreRole::Replica);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let now = now_micros();
        let topology_changed = batch.changes.iter().any(|c| c.ops.iter().any(|op| op.kind() == holdfast_types::Kind::Project));
        let applied = if batch.changes.is_empty() {
            after
        } else {
            self.fetch_blobs(&source, id, &blobs_of(&batch.changes)).await?;
            store.apply_replicated(batch.changes).await.map_err(Error::from)?
        };
        if topology_changed {
            // A failover elsewhere names another primary: follow it.
            let pid = id.clone();
            let (primary, _) = store.read(move |view| holdfast_core::projects::topology(view, &pid)).await.map_err(Error::from)?;
            if let Some(primary) = primary.filter(|p| *p != source && *p != self.core.region() && self.peer_url(p).is_some()) {
                tracing::info!(project = %entry.name, from = %source, to = %primary, "following the project's new primary");
                *state.source_region.lock().unwrap_or_else(|e| e.into_inner()) = primary;
            }
        }
        let mut progress = state.progress.lock().unwrap_or_else(|e| e.into_inner());
        progress.primary_lsn = batch.last_lsn.max(applied);
        progress.last_contact = Some(now);
        progress.last_error = None;
        if applied >= batch.last_lsn {
            progress.caught_up_at = Some(now_micros());
        }
        let lag = progress.primary_lsn.0.saturating_sub(applied.0);
        metrics::gauge!("holdfast_replica_lag_changes", "project" => entry.name.clone()).set(lag as f64);
        metrics::gauge!("holdfast_replica_epoch", "project" => entry.name.clone()).set(store.epoch().0 as f64);
        Ok(())
    }

    /// Completes a promotion a crash cut off after its epoch change committed: this region is
    /// the primary; it stops replicating and takes writes.
    async fn finish_promotion(&self, entry: &CatalogEntry, store: &ProjectStore) -> Result<()> {
        tracing::warn!(project = %entry.name, epoch = %store.epoch(), "finishing a promotion a crash interrupted");
        if let Some(state) = self.replication().replicas.lock().unwrap_or_else(|e| e.into_inner()).remove(&entry.id) {
            state.stop.send_replace(true);
        }
        let id = entry.id.clone();
        self.core.control().call(move |c| control::remove_replica(c, &id)).await.map_err(Error::from)?;
        store.set_role(StoreRole::Primary);
        self.state.apply_sync_setting(store).await
    }

    /// `DELETE /internal/v1/replicas/{id}`: stops following and removes this region's copy.
    pub async fn stop_replica(&self, id: &str) -> Result<serde_json::Value> {
        let entry = self.entry_by_id(id).await?;
        let Some(state) = self.replication().replica(&entry.id) else {
            return Err(Error::conflict(format!("project {} is not a replica in region {}", entry.name, self.core.region())));
        };
        state.stop.send_replace(true);
        // The project map stays locked until the copy is gone, so no request reopens it.
        let mut open = self.core.open_stores().await;
        if let Some(store) = open.remove(&entry.id) {
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
        let id = entry.id.clone();
        self.core.control()
            .call(move |c| {
                control::remove_replica(c, &id)?;
                control::remove_project(c, &id)
            })
            .await
            .map_err(Error::from)?;
        self.core.move_to_trash(&self.core.project_dir(&entry.id), entry.id.as_str())?;
        self.replication().replicas.lock().unwrap_or_else(|e| e.into_inner()).remove(&entry.id);
        drop(open);
        Ok(serde_json::json!({ "project_id": entry.id, "status": "removed" }))
    }

    // Failover ----------------------------------------------------------------------------------

    /// `holdfast failover --project P --to REGION [--force]`. Planned (sent to the primary's
    /// region): fences the primary, has the target apply the last LSN and take the next epoch,
    /// then follows it as a replica; no acknowledged write is lost, since every write before the
    /// fence is at or before the last LSN. Forced (sent to the target's region, when the primary
    /// is unreachable): the target promotes what it has.
    pub async fn failover(self: &Arc<Self>, caller: &Caller, project: &str, request: FailoverRequest) -> Result<FailoverReport> {
        caller.require(Action::Failover, &format!("/projects/{project}"))?;
        if request.force {
            return self.forced_failover(project, &request.to).await;
        }
        let to = request.to.as_str();
        let entry = self.core.entry(project).await?;
        let store = self.core.store(&entry).await?;
        if store.role() != StoreRole::Primary {
            return Err(Error::conflict(format!(
                "region {} does not hold the primary of {project:?}: send the failover to the primary's region, \
                 or add --force at the target's region if the primary is lost",
                self.core.region()
            )));
        }
        let id = entry.id.clone();
        let (_, replicas) = store.read(move |view| holdfast_core::projects::topology(view, &id)).await.map_err(Error::from)?;
        let Some(spec) = replicas.iter().find(|r| r.region == to).cloned() else {
            return Err(Error::invalid(format!(
                "{project:?} has no replica in region {to}; replicas: {}",
                replicas.iter().map(|r| r.region.as_str()).collect::<Vec<_>>().join(", ")
            )));
        };
        let started = std::time::Instant::now();
        let last = store.fence().await.map_err(Error::from)?;
        let epoch = Epoch(store.epoch().0 + 1);
        let promote = PromoteRequest { until_lsn: last, epoch, old_primary: self.core.region().to_owned(), old_primary_mode: spec.mode };
        let path = format!("/internal/v1/projects/{}/promote", entry.id);
        let request = self.replication().request(reqwest::Method::POST, to, &path)?.timeout(CATCH_UP + Duration::from_secs(5));
        let promoted = match call::<serde_json::Value>(request.json(&promote), &format!("promoting {to}")).await {
            Ok(promoted) => promoted,
            Err(e) => {
                // A definite refusal leaves this region the primary. Otherwise (a timeout, a
                // reset) the target may have promoted: ask it before taking writes again.
                let refused = matches!(e.kind, ErrorKind::Conflict | ErrorKind::InvalidInput | ErrorKind::NotFound | ErrorKind::Forbidden);
                let path = format!("/internal/v1/projects/{}/position", entry.id);
                let took_over = if refused {
                    false
                } else {
                    match self.replication().request(reqwest::Method::GET, to, &path) {
                        Ok(r) => match call::<Position>(r.timeout(Duration::from_secs(5)), "position").await {
                            Ok(p) => p.role == "primary" && p.epoch >= epoch,
                            Err(_) => {
                                // Unknown: stay fenced; the peer check settles it when the target
                                // answers (it steps down if the target took over, else unfences).
                                self.replication()
                                    .pending
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .insert(entry.id.clone(), (to.to_owned(), epoch, spec.mode));
                                return Err(Error::unavailable(format!(
                                    "{}; region {to} does not answer whether it took over, so this region stays fenced until it does",
                                    e.message
                                )));
                            }
                        },
                        Err(_) => false,
                    }
                };
                if !took_over {
                    store.set_role(StoreRole::Primary);
                    return Err(e);
                }
                serde_json::json!({ "lsn": last.0 + 1 })
            }
        };
        // Deposed: follow the new primary from here, as the kind of replica the target was.
        self.become_replica(&entry, &store, to, spec.mode).await?;
        tracing::info!(project = %entry.name, to, %epoch, lsn = %last, ms = started.elapsed().as_millis() as u64, "planned failover done");
        metrics::counter!("holdfast_failovers_total", "kind" => "planned").increment(1);
        Ok(FailoverReport {
            project: entry.name.clone(),
            from_region: self.core.region().to_owned(),
            to_region: to.to_owned(),
            forced: false,
            epoch,
            lsn: promoted["lsn"].as_u64().map_or(Lsn(last.0 + 1), Lsn),
            last_applied_lsn: last,
            last_contact: None,
            message: format!("planned: region {to} applied every change through LSN {last} before taking epoch {epoch}; nothing lost"),
        })
    }

    /// Stops taking writes here and follows `primary` as a replica in `mode`.
    async fn become_replica(self: &Arc<Self>, entry: &CatalogEntry, store: &ProjectStore, primary: &str, mode: ReplicaMode) -> Result<()> {
        store.set_role(StoreRole::Replica);
        store.set_sync(None);
        let record = ReplicaRecord { project_id: entry.id.clone(), source_region: primary.to_owned(), mode: mode_str(mode).into() };
        self.core.control().call(move |c| control::put_replica(c, &record)).await.map_err(Error::from)?;
        let state = self.register_replica(&entry.id, primary, mode);
        *state.source_region.lock().unwrap_or_else(|e| e.into_inner()) = primary.to_owned();
        self.spawn_replicator(entry.id.clone(), state);
        Ok(())
    }

    /// A forced failover at the target's region: promote what this replica has.
    async fn forced_failover(self: &Arc<Self>, project: &str, to: &str) -> Result<FailoverReport> {
        if to != self.core.region() {
            return Err(Error::invalid(format!(
                "a forced failover is sent to the target region's own endpoint: region {to}, not {}",
                self.core.region()
            )));
        }
        let entry = self.core.entry_any(project).await?;
        let Some(state) = self.replication().replica(&entry.id) else {
            return Err(Error::conflict(format!("region {} holds no replica of {project:?} to promote", self.core.region())));
        };
        let store = self.core.store(&entry).await?;
        let old = state.source_region.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let progress = state.progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let epoch = match self.take_lease_for(&entry.id, &store).await? {
            Some(epoch) => epoch,
            None => Epoch(store.epoch().0 + 1),
        };
        let lsn = self.promote_here(&entry, &store, &state, epoch, &old, state.mode, true).await?;
        // What the replica had applied when the promotion committed (a pull may have landed
        // after the failover began).
        let last = Lsn(lsn.0 - 1);
        let at_risk = progress.primary_lsn.0.saturating_sub(last.0);
        let contact = progress.last_contact.map(rfc3339);
        tracing::warn!(project = %entry.name, from = %old, %epoch, applied = %last, at_risk, "forced failover: promoted what this region had");
        metrics::counter!("holdfast_failovers_total", "kind" => "forced").increment(1);
        Ok(FailoverReport {
            project: entry.name.clone(),
            from_region: old.clone(),
            to_region: self.core.region().to_owned(),
            forced: true,
            epoch,
            lsn,
            last_applied_lsn: last,
            last_contact: contact.clone(),
            message: format!(
                "forced: promoted through LSN {last}; region {old} was at LSN {} when last heard from ({}), so at least {at_risk} \
                 changes, and any it committed later, are not here; when {old} returns they are kept as a divergence record \
                 (holdfast divergence list --project {})",
                progress.primary_lsn,
                contact.as_deref().unwrap_or("never since this server started"),
                entry.name
            ),
        })
    }

    /// Commits the first change of `epoch` here (this region primary, `old` a replica in
    /// `mode`), fails the responses that were running on the old primary, and takes writes.
    async fn promote_here(
        self: &Arc<Self>,
        entry: &CatalogEntry,
        store: &ProjectStore,
        state: &ReplicaState,
        epoch: Epoch,
        old: &str,
        mode: ReplicaMode,
        lost: bool,
    ) -> Result<Lsn> {
        state.stop.send_replace(true);
        let (region, old, project) = (self.core.region().to_owned(), old.to_owned(), entry.id.clone());
        let core = self.core.clone();
        let lost_at = lost.then(now_micros);
        let plan: holdfast_store::Plan = Box::new(move |view| {
            let mut ops = holdfast_core::projects::topology_promotion_ops(view, &project, &region, &old, mode, lost_at)?;
            ops.extend(core.domain_promotion_ops(view)?);
            Ok(ops)
        });
        let system = Caller::system();
        let committed = match store.promote(epoch, system.principal.id.as_str(), system.request_id.as_str(), plan).await {
            Ok(committed) => committed,
            Err(e) => {
                // Not promoted: go on following the primary, with a fresh replicator (the
                // stopped one may still be winding down).
                let stopped = self.replication().replicas.lock().unwrap_or_else(|e| e.into_inner()).remove(&entry.id);
                if let Some(stopped) = stopped {
                    let source = stopped.source_region.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let fresh = self.register_replica(&entry.id, &source, stopped.mode);
                    self.spawn_replicator(entry.id.clone(), fresh);
                }
                return Err(Error::from(e));
            }
        };
        self.replication().replicas.lock().unwrap_or_else(|e| e.into_inner()).remove(&entry.id);
        let id = entry.id.clone();
        self.core.control().call(move |c| control::remove_replica(c, &id)).await.map_err(Error::from)?;
        self.state.apply_sync_setting(store).await?;
        tracing::info!(project = %entry.name, %epoch, "promoted to primary");
        Ok(committed.lsn.unwrap_or(store.last_lsn()))
    }

    /// The coordinator won the next epoch for this replica: promote it (the old primary's lease
    /// lapsed, so it has fenced itself).
    pub(crate) async fn promote_automatically(self: &Arc<Self>, entry: &CatalogEntry, store: &ProjectStore, state: &ReplicaState, epoch: Epoch) -> Result<Lsn> {
        let old = state.source_region.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.promote_here(entry, store, state, epoch, &old, state.mode, true).await
    }

    /// `POST /internal/v1/projects/{id}/promote`: the target of a planned failover applies up
    /// to the old primary's last LSN, then takes the new epoch.
    pub async fn promote(self: &Arc<Self>, id: &str, request: PromoteRequest) -> Result<serde_json::Value> {
        let entry = self.entry_by_id(id).await?;
        let Some(state) = self.replication().replica(&entry.id) else {
            return Err(Error::conflict(format!("project {} is not a replica in region {}", entry.name, self.core.region())));
        };
        let store = self.core.store(&entry).await?;
        let mut lsn = store.subscribe();
        let caught_up = matches!(tokio::time::timeout(CATCH_UP, lsn.wait_for(|l| *l >= request.until_lsn)).await, Ok(Ok(_)));
        if !caught_up {
            return Err(Error::unavailable(format!(
                "region {} applied up to LSN {} of {} within {}s; not promoted",
                self.core.region(),
                store.last_lsn(),
                request.until_lsn,
                CATCH_UP.as_secs()
            )));
        }
        if store.last_lsn() != request.until_lsn {
            return Err(Error::conflict(format!(
                "region {} holds LSN {}, past the fenced primary's {}: not promoted",
                self.core.region(),
                store.last_lsn(),
                request.until_lsn
            )));
        }
        let lsn =
            self.promote_here(&entry, &store, &state, request.epoch, &request.old_primary, request.old_primary_mode, false).await?;
        Ok(serde_json::json!({ "project_id": entry.id, "epoch": request.epoch, "lsn": lsn }))
    }

    /// `GET /internal/v1/projects/{id}/position`.
    pub async fn position_for_peer(&self, id: &str) -> Result<Position> {
        let entry = self.entry_by_id(id).await?;
        let store = self.core.store(&entry).await?;
        let epoch_starts = store.read(|view| view.epoch_starts()).await.map_err(Error::from)?;
        Ok(Position { role: role_name(store.role()).to_owned(), epoch: store.epoch(), lsn: store.last_lsn(), epoch_starts })
    }

    /// Checks, every second, whether another region has taken over a project this region
    /// believes it leads (a forced or automatic failover while this region was away); if so,
    /// this region steps down (see [`Service::depose`]).
    pub fn spawn_topology_watch(self: &Arc<Self>) {
        let service = self.clone();
        tokio::spawn(async move {
            let mut stopping = service.core.stopping();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(PROBE_EVERY) => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
                if let Err(e) = service.probe_peers().await {
                    tracing::warn!(error = %e, "checking peers for a newer primary failed");
                }
                if let Err(e) = service.spread_control_plane().await {
                    tracing::warn!(error = %e, "replicating the control journal to the peers failed");
                }
            }
        });
    }

    async fn probe_peers(self: &Arc<Self>) -> Result<()> {
        if self.replication().config.peers.is_empty() {
            return Ok(());
        }
        let entries = self.core.control().call(control::all_projects).await.map_err(Error::from)?;
        for entry in entries.into_iter().filter(|e| e.active && !self.replication().is_replica(&e.id)) {
            let Ok(store) = self.core.store(&entry).await else { continue };
            let pending = self.replication().pending.lock().unwrap_or_else(|e| e.into_inner()).get(&entry.id).cloned();
            if let Some((target, epoch, mode)) = pending {
                // A planned failover whose outcome was unknown: settle it once the target answers.
                let Some(position) = self.position_at(&target, &entry.id).await else { continue };
                self.replication().pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&entry.id);
                if position.role == "primary" && position.epoch >= epoch {
                    self.become_replica(&entry, &store, &target, mode).await?;
                } else if store.role() == StoreRole::Fenced {
                    tracing::info!(project = %entry.name, target = %target, "the failover did not happen: taking writes again");
                    store.set_role(StoreRole::Primary);
                }
                continue;
            }
            let id = entry.id.clone();
            let (_, replicas) = store.read(move |view| holdfast_core::projects::topology(view, &id)).await.map_err(Error::from)?;
            for spec in replicas {
                let path = format!("/internal/v1/projects/{}/position", entry.id);
                let Ok(request) = self.replication().request(reqwest::Method::GET, &spec.region, &path) else { continue };
                let Ok(position) = call::<Position>(request.timeout(Duration::from_secs(2)), "position").await else { continue };
                if position.role == "primary" && position.epoch > store.epoch() {
                    self.depose(&entry, &store, &spec.region, &position).await?;
                    break;
                }
            }
        }
        Ok(())
    }

    /// This region led the project at an older epoch and `primary` leads it now: stop taking
    /// writes, send the changes that never reached `primary` to it as a divergence record, and
    /// follow it as a replica (from a fresh copy of it when there were such changes).
    async fn depose(self: &Arc<Self>, entry: &CatalogEntry, store: &Arc<ProjectStore>, primary: &str, position: &Position) -> Result<()> {
        let id = entry.id.clone();
        let (_, replicas) = store.read(move |view| holdfast_core::projects::topology(view, &id)).await.map_err(Error::from)?;
        let mode = replicas.iter().find(|r| r.region == primary).map_or(ReplicaMode::Warm, |r| r.mode);
        if !self.hand_over_divergence(entry, store, primary, position).await? {
            // This copy is a prefix of the new primary's journal: follow on from it.
            return self.become_replica(entry, store, primary, mode).await;
        }
        // The copy holds changes the new lineage lacks: start again from the new primary's. The
        // replica is recorded first (a crash from here on restarts as a replica with no copy,
        // which its replicator bootstraps).
        let record = ReplicaRecord { project_id: entry.id.clone(), source_region: primary.to_owned(), mode: mode_str(mode).into() };
        self.core.control().call(move |c| control::put_replica(c, &record)).await.map_err(Error::from)?;
        let state = self.register_replica(&entry.id, primary, mode);
        *state.source_region.lock().unwrap_or_else(|e| e.into_inner()) = primary.to_owned();
        self.set_copy_aside(entry).await?;
        self.spawn_replicator(entry.id.clone(), state);
        Ok(())
    }

    /// Fences this copy and sends the changes it holds that `primary`'s lineage lacks (those at
    /// or after the first LSN of the primary's first epoch above this copy's) to `primary` as a
    /// divergence record. Returns whether there were any.
    async fn hand_over_divergence(&self, entry: &CatalogEntry, store: &ProjectStore, primary: &str, position: &Position) -> Result<bool> {
        let ours = store.epoch();
        let last = store.fence().await.map_err(Error::from)?;
        let fork = position.epoch_starts.iter().filter(|(e, _)| *e > ours).map(|(_, l)| *l).min().ok_or_else(|| {
            Error::internal(format!("region {primary} is at epoch {} but names no change after epoch {ours}", position.epoch))
        })?;
        let divergent = if last >= fork {
            let count = (last.0 - fork.0 + 1) as usize;
            store.journal(Lsn(fork.0 - 1), count).await.map_err(Error::from)?
        } else {
            Vec::new()
        };
        tracing::warn!(project = %entry.name, primary, epoch = %position.epoch, ours = %ours, divergent = divergent.len(), "another lineage leads this project");
        if divergent.is_empty() {
            return Ok(false);
        }
        let report = DivergenceReport { from_region: self.core.region().to_owned(), changes: divergent };
        let path = format!("/internal/v1/projects/{}/divergences", entry.id);
        let request = self.replication().request(reqwest::Method::POST, primary, &path)?.timeout(Duration::from_secs(30));
        // Until the record is stored there, this copy stays fenced and is tried again.
        let _: serde_json::Value = call(request.json(&report), &format!("sending the divergence record to {primary}")).await?;
        metrics::counter!("holdfast_divergences_total").increment(1);
        Ok(true)
    }

    /// Moves this region's copy of the project to the trash (its replicator then bootstraps a
    /// fresh one); the project map stays locked meanwhile, so no request reopens the old copy.
    async fn set_copy_aside(&self, entry: &CatalogEntry) -> Result<()> {
        let mut open = self.core.open_stores().await;
        if let Some(old) = open.remove(&entry.id) {
            let _ = tokio::task::spawn_blocking(move || old.close()).await;
        }
        self.core.move_to_trash(&self.core.project_dir(&entry.id), entry.id.as_str())
    }

    /// A region's view of the project, or `None` when it does not answer.
    async fn position_at(&self, region: &str, id: &ProjectId) -> Option<Position> {
        let request = self.replication().request(reqwest::Method::GET, region, &format!("/internal/v1/projects/{id}/position")).ok()?;
        call::<Position>(request.timeout(Duration::from_secs(2)), "position").await.ok()
    }

    /// The peer region that is the project's primary at the newest epoch, if any answers.
    async fn find_primary(&self, id: &ProjectId) -> Option<(String, Position)> {
        let mut best: Option<(String, Position)> = None;
        for region in self.replication().config.peers.keys() {
            if let Some(p) = self.position_at(region, id).await.filter(|p| p.role == "primary")
                && best.as_ref().is_none_or(|(_, b)| p.epoch > b.epoch)
            {
                best = Some((region.clone(), p));
            }
        }
        best
    }

    /// `POST /internal/v1/projects/{id}/divergences`: keeps a deposed primary's unreplicated
    /// changes as a record in the project (journaled, so it is replicated and archived), after
    /// fetching the blobs they name from the deposed region. Idempotent per (region, epoch,
    /// first LSN).
    pub async fn record_divergence(&self, id: &str, report: DivergenceReport) -> Result<serde_json::Value> {
        let entry = self.entry_by_id(id).await?;
        let store = self.core.store(&entry).await?;
        if store.role() != StoreRole::Primary {
            return Err(Error::conflict(format!("region {} is not the primary of {}", self.core.region(), entry.name)));
        }
        let (Some(first), Some(last)) = (report.changes.first(), report.changes.last()) else {
            return Err(Error::invalid("a divergence record holds at least one change"));
        };
        let record_id = format!("div_{}_e{}_{}", report.from_region, first.epoch.0, first.lsn.0);
        self.fetch_blobs(&report.from_region, &entry.id, &blobs_of(&report.changes)).await?;
        let body = serde_json::json!({
            "from_region": report.from_region,
            "epoch": first.epoch,
            "first_lsn": first.lsn,
            "last_lsn": last.lsn,
            "detected_us": now_micros(),
            "replayed": [],
            "changes": report.changes,
        });
        let op = Op::Put { kind: holdfast_types::Kind::Divergence, id: record_id.clone(), parent: None, body };
        let system = Caller::system();
        let rid = record_id.clone();
        // Decided inside the write: a second delivery of the same record changes nothing.
        let plan: holdfast_store::Plan = Box::new(move |view| {
            let exists = view.get(holdfast_types::Kind::Divergence, &rid).map_err(Error::from)?.is_some();
            Ok(if exists { Vec::new() } else { vec![op] })
        });
        store.write(system.principal.id.as_str(), system.request_id.as_str(), plan).await.map_err(Error::from)?;
        tracing::warn!(project = %entry.name, id = %record_id, "divergence record kept");
        Ok(serde_json::json!({ "id": record_id }))
    }

    // Status ------------------------------------------------------------------------------------

    /// `holdfast status`: every project (or one) as this region sees it.
    pub async fn status(&self, caller: &Caller, project: Option<&str>) -> Result<Vec<ProjectStatus>> {
        let scope = project.map_or_else(|| "/".to_owned(), |p| format!("/projects/{p}"));
        caller.require(Action::ProjectsRead, &scope)?;
        let entries = match project {
            Some(name) => vec![self.core.entry_any(name).await?],
            None => self.core.control().call(control::all_projects).await.map_err(Error::from)?.into_iter().filter(|e| e.active).collect(),
        };
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            out.push(self.status_of(&entry).await?);
        }
        Ok(out)
    }

    pub async fn status_of(&self, entry: &CatalogEntry) -> Result<ProjectStatus> {
        let store = self.core.store(entry).await?;
        let id = entry.id.clone();
        let (primary, specs) = store.read(move |view| holdfast_core::projects::topology(view, &id)).await.map_err(Error::from)?;
        let lsn = store.last_lsn();
        let role = store.role();
        let now = now_micros();
        let mut replicas = Vec::new();
        if role != StoreRole::Replica {
            let followers = self.replication().followers.lock().unwrap_or_else(|e| e.into_inner()).get(&entry.id).cloned().unwrap_or_default();
            for spec in specs {
                let follower = followers.get(&spec.region).copied();
                let applied = follower.map_or(Lsn::ZERO, |f| f.applied);
                let lag_ms = if applied >= lsn {
                    0
                } else {
                    let next = store.read(move |view| Ok(view.journal(applied, 1)?.pop().map(|c| c.ts))).await.map_err(Error::from)?;
                    next.map_or(0, |ts| (now - ts).max(0) as u64 / 1000)
                };
                metrics::gauge!("holdfast_replication_lag_changes", "project" => entry.name.clone(), "region" => spec.region.clone())
                    .set(lsn.0.saturating_sub(applied.0) as f64);
                metrics::gauge!("holdfast_sync_suspended", "project" => entry.name.clone(), "region" => spec.region.clone())
                    .set(if spec.sync_suspended_us.is_some() { 1.0 } else { 0.0 });
                replicas.push(ReplicaStatus {
                    region: spec.region,
                    mode: spec.mode,
                    commit: spec.commit,
                    sync_suspended_since: spec.sync_suspended_us.map(rfc3339),
                    applied_lsn: applied,
                    lag_changes: lsn.0.saturating_sub(applied.0),
                    lag_ms,
                    last_contact: follower.map(|f| rfc3339(f.last_contact)),
                });
            }
        }
        let replica = self.replication().replica(&entry.id).map(|state| {
            let progress = state.progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let lag_changes = progress.primary_lsn.0.saturating_sub(lsn.0);
            ReplicaProgress {
                mode: state.mode,
                source_region: state.source_region.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                applied_lsn: lsn,
                primary_lsn: progress.primary_lsn,
                lag_changes,
                lag_ms: lag_ms(&progress, lsn, now),
                last_contact: progress.last_contact.map(rfc3339),
                last_error: progress.last_error,
            }
        });
        metrics::gauge!("holdfast_project_epoch", "project" => entry.name.clone()).set(store.epoch().0 as f64);
        Ok(ProjectStatus {
            project: entry.name.clone(),
            project_id: entry.id.clone(),
            region: self.core.region().to_owned(),
            role: role_name(role).to_owned(),
            primary_region: primary.unwrap_or_else(|| self.core.region().to_owned()),
            epoch: store.epoch(),
            lsn,
            replicas,
            replica,
            lease: self.lease_of(&entry.id).await,
        })
    }
}


#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn only_the_cluster_secret_is_admitted_whatever_its_length() {
        let secret = "the-cluster-secret-0123456789";
        let config = ClusterConfig { secret: Some(secret.to_owned()), ..Default::default() };
        let replication = Replication::new(config).expect("replication");
        assert!(replication.admits(Some(secret)).is_ok());
        for wrong in ["", "short", "the-cluster-secret-012345678", "the-cluster-secret-01234567890", "the-cluster-secret-0123456788"] {
            let e = replication.admits(Some(wrong)).expect_err(wrong);
            assert_eq!(e.kind, ErrorKind::Unauthenticated, "{wrong:?}");
        }
        assert_eq!(replication.admits(None).expect_err("none").kind, ErrorKind::Unauthenticated);
        let off = Replication::new(ClusterConfig::default()).expect("replication");
        assert_eq!(off.admits(Some(secret)).expect_err("off").kind, ErrorKind::Forbidden);
    }
}
