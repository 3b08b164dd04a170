//! `holdfast admin reset`: the break-glass path for a node whose admin keys are all lost. It
//! opens the node's data directory itself (refused while a server runs on it), so only someone
//! with the node's filesystem can run it.

use std::path::PathBuf;

use anyhow::anyhow;
use holdfast_core::{Service, ServiceConfig};
use holdfast_types::ErrorKind;

use crate::Exit;
use crate::output::Format;

pub async fn admin_reset(data: PathBuf, format: Format) -> Result<(), Exit> {
    if !data.join("control.db").exists() {
        return Err(Exit::new(2, anyhow!("{} is not a holdfast data directory (no control.db)", data.display())));
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    // Key hashes are peppered by the master key: a key made under another one would never work.
    if env("HOLDFAST_MASTER_KEY").is_none() && !data.join("master.key").exists() {
        return Err(Exit::new(
            2,
            anyhow!(
                "{} has no master.key: set HOLDFAST_MASTER_KEY to the master key the server runs with",
                data.display()
            ),
        ));
    }
    let mut config = ServiceConfig::new(data, "local", env("HOLDFAST_ADMIN_KEY"));
    // The key's hash is peppered by the master key: the one the server uses.
    config.master_key = env("HOLDFAST_MASTER_KEY");
    // The core alone: no project is opened, no background task runs.
    let opened = tokio::task::spawn_blocking(move || Service::open(config, || Ok(Vec::new())))
        .await
        .map_err(|e| Exit::error(anyhow!("start-up task failed: {e}")))?
        .map_err(|e| {
            let code = if e.kind == ErrorKind::Conflict { 4 } else { 1 };
            Exit::new(code, anyhow!("cannot open the data directory: {e}"))
        })?;
    let core = opened.service;
    let made = core.reset_admin().await;
    core.shutdown().await;
    let made = made.map_err(|e| Exit::error(anyhow!("cannot make an admin key: {e}")))?;
    crate::print_key(format, &made)?;
    if format == Format::Table {
        eprintln!("Recorded in the audit log. Revoke lost keys with `holdfast key revoke` once the server runs.");
    }
    Ok(())
}
