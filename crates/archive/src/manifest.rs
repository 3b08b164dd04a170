//! A project's manifest: which segments and snapshots its archive holds, how far it reaches, and
//! the rules that keep it bounded (compaction in levels, retention). Pure data and decisions;
//! the I/O is in [`crate::Archive`] and the archiver.

use std::time::Duration;

use holdfast_types::{Lsn, Micros, ProjectId};
use serde::{Deserialize, Serialize};

use crate::segment::SegmentMeta;
use crate::{ArchiveError, Result};

pub const MANIFEST_FORMAT: &str = "holdfast-archive-manifest";
pub const MANIFEST_VERSION: u32 = 1;

/// A consistent image of the project database (state and journal) at one LSN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub lsn: Lsn,
    /// Timestamp of the change at `lsn`.
    pub ts: Micros,
    /// `state_hash` of the project at `lsn`: what a restore to `lsn` must reproduce.
    pub state_hash: String,
    /// When the snapshot was taken.
    pub taken_at: Micros,
    pub bytes: u64,
    /// sha256 of the compressed object.
    pub sha256: String,
}

impl SnapshotMeta {
    pub fn key(&self) -> String {
        format!("snapshots/{:020}.db.zst", self.lsn.0)
    }
}

/// The outcome of the last `backup verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub at: Micros,
    pub lsn: Lsn,
    pub ok: bool,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub v: u32,
    pub project: ProjectId,
    /// The project's name when last archived (restores find deleted projects by it).
    pub name: String,
    /// Every change up to here is in `segments` (or in the snapshot they start after).
    pub archived_lsn: Lsn,
    pub archived_ts: Micros,
    /// The archiver last saw the journal end at `archived_lsn` at this time: the state at any
    /// time up to here is restorable, even when the project was idle.
    pub complete_through: Micros,
    /// Set once the project's deletion is archived: nothing more will come.
    pub deleted: bool,
    /// In LSN order, contiguous: each starts right after the previous one ends.
    pub segments: Vec<SegmentMeta>,
    /// In LSN order.
    pub snapshots: Vec<SnapshotMeta>,
    pub last_verify: Option<Verification>,
}

/// What a restore asks for: the state after a given change, or as of a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Lsn(Lsn),
    Time(Micros),
    /// Everything archived.
    Latest,
}

/// One end of the restorable window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    pub lsn: Lsn,
    pub ts: Micros,
}

/// How to reach a target: start from a snapshot (or from nothing), then replay segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePlan {
    pub snapshot: Option<SnapshotMeta>,
    pub segments: Vec<SegmentMeta>,
    /// Replay stops after this LSN …
    pub until_lsn: Lsn,
    /// … and before the first change later than this time.
    pub until_ts: Option<Micros>,
}

/// One compaction step: segments `start..end` become one segment at `level` (when `end - start
/// == 1`, only its level changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compaction {
    pub start: usize,
    pub end: usize,
    pub level: u8,
}

impl Manifest {
    pub fn new(project: &ProjectId, name: &str) -> Self {
        Self {
            format: MANIFEST_FORMAT.into(),
            v: MANIFEST_VERSION,
            project: project.clone(),
            name: name.to_owned(),
            archived_lsn: Lsn::ZERO,
            archived_ts: 0,
            complete_through: 0,
            deleted: false,
            segments: Vec::new(),
            snapshots: Vec::new(),
            last_verify: None,
        }
    }

    /// Parses a manifest, refusing a format this build does not know.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| ArchiveError::Corrupt { object: "manifest.json".into(), message: e.to_string() })?;
        if manifest.format != MANIFEST_FORMAT || manifest.v != MANIFEST_VERSION {
            return Err(ArchiveError::Corrupt {
                object: format!("{}/manifest.json", manifest.project),
                message: format!(
                    "format {:?} version {}; this build reads {MANIFEST_FORMAT} version {MANIFEST_VERSION}",
                    manifest.format, manifest.v
                ),
            });
        }
        Ok(manifest)
    }

    /// The earliest and latest restorable points, or `None` while nothing is archived.
    pub fn window(&self) -> Option<(Point, Point)> {
        // A deleted project's last archived change is its deletion: the window ends at the change
        // before it. Its time is the deletion's (changes of one batch share a time); a restore to
        // that time still stops at the LSN before the deletion.
        let latest = if self.deleted {
            Point { lsn: Lsn(self.archived_lsn.0.saturating_sub(1)), ts: self.archived_ts }
        } else {
            Point { lsn: self.archived_lsn, ts: self.archived_ts.max(self.complete_through) }
        };
        let first = self.segments.first();
        let earliest = match first {
            Some(s) if s.first_lsn == Lsn(1) => Point { lsn: Lsn(1), ts: s.first_ts },
            _ => {
                // The oldest snapshot the segments continue from.
                let start = first.map_or(self.archived_lsn.next(), |s| s.first_lsn);
                let base = self.snapshots.iter().find(|s| s.lsn.next() >= start && s.lsn <= self.archived_lsn)?;
                Point { lsn: base.lsn, ts: base.ts }
            }
        };
        (latest.lsn >= Lsn(1) && earliest.lsn <= latest.lsn).then_some((earliest, latest))
    }

    /// The window as users read it, for messages.
    pub fn describe_window(&self) -> String {
        match self.window() {
            None => "nothing is archived yet".into(),
            Some((a, b)) => format!(
                "the archive holds LSN {} ({}) to LSN {} ({}){}",
                a.lsn,
                holdfast_types::rfc3339(a.ts),
                b.lsn,
                holdfast_types::rfc3339(b.ts),
                if self.deleted { ", the last change before the project's deletion" } else { "" }
            ),
        }
    }

    /// How to restore to `target`; refuses a target outside the window, naming the window.
    pub fn plan(&self, target: Target) -> Result<RestorePlan> {
        let (earliest, latest) =
            self.window().ok_or_else(|| ArchiveError::OutsideWindow(format!("{}: nothing is archived yet", self.name)))?;
        let outside = |what: String| ArchiveError::OutsideWindow(format!("{what} is outside the window: {}", self.describe_window()));
        let (until_lsn, until_ts, snapshot) = match target {
            Target::Latest => (latest.lsn, None, self.snapshots.iter().rfind(|s| s.lsn <= latest.lsn)),
            Target::Lsn(n) => {
                if n < earliest.lsn || n > latest.lsn {
                    return Err(outside(format!("LSN {n}")));
                }
                (n, None, self.snapshots.iter().rfind(|s| s.lsn <= n))
            }
            Target::Time(t) => {
                if t < earliest.ts || t > latest.ts {
                    return Err(outside(holdfast_types::rfc3339(t)));
                }
                (latest.lsn, Some(t), self.snapshots.iter().rfind(|s| s.ts <= t && s.lsn <= latest.lsn))
            }
        };
        let start = snapshot.map_or(Lsn(1), |s| s.lsn.next());
        let mut segments = Vec::new();
        let mut next = start;
        for s in &self.segments {
            if s.last_lsn < start {
                continue;
            }
            if s.first_lsn > until_lsn || until_ts.is_some_and(|t| s.first_ts > t) {
                break;
            }
            if s.first_lsn > next {
                return Err(ArchiveError::Corrupt {
                    object: format!("{}/manifest.json", self.project),
                    message: format!("no segment holds LSN {next} to {}", s.first_lsn.0 - 1),
                });
            }
            next = s.last_lsn.next();
            segments.push(s.clone());
        }
        Ok(RestorePlan { snapshot: snapshot.cloned(), segments, until_lsn, until_ts })
    }

    /// How `backup verify` restores: from the snapshot before the newest one (or from LSN 1) to
    /// the end of the archive, so the replay crosses the newest snapshot and must reproduce the
    /// state hash recorded there, and every later segment is read and applied.
    pub fn plan_verify(&self) -> Result<RestorePlan> {
        let mut plan = self.plan(Target::Latest)?;
        let Some(newest) = plan.snapshot.clone() else {
            return Ok(plan);
        };
        let older = self.snapshots.iter().rfind(|s| s.lsn < newest.lsn);
        let start = older.map_or(Lsn(1), |s| s.lsn.next());
        let reaches = self.segments.first().is_some_and(|s| s.first_lsn <= start);
        if reaches {
            plan.snapshot = older.cloned();
            plan.segments = self.segments.iter().filter(|s| s.last_lsn >= start).cloned().collect();
        }
        Ok(plan)
    }

    /// The next compaction step, if any. Level `k` (1-based) merges, for each closed bucket of
    /// `levels[k-1]` (segments bucketed by their first change's time; a bucket is closed once a
    /// segment of a later bucket exists), the consecutive segments below level `k` into one, of
    /// at most `max_changes` changes. So a restore reads a bounded number of objects however
    /// long the window: with 30 s, 5 min and 1 h, a week is at most ~170 hourly segments plus
    /// a few dozen recent ones.
    pub fn next_compaction(&self, levels: &[Duration], max_changes: u64) -> Option<Compaction> {
        for (index, width) in levels.iter().enumerate() {
            let level = index as u8 + 1;
            let width = (width.as_micros() as i64).max(1);
            let bucket = |s: &SegmentMeta| s.first_ts.div_euclid(width);
            let newest = self.segments.last().map(bucket)?;
            let mut i = 0;
            while i < self.segments.len() {
                let s = &self.segments[i];
                if s.level >= level || bucket(s) >= newest {
                    i += 1;
                    continue;
                }
                let b = bucket(s);
                let mut end = i + 1;
                let mut changes = s.count;
                while let Some(n) = self.segments.get(end) {
                    if n.level >= level || bucket(n) != b || changes + n.count > max_changes {
                        break;
                    }
                    changes += n.count;
                    end += 1;
                }
                return Some(Compaction { start: i, end, level });
            }
        }
        None
    }

    /// What retention removes at time `now`: the newest snapshot at least `retention` old stays
    /// as the base of the window, and everything wholly before it goes. Without such a snapshot
    /// nothing goes (segments from LSN 1 are their own base).
    pub fn expired(&self, now: Micros, retention: Duration) -> (Vec<SegmentMeta>, Vec<SnapshotMeta>) {
        let cutoff = now - retention.as_micros() as i64;
        let Some(base) = self.snapshots.iter().rfind(|s| s.ts <= cutoff && s.lsn <= self.archived_lsn) else {
            return (Vec::new(), Vec::new());
        };
        let segments = self.segments.iter().filter(|s| s.last_lsn <= base.lsn).cloned().collect();
        let snapshots = self.snapshots.iter().filter(|s| s.lsn < base.lsn).cloned().collect();
        (segments, snapshots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_types::Epoch;

    const SEC: i64 = 1_000_000;

    fn seg(first: u64, last: u64, first_ts: i64, last_ts: i64) -> SegmentMeta {
        SegmentMeta {
            level: 0,
            first_lsn: Lsn(first),
            last_lsn: Lsn(last),
            first_ts,
            last_ts,
            epoch: Epoch::FIRST,
            count: last - first + 1,
            bytes: 1,
            sha256: String::new(),
        }
    }

    fn snap(lsn: u64, ts: i64) -> SnapshotMeta {
        SnapshotMeta { lsn: Lsn(lsn), ts, state_hash: String::new(), taken_at: ts, bytes: 1, sha256: String::new() }
    }

    /// One segment per second, ten changes each, from t = 0.
    fn manifest(seconds: u64) -> Manifest {
        let mut m = Manifest::new(&ProjectId::generate(), "p");
        for s in 0..seconds {
            let t = s as i64 * SEC;
            m.segments.push(seg(s * 10 + 1, s * 10 + 10, t, t + SEC / 2));
        }
        m.archived_lsn = Lsn(seconds * 10);
        m.archived_ts = (seconds as i64 - 1) * SEC + SEC / 2;
        m
    }

    /// Runs compaction to the end, merging metadata the way the archiver merges objects.
    fn compact(m: &mut Manifest, levels: &[Duration], max: u64) {
        while let Some(c) = m.next_compaction(levels, max) {
            let run = &m.segments[c.start..c.end];
            let merged = SegmentMeta {
                level: c.level,
                last_lsn: run[run.len() - 1].last_lsn,
                last_ts: run[run.len() - 1].last_ts,
                count: run.iter().map(|s| s.count).sum(),
                ..run[0].clone()
            };
            m.segments.splice(c.start..c.end, [merged]);
        }
    }

    #[test]
    fn plans_pick_the_nearest_snapshot_and_the_segments_after_it() {
        let mut m = manifest(10);
        m.snapshots.push(snap(35, 3 * SEC + SEC / 2));
        let plan = m.plan(Target::Lsn(Lsn(57))).expect("plan");
        assert_eq!(plan.snapshot.as_ref().map(|s| s.lsn), Some(Lsn(35)));
        assert_eq!(plan.segments.iter().map(|s| s.first_lsn.0).collect::<Vec<_>>(), vec![31, 41, 51]);
        let plan = m.plan(Target::Lsn(Lsn(20))).expect("plan");
        assert_eq!(plan.snapshot, None);
        assert_eq!(plan.segments.len(), 2);
        let plan = m.plan(Target::Time(5 * SEC + 10)).expect("plan");
        assert_eq!(plan.until_ts, Some(5 * SEC + 10));
        assert_eq!(plan.segments.last().map(|s| s.first_lsn), Some(Lsn(51)));
        let err = m.plan(Target::Lsn(Lsn(101))).expect_err("beyond");
        assert!(err.to_string().contains("LSN 1 ("), "{err}");
        assert!(m.plan(Target::Time(-5)).is_err());
    }

    #[test]
    fn a_deleted_project_restores_to_just_before_its_deletion() {
        let mut m = manifest(10);
        m.deleted = true; // LSN 100, at 9.5 s, is the deletion
        let (_, latest) = m.window().expect("window");
        assert_eq!((latest.lsn, latest.ts), (Lsn(99), 9 * SEC + SEC / 2));
        assert_eq!(m.plan(Target::Latest).expect("plan").until_lsn, Lsn(99));
        let err = m.plan(Target::Lsn(Lsn(100))).expect_err("the deletion itself");
        assert!(err.to_string().contains("before the project's deletion"), "{err}");
        let at_deletion = m.plan(Target::Time(9 * SEC + SEC / 2)).expect("the deletion's time");
        assert_eq!(at_deletion.until_lsn, Lsn(99), "a time target never reaches the deletion");
        assert!(m.plan(Target::Time(9 * SEC + SEC / 2 + 1)).is_err(), "after the deletion");
    }

    #[test]
    fn a_missing_segment_is_named() {
        let mut m = manifest(5);
        m.segments.remove(2);
        let err = m.plan(Target::Lsn(Lsn(45))).expect_err("gap");
        assert!(err.to_string().contains("no segment holds LSN 21 to 30"), "{err}");
    }

    #[test]
    fn compaction_bounds_the_objects_a_restore_reads() {
        let levels = [Duration::from_secs(30), Duration::from_secs(300), Duration::from_secs(3600)];
        let mut m = manifest(7200); // two hours of one segment per second
        compact(&mut m, &levels, u64::MAX);
        // The first hour is one segment; the second is 11 five-minute segments, 9 half-minute
        // ones and the open bucket's 30 seconds.
        assert!(m.segments.len() <= 1 + 11 + 9 + 30, "{} segments", m.segments.len());
        for pair in m.segments.windows(2) {
            assert_eq!(pair[0].last_lsn.next(), pair[1].first_lsn, "contiguous");
        }
        assert_eq!(m.segments[0].first_lsn, Lsn(1));
        assert_eq!(m.segments.last().map(|s| s.last_lsn), Some(Lsn(72_000)));
        assert_eq!(m.plan(Target::Latest).expect("plan").segments.len(), m.segments.len());
        // A size limit splits merges but keeps the range contiguous.
        let mut limited = manifest(600);
        compact(&mut limited, &levels, 1000);
        assert!(limited.segments.iter().all(|s| s.count <= 1000));
        for pair in limited.segments.windows(2) {
            assert_eq!(pair[0].last_lsn.next(), pair[1].first_lsn, "contiguous");
        }
    }

    #[test]
    fn retention_keeps_a_base_snapshot() {
        let mut m = manifest(100);
        assert_eq!(m.expired(1000 * SEC, Duration::from_secs(10)), (Vec::new(), Vec::new()), "no snapshot, no expiry");
        m.snapshots = vec![snap(100, 9 * SEC + SEC / 2), snap(500, 49 * SEC + SEC / 2), snap(900, 89 * SEC + SEC / 2)];
        let (segments, snapshots) = m.expired(100 * SEC, Duration::from_secs(40));
        assert_eq!(snapshots.iter().map(|s| s.lsn.0).collect::<Vec<_>>(), vec![100]);
        assert_eq!(segments.last().map(|s| s.last_lsn), Some(Lsn(500)));
        m.segments.retain(|s| !segments.contains(s));
        m.snapshots.retain(|s| !snapshots.contains(s));
        let (earliest, _) = m.window().expect("window");
        assert_eq!(earliest.lsn, Lsn(500));
        assert!(m.plan(Target::Lsn(Lsn(499))).is_err());
        assert_eq!(m.plan(Target::Lsn(Lsn(501))).expect("plan").snapshot.map(|s| s.lsn), Some(Lsn(500)));
    }
}
