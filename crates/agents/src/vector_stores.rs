//! Vector stores (`vs_…`), their files (`vsf:{store}:{file}`, children of the store) and file
//! batches (`vsfb_…`, children of the store), searchable through the project's BM25 index
//! ([`super::index`]).
//!
//! Attaching a file reads its bytes and decides, before the change is written, whether it can
//! be searched: UTF-8 text is `completed`, anything else is `failed` with `last_error`
//! `unsupported_file` (the request itself succeeds, as OpenAI's does for files it cannot
//! parse). Processing is synchronous — the index holds a file's chunks before the attach is
//! answered — so nothing is ever `in_progress`, and a batch is `completed` when it is created.
//!
//! `file_counts`, `usage_bytes` and `last_active_at` of a store are computed from its files
//! when read, so they cannot drift from them.

use std::collections::{BTreeMap, BTreeSet};

use holdfast_store::{Order, Resource, StateView};
use holdfast_types::{Error, Kind, Op};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use crate::files::{file_body, link_id};
use crate::index::{DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP_TOKENS, MAX_PRELOADED_BYTES, Preloaded, text_of};
use holdfast_core::Data;
use crate::wire::{List, ListQuery, deleted, filtered_page, metadata, must_get, new_id, page, store_err, unix_seconds};
use holdfast_core::{Action, Caller, Result};

use crate::Agents;

/// Most files one request may attach (OpenAI's batch limit).
pub const MAX_FILES_PER_REQUEST: usize = 2000;
/// Most results of one search (OpenAI's limit).
pub const MAX_SEARCH_RESULTS: usize = 50;
const DEFAULT_SEARCH_RESULTS: usize = 10;
const MAX_QUERY_CHARS: usize = 16_384;

/// Present-but-null is `Some(Value::Null)`, absent is `None`.
fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct VectorStoreCreate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub file_ids: Option<Vec<String>>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub chunking_strategy: Option<Value>,
    #[serde(default)]
    pub expires_after: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct VectorStoreUpdate {
    #[serde(default)]
    pub name: Option<String>,
    /// `null` clears.
    #[serde(default, deserialize_with = "present")]
    pub metadata: Option<Value>,
    /// `null` clears.
    #[serde(default, deserialize_with = "present")]
    pub expires_after: Option<Value>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct VectorStoreFileCreate {
    pub file_id: String,
    #[serde(default)]
    pub attributes: Option<Value>,
    #[serde(default)]
    pub chunking_strategy: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct VectorStoreFileUpdate {
    /// `null` clears.
    #[serde(default)]
    pub attributes: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct FileBatchCreate {
    #[serde(default)]
    pub file_ids: Option<Vec<String>>,
    /// Per-file attributes and chunking; exclusive with `file_ids`.
    #[serde(default)]
    pub files: Option<Vec<VectorStoreFileCreate>>,
    #[serde(default)]
    pub attributes: Option<Value>,
    #[serde(default)]
    pub chunking_strategy: Option<Value>,
}

/// Query of the vector-store file lists: the usual cursor plus a status `filter`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct VectorStoreFileListQuery {
    pub after: Option<String>,
    pub before: Option<String>,
    pub limit: Option<usize>,
    pub order: Option<String>,
    pub filter: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct VectorStoreSearch {
    /// A string or a list of strings.
    pub query: Value,
    #[serde(default)]
    pub max_num_results: Option<usize>,
    /// An OpenAI attribute filter (comparison or compound).
    #[serde(default)]
    pub filters: Option<Value>,
    #[serde(default)]
    pub ranking_options: Option<Value>,
    /// Accepted; queries are not rewritten.
    #[serde(default)]
    pub rewrite_query: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// Validation

/// A chunking strategy as stored: always `static` with both sizes (`auto` is 800/400).
fn chunking(value: Option<&Value>) -> Result<Value> {
    let default = || {
        json!({"type": "static", "static": {
            "max_chunk_size_tokens": DEFAULT_CHUNK_TOKENS, "chunk_overlap_tokens": DEFAULT_OVERLAP_TOKENS}})
    };
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(default()) };
    match value.get("type").and_then(Value::as_str) {
        Some("auto") => Ok(default()),
        Some("static") => {
            let s = &value["static"];
            let max = s["max_chunk_size_tokens"].as_u64().ok_or_else(|| {
                Error::invalid("chunking_strategy.static.max_chunk_size_tokens is required (100 to 4096)")
            })?;
            let overlap = s["chunk_overlap_tokens"].as_u64().ok_or_else(|| {
                Error::invalid("chunking_strategy.static.chunk_overlap_tokens is required")
            })?;
            if !(100..=4096).contains(&max) {
                return Err(Error::invalid(format!("max_chunk_size_tokens must be 100 to 4096, got {max}")));
            }
            if overlap > max / 2 {
                return Err(Error::invalid(format!(
                    "chunk_overlap_tokens must be at most half of max_chunk_size_tokens ({}), got {overlap}",
                    max / 2
                )));
            }
            Ok(json!({"type": "static", "static": {"max_chunk_size_tokens": max, "chunk_overlap_tokens": overlap}}))
        }
        _ => Err(Error::invalid("chunking_strategy.type must be 'auto' or 'static'")),
    }
}

/// File attributes: at most 16 pairs, keys up to 64 characters, values strings (up to 512
/// characters), numbers or booleans.
fn attributes(value: Option<&Value>) -> Result<Value> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(json!({})) };
    let Some(map) = value.as_object() else { return Err(Error::invalid("attributes must be an object")) };
    if map.len() > 16 {
        return Err(Error::invalid(format!("attributes has {} keys; at most 16 are allowed", map.len())));
    }
    for (k, v) in map {
        if k.is_empty() || k.chars().count() > 64 {
            return Err(Error::invalid(format!("attribute key {k:?} must be 1 to 64 characters")));
        }
        match v {
            Value::String(s) if s.chars().count() > 512 => {
                return Err(Error::invalid(format!("attribute {k:?} must be at most 512 characters")));
            }
            Value::String(_) | Value::Number(_) | Value::Bool(_) => {}
            _ => return Err(Error::invalid(format!("attribute {k:?} must be a string, number or boolean"))),
        }
    }
    Ok(value.clone())
}

fn expires_after(value: Option<&Value>) -> Result<Value> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(Value::Null) };
    if value.get("anchor").and_then(Value::as_str) != Some("last_active_at") {
        return Err(Error::invalid("expires_after.anchor must be 'last_active_at'"));
    }
    match value.get("days").and_then(Value::as_u64) {
        Some(days) if (1..=365).contains(&days) => Ok(json!({"anchor": "last_active_at", "days": days})),
        _ => Err(Error::invalid("expires_after.days must be an integer from 1 to 365")),
    }
}

fn name(value: Option<String>) -> Result<String> {
    let name = value.unwrap_or_default();
    if name.chars().count() > 256 {
        return Err(Error::invalid("name must be at most 256 characters"));
    }
    Ok(name)
}

const STATUSES: [&str; 4] = ["in_progress", "completed", "failed", "cancelled"];

/// Checks an OpenAI attribute filter: `{type: eq|ne|gt|gte|lt|lte, key, value}`,
/// `{type: in|nin, key, value: [..]}` or `{type: and|or, filters: [..]}`.
pub(crate) fn check_filter(f: &Value) -> Result<()> {
    let t = f.get("type").and_then(Value::as_str).unwrap_or_default();
    match t {
        "and" | "or" => {
            let Some(filters) = f.get("filters").and_then(Value::as_array) else {
                return Err(Error::invalid(format!("a '{t}' filter needs a 'filters' array")));
            };
            filters.iter().try_for_each(check_filter)
        }
        "eq" | "ne" | "gt" | "gte" | "lt" | "lte" | "in" | "nin" => {
            if !f.get("key").is_some_and(Value::is_string) {
                return Err(Error::invalid(format!("a '{t}' filter needs a string 'key'")));
            }
            let scalar = |v: &Value| v.is_string() || v.is_number() || v.is_boolean();
            let ok = match f.get("value") {
                Some(Value::Array(items)) => matches!(t, "in" | "nin") && items.iter().all(scalar),
                Some(v) => !matches!(t, "in" | "nin") && scalar(v),
                None => false,
            };
            if ok { Ok(()) } else { Err(Error::invalid(format!("bad 'value' for a '{t}' filter"))) }
        }
        other => Err(Error::invalid(format!("unknown filter type {other:?}"))),
    }
}

/// A merge patch (RFC 7396) that turns the flat object `old` into `new`.
fn replace_patch(old: &Value, new: &Value) -> Value {
    let mut patch = Map::new();
    for k in old.as_object().into_iter().flat_map(|o| o.keys()) {
        patch.insert(k.clone(), Value::Null);
    }
    for (k, v) in new.as_object().into_iter().flatten() {
        patch.insert(k.clone(), v.clone());
    }
    Value::Object(patch)
}

// ---------------------------------------------------------------------------------------------
// Wire shapes

fn zero_counts() -> BTreeMap<&'static str, u64> {
    ["in_progress", "completed", "failed", "cancelled", "total"].into_iter().map(|k| (k, 0)).collect()
}

fn store_wire(view: &StateView<'_>, r: &Resource) -> Result<Value> {
    let mut counts = zero_counts();
    let (mut usage, mut last_active) = (0u64, r.updated_us);
    let mut cursor: Option<String> = None;
    loop {
        let links = view.list(Kind::VectorStoreFile, Some(&r.id), cursor.as_deref(), 512, Order::Asc).map_err(store_err)?;
        let Some(last) = links.last() else { break };
        cursor = Some(last.id.clone());
        for link in &links {
            if let Some(status) = link.body["status"].as_str().and_then(|s| STATUSES.iter().find(|k| **k == s)) {
                *counts.entry(status).or_default() += 1;
            }
            *counts.entry("total").or_default() += 1;
            usage += link.body["usage_bytes"].as_u64().unwrap_or(0);
            last_active = last_active.max(link.updated_us);
        }
    }
    let last_active_at = unix_seconds(last_active);
    let expires_after = r.body.get("expires_after").cloned().unwrap_or(Value::Null);
    let expires_at = expires_after["days"].as_i64().map(|d| last_active_at + d * 86_400);
    let mut wire = json!({
        "id": r.id,
        "object": "vector_store",
        "created_at": unix_seconds(r.created_us),
        "name": r.body["name"],
        "usage_bytes": usage,
        "file_counts": counts,
        "status": "completed",
        "expires_after": expires_after,
        "expires_at": expires_at,
        "last_active_at": last_active_at,
        "metadata": r.body.get("metadata").cloned().unwrap_or_else(|| json!({})),
    });
    if let Some(d) = r.body.get("description").filter(|d| !d.is_null()) {
        wire["description"] = d.clone();
    }
    Ok(wire)
}

fn link_wire(r: &Resource) -> Value {
    let b = &r.body;
    json!({
        "id": b["file_id"],
        "object": "vector_store.file",
        "created_at": unix_seconds(r.created_us),
        "usage_bytes": b["usage_bytes"],
        "vector_store_id": b["vector_store_id"],
        "status": b["status"],
        "last_error": b["last_error"],
        "attributes": b["attributes"],
        "chunking_strategy": b["chunking_strategy"],
    })
}

fn batch_wire(r: &Resource) -> Value {
    json!({
        "id": r.id,
        "object": "vector_store.files_batch",
        "created_at": unix_seconds(r.created_us),
        "vector_store_id": r.body["vector_store_id"],
        "status": r.body["status"],
        "file_counts": r.body["file_counts"],
    })
}

fn must_link(view: &StateView<'_>, store: &str, file: &str) -> Result<Resource> {
    must_get(view, Kind::VectorStore, store, "vector store", store)?;
    view.get(Kind::VectorStoreFile, &link_id(store, file))
        .map_err(store_err)?
        .ok_or_else(|| Error::not_found(format!("file {file:?} not found in vector store {store:?}")))
}

fn must_batch(view: &StateView<'_>, store: &str, batch: &str) -> Result<Resource> {
    must_get(view, Kind::VectorStore, store, "vector store", store)?;
    let r = must_get(view, Kind::FileBatch, batch, "file batch", batch)?;
    if r.parent.as_deref() != Some(store) {
        return Err(Error::not_found(format!("file batch {batch:?} not found in vector store {store:?}")));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Attaching files

/// A file to attach, as asked.
struct Attach {
    file_id: String,
    attributes: Value,
    chunking: Value,
}

/// A file to attach, with what its bytes decided: the link's body minus the store and batch.
struct Prepared {
    file_id: String,
    sha256: String,
    body: Value,
}

fn attach_list(ids: Vec<String>, attrs: Option<&Value>, strategy: Option<&Value>) -> Result<Vec<Attach>> {
    let (attributes, chunking) = (attributes(attrs)?, chunking(strategy)?);
    Ok(ids.into_iter().map(|file_id| Attach { file_id, attributes: attributes.clone(), chunking: chunking.clone() }).collect())
}

impl Agents {
    /// Reads the files to attach and decides each link's status from its bytes. The first
    /// mention of a file wins.
    async fn prepare(&self, data: &Data, attaches: Vec<Attach>) -> Result<(Vec<Prepared>, Preloaded)> {
        if attaches.len() > MAX_FILES_PER_REQUEST {
            return Err(Error::invalid(format!("at most {MAX_FILES_PER_REQUEST} files per request")));
        }
        let mut seen = BTreeSet::new();
        let attaches: Vec<Attach> = attaches.into_iter().filter(|a| seen.insert(a.file_id.clone())).collect();
        let ids: Vec<String> = attaches.iter().map(|a| a.file_id.clone()).collect();
        let files = data
            .read(move |view| ids.iter().map(|id| file_body(&must_get(view, Kind::File, id, "file", id)?)).collect::<Result<Vec<_>>>())
            .await?;
        let mut preloaded = Preloaded::new();
        let mut kept = 0usize;
        let mut text: BTreeMap<String, bool> = BTreeMap::new();
        let mut out = Vec::with_capacity(files.len());
        for (attach, file) in attaches.into_iter().zip(files) {
            let is_text = match text.get(&file.sha256) {
                Some(t) => *t,
                None => {
                    let bytes = self.file_bytes(data, &file.sha256).await?;
                    let t = text_of(&bytes).is_some();
                    if t && kept + bytes.len() <= MAX_PRELOADED_BYTES {
                        kept += bytes.len();
                        preloaded.insert(file.sha256.clone(), bytes);
                    }
                    text.insert(file.sha256.clone(), t);
                    t
                }
            };
            let (status, last_error, usage) = if is_text {
                ("completed", Value::Null, file.bytes)
            } else {
                let message = format!(
                    "file {:?} ({}) is not UTF-8 text; only text files can be searched",
                    attach.file_id, file.filename
                );
                ("failed", json!({"code": "unsupported_file", "message": message}), 0)
            };
            out.push(Prepared {
                file_id: attach.file_id.clone(),
                sha256: file.sha256.clone(),
                body: json!({
                    "file_id": attach.file_id,
                    "filename": file.filename,
                    "sha256": file.sha256,
                    "bytes": file.bytes,
                    "status": status,
                    "last_error": last_error,
                    "attributes": attach.attributes,
                    "chunking_strategy": attach.chunking,
                    "usage_bytes": usage,
                }),
            });
        }
        Ok((out, preloaded))
    }
}

/// Ops linking prepared files to `store` (inside a plan: re-checks that each file still exists).
fn link_ops(view: &StateView<'_>, store: &str, batch: Option<&str>, prepared: &[Prepared]) -> Result<Vec<Op>> {
    prepared
        .iter()
        .map(|p| {
            let file = file_body(&must_get(view, Kind::File, &p.file_id, "file", &p.file_id)?)?;
            if file.sha256 != p.sha256 {
                return Err(Error::conflict(format!("file {:?} changed while it was being attached", p.file_id)));
            }
            let mut body = p.body.clone();
            body["vector_store_id"] = json!(store);
            body["batch_id"] = json!(batch);
            Ok(Op::Put { kind: Kind::VectorStoreFile, id: link_id(store, &p.file_id), parent: Some(store.to_owned()), body })
        })
        .collect()
}

fn batch_counts(prepared: &[Prepared]) -> Value {
    let mut counts = zero_counts();
    for p in prepared {
        if let Some(s) = p.body["status"].as_str().and_then(|s| STATUSES.iter().find(|k| **k == s)) {
            *counts.entry(s).or_default() += 1;
        }
    }
    counts.insert("total", prepared.len() as u64);
    json!(counts)
}

// ---------------------------------------------------------------------------------------------
// Operations

impl Agents {
    pub async fn create_vector_store(&self, caller: &Caller, project: &str, req: VectorStoreCreate) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let body = json!({
            "name": name(req.name)?,
            "description": req.description,
            "metadata": metadata(req.metadata)?,
            "expires_after": expires_after(req.expires_after.as_ref())?,
        });
        let attaches = attach_list(req.file_ids.unwrap_or_default(), None, req.chunking_strategy.as_ref())?;
        let (prepared, preloaded) = self.prepare(&data, attaches).await?;
        let id = new_id("vs_");
        let vid = id.clone();
        data.commit(Box::new(move |view| {
            let mut ops = vec![Op::Put { kind: Kind::VectorStore, id: vid.clone(), parent: None, body }];
            ops.extend(link_ops(view, &vid, None, &prepared)?);
            Ok(ops)
        }))
        .await?;
        self.index().index_catch_up(&data, preloaded).await?;
        read_store(&data, &id).await
    }

    pub async fn list_vector_stores(&self, caller: &Caller, project: &str, query: ListQuery) -> Result<List> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        data.read(move |view| {
            let (rows, has_more) = page(view, Kind::VectorStore, None, &query, Order::Desc)?;
            let data = rows.iter().map(|r| store_wire(view, r)).collect::<Result<Vec<_>>>()?;
            Ok(List::new(data, has_more))
        })
        .await
    }

    pub async fn get_vector_store(&self, caller: &Caller, project: &str, id: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        read_store(&data, id).await
    }

    /// Changes the name, metadata (replaced whole) or expiry policy.
    pub async fn update_vector_store(&self, caller: &Caller, project: &str, id: &str, req: VectorStoreUpdate) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let new_name = req.name.map(|n| name(Some(n))).transpose()?;
        let new_metadata = req.metadata.map(|m| metadata(Some(m))).transpose()?;
        let new_expiry = req.expires_after.as_ref().map(|e| expires_after(Some(e))).transpose()?;
        let vid = id.to_owned();
        data.commit(Box::new(move |view| {
            let current = must_get(view, Kind::VectorStore, &vid, "vector store", &vid)?;
            let mut body = current.body.clone();
            if let Some(n) = new_name {
                body["name"] = json!(n);
            }
            if let Some(m) = new_metadata {
                body["metadata"] = json!(m);
            }
            if let Some(e) = new_expiry {
                body["expires_after"] = e;
            }
            if body == current.body {
                return Ok(Vec::new());
            }
            Ok(vec![Op::Put { kind: Kind::VectorStore, id: vid, parent: None, body }])
        }))
        .await?;
        read_store(&data, id).await
    }

    /// Deletes a vector store with its file links and batches (the files themselves stay).
    pub async fn delete_vector_store(&self, caller: &Caller, project: &str, id: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let vid = id.to_owned();
        data.commit(Box::new(move |view| {
            must_get(view, Kind::VectorStore, &vid, "vector store", &vid)?;
            Ok(vec![Op::Delete { kind: Kind::VectorStore, id: vid }])
        }))
        .await?;
        self.index().index_catch_up(&data, Preloaded::new()).await?;
        Ok(deleted(id, "vector_store.deleted"))
    }

    /// Attaches a file; attaching it again replaces its attributes and chunking.
    pub async fn create_vector_store_file(
        &self,
        caller: &Caller,
        project: &str,
        store: &str,
        req: VectorStoreFileCreate,
    ) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let attaches = attach_list(vec![req.file_id.clone()], req.attributes.as_ref(), req.chunking_strategy.as_ref())?;
        let vid = store.to_owned();
        data.read(move |view| must_get(view, Kind::VectorStore, &vid, "vector store", &vid).map(|_| ())).await?;
        let (prepared, preloaded) = self.prepare(&data, attaches).await?;
        let vid = store.to_owned();
        data.commit(Box::new(move |view| {
            must_get(view, Kind::VectorStore, &vid, "vector store", &vid)?;
            link_ops(view, &vid, None, &prepared)
        }))
        .await?;
        self.index().index_catch_up(&data, preloaded).await?;
        self.read_link(&data, store, &req.file_id).await
    }

    async fn read_link(&self, data: &Data, store: &str, file: &str) -> Result<Value> {
        let (vid, fid) = (store.to_owned(), file.to_owned());
        data.read(move |view| Ok(link_wire(&must_link(view, &vid, &fid)?))).await
    }

    pub async fn list_vector_store_files(
        &self,
        caller: &Caller,
        project: &str,
        store: &str,
        query: VectorStoreFileListQuery,
    ) -> Result<List> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let vid = store.to_owned();
        data.read(move |view| {
            must_get(view, Kind::VectorStore, &vid, "vector store", &vid)?;
            link_page(view, &vid, &query, |_| true)
        })
        .await
    }

    pub async fn get_vector_store_file(&self, caller: &Caller, project: &str, store: &str, file: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        self.read_link(&data, store, file).await
    }

    /// Replaces a file link's attributes.
    pub async fn update_vector_store_file(
        &self,
        caller: &Caller,
        project: &str,
        store: &str,
        file: &str,
        req: VectorStoreFileUpdate,
    ) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let new = attributes(req.attributes.as_ref())?;
        let (vid, fid) = (store.to_owned(), file.to_owned());
        data.commit(Box::new(move |view| {
            let link = must_link(view, &vid, &fid)?;
            let old = link.body.get("attributes").cloned().unwrap_or_else(|| json!({}));
            if old == new {
                return Ok(Vec::new());
            }
            // A patch, not a put: the chunks do not change, so the index has nothing to do.
            Ok(vec![Op::Patch {
                kind: Kind::VectorStoreFile,
                id: link.id,
                patch: json!({ "attributes": replace_patch(&old, &new) }),
            }])
        }))
        .await?;
        self.read_link(&data, store, file).await
    }

    /// Detaches a file from a vector store (the file itself stays).
    pub async fn delete_vector_store_file(&self, caller: &Caller, project: &str, store: &str, file: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let (vid, fid) = (store.to_owned(), file.to_owned());
        data.commit(Box::new(move |view| {
            let link = must_link(view, &vid, &fid)?;
            Ok(vec![Op::Delete { kind: Kind::VectorStoreFile, id: link.id }])
        }))
        .await?;
        self.index().index_catch_up(&data, Preloaded::new()).await?;
        Ok(deleted(file, "vector_store.file.deleted"))
    }

    /// The text of an attached file, as one content part.
    pub async fn vector_store_file_content(&self, caller: &Caller, project: &str, store: &str, file: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let (vid, fid) = (store.to_owned(), file.to_owned());
        let link = data.read(move |view| must_link(view, &vid, &fid)).await?;
        let mut parts = Vec::new();
        if link.body["status"] == "completed" {
            let bytes = self.file_bytes(&data, link.body["sha256"].as_str().unwrap_or_default()).await?;
            if let Some(text) = text_of(&bytes) {
                parts.push(json!({"type": "text", "text": text}));
            }
        }
        Ok(json!({"object": "vector_store.file_content.page", "data": parts, "has_more": false, "next_page": null}))
    }

    pub async fn create_file_batch(&self, caller: &Caller, project: &str, store: &str, req: FileBatchCreate) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let attaches = match (req.file_ids, req.files) {
            (Some(_), Some(_)) => return Err(Error::invalid("give either file_ids or files, not both")),
            (Some(ids), None) => attach_list(ids, req.attributes.as_ref(), req.chunking_strategy.as_ref())?,
            (None, Some(files)) => files
                .into_iter()
                .map(|f| {
                    Ok(Attach {
                        attributes: attributes(f.attributes.as_ref())?,
                        chunking: chunking(f.chunking_strategy.as_ref())?,
                        file_id: f.file_id,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            (None, None) => return Err(Error::invalid("file_ids (or files) is required")),
        };
        if attaches.is_empty() {
            return Err(Error::invalid("a file batch needs at least one file"));
        }
        let vid = store.to_owned();
        data.read(move |view| must_get(view, Kind::VectorStore, &vid, "vector store", &vid).map(|_| ())).await?;
        let (prepared, preloaded) = self.prepare(&data, attaches).await?;
        let id = new_id("vsfb_");
        let (vid, bid) = (store.to_owned(), id.clone());
        data.commit(Box::new(move |view| {
            must_get(view, Kind::VectorStore, &vid, "vector store", &vid)?;
            let body = json!({
                "vector_store_id": vid,
                "file_ids": prepared.iter().map(|p| p.file_id.clone()).collect::<Vec<_>>(),
                "status": "completed",
                "file_counts": batch_counts(&prepared),
            });
            let mut ops = vec![Op::Put { kind: Kind::FileBatch, id: bid.clone(), parent: Some(vid.clone()), body }];
            ops.extend(link_ops(view, &vid, Some(&bid), &prepared)?);
            Ok(ops)
        }))
        .await?;
        self.index().index_catch_up(&data, preloaded).await?;
        self.get_file_batch(caller, project, store, &id).await
    }

    pub async fn get_file_batch(&self, caller: &Caller, project: &str, store: &str, batch: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let (vid, bid) = (store.to_owned(), batch.to_owned());
        data.read(move |view| Ok(batch_wire(&must_batch(view, &vid, &bid)?))).await
    }

    /// Batches are processed before they are acknowledged, so there is never anything left to
    /// cancel: answers with the batch as it is (and journals nothing).
    pub async fn cancel_file_batch(&self, caller: &Caller, project: &str, store: &str, batch: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let (vid, bid) = (store.to_owned(), batch.to_owned());
        data.read(move |view| Ok(batch_wire(&must_batch(view, &vid, &bid)?))).await
    }

    /// The files of a vector store that a batch attached (and that no later attach replaced).
    pub async fn list_file_batch_files(
        &self,
        caller: &Caller,
        project: &str,
        store: &str,
        batch: &str,
        query: VectorStoreFileListQuery,
    ) -> Result<List> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let (vid, bid) = (store.to_owned(), batch.to_owned());
        data.read(move |view| {
            must_batch(view, &vid, &bid)?;
            link_page(view, &vid, &query, |r| r.body["batch_id"] == bid.as_str())
        })
        .await
    }

    /// `POST /vector_stores/{id}/search`: the OpenAI search results page.
    pub async fn search_vector_store(&self, caller: &Caller, project: &str, store: &str, req: VectorStoreSearch) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let queries: Vec<String> = match &req.query {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .map(|q| q.as_str().map(str::to_owned).ok_or_else(|| Error::invalid("query must be a string or a list of strings")))
                .collect::<Result<_>>()?,
            _ => return Err(Error::invalid("query must be a string or a list of strings")),
        };
        if queries.is_empty() || queries.iter().all(|q| q.trim().is_empty()) {
            return Err(Error::invalid("query must not be empty"));
        }
        if queries.iter().map(|q| q.chars().count()).sum::<usize>() > MAX_QUERY_CHARS {
            return Err(Error::invalid(format!("query must be at most {MAX_QUERY_CHARS} characters")));
        }
        let max = match req.max_num_results {
            None => DEFAULT_SEARCH_RESULTS,
            Some(n) if (1..=MAX_SEARCH_RESULTS).contains(&n) => n,
            Some(n) => return Err(Error::invalid(format!("max_num_results must be 1 to {MAX_SEARCH_RESULTS}, got {n}"))),
        };
        let (filters, threshold) = search_options(req.filters, req.ranking_options.as_ref())?;
        let data_results = self.index().search_filtered(&data, &[store.to_owned()], &queries, max, filters, threshold).await?;
        Ok(json!({
            "object": "vector_store.search_results.page",
            "search_query": queries,
            "data": data_results,
            "has_more": false,
            "next_page": null,
        }))
    }
}

/// The attribute filter and minimum score of a search, from the search endpoint or from a
/// `file_search` tool: `filters` (checked) and `ranking_options.score_threshold` (0 to 1).
pub(crate) fn search_options(filters: Option<Value>, ranking: Option<&Value>) -> Result<(Option<Value>, Option<f64>)> {
    let filters = filters.filter(|f| !f.is_null());
    if let Some(f) = &filters {
        check_filter(f)?;
    }
    let threshold = match ranking.map(|r| &r["score_threshold"]) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64().filter(|t| (0.0..=1.0).contains(t)).map(Some).ok_or_else(|| {
            Error::invalid("ranking_options.score_threshold must be a number from 0 to 1")
        })?,
        Some(_) => return Err(Error::invalid("ranking_options.score_threshold must be a number from 0 to 1")),
    };
    Ok((filters, threshold))
}

async fn read_store(data: &Data, id: &str) -> Result<Value> {
    let vid = id.to_owned();
    data.read(move |view| store_wire(view, &must_get(view, Kind::VectorStore, &vid, "vector store", &vid)?)).await
}

/// A page of a store's file links passing `keep` and the query's status `filter`; the cursor
/// is a file id, as on the wire.
fn link_page(view: &StateView<'_>, store: &str, query: &VectorStoreFileListQuery, keep: impl Fn(&Resource) -> bool) -> Result<List> {
    let list = ListQuery { limit: query.limit, order: query.order.clone(), ..Default::default() };
    let (limit, order) = (list.limit()?, list.order(Order::Desc)?);
    if let Some(status) = &query.filter
        && !STATUSES.contains(&status.as_str())
    {
        return Err(Error::invalid(format!("filter must be one of {}, got {status:?}", STATUSES.join(", "))));
    }
    let after = match &query.after {
        Some(file) => {
            let id = link_id(store, file);
            if view.get(Kind::VectorStoreFile, &id).map_err(store_err)?.is_none() {
                return Err(Error::invalid(format!("'after' cursor {file:?} does not name a file in this vector store")));
            }
            Some(id)
        }
        None => None,
    };
    let status = query.filter.clone();
    let (rows, has_more) = filtered_page(view, Kind::VectorStoreFile, Some(store), after, limit, order, |r| {
        status.as_deref().is_none_or(|s| r.body["status"] == s) && keep(r)
    })?;
    Ok(List::new(rows.iter().map(link_wire).collect(), has_more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::filter_matches;

    #[test]
    fn chunking_strategies_normalise() {
        let auto = chunking(Some(&json!({"type": "auto"}))).expect("auto");
        assert_eq!(auto, chunking(None).expect("default"));
        assert_eq!(auto["static"]["max_chunk_size_tokens"], 800);
        let s = json!({"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 100}});
        assert_eq!(chunking(Some(&s)).expect("static"), s);
        for bad in [
            json!({"type": "static", "static": {"max_chunk_size_tokens": 50, "chunk_overlap_tokens": 0}}),
            json!({"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 101}}),
            json!({"type": "static"}),
            json!({"type": "semantic"}),
        ] {
            assert!(chunking(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn attributes_are_checked() {
        assert!(attributes(Some(&json!({"a": "x", "b": 1.5, "c": true}))).is_ok());
        assert!(attributes(Some(&json!({"a": {"nested": 1}}))).is_err());
        assert!(attributes(Some(&json!([1]))).is_err());
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(attributes(Some(&Value::Object(many))).is_err());
    }

    #[test]
    fn filters_match_attributes() {
        let attrs = json!({"team": "core", "year": 2024, "public": true});
        let yes = |f: Value| {
            check_filter(&f).expect("valid filter");
            filter_matches(&f, &attrs)
        };
        assert!(yes(json!({"type": "eq", "key": "team", "value": "core"})));
        assert!(!yes(json!({"type": "ne", "key": "team", "value": "core"})));
        assert!(yes(json!({"type": "gte", "key": "year", "value": 2024.0})));
        assert!(!yes(json!({"type": "lt", "key": "year", "value": 2024})));
        assert!(yes(json!({"type": "in", "key": "team", "value": ["x", "core"]})));
        assert!(yes(json!({"type": "nin", "key": "missing", "value": ["x"]})));
        assert!(!yes(json!({"type": "eq", "key": "missing", "value": "x"})));
        assert!(yes(json!({"type": "and", "filters": [
            {"type": "eq", "key": "public", "value": true},
            {"type": "or", "filters": [{"type": "eq", "key": "team", "value": "x"}, {"type": "gt", "key": "year", "value": 2000}]}
        ]})));
        assert!(check_filter(&json!({"type": "eq", "key": "a"})).is_err());
        assert!(check_filter(&json!({"type": "in", "key": "a", "value": "x"})).is_err());
        assert!(check_filter(&json!({"type": "like", "key": "a", "value": "x"})).is_err());
    }

    #[test]
    fn replace_patch_replaces() {
        let mut old = json!({"attributes": {"a": 1, "b": 2}});
        let patch = json!({"attributes": replace_patch(&old["attributes"], &json!({"b": 3, "c": 4}))});
        json_patch_merge(&mut old, &patch);
        assert_eq!(old, json!({"attributes": {"b": 3, "c": 4}}));
    }

    /// RFC 7396, as the store applies it.
    fn json_patch_merge(target: &mut Value, patch: &Value) {
        if let Value::Object(p) = patch {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    json_patch_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        } else {
            *target = patch.clone();
        }
    }
}
