//! Managed identities: principals no person holds, for a project's workloads. A user-assigned
//! identity (`holdfast identity create NAME`) exists on its own: deleting and recreating a
//! project leaves its principal id, and so its role assignments elsewhere, as they were. A
//! system-assigned identity is made with its project (`system_identity: true`) and removed —
//! keys revoked, assignments gone — when the project is purged.

use holdfast_store::control::{self, IdentityRecord, NewKey};
use holdfast_types::api::{Identity, IdentityCreate, IdentityList, KeyCreated, ProjectIdentity, Role};
use holdfast_types::{Error, KeyId, PrincipalId, ProjectId, now_micros, rfc3339};

use crate::auth::{Action, Caller};
use crate::{Result, Service, validate};

pub const USER_ASSIGNED: &str = "user_assigned";
pub const SYSTEM_ASSIGNED: &str = "system_assigned";

fn wire(record: IdentityRecord) -> Identity {
    Identity {
        principal_id: record.id,
        name: record.name,
        kind: record.kind,
        project_id: record.project_id,
        created_at: rfc3339(record.created_us),
    }
}

fn not_found(name: &str) -> Error {
    Error::not_found(format!("no identity {name:?} (holdfast identity list)"))
}

impl Service {
    async fn find_identity(&self, name: &str) -> Result<IdentityRecord> {
        let key = name.to_owned();
        self.control
            .call(move |c| control::find_identity(c, &key))
            .await
            .map_err(Error::from)?
            .ok_or_else(|| not_found(name))
    }

    /// The user-assigned identity a project's create names.
    pub(crate) async fn user_identity(&self, name: &str) -> Result<ProjectIdentity> {
        let record = self.find_identity(name).await?;
        if record.kind != USER_ASSIGNED {
            return Err(Error::invalid(format!(
                "identity {name:?} is system-assigned to another project; give a user-assigned one"
            )));
        }
        Ok(ProjectIdentity { principal_id: record.id, name: record.name, kind: record.kind })
    }

    /// Makes the system-assigned identity of a project being created.
    pub(crate) async fn create_system_identity(&self, project: &ProjectId, name: &str) -> Result<ProjectIdentity> {
        // `:` never appears in a user-assigned identity's name, so the two never collide.
        let record = IdentityRecord {
            id: PrincipalId::generate(),
            name: format!("system:{name}"),
            kind: SYSTEM_ASSIGNED.to_owned(),
            project_id: Some(project.as_str().to_owned()),
            created_us: now_micros(),
        };
        let stored = record.clone();
        let made = self.control.call(move |c| control::insert_identity(c, &stored)).await.map_err(Error::from)?;
        if !made {
            return Err(Error::conflict(format!("an identity named {:?} exists already", record.name)));
        }
        Ok(ProjectIdentity { principal_id: record.id, name: record.name, kind: record.kind })
    }

    /// `holdfast identity create NAME`: a user-assigned identity.
    pub async fn create_identity(&self, caller: &Caller, req: IdentityCreate) -> Result<Identity> {
        caller.require(Action::KeysManage, "/")?;
        validate::identity_name(&req.name)?;
        let record = IdentityRecord {
            id: PrincipalId::generate(),
            name: req.name.clone(),
            kind: USER_ASSIGNED.to_owned(),
            project_id: None,
            created_us: now_micros(),
        };
        let stored = record.clone();
        let made = self.control.call(move |c| control::insert_identity(c, &stored)).await.map_err(Error::from)?;
        if !made {
            return Err(Error::conflict(format!("an identity named {:?} exists already", req.name)));
        }
        Ok(wire(record))
    }

    pub async fn list_identities(&self, caller: &Caller) -> Result<IdentityList> {
        caller.require(Action::KeysManage, "/")?;
        let records = self.control.call(control::list_identities).await.map_err(Error::from)?;
        Ok(IdentityList { data: records.into_iter().map(wire).collect() })
    }

    /// Removes a user-assigned identity: its keys stop working, its assignments go. A
    /// system-assigned one goes only with its project.
    pub async fn delete_identity(&self, caller: &Caller, name: &str) -> Result<()> {
        caller.require(Action::KeysManage, "/")?;
        let record = self.find_identity(name).await?;
        if record.kind == SYSTEM_ASSIGNED {
            return Err(Error::invalid(format!(
                "identity {name:?} is system-assigned: it is removed when its project is purged"
            )));
        }
        let _serial = self.keys_update.lock().await;
        self.control.call(move |c| control::remove_identity(c, &record.id)).await.map_err(Error::from)?;
        self.reload_keys().await
    }

    /// `holdfast identity key NAME`: a key that authenticates as the identity, with the roles
    /// assigned to it (none until `holdfast role assign` gives some).
    pub async fn create_identity_key(&self, caller: &Caller, name: &str) -> Result<KeyCreated> {
        caller.require(Action::KeysManage, "/")?;
        let record = self.find_identity(name).await?;
        let (key, hash, prefix) = self.new_key()?;
        let key_id = KeyId::generate();
        let (k, p, label) = (key_id.clone(), record.id.clone(), record.name.clone());
        let _serial = self.keys_update.lock().await;
        self.control
            .call(move |c| {
                control::insert_principal_key(c, &NewKey {
                    key_id: &k,
                    principal_id: &p,
                    name: &label,
                    role: "",
                    scope: "",
                    hash: &hash,
                    prefix: &prefix,
                    source: "identity",
                })
            })
            .await
            .map_err(Error::from)?;
        self.reload_keys().await?;
        Ok(KeyCreated { key, key_id, principal_id: record.id, name: record.name, role: Role::Custom(String::new()) })
    }
}
