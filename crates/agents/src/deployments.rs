//! Deployments: the model names agents and responses use, each bound to a connection and the
//! upstream's model id.

use holdfast_store::Order;
use holdfast_types::{Error, Kind, Op};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::connections::connection_id;
use holdfast_core::Data;
use crate::wire::{must_get, resource_name, store_err};
use holdfast_core::{Action, Caller, Result};

use crate::Agents;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentCreate {
    pub name: String,
    /// The connection to call.
    pub connection: String,
    /// Connections to call, in order, when the one before fails before it answers (no
    /// connection, a 429 or 5xx, no answer in time); each serves `model`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// The model id the upstream knows, such as `gpt-4o-mini` or `llama3`.
    pub model: String,
}

/// Filters of a deployment list.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentFilter {
    pub model_name: Option<String>,
    pub model_publisher: Option<String>,
    pub deployment_type: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct DeploymentBody {
    pub name: String,
    pub connection: String,
    pub model: String,
    /// Connections tried after `connection`, in order (absent in bodies made before them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
}

impl DeploymentBody {
    /// Every connection the deployment calls, in the order they are tried.
    pub(crate) fn connections(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.connection.as_str()).chain(self.fallbacks.iter().map(String::as_str))
    }
}

/// Most fallbacks a deployment names.
const MAX_FALLBACKS: usize = 4;

pub(crate) fn deployment_id(name: &str) -> String {
    format!("dep:{name}")
}

fn wire(body: &DeploymentBody) -> Value {
    json!({
        "type": "ModelDeployment",
        "name": body.name,
        "modelName": body.model,
        "modelVersion": "",
        "modelPublisher": "",
        "capabilities": { "chat_completion": "true" },
        "sku": { "name": "Holdfast", "capacity": 0, "family": "", "size": "", "tier": "" },
        "connectionName": body.connection,
        "fallbackConnections": body.fallbacks,
    })
}

fn parse(resource: &holdfast_store::Resource) -> Result<DeploymentBody> {
    serde_json::from_value(resource.body.clone()).map_err(|e| Error::internal(format!("bad deployment record: {e}")))
}

/// Reads a deployment inside a plan or a read: `InvalidInput` naming it if it does not exist,
/// since a model name comes from the request body.
pub(crate) fn deployment_in(view: &holdfast_store::StateView<'_>, name: &str) -> Result<DeploymentBody> {
    match view.get(Kind::Deployment, &deployment_id(name)).map_err(store_err)? {
        Some(r) => parse(&r),
        None => Err(Error::invalid(format!(
            "unknown deployment {name:?}: create it with 'holdfast deployment create' first"
        ))),
    }
}

impl Agents {
    pub async fn create_deployment(&self, caller: &Caller, project: &str, req: DeploymentCreate) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        resource_name("deployment", &req.name)?;
        if req.model.is_empty() || req.model.len() > 256 {
            return Err(Error::invalid("model must be 1 to 256 characters"));
        }
        if req.fallbacks.len() > MAX_FALLBACKS {
            return Err(Error::invalid(format!("a deployment names at most {MAX_FALLBACKS} fallback connections")));
        }
        let body = DeploymentBody { name: req.name, connection: req.connection, model: req.model, fallbacks: req.fallbacks };
        let mut named: Vec<&str> = body.connections().collect();
        named.sort_unstable();
        if named.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::invalid("a deployment names each connection once"));
        }
        let out = wire(&body);
        let id = deployment_id(&body.name);
        data.commit(Box::new(move |view| {
            for connection in body.connections() {
                if view.get(Kind::Connection, &connection_id(connection)).map_err(store_err)?.is_none() {
                    return Err(Error::invalid(format!("unknown connection {connection:?}")));
                }
            }
            if view.get(Kind::Deployment, &id).map_err(store_err)?.is_some() {
                return Err(Error::conflict(format!("a deployment named {:?} exists already", body.name)));
            }
            let value = serde_json::to_value(&body).map_err(|e| Error::internal(e.to_string()))?;
            Ok(vec![Op::Put { kind: Kind::Deployment, id, parent: None, body: value }])
        }))
        .await?;
        Ok(out)
    }

    /// Azure-style list, filtered by `modelName`, `modelPublisher` and `deploymentType` as the
    /// Azure SDK sends them.
    pub async fn list_deployments(&self, caller: &Caller, project: &str, filter: DeploymentFilter) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        data.read(move |view| {
            let rows = view.list(Kind::Deployment, None, None, 10_000, Order::Asc).map_err(store_err)?;
            let mut value = Vec::with_capacity(rows.len());
            for row in &rows {
                let w = wire(&parse(row)?);
                let matches = |field: &str, wanted: &Option<String>| wanted.as_deref().is_none_or(|v| w[field] == v);
                if matches("modelName", &filter.model_name)
                    && matches("modelPublisher", &filter.model_publisher)
                    && matches("type", &filter.deployment_type)
                {
                    value.push(w);
                }
            }
            Ok(json!({ "value": value, "nextLink": null }))
        })
        .await
    }

    pub async fn get_deployment(&self, caller: &Caller, project: &str, name: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let (id, shown) = (deployment_id(name), name.to_owned());
        data.read(move |view| parse(&must_get(view, Kind::Deployment, &id, "deployment", &shown)?).map(|b| wire(&b)))
            .await
    }

    pub async fn delete_deployment(&self, caller: &Caller, project: &str, name: &str) -> Result<()> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let (id, shown) = (deployment_id(name), name.to_owned());
        data.commit(Box::new(move |view| {
            must_get(view, Kind::Deployment, &id, "deployment", &shown)?;
            Ok(vec![Op::Delete { kind: Kind::Deployment, id }])
        }))
        .await?;
        Ok(())
    }

    /// The deployment named `model`, for a model call.
    pub(crate) async fn deployment(&self, data: &Data, model: &str) -> Result<DeploymentBody> {
        let name = model.to_owned();
        data.read(move |view| deployment_in(view, &name)).await
    }
}
