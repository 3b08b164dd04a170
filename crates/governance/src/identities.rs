//! Managed identities as Owners manage them: create, list, delete user-assigned ones, and
//! keys that authenticate as one. A project's system-assigned identity is made and removed
//! with the project, by the core ([`holdfast_core::identities`]).

use holdfast_core::auth::{Action, Caller};
use holdfast_core::identities::{SYSTEM_ASSIGNED, USER_ASSIGNED};
use holdfast_core::{Result, validate};
use holdfast_store::control::{self, AdminLoss, IdentityRecord, NewKey};
use holdfast_types::api::{Identity, IdentityCreate, IdentityList, KeyCreated};
use holdfast_types::{Error, KeyId, PrincipalId, now_micros, rfc3339};

use crate::Governance;

fn wire(record: IdentityRecord) -> Identity {
    Identity {
        principal_id: record.id,
        name: record.name,
        kind: record.kind,
        project_id: record.project_id,
        created_at: rfc3339(record.created_us),
    }
}

impl Governance {
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
        let made = self.core.control_write(caller, move |c| control::insert_identity(c, &stored))
            .await?;
        if !made {
            return Err(Error::conflict(format!("an identity named {:?} exists already", req.name)));
        }
        Ok(wire(record))
    }

    pub async fn list_identities(&self, caller: &Caller) -> Result<IdentityList> {
        caller.require(Action::KeysManage, "/")?;
        let records = self.core.control().call(control::list_identities).await.map_err(Error::from)?;
        Ok(IdentityList { data: records.into_iter().map(wire).collect() })
    }

    /// Removes a user-assigned identity: its keys stop working, its assignments go. A
    /// system-assigned one goes only with its project.
    pub async fn delete_identity(&self, caller: &Caller, name: &str) -> Result<()> {
        caller.require(Action::KeysManage, "/")?;
        let record = self.core.find_identity(name).await?;
        if record.kind == SYSTEM_ASSIGNED {
            return Err(Error::invalid(format!(
                "identity {name:?} is system-assigned: it is removed when its project is purged"
            )));
        }
        let removed = self.core.control_write(caller, move |c| {
                let before = control::admins_left(c, AdminLoss::Keys { key_or_principal: "" })?;
                if before > 0 && control::admins_left(c, AdminLoss::Keys { key_or_principal: record.id.as_str() })? == 0 {
                    return Ok(false);
                }
                control::remove_identity(c, &record.id).map(|()| true)
            })
            .await?;
        if !removed {
            return Err(Error::conflict(format!(
                "identity {name:?} holds the last live key of an admin at /; make another admin key first \
                 (holdfast key create --name NAME --role admin)"
            )));
        }
        Ok(())
    }

    /// `holdfast identity key NAME`: a key that authenticates as the identity, with the roles
    /// assigned to it (none until `holdfast role assign` gives some).
    pub async fn create_identity_key(&self, caller: &Caller, name: &str) -> Result<KeyCreated> {
        caller.require(Action::KeysManage, "/")?;
        let record = self.core.find_identity(name).await?;
        let (key, hash, prefix) = self.core.new_key()?;
        let key_id = KeyId::generate();
        let (k, p, label) = (key_id.clone(), record.id.clone(), record.name.clone());
        self.core.control_write(caller, move |c| {
                control::insert_principal_key(c, &NewKey {
                    key_id: &k,
                    principal_id: &p,
                    name: &label,
                    role: None,
                    scope: "",
                    hash: &hash,
                    prefix: &prefix,
                    source: "identity",
                })
            })
            .await?;
        Ok(KeyCreated { key, key_id, principal_id: record.id, name: record.name, role: None })
    }
}
