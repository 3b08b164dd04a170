//! Connections: upstream model endpoints (any OpenAI-compatible server) with their secrets.

use std::collections::BTreeMap;

use holdfast_store::Order;
use holdfast_types::{Error, Kind, Op};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use holdfast_core::secrets::{Binding, MasterKey, SEALED_VERSION, Sealed};
use holdfast_core::Data;
use crate::wire::{must_get, resource_name, store_err};
use holdfast_core::{Action, Caller, Result};

use crate::Agents;
use crate::upstream::Upstream;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionCreate {
    pub name: String,
    /// `openai`: an OpenAI-compatible server (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp…).
    #[serde(rename = "type", default = "openai")]
    pub kind: String,
    /// Base URL, such as `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub target: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Filters of a connection list, as the Azure SDK sends them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionFilter {
    pub connection_type: Option<String>,
    pub default_connection: Option<bool>,
}

fn openai() -> String {
    "openai".into()
}

/// A connection as stored (the secret sealed).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct ConnectionBody {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub target: String,
    pub secret: Option<Sealed>,
    pub metadata: BTreeMap<String, String>,
}

pub(crate) fn connection_id(name: &str) -> String {
    format!("conn:{name}")
}

fn wire(body: &ConnectionBody, key: Option<&str>) -> Value {
    let credentials = match (&body.secret, key) {
        (None, _) => json!({ "type": "None" }),
        (Some(_), None) => json!({ "type": "ApiKey" }),
        (Some(_), Some(key)) => json!({ "type": "ApiKey", "key": key }),
    };
    json!({
        "name": body.name,
        "id": connection_id(&body.name),
        "type": body.kind,
        "target": body.target,
        "isDefault": false,
        "credentials": credentials,
        "metadata": body.metadata,
    })
}

fn parse(resource: &holdfast_store::Resource) -> Result<ConnectionBody> {
    serde_json::from_value(resource.body.clone()).map_err(|e| Error::internal(format!("bad connection record: {e}")))
}

impl Agents {
    pub async fn create_connection(&self, caller: &Caller, project: &str, req: ConnectionCreate) -> Result<Value> {
        // Choosing where the server sends requests is the control plane's: data-plane users
        // pick deployments.
        let data = self.core.data(caller, project, Action::ConnectionsWrite).await?;
        resource_name("connection", &req.name)?;
        if req.kind != "openai" {
            return Err(Error::invalid(format!("unsupported connection type {:?}; supported: openai", req.kind)));
        }
        self.upstream.check_target(&req.target)?;
        let secret = match req.api_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) => Some(self.core.master().seal(key, Binding { project: data.store.id().as_str(), connection: &req.name })?),
            None => None,
        };
        let body = ConnectionBody { name: req.name.clone(), kind: req.kind, target: req.target, secret, metadata: req.metadata };
        let out = wire(&body, None);
        let id = connection_id(&req.name);
        let value = serde_json::to_value(&body).map_err(|e| Error::internal(e.to_string()))?;
        data.commit(Box::new(move |view| {
            if view.get(Kind::Connection, &id).map_err(store_err)?.is_some() {
                return Err(Error::conflict(format!("a connection named {:?} exists already", body.name)));
            }
            Ok(vec![Op::Put { kind: Kind::Connection, id, parent: None, body: value }])
        }))
        .await?;
        Ok(out)
    }

    /// Azure-style list: `{"value": [...], "nextLink": null}` (connections are few), filtered
    /// by type (`connectionType`) and by whether they are the default (`defaultConnection`;
    /// Holdfast has no default connection).
    pub async fn list_connections(&self, caller: &Caller, project: &str, filter: ConnectionFilter) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        data.read(move |view| {
            let rows = view.list(Kind::Connection, None, None, 10_000, Order::Asc).map_err(store_err)?;
            let mut value = Vec::with_capacity(rows.len());
            for row in &rows {
                let body = parse(row)?;
                let type_ok = filter.connection_type.as_deref().is_none_or(|t| t.eq_ignore_ascii_case(&body.kind));
                if type_ok && filter.default_connection != Some(true) {
                    value.push(wire(&body, None));
                }
            }
            Ok(json!({ "value": value, "nextLink": null }))
        })
        .await
    }

    pub async fn get_connection(&self, caller: &Caller, project: &str, name: &str, with_secret: bool) -> Result<Value> {
        let action = if with_secret { Action::SecretsRead } else { Action::DataRead };
        let data = self.core.data(caller, project, action).await?;
        let (id, shown) = (connection_id(name), name.to_owned());
        let body = data
            .read(move |view| parse(&must_get(view, Kind::Connection, &id, "connection", &shown)?))
            .await?;
        let key = match (&body.secret, with_secret) {
            (Some(sealed), true) => {
                Some(self.core.master().open(sealed, Binding { project: data.store.id().as_str(), connection: &body.name })?)
            }
            _ => None,
        };
        Ok(wire(&body, key.as_deref()))
    }

    pub async fn delete_connection(&self, caller: &Caller, project: &str, name: &str) -> Result<()> {
        let data = self.core.data(caller, project, Action::ConnectionsWrite).await?;
        let (id, shown) = (connection_id(name), name.to_owned());
        data.commit(Box::new(move |view| {
            must_get(view, Kind::Connection, &id, "connection", &shown)?;
            let users: Vec<String> = view
                .list(Kind::Deployment, None, None, 10_000, Order::Asc)
                .map_err(store_err)?
                .into_iter()
                .filter(|d| d.body["connection"] == shown.as_str())
                .filter_map(|d| d.body["name"].as_str().map(str::to_owned))
                .collect();
            if !users.is_empty() {
                return Err(Error::conflict(format!(
                    "connection {shown:?} is used by deployments {users:?}; delete them first"
                )));
            }
            Ok(vec![Op::Delete { kind: Kind::Connection, id }])
        }))
        .await?;
        Ok(())
    }

    /// The upstream a deployment calls, with its key decrypted.
    pub(crate) async fn upstream(&self, data: &Data, connection: &str) -> Result<Upstream> {
        let (id, shown) = (connection_id(connection), connection.to_owned());
        let body = data.read(move |view| parse(&must_get(view, Kind::Connection, &id, "connection", &shown)?)).await?;
        let binding = Binding { project: data.store.id().as_str(), connection: &body.name };
        let api_key = body.secret.as_ref().map(|s| self.core.master().open(s, binding)).transpose()?;
        Ok(Upstream { target: body.target, api_key, client: self.upstream.clone() })
    }
}

/// The ops that seal every connection secret of a project's state again for the project `to`,
/// opening each as sealed for the project `from`: at open (`from == to`, only version-1 secrets,
/// which carry no binding yet) and when a restore makes a copy under a new id. A secret that does
/// not open (another master key) is left as it is at open, and removed from a restored copy,
/// with a warning naming the connection that needs its key again.
pub(crate) fn reseal_ops(view: &holdfast_store::StateView<'_>, master: &MasterKey, from: &str, to: &str) -> Result<Vec<Op>> {
    let rows = view.list(Kind::Connection, None, None, usize::MAX >> 1, Order::Asc).map_err(store_err)?;
    let mut ops = Vec::new();
    for row in rows {
        // A row this build cannot read must not keep its project from opening.
        let body = match parse(&row) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(connection = %row.id, error = %e.message, "unreadable connection record left as it is");
                continue;
            }
        };
        let Some(sealed) = &body.secret else { continue };
        if from == to && sealed.v == SEALED_VERSION {
            continue;
        }
        let secret = match master.open(sealed, Binding { project: from, connection: &body.name }) {
            Ok(plain) => json!(master.seal(&plain, Binding { project: to, connection: &body.name })?),
            Err(e) if from == to => {
                tracing::warn!(connection = %body.name, error = %e.message, "cannot seal a connection secret again");
                continue;
            }
            Err(e) => {
                tracing::warn!(connection = %body.name, error = %e.message, "a restored connection loses its secret");
                Value::Null
            }
        };
        ops.push(Op::Patch { kind: Kind::Connection, id: row.id, patch: json!({ "secret": secret }) });
    }
    Ok(ops)
}
