//! Continuous backup: the archiver follows every project's journal and ships it to the archive
//! (`holdfast-archive`): blobs first, then segments, then the manifest; snapshots on a schedule
//! or on demand; compaction and retention. It runs beside the writers and only reads, so an
//! archive that is slow or down delays the backup (the lag grows, in status and metrics) but
//! never a client's write.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use holdfast_archive::{Archive, Manifest, Progress, SegmentWriter, Verification};
use holdfast_blob::{BlobHash, BlobStore, referenced_by};
use holdfast_store::ProjectStore;
use holdfast_store::control::{self, CatalogEntry};
use holdfast_types::api::{BackupStatus, RestorePoint, VerifyReport};
use holdfast_types::{Error, Lsn, Op, ProjectId, now_micros, rfc3339};

use holdfast_core::auth::{Action, Caller};
use holdfast_core::Result;

use crate::Recovery;

/// `[archive]` in holdfast.toml.
#[derive(Clone, Debug)]
pub struct ArchiveConfig {
    pub url: String,
    /// How often the journal is shipped.
    pub interval: Duration,
    /// Most changes in one shipped segment.
    pub segment_changes: usize,
    /// How long the archive keeps what it needs to restore any point.
    pub retention: Duration,
    /// Compaction levels: segments are merged per bucket of each width.
    pub levels: Vec<Duration>,
    /// How often a snapshot is taken (when the project changed since the last one).
    pub snapshot_interval: Duration,
}

/// How long an archive pass waits for its projects' work before it lets the slow ones go on
/// by themselves.
const PASS_WAIT: Duration = Duration::from_secs(2);
/// How many projects an archive pass works on at once.
const ARCHIVE_CONCURRENCY: usize = 8;
/// How long the last pass, at a stop, waits for its projects' work.
const FINAL_PASS_WAIT: Duration = Duration::from_secs(8);

impl ArchiveConfig {
    /// The documented defaults for everything but the URL.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            interval: Duration::from_secs(1),
            segment_changes: 10_000,
            retention: Duration::from_secs(7 * 24 * 3600),
            levels: vec![Duration::from_secs(30), Duration::from_secs(300), Duration::from_secs(3600)],
            snapshot_interval: Duration::from_secs(3600),
        }
    }
}

/// Most changes a compaction merges into one segment.
const MAX_MERGED_CHANGES: u64 = 1_000_000;
/// Longest wait between retries of a failing project.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Least time between passes woken by a full segment.
const MIN_WAKE_GAP: Duration = Duration::from_millis(50);
/// How often an idle project's manifest is rewritten to advance its restorable time.
const IDLE_MANIFEST_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct Archiver {
    pub(crate) archive: Archive,
    config: ArchiveConfig,
    /// Snapshot copies and verification restores are made here.
    scratch: PathBuf,
    projects: std::sync::Mutex<HashMap<ProjectId, Arc<tokio::sync::Mutex<Tracked>>>>,
    /// Woken when a project has a full segment's worth of changes to ship, so a busy project
    /// does not wait for the interval.
    wake: Arc<tokio::sync::Notify>,
    /// The audit log's shipping state (`crate::audit_shipping`).
    pub(crate) audit: tokio::sync::Mutex<crate::audit_shipping::AuditShipping>,
}

/// What the archiver remembers of one project between passes.
#[derive(Default)]
struct Tracked {
    manifest: Option<Manifest>,
    /// Blobs known to be in the archive.
    blobs: HashSet<BlobHash>,
    swept: bool,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
    manifest_saved: Option<Instant>,
    /// The archived LSN, shared with `watcher`.
    archived: Arc<AtomicU64>,
    /// Set when the project's store was closed for idleness with every change archived: passes
    /// leave it closed until its next use, or until maintenance (compaction, expiry, snapshot)
    /// is due again after `snapshot_interval`.
    resting_since: Option<Instant>,
    /// Follows the project's journal and wakes the archiver when a segment is full.
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// The cached manifest continues this journal's lineage (checked once per manifest read).
    lineage_checked: bool,
}

impl Archiver {
    pub(crate) fn open(config: ArchiveConfig, scratch: PathBuf) -> Result<Self> {
        let archive = Archive::open(&config.url).map_err(Error::from)?;
        Ok(Self {
            archive,
            config,
            scratch,
            projects: std::sync::Mutex::new(HashMap::new()),
            wake: Arc::default(),
            audit: Default::default(),
        })
    }

    /// Drops what is remembered of a project another region archives now (this region holds a
    /// replica): if it is primary here again later, its manifest is read afresh, since the other
    /// region may have shipped to a shared archive meanwhile.
    fn forget(&self, id: &ProjectId) {
        let mut projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tracked) = projects.remove(id)
            && let Ok(tracked) = tracked.try_lock()
            && let Some(watcher) = &tracked.watcher
        {
            watcher.abort();
        }
    }

    /// For an idle project about to be closed: `true` (and it rests from now on) when every
    /// change up to `last` is archived; `false` when not, or when a pass is busy with it.
    pub(crate) fn rest(&self, id: &ProjectId, last: Lsn) -> bool {
        let tracked = self.tracked(id);
        let Ok(mut tracked) = tracked.try_lock() else { return false };
        if tracked.manifest.is_none() || tracked.archived.load(Ordering::Relaxed) < last.0 {
            return false;
        }
        tracked.resting_since = Some(Instant::now());
        true
    }

    /// For a closed project at rest: advances its manifest's restorable time to `settled` (the
    /// journal cannot have changed while the store was closed) as often as an idle open
    /// project's, and answers whether the pass may leave it closed — `false` once maintenance
    /// (compaction, expiry, snapshot) is due again, after `snapshot_interval`.
    async fn keep_resting(&self, id: &ProjectId, settled: holdfast_types::Micros) -> Result<bool> {
        let tracked = self.tracked(id);
        let mut tracked = tracked.lock().await;
        match tracked.resting_since {
            Some(at) if at.elapsed() < self.config.snapshot_interval => {}
            _ => {
                tracked.resting_since = None;
                return Ok(false);
            }
        }
        let idle_due = tracked.manifest_saved.is_none_or(|t| t.elapsed() >= IDLE_MANIFEST_EVERY);
        let archived = tracked.archived.load(Ordering::Relaxed);
        if let Some(manifest) = tracked.manifest.as_mut()
            && idle_due
            && manifest.archived_lsn.0 == archived
            && settled > manifest.complete_through
        {
            manifest.complete_through = settled;
            self.archive.save_manifest(manifest).await.map_err(Error::from)?;
            tracked.manifest_saved = Some(Instant::now());
        }
        Ok(true)
    }

    fn tracked(&self, id: &ProjectId) -> Arc<tokio::sync::Mutex<Tracked>> {
        let mut projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
        projects.entry(id.clone()).or_default().clone()
    }

    /// Makes sure a task follows `store`'s journal and wakes the archiver as soon as
    /// `segment_changes` changes wait to be shipped. It ends when the store closes.
    fn watch(&self, tracked: &mut Tracked, store: &ProjectStore) {
        if tracked.watcher.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        let (mut lsn, archived, wake) = (store.subscribe(), tracked.archived.clone(), self.wake.clone());
        let full = self.config.segment_changes as u64;
        tracked.watcher = Some(tokio::spawn(async move {
            while lsn.changed().await.is_ok() {
                let last = lsn.borrow_and_update().0;
                if last.saturating_sub(archived.load(Ordering::Relaxed)) >= full {
                    wake.notify_one();
                }
            }
        }));
    }

    fn scratch_file(&self, what: &str) -> PathBuf {
        self.scratch.join(format!("{what}-{}.db", ulid::Ulid::generate().to_string().to_lowercase()))
    }
}

impl Tracked {
    /// The cached manifest, loaded (or started) on first use.
    async fn manifest(&mut self, archive: &Archive, entry: &CatalogEntry) -> Result<&mut Manifest> {
        if self.manifest.is_none() {
            let loaded = archive.manifest(&entry.id).await.map_err(Error::from)?;
            let manifest = loaded.unwrap_or_else(|| Manifest::new(&entry.id, &entry.name));
            // What a previous process archived counts as archived (an idle project may rest).
            self.archived.fetch_max(manifest.archived_lsn.0, Ordering::Relaxed);
            self.manifest = Some(manifest);
        }
        let manifest = self.manifest.as_mut().ok_or_else(|| Error::internal("manifest vanished"))?;
        manifest.name.clone_from(&entry.name);
        Ok(manifest)
    }
}

impl Recovery {
    /// Runs the archiver until shutdown: one pass over every project per interval.
    pub fn spawn_archiver(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let archiver = self.archiver.as_ref()?;
        let (interval, wake) = (archiver.config.interval, archiver.wake.clone());
        let service = self.clone();
        Some(tokio::spawn(async move {
            let mut stopping = service.core.stopping();
            loop {
                service.archive_pass(PASS_WAIT).await;
                let woken = tokio::select! {
                    _ = tokio::time::sleep(interval) => false,
                    _ = wake.notified() => true,
                    _ = stopping.wait_for(|s| *s) => break,
                };
                if woken {
                    // A full segment waits; the short pause bounds how often a project that
                    // keeps failing (and keeps waking us) makes the archiver pass.
                    tokio::time::sleep(MIN_WAKE_GAP).await;
                }
            }
            // A last pass ships what the final requests wrote, waited for as long as a stop
            // allows (the node waits ten seconds for the archiver).
            service.archive_pass(FINAL_PASS_WAIT).await;
        }))
    }

    /// Ships every project's new changes (and snapshots, compaction, retention when due).
    pub async fn archive_pass(self: &Arc<Self>, wait: Duration) {
        let Some(archiver) = &self.archiver else { return };
        let entries = match self.core.control().call(control::all_projects).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "archiver cannot read the catalog");
                return;
            }
        };
        // Soft-deleted projects too: their deletion mark is a change like any other. Each
        // project's work is a task of its own, and the pass waits for them only so long: a
        // project whose uploads are slow (or hang until their timeout) holds back no other
        // project's backup, and later passes leave it alone until its work is done.
        let mut running = tokio::task::JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(ARCHIVE_CONCURRENCY));
        let last = wait >= FINAL_PASS_WAIT;
        for entry in entries.into_iter().filter(|e| !e.creating()) {
            let (service, slots) = (self.clone(), slots.clone());
            running.spawn(async move {
                let Ok(_slot) = slots.acquire().await else { return };
                service.archive_entry(entry, last).await
            });
        }
        let _ = tokio::time::timeout(wait, async { while running.join_next().await.is_some() {} }).await;
        running.detach_all();
        self.ship_audit(&archiver.archive, &archiver.audit).await;
    }

    /// One project's part of an archive pass.
    async fn archive_entry(&self, entry: CatalogEntry, last: bool) {
        let Some(archiver) = &self.archiver else { return };
        // A replica's archive is its primary's business (they may share one archive).
        if self.core.role_here(&entry.id) == holdfast_store::Role::Replica {
            archiver.forget(&entry.id);
            return;
        }
        // A project closed for idleness with everything archived stays closed.
        if let Some(settled) = self.core.settled_if_closed(&entry.id).await {
            match archiver.keep_resting(&entry.id, settled).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(project = %entry.name, error = %e.message, "advancing a resting project's manifest failed");
                    return;
                }
            }
        }
        // The store first, with no archive lock held: opening a project whose delete a crash
        // cut off ships its last changes (`archive_final`), which takes that lock.
        let Ok(store) = self.core.store(&entry).await else { return };
        let tracked = archiver.tracked(&entry.id);
        // Still at work from an earlier pass: left to it — except by the last pass, which
        // waits its turn (its wait is bounded).
        let mut tracked = match tracked.try_lock() {
            Ok(tracked) => tracked,
            Err(_) if last => tracked.lock().await,
            Err(_) => return,
        };
        if tracked.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        archiver.watch(&mut tracked, &store);
        let outcome = self.archive_project(archiver, &mut tracked, &entry, &store, false).await;
        record_outcome(&mut tracked, &entry, outcome);
        if let Some(manifest) = &tracked.manifest {
            // Metrics only; a failed read shows in the next pass.
            let _ = lag(&entry, &store, manifest.archived_lsn).await;
        }
    }

    /// One project's archiving step: ship, compact, expire, snapshot.
    async fn archive_project(
        &self,
        archiver: &Archiver,
        tracked: &mut Tracked,
        entry: &CatalogEntry,
        store: &ProjectStore,
        force_snapshot: bool,
    ) -> Result<()> {
        let archive = &archiver.archive;
        let (journal_lsn, settled) = store.settled();
        let manifest = tracked.manifest(archive, entry).await?.clone();
        if !tracked.swept {
            let removed = archive.sweep(&manifest).await.map_err(Error::from)?;
            if removed > 0 {
                tracing::info!(project = %entry.name, removed, "swept archive objects no manifest names");
            }
            tracked.swept = true;
        }
        if manifest.deleted {
            return Ok(());
        }
        if manifest.archived_lsn > journal_lsn {
            return Err(Error::internal(format!(
                "the archive holds LSN {} but the journal ends at {journal_lsn}: it belongs to another lineage of {}",
                manifest.archived_lsn, entry.id
            )));
        }
        if let Some(segment) = manifest.segments.last().filter(|_| !tracked.lineage_checked) {
            // After a failover the archive must continue this copy's lineage: the change it
            // ends with must be this journal's change at that LSN, of the same epoch.
            let at = segment.last_lsn;
            let here = store.journal(Lsn(at.0 - 1), 1).await.map_err(Error::from)?.pop().map(|c| c.epoch);
            if here != Some(segment.epoch) {
                return Err(Error::internal(format!(
                    "the archive ends at LSN {at} of epoch {}, but this journal's LSN {at} is of epoch {}: it belongs to another lineage of {}",
                    segment.epoch,
                    here.map_or("none".to_owned(), |e| e.to_string()),
                    entry.id
                )));
            }
        }
        tracked.lineage_checked = true;
        let shipped = archiver.ship(self.core.blobs(), tracked, entry, store, journal_lsn).await?;
        let idle_due = tracked.manifest_saved.is_none_or(|t| t.elapsed() >= IDLE_MANIFEST_EVERY);
        let manifest = tracked.manifest(archive, entry).await?;
        if manifest.archived_lsn == journal_lsn && settled > manifest.complete_through && (shipped || idle_due) {
            manifest.complete_through = settled;
            archive.save_manifest(manifest).await.map_err(Error::from)?;
            tracked.manifest_saved = Some(Instant::now());
        }
        self.compact(archiver, tracked, entry).await?;
        self.expire(archiver, tracked, entry).await?;
        let manifest = tracked.manifest(archive, entry).await?;
        let newest = manifest.snapshots.last();
        let due = newest.is_none_or(|s| {
            now_micros() - s.taken_at >= archiver.config.snapshot_interval.as_micros() as i64
        });
        let changed = newest.is_none_or(|s| s.lsn < journal_lsn);
        if changed && (due || force_snapshot) && !manifest.deleted {
            self.snapshot(archiver, tracked, entry, store).await?;
        }
        Ok(())
    }

    /// Merges segments level by level until the manifest needs no more compaction.
    async fn compact(&self, archiver: &Archiver, tracked: &mut Tracked, entry: &CatalogEntry) -> Result<()> {
        let archive = &archiver.archive;
        loop {
            let manifest = tracked.manifest(archive, entry).await?;
            let Some(step) = manifest.next_compaction(&archiver.config.levels, MAX_MERGED_CHANGES) else {
                return Ok(());
            };
            let run: Vec<_> = manifest.segments[step.start..step.end].to_vec();
            if run.len() == 1 {
                manifest.segments[step.start].level = step.level;
                continue;
            }
            let mut writer = SegmentWriter::new(&entry.id, run[0].first_lsn).map_err(Error::from)?;
            for segment in &run {
                for change in archive.read_segment(&entry.id, segment).await.map_err(Error::from)? {
                    writer.push(&change).map_err(Error::from)?;
                }
            }
            let (mut merged, bytes) = writer.finish().map_err(Error::from)?;
            merged.level = step.level;
            archive.put_segment(&entry.id, &merged, bytes).await.map_err(Error::from)?;
            let manifest = tracked.manifest(archive, entry).await?;
            manifest.segments.splice(step.start..step.end, [merged]);
            archive.save_manifest(manifest).await.map_err(Error::from)?;
            for old in &run {
                archive.delete(&entry.id, &old.key()).await.map_err(Error::from)?;
            }
        }
    }

    /// Drops what retention no longer needs (after storing a manifest that no longer names it).
    async fn expire(&self, archiver: &Archiver, tracked: &mut Tracked, entry: &CatalogEntry) -> Result<()> {
        let archive = &archiver.archive;
        let manifest = tracked.manifest(archive, entry).await?;
        let (segments, snapshots) = manifest.expired(now_micros(), archiver.config.retention);
        if segments.is_empty() && snapshots.is_empty() {
            return Ok(());
        }
        manifest.segments.retain(|s| !segments.contains(s));
        manifest.snapshots.retain(|s| !snapshots.contains(s));
        archive.save_manifest(manifest).await.map_err(Error::from)?;
        for key in segments.iter().map(|s| s.key()).chain(snapshots.iter().map(|s| s.key())) {
            archive.delete(&entry.id, &key).await.map_err(Error::from)?;
        }
        Ok(())
    }

    /// Takes a snapshot: a consistent copy of the database, shipped after every change it
    /// holds (so the blobs it references are archived first).
    async fn snapshot(&self, archiver: &Archiver, tracked: &mut Tracked, entry: &CatalogEntry, store: &ProjectStore) -> Result<()> {
        let path = archiver.scratch_file(entry.id.as_str());
        let result = async {
            let info = store.snapshot_into(&path).await.map_err(Error::from)?;
            archiver.ship(self.core.blobs(), tracked, entry, store, info.lsn).await?;
            let meta = archiver.archive.put_snapshot(&info, &path, now_micros()).await.map_err(Error::from)?;
            let manifest = tracked.manifest(&archiver.archive, entry).await?;
            manifest.snapshots.push(meta);
            manifest.snapshots.sort_by_key(|s| s.lsn);
            manifest.snapshots.dedup_by_key(|s| s.lsn);
            archiver.archive.save_manifest(manifest).await.map_err(Error::from)?;
            metrics::counter!("holdfast_archive_snapshots_total").increment(1);
            Ok(())
        }
        .await;
        let _ = std::fs::remove_file(&path);
        result
    }

    pub(crate) fn archiver(&self) -> Result<&Archiver> {
        self.archiver.as_deref().ok_or_else(|| {
            Error::invalid("continuous backup is off on this server: start it with --archive URL (or [archive] url)")
        })
    }

    /// `holdfast backup status`: for one project, or every project.
    pub async fn backup_status(&self, caller: &Caller, project: Option<&str>) -> Result<Vec<BackupStatus>> {
        let scope = project.map_or_else(|| "/".to_owned(), |p| format!("/projects/{p}"));
        caller.require(Action::BackupRead, &scope)?;
        let archiver = self.archiver()?;
        let entries = match project {
            Some(name) => vec![self.core.entry(name).await?],
            None => self.core.control().call(control::all_projects).await.map_err(Error::from)?.into_iter().filter(|e| e.active).collect(),
        };
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let store = self.core.store(&entry).await?;
            let tracked = archiver.tracked(&entry.id);
            let mut tracked = tracked.lock().await;
            let manifest = tracked.manifest(&archiver.archive, &entry).await?.clone();
            out.push(status_of(archiver, &tracked, &manifest, &entry, &store).await?);
        }
        Ok(out)
    }

    /// `holdfast backup now`: ships everything and takes a snapshot at once.
    pub async fn backup_now(&self, caller: &Caller, project: &str) -> Result<BackupStatus> {
        caller.require(Action::BackupWrite, &format!("/projects/{project}"))?;
        let archiver = self.archiver()?;
        let entry = self.core.entry(project).await?;
        let store = self.core.store(&entry).await?;
        let tracked = archiver.tracked(&entry.id);
        let mut tracked = tracked.lock().await;
        let outcome = self.archive_project(archiver, &mut tracked, &entry, &store, true).await;
        record_outcome(&mut tracked, &entry, outcome.clone());
        outcome?;
        let manifest = tracked.manifest(&archiver.archive, &entry).await?.clone();
        status_of(archiver, &tracked, &manifest, &entry, &store).await
    }

    /// `holdfast backup verify`: a trial restore of the archive into a scratch database, from
    /// the snapshot before the newest one through every segment; the state must hash to what
    /// the newest snapshot recorded, and every referenced blob must be in the archive. The
    /// outcome is recorded in the manifest.
    pub async fn backup_verify(&self, caller: &Caller, project: &str) -> Result<VerifyReport> {
        caller.require(Action::BackupWrite, &format!("/projects/{project}"))?;
        let archiver = self.archiver()?;
        let entry = self.core.entry(project).await?;
        let tracked = archiver.tracked(&entry.id);
        let manifest = tracked.lock().await.manifest(&archiver.archive, &entry).await?.clone();
        let path = archiver.scratch_file("verify");
        let outcome = async {
            let plan = manifest.plan_verify().map_err(Error::from)?;
            let restored = holdfast_archive::restore(
                &archiver.archive,
                &manifest,
                plan,
                &path,
                &ProjectId::generate(),
                false,
                &Progress::default(),
            )
            .await
            .map_err(Error::from)?;
            let mut missing = Vec::new();
            for hash in &restored.blobs {
                if !archiver.archive.has_blob(&manifest.project, hash).await.map_err(Error::from)? {
                    missing.push(hash.to_string());
                }
            }
            drop(restored.replayer);
            if !missing.is_empty() {
                return Err(Error::internal(format!("the archive lacks blobs {}", missing.join(", "))));
            }
            let checked = match &restored.verified_against {
                Some(hash) => format!("the state matched the recorded hash {hash}"),
                None => "no snapshot hash lay on the path to compare with".into(),
            };
            Ok((restored.lsn, format!("restored to LSN {}; {checked}; {} blobs present", restored.lsn, restored.blobs.len())))
        }
        .await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let at = now_micros();
        let (lsn, ok, message) = match outcome {
            Ok((lsn, message)) => (lsn, true, message),
            Err(e) => (manifest.archived_lsn, false, e.message),
        };
        let verification = Verification { at, lsn, ok, message: message.clone() };
        let mut tracked = tracked.lock().await;
        let manifest = tracked.manifest(&archiver.archive, &entry).await?;
        manifest.last_verify = Some(verification);
        archiver.archive.save_manifest(manifest).await.map_err(Error::from)?;
        Ok(VerifyReport { project: entry.name.clone(), ok, lsn, verified_at: rfc3339(at), message })
    }

}

impl Archiver {
    /// Ships the changes after the archived LSN up to `until`, one segment per
    /// `segment_changes`; blobs first, then the segment, then the manifest. Returns whether it
    /// shipped anything.
    async fn ship(
        &self,
        blobs: &BlobStore,
        tracked: &mut Tracked,
        entry: &CatalogEntry,
        store: &ProjectStore,
        until: Lsn,
    ) -> Result<bool> {
        let archive = &self.archive;
        let mut shipped = false;
        loop {
            let after = tracked.manifest(archive, entry).await?.archived_lsn;
            if after >= until {
                return Ok(shipped);
            }
            let limit = (until.0 - after.0).min(self.config.segment_changes as u64) as usize;
            let changes = store.journal(after, limit).await.map_err(Error::from)?;
            if changes.is_empty() {
                return Ok(shipped);
            }
            for change in &changes {
                for op in &change.ops {
                    let Op::Put { body, .. } = op else { continue };
                    let Some(hash) = referenced_by(body) else { continue };
                    if tracked.blobs.contains(&hash) {
                        continue;
                    }
                    if !archive.has_blob(&entry.id, &hash).await.map_err(Error::from)? {
                        let bytes = blobs
                            .get(&entry.id, &hash)
                            .await
                            .map_err(|e| Error::internal(format!("blob {hash} of {}: {e}", entry.name)))?;
                        archive.put_blob(&entry.id, &hash, bytes).await.map_err(Error::from)?;
                    }
                    tracked.blobs.insert(hash);
                }
            }
            let project = entry.id.clone();
            let deletes_project = changes.iter().any(|c| holdfast_store::deletes_project(c, &project));
            let (meta, bytes) = tokio::task::spawn_blocking(move || {
                let mut writer = SegmentWriter::new(&project, changes[0].lsn)?;
                for change in &changes {
                    writer.push(change)?;
                }
                writer.finish()
            })
            .await
            .map_err(|e| Error::internal(format!("segment task failed: {e}")))?
            .map_err(Error::from)?;
            archive.put_segment(&entry.id, &meta, bytes).await.map_err(Error::from)?;
            let meta_last = meta.last_lsn;
            let manifest = tracked.manifest(archive, entry).await?;
            manifest.archived_lsn = meta.last_lsn;
            manifest.archived_ts = meta.last_ts;
            manifest.deleted |= deletes_project;
            manifest.segments.push(meta);
            archive.save_manifest(manifest).await.map_err(Error::from)?;
            tracked.archived.store(meta_last.0, Ordering::Relaxed);
            tracked.manifest_saved = Some(Instant::now());
            metrics::counter!("holdfast_archive_segments_total").increment(1);
            shipped = true;
        }
    }

    /// Ships a deleted project's last changes, its deletion included, before its directory
    /// moves away (bounded: a slow archive never holds a delete for long; what it misses stays
    /// in the trash).
    pub(crate) async fn archive_final(&self, blobs: &BlobStore, entry: &CatalogEntry, store: &ProjectStore) {
        let tracked = self.tracked(&entry.id);
        let work = async {
            let mut tracked = tracked.lock().await;
            let (lsn, _) = store.settled();
            self.ship(blobs, &mut tracked, entry, store, lsn).await
        };
        match tokio::time::timeout(Duration::from_secs(5), work).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(project = %entry.name, error = %e, "could not archive a deleted project's last changes"),
            Err(_) => tracing::warn!(project = %entry.name, "archiving a deleted project's last changes timed out"),
        }
    }
}

fn record_outcome(tracked: &mut Tracked, entry: &CatalogEntry, outcome: Result<()>) {
    match outcome {
        Ok(()) => {
            tracked.failures = 0;
            tracked.retry_at = None;
            tracked.last_error = None;
        }
        Err(e) => {
            tracked.failures += 1;
            let backoff = Duration::from_secs(1 << tracked.failures.min(5)).min(MAX_BACKOFF);
            tracked.retry_at = Some(Instant::now() + backoff);
            tracing::warn!(project = %entry.name, error = %e, retry_in = ?backoff, "archiving failed");
            metrics::counter!("holdfast_archive_failures_total", "project" => entry.name.clone()).increment(1);
            tracked.last_error = Some(e.message);
            // The cached manifest may be ahead of what was stored: reload it next time.
            tracked.manifest = None;
            tracked.lineage_checked = false;
        }
    }
}

/// Changes committed but not archived, and the age of the oldest of them in seconds; published
/// in `/metrics` as well.
async fn lag(entry: &CatalogEntry, store: &ProjectStore, archived: Lsn) -> Result<(u64, f64)> {
    let changes = store.last_lsn().0.saturating_sub(archived.0);
    let oldest = if changes == 0 {
        None
    } else {
        store.read(move |view| Ok(view.journal(archived, 1)?.pop().map(|c| c.ts))).await.map_err(Error::from)?
    };
    let seconds = oldest.map_or(0.0, |ts| (now_micros() - ts).max(0) as f64 / 1e6);
    let label = entry.name.clone();
    metrics::gauge!("holdfast_archive_lsn", "project" => label.clone()).set(archived.0 as f64);
    metrics::gauge!("holdfast_archive_lag_changes", "project" => label.clone()).set(changes as f64);
    metrics::gauge!("holdfast_archive_lag_seconds", "project" => label).set(seconds);
    Ok((changes, seconds))
}

async fn status_of(
    archiver: &Archiver,
    tracked: &Tracked,
    manifest: &Manifest,
    entry: &CatalogEntry,
    store: &ProjectStore,
) -> Result<BackupStatus> {
    let journal_lsn = store.last_lsn();
    let archived = manifest.archived_lsn;
    let (lag_changes, lag_seconds) = lag(entry, store, archived).await?;
    let window = manifest.window();
    let point = |p: holdfast_archive::Point| RestorePoint { lsn: p.lsn, time: rfc3339(p.ts) };
    Ok(BackupStatus {
        project: entry.name.clone(),
        project_id: entry.id.clone(),
        archive: archiver.archive.url().to_owned(),
        archived_lsn: archived,
        journal_lsn,
        lag_changes,
        lag_seconds,
        earliest: window.map(|(a, _)| point(a)),
        latest: window.map(|(_, b)| point(b)),
        segments: manifest.segments.len(),
        snapshots: manifest.snapshots.len(),
        last_snapshot_at: manifest.snapshots.last().map(|s| rfc3339(s.taken_at)),
        last_error: tracked.last_error.clone(),
        last_verify: manifest.last_verify.as_ref().map(|v| VerifyReport {
            project: entry.name.clone(),
            ok: v.ok,
            lsn: v.lsn,
            verified_at: rfc3339(v.at),
            message: v.message.clone(),
        }),
    })
}
