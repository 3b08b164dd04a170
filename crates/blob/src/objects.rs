//! Holdfast's one way to object storage: a store opened from a URL (`file://`, `s3://`,
//! `az://`, `gs://`) whose `put` is durable when it returns. Blobs and the archive both sit on it.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::{BlobError, BlobHash};
use crate::faults::{FAULTS_ENV, Faults, Unreliable};

#[derive(Clone, Debug)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// Set for a local filesystem, whose writes are fsynced before `put` returns.
    local: Option<Arc<LocalFileSystem>>,
    /// The local root directory, where syncing parent directories stops.
    root: Option<std::path::PathBuf>,
}

impl Objects {
    /// Objects in a directory of the local filesystem (created if absent).
    pub fn local(root: &std::path::Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root)?;
        let root = std::fs::canonicalize(root)?;
        let fs = Arc::new(LocalFileSystem::new_with_prefix(&root)?);
        Ok(Self { store: fs.clone(), local: Some(fs), root: Some(root) })
    }

    /// Objects in any object store whose `put` is durable when it returns (S3, Azure, GCS…).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store, local: None, root: None }
    }

    /// Opens the store a URL names: `file:///abs/dir`, `s3://bucket/prefix`,
    /// `az://container/prefix` or `gs://bucket/prefix`. Credentials and endpoints come from each
    /// backend's standard environment variables (`AWS_*`, `AZURE_*`, `GOOGLE_*`).
    pub fn open(url: &str) -> Result<Self, BlobError> {
        let bad = |why: &str| BlobError::BadUrl(format!("{url}: {why}"));
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let objects = if parsed.scheme() == "file" {
            let dir = parsed.to_file_path().map_err(|()| bad("not an absolute local path"))?;
            Self::local(&dir)?
        } else {
            Self::remote(&parsed).map_err(|e| match e {
                BlobError::BadUrl(why) => bad(&why),
                other => other,
            })?
        };
        objects.with_env_faults()
    }

    /// These objects behind the fault injector when `HOLDFAST_OBJECT_FAULTS` asks for it
    /// (see [`crate::faults`]); as they are otherwise.
    pub fn with_env_faults(self) -> Result<Self, BlobError> {
        match Faults::from_env()? {
            Some(faults) => {
                tracing::warn!(store = %self.store, ?faults, "object store faults are injected ({FAULTS_ENV}): for tests only");
                Ok(Self { store: Arc::new(Unreliable::new(self.store.clone(), faults)), ..self })
            }
            None => Ok(self),
        }
    }

    fn remote(parsed: &url::Url) -> Result<Self, BlobError> {
        let bad = |why: &str| BlobError::BadUrl(why.to_owned());
        let bucket = parsed.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("no bucket or container"))?;
        let base = format!("{}://{bucket}", parsed.scheme());
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" | "s3a" => {
                Arc::new(object_store::aws::AmazonS3Builder::from_env().with_url(base).build()?)
            }
            "az" | "azure" | "abfs" => {
                Arc::new(object_store::azure::MicrosoftAzureBuilder::from_env().with_url(base).build()?)
            }
            "gs" => Arc::new(object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(base).build()?),
            other => return Err(bad(&format!("unknown scheme {other:?}; use file, s3, az or gs"))),
        };
        let prefix = parsed.path().trim_matches('/');
        Ok(if prefix.is_empty() { Self::new(store) } else { Self::new(Arc::new(PrefixStore::new(store, prefix))) })
    }

    /// Stores `bytes` at `location`; durable when this returns. The object is replaced whole or
    /// not at all.
    pub async fn put(&self, location: &Path, bytes: Bytes) -> Result<(), BlobError> {
        self.store.put(location, PutPayload::from_bytes(bytes)).await?;
        self.sync(location).await
    }

    /// Makes an object already written durable: object_store's local backend renames a
    /// temporary file into place but does not fsync. Also needed when the object was there
    /// already (an earlier put may have died before its fsync). The directories up to the root
    /// are synced too, since the put may have created them.
    pub async fn sync(&self, location: &Path) -> Result<(), BlobError> {
        let Some(fs) = &self.local else {
            return Ok(());
        };
        let file = fs.path_to_filesystem(location)?;
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
        Ok(())
    }

    /// Stores a stream of bytes at `location` without holding it in memory (multipart, a part
    /// in flight at a time), hashing it as it goes; refuses one longer than `limit` bytes (and
    /// stores nothing). Not durable yet: the caller moves it into place and syncs it.
    pub async fn put_stream<S, E>(&self, location: &Path, mut body: S, limit: u64) -> Result<(BlobHash, u64), BlobError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures::StreamExt;
        use sha2::Digest;
        let mut writer = object_store::WriteMultipart::new(self.store.put_multipart(location).await?);
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let refused = match chunk {
                Err(e) => Some(BlobError::Body(e.to_string())),
                Ok(chunk) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        Some(BlobError::TooLarge(limit))
                    } else {
                        hasher.update(&chunk);
                        writer.wait_for_capacity(2).await?;
                        writer.write(&chunk);
                        None
                    }
                }
            };
            if let Some(e) = refused {
                // Best effort: what an abort leaves behind is under the scratch prefix.
                let _ = writer.abort().await;
                return Err(e);
            }
        }
        writer.finish().await?;
        Ok((BlobHash(hex::encode(hasher.finalize())), size))
    }

    /// Moves an object to another name (atomic on a filesystem; a copy and a delete elsewhere).
    pub async fn rename(&self, from: &Path, to: &Path) -> Result<(), BlobError> {
        Ok(self.store.rename(from, to).await?)
    }

    /// The object's bytes as a stream of chunks, or `None` when there is no such object.
    pub async fn get_stream(&self, location: &Path) -> Result<Option<futures::stream::BoxStream<'static, Result<Bytes, BlobError>>>, BlobError> {
        use futures::StreamExt;
        match self.store.get(location).await {
            Ok(result) => Ok(Some(result.into_stream().map(|c| c.map_err(BlobError::from)).boxed())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The object's bytes, or `None` when there is no such object.
    pub async fn get(&self, location: &Path) -> Result<Option<Bytes>, BlobError> {
        match self.store.get(location).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn exists(&self, location: &Path) -> Result<bool, BlobError> {
        match self.store.head(location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, location: &Path) -> Result<(), BlobError> {
        match self.store.delete(location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every object under `prefix`, recursively.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<Path>, BlobError> {
        Ok(self.store.list(Some(prefix)).map_ok(|meta| meta.location).try_collect().await?)
    }

    /// The names directly under `prefix` that are "directories" (common prefixes).
    pub async fn list_dirs(&self, prefix: Option<&Path>) -> Result<Vec<Path>, BlobError> {
        Ok(self.store.list_with_delimiter(prefix).await?.common_prefixes)
    }
}
