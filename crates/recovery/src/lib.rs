//! Recovery: getting a project back whatever happened to it. Continuous archive shipping of
//! every project's journal (and of the node's audit log) to object storage, backup status and
//! verify, point-in-time restore from the archive or a live journal, export and import of a
//! whole project, and a resource's history with undelete.
//!
//! Everything here works on the journal, never on a domain's resources: a new kind is
//! archived, restored, exported and undeletable the day it is journaled. What a domain derives
//! from a project (the search index) or binds to its id (sealed secrets) it redoes when the
//! core asks ([`holdfast_core::Domain`]).
//!
//! Architecture Invariant: this crate depends on the core and the layers below it, never on
//! another domain crate or on HTTP.

pub mod audit_shipping;
pub mod backup;
pub mod export;
pub mod history;
pub mod restore;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use holdfast_core::{Domain, Result, Service};
use holdfast_store::ProjectStore;
use holdfast_store::control::CatalogEntry;
use holdfast_types::{Lsn, ProjectId};

use backup::{ArchiveConfig, Archiver};

/// Largest import file by default: 1 GiB.
pub const DEFAULT_MAX_IMPORT_BYTES: u64 = 1024 * 1024 * 1024;
/// Free space an import leaves by default: 256 MiB, room for the databases' own writes.
pub const DEFAULT_IMPORT_MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;

/// Recovery's settings (`[archive]`, `[limits]` of imports).
#[derive(Clone, Debug)]
pub struct RecoveryConfig {
    /// Continuous backup, when configured.
    pub archive: Option<ArchiveConfig>,
    /// Largest import file, in bytes.
    pub max_import_bytes: u64,
    /// Free space, in bytes, an import leaves on the data directory's filesystem.
    pub import_min_free_bytes: u64,
}

impl RecoveryConfig {
    /// The documented defaults: no archive.
    pub fn new() -> Self {
        Self { archive: None, max_import_bytes: DEFAULT_MAX_IMPORT_BYTES, import_min_free_bytes: DEFAULT_IMPORT_MIN_FREE_BYTES }
    }
}

/// What recovery adds to a project's life, for the core ([`Domain`]): an idle project rests
/// only once archived, and a deleted one ships its journal's tail first.
pub struct RecoveryDomain {
    archiver: Option<Arc<Archiver>>,
}

impl RecoveryDomain {
    /// Opens the archive, when one is configured; `scratch` holds snapshot copies.
    pub fn new(config: &RecoveryConfig, scratch: &Path) -> Result<Arc<Self>> {
        let archiver = match config.archive.clone() {
            Some(archive) => Some(Arc::new(Archiver::open(archive, scratch.to_owned())?)),
            None => None,
        };
        Ok(Arc::new(Self { archiver }))
    }
}

#[async_trait]
impl Domain for RecoveryDomain {
    fn name(&self) -> &'static str {
        "recovery"
    }

    fn may_rest(&self, id: &ProjectId, last: Lsn) -> bool {
        self.archiver.as_ref().is_none_or(|a| a.rest(id, last))
    }

    async fn deleting(&self, core: &Service, entry: &CatalogEntry, store: &ProjectStore) {
        if let Some(archiver) = &self.archiver {
            archiver.archive_final(core.blobs(), entry, store).await;
        }
    }
}

/// Recovery's operations, as the facades and the command line call them.
pub struct Recovery {
    core: Arc<Service>,
    archiver: Option<Arc<Archiver>>,
    /// Long-running operations (restores), by id.
    operations: std::sync::Mutex<HashMap<String, Arc<restore::OperationState>>>,
    max_import_bytes: u64,
    import_min_free_bytes: u64,
}

impl Recovery {
    pub fn new(core: Arc<Service>, domain: &RecoveryDomain, config: &RecoveryConfig) -> Self {
        Self {
            core,
            archiver: domain.archiver.clone(),
            operations: std::sync::Mutex::new(HashMap::new()),
            max_import_bytes: config.max_import_bytes,
            import_min_free_bytes: config.import_min_free_bytes,
        }
    }

    /// The core this works on.
    pub fn core(&self) -> &Arc<Service> {
        &self.core
    }

    /// Whether this server ships its journals to an archive (`[archive]` is configured).
    pub fn archives(&self) -> bool {
        self.archiver.is_some()
    }
}
