//! MLflow 3's logged models (`m-…`): a model's record in an experiment — name, type, the run that
//! made it, params, tags, metrics logged against it, a status (`PENDING` until its files are
//! uploaded, then `READY`) and its artifacts under `{experiment}/models/{id}/artifacts`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use holdfast_core::{Action, Caller, Result};
use holdfast_store::StateView;
use holdfast_types::{Error, Kind, Op};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::experiments::{self, page, paged};
use crate::search::{self, Entity, Filter, KeyType, OrderBy, Searchable};
use crate::wire::{self, KeyValue, metric_value, now_ms, opt_i64, opt_string, pairs, parse, store_err, strings, to_body};
use crate::Ml;

const STATUSES: [&str; 4] = ["LOGGED_MODEL_STATUS_UNSPECIFIED", "LOGGED_MODEL_PENDING", "LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED"];

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct LoggedModelBody {
    pub experiment_id: String,
    pub name: String,
    pub artifact_uri: String,
    pub creation_timestamp_ms: i64,
    pub last_updated_timestamp_ms: i64,
    pub status: String,
    #[serde(default)]
    pub status_message: String,
    #[serde(default)]
    pub model_type: String,
    #[serde(default)]
    pub source_run_id: String,
    #[serde(default)]
    pub creator_id: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The latest value of each metric logged against the model (per key, dataset and run):
    /// `{key, value, timestamp, step, run_id, dataset_name, dataset_digest}`; the history is in
    /// the run's `ml_metrics` batches.
    #[serde(default)]
    pub metrics: Vec<Value>,
}

pub(crate) struct LoggedModel {
    pub id: String,
    pub body: LoggedModelBody,
}

impl LoggedModel {
    fn wire(&self) -> Value {
        let b = &self.body;
        json!({
            "info": {
                "model_id": self.id,
                "experiment_id": b.experiment_id,
                "name": b.name,
                "creation_timestamp_ms": b.creation_timestamp_ms,
                "last_updated_timestamp_ms": b.last_updated_timestamp_ms,
                "artifact_uri": b.artifact_uri,
                "status": b.status,
                "status_message": b.status_message,
                "model_type": b.model_type,
                "source_run_id": b.source_run_id,
                "tags": pairs(&b.tags),
            },
            "data": { "params": pairs(&b.params), "metrics": b.metrics },
        })
    }

    fn latest_metric(&self, key: &str) -> Option<f64> {
        self.body
            .metrics
            .iter()
            .filter(|m| m["key"] == key)
            .max_by_key(|m| (m["step"].as_i64().unwrap_or(0), m["timestamp"].as_i64().unwrap_or(0)))
            .and_then(|m| metric_value(&m["value"]).ok())
    }
}

impl Searchable for LoggedModel {
    fn field(&self, kind: KeyType, key: &str) -> Option<search::Value<'_>> {
        use search::Value::{Number, Str};
        let b = &self.body;
        match kind {
            KeyType::Metric => self.latest_metric(key).map(Number),
            KeyType::Param => b.params.get(key).map(|v| Str(Cow::Borrowed(v.as_str()))),
            KeyType::Tag => b.tags.get(key).map(|v| Str(Cow::Borrowed(v.as_str()))),
            KeyType::Attribute => match key {
                "model_id" => Some(Str(Cow::Borrowed(&self.id))),
                "name" => Some(Str(Cow::Borrowed(&b.name))),
                "status" => Some(Str(Cow::Borrowed(&b.status))),
                "model_type" => Some(Str(Cow::Borrowed(&b.model_type))),
                "source_run_id" => Some(Str(Cow::Borrowed(&b.source_run_id))),
                "experiment_id" => Some(Str(Cow::Borrowed(&b.experiment_id))),
                "creation_timestamp" | "creation_time" => Some(Number(b.creation_timestamp_ms as f64)),
                "last_updated_timestamp" | "last_updated_time" => Some(Number(b.last_updated_timestamp_ms as f64)),
                _ => None,
            },
            _ => None,
        }
    }
}

fn get(view: &StateView<'_>, id: &str) -> Result<LoggedModel> {
    let r = view.get(Kind::MlLoggedModel, id).map_err(store_err)?.ok_or_else(|| Error::not_found(format!("Logged model with ID '{id}' not found.")))?;
    Ok(LoggedModel { id: r.id.clone(), body: parse(&r)? })
}

/// The logged model a model version's source names (`models:/m-…`, or its artifact location
/// with the version's `model_id`), if it exists.
pub(crate) fn find_for(view: &StateView<'_>, source: &str, model_id: &str) -> Result<Option<LoggedModelBody>> {
    let named = source.strip_prefix("models:/").filter(|s| s.starts_with("m-")).map(|s| s.trim_end_matches('/'));
    for id in [named, Some(model_id).filter(|m| !m.is_empty())].into_iter().flatten() {
        if let Some(r) = view.get(Kind::MlLoggedModel, id).map_err(store_err)? {
            let body: LoggedModelBody = parse(&r)?;
            if named.is_some() || source == body.artifact_uri {
                return Ok(Some(body));
            }
        }
    }
    Ok(None)
}

/// The ops that record metric points logged against a logged model — its latest value per key,
/// dataset and run — or none (no such model, or nothing newer).
pub(crate) fn metric_ops(view: &StateView<'_>, model_id: &str, run_id: &str, points: &[Value]) -> Result<Vec<Op>> {
    let Some(r) = view.get(Kind::MlLoggedModel, model_id).map_err(store_err)? else { return Ok(Vec::new()) };
    let mut body: LoggedModelBody = parse(&r)?;
    let before = body.metrics.clone();
    let order = |m: &Value| (m["step"].as_i64().unwrap_or(0), m["timestamp"].as_i64().unwrap_or(0));
    let same_series = |a: &Value, b: &Value| {
        a["key"] == b["key"] && a["run_id"] == b["run_id"] && a["dataset_name"] == b["dataset_name"] && a["dataset_digest"] == b["dataset_digest"]
    };
    for p in points {
        let mut p = p.clone();
        p["run_id"] = json!(run_id);
        match body.metrics.iter_mut().find(|m| same_series(m, &p)) {
            Some(m) if order(&p) >= order(m) => *m = p,
            Some(_) => {}
            None => body.metrics.push(p),
        }
    }
    if body.metrics == before {
        return Ok(Vec::new());
    }
    Ok(vec![Op::Put { kind: Kind::MlLoggedModel, id: r.id, parent: r.parent, body: to_body(&body)? }])
}

#[derive(Debug, Default, Deserialize)]
pub struct LoggedModelRequest {
    #[serde(default, deserialize_with = "opt_string")]
    pub model_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub experiment_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub model_type: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub source_run_id: Option<String>,
    #[serde(default)]
    pub params: Vec<KeyValue>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
    #[serde(default)]
    pub status: Option<Value>,
    #[serde(default, deserialize_with = "opt_string")]
    pub tag_key: Option<String>,
    #[serde(default, deserialize_with = "strings")]
    pub experiment_ids: Vec<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub filter: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub order_by: Vec<Value>,
    #[serde(default, deserialize_with = "opt_string")]
    pub page_token: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub artifact_directory_path: Option<String>,
}

fn status_name(v: Option<&Value>) -> Result<String> {
    let s = match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.as_u64().and_then(|i| STATUSES.get(i as usize)).map(|s| (*s).to_owned()).unwrap_or_default(),
        _ => String::new(),
    };
    if STATUSES[1..].contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(Error::invalid(format!("Invalid logged model status {s:?}: one of {}", STATUSES[1..].join(", "))))
    }
}

impl Ml {
    pub async fn create_logged_model(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: LoggedModelRequest = wire::request(req)?;
        let experiment_id = req.experiment_id.clone().filter(|s| !s.is_empty()).ok_or_else(|| Error::invalid("Missing value for required parameter 'experiment_id'."))?;
        for p in &req.params {
            wire::check_key("param", &p.key)?;
            wire::check_value("Param value for", &p.key, &p.value, wire::MAX_PARAM_VALUE_LENGTH)?;
        }
        wire::check_tags(&req.tags)?;
        let id = format!("m-{}", wire::hex_id()?);
        let name = req.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| format!("model-{}", &id[2..10]));
        wire::check_name("logged model", &name)?;
        let creator = caller.principal.name.clone();
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        let (_, out) = data
            .commit_with(move |view| {
                let experiment = experiments::get_active(view, &experiment_id)?;
                let now = now_ms();
                let body = LoggedModelBody {
                    artifact_uri: format!("{}/models/{id}/artifacts", experiment.body.artifact_location),
                    experiment_id: experiment.id.clone(),
                    name,
                    creation_timestamp_ms: now,
                    last_updated_timestamp_ms: now,
                    status: "LOGGED_MODEL_PENDING".into(),
                    status_message: String::new(),
                    model_type: req.model_type.unwrap_or_default(),
                    source_run_id: req.source_run_id.unwrap_or_default(),
                    creator_id: creator,
                    tags: req.tags.into_iter().map(|t| (t.key, t.value)).collect(),
                    params: req.params.into_iter().map(|t| (t.key, t.value)).collect(),
                    metrics: Vec::new(),
                };
                let mut ops = experiments::materialise(view, &experiment)?;
                ops.push(Op::Put { kind: Kind::MlLoggedModel, id: id.clone(), parent: Some(experiment.id), body: to_body(&body)? });
                Ok((ops, json!({ "model": LoggedModel { id, body }.wire() })))
            })
            .await?;
        Ok(out)
    }

    pub async fn get_logged_model(&self, caller: &Caller, project: &str, id: &str) -> Result<Value> {
        let id = id.to_owned();
        self.read(caller, project, move |view| Ok(json!({ "model": get(view, &id)?.wire() }))).await
    }

    async fn change_logged_model<F>(&self, caller: &Caller, project: &str, id: &str, change: F) -> Result<Value>
    where
        F: FnOnce(&mut LoggedModelBody) -> Result<()> + Send + 'static,
    {
        let id = id.to_owned();
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        let (_, out) = data
            .commit_with(move |view| {
                let r = view.get(Kind::MlLoggedModel, &id).map_err(store_err)?.ok_or_else(|| Error::not_found(format!("Logged model with ID '{id}' not found.")))?;
                let mut model = LoggedModel { id: r.id.clone(), body: parse(&r)? };
                change(&mut model.body)?;
                model.body.last_updated_timestamp_ms = now_ms();
                let op = Op::Put { kind: Kind::MlLoggedModel, id: r.id, parent: r.parent, body: to_body(&model.body)? };
                Ok((vec![op], json!({ "model": model.wire() })))
            })
            .await?;
        Ok(out)
    }

    pub async fn finalize_logged_model(&self, caller: &Caller, project: &str, id: &str, req: Value) -> Result<Value> {
        let req: LoggedModelRequest = wire::request(req)?;
        let status = status_name(req.status.as_ref())?;
        self.change_logged_model(caller, project, id, move |b| {
            b.status = status;
            Ok(())
        })
        .await
    }

    pub async fn set_logged_model_tags(&self, caller: &Caller, project: &str, id: &str, req: Value) -> Result<Value> {
        let req: LoggedModelRequest = wire::request(req)?;
        wire::check_tags(&req.tags)?;
        self.change_logged_model(caller, project, id, move |b| {
            b.tags.extend(req.tags.into_iter().map(|t| (t.key, t.value)));
            Ok(())
        })
        .await
        .map(|_| json!({}))
    }

    pub async fn delete_logged_model_tag(&self, caller: &Caller, project: &str, id: &str, key: &str) -> Result<Value> {
        let key = key.to_owned();
        self.change_logged_model(caller, project, id, move |b| {
            b.tags.remove(&key).map(drop).ok_or_else(|| Error::not_found(format!("No tag with key {key:?} on the logged model")))
        })
        .await
        .map(|_| json!({}))
    }

    pub async fn log_logged_model_params(&self, caller: &Caller, project: &str, id: &str, req: Value) -> Result<Value> {
        let req: LoggedModelRequest = wire::request(req)?;
        for p in &req.params {
            wire::check_key("param", &p.key)?;
            wire::check_value("Param value for", &p.key, &p.value, wire::MAX_PARAM_VALUE_LENGTH)?;
        }
        self.change_logged_model(caller, project, id, move |b| {
            for p in req.params {
                match b.params.get(&p.key) {
                    Some(old) if *old != p.value => {
                        return Err(Error::invalid(format!("Changing param values is not allowed. Param with key='{}' was already logged with value='{old}'.", p.key)));
                    }
                    _ => {
                        b.params.insert(p.key, p.value);
                    }
                }
            }
            Ok(())
        })
        .await
        .map(|_| json!({}))
    }

    /// Deletes a logged model and its artifacts.
    pub async fn delete_logged_model(&self, caller: &Caller, project: &str, id: &str) -> Result<Value> {
        let id = id.to_owned();
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        data.commit(Box::new(move |view| {
            let model = get(view, &id)?;
            let mut ops: Vec<Op> = view
                .list_by_id_prefix(Kind::MlArtifact, &format!("{}/", wire::root_path(&model.body.artifact_uri)), None, usize::MAX >> 1)
                .map_err(store_err)?
                .into_iter()
                .map(|r| Op::Delete { kind: Kind::MlArtifact, id: r.id })
                .collect();
            ops.push(Op::Delete { kind: Kind::MlLoggedModel, id });
            Ok(ops)
        }))
        .await?;
        Ok(json!({}))
    }

    pub async fn search_logged_models(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: LoggedModelRequest = wire::request(req)?;
        let filter = Filter::parse(Entity::LoggedModel, req.filter.as_deref().unwrap_or("")).map_err(Error::invalid)?;
        let clauses: Vec<String> = req
            .order_by
            .iter()
            .map(|o| match o {
                Value::String(s) => s.clone(),
                o => {
                    let field = o["field_name"].as_str().unwrap_or_default();
                    let asc = o.get("ascending").and_then(Value::as_bool).unwrap_or(true);
                    format!("{field} {}", if asc { "ASC" } else { "DESC" })
                }
            })
            .collect();
        let order = OrderBy::parse(Entity::LoggedModel, &clauses).map_err(Error::invalid)?;
        let limit = wire::max_results(req.max_results, 100, 1000)?;
        self.read(caller, project, move |view| {
            let mut found = Vec::new();
            for experiment in &req.experiment_ids {
                for r in &wire::children(view, Kind::MlLoggedModel, Some(experiment))? {
                    let m = LoggedModel { id: r.id.clone(), body: parse(r)? };
                    if filter.matches(&m) {
                        found.push(m);
                    }
                }
            }
            found.sort_by(|a, b| order.compare(a, b));
            let (page, next) = page(found, req.page_token.as_deref(), limit)?;
            Ok(paged("models", json!(page.iter().map(LoggedModel::wire).collect::<Vec<_>>()), next))
        })
        .await
    }

    /// A logged model's artifact directory, as `artifacts/list` answers for a run.
    pub async fn list_logged_model_artifacts(&self, caller: &Caller, project: &str, id: &str, req: Value) -> Result<Value> {
        let req: LoggedModelRequest = wire::request(req)?;
        let id = id.to_owned();
        let root = self.read(caller, project, move |view| Ok(get(view, &id)?.body.artifact_uri)).await?;
        let mut path = wire::root_path(&root).to_owned();
        if let Some(sub) = req.artifact_directory_path.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
            path = format!("{path}/{}", wire::check_path(sub)?);
        }
        let mut out = self.list_artifacts_proxy(caller, project, json!({ "path": path })).await?;
        out["root_uri"] = json!(root);
        Ok(out)
    }
}
