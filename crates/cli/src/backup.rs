//! `holdfast backup status|now|verify` and `holdfast restore`, online (through a server) or
//! offline (from an archive URL into a data directory, on a machine that has never seen the
//! project: the cold-standby path).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use holdfast_archive::Progress;
use holdfast_recovery::backup::ArchiveConfig;
use holdfast_core::Caller;
use holdfast_node::{Config, Holdfast};
use holdfast_types::api::{BackupStatus, Operation, RestoreRequest, RestoreSummary, VerifyReport};
use holdfast_types::{ErrorKind, Lsn};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Exit;
use crate::client::{Client, seg};
use crate::output::{Format, print};

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Archived LSN, lag, and the restorable window, per project.
    Status {
        #[arg(long)]
        project: Option<String>,
    },
    /// Ship the journal and take a snapshot now.
    Now {
        #[arg(long)]
        project: String,
    },
    /// Trial-restore the archive into a scratch database and check it against recorded hashes.
    Verify {
        #[arg(long)]
        project: String,
    },
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The project to restore (name or id; a deleted project is looked up in the archive).
    #[arg(long)]
    project: String,
    /// The state as of this time (RFC 3339): every change up to it.
    #[arg(long, conflicts_with = "lsn")]
    at: Option<String>,
    /// The state right after this change.
    #[arg(long)]
    lsn: Option<u64>,
    /// Name of the new project [default offline: the source's name; required online].
    #[arg(long)]
    into: Option<String>,
    /// Read the archive even when the server still has the project's journal.
    #[arg(long)]
    from_archive: bool,
    /// On a corrupt segment, restore up to the last good change instead of failing.
    #[arg(long)]
    allow_partial: bool,
    /// Offline: the archive URL to restore from (no server needed).
    #[arg(long, requires = "data")]
    pub archive: Option<String>,
    /// Offline: the data directory to restore into (created if missing; no server may run on it).
    #[arg(long, requires = "archive")]
    data: Option<PathBuf>,
}

const STATUS_COLUMNS: &[&str] = &["project", "archived_lsn", "journal_lsn", "lag_changes", "lag_seconds", "segments", "snapshots", "last_error"];

pub async fn backup(client: &Client, cmd: BackupCmd, format: Format) -> Result<(), Exit> {
    match cmd {
        BackupCmd::Status { project: None } => {
            print(format, &client.get::<Vec<BackupStatus>>("/v1/backup").await?, STATUS_COLUMNS)?;
        }
        BackupCmd::Status { project: Some(p) } => {
            let status: BackupStatus = client.get(&format!("/v1/projects/{}/backup", seg(&p))).await?;
            print(format, &[status], STATUS_COLUMNS)?;
        }
        BackupCmd::Now { project } => {
            let status: BackupStatus =
                client.post(&format!("/v1/projects/{}/backup/snapshot", seg(&project)), &serde_json::json!({})).await?;
            print(format, &status, &[])?;
        }
        BackupCmd::Verify { project } => {
            let report: VerifyReport =
                client.post(&format!("/v1/projects/{}/backup/verify", seg(&project)), &serde_json::json!({})).await?;
            print(format, &report, &[])?;
            if !report.ok {
                return Err(Exit::error(anyhow!("verification failed: {}", report.message)));
            }
        }
    }
    Ok(())
}

fn bar() -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("restore [{bar:30}] {pos}/{len} changes {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// Online restore: starts it on the server and follows the operation to its end.
pub async fn restore(client: &Client, args: RestoreArgs, format: Format) -> Result<(), Exit> {
    let into = args.into.ok_or_else(|| Exit::new(2, anyhow!("--into NAME is required: a restore makes a new project")))?;
    let req = RestoreRequest {
        into,
        lsn: args.lsn.map(Lsn),
        at: args.at,
        from_archive: args.from_archive,
        allow_partial: args.allow_partial,
    };
    let mut op: Operation = client.post(&format!("/v1/projects/{}/restore", seg(&args.project)), &req).await?;
    let bar = bar();
    while op.status == "running" {
        if let Some(bar) = &bar {
            bar.set_length(op.total);
            bar.set_position(op.done);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        op = client.get(&format!("/v1/operations/{}", seg(&op.id))).await?;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match (op.result, op.error) {
        (Some(summary), _) => print(format, &summary, &[]).map_err(Exit::from),
        (None, Some(e)) => Err(Exit::new(code_of(&e.code), anyhow!("restore failed: {}", e.message))),
        (None, None) => Err(Exit::error(anyhow!("restore {} ended without an outcome", op.id))),
    }
}

fn code_of(code: &str) -> i32 {
    match code {
        "not_found" => 3,
        "conflict" => 4,
        "forbidden" | "unauthorized" => 5,
        "invalid_input" => 2,
        _ => 1,
    }
}

/// Offline restore: opens the data directory itself (refused while a server runs on it) and
/// restores from the archive into a new project there.
pub async fn restore_offline(args: RestoreArgs, format: Format) -> Result<(), Exit> {
    let (Some(url), Some(data)) = (args.archive, args.data) else {
        return Err(Exit::new(2, anyhow!("offline restore needs --archive URL and --data DIR")));
    };
    let target = holdfast_recovery::restore::target_of(args.lsn.map(Lsn), args.at.as_deref()).map_err(service_exit)?;
    let mut config = Config::new(data, "local", std::env::var("HOLDFAST_ADMIN_KEY").ok().filter(|k| !k.is_empty()));
    config.core.master_key = std::env::var("HOLDFAST_MASTER_KEY").ok().filter(|k| !k.is_empty());
    config.recovery.archive = Some(ArchiveConfig::new(&url));
    let opened = tokio::task::spawn_blocking(move || Holdfast::open(config))
        .await
        .map_err(|e| Exit::error(anyhow!("start-up task failed: {e}")))?
        .map_err(service_exit)?;
    let node = opened.node;
    if let Some(key) = opened.generated_admin_key {
        eprintln!("Generated the admin key for this data directory (also in its admin.key): {key}");
    }
    let source = node.recovery.restore_source(&args.project, true).await.map_err(service_exit)?;
    let into = match (&args.into, &source) {
        (Some(into), _) => into.clone(),
        (None, holdfast_recovery::restore::RestoreSource::Archive(m)) => m.name.clone(),
        (None, _) => args.project.clone(),
    };
    let progress = Arc::new(Progress::default());
    let watcher = bar().map(|bar| {
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                bar.set_length(progress.total.load(Ordering::Relaxed));
                bar.set_position(progress.done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let outcome = node.recovery.restore(&Caller::system(), source, target, &into, args.allow_partial, &progress).await;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    node.core.shutdown().await;
    let summary: RestoreSummary = outcome.map_err(service_exit)?;
    print(format, &summary, &[])?;
    Ok(())
}

fn service_exit(e: holdfast_types::Error) -> Exit {
    let code = match e.kind {
        ErrorKind::NotFound => 3,
        ErrorKind::Conflict | ErrorKind::Locked => 4,
        ErrorKind::InvalidInput => 2,
        _ => 1,
    };
    Exit::new(code, anyhow!("{}", e.message))
}
