//! Read-your-writes across regions (README §Replication between regions): where this region's
//! copy of a project stands (its last LSN, its lag behind the primary, whether writes must go
//! to the primary), and a bounded wait until the copy has applied a given LSN.
//!
//! The HTTP layer uses it to forward a hot replica's writes to the primary, to answer
//! `x-holdfast-lsn` / `x-holdfast-lag-ms` on every project route, and to honour
//! `x-holdfast-min-lsn`. Everything here reads what `replication.rs` and the store already keep.

use std::time::Duration;

use holdfast_types::api::ReplicaMode;
use holdfast_types::{Error, Lsn};

use holdfast_core::Result;

use crate::Geo;

/// How this region holds a project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holding {
    /// The primary (or a primary fenced for a failover): writes are taken, or refused, here.
    Primary,
    /// A hot replica: reads are served here, writes belong to `primary_region`, reached at
    /// `primary_url` when that region is a configured peer.
    HotReplica { primary_region: String, primary_url: Option<String> },
    /// A warm replica: nothing is served until a failover.
    WarmReplica,
}

/// Where this region's copy of a project stands (`x-holdfast-lsn`, `x-holdfast-lag-ms`).
#[derive(Clone, Debug)]
pub struct LocalCopy {
    /// The copy's last committed (or applied) LSN.
    pub lsn: Lsn,
    /// How far the copy is behind its primary, in milliseconds; 0 on the primary.
    pub lag_ms: u64,
    pub holding: Holding,
}

impl Geo {
    /// Where this region's copy of `project` (name or id) stands: a catalog lookup, the store's
    /// LSN and, on a replica, its replication progress (all in memory).
    pub async fn local_copy(&self, project: &str) -> Result<LocalCopy> {
        let entry = self.core.entry_any(project).await?;
        let store = self.core.store(&entry).await?;
        let lsn = store.last_lsn();
        let Some((mode, primary_region, lag_ms)) = self.replica_progress(&entry.id, lsn) else {
            return Ok(LocalCopy { lsn, lag_ms: 0, holding: Holding::Primary });
        };
        let holding = match mode {
            ReplicaMode::Hot => Holding::HotReplica { primary_url: self.peer_url(&primary_region), primary_region },
            ReplicaMode::Warm => Holding::WarmReplica,
        };
        Ok(LocalCopy { lsn, lag_ms, holding })
    }

    /// Waits, at most `bound`, until this region's copy of `project` has applied `min`
    /// (`x-holdfast-min-lsn`). A project this region does not serve (unknown, deleted, a warm
    /// replica) is not waited for: the operation that follows says why it cannot be served.
    pub async fn wait_until_applied(&self, project: &str, min: Lsn, bound: Duration) -> Result<()> {
        let Ok(entry) = self.core.entry(project).await else { return Ok(()) };
        let Ok(store) = self.core.store(&entry).await else { return Ok(()) };
        if store.last_lsn() >= min {
            return Ok(());
        }
        let mut lsn = store.subscribe();
        let mut stopping = self.core.stopping();
        let reached = tokio::time::timeout(bound, async {
            tokio::select! {
                applied = lsn.wait_for(|l| *l >= min) => applied.is_ok(),
                _ = stopping.wait_for(|s| *s) => false,
            }
        })
        .await;
        if matches!(reached, Ok(true)) {
            return Ok(());
        }
        Err(Error::unavailable(format!(
            "region {} has applied project {:?} up to LSN {}, and the request asks for LSN {min} \
             (x-holdfast-min-lsn); it was not applied within {} ms: retry, or send the request to the primary region",
            self.core.region(),
            entry.name,
            store.last_lsn(),
            bound.as_millis()
        )))
    }
}
