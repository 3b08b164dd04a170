//! Managed identities, as a project's life needs them (its create names a user-assigned one
//! or makes a system-assigned one; `holdfast_governance` manages them otherwise): principals no person holds, for a project's workloads. A user-assigned
//! identity (`holdfast identity create NAME`) exists on its own: deleting and recreating a
//! project leaves its principal id, and so its role assignments elsewhere, as they were. A
//! system-assigned identity is made with its project (`system_identity: true`) and removed —
//! keys revoked, assignments gone — when the project is purged.

use holdfast_store::control::{self, IdentityRecord};
use holdfast_types::api::ProjectIdentity;
use holdfast_types::{Error, PrincipalId, ProjectId, now_micros};

use crate::{Result, Service};

pub const USER_ASSIGNED: &str = "user_assigned";
pub const SYSTEM_ASSIGNED: &str = "system_assigned";

fn not_found(name: &str) -> Error {
    Error::not_found(format!("no identity {name:?} (holdfast identity list)"))
}

impl Service {
    /// An identity by name.
    pub async fn find_identity(&self, name: &str) -> Result<IdentityRecord> {
        let key = name.to_owned();
        self.control
            .call(move |c| control::find_identity(c, &key))
            .await
            .map_err(Error::from)?
            .ok_or_else(|| not_found(name))
    }

    /// The user-assigned identity a project's create names.
    pub async fn user_identity(&self, name: &str) -> Result<ProjectIdentity> {
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
        let made = self.control_write(&crate::Caller::system(), move |c| control::insert_identity(c, &stored)).await?;
        if !made {
            return Err(Error::conflict(format!("an identity named {:?} exists already", record.name)));
        }
        Ok(ProjectIdentity { principal_id: record.id, name: record.name, kind: record.kind })
    }
}
