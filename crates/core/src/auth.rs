//! Principals, API keys and the authorization check.
//!
//! A key authenticates a principal; a principal holds roles at scopes (`/` or one project),
//! inherited downward. A role — built-in or custom — is a [`RoleDefinition`]: action patterns it
//! allows and denies. Every operation states the [`Action`] it needs and calls
//! [`Caller::require`] first; the API gate (`holdfast-api`'s `authz`) calls it too, before any
//! handler runs.

use std::collections::HashMap;
use std::sync::Arc;

use holdfast_store::control::{self, NewKey};
use holdfast_store::ProjectStore;
use holdfast_types::api::{KeyCreated, Role, RoleDefinition};
use holdfast_types::{Error, KeyId, PrincipalId, RequestId};
use sha2::{Digest, Sha256};

use crate::secrets::MasterKey;
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
    /// Creating and removing connections: choosing where the server sends model calls (a
    /// control-plane action; data-plane users pick deployments).
    ConnectionsWrite,
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
    /// Purging a soft-deleted project before or after its retention (Owners only).
    ProjectsPurge,
    /// Moving a project's primary to another region (Owners only).
    Failover,
    /// Reading the server's metrics (`/metrics`): they name every project.
    MetricsRead,
    /// Reading a project's ML workspace (experiments, runs, models, traces, environments).
    MlRead,
    /// Creating, changing and deleting what a project's ML workspace holds.
    MlWrite,
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
            Action::ConnectionsWrite => "projects/connections/write",
            Action::Export => "projects/export",
            Action::Import => "projects/import",
            Action::Undelete => "projects/undelete",
            Action::BackupRead => "projects/backup/read",
            Action::BackupWrite => "projects/backup/write",
            Action::Restore => "projects/restore",
            Action::LocksManage => "locks/manage",
            Action::AuditRead => "audit/read",
            Action::ProjectsPurge => "projects/purge",
            Action::Failover => "projects/failover",
            Action::MetricsRead => "metrics/read",
            Action::MlRead => "projects/ml/read",
            Action::MlWrite => "projects/ml/write",
        }
    }

    /// Every action, for validating role patterns and listing.
    pub const ALL: [Action; 21] = [
        Action::ProjectsRead,
        Action::ProjectsWrite,
        Action::JournalRead,
        Action::KeysManage,
        Action::DataRead,
        Action::DataWrite,
        Action::SecretsRead,
        Action::ConnectionsWrite,
        Action::Export,
        Action::Import,
        Action::Undelete,
        Action::BackupRead,
        Action::BackupWrite,
        Action::Restore,
        Action::LocksManage,
        Action::AuditRead,
        Action::ProjectsPurge,
        Action::Failover,
        Action::MetricsRead,
        Action::MlRead,
        Action::MlWrite,
    ];

    /// Whether this changes a project's record or its control-plane resources (connections),
    /// so a lock on the project refuses it (`ReadOnly` always, `CanNotDelete` for a delete).
    /// Failover, backup, restore and purge are not: a lock must never stand in the way of
    /// recovery, a purge has its own check, and contents are guarded by data-plane locks.
    pub fn changes_project(self) -> bool {
        matches!(self, Action::ProjectsWrite | Action::ConnectionsWrite)
    }

    /// Whether this acts on a project's contents (a role's `data_actions`) rather than the
    /// control plane (its `actions`).
    pub fn is_data(self) -> bool {
        matches!(self, Action::DataRead | Action::DataWrite | Action::SecretsRead | Action::MlRead | Action::MlWrite)
    }
}

/// `*` stands for any run of characters (slashes too); everything else matches itself.
fn pattern_matches(pattern: &str, action: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = action.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether a role with this definition allows `action`.
pub fn definition_allows(def: &RoleDefinition, action: Action) -> bool {
    let (allow, deny) =
        if action.is_data() { (&def.data_actions, &def.not_data_actions) } else { (&def.actions, &def.not_actions) };
    let name = action.as_str();
    allow.iter().any(|p| pattern_matches(p, name)) && !deny.iter().any(|p| pattern_matches(p, name))
}

/// The definition of a built-in role; `None` for a custom one.
pub fn built_in_definition(role: &Role) -> Option<RoleDefinition> {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (description, actions, data_actions): (&str, &[&str], &[&str]) = match role {
        Role::Admin => ("Owner: everything, including access, locks, journals and purge", &["*"], &["*"]),
        Role::Contributor => (
            "Read and write projects, their contents and connections, export, read backup status; no access, locks, journals, restore or purge",
            &["projects/read", "projects/write", "projects/connections/write", "projects/export", "projects/backup/read"],
            &["projects/data/*", "projects/connections/secrets/read", "projects/ml/*"],
        ),
        Role::Reader => ("Read projects and their contents", &["projects/read"], &["projects/data/read", "projects/ml/read"]),
        Role::AiUser => (
            "Read and write a project's contents, read the project; never create connections or read their secrets",
            &["projects/read"],
            &["projects/data/read", "projects/data/write"],
        ),
        Role::AiReader => ("Read a project's contents and the project", &["projects/read"], &["projects/data/read"]),
        Role::MlUser => (
            "Read and write a project's ML workspace, read the project; nothing of its agents",
            &["projects/read"],
            &["projects/ml/read", "projects/ml/write"],
        ),
        Role::MlReader => ("Read a project's ML workspace and the project", &["projects/read"], &["projects/ml/read"]),
        Role::BackupOperator => (
            "Backup, restore and export; read projects; no deletes, no contents",
            &["projects/read", "projects/backup/*", "projects/export", "projects/restore"],
            &[],
        ),
        Role::MonitoringReader => ("Read the server's metrics (/metrics); nothing else", &["metrics/read"], &[]),
        Role::Custom(_) => return None,
    };
    Some(RoleDefinition {
        name: role.as_str().to_owned(),
        description: description.to_owned(),
        actions: strings(actions),
        not_actions: Vec::new(),
        data_actions: strings(data_actions),
        not_data_actions: Vec::new(),
        built_in: true,
    })
}

/// Checks a custom role's definition: a name that is not a built-in one, and patterns that each
/// match at least one action of their plane (a typo would otherwise grant or deny nothing).
pub fn validate_definition(def: &RoleDefinition) -> Result<()> {
    validate::role_name(&def.name)?;
    if Role::parse(&def.name).is_built_in() {
        return Err(Error::invalid(format!("{:?} is a built-in role; choose another name", def.name)));
    }
    if def.actions.is_empty() && def.data_actions.is_empty() {
        return Err(Error::invalid("a role must allow something: give actions or data_actions"));
    }
    let lists = [
        ("actions", &def.actions, false),
        ("not_actions", &def.not_actions, false),
        ("data_actions", &def.data_actions, true),
        ("not_data_actions", &def.not_data_actions, true),
    ];
    for (field, patterns, data) in lists {
        for pattern in patterns {
            let known: Vec<&str> = Action::ALL.iter().filter(|a| a.is_data() == data).map(|a| a.as_str()).collect();
            if !known.iter().any(|a| pattern_matches(pattern, a)) {
                return Err(Error::invalid(format!(
                    "{field} pattern {pattern:?} matches no action; {field} may name: {}",
                    known.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// A role a principal holds at a scope, with what the role allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    pub scope: String,
    pub definition: Arc<RoleDefinition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub id: PrincipalId,
    pub name: String,
    /// The role its key was made with (its assignment at `/` when it has one).
    pub role: Role,
    /// Every role it holds, with the scope where it holds it (`/` or `/projects/{name}`).
    pub grants: Vec<Grant>,
}

impl Principal {
    /// Whether a role held at a scope at or above `scope` allows `action`.
    fn allows(&self, action: Action, scope: &str) -> bool {
        self.grants.iter().any(|g| covers(&g.scope, scope) && definition_allows(&g.definition, action))
    }
}

/// Whether an assignment at `at` holds at `scope` (roles are inherited downward).
pub fn covers(at: &str, scope: &str) -> bool {
    at == "/" || scope == at || scope.strip_prefix(at).is_some_and(|rest| rest.starts_with('/'))
}

/// Checks a role assignment's scope: `/` or `/projects/{name}`.
pub fn assignment_scope(scope: &str) -> Result<()> {
    if scope == "/" {
        return Ok(());
    }
    match scope.strip_prefix("/projects/") {
        Some(name) if !name.contains('/') => validate::project_name(name),
        _ => Err(Error::invalid(format!("scope {scope:?} must be / or /projects/NAME"))),
    }
}

/// Whether the built-in `role` may perform `action` at a scope where it is assigned (a custom
/// role's rights are its definition's; this answers `false` for one).
pub fn role_allows(role: &Role, action: Action) -> bool {
    built_in_definition(role).is_some_and(|def| definition_allows(&def, action))
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
                self.principal.grants.iter().map(|g| format!("{} at {}", g.role.as_str(), g.scope)).collect();
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
                grants: vec![Grant {
                    role: Role::Admin,
                    scope: "/".to_owned(),
                    definition: Arc::new(built_in_definition(&Role::Admin).unwrap_or_default()),
                }],
            },
            request_id: RequestId::generate(),
        }
    }
}

type KeysAndGrants = (Vec<control::KeyRecord>, Vec<(String, String, String)>, Vec<(String, String)>);

/// The label of the node pepper key hashes were made with before the control journal
/// ([`MasterKey::derive`]).
const KEY_HASH_LABEL: &str = "holdfast/key-hash/v1";
/// The label of the control plane's pepper, derived from the control project's data key.
pub(crate) const CONTROL_KEY_HASH_LABEL: &str = "holdfast/key-hash/v2";
/// What a hash under the node pepper starts with in `api_keys.hash`; a legacy hash (plain
/// sha256, 64 hex digits) has no prefix.
pub(crate) const KEY_HASH_PREFIX: &str = "v1:";
/// What a hash under the control plane's pepper starts with.
pub(crate) const CONTROL_KEY_HASH_PREFIX: &str = "v2:";

/// How keys are stored: `v2:` and the hex of HMAC-SHA-256 of the key under the control plane's
/// pepper, derived from the control project's data key (which every region the control journal
/// is replicated to can open), so a key hashes alike in every region whatever its master key. A
/// copy of `control.db` or of the control journal alone does not let anyone test guesses of a
/// key offline — which matters for a short `HOLDFAST_ADMIN_KEY`; generated keys are 256 random
/// bits. Keys stored before the control journal hold `v1:` (the node's master-key pepper) or a
/// plain sha256; they still authenticate, and are stored again under `v2:` when they do at the
/// control primary.
pub(crate) struct KeyHasher {
    node: [u8; 32],
    control: std::sync::RwLock<Option<[u8; 32]>>,
}

fn hmac_hex(pepper: &[u8; 32], key: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(pepper).expect("HMAC takes a key of any length");
    mac.update(key.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

impl KeyHasher {
    pub(crate) fn new(master: &MasterKey) -> Self {
        Self { node: master.derive(KEY_HASH_LABEL), control: std::sync::RwLock::new(None) }
    }

    /// Sets the control plane's pepper (from the control journal this region follows).
    pub(crate) fn set_control_pepper(&self, pepper: Option<[u8; 32]>) {
        if pepper.is_some() {
            *self.control.write().unwrap_or_else(|e| e.into_inner()) = pepper;
        }
    }

    /// The hash `key` is stored and looked up by: under the control plane's pepper once this
    /// region has it, else the node's.
    pub(crate) fn hash(&self, key: &str) -> String {
        match *self.control.read().unwrap_or_else(|e| e.into_inner()) {
            Some(pepper) => format!("{CONTROL_KEY_HASH_PREFIX}{}", hmac_hex(&pepper, key)),
            None => self.node_hash(key),
        }
    }

    /// The hash under the node's master-key pepper (stored before the control journal).
    pub(crate) fn node_hash(&self, key: &str) -> String {
        format!("{KEY_HASH_PREFIX}{}", hmac_hex(&self.node, key))
    }

    /// Every older hash a key may still be stored under, newest first.
    pub(crate) fn older_hashes(&self, key: &str) -> Vec<String> {
        let current = self.hash(key);
        [self.node_hash(key), legacy_hash(key)].into_iter().filter(|h| *h != current).collect()
    }
}

/// The hash keys were stored by before [`KeyHasher`]: sha256 of the key, hex. A key stored so
/// still authenticates, and is stored again under the pepper when it does (the plaintext is in
/// hand only then).
fn legacy_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new key: `hf_` and 64 hex digits (256 random bits).
fn generate_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok(format!("hf_{}", hex::encode(bytes)))
}

/// A key of a principal holding `admin` at `/` (the bootstrap and break-glass keys).
fn admin_key<'a>(key_id: &'a KeyId, principal_id: &'a PrincipalId, name: &'a str, hash: &'a str, prefix: &'a str, source: &'a str) -> NewKey<'a> {
    NewKey { key_id, principal_id, name, role: Some(Role::Admin.as_str()), scope: "/", hash, prefix, source }
}

fn key_prefix(key: &str) -> String {
    key.chars().take(10).collect()
}

impl Service {
    /// A new key with its hash and prefix, as stored.
    pub fn new_key(&self) -> Result<(String, String, String)> {
        let key = generate_key()?;
        let (hash, prefix) = (self.key_hasher.hash(&key), key_prefix(&key));
        Ok((key, hash, prefix))
    }

    /// Makes sure an admin key exists: the one in `HOLDFAST_ADMIN_KEY` if set, else, on first
    /// start, a generated one written to `<data>/admin.key` (mode 0600). Returns a generated key
    /// (to show once). A control write, on `store` (the control journal, opened for start-up);
    /// where this region holds a replica of the control journal, the key must come from the
    /// control plane, and this only says whether it did.
    pub(crate) async fn bootstrap_admin(&self, store: &Arc<ProjectStore>, env_key: Option<&str>) -> Result<Option<String>> {
        let admin = PrincipalId::parse(ADMIN_PRINCIPAL).ok_or_else(|| Error::internal("bad admin id"))?;
        let replica = store.role() == holdfast_store::Role::Replica;
        if let Some(key) = env_key {
            if key.len() < 16 {
                return Err(Error::invalid("HOLDFAST_ADMIN_KEY must be at least 16 characters"));
            }
            if replica {
                if self.authenticate(Some(key)).is_err() {
                    tracing::warn!(
                        "HOLDFAST_ADMIN_KEY is not a key of the control plane this region follows: set the same \
                         HOLDFAST_ADMIN_KEY at the control primary's region (or make the key there)"
                    );
                }
                return Ok(None);
            }
            let hash = self.key_hasher.hash(key);
            let older = self.key_hasher.older_hashes(key);
            let prefix = key_prefix(key);
            self.control_write_in(Some(store), &Caller::system(), move |c| {
                // Stored by an older version: the same key, kept under its id, hashed anew.
                for old in &older {
                    if control::rehash_key(c, old, &hash)? > 0 {
                        tracing::info!("stored HOLDFAST_ADMIN_KEY's hash under the control plane's key-hash pepper");
                    }
                }
                control::revoke_source_except(c, "env", &hash)?;
                let stored: Vec<_> = control::list_keys(c)?.into_iter().filter(|k| k.hash == hash).collect();
                let live = stored.iter().any(|k| k.revoked_us.is_none());
                if !live && !stored.is_empty() {
                    // Revoked through the API while another admin held on: the setting says
                    // the key is an admin key, so it is one again (and said so).
                    tracing::warn!("HOLDFAST_ADMIN_KEY was revoked; it is an admin key again because it is still set");
                    control::unrevoke_key_hash(c, &hash)?;
                }
                if live || !stored.is_empty() {
                    // The key is an admin key by this setting: its principal holds
                    // `admin` at `/` whatever happened to the assignment.
                    let holder = stored[0].principal_id.clone();
                    control::assign_role(c, holder.as_str(), Role::Admin.as_str(), "/")?;
                } else {
                    control::insert_key(c, &admin_key(&KeyId::generate(), &admin, "admin", &hash, &prefix, "env"))?;
                }
                Ok(())
            })
            .await?;
            return Ok(None);
        }
        if replica {
            return Ok(None);
        }
        // Bootstrap once: when no admin key was ever made here (a revoked one counts, so an
        // operator's revocation is never undone by a restart).
        let bootstrapped = self
            .control
            .call(|c| Ok(control::list_keys(c)?.iter().any(|k| k.source == "generated" || k.source == "env")))
            .await
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
        let (hash, prefix, key_id) = (self.key_hasher.hash(&key), key_prefix(&key), KeyId::generate());
        self.control_write_in(Some(store), &Caller::system(), move |c| {
            control::insert_key(c, &admin_key(&key_id, &admin, "admin", &hash, &prefix, "generated"))
        })
        .await?;
        Ok(Some(key))
    }

    /// `holdfast admin reset`, the break-glass path: a new principal holding `admin` at `/`
    /// with a new key, for an operator who lost every admin key. Run offline (this process
    /// holds the data directory) in the region that holds the control primary; recorded in the
    /// audit log before it returns.
    pub async fn reset_admin(&self) -> Result<KeyCreated> {
        // Offline, nothing tells this process a copy is a replica but the catalog: a replica's
        // copy of the control journal must never take a local change.
        let control = self.control_entry().await?;
        let replicas = self.control.call(control::list_replicas).await.map_err(Error::from)?;
        if let Some(r) = replicas.iter().find(|r| r.project_id == control.id) {
            return Err(Error::conflict(format!(
                "this region holds a replica of the control journal (its primary is in region {}): run holdfast admin reset \
                 there, or fail the control plane over to this region first (holdfast failover --project holdfast-control --to \
                 {} --force)",
                r.source_region, self.region
            )));
        }
        let (key, hash, prefix) = self.new_key()?;
        let (key_id, principal_id) = (KeyId::generate(), PrincipalId::generate());
        let name = "admin-reset".to_owned();
        let system = Caller::system();
        let (k, p, n) = (key_id.clone(), principal_id.clone(), name.clone());
        self.control_write(&system, move |c| {
            control::insert_key(c, &admin_key(&k, &p, &n, &hash, &prefix, "reset"))
        })
        .await?;
        let recorded = self.audit_durable(crate::audit::Audited {
            principal: system.principal.id.as_str().to_owned(),
            method: "CLI".into(),
            route: "holdfast admin reset".into(),
            path: format!("principal {principal_id}"),
            scope: "/".into(),
            action: Action::KeysManage.as_str().into(),
            address: "local".into(),
            status: 201,
            request_id: system.request_id.as_str().to_owned(),
        })
        .await;
        if !recorded {
            // A break-glass key nobody can see in the audit log is not handed out.
            let k = key_id.clone();
            self.control_write(&system, move |c| control::revoke_keys(c, k.as_str())).await?;
            return Err(Error::internal("the reset could not be recorded in the audit log; no key was made"));
        }
        Ok(KeyCreated { key, key_id, principal_id, name, role: Some(Role::Admin) })
    }

    pub(crate) fn install_keys(&self, (keys, assignments, roles): KeysAndGrants) {
        let mut definitions: HashMap<String, Arc<RoleDefinition>> = Role::BUILT_IN
            .iter()
            .filter_map(built_in_definition)
            .map(|d| (d.name.clone(), Arc::new(d)))
            .collect();
        for (name, json) in roles {
            match serde_json::from_str::<RoleDefinition>(&json) {
                Ok(def) => {
                    definitions.insert(name, Arc::new(def));
                }
                Err(e) => tracing::error!(role = %name, error = %e, "unreadable custom role; it grants nothing"),
            }
        }
        let mut grants: HashMap<String, Vec<Grant>> = HashMap::new();
        for (principal, role, scope) in assignments {
            let role = Role::parse(&role);
            if let Some(definition) = definitions.get(role.as_str()).cloned() {
                grants.entry(principal).or_default().push(Grant { role, scope, definition });
            }
        }
        let live: HashMap<_, _> = keys
            .into_iter()
            .filter(|k| k.revoked_us.is_none())
            .map(|k| {
                let grants = grants.get(k.principal_id.as_str()).cloned().unwrap_or_default();
                let role = Role::parse(&k.role);
                (k.hash, Principal { id: k.principal_id, name: k.name, role, grants })
            })
            .collect();
        if let Ok(mut map) = self.keys.write() {
            *map = live;
        }
    }

    /// The principal a bearer token authenticates. A key stored under an older hash is stored
    /// again under the control plane's as it authenticates (at the control primary).
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal> {
        let token = token.ok_or_else(|| {
            Error::unauthenticated("missing credentials: send the header 'Authorization: Bearer <key>'")
        })?;
        let invalid = || Error::unauthenticated("invalid or revoked API key");
        let hash = self.key_hasher.hash(token);
        let (old, principal) = {
            let keys = self.keys.read().map_err(|_| Error::internal("key map poisoned"))?;
            if let Some(principal) = keys.get(&hash) {
                return Ok(principal.clone());
            }
            self.key_hasher
                .older_hashes(token)
                .into_iter()
                .find_map(|old| keys.get(&old).cloned().map(|p| (old, p)))
                .ok_or_else(invalid)?
        };
        self.upgrade_key_hash(old, hash);
        Ok(principal)
    }

    /// Stores a live key found under an older hash under the current one, as a control write
    /// in the background (the key authenticates under either meanwhile); skipped where this
    /// region holds a replica of the control journal (the primary's region upgrades it).
    fn upgrade_key_hash(&self, old: String, hash: String) {
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        // One upgrade of a key at a time, however many of its requests arrive meanwhile.
        if !self.upgrading.lock().unwrap_or_else(|e| e.into_inner()).insert(old.clone()) {
            return;
        }
        runtime.spawn(async move {
            let primary = matches!(me.control_store().await, Ok(store) if store.role() != holdfast_store::Role::Replica);
            if primary {
                let stored = old.clone();
                match me.control_write(&Caller::system(), move |c| control::rehash_key(c, &stored, &hash)).await {
                    Ok(0) => {}
                    Ok(_) => tracing::info!("stored a key's hash under the control plane's key-hash pepper"),
                    Err(e) => tracing::warn!(error = %e, "cannot store a key's hash under the control plane's key-hash pepper; it is tried again at its next use"),
                }
            }
            me.upgrading.lock().unwrap_or_else(|e| e.into_inner()).remove(&old);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_key_hashes_are_peppered_by_the_master_key_and_told_apart_from_legacy_ones() {
        let load = |hex: &str| MasterKey::load(Some(&hex.repeat(32)), std::path::Path::new("/nonexistent")).expect("key");
        let (one, other) = (KeyHasher::new(&load("ab")), KeyHasher::new(&load("cd")));
        let key = "admin-key-16char";
        let hash = one.hash(key);
        assert_eq!(hash, one.hash(key), "the same key, the same hash: lookups stay O(1)");
        assert!(hash.starts_with(KEY_HASH_PREFIX) && hash.len() == KEY_HASH_PREFIX.len() + 64, "{hash}");
        assert_ne!(hash, other.hash(key), "another master key, another pepper");
        assert_ne!(hash, one.hash("admin-key-16chaR"));
        let legacy = legacy_hash(key);
        assert!(!legacy.starts_with(KEY_HASH_PREFIX) && !hash.contains(&legacy));
    }
}
