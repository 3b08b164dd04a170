//! Models of Holdfast's own control-plane API (`/v1`). Wire names are snake_case.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Change, Epoch, KeyId, Lsn, Micros, PrincipalId, ProjectId};

/// A project: the unit of isolation, replication, backup and export.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Project {
    pub id: ProjectId,
    /// Unique, immutable, URL-safe: lowercase letters, digits and `-`, 3 to 63 characters.
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub updated_at: String,
    /// The last LSN of the project's journal.
    pub lsn: Lsn,
    pub epoch: Epoch,
    /// How long a deleted project is kept (recoverable, its name reserved) before it is purged.
    pub soft_delete_retention_days: u32,
    /// When on, a deleted project cannot be purged before its retention has passed; once on,
    /// it cannot be turned off.
    pub purge_protection: bool,
    /// The managed identity the project's workloads act as, if it has one.
    pub identity: Option<ProjectIdentity>,
    /// The region whose copy takes writes, once the project is replicated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_region: Option<String>,
    /// The project's replicas in other regions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaSpec>,
    /// Set on a soft-deleted project (`GET /v1/deleted-projects`): when it was deleted…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    /// …and when it will be purged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_after: Option<String>,
}

/// A project's managed identity: a principal its workloads authenticate as (with keys issued
/// by `holdfast identity key`), holding roles like any other principal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectIdentity {
    pub principal_id: PrincipalId,
    pub name: String,
    /// `user_assigned` (exists on its own, outlives the project) or `system_assigned` (made
    /// with the project, removed when it is purged).
    pub kind: String,
}

/// A managed identity (`holdfast identity create NAME`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Identity {
    pub principal_id: PrincipalId,
    pub name: String,
    pub kind: String,
    /// The project a system-assigned identity belongs to.
    pub project_id: Option<String>,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityCreate {
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct IdentityList {
    pub data: Vec<Identity>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreate {
    pub name: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Days a deleted project is kept before it is purged: 7 to 90, default 14.
    #[serde(default)]
    pub soft_delete_retention_days: Option<u32>,
    #[serde(default)]
    pub purge_protection: bool,
    /// A user-assigned identity (by name or principal id) for the project's workloads.
    #[serde(default)]
    pub identity: Option<String>,
    /// Make a system-assigned identity that lives and dies with the project.
    #[serde(default)]
    pub system_identity: bool,
}

/// A partial update: absent fields stay as they are. In `tags`, a key mapped to `null` is removed
/// and every other key is set (JSON merge patch semantics).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectUpdate {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    pub soft_delete_retention_days: Option<u32>,
    /// `true` turns purge protection on; it cannot be turned off again.
    #[serde(default)]
    pub purge_protection: Option<bool>,
}

/// One page of a list. Pass `next_after` back as `after` for the next page; it is null on the
/// last page.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
    pub next_after: Option<String>,
}

pub type ProjectPage = Page<Project>;
pub type KeyPage = Page<KeyInfo>;

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JournalPage {
    /// Changes in LSN order, all with `lsn > after`.
    pub changes: Vec<Change>,
    /// The project's last LSN when the page was read.
    pub last_lsn: Lsn,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub region: String,
    /// The change-record format version this server writes.
    pub journal_format: u32,
}

/// A role: one of the built-in roles, or a custom role defined with `POST /v1/roles`. On the
/// wire it is its name (`admin`, `ai_user`, `my-auditor`…).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Role {
    /// The Owner: everything, including keys, role assignments, locks and journals.
    Admin,
    /// Read and write projects and their contents; no keys, locks or raw journal.
    #[default]
    Contributor,
    /// Read projects and their contents.
    Reader,
    /// Read and write a project's contents (agents, conversations, files…), read the project;
    /// never a connection's secret.
    AiUser,
    /// Read a project's contents and the project; nothing else.
    AiReader,
    /// Read and write a project's ML workspace (experiments, runs, models, traces,
    /// environments), read the project; nothing of its agents.
    MlUser,
    /// Read a project's ML workspace and the project.
    MlReader,
    /// Backup, restore and export; read projects; no deletes, no contents.
    BackupOperator,
    /// Read the server's metrics (`/metrics`, for a Prometheus scraper); nothing else.
    MonitoringReader,
    /// A custom role, by name (see [`RoleDefinition`]).
    Custom(String),
}

impl Role {
    /// The built-in roles, most powerful first.
    pub const BUILT_IN: [Role; 9] = [
        Role::Admin,
        Role::Contributor,
        Role::Reader,
        Role::AiUser,
        Role::AiReader,
        Role::MlUser,
        Role::MlReader,
        Role::BackupOperator,
        Role::MonitoringReader,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Role::Admin => "admin",
            Role::Contributor => "contributor",
            Role::Reader => "reader",
            Role::AiUser => "ai_user",
            Role::AiReader => "ai_reader",
            Role::MlUser => "ml_user",
            Role::MlReader => "ml_reader",
            Role::BackupOperator => "backup_operator",
            Role::MonitoringReader => "monitoring_reader",
            Role::Custom(name) => name,
        }
    }

    /// A role by name: a built-in one (also by its platform name: `Owner`, `AI User`…), else a
    /// custom role of that name (whether it exists is the server's question).
    pub fn parse(s: &str) -> Role {
        match s {
            "admin" | "Owner" => Role::Admin,
            "contributor" | "Contributor" => Role::Contributor,
            "reader" | "Reader" => Role::Reader,
            "ai_user" | "AI User" => Role::AiUser,
            "ai_reader" | "AI Reader" => Role::AiReader,
            "ml_user" | "ML User" => Role::MlUser,
            "ml_reader" | "ML Reader" => Role::MlReader,
            "backup_operator" | "Backup Operator" => Role::BackupOperator,
            "monitoring_reader" | "Monitoring Reader" => Role::MonitoringReader,
            other => Role::Custom(other.to_owned()),
        }
    }

    pub fn is_built_in(&self) -> bool {
        !matches!(self, Role::Custom(_))
    }
}

impl Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Role::parse(&String::deserialize(d)?))
    }
}

impl utoipa::PartialSchema for Role {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("admin, contributor, reader, ai_user, ai_reader, backup_operator, monitoring_reader, or a custom role's name"))
            .into()
    }
}

impl ToSchema for Role {}

/// A custom role (`holdfast role create --file role.json`): what it allows, as action patterns
/// where `*` stands for any run of characters. An action is allowed when a pattern of `actions`
/// (control plane) or `data_actions` (a project's contents) matches it and no pattern of the
/// matching `not_…` list does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleDefinition {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub not_actions: Vec<String>,
    #[serde(default)]
    pub data_actions: Vec<String>,
    #[serde(default)]
    pub not_data_actions: Vec<String>,
    /// Set by the server: whether this is one of the built-in roles.
    #[serde(default)]
    pub built_in: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RoleDefinitionList {
    pub data: Vec<RoleDefinition>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCreate {
    /// A name for the new principal that owns the key.
    pub name: String,
    /// The role the new principal holds; none when left out (assign one with `holdfast role
    /// assign`): a key never gets standing rights by default.
    #[serde(default)]
    pub role: Option<Role>,
    /// Where the role holds: `/` (the default) or `/projects/{name}`.
    #[serde(default)]
    pub scope: Option<String>,
}

/// Returned once, at creation: the secret is not stored and cannot be shown again.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyCreated {
    pub key: String,
    pub key_id: KeyId,
    pub principal_id: PrincipalId,
    pub name: String,
    /// `null` for a key made without a role.
    pub role: Option<Role>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    pub key_id: KeyId,
    pub principal_id: PrincipalId,
    pub name: String,
    /// The principal's first role (the one at `/` if there is one); `null` when it holds none.
    pub role: Option<Role>,
    /// The first characters of the key, enough to recognise it.
    pub prefix: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// Where its role holds; `null` when it holds none.
    pub scope: Option<String>,
}

/// Holdfast's error envelope on `/v1`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, such as `not_found` or `conflict`.
    pub code: String,
    pub message: String,
    /// The request id to quote when reporting a problem.
    pub request_id: String,
}

/// One end of a project's restorable window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RestorePoint {
    pub lsn: Lsn,
    /// RFC 3339, UTC.
    pub time: String,
}

/// How far a project's continuous backup reaches (`holdfast backup status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackupStatus {
    pub project: String,
    pub project_id: ProjectId,
    /// The archive URL.
    pub archive: String,
    /// Every change up to this LSN is in the archive.
    pub archived_lsn: Lsn,
    /// The project's last committed LSN.
    pub journal_lsn: Lsn,
    /// Changes committed but not yet archived.
    pub lag_changes: u64,
    /// Age of the oldest change not yet archived (0 when caught up).
    pub lag_seconds: f64,
    /// Restorable window; absent while nothing is archived.
    pub earliest: Option<RestorePoint>,
    pub latest: Option<RestorePoint>,
    pub segments: usize,
    pub snapshots: usize,
    /// RFC 3339 time of the newest snapshot.
    pub last_snapshot_at: Option<String>,
    /// The last archiving failure, cleared by the next success.
    pub last_error: Option<String>,
    pub last_verify: Option<VerifyReport>,
}

/// The outcome of `holdfast backup verify`: a trial restore of the archive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    pub project: String,
    pub ok: bool,
    /// The last LSN the trial restore reached.
    pub lsn: Lsn,
    /// RFC 3339 time of the verification.
    pub verified_at: String,
    pub message: String,
}

/// `POST /v1/projects/{project}/restore`: restore into a new project. Give `lsn` or `at`
/// (or neither, for the latest restorable point).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Name of the new project; must not exist.
    pub into: String,
    pub lsn: Option<Lsn>,
    /// RFC 3339: the state as of this time (every change up to it).
    pub at: Option<String>,
    /// Read the archive even when the project's own journal could serve the restore.
    #[serde(default)]
    pub from_archive: bool,
    /// Stop at the last good change when a segment is corrupt, instead of failing.
    #[serde(default)]
    pub allow_partial: bool,
}

/// What a restore made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RestoreSummary {
    pub project: Project,
    pub source_project_id: ProjectId,
    /// `journal` (the live project's own journal) or `archive`.
    pub source: String,
    /// The source's last change included.
    pub restored_lsn: Lsn,
    pub restored_time: String,
    pub blobs: u64,
    /// The state hash the restore was checked against, where the archive recorded one.
    pub verified_state_hash: Option<String>,
    /// Why the restore stopped early (`allow_partial`).
    pub partial: Option<String>,
}

/// A long-running operation (a restore); poll `GET /v1/operations/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Operation {
    pub id: String,
    pub kind: String,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    pub done: u64,
    pub total: u64,
    pub started_at: String,
    pub result: Option<RestoreSummary>,
    pub error: Option<ErrorDetail>,
}

/// What a lock forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum LockKind {
    /// Nothing at or under the scope may be deleted.
    CanNotDelete,
    /// Nothing at or under the scope may be changed or deleted.
    ReadOnly,
}

impl LockKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LockKind::CanNotDelete => "CanNotDelete",
            LockKind::ReadOnly => "ReadOnly",
        }
    }

    pub fn parse(s: &str) -> Option<LockKind> {
        match s {
            "CanNotDelete" => Some(LockKind::CanNotDelete),
            "ReadOnly" => Some(LockKind::ReadOnly),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LockCreate {
    /// `/`, `/projects/{project}`, or one resource: `/projects/{project}/{agents|conversations|
    /// files|vector_stores|connections|deployments|responses}/{id or name}`.
    pub scope: String,
    pub kind: LockKind,
    /// Guard the project's contents too (conversations, agents, files…), not only the project.
    /// Always on for a lock on one resource.
    #[serde(default)]
    pub data_plane: bool,
    #[serde(default)]
    pub notes: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lock {
    pub id: String,
    pub scope: String,
    pub kind: LockKind,
    pub data_plane: bool,
    pub notes: String,
    /// The principal that set it.
    pub created_by: String,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LockList {
    pub data: Vec<Lock>,
}

/// How one readiness check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Fail,
    /// The capability the check looks for is not built yet: never counted as a pass.
    NotAvailable,
}

/// How much a failing check matters; a failing `high` one makes a project not ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    High,
    Medium,
    Low,
}

/// One practice of docs/DR.md, checked for one project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Finding {
    /// A stable id: `delete_lock`, `data_plane_lock`, `continuous_backup`, `replica`,
    /// `identity`, `standing_delete_rights`, `restore_drill`, `purge_protection`.
    pub check: String,
    pub status: CheckStatus,
    pub severity: Severity,
    pub message: String,
    /// The holdfast command that fixes it; empty when nothing is to be done.
    pub fix: String,
}

/// `holdfast check`: a project's readiness review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub project: String,
    /// No high-severity check fails.
    pub ok: bool,
    pub findings: Vec<Finding>,
}

/// A role held by a principal at a scope (`/` or `/projects/{name}`), inherited downward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleAssignment {
    pub principal_id: PrincipalId,
    pub role: Role,
    pub scope: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RoleAssignmentList {
    pub data: Vec<RoleAssignment>,
}

/// One audited request: every mutation and every denied request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub time: String,
    /// The principal's id; empty when the request carried no valid key.
    pub principal: String,
    pub method: String,
    pub route: String,
    pub path: String,
    pub scope: String,
    /// The action the route declares.
    pub action: String,
    pub address: String,
    pub status: u16,
    /// `ok`, `denied` or `error`.
    pub outcome: String,
    pub request_id: String,
    /// sha256 of the previous entry's hash and this entry's fields.
    pub hash: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub data: Vec<AuditEntry>,
    /// Pass as `after` for the next page; null at the end.
    pub next_after: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditVerify {
    pub ok: bool,
    pub entries: u64,
    /// The first entry whose MAC or link to its predecessor is wrong.
    pub first_bad_seq: Option<i64>,
    /// Entries written before the chain was keyed (a bare sha256 each): they verify only as a
    /// chain, which anyone who can write `control.db` can recompute, so only the archived copy
    /// proves them.
    #[serde(default)]
    pub unkeyed_entries: u64,
    pub message: String,
    /// The archived copy, when the server archives: its own chain, and whether the local log
    /// still holds every archived entry unchanged. `ok` is false when this is.
    pub archive: Option<AuditArchiveCheck>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditArchiveCheck {
    pub ok: bool,
    /// The archive's URL.
    pub url: String,
    /// Archived entries whose chain verified.
    pub entries: u64,
    pub message: String,
}

// Replication ------------------------------------------------------------------------------------

/// How a replica region holds a project (docs/DR.md §Recovery modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaMode {
    /// Applies the journal and serves the project's reads; writes go to the primary.
    Hot,
    /// Applies the journal; serves the project only once promoted.
    Warm,
}

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CommitMode {
    /// Once the primary has it durably; the replica follows within its lag.
    #[default]
    Async,
    /// Once the replica has applied it durably too.
    Sync,
}

/// One replica of a project, as the project's record lists it (journaled, so every copy knows
/// the project's topology).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaSpec {
    pub region: String,
    pub mode: ReplicaMode,
    #[serde(default)]
    pub commit: CommitMode,
    /// Sync commit only: when the replica does not confirm a write in time, acknowledge it
    /// anyway (as async, with a warning and `holdfast_sync_fallbacks_total`) instead of failing it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync_fallback: bool,
    /// Sync commit only: set (µs) when a forced or automatic failover declared this region lost;
    /// while set, writes do not wait for it (the project is not synchronously protected, RPO >
    /// 0). Cleared when the region, back as a replica, has caught up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_suspended_us: Option<Micros>,
}

/// `POST /v1/projects/{project}/replicas`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaCreate {
    /// A peer region (`[[peers]]` / `--peer`).
    pub region: String,
    pub mode: ReplicaMode,
    #[serde(default)]
    pub commit: CommitMode,
    /// See [`ReplicaSpec::sync_fallback`]; default false: a write the replica did not confirm fails.
    #[serde(default)]
    pub sync_fallback: bool,
}

/// `POST /internal/v1/replicas`: the primary asks a peer to hold a replica.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaStart {
    pub project_id: ProjectId,
    pub name: String,
    /// The region to pull from (the primary).
    pub source_region: String,
    pub mode: ReplicaMode,
}

/// `GET /internal/v1/projects/{id}/journal`: changes after `after`, and where the primary is.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JournalBatch {
    #[schema(value_type = Vec<Object>)]
    pub changes: Vec<crate::Change>,
    /// The primary's last LSN and epoch when it answered.
    pub last_lsn: Lsn,
    pub epoch: Epoch,
    /// Timestamp of the primary's last change (µs).
    pub last_ts: i64,
}

/// A replica as its primary sees it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplicaStatus {
    pub region: String,
    pub mode: ReplicaMode,
    pub commit: CommitMode,
    /// Sync commit suspended since (RFC 3339): a failover declared the region lost, and writes
    /// do not wait for it until it has caught up again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_suspended_since: Option<String>,
    /// What the replica has durably applied (it asks for changes after it).
    pub applied_lsn: Lsn,
    pub lag_changes: u64,
    /// Age of the oldest change the replica lacks; 0 when caught up.
    pub lag_ms: u64,
    /// When the replica last pulled (RFC 3339), if ever since this server started.
    pub last_contact: Option<String>,
}

/// `GET /v1/status`: one project as this region sees it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ProjectStatus {
    pub project: String,
    pub project_id: ProjectId,
    /// This server's region.
    pub region: String,
    /// `primary`, `replica` or `fenced`.
    pub role: String,
    pub primary_region: String,
    pub epoch: Epoch,
    pub lsn: Lsn,
    /// On the primary: each replica's progress. On a replica: empty (see `source`).
    pub replicas: Vec<ReplicaStatus>,
    /// On a replica: its mode, what it has applied of the primary, and when it last heard from it.
    pub replica: Option<ReplicaProgress>,
    /// With a coordinator (etcd): who holds the project's lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseView>,
}

/// The project's leader key in etcd.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LeaseView {
    /// The region holding it; none while it is free (the primary's lease lapsed).
    pub holder: Option<String>,
    pub epoch: Option<Epoch>,
    /// Seconds until the lease expires unless renewed.
    pub expires_in_secs: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplicaProgress {
    pub mode: ReplicaMode,
    pub source_region: String,
    pub applied_lsn: Lsn,
    /// The primary's last LSN when last heard from.
    pub primary_lsn: Lsn,
    pub lag_changes: u64,
    pub lag_ms: u64,
    pub last_contact: Option<String>,
    /// Why the last pull failed, if it did.
    pub last_error: Option<String>,
}

/// `POST /internal/v1/projects/{id}/promote`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The fenced primary's last LSN: the target promotes once it has applied exactly this.
    pub until_lsn: Lsn,
    /// The new epoch.
    pub epoch: Epoch,
    /// The region giving up the primary; it becomes a replica of the target.
    pub old_primary: String,
    pub old_primary_mode: ReplicaMode,
}

/// `POST /v1/projects/{project}/failover`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailoverRequest {
    /// The region to move the primary to; it must hold a replica.
    pub to: String,
    /// The primary is unreachable: promote what the target has (send it to the target region).
    #[serde(default)]
    pub force: bool,
}

/// What a failover did.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FailoverReport {
    pub project: String,
    pub from_region: String,
    pub to_region: String,
    pub forced: bool,
    /// The new epoch, and the LSN of its first change.
    pub epoch: Epoch,
    pub lsn: Lsn,
    /// The last change the target had applied from the old primary.
    pub last_applied_lsn: Lsn,
    /// Forced only: when the target last heard from the old primary (RFC 3339).
    pub last_contact: Option<String>,
    /// What may be lost: nothing for a planned failover; for a forced one, the changes the old
    /// primary committed after `last_applied_lsn` (kept as a divergence record when it returns).
    pub message: String,
}

/// `GET /internal/v1/region-key`: a region's public key, which a primary wraps a project's data
/// key for when it replicates the project there (docs/formats/replication.md).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RegionKeyInfo {
    pub region: String,
    /// X25519 public key, base64 of 32 bytes.
    pub key: String,
}

/// `GET /internal/v1/projects/{id}/position`: what a region holds of a project.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Position {
    /// `primary`, `replica` or `fenced`.
    pub role: String,
    pub epoch: Epoch,
    pub lsn: Lsn,
    /// The first LSN of each epoch after the first that this copy holds: `[[epoch, lsn], …]`.
    pub epoch_starts: Vec<(Epoch, Lsn)>,
}

/// `POST /internal/v1/control/ops`: a control write planned in a region that holds a replica
/// of the control journal, for the region that holds its primary to commit.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlOps {
    /// The control journal's LSN the ops were planned at; refused (409) if it has moved on.
    #[schema(value_type = u64)]
    pub base: Lsn,
    pub actor: String,
    pub request_id: String,
    #[schema(value_type = Vec<Object>)]
    pub ops: Vec<crate::Op>,
}

/// The answer to [`ControlOps`]: the LSN of the change that holds them.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ControlCommitted {
    #[schema(value_type = u64)]
    pub lsn: Lsn,
}

/// `POST /internal/v1/projects/{id}/divergences`: a deposed primary's unreplicated changes.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DivergenceReport {
    pub from_region: String,
    #[schema(value_type = Vec<Object>)]
    pub changes: Vec<Change>,
}

/// A divergence record (`holdfast divergence list|show`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Divergence {
    pub id: String,
    pub from_region: String,
    /// The epoch the deposed primary was at.
    pub epoch: Epoch,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub count: usize,
    pub detected_at: String,
    /// LSNs already replayed (by `holdfast divergence replay`).
    pub replayed: Vec<Lsn>,
    /// The changes themselves (`show` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub changes: Vec<Change>,
}

/// `POST /v1/projects/{project}/divergences/{id}/replay`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The changes to replay, by their LSN in the record; all not yet replayed when absent.
    #[serde(default)]
    pub lsns: Option<Vec<Lsn>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplayOutcome {
    pub lsn: Lsn,
    /// The new change's LSN on the current primary, or why it was refused.
    pub new_lsn: Option<Lsn>,
    pub error: Option<String>,
}
