//! Types shared by every Holdfast layer: ids, the change record, errors and API models.
//!
//! This crate does no I/O. Everything that crosses a layer boundary is defined here, so the
//! store, the service and the HTTP facades agree on one shape.

pub mod api;
pub mod change;
pub mod error;
pub mod id;

pub use change::{Change, Kind, Op, CHANGE_FORMAT_VERSION};
pub use error::{Error, ErrorKind};
pub use id::{Epoch, KeyId, Lsn, PrincipalId, ProjectId, RequestId};

/// Microseconds since the Unix epoch, the one time unit Holdfast persists.
pub type Micros = i64;

/// Formats microseconds since the epoch as RFC 3339 with microsecond precision, in UTC.
pub fn rfc3339(us: Micros) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map(|t| format!("{t:.6}"))
        .unwrap_or_else(|_| us.to_string())
}

/// The current time in microseconds since the Unix epoch.
pub fn now_micros() -> Micros {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as Micros)
}

/// Parses an RFC 3339 time (any offset) to microseconds since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<Micros> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_microsecond())
}
