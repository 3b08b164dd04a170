//! One Holdfast node: the core opened with every domain, their handles, and the background
//! tasks that keep a node's promises (archive shipping, idle close, replicators, the topology
//! watch, the failover witness, the purger).
//!
//! This is the only crate that knows every domain; it wires them and decides the order the
//! core calls them in. The HTTP layer and the command line get their handles from here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use holdfast_agents::{Agents, AgentsConfig, AgentsDomain};
use holdfast_ml::{Ml, MlDomain};
use holdfast_core::{Domain, Result, Service, ServiceConfig};
use holdfast_types::Error;
use holdfast_geo::{Geo, GeoConfig, GeoDomain};
use holdfast_governance::Governance;
use holdfast_recovery::{Recovery, RecoveryConfig, RecoveryDomain};
use tokio::task::JoinHandle;

pub use holdfast_core;

/// Everything a node needs to start; the binary builds it from flags, environment and file.
#[derive(Clone, Debug)]
pub struct Config {
    pub core: ServiceConfig,
    pub agents: AgentsConfig,
    pub recovery: RecoveryConfig,
    pub geo: GeoConfig,
}

impl Config {
    /// The documented defaults for everything but the essentials; for tools and tests.
    pub fn new(data_dir: PathBuf, region: &str, admin_key: Option<String>) -> Self {
        Self {
            core: ServiceConfig::new(data_dir, region, admin_key),
            agents: AgentsConfig::new(),
            recovery: RecoveryConfig::new(),
            geo: GeoConfig::new(),
        }
    }
}

/// A node's handles: the core and one per domain. Cheap to clone.
#[derive(Clone)]
pub struct Holdfast {
    pub core: Arc<Service>,
    pub agents: Arc<Agents>,
    pub ml: Arc<Ml>,
    pub recovery: Arc<Recovery>,
    pub geo: Arc<Geo>,
    pub governance: Arc<Governance>,
}

/// What [`Holdfast::open`] hands back besides the node.
pub struct Opened {
    pub node: Holdfast,
    /// The admin key made on first start, to show once (it is also in `<data>/admin.key`).
    pub generated_admin_key: Option<String>,
}

/// The background tasks [`Holdfast::start`] spawned, awaited on shutdown.
pub struct Tasks {
    archiver: Option<JoinHandle<()>>,
    control_follower: JoinHandle<()>,
    resumer: JoinHandle<()>,
    idle_closer: Option<JoinHandle<()>>,
    purger: JoinHandle<()>,
}

impl Holdfast {
    /// Opens (or initialises) the data directory with every domain. Blocking: call it off the
    /// async runtime's workers (`spawn_blocking`) or before the runtime serves.
    pub fn open(config: Config) -> Result<Opened> {
        let (scratch, region) = (config.core.scratch_dir(), config.core.region.clone());
        let mut built = None;
        let opened = Service::open(config.core, || {
            let geo = GeoDomain::new(&config.geo, &region)?;
            let agents = AgentsDomain::new(&config.agents, config.geo.cluster.peers.values().cloned())?;
            let recovery = RecoveryDomain::new(&config.recovery, &scratch)?;
            built = Some((geo.clone(), agents.clone(), recovery.clone()));
            // The order the core calls them in. Geo alone decides how a project is held here and
            // whether it may serve, and sets a store up only once every domain has repaired it
            // (`Domain::serving`), so the order matters only for what a reader of logs sees.
            let domains: Vec<Arc<dyn Domain>> = vec![geo, agents, Arc::new(MlDomain), recovery];
            Ok(domains)
        })?;
        let (geo, agents, recovery) = built.ok_or_else(|| Error::internal("the domains were not built"))?;
        let core = Arc::new(opened.service);
        core.bind();
        let agents = Arc::new(Agents::new(core.clone(), &agents, &config.agents));
        let ml = Arc::new(Ml::new(core.clone()));
        let recovery = Arc::new(Recovery::new(core.clone(), &recovery, &config.recovery));
        let geo = Geo::new(core.clone(), &geo);
        let governance = Arc::new(Governance::new(core.clone(), recovery.clone(), geo.clone()));
        Ok(Opened { node: Holdfast { core, agents, ml, recovery, geo, governance }, generated_admin_key: opened.generated_admin_key })
    }

    /// Starts the background tasks; they run until [`Holdfast::shutdown`].
    pub fn start(&self) -> Result<Tasks> {
        let archiver = self.recovery.spawn_archiver();
        let idle_closer = self.core.spawn_idle_closer();
        self.geo.spawn_replicators()?;
        // After the replicators: the control journal opens as the replica it may be.
        let control_follower = self.core.spawn_control_follower();
        // Background responses a stop or a failover cut off run again as their projects open.
        let resumer = self.agents.spawn_resumer();
        self.geo.spawn_topology_watch();
        self.geo.spawn_coordinator();
        // Soft-deleted projects whose retention has passed are purged within the hour.
        let purger = self.core.spawn_purger(Duration::from_secs(3600));
        Ok(Tasks { archiver, control_follower, resumer, idle_closer, purger })
    }

    /// Ends waits (journal long polls) so in-flight requests finish promptly; call when the
    /// server stops accepting requests.
    pub fn begin_shutdown(&self) {
        self.core.begin_shutdown();
    }

    /// Lets the background tasks finish their last pass (the archiver ships what the final
    /// requests wrote; a down archive cannot hold us past the bound), then closes every store.
    pub async fn shutdown(&self, tasks: Tasks) {
        self.core.begin_shutdown();
        let bound = Duration::from_secs(10);
        if let Some(archiver) = tasks.archiver {
            let _ = tokio::time::timeout(bound, archiver).await;
        }
        let _ = tokio::time::timeout(bound, tasks.purger).await;
        let _ = tokio::time::timeout(bound, tasks.control_follower).await;
        let _ = tokio::time::timeout(bound, tasks.resumer).await;
        if let Some(closer) = tasks.idle_closer {
            let _ = tokio::time::timeout(bound, closer).await;
        }
        self.core.shutdown().await;
    }
}
