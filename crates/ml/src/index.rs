//! Resources of one kind per project, parsed and held in memory for searches (the runs): a
//! projection of the state (DESIGN.md invariant 6 — disposable, rebuilt from the state), kept
//! up to date by reading the journal since the LSN it was last brought to. A search then filters
//! and sorts parsed records instead of parsing every record again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use holdfast_core::Result;
use holdfast_store::{Resource, StateView};
use holdfast_types::{Epoch, Kind, Lsn, Op};

use crate::wire::store_err;

/// What a projection holds: a resource of `KIND`, parsed.
pub(crate) trait Indexed: Sized {
    const KIND: Kind;
    fn from_resource(r: &Resource) -> Result<Self>;
}

/// Past this many changes to catch up on, the projection is rebuilt from the state instead.
const REBUILD_AFTER: u64 = 20_000;
/// Changes read from the journal at a time while catching up.
const JOURNAL_CHUNK: usize = 512;

/// One project's records of a kind as of `lsn` in `epoch`.
pub(crate) struct Projection<T> {
    at: Option<(Epoch, Lsn)>,
    pub(crate) items: HashMap<String, Arc<T>>,
}

impl<T> Default for Projection<T> {
    fn default() -> Self {
        Self { at: None, items: HashMap::new() }
    }
}

impl<T: Indexed> Projection<T> {
    /// Brings the projection to the state `view` reads: the journal's changes of its kind since it was
    /// last brought up to date, or everything again after a new epoch, a rewound journal or a
    /// long gap.
    pub(crate) fn catch_up(&mut self, view: &StateView<'_>) -> Result<()> {
        let (epoch, last) = (view.epoch().map_err(store_err)?, view.last_lsn().map_err(store_err)?);
        match self.at {
            Some((e, lsn)) if e == epoch && lsn == last => return Ok(()),
            Some((e, lsn)) if e == epoch && lsn < last && last.0 - lsn.0 <= REBUILD_AFTER => self.follow(view, lsn, last)?,
            _ => self.rebuild(view)?,
        }
        self.at = Some((epoch, last));
        Ok(())
    }

    fn rebuild(&mut self, view: &StateView<'_>) -> Result<()> {
        self.items.clear();
        let mut after: Option<String> = None;
        loop {
            let rows = view.list_by_id_prefix(T::KIND, "", after.as_deref(), 5000).map_err(store_err)?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id.clone());
            for r in &rows {
                self.items.insert(r.id.clone(), Arc::new(T::from_resource(r)?));
            }
        }
        Ok(())
    }

    fn follow(&mut self, view: &StateView<'_>, from: Lsn, to: Lsn) -> Result<()> {
        let mut at = from;
        let mut touched = Vec::new();
        while at < to {
            let changes = view.journal(at, JOURNAL_CHUNK).map_err(store_err)?;
            let Some(last) = changes.last() else { break };
            at = last.lsn;
            for op in changes.iter().flat_map(|c| &c.ops).filter(|op| op.kind() == T::KIND) {
                match op {
                    Op::Put { id, .. } | Op::Patch { id, .. } | Op::Delete { id, .. } | Op::Stamp { id, .. } => touched.push(id.clone()),
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            match view.get(T::KIND, &id).map_err(store_err)? {
                Some(r) => {
                    self.items.insert(id, Arc::new(T::from_resource(&r)?));
                }
                None => {
                    self.items.remove(&id);
                }
            }
        }
        Ok(())
    }
}

/// Every project's projection, made when a project is first searched.
pub(crate) struct Projections<T> {
    projects: Mutex<HashMap<String, Arc<Mutex<Projection<T>>>>>,
}

impl<T> Default for Projections<T> {
    fn default() -> Self {
        Self { projects: Mutex::new(HashMap::new()) }
    }
}

impl<T> Projections<T> {
    pub(crate) fn of(&self, project_id: &str) -> Arc<Mutex<Projection<T>>> {
        self.projects.lock().unwrap_or_else(|e| e.into_inner()).entry(project_id.to_owned()).or_default().clone()
    }
}

/// Locks a project's projection (a poisoned lock is rebuilt: its contents may be half-updated).
pub(crate) fn lock<T>(projection: &Mutex<Projection<T>>) -> std::sync::MutexGuard<'_, Projection<T>> {
    projection.lock().unwrap_or_else(|poisoned| {
        let mut guard = poisoned.into_inner();
        guard.at = None;
        guard
    })
}

