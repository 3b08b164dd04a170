//! The model registry: registered models (`rm:{name}`: a name unique by construction, a
//! description, tags, aliases) and their versions (`rm:{name}/{n}`: numbered from 1, never
//! reused, with a source, a stage and tags). A version is its model's child, so deleting,
//! locking (`/projects/P/registered_models/NAME`) or undeleting the model covers them all. A
//! rename moves the model and its versions to the new name's ids in one change.

use std::borrow::Cow;
use std::collections::BTreeMap;

use holdfast_core::{Action, Caller, Result};
use holdfast_store::StateView;
use holdfast_types::{Error, Kind, Op};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::experiments::{page, paged};
use crate::search::{self, Entity, Filter, KeyType, OrderBy, Searchable};
use crate::wire::{self, KeyValue, now_ms, opt_bool, opt_i64, opt_string, pairs, parse, store_err, strings, to_body};
use crate::{Ml, logged_models};

const STAGES: [&str; 4] = ["None", "Staging", "Production", "Archived"];

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct ModelBody {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub creation_timestamp: i64,
    pub last_updated_timestamp: i64,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Alias → version number.
    #[serde(default)]
    pub aliases: BTreeMap<String, i64>,
    /// The highest version number ever given (numbers are never reused).
    #[serde(default)]
    pub last_version: i64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct VersionBody {
    pub version: i64,
    pub creation_timestamp: i64,
    pub last_updated_timestamp: i64,
    #[serde(default)]
    pub description: String,
    pub source: String,
    /// Where the version's files are (`source`, or the logged model's artifacts it names).
    pub storage_location: String,
    #[serde(default)]
    pub run_id: String,
    #[serde(default)]
    pub run_link: String,
    #[serde(default)]
    pub model_id: String,
    pub current_stage: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

pub(crate) struct Model {
    pub id: String,
    pub body: ModelBody,
}

pub(crate) struct Version<'m> {
    pub model: &'m ModelBody,
    pub body: VersionBody,
}

impl Model {
    fn wire(&self, latest: &[Value]) -> Value {
        let b = &self.body;
        let aliases: Vec<Value> = b.aliases.iter().map(|(a, v)| json!({ "alias": a, "version": v.to_string() })).collect();
        json!({
            "name": b.name,
            "creation_timestamp": b.creation_timestamp,
            "last_updated_timestamp": b.last_updated_timestamp,
            "description": b.description,
            "latest_versions": latest,
            "tags": pairs(&b.tags),
            "aliases": aliases,
        })
    }
}

impl Version<'_> {
    fn wire(&self) -> Value {
        let b = &self.body;
        let aliases: Vec<&String> = self.model.aliases.iter().filter(|(_, v)| **v == b.version).map(|(a, _)| a).collect();
        let mut out = json!({
            "name": self.model.name,
            "version": b.version.to_string(),
            "creation_timestamp": b.creation_timestamp,
            "last_updated_timestamp": b.last_updated_timestamp,
            "user_id": b.user_id,
            "current_stage": b.current_stage,
            "description": b.description,
            "source": b.source,
            "run_id": b.run_id,
            "status": "READY",
            "tags": pairs(&b.tags),
            "run_link": b.run_link,
            "aliases": aliases,
        });
        if !b.model_id.is_empty() {
            out["model_id"] = json!(b.model_id);
        }
        out
    }
}

impl Searchable for Model {
    fn field(&self, kind: KeyType, key: &str) -> Option<search::Value<'_>> {
        use search::Value::{Number, Str};
        match kind {
            KeyType::Tag => self.body.tags.get(key).map(|v| Str(Cow::Borrowed(v.as_str()))),
            KeyType::Attribute => match key {
                "name" => Some(Str(Cow::Borrowed(&self.body.name))),
                "creation_timestamp" => Some(Number(self.body.creation_timestamp as f64)),
                "last_updated_timestamp" => Some(Number(self.body.last_updated_timestamp as f64)),
                _ => None,
            },
            _ => None,
        }
    }
}

impl Searchable for Version<'_> {
    fn field(&self, kind: KeyType, key: &str) -> Option<search::Value<'_>> {
        use search::Value::{Number, Str};
        let b = &self.body;
        match kind {
            KeyType::Tag => b.tags.get(key).map(|v| Str(Cow::Borrowed(v.as_str()))),
            KeyType::Attribute => match key {
                "name" => Some(Str(Cow::Borrowed(&self.model.name))),
                "version_number" | "version" => Some(Number(b.version as f64)),
                "run_id" => Some(Str(Cow::Borrowed(&b.run_id))),
                "source_path" | "source" => Some(Str(Cow::Borrowed(&b.source))),
                "current_stage" => Some(Str(Cow::Borrowed(&b.current_stage))),
                "model_id" => Some(Str(Cow::Borrowed(&b.model_id))),
                "creation_timestamp" => Some(Number(b.creation_timestamp as f64)),
                "last_updated_timestamp" => Some(Number(b.last_updated_timestamp as f64)),
                _ => None,
            },
            _ => None,
        }
    }
}

fn all_models(view: &StateView<'_>) -> Result<Vec<Model>> {
    wire::children(view, Kind::MlRegisteredModel, None)?.iter().map(|r| Ok(Model { id: r.id.clone(), body: parse(r)? })).collect()
}

/// A registered model's id: its name.
pub fn model_id(name: &str) -> String {
    format!("rm:{name}")
}

fn find_model(view: &StateView<'_>, name: &str) -> Result<Option<Model>> {
    match view.get(Kind::MlRegisteredModel, &model_id(name)).map_err(store_err)? {
        Some(r) => Ok(Some(Model { id: r.id.clone(), body: parse(&r)? })),
        None => Ok(None),
    }
}

fn get_model(view: &StateView<'_>, name: &str) -> Result<Model> {
    find_model(view, name)?.ok_or_else(|| Error::not_found(format!("Registered Model with name={name} not found")))
}

fn versions_of(view: &StateView<'_>, model: &Model) -> Result<Vec<VersionBody>> {
    wire::children(view, Kind::MlModelVersion, Some(&model.id))?.iter().map(parse).collect()
}

fn version_id(model: &str, version: i64) -> String {
    format!("{model}/{version}")
}

fn get_version(view: &StateView<'_>, model: &Model, version: i64) -> Result<VersionBody> {
    match view.get(Kind::MlModelVersion, &version_id(&model.id, version)).map_err(store_err)? {
        Some(r) => parse(&r),
        None => Err(Error::not_found(format!("Model Version (name={}, version={version}) not found", model.body.name))),
    }
}

/// The latest version in each stage (`stages` empty: every stage), as the wire lists them.
fn latest_versions(model: &Model, versions: &[VersionBody], stages: &[String]) -> Result<Vec<Value>> {
    let wanted: Vec<String> = if stages.is_empty() { STAGES.iter().map(|s| (*s).to_owned()).collect() } else { stages.iter().map(|s| canonical_stage(s)).collect::<Result<_>>()? };
    let mut out = Vec::new();
    for stage in wanted {
        if let Some(v) = versions.iter().filter(|v| v.current_stage == stage).max_by_key(|v| v.version) {
            out.push(Version { model: &model.body, body: v.clone() }.wire());
        }
    }
    Ok(out)
}

fn canonical_stage(s: &str) -> Result<String> {
    STAGES
        .iter()
        .find(|st| st.eq_ignore_ascii_case(s))
        .map(|st| (*st).to_owned())
        .ok_or_else(|| Error::invalid(format!("Invalid Model Version stage: {s}. Value must be one of {}.", STAGES.join(", "))))
}

fn version_number(v: Option<&str>) -> Result<i64> {
    let v = v.filter(|s| !s.is_empty()).ok_or_else(|| Error::invalid("Missing value for required parameter 'version'."))?;
    v.parse().map_err(|_| Error::invalid(format!("Parameter 'version' must be an integer, got {v:?}.")))
}

#[derive(Debug, Default, Deserialize)]
pub struct ModelRequest {
    #[serde(default, deserialize_with = "opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub new_name: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
    #[serde(default, deserialize_with = "opt_string")]
    pub version: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub key: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub value: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub alias: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub stage: Option<String>,
    #[serde(default, deserialize_with = "strings")]
    pub stages: Vec<String>,
    #[serde(default, deserialize_with = "opt_bool")]
    pub archive_existing_versions: Option<bool>,
    #[serde(default, deserialize_with = "opt_string")]
    pub source: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub run_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub run_link: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub model_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub filter: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub max_results: Option<i64>,
    #[serde(default, deserialize_with = "strings")]
    pub order_by: Vec<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub page_token: Option<String>,
}

impl ModelRequest {
    fn name(&self) -> Result<String> {
        self.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| Error::invalid("Missing value for required parameter 'name'."))
    }

    fn key(&self) -> Result<String> {
        self.key.clone().filter(|n| !n.is_empty()).ok_or_else(|| Error::invalid("Missing value for required parameter 'key'."))
    }

    fn alias(&self) -> Result<String> {
        let alias = self.alias.clone().filter(|n| !n.is_empty()).ok_or_else(|| Error::invalid("Missing value for required parameter 'alias'."))?;
        wire::check_key("alias", &alias)?;
        if alias.eq_ignore_ascii_case("latest") || (alias.starts_with(['v', 'V']) && alias[1..].parse::<u64>().is_ok()) {
            return Err(Error::invalid(format!("'{alias}' alias name (case insensitive) is reserved.")));
        }
        Ok(alias)
    }
}

impl Ml {
    /// A change of one registered model (and its versions): `change` returns the ops and the answer.
    async fn change_model<F>(&self, caller: &Caller, project: &str, req: Value, change: F) -> Result<Value>
    where
        F: FnOnce(&StateView<'_>, &ModelRequest, Model) -> Result<(Vec<Op>, Value)> + Send + 'static,
    {
        let req: ModelRequest = wire::request(req)?;
        let name = req.name()?;
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        let (_, answer) = data.commit_with(move |view| change(view, &req, get_model(view, &name)?)).await?;
        Ok(answer)
    }

    pub async fn create_registered_model(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: ModelRequest = wire::request(req)?;
        let name = req.name()?;
        wire::check_name("registered model", &name)?;
        wire::check_tags(&req.tags)?;
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        let id = model_id(&name);
        let (_, out) = data
            .commit_with(move |view| {
                if find_model(view, &name)?.is_some() {
                    return Err(Error::conflict(format!("Registered Model (name={name}) already exists.")));
                }
                let now = now_ms();
                let body = ModelBody {
                    name,
                    description: req.description.unwrap_or_default(),
                    creation_timestamp: now,
                    last_updated_timestamp: now,
                    tags: req.tags.into_iter().map(|t| (t.key, t.value)).collect(),
                    aliases: BTreeMap::new(),
                    last_version: 0,
                };
                let model = Model { id: id.clone(), body };
                let out = json!({ "registered_model": model.wire(&[]) });
                Ok((vec![Op::Put { kind: Kind::MlRegisteredModel, id, parent: None, body: to_body(&model.body)? }], out))
            })
            .await?;
        Ok(out)
    }

    pub async fn get_registered_model(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: ModelRequest = wire::request(req)?;
        let name = req.name()?;
        self.read(caller, project, move |view| {
            let model = get_model(view, &name)?;
            let latest = latest_versions(&model, &versions_of(view, &model)?, &[])?;
            Ok(json!({ "registered_model": model.wire(&latest) }))
        })
        .await
    }

    /// Renames a model: it and its versions move to the new name's ids, in one change.
    pub async fn rename_registered_model(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_model(caller, project, req, |view, req, mut model| {
            let new_name = req.new_name.clone().filter(|n| !n.is_empty()).ok_or_else(|| Error::invalid("Missing value for required parameter 'new_name'."))?;
            wire::check_name("registered model", &new_name)?;
            if new_name == model.body.name {
                return Ok((Vec::new(), json!({ "registered_model": model.wire(&latest_versions(&model, &versions_of(view, &model)?, &[])?) })));
            }
            if find_model(view, &new_name)?.is_some() {
                return Err(Error::conflict(format!("Registered Model (name={new_name}) already exists.")));
            }
            let versions = versions_of(view, &model)?;
            let old = model.id.clone();
            model.id = model_id(&new_name);
            model.body.name = new_name;
            model.body.last_updated_timestamp = now_ms();
            let mut ops: Vec<Op> = versions.iter().map(|v| Op::Delete { kind: Kind::MlModelVersion, id: version_id(&old, v.version) }).collect();
            ops.push(Op::Delete { kind: Kind::MlRegisteredModel, id: old });
            ops.push(Op::Put { kind: Kind::MlRegisteredModel, id: model.id.clone(), parent: None, body: to_body(&model.body)? });
            for v in &versions {
                ops.push(Op::Put { kind: Kind::MlModelVersion, id: version_id(&model.id, v.version), parent: Some(model.id.clone()), body: to_body(v)? });
            }
            let out = json!({ "registered_model": model.wire(&latest_versions(&model, &versions, &[])?) });
            Ok((ops, out))
        })
        .await
    }

    pub async fn update_registered_model(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_model(caller, project, req, |view, req, mut model| {
            if let Some(d) = &req.description {
                model.body.description = d.clone();
            }
            model.body.last_updated_timestamp = now_ms();
            let latest = latest_versions(&model, &versions_of(view, &model)?, &[])?;
            let out = json!({ "registered_model": model.wire(&latest) });
            Ok((vec![Op::Put { kind: Kind::MlRegisteredModel, id: model.id.clone(), parent: None, body: to_body(&model.body)? }], out))
        })
        .await
    }

    /// Deletes a registered model and all its versions, in one change.
    pub async fn delete_registered_model(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_model(caller, project, req, |view, _, model| {
            let mut ops: Vec<Op> =
                versions_of(view, &model)?.iter().map(|v| Op::Delete { kind: Kind::MlModelVersion, id: version_id(&model.id, v.version) }).collect();
            ops.push(Op::Delete { kind: Kind::MlRegisteredModel, id: model.id });
            Ok((ops, json!({})))
        })
        .await
    }

    pub async fn search_registered_models(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: ModelRequest = wire::request(req)?;
        let filter = Filter::parse(Entity::RegisteredModel, req.filter.as_deref().unwrap_or("")).map_err(Error::invalid)?;
        let order = OrderBy::parse(Entity::RegisteredModel, &req.order_by).map_err(Error::invalid)?;
        let limit = wire::max_results(req.max_results, 100, 1000)?;
        self.read(caller, project, move |view| {
            let mut found: Vec<Model> = all_models(view)?.into_iter().filter(|m| filter.matches(m)).collect();
            found.sort_by(|a, b| order.compare(a, b));
            let (page, next) = page(found, req.page_token.as_deref(), limit)?;
            let mut models = Vec::new();
            for m in &page {
                models.push(m.wire(&latest_versions(m, &versions_of(view, m)?, &[])?));
            }
            Ok(paged("registered_models", json!(models), next))
        })
        .await
    }

    pub async fn get_latest_versions(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: ModelRequest = wire::request(req)?;
        let name = req.name()?;
        self.read(caller, project, move |view| {
            let model = get_model(view, &name)?;
            Ok(json!({ "model_versions": latest_versions(&model, &versions_of(view, &model)?, &req.stages)? }))
        })
        .await
    }

    pub async fn set_registered_model_tag(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_model(caller, project, req, |_, req, mut model| {
            let key = req.key()?;
            let value = req.value.clone().unwrap_or_default();
            wire::check_tags(&[KeyValue { key: key.clone(), value: value.clone() }])?;
            model.body.tags.insert(key, value);
            model.body.last_updated_timestamp = now_ms();
            Ok((vec![Op::Put { kind: Kind::MlRegisteredModel, id: model.id.clone(), parent: None, body: to_body(&model.body)? }], json!({})))
        })
        .await
    }

    pub async fn delete_registered_model_tag(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_model(caller, project, req, |_, req, mut model| {
            let key = req.key()?;
            if model.body.tags.remove(&key).is_none() {
                return Ok((Vec::new(), json!({})));
            }
            Ok((vec![Op::Put { kind: Kind::MlRegisteredModel, id: model.id.clone(), parent: None, body: to_body(&model.body)? }], json!({})))
        })
        .await
    }

    pub async fn set_registered_model_alias(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_model(caller, project, req, |view, req, mut model| {
            let alias = req.alias()?;
            let version = version_number(req.version.as_deref())?;
            get_version(view, &model, version)?;
            model.body.aliases.insert(alias, version);
            Ok((vec![Op::Put { kind: Kind::MlRegisteredModel, id: model.id.clone(), parent: None, body: to_body(&model.body)? }], json!({})))
        })
        .await
    }

    pub async fn delete_registered_model_alias(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_model(caller, project, req, |_, req, mut model| {
            let alias = req.alias.clone().unwrap_or_default();
            if model.body.aliases.remove(&alias).is_none() {
                return Ok((Vec::new(), json!({})));
            }
            Ok((vec![Op::Put { kind: Kind::MlRegisteredModel, id: model.id.clone(), parent: None, body: to_body(&model.body)? }], json!({})))
        })
        .await
    }

    pub async fn get_model_version_by_alias(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: ModelRequest = wire::request(req)?;
        let name = req.name()?;
        let alias = req.alias.clone().unwrap_or_default();
        self.read(caller, project, move |view| {
            let model = get_model(view, &name)?;
            let version = *model
                .body
                .aliases
                .get(&alias)
                .ok_or_else(|| Error::invalid(format!("Registered model alias {alias} not found.")))?;
            let body = get_version(view, &model, version)?;
            Ok(json!({ "model_version": Version { model: &model.body, body }.wire() }))
        })
        .await
    }

    pub async fn create_model_version(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: ModelRequest = wire::request(req)?;
        let name = req.name()?;
        let source = req.source.clone().filter(|s| !s.is_empty()).ok_or_else(|| Error::invalid("Missing value for required parameter 'source'."))?;
        wire::check_tags(&req.tags)?;
        let user = caller.principal.name.clone();
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        let (_, out) = data
            .commit_with(move |view| {
                let mut model = get_model(view, &name)?;
                let model_id = req.model_id.clone().unwrap_or_default();
                let logged = logged_models::find_for(view, &source, &model_id)?;
                let storage_location = logged.as_ref().map_or_else(|| source.clone(), |m| m.artifact_uri.clone());
                // A version of a logged model comes from the run that made it, as MLflow says.
                let run_id = req.run_id.clone().filter(|r| !r.is_empty()).or_else(|| logged.map(|m| m.source_run_id)).unwrap_or_default();
                let now = now_ms();
                // Past every number given, whatever a replayed record says.
                let highest = versions_of(view, &model)?.iter().map(|v| v.version).max().unwrap_or(0);
                model.body.last_version = model.body.last_version.max(highest) + 1;
                model.body.last_updated_timestamp = now;
                let body = VersionBody {
                    version: model.body.last_version,
                    creation_timestamp: now,
                    last_updated_timestamp: now,
                    description: req.description.clone().unwrap_or_default(),
                    source,
                    storage_location,
                    run_id,
                    run_link: req.run_link.clone().unwrap_or_default(),
                    model_id,
                    current_stage: "None".into(),
                    user_id: user,
                    tags: req.tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect(),
                };
                let id = version_id(&model.id, body.version);
                let ops = vec![
                    Op::Put { kind: Kind::MlRegisteredModel, id: model.id.clone(), parent: None, body: to_body(&model.body)? },
                    Op::Put { kind: Kind::MlModelVersion, id, parent: Some(model.id.clone()), body: to_body(&body)? },
                ];
                let out = json!({ "model_version": Version { model: &model.body, body }.wire() });
                Ok((ops, out))
            })
            .await?;
        Ok(out)
    }

    /// A change of one model version: `change` edits its body (or says it is deleted).
    async fn change_version<F>(&self, caller: &Caller, project: &str, req: Value, change: F) -> Result<Value>
    where
        F: FnOnce(&StateView<'_>, &ModelRequest, &Model, &mut VersionBody) -> Result<Vec<Op>> + Send + 'static,
    {
        self.change_model(caller, project, req, move |view, req, model| {
            let version = version_number(req.version.as_deref())?;
            let mut body = get_version(view, &model, version)?;
            let mut ops = change(view, req, &model, &mut body)?;
            if ops.is_empty() {
                body.last_updated_timestamp = now_ms();
                ops.push(Op::Put { kind: Kind::MlModelVersion, id: version_id(&model.id, version), parent: Some(model.id.clone()), body: to_body(&body)? });
            }
            let out = json!({ "model_version": Version { model: &model.body, body }.wire() });
            Ok((ops, out))
        })
        .await
    }

    pub async fn get_model_version(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: ModelRequest = wire::request(req)?;
        let name = req.name()?;
        let version = version_number(req.version.as_deref())?;
        self.read(caller, project, move |view| {
            let model = get_model(view, &name)?;
            let body = get_version(view, &model, version)?;
            Ok(json!({ "model_version": Version { model: &model.body, body }.wire() }))
        })
        .await
    }

    pub async fn update_model_version(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_version(caller, project, req, |_, req, _, body| {
            if let Some(d) = &req.description {
                body.description = d.clone();
            }
            Ok(Vec::new())
        })
        .await
    }

    pub async fn transition_model_version_stage(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_version(caller, project, req, |view, req, model, body| {
            let stage = canonical_stage(req.stage.as_deref().unwrap_or(""))?;
            let mut ops = Vec::new();
            let now = now_ms();
            if req.archive_existing_versions.unwrap_or(false) && (stage == "Staging" || stage == "Production") {
                for mut other in versions_of(view, model)? {
                    if other.version != body.version && other.current_stage == stage {
                        other.current_stage = "Archived".into();
                        other.last_updated_timestamp = now;
                        ops.push(Op::Put { kind: Kind::MlModelVersion, id: version_id(&model.id, other.version), parent: Some(model.id.clone()), body: to_body(&other)? });
                    }
                }
            }
            body.current_stage = stage;
            body.last_updated_timestamp = now;
            ops.push(Op::Put { kind: Kind::MlModelVersion, id: version_id(&model.id, body.version), parent: Some(model.id.clone()), body: to_body(&*body)? });
            Ok(ops)
        })
        .await
    }

    /// Deletes a version (its aliases go with it; its number is never given again).
    pub async fn delete_model_version(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_model(caller, project, req, |view, req, mut model| {
            let version = version_number(req.version.as_deref())?;
            get_version(view, &model, version)?;
            let mut ops = vec![Op::Delete { kind: Kind::MlModelVersion, id: version_id(&model.id, version) }];
            let before = model.body.aliases.len();
            model.body.aliases.retain(|_, v| *v != version);
            if model.body.aliases.len() != before {
                ops.push(Op::Put { kind: Kind::MlRegisteredModel, id: model.id.clone(), parent: None, body: to_body(&model.body)? });
            }
            Ok((ops, json!({})))
        })
        .await
    }

    pub async fn set_model_version_tag(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_version(caller, project, req, |_, req, _, body| {
            let key = req.key()?;
            let value = req.value.clone().unwrap_or_default();
            wire::check_tags(&[KeyValue { key: key.clone(), value: value.clone() }])?;
            body.tags.insert(key, value);
            Ok(Vec::new())
        })
        .await
        .map(|_| json!({}))
    }

    pub async fn delete_model_version_tag(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_version(caller, project, req, |_, req, _, body| {
            body.tags.remove(&req.key()?);
            Ok(Vec::new())
        })
        .await
        .map(|_| json!({}))
    }

    pub async fn search_model_versions(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: ModelRequest = wire::request(req)?;
        let filter = Filter::parse(Entity::ModelVersion, req.filter.as_deref().unwrap_or("")).map_err(Error::invalid)?;
        let order = OrderBy::parse(Entity::ModelVersion, &req.order_by).map_err(Error::invalid)?;
        let limit = wire::max_results(req.max_results, 10_000, 200_000)?;
        self.read(caller, project, move |view| {
            let models = all_models(view)?;
            let mut found = Vec::new();
            for m in &models {
                for body in versions_of(view, m)? {
                    let v = Version { model: &m.body, body };
                    if filter.matches(&v) {
                        found.push(v);
                    }
                }
            }
            found.sort_by(|a, b| order.compare(a, b));
            let (page, next) = page(found, req.page_token.as_deref(), limit)?;
            Ok(paged("model_versions", json!(page.iter().map(Version::wire).collect::<Vec<_>>()), next))
        })
        .await
    }

    pub async fn get_model_version_download_uri(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: ModelRequest = wire::request(req)?;
        let name = req.name()?;
        let version = version_number(req.version.as_deref())?;
        self.read(caller, project, move |view| {
            let model = get_model(view, &name)?;
            let body = get_version(view, &model, version)?;
            Ok(json!({ "artifact_uri": body.storage_location }))
        })
        .await
    }
}
