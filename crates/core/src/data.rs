//! The door through which every domain changes a project: [`Service::data`] opens a project
//! for one caller after checking the action it needs, [`Data::commit`] journals a plan after
//! checking the ops it made against the locks, [`Data::read`] reads on a reader connection.
//! A domain crate never writes a project's journal any other way.

use std::sync::Arc;

use holdfast_store::{Committed, Plan, ProjectStore, StateView};
use holdfast_types::{Error, Kind, Op, now_micros};

use crate::idempotency;
use crate::locks::{SharedLocks, check_data_locks};
use crate::{Action, Caller, Result, Service};

/// A project opened for one data-plane call by one caller.
pub struct Data {
    pub store: Arc<ProjectStore>,
    pub caller: Caller,
    /// The service's locks, checked when a plan runs.
    locks: SharedLocks,
}

impl Service {
    /// Opens `project` for a data-plane call, after checking the caller may perform `action`.
    pub async fn data(&self, caller: &Caller, project: &str, action: Action) -> Result<Data> {
        caller.require(action, &format!("/projects/{project}"))?;
        let store = self.project_store(project).await?;
        if store.name() == crate::projects::CONTROL_PROJECT {
            // Its contents are the control plane's, changed only by control writes.
            return Err(crate::projects::not_found(project));
        }
        Ok(self.data_on(store, caller))
    }

    /// A [`Data`] on a store the caller has opened already (and authorized).
    pub fn data_on(&self, store: Arc<ProjectStore>, caller: &Caller) -> Data {
        Data { store, caller: caller.clone(), locks: self.shared_locks() }
    }
}

impl Service {
    /// Journals a plan as the system, without the lock check: a repair of what a crash or a
    /// failover left (a lock must never keep a project from opening).
    pub async fn commit_repair(&self, store: &ProjectStore, plan: Plan) -> Result<Committed> {
        let system = Caller::system();
        store.write(system.principal.id.as_str(), system.request_id.as_str(), plan).await.map_err(Error::from)
    }
}

impl Data {
    /// Journals a plan as this caller; the ops it makes must pass the project's locks.
    /// The first write of a request sent with an `Idempotency-Key` journals the key in the
    /// same change ([`crate::idempotency`]).
    pub async fn commit(&self, plan: Plan) -> Result<Committed> {
        self.commit_judged(plan, false).await
    }

    /// [`Data::commit`] for a soft delete: a plan that deletes in its domain's terms by marking
    /// what it deletes (MLflow's runs and experiments), so a lock that forbids deletes refuses
    /// it as it refuses a `delete` op.
    pub async fn commit_soft_delete(&self, plan: Plan) -> Result<Committed> {
        self.commit_judged(plan, true).await
    }

    async fn commit_judged(&self, plan: Plan, soft_delete: bool) -> Result<Committed> {
        let (locks, project) = (self.locks.clone(), self.store.name().to_owned());
        let keyed = idempotency::take();
        let (key, now) = (keyed.clone(), now_micros());
        let plan: Plan = Box::new(move |view| {
            let mut ops = plan(view)?;
            // Principals, keys, roles and locks change only by control writes, which check what
            // they change (an import or an undelete must not make an admin key).
            if project == crate::projects::CONTROL_PROJECT || ops.iter().any(|op| Kind::CONTROL.contains(&op.kind())) {
                return Err(Error::invalid(format!(
                    "the control plane's principals, keys, roles and locks change only through their own routes \
                     (holdfast key, role, identity, lock), never as {project}'s contents"
                )));
            }
            // Refused here, clearly, rather than by the store as a corrupt change.
            if ops.len() > holdfast_types::change::MAX_OPS_PER_CHANGE - 16 {
                return Err(Error::invalid(format!(
                    "this write would change {} resources at once; one change holds at most {}: do it in parts",
                    ops.len(),
                    holdfast_types::change::MAX_OPS_PER_CHANGE - 16
                )));
            }
            check_data_locks(&locks, &project, view, &ops, soft_delete)?;
            if let Some((key, fingerprint)) = key.filter(|_| !ops.is_empty()) {
                ops.extend(idempotency::record_ops(view, &key, &fingerprint, now)?);
            }
            Ok(ops)
        });
        let committed = self.store.write(self.caller.principal.id.as_str(), self.caller.request_id.as_str(), plan).await;
        if keyed.is_some() {
            match committed.as_ref().ok().and_then(|c| c.lsn) {
                Some(lsn) => idempotency::journaled(lsn),
                None => idempotency::untake(),
            }
        }
        committed.map_err(Error::from)
    }

    /// [`Data::commit`] for a plan that also decides something the caller answers with (an id it
    /// chose from the state, say): the plan returns its ops and that value.
    pub async fn commit_with<T, F>(&self, plan: F) -> Result<(Committed, T)>
    where
        F: FnOnce(&StateView<'_>) -> Result<(Vec<Op>, T)> + Send + 'static,
        T: Send + 'static,
    {
        let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
        let out = slot.clone();
        let committed = self
            .commit(Box::new(move |view| {
                let (ops, value) = plan(view)?;
                *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
                Ok(ops)
            }))
            .await?;
        let value = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        value.map(|v| (committed, v)).ok_or_else(|| Error::internal("a committed plan left no answer"))
    }

    /// Reads on a reader connection.
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&StateView<'_>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.store
            .read(move |view| Ok(f(view)))
            .await
            .map_err(Error::from)?
    }
}


/// A page of a bounded scan: `after` an id, at most `limit` (default 100, at most 1000).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// Most records one [`PageQuery`] page returns.
pub const MAX_PAGE: usize = 1000;

impl PageQuery {
    pub fn limit(&self) -> Result<usize> {
        match self.limit {
            None => Ok(100),
            Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            Some(n) => Err(Error::invalid(format!("limit must be between 1 and {MAX_PAGE}, got {n}"))),
        }
    }
}
