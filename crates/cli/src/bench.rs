//! `holdfast bench`: load generators whose figures go into docs/BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use clap::Subcommand;
use holdfast_service::{Caller, Service, ServiceConfig};
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
            let base = dir.unwrap_or_else(std::env::temp_dir);
            let data = base.join(format!("holdfast-bench-{}", std::process::id()));
            let report = journal(&data, writers, changes).await;
            let _ = std::fs::remove_dir_all(&data);
            print(format, &report?, &[])?;
            Ok(())
        }
    }
}

async fn journal(data: &std::path::Path, writers: usize, changes: usize) -> Result<JournalReport, Exit> {
    const KEY: &str = "bench-admin-key-0000000000";
    let opened = Service::open(ServiceConfig::new(data.to_owned(), "bench", Some(KEY.into())))
    .map_err(|e| anyhow!("cannot open scratch data directory {}: {e}", data.display()))?;
    let service = Arc::new(opened.service);
    let caller = Caller { principal: service.authenticate(Some(KEY)).map_err(|e| anyhow!("{e}"))?, request_id: RequestId::generate() };
    service
        .create_project(&caller, ProjectCreate { name: "bench".into(), ..Default::default() })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let per_writer = changes / writers;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let (service, principal) = (service.clone(), caller.principal.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_writer);
            for n in 0..per_writer {
                let caller = Caller { principal: principal.clone(), request_id: RequestId::generate() };
                // At most 32 tag keys (a project has at most 50); values are unique, so every
                // update is a real change.
                let tag = [(format!("w{}", w % 32), Some(format!("{w}-{n}")))].into_iter().collect();
                let update = ProjectUpdate { tags: Some(tag), ..Default::default() };
                let t = Instant::now();
                service.update_project(&caller, "bench", update).await.map_err(|e| anyhow!("{e}"))?;
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
    let last_lsn = service.project_store("bench").await.map_err(|e| anyhow!("{e}"))?.last_lsn().0;
    service.shutdown().await;
    latencies.sort();
    let pct = |p: f64| -> f64 {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        ms(latencies[i])
    };
    let done = latencies.len();
    Ok(JournalReport {
        writers,
        changes: done,
        seconds,
        changes_per_sec: done as f64 / seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: latencies.last().copied().map_or(0.0, ms),
        last_lsn,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
