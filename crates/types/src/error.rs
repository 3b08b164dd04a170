//! The coarse public error. Layers below keep detailed errors of their own and convert at their
//! boundary; the HTTP status for each kind is chosen in exactly one place (`holdfast-api`).

use std::fmt;

/// What went wrong, in terms a caller can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or violates a rule; retrying it unchanged fails again.
    InvalidInput,
    /// No credentials, or credentials that do not match a live key.
    Unauthenticated,
    /// Authenticated, but not allowed to do this.
    Forbidden,
    NotFound,
    /// The target exists already or is in a state that forbids the operation.
    Conflict,
    PayloadTooLarge,
    /// The server has too little free disk space to take the request (an import larger than
    /// what its data directory can hold with its reserve); retry once space is freed.
    InsufficientStorage,
    /// A lock at the target's scope (or above it) forbids the operation; remove the lock first.
    Locked,
    /// The caller holds as many of something as it may (projects per principal).
    QuotaExceeded,
    /// The server cannot take the request now (shutting down, storage failing); retry later.
    Unavailable,
    /// Well-formed, but it cannot be processed as it is (an idempotency key used for another
    /// request).
    Unprocessable,
    /// A bug or corruption; details are in the server log under the request id.
    Internal,
}

impl ErrorKind {
    /// A stable snake_case code for wire envelopes.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::InsufficientStorage => "insufficient_storage",
            // The name the platforms use for the same refusal.
            ErrorKind::Locked => "ScopeLocked",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Unprocessable => "unprocessable",
            ErrorKind::Internal => "internal",
        }
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Unavailable)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// Set when the write the error answers was committed nonetheless (a sync commit its
    /// replica did not confirm): the LSN of its change. The HTTP layer says so in
    /// `x-holdfast-committed`, so a client does not write it twice by retrying.
    pub committed_lsn: Option<crate::Lsn>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), committed_lsn: None }
    }

    /// The same error, for a write committed at `lsn` all the same.
    pub fn committed_at(self, lsn: crate::Lsn) -> Self {
        Self { committed_lsn: Some(lsn), ..self }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    pub fn locked(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Locked, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
