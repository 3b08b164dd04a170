//! Geo: a project's copies in other regions. Replicas fed by their primary's journal, planned
//! and forced failover, the etcd witness of automatic failover with its leases and epochs,
//! divergence records of a deposed primary, and the consistency answers (a copy's LSN and lag,
//! read-your-writes waits).
//!
//! Everything here moves journals, never a domain's resources: a replica applies its primary's
//! changes as they are, so every kind any domain journals is replicated the day it exists.
//! What a domain must do when this region takes a project over (responses a failover cut off)
//! it says through [`holdfast_core::Domain::promotion_ops`].
//!
//! Architecture Invariant: this crate depends on the core and the layers below it, never on
//! another domain crate or on HTTP.

pub mod consistency;
mod control;
pub mod coordinator;
pub mod divergence;
pub mod replication;

use std::sync::Arc;

use async_trait::async_trait;
use holdfast_core::{Domain, Result, Service};
use holdfast_store::control::CatalogEntry;
use holdfast_store::{ProjectStore, Role};
use holdfast_core::control_plane::ControlOps;
use holdfast_types::{Lsn, ProjectId};

use coordinator::{Coordinator, CoordinatorConfig};
use replication::{ClusterConfig, Replication};

/// Geo's settings (`[[peers]]`, `[cluster]`, `[coordinator]`).
#[derive(Clone, Debug)]
pub struct GeoConfig {
    /// Peer regions and the cluster secret.
    pub cluster: ClusterConfig,
    /// etcd as the failover witness, when configured.
    pub coordinator: Option<CoordinatorConfig>,
}

impl GeoConfig {
    /// The documented defaults: no peers, no witness.
    pub fn new() -> Self {
        Self {
            cluster: ClusterConfig { sync_timeout: replication::DEFAULT_SYNC_TIMEOUT, ..Default::default() },
            coordinator: None,
        }
    }
}

impl Default for GeoConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// What geo adds to a project's life, for the core ([`Domain`]): a project replicated here
/// opens as a replica, a warm replica refuses users, and a primary's store gets its sync-commit
/// wait and write gate from the project's record once it is repaired, before it serves.
pub struct GeoDomain {
    state: Arc<GeoState>,
}

impl GeoDomain {
    pub fn new(config: &GeoConfig, region: &str) -> Result<Arc<Self>> {
        let state = GeoState {
            region: region.to_owned(),
            replication: Replication::new(config.cluster.clone())?,
            coordinator: config.coordinator.clone().map(Coordinator::new),
        };
        Ok(Arc::new(Self { state: Arc::new(state) }))
    }
}

#[async_trait]
impl Domain for GeoDomain {
    fn name(&self) -> &'static str {
        "geo"
    }

    fn role_here(&self, id: &ProjectId) -> Option<Role> {
        Some(self.state.role_here(id))
    }

    fn check_serving(&self, _core: &Service, entry: &CatalogEntry) -> Result<()> {
        self.state.check_serving(entry)
    }

    async fn serving(&self, _core: &Service, store: &ProjectStore) -> Result<()> {
        self.state.apply_sync_setting(store).await
    }

    async fn forward_control(&self, _core: &Service, control: &ProjectId, ops: &ControlOps) -> Option<Result<Lsn>> {
        Some(self.state.forward_control(control, ops).await)
    }
}

/// What the core asks of geo for every project ([`GeoDomain`]), and what the replicators
/// share: the replicas held here, the followers of the primaries here, the witness.
pub(crate) struct GeoState {
    pub(crate) region: String,
    pub(crate) replication: Replication,
    pub(crate) coordinator: Option<Coordinator>,
}

/// Geo's operations, as the facades, the peers and the command line call them.
pub struct Geo {
    core: Arc<Service>,
    state: Arc<GeoState>,
}

impl Geo {
    pub fn new(core: Arc<Service>, domain: &GeoDomain) -> Arc<Self> {
        Arc::new(Self { core, state: domain.state.clone() })
    }

    /// The core this works on.
    pub fn core(&self) -> &Arc<Service> {
        &self.core
    }
}
