//! Content-addressed blobs over `object_store`: immutable bytes named by their sha256, stored
//! under their project's prefix (`{project}/sha256/{ab}/{abcdef…}`) so a project's blobs can be
//! copied or purged on their own. Reads verify the hash, so a corrupted blob is reported, never
//! served.

use std::sync::Arc;

use bytes::Bytes;
use holdfast_types::ProjectId;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
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
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A sha256 digest in lowercase hex: the name of a blob.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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

#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// Set for a local filesystem, whose writes are fsynced before `put` returns.
    local: Option<Arc<LocalFileSystem>>,
    /// The local root directory, where syncing parent directories stops.
    root: Option<std::path::PathBuf>,
}

impl BlobStore {
    /// Blobs in a directory of the local filesystem (created if absent).
    pub fn local(root: &std::path::Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root)?;
        let root = std::fs::canonicalize(root)?;
        let fs = Arc::new(LocalFileSystem::new_with_prefix(&root)?);
        Ok(Self { store: fs.clone(), local: Some(fs), root: Some(root) })
    }

    /// Blobs in any object store (S3, Azure, GCS…), whose `put` is durable when it returns.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store, local: None, root: None }
    }

    fn location(project: &ProjectId, hash: &BlobHash) -> Path {
        Path::from(format!("{}/sha256/{}/{}", project, &hash.0[..2], hash.0))
    }

    /// Stores `bytes` durably and returns their hash. Storing the same bytes again writes nothing.
    pub async fn put(&self, project: &ProjectId, bytes: Bytes) -> Result<BlobHash, BlobError> {
        let hash = BlobHash::of(&bytes);
        let location = Self::location(project, &hash);
        let exists = match self.store.head(&location).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        if !exists {
            self.store.put(&location, PutPayload::from_bytes(bytes)).await?;
        }
        if let Some(fs) = &self.local {
            // object_store renames a temporary file into place but does not fsync; blobs must be
            // durable before a change references them (DESIGN.md invariant 3). Also when the
            // blob was there already: an earlier put may have died before its fsync. The
            // directories up to the root are synced too, since `put` may have created them.
            let file = fs.path_to_filesystem(&location)?;
            let root = self.root.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                std::fs::File::open(&file)?.sync_all()?;
                let mut dir = file.parent();
                while let Some(d) = dir {
                    std::fs::File::open(d)?.sync_all()?;
                    if Some(d) == root.as_deref() {
                        break;
                    }
                    dir = d.parent();
                }
                Ok(())
            })
            .await
            .map_err(std::io::Error::other)??;
        }
        Ok(hash)
    }

    /// Reads a blob and checks that its bytes still hash to its name.
    pub async fn get(&self, project: &ProjectId, hash: &BlobHash) -> Result<Bytes, BlobError> {
        let bytes = match self.store.get(&Self::location(project, hash)).await {
            Ok(result) => result.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Err(BlobError::NotFound(hash.0.clone())),
            Err(e) => return Err(e.into()),
        };
        let actual = BlobHash::of(&bytes);
        if &actual != hash {
            return Err(BlobError::Corrupt { hash: hash.0.clone(), actual: actual.0 });
        }
        Ok(bytes)
    }

    pub async fn exists(&self, project: &ProjectId, hash: &BlobHash) -> Result<bool, BlobError> {
        match self.store.head(&Self::location(project, hash)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
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
