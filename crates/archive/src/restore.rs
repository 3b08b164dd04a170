//! Restore: a snapshot (or nothing) plus the segments after it, replayed into a new project
//! database up to a target LSN or time.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use holdfast_blob::{BlobHash, referenced_by};
use holdfast_store::apply::Replayer;
use holdfast_types::{Change, Lsn, Micros, Op, ProjectId};

use crate::{Archive, ArchiveError, Manifest, RestorePlan, Result};

/// Counters a restore advances, for progress bars and operation status.
#[derive(Debug, Default)]
pub struct Progress {
    /// Changes applied so far (a snapshot counts as its LSN).
    pub done: AtomicU64,
    /// Changes to apply in all (an upper bound when the target is a time).
    pub total: AtomicU64,
}

/// What a restore produced; the database is left open in the returned [`Replayer`] so the
/// caller can append its own change before making it durable.
pub struct Restored {
    pub replayer: Replayer,
    pub lsn: Lsn,
    pub ts: Micros,
    /// Blobs the restored project references (in its state or its journal).
    pub blobs: BTreeSet<BlobHash>,
    /// Set when the restored state was compared with a hash the archive recorded at that LSN.
    pub verified_against: Option<String>,
    /// Set when a corrupt segment ended the restore early (`allow_partial`).
    pub partial: Option<String>,
}

/// Restores the archived project of `manifest` by `plan` (from [`Manifest::plan`] or
/// [`Manifest::plan_verify`]) into a new database at `db` for the project `into`. At every
/// snapshot's LSN the replay passes, the state must hash to what the snapshot recorded. With
/// `allow_partial`, a corrupt segment ends the restore at the last good change instead of
/// failing it.
pub async fn restore(
    archive: &Archive,
    manifest: &Manifest,
    plan: RestorePlan,
    db: &Path,
    into: &ProjectId,
    allow_partial: bool,
    progress: &Progress,
) -> Result<Restored> {
    let project = &manifest.project;
    let recorded: HashMap<Lsn, String> =
        manifest.snapshots.iter().map(|s| (s.lsn, s.state_hash.clone())).collect();
    let recorded = std::sync::Arc::new(recorded);
    let mut verified_against = None;
    let start = plan.snapshot.as_ref().map_or(Lsn::ZERO, |s| s.lsn);
    progress.total.store(plan.until_lsn.0, Ordering::Relaxed);
    let (mut replayer, mut blobs, mut ts) = match &plan.snapshot {
        Some(snapshot) => {
            archive.fetch_snapshot(project, snapshot, db).await?;
            let (db, into) = (db.to_owned(), into.clone());
            let (replayer, blobs) = blocking(move || {
                let mut replayer = Replayer::open(&db, &into)?;
                let mut blobs = BTreeSet::new();
                for change in replayer.changes_mentioning("sha256")? {
                    collect_blobs(&change, &mut blobs);
                }
                Ok((replayer, blobs))
            })
            .await?;
            (replayer, blobs, snapshot.ts)
        }
        None => (Replayer::create(db, into)?, BTreeSet::new(), 0),
    };
    progress.done.store(start.0, Ordering::Relaxed);
    let mut partial = None;
    // The next segment is fetched and decoded while this one is applied (two cores: decode on
    // one, SQLite on the other).
    let fetch = |segment: &crate::SegmentMeta| {
        let (archive, project, segment) = (archive.clone(), project.clone(), segment.clone());
        tokio::spawn(async move { archive.read_segment(&project, &segment).await })
    };
    let mut next = plan.segments.first().map(fetch);
    'segments: for (index, segment) in plan.segments.iter().enumerate() {
        let fetched = match next.take() {
            Some(task) => task.await.map_err(|e| ArchiveError::Invalid(format!("segment fetch failed: {e}")))?,
            None => archive.read_segment(project, segment).await,
        };
        next = plan.segments.get(index + 1).map(fetch);
        let changes = match fetched {
            Ok(changes) => changes,
            Err(e @ ArchiveError::Corrupt { .. }) if allow_partial => {
                tracing::warn!(error = %e, "restore stops at the last good change");
                partial = Some(e.to_string());
                break 'segments;
            }
            Err(e) => return Err(e),
        };
        let until = (plan.until_lsn, plan.until_ts);
        let (recorded, object) = (recorded.clone(), format!("{project}/{}", segment.key()));
        let (back, reached_end, last_ts) = blocking(move || {
            let mut verified = None;
            let (passed, last_ts) = apply_until(&mut replayer, &changes, until, &mut blobs, |replayer, change| {
                let Some(expected) = recorded.get(&change.lsn) else { return Ok(()) };
                let hash = replayer.state_hash()?;
                if &hash != expected {
                    return Err(ArchiveError::Corrupt {
                        object: object.clone(),
                        message: format!(
                            "replayed state at LSN {} hashes to {hash}; the snapshot there recorded {expected}",
                            change.lsn
                        ),
                    });
                }
                verified = Some(hash);
                Ok(())
            })?;
            Ok(((replayer, blobs, verified), passed, last_ts))
        })
        .await?;
        replayer = back.0;
        blobs = back.1;
        verified_against = back.2.or(verified_against);
        ts = last_ts.unwrap_or(ts);
        progress.done.store(replayer.last_lsn().0, Ordering::Relaxed);
        if reached_end {
            break;
        }
    }
    if let Some(unneeded) = next {
        unneeded.abort();
    }
    let lsn = replayer.last_lsn();
    if lsn == Lsn::ZERO {
        return Err(ArchiveError::OutsideWindow(format!(
            "nothing to restore before that point: {}",
            manifest.describe_window()
        )));
    }
    if verified_against.is_none() && plan.snapshot.as_ref().is_some_and(|snap| snap.lsn == lsn) {
        // Restored from the snapshot alone: `fetch_snapshot` checked its recorded hash.
        verified_against = plan.snapshot.as_ref().map(|snap| snap.state_hash.clone());
    }
    Ok(Restored { replayer, lsn, ts, blobs, verified_against, partial })
}

/// Applies `changes` (in LSN order) that the replayer does not have yet, until one lies past
/// `until` (an LSN and, optionally, a time), collecting the blobs they reference and calling
/// `applied` after each. Returns whether the target was passed and the time of the last change
/// applied. Restores from the archive and from a live journal both replay through here.
pub fn apply_until(
    replayer: &mut Replayer,
    changes: &[Change],
    until: (Lsn, Option<Micros>),
    blobs: &mut BTreeSet<BlobHash>,
    mut applied: impl FnMut(&mut Replayer, &Change) -> Result<()>,
) -> Result<(bool, Option<Micros>)> {
    let mut last_ts = None;
    for change in changes {
        if change.lsn <= replayer.last_lsn() {
            continue;
        }
        if change.lsn > until.0 || until.1.is_some_and(|t| change.ts > t) {
            return Ok((true, last_ts));
        }
        replayer.apply(change)?;
        collect_blobs(change, blobs);
        last_ts = Some(change.ts);
        applied(replayer, change)?;
    }
    Ok((false, last_ts))
}

/// Blobs a change's puts reference.
fn collect_blobs(change: &Change, blobs: &mut BTreeSet<BlobHash>) {
    for op in &change.ops {
        if let Op::Put { body, .. } = op
            && let Some(hash) = referenced_by(body)
        {
            blobs.insert(hash);
        }
    }
}

/// Runs store work off the async runtime, handing owned values back.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| ArchiveError::Invalid(format!("restore task failed: {e}")))?
}
