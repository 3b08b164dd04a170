//! The search index of a project's vector stores: a PROJECTION of the journal (DESIGN.md
//! invariant 6), never the only copy of anything.
//!
//! Each project has one tantivy (BM25) index in `<data>/projects/<id>/index/`, holding the
//! chunks of every vector-store file whose status is `completed`. The index follows the
//! journal: it records, in its commit payload, the LSN (and that change's timestamp, to notice
//! a different lineage) it reflects, and [`catch_up`] applies the changes after it — a put of a
//! vector-store file indexes its chunks (read from the blob store), a delete of a file link or
//! of a vector store removes theirs. Every op's effect on the index depends only on the op, so
//! applying a change twice is harmless, and the order of changes alone decides the result.
//!
//! When the directory is missing or unreadable, was built by another format, is ahead of the
//! journal or of another lineage, or the journal no longer holds the changes it needs, the index
//! is rebuilt from the state (the vector-store-file resources) and the blobs, in a temporary
//! directory that replaces the old one only once complete.
//!
//! Same answers after a rebuild: chunking is a pure function of the bytes and the chunking
//! strategy carried in the resource; BM25 statistics are computed over the live documents only
//! ([`LiveStats`] — tantivy's own count deleted documents until a merge, and a merge only
//! estimates token totals), so they depend on which chunks are indexed, never on segment layout
//! or history; ties in score are broken by a hash of (link, chunk), not by document addresses.
//!
//! Writers are serialised per project (one async mutex, held by a spawned task so that a
//! client hanging up cannot leave the index half-written); tantivy work runs on blocking
//! threads.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use holdfast_blob::{BlobHash, BlobStore};
use holdfast_store::{Order, ProjectStore};
use holdfast_types::{Change, Error, Kind, Lsn, Micros, Op, ProjectId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, TermQuery, TermSetQuery};
use tantivy::schema::{
    Field, FAST, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value as _,
};
use tantivy::fieldnorm::FieldNormReader;
use tantivy::query::Bm25StatisticsProvider;
use tantivy::{
    DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, SegmentReader, TERMINATED, TantivyDocument, Term,
};

use holdfast_core::Data;
use holdfast_core::{Result, Service};

/// Bumped whenever chunking, the schema or the tokenizer changes: an index of another format is
/// rebuilt rather than mixed with new chunks.
const INDEX_FORMAT: u32 = 1;

/// Bytes per token in the chunking strategy's token counts (≈ 4 for English text).
pub(crate) const BYTES_PER_TOKEN: usize = 4;
/// OpenAI's `auto` chunking: 800-token chunks overlapping by 400 tokens.
pub(crate) const DEFAULT_CHUNK_TOKENS: u64 = 800;
pub(crate) const DEFAULT_OVERLAP_TOKENS: u64 = 400;

/// Memory the index writer may use before it flushes a segment.
const WRITER_MEMORY: usize = 32 * 1024 * 1024;
/// Changes read from the journal at a time while catching up.
const JOURNAL_PAGE: usize = 256;
/// Uploaded bytes kept in memory for indexing right after an attach (beyond, the index reads
/// the blob store again).
pub(crate) const MAX_PRELOADED_BYTES: usize = 64 * 1024 * 1024;

/// Bytes already read, by sha256, so indexing right after an attach does not read them again.
pub(crate) type Preloaded = HashMap<String, Bytes>;

// ---------------------------------------------------------------------------------------------
// Text and chunking

/// The text of a file, if it is text: valid UTF-8 (a byte-order mark is dropped) without NUL
/// bytes. Anything else cannot be searched.
pub(crate) fn text_of(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    (!text.contains('\0')).then_some(text)
}

/// Splits `text` into windows of at most `max` bytes, each overlapping the previous one by
/// about `overlap` bytes. Windows end at whitespace (a window is cut inside a word only when the
/// word alone is longer than half a window) and start at the beginning of a word; they never
/// start or end with whitespace. Every non-whitespace byte of `text` is in at least one window.
/// A pure function: the same text and sizes always give the same windows.
pub(crate) fn chunk_ranges(text: &str, max: usize, overlap: usize) -> Vec<Range<usize>> {
    let max = max.max(8);
    let overlap = overlap.min(max / 2);
    let len = text.len();
    let mut out = Vec::new();
    let mut start = skip_whitespace(text, 0);
    while start < len {
        let end = if len - start <= max {
            len
        } else {
            let hard = floor_boundary(text, start + max).max(ceil_boundary(text, start + 1));
            // Cut at the last whitespace in the second half of the window, if there is one.
            match text[start..hard].rfind(char::is_whitespace) {
                Some(at) if at > max / 2 => start + at,
                _ => hard,
            }
        };
        let chunk = text[start..end].trim_end();
        if !chunk.is_empty() {
            out.push(start..start + chunk.len());
        }
        if end >= len {
            break;
        }
        // The next window starts `overlap` bytes back, at the beginning of a word.
        let mut next = ceil_boundary(text, end.saturating_sub(overlap).max(start + 1));
        if !starts_word(text, next) {
            next = match text[next..].find(char::is_whitespace) {
                Some(at) => next + at,
                None => len,
            };
        }
        if next >= end {
            next = end;
        }
        start = skip_whitespace(text, next);
    }
    out
}

/// The chunks of `text` under a chunking strategy stored in a vector-store file (normalised by
/// the service: `{"type": "static", "static": {max_chunk_size_tokens, chunk_overlap_tokens}}`).
pub(crate) fn chunks<'t>(text: &'t str, strategy: &Value) -> Vec<&'t str> {
    let (max, overlap) = chunk_tokens(strategy);
    chunk_ranges(text, max as usize * BYTES_PER_TOKEN, overlap as usize * BYTES_PER_TOKEN)
        .into_iter()
        .map(|r| &text[r])
        .collect()
}

pub(crate) fn chunk_tokens(strategy: &Value) -> (u64, u64) {
    let s = &strategy["static"];
    (
        s["max_chunk_size_tokens"].as_u64().unwrap_or(DEFAULT_CHUNK_TOKENS),
        s["chunk_overlap_tokens"].as_u64().unwrap_or(DEFAULT_OVERLAP_TOKENS),
    )
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

fn skip_whitespace(text: &str, i: usize) -> usize {
    match text[i..].find(|c: char| !c.is_whitespace()) {
        Some(at) => i + at,
        None => text.len(),
    }
}

fn starts_word(text: &str, i: usize) -> bool {
    i == 0 || i >= text.len() || text[..i].chars().next_back().is_some_and(char::is_whitespace)
}

// ---------------------------------------------------------------------------------------------
// The index

#[derive(Clone, Copy)]
struct Fields {
    /// The vector-store file's resource id (`vsf:{store}:{file}`).
    link: Field,
    /// The vector store's id.
    store: Field,
    /// Position of the chunk in its file.
    chunk: Field,
    /// Tie-breaker: a hash of (link, chunk), independent of where the document sits.
    key: Field,
    text: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text_options = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default().set_tokenizer("en_stem").set_index_option(IndexRecordOption::WithFreqs),
        )
        .set_stored();
    let fields = Fields {
        link: b.add_text_field("link", STRING | STORED),
        store: b.add_text_field("store", STRING),
        chunk: b.add_u64_field("chunk", STORED),
        key: b.add_u64_field("key", FAST),
        text: b.add_text_field("text", text_options),
    };
    (b.build(), fields)
}

fn fields_of(index: &Index) -> Result<Fields> {
    let s = index.schema();
    let get = |name: &str| s.get_field(name).map_err(|e| Error::internal(format!("search index schema: {e}")));
    Ok(Fields { link: get("link")?, store: get("store")?, chunk: get("chunk")?, key: get("key")?, text: get("text")? })
}

/// What the index reflects, stored as its commit payload.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
struct Payload {
    format: u32,
    /// The last journal change the index reflects…
    lsn: u64,
    /// …and that change's timestamp, so a journal of another lineage is noticed.
    ts: Micros,
}

struct Open {
    /// The store this was opened for: a store opened again (a restarted service in the same
    /// process) may come with a different index directory, so the index is opened again too.
    store: std::sync::Weak<ProjectStore>,
    index: Index,
    reader: IndexReader,
    fields: Fields,
    /// The index reflects the journal up to here (at least as far as its durable payload: changes
    /// that touch no vector store move this without a commit).
    through: Lsn,
    through_ts: Micros,
}

/// One project's index, shared by every request to that project.
pub(crate) struct Projection {
    dir: PathBuf,
    open: Arc<tokio::sync::Mutex<Option<Open>>>,
}

/// The projections of every project this process has searched, by index directory. Kept
/// outside [`Service`] so the service's fields stay untouched; the directory names a project
/// uniquely (project ids are never reused).
static PROJECTIONS: LazyLock<std::sync::Mutex<HashMap<PathBuf, Arc<Projection>>>> =
    LazyLock::new(Default::default);

fn internal(what: &str) -> impl FnOnce(tantivy::TantivyError) -> Error + '_ {
    move |e| Error::internal(format!("search index: {what}: {e}"))
}

fn joined(e: tokio::task::JoinError) -> Error {
    Error::internal(format!("search index task failed: {e}"))
}

/// An index change derived from a journal op.
#[derive(Debug)]
enum Action {
    /// Replace a link's chunks by those of its current body (none unless it is `completed`).
    Put { link: String, store: String, body: Value },
    DeleteLink(String),
    DeleteStore(String),
}

fn actions_of(change: &Change, out: &mut Vec<Action>) {
    for op in &change.ops {
        match op {
            Op::Put { kind: Kind::VectorStoreFile, id, parent, body } => out.push(Action::Put {
                link: id.clone(),
                store: parent.clone().unwrap_or_default(),
                body: body.clone(),
            }),
            Op::Delete { kind: Kind::VectorStoreFile, id } => out.push(Action::DeleteLink(id.clone())),
            Op::Delete { kind: Kind::VectorStore, id } => out.push(Action::DeleteStore(id.clone())),
            _ => {}
        }
    }
}

/// What a catch-up needs, owned, so it can run in a task of its own.
#[derive(Clone)]
struct Ctx {
    store: Arc<ProjectStore>,
    project: ProjectId,
    blobs: BlobStore,
    dir: PathBuf,
}

/// A project's search index, on the core's blobs and project directory.
pub(crate) struct SearchIndex<'a>(pub(crate) &'a Service);

impl SearchIndex<'_> {
    fn projection(&self, project: &ProjectId) -> Arc<Projection> {
        let dir = self.0.project_dir(project).join("index");
        let mut all = PROJECTIONS.lock().unwrap_or_else(|e| e.into_inner());
        if !all.contains_key(&dir) {
            // Forget projects whose directory is gone (deleted projects go to the trash).
            all.retain(|d, _| d.parent().is_some_and(Path::exists));
        }
        all.entry(dir.clone())
            .or_insert_with(|| Arc::new(Projection { dir, open: Arc::new(tokio::sync::Mutex::new(None)) }))
            .clone()
    }

    /// Brings the project's search index up to the journal's last committed change; call after
    /// a commit that touches vector stores, before answering, so what the answer says is
    /// searchable is. `preloaded` holds bytes the caller has read already.
    pub(crate) async fn index_catch_up(&self, data: &Data, preloaded: Preloaded) -> Result<()> {
        self.index_searcher(data, preloaded).await.map(|_| ())
    }

    /// Catches the index up and hands back what searching it needs.
    async fn index_searcher(&self, data: &Data, preloaded: Preloaded) -> Result<(IndexReader, Fields, Index)> {
        let project = data.store.id().clone();
        let projection = self.projection(&project);
        let ctx = Ctx { store: data.store.clone(), project, blobs: self.0.blobs().clone(), dir: projection.dir.clone() };
        let open = projection.open.clone();
        // A task of its own: if the request goes away, the index still ends in a clean state.
        tokio::spawn(async move {
            let mut guard = open.lock_owned().await;
            let result = catch_up(&ctx, &mut guard, &preloaded).await;
            if result.is_err() {
                // Start from the disk next time.
                *guard = None;
            }
            result
        })
        .await
        .map_err(joined)?
    }

    /// Searches vector stores of the project `data` is open on, for the `file_search` tool and
    /// the search endpoint: chunks ranked by BM25 (scores mapped to [0, 1]), as OpenAI search
    /// results (`{file_id, filename, score, attributes, content: [{type: "text", text}]}`), best
    /// first, for one or more query strings, an optional attribute filter (see
    /// [`super::vector_stores::check_filter`]) and an optional minimum score. An unknown vector
    /// store id is a not-found error.
    pub(crate) async fn search_filtered(
        &self,
        data: &Data,
        vector_store_ids: &[String],
        queries: &[String],
        max_results: usize,
        filter: Option<Value>,
        score_threshold: Option<f64>,
    ) -> Result<Vec<Value>> {
        let ids: Vec<String> = vector_store_ids.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
        let check = ids.clone();
        data.read(move |view| {
            for id in &check {
                crate::wire::must_get(view, Kind::VectorStore, id, "vector store", id)?;
            }
            Ok(())
        })
        .await?;
        if ids.is_empty() || max_results == 0 {
            return Ok(Vec::new());
        }
        let (reader, fields, index) = self.index_searcher(data, Preloaded::new()).await?;
        let text = queries.join("\n");
        let mut want = max_results;
        loop {
            let (reader, ids, text, index) = (reader.clone(), ids.clone(), text.clone(), index.clone());
            let hits = tokio::task::spawn_blocking(move || search(&index, &reader, fields, &ids, &text, want))
                .await
                .map_err(joined)??;
            let exhausted = hits.len() < want;
            let filter = filter.clone();
            let results = data
                .read(move |view| {
                    let mut out = Vec::new();
                    for hit in hits {
                        let Some(link) = view.get(Kind::VectorStoreFile, &hit.link).map_err(crate::wire::store_err)? else {
                            continue; // removed since the index was read
                        };
                        let attributes = link.body.get("attributes").cloned().unwrap_or(Value::Null);
                        if let Some(f) = &filter
                            && !filter_matches(f, &attributes)
                        {
                            continue;
                        }
                        let score = unit_score(hit.score);
                        if score_threshold.is_some_and(|t| score < t) {
                            continue;
                        }
                        out.push(serde_json::json!({
                            "file_id": link.body["file_id"],
                            "filename": link.body["filename"],
                            "score": score,
                            "attributes": attributes,
                            "content": [{ "type": "text", "text": hit.text }],
                        }));
                    }
                    Ok(out)
                })
                .await?;
            // Bounded: a filter that matches almost nothing must not pull the whole index into
            // memory; past the cap, fewer results than asked for are returned.
            if results.len() >= max_results || exhausted || want >= MAX_FILTERED_CANDIDATES {
                let mut results = results;
                results.truncate(max_results);
                return Ok(results);
            }
            // Filtered out too many: look deeper.
            want = want.saturating_mul(4);
        }
    }
}

/// BM25 scores are unbounded; OpenAI's are in [0, 1] (and so is `score_threshold`). `s / (s + 1)`
/// maps one onto the other keeping the order: not a probability, but thresholds mean the same
/// thing for every query length.
fn unit_score(bm25: f32) -> f64 {
    let s = f64::from(bm25.max(0.0));
    s / (s + 1.0)
}

/// Most candidates a filtered search ranks before giving up on finding more matches.
const MAX_FILTERED_CANDIDATES: usize = 2000;

struct Hit {
    link: String,
    score: f32,
    text: String,
}

fn search(index: &Index, reader: &IndexReader, f: Fields, stores: &[String], text: &str, limit: usize) -> Result<Vec<Hit>> {
    let mut analyzer = index.tokenizer_for_field(f.text).map_err(internal("tokenizer"))?;
    let mut terms = BTreeSet::new();
    let mut stream = analyzer.token_stream(text);
    while stream.advance() {
        terms.insert(stream.token().text.clone());
    }
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    let words: Vec<(Occur, Box<dyn Query>)> = terms
        .iter()
        .map(|t| {
            let q: Box<dyn Query> =
                Box::new(TermQuery::new(Term::from_field_text(f.text, t), IndexRecordOption::WithFreqs));
            (Occur::Should, q)
        })
        .collect();
    let in_stores = TermSetQuery::new(stores.iter().map(|s| Term::from_field_text(f.store, s)));
    let query = BooleanQuery::new(vec![
        (Occur::Must, Box::new(BooleanQuery::new(words)) as Box<dyn Query>),
        // A filter: adds nothing to the score.
        (Occur::Must, Box::new(ConstScoreQuery::new(Box::new(in_stores), 0.0))),
    ]);
    let collector = TopDocs::with_limit(limit).tweak_score(move |segment: &SegmentReader| {
        let keys = segment.fast_fields().u64("key").ok();
        move |doc, score| (score, Reverse(keys.as_ref().and_then(|k| k.first(doc)).unwrap_or(0)))
    });
    let searcher = reader.searcher();
    let stats = LiveStats::new(&searcher, f.text)?;
    let top = searcher.search_with_statistics_provider(&query, &collector, &stats).map_err(internal("search"))?;
    top.into_iter()
        .map(|((score, _), address)| {
            let doc: TantivyDocument = searcher.doc(address).map_err(internal("read document"))?;
            let get = |field| doc.get_first(field).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            Ok(Hit { link: get(f.link), score, text: get(f.text) })
        })
        .collect()
}

/// BM25 statistics over the live documents, independent of how they are spread over segments:
/// the number of live documents, the number of live documents holding a term, and the text
/// field's token total summed from the live documents' (quantised) field norms.
struct LiveStats<'s> {
    searcher: &'s Searcher,
    text: Field,
    text_tokens: u64,
}

impl<'s> LiveStats<'s> {
    fn new(searcher: &'s Searcher, text: Field) -> Result<Self> {
        let mut text_tokens = 0u64;
        for segment in searcher.segment_readers() {
            let Some(norms) = segment.fieldnorms_readers().get_field(text).map_err(internal("field norms"))? else {
                continue;
            };
            for doc in 0..segment.max_doc() {
                if segment.alive_bitset().is_none_or(|alive| alive.is_alive(doc)) {
                    text_tokens += u64::from(FieldNormReader::id_to_fieldnorm(norms.fieldnorm_id(doc)));
                }
            }
        }
        Ok(Self { searcher, text, text_tokens })
    }
}

impl Bm25StatisticsProvider for LiveStats<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        if field == self.text {
            Ok(self.text_tokens)
        } else {
            Bm25StatisticsProvider::total_num_tokens(self.searcher, field)
        }
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.searcher.num_docs())
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let mut total = 0u64;
        for segment in self.searcher.segment_readers() {
            let inverted = segment.inverted_index(term.field())?;
            match segment.alive_bitset() {
                None => total += u64::from(inverted.doc_freq(term)?),
                Some(alive) => {
                    if let Some(mut postings) = inverted.read_postings(term, IndexRecordOption::Basic)? {
                        let mut doc = postings.doc();
                        while doc != TERMINATED {
                            if alive.is_alive(doc) {
                                total += 1;
                            }
                            doc = postings.advance();
                        }
                    }
                }
            }
        }
        Ok(total)
    }
}

fn tie_key(link: &str, chunk: usize) -> u64 {
    let digest = Sha256::digest(format!("{link}#{chunk}").as_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}

fn payload_of(index: &Index) -> Option<Payload> {
    let metas = index.load_metas().ok()?;
    serde_json::from_str(metas.payload.as_deref()?).ok()
}

/// The change at `lsn` (its timestamp), if the journal still holds it.
async fn change_ts(store: &ProjectStore, lsn: Lsn) -> Result<Option<Micros>> {
    if lsn == Lsn::ZERO {
        return Ok(Some(0));
    }
    let found = store
        .read(move |view| view.journal(Lsn(lsn.0 - 1), 1))
        .await
        .map_err(Error::from)?;
    Ok(found.first().filter(|c| c.lsn == lsn).map(|c| c.ts))
}

fn open_reader(index: &Index) -> Result<IndexReader> {
    index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(internal("open reader"))
}

/// Opens the index on disk if it can be trusted to follow the journal.
async fn open_existing(ctx: &Ctx) -> Result<Option<Open>> {
    if !ctx.dir.join("meta.json").exists() {
        return Ok(None);
    }
    let dir = ctx.dir.clone();
    let opened = tokio::task::spawn_blocking(move || -> Option<(Index, Payload)> {
        let index = Index::open_in_dir(&dir).ok()?;
        let payload = payload_of(&index)?;
        Some((index, payload))
    })
    .await
    .map_err(joined)?;
    let Some((index, payload)) = opened else {
        tracing::warn!(dir = %ctx.dir.display(), "search index unreadable; rebuilding it");
        return Ok(None);
    };
    let (expected, _) = schema();
    if payload.format != INDEX_FORMAT || index.schema() != expected {
        tracing::info!(dir = %ctx.dir.display(), "search index of another format; rebuilding it");
        return Ok(None);
    }
    let lsn = Lsn(payload.lsn);
    if lsn > ctx.store.last_lsn() || change_ts(&ctx.store, lsn).await? != Some(payload.ts) {
        tracing::warn!(dir = %ctx.dir.display(), lsn = payload.lsn, "search index does not follow this journal; rebuilding it");
        return Ok(None);
    }
    let fields = fields_of(&index)?;
    let reader = open_reader(&index)?;
    Ok(Some(Open { store: Arc::downgrade(&ctx.store), index, reader, fields, through: lsn, through_ts: payload.ts }))
}

/// Builds the index afresh from the state and the blobs, in a temporary directory that then
/// replaces the index directory.
async fn rebuild(ctx: &Ctx, preloaded: &Preloaded) -> Result<Open> {
    let started = std::time::Instant::now();
    // The LSN first: a change committed while the state is read is then applied again by the
    // catch-up that follows, which is harmless (see the module comment).
    let lsn = ctx.store.last_lsn();
    let ts = change_ts(&ctx.store, lsn).await?.unwrap_or(0);
    let links = ctx
        .store
        .read(|view| {
            let mut out = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let stores = view.list(Kind::VectorStore, None, after.as_deref(), 256, Order::Asc)?;
                let Some(last) = stores.last() else { break };
                after = Some(last.id.clone());
                for store in &stores {
                    let mut cursor: Option<String> = None;
                    loop {
                        let page = view.list(Kind::VectorStoreFile, Some(&store.id), cursor.as_deref(), 256, Order::Asc)?;
                        let Some(last) = page.last() else { break };
                        cursor = Some(last.id.clone());
                        out.extend(page.into_iter().map(|r| Action::Put { link: r.id, store: store.id.clone(), body: r.body }));
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(Error::from)?;
    let count = links.len();
    let tmp = ctx.dir.with_file_name(format!("index.tmp-{}", std::process::id()));
    let index = {
        let tmp = tmp.clone();
        tokio::task::spawn_blocking(move || -> Result<Index> {
            // Also what a rebuild interrupted by a crash left behind.
            if let Some(parent) = tmp.parent()
                && let Ok(entries) = std::fs::read_dir(parent)
            {
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().starts_with("index.tmp-") {
                        remove_dir(&entry.path())?;
                    }
                }
            }
            std::fs::create_dir_all(&tmp).map_err(|e| Error::internal(format!("cannot create {}: {e}", tmp.display())))?;
            Index::create_in_dir(&tmp, schema().0).map_err(internal("create"))
        })
        .await
        .map_err(joined)??
    };
    let fields = fields_of(&index)?;
    apply(ctx, &index, fields, links, preloaded, Payload { format: INDEX_FORMAT, lsn: lsn.0, ts }).await?;
    drop(index);
    let (dir, from) = (ctx.dir.clone(), tmp);
    let index = tokio::task::spawn_blocking(move || -> Result<Index> {
        remove_dir(&dir)?;
        std::fs::rename(&from, &dir)
            .map_err(|e| Error::internal(format!("cannot move {} into place: {e}", from.display())))?;
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::internal(format!("cannot sync {}: {e}", parent.display())))?;
        }
        Index::open_in_dir(&dir).map_err(internal("open"))
    })
    .await
    .map_err(joined)??;
    tracing::info!(dir = %ctx.dir.display(), files = count, lsn = lsn.0, elapsed_ms = started.elapsed().as_millis() as u64, "search index rebuilt");
    let reader = open_reader(&index)?;
    Ok(Open { store: Arc::downgrade(&ctx.store), fields: fields_of(&index)?, index, reader, through: lsn, through_ts: ts })
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::internal(format!("cannot remove {}: {e}", dir.display()))),
    }
}

/// Opens (or rebuilds) the index if needed, then applies the journal's changes after it.
async fn catch_up(ctx: &Ctx, slot: &mut Option<Open>, preloaded: &Preloaded) -> Result<(IndexReader, Fields, Index)> {
    if slot.as_ref().is_some_and(|open| !open.store.upgrade().is_some_and(|s| Arc::ptr_eq(&s, &ctx.store))) {
        *slot = None;
    }
    if slot.is_some() && !ctx.dir.join("meta.json").exists() {
        tracing::warn!(dir = %ctx.dir.display(), "search index directory vanished; rebuilding it");
        *slot = None;
    }
    if slot.is_none() {
        *slot = match open_existing(ctx).await? {
            Some(open) => Some(open),
            None => Some(rebuild(ctx, preloaded).await?),
        };
    }
    let Some(open) = slot.as_mut() else { return Err(Error::internal("search index not open")) };
    let mut actions = Vec::new();
    let (mut through, mut through_ts) = (open.through, open.through_ts);
    loop {
        let target = ctx.store.last_lsn();
        if through >= target {
            break;
        }
        let after = through;
        let changes = ctx.store.read(move |view| view.journal(after, JOURNAL_PAGE)).await.map_err(Error::from)?;
        let Some(first) = changes.first() else { break };
        if first.lsn != through.next() {
            // The journal no longer holds what the index needs.
            tracing::warn!(dir = %ctx.dir.display(), "journal does not reach back to the search index; rebuilding it");
            *slot = None;
            return Box::pin(catch_up(ctx, slot, preloaded)).await;
        }
        for change in &changes {
            actions_of(change, &mut actions);
            through = change.lsn;
            through_ts = change.ts;
        }
    }
    if !actions.is_empty() {
        let payload = Payload { format: INDEX_FORMAT, lsn: through.0, ts: through_ts };
        apply(ctx, &open.index, open.fields, actions, preloaded, payload).await?;
        let reader = open.reader.clone();
        tokio::task::spawn_blocking(move || reader.reload()).await.map_err(joined)?.map_err(internal("reload"))?;
    }
    open.through = through;
    open.through_ts = through_ts;
    Ok((open.reader.clone(), open.fields, open.index.clone()))
}

/// Applies index actions in one commit carrying `payload`.
async fn apply(
    ctx: &Ctx,
    index: &Index,
    f: Fields,
    actions: Vec<Action>,
    preloaded: &Preloaded,
    payload: Payload,
) -> Result<()> {
    let idx = index.clone();
    let mut writer: IndexWriter = tokio::task::spawn_blocking(move || idx.writer_with_num_threads(1, WRITER_MEMORY))
        .await
        .map_err(joined)?
        .map_err(internal("open writer"))?;
    for action in actions {
        let bytes = match &action {
            Action::Put { body, .. } if body["status"] == "completed" => {
                let sha = body["sha256"].as_str().unwrap_or_default();
                Some(match preloaded.get(sha) {
                    Some(bytes) => bytes.clone(),
                    None => {
                        let hash = BlobHash::parse(sha).map_err(|e| Error::internal(format!("vector store file: {e}")))?;
                        ctx.blobs
                            .get(&ctx.project, &hash)
                            .await
                            .map_err(|e| Error::internal(format!("cannot read file bytes for the search index: {e}")))?
                    }
                })
            }
            _ => None,
        };
        writer = tokio::task::spawn_blocking(move || -> Result<IndexWriter> {
            apply_one(&writer, f, action, bytes)?;
            Ok(writer)
        })
        .await
        .map_err(joined)??;
    }
    let payload = serde_json::to_string(&payload).map_err(|e| Error::internal(e.to_string()))?;
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut commit = writer.prepare_commit().map_err(internal("prepare commit"))?;
        commit.set_payload(&payload);
        commit.commit().map_err(internal("commit"))?;
        writer.wait_merging_threads().map_err(internal("merge"))
    })
    .await
    .map_err(joined)?
}

fn apply_one(writer: &IndexWriter, f: Fields, action: Action, bytes: Option<Bytes>) -> Result<()> {
    match action {
        Action::DeleteLink(link) => {
            writer.delete_term(Term::from_field_text(f.link, &link));
        }
        Action::DeleteStore(store) => {
            writer.delete_term(Term::from_field_text(f.store, &store));
        }
        Action::Put { link, store, body } => {
            writer.delete_term(Term::from_field_text(f.link, &link));
            let Some(bytes) = bytes else { return Ok(()) };
            let Some(text) = text_of(&bytes) else {
                tracing::warn!(link = %link, "a completed vector store file is not text; not indexed");
                return Ok(());
            };
            for (n, chunk) in chunks(text, &body["chunking_strategy"]).into_iter().enumerate() {
                let mut doc = TantivyDocument::default();
                doc.add_text(f.link, &link);
                doc.add_text(f.store, &store);
                doc.add_u64(f.chunk, n as u64);
                doc.add_u64(f.key, tie_key(&link, n));
                doc.add_text(f.text, chunk);
                writer.add_document(doc).map_err(internal("add document"))?;
            }
        }
    }
    Ok(())
}


/// Whether a file's attributes pass a (checked) filter. A missing attribute passes only `ne`
/// and `nin`.
pub(crate) fn filter_matches(f: &Value, attributes: &Value) -> bool {
    let t = f["type"].as_str().unwrap_or_default();
    let all = || f["filters"].as_array().into_iter().flatten();
    match t {
        "and" => all().all(|g| filter_matches(g, attributes)),
        "or" => all().any(|g| filter_matches(g, attributes)),
        _ => {
            let Some(actual) = f["key"].as_str().and_then(|k| attributes.get(k)) else {
                return matches!(t, "ne" | "nin");
            };
            let value = &f["value"];
            let member = || value.as_array().into_iter().flatten().any(|v| same(actual, v));
            match t {
                "eq" => same(actual, value),
                "ne" => !same(actual, value),
                "in" => member(),
                "nin" => !member(),
                _ => {
                    let ord = match (actual, value) {
                        (Value::Number(a), Value::Number(b)) => a.as_f64().partial_cmp(&b.as_f64()),
                        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
                        _ => None,
                    };
                    use std::cmp::Ordering::*;
                    matches!(
                        (t, ord),
                        ("gt", Some(Greater)) | ("gte", Some(Greater | Equal)) | ("lt", Some(Less)) | ("lte", Some(Less | Equal))
                    )
                }
            }
        }
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, max: usize, overlap: usize) -> Vec<Range<usize>> {
        let ranges = chunk_ranges(text, max, overlap);
        let mut covered = vec![false; text.len()];
        for (i, r) in ranges.iter().enumerate() {
            let chunk = &text[r.clone()];
            assert!(!chunk.is_empty(), "empty chunk");
            assert!(chunk.len() <= max.max(8), "chunk {i} has {} bytes, more than {max}", chunk.len());
            assert_eq!(chunk, chunk.trim(), "chunk {i} starts or ends with whitespace");
            if i > 0 {
                let prev = &ranges[i - 1];
                assert!(r.start > prev.start, "chunks move forward");
                assert!(r.end > prev.end, "every chunk adds text");
            }
            covered[r.clone()].iter_mut().for_each(|c| *c = true);
        }
        for (i, c) in text.char_indices() {
            assert!(c.is_whitespace() || covered[i], "byte {i} ({c:?}) is in no chunk");
        }
        ranges
    }

    fn words(n: usize) -> String {
        (0..n).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn short_text_is_one_chunk_and_blank_text_none() {
        assert_eq!(check("  hello world \n", 100, 20), vec![2..13]);
        assert!(chunk_ranges("", 100, 20).is_empty());
        assert!(chunk_ranges(" \n\t ", 100, 20).is_empty());
    }

    #[test]
    fn chunks_cut_at_word_boundaries_and_overlap() {
        let text = words(2000);
        let ranges = check(&text, 3200, 1600);
        assert!(ranges.len() > 4, "{} chunks", ranges.len());
        for (i, r) in ranges.iter().enumerate() {
            // Words are never split: the bytes around a chunk are whitespace or the text's ends.
            assert!(r.start == 0 || text.as_bytes()[r.start - 1] == b' ', "chunk {i} starts inside a word");
            assert!(r.end == text.len() || text.as_bytes()[r.end] == b' ', "chunk {i} ends inside a word");
            if i > 0 {
                let overlap = ranges[i - 1].end.saturating_sub(r.start);
                assert!((1400..=1600).contains(&overlap), "chunk {i} overlaps the previous by {overlap} bytes");
            }
        }
        // Deterministic.
        assert_eq!(ranges, chunk_ranges(&text, 3200, 1600));
    }

    #[test]
    fn no_overlap_means_adjacent_chunks() {
        let text = words(500);
        let ranges = check(&text, 400, 0);
        for w in ranges.windows(2) {
            assert_eq!(w[1].start, w[0].end + 1, "next chunk starts after the separating space");
        }
    }

    #[test]
    fn long_words_and_multibyte_text_are_cut_at_char_boundaries() {
        let text = "é".repeat(1000) + " tail";
        let ranges = check(&text, 301, 100);
        assert!(ranges.len() > 3);
        let text = "x".repeat(10_000);
        let ranges = check(&text, 1000, 0);
        assert_eq!(ranges.len(), 10);
        let mixed = format!("{} {} 😀😀😀 end", "ü".repeat(700), words(300));
        check(&mixed, 257, 64);
    }

    #[test]
    fn strategy_sizes_are_tokens_times_four() {
        let strategy = serde_json::json!({"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}});
        let text = words(1000);
        for chunk in chunks(&text, &strategy) {
            assert!(chunk.len() <= 400);
        }
        assert_eq!(chunk_tokens(&Value::Null), (DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP_TOKENS));
    }

    #[test]
    fn text_detection() {
        assert_eq!(text_of(b"plain"), Some("plain"));
        assert_eq!(text_of("\u{feff}bom".as_bytes()), Some("bom"));
        assert_eq!(text_of(b"nul\0byte"), None);
        assert_eq!(text_of(&[0xff, 0xfe, 0x00]), None);
        assert_eq!(text_of(b""), Some(""));
    }
}
