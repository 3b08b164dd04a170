//! `holdfast serve`: open the data directory, serve HTTP until SIGINT/SIGTERM, then drain.

use anyhow::{Context, Result};
use holdfast_api::{AppState, HttpLimits};
use holdfast_node::Holdfast;
use holdfast_types::ErrorKind;

use crate::Exit;
use crate::config::ServeConfig;

pub async fn run(config: ServeConfig) -> Result<(), Exit> {
    // Everything this process creates (databases and their WAL files, blobs, keys, scratch
    // files, archive objects on a local disk) is its owner's alone: directories 0700, files 0600.
    // `Holdfast::open` tightens what an earlier version or another tool left more open.
    rustix::process::umask(rustix::fs::Mode::RWXG | rustix::fs::Mode::RWXO);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let admin_key = std::env::var("HOLDFAST_ADMIN_KEY").ok().filter(|k| !k.is_empty());
    let master_key = std::env::var("HOLDFAST_MASTER_KEY").ok().filter(|k| !k.is_empty());
    let mut node_config = holdfast_node::Config::new(config.data.clone(), &config.region, admin_key);
    node_config.core.master_key = master_key;
    node_config.core.max_file_bytes = config.max_file_bytes;
    node_config.core.max_projects_per_principal = config.max_projects_per_principal;
    node_config.core.idle_close = config.idle_close;
    node_config.recovery.max_import_bytes = config.max_import_bytes;
    node_config.recovery.import_min_free_bytes = config.import_min_free_bytes;
    node_config.recovery.archive = config.archive.clone();
    node_config.agents.upstream_timeout = std::time::Duration::from_secs(config.upstream_timeout_secs);
    node_config.agents.attempt_timeout = config.attempt_timeout;
    node_config.agents.breaker_open = config.breaker_open;
    node_config.agents.egress = config.egress.clone();
    node_config.geo.cluster = config.cluster.clone();
    node_config.geo.coordinator = config.coordinator.clone();
    let opened = tokio::task::spawn_blocking(move || Holdfast::open(node_config))
        .await
        .map_err(|e| Exit::error(anyhow::anyhow!("start-up task failed: {e}")))?
        .map_err(|e| {
            let code = if e.kind == ErrorKind::Conflict { 4 } else { 1 };
            Exit::new(code, anyhow::anyhow!("cannot open data directory: {e}"))
        })?;
    let node = opened.node;
    if let Some(key) = opened.generated_admin_key {
        let path = config.data.join("admin.key");
        println!("Generated the admin key (shown once; also stored in {}, mode 0600):\n  {key}", path.display());
    }
    let metrics = match holdfast_api::telemetry::install_recorder() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "metrics disabled");
            None
        }
    };
    let app = holdfast_api::app(
        AppState { node: node.clone(), metrics },
        HttpLimits { max_body_bytes: config.max_body_bytes },
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))
        .map_err(Exit::error)?;
    tracing::info!(
        listen = %config.listen,
        region = %config.region,
        data = %config.data.display(),
        version = env!("CARGO_PKG_VERSION"),
        "holdfast is serving"
    );
    let tasks = node.start().map_err(|e| Exit::error(anyhow::anyhow!("cannot start background tasks: {e}")))?;
    if let Some(archive) = &config.archive {
        tracing::info!(url = %archive.url, "continuous backup is on");
    }
    let stopping = node.clone();
    // The peer address reaches the audit log.
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            stopping.begin_shutdown();
        })
        .await
        .context("server failed")
        .map_err(Exit::error)?;
    tracing::info!("draining: committing queued writes and closing stores");
    node.shutdown(tasks).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
