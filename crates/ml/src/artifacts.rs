//! Artifacts behind MLflow's proxy (`mlflow-artifacts:/…`): each file is an `ml_artifact`
//! resource named by its path under the project's artifact root, whose bytes are a
//! content-addressed blob (stored durably first, then journaled). A file under a run's, a logged
//! model's or a trace's directory is that resource's child, so a lock on it guards the file and
//! an undelete brings the file back with it.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::stream::BoxStream;
use holdfast_blob::{BlobError, BlobHash};
use holdfast_core::{Action, Caller, Result};
use holdfast_store::StateView;
use holdfast_types::{Error, ErrorKind, Kind, Op};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::wire::{self, check_path, opt_string, parse, root_path, store_err};
use crate::{Ml, runs};

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct ArtifactBody {
    /// The blob holding the bytes (top-level `sha256`: what replication, backup and export copy).
    pub sha256: String,
    pub size: u64,
}

/// Most files one listing walks.
const MAX_LISTED: usize = 100_000;

/// The run, logged model or trace whose directory holds `path`, if it exists.
fn owner(view: &StateView<'_>, path: &str) -> Result<Option<String>> {
    let parts: Vec<&str> = path.splitn(5, '/').collect();
    let candidate = match parts.as_slice() {
        [_, "models", id, "artifacts", ..] => Some((Kind::MlLoggedModel, *id)),
        [_, "traces", id, "artifacts", ..] => Some((Kind::MlTrace, *id)),
        [_, id, "artifacts", ..] => Some((Kind::MlRun, *id)),
        _ => None,
    };
    match candidate {
        Some((kind, id)) if view.get(kind, id).map_err(store_err)?.is_some() => Ok(Some(id.to_owned())),
        _ => Ok(None),
    }
}

/// A file of a listing: its name under the listed directory, whether it is a directory, size.
fn listing(view: &StateView<'_>, dir: &str) -> Result<Vec<(String, bool, Option<u64>)>> {
    let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
    let rows = view.list_by_id_prefix(Kind::MlArtifact, &prefix, None, MAX_LISTED).map_err(store_err)?;
    let mut out: BTreeMap<String, (bool, Option<u64>)> = BTreeMap::new();
    for r in &rows {
        let rest = &r.id[prefix.len()..];
        match rest.split_once('/') {
            Some((sub, _)) => {
                out.insert(sub.to_owned(), (true, None));
            }
            None => {
                let body: ArtifactBody = parse(r)?;
                out.insert(rest.to_owned(), (false, Some(body.size)));
            }
        }
    }
    Ok(out.into_iter().map(|(name, (is_dir, size))| (name, is_dir, size)).collect())
}

fn file_info(path: String, is_dir: bool, size: Option<u64>) -> Value {
    match size {
        Some(size) if !is_dir => json!({ "path": path, "is_dir": false, "file_size": size }),
        _ => json!({ "path": path, "is_dir": true }),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default, deserialize_with = "opt_string")]
    pub path: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub run_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub run_uuid: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub page_token: Option<String>,
}

impl Ml {
    /// The largest artifact a PUT may carry.
    pub fn max_artifact_bytes(&self) -> usize {
        self.core.max_file_bytes()
    }

    /// Stores a file from a stream of its bytes, never holding it whole: the bytes durably in the
    /// blob store, then its resource. Longer than the limit: 413, nothing journaled.
    pub async fn put_artifact_stream<S, E>(&self, caller: &Caller, project: &str, path: &str, body: S) -> Result<Value>
    where
        S: futures::Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let path = check_path(path)?;
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        let limit = self.max_artifact_bytes() as u64;
        let (hash, size) = self.core.blobs().put_stream(data.store.id(), body, limit).await.map_err(|e| match e {
            BlobError::TooLarge(limit) => Error::new(ErrorKind::PayloadTooLarge, format!("artifact is larger than this server's limit of {limit} bytes")),
            BlobError::Body(why) => Error::invalid(format!("the artifact's bytes could not be read: {why}")),
            other => Error::unavailable(format!("cannot store the artifact's bytes: {other}")),
        })?;
        let body = wire::to_body(&ArtifactBody { sha256: hash.as_str().to_owned(), size })?;
        data.commit(Box::new(move |view| {
            if let Some(r) = view.get(Kind::MlArtifact, &path).map_err(store_err)?
                && r.body == body
            {
                return Ok(Vec::new());
            }
            let parent = owner(view, &path)?;
            Ok(vec![Op::Put { kind: Kind::MlArtifact, id: path, parent, body }])
        }))
        .await?;
        Ok(json!({}))
    }

    /// Stores a file held in memory.
    pub async fn put_artifact(&self, caller: &Caller, project: &str, path: &str, bytes: Bytes) -> Result<Value> {
        let one = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]);
        self.put_artifact_stream(caller, project, path, one).await
    }

    /// A file's bytes as a stream, checked against their hash as they pass (a corrupted file
    /// ends in an error, never in bytes taken for whole ones).
    pub async fn get_artifact_stream(&self, caller: &Caller, project: &str, path: &str) -> Result<BoxStream<'static, std::result::Result<Bytes, BlobError>>> {
        let path = check_path(path)?;
        let data = self.core.data(caller, project, Action::MlRead).await?;
        let shown = path.clone();
        let body: ArtifactBody = data
            .read(move |view| match view.get(Kind::MlArtifact, &path).map_err(store_err)? {
                Some(r) => parse(&r),
                None => Err(Error::not_found(format!("Artifact '{shown}' does not exist"))),
            })
            .await?;
        let hash = BlobHash::parse(&body.sha256).map_err(|e| Error::internal(format!("bad artifact record: {e}")))?;
        self.core.blobs().get_stream(data.store.id(), &hash).await.map_err(|e| Error::internal(format!("cannot read the artifact's bytes: {e}")))
    }

    /// A file's bytes, whole in memory.
    pub async fn get_artifact(&self, caller: &Caller, project: &str, path: &str) -> Result<Bytes> {
        use futures::TryStreamExt;
        let parts: Vec<Bytes> = self
            .get_artifact_stream(caller, project, path)
            .await?
            .try_collect()
            .await
            .map_err(|e| Error::internal(format!("cannot read the artifact's bytes: {e}")))?;
        Ok(parts.concat().into())
    }

    /// Deletes a file, or every file under a directory.
    pub async fn delete_artifact(&self, caller: &Caller, project: &str, path: &str) -> Result<Value> {
        let path = check_path(path)?;
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        data.commit(Box::new(move |view| {
            let mut ops = Vec::new();
            if view.get(Kind::MlArtifact, &path).map_err(store_err)?.is_some() {
                ops.push(Op::Delete { kind: Kind::MlArtifact, id: path.clone() });
            }
            for r in view.list_by_id_prefix(Kind::MlArtifact, &format!("{path}/"), None, MAX_LISTED).map_err(store_err)? {
                ops.push(Op::Delete { kind: Kind::MlArtifact, id: r.id });
            }
            if ops.is_empty() {
                return Err(Error::not_found(format!("Artifact '{path}' does not exist")));
            }
            Ok(ops)
        }))
        .await?;
        Ok(json!({}))
    }

    /// `GET mlflow-artifacts/artifacts?path=`: the names directly under a directory.
    pub async fn list_artifacts_proxy(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: ListQuery = wire::request(req)?;
        let dir = match req.path.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
            Some(p) => check_path(p)?,
            None => String::new(),
        };
        self.read(caller, project, move |view| {
            let files: Vec<Value> = listing(view, &dir)?.into_iter().map(|(name, d, s)| file_info(name, d, s)).collect();
            Ok(json!({ "files": files }))
        })
        .await
    }

    /// `GET artifacts/list?run_id=&path=`: a run's artifacts, paths relative to its root.
    pub async fn list_run_artifacts(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: ListQuery = wire::request(req)?;
        let id = req.run_id.or(req.run_uuid).filter(|s| !s.is_empty()).ok_or_else(|| Error::invalid("Missing value for required parameter 'run_id'."))?;
        let sub = match req.path.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
            Some(p) => Some(check_path(p)?),
            None => None,
        };
        self.read(caller, project, move |view| {
            let run = runs::get(view, &id)?;
            let root = root_path(&run.body.artifact_uri).to_owned();
            let dir = match &sub {
                Some(s) => format!("{root}/{s}"),
                None => root,
            };
            let files: Vec<Value> = listing(view, &dir)?
                .into_iter()
                .map(|(name, d, s)| file_info(sub.as_ref().map_or(name.clone(), |s| format!("{s}/{name}")), d, s))
                .collect();
            Ok(json!({ "root_uri": run.body.artifact_uri, "files": files }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths_stay_under_the_root() {
        assert_eq!(check_path("1/abc/artifacts/model/MLmodel").unwrap(), "1/abc/artifacts/model/MLmodel");
        assert_eq!(check_path("/1/x/").unwrap(), "1/x");
        for bad in ["", "a/../b", "a//b", "./a", "a\\b", "a/\n"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn proxy_uris_name_a_path_under_the_root() {
        assert_eq!(root_path("mlflow-artifacts:/1/abc/artifacts"), "1/abc/artifacts");
        assert_eq!(root_path("mlflow-artifacts:///0"), "0");
    }
}
