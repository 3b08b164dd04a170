//! The control journal across regions. It is a project (`holdfast-control`, see
//! [`holdfast_core::control_plane`]) and moves between regions as one: the region that leads it
//! replicates it, hot, to every peer; control writes planned in a region that holds a replica
//! are committed at the primary ([`GeoState::forward_control`]); it fails over with
//! `holdfast failover --project holdfast-control`, or automatically with etcd, like any project.
//!
//! Joining: every region starts with a control journal of its own (so it can serve alone). The
//! designated region (`[cluster] control_primary`, else the first region name in order among
//! this one and its peers) replicates its journal to each peer; a peer that still leads a
//! journal of its own that was never replicated hands every control change it made to the
//! designated region as a divergence record (listed with `holdfast divergence list --project
//! holdfast-control`, never dropped), sets its copy aside and follows the designated region's.

use std::sync::Arc;
use std::time::Duration;

use holdfast_core::control_plane::{CONTROL_PROJECT, ControlCommitted, ControlOps};
use holdfast_core::{Caller, Result};
use holdfast_store::Role as StoreRole;
use holdfast_store::control::{self, CatalogEntry};
use holdfast_types::api::{CommitMode, DivergenceReport, ReplicaCreate, ReplicaMode, ReplicaStart};
use holdfast_types::{Error, Kind, Lsn, ProjectId};

use crate::replication::call;
use crate::{Geo, GeoState};

/// Whether `op` makes (or changes) the admin key a server makes from its configuration: the
/// `prn_admin` principal, its assignments, and its `env` or `generated` keys.
fn makes_bootstrap_admin(op: &holdfast_types::Op) -> bool {
    use holdfast_core::auth::ADMIN_PRINCIPAL;
    match op {
        holdfast_types::Op::Put { kind: Kind::Principal, id, .. } => id == ADMIN_PRINCIPAL,
        holdfast_types::Op::Put { kind: Kind::RoleAssignment, id, .. } => id.starts_with(&format!("{ADMIN_PRINCIPAL}|")),
        holdfast_types::Op::Put { kind: Kind::ApiKey, body, .. } => {
            body["principal_id"] == ADMIN_PRINCIPAL && matches!(body["source"].as_str(), Some("env" | "generated"))
        }
        op => !Kind::CONTROL.contains(&op.kind()),
    }
}

impl GeoState {
    /// The region that leads the control plane when no region has replicated it yet.
    pub(crate) fn designated_control_primary(&self) -> String {
        let config = &self.replication.config;
        config.control_primary.clone().unwrap_or_else(|| {
            config.peers.keys().chain(std::iter::once(&self.region)).min().cloned().unwrap_or_else(|| self.region.clone())
        })
    }

    /// Sends a control write to the region this region's replica of the control journal
    /// follows.
    pub(crate) async fn forward_control(&self, control: &ProjectId, ops: &ControlOps) -> Result<Lsn> {
        let replica = self.replication.replica(control).ok_or_else(|| {
            Error::unavailable("this region's copy of the control journal follows no region yet; try again")
        })?;
        let primary = replica.source();
        let request = self.replication.request(reqwest::Method::POST, &primary, "/internal/v1/control/ops")?;
        let committed: ControlCommitted = call(
            request.timeout(Duration::from_secs(10)).json(ops),
            &format!("sending a control write to region {primary}, which holds the control primary"),
        )
        .await?;
        Ok(committed.lsn)
    }
}

impl Geo {
    /// Replicates the control journal, hot, to every peer that holds no copy of it yet, when
    /// this region leads it and either is the designated region or already replicates it (a
    /// region that leads a control journal nobody follows waits to join the designated one's).
    pub(crate) async fn spread_control_plane(self: &Arc<Self>) -> Result<()> {
        let peers: Vec<String> = self.state.replication.config.peers.keys().cloned().collect();
        if peers.is_empty() {
            return Ok(());
        }
        let entry = self.core.control_entry().await?;
        let store = self.core.store(&entry).await?;
        if store.role() != StoreRole::Primary {
            return Ok(());
        }
        let id = entry.id.clone();
        let (primary, replicas) = store.read(move |view| holdfast_core::projects::topology(view, &id)).await.map_err(Error::from)?;
        let designated = self.state.designated_control_primary() == self.core.region();
        if !designated && primary.is_none() && replicas.is_empty() {
            return Ok(());
        }
        for peer in peers.iter().filter(|p| !replicas.iter().any(|r| &r.region == *p)) {
            let request = ReplicaCreate { region: peer.clone(), mode: ReplicaMode::Hot, commit: CommitMode::Async, sync_fallback: false };
            match self.replicate(&Caller::system(), CONTROL_PROJECT, request).await {
                Ok(_) => tracing::info!(region = %peer, "the control journal is replicated to region {peer}"),
                Err(e) => tracing::debug!(region = %peer, error = %e, "cannot replicate the control journal yet"),
            }
        }
        Ok(())
    }

    /// Before this region follows another region's control journal (`start`): refuses if this
    /// region leads a control journal that is replicated or this region is the designated one,
    /// else hands what its own journal holds to the other region as a divergence record and
    /// sets its own journal aside.
    pub(crate) async fn join_control_plane(&self, start: &ReplicaStart, own: &CatalogEntry) -> Result<()> {
        let store = self.core.store(own).await?;
        let id = own.id.clone();
        let (primary, replicas) = store.read(move |view| holdfast_core::projects::topology(view, &id)).await.map_err(Error::from)?;
        if store.role() != StoreRole::Primary
            || primary.is_some()
            || !replicas.is_empty()
            || self.state.designated_control_primary() == self.core.region()
        {
            return Err(Error::conflict(format!(
                "region {} leads a control journal of its own ({}): two regions both lead one; make one of them the \
                 control primary ([cluster] control_primary) in every region",
                self.core.region(),
                own.id
            )));
        }
        let changes = store.journal(Lsn::ZERO, usize::MAX).await.map_err(Error::from)?;
        // The admin key this region's configuration made is configuration, not state: it is
        // made again wherever that configuration names it (`HOLDFAST_ADMIN_KEY` at the
        // control primary). Everything else a principal or an upgrade made is handed over.
        let (made, bootstrap): (Vec<_>, Vec<_>) = changes
            .into_iter()
            .filter(|c| c.ops.iter().any(|op| Kind::CONTROL.contains(&op.kind())))
            .partition(|c| !c.ops.iter().all(makes_bootstrap_admin));
        if !bootstrap.is_empty() {
            tracing::info!(changes = bootstrap.len(), "this region's own bootstrap admin key ends with its control journal");
        }
        if !made.is_empty() {
            let report = DivergenceReport { from_region: self.core.region().to_owned(), changes: made };
            let path = format!("/internal/v1/projects/{}/divergences", start.project_id);
            let request = self.state.replication.request(reqwest::Method::POST, &start.source_region, &path)?;
            let _: serde_json::Value = call(
                request.timeout(Duration::from_secs(30)).json(&report),
                &format!("handing this region's control changes to region {}", start.source_region),
            )
            .await?;
            tracing::warn!(
                region = %start.source_region,
                changes = report.changes.len(),
                "joining region {}'s control plane: this region's own control changes are kept there as a divergence record",
                start.source_region
            );
        }
        drop(store);
        let mut open = self.core.open_stores().await;
        if let Some(old) = open.remove(&own.id) {
            let _ = tokio::task::spawn_blocking(move || old.close()).await;
        }
        // The catalog first: a crash between the two leaves a directory the catalog does not
        // know, which the next start moves to the trash.
        let id = own.id.clone();
        self.core.control().call(move |c| control::remove_project(c, &id)).await.map_err(Error::from)?;
        self.core.move_to_trash(&self.core.project_dir(&own.id), own.id.as_str())?;
        drop(open);
        Ok(())
    }
}
