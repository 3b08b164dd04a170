use holdfast_types::{Error, ErrorKind};

/// Detailed storage errors. They become a coarse [`Error`] at the service boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data that breaks an invariant: a gap in the journal, an unknown format version,
    /// a patch of a missing resource.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// The plan of a write refused it (not found, conflict, invalid input); nothing was written.
    #[error("{0}")]
    Rejected(Error),
    /// The project's writer has stopped (shutdown, or a fatal storage error).
    #[error("project store is closed")]
    Closed,
    /// The project was deleted: its record's deletion is journaled and nothing more is taken.
    #[error("project was deleted")]
    Deleted,
    /// This store is not the project's primary (a replica, or a primary fenced for a
    /// failover): it takes no local writes.
    #[error("this copy of the project is {0}: it takes no writes")]
    NotPrimary(&'static str),
    /// Sync commit: the write is committed on the primary, but its sync replica did not confirm
    /// it in time, so it is not acknowledged.
    #[error("change {lsn} is committed on the primary but its sync replica in {regions} did not confirm it within {timeout:?}")]
    SyncTimeout { lsn: holdfast_types::Lsn, regions: String, timeout: std::time::Duration },
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Rejected(e) => e,
            StoreError::Closed => Error::new(ErrorKind::Unavailable, "project store is closed; retry"),
            StoreError::Deleted => Error::new(ErrorKind::NotFound, "project was deleted"),
            e @ StoreError::SyncTimeout { lsn, .. } => Error::new(
                ErrorKind::Unavailable,
                format!(
                    "{e}; it is not acknowledged, but it is committed (x-holdfast-committed): check the replica (holdfast \
                     status) before writing it again"
                ),
            )
            .committed_at(lsn),
            StoreError::NotPrimary(role) => Error::new(
                ErrorKind::Unavailable,
                format!("this copy of the project is {role}: it takes no writes; send them to the project's primary region"),
            ),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::DatabaseBusy) =>
            {
                Error::new(ErrorKind::Unavailable, format!("storage unavailable: {f}"))
            }
            other => Error::new(ErrorKind::Internal, format!("storage error: {other}")),
        }
    }
}

pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;
