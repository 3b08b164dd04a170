//! Principals, API keys and the authorization check.
//!
//! A key authenticates a principal; a principal holds roles at scopes (today: one role at `/`).
//! Every operation states the [`Action`] it needs and calls [`Caller::require`] first, so the
//! finer roles, scopes and locks of the governance work slot in here without touching callers.

use std::collections::HashMap;

use holdfast_store::control::{self, NewKey};
use holdfast_types::api::{KeyCreate, KeyCreated, KeyInfo, KeyPage, Role, RoleAssignment, RoleAssignmentList};
use holdfast_types::{Error, KeyId, PrincipalId, RequestId, rfc3339};
use sha2::{Digest, Sha256};

use crate::{Result, Service, validate};

/// The principal the bootstrap admin key belongs to.
pub const ADMIN_PRINCIPAL: &str = "prn_admin";

/// What an operation does, as the authorization check sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    ProjectsRead,
    ProjectsWrite,
    /// Reading a project's raw journal: every change, with actors and request ids.
    JournalRead,
    KeysManage,
    /// Reading a project's contents (agents, conversations, files…).
    DataRead,
    /// Creating, changing and deleting a project's contents.
    DataWrite,
    /// Reading a connection's secret (`getConnectionWithCredentials`).
    SecretsRead,
    /// Exporting a project's contents to a portable file (never its secrets).
    Export,
    /// Importing an export file into a project, keeping its ids and times.
    Import,
    /// Bringing a deleted resource back from the journal.
    Undelete,
    /// Reading a project's backup status.
    BackupRead,
    /// Forcing a snapshot, verifying the archive.
    BackupWrite,
    /// Restoring a project (to a point in time) into a new project.
    Restore,
    /// Creating and removing locks (Owners only).
    LocksManage,
    /// Reading and verifying the audit log (Owners only).
    AuditRead,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ProjectsRead => "projects/read",
            Action::ProjectsWrite => "projects/write",
            Action::JournalRead => "projects/journal/read",
            Action::KeysManage => "keys/manage",
            Action::DataRead => "projects/data/read",
            Action::DataWrite => "projects/data/write",
            Action::SecretsRead => "projects/connections/secrets/read",
            Action::Export => "projects/export",
            Action::Import => "projects/import",
            Action::Undelete => "projects/undelete",
            Action::BackupRead => "projects/backup/read",
            Action::BackupWrite => "projects/backup/write",
            Action::Restore => "projects/restore",
            Action::LocksManage => "locks/manage",
            Action::AuditRead => "audit/read",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub id: PrincipalId,
    pub name: String,
    /// The role its key was made with (its assignment at `/` when it has one).
    pub role: Role,
    /// Every role it holds, with the scope where it holds it (`/` or `/projects/{name}`).
    pub grants: Vec<(Role, String)>,
}

impl Principal {
    /// Whether a role held at a scope at or above `scope` allows `action`.
    fn allows(&self, action: Action, scope: &str) -> bool {
        self.grants.iter().any(|(role, at)| covers(at, scope) && role_allows(*role, action))
    }
}

/// Whether an assignment at `at` holds at `scope` (roles are inherited downward).
pub fn covers(at: &str, scope: &str) -> bool {
    at == "/" || scope == at || scope.strip_prefix(at).is_some_and(|rest| rest.starts_with('/'))
}

/// Checks a role assignment's scope: `/` or `/projects/{name}`.
pub(crate) fn assignment_scope(scope: &str) -> Result<()> {
    if scope == "/" {
        return Ok(());
    }
    match scope.strip_prefix("/projects/") {
        Some(name) if !name.contains('/') => validate::project_name(name),
        _ => Err(Error::invalid(format!("scope {scope:?} must be / or /projects/NAME"))),
    }
}

/// Whether `role` may perform `action` at a scope where it is assigned.
pub fn role_allows(role: Role, action: Action) -> bool {
    match role {
        Role::Admin => true,
        Role::Contributor => matches!(
            action,
            Action::ProjectsRead
                | Action::ProjectsWrite
                | Action::DataRead
                | Action::DataWrite
                | Action::SecretsRead
                | Action::Export
                | Action::BackupRead
        ),
        Role::Reader => matches!(action, Action::ProjectsRead | Action::DataRead),
        Role::AiUser => matches!(action, Action::ProjectsRead | Action::DataRead | Action::DataWrite),
        Role::AiReader => matches!(action, Action::ProjectsRead | Action::DataRead),
        Role::BackupOperator => matches!(
            action,
            Action::ProjectsRead | Action::BackupRead | Action::BackupWrite | Action::Export | Action::Restore
        ),
    }
}

/// Who is asking, and under which request id; passed to every operation.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub request_id: RequestId,
}

impl Caller {
    /// Refuses with 403 unless the caller may perform `action` on `scope`.
    pub fn require(&self, action: Action, scope: &str) -> Result<()> {
        if self.principal.allows(action, scope) {
            Ok(())
        } else {
            let held: Vec<String> =
                self.principal.grants.iter().map(|(role, at)| format!("{} at {at}", role.as_str())).collect();
            Err(Error::forbidden(format!(
                "principal {} (roles: {}) may not perform {} at scope {scope}",
                self.principal.id,
                if held.is_empty() { "none".to_owned() } else { held.join(", ") },
                action.as_str()
            )))
        }
    }

    /// A caller for work the server does on its own behalf.
    pub fn system() -> Self {
        Caller {
            principal: Principal {
                id: PrincipalId::parse("prn_system").unwrap_or_else(PrincipalId::generate),
                name: "system".into(),
                role: Role::Admin,
                grants: vec![(Role::Admin, "/".to_owned())],
            },
            request_id: RequestId::generate(),
        }
    }
}

type KeysAndGrants = (Vec<control::KeyRecord>, Vec<(String, String, String)>);

fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new key: `hf_` and 64 hex digits (256 random bits).
fn generate_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok(format!("hf_{}", hex::encode(bytes)))
}

fn key_prefix(key: &str) -> String {
    key.chars().take(10).collect()
}

impl Service {
    /// Makes sure an admin key exists: the one in `HOLDFAST_ADMIN_KEY` if set, else, on first
    /// start, a generated one written to `<data>/admin.key` (mode 0600). Returns a generated key
    /// (to show once).
    pub(crate) fn bootstrap_admin(&self, env_key: Option<&str>) -> Result<Option<String>> {
        let admin = PrincipalId::parse(ADMIN_PRINCIPAL).ok_or_else(|| Error::internal("bad admin id"))?;
        if let Some(key) = env_key {
            if key.len() < 16 {
                return Err(Error::invalid("HOLDFAST_ADMIN_KEY must be at least 16 characters"));
            }
            let hash = hash_key(key);
            self.control
                .call_blocking(|c| {
                    control::revoke_source_except(c, "env", &hash)?;
                    let live = control::list_keys(c)?
                        .into_iter()
                        .any(|k| k.hash == hash && k.revoked_us.is_none());
                    if !live {
                        control::insert_key(c, &NewKey {
                            key_id: &KeyId::generate(),
                            principal_id: &admin,
                            name: "admin",
                            role: Role::Admin.as_str(),
                            scope: "/",
                            hash: &hash,
                            prefix: &key_prefix(key),
                            source: "env",
                        })?;
                    }
                    Ok(())
                })
                .map_err(Error::from)?;
            return Ok(None);
        }
        // Bootstrap once: when no admin key was ever made here (a revoked one counts, so an
        // operator's revocation is never undone by a restart).
        let bootstrapped = self
            .control
            .call_blocking(|c| Ok(control::list_keys(c)?.iter().any(|k| k.source == "generated" || k.source == "env")))
            .map_err(Error::from)?;
        if bootstrapped {
            return Ok(None);
        }
        let path = self.data_dir.join("admin.key");
        let key = match std::fs::read_to_string(&path) {
            // A first start that crashed after writing the file but before registering the key.
            Ok(text) if text.trim().starts_with("hf_") => text.trim().to_owned(),
            _ => {
                let key = generate_key()?;
                // A leftover that is not a key (a crash while writing) is replaced.
                let _ = std::fs::remove_file(&path);
                crate::write_secret_file(&path, &format!("{key}\n"))?;
                key
            }
        };
        self.control
            .call_blocking(|c| {
                control::insert_key(c, &NewKey {
                    key_id: &KeyId::generate(),
                    principal_id: &admin,
                    name: "admin",
                    role: Role::Admin.as_str(),
                    scope: "/",
                    hash: &hash_key(&key),
                    prefix: &key_prefix(&key),
                    source: "generated",
                })
            })
            .map_err(Error::from)?;
        Ok(Some(key))
    }

    pub(crate) fn reload_keys_blocking(&self) -> Result<()> {
        let loaded = self.control.call_blocking(control::keys_and_assignments).map_err(Error::from)?;
        self.install_keys(loaded);
        Ok(())
    }

    /// Reloads keys and role assignments after a change made elsewhere (a project's deletion
    /// removes the assignments at its scope).
    pub(crate) async fn reload_principals(&self) -> Result<()> {
        let _serial = self.keys_update.lock().await;
        self.reload_keys().await
    }

    async fn reload_keys(&self) -> Result<()> {
        let loaded = self.control.call(control::keys_and_assignments).await.map_err(Error::from)?;
        self.install_keys(loaded);
        Ok(())
    }

    fn install_keys(&self, (keys, assignments): KeysAndGrants) {
        let mut grants: HashMap<String, Vec<(Role, String)>> = HashMap::new();
        for (principal, role, scope) in assignments {
            if let Some(role) = Role::parse(&role) {
                grants.entry(principal).or_default().push((role, scope));
            }
        }
        let live: HashMap<_, _> = keys
            .into_iter()
            .filter(|k| k.revoked_us.is_none())
            .map(|k| {
                let grants = grants.get(k.principal_id.as_str()).cloned().unwrap_or_default();
                let role = Role::parse(&k.role).unwrap_or(Role::Reader);
                (k.hash, Principal { id: k.principal_id, name: k.name, role, grants })
            })
            .collect();
        if let Ok(mut map) = self.keys.write() {
            *map = live;
        }
    }

    /// The principal a bearer token authenticates.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal> {
        let token = token.ok_or_else(|| {
            Error::unauthenticated("missing credentials: send the header 'Authorization: Bearer <key>'")
        })?;
        self.keys
            .read()
            .ok()
            .and_then(|m| m.get(&hash_key(token)).cloned())
            .ok_or_else(|| Error::unauthenticated("invalid or revoked API key"))
    }

    pub async fn create_key(&self, caller: &Caller, req: KeyCreate) -> Result<KeyCreated> {
        caller.require(Action::KeysManage, "/")?;
        validate::principal_name(&req.name)?;
        let scope = req.scope.clone().unwrap_or_else(|| "/".to_owned());
        assignment_scope(&scope)?;
        let key = generate_key()?;
        let key_id = KeyId::generate();
        let principal_id = PrincipalId::generate();
        let (hash, prefix) = (hash_key(&key), key_prefix(&key));
        let (k, p, name, role) = (key_id.clone(), principal_id.clone(), req.name.clone(), req.role);
        let _serial = self.keys_update.lock().await;
        self.control
            .call(move |c| {
                control::insert_key(c, &NewKey {
                    key_id: &k,
                    principal_id: &p,
                    name: &name,
                    role: role.as_str(),
                    scope: &scope,
                    hash: &hash,
                    prefix: &prefix,
                    source: "api",
                })
            })
            .await
            .map_err(Error::from)?;
        self.reload_keys().await?;
        Ok(KeyCreated { key, key_id, principal_id, name: req.name, role: req.role })
    }

    pub async fn list_keys(&self, caller: &Caller) -> Result<KeyPage> {
        caller.require(Action::KeysManage, "/")?;
        let keys = self.control.call(control::list_keys).await.map_err(Error::from)?;
        let data = keys
            .into_iter()
            .map(|k| KeyInfo {
                key_id: k.key_id,
                principal_id: k.principal_id,
                name: k.name,
                role: Role::parse(&k.role).unwrap_or(Role::Reader),
                scope: k.scope,
                prefix: k.prefix,
                created_at: rfc3339(k.created_us),
                revoked_at: k.revoked_us.map(rfc3339),
            })
            .collect();
        Ok(KeyPage { data, has_more: false, next_after: None })
    }

    /// Every role assignment (Owners only: access is theirs to manage).
    pub async fn list_role_assignments(&self, caller: &Caller) -> Result<RoleAssignmentList> {
        caller.require(Action::KeysManage, "/")?;
        let rows = self.control.call(control::list_assignments).await.map_err(Error::from)?;
        let data = rows
            .into_iter()
            .filter_map(|(principal, role, scope)| {
                Some(RoleAssignment { principal_id: PrincipalId::parse(&principal)?, role: Role::parse(&role)?, scope })
            })
            .collect();
        Ok(RoleAssignmentList { data })
    }

    /// `holdfast role assign`: gives a principal a role at `/` or `/projects/{name}`.
    pub async fn assign_role(&self, caller: &Caller, req: RoleAssignment) -> Result<RoleAssignment> {
        caller.require(Action::KeysManage, "/")?;
        assignment_scope(&req.scope)?;
        let (p, role, scope) = (req.principal_id.as_str().to_owned(), req.role.as_str(), req.scope.clone());
        let _serial = self.keys_update.lock().await;
        let known = self.control.call(move |c| control::assign_role(c, &p, role, &scope)).await.map_err(Error::from)?;
        if !known {
            return Err(Error::not_found(format!("no principal with id {}", req.principal_id)));
        }
        self.reload_keys().await?;
        Ok(req)
    }

    /// `holdfast role unassign`: takes a role at a scope away from a principal.
    pub async fn unassign_role(&self, caller: &Caller, req: RoleAssignment) -> Result<()> {
        caller.require(Action::KeysManage, "/")?;
        let (p, role, scope) = (req.principal_id.as_str().to_owned(), req.role.as_str(), req.scope.clone());
        let _serial = self.keys_update.lock().await;
        let held = self.control.call(move |c| control::unassign_role(c, &p, role, &scope)).await.map_err(Error::from)?;
        if !held {
            return Err(Error::not_found(format!(
                "principal {} holds no role {} at {}",
                req.principal_id,
                req.role.as_str(),
                req.scope
            )));
        }
        self.reload_keys().await
    }

    /// Revokes a key by key id, or all keys of a principal by principal id.
    pub async fn revoke_key(&self, caller: &Caller, id: &str) -> Result<usize> {
        caller.require(Action::KeysManage, "/")?;
        let target = id.to_owned();
        let _serial = self.keys_update.lock().await;
        let revoked = self
            .control
            .call(move |c| {
                if !control::key_exists(c, &target)? {
                    return Ok(None);
                }
                control::revoke_keys(c, &target).map(Some)
            })
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::not_found(format!("no key or principal with id {id:?}")))?;
        self.reload_keys().await?;
        Ok(revoked)
    }
}
