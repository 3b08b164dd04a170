//! `holdfast bench`: load generators whose figures go into docs/BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use clap::Subcommand;
use holdfast_core::Caller;
use holdfast_node::{Config, Holdfast};
use holdfast_types::RequestId;
use holdfast_types::api::{ProjectCreate, ProjectUpdate};
use serde::Serialize;

use crate::Exit;
use crate::output::{Format, print};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Concurrent writers appending small changes to one project's journal, in process, on a
    /// real data directory (SQLite with fsync): durable changes per second and commit latency.
    Journal {
        /// Concurrent writers.
        #[arg(long, default_value_t = 16)]
        writers: usize,
        /// Changes in all.
        #[arg(long, default_value_t = 40_000)]
        changes: usize,
        /// Directory to create the scratch data directory in [default: the system temp dir].
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Responses over HTTP against an in-process server and an in-process scripted model on
    /// loopback: Holdfast's own overhead per response (total minus the upstream's time).
    Responses {
        /// Responses to create, one after another.
        #[arg(long, default_value_t = 500)]
        count: usize,
        /// Directory to create the scratch data directory in [default: the system temp dir].
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Conversation items over HTTP against an in-process server on loopback: appends per second
    /// and latency with one conversation per client, then list latency on a large conversation.
    Items {
        /// Concurrent clients, each appending to a conversation of its own.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Items appended in all.
        #[arg(long, default_value_t = 16_000)]
        items: usize,
        /// Items in the conversation whose listing is timed.
        #[arg(long, default_value_t = 10_000)]
        list_size: usize,
        /// Directory to create the scratch data directory in [default: the system temp dir].
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Point-in-time restore from a file:// archive: a journal of conversation items shipped as
    /// segments, restored into a new database; against reading the same segment bytes from disk.
    Restore {
        /// Changes in the archived journal.
        #[arg(long, default_value_t = 1_000_000)]
        changes: u64,
        /// Changes per segment.
        #[arg(long, default_value_t = 100_000)]
        segment: u64,
        /// Directory to create the scratch archive and database in [default: the system temp dir].
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Archive lag under a steady write rate, in process, with continuous backup to a file://
    /// archive (default settings: shipped every second or every full segment): the age of the
    /// oldest change not yet in the archive, sampled every 20 ms.
    Archive {
        /// Changes per second, spread over 16 writers.
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        /// How long the load runs.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Directory to create the scratch data directory and archive in [default: the system temp dir].
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Export and import of a project (conversation items and files) over HTTP, against `tar`
    /// creating and extracting an archive of the same project's files, in the same run.
    Export {
        /// Conversation items in the project.
        #[arg(long, default_value_t = 100_000)]
        items: usize,
        /// Files of 1 MiB each (random bytes).
        #[arg(long, default_value_t = 32)]
        files: usize,
        /// Directory to create the scratch data directory in [default: the system temp dir].
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// The ML workspace in process: log_batch throughput with concurrent clients, search_runs
    /// with a metric filter over many runs, peak memory while storing a large artifact.
    Ml(crate::bench_ml::MlArgs),
}

#[derive(Serialize)]
struct JournalReport {
    writers: usize,
    changes: usize,
    seconds: f64,
    changes_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    last_lsn: u64,
}

pub async fn run(cmd: BenchCmd, format: Format) -> Result<(), Exit> {
    match cmd {
        BenchCmd::Journal { writers, changes, dir } => {
            if writers == 0 || changes < writers {
                return Err(Exit::new(2, anyhow!("need at least one writer and one change per writer")));
            }
            in_scratch(dir, format, |data| async move { self::journal(&data, writers, changes).await }).await
        }
        BenchCmd::Responses { count, dir } => {
            if count == 0 {
                return Err(Exit::new(2, anyhow!("count must be at least 1")));
            }
            in_scratch(dir, format, |data| async move { self::responses(&data, count).await }).await
        }
        BenchCmd::Restore { changes, segment, dir } => {
            if changes == 0 || segment == 0 {
                return Err(Exit::new(2, anyhow!("changes and segment must be at least 1")));
            }
            in_scratch(dir, format, |data| async move { self::restore(&data, changes, segment).await }).await
        }
        BenchCmd::Archive { rate, seconds, dir } => {
            if rate == 0 || seconds == 0 {
                return Err(Exit::new(2, anyhow!("rate and seconds must be at least 1")));
            }
            in_scratch(dir, format, |data| async move { self::archive_lag(&data, rate, seconds).await }).await
        }
        BenchCmd::Export { items, files, dir } => {
            if items == 0 {
                return Err(Exit::new(2, anyhow!("items must be at least 1")));
            }
            in_scratch(dir, format, |data| async move { self::export(&data, items, files).await }).await
        }
        BenchCmd::Ml(args) => crate::bench_ml::run(args, format).await,
        BenchCmd::Items { clients, items, list_size, dir } => {
            if clients == 0 || items < clients || list_size == 0 {
                return Err(Exit::new(2, anyhow!("need at least one client, one item per client and a list size")));
            }
            in_scratch(dir, format, |data| async move { self::items(&data, clients, items, list_size).await }).await
        }
    }
}

/// Runs a benchmark in a scratch data directory under `dir` (the system temp dir by default),
/// removes the directory, and prints the report.
async fn in_scratch<R, F, Fut>(dir: Option<std::path::PathBuf>, format: Format, bench: F) -> Result<(), Exit>
where
    F: FnOnce(std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<R, Exit>>,
    R: Serialize,
{
    let data = dir.unwrap_or_else(std::env::temp_dir).join(format!("holdfast-bench-{}", std::process::id()));
    let report = bench(data.clone()).await;
    let _ = std::fs::remove_dir_all(&data);
    print(format, &report?, &[])?;
    Ok(())
}

const BENCH_KEY: &str = "bench-admin-key-0000000000";

/// A real server (the same `app` `serve` runs) on a loopback port, over a scratch directory.
struct ScratchServer {
    node: Holdfast,
    base: String,
    http: reqwest::Client,
}

impl ScratchServer {
    async fn start(data: &std::path::Path) -> Result<Self, Exit> {
        let opened = Holdfast::open(Config::new(data.to_owned(), "bench", Some(BENCH_KEY.into())))
            .map_err(|e| anyhow!("cannot open scratch data directory {}: {e}", data.display()))?;
        let node = opened.node;
        let app = holdfast_api::app(
            holdfast_api::AppState { node: node.clone(), metrics: None },
            holdfast_api::HttpLimits { max_body_bytes: 64 * 1024 * 1024 },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("bind")?;
        let addr = listener.local_addr().context("local addr")?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::builder().build().context("http client")?;
        Ok(Self { node, base: format!("http://{addr}"), http })
    }

    async fn post(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let response = self.http.post(format!("{}{path}", self.base)).bearer_auth(BENCH_KEY).json(body).send().await?;
        anyhow::ensure!(response.status().is_success(), "POST {path}: {}", response.status());
        Ok(response.json().await?)
    }

    async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = self.http.get(format!("{}{path}", self.base)).bearer_auth(BENCH_KEY).send().await?;
        anyhow::ensure!(response.status().is_success(), "GET {path}: {}", response.status());
        Ok(response.json().await?)
    }
}

#[derive(Serialize)]
struct ItemsReport {
    clients: usize,
    items: usize,
    seconds: f64,
    items_per_sec: f64,
    append_p50_ms: f64,
    append_p99_ms: f64,
    list_size: usize,
    list_first_page_p50_ms: f64,
    list_first_page_p99_ms: f64,
    list_middle_page_p50_ms: f64,
    list_middle_page_p99_ms: f64,
}

async fn items(data: &std::path::Path, clients: usize, items: usize, list_size: usize) -> Result<ItemsReport, Exit> {
    let server = Arc::new(ScratchServer::start(data).await?);
    let caller = Caller { principal: server.node.core.authenticate(Some(BENCH_KEY)).map_err(|e| anyhow!("{e}"))?, request_id: RequestId::generate() };
    server
        .node
        .core.create_project(&caller, ProjectCreate { name: "bench".into(), ..Default::default() })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    const CONV: &str = "/api/projects/bench/openai/v1/conversations";

    let per_client = items / clients;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let conv = server.post(CONV, &serde_json::json!({})).await?;
            let id = conv["id"].as_str().context("conversation id")?.to_owned();
            let mut latencies = Vec::with_capacity(per_client);
            for n in 0..per_client {
                let body = serde_json::json!({ "items": [{ "role": "user", "content": format!("client {c} item {n}") }] });
                let t = Instant::now();
                server.post(&format!("{CONV}/{id}/items"), &body).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut appends = Vec::with_capacity(items);
    for task in tasks {
        appends.extend(task.await.context("client panicked")??);
    }
    let seconds = started.elapsed().as_secs_f64();

    // A conversation of `list_size` items, written in batches, then timed listings.
    let conv = server.post(CONV, &serde_json::json!({})).await?;
    let id = conv["id"].as_str().context("conversation id")?.to_owned();
    let mut middle = None;
    for start in (0..list_size).step_by(1000) {
        let batch: Vec<_> = (start..(start + 1000).min(list_size))
            .map(|n| serde_json::json!({ "role": "user", "content": format!("item {n}") }))
            .collect();
        let created = server.post(&format!("{CONV}/{id}/items"), &serde_json::json!({ "items": batch })).await?;
        if middle.is_none() && start + 1000 >= list_size / 2 {
            let index = list_size / 2 - start;
            middle = created["data"][index.min(999)]["id"].as_str().map(str::to_owned);
        }
    }
    let middle = middle.context("middle item")?;
    let mut first_page = Vec::new();
    let mut middle_page = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let page = server.get(&format!("{CONV}/{id}/items?limit=100")).await?;
        first_page.push(t.elapsed());
        if page["data"].as_array().map(Vec::len) != Some(100.min(list_size)) {
            return Err(Exit::error(anyhow!("short first page")));
        }
        let t = Instant::now();
        server.get(&format!("{CONV}/{id}/items?limit=100&order=asc&after={middle}")).await?;
        middle_page.push(t.elapsed());
    }
    server.node.core.shutdown().await;
    Ok(ItemsReport {
        clients,
        items: appends.len(),
        seconds,
        items_per_sec: appends.len() as f64 / seconds,
        append_p50_ms: percentile(&mut appends, 0.50),
        append_p99_ms: percentile(&mut appends, 0.99),
        list_size,
        list_first_page_p50_ms: percentile(&mut first_page, 0.50),
        list_first_page_p99_ms: percentile(&mut first_page, 0.99),
        list_middle_page_p50_ms: percentile(&mut middle_page, 0.50),
        list_middle_page_p99_ms: percentile(&mut middle_page, 0.99),
    })
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    crate::stats::percentile(samples, p)
}

async fn journal(data: &std::path::Path, writers: usize, changes: usize) -> Result<JournalReport, Exit> {
    let opened = Holdfast::open(Config::new(data.to_owned(), "bench", Some(BENCH_KEY.into())))
    .map_err(|e| anyhow!("cannot open scratch data directory {}: {e}", data.display()))?;
    let node = opened.node;
    let caller = Caller { principal: node.core.authenticate(Some(BENCH_KEY)).map_err(|e| anyhow!("{e}"))?, request_id: RequestId::generate() };
    node
        .core.create_project(&caller, ProjectCreate { name: "bench".into(), ..Default::default() })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let per_writer = changes / writers;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let (node, principal) = (node.clone(), caller.principal.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_writer);
            for n in 0..per_writer {
                let caller = Caller { principal: principal.clone(), request_id: RequestId::generate() };
                // At most 32 tag keys (a project has at most 50); values are unique, so every
                // update is a real change.
                let tag = [(format!("w{}", w % 32), Some(format!("{w}-{n}")))].into_iter().collect();
                let update = ProjectUpdate { tags: Some(tag), ..Default::default() };
                let t = Instant::now();
                node.core.update_project(&caller, "bench", update).await.map_err(|e| anyhow!("{e}"))?;
                latencies.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(changes);
    for task in tasks {
        latencies.extend(task.await.context("writer panicked")??);
    }
    let seconds = started.elapsed().as_secs_f64();
    let last_lsn = node.core.project_store("bench").await.map_err(|e| anyhow!("{e}"))?.last_lsn().0;
    node.core.shutdown().await;
    let done = latencies.len();
    Ok(JournalReport {
        writers,
        changes: done,
        seconds,
        changes_per_sec: done as f64 / seconds,
        p50_ms: percentile(&mut latencies, 0.50),
        p99_ms: percentile(&mut latencies, 0.99),
        max_ms: latencies.last().copied().map_or(0.0, ms),
        last_lsn,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}


/// A scripted model: every chat completion streams the same short answer with usage.
async fn start_scripted_model() -> Result<String, Exit> {
    async fn chat() -> impl axum::response::IntoResponse {
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut body = String::new();
        for c in [
            chunk(serde_json::json!({"role": "assistant", "content": ""}), None),
            chunk(serde_json::json!({"content": "Hello "}), None),
            chunk(serde_json::json!({"content": "there."}), None),
            chunk(serde_json::json!({}), Some("stop")),
            serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}),
        ] {
            body.push_str(&format!("data: {c}\n\n"));
        }
        body.push_str("data: [DONE]\n\n");
        ([(axum::http::header::CONTENT_TYPE, "text/event-stream")], body)
    }
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(chat));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("bind")?;
    let addr = listener.local_addr().context("local addr")?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/v1"))
}

#[derive(Serialize)]
struct ResponsesReport {
    count: usize,
    total_p50_ms: f64,
    total_p99_ms: f64,
    upstream_p50_ms: f64,
    upstream_p99_ms: f64,
    overhead_p50_ms: f64,
    overhead_p99_ms: f64,
}

async fn responses(data: &std::path::Path, count: usize) -> Result<ResponsesReport, Exit> {
    let model = start_scripted_model().await?;
    let server = ScratchServer::start(data).await?;
    let caller = Caller { principal: server.node.core.authenticate(Some(BENCH_KEY)).map_err(|e| anyhow!("{e}"))?, request_id: RequestId::generate() };
    let node = &server.node;
    node.core.create_project(&caller, ProjectCreate { name: "bench".into(), ..Default::default() }).await.map_err(|e| anyhow!("{e}"))?;
    let connection = serde_json::from_value(serde_json::json!({"name": "up", "target": model})).context("connection")?;
    node.agents.create_connection(&caller, "bench", connection).await.map_err(|e| anyhow!("{e}"))?;
    let deployment = serde_json::from_value(serde_json::json!({"name": "gpt", "connection": "up", "model": "m"})).context("deployment")?;
    node.agents.create_deployment(&caller, "bench", deployment).await.map_err(|e| anyhow!("{e}"))?;

    // The upstream alone, as Holdfast calls it (a streamed chat completion, read to the end).
    let direct = serde_json::json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut upstream = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let r = server.http.post(format!("{model}/chat/completions")).json(&direct).send().await.context("upstream")?;
        r.bytes().await.context("upstream body")?;
        upstream.push(t.elapsed());
    }
    let mut total = Vec::with_capacity(count);
    for n in 0..count {
        let body = serde_json::json!({"model": "gpt", "input": format!("question {n}")});
        let t = Instant::now();
        let r = server.post("/api/projects/bench/openai/v1/responses", &body).await?;
        total.push(t.elapsed());
        if r["status"] != "completed" {
            return Err(Exit::error(anyhow!("response did not complete: {r}")));
        }
    }
    node.core.shutdown().await;
    let (t50, t99) = (percentile(&mut total, 0.50), percentile(&mut total, 0.99));
    let (u50, u99) = (percentile(&mut upstream, 0.50), percentile(&mut upstream, 0.99));
    Ok(ResponsesReport {
        count,
        total_p50_ms: t50,
        total_p99_ms: t99,
        upstream_p50_ms: u50,
        upstream_p99_ms: u99,
        overhead_p50_ms: t50 - u50,
        overhead_p99_ms: t99 - u99,
    })
}

#[derive(Serialize)]
struct RestoreReport {
    changes: u64,
    segments: usize,
    archive_bytes: u64,
    journal_bytes: u64,
    restore_seconds: f64,
    changes_per_sec: f64,
    archive_mb_per_sec: f64,
    journal_mb_per_sec: f64,
    read_seconds: f64,
    read_mb_per_sec: f64,
    /// restore time / time to read the same archive bytes from disk.
    restore_to_read_ratio: f64,
}

/// Archives a synthetic journal (a conversation and its items, ~300-byte changes), then times a
/// restore of all of it and a plain read of the same objects.
async fn restore(data: &std::path::Path, changes: u64, per_segment: u64) -> Result<RestoreReport, Exit> {
    use holdfast_archive::{Archive, Manifest, Progress, SegmentWriter, Target};
    use holdfast_types::{CHANGE_FORMAT_VERSION, Change, Epoch, Kind, Lsn, Op, ProjectId};
    std::fs::create_dir_all(data).context("scratch dir")?;
    let archive_dir = data.join("archive");
    let archive = Archive::open(&format!("file://{}", archive_dir.display())).map_err(|e| anyhow!("{e}"))?;
    let project = ProjectId::generate();
    let mut manifest = Manifest::new(&project, "bench");
    let change = |lsn: u64| {
        let op = if lsn == 1 {
            Op::Put { kind: Kind::Project, id: project.as_str().into(), parent: None, body: serde_json::json!({"name": "bench"}) }
        } else if lsn == 2 {
            Op::Put { kind: Kind::Conversation, id: "conv_bench".into(), parent: None, body: serde_json::json!({"metadata": {}}) }
        } else {
            Op::Put {
                kind: Kind::Item,
                id: format!("msg_{lsn:012}"),
                parent: Some("conv_bench".into()),
                body: serde_json::json!({"type": "message", "role": "user", "status": "completed",
                    "content": [{"type": "input_text", "text": format!("message number {lsn}: the quick brown fox jumps over the lazy dog")}]}),
            }
        };
        Change { v: CHANGE_FORMAT_VERSION, lsn: Lsn(lsn), epoch: Epoch::FIRST, ts: 1_700_000_000_000_000 + lsn as i64, actor: "prn_bench".into(), request_id: format!("req_{lsn}"), ops: vec![op] }
    };
    let mut journal_bytes = 0u64;
    let mut first = 1;
    while first <= changes {
        let last = (first + per_segment - 1).min(changes);
        let mut writer = SegmentWriter::new(&project, Lsn(first)).map_err(|e| anyhow!("{e}"))?;
        for lsn in first..=last {
            let c = change(lsn);
            journal_bytes += serde_json::to_vec(&c).map(|v| v.len() as u64).unwrap_or(0);
            writer.push(&c).map_err(|e| anyhow!("{e}"))?;
        }
        let (meta, bytes) = writer.finish().map_err(|e| anyhow!("{e}"))?;
        archive.put_segment(&project, &meta, bytes).await.map_err(|e| anyhow!("{e}"))?;
        manifest.archived_lsn = meta.last_lsn;
        manifest.archived_ts = meta.last_ts;
        manifest.segments.push(meta);
        first = last + 1;
    }
    let archive_bytes: u64 = manifest.segments.iter().map(|s| s.bytes).sum();
    // The physical limit: read every segment object from disk.
    let started = Instant::now();
    let mut read = 0u64;
    for segment in &manifest.segments {
        let path = archive_dir.join(project.as_str()).join(segment.key());
        read += std::fs::read(&path).context("read segment")?.len() as u64;
    }
    let read_seconds = started.elapsed().as_secs_f64();
    if read != archive_bytes {
        return Err(Exit::error(anyhow!("read {read} bytes of {archive_bytes}")));
    }
    let plan = manifest.plan(Target::Latest).map_err(|e| anyhow!("{e}"))?;
    let db = data.join("restored.db");
    let started = Instant::now();
    let restored = holdfast_archive::restore(&archive, &manifest, plan, &db, &ProjectId::generate(), false, &Progress::default())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    if restored.lsn != Lsn(changes) {
        return Err(Exit::error(anyhow!("restored to {} of {changes}", restored.lsn)));
    }
    tokio::task::spawn_blocking(move || restored.replayer.finish()).await.context("finish")?.map_err(|e| anyhow!("{e}"))?;
    let restore_seconds = started.elapsed().as_secs_f64();
    let mb = |bytes: u64, secs: f64| bytes as f64 / 1e6 / secs;
    Ok(RestoreReport {
        changes,
        segments: manifest.segments.len(),
        archive_bytes,
        journal_bytes,
        restore_seconds,
        changes_per_sec: changes as f64 / restore_seconds,
        archive_mb_per_sec: mb(archive_bytes, restore_seconds),
        journal_mb_per_sec: mb(journal_bytes, restore_seconds),
        read_seconds,
        read_mb_per_sec: mb(archive_bytes, read_seconds),
        restore_to_read_ratio: restore_seconds / read_seconds,
    })
}

#[derive(Serialize)]
struct ArchiveReport {
    target_rate: u64,
    changes: u64,
    achieved_rate: f64,
    samples: usize,
    lag_p50_s: f64,
    lag_p99_s: f64,
    lag_max_s: f64,
    segments_in_manifest: usize,
    final_archived_lsn: u64,
}

/// Writes at a steady `rate` for `seconds` with the archiver running, and samples the archive
/// lag from outside the archiver: the stored manifest's archived LSN, and the age of the first
/// change after it.
async fn archive_lag(data: &std::path::Path, rate: u64, seconds: u64) -> Result<ArchiveReport, Exit> {
    const WRITERS: u64 = 16;
    let archive_dir = data.join("archive");
    std::fs::create_dir_all(&archive_dir).context("scratch dir")?;
    let mut config = Config::new(data.join("data"), "bench", Some(BENCH_KEY.into()));
    config.recovery.archive = Some(holdfast_recovery::backup::ArchiveConfig::new(&format!("file://{}", archive_dir.display())));
    let opened = Holdfast::open(config).map_err(|e| anyhow!("cannot open scratch data directory: {e}"))?;
    let node = opened.node;
    let caller = Caller { principal: node.core.authenticate(Some(BENCH_KEY)).map_err(|e| anyhow!("{e}"))?, request_id: RequestId::generate() };
    let project = node
        .core.create_project(&caller, ProjectCreate { name: "bench".into(), ..Default::default() })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let archiver = node.recovery.spawn_archiver().context("archiver")?;
    let store = node.core.project_store("bench").await.map_err(|e| anyhow!("{e}"))?;
    let manifest_path = archive_dir.join(project.id.as_str()).join("manifest.json");

    let started = Instant::now();
    let stop_at = started + Duration::from_secs(seconds);
    let period = Duration::from_secs_f64(WRITERS as f64 / rate as f64);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (node, principal) = (node.clone(), caller.principal.clone());
        tasks.push(tokio::spawn(async move {
            // Each writer keeps its own schedule, so a slow write is followed by a catch-up.
            let mut next = started + period.mul_f64(w as f64 / WRITERS as f64);
            let mut n = 0u64;
            while next < stop_at {
                tokio::time::sleep_until(next.into()).await;
                let caller = Caller { principal: principal.clone(), request_id: RequestId::generate() };
                let tag = [(format!("w{w}"), Some(n.to_string()))].into_iter().collect();
                node
                    .core.update_project(&caller, "bench", ProjectUpdate { tags: Some(tag), ..Default::default() })
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
                n += 1;
                next += period;
            }
            Ok::<_, anyhow::Error>(n)
        }));
    }
    let mut lags = Vec::new();
    while Instant::now() < stop_at {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let archived = match tokio::fs::read(&manifest_path).await {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes).context("manifest")?["archived_lsn"]
                .as_u64()
                .unwrap_or(0),
            Err(_) => 0,
        };
        let oldest = store.journal(holdfast_types::Lsn(archived), 1).await.map_err(|e| anyhow!("{e}"))?;
        let lag = oldest.first().map_or(0, |c| (holdfast_types::now_micros() - c.ts).max(0));
        lags.push(Duration::from_micros(lag as u64));
    }
    let mut changes = 0;
    for task in tasks {
        changes += task.await.context("writer panicked")??;
    }
    let achieved_rate = changes as f64 / started.elapsed().as_secs_f64();
    node.core.shutdown().await;
    archiver.await.context("archiver")?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).context("manifest")?).context("manifest")?;
    let samples = lags.len();
    Ok(ArchiveReport {
        target_rate: rate,
        changes,
        achieved_rate,
        samples,
        lag_p50_s: percentile(&mut lags, 0.50) / 1000.0,
        lag_p99_s: percentile(&mut lags, 0.99) / 1000.0,
        lag_max_s: lags.last().copied().map_or(0.0, |d| d.as_secs_f64()),
        segments_in_manifest: manifest["segments"].as_array().map_or(0, Vec::len),
        final_archived_lsn: manifest["archived_lsn"].as_u64().unwrap_or(0),
    })
}

#[derive(Serialize)]
struct ExportReport {
    items: usize,
    files: usize,
    /// The project's files on disk: its database and its blobs.
    project_bytes: u64,
    export_file_bytes: u64,
    export_seconds: f64,
    export_mb_per_sec: f64,
    tar_create_seconds: f64,
    tar_create_mb_per_sec: f64,
    /// export throughput / tar's, both over `project_bytes`.
    export_to_tar: f64,
    import_seconds: f64,
    import_mb_per_sec: f64,
    tar_extract_seconds: f64,
    tar_extract_mb_per_sec: f64,
    import_to_tar: f64,
}

/// Builds a project of `items` conversation items and `files` 1 MiB files, then times an
/// export over HTTP to a file and an import of it into a new project, against `tar` archiving
/// and extracting the project's own files (database and blobs). MB/s are over the project's
/// bytes on disk for all four, so the ratios compare like with like.
async fn export(data: &std::path::Path, items: usize, files: usize) -> Result<ExportReport, Exit> {
    const CONV: &str = "/api/projects/bench/openai/v1/conversations";
    let server = ScratchServer::start(data).await?;
    let caller = Caller { principal: server.node.core.authenticate(Some(BENCH_KEY)).map_err(|e| anyhow!("{e}"))?, request_id: RequestId::generate() };
    let project = server
        .node
        .core.create_project(&caller, ProjectCreate { name: "bench".into(), ..Default::default() })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let conv = server.post(CONV, &serde_json::json!({})).await?;
    let conv = conv["id"].as_str().context("conversation id")?.to_owned();
    for start in (0..items).step_by(1000) {
        let batch: Vec<_> = (start..(start + 1000).min(items))
            .map(|n| serde_json::json!({ "role": "user", "content": format!("item {n}: the quick brown fox jumps over the lazy dog") }))
            .collect();
        server.post(&format!("{CONV}/{conv}/items"), &serde_json::json!({ "items": batch })).await?;
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for f in 0..files {
        // xorshift: incompressible bytes, as uploaded documents mostly are.
        let bytes: Vec<u8> = (0..(1 << 20) / 8)
            .flat_map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed.to_le_bytes()
            })
            .collect();
        let part = reqwest::multipart::Part::bytes(bytes).file_name(format!("doc-{f}.bin"));
        let form = reqwest::multipart::Form::new().text("purpose", "assistants").part("file", part);
        let url = format!("{}/api/projects/bench/openai/v1/files", server.base);
        let response = server.http.post(url).bearer_auth(BENCH_KEY).multipart(form).send().await.context("upload")?;
        if !response.status().is_success() {
            return Err(Exit::error(anyhow!("upload: {}", response.status())));
        }
    }
    // The project on disk as tar sees it: its database (with its WAL) and its blobs.
    let sources: Vec<String> = [format!("projects/{}", project.id), format!("blobs/{}", project.id)]
        .into_iter()
        .filter(|s| data.join(s).exists())
        .collect();
    let project_bytes: u64 = sources.iter().map(|s| dir_bytes(&data.join(s))).sum();

    let out = data.join("bench.hfx");
    let started = Instant::now();
    let mut response = server
        .http
        .get(format!("{}/v1/projects/bench/export", server.base))
        .bearer_auth(BENCH_KEY)
        .send()
        .await
        .context("export")?;
    if !response.status().is_success() {
        return Err(Exit::error(anyhow!("export: {}", response.status())));
    }
    let mut file = tokio::fs::File::create(&out).await.context("export file")?;
    while let Some(chunk) = response.chunk().await.context("export body")? {
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await.context("write export")?;
    }
    file.sync_all().await.context("fsync export")?;
    let export_seconds = started.elapsed().as_secs_f64();
    let export_file_bytes = std::fs::metadata(&out).context("export file")?.len();

    let tarball = data.join("bench.tar");
    let started = Instant::now();
    let mut args = vec!["-cf", tarball.to_str().context("path")?];
    args.extend(sources.iter().map(String::as_str));
    run_tar(data, &args)?;
    std::fs::File::open(&tarball).and_then(|f| f.sync_all()).context("fsync tar")?;
    let tar_create_seconds = started.elapsed().as_secs_f64();

    let body = tokio::fs::read(&out).await.context("read export")?;
    let started = Instant::now();
    let response = server
        .http
        .post(format!("{}/v1/projects/bench-copy/import", server.base))
        .bearer_auth(BENCH_KEY)
        .body(body)
        .send()
        .await
        .context("import")?;
    if !response.status().is_success() {
        return Err(Exit::error(anyhow!("import: {} {}", response.status(), response.text().await.unwrap_or_default())));
    }
    let import_seconds = started.elapsed().as_secs_f64();

    let extract = data.join("extract");
    std::fs::create_dir_all(&extract).context("extract dir")?;
    let started = Instant::now();
    run_tar(&extract, &["-xf", tarball.to_str().context("path")?])?;
    // tar does not fsync; sync the extracted files so both sides pay for durability.
    for s in &sources {
        sync_tree(&extract.join(s)).context("fsync extracted")?;
    }
    let tar_extract_seconds = started.elapsed().as_secs_f64();
    server.node.core.shutdown().await;

    let mb = |secs: f64| project_bytes as f64 / 1e6 / secs;
    Ok(ExportReport {
        items,
        files,
        project_bytes,
        export_file_bytes,
        export_seconds,
        export_mb_per_sec: mb(export_seconds),
        tar_create_seconds,
        tar_create_mb_per_sec: mb(tar_create_seconds),
        export_to_tar: tar_create_seconds / export_seconds,
        import_seconds,
        import_mb_per_sec: mb(import_seconds),
        tar_extract_seconds,
        tar_extract_mb_per_sec: mb(tar_extract_seconds),
        import_to_tar: tar_extract_seconds / import_seconds,
    })
}

fn run_tar(cwd: &std::path::Path, args: &[&str]) -> Result<(), Exit> {
    let status = std::process::Command::new("tar").current_dir(cwd).args(args).status().context("run tar")?;
    if !status.success() {
        return Err(Exit::error(anyhow!("tar {args:?}: {status}")));
    }
    Ok(())
}

/// Bytes of the files under `dir`, recursively.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// fsyncs every file under `dir`, then the directories.
fn sync_tree(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}
