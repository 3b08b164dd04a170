//! Resource locks as Owners manage them: create, list, delete. What a lock refuses is
//! enforced by the core, on every commit ([`holdfast_core::locks`]).

use holdfast_core::Result;
use holdfast_core::auth::{Action, Caller};
use holdfast_core::locks::{ActiveLock, Target, inherits, parse_scope};
use holdfast_store::control::{self, LockRecord};
use holdfast_types::api::{Lock, LockCreate, LockList};
use holdfast_types::{Error, now_micros};

use crate::Governance;

impl Governance {
    /// `holdfast lock create`: Owners only.
    pub async fn create_lock(&self, caller: &Caller, req: LockCreate) -> Result<Lock> {
        let target = parse_scope(&req.scope)?;
        caller.require(Action::LocksManage, &req.scope)?;
        if req.notes.chars().count() > 512 {
            return Err(Error::invalid("notes must be at most 512 characters"));
        }
        let record = LockRecord {
            id: format!("lock_{}", ulid::Ulid::generate().to_string().to_lowercase()),
            scope: req.scope.clone(),
            kind: req.kind.as_str().to_owned(),
            data_plane: req.data_plane || matches!(target, Target::Resource { .. }),
            notes: req.notes,
            created_by: caller.principal.id.as_str().to_owned(),
            created_us: now_micros(),
        };
        let stored = record.clone();
        self.core.control_write(caller, move |c| control::insert_lock(c, &stored))
            .await?;
        Ok(ActiveLock::from_record(record)?.lock)
    }

    /// `holdfast lock list`: every lock, or those at `scope` and above it.
    pub fn list_locks(&self, caller: &Caller, scope: Option<&str>) -> Result<LockList> {
        caller.require(Action::ProjectsRead, scope.unwrap_or("/"))?;
        let locks = self.core.current_locks();
        let data = match scope {
            None => locks.iter().map(|l| l.lock.clone()).collect(),
            Some(scope) => {
                parse_scope(scope)?;
                locks.iter().filter(|l| inherits(scope, &l.lock.scope)).map(|l| l.lock.clone()).collect()
            }
        };
        Ok(LockList { data })
    }

    /// `holdfast lock delete`: Owners only.
    pub async fn delete_lock(&self, caller: &Caller, id: &str) -> Result<()> {
        let scope = self
            .core
            .current_locks()
            .iter()
            .find(|l| l.lock.id == id)
            .map(|l| l.lock.scope.clone())
            .ok_or_else(|| Error::not_found(format!("lock {id:?} not found")))?;
        caller.require(Action::LocksManage, &scope)?;
        let owned = id.to_owned();
        if !self.core.control_write(caller, move |c| control::delete_lock(c, &owned))
            .await? {
            return Err(Error::not_found(format!("lock {id:?} not found")));
        }
        Ok(())
    }
}
