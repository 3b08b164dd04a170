//! Files (`file-…`): uploaded bytes live in the blob store, content-addressed; the File resource
//! (filename, size, purpose, sha256) is journaled only once the bytes are durable (DESIGN.md
//! invariant 3). Blobs are never removed here: other files, and the project's history, may
//! reference the same bytes.

use bytes::Bytes;
use holdfast_blob::BlobHash;
use holdfast_store::{Order, Resource};
use holdfast_types::{Error, ErrorKind, Kind, Op};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use holdfast_core::Data;
use crate::wire::{List, deleted, filtered_page, must_get, new_id, store_err, unix_seconds};
use holdfast_core::{Action, Caller, Result};

use crate::Agents;

/// The purposes OpenAI accepts for uploads.
pub const PURPOSES: [&str; 9] = [
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
    "evals",
];

/// Longest filename kept, in bytes.
const MAX_FILENAME_BYTES: usize = 255;
/// Most files one list page may hold (OpenAI's limit for `GET /files`).
const MAX_FILE_PAGE: usize = 10_000;

/// An upload, as the HTTP layer read it.
#[derive(Clone, Debug)]
pub struct FileUpload {
    /// The name the client gave; `None` when the part had none.
    pub filename: Option<String>,
    pub purpose: String,
    pub bytes: Bytes,
}

/// Query of `GET /files`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct FileListQuery {
    pub after: Option<String>,
    pub limit: Option<usize>,
    pub order: Option<String>,
    pub purpose: Option<String>,
}

/// The stored body of a File resource.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FileBody {
    pub filename: String,
    pub bytes: u64,
    pub purpose: String,
    /// Names the blob holding the bytes.
    pub sha256: String,
}

/// A file's bytes, for `GET /files/{id}/content`.
#[derive(Clone, Debug)]
pub struct FileContent {
    pub filename: String,
    pub bytes: Bytes,
}

pub(crate) fn file_body(r: &Resource) -> Result<FileBody> {
    serde_json::from_value(r.body.clone()).map_err(|e| Error::internal(format!("bad file record {}: {e}", r.id)))
}

fn file_wire(r: &Resource) -> Value {
    json!({
        "id": r.id,
        "object": "file",
        "bytes": r.body["bytes"],
        "created_at": unix_seconds(r.created_us),
        "filename": r.body["filename"],
        "purpose": r.body["purpose"],
        "status": "processed",
        "expires_at": null,
        "status_details": null,
    })
}

pub(crate) fn too_large(limit: usize) -> Error {
    Error::new(ErrorKind::PayloadTooLarge, format!("file is larger than this server's limit of {limit} bytes"))
}

pub(crate) fn check_purpose(purpose: &str) -> Result<()> {
    if PURPOSES.contains(&purpose) {
        Ok(())
    } else {
        Err(Error::invalid(format!("invalid purpose {purpose:?}; expected one of: {}", PURPOSES.join(", "))))
    }
}

/// The name a file is stored under: the last path component of what the client sent.
fn filename(name: Option<&str>) -> Result<String> {
    let name = name.unwrap_or_default();
    let name = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    if name.is_empty() {
        return Ok("upload".into());
    }
    if name.len() > MAX_FILENAME_BYTES {
        return Err(Error::invalid(format!("filename is longer than {MAX_FILENAME_BYTES} bytes")));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("filename must not contain control characters"));
    }
    Ok(name.to_owned())
}

impl Agents {
    /// Refuses an upload the caller may not make (or to a project that is not there), so the
    /// HTTP layer can answer before it reads a byte of the body.
    pub async fn may_upload(&self, caller: &Caller, project: &str) -> Result<()> {
        self.core.data(caller, project, Action::DataWrite).await.map(drop)
    }

    /// Stores an upload: the bytes durably in the blob store first, then the File resource.
    /// Too large, a bad purpose or filename: refused, and nothing is stored or journaled.
    pub async fn create_file(&self, caller: &Caller, project: &str, upload: FileUpload) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        if upload.bytes.len() > self.core.max_file_bytes() {
            return Err(too_large(self.core.max_file_bytes()));
        }
        check_purpose(&upload.purpose)?;
        let name = filename(upload.filename.as_deref())?;
        let size = upload.bytes.len() as u64;
        let hash = self
            .core
            .blobs()
            .put(data.store.id(), upload.bytes)
            .await
            .map_err(|e| Error::new(ErrorKind::Unavailable, format!("cannot store the file's bytes: {e}")))?;
        let body = FileBody { filename: name, bytes: size, purpose: upload.purpose, sha256: hash.as_str().to_owned() };
        let body = serde_json::to_value(body).map_err(|e| Error::internal(e.to_string()))?;
        let id = new_id("file-");
        let fid = id.clone();
        data.commit(Box::new(move |_| Ok(vec![Op::Put { kind: Kind::File, id: fid, parent: None, body }]))).await?;
        read_file(&data, &id).await
    }

    /// Files, newest first unless `order=asc`; `purpose` filters.
    pub async fn list_files(&self, caller: &Caller, project: &str, query: FileListQuery) -> Result<List> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let limit = match query.limit {
            None => MAX_FILE_PAGE,
            Some(n) if (1..=MAX_FILE_PAGE).contains(&n) => n,
            Some(n) => return Err(Error::invalid(format!("limit must be between 1 and {MAX_FILE_PAGE}, got {n}"))),
        };
        let order = super::ListQuery { order: query.order.clone(), ..Default::default() }.order(Order::Desc)?;
        if let Some(p) = &query.purpose {
            check_purpose(p)?;
        }
        data.read(move |view| {
            if let Some(after) = &query.after
                && view.get(Kind::File, after).map_err(store_err)?.is_none()
            {
                return Err(Error::invalid(format!("'after' cursor {after:?} does not name a file")));
            }
            let purpose = query.purpose.clone();
            let (rows, has_more) = filtered_page(view, Kind::File, None, query.after.clone(), limit, order, |r| {
                purpose.as_deref().is_none_or(|p| r.body["purpose"] == p)
            })?;
            Ok(List::new(rows.iter().map(file_wire).collect(), has_more))
        })
        .await
    }

    pub async fn get_file(&self, caller: &Caller, project: &str, id: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        read_file(&data, id).await
    }

    /// A file's bytes, checked against their hash on the way out.
    pub async fn file_content(&self, caller: &Caller, project: &str, id: &str) -> Result<FileContent> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let fid = id.to_owned();
        let body = data.read(move |view| file_body(&must_get(view, Kind::File, &fid, "file", &fid)?)).await?;
        let bytes = self.file_bytes(&data, &body.sha256).await?;
        Ok(FileContent { filename: body.filename, bytes })
    }

    pub(crate) async fn file_bytes(&self, data: &Data, sha256: &str) -> Result<Bytes> {
        let hash = BlobHash::parse(sha256).map_err(|e| Error::internal(format!("bad file record: {e}")))?;
        self.core.blobs()
            .get(data.store.id(), &hash)
            .await
            .map_err(|e| Error::internal(format!("cannot read the file's bytes: {e}")))
    }

    /// Deletes a file and, in the same change, its links from every vector store (their chunks
    /// leave the search index before this answers).
    pub async fn delete_file(&self, caller: &Caller, project: &str, id: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let fid = id.to_owned();
        let committed = data
            .commit(Box::new(move |view| {
                must_get(view, Kind::File, &fid, "file", &fid)?;
                let mut ops = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let stores = view.list(Kind::VectorStore, None, after.as_deref(), 256, Order::Asc).map_err(store_err)?;
                    let Some(last) = stores.last() else { break };
                    after = Some(last.id.clone());
                    for store in &stores {
                        let link = link_id(&store.id, &fid);
                        if view.get(Kind::VectorStoreFile, &link).map_err(store_err)?.is_some() {
                            ops.push(Op::Delete { kind: Kind::VectorStoreFile, id: link });
                        }
                    }
                }
                ops.push(Op::Delete { kind: Kind::File, id: fid });
                Ok(ops)
            }))
            .await?;
        if committed.lsn.is_some() {
            self.index().index_catch_up(&data, Default::default()).await?;
        }
        Ok(deleted(id, "file"))
    }
}

async fn read_file(data: &Data, id: &str) -> Result<Value> {
    let fid = id.to_owned();
    data.read(move |view| Ok(file_wire(&must_get(view, Kind::File, &fid, "file", &fid)?))).await
}


/// The id of a file's link into a vector store (`Kind::VectorStoreFile`).
pub(crate) fn link_id(store: &str, file: &str) -> String {
    format!("vsf:{store}:{file}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_keep_their_last_component() {
        assert_eq!(filename(Some("notes.txt")).ok(), Some("notes.txt".into()));
        assert_eq!(filename(Some("/tmp/x/notes.txt")).ok(), Some("notes.txt".into()));
        assert_eq!(filename(Some("C:\\x\\notes.txt")).ok(), Some("notes.txt".into()));
        assert_eq!(filename(None).ok(), Some("upload".into()));
        assert!(filename(Some("bad\nname")).is_err());
        assert!(filename(Some(&"x".repeat(300))).is_err());
    }
}
