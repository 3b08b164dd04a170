//! The archive: each project's journal shipped as compressed, checksummed segments to object
//! storage, with snapshots and the blobs they reference, described by a per-project manifest
//! (docs/formats/archive.md). Restore reads it back into a new project database at any point
//! of its window.
//!
//! Layout under the archive URL:
//!
//! ```text
//! {project}/manifest.json
//! {project}/segments/{first_lsn:020}-{last_lsn:020}-e{epoch}.seg.zst
//! {project}/snapshots/{lsn:020}.db.zst
//! {project}/blobs/sha256/{ab}/{abcdef…}
//! ```
//!
//! Objects are written before the manifest that names them, and removed only after a manifest
//! that no longer names them is stored, so a crash at any point leaves a manifest whose every
//! object exists (stray objects are swept later).

pub mod audit;
pub mod manifest;
mod restore;
pub mod segment;

use std::io::{Read, Write};
use std::path::Path as FsPath;

use bytes::Bytes;
use holdfast_blob::{BlobError, BlobHash, BlobStore, Objects, Path};
use holdfast_store::SnapshotInfo;
use holdfast_types::{Change, Error, ErrorKind, ProjectId};
use sha2::{Digest, Sha256};

pub use audit::{AuditManifest, AuditSegmentMeta};
pub use manifest::{Manifest, Point, RestorePlan, SnapshotMeta, Target, Verification};
pub use restore::{Progress, Restored, apply_until, restore};
pub use segment::{SegmentMeta, SegmentWriter};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An object that fails its checks; `object` names it.
    #[error("archive object {object} is corrupt: {message}")]
    Corrupt { object: String, message: String },
    #[error("{0}")]
    OutsideWindow(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Objects(#[from] BlobError),
    #[error("store: {0}")]
    Store(#[from] holdfast_store::StoreError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<ArchiveError> for Error {
    fn from(e: ArchiveError) -> Self {
        let kind = match &e {
            ArchiveError::OutsideWindow(_) | ArchiveError::Invalid(_) => ErrorKind::InvalidInput,
            ArchiveError::NotFound(_) => ErrorKind::NotFound,
            ArchiveError::Objects(_) => ErrorKind::Unavailable,
            ArchiveError::Store(_) | ArchiveError::Corrupt { .. } | ArchiveError::Json(_) | ArchiveError::Io(_) => {
                ErrorKind::Internal
            }
        };
        Error::new(kind, e.to_string())
    }
}

pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct Archive {
    objects: Objects,
    url: String,
}

impl Archive {
    /// Opens the archive at `url` (`file:///dir`, `s3://bucket/prefix`, `az://…`, `gs://…`).
    pub fn open(url: &str) -> Result<Self> {
        Ok(Self { objects: Objects::open(url)?, url: url.to_owned() })
    }

    /// An archive over objects the caller opened (tests inject faults this way).
    pub fn new(objects: Objects, url: &str) -> Self {
        Self { objects, url: url.to_owned() }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(project: &ProjectId, rest: &str) -> Path {
        Path::from(format!("{project}/{rest}"))
    }

    pub async fn manifest(&self, project: &ProjectId) -> Result<Option<Manifest>> {
        match self.objects.get(&Self::path(project, "manifest.json")).await? {
            None => Ok(None),
            Some(bytes) => Manifest::parse(&bytes).map(Some),
        }
    }

    /// Stores the manifest; it replaces the previous one whole.
    pub async fn save_manifest(&self, manifest: &Manifest) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(manifest)?;
        self.objects.put(&Self::path(&manifest.project, "manifest.json"), bytes.into()).await?;
        Ok(())
    }

    /// The manifests of every project in the archive, deleted ones included.
    pub async fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for dir in self.objects.list_dirs(None).await? {
            let Some(id) = ProjectId::parse(dir.as_ref()) else { continue };
            if let Some(m) = self.manifest(&id).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// The archive of a project, by id, or by name (the most recently archived project of that
    /// name, since a name can be reused after a delete).
    pub async fn find(&self, name_or_id: &str) -> Result<Manifest> {
        let missing = || ArchiveError::NotFound(format!("the archive at {} holds no project {name_or_id:?}", self.url));
        if let Some(id) = ProjectId::parse(name_or_id) {
            return self.manifest(&id).await?.ok_or_else(missing);
        }
        self.manifests()
            .await?
            .into_iter()
            .filter(|m| m.name == name_or_id)
            .max_by_key(|m| m.archived_ts.max(m.complete_through))
            .ok_or_else(missing)
    }

    pub async fn put_segment(&self, project: &ProjectId, meta: &SegmentMeta, bytes: Vec<u8>) -> Result<()> {
        self.objects.put(&Self::path(project, &meta.key()), bytes.into()).await?;
        Ok(())
    }

    /// A segment's changes, every check passed (see [`segment::decode`]).
    pub async fn read_segment(&self, project: &ProjectId, meta: &SegmentMeta) -> Result<Vec<Change>> {
        let bytes = self.objects.get(&Self::path(project, &meta.key())).await?.ok_or_else(|| ArchiveError::Corrupt {
            object: format!("{project}/{}", meta.key()),
            message: "missing".into(),
        })?;
        let (project, meta) = (project.clone(), meta.clone());
        tokio::task::spawn_blocking(move || segment::decode(&project, &meta, &bytes))
            .await
            .map_err(|e| ArchiveError::Invalid(format!("decode task failed: {e}")))?
    }

    /// Removes one of the project's objects by its key under the project (`segments/…`).
    pub async fn delete(&self, project: &ProjectId, key: &str) -> Result<()> {
        Ok(self.objects.delete(&Self::path(project, key)).await?)
    }

    fn blob_path(project: &ProjectId, hash: &BlobHash) -> Path {
        BlobStore::location(&format!("{project}/blobs"), hash)
    }

    pub async fn has_blob(&self, project: &ProjectId, hash: &BlobHash) -> Result<bool> {
        Ok(self.objects.exists(&Self::blob_path(project, hash)).await?)
    }

    pub async fn put_blob(&self, project: &ProjectId, hash: &BlobHash, bytes: Bytes) -> Result<()> {
        if BlobHash::of(&bytes) != *hash {
            return Err(ArchiveError::Invalid(format!("bytes given for blob {hash} hash differently")));
        }
        Ok(holdfast_blob::put_blob(&self.objects, &Self::blob_path(project, hash), bytes).await?)
    }

    pub async fn get_blob(&self, project: &ProjectId, hash: &BlobHash) -> Result<Bytes> {
        Ok(holdfast_blob::get_blob(&self.objects, &Self::blob_path(project, hash), hash).await?)
    }

    /// Compresses the database copy at `db` (described by `info`) and stores it as the
    /// project's snapshot at `info.lsn`.
    pub async fn put_snapshot(&self, info: &SnapshotInfo, db: &FsPath, taken_at: holdfast_types::Micros) -> Result<SnapshotMeta> {
        let db = db.to_owned();
        let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let mut encoder = zstd::Encoder::new(Vec::new(), 3)?;
            std::io::copy(&mut std::fs::File::open(&db)?, &mut encoder)?;
            Ok(encoder.finish()?)
        })
        .await
        .map_err(|e| ArchiveError::Invalid(format!("compress task failed: {e}")))??;
        let meta = SnapshotMeta {
            lsn: info.lsn,
            ts: info.ts,
            state_hash: info.state_hash.clone(),
            taken_at,
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        };
        self.objects.put(&Self::path(&info.project, &meta.key()), bytes.into()).await?;
        Ok(meta)
    }

    /// Writes the snapshot's database to `target` (which must not exist) and checks it: the
    /// object's hash, the database's integrity, its LSN and its state hash.
    pub async fn fetch_snapshot(&self, project: &ProjectId, meta: &SnapshotMeta, target: &FsPath) -> Result<()> {
        let object = format!("{project}/{}", meta.key());
        let corrupt = |message: String| ArchiveError::Corrupt { object: object.clone(), message };
        let bytes = self.objects.get(&Self::path(project, &meta.key())).await?.ok_or_else(|| corrupt("missing".into()))?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != meta.sha256 {
            return Err(corrupt(format!("object hashes to {actual}, the manifest says {}", meta.sha256)));
        }
        let (target, meta) = (target.to_owned(), meta.clone());
        let info = tokio::task::spawn_blocking(move || -> Result<SnapshotInfo> {
            let mut file = std::fs::File::create_new(&target)?;
            let mut decoder = zstd::Decoder::new(&bytes[..])?;
            let mut buf = vec![0; 1 << 20];
            loop {
                let n = decoder.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                file.write_all(&buf[..n])?;
            }
            file.sync_all()?;
            Ok(holdfast_store::describe(&target)?)
        })
        .await
        .map_err(|e| ArchiveError::Invalid(format!("decompress task failed: {e}")))?
        .map_err(|e| corrupt(e.to_string()))?;
        if info.lsn != meta.lsn || info.state_hash != meta.state_hash {
            return Err(corrupt(format!(
                "holds LSN {} with state hash {}; the manifest says LSN {} with {}",
                info.lsn, info.state_hash, meta.lsn, meta.state_hash
            )));
        }
        Ok(())
    }

    /// The archived audit log's manifest; `None` before anything was shipped.
    pub async fn audit_manifest(&self, region: &str) -> Result<Option<AuditManifest>> {
        match self.objects.get(&Self::audit_path(region, audit::AUDIT_MANIFEST_KEY)).await? {
            None => Ok(None),
            Some(bytes) => AuditManifest::parse(&bytes).map(Some),
        }
    }

    pub async fn save_audit_manifest(&self, region: &str, manifest: &AuditManifest) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(manifest)?;
        self.objects.put(&Self::audit_path(region, audit::AUDIT_MANIFEST_KEY), bytes.into()).await?;
        Ok(())
    }

    fn audit_path(region: &str, key: &str) -> Path {
        Path::from(format!("{}/{key}", audit::prefix(region)))
    }

    pub async fn put_audit_segment(&self, region: &str, meta: &AuditSegmentMeta, bytes: Vec<u8>) -> Result<()> {
        self.objects.put(&Self::audit_path(region, &meta.key()), bytes.into()).await?;
        Ok(())
    }

    /// An archived audit segment's entries, its object and range checked ([`audit::decode`]).
    pub async fn read_audit_segment(
        &self,
        region: &str,
        meta: &AuditSegmentMeta,
    ) -> Result<Vec<holdfast_store::control::AuditRecord>> {
        let path = Self::audit_path(region, &meta.key());
        let bytes = self
            .objects
            .get(&path)
            .await?
            .ok_or_else(|| ArchiveError::Corrupt { object: path.to_string(), message: "missing".into() })?;
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || audit::decode(path.as_ref(), &meta, &bytes))
            .await
            .map_err(|e| ArchiveError::Invalid(format!("decode task failed: {e}")))?
    }

    /// Removes an audit segment (after a manifest that no longer names it is stored).
    pub async fn delete_audit_segment(&self, region: &str, meta: &AuditSegmentMeta) -> Result<()> {
        Ok(self.objects.delete(&Self::audit_path(region, &meta.key())).await?)
    }

    /// Removes audit segments the manifest does not name (a crash between object and manifest).
    pub async fn sweep_audit(&self, region: &str, manifest: &AuditManifest) -> Result<usize> {
        let keep: std::collections::HashSet<String> =
            manifest.segments.iter().map(|s| Self::audit_path(region, &s.key()).to_string()).collect();
        let mut removed = 0;
        for object in self.objects.list(&Self::audit_path(region, audit::AUDIT_SEGMENTS_DIR)).await? {
            if !keep.contains(object.as_ref()) {
                self.objects.delete(&object).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes segment and snapshot objects the manifest does not name: left by a crash between
    /// writing an object and the manifest, or between the manifest and a delete.
    pub async fn sweep(&self, manifest: &Manifest) -> Result<usize> {
        let project = &manifest.project;
        let mut keep: std::collections::HashSet<String> =
            manifest.segments.iter().map(|s| Self::path(project, &s.key()).to_string()).collect();
        keep.extend(manifest.snapshots.iter().map(|s| Self::path(project, &s.key()).to_string()));
        let mut removed = 0;
        for dir in ["segments", "snapshots"] {
            for object in self.objects.list(&Self::path(project, dir)).await? {
                if !keep.contains(object.as_ref()) {
                    self.objects.delete(&object).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
