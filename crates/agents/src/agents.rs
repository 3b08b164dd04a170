//! Agents: named, with immutable numbered versions (`definition`: kind `prompt`, model,
//! instructions, tools…).

use holdfast_store::{Order, Resource, StateView};
use holdfast_types::{Error, Kind, Op};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::deployments::deployment_in;
use crate::wire::{List, ListQuery, metadata, must_get, page, resource_name, store_err, unix_seconds};
use holdfast_core::{Action, Caller, Result};

use crate::Agents;

#[derive(Clone, Debug, Deserialize)]
pub struct AgentVersionCreate {
    pub definition: Value,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// The agent's own record: which version is latest and which number comes next (numbers are
/// never reused, so a version, once seen, always means the same definition).
#[derive(Clone, Debug, Deserialize, Serialize)]
struct AgentBody {
    name: String,
    latest: Option<u64>,
    next: u64,
}

pub(crate) fn agent_id(name: &str) -> String {
    format!("agent:{name}")
}

pub(crate) fn version_id(name: &str, version: &str) -> String {
    format!("agent:{name}:{version}")
}

fn version_wire(r: &Resource) -> Value {
    let mut v = r.body.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("object".into(), json!("agent.version"));
        o.insert("created_at".into(), json!(unix_seconds(r.created_us)));
    }
    v
}

fn agent_body(r: &Resource) -> Result<AgentBody> {
    serde_json::from_value(r.body.clone()).map_err(|e| Error::internal(format!("bad agent record: {e}")))
}

fn agent_wire(view: &StateView<'_>, r: &Resource) -> Result<Value> {
    let body = agent_body(r)?;
    let latest = match body.latest {
        Some(v) => view.get(Kind::AgentVersion, &version_id(&body.name, &v.to_string())).map_err(store_err)?,
        None => None,
    };
    Ok(json!({
        "object": "agent",
        "id": body.name,
        "name": body.name,
        "versions": { "latest": latest.as_ref().map(version_wire) },
    }))
}

/// Checks a definition against what Holdfast can run. `Ok` carries the definition to store.
fn check_definition(view: &StateView<'_>, definition: &Value) -> Result<()> {
    let Some(def) = definition.as_object() else {
        return Err(Error::invalid("definition must be an object"));
    };
    match def.get("kind").and_then(Value::as_str) {
        Some("prompt") => {}
        Some(other) => return Err(Error::invalid(format!("unsupported agent kind {other:?}; supported: prompt"))),
        None => return Err(Error::invalid("definition.kind is required (\"prompt\")")),
    }
    let model = def
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid("definition.model is required: the name of a deployment"))?;
    deployment_in(view, model)?;
    if let Some(instructions) = def.get("instructions")
        && !(instructions.is_string() || instructions.is_null())
    {
        return Err(Error::invalid("definition.instructions must be a string"));
    }
    check_tools(view, def.get("tools"))
}

/// Tools Holdfast can run: `function` and `file_search` over its own vector stores.
pub(crate) fn check_tools(view: &StateView<'_>, tools: Option<&Value>) -> Result<()> {
    let Some(tools) = tools.filter(|t| !t.is_null()) else { return Ok(()) };
    let Some(tools) = tools.as_array() else {
        return Err(Error::invalid("tools must be an array"));
    };
    for tool in tools {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
                if name.is_empty() || name.len() > 64 {
                    return Err(Error::invalid("a function tool needs a name of 1 to 64 characters"));
                }
            }
            Some("file_search") => {
                let ids = tool.get("vector_store_ids").and_then(Value::as_array).cloned().unwrap_or_default();
                for id in ids {
                    let id = id.as_str().unwrap_or_default();
                    if view.get(Kind::VectorStore, id).map_err(store_err)?.is_none() {
                        return Err(Error::invalid(format!("file_search names unknown vector store {id:?}")));
                    }
                }
            }
            Some(other) => {
                return Err(Error::invalid(format!(
                    "unsupported tool type {other:?}; supported: function, file_search"
                )));
            }
            None => return Err(Error::invalid("every tool needs a type")),
        }
    }
    Ok(())
}

impl Agents {
    pub async fn create_agent_version(
        &self,
        caller: &Caller,
        project: &str,
        name: &str,
        req: AgentVersionCreate,
    ) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        resource_name("agent", name)?;
        let metadata = metadata(req.metadata)?;
        if let Some(d) = &req.description
            && d.chars().count() > 512
        {
            return Err(Error::invalid("description must be at most 512 characters"));
        }
        let name = name.to_owned();
        // The plan picks the version number inside the writer; it hands the number back here.
        let chosen = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
        let (plan_name, slot, definition, description) = (name.clone(), chosen.clone(), req.definition, req.description);
        data.commit(Box::new(move |view| {
            let name = plan_name;
            check_definition(view, &definition)?;
            let aid = agent_id(&name);
            let number = match view.get(Kind::Agent, &aid).map_err(store_err)? {
                Some(r) => agent_body(&r)?.next,
                None => 1,
            };
            let version = number.to_string();
            let agent = AgentBody { name: name.clone(), latest: Some(number), next: number + 1 };
            let agent = serde_json::to_value(agent).map_err(|e| Error::internal(e.to_string()))?;
            let ops = vec![
                Op::Put { kind: Kind::Agent, id: aid.clone(), parent: None, body: agent },
                Op::Put {
                    kind: Kind::AgentVersion,
                    id: version_id(&name, &version),
                    parent: Some(aid),
                    body: json!({
                        "id": format!("{name}:{version}"),
                        "name": name,
                        "version": version,
                        "description": description,
                        "definition": definition,
                        "metadata": metadata,
                    }),
                },
            ];
            let _ = slot.set(version);
            Ok(ops)
        }))
        .await?;
        let version = chosen.get().cloned().ok_or_else(|| Error::internal("agent version was not chosen"))?;
        self.get_agent_version(caller, project, &name, &version).await
    }

    pub async fn list_agents(&self, caller: &Caller, project: &str, query: ListQuery) -> Result<List> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        data.read(move |view| {
            let query = ListQuery { after: query.after.map(|a| agent_id(&a)), ..query };
            let (rows, has_more) = page(view, Kind::Agent, None, &query, Order::Desc)?;
            let data = rows.iter().map(|r| agent_wire(view, r)).collect::<Result<Vec<_>>>()?;
            Ok(List::new(data, has_more))
        })
        .await
    }

    pub async fn get_agent(&self, caller: &Caller, project: &str, name: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let name = name.to_owned();
        data.read(move |view| agent_wire(view, &must_get(view, Kind::Agent, &agent_id(&name), "agent", &name)?))
            .await
    }

    /// Deletes an agent with all its versions.
    pub async fn delete_agent(&self, caller: &Caller, project: &str, name: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let shown = name.to_owned();
        data.commit(Box::new(move |view| {
            must_get(view, Kind::Agent, &agent_id(&shown), "agent", &shown)?;
            Ok(vec![Op::Delete { kind: Kind::Agent, id: agent_id(&shown) }])
        }))
        .await?;
        Ok(json!({ "object": "agent.deleted", "name": name, "deleted": true }))
    }

    pub async fn list_agent_versions(&self, caller: &Caller, project: &str, name: &str, query: ListQuery) -> Result<List> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let name = name.to_owned();
        data.read(move |view| {
            let aid = agent_id(&name);
            must_get(view, Kind::Agent, &aid, "agent", &name)?;
            // Wire version ids are `{name}:{version}`.
            let query = ListQuery { after: query.after.map(|a| format!("agent:{a}")), ..query };
            let (rows, has_more) = page(view, Kind::AgentVersion, Some(&aid), &query, Order::Desc)?;
            Ok(List::new(rows.iter().map(version_wire).collect(), has_more))
        })
        .await
    }

    pub async fn get_agent_version(&self, caller: &Caller, project: &str, name: &str, version: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataRead).await?;
        let (name, version) = (name.to_owned(), version.to_owned());
        data.read(move |view| {
            let shown = format!("{name}:{version}");
            Ok(version_wire(&must_get(view, Kind::AgentVersion, &version_id(&name, &version), "agent version", &shown)?))
        })
        .await
    }

    /// Deletes one version; the latest moves to the newest remaining one, and an agent whose
    /// last version goes is deleted with it.
    pub async fn delete_agent_version(&self, caller: &Caller, project: &str, name: &str, version: &str) -> Result<Value> {
        let data = self.core.data(caller, project, Action::DataWrite).await?;
        let (n, v) = (name.to_owned(), version.to_owned());
        data.commit(Box::new(move |view| {
            let aid = agent_id(&n);
            let vid = version_id(&n, &v);
            must_get(view, Kind::AgentVersion, &vid, "agent version", &format!("{n}:{v}"))?;
            let agent = agent_body(&must_get(view, Kind::Agent, &aid, "agent", &n)?)?;
            let remaining: Vec<u64> = view
                .list(Kind::AgentVersion, Some(&aid), None, 10_000, Order::Desc)
                .map_err(store_err)?
                .iter()
                .filter(|r| r.id != vid)
                .filter_map(|r| r.body["version"].as_str().and_then(|s| s.parse().ok()))
                .collect();
            let Some(latest) = remaining.iter().max().copied() else {
                return Ok(vec![Op::Delete { kind: Kind::Agent, id: aid }]);
            };
            let mut ops = vec![Op::Delete { kind: Kind::AgentVersion, id: vid }];
            if agent.latest != Some(latest) {
                ops.push(Op::Patch { kind: Kind::Agent, id: aid, patch: json!({ "latest": latest }) });
            }
            Ok(ops)
        }))
        .await?;
        Ok(json!({ "object": "agent.version.deleted", "name": name, "version": version, "deleted": true }))
    }

    /// The definition of an agent version (the latest if `version` is `None`), for a response.
    pub(crate) async fn agent_definition(&self, data: &super::Data, name: &str, version: Option<&str>) -> Result<Value> {
        let (name, version) = (name.to_owned(), version.map(str::to_owned));
        data.read(move |view| {
            let version = match version {
                Some(v) => v,
                None => {
                    let agent = view
                        .get(Kind::Agent, &agent_id(&name))
                        .map_err(store_err)?
                        .ok_or_else(|| Error::invalid(format!("unknown agent {name:?}")))?;
                    agent_body(&agent)?.latest.map(|l| l.to_string()).unwrap_or_default()
                }
            };
            let r = view
                .get(Kind::AgentVersion, &version_id(&name, &version))
                .map_err(store_err)?
                .ok_or_else(|| Error::invalid(format!("unknown agent version {name}:{version}")))?;
            Ok(r.body)
        })
        .await
    }
}
