//! `holdfast`: the server (`holdfast serve`) and its command-line client.

mod admin;
mod backup;
mod bench;
mod bench_ml;
mod stats;
mod check;
mod client;
mod config;
mod context;
mod export;
mod history;
mod output;
mod serve;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::{Args, Parser, Subcommand};
use holdfast_types::api::{
    Info, JournalPage, KeyCreate, KeyCreated, KeyPage, Lock, LockCreate, LockKind, LockList, Project, ProjectCreate,
    ProjectPage, ProjectUpdate, Role, RoleAssignment, RoleAssignmentList, RoleDefinition, RoleDefinitionList, AuditPage,
    AuditVerify, Identity, IdentityCreate, IdentityList, ProjectStatus, FailoverReport, Divergence, ReplayOutcome,
};

/// A new key, shown once; a key without a role says how to give it one.
fn print_key(format: Format, created: &KeyCreated) -> Result<(), Exit> {
    if format == Format::Table {
        println!("key:          {}", created.key);
        println!("principal id: {}", created.principal_id);
        println!("key id:       {}", created.key_id);
        eprintln!("The key is shown once; store it now.");
    } else {
        print(format, created, &[])?;
    }
    if created.role.is_none() {
        eprintln!(
            "It holds no role, so it can do nothing yet; give it one where it needs it:\n  \
             holdfast role assign --principal {} --role ai_user --scope /projects/NAME",
            created.principal_id
        );
    }
    Ok(())
}

fn parse_role(role: &str) -> Result<Role, Exit> {
    Ok(Role::parse(role))
}

fn assignment(args: AssignmentArgs) -> Result<RoleAssignment, Exit> {
    let principal_id = holdfast_types::PrincipalId::parse(&args.principal)
        .ok_or_else(|| Exit::new(2, anyhow!("{:?} is not a principal id (prn_…)", args.principal)))?;
    Ok(RoleAssignment { principal_id, role: parse_role(&args.role)?, scope: args.scope })
}

/// The columns of a lock table.
const LOCK_COLUMNS: &[&str] = &["id", "scope", "kind", "data_plane", "notes", "created_by", "created_at"];
use serde_json::json;

use crate::client::{Client, seg};
use crate::config::{FileConfig, Given, Overrides, ServeConfig};
use crate::context::{ContextEntry, ContextFile};
use crate::output::{Format, print};

/// mimalloc: SQLite, serde_json and tantivy allocate many small objects; glibc malloc was
/// ~15% of a restore profile (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A failure with the exit code it should end the process with.
#[derive(Debug)]
pub struct Exit {
    code: u8,
    error: anyhow::Error,
}

impl Exit {
    pub fn new(code: i32, error: anyhow::Error) -> Self {
        Self { code: u8::try_from(code).unwrap_or(1), error }
    }

    pub fn error(error: anyhow::Error) -> Self {
        Self::new(1, error)
    }
}

impl From<anyhow::Error> for Exit {
    fn from(error: anyhow::Error) -> Self {
        Self::error(error)
    }
}

#[derive(Parser)]
#[command(name = "holdfast", version, about = "Self-hosted state for AI projects that survives region loss, deletion and corruption")]
struct Cli {
    /// Server URL; overrides HOLDFAST_ENDPOINT and the context file.
    #[arg(long, global = true, env = "HOLDFAST_ENDPOINT", value_delimiter = ',')]
    endpoint: Vec<String>,
    /// API key; overrides HOLDFAST_KEY and the context file.
    #[arg(long, global = true, env = "HOLDFAST_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Context from the context file to use instead of the current one.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Output format (default: table on a terminal, json otherwise).
    #[arg(short = 'o', long = "output", global = true, value_enum)]
    output: Option<Format>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Create, list, show, update and delete projects.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Manage a project's connections to upstream model servers.
    #[command(subcommand)]
    Connection(ConnectionCmd),
    /// Manage a project's model deployments.
    #[command(subcommand)]
    Deployment(DeploymentCmd),
    /// Manage a project's ML environments: versioned, immutable images or build specs.
    #[command(subcommand)]
    Environment(EnvironmentCmd),
    /// Manage API keys (admin).
    #[command(subcommand)]
    Key(KeyCmd),
    /// Read a project's journal (admin).
    #[command(subcommand)]
    Journal(JournalCmd),
    /// Manage client contexts (endpoints and keys) in ~/.config/holdfast/config.toml.
    #[command(subcommand)]
    Context(ContextCmd),
    /// Export a project to one portable file (secrets excluded).
    Export(export::ExportArgs),
    /// Import an export file into a project (created when missing).
    Import(export::ImportArgs),
    /// List every change to one resource, from the project's journal (admin).
    History(history::HistoryArgs),
    /// Bring a deleted resource back, with its children, keeping its ids (admin).
    Undelete(history::UndeleteArgs),
    /// Continuous backup: status, snapshot now, verify by a trial restore.
    #[command(subcommand)]
    Backup(backup::BackupCmd),
    /// Restore a project to a point in time into a new project (online), or from an archive
    /// into a data directory (offline, with --archive and --data).
    Restore(backup::RestoreArgs),
    /// The audit log: every mutation and every denied request (admin).
    AuditLog(AuditArgs),
    /// Roles: assignments (a principal's roles at / or at one project) and custom definitions.
    #[command(subcommand)]
    Role(RoleCmd),
    /// Managed identities: principals for a project's workloads (admin).
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Resource locks: CanNotDelete or ReadOnly at a scope, inherited downward.
    #[command(subcommand)]
    Lock(LockCmd),
    /// Review each project against the practices of docs/DR.md (delete lock, continuous backup,
    /// replica, identity, standing delete rights, restore drill, purge protection): every finding
    /// with its severity and the command that fixes it. Exits 6 when a high-severity check fails
    /// for any project, so it can gate a pipeline (other errors keep their usual codes).
    Check(check::CheckArgs),
    /// Move a project's primary to the region of one of its replicas (planned: no acknowledged
    /// write is lost). Send it to the current primary's region.
    Failover {
        #[arg(long)]
        project: String,
        #[arg(long)]
        to: String,
        /// The primary is lost: promote what the target has (send this to the target region's
        /// endpoint); prints the last applied LSN and what may be lost.
        #[arg(long)]
        force: bool,
    },
    /// Run again the responses a failover cut off (failed with `region_failover`), each once.
    Resubmit {
        #[arg(long)]
        project: String,
    },
    /// Divergence records: changes a deposed primary committed that never reached the new one.
    #[command(subcommand)]
    Divergence(DivergenceCmd),
    /// Replication status: per project its primary region, epoch, LSN, replicas and their lag.
    Status {
        #[arg(long)]
        project: Option<String>,
    },
    /// Show the server's version and region.
    Info,
    /// Measure performance.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Break-glass: offline work on a node's own data directory (the server stopped).
    #[command(subcommand)]
    Admin(AdminCmd),
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Print a new admin key (admin at /) for a node whose admin keys are all lost. Run it on the
    /// node's own filesystem with the server stopped (refused while one runs on DIR); it is
    /// recorded in the node's audit log.
    Reset {
        /// The data directory.
        #[arg(long)]
        data: std::path::PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (holdfast.toml).
    #[arg(long, env = "HOLDFAST_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./holdfast-data].
    #[arg(long, env = "HOLDFAST_DATA")]
    data: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8480].
    #[arg(long, env = "HOLDFAST_LISTEN")]
    listen: Option<String>,
    /// This node's region name [default: local].
    #[arg(long, env = "HOLDFAST_REGION")]
    region: Option<String>,
    /// Largest request body in bytes [default: 1048576].
    #[arg(long, env = "HOLDFAST_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Largest uploaded file in bytes [default: 33554432].
    #[arg(long, env = "HOLDFAST_MAX_FILE_BYTES")]
    max_file_bytes: Option<usize>,
    /// Largest import file in bytes [default: 1073741824].
    #[arg(long, env = "HOLDFAST_MAX_IMPORT_BYTES")]
    max_import_bytes: Option<u64>,
    /// Free disk space, in bytes, an import must leave on the data directory's filesystem
    /// [default: 268435456].
    #[arg(long, env = "HOLDFAST_IMPORT_MIN_FREE_BYTES")]
    import_min_free_bytes: Option<u64>,
    /// Seconds a call to an upstream model may take [default: 120].
    #[arg(long, env = "HOLDFAST_UPSTREAM_TIMEOUT_SECS")]
    upstream_timeout_secs: Option<u64>,
    /// Continuous backup to this object store URL (file:///dir, s3://bucket/prefix, az://…, gs://…).
    #[arg(long, env = "HOLDFAST_ARCHIVE")]
    archive: Option<String>,
    /// Log filter, e.g. `info` or `holdfast_store=debug,info` [default: info].
    #[arg(long, env = "HOLDFAST_LOG")]
    log: Option<String>,
    /// A peer region as REGION=URL; repeatable (adds to `[[peers]]`).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// The region that leads the control plane (keys, roles, locks) before any region has
    /// replicated it; give every region the same [default: the first region name in order].
    #[arg(long, env = "HOLDFAST_CONTROL_PRIMARY")]
    control_primary: Option<String>,
    /// Secret shared by every region of the cluster (at least 16 characters); required for
    /// replication. Other local users can read a flag in `ps`: prefer --cluster-secret-file.
    #[arg(long, env = "HOLDFAST_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// A file holding the cluster secret (surrounding whitespace ignored), instead of
    /// --cluster-secret.
    #[arg(long, env = "HOLDFAST_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// Where --cluster-secret and --cluster-secret-file came from (set in `main` from clap's
    /// matches): a secret on the command line is warned about.
    #[arg(skip)]
    secret_sources: Option<(Given, Given)>,
    /// An etcd client URL for automatic failover; repeatable (replaces `[coordinator] etcd`).
    #[arg(long = "etcd")]
    etcd: Vec<String>,
}

#[derive(Subcommand)]
enum ProjectCmd {
    /// Create a project.
    Create {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// A tag as KEY=VALUE; repeatable.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// Days a deleted project is kept before it is purged (7-90) [default: 14].
        #[arg(long)]
        retention_days: Option<u32>,
        /// Refuse purging a deleted project before its retention has passed (cannot be undone).
        #[arg(long)]
        purge_protection: bool,
        /// A user-assigned identity (name or prn_…) for the project's workloads.
        #[arg(long, conflicts_with = "system_identity")]
        identity: Option<String>,
        /// Make a system-assigned identity that lives and dies with the project.
        #[arg(long)]
        system_identity: bool,
    },
    /// List projects.
    List {
        /// Start after this project name.
        #[arg(long)]
        after: Option<String>,
        /// Page size (1-100); without it, every page is fetched.
        #[arg(long)]
        limit: Option<usize>,
        /// List soft-deleted projects instead, with when each will be purged.
        #[arg(long)]
        deleted: bool,
    },
    /// Show one project.
    Show { name: String },
    /// Change a project's display name, description or tags.
    Update {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Set a tag, KEY=VALUE; repeatable.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// Remove a tag; repeatable.
        #[arg(long = "remove-tag")]
        remove_tags: Vec<String>,
        /// Days a deleted project is kept before it is purged (7-90).
        #[arg(long)]
        retention_days: Option<u32>,
        /// Turn purge protection on (it cannot be turned off).
        #[arg(long)]
        purge_protection: bool,
    },
    /// Delete a project: soft, kept (hidden, name reserved) for its retention period.
    Delete { name: String },
    /// Bring a soft-deleted project back.
    Recover { name: String },
    /// Remove a soft-deleted project for good (admin; refused under purge protection).
    Purge { name: String },
    /// Replicate a project to a peer region: hot (serves reads there) or warm (serves after a
    /// failover), with async or sync commit.
    Replicate {
        #[arg(long)]
        project: String,
        /// The peer region.
        #[arg(long)]
        to: String,
        #[arg(long, value_parser = ["hot", "warm"])]
        mode: String,
        #[arg(long, value_parser = ["async", "sync"], default_value = "async")]
        commit: String,
        /// With --commit sync: when the replica does not confirm a write in time, `fail` it
        /// (default) or acknowledge it as `async` with a warning and a metric.
        #[arg(long, value_parser = ["fail", "async"], default_value = "fail")]
        on_sync_timeout: String,
    },
    /// Stop a project's replica in a region and remove that region's copy.
    Unreplicate {
        #[arg(long)]
        project: String,
        #[arg(long)]
        region: String,
    },
}

#[derive(Subcommand)]
enum DivergenceCmd {
    /// List a project's divergence records.
    List {
        #[arg(long)]
        project: String,
    },
    /// Show one record with its changes.
    Show {
        #[arg(long)]
        project: String,
        #[arg(long)]
        id: String,
    },
    /// Re-apply changes of a record as new changes on the current primary (admin).
    Replay {
        #[arg(long)]
        project: String,
        #[arg(long)]
        id: String,
        /// Only this change (by its LSN in the record); repeatable. Default: every change not
        /// replayed yet.
        #[arg(long = "lsn")]
        lsns: Vec<u64>,
    },
}

#[derive(Subcommand)]
enum ConnectionCmd {
    /// Add an OpenAI-compatible upstream; its API key is stored encrypted and never shown again.
    Create {
        #[arg(long)]
        project: String,
        #[arg(long)]
        name: String,
        #[arg(long = "type", default_value = "openai")]
        kind: String,
        /// Base URL of the upstream's OpenAI API, e.g. https://api.openai.com/v1.
        #[arg(long)]
        target: String,
        #[arg(long)]
        api_key: Option<String>,
    },
    /// List connections (without secrets).
    List {
        #[arg(long)]
        project: String,
    },
    /// Delete a connection no deployment uses.
    Delete {
        #[arg(long)]
        project: String,
        name: String,
    },
    /// Each connection's health as this region's model calls found it (healthy, failing, open:
    /// skipped by its circuit breaker, probing).
    Health {
        #[arg(long)]
        project: String,
    },
}

#[derive(Subcommand)]
enum EnvironmentCmd {
    /// Create the next version of an environment (version 1 for a new name).
    Create {
        #[arg(long)]
        project: String,
        #[arg(long)]
        name: String,
        /// An image reference, such as `python:3.11-slim`.
        #[arg(long)]
        image: Option<String>,
        /// A Dockerfile to build from (its text is stored).
        #[arg(long)]
        dockerfile: Option<std::path::PathBuf>,
        /// A conda environment file (its text is stored).
        #[arg(long)]
        conda: Option<std::path::PathBuf>,
        /// A pip requirements file (its text is stored).
        #[arg(long)]
        pip: Option<std::path::PathBuf>,
        #[arg(long, default_value = "")]
        description: String,
        /// A tag, `KEY=VALUE`; repeat it.
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// List environment versions (`--name` narrows to one environment).
    List {
        #[arg(long)]
        project: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Show an environment's latest version, or `--version`.
    Show {
        name: String,
        #[arg(long)]
        project: String,
        #[arg(long)]
        version: Option<u64>,
    },
}

#[derive(Subcommand)]
enum DeploymentCmd {
    /// Name a model of a connection; agents and responses use the name as `model`.
    Create {
        #[arg(long)]
        project: String,
        #[arg(long)]
        name: String,
        /// The connection to call; repeat it to name fallbacks, tried in order when one fails
        /// before it answers (no connection, 429, 5xx, no answer in time).
        #[arg(long = "connection", required = true)]
        connections: Vec<String>,
        /// The model id the upstream knows.
        #[arg(long)]
        model: String,
    },
    /// List deployments.
    List {
        #[arg(long)]
        project: String,
    },
    /// Delete a deployment.
    Delete {
        #[arg(long)]
        project: String,
        name: String,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a principal with a new key; the key is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// A built-in role (admin, contributor, reader, ai_user, ai_reader, backup_operator, monitoring_reader) or a
        /// custom one. Without it the key holds no role until `holdfast role assign` gives one.
        #[arg(long)]
        role: Option<String>,
        /// Where the role holds: / (default) or /projects/NAME.
        #[arg(long)]
        scope: Option<String>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key (key_…) or every key of a principal (prn_…).
    Revoke { id: String },
}

#[derive(Args)]
struct AuditArgs {
    #[command(subcommand)]
    verify: Option<AuditCmd>,
    /// Entries at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Entries at or before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Entries of one principal (prn_…).
    #[arg(long)]
    principal: Option<String>,
    /// Entries at this scope or under it (/projects/P).
    #[arg(long)]
    scope: Option<String>,
    /// At most this many entries (every entry when not given).
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain, and the archived copy when the server archives; exits 1 when an
    /// entry was changed or removed.
    Verify,
}

/// One role assignment on the command line.
#[derive(Args)]
struct AssignmentArgs {
    #[arg(long)]
    principal: String,
    /// A built-in role (admin, contributor, reader, ai_user, ai_reader, backup_operator, monitoring_reader) or a
    /// custom one.
    #[arg(long)]
    role: String,
    /// / or /projects/NAME.
    #[arg(long, default_value = "/")]
    scope: String,
}

#[derive(Subcommand)]
enum RoleCmd {
    /// Give a principal a role at a scope (admin only).
    Assign(AssignmentArgs),
    /// Take a role at a scope away from a principal (admin only).
    Unassign(AssignmentArgs),
    /// List every role assignment (admin only).
    List,
    /// Define a custom role from a JSON file: name, description, actions, not_actions,
    /// data_actions, not_data_actions (`*` is a wildcard) (admin only).
    Create {
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// List every role definition, built-in and custom (admin only).
    Definitions,
    /// Remove a custom role no assignment holds (admin only).
    Delete { name: String },
}

#[derive(Subcommand)]
enum IdentityCmd {
    /// Create a user-assigned identity: a principal for workloads, apart from any project.
    Create { name: String },
    /// List managed identities, user- and system-assigned.
    List,
    /// Remove a user-assigned identity (its keys stop working, its assignments go).
    Delete { name: String },
    /// Issue a key that authenticates as the identity; printed once.
    Key { name: String },
}

#[derive(Subcommand)]
enum LockCmd {
    /// Set a lock (Owners only).
    Create {
        /// `/`, `/projects/P`, or one resource: `/projects/P/conversations/ID`, `/projects/P/agents/NAME`, …
        #[arg(long)]
        scope: String,
        #[arg(long, value_parser = ["CanNotDelete", "ReadOnly"])]
        kind: String,
        /// Guard the project's contents too (always on for a lock on one resource).
        #[arg(long)]
        data_plane: bool,
        #[arg(long, default_value = "")]
        notes: String,
    },
    /// List locks: all, or those that apply at a scope.
    List {
        #[arg(long)]
        scope: Option<String>,
    },
    /// Remove a lock (Owners only).
    Delete { id: String },
}

#[derive(Subcommand)]
enum JournalCmd {
    /// Print a project's changes in LSN order.
    Tail {
        #[arg(long)]
        project: String,
        /// Start after this LSN.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep waiting for new changes.
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum ContextCmd {
    /// Add (or replace) a context; with several --endpoint, they are tried in order. The
    /// endpoints are the global --endpoint (or HOLDFAST_ENDPOINT) and the key the global --key
    /// (or HOLDFAST_KEY).
    Add {
        name: String,
        /// Make it the current context.
        #[arg(long)]
        current: bool,
    },
    /// Make a context the current one.
    Use { name: String },
    /// List contexts.
    List,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Serve(args), Some(serve)) = (&mut cli.command, matches.subcommand_matches("serve")) {
        let given = |id: &str| match serve.value_source(id) {
            Some(clap::parser::ValueSource::EnvVariable) => Given::Env,
            _ => Given::Flag,
        };
        args.secret_sources = Some((given("cluster_secret"), given("cluster_secret_file")));
    }
    if !matches!(cli.command, Command::Serve(_)) {
        init_tracing(None, false); // `serve` starts logging once its configuration is resolved
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            eprintln!("error: {:#}", exit.error);
            ExitCode::from(exit.code)
        }
    }
}

fn init_tracing(level: Option<&str>, serving: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(if serving { "info" } else { "warn" })),
    };
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn run(cli: Cli) -> Result<(), Exit> {
    let format = Format::resolve(cli.output);
    match cli.command {
        Command::Serve(args) => {
            let file = match &args.config {
                Some(path) => FileConfig::load(path)?,
                None => FileConfig::default(),
            };
            let config = ServeConfig::resolve(file, Overrides {
                data: args.data,
                listen: args.listen,
                region: args.region,
                max_body_bytes: args.max_body_bytes,
                max_file_bytes: args.max_file_bytes,
                max_import_bytes: args.max_import_bytes,
                import_min_free_bytes: args.import_min_free_bytes,
                upstream_timeout_secs: args.upstream_timeout_secs,
                log: args.log,
                archive: args.archive,
                peers: args.peers,
                control_primary: args.control_primary,
                cluster_secret: args.cluster_secret.map(|s| (s, args.secret_sources.map_or(Given::Flag, |g| g.0))),
                cluster_secret_file: args.cluster_secret_file.map(|p| (p, args.secret_sources.map_or(Given::Flag, |g| g.1))),
                etcd: args.etcd,
            })?;
            init_tracing(Some(&config.log), true);
            serve::run(config).await
        }
        Command::Context(cmd) => context_cmd(cmd, cli.endpoint, cli.key, format),
        Command::Restore(args) if args.archive.is_some() => backup::restore_offline(args, format).await,
        Command::Bench(cmd) => bench::run(cmd, format).await,
        Command::Admin(AdminCmd::Reset { data }) => admin::admin_reset(data, format).await,
        command => {
            let client = client_for(cli.endpoint, cli.key, cli.context.as_deref())?;
            client_cmd(&client, command, format).await
        }
    }
}

/// Endpoints and key: flags, else environment (clap reads both), else the context file, else the
/// local default.
fn client_for(endpoints: Vec<String>, key: Option<String>, context: Option<&str>) -> Result<Client, Exit> {
    let file = ContextFile::load()?;
    let selected = file.selected(context)?;
    let endpoints = if !endpoints.is_empty() {
        endpoints
    } else if let Some(c) = selected {
        c.endpoints.clone()
    } else {
        vec![format!("http://{}", config::DEFAULT_LISTEN)]
    };
    let key = key.or_else(|| selected.and_then(|c| c.key.clone()));
    Client::new(endpoints, key)
}

async fn client_cmd(client: &Client, command: Command, format: Format) -> Result<(), Exit> {
    const PROJECT_COLUMNS: &[&str] = &["name", "display_name", "lsn", "created_at", "tags"];
    match command {
        Command::Info => print(format, &client.get::<Info>("/v1/info").await?, &[])?,
        Command::Failover { project, to, force } => {
            let report: FailoverReport =
                client.post(&format!("/v1/projects/{}/failover", seg(&project)), &json!({ "to": to, "force": force })).await?;
            print(format, &report, &[])?;
        }
        Command::Resubmit { project } => {
            // The server resubmits a bounded batch per call; the rest follow in later calls.
            const BATCH: usize = 100;
            let mut done: Vec<serde_json::Value> = Vec::new();
            loop {
                let path = format!("/v1/projects/{}/resubmit?limit={BATCH}", seg(&project));
                let batch: Vec<serde_json::Value> = client.post(&path, &json!({})).await?;
                let last = batch.len() < BATCH;
                done.extend(batch);
                if last {
                    break;
                }
            }
            print(format, &done, &["id", "resubmitted_as"])?;
        }
        Command::Divergence(cmd) => match cmd {
            DivergenceCmd::List { project } => {
                const PAGE: usize = 1000;
                let mut all: Vec<Divergence> = Vec::new();
                loop {
                    let after = all.last().map(|d| format!("&after={}", seg(&d.id))).unwrap_or_default();
                    let path = format!("/v1/projects/{}/divergences?limit={PAGE}{after}", seg(&project));
                    let page: Vec<Divergence> = client.get(&path).await?;
                    let last = page.len() < PAGE;
                    all.extend(page);
                    if last {
                        break;
                    }
                }
                print(format, &all, &["id", "from_region", "epoch", "first_lsn", "last_lsn", "count", "detected_at", "replayed"])?;
            }
            DivergenceCmd::Show { project, id } => {
                let d: Divergence = client.get(&format!("/v1/projects/{}/divergences/{}", seg(&project), seg(&id))).await?;
                print(format, &d, &[])?;
            }
            DivergenceCmd::Replay { project, id, lsns } => {
                let body = if lsns.is_empty() { json!({}) } else { json!({ "lsns": lsns }) };
                let path = format!("/v1/projects/{}/divergences/{}/replay", seg(&project), seg(&id));
                let outcomes: Vec<ReplayOutcome> = client.post(&path, &body).await?;
                print(format, &outcomes, &["lsn", "new_lsn", "error"])?;
                if outcomes.iter().any(|o| o.error.is_some()) {
                    return Err(Exit::error(anyhow!("some changes were not replayed")));
                }
            }
        },
        Command::Status { project } => {
            let path = match &project {
                Some(p) => format!("/v1/status?project={}", seg(p)),
                None => "/v1/status".to_owned(),
            };
            let all: Vec<ProjectStatus> = client.get(&path).await?;
            print(format, &all, &["project", "region", "role", "primary_region", "epoch", "lsn", "replicas", "replica"])?;
        }
        Command::Export(args) => export::export(client, args, format).await?,
        Command::Import(args) => export::import(client, args, format).await?,
        Command::History(args) => history::history(client, args, format).await?,
        Command::Undelete(args) => history::undelete(client, args, format).await?,
        Command::Backup(cmd) => backup::backup(client, cmd, format).await?,
        Command::Check(args) => check::check(client, args, format).await?,
        Command::Restore(args) => backup::restore(client, args, format).await?,
        Command::Project(cmd) => match cmd {
            ProjectCmd::Create { name, display_name, description, tags, retention_days, purge_protection, identity, system_identity } => {
                let req = ProjectCreate {
                    name,
                    display_name,
                    description,
                    tags: tags.into_iter().collect(),
                    soft_delete_retention_days: retention_days,
                    purge_protection,
                    identity,
                    system_identity,
                };
                print(format, &client.post::<_, Project>("/v1/projects", &req).await?, &[])?;
            }
            ProjectCmd::List { after, limit, deleted } => {
                let mut all = Vec::new();
                let mut after = after;
                let base = if deleted { "/v1/deleted-projects" } else { "/v1/projects" };
                loop {
                    let mut path = format!("{base}?limit={}", limit.unwrap_or(100));
                    if let Some(a) = &after {
                        path.push_str(&format!("&after={}", seg(a)));
                    }
                    let page: ProjectPage = client.get(&path).await?;
                    all.extend(page.data);
                    match page.next_after {
                        Some(next) if limit.is_none() => after = Some(next),
                        _ => break,
                    }
                }
                let columns: &[&str] = if deleted { &["name", "deleted_at", "purge_after", "purge_protection"] } else { PROJECT_COLUMNS };
                print(format, &all, columns)?;
            }
            ProjectCmd::Show { name } => {
                print(format, &client.get::<Project>(&format!("/v1/projects/{}", seg(&name))).await?, &[])?;
            }
            ProjectCmd::Update { name, display_name, description, tags, remove_tags, retention_days, purge_protection } => {
                let mut changes: BTreeMap<String, Option<String>> = tags.into_iter().map(|(k, v)| (k, Some(v))).collect();
                changes.extend(remove_tags.into_iter().map(|k| (k, None)));
                let req = ProjectUpdate {
                    display_name,
                    description,
                    tags: (!changes.is_empty()).then_some(changes),
                    soft_delete_retention_days: retention_days,
                    purge_protection: purge_protection.then_some(true),
                };
                print(format, &client.patch::<_, Project>(&format!("/v1/projects/{}", seg(&name)), &req).await?, &[])?;
            }
            ProjectCmd::Delete { name } => {
                client.delete(&format!("/v1/projects/{}", seg(&name))).await?;
                done(format, "deleted", &name)?;
            }
            ProjectCmd::Recover { name } => {
                let path = format!("/v1/deleted-projects/{}/recover", seg(&name));
                print(format, &client.post::<_, Project>(&path, &json!({})).await?, &[])?;
            }
            ProjectCmd::Purge { name } => {
                client.delete(&format!("/v1/deleted-projects/{}", seg(&name))).await?;
                done(format, "purged", &name)?;
            }
            ProjectCmd::Replicate { project, to, mode, commit, on_sync_timeout } => {
                let body = json!({ "region": to, "mode": mode, "commit": commit, "sync_fallback": on_sync_timeout == "async" });
                let p: Project = client.post(&format!("/v1/projects/{}/replicas", seg(&project)), &body).await?;
                print(format, &p, &[])?;
            }
            ProjectCmd::Unreplicate { project, region } => {
                let path = format!("/v1/projects/{}/replicas/{}", seg(&project), seg(&region));
                let p: Project = client.delete_json(&path).await?;
                print(format, &p, &[])?;
            }
        },
        Command::Connection(cmd) => match cmd {
            ConnectionCmd::Create { project, name, kind, target, api_key } => {
                let body = json!({ "name": name, "type": kind, "target": target, "api_key": api_key });
                let created: serde_json::Value = client.post(&format!("/v1/projects/{}/connections", seg(&project)), &body).await?;
                print(format, &created, &[])?;
            }
            ConnectionCmd::List { project } => {
                let list: serde_json::Value = client.get(&format!("/v1/projects/{}/connections", seg(&project))).await?;
                print(format, &list["value"], &["name", "type", "target", "credentials"])?;
            }
            ConnectionCmd::Health { project } => {
                let health: serde_json::Value = client.get(&format!("/v1/projects/{}/upstreams", seg(&project))).await?;
                print(format, &health["data"], &["connection", "state", "failures", "probe_in_ms"])?;
            }
            ConnectionCmd::Delete { project, name } => {
                client.delete(&format!("/v1/projects/{}/connections/{}", seg(&project), seg(&name))).await?;
                done(format, "deleted", &name)?;
            }
        },
        Command::Deployment(cmd) => match cmd {
            DeploymentCmd::Create { project, name, connections, model } => {
                let (first, fallbacks) = connections.split_first().ok_or_else(|| anyhow::anyhow!("--connection is required"))?;
                let mut body = json!({ "name": name, "connection": first, "model": model });
                if !fallbacks.is_empty() {
                    body["fallbacks"] = json!(fallbacks);
                }
                let created: serde_json::Value = client.post(&format!("/v1/projects/{}/deployments", seg(&project)), &body).await?;
                print(format, &created, &[])?;
            }
            DeploymentCmd::List { project } => {
                let list: serde_json::Value = client.get(&format!("/v1/projects/{}/deployments", seg(&project))).await?;
                print(format, &list["value"], &["name", "connectionName", "modelName"])?;
            }
            DeploymentCmd::Delete { project, name } => {
                client.delete(&format!("/v1/projects/{}/deployments/{}", seg(&project), seg(&name))).await?;
                done(format, "deleted", &name)?;
            }
        },
        Command::Environment(cmd) => match cmd {
            EnvironmentCmd::Create { project, name, image, dockerfile, conda, pip, description, tags } => {
                let read = |p: Option<std::path::PathBuf>| -> anyhow::Result<Option<String>> {
                    p.map(|p| std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))).transpose()
                };
                let build = json!({ "dockerfile": read(dockerfile)?, "conda": read(conda)?, "pip": read(pip)? });
                let mut tag_map = serde_json::Map::new();
                for t in tags {
                    let (k, v) = t.split_once('=').ok_or_else(|| anyhow::anyhow!("--tag {t:?} must be KEY=VALUE"))?;
                    tag_map.insert(k.to_owned(), json!(v));
                }
                let mut body = json!({ "name": name, "description": description, "tags": tag_map });
                if let Some(image) = image {
                    body["image"] = json!(image);
                }
                if build.as_object().is_some_and(|b| b.values().any(|v| !v.is_null())) {
                    let fields: serde_json::Map<String, serde_json::Value> =
                        build.as_object().into_iter().flatten().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
                    body["build"] = serde_json::Value::Object(fields);
                }
                let created: serde_json::Value = client.post(&format!("/v1/projects/{}/environments", seg(&project)), &body).await?;
                print(format, &created, &[])?;
            }
            EnvironmentCmd::List { project, name } => {
                let query = name.map(|n| format!("?name={}", seg(&n))).unwrap_or_default();
                let list: serde_json::Value = client.get(&format!("/v1/projects/{}/environments{query}", seg(&project))).await?;
                print(format, &list, &["name", "version", "image", "description", "created_by"])?;
            }
            EnvironmentCmd::Show { name, project, version } => {
                let path = match version {
                    Some(v) => format!("/v1/projects/{}/environments/{}/versions/{v}", seg(&project), seg(&name)),
                    None => format!("/v1/projects/{}/environments/{}", seg(&project), seg(&name)),
                };
                let env: serde_json::Value = client.get(&path).await?;
                print(format, &env, &[])?;
            }
        },
        Command::Key(cmd) => match cmd {
            KeyCmd::Create { name, role, scope } => {
                let role = role.as_deref().map(parse_role).transpose()?;
                let created: KeyCreated = client.post("/v1/keys", &KeyCreate { name, role, scope }).await?;
                print_key(format, &created)?;
            }
            KeyCmd::List => {
                let page: KeyPage = client.get("/v1/keys").await?;
                print(format, &page.data, &["key_id", "principal_id", "name", "role", "prefix", "created_at", "revoked_at"])?;
            }
            KeyCmd::Revoke { id } => {
                client.delete(&format!("/v1/keys/{}", seg(&id))).await?;
                done(format, "revoked", &id)?;
            }
        },
        Command::AuditLog(args) => {
            if args.verify.is_some() {
                let report: AuditVerify = client.get("/v1/audit/verify").await?;
                print(format, &report, &["ok", "entries", "first_bad_seq", "message"])?;
                if !report.ok {
                    let archived = report.archive.as_ref().filter(|a| !a.ok).map(|a| format!("; archive: {}", a.message));
                    return Err(Exit::error(anyhow!("{}{}", report.message, archived.unwrap_or_default())));
                }
                return Ok(());
            }
            let mut query = Vec::new();
            for (key, value) in [("since", &args.since), ("until", &args.until), ("principal", &args.principal), ("scope", &args.scope)] {
                if let Some(v) = value {
                    query.push(format!("{key}={}", seg(v)));
                }
            }
            let (mut entries, mut after) = (Vec::new(), 0);
            loop {
                let want = args.limit.map_or(1000, |l| (l - entries.len()).min(1000));
                if want == 0 {
                    break;
                }
                let mut q = query.clone();
                q.push(format!("after={after}&limit={want}"));
                let page: AuditPage = client.get(&format!("/v1/audit?{}", q.join("&"))).await?;
                entries.extend(page.data);
                match page.next_after {
                    Some(next) => after = next,
                    None => break,
                }
            }
            print(format, &entries, &["seq", "time", "principal", "method", "path", "action", "address", "status", "outcome"])?;
        }
        Command::Role(cmd) => match cmd {
            RoleCmd::Assign(args) => {
                let assignment = assignment(args)?;
                let made: RoleAssignment = client.post("/v1/role-assignments", &assignment).await?;
                print(format, &made, &["principal_id", "role", "scope"])?;
            }
            RoleCmd::Unassign(args) => {
                let assignment = assignment(args)?;
                client.post_empty("/v1/role-assignments/remove", &assignment).await?;
                let what = format!("{} at {} from {}", assignment.role.as_str(), assignment.scope, assignment.principal_id);
                done(format, "removed", &what)?;
            }
            RoleCmd::List => {
                let all: RoleAssignmentList = client.get("/v1/role-assignments").await?;
                print(format, &all.data, &["principal_id", "role", "scope"])?;
            }
            RoleCmd::Create { file } => {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| Exit::new(2, anyhow!("cannot read {}: {e}", file.display())))?;
                let def: RoleDefinition = serde_json::from_str(&text)
                    .map_err(|e| Exit::new(2, anyhow!("{} is not a role definition: {e}", file.display())))?;
                print(format, &client.post::<_, RoleDefinition>("/v1/roles", &def).await?, &[])?;
            }
            RoleCmd::Definitions => {
                let all: RoleDefinitionList = client.get("/v1/roles").await?;
                print(format, &all.data, &["name", "built_in", "actions", "data_actions", "not_actions", "not_data_actions"])?;
            }
            RoleCmd::Delete { name } => {
                client.delete(&format!("/v1/roles/{}", seg(&name))).await?;
                done(format, "removed", &name)?;
            }
        },
        Command::Identity(cmd) => match cmd {
            IdentityCmd::Create { name } => {
                let made: Identity = client.post("/v1/identities", &IdentityCreate { name }).await?;
                print(format, &made, &[])?;
            }
            IdentityCmd::List => {
                let all: IdentityList = client.get("/v1/identities").await?;
                print(format, &all.data, &["name", "principal_id", "kind", "project_id", "created_at"])?;
            }
            IdentityCmd::Delete { name } => {
                client.delete(&format!("/v1/identities/{}", seg(&name))).await?;
                done(format, "removed", &name)?;
            }
            IdentityCmd::Key { name } => {
                let made: KeyCreated = client.post(&format!("/v1/identities/{}/keys", seg(&name)), &json!({})).await?;
                print(format, &made, &["key", "key_id", "principal_id", "name"])?;
            }
        },
        Command::Lock(cmd) => match cmd {
            LockCmd::Create { scope, kind, data_plane, notes } => {
                let kind = LockKind::parse(&kind).ok_or_else(|| Exit::new(2, anyhow!("unknown lock kind {kind:?}")))?;
                let lock: Lock = client.post("/v1/locks", &LockCreate { scope, kind, data_plane, notes }).await?;
                print(format, &lock, LOCK_COLUMNS)?;
            }
            LockCmd::List { scope } => {
                let query = scope.map(|s| format!("?scope={}", seg(&s))).unwrap_or_default();
                let locks: LockList = client.get(&format!("/v1/locks{query}")).await?;
                print(format, &locks.data, LOCK_COLUMNS)?;
            }
            LockCmd::Delete { id } => {
                client.delete(&format!("/v1/locks/{}", seg(&id))).await?;
                done(format, "removed", &id)?;
            }
        },
        Command::Journal(JournalCmd::Tail { project, after, follow }) => {
            let mut after = after;
            loop {
                let wait = if follow { "&wait_ms=25000" } else { "" };
                let page: JournalPage =
                    client.get(&format!("/v1/projects/{}/journal?after={after}&limit=1000{wait}", seg(&project))).await?;
                for change in &page.changes {
                    match format {
                        Format::Table => println!(
                            "{:>8}  {}  {}  {}  {}",
                            change.lsn,
                            holdfast_types::rfc3339(change.ts),
                            change.actor,
                            change.request_id,
                            serde_json::to_string(&change.ops).context("encode ops")?
                        ),
                        // One JSON object per line, so a follower can be piped.
                        _ => println!("{}", serde_json::to_string(change).context("encode change")?),
                    }
                    after = change.lsn.0;
                }
                if page.changes.is_empty() && !follow {
                    break;
                }
                if page.changes.is_empty() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Command::Serve(_) | Command::Context(_) | Command::Bench(_) | Command::Admin(_) => unreachable!("handled by run"),
    }
    Ok(())
}

/// Reports a completed action: a sentence on a terminal, `{"<verb>": "<what>"}` otherwise.
fn done(format: Format, verb: &str, what: &str) -> anyhow::Result<()> {
    if format == Format::Table {
        println!("{verb} {what}");
        Ok(())
    } else {
        print(format, &json!({ verb: what }), &[])
    }
}

fn context_cmd(cmd: ContextCmd, endpoints: Vec<String>, key: Option<String>, format: Format) -> Result<(), Exit> {
    let mut file = ContextFile::load()?;
    match cmd {
        ContextCmd::Add { name, current } => {
            if name.is_empty() {
                return Err(Exit::new(2, anyhow!("context name is empty")));
            }
            if endpoints.is_empty() {
                return Err(Exit::new(2, anyhow!("a context needs at least one --endpoint")));
            }
            file.contexts.insert(name.clone(), ContextEntry { endpoints, key });
            if current || file.current.is_none() {
                file.current = Some(name.clone());
            }
            file.save()?;
            eprintln!("saved context {name} in {}", context::path()?.display());
        }
        ContextCmd::Use { name } => {
            if !file.contexts.contains_key(&name) {
                return Err(Exit::new(3, anyhow!("no context named {name:?}")));
            }
            file.current = Some(name);
            file.save()?;
        }
        ContextCmd::List => {
            let rows: Vec<_> = file
                .contexts
                .iter()
                .map(|(name, c)| {
                    json!({
                        "name": name,
                        "current": file.current.as_deref() == Some(name.as_str()),
                        "endpoints": c.endpoints.join(","),
                        "key": c.key.as_ref().map(|k| format!("{}…", k.chars().take(10).collect::<String>())),
                    })
                })
                .collect();
            print(format, &rows, &["name", "current", "endpoints", "key"])?;
        }
    }
    Ok(())
}
