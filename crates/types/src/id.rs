//! Newtype ids. Every id is made by [`id_type!`], so no bare `String` or `u64` crosses a layer.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Declares a string id with a fixed prefix (`proj_01j…`). New ids are ULIDs: sortable by
/// creation time and unique across regions without coordination (80 random bits each).
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh, globally unique id.
            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, ulid::Ulid::generate().to_string().to_lowercase()))
            }

            /// Accepts a string that carries this id type's prefix.
            pub fn parse(s: &str) -> Option<Self> {
                let rest = s.strip_prefix($prefix)?.strip_prefix('_')?;
                (!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
                    .then(|| Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A project's immutable identity; its name may be reused after it is deleted, its id never.
    ProjectId,
    "proj"
);
id_type!(
    /// Someone or something that acts: a person, a service, a region. Keys belong to principals.
    PrincipalId,
    "prn"
);
id_type!(
    /// One API key of a principal.
    KeyId,
    "key"
);
id_type!(
    /// Names one request end to end: logs, journal entries and (later) the audit log.
    RequestId,
    "req"
);

impl RequestId {
    /// Takes a caller-supplied `x-request-id` if it is sane, else makes one.
    pub fn from_header(value: Option<&str>) -> Self {
        match value {
            Some(v)
                if !v.is_empty()
                    && v.len() <= 128
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
            {
                Self(v.to_owned())
            }
            _ => Self::generate(),
        }
    }
}

/// Log sequence number: the position of a change in its project's journal, dense from 1.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The failover generation of a project; the fencing token of its primary.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    pub const FIRST: Epoch = Epoch(1);
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back_and_are_unique() {
        let a = ProjectId::generate();
        let b = ProjectId::generate();
        assert_ne!(a, b);
        assert_eq!(ProjectId::parse(a.as_str()), Some(a.clone()));
        assert!(a.as_str().starts_with("proj_"));
        assert_eq!(PrincipalId::parse(a.as_str()), None);
        assert_eq!(ProjectId::parse("proj_"), None);
        assert_eq!(ProjectId::parse("proj_a/b"), None);
    }

    #[test]
    fn request_ids_from_headers_are_sanitised() {
        assert_eq!(RequestId::from_header(Some("abc-1")).as_str(), "abc-1");
        assert!(RequestId::from_header(Some("a b")).as_str().starts_with("req_"));
        assert!(RequestId::from_header(None).as_str().starts_with("req_"));
    }
}
