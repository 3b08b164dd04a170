//! Governance: who may do what, and what was done. API keys, role assignments and custom
//! roles, managed identities, resource locks, reading and verifying the audit log, and the
//! readiness review of a project's protection.
//!
//! The mechanisms are the core's (authentication, the lock check of every commit, the audit
//! writer); this crate manages their records and reads them back.
//!
//! Architecture Invariant: this crate depends on the core and the layers below it; of the
//! other domains only on recovery (the readiness review reads backup status, `audit-log
//! verify` the archived audit log) and geo (the review reads replica status). Neither depends
//! back, and nothing here depends on HTTP.

pub mod access;
pub mod audit;
pub mod identities;
pub mod locks;
pub mod readiness;

use std::sync::Arc;

use holdfast_core::Service;
use holdfast_geo::Geo;
use holdfast_recovery::Recovery;

pub use audit::AuditQuery;

/// Governance's operations, as the facades and the command line call them.
pub struct Governance {
    core: Arc<Service>,
    recovery: Arc<Recovery>,
    geo: Arc<Geo>,
}

impl Governance {
    pub fn new(core: Arc<Service>, recovery: Arc<Recovery>, geo: Arc<Geo>) -> Self {
        Self { core, recovery, geo }
    }
}
