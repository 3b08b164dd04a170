//! Access: API keys, role assignments and custom roles, as Owners manage them.
//!
//! The keys and grants a request authenticates with are the core's
//! ([`holdfast_core::Service::authenticate`]); every change here holds the core's principals
//! lock and installs the reloaded set before it returns, so a revoked key stops working at once.

use holdfast_core::auth::{Action, Caller, assignment_scope, built_in_definition, validate_definition};
use holdfast_core::identities::SYSTEM_ASSIGNED;
use holdfast_core::{Result, validate};
use holdfast_store::control::{self, AdminLoss, NewKey};
use holdfast_types::api::{
    KeyCreate, KeyCreated, KeyInfo, KeyPage, Role, RoleAssignment, RoleAssignmentList, RoleDefinition, RoleDefinitionList,
};
use holdfast_types::{Error, KeyId, PrincipalId, rfc3339};

use crate::Governance;

impl Governance {
    pub async fn create_key(&self, caller: &Caller, req: KeyCreate) -> Result<KeyCreated> {
        caller.require(Action::KeysManage, "/")?;
        validate::principal_name(&req.name)?;
        let scope = req.scope.clone().unwrap_or_else(|| "/".to_owned());
        assignment_scope(&scope)?;
        let (key, hash, prefix) = self.core.new_key()?;
        let key_id = KeyId::generate();
        let principal_id = PrincipalId::generate();
        let (k, p, name, role) = (key_id.clone(), principal_id.clone(), req.name.clone(), req.role.clone());
        if let Some(role) = &role {
            self.role_exists(role).await?;
        }
        self.core.control_write(caller, move |c| {
                control::insert_key(c, &NewKey {
                    key_id: &k,
                    principal_id: &p,
                    name: &name,
                    role: role.as_ref().map(Role::as_str),
                    scope: &scope,
                    hash: &hash,
                    prefix: &prefix,
                    source: "api",
                })
            })
            .await?;
        Ok(KeyCreated { key, key_id, principal_id, name: req.name, role: req.role })
    }

    pub async fn list_keys(&self, caller: &Caller) -> Result<KeyPage> {
        caller.require(Action::KeysManage, "/")?;
        let keys = self.core.control().call(control::list_keys).await.map_err(Error::from)?;
        let data = keys
            .into_iter()
            .map(|k| KeyInfo {
                key_id: k.key_id,
                principal_id: k.principal_id,
                name: k.name,
                role: (!k.role.is_empty()).then(|| Role::parse(&k.role)),
                scope: (!k.role.is_empty()).then_some(k.scope),
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
        let rows = self.core.control().call(control::list_assignments).await.map_err(Error::from)?;
        let data = rows
            .into_iter()
            .filter_map(|(principal, role, scope)| {
                Some(RoleAssignment { principal_id: PrincipalId::parse(&principal)?, role: Role::parse(&role), scope })
            })
            .collect();
        Ok(RoleAssignmentList { data })
    }

    /// `holdfast role assign`: gives a principal a role at `/` or `/projects/{name}`.
    pub async fn assign_role(&self, caller: &Caller, req: RoleAssignment) -> Result<RoleAssignment> {
        caller.require(Action::KeysManage, "/")?;
        assignment_scope(&req.scope)?;
        let (p, role, scope) = (req.principal_id.as_str().to_owned(), req.role.as_str().to_owned(), req.scope.clone());
        self.role_exists(&req.role).await?;
        let outcome = self.core.control_write(caller, move |c| {
                // A system-assigned identity ends with its project's purge: an Owner of
                // everything must not end with one project.
                if role == Role::Admin.as_str() && scope == "/" && control::principal_kind(c, &p)?.as_deref() == Some(SYSTEM_ASSIGNED) {
                    return Ok(None);
                }
                control::assign_role(c, &p, &role, &scope).map(Some)
            })
            .await?;
        let Some(known) = outcome else {
            return Err(Error::invalid(format!(
                "principal {} is a project's system-assigned identity, removed with its project: it cannot hold admin at /; \
                 give it a role at its project, or use a user-assigned identity",
                req.principal_id
            )));
        };
        if !known {
            return Err(Error::not_found(format!("no principal with id {}", req.principal_id)));
        }
        Ok(req)
    }

    /// `holdfast role unassign`: takes a role at a scope away from a principal.
    pub async fn unassign_role(&self, caller: &Caller, req: RoleAssignment) -> Result<()> {
        caller.require(Action::KeysManage, "/")?;
        let (p, role, scope) = (req.principal_id.as_str().to_owned(), req.role.as_str().to_owned(), req.scope.clone());
        let outcome = self.core.control_write(caller, move |c| {
                // The last Owner able to act keeps its role: without it nobody could manage access.
                if role == Role::Admin.as_str()
                    && scope == "/"
                    && control::admins_left(c, AdminLoss::Assignment { principal: &p })? == 0
                    && control::admins_left(c, AdminLoss::Keys { key_or_principal: "" })? > 0
                {
                    return Ok(None);
                }
                control::unassign_role(c, &p, &role, &scope).map(Some)
            })
            .await?;
        let Some(held) = outcome else {
            return Err(Error::conflict(format!(
                "principal {} holds the last admin role at / with a live key; assign admin at / to another key first (holdfast role assign --principal PRN --role admin --scope /), then remove this one",
                req.principal_id
            )));
        };
        if !held {
            return Err(Error::not_found(format!(
                "principal {} holds no role {} at {}",
                req.principal_id,
                req.role.as_str(),
                req.scope
            )));
        }
        Ok(())
    }

    /// Revokes a key by key id, or all keys of a principal by principal id.
    pub async fn revoke_key(&self, caller: &Caller, id: &str) -> Result<usize> {
        caller.require(Action::KeysManage, "/")?;
        let target = id.to_owned();
        let revoked = self.core.control_write(caller, move |c| {
                if !control::key_exists(c, &target)? {
                    return Ok(Err(false));
                }
                let before = control::admins_left(c, AdminLoss::Keys { key_or_principal: "" })?;
                if before > 0 && control::admins_left(c, AdminLoss::Keys { key_or_principal: &target })? == 0 {
                    return Ok(Err(true));
                }
                control::revoke_keys(c, &target).map(Ok)
            })
            .await?
            .map_err(|last_admin| {
                if last_admin {
                    Error::conflict(format!(
                        "{id} holds the last live key of an admin at /; make another admin key first (holdfast key create --name NAME --role admin), then revoke this one"
                    ))
                } else {
                    Error::not_found(format!("no key or principal with id {id:?}"))
                }
            })?;
        Ok(revoked)
    }

    /// Refuses a custom role that does not exist (built-in roles always do).
    async fn role_exists(&self, role: &Role) -> Result<()> {
        if role.is_built_in() {
            return Ok(());
        }
        let roles = self.core.control().call(control::list_roles).await.map_err(Error::from)?;
        if roles.iter().any(|(name, _)| name == role.as_str()) {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "unknown role {:?}: the built-in roles are admin, contributor, reader, ai_user, ai_reader, backup_operator, monitoring_reader \
                 (holdfast role definitions lists the custom ones too)",
                role.as_str()
            )))
        }
    }

    /// Every role: the built-in ones, then the custom ones by name.
    pub async fn list_roles(&self, caller: &Caller) -> Result<RoleDefinitionList> {
        caller.require(Action::KeysManage, "/")?;
        let custom = self.core.control().call(control::list_roles).await.map_err(Error::from)?;
        let mut data: Vec<RoleDefinition> = Role::BUILT_IN.iter().filter_map(built_in_definition).collect();
        for (name, json) in custom {
            let def = serde_json::from_str(&json)
                .map_err(|e| Error::internal(format!("custom role {name:?} is unreadable: {e}")))?;
            data.push(def);
        }
        Ok(RoleDefinitionList { data })
    }

    /// `holdfast role create --file role.json`: defines a custom role.
    pub async fn create_role(&self, caller: &Caller, mut def: RoleDefinition) -> Result<RoleDefinition> {
        caller.require(Action::KeysManage, "/")?;
        def.built_in = false;
        validate_definition(&def)?;
        let json = serde_json::to_string(&def).map_err(|e| Error::internal(e.to_string()))?;
        let name = def.name.clone();
        let made = self.core.control_write(caller, move |c| control::insert_role(c, &name, &json))
            .await?;
        if !made {
            return Err(Error::conflict(format!("a role named {:?} exists already", def.name)));
        }
        Ok(def)
    }

    /// Removes a custom role; refused while any assignment holds it.
    pub async fn delete_role(&self, caller: &Caller, name: &str) -> Result<()> {
        caller.require(Action::KeysManage, "/")?;
        if Role::parse(name).is_built_in() {
            return Err(Error::invalid(format!("{name:?} is a built-in role and cannot be removed")));
        }
        let target = name.to_owned();
        let outcome = self.core.control_write(caller, move |c| {
                let held = control::role_assignment_count(c, &target)?;
                if held > 0 {
                    return Ok(Err(held));
                }
                control::delete_role(c, &target).map(Ok)
            })
            .await?;
        match outcome {
            Err(held) => Err(Error::conflict(format!(
                "role {name:?} is held by {held} assignment(s); unassign them first (holdfast role list)"
            ))),
            Ok(false) => Err(Error::not_found(format!("no custom role named {name:?}"))),
            Ok(true) => Ok(()),
        }
    }
}
