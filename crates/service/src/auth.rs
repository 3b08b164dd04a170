//! Principals, API keys and the authorization check.
//!
//! A key authenticates a principal; a principal holds roles at scopes (today: one role at `/`).
//! Every operation states the [`Action`] it needs and calls [`Caller::require`] first, so the
//! finer roles, scopes and locks of the governance work slot in here without touching callers.

use std::collections::HashMap;

use holdfast_store::control::{self, NewKey};
use holdfast_types::api::{KeyCreate, KeyCreated, KeyInfo, KeyPage, Role};
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
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub id: PrincipalId,
    pub name: String,
    pub role: Role,
}

impl Principal {
    fn allows(&self, action: Action) -> bool {
        role_allows(self.role, action)
    }
}

/// Whether `role` may perform `action` (at `/`, where every role is assigned today).
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
        if self.principal.allows(action) {
            Ok(())
        } else {
            Err(Error::forbidden(format!(
                "principal {} (role {}) may not perform {} at scope {scope}",
                self.principal.id,
                self.principal.role.as_str(),
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
            },
            request_id: RequestId::generate(),
        }
    }
}

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
                    hash: &hash_key(&key),
                    prefix: &key_prefix(&key),
                    source: "generated",
                })
            })
            .map_err(Error::from)?;
        Ok(Some(key))
    }

    pub(crate) fn reload_keys_blocking(&self) -> Result<()> {
        let keys = self.control.call_blocking(control::list_keys).map_err(Error::from)?;
        self.install_keys(keys);
        Ok(())
    }

    async fn reload_keys(&self) -> Result<()> {
        let keys = self.control.call(control::list_keys).await.map_err(Error::from)?;
        self.install_keys(keys);
        Ok(())
    }

    fn install_keys(&self, keys: Vec<control::KeyRecord>) {
        let live: HashMap<_, _> = keys
            .into_iter()
            .filter(|k| k.revoked_us.is_none())
            .filter_map(|k| {
                let role = Role::parse(&k.role)?;
                Some((k.hash, Principal { id: k.principal_id, name: k.name, role }))
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
                prefix: k.prefix,
                created_at: rfc3339(k.created_us),
                revoked_at: k.revoked_us.map(rfc3339),
            })
            .collect();
        Ok(KeyPage { data, has_more: false, next_after: None })
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
