//! Connections: upstream model endpoints (any OpenAI-compatible server) with their secrets.

use std::collections::BTreeMap;

use holdfast_store::Order;
use holdfast_types::{Error, Kind, Op};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use holdfast_core::projects::{data_key, data_key_for_sealing};
use holdfast_core::secrets::{Binding, DATA_KEY_SEALED_VERSION, DataKey, MasterKey, RegionKey, Sealed};
use holdfast_core::{Action, Caller, Data, Result};
use holdfast_store::StateView;
use holdfast_types::ProjectId;

use crate::wire::{must_get, resource_name, store_err};

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
        let api_key = req.api_key.filter(|k| !k.is_empty());
        let mut body = ConnectionBody { name: req.name.clone(), kind: req.kind, target: req.target, secret: None, metadata: req.metadata };
        let out = wire(&body, None);
        let id = connection_id(&req.name);
        let keys = self.secret_keys();
        let project = data.store.id().clone();
        data.commit(Box::new(move |view| {
            if view.get(Kind::Connection, &id).map_err(store_err)?.is_some() {
                return Err(Error::conflict(format!("a connection named {:?} exists already", body.name)));
            }
            // Sealed under the project's data key, made (and wrapped for each of its regions)
            // with its first secret.
            let mut ops = Vec::new();
            if let Some(api_key) = &api_key {
                let (data_key, key_ops) = data_key_for_sealing(view, &project, &project, &keys.region, &keys.region_key)?;
                body.secret = Some(data_key.seal(api_key, Binding { project: project.as_str(), connection: &body.name })?);
                ops.extend(key_ops);
            }
            let value = serde_json::to_value(&body).map_err(|e| Error::internal(e.to_string()))?;
            ops.push(Op::Put { kind: Kind::Connection, id, parent: None, body: value });
            Ok(ops)
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
        let (body, key) = self.connection_with_secret(&data, name, with_secret).await?;
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
                .filter(|d| {
                    d.body["connection"] == shown.as_str()
                        || d.body["fallbacks"].as_array().is_some_and(|all| all.iter().any(|c| c == shown.as_str()))
                })
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
        self.breakers.forget(&format!("{}/{name}", data.store.id()));
        Ok(())
    }

    /// `GET /v1/projects/{project}/upstreams`: each connection's health as this region's calls
    /// found it (its circuit breaker's state, failures in a row).
    pub async fn upstream_health(&self, caller: &Caller, project: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let names: Vec<String> = data
            .read(|view| {
                let rows = view.list(Kind::Connection, None, None, 10_000, Order::Asc).map_err(store_err)?;
                rows.iter().map(|r| parse(r).map(|b| b.name)).collect()
            })
            .await?;
        let project_id = data.store.id().clone();
        let data: Vec<Value> = names
            .into_iter()
            .map(|name| {
                let mut health = self.breakers.health(&format!("{project_id}/{name}"));
                health["connection"] = json!(name);
                health
            })
            .collect();
        Ok(json!({ "region": self.core.region(), "data": data }))
    }

    /// The upstream a deployment calls, with its key decrypted.
    pub(crate) async fn upstream(&self, data: &Data, connection: &str) -> Result<Upstream> {
        let (body, api_key) = self.connection_with_secret(data, connection, true).await?;
        let health_key = format!("{}/{connection}", data.store.id());
        Ok(Upstream { connection: connection.to_owned(), health_key, target: body.target, api_key, client: self.upstream.clone() })
    }

    /// A connection and, when asked, its secret opened: under the project's data key (version
    /// 3), or the master key for a secret sealed before data keys (its project not yet opened
    /// where it was sealed).
    async fn connection_with_secret(&self, data: &Data, name: &str, with_secret: bool) -> Result<(ConnectionBody, Option<String>)> {
        let (id, shown, project, keys) = (connection_id(name), name.to_owned(), data.store.id().clone(), self.secret_keys());
        data.read(move |view| {
            let body = parse(&must_get(view, Kind::Connection, &id, "connection", &shown)?)?;
            let secret = match (&body.secret, with_secret) {
                (Some(sealed), true) => Some(open_secret(view, &keys, &project, &project, sealed, &body.name)?),
                _ => None,
            };
            Ok((body, secret))
        })
        .await
    }

    fn secret_keys(&self) -> SecretKeys {
        SecretKeys::of(&self.core)
    }
}

/// What sealing and opening a connection secret takes, for use inside a plan or a read.
pub(crate) struct SecretKeys {
    pub master: MasterKey,
    pub region: String,
    pub region_key: std::sync::Arc<RegionKey>,
}

impl SecretKeys {
    pub(crate) fn of(core: &holdfast_core::Service) -> Self {
        Self { master: core.master().clone(), region: core.region().to_owned(), region_key: core.region_key().clone() }
    }
}

/// Opens `sealed`, the secret of connection `connection` sealed for project `bound`; a data key
/// is read from the record `record`.
fn open_secret(view: &StateView<'_>, keys: &SecretKeys, record: &ProjectId, bound: &ProjectId, sealed: &Sealed, connection: &str) -> Result<String> {
    let binding = Binding { project: bound.as_str(), connection };
    if sealed.v != DATA_KEY_SEALED_VERSION {
        return keys.master.open(sealed, binding);
    }
    let data_key = data_key(view, record, &keys.region, &keys.region_key)?.ok_or_else(|| {
        Error::internal(format!("the secret of connection {connection:?} is sealed under a data key its project does not hold"))
    })?;
    data_key.open(sealed, binding)
}

/// The ops that seal every connection secret of a project's state again under the data key of
/// the project `to`, opening each as sealed for the project `from`: at open (`from == to`; only
/// secrets sealed before data keys, under the master key) and when a restore makes a copy under
/// a new id (every secret: its binding names the project). A secret that does not open here
/// (another master key, no wrap for this region) is left as it is at open, and removed from a
/// restored copy, whose connection then needs its key set again.
pub(crate) fn reseal_ops(view: &StateView<'_>, keys: &SecretKeys, from: &ProjectId, to: &ProjectId) -> Result<Vec<Op>> {
    let rows = view.list(Kind::Connection, None, None, usize::MAX >> 1, Order::Asc).map_err(store_err)?;
    let mut ops = Vec::new();
    let mut sealing: Option<DataKey> = None;
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
        if from == to && sealed.v == DATA_KEY_SEALED_VERSION {
            continue;
        }
        let resealed = open_secret(view, keys, from, from, sealed, &body.name).and_then(|plain| {
            if sealing.is_none() {
                let (data_key, key_ops) = data_key_for_sealing(view, from, to, &keys.region, &keys.region_key)?;
                ops.extend(key_ops);
                sealing = Some(data_key);
            }
            let data_key = sealing.as_ref().expect("set above");
            data_key.seal(&plain, Binding { project: to.as_str(), connection: &body.name })
        });
        let secret = match resealed {
            Ok(sealed) => json!(sealed),
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
