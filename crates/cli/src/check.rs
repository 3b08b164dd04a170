//! `holdfast check`: the readiness review of docs/DR.md's practices, one row per finding (or the
//! reviews as JSON); exits [`NOT_READY`] when a high-severity check fails, so it can gate a
//! pipeline.

use anyhow::anyhow;
use clap::Args;
use holdfast_types::api::Readiness;
use serde_json::json;

use crate::Exit;
use crate::client::{Client, seg};
use crate::output::{Format, print};

/// The exit code when a high-severity check fails for some project.
pub const NOT_READY: i32 = 6;

#[derive(Args)]
pub struct CheckArgs {
    /// Review only this project [default: every project].
    #[arg(long)]
    project: Option<String>,
}

const COLUMNS: &[&str] = &["project", "check", "status", "severity", "message", "fix"];

pub async fn check(client: &Client, args: CheckArgs, format: Format) -> Result<(), Exit> {
    let query = args.project.map(|p| format!("?project={}", seg(&p))).unwrap_or_default();
    let reviews: Vec<Readiness> = client.get(&format!("/v1/check{query}")).await?;
    if format == Format::Table {
        let rows: Vec<_> = reviews
            .iter()
            .flat_map(|r| {
                r.findings.iter().map(|f| {
                    json!({ "project": r.project, "check": f.check, "status": f.status, "severity": f.severity,
                        "message": f.message, "fix": f.fix })
                })
            })
            .collect();
        print(format, &rows, COLUMNS)?;
    } else {
        print(format, &reviews, &[])?;
    }
    let failing: Vec<&str> = reviews.iter().filter(|r| !r.ok).map(|r| r.project.as_str()).collect();
    if !failing.is_empty() {
        return Err(Exit::new(NOT_READY, anyhow!("a high-severity check fails for {}", failing.join(", "))));
    }
    Ok(())
}
