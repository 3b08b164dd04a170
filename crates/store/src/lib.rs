//! Storage: each project's state and journal in one SQLite database, changed only by
//! transactions that apply a change to the state and append it to the journal together; and the
//! control-plane catalog (projects, principals, keys) in a database of its own.
//!
//! Architecture Invariant: nothing outside [`apply`] writes a project's `resources` or `journal`
//! tables, and [`apply::apply_change`] is a pure function of (state, change).

pub mod apply;
pub mod control;
mod error;
pub mod project;
mod sqlite;
pub mod view;

pub use error::StoreError;
pub use project::{Committed, Plan, ProjectStore, Role, SnapshotInfo, SyncCommit, WriteGate, deletes_project, describe};
pub use view::{Order, Resource, StateView};
