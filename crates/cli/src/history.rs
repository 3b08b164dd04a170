//! `holdfast history` and `holdfast undelete`: one resource's changes, from the project's
//! journal, and bringing a deleted resource back with its descendants (admin).

use anyhow::anyhow;
use clap::Args;
use holdfast_recovery::history::{History, UndeleteRequest, UndeleteSummary};
use serde_json::Value;

use crate::Exit;
use crate::client::{Client, seg};
use crate::output::{Format, print};

#[derive(Args)]
pub struct HistoryArgs {
    #[arg(long)]
    project: String,
    /// The resource's id as the wire shows it (an agent's name, conn:NAME, dep:NAME, conv_…).
    #[arg(long)]
    id: String,
}

#[derive(Args)]
pub struct UndeleteArgs {
    #[arg(long)]
    project: String,
    /// The resource's id as the wire shows it (an agent's name, conn:NAME, dep:NAME, conv_…).
    #[arg(long)]
    id: String,
    /// Undo the latest deletion at or before this time (RFC 3339).
    #[arg(long, conflicts_with = "lsn")]
    at: Option<String>,
    /// Undo the latest deletion at or before this LSN.
    #[arg(long)]
    lsn: Option<u64>,
}

fn path(project: &str, id: &str, what: &str) -> String {
    format!("/v1/projects/{}/resources/{}/{what}", seg(project), seg(id))
}

pub async fn history(client: &Client, args: HistoryArgs, format: Format) -> Result<(), Exit> {
    let history: History = client.get(&path(&args.project, &args.id, "history")).await?;
    if format != Format::Table {
        print(format, &history, &[])?;
        return Ok(());
    }
    let rows: Vec<Value> = history
        .entries
        .iter()
        .map(|e| {
            let mut detail = e.ops.join(",");
            if let Some(via) = &e.deleted_via {
                detail = format!("via {via}");
            }
            let children: Vec<String> = e.children.iter().map(|(k, n)| format!("{n}× {k}")).collect();
            if !children.is_empty() {
                if !detail.is_empty() {
                    detail.push_str("; ");
                }
                detail.push_str(&children.join(", "));
            }
            serde_json::json!({
                "lsn": e.lsn, "time": e.time, "actor": e.actor, "request_id": e.request_id,
                "operation": e.operation, "detail": detail,
            })
        })
        .collect();
    print(format, &rows, &["lsn", "time", "actor", "request_id", "operation", "detail"])?;
    let state = if history.exists { "exists" } else { "deleted" };
    eprintln!("{} ({}): {state} at LSN {}", history.id, history.kind.map_or("?", |k| k.as_str()), history.last_lsn);
    Ok(())
}

pub async fn undelete(client: &Client, args: UndeleteArgs, format: Format) -> Result<(), Exit> {
    let req = UndeleteRequest { at: args.at, lsn: args.lsn };
    let summary: UndeleteSummary = client.post(&path(&args.project, &args.id, "undelete"), &req).await?;
    if format == Format::Table {
        let via = summary.deleted_via.as_ref().map(|v| format!(" with {v}")).unwrap_or_default();
        println!(
            "undeleted {} {} ({} resources) in {}: deleted{via} at LSN {} ({}), restored as LSN {}",
            summary.kind.as_str(),
            summary.id,
            summary.resources,
            summary.project,
            summary.deleted_lsn,
            summary.deleted_at,
            summary.lsn
        );
    } else {
        print(format, &summary, &[]).map_err(|e| Exit::error(anyhow!(e)))?;
    }
    Ok(())
}
