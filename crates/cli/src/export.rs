//! `holdfast export` and `holdfast import`: a project to and from one portable file
//! (docs/formats/export.md), with a progress bar on stderr when it is a terminal.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use clap::{Args, ValueEnum};
use holdfast_recovery::export::{ImportSummary, LineLimits, verify_file};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::json;

use crate::Exit;
use crate::client::{Client, seg};
use crate::output::{Format, print};

#[derive(Args)]
pub struct ExportArgs {
    /// The project to export.
    #[arg(long)]
    project: String,
    /// The file to write (replaced only once the export is complete and verified).
    #[arg(long)]
    out: PathBuf,
    /// Comma-separated kinds to export (default: all), e.g. conversation,item.
    #[arg(long)]
    include: Option<String>,
    /// Comma-separated kinds to leave out.
    #[arg(long)]
    exclude: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OnConflictArg {
    /// Keep existing resources with the same id.
    Skip,
    /// Replace existing resources with the file's.
    Overwrite,
    /// Refuse the whole import, writing nothing, if any resource exists with other contents.
    Fail,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The export file to read.
    #[arg(long = "in")]
    input: PathBuf,
    /// The project to import into (created when missing).
    #[arg(long)]
    project: String,
    #[arg(long, value_enum, default_value = "skip")]
    on_conflict: OnConflictArg,
}

fn progress(total: Option<u64>, what: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(what.to_owned());
    Some(bar)
}

pub async fn export(client: &Client, args: ExportArgs, format: Format) -> Result<(), Exit> {
    let mut query = Vec::new();
    if let Some(i) = &args.include {
        query.push(format!("include={}", seg(i)));
    }
    if let Some(e) = &args.exclude {
        query.push(format!("exclude={}", seg(e)));
    }
    let path = format!("/v1/projects/{}/export?{}", seg(&args.project), query.join("&"));
    let mut response = client.stream(Method::GET, &path, None, || Ok(None)).await?;
    let partial = args.out.with_extension("partial");
    let mut file =
        std::fs::File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let bar = progress(None, "exporting");
    let written = async {
        while let Some(chunk) = response.chunk().await.map_err(|e| anyhow!("export interrupted: {e}"))? {
            file.write_all(&chunk).with_context(|| format!("cannot write {}", partial.display()))?;
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
        }
        file.sync_all()?;
        anyhow::Ok(())
    }
    .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let check = written.and_then(|()| {
        verify_file(&partial, LineLimits::unbounded()).map_err(|e| anyhow!("the export is incomplete or damaged: {}", e.message))
    });
    let verified = match check {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(Exit::error(e));
        }
    };
    std::fs::rename(&partial, &args.out).with_context(|| format!("cannot write {}", args.out.display()))?;
    let summary = json!({
        "project": verified.header.project.name,
        "out": args.out.display().to_string(),
        "format_version": verified.header.version,
        "source_lsn": verified.header.source_lsn,
        "kinds": verified.trailer.counts,
        "resources": verified.trailer.resources,
        "blobs": verified.trailer.blobs,
        "blob_bytes": verified.trailer.blob_bytes,
        "bytes": verified.bytes,
    });
    if format == Format::Table {
        println!(
            "exported {} resources and {} blobs of {} to {} ({} bytes)",
            verified.trailer.resources,
            verified.trailer.blobs,
            verified.header.project.name,
            args.out.display(),
            verified.bytes
        );
    } else {
        print(format, &summary, &[])?;
    }
    Ok(())
}

pub async fn import(client: &Client, args: ImportArgs, format: Format) -> Result<(), Exit> {
    let size = std::fs::metadata(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?.len();
    let on_conflict = match args.on_conflict {
        OnConflictArg::Skip => "skip",
        OnConflictArg::Overwrite => "overwrite",
        OnConflictArg::Fail => "fail",
    };
    let path = format!("/v1/projects/{}/import?on_conflict={on_conflict}", seg(&args.project));
    let bar = progress(Some(size), "importing");
    let input = args.input.clone();
    let body = || {
        let file = std::fs::File::open(&input).with_context(|| format!("cannot open {}", input.display()))?;
        let stream = futures::stream::unfold((file, bar.clone()), |(mut file, bar)| async move {
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    if let Some(b) = &bar {
                        b.inc(n as u64);
                    }
                    Some((Ok::<_, std::io::Error>(buf), (file, bar)))
                }
                Err(e) => Some((Err(e), (file, None))),
            }
        });
        Ok(Some(reqwest::Body::wrap_stream(stream)))
    };
    let result = client.stream(Method::POST, &path, Some(size), body).await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let summary: ImportSummary =
        result?.json().await.map_err(|e| Exit::error(anyhow!("unexpected import response: {e}")))?;
    if format == Format::Table {
        let written: u64 = summary.kinds.values().map(|c| c.imported + c.overwritten).sum();
        println!(
            "imported {written} resources and {} blobs into {} ({} journal entries, LSN {} → {})",
            summary.blobs, summary.project, summary.changes, summary.lsn_before, summary.lsn_after
        );
        for name in &summary.secrets_removed {
            eprintln!(
                "connection {name} was imported without its secret (never exported): calls through it fail until it is re-keyed (see docs/formats/export.md)"
            );
        }
    } else {
        print(format, &summary, &[])?;
    }
    Ok(())
}
