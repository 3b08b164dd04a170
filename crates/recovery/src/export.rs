//! Export and import of a project's contents as one portable file (`docs/formats/export.md`):
//! a JSON Lines stream of a header, every selected resource exactly as stored (ids, parents,
//! creation and update times, bodies), every referenced blob, and a trailer with counts and a
//! sha256 of everything before it. Secrets are never exported.
//!
//! Import verifies the whole file (version, checksum, blob hashes, counts) before it writes
//! anything, stores the blobs durably, then journals the resources as `put` + `stamp` ops through
//! the project's writer, so the imported state is replayable like any other. It works in bounded
//! memory: the upload is spooled to disk (within `max_import_bytes`, and only while the disk
//! keeps its reserve), every line is read with a bound on its length, verification keeps per
//! resource only a 16-byte hash of its id, and the resources are read again from the spool a
//! chunk at a time to be checked for conflicts and written.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use holdfast_blob::BlobHash;
use holdfast_types::api::ProjectCreate;
use holdfast_types::{Error, ErrorKind, Kind, Micros, Op};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use holdfast_blob::referenced_by;
use holdfast_core::{Action, Caller, Result};

use crate::Recovery;

/// The `format` field of every export file's header.
pub const EXPORT_FORMAT: &str = "holdfast-export";
/// The export format version this build writes and the newest it reads.
pub const EXPORT_FORMAT_VERSION: u32 = 1;
/// Resources journaled per import change (each is a `put` and a `stamp` op).
const RESOURCES_PER_CHANGE: usize = 8192;
/// Bytes of resource lines journaled per import change, at most (a chunk ends at whichever of
/// this and [`RESOURCES_PER_CHANGE`] comes first), so a chunk's memory is bounded too.
const CHUNK_LINE_BYTES: usize = 16 * 1024 * 1024;
/// Longest line of an export file other than a blob line (a header, a resource, the trailer),
/// without its newline.
pub const MAX_RECORD_LINE_BYTES: usize = 16 * 1024 * 1024;
/// What a blob line holds besides its base64 data (type, hash, size, quotes), with room to spare.
const BLOB_LINE_OVERHEAD: usize = 1024;
/// How blob lines start as the encoder writes them; the import skips them by this prefix when
/// it reads the resources again.
const BLOB_PREFIX: &[u8] = br#"{"type":"blob""#;
/// While an upload is spooled, free space is checked again after every this many bytes.
const FREE_SPACE_CHECK_BYTES: u64 = 8 * 1024 * 1024;
/// Bytes of resource lines gathered before a chunk is handed to the HTTP stream.
const CHUNK_BYTES: usize = 256 * 1024;

/// The project an export came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportedProject {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
}

/// The first line of an export file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub project: ExportedProject,
    /// Microseconds since the Unix epoch.
    pub exported_at: Micros,
    /// The source project's last LSN when its state was read.
    pub source_lsn: u64,
    /// The kinds selected for this export.
    pub kinds: Vec<Kind>,
}

/// One resource, as stored at the source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportedResource {
    pub kind: Kind,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub created_us: Micros,
    pub updated_us: Micros,
    pub body: Value,
    /// Set on a connection whose secret was removed: it must be re-keyed after import.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret_removed: bool,
}

/// The last line of an export file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trailer {
    /// Resources per kind.
    pub counts: BTreeMap<String, u64>,
    pub resources: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// sha256 (hex) of every byte of the file before the trailer line.
    pub sha256: String,
}

/// Every line after the header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Resource(ExportedResource),
    /// A blob's bytes, base64 (standard alphabet, padded).
    Blob { sha256: String, bytes: u64, data: String },
    Trailer(Trailer),
}

/// Writes an export file line by line, deterministically, keeping the running checksum.
pub struct Encoder {
    hasher: Sha256,
    counts: BTreeMap<String, u64>,
    resources: u64,
    blobs: u64,
    blob_bytes: u64,
}

fn encode_err(e: serde_json::Error) -> Error {
    Error::internal(format!("cannot encode export line: {e}"))
}

impl Encoder {
    /// Starts a file: the encoder and the header line.
    pub fn start(header: &Header) -> Result<(Self, Vec<u8>)> {
        let mut encoder = Self { hasher: Sha256::new(), counts: BTreeMap::new(), resources: 0, blobs: 0, blob_bytes: 0 };
        let line = encoder.line(header)?;
        Ok((encoder, line))
    }

    fn line(&mut self, value: &impl Serialize) -> Result<Vec<u8>> {
        let mut out = serde_json::to_vec(value).map_err(encode_err)?;
        out.push(b'\n');
        self.hasher.update(&out);
        Ok(out)
    }

    /// Appends a resource line to `out`: the bytes `Record::Resource` serializes to, written
    /// without cloning the resource into a record.
    pub fn resource(&mut self, resource: &ExportedResource, out: &mut Vec<u8>) -> Result<()> {
        *self.counts.entry(resource.kind.as_str().to_owned()).or_default() += 1;
        self.resources += 1;
        let start = out.len();
        out.extend_from_slice(br#"{"type":"resource","#);
        let body_at = out.len();
        serde_json::to_writer(&mut *out, resource).map_err(encode_err)?;
        // The resource's own opening brace gives way to the tag's.
        out.remove(body_at);
        out.push(b'\n');
        self.hasher.update(&out[start..]);
        Ok(())
    }

    /// Appends a blob line to `out`; `hash` is the blob's (its bytes were checked against it
    /// when read). The same bytes `Record::Blob` serializes to: base64 needs no JSON escapes.
    pub fn blob(&mut self, hash: &BlobHash, bytes: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.blobs += 1;
        self.blob_bytes += bytes.len() as u64;
        let start = out.len();
        out.reserve(bytes.len().div_ceil(3) * 4 + 128);
        out.extend_from_slice(format!(r#"{{"type":"blob","sha256":"{hash}","bytes":{},"data":""#, bytes.len()).as_bytes());
        let mut data = String::with_capacity(bytes.len().div_ceil(3) * 4);
        B64.encode_string(bytes, &mut data);
        out.extend_from_slice(data.as_bytes());
        out.extend_from_slice(b"\"}\n");
        self.hasher.update(&out[start..]);
        Ok(())
    }

    /// Ends the file: the trailer and its line (not part of the checksum).
    pub fn finish(self) -> Result<(Trailer, Vec<u8>)> {
        let trailer = Trailer {
            counts: self.counts,
            resources: self.resources,
            blobs: self.blobs,
            blob_bytes: self.blob_bytes,
            sha256: hex::encode(self.hasher.finalize()),
        };
        let mut out = serde_json::to_vec(&Record::Trailer(trailer.clone())).map_err(encode_err)?;
        out.push(b'\n');
        Ok((trailer, out))
    }
}

/// How long a line of an export file may be, so that a line without an end is refused once it
/// passes its bound instead of being read whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineLimits {
    /// A header, resource or trailer line, in bytes without its newline.
    pub record: usize,
    /// A blob line, in bytes without its newline.
    pub blob: usize,
}

impl LineLimits {
    /// The limits of a server whose largest file is `max_file_bytes`: a blob line holds at most
    /// that many bytes in base64 plus its fields; any other line is at most
    /// [`MAX_RECORD_LINE_BYTES`].
    pub fn for_max_file_bytes(max_file_bytes: usize) -> Self {
        let blob = max_file_bytes.div_ceil(3).saturating_mul(4).saturating_add(BLOB_LINE_OVERHEAD);
        Self { record: MAX_RECORD_LINE_BYTES, blob }
    }

    /// No bound: for a file whose reader trusts its source (the CLI checking the export it has
    /// just received from its server).
    pub fn unbounded() -> Self {
        Self { record: usize::MAX, blob: usize::MAX }
    }

    /// The longest any line may be, before it is parsed and its type known.
    fn any(&self) -> usize {
        self.record.max(self.blob)
    }
}

impl Default for LineLimits {
    /// The limits of a server with the default `max_file_bytes`.
    fn default() -> Self {
        Self::for_max_file_bytes(holdfast_core::DEFAULT_MAX_FILE_BYTES)
    }
}

/// An export file read line by line, each line bounded by [`LineLimits::any`].
struct Lines<R> {
    reader: R,
    limits: LineLimits,
    /// The last line read, with its newline.
    line: Vec<u8>,
    /// Its number, from 1.
    number: u64,
    /// Where it starts in the file.
    start: u64,
    /// Bytes read so far.
    read: u64,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R, limits: LineLimits) -> Self {
        Self { reader, limits, line: Vec::new(), number: 0, start: 0, read: 0 }
    }

    /// Reads the next line into `self.line`; false at the end of the file. A line longer than
    /// the limit is refused once its first `limit + 1` bytes are read; a last line without its
    /// newline is a truncated file.
    fn next(&mut self) -> Result<bool> {
        self.line.clear();
        self.start = self.read;
        let max = self.limits.any();
        loop {
            let buf = self.reader.fill_buf().map_err(|e| Error::invalid(format!("cannot read the export file: {e}")))?;
            if buf.is_empty() {
                if self.line.is_empty() {
                    return Ok(false);
                }
                return Err(corrupt("the file is truncated (its last line is incomplete)"));
            }
            let (take, ends) = match buf.iter().position(|b| *b == b'\n') {
                Some(at) => (at + 1, true),
                None => (buf.len(), false),
            };
            if self.line.len() + take - usize::from(ends) > max {
                return Err(corrupt(format!(
                    "line {} is longer than {max} bytes, the most any line can be on this server",
                    self.number + 1
                )));
            }
            self.line.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            self.read += take as u64;
            if ends {
                self.number += 1;
                return Ok(true);
            }
        }
    }

    /// Checks the line just read against the bound for its type.
    fn check(&self, blob: bool) -> Result<()> {
        let (limit, what) = if blob {
            (self.limits.blob, "a blob line can be on this server (its max_file_bytes in base64)")
        } else {
            (self.limits.record, "a header, resource or trailer line can be")
        };
        if self.line.len() - 1 > limit {
            return Err(corrupt(format!("line {} is longer than {limit} bytes, the most {what}", self.number)));
        }
        Ok(())
    }
}

/// A verified export file: what the import needs to know before it writes anything, without the
/// resources themselves (they are read again from the file) or the blobs' bytes.
#[derive(Clone, Debug)]
pub struct Verified {
    pub header: Header,
    /// Blob hash → size.
    pub blobs: BTreeMap<String, u64>,
    /// Where each blob's line starts in the file, once per blob.
    pub blob_offsets: Vec<u64>,
    /// The trailer, whose counts and checksum matched the file.
    pub trailer: Trailer,
    /// Size of the file.
    pub bytes: u64,
    /// Each connection's name and target (connections are few), for the egress rules.
    pub connection_targets: Vec<(String, String)>,
}

fn corrupt(message: impl std::fmt::Display) -> Error {
    Error::invalid(format!("corrupt export file: {message}; nothing was imported"))
}

/// Checks a header line: the format, then a version this build reads.
fn read_header(line: &[u8]) -> Result<Header> {
    let value: Value = serde_json::from_slice(line).map_err(|_| Error::invalid("not a holdfast export file: the first line is not JSON"))?;
    if value.get("format").and_then(Value::as_str) != Some(EXPORT_FORMAT) {
        return Err(Error::invalid(format!("not a holdfast export file: the header's format is not {EXPORT_FORMAT:?}")));
    }
    let version = value.get("version").and_then(Value::as_u64).ok_or_else(|| corrupt("the header has no version"))?;
    if version > u64::from(EXPORT_FORMAT_VERSION) {
        return Err(Error::invalid(format!(
            "this file is export format version {version}, newer than this server reads (version {EXPORT_FORMAT_VERSION}); \
             import it with a newer holdfast"
        )));
    }
    if version != u64::from(EXPORT_FORMAT_VERSION) {
        return Err(Error::invalid(format!("unknown export format version {version}")));
    }
    serde_json::from_value(value).map_err(|e| corrupt(format!("bad header: {e}")))
}

/// What verification keeps of a resource's id to find one that appears twice: 16 bytes of the
/// sha256 of its kind and id (a false "appears twice" would need a 128-bit collision).
fn id_key(kind: Kind, id: &str) -> u128 {
    let digest = Sha256::new().chain_update(kind.as_str()).chain_update([0]).chain_update(id).finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(key)
}

/// A connection's name, for messages.
fn connection_name(r: &ExportedResource) -> &str {
    r.body.get("name").and_then(Value::as_str).unwrap_or(&r.id)
}

/// Reads a whole export file and checks it, with the line limits of a server with the default
/// settings; see [`verify_with`].
pub fn verify<R: BufRead>(reader: R) -> Result<Verified> {
    verify_with(reader, LineLimits::default())
}

/// Reads a whole export file and checks it: header and version, every line (each within
/// `limits`), every blob's hash and size, that every referenced blob is present, that no
/// connection carries a secret, the trailer's counts and checksum, and that nothing follows the
/// trailer. It keeps per resource only a hash of its id, so its memory does not grow with the
/// resources' bodies.
pub fn verify_with<R: BufRead>(reader: R, limits: LineLimits) -> Result<Verified> {
    let mut lines = Lines::new(reader, limits);
    if !lines.next()? {
        return Err(Error::invalid("not a holdfast export file: it is empty"));
    }
    lines.check(false)?;
    let header = read_header(&lines.line)?;
    let mut hasher = Sha256::new();
    hasher.update(&lines.line);
    let (mut blobs, mut blob_offsets) = (BTreeMap::new(), Vec::new());
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut resources = 0u64;
    let mut ids = HashSet::new();
    let mut connection_targets = Vec::new();
    // Blobs referenced before their line came: hash → the first resource that references it.
    let mut missing: BTreeMap<String, String> = BTreeMap::new();
    let trailer = loop {
        if !lines.next()? {
            return Err(corrupt("the file is truncated (it has no trailer)"));
        }
        let record: Record = serde_json::from_slice(&lines.line).map_err(|e| corrupt(format!("bad line {}: {e}", lines.number)))?;
        lines.check(matches!(record, Record::Blob { .. }))?;
        match record {
            Record::Resource(r) => {
                if r.kind == Kind::Project {
                    return Err(corrupt("a project record outside the header"));
                }
                if r.kind == Kind::Divergence {
                    return Err(Error::invalid("divergence records are never imported (they replay only where they were detected); nothing was imported"));
                }
                if !ids.insert(id_key(r.kind, &r.id)) {
                    return Err(corrupt(format!("{} {} appears twice", r.kind.as_str(), r.id)));
                }
                if r.kind == Kind::Connection && r.body.get("secret").is_some_and(|s| !s.is_null()) {
                    return Err(Error::invalid(format!(
                        "connections import without their secret; this file carries one for connection {:?}; \
                         nothing was imported",
                        connection_name(&r)
                    )));
                }
                if r.kind == Kind::Connection {
                    let target = r.body.get("target").and_then(Value::as_str).unwrap_or_default().to_owned();
                    connection_targets.push((connection_name(&r).to_owned(), target));
                }
                *counts.entry(r.kind.as_str().to_owned()).or_default() += 1;
                resources += 1;
                if let Some(hash) = referenced_by(&r.body)
                    && !blobs.contains_key(hash.as_str())
                {
                    missing.entry(hash.as_str().to_owned()).or_insert_with(|| format!("{} {}", r.kind.as_str(), r.id));
                }
            }
            Record::Blob { sha256, bytes: size, data } => {
                let decoded = B64.decode(data.as_bytes()).map_err(|e| corrupt(format!("blob {sha256} is not base64: {e}")))?;
                let actual = BlobHash::of(&decoded);
                if actual.as_str() != sha256 || decoded.len() as u64 != size {
                    return Err(corrupt(format!("blob {sha256} does not match its bytes")));
                }
                missing.remove(&sha256);
                if blobs.insert(sha256, size).is_none() {
                    blob_offsets.push(lines.start);
                }
            }
            Record::Trailer(t) => break t,
        }
        hasher.update(&lines.line);
    };
    if lines.next()? {
        return Err(corrupt("data follows the trailer"));
    }
    if hex::encode(hasher.finalize()) != trailer.sha256 {
        return Err(corrupt("checksum mismatch"));
    }
    let blob_bytes: u64 = blobs.values().sum();
    if trailer.counts != counts || trailer.resources != resources || trailer.blobs != blobs.len() as u64 || trailer.blob_bytes != blob_bytes {
        return Err(corrupt("the trailer's counts do not match the file"));
    }
    if let Some((hash, by)) = missing.iter().next() {
        return Err(corrupt(format!("{by} references blob {hash}, which the file does not hold")));
    }
    Ok(Verified { header, blobs, blob_offsets, trailer, bytes: lines.read, connection_targets })
}

/// Opens a file for reading with a buffer sized for long lines.
fn open_buffered(path: &Path) -> Result<std::io::BufReader<std::fs::File>> {
    let file = std::fs::File::open(path).map_err(|e| Error::invalid(format!("cannot open {}: {e}", path.display())))?;
    Ok(std::io::BufReader::with_capacity(1 << 20, file))
}

/// Verifies the export file at `path`, each line within `limits`.
pub fn verify_file(path: &Path, limits: LineLimits) -> Result<Verified> {
    verify_with(open_buffered(path)?, limits)
}

/// The resources of a verified file, read again from it a chunk at a time.
struct ResourceChunks {
    lines: Lines<std::io::BufReader<std::fs::File>>,
    done: bool,
}

impl ResourceChunks {
    fn open(path: &Path, limits: LineLimits) -> Result<Self> {
        let mut lines = Lines::new(open_buffered(path)?, limits);
        lines.next()?; // the header
        Ok(Self { lines, done: false })
    }

    /// The next resources, at most [`RESOURCES_PER_CHANGE`] of them and about
    /// [`CHUNK_LINE_BYTES`] of their lines; empty after the last.
    fn chunk(&mut self) -> Result<Vec<ExportedResource>> {
        let (mut out, mut size) = (Vec::new(), 0);
        while !self.done && out.len() < RESOURCES_PER_CHANGE && size < CHUNK_LINE_BYTES {
            if !self.lines.next()? {
                self.done = true;
                break;
            }
            if self.lines.line.starts_with(BLOB_PREFIX) {
                continue;
            }
            match serde_json::from_slice::<Record>(&self.lines.line) {
                Ok(Record::Resource(r)) => {
                    size += self.lines.line.len();
                    out.push(r);
                }
                Ok(Record::Blob { .. }) => {}
                Ok(Record::Trailer(_)) => self.done = true,
                Err(_) => return Err(corrupt(format!("line {} changed after verification", self.lines.number))),
            }
        }
        Ok(out)
    }

    /// [`ResourceChunks::chunk`] off the async runtime.
    async fn next(mut self) -> Result<(Self, Vec<ExportedResource>)> {
        tokio::task::spawn_blocking(move || self.chunk().map(|chunk| (self, chunk)))
            .await
            .map_err(|e| Error::internal(format!("import read task failed: {e}")))?
    }
}

/// The blob whose line starts at `offset` in a verified file: its hash and its bytes.
fn read_blob_at(path: &Path, offset: u64, limits: LineLimits) -> Result<(String, Vec<u8>)> {
    let mut reader = open_buffered(path)?;
    reader.seek(std::io::SeekFrom::Start(offset)).map_err(|e| Error::internal(format!("cannot read the upload: {e}")))?;
    let mut lines = Lines::new(reader, limits);
    let changed = || corrupt("a blob line changed after verification");
    if !lines.next()? {
        return Err(changed());
    }
    let Ok(Record::Blob { sha256, data, .. }) = serde_json::from_slice::<Record>(&lines.line) else {
        return Err(changed());
    };
    let bytes = B64.decode(data.as_bytes()).map_err(|e| corrupt(format!("blob {sha256}: {e}")))?;
    Ok((sha256, bytes))
}

/// Parses a comma-separated list of kind names.
pub fn parse_kinds(list: &str) -> Result<Vec<Kind>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            Kind::parse(s).ok_or_else(|| {
                let known: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                Error::invalid(format!("unknown kind {s:?}; expected some of: {}", known.join(", ")))
            })
        })
        .collect()
}

/// Which kinds an export holds: `include` (all when absent) minus `exclude`.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub include: Option<Vec<Kind>>,
    pub exclude: Vec<Kind>,
}

impl Selection {
    fn kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            // Divergence records hold whole changes (contents, actors, sealed secrets): they are
            // the journal's to show (`projects/journal/read`), never an export's.
            .filter(|k| *k != Kind::Project && *k != Kind::Divergence)
            .filter(|k| self.include.as_ref().is_none_or(|i| i.contains(k)))
            .filter(|k| !self.exclude.contains(k))
            .collect()
    }
}

/// What to do with a resource the target already holds with other contents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// Keep the existing resource.
    #[default]
    Skip,
    /// Replace it with the file's.
    Overwrite,
    /// Refuse the whole import (409) before writing anything.
    Fail,
}

/// Per kind: resources written new, overwritten, kept (skipped), and already identical.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KindCounts {
    pub imported: u64,
    pub overwritten: u64,
    pub skipped: u64,
    pub unchanged: u64,
}

/// The outcome of an import.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImportSummary {
    pub project: String,
    pub created_project: bool,
    pub source_project: String,
    pub source_lsn: u64,
    pub format_version: u32,
    pub lsn_before: u64,
    pub lsn_after: u64,
    /// Journal entries this import wrote.
    pub changes: u64,
    pub kinds: BTreeMap<String, KindCounts>,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Size of the file.
    pub bytes: u64,
    /// Connections in the file without their secret (never exported); they need a key in the
    /// target (see docs/formats/export.md).
    pub secrets_removed: Vec<String>,
}

/// An export as a byte stream; an error mid-way ends the stream (the file then has no trailer).
pub type ExportStream = Pin<Box<dyn Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send>>;


/// Removes the spooled upload however the import ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Recovery {
    /// Largest import file accepted, in bytes (`limits.max_import_bytes`).
    pub fn max_import_bytes(&self) -> u64 {
        self.max_import_bytes
    }

    /// Refuses (507) when the data directory's filesystem has less than `need` bytes plus the
    /// reserve (`limits.import_min_free_bytes`) available.
    fn ensure_free_space(&self, need: u64, what: &str) -> Result<()> {
        let free = fs4::available_space(&self.core.data_dir())
            .map_err(|e| Error::internal(format!("cannot read the free space of {}: {e}", self.core.data_dir().display())))?;
        let reserve = self.import_min_free_bytes;
        if free < need.saturating_add(reserve) {
            return Err(Error::new(
                ErrorKind::InsufficientStorage,
                format!(
                    "not enough free disk space {what}: {free} bytes are free where the data directory is, and it needs \
                     {need} bytes plus a reserve of {reserve} (limits.import_min_free_bytes); nothing was imported"
                ),
            ));
        }
        Ok(())
    }

    /// Exports the selected kinds of `project` as a stream of the file's bytes. The state is
    /// read at one LSN before the stream starts; blobs are read one at a time as it goes.
    pub async fn export_project(&self, caller: &Caller, project: &str, selection: Selection) -> Result<(Header, ExportStream)> {
        let data = self.core.data(caller, project, Action::Export).await?;
        // The resources (one statement, so one consistent read) and the LSN they are as of:
        // read again if a commit landed in between.
        let (lsn, all) = data
            .read(|view| loop {
                let before = view.last_lsn().map_err(Error::from)?;
                let all = view.all().map_err(Error::from)?;
                if view.last_lsn().map_err(Error::from)? == before {
                    return Ok((before, all));
                }
            })
            .await?;
        let kinds = selection.kinds();
        let mut project_record = None;
        let mut rows = Vec::new();
        for mut row in all {
            // Keys sorted whatever serde_json's map type is, so an export is deterministic.
            row.body.sort_all_objects();
            if row.kind == Kind::Project {
                project_record = Some(row);
            } else if kinds.contains(&row.kind) {
                rows.push(row);
            }
        }
        let record = project_record.ok_or_else(|| Error::not_found(format!("project {project:?} not found")))?;
        let text = |k: &str| record.body.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let header = Header {
            format: EXPORT_FORMAT.into(),
            version: EXPORT_FORMAT_VERSION,
            project: ExportedProject {
                id: record.id.clone(),
                name: text("name"),
                display_name: text("display_name"),
                description: text("description"),
                tags: serde_json::from_value(record.body.get("tags").cloned().unwrap_or_default()).unwrap_or_default(),
            },
            exported_at: holdfast_types::now_micros(),
            source_lsn: lsn.0,
            kinds: kinds.clone(),
        };
        let rank = |k: Kind| Kind::ALL.iter().position(|x| *x == k).unwrap_or(usize::MAX);
        rows.sort_by_key(|r| (rank(r.kind), r.seq));
        let mut hashes = BTreeSet::new();
        let resources: Vec<ExportedResource> = rows
            .into_iter()
            .map(|row| {
                let mut body = row.body;
                let mut secret_removed = false;
                if row.kind == Kind::Connection
                    && let Some(secret) = body.get_mut("secret")
                    && !secret.is_null()
                {
                    *secret = Value::Null;
                    secret_removed = true;
                }
                if let Some(hash) = referenced_by(&body) {
                    hashes.insert(hash.as_str().to_owned());
                }
                ExportedResource {
                    kind: row.kind,
                    id: row.id,
                    parent: row.parent,
                    created_us: row.created_us,
                    updated_us: row.updated_us,
                    body,
                    secret_removed,
                }
            })
            .collect();

        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(8);
        let (blobs, source, head) = (self.core.blobs().clone(), data.store.id().clone(), header.clone());
        tokio::spawn(async move {
            let produce = async {
                let (mut encoder, line) = Encoder::start(&head)?;
                let mut chunk = line;
                for r in &resources {
                    encoder.resource(r, &mut chunk)?;
                    if chunk.len() >= CHUNK_BYTES && tx.send(Ok(Bytes::from(std::mem::take(&mut chunk)))).await.is_err() {
                        return Ok(()); // the client went away
                    }
                }
                for hash in &hashes {
                    let name = BlobHash::parse(hash).map_err(|e| Error::internal(e.to_string()))?;
                    let bytes = blobs
                        .get(&source, &name)
                        .await
                        .map_err(|e| Error::internal(format!("cannot read blob {hash}: {e}")))?;
                    encoder.blob(&name, &bytes, &mut chunk)?;
                    if tx.send(Ok(Bytes::from(std::mem::take(&mut chunk)))).await.is_err() {
                        return Ok(());
                    }
                }
                let (_, line) = encoder.finish()?;
                chunk.extend(line);
                let _ = tx.send(Ok(Bytes::from(chunk))).await;
                Ok::<(), Error>(())
            };
            if let Err(e) = produce.await {
                tracing::error!(error = %e.message, "export failed mid-stream");
                let _ = tx.send(Err(std::io::Error::other(e.message))).await;
            }
        });
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok((header, Box::pin(stream)))
    }

    /// Imports an export file (streamed in `body`) into `project`, creating the project when it
    /// does not exist. The file is spooled and verified whole before anything is written.
    pub async fn import_project<S, E>(&self, caller: &Caller, project: &str, on_conflict: OnConflict, body: S) -> Result<ImportSummary>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.import_upload(caller, project, on_conflict, None, body).await
    }

    /// [`Service::import_project`] of an upload that announced its `length` (HTTP
    /// `Content-Length`): one above the import limit (413) or the free disk space (507) is
    /// refused before a byte of it is read.
    pub async fn import_upload<S, E>(
        &self,
        caller: &Caller,
        project: &str,
        on_conflict: OnConflict,
        length: Option<u64>,
        body: S,
    ) -> Result<ImportSummary>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        caller.require(Action::Import, &format!("/projects/{project}"))?;
        let spool = self.spool(length, body).await?;
        let limits = LineLimits::for_max_file_bytes(self.core.max_file_bytes());
        let path = spool.0.clone();
        let verified = tokio::task::spawn_blocking(move || verify_file(&path, limits))
            .await
            .map_err(|e| Error::internal(format!("verify task failed: {e}")))??;
        // An imported connection is held to the same rules as one made through the API.
        for (name, target) in &verified.connection_targets {
            self.core.check_imported(Kind::Connection, name, &serde_json::json!({ "target": target }))?;
        }
        // What the import writes (decoded blobs, resources in the database) is about the file's
        // size again, beside the spool.
        self.ensure_free_space(verified.bytes, "to store this import")?;

        let existing = match self.core.project_store(project).await {
            Ok(store) => Some(store),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let (Some(store), OnConflict::Fail) = (&existing, on_conflict) {
            let (mut conflicts, mut first) = (0usize, None);
            let mut chunks = ResourceChunks::open(&spool.0, limits)?;
            loop {
                let (rest, chunk) = chunks.next().await?;
                chunks = rest;
                if chunk.is_empty() {
                    break;
                }
                let found = store
                    .read(move |view| {
                        let mut found = Vec::new();
                        for r in &chunk {
                            if let Some(e) = view.get(r.kind, &r.id)?
                                && !same(&e, r)
                            {
                                found.push(format!("{} {}", r.kind.as_str(), r.id));
                            }
                        }
                        Ok(found)
                    })
                    .await
                    .map_err(Error::from)?;
                conflicts += found.len();
                if first.is_none() {
                    first = found.into_iter().next();
                }
            }
            if let Some(first) = first {
                return Err(Error::conflict(format!(
                    "{conflicts} resources of the file exist in project {project:?} with other contents (first: {first}); \
                     nothing was imported (use --on-conflict skip or overwrite)"
                )));
            }
        }
        let created_project = existing.is_none();
        let store = match existing {
            Some(store) => store,
            None => {
                let p = &verified.header.project;
                self.core.create_project(caller, ProjectCreate {
                    name: project.to_owned(),
                    display_name: Some(p.display_name.clone()),
                    description: Some(p.description.clone()),
                    tags: p.tags.clone(),
                    ..Default::default()
                })
                .await?;
                self.core.project_store(project).await?
            }
        };
        let lsn_before = store.last_lsn().0;

        // Blobs first (DESIGN.md invariant 3): durable before any change references them.
        self.store_blobs(&spool.0, &verified, limits, store.id()).await?;

        let counts: Arc<Mutex<BTreeMap<String, KindCounts>>> = Arc::default();
        let secrets_removed: Arc<Mutex<Vec<String>>> = Arc::default();
        let data = self.core.data_on(store.clone(), caller);
        let mut changes = 0;
        let mut changed = false;
        let mut chunks = ResourceChunks::open(&spool.0, limits)?;
        loop {
            let (rest, chunk) = chunks.next().await?;
            chunks = rest;
            if chunk.is_empty() {
                break;
            }
            let (tally, keyless, core) = (counts.clone(), secrets_removed.clone(), self.core.clone());
            let committed = data
                .commit(Box::new(move |view| {
                    let mut ops = Vec::new();
                    let mut local: BTreeMap<String, KindCounts> = BTreeMap::new();
                    let mut local_keyless = Vec::new();
                    for r in chunk {
                        let entry = local.entry(r.kind.as_str().to_owned()).or_default();
                        let current = view.get(r.kind, &r.id).map_err(Error::from)?;
                        let had_secret = current.as_ref().is_some_and(|e| has_secret(&e.body));
                        let mut body = r.body.clone();
                        // What the target holds once this resource is done with.
                        let mut result_has_secret = has_secret(&body);
                        let mut write = true;
                        if let Some(e) = &current {
                            if same(e, &r) {
                                entry.unchanged += 1;
                                write = false;
                            } else {
                                match on_conflict {
                                    OnConflict::Skip => {
                                        entry.skipped += 1;
                                        write = false;
                                    }
                                    OnConflict::Fail => {
                                        return Err(Error::conflict(format!(
                                            "{} {} was changed during the import",
                                            r.kind.as_str(),
                                            r.id
                                        )));
                                    }
                                    OnConflict::Overwrite => entry.overwritten += 1,
                                }
                            }
                            if write {
                                keep_secret(e, &r, &mut body);
                                result_has_secret = has_secret(&body);
                            } else {
                                result_has_secret = had_secret;
                            }
                        } else {
                            entry.imported += 1;
                        }
                        if r.kind == Kind::Connection && !result_has_secret && (r.secret_removed || had_secret) {
                            local_keyless.push(connection_name(&r).to_owned());
                        }
                        if write {
                            ops.push(Op::Put { kind: r.kind, id: r.id.clone(), parent: r.parent.clone(), body });
                            ops.push(Op::Stamp { kind: r.kind, id: r.id, created_us: r.created_us, updated_us: r.updated_us });
                        }
                    }
                    let mut all = tally.lock().unwrap_or_else(|e| e.into_inner());
                    for (k, c) in local {
                        let t = all.entry(k).or_default();
                        t.imported += c.imported;
                        t.overwritten += c.overwritten;
                        t.skipped += c.skipped;
                        t.unchanged += c.unchanged;
                    }
                    keyless.lock().unwrap_or_else(|e| e.into_inner()).extend(local_keyless);
                    core.check_joining(view, &ops).map_err(|e| Error::new(e.kind, format!("{}; the import stopped here", e.message)))?;
                    Ok(ops)
                }))
                .await?;
            if committed.lsn.is_some() {
                changes += 1;
                changed = true;
            }
        }
        if changed {
            // What the domains derive from the kinds the file brought (the search index) is
            // brought up to date before the import answers.
            let kinds: Vec<Kind> = verified.trailer.counts.keys().filter_map(|k| Kind::parse(k)).collect();
            self.core.catch_up(&data, &kinds).await?;
        }
        let kinds = counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let secrets_removed = std::mem::take(&mut *secrets_removed.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(ImportSummary {
            project: project.to_owned(),
            created_project,
            source_project: verified.header.project.name.clone(),
            source_lsn: verified.header.source_lsn,
            format_version: verified.header.version,
            lsn_before,
            lsn_after: store.last_lsn().0,
            changes,
            kinds,
            blobs: verified.trailer.blobs,
            blob_bytes: verified.trailer.blob_bytes,
            bytes: verified.bytes,
            secrets_removed,
        })
    }

    /// Writes an upload to a temporary file under `<data>/tmp`, refusing one larger than
    /// [`Service::max_import_bytes`] (413), and one the disk cannot hold while it keeps its
    /// reserve (507): up front for an announced `length`, and all along while spooling. The
    /// spool is removed however this ends.
    async fn spool<S, E>(&self, length: Option<u64>, body: S) -> Result<TempFile>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        use tokio::io::AsyncWriteExt;
        let limit = self.max_import_bytes;
        if let Some(length) = length
            && length > limit
        {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "import file is {length} bytes, larger than this server's import limit of {limit} bytes \
                     (limits.max_import_bytes); nothing was imported"
                ),
            ));
        }
        self.ensure_free_space(length.unwrap_or(0), "to take this import")?;
        let dir = self.core.scratch_dir();
        tokio::fs::create_dir_all(&dir).await.map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
        let spool = TempFile(dir.join(format!("import-{}.jsonl", ulid::Ulid::generate().to_string().to_lowercase())));
        let mut file = tokio::fs::File::create(&spool.0)
            .await
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", spool.0.display())))?;
        let write_err = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::StorageFull {
                Error::new(ErrorKind::InsufficientStorage, "the disk filled up while the upload was spooled; nothing was imported")
            } else {
                Error::internal(format!("cannot spool the upload: {e}"))
            }
        };
        let (mut size, mut checked) = (0u64, 0u64);
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::invalid(format!("cannot read the upload: {e}")))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(Error::new(
                    ErrorKind::PayloadTooLarge,
                    format!(
                        "import file is larger than this server's import limit of {limit} bytes (limits.max_import_bytes); \
                         nothing was imported"
                    ),
                ));
            }
            file.write_all(&chunk).await.map_err(write_err)?;
            if size - checked >= FREE_SPACE_CHECK_BYTES {
                checked = size;
                let rest = length.map_or(0, |l| l.saturating_sub(size));
                self.ensure_free_space(rest, "to go on taking this import")?;
            }
        }
        file.flush().await.map_err(write_err)?;
        Ok(spool)
    }

    /// Stores every blob of a verified file in the project's blob store (a blob already there
    /// is not written again), reading one blob line at a time.
    async fn store_blobs(&self, path: &Path, verified: &Verified, limits: LineLimits, project: &holdfast_types::ProjectId) -> Result<()> {
        for &offset in &verified.blob_offsets {
            let path = path.to_owned();
            let (sha256, bytes) = tokio::task::spawn_blocking(move || read_blob_at(&path, offset, limits))
                .await
                .map_err(|e| Error::internal(format!("import read task failed: {e}")))??;
            let hash = self
                .core
                .blobs()
                .put(project, Bytes::from(bytes))
                .await
                .map_err(|e| Error::new(ErrorKind::Unavailable, format!("cannot store blob {sha256}: {e}")))?;
            if hash.as_str() != sha256 {
                return Err(corrupt(format!("blob {sha256} changed after verification")));
            }
        }
        Ok(())
    }
}

/// Whether the stored resource already is what the file holds (a connection whose secret the
/// export removed counts as the same whatever secret it has here).
fn same(current: &holdfast_store::Resource, r: &ExportedResource) -> bool {
    let mut body = r.body.clone();
    keep_secret(current, r, &mut body);
    current.parent == r.parent && current.created_us == r.created_us && current.updated_us == r.updated_us && current.body == body
}

/// Whether a connection's body holds a sealed secret.
fn has_secret(body: &Value) -> bool {
    body.get("secret").is_some_and(|s| !s.is_null())
}

/// A connection imported without its secret keeps the secret the target already has, as long
/// as it still points where that secret was given for: an import that changes the connection's
/// target drops the secret (the connection then needs a key again).
fn keep_secret(current: &holdfast_store::Resource, r: &ExportedResource, body: &mut Value) {
    if r.kind == Kind::Connection
        && body.get("secret").is_none_or(Value::is_null)
        && current.body.get("target") == body.get("target")
        && let Some(secret) = current.body.get("secret").filter(|s| !s.is_null())
        && let Some(map) = body.as_object_mut()
    {
        map.insert("secret".into(), secret.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let header = Header {
            format: EXPORT_FORMAT.into(),
            version: 1,
            project: ExportedProject {
                id: "proj_01m80mg0dm5fvcsadp142rt41a".into(),
                name: "demo".into(),
                display_name: "Demo".into(),
                description: "golden fixture".into(),
                tags: BTreeMap::from([("team".into(), "a".into())]),
            },
            exported_at: 1_795_317_826_030_328,
            source_lsn: 4,
            kinds: vec![Kind::Connection, Kind::Conversation, Kind::Item, Kind::File],
        };
        let (mut enc, mut out) = Encoder::start(&header).expect("header");
        let resources = [
            ExportedResource {
                kind: Kind::Connection,
                id: "conn:upstream".into(),
                parent: None,
                created_us: 1_795_317_826_030_400,
                updated_us: 1_795_317_826_030_400,
                body: serde_json::json!({"name":"upstream","type":"openai","target":"http://127.0.0.1:9/v1","secret":null,"metadata":{}}),
                secret_removed: true,
            },
            ExportedResource {
                kind: Kind::Conversation,
                id: "conv_01m80mg0fd4ahn3x3q759wratv".into(),
                parent: None,
                created_us: 1_795_317_826_031_000,
                updated_us: 1_795_317_826_031_000,
                body: serde_json::json!({"metadata":{"topic":"demo"}}),
                secret_removed: false,
            },
            ExportedResource {
                kind: Kind::Item,
                id: "msg_01m80mg0fd4ahn3x3q759wratw".into(),
                parent: Some("conv_01m80mg0fd4ahn3x3q759wratv".into()),
                created_us: 1_795_317_826_031_000,
                updated_us: 1_795_317_826_031_000,
                body: serde_json::json!({"type":"message","role":"user","status":"completed","content":[{"type":"input_text","text":"hello"}]}),
                secret_removed: false,
            },
            ExportedResource {
                kind: Kind::File,
                id: "file-01m80mg0fd4ahn3x3q759wratx".into(),
                parent: None,
                created_us: 1_795_317_826_032_000,
                updated_us: 1_795_317_826_032_000,
                body: serde_json::json!({"filename":"hello.txt","bytes":5,"purpose":"assistants","sha256":BlobHash::of(b"hello").as_str()}),
                secret_removed: false,
            },
        ];
        for r in &resources {
            enc.resource(r, &mut out).expect("resource");
        }
        enc.blob(&BlobHash::of(b"hello"), b"hello", &mut out).expect("blob");
        out.extend(enc.finish().expect("trailer").1);
        out
    }

    /// The documented v1 file decodes, and the encoder reproduces it byte for byte.
    #[test]
    fn golden_v1_fixture_decodes_and_is_reproduced() {
        let fixture = include_bytes!("../../../tests/fixtures/export-v1.jsonl");
        if std::env::var_os("HOLDFAST_BLESS").is_some() {
            std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/export-v1.jsonl"), sample())
                .expect("bless");
            return;
        }
        let verified = verify(&fixture[..]).expect("fixture verifies");
        assert_eq!(verified.header.version, EXPORT_FORMAT_VERSION);
        assert_eq!(verified.trailer.resources, 4);
        assert_eq!(verified.blobs.len(), 1);
        assert_eq!(verified.trailer.counts.get("item"), Some(&1));
        assert_eq!(sample(), fixture.to_vec(), "the encoder reproduces the golden file");
    }

    #[test]
    fn corrupt_truncated_and_newer_files_are_refused() {
        let good = sample();
        assert!(verify(&good[..]).is_ok());
        // Truncated: drop the trailer.
        let text = String::from_utf8(good.clone()).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        let truncated = format!("{}\n", lines[..lines.len() - 1].join("\n"));
        assert!(verify(truncated.as_bytes()).expect_err("truncated").message.contains("truncated"));
        let cut = &good[..good.len() - 3];
        assert!(verify(cut).is_err());
        // A changed byte in a body: checksum.
        let tampered = text.replacen(r#""text":"hello""#, r#""text":"hellp""#, 1);
        assert_ne!(tampered, text);
        assert!(verify(tampered.as_bytes()).expect_err("tampered").message.contains("checksum"));
        // Newer version.
        let newer = text.replacen("\"version\":1", "\"version\":2", 1);
        let e = verify(newer.as_bytes()).expect_err("newer");
        assert!(e.message.contains("newer"), "{}", e.message);
        assert!(verify(&b"hello\n"[..]).is_err());
    }

    /// A line without an end is refused once it passes the longest a line may be, without being
    /// read whole (here it never ends).
    #[test]
    fn a_line_without_end_is_refused_at_its_limit() {
        use std::io::Read as _;
        let good = sample();
        let header = &good[..=good.iter().position(|b| *b == b'\n').expect("header line")];
        let limits = LineLimits { record: 4096, blob: 8192 };
        let endless = std::io::BufReader::new(header.chain(std::io::repeat(b'x')));
        let e = verify_with(endless, limits).expect_err("endless line");
        assert!(e.message.starts_with("corrupt export file: line 2 is longer than 8192 bytes"), "{}", e.message);
        // With the default limits (32 MiB files), a 100 MiB line is refused the same way.
        let long = std::io::BufReader::new(header.chain(std::io::repeat(b'x').take(100 << 20)));
        let e = verify(long).expect_err("long line");
        assert!(e.message.contains("line 2 is longer than"), "{}", e.message);
    }

    /// A blob line may be as long as a file in base64; any other line only as long as a record.
    #[test]
    fn records_and_blobs_have_their_own_line_limits() {
        let good = sample();
        let lines: Vec<&[u8]> = good.split_inclusive(|b| *b == b'\n').collect();
        let record = lines.iter().filter(|l| !l.starts_with(BLOB_PREFIX)).map(|l| l.len() - 1).max().expect("lines");
        let blob = lines.iter().filter(|l| l.starts_with(BLOB_PREFIX)).map(|l| l.len() - 1).max().expect("blob");
        assert!(blob < record, "the sample's blob is small");
        assert!(verify_with(&good[..], LineLimits { record, blob }).is_ok());
        let e = verify_with(&good[..], LineLimits { record: record - 1, blob: record }).expect_err("record limit");
        assert!(e.message.contains("the most a header, resource or trailer line can be"), "{}", e.message);
        let e = verify_with(&good[..], LineLimits { record, blob: blob - 1 }).expect_err("blob limit");
        assert!(e.message.contains("the most a blob line can be"), "{}", e.message);
        // A blob line for the largest file fits the limit.
        let limits = LineLimits::for_max_file_bytes(5);
        assert!(limits.blob >= blob && verify_with(&good[..], limits).is_ok());
    }

    /// Exports never carry a connection's sealed secret; a file that does is refused whole.
    #[test]
    fn a_connection_with_a_secret_is_refused() {
        let text = String::from_utf8(sample()).expect("utf8");
        let sealed = text.replacen(r#""secret":null"#, r#""secret":{"ciphertext":"AAAA","nonce":"BBBB"}"#, 1);
        assert_ne!(sealed, text);
        let e = verify(sealed.as_bytes()).expect_err("sealed secret");
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(
            e.message.starts_with(r#"connections import without their secret; this file carries one for connection "upstream""#),
            "{}",
            e.message
        );
    }

    /// Verification keeps no resource: what it returns grows with the blobs and the
    /// connections (a name and a target each, for the egress rules), not with the resources.
    #[test]
    fn verified_holds_no_resources() {
        let verified = verify(&sample()[..]).expect("verify");
        let Verified { header: _, blobs, blob_offsets, trailer, bytes: _, connection_targets } = verified;
        assert_eq!((trailer.resources, blobs.len(), blob_offsets.len()), (4, 1, 1));
        assert_eq!(connection_targets, [("upstream".to_owned(), "http://127.0.0.1:9/v1".to_owned())]);
    }

    /// A connection imported without a secret keeps the target's secret only when it still
    /// points at the same target.
    #[test]
    fn a_kept_secret_needs_the_same_target() {
        let current = |target: &str| holdfast_store::Resource {
            kind: Kind::Connection,
            id: "conn:up".into(),
            parent: None,
            seq: 0,
            created_us: 1,
            updated_us: 1,
            body: serde_json::json!({"name": "up", "target": target, "secret": {"ciphertext": "c", "nonce": "n"}}),
        };
        let file = ExportedResource {
            kind: Kind::Connection,
            id: "conn:up".into(),
            parent: None,
            created_us: 1,
            updated_us: 1,
            body: serde_json::json!({"name": "up", "target": "http://a/v1", "secret": null}),
            secret_removed: true,
        };
        let mut body = file.body.clone();
        keep_secret(&current("http://a/v1"), &file, &mut body);
        assert!(has_secret(&body), "same target: the secret is kept");
        let mut body = file.body.clone();
        keep_secret(&current("http://elsewhere/v1"), &file, &mut body);
        assert!(!has_secret(&body), "another target: the secret is dropped");
    }

    #[test]
    fn kinds_parse_and_select() {
        assert_eq!(parse_kinds("item, conversation").expect("kinds"), vec![Kind::Item, Kind::Conversation]);
        assert!(parse_kinds("galaxy").is_err());
        let s = Selection { include: None, exclude: vec![Kind::Response] };
        assert!(!s.kinds().contains(&Kind::Response) && !s.kinds().contains(&Kind::Project));
    }
}
