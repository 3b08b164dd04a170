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
    #[error("the bytes are longer than the limit of {0}")]
    TooLarge(u64),
    #[error("the bytes could not be read: {0}")]
    Body(String),
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

    /// Stores a stream of bytes durably without holding them in memory and returns their hash
    /// and length; longer than `limit`: refused, nothing stored. The bytes go to a scratch name
    /// under the project's `tmp/` prefix first, then move to their content's name.
    pub async fn put_stream<S, E>(&self, project: &ProjectId, body: S, limit: u64) -> Result<(BlobHash, u64), BlobError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let scratch = Path::from(format!("{project}/tmp/{}", ulid::Ulid::generate()));
        let (hash, size) = self.objects.put_stream(&scratch, body, limit).await?;
        let location = Self::location(project.as_str(), &hash);
        if self.objects.exists(&location).await? {
            self.objects.delete(&scratch).await?;
        } else {
            self.objects.rename(&scratch, &location).await?;
        }
        self.objects.sync(&location).await?;
        Ok((hash, size))
    }

    /// A blob's bytes as a stream, checked against its name as they pass: a blob whose bytes do
    /// not hash to its name ends the stream with [`BlobError::Corrupt`] instead of its last chunk,
    /// so a reader never takes corrupted bytes for whole ones.
    pub async fn get_stream(&self, project: &ProjectId, hash: &BlobHash) -> Result<futures::stream::BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        use futures::StreamExt;
        use sha2::Digest;
        let location = Self::location(project.as_str(), hash);
        let stream = self.objects.get_stream(&location).await?.ok_or_else(|| BlobError::NotFound(hash.0.clone()))?;
        let expected = hash.clone();
        let checked = futures::stream::unfold(
            (stream, Sha256::new(), None::<Bytes>, false),
            move |(mut stream, mut hasher, held, done)| {
                let expected = expected.clone();
                async move {
                    if done {
                        return None;
                    }
                    // One chunk is held back until the next arrives, so the last one is sent only
                    // once the whole content has been checked.
                    match stream.next().await {
                        Some(Ok(chunk)) => {
                            hasher.update(&chunk);
                            let out = held.map(Ok);
                            match out {
                                Some(item) => Some((Some(item), (stream, hasher, Some(chunk), false))),
                                None => Some((None, (stream, hasher, Some(chunk), false))),
                            }
                        }
                        Some(Err(e)) => Some((Some(Err(e)), (stream, hasher, None, true))),
                        None => {
                            let actual = BlobHash(hex::encode(hasher.clone().finalize()));
                            let last = if actual == expected {
                                held.map(Ok)
                            } else {
                                Some(Err(BlobError::Corrupt { hash: expected.0.clone(), actual: actual.0 }))
                            };
                            Some((last, (stream, hasher, None, true)))
                        }
                    }
                }
            },
        )
        .filter_map(|item| async move { item });
        Ok(checked.boxed())
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

    fn chunks(parts: &[&'static [u8]]) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    async fn collect(blobs: &BlobStore, project: &ProjectId, hash: &BlobHash) -> Result<Vec<u8>, BlobError> {
        use futures::TryStreamExt;
        let parts: Vec<Bytes> = blobs.get_stream(project, hash).await?.try_collect().await?;
        Ok(parts.concat())
    }

    #[tokio::test]
    async fn streamed_blobs_are_named_by_content_and_read_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::local(dir.path()).expect("store");
        let project = ProjectId::generate();
        let (hash, size) = blobs.put_stream(&project, chunks(&[b"hel", b"lo"]), 100).await.expect("put");
        assert_eq!((hash.clone(), size), (BlobHash::of(b"hello"), 5));
        assert_eq!(blobs.get(&project, &hash).await.expect("get"), Bytes::from_static(b"hello"));
        assert_eq!(collect(&blobs, &project, &hash).await.expect("stream"), b"hello");
        // The same bytes again: the same blob, and no scratch object left behind.
        assert_eq!(blobs.put_stream(&project, chunks(&[b"hello"]), 100).await.expect("again").0, hash);
        let left = blobs.objects.list(&Path::from(format!("{project}/tmp"))).await.expect("list");
        assert!(left.is_empty(), "scratch objects left: {left:?}");
    }

    #[tokio::test]
    async fn a_stream_over_the_limit_stores_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::local(dir.path()).expect("store");
        let project = ProjectId::generate();
        let err = blobs.put_stream(&project, chunks(&[b"0123", b"456789"]), 8).await.expect_err("too large");
        assert!(matches!(err, BlobError::TooLarge(8)), "{err}");
        assert!(!blobs.exists(&project, &BlobHash::of(b"0123456789")).await.expect("exists"));
    }

    #[tokio::test]
    async fn a_corrupted_blob_ends_its_stream_with_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::local(dir.path()).expect("store");
        let project = ProjectId::generate();
        let hash = blobs.put(&project, Bytes::from_static(b"hello")).await.expect("put");
        let file = dir.path().join(BlobStore::location(project.as_str(), &hash).to_string());
        std::fs::write(&file, b"jello").expect("corrupt");
        let err = collect(&blobs, &project, &hash).await.expect_err("corrupt");
        assert!(matches!(err, BlobError::Corrupt { .. }), "{err}");
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
