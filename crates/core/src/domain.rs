//! What a domain crate adds to a project's life.
//!
//! The core knows projects, their stores and their journals, never what a domain keeps in them
//! or beside them (an archive, a replica, a search index, sealed secrets). Each domain hands the
//! core a [`Domain`] when the service opens; the core calls every one of them, in that order,
//! at the points of a project's life listed here. A method's default does nothing, so a domain
//! implements only the points it has work at.
//!
//! API Boundary: this trait and [`crate::Data`] are how domains and the core meet. A domain
//! never reaches another domain through the core; what two domains share goes down into the
//! core as a method here.

use std::sync::Arc;

use async_trait::async_trait;
use holdfast_store::control::CatalogEntry;
use holdfast_store::{ProjectStore, Role, StateView};
use holdfast_types::{Error, Kind, Lsn, Op, ProjectId};
use serde_json::Value;

use holdfast_types::api::ControlOps;

use crate::{Data, Result, Service};

#[async_trait]
pub trait Domain: Send + Sync {
    /// The domain's name, for logs.
    fn name(&self) -> &'static str;

    /// How this region holds the project, when this domain decides it (replication does:
    /// a replica here); `None` leaves it to the others (a primary by default).
    fn role_here(&self, _id: &ProjectId) -> Option<Role> {
        None
    }

    /// Refuses user requests for a project this region must not serve now (a warm replica).
    fn check_serving(&self, _core: &Service, _entry: &CatalogEntry) -> Result<()> {
        Ok(())
    }

    /// A primary's store has opened, before any request sees it: journal the repairs a crash
    /// leaves to this domain (as the system). No domain has set up the store yet ([`serving`]),
    /// so a repair is never held by a write gate or a sync-commit wait.
    ///
    /// [`serving`]: Domain::serving
    async fn opened(&self, _core: &Service, _store: &ProjectStore) -> Result<()> {
        Ok(())
    }

    /// A primary's store is repaired and about to serve its first request: set it up for this
    /// domain (geo: the sync-commit wait and the write gate of a replicated primary).
    async fn serving(&self, _core: &Service, _store: &ProjectStore) -> Result<()> {
        Ok(())
    }

    /// Sends a control write planned here to the region that holds the control primary
    /// (`control`, this region's replica of the control journal, names its source) and returns
    /// the LSN it was journaled at. Geo does; without it, a replica of the control journal takes
    /// no control writes.
    async fn forward_control(&self, _core: &Service, _control: &ProjectId, _ops: &ControlOps) -> Option<Result<Lsn>> {
        None
    }

    /// The ops that carry this domain's project-bound state (sealed secrets) from project id
    /// `from` to `to`, journaled when a restore adopts a copy under a new id.
    fn rebind_ops(&self, _core: &Service, _view: &StateView<'_>, _from: &ProjectId, _to: &ProjectId) -> Result<Vec<Op>> {
        Ok(Vec::new())
    }

    /// The ops this region journals, in the first change of an epoch it took over, for work
    /// the old primary left unfinished (responses a failover cut off).
    fn promotion_ops(&self, _view: &StateView<'_>) -> Result<Vec<Op>> {
        Ok(Vec::new())
    }

    /// Brings what this domain derives from a project's contents (the search index) up to
    /// its journal after a bulk change (import, undelete, restore), before it is answered.
    async fn catch_up(&self, _core: &Service, _data: &Data, _kinds: &[Kind]) -> Result<()> {
        Ok(())
    }

    /// Refuses a resource an import brings that the domain's own API would refuse (a
    /// connection's target outside the egress rules). `name` is how a message names it.
    fn check_imported(&self, _kind: Kind, _name: &str, _body: &Value) -> Result<()> {
        Ok(())
    }

    /// Refuses what an import, an undelete or a divergence replay puts back (the `put` ops of
    /// `ops`, joining the state `view` holds before them) when it would break a rule the
    /// domain's own operations keep and ids alone cannot, such as a unique name. Called inside
    /// the plan, so nothing can slip in between the check and the write.
    fn check_joining(&self, _view: &StateView<'_>, _ops: &[Op]) -> Result<()> {
        Ok(())
    }

    /// Whether the core may close an idle project whose journal ends at `last` (the archive
    /// must hold every change first).
    fn may_rest(&self, _id: &ProjectId, _last: Lsn) -> bool {
        true
    }

    /// The project's deletion is journaled and its store closes for good next: the last
    /// chance to take its journal's tail (to the archive). Errors are the domain's to log.
    async fn deleting(&self, _core: &Service, _entry: &CatalogEntry, _store: &ProjectStore) {}
}

/// The domains registered with the service, called in order.
pub(crate) type Domains = Vec<Arc<dyn Domain>>;

impl Service {
    /// How this region holds the project: as a domain says, else a primary.
    pub fn role_here(&self, id: &ProjectId) -> Role {
        self.domains.iter().find_map(|d| d.role_here(id)).unwrap_or(Role::Primary)
    }

    /// Refuses user requests for a project this region must not serve now.
    pub fn check_serving(&self, entry: &CatalogEntry) -> Result<()> {
        self.domains.iter().try_for_each(|d| d.check_serving(self, entry))
    }

    /// Every domain's [`Domain::rebind_ops`].
    pub fn rebind_ops(&self, view: &StateView<'_>, from: &ProjectId, to: &ProjectId) -> Result<Vec<Op>> {
        let mut ops = Vec::new();
        for domain in &self.domains {
            ops.extend(domain.rebind_ops(self, view, from, to)?);
        }
        Ok(ops)
    }

    /// Every domain's [`Domain::promotion_ops`].
    pub fn domain_promotion_ops(&self, view: &StateView<'_>) -> Result<Vec<Op>> {
        let mut ops = Vec::new();
        for domain in &self.domains {
            ops.extend(domain.promotion_ops(view)?);
        }
        Ok(ops)
    }

    /// Every domain's [`Domain::catch_up`], after a bulk change of `kinds`.
    pub async fn catch_up(&self, data: &Data, kinds: &[Kind]) -> Result<()> {
        for domain in &self.domains {
            domain.catch_up(self, data, kinds).await?;
        }
        Ok(())
    }

    /// Every domain's [`Domain::check_imported`].
    pub fn check_imported(&self, kind: Kind, name: &str, body: &Value) -> Result<()> {
        self.domains.iter().try_for_each(|d| d.check_imported(kind, name, body))
    }

    /// Every domain's [`Domain::check_joining`].
    pub fn check_joining(&self, view: &StateView<'_>, ops: &[Op]) -> Result<()> {
        self.domains.iter().try_for_each(|d| d.check_joining(view, ops))
    }

    /// Whether every domain lets the idle project rest.
    pub(crate) fn may_rest(&self, id: &ProjectId, last: Lsn) -> bool {
        self.domains.iter().all(|d| d.may_rest(id, last))
    }

    /// Every domain's [`Domain::opened`].
    pub(crate) async fn opened(&self, store: &ProjectStore) -> Result<()> {
        for domain in &self.domains {
            domain.opened(self, store).await?;
        }
        Ok(())
    }

    /// Every domain's [`Domain::serving`].
    pub(crate) async fn serving(&self, store: &ProjectStore) -> Result<()> {
        for domain in &self.domains {
            domain.serving(self, store).await?;
        }
        Ok(())
    }

    /// Every domain's [`Domain::deleting`].
    /// Asks the domains, in order, to carry a control write to the control primary.
    pub(crate) async fn forward_control(&self, control: &ProjectId, ops: ControlOps) -> Result<Lsn> {
        for domain in &self.domains {
            if let Some(outcome) = domain.forward_control(self, control, &ops).await {
                return outcome;
            }
        }
        Err(Error::unavailable("this region holds a replica of the control journal and nothing to send control writes to its primary"))
    }

    pub(crate) async fn deleting(&self, entry: &CatalogEntry, store: &ProjectStore) {
        for domain in &self.domains {
            domain.deleting(self, entry, store).await;
        }
    }
}
