//! The control-plane database: the catalog of projects (name → id, lifecycle state) and the
//! principals, their API keys and role assignments. Project contents never live here.

use std::path::Path;
use std::sync::{Arc, Mutex};

use holdfast_types::{KeyId, Kind, Micros, PrincipalId, ProjectId};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};

use crate::error::{Result, StoreError};
use holdfast_types::now_micros;
use crate::sqlite;

/// Schema version of the control database (`PRAGMA user_version`).
pub const CONTROL_SCHEMA_VERSION: i64 = 6;

/// Version 2 adds resource locks and the audit log.
const V2_SCHEMA: &str = "
-- One row per audited request, chained: `hash` is sha256 of `prev_hash` and the row's fields
-- (see `audit_line`), so an edited or removed row breaks the chain from there on.
CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY,
    ts_us      INTEGER NOT NULL,
    principal  TEXT NOT NULL,
    method     TEXT NOT NULL,
    route      TEXT NOT NULL,
    path       TEXT NOT NULL,
    scope      TEXT NOT NULL,
    action     TEXT NOT NULL,
    address    TEXT NOT NULL,
    status     INTEGER NOT NULL,
    outcome    TEXT NOT NULL,
    request_id TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_by_ts ON audit (ts_us);
CREATE TABLE locks (
    id         TEXT PRIMARY KEY,
    scope      TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('CanNotDelete', 'ReadOnly')),
    data_plane INTEGER NOT NULL,
    notes      TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_us INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 3: soft-deleted projects (a `deleted` state with its purge time), custom roles, and
/// managed identities (a principal's kind, and the project a system-assigned one belongs to).
const V3_SCHEMA: &str = "
CREATE TABLE projects_v3 (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    -- 'creating' until the project's database holds its first change; removed at start-up if a
    -- crash left it so (the create was never acknowledged). 'deleted': soft-deleted, hidden,
    -- its name reserved, purged at purge_after_us.
    state          TEXT NOT NULL CHECK (state IN ('creating', 'active', 'deleted')),
    created_us     INTEGER NOT NULL,
    deleted_us     INTEGER,
    purge_after_us INTEGER
) WITHOUT ROWID;
INSERT INTO projects_v3 (id, name, state, created_us) SELECT id, name, state, created_us FROM projects;
DROP TABLE projects;
ALTER TABLE projects_v3 RENAME TO projects;
CREATE TABLE roles (
    name       TEXT PRIMARY KEY,
    -- the RoleDefinition as JSON
    definition TEXT NOT NULL,
    created_us INTEGER NOT NULL
) WITHOUT ROWID;
-- 'key' (made with an API key), 'user_assigned' or 'system_assigned' (a managed identity).
ALTER TABLE principals ADD COLUMN kind TEXT NOT NULL DEFAULT 'key';
-- The project a system-assigned identity lives and dies with.
ALTER TABLE principals ADD COLUMN project_id TEXT;
";

/// Version 4: the projects this region holds as a replica of another region's primary.
const V4_SCHEMA: &str = "
CREATE TABLE replicas (
    project_id    TEXT PRIMARY KEY,
    source_region TEXT NOT NULL,
    mode          TEXT NOT NULL CHECK (mode IN ('hot', 'warm')),
    created_us    INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 5 keys the audit chain: entries up to `unkeyed_until` were written before (a bare
/// sha256 each); `mac`, set at the first start under the audit key, pins that number, so a
/// rewritten chain of plain hashes is not taken for an old one. It also records who created
/// each project (the per-principal project quota counts them).
const V5_SCHEMA: &str = "
ALTER TABLE projects ADD COLUMN created_by TEXT;
CREATE TABLE audit_keying (
    unkeyed_until INTEGER NOT NULL,
    mac           TEXT
);
INSERT INTO audit_keying (unkeyed_until, mac) SELECT COALESCE(MAX(seq), 0), NULL FROM audit;
";

/// Version 6: project names across regions, the control journal's registry (a projection of it,
/// like principals and keys): which project holds each name in every region, and where it was
/// made.
const V6_SCHEMA: &str = "
CREATE TABLE project_names (
    name       TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    region     TEXT NOT NULL,
    created_us INTEGER NOT NULL
) WITHOUT ROWID;
";

const CONTROL_SCHEMA: &str = "
CREATE TABLE projects (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    -- 'creating' until the project's database holds its first change; removed at start-up if a
    -- crash left it so (the create was never acknowledged).
    state      TEXT NOT NULL CHECK (state IN ('creating', 'active')),
    created_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE principals (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE role_assignments (
    principal_id TEXT NOT NULL REFERENCES principals (id),
    role         TEXT NOT NULL,
    scope        TEXT NOT NULL,
    PRIMARY KEY (principal_id, role, scope)
) WITHOUT ROWID;
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    principal_id TEXT NOT NULL REFERENCES principals (id),
    -- 'v1:' and hex HMAC-SHA-256 of the key under a pepper derived from the node's master key;
    -- rows of older versions hold hex sha256 of the key, replaced as the key is next used.
    hash         TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    -- 'generated' (admin.key), 'env' (HOLDFAST_ADMIN_KEY) or 'api'
    source       TEXT NOT NULL,
    created_us   INTEGER NOT NULL,
    revoked_us   INTEGER
) WITHOUT ROWID;
";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    pub id: ProjectId,
    pub name: String,
    pub active: bool,
    pub created_us: Micros,
    /// Set while the project is soft-deleted: when it was deleted and when it may be purged.
    pub deleted: Option<(Micros, Micros)>,
}

impl CatalogEntry {
    /// Reserved by a create that has not finished (rolled back at start-up).
    pub fn creating(&self) -> bool {
        !self.active && self.deleted.is_none()
    }
}

/// A live key with the principal it authenticates and that principal's role at `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: KeyId,
    pub principal_id: PrincipalId,
    pub name: String,
    /// The principal's first role assignment (the one at `/` if there is one) and its scope.
    pub role: String,
    pub scope: String,
    pub hash: String,
    pub prefix: String,
    pub source: String,
    pub created_us: Micros,
    pub revoked_us: Option<Micros>,
}

/// The control database, behind one connection; its writes are rare and small.
#[derive(Clone)]
pub struct ControlStore {
    conn: Arc<Mutex<Connection>>,
}

impl ControlStore {
    /// Opens the control database, creating it if absent.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = sqlite::open(path, true)?;
        match sqlite::user_version(&conn)? {
            0 => {
                // Each older version is brought forward by the later versions' steps, in one transaction.
            conn.execute_batch(&format!(
                "BEGIN; {CONTROL_SCHEMA} {V2_SCHEMA} {V3_SCHEMA} {V4_SCHEMA} {V5_SCHEMA} {V6_SCHEMA} PRAGMA user_version = {CONTROL_SCHEMA_VERSION}; COMMIT;"
            ))?;
            }
            1 => {
                conn.execute_batch(&format!("BEGIN; {V2_SCHEMA} {V3_SCHEMA} {V4_SCHEMA} {V5_SCHEMA} {V6_SCHEMA} PRAGMA user_version = {CONTROL_SCHEMA_VERSION}; COMMIT;"))?;
            }
            2 => {
                conn.execute_batch(&format!("BEGIN; {V3_SCHEMA} {V4_SCHEMA} {V5_SCHEMA} {V6_SCHEMA} PRAGMA user_version = {CONTROL_SCHEMA_VERSION}; COMMIT;"))?;
            }
            3 => {
                conn.execute_batch(&format!("BEGIN; {V4_SCHEMA} {V5_SCHEMA} {V6_SCHEMA} PRAGMA user_version = {CONTROL_SCHEMA_VERSION}; COMMIT;"))?;
            }
            4 => {
                conn.execute_batch(&format!("BEGIN; {V5_SCHEMA} {V6_SCHEMA} PRAGMA user_version = {CONTROL_SCHEMA_VERSION}; COMMIT;"))?;
            }
            5 => {
                conn.execute_batch(&format!("BEGIN; {V6_SCHEMA} PRAGMA user_version = {CONTROL_SCHEMA_VERSION}; COMMIT;"))?;
            }
            CONTROL_SCHEMA_VERSION => {}
            v => {
                return Err(StoreError::Corrupt(format!(
                    "control database has schema version {v}; this server reads {CONTROL_SCHEMA_VERSION}"
                )));
            }
        }
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    /// Runs `f` on the connection, off the async runtime, in a transaction.
    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().map_err(|_| StoreError::Corrupt("control store lock poisoned".into()))?;
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("control task failed: {e}")))?
    }

    /// The same as [`call`](Self::call), blocking; for start-up and tools.
    pub fn call_blocking<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Corrupt("control store lock poisoned".into()))?;
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

// Catalog ---------------------------------------------------------------------------------------

/// Reserves `name` for a project being created. `Ok(false)` if the name is taken.
pub fn insert_creating(conn: &Connection, id: &ProjectId, name: &str) -> Result<bool> {
    insert_created_by(conn, id, name, None)
}

/// [`insert_creating`], recording the principal that creates the project.
pub fn insert_created_by(conn: &Connection, id: &ProjectId, name: &str, created_by: Option<&str>) -> Result<bool> {
    let n = conn.execute(
        "INSERT INTO projects (id, name, state, created_us, created_by) VALUES (?1, ?2, 'creating', ?3, ?4)
         ON CONFLICT (name) DO NOTHING",
        params![id.as_str(), name, now_micros(), created_by],
    )?;
    Ok(n == 1)
}

/// How many projects `principal` created that the catalog still holds (soft-deleted ones too:
/// they keep their data until purged).
pub fn projects_created_by(conn: &Connection, principal: &str) -> Result<u64> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM projects WHERE created_by = ?1", [principal], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub fn mark_active(conn: &Connection, id: &ProjectId) -> Result<()> {
    conn.execute("UPDATE projects SET state = 'active' WHERE id = ?1", [id.as_str()])?;
    Ok(())
}

pub fn remove_project(conn: &Connection, id: &ProjectId) -> Result<()> {
    conn.execute("DELETE FROM projects WHERE id = ?1", [id.as_str()])?;
    Ok(())
}

/// Soft-deletes an active project: hidden from then on, its name kept, purgeable at `purge_after`.
pub fn mark_deleted(conn: &Connection, id: &ProjectId, deleted_us: Micros, purge_after_us: Micros) -> Result<()> {
    conn.execute(
        "UPDATE projects SET state = 'deleted', deleted_us = ?2, purge_after_us = ?3 WHERE id = ?1",
        params![id.as_str(), deleted_us, purge_after_us],
    )?;
    Ok(())
}

/// Brings a soft-deleted project back.
pub fn mark_recovered(conn: &Connection, id: &ProjectId) -> Result<()> {
    conn.execute(
        "UPDATE projects SET state = 'active', deleted_us = NULL, purge_after_us = NULL WHERE id = ?1",
        [id.as_str()],
    )?;
    Ok(())
}

/// Looks a project up by name or by id (`proj_…`); names never contain `_`, so the two never
/// collide.
pub fn find_project(conn: &Connection, name_or_id: &str) -> Result<Option<CatalogEntry>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, name, state, created_us, deleted_us, purge_after_us FROM projects WHERE name = ?1 OR id = ?1",
        )?
        .query_row([name_or_id], entry_from_row)
        .optional()?
        .transpose()?)
}

/// Active projects (or, with `deleted`, soft-deleted ones) ordered by name, after `after`.
pub fn list_projects(conn: &Connection, after: Option<&str>, limit: usize, deleted: bool) -> Result<Vec<CatalogEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, state, created_us, deleted_us, purge_after_us FROM projects
         WHERE state = ?3 AND name > ?1 ORDER BY name LIMIT ?2",
    )?;
    let state = if deleted { "deleted" } else { "active" };
    let rows = stmt.query_map(params![after.unwrap_or(""), limit as i64, state], entry_from_row)?;
    rows.map(|r| r?).collect()
}

/// Every catalog entry, whatever its state; for start-up recovery.
pub fn all_projects(conn: &Connection) -> Result<Vec<CatalogEntry>> {
    let mut stmt = conn.prepare("SELECT id, name, state, created_us, deleted_us, purge_after_us FROM projects ORDER BY name")?;
    let rows = stmt.query_map([], entry_from_row)?;
    rows.map(|r| r?).collect()
}

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<CatalogEntry>> {
    let id: String = r.get(0)?;
    let state: String = r.get(2)?;
    Ok(match ProjectId::parse(&id) {
        Some(pid) => Ok(CatalogEntry {
            id: pid,
            name: r.get(1)?,
            active: state == "active",
            created_us: r.get(3)?,
            deleted: match (state.as_str(), r.get::<_, Option<Micros>>(4)?, r.get::<_, Option<Micros>>(5)?) {
                ("deleted", Some(at), Some(purge)) => Some((at, purge)),
                _ => None,
            },
        }),
        None => Err(StoreError::Corrupt(format!("bad project id {id:?} in catalog"))),
    })
}

// Principals and keys ---------------------------------------------------------------------------

pub struct NewKey<'a> {
    pub key_id: &'a KeyId,
    pub principal_id: &'a PrincipalId,
    pub name: &'a str,
    /// The role given at `scope`; `None` makes a principal that holds none.
    pub role: Option<&'a str>,
    /// Where the role holds: `/` or `/projects/{name}`.
    pub scope: &'a str,
    pub hash: &'a str,
    pub prefix: &'a str,
    pub source: &'a str,
}

/// Creates the principal if it does not exist, gives it `role` at `scope` (when there is one),
/// and adds the key.
pub fn insert_key(conn: &Connection, key: &NewKey<'_>) -> Result<()> {
    let now = now_micros();
    conn.execute(
        "INSERT INTO principals (id, name, created_us) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
        params![key.principal_id.as_str(), key.name, now],
    )?;
    if let Some(role) = key.role {
        conn.execute(
            "INSERT INTO role_assignments (principal_id, role, scope) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            params![key.principal_id.as_str(), role, key.scope],
        )?;
    }
    conn.execute(
        "INSERT INTO api_keys (id, principal_id, hash, prefix, source, created_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![key.key_id.as_str(), key.principal_id.as_str(), key.hash, key.prefix, key.source, now],
    )?;
    Ok(())
}

/// Every key, live and revoked, oldest first.
pub fn list_keys(conn: &Connection) -> Result<Vec<KeyRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT k.id, k.principal_id, p.name,
                (SELECT role FROM role_assignments r WHERE r.principal_id = k.principal_id
                 ORDER BY r.scope <> '/', CASE role WHEN 'admin' THEN 0 WHEN 'contributor' THEN 1 ELSE 2 END, r.scope LIMIT 1),
                (SELECT scope FROM role_assignments r WHERE r.principal_id = k.principal_id
                 ORDER BY r.scope <> '/', CASE role WHEN 'admin' THEN 0 WHEN 'contributor' THEN 1 ELSE 2 END, r.scope LIMIT 1),
                k.hash, k.prefix, k.source, k.created_us, k.revoked_us
         FROM api_keys k JOIN principals p ON p.id = k.principal_id
         ORDER BY k.created_us, k.id",
    )?;
    let rows = stmt.query_map([], |r| {
        let key_id: String = r.get(0)?;
        let principal_id: String = r.get(1)?;
        Ok((|| {
            Ok(KeyRecord {
                key_id: KeyId::parse(&key_id)
                    .ok_or_else(|| StoreError::Corrupt(format!("bad key id {key_id:?}")))?,
                principal_id: PrincipalId::parse(&principal_id)
                    .ok_or_else(|| StoreError::Corrupt(format!("bad principal id {principal_id:?}")))?,
                name: r.get(2)?,
                role: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                scope: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                hash: r.get(5)?,
                prefix: r.get(6)?,
                source: r.get(7)?,
                created_us: r.get(8)?,
                revoked_us: r.get(9)?,
            })
        })())
    })?;
    rows.map(|r| r?).collect()
}

/// Revokes a key by its id, or every key of a principal by the principal's id. Returns how
/// many keys were revoked now.
pub fn revoke_keys(conn: &Connection, key_or_principal: &str) -> Result<usize> {
    Ok(conn.execute(
        "UPDATE api_keys SET revoked_us = ?2
         WHERE (id = ?1 OR principal_id = ?1) AND revoked_us IS NULL",
        params![key_or_principal, now_micros()],
    )?)
}

/// Makes a revoked key live again, by its hash (`HOLDFAST_ADMIN_KEY` set again at start).
pub fn unrevoke_key_hash(conn: &Connection, hash: &str) -> Result<usize> {
    Ok(conn.execute("UPDATE api_keys SET revoked_us = NULL WHERE hash = ?1 AND revoked_us IS NOT NULL", [hash])?)
}

/// Replaces a live key's hash (a key stored under an older hash scheme, now hashed anew).
/// Returns how many keys changed: 0 or 1.
pub fn rehash_key(conn: &Connection, old: &str, new: &str) -> Result<usize> {
    Ok(conn.execute(
        "UPDATE api_keys SET hash = ?2 WHERE hash = ?1 AND revoked_us IS NULL",
        params![old, new],
    )?)
}

/// Revokes every live key of `source` whose hash is not `keep`.
pub fn revoke_source_except(conn: &Connection, source: &str, keep: &str) -> Result<usize> {
    Ok(conn.execute(
        "UPDATE api_keys SET revoked_us = ?3 WHERE source = ?1 AND hash <> ?2 AND revoked_us IS NULL",
        params![source, keep, now_micros()],
    )?)
}

pub fn key_exists(conn: &Connection, key_or_principal: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM api_keys WHERE id = ?1 OR principal_id = ?1 LIMIT 1")?
        .query_row([key_or_principal], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Every key, every role assignment and every custom role, read together.
#[allow(clippy::type_complexity)]
pub fn keys_and_assignments(
    conn: &Connection,
) -> Result<(Vec<KeyRecord>, Vec<(String, String, String)>, Vec<(String, String)>)> {
    Ok((list_keys(conn)?, list_assignments(conn)?, list_roles(conn)?))
}

/// Every role assignment: (principal id, role, scope).
pub fn list_assignments(conn: &Connection) -> Result<Vec<(String, String, String)>> {
    let mut stmt = conn.prepare_cached("SELECT principal_id, role, scope FROM role_assignments ORDER BY principal_id, scope, role")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// How many principals would still hold `admin` at `/` with a live key once `without` is gone:
/// a principal's assignment (`Assignment`) or a key, or every key, of one (`Keys`). The guard
/// that keeps an Owner able to act.
pub fn admins_left(conn: &Connection, without: AdminLoss<'_>) -> Result<usize> {
    let (principal, role_gone, key_gone) = match without {
        AdminLoss::Assignment { principal } => (principal, true, ""),
        AdminLoss::Keys { key_or_principal } => ("", false, key_or_principal),
    };
    let count: i64 = conn.query_row(
        "SELECT COUNT(DISTINCT r.principal_id) FROM role_assignments r
         JOIN api_keys k ON k.principal_id = r.principal_id
         WHERE r.role = 'admin' AND r.scope = '/' AND k.revoked_us IS NULL
           AND NOT (?2 AND r.principal_id = ?1)
           AND k.id <> ?3 AND k.principal_id <> ?3",
        params![principal, role_gone, key_gone],
        |r| r.get(0),
    )?;
    Ok(count as usize)
}

/// What [`admins_left`] leaves out.
#[derive(Clone, Copy, Debug)]
pub enum AdminLoss<'a> {
    /// The principal's `admin` assignment at `/`.
    Assignment { principal: &'a str },
    /// A key by its id, or every key of a principal by the principal's id.
    Keys { key_or_principal: &'a str },
}

/// A principal's kind (`user_assigned`, `system_assigned` for identities), `None` when unknown.
pub fn principal_kind(conn: &Connection, principal: &str) -> Result<Option<String>> {
    Ok(conn.query_row("SELECT kind FROM principals WHERE id = ?1", [principal], |r| r.get::<_, Option<String>>(0)).optional()?.flatten())
}

/// Gives a principal a role at a scope; `false` when there is no such principal.
pub fn assign_role(conn: &Connection, principal: &str, role: &str, scope: &str) -> Result<bool> {
    let known = conn.query_row("SELECT 1 FROM principals WHERE id = ?1", [principal], |_| Ok(())).optional()?.is_some();
    if known {
        conn.execute(
            "INSERT INTO role_assignments (principal_id, role, scope) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![principal, role, scope],
        )?;
    }
    Ok(known)
}

/// Removes every role assignment at `scope` or under it (a deleted project's), so a project
/// made later under the same name starts with none. Returns how many went.
pub fn remove_scope_assignments(conn: &Connection, scope: &str) -> Result<usize> {
    Ok(conn.execute(
        "DELETE FROM role_assignments WHERE scope = ?1 OR substr(scope, 1, length(?1) + 1) = ?1 || '/'",
        [scope],
    )?)
}

/// Takes a role at a scope away from a principal; `false` when it did not hold it.
pub fn unassign_role(conn: &Connection, principal: &str, role: &str, scope: &str) -> Result<bool> {
    Ok(conn.execute(
        "DELETE FROM role_assignments WHERE principal_id = ?1 AND role = ?2 AND scope = ?3",
        params![principal, role, scope],
    )? == 1)
}

// Custom roles ----------------------------------------------------------------------------------

/// Stores a custom role's definition (JSON); `false` when a role of that name exists.
pub fn insert_role(conn: &Connection, name: &str, definition: &str) -> Result<bool> {
    Ok(conn.execute(
        "INSERT INTO roles (name, definition, created_us) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
        params![name, definition, now_micros()],
    )? == 1)
}

/// Every custom role: (name, definition JSON), by name.
pub fn list_roles(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached("SELECT name, definition FROM roles ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// How many assignments hold `role`.
pub fn role_assignment_count(conn: &Connection, role: &str) -> Result<usize> {
    Ok(conn.query_row("SELECT count(*) FROM role_assignments WHERE role = ?1", [role], |r| r.get::<_, i64>(0))? as usize)
}

/// Removes a custom role; `false` when there is none of that name.
pub fn delete_role(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.execute("DELETE FROM roles WHERE name = ?1", [name])? == 1)
}

// Managed identities ----------------------------------------------------------------------------

/// A managed identity: a principal that no person holds, for a project's workloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityRecord {
    pub id: PrincipalId,
    pub name: String,
    /// `user_assigned` or `system_assigned`.
    pub kind: String,
    /// The project a system-assigned identity belongs to.
    pub project_id: Option<String>,
    pub created_us: Micros,
}

/// Creates an identity; `false` when a live identity has that name already.
pub fn insert_identity(conn: &Connection, identity: &IdentityRecord) -> Result<bool> {
    let taken = conn
        .query_row(
            "SELECT 1 FROM principals WHERE name = ?1 AND kind IN ('user_assigned', 'system_assigned')",
            [&identity.name],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if taken {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO principals (id, name, created_us, kind, project_id) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![identity.id.as_str(), identity.name, identity.created_us, identity.kind, identity.project_id],
    )?;
    Ok(true)
}

fn identity_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<IdentityRecord>> {
    let id: String = r.get(0)?;
    Ok(match PrincipalId::parse(&id) {
        Some(pid) => Ok(IdentityRecord {
            id: pid,
            name: r.get(1)?,
            kind: r.get(2)?,
            project_id: r.get(3)?,
            created_us: r.get(4)?,
        }),
        None => Err(StoreError::Corrupt(format!("bad principal id {id:?}"))),
    })
}

/// Every live identity, by name.
pub fn list_identities(conn: &Connection) -> Result<Vec<IdentityRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, kind, project_id, created_us FROM principals
         WHERE kind IN ('user_assigned', 'system_assigned') ORDER BY name",
    )?;
    let rows = stmt.query_map([], identity_from_row)?;
    rows.map(|r| r?).collect()
}

/// A live identity by name or principal id.
pub fn find_identity(conn: &Connection, name_or_id: &str) -> Result<Option<IdentityRecord>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, name, kind, project_id, created_us FROM principals
             WHERE (name = ?1 OR id = ?1) AND kind IN ('user_assigned', 'system_assigned')",
        )?
        .query_row([name_or_id], identity_from_row)
        .optional()?
        .transpose()?)
}

/// Ends an identity: its keys are revoked, its role assignments removed, and it is no longer
/// listed (the principal's row stays, so audit entries and journals still name a known id).
pub fn remove_identity(conn: &Connection, id: &PrincipalId) -> Result<()> {
    revoke_keys(conn, id.as_str())?;
    conn.execute("DELETE FROM role_assignments WHERE principal_id = ?1", [id.as_str()])?;
    conn.execute("UPDATE principals SET kind = 'removed_identity' WHERE id = ?1", [id.as_str()])?;
    Ok(())
}

/// Removes system-assigned identities: those of `project`, or (with `None`) those whose project
/// the catalog does not hold (a create a crash cut off).
pub fn remove_system_identities(conn: &Connection, project: Option<&ProjectId>) -> Result<()> {
    let known: Vec<String> = all_projects(conn)?.into_iter().map(|e| e.id.as_str().to_owned()).collect();
    for identity in list_identities(conn)? {
        let Some(owner) = identity.project_id.as_deref().filter(|_| identity.kind == "system_assigned") else {
            continue;
        };
        let ends = match project {
            Some(p) => owner == p.as_str(),
            None => !known.iter().any(|k| k == owner),
        };
        if ends {
            remove_identity(conn, &identity.id)?;
        }
    }
    Ok(())
}

/// Adds a key for an existing principal (an identity), without any role of its own.
pub fn insert_principal_key(conn: &Connection, key: &NewKey<'_>) -> Result<()> {
    conn.execute(
        "INSERT INTO api_keys (id, principal_id, hash, prefix, source, created_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![key.key_id.as_str(), key.principal_id.as_str(), key.hash, key.prefix, key.source, now_micros()],
    )?;
    Ok(())
}

// Locks -----------------------------------------------------------------------------------------

/// A lock as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRecord {
    pub id: String,
    pub scope: String,
    pub kind: String,
    pub data_plane: bool,
    pub notes: String,
    pub created_by: String,
    pub created_us: Micros,
}

pub fn insert_lock(conn: &Connection, lock: &LockRecord) -> Result<()> {
    conn.execute(
        "INSERT INTO locks (id, scope, kind, data_plane, notes, created_by, created_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![lock.id, lock.scope, lock.kind, lock.data_plane, lock.notes, lock.created_by, lock.created_us],
    )?;
    Ok(())
}

/// Every lock, oldest first.
pub fn list_locks(conn: &Connection) -> Result<Vec<LockRecord>> {
    let mut stmt = conn.prepare(
        "SELECT id, scope, kind, data_plane, notes, created_by, created_us FROM locks ORDER BY created_us, id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(LockRecord {
            id: r.get(0)?,
            scope: r.get(1)?,
            kind: r.get(2)?,
            data_plane: r.get(3)?,
            notes: r.get(4)?,
            created_by: r.get(5)?,
            created_us: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Removes a lock; `false` when there is none with that id.
pub fn delete_lock(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn.execute("DELETE FROM locks WHERE id = ?1", [id])? == 1)
}

// The control journal's projection ---------------------------------------------------------------

/// The tables that hold the control journal's state here, with the resource kind each row is
/// journaled as and the columns that make its id. They are a projection: rebuilt from the
/// control journal ([`replace_control_rows`]), never changed any other way while a server runs
/// (a control write changes them in a transaction it rolls back, and journals the difference).
pub const CONTROL_TABLES: [(Kind, &str, &[&str]); 6] = [
    (Kind::Principal, "principals", &["id"]),
    (Kind::RoleDefinition, "roles", &["name"]),
    (Kind::Lock, "locks", &["id"]),
    (Kind::ApiKey, "api_keys", &["id"]),
    (Kind::RoleAssignment, "role_assignments", &["principal_id", "role", "scope"]),
    (Kind::ProjectName, "project_names", &["name"]),
];

/// The project that holds `name` across regions, and the region it was made in.
pub fn name_holder(conn: &Connection, name: &str) -> Result<Option<(String, String)>> {
    Ok(conn
        .query_row("SELECT project_id, region FROM project_names WHERE name = ?1", [name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Registers `name` for project `id`, made in `region`; `Err` with the holder when another
/// project holds it.
pub fn register_name(conn: &Connection, name: &str, id: &ProjectId, region: &str) -> Result<std::result::Result<(), (String, String)>> {
    match name_holder(conn, name)? {
        Some((holder, _)) if holder == id.as_str() => Ok(Ok(())),
        Some(other) => Ok(Err(other)),
        None => {
            conn.execute(
                "INSERT INTO project_names (name, project_id, region, created_us) VALUES (?1, ?2, ?3, ?4)",
                params![name, id.as_str(), region, now_micros()],
            )?;
            Ok(Ok(()))
        }
    }
}

/// Frees `name` if project `id` holds it (a purge).
pub fn release_name(conn: &Connection, name: &str, id: &ProjectId) -> Result<()> {
    conn.execute("DELETE FROM project_names WHERE name = ?1 AND project_id = ?2", params![name, id.as_str()])?;
    Ok(())
}

/// One row of a control table as the journal carries it: its kind, its id (the key columns
/// joined by `|`) and every column as a JSON object.
pub type ControlRow = (Kind, String, Value);

/// Every row of the control tables, in table order, then by id.
pub fn control_rows(conn: &Connection) -> Result<Vec<ControlRow>> {
    let mut rows = Vec::new();
    for (kind, table, keys) in CONTROL_TABLES {
        let mut stmt = conn.prepare_cached(&format!("SELECT * FROM {table}"))?;
        let names: Vec<String> = stmt.column_names().map(str::to_owned).collect();
        let mut found = Vec::new();
        let mut cursor = stmt.query([])?;
        while let Some(row) = cursor.next()? {
            let mut body = Map::new();
            for (i, name) in names.iter().enumerate() {
                let value = match row.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::from(n),
                    ValueRef::Real(f) => Value::from(f),
                    ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(_) => return Err(StoreError::Corrupt(format!("a blob in control table {table}"))),
                };
                body.insert(name.clone(), value);
            }
            let id = keys.iter().map(|k| body.get(*k).and_then(Value::as_str).unwrap_or_default()).collect::<Vec<_>>().join("|");
            found.push((kind, id, Value::Object(body)));
        }
        found.sort_by(|a, b| a.1.cmp(&b.1));
        rows.extend(found);
    }
    Ok(rows)
}

/// Refuses `ops` unless they are puts and deletes of the control kinds that leave the control
/// tables valid (known columns, their types and constraints) when applied to what they hold
/// now: tried in a savepoint that is rolled back. What a control write journals can then always
/// be projected, in every region.
pub fn check_control_ops(conn: &Connection, ops: &[holdfast_types::Op]) -> Result<()> {
    use holdfast_types::Op;
    let mut rows: std::collections::BTreeMap<(Kind, String), Value> =
        control_rows(conn)?.into_iter().map(|(kind, id, body)| ((kind, id), body)).collect();
    for op in ops {
        match op {
            Op::Put { kind, id, parent: None, body } if Kind::CONTROL.contains(kind) => {
                rows.insert((*kind, id.clone()), body.clone());
            }
            Op::Delete { kind, id } if Kind::CONTROL.contains(kind) => {
                rows.remove(&(*kind, id.clone()));
            }
            op => {
                return Err(StoreError::Rejected(holdfast_types::Error::invalid(format!(
                    "a control write carries a {} op on {} {}: only puts (without a parent) and deletes of the control kinds",
                    op_name(op),
                    op.kind().as_str(),
                    op.id()
                ))));
            }
        }
    }
    let rows: Vec<ControlRow> = rows.into_iter().map(|((kind, id), body)| (kind, id, body)).collect();
    conn.execute_batch("SAVEPOINT control_check")?;
    let tried = replace_control_rows(conn, &rows);
    conn.execute_batch("ROLLBACK TO control_check; RELEASE control_check")?;
    tried.map_err(|e| StoreError::Rejected(holdfast_types::Error::invalid(format!("a control write would leave the control tables invalid: {e}"))))
}

fn op_name(op: &holdfast_types::Op) -> &'static str {
    match op {
        holdfast_types::Op::Put { .. } => "put",
        holdfast_types::Op::Patch { .. } => "patch",
        holdfast_types::Op::Delete { .. } => "delete",
        holdfast_types::Op::Stamp { .. } => "stamp",
    }
}

/// Replaces every row of the control tables with `rows` (bodies as [`control_rows`] makes
/// them). The caller owns the transaction.
pub fn replace_control_rows(conn: &Connection, rows: &[ControlRow]) -> Result<()> {
    for (_, table, _) in CONTROL_TABLES.iter().rev() {
        conn.execute(&format!("DELETE FROM {table}"), [])?;
    }
    for (kind, table, _) in CONTROL_TABLES {
        for (_, id, body) in rows.iter().filter(|r| r.0 == kind) {
            let object = body.as_object().ok_or_else(|| StoreError::Corrupt(format!("control row {id} is not an object")))?;
            let columns: Vec<&str> = object.keys().map(String::as_str).collect();
            if let Some(bad) = columns.iter().find(|c| c.is_empty() || !c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')) {
                return Err(StoreError::Corrupt(format!("control row {id} names no column of {table}: {bad:?}")));
            }
            let marks = (1..=columns.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
            let values = object
                .values()
                .map(|v| match v {
                    Value::Null => Ok(SqlValue::Null),
                    Value::Bool(b) => Ok(SqlValue::Integer(i64::from(*b))),
                    Value::Number(n) => Ok(n.as_i64().map_or_else(|| SqlValue::Real(n.as_f64().unwrap_or_default()), SqlValue::Integer)),
                    Value::String(s) => Ok(SqlValue::Text(s.clone())),
                    _ => Err(StoreError::Corrupt(format!("control row {id} holds a nested value"))),
                })
                .collect::<Result<Vec<_>>>()?;
            conn.prepare_cached(&format!("INSERT INTO {table} ({}) VALUES ({marks})", columns.join(", ")))?
                .execute(rusqlite::params_from_iter(values))?;
        }
    }
    Ok(())
}

// Replicas --------------------------------------------------------------------------------------

/// A project this region holds as a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRecord {
    pub project_id: ProjectId,
    pub source_region: String,
    /// `hot` or `warm`.
    pub mode: String,
}

/// Records (or updates) that this region replicates a project from `source_region`.
pub fn put_replica(conn: &Connection, r: &ReplicaRecord) -> Result<()> {
    conn.execute(
        "INSERT INTO replicas (project_id, source_region, mode, created_us) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (project_id) DO UPDATE SET source_region = excluded.source_region, mode = excluded.mode",
        params![r.project_id.as_str(), r.source_region, r.mode, now_micros()],
    )?;
    Ok(())
}

/// This region no longer replicates the project (promoted, or the replica was removed).
pub fn remove_replica(conn: &Connection, project: &ProjectId) -> Result<()> {
    conn.execute("DELETE FROM replicas WHERE project_id = ?1", [project.as_str()])?;
    Ok(())
}

pub fn list_replicas(conn: &Connection) -> Result<Vec<ReplicaRecord>> {
    let mut stmt = conn.prepare("SELECT project_id, source_region, mode FROM replicas ORDER BY project_id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, source_region, mode) = row?;
        let project_id = ProjectId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("bad project id {id:?} in replicas")))?;
        out.push(ReplicaRecord { project_id, source_region, mode });
    }
    Ok(out)
}

// Audit log -------------------------------------------------------------------------------------

/// One audited request (also the line format of the archived audit log).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub ts_us: Micros,
    /// The principal's id; empty when the request carried no valid key.
    pub principal: String,
    pub method: String,
    /// The route template (`/v1/projects/{project}`).
    pub route: String,
    pub path: String,
    pub scope: String,
    /// The action the route declares (empty for routes that need none).
    pub action: String,
    /// The client's address, when known.
    pub address: String,
    pub status: u16,
    /// `ok`, `denied` (401/403) or `error`.
    pub outcome: String,
    pub request_id: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash before the first entry.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The prefix of a keyed entry's hash: `k1:` and HMAC-SHA-256 under the [`AuditKey`], hex.
/// Entries written before the chain was keyed carry a bare sha256 (hex) and are verified as such
/// but counted as unkeyed; no unkeyed entry may follow a keyed one.
pub const KEYED_PREFIX: &str = "k1:";

/// The key of the audit chain's MAC: kept apart from `control.db` (the service derives it from
/// the node's master key), so whoever can rewrite `control.db` cannot make a rewritten chain
/// verify.
#[derive(Clone, Copy)]
pub struct AuditKey(pub [u8; 32]);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

/// What an entry's hash covers: its predecessor's hash and every field, one per line. Keyed
/// (`key`): [`KEYED_PREFIX`] and the HMAC; else the bare sha256 of the first chain version.
fn audit_hash(prev: &str, r: &AuditRecord, key: Option<&AuditKey>) -> String {
    use sha2::{Digest, Sha256};
    let line = format!(
        "{prev}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        r.seq, r.ts_us, r.principal, r.method, r.route, r.path, r.scope, r.action, r.address, r.status, r.outcome,
        r.request_id
    );
    match key {
        Some(key) => format!("{KEYED_PREFIX}{}", key.mac(&line)),
        None => hex::encode(Sha256::digest(line.as_bytes())),
    }
}

impl AuditKey {
    /// HMAC-SHA-256 of `text` under this key, hex.
    fn mac(&self, text: &str) -> String {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(text.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// At start: pins, under `key`, how many entries were written before the chain was keyed (set
/// when this schema version was reached; trusted on this first start). Returns that number when
/// it was pinned now.
pub fn seal_audit_keying(conn: &Connection, key: &AuditKey) -> Result<Option<i64>> {
    let (until, mac): (i64, Option<String>) =
        conn.query_row("SELECT unkeyed_until, mac FROM audit_keying", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if mac.is_some() {
        return Ok(None);
    }
    conn.execute("UPDATE audit_keying SET mac = ?1", [key.mac(&format!("unkeyed_until:{until}"))])?;
    Ok(Some(until))
}

/// How many leading entries may carry no MAC: the pinned number when its MAC holds, else 0.
fn unkeyed_allowed(conn: &Connection, key: &AuditKey) -> Result<i64> {
    let row: Option<(i64, Option<String>)> = conn
        .query_row("SELECT unkeyed_until, mac FROM audit_keying", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match row {
        Some((until, Some(mac))) if mac == key.mac(&format!("unkeyed_until:{until}")) => until,
        _ => 0,
    })
}

/// Appends entries (their `seq`, `prev_hash` and `hash` are assigned here), chained to the last
/// and keyed with `key`.
pub fn append_audit(conn: &Connection, entries: &mut [AuditRecord], key: &AuditKey) -> Result<()> {
    let last: Option<(i64, String)> =
        conn.query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    let (mut seq, mut prev) = last.unwrap_or((0, AUDIT_GENESIS.to_owned()));
    let mut stmt = conn.prepare_cached(
        "INSERT INTO audit (seq, ts_us, principal, method, route, path, scope, action, address, status, outcome,
                            request_id, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    for e in entries.iter_mut() {
        seq += 1;
        e.seq = seq;
        e.prev_hash = prev;
        e.hash = audit_hash(&e.prev_hash, e, Some(key));
        stmt.execute(params![
            e.seq, e.ts_us, e.principal, e.method, e.route, e.path, e.scope, e.action, e.address, e.status, e.outcome,
            e.request_id, e.prev_hash, e.hash
        ])?;
        prev = e.hash.clone();
    }
    Ok(())
}

/// Which entries [`list_audit`] returns.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub since_us: Option<Micros>,
    pub until_us: Option<Micros>,
    pub principal: Option<String>,
    /// Entries at this scope or under it.
    pub scope: Option<String>,
    pub after_seq: i64,
    pub limit: usize,
}

fn audit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        ts_us: r.get(1)?,
        principal: r.get(2)?,
        method: r.get(3)?,
        route: r.get(4)?,
        path: r.get(5)?,
        scope: r.get(6)?,
        action: r.get(7)?,
        address: r.get(8)?,
        status: r.get(9)?,
        outcome: r.get(10)?,
        request_id: r.get(11)?,
        prev_hash: r.get(12)?,
        hash: r.get(13)?,
    })
}

const AUDIT_COLUMNS: &str =
    "seq, ts_us, principal, method, route, path, scope, action, address, status, outcome, request_id, prev_hash, hash";

/// Entries matching `filter`, oldest first.
pub fn list_audit(conn: &Connection, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {AUDIT_COLUMNS} FROM audit
         WHERE seq > ?1 AND (?2 IS NULL OR ts_us >= ?2) AND (?3 IS NULL OR ts_us <= ?3)
           AND (?4 IS NULL OR principal = ?4)
           AND (?5 IS NULL OR ?5 = '/' OR scope = ?5 OR substr(scope, 1, length(?5) + 1) = ?5 || '/')
         ORDER BY seq LIMIT ?6"
    ))?;
    let rows = stmt.query_map(
        params![filter.after_seq, filter.since_us, filter.until_us, filter.principal, filter.scope, filter.limit as i64],
        audit_from_row,
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Follows a run of audit entries from the first: each must follow its predecessor in `seq`,
/// link to its hash, and hash to what it says under the key (or, for an entry written before the
/// chain was keyed, to its bare sha256 — only before the first keyed entry). Used on
/// `control.db` and on the archived copy.
#[derive(Clone, Debug)]
pub struct AuditChain {
    prev: String,
    next_seq: i64,
    key: AuditKey,
    /// A keyed entry was accepted: no unkeyed one may follow.
    keyed: bool,
    /// Entries accepted so far.
    pub count: u64,
    /// Of those, entries written before the chain was keyed (proven against the archive only).
    pub unkeyed: u64,
}

impl AuditChain {
    /// A chain from the first entry.
    pub fn new(key: AuditKey) -> Self {
        Self { prev: AUDIT_GENESIS.to_owned(), next_seq: 1, key, keyed: false, count: 0, unkeyed: 0 }
    }

    /// A chain that continues after entry `seq`, whose hash is `hash`.
    pub fn after(seq: i64, hash: &str, key: AuditKey) -> Self {
        let keyed = hash.starts_with(KEYED_PREFIX);
        Self { prev: hash.to_owned(), next_seq: seq + 1, key, keyed, count: 0, unkeyed: 0 }
    }

    /// Takes the next entry; `false` (and nothing changes) when it breaks the chain.
    pub fn push(&mut self, r: &AuditRecord) -> bool {
        let keyed = r.hash.starts_with(KEYED_PREFIX);
        if r.seq != self.next_seq || r.prev_hash != self.prev || (self.keyed && !keyed) {
            return false;
        }
        if audit_hash(&r.prev_hash, r, keyed.then_some(&self.key)) != r.hash {
            return false;
        }
        self.prev.clone_from(&r.hash);
        self.next_seq += 1;
        self.count += 1;
        self.keyed |= keyed;
        self.unkeyed += u64::from(!keyed);
        true
    }

    /// The hash of the last accepted entry (the genesis hash before any).
    pub fn last_hash(&self) -> &str {
        &self.prev
    }
}

/// What [`verify_audit`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditVerified {
    /// Entries read (up to and including the first bad one).
    pub entries: u64,
    /// The first entry whose hash or link is wrong.
    pub first_bad: Option<i64>,
    /// Entries from before the chain was keyed.
    pub unkeyed: u64,
}

/// Walks the whole chain. Entries without a MAC are accepted only as many as were written
/// before the chain was keyed (see [`seal_audit_keying`]): a chain rewritten with plain hashes
/// fails at the first entry past that number.
pub fn verify_audit(conn: &Connection, key: &AuditKey) -> Result<AuditVerified> {
    let allowed = unkeyed_allowed(conn, key)?;
    let mut stmt = conn.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    let mut chain = AuditChain::new(*key);
    while let Some(row) = rows.next()? {
        let r = audit_from_row(row)?;
        let pushed = chain.push(&r);
        if !pushed || chain.unkeyed as i64 > allowed {
            return Ok(AuditVerified { entries: chain.count + u64::from(!pushed), first_bad: Some(r.seq), unkeyed: chain.unkeyed });
        }
    }
    Ok(AuditVerified { entries: chain.count, first_bad: None, unkeyed: chain.unkeyed })
}

#[cfg(test)]
mod audit_tests {
    use super::*;

    fn record(principal: &str, status: u16) -> AuditRecord {
        AuditRecord {
            seq: 0,
            ts_us: 1,
            principal: principal.into(),
            method: "PATCH".into(),
            route: "/v1/projects/{project}".into(),
            path: "/v1/projects/p".into(),
            scope: "/projects/p".into(),
            action: "projects/write".into(),
            address: "127.0.0.1".into(),
            status,
            outcome: "ok".into(),
            request_id: "req_1".into(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    const KEY: AuditKey = AuditKey([7; 32]);

    /// An entry as it is, hash and all.
    fn insert_raw(c: &Connection, r: &AuditRecord) -> Result<()> {
        c.execute(
            "INSERT INTO audit (seq, ts_us, principal, method, route, path, scope, action, address, status, outcome,
                                request_id, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![r.seq, r.ts_us, r.principal, r.method, r.route, r.path, r.scope, r.action, r.address, r.status,
                r.outcome, r.request_id, r.prev_hash, r.hash],
        )?;
        Ok(())
    }

    fn verified(entries: u64, first_bad: Option<i64>, unkeyed: u64) -> AuditVerified {
        AuditVerified { entries, first_bad, unkeyed }
    }

    #[test]
    fn the_chain_verifies_across_batches_and_an_edit_is_found() {
        let dir = tempfile::tempdir().expect("dir");
        let store = ControlStore::open(&dir.path().join("control.db")).expect("open");
        store.call_blocking(|c| append_audit(c, &mut [record("a", 200), record("b", 201)], &KEY)).expect("first batch");
        store.call_blocking(|c| append_audit(c, &mut [record("c", 403)], &KEY)).expect("second batch");
        assert_eq!(store.call_blocking(|c| verify_audit(c, &KEY)).expect("verify"), verified(3, None, 0));
        store.call_blocking(|c| Ok(c.execute("UPDATE audit SET status = 200 WHERE seq = 2", [])?)).expect("edit");
        assert_eq!(store.call_blocking(|c| verify_audit(c, &KEY)).expect("verify"), verified(2, Some(2), 0));
    }

    /// The finding: rewriting every principal and recomputing plain hashes made the chain
    /// verify. Now the rewriter needs the key, whether it recomputes keyed hashes (with a key of
    /// its own) or plain ones.
    #[test]
    fn a_rewritten_chain_does_not_verify_without_the_key() {
        let dir = tempfile::tempdir().expect("dir");
        let store = ControlStore::open(&dir.path().join("control.db")).expect("open");
        store.call_blocking(|c| append_audit(c, &mut [record("alice", 200), record("alice", 204)], &KEY)).expect("append");
        for forged_key in [Some(AuditKey([9; 32])), None] {
            store
                .call_blocking(|c| {
                    let mut rows = list_audit(c, &AuditFilter { limit: 10, ..AuditFilter::default() })?;
                    let mut prev = AUDIT_GENESIS.to_owned();
                    for r in &mut rows {
                        r.principal = "mallory".into();
                        r.prev_hash = prev.clone();
                        r.hash = audit_hash(&r.prev_hash, r, forged_key.as_ref());
                        c.execute("UPDATE audit SET principal = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
                            params![r.principal, r.prev_hash, r.hash, r.seq])?;
                        prev = r.hash.clone();
                    }
                    Ok(())
                })
                .expect("rewrite");
            let found = store.call_blocking(|c| verify_audit(c, &KEY)).expect("verify");
            match forged_key {
                Some(_) => assert_eq!(found, verified(1, Some(1), 0), "a chain keyed with another key"),
                // All plain, as the finding rewrote it: no entry was written before keying here.
                None => assert_eq!(found, verified(1, Some(1), 1), "a chain rewritten with plain hashes"),
            }
        }
    }

    #[test]
    fn unkeyed_entries_are_read_only_before_the_first_keyed_one() {
        let dir = tempfile::tempdir().expect("dir");
        let store = ControlStore::open(&dir.path().join("control.db")).expect("open");
        // Two entries of the first chain version (plain sha256), then the keyed chain.
        store
            .call_blocking(|c| {
                let mut prev = AUDIT_GENESIS.to_owned();
                for seq in 1..=2 {
                    let mut r = record("old", 200);
                    r.seq = seq;
                    r.prev_hash = prev;
                    r.hash = audit_hash(&r.prev_hash, &r, None);
                    insert_raw(c, &r)?;
                    prev = r.hash;
                }
                Ok(())
            })
            .expect("legacy rows");
        // Two entries predate keying (as the schema step would have recorded), pinned under the key.
        store.call_blocking(|c| Ok(c.execute("UPDATE audit_keying SET unkeyed_until = 2", [])?)).expect("boundary");
        assert_eq!(store.call_blocking(|c| seal_audit_keying(c, &KEY)).expect("seal"), Some(2));
        assert_eq!(store.call_blocking(|c| seal_audit_keying(c, &KEY)).expect("seal again"), None);
        store.call_blocking(|c| append_audit(c, &mut [record("new", 200)], &KEY)).expect("keyed");
        assert_eq!(store.call_blocking(|c| verify_audit(c, &KEY)).expect("verify"), verified(3, None, 2));
        // A plain entry after a keyed one breaks the chain.
        store
            .call_blocking(|c| {
                let rows = list_audit(c, &AuditFilter { limit: 10, ..AuditFilter::default() })?;
                let mut r = rows[2].clone();
                r.seq = 4;
                r.prev_hash = rows[2].hash.clone();
                r.hash = audit_hash(&r.prev_hash, &r, None);
                insert_raw(c, &r)
            })
            .expect("plain after keyed");
        assert_eq!(store.call_blocking(|c| verify_audit(c, &KEY)).expect("verify"), verified(4, Some(4), 2));
        // Moving the boundary without the key is found: its MAC no longer holds, none may be plain.
        store.call_blocking(|c| Ok(c.execute("UPDATE audit_keying SET unkeyed_until = 3", [])?)).expect("move");
        assert_eq!(store.call_blocking(|c| verify_audit(c, &KEY)).expect("verify"), verified(1, Some(1), 1));
    }
}
