//! Content-addressed blobs over `object_store`: immutable bytes named by their sha256, stored
//! under their project's prefix (`{project}/sha256/{ab}/{abcdef…}`) so a project's blobs can be
//! copied or purged on their own. Reads verify the hash, so a corrupted blob is reported, never
//! served.

pub mod faults;
mod objects;

use bytes::Bytes;
use holdfast_types::ProjectId;
pub use object_store::path::Path;
pub use objects::Objects;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("blob {hash} is corrupt: its content hashes to {actual}")]
    Corrupt { hash: String, actual: String },
    #[error("not a sha256 hex digest: {0:?}")]
    BadHash(String),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("bad object store URL {0}")]
    BadUrl(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A sha256 digest in lowercase hex: the name of a blob.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(String);

impl BlobHash {
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    pub fn parse(s: &str) -> Result<Self, BlobError> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self(s.to_owned()))
        } else {
            Err(BlobError::BadHash(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BlobHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The blob a resource body references: its top-level `sha256` field (a file's bytes).
pub fn referenced_by(body: &serde_json::Value) -> Option<BlobHash> {
    body.get("sha256").and_then(serde_json::Value::as_str).and_then(|h| BlobHash::parse(h).ok())
}

#[derive(Clone, Debug)]
pub struct BlobStore {
    objects: Objects,
}

impl BlobStore {
    /// Blobs in a directory of the local filesystem (created if absent).
    pub fn local(root: &std::path::Path) -> Result<Self, BlobError> {
        Ok(Self { objects: Objects::local(root)?.with_env_faults()? })
    }

    /// Blobs in any object store.
    pub fn new(objects: Objects) -> Self {
        Self { objects }
    }

    /// Where a blob lives under `prefix` (a project id, or a project's place in the archive).
    pub fn location(prefix: &str, hash: &BlobHash) -> Path {
        Path::from(format!("{prefix}/sha256/{}/{}", &hash.0[..2], hash.0))
    }

    /// Stores `bytes` durably and returns their hash. Storing the same bytes again writes nothing.
    pub async fn put(&self, project: &ProjectId, bytes: Bytes) -> Result<BlobHash, BlobError> {
        let hash = BlobHash::of(&bytes);
        put_blob(&self.objects, &Self::location(project.as_str(), &hash), bytes).await?;
        Ok(hash)
    }

    /// Reads a blob and checks that its bytes still hash to its name.
    pub async fn get(&self, project: &ProjectId, hash: &BlobHash) -> Result<Bytes, BlobError> {
        get_blob(&self.objects, &Self::location(project.as_str(), hash), hash).await
    }

    pub async fn exists(&self, project: &ProjectId, hash: &BlobHash) -> Result<bool, BlobError> {
        self.objects.exists(&Self::location(project.as_str(), hash)).await
    }
}

/// Stores a blob at `location` unless it is there, and makes it durable either way.
pub async fn put_blob(objects: &Objects, location: &Path, bytes: Bytes) -> Result<(), BlobError> {
    if objects.exists(location).await? {
        objects.sync(location).await
    } else {
        objects.put(location, bytes).await
    }
}

/// Reads the blob at `location` and checks that its bytes hash to `hash`.
pub async fn get_blob(objects: &Objects, location: &Path, hash: &BlobHash) -> Result<Bytes, BlobError> {
    let bytes = objects.get(location).await?.ok_or_else(|| BlobError::NotFound(hash.0.clone()))?;
    let actual = BlobHash::of(&bytes);
    if &actual != hash {
        return Err(BlobError::Corrupt { hash: hash.0.clone(), actual: actual.0 });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_round_trip_and_dedupe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::local(dir.path()).expect("store");
        let project = ProjectId::generate();
        let hash = blobs.put(&project, Bytes::from_static(b"hello")).await.expect("put");
        assert_eq!(hash.as_str(), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(blobs.put(&project, Bytes::from_static(b"hello")).await.expect("again"), hash);
        assert_eq!(blobs.get(&project, &hash).await.expect("get"), Bytes::from_static(b"hello"));
        assert!(blobs.exists(&project, &hash).await.expect("exists"));
        assert!(!blobs.exists(&ProjectId::generate(), &hash).await.expect("other project"));
    }

    #[tokio::test]
    async fn corruption_is_detected_not_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::local(dir.path()).expect("store");
        let project = ProjectId::generate();
        let hash = blobs.put(&project, Bytes::from_static(b"precious")).await.expect("put");
        let file = dir.path().join(project.as_str()).join("sha256").join(&hash.as_str()[..2]).join(hash.as_str());
        std::fs::write(&file, b"tampered").expect("tamper");
        assert!(matches!(blobs.get(&project, &hash).await, Err(BlobError::Corrupt { .. })));
        let missing = BlobHash::of(b"never stored");
        assert!(matches!(blobs.get(&project, &missing).await, Err(BlobError::NotFound(_))));
        assert!(BlobHash::parse("xyz").is_err());
    }
}
