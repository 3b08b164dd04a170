//! Models of Holdfast's own control-plane API (`/v1`). Wire names are snake_case.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Change, Epoch, KeyId, Lsn, PrincipalId, ProjectId};

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

/// A built-in role: what a principal may do at the scope it is assigned at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
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
    /// Backup, restore and export; read projects; no deletes, no contents.
    BackupOperator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Contributor => "contributor",
            Role::Reader => "reader",
            Role::AiUser => "ai_user",
            Role::AiReader => "ai_reader",
            Role::BackupOperator => "backup_operator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "contributor" => Some(Role::Contributor),
            "reader" => Some(Role::Reader),
            "ai_user" => Some(Role::AiUser),
            "ai_reader" => Some(Role::AiReader),
            "backup_operator" => Some(Role::BackupOperator),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCreate {
    /// A name for the new principal that owns the key.
    pub name: String,
    #[serde(default)]
    pub role: Role,
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
    pub role: Role,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    pub key_id: KeyId,
    pub principal_id: PrincipalId,
    pub name: String,
    pub role: Role,
    /// The first characters of the key, enough to recognise it.
    pub prefix: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// Where its role holds.
    pub scope: String,
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
    /// The first entry whose hash or link to its predecessor is wrong.
    pub first_bad_seq: Option<i64>,
    pub message: String,
}
