//! Traces (`tr-…`): a trace's info as the MLflow 3 client sends it (location, request time,
//! duration, state, metadata, tags), in its experiment; its spans are the trace's artifact
//! `traces.json` under `{experiment}/traces/{id}/artifacts`, which the server names in the
//! `mlflow.artifactLocation` tag and the client uploads and reads through the artifact proxy.

use std::borrow::Cow;

use holdfast_core::{Action, Caller, Result};
use holdfast_store::StateView;
use holdfast_types::{Error, Kind, Op};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::experiments::{self, page, paged};
use crate::search::{self, Entity, Filter, KeyType, OrderBy, Searchable};
use crate::wire::{self, opt_i64, opt_string, store_err, strings, to_body};
use crate::Ml;

const ARTIFACT_LOCATION_TAG: &str = "mlflow.artifactLocation";

/// A trace as stored: its `trace_info` in the wire's shape.
pub(crate) struct Trace {
    pub id: String,
    pub info: Value,
}

impl Trace {
    fn request_time_ms(&self) -> Option<f64> {
        let t = self.info.get("request_time")?;
        match t {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse::<jiff::Timestamp>().ok().map(|ts| ts.as_millisecond() as f64),
            _ => None,
        }
    }

    fn duration_ms(&self) -> Option<f64> {
        match self.info.get("execution_duration")? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.strip_suffix('s').and_then(|s| s.parse::<f64>().ok()).map(|secs| secs * 1000.0),
            _ => None,
        }
    }
}

impl Searchable for Trace {
    fn field(&self, kind: KeyType, key: &str) -> Option<search::Value<'_>> {
        use search::Value::{Number, Str};
        match kind {
            // `metadata.k` / `request_metadata.k` arrive as params (a trace has none of its own).
            KeyType::Param => self.info.get("trace_metadata").and_then(|t| t.get(key)).and_then(Value::as_str).map(|s| Str(Cow::Borrowed(s))),
            KeyType::Tag => self.info.pointer("/tags").and_then(|t| t.get(key)).and_then(Value::as_str).map(|s| Str(Cow::Borrowed(s))),
            KeyType::Attribute => match key {
                "trace_id" | "request_id" => Some(Str(Cow::Borrowed(&self.id))),
                "timestamp_ms" | "timestamp" | "request_time" => self.request_time_ms().map(Number),
                "execution_time_ms" | "execution_time" => self.duration_ms().map(Number),
                "status" | "state" => self.info.get("state").and_then(Value::as_str).map(|s| Str(Cow::Borrowed(s))),
                "name" => self.info.pointer("/tags/mlflow.traceName").and_then(Value::as_str).map(|s| Str(Cow::Borrowed(s))),
                "run_id" => self.info.pointer("/trace_metadata/mlflow.sourceRun").and_then(Value::as_str).map(|s| Str(Cow::Borrowed(s))),
                _ => None,
            },
            _ => None,
        }
    }
}

fn get(view: &StateView<'_>, id: &str) -> Result<Trace> {
    let r = view.get(Kind::MlTrace, id).map_err(store_err)?.ok_or_else(|| Error::not_found(format!("Trace with ID '{id}' not found.")))?;
    Ok(Trace { id: r.id.clone(), info: r.body["trace_info"].clone() })
}

fn experiment_of(info: &Value) -> Option<String> {
    info.pointer("/trace_location/mlflow_experiment/experiment_id").and_then(Value::as_str).map(str::to_owned)
}

#[derive(Debug, Default, Deserialize)]
pub struct TraceRequest {
    #[serde(default)]
    pub trace: Option<Value>,
    #[serde(default, deserialize_with = "opt_string")]
    pub key: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub value: Option<String>,
    #[serde(default)]
    pub locations: Vec<Value>,
    #[serde(default, deserialize_with = "strings")]
    pub experiment_ids: Vec<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub experiment_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub filter: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub max_results: Option<i64>,
    #[serde(default, deserialize_with = "strings")]
    pub order_by: Vec<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub page_token: Option<String>,
    #[serde(default, deserialize_with = "strings")]
    pub request_ids: Vec<String>,
    #[serde(default, deserialize_with = "strings")]
    pub trace_ids: Vec<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub max_timestamp_millis: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub max_traces: Option<i64>,
    #[serde(default, deserialize_with = "opt_string")]
    pub run_id: Option<String>,
}

impl Ml {
    /// `StartTraceV3`: records a finished trace's info and says where its spans go.
    pub async fn start_trace(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: TraceRequest = wire::request(req)?;
        let mut info = req.trace.and_then(|t| t.get("trace_info").cloned()).ok_or_else(|| Error::invalid("Missing value for required parameter 'trace.trace_info'."))?;
        let id = info.get("trace_id").and_then(Value::as_str).map(str::to_owned).filter(|s| !s.is_empty()).ok_or_else(|| Error::invalid("trace_info.trace_id is required"))?;
        if id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(Error::invalid(format!("Invalid trace id {id:?}")));
        }
        let experiment_id = experiment_of(&info).ok_or_else(|| Error::invalid("trace_info.trace_location.mlflow_experiment.experiment_id is required"))?;
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        let (_, out) = data
            .commit_with(move |view| {
                let experiment = experiments::get_active(view, &experiment_id)?;
                let location = format!("{}/traces/{id}/artifacts", experiment.body.artifact_location);
                if !info.get("tags").is_some_and(Value::is_object) {
                    info["tags"] = json!({});
                }
                info["tags"][ARTIFACT_LOCATION_TAG] = json!(location);
                let mut ops = experiments::materialise(view, &experiment)?;
                if let Some(old) = view.get(Kind::MlTrace, &id).map_err(store_err)?
                    && old.body["trace_info"] == info
                {
                    return Ok((Vec::new(), json!({ "trace": { "trace_info": info } })));
                }
                ops.push(Op::Put { kind: Kind::MlTrace, id, parent: Some(experiment.id), body: json!({ "trace_info": info }) });
                Ok((ops, json!({ "trace": { "trace_info": info } })))
            })
            .await?;
        Ok(out)
    }

    pub async fn get_trace_info(&self, caller: &Caller, project: &str, id: &str) -> Result<Value> {
        let id = id.to_owned();
        self.read(caller, project, move |view| Ok(json!({ "trace": { "trace_info": get(view, &id)?.info } }))).await
    }

    async fn change_trace<F>(&self, caller: &Caller, project: &str, id: &str, change: F) -> Result<Value>
    where
        F: FnOnce(&mut Value) -> Result<()> + Send + 'static,
    {
        let id = id.to_owned();
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        data.commit(Box::new(move |view| {
            let r = view.get(Kind::MlTrace, &id).map_err(store_err)?.ok_or_else(|| Error::not_found(format!("Trace with ID '{id}' not found.")))?;
            let mut body = r.body.clone();
            change(&mut body["trace_info"])?;
            if body == r.body {
                return Ok(Vec::new());
            }
            Ok(vec![Op::Put { kind: Kind::MlTrace, id: r.id, parent: r.parent, body: to_body(&body)? }])
        }))
        .await?;
        Ok(json!({}))
    }

    pub async fn set_trace_tag(&self, caller: &Caller, project: &str, id: &str, req: Value) -> Result<Value> {
        let req: TraceRequest = wire::request(req)?;
        let key = req.key.filter(|k| !k.is_empty()).ok_or_else(|| Error::invalid("Missing value for required parameter 'key'."))?;
        let value = req.value.unwrap_or_default();
        wire::check_tags(&[wire::KeyValue { key: key.clone(), value: value.clone() }])?;
        if key == ARTIFACT_LOCATION_TAG {
            return Err(Error::invalid(format!("the tag {ARTIFACT_LOCATION_TAG} is the server's: it says where the trace's spans are")));
        }
        self.change_trace(caller, project, id, move |info| {
            if !info.get("tags").is_some_and(Value::is_object) {
                info["tags"] = json!({});
            }
            info["tags"][key] = json!(value);
            Ok(())
        })
        .await
    }

    pub async fn delete_trace_tag(&self, caller: &Caller, project: &str, id: &str, req: Value) -> Result<Value> {
        let req: TraceRequest = wire::request(req)?;
        let key = req.key.filter(|k| !k.is_empty()).ok_or_else(|| Error::invalid("Missing value for required parameter 'key'."))?;
        self.change_trace(caller, project, id, move |info| {
            match info.get_mut("tags").and_then(Value::as_object_mut).and_then(|t| t.remove(&key)) {
                Some(_) => Ok(()),
                None => Err(Error::not_found(format!("No trace tag with key '{key}'"))),
            }
        })
        .await
    }

    pub async fn search_traces(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: TraceRequest = wire::request(req)?;
        let mut experiments: Vec<String> = req
            .locations
            .iter()
            .filter_map(|l| l.pointer("/mlflow_experiment/experiment_id").and_then(Value::as_str).map(str::to_owned))
            .collect();
        experiments.extend(req.experiment_ids.iter().cloned());
        if experiments.is_empty() {
            return Err(Error::invalid("search_traces needs at least one experiment location"));
        }
        let filter = Filter::parse(Entity::Trace, req.filter.as_deref().unwrap_or("")).map_err(Error::invalid)?;
        let order = OrderBy::parse(Entity::Trace, &req.order_by).map_err(Error::invalid)?;
        let limit = wire::max_results(req.max_results, 100, 500)?;
        self.read(caller, project, move |view| {
            let mut found = Vec::new();
            for e in &experiments {
                for t in traces_of(view, e)? {
                    if filter.matches(&t) {
                        found.push(t);
                    }
                }
            }
            found.sort_by(|a, b| order.compare(a, b));
            let (page, next) = page(found, req.page_token.as_deref(), limit)?;
            Ok(paged("traces", json!(page.into_iter().map(|t| t.info).collect::<Vec<_>>()), next))
        })
        .await
    }

    /// Deletes traces of an experiment, by id or older than a time (and their span files).
    pub async fn delete_traces(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: TraceRequest = wire::request(req)?;
        let experiment = req.experiment_id.clone().filter(|s| !s.is_empty()).ok_or_else(|| Error::invalid("Missing value for required parameter 'experiment_id'."))?;
        let mut ids = req.request_ids.clone();
        ids.extend(req.trace_ids.iter().cloned());
        if ids.is_empty() == req.max_timestamp_millis.is_none() {
            return Err(Error::invalid("Exactly one of 'max_timestamp_millis' and 'request_ids' must be specified."));
        }
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        let (_, n) = data
            .commit_with(move |view| {
                let chosen: Vec<Trace> = match req.max_timestamp_millis {
                    Some(max) => {
                        let mut old: Vec<Trace> =
                            traces_of(view, &experiment)?.into_iter().filter(|t| t.request_time_ms().is_some_and(|ms| ms <= max as f64)).collect();
                        old.truncate(req.max_traces.map_or(usize::MAX, |m| m.max(0) as usize));
                        old
                    }
                    None => ids
                        .iter()
                        .filter_map(|id| get(view, id).ok())
                        .filter(|t| experiment_of(&t.info).as_deref() == Some(experiment.as_str()))
                        .collect(),
                };
                let mut ops = Vec::new();
                for t in &chosen {
                    // The trace's own directory, whatever its tags say.
                    let dir = format!("{experiment}/traces/{}/artifacts/", t.id);
                    for r in view.list_by_id_prefix(Kind::MlArtifact, &dir, None, usize::MAX >> 1).map_err(store_err)? {
                        ops.push(Op::Delete { kind: Kind::MlArtifact, id: r.id });
                    }
                    ops.push(Op::Delete { kind: Kind::MlTrace, id: t.id.clone() });
                }
                Ok((ops, chosen.len()))
            })
            .await?;
        Ok(json!({ "traces_deleted": n }))
    }

    /// Links traces to a run: the run's id in each trace's `mlflow.sourceRun` metadata.
    pub async fn link_traces_to_run(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: TraceRequest = wire::request(req)?;
        let run = req.run_id.clone().filter(|s| !s.is_empty()).ok_or_else(|| Error::invalid("Missing value for required parameter 'run_id'."))?;
        if req.trace_ids.len() > 100 {
            return Err(Error::invalid("at most 100 traces can be linked at once"));
        }
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        data.commit(Box::new(move |view| {
            crate::runs::get(view, &run)?;
            let mut ops = Vec::new();
            for id in &req.trace_ids {
                let r = view.get(Kind::MlTrace, id).map_err(store_err)?.ok_or_else(|| Error::not_found(format!("Trace with ID '{id}' not found.")))?;
                let mut body = r.body.clone();
                if !body["trace_info"].get("trace_metadata").is_some_and(Value::is_object) {
                    body["trace_info"]["trace_metadata"] = json!({});
                }
                body["trace_info"]["trace_metadata"]["mlflow.sourceRun"] = json!(run);
                if body != r.body {
                    ops.push(Op::Put { kind: Kind::MlTrace, id: r.id, parent: r.parent, body });
                }
            }
            Ok(ops)
        }))
        .await?;
        Ok(json!({}))
    }
}

fn traces_of(view: &StateView<'_>, experiment: &str) -> Result<Vec<Trace>> {
    Ok(wire::children(view, Kind::MlTrace, Some(experiment))?
        .into_iter()
        .map(|r| Trace { info: r.body["trace_info"].clone(), id: r.id })
        .collect())
}
