//! `holdfast bench ml`: the ML workspace in process (issue 16's in-process targets), driving
//! `node.ml` with MLflow-shaped JSON requests as the facade would, without HTTP:
//!
//! - **artifact**: peak RSS (`VmHWM`, reset through `/proc/self/clear_refs` first) while one
//!   artifact is stored from a stream of chunks (`put_artifact_stream`, what the MLflow artifact
//!   PUT calls) and read back as a stream (`get_artifact_stream`, the GET's), against the RSS
//!   before; with `--artifact-buffered` also through `put_artifact`, which takes the file whole.
//! - **log**: concurrent clients, each logging batches of metrics (`log_batch`) into a run of its
//!   own: metrics per second and latency per call.
//! - **search**: `search_runs` with a metric filter over one experiment of many runs: p50/p99.
//!   The runs are copies of one run made by `create_run` and `log_batch`, journaled a few
//!   thousand per change through the core's door (a bounded number of commits), and kept for the
//!   next time when `--data` names a data directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use holdfast_core::{Action, Caller};
use holdfast_node::{Config, Holdfast};
use holdfast_types::api::ProjectCreate;
use holdfast_types::{Kind, Op, RequestId};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Exit;
use crate::output::{Format, print};

const KEY: &str = "bench-ml-admin-key-00000000000";
const PROJECT: &str = "mlbench";
/// Marks a search experiment whose runs were all written (so `--data` can reuse it).
const COMPLETE_TAG: &str = "holdfast.bench.runs";

#[derive(clap::Args)]
pub struct MlArgs {
    /// Parts to run, comma-separated: artifact, log, search.
    #[arg(long, value_delimiter = ',', default_value = "artifact,log,search")]
    parts: Vec<String>,
    /// Concurrent clients logging metrics, each into a run of its own.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// log_batch calls per client.
    #[arg(long, default_value_t = 40)]
    batches: usize,
    /// Metrics per log_batch call (MLflow's limit is 1000).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Runs in the searched experiment.
    #[arg(long, default_value_t = 100_000)]
    runs: usize,
    /// Runs journaled per change while making the searched experiment.
    #[arg(long, default_value_t = 2_000)]
    create_batch: usize,
    /// search_runs calls timed (after 2 untimed).
    #[arg(long, default_value_t = 50)]
    searches: usize,
    /// Stop searching after this many seconds even if fewer searches were made.
    #[arg(long, default_value_t = 60)]
    search_seconds: u64,
    /// The search's filter (run i has metrics.m0 = (i mod 1000) / 1000).
    #[arg(long, default_value = "metrics.m0 > 0.9")]
    filter: String,
    /// The search's max_results (the MLflow client's default is 1000).
    #[arg(long, default_value_t = 1000)]
    max_results: usize,
    /// Size of the artifact stored, in MiB.
    #[arg(long, default_value_t = 256)]
    artifact_mib: usize,
    /// Chunk of the streamed artifact body, in KiB.
    #[arg(long, default_value_t = 1024)]
    chunk_kib: usize,
    /// Also store the artifact from one buffer held whole (`put_artifact`).
    #[arg(long)]
    artifact_buffered: bool,
    /// A data directory to use and keep: the searched experiment in it is reused next time.
    #[arg(long, conflicts_with = "dir")]
    data: Option<PathBuf>,
    /// Directory to create the scratch data directory in [default: the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Serialize, Default)]
struct MlReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact: Option<ArtifactReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<LogReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    search: Option<SearchReport>,
}

#[derive(Serialize)]
struct ArtifactReport {
    artifact_mib: f64,
    /// Size of each chunk of the streamed body.
    chunk_kib: usize,
    /// The process before the upload (`VmRSS`).
    rss_before_mib: f64,
    /// Peak (`VmHWM`) while `put_artifact_stream` stores the streamed bytes (scratch object
    /// written while hashed, renamed to its content's name, fsynced, entry journaled).
    put_peak_mib: f64,
    put_peak_over_before_mib: f64,
    put_seconds: f64,
    put_mib_per_s: f64,
    /// Peak while `get_artifact_stream` reads them back, chunk by chunk.
    get_peak_over_before_mib: f64,
    get_seconds: f64,
    get_mib_per_s: f64,
    /// With `--artifact-buffered`: the same size held whole, then `put_artifact`.
    #[serde(skip_serializing_if = "Option::is_none")]
    buffered_rss_with_buffer_over_before_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    buffered_put_peak_over_before_mib: Option<f64>,
}

#[derive(Serialize)]
struct LogReport {
    clients: usize,
    batches: usize,
    batch_size: usize,
    metrics: usize,
    seconds: f64,
    metrics_per_sec: f64,
    batch_p50_ms: f64,
    batch_p99_ms: f64,
    batch_max_ms: f64,
}

#[derive(Serialize)]
struct SearchReport {
    runs: usize,
    /// Whether the runs were made in this invocation (else reused from `--data`).
    created: bool,
    create_seconds: f64,
    create_changes: usize,
    filter: String,
    max_results: usize,
    /// Runs in the first page of the answer, and whether it had a next page.
    returned: usize,
    more_pages: bool,
    /// The first search after the node opened (it builds the projection of the runs).
    first_ms: f64,
    searches: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

pub async fn run(args: MlArgs, format: Format) -> Result<(), Exit> {
    for part in &args.parts {
        if !["artifact", "log", "search"].contains(&part.as_str()) {
            return Err(Exit::new(2, anyhow!("unknown part {part:?}: artifact, log or search")));
        }
    }
    if args.clients == 0 || args.batches == 0 || args.batch_size == 0 || args.batch_size > 1000 {
        return Err(Exit::new(2, anyhow!("need at least one client and batch, and 1 to 1000 metrics per batch")));
    }
    if args.runs == 0 || args.create_batch == 0 || args.searches == 0 || args.artifact_mib == 0 || args.chunk_kib == 0 {
        return Err(Exit::new(2, anyhow!("runs, create-batch, searches, artifact-mib and chunk-kib must be at least 1")));
    }
    let (data, scratch) = match &args.data {
        Some(dir) => (dir.clone(), false),
        None => {
            let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
            (parent.join(format!("holdfast-bench-ml-{}", std::process::id())), true)
        }
    };
    let report = bench(&data, &args).await;
    if scratch {
        let _ = std::fs::remove_dir_all(&data);
    }
    print(format, &report?, &[])?;
    Ok(())
}

async fn bench(data: &Path, args: &MlArgs) -> Result<MlReport, Exit> {
    let artifact_bytes = args.artifact_mib * 1024 * 1024 + args.chunk_kib * 1024;
    let mut config = Config::new(data.to_owned(), "bench", Some(KEY.into()));
    config.core.max_file_bytes = config.core.max_file_bytes.max(artifact_bytes);
    let node = Holdfast::open(config).map_err(|e| anyhow!("cannot open data directory {}: {e}", data.display()))?.node;
    let caller = Caller { principal: node.core.authenticate(Some(KEY)).map_err(|e| anyhow!("{e}"))?, request_id: RequestId::generate() };
    if node.core.project_store(PROJECT).await.is_err() {
        node.core.create_project(&caller, ProjectCreate { name: PROJECT.into(), ..Default::default() }).await.map_err(|e| anyhow!("{e}"))?;
    }
    let has = |part: &str| args.parts.iter().any(|p| p == part);
    let mut report = MlReport::default();
    let result = async {
        // The memory figure first, while the process holds little else.
        if has("artifact") {
            report.artifact = Some(artifact(&node, &caller, args).await?);
        }
        if has("log") {
            report.log = Some(log(&node, &caller, args).await?);
        }
        if has("search") {
            report.search = Some(search(&node, &caller, args).await?);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    node.core.shutdown().await;
    result?;
    Ok(report)
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

async fn new_run(node: &Holdfast, caller: &Caller, experiment: &str, name: &str) -> anyhow::Result<String> {
    let run = node.ml.create_run(caller, PROJECT, json!({ "experiment_id": experiment, "run_name": name })).await.map_err(err)?;
    Ok(run["run"]["info"]["run_id"].as_str().context("run id")?.to_owned())
}

async fn new_experiment(node: &Holdfast, caller: &Caller, name: &str) -> anyhow::Result<String> {
    let created = node.ml.create_experiment(caller, PROJECT, json!({ "name": name })).await.map_err(err)?;
    Ok(created["experiment_id"].as_str().context("experiment id")?.to_owned())
}

/// A field of /proc/self/status in MiB (`VmRSS`, `VmHWM`).
fn status_mib(field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field} in /proc/self/status"))?;
    let kib: f64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().context("parse kB")?;
    Ok(kib / 1024.0)
}

/// Resets the peak RSS to the current RSS (Linux: `5` to /proc/self/clear_refs).
fn reset_peak() -> anyhow::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5").context("reset VmHWM through /proc/self/clear_refs")
}

/// `count` chunks of `chunk` bytes that neither compress nor repeat (xorshift from `seed`),
/// each made only when the stream is polled for it.
fn chunks(seed: u64, count: usize, chunk: usize) -> impl Iterator<Item = axum::body::Bytes> {
    let mut x = seed | 1;
    (0..count).map(move |_| {
        let mut buf = vec![0u8; chunk];
        for word in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
        axum::body::Bytes::from(buf)
    })
}

async fn artifact(node: &Holdfast, caller: &Caller, args: &MlArgs) -> anyhow::Result<ArtifactReport> {
    use futures::StreamExt as _;
    let experiment = new_experiment(node, caller, &format!("bench-artifact-{}", ulid::Ulid::generate())).await?;
    let run = new_run(node, caller, &experiment, "artifact").await?;
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let chunk = args.chunk_kib * 1024;
    let count = (args.artifact_mib * 1024 * 1024).div_ceil(chunk);
    let size = count * chunk;
    // Seeded anew each time, so a reused data directory never holds the blob already.
    let seed = || ulid::Ulid::generate().0 as u64;

    // Streamed in, as the MLflow artifact PUT does: chunks made as they are asked for.
    let path = format!("{experiment}/{run}/artifacts/model.bin");
    let before = status_mib("VmRSS")?;
    reset_peak()?;
    let t = Instant::now();
    let body = futures::stream::iter(chunks(seed(), count, chunk).map(Ok::<_, std::convert::Infallible>));
    node.ml.put_artifact_stream(caller, PROJECT, &path, body).await.map_err(err)?;
    let put_seconds = t.elapsed().as_secs_f64();
    let put_peak = status_mib("VmHWM")?;

    // Streamed out, as the GET does: every chunk dropped once counted.
    reset_peak()?;
    let t = Instant::now();
    let mut stream = node.ml.get_artifact_stream(caller, PROJECT, &path).await.map_err(err)?;
    let mut read = 0;
    while let Some(part) = stream.next().await {
        read += part.map_err(err)?.len();
    }
    let get_seconds = t.elapsed().as_secs_f64();
    anyhow::ensure!(read == size, "read back {read} bytes of {size}");
    let get_peak = status_mib("VmHWM")?;

    // The whole file in memory first, then `put_artifact` (the in-memory path; not the PUT's).
    let buffered = if args.artifact_buffered {
        let path = format!("{experiment}/{run}/artifacts/model-buffered.bin");
        let whole: Vec<u8> = chunks(seed(), count, chunk).flat_map(|c| c.to_vec()).collect();
        let bytes = axum::body::Bytes::from(whole);
        let with_buffer = status_mib("VmRSS")?;
        reset_peak()?;
        node.ml.put_artifact(caller, PROJECT, &path, bytes).await.map_err(err)?;
        Some((round(with_buffer - before), round(status_mib("VmHWM")? - before)))
    } else {
        None
    };

    Ok(ArtifactReport {
        artifact_mib: mib(size),
        chunk_kib: args.chunk_kib,
        rss_before_mib: round(before),
        put_peak_mib: round(put_peak),
        put_peak_over_before_mib: round(put_peak - before),
        put_seconds: round(put_seconds),
        put_mib_per_s: round(mib(size) / put_seconds),
        get_peak_over_before_mib: round(get_peak - before),
        get_seconds: round(get_seconds),
        get_mib_per_s: round(mib(size) / get_seconds),
        buffered_rss_with_buffer_over_before_mib: buffered.map(|b| b.0),
        buffered_put_peak_over_before_mib: buffered.map(|b| b.1),
    })
}

async fn log(node: &Holdfast, caller: &Caller, args: &MlArgs) -> anyhow::Result<LogReport> {
    let experiment = new_experiment(node, caller, &format!("bench-log-{}", ulid::Ulid::generate())).await?;
    let mut runs = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        runs.push(new_run(node, caller, &experiment, &format!("client-{c}")).await?);
    }
    let (batches, batch_size) = (args.batches, args.batch_size);
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(args.clients + 1));
    let mut tasks = Vec::with_capacity(args.clients);
    for (c, run) in runs.iter().cloned().enumerate() {
        let (node, caller, start) = (node.clone(), caller.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let timestamp = holdfast_types::now_micros() / 1000;
            let mut latencies = Vec::with_capacity(batches);
            start.wait().await;
            for b in 0..batches {
                let metrics: Vec<Value> = (0..batch_size)
                    .map(|k| json!({ "key": format!("m{k}"), "value": (c + b + k) as f64 * 0.5, "timestamp": timestamp + b as i64, "step": b }))
                    .collect();
                let t = Instant::now();
                node.ml.log_batch(&caller, PROJECT, json!({ "run_id": run, "metrics": metrics })).await.map_err(err)?;
                latencies.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    start.wait().await;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(args.clients * batches);
    for task in tasks {
        latencies.extend(task.await.context("client panicked")??);
    }
    let seconds = started.elapsed().as_secs_f64();
    // Every metric is in: the last run's latest values.
    let last = node.ml.get_run(caller, PROJECT, json!({ "run_id": runs[runs.len() - 1] })).await.map_err(err)?;
    let logged = last["run"]["data"]["metrics"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(logged == batch_size, "the run has {logged} metrics, expected {batch_size}");
    let metrics = latencies.len() * batch_size;
    Ok(LogReport {
        clients: args.clients,
        batches,
        batch_size,
        metrics,
        seconds: round(seconds),
        metrics_per_sec: round(metrics as f64 / seconds),
        batch_p50_ms: percentile(&mut latencies, 0.50),
        batch_p99_ms: percentile(&mut latencies, 0.99),
        batch_max_ms: latencies.last().map_or(0.0, |d| ms(*d)),
    })
}

/// The experiment of `runs` runs to search: reused when a previous invocation finished it.
async fn search_experiment(node: &Holdfast, caller: &Caller, args: &MlArgs) -> anyhow::Result<(String, bool, f64, usize)> {
    let mut name = format!("bench-search-{}", args.runs);
    if let Ok(found) = node.ml.get_experiment_by_name(caller, PROJECT, json!({ "experiment_name": name })).await {
        let tags = found["experiment"]["tags"].as_array().cloned().unwrap_or_default();
        let complete = tags.iter().any(|t| t["key"] == COMPLETE_TAG && t["value"] == args.runs.to_string());
        let id = found["experiment"]["experiment_id"].as_str().context("experiment id")?.to_owned();
        if complete && found["experiment"]["lifecycle_stage"] == "active" {
            return Ok((id, false, 0.0, 0));
        }
        // Left unfinished (or deleted): make another beside it.
        name = format!("{name}-{}", ulid::Ulid::generate());
    }
    let started = Instant::now();
    let experiment = new_experiment(node, caller, &name).await?;
    // One real run, made as a client would; the others are copies of its stored body.
    let template = new_run(node, caller, &experiment, "r0").await?;
    node.ml
        .log_batch(caller, PROJECT, json!({ "run_id": template, "metrics": [{ "key": "m0", "value": 0.0, "timestamp": 0, "step": 0 }] }))
        .await
        .map_err(err)?;
    let data = node.core.data(caller, PROJECT, Action::MlWrite).await.map_err(err)?;
    let id = template.clone();
    let body = data
        .read(move |view| {
            let r = view.get(Kind::MlRun, &id).map_err(|e| holdfast_types::Error::internal(e.to_string()))?;
            r.map(|r| r.body).ok_or_else(|| holdfast_types::Error::internal("template run vanished"))
        })
        .await
        .map_err(err)?;
    let start_time = body["start_time"].as_i64().context("start_time")?;
    let mut changes = 0;
    let mut next = 1;
    while next < args.runs {
        let end = (next + args.create_batch).min(args.runs);
        let mut ops = Vec::with_capacity(end - next);
        for i in next..end {
            let id = format!("{:032x}", ulid::Ulid::generate().0);
            let mut b = body.clone();
            let name = format!("r{i}");
            b["run_name"] = json!(name);
            b["tags"]["mlflow.runName"] = json!(name);
            b["start_time"] = json!(start_time + i as i64);
            b["artifact_uri"] = json!(format!("mlflow-artifacts:/{experiment}/{id}/artifacts"));
            b["metrics"]["m0"]["value"] = json!((i % 1000) as f64 / 1000.0);
            ops.push(Op::Put { kind: Kind::MlRun, id, parent: Some(experiment.clone()), body: b });
        }
        data.commit(Box::new(move |_| Ok(ops))).await.map_err(err)?;
        changes += 1;
        next = end;
    }
    let seconds = started.elapsed().as_secs_f64();
    node.ml
        .set_experiment_tag(caller, PROJECT, json!({ "experiment_id": experiment, "key": COMPLETE_TAG, "value": args.runs.to_string() }))
        .await
        .map_err(err)?;
    Ok((experiment, true, seconds, changes))
}

async fn search(node: &Holdfast, caller: &Caller, args: &MlArgs) -> anyhow::Result<SearchReport> {
    let (experiment, created, create_seconds, create_changes) = search_experiment(node, caller, args).await?;
    let request = json!({ "experiment_ids": [experiment], "filter": args.filter, "max_results": args.max_results });
    // The first search after the node opened builds the projection of the project's runs.
    let t = Instant::now();
    let first = node.ml.search_runs(caller, PROJECT, request.clone()).await.map_err(err)?;
    let first_ms = ms(t.elapsed());
    let again = node.ml.search_runs(caller, PROJECT, request.clone()).await.map_err(err)?;
    anyhow::ensure!(again["runs"] == first["runs"], "two searches of the same runs disagree");
    let returned = first["runs"].as_array().map_or(0, Vec::len);
    let more_pages = first.get("next_page_token").is_some();
    let budget = Duration::from_secs(args.search_seconds);
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(args.searches);
    while latencies.len() < args.searches && started.elapsed() < budget {
        let t = Instant::now();
        let answer = node.ml.search_runs(caller, PROJECT, request.clone()).await.map_err(err)?;
        latencies.push(t.elapsed());
        anyhow::ensure!(answer["runs"].as_array().map_or(0, Vec::len) == returned, "searches disagree");
    }
    Ok(SearchReport {
        runs: args.runs,
        created,
        create_seconds: round(create_seconds),
        create_changes,
        filter: args.filter.clone(),
        max_results: args.max_results,
        returned,
        more_pages,
        first_ms,
        searches: latencies.len(),
        p50_ms: percentile(&mut latencies, 0.50),
        p99_ms: percentile(&mut latencies, 0.99),
        max_ms: latencies.last().map_or(0.0, |d| ms(*d)),
    })
}

/// The `p` quantile of `samples` in milliseconds, rounded to hundredths.
fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    round(crate::stats::percentile(samples, p))
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0)
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
