//! Runs: their info, params (immutable once logged), tags, the latest value of each metric
//! (in the run's record, so a search never reads histories), and metric histories as batches of
//! points (one `ml_metrics` resource per logging call, named by its content: a retried call is the
//! same resource and writes nothing). Every change is one journaled change.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use holdfast_core::{Action, Caller, Result};
use holdfast_store::StateView;
use holdfast_types::{Error, Kind, Op};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::experiments::{self, page, paged};
use crate::index;
use crate::search::{self, Entity, Filter, KeyType, OrderBy, Searchable};
use crate::wire::{
    self, KeyValue, metric_json, metric_value, now_ms, opt_i64, opt_string, pairs, parse, store_err, strings, to_body,
};
use crate::{Ml, ViewType};

/// The latest value of a metric, or one point of its history.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub(crate) struct Point {
    pub value: Value,
    pub timestamp: i64,
    pub step: i64,
}

impl Point {
    fn f(&self) -> f64 {
        metric_value(&self.value).unwrap_or(f64::NAN)
    }

    /// MLflow's rule for the latest value: the greatest (step, timestamp, value).
    fn newer_than(&self, other: &Point) -> bool {
        (self.step, self.timestamp).cmp(&(other.step, other.timestamp)).then_with(|| self.f().total_cmp(&other.f())).is_gt()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct RunBody {
    pub experiment_id: String,
    pub run_name: String,
    pub user_id: String,
    pub status: String,
    pub start_time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    pub lifecycle_stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_time: Option<i64>,
    pub artifact_uri: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub metrics: BTreeMap<String, Point>,
    /// Dataset inputs as the wire has them (`{tags, dataset}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_inputs: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_outputs: Vec<Value>,
}

pub(crate) struct Run {
    pub id: String,
    pub body: RunBody,
}

const RUN_NAME_TAG: &str = "mlflow.runName";
const STATUSES: [&str; 5] = ["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"];

impl Run {
    pub(crate) fn wire(&self) -> Value {
        let b = &self.body;
        let metrics: Vec<Value> = b
            .metrics
            .iter()
            .map(|(k, p)| json!({ "key": k, "value": p.value, "timestamp": p.timestamp, "step": p.step }))
            .collect();
        let mut info = json!({
            "run_id": self.id,
            "run_uuid": self.id,
            "run_name": b.run_name,
            "experiment_id": b.experiment_id,
            "user_id": b.user_id,
            "status": b.status,
            "start_time": b.start_time,
            "artifact_uri": b.artifact_uri,
            "lifecycle_stage": b.lifecycle_stage,
        });
        if let Some(end) = b.end_time {
            info["end_time"] = json!(end);
        }
        let mut run = json!({
            "info": info,
            "data": { "metrics": metrics, "params": pairs(&b.params), "tags": pairs(&b.tags) },
            "inputs": { "dataset_inputs": b.datasets, "model_inputs": b.model_inputs },
        });
        if !b.model_outputs.is_empty() {
            run["outputs"] = json!({ "model_outputs": b.model_outputs });
        }
        run
    }

    pub(crate) fn active(&self) -> bool {
        self.body.lifecycle_stage == "active"
    }
}

impl Searchable for Run {
    fn field(&self, kind: KeyType, key: &str) -> Option<search::Value<'_>> {
        use search::Value::{Number, Str};
        let b = &self.body;
        match kind {
            KeyType::Metric => b.metrics.get(key).map(|p| Number(p.f())),
            KeyType::Param => b.params.get(key).map(|v| Str(Cow::Borrowed(v.as_str()))),
            KeyType::Tag => b.tags.get(key).map(|v| Str(Cow::Borrowed(v.as_str()))),
            KeyType::Attribute => match key {
                "run_id" => Some(Str(Cow::Borrowed(&self.id))),
                "run_name" => Some(Str(Cow::Borrowed(&b.run_name))),
                "status" => Some(Str(Cow::Borrowed(&b.status))),
                "user_id" => Some(Str(Cow::Borrowed(&b.user_id))),
                "artifact_uri" => Some(Str(Cow::Borrowed(&b.artifact_uri))),
                "lifecycle_stage" => Some(Str(Cow::Borrowed(&b.lifecycle_stage))),
                "experiment_id" => Some(Str(Cow::Borrowed(&b.experiment_id))),
                "start_time" => Some(Number(b.start_time as f64)),
                "end_time" => b.end_time.map(|t| Number(t as f64)),
                _ => None,
            },
            _ => None,
        }
    }

    fn datasets(&self) -> Vec<(&str, &str, Option<&str>)> {
        self.body
            .datasets
            .iter()
            .filter_map(|d| {
                let name = d.pointer("/dataset/name")?.as_str()?;
                let digest = d.pointer("/dataset/digest").and_then(Value::as_str).unwrap_or("");
                let context = d.get("tags").and_then(Value::as_array).and_then(|tags| {
                    tags.iter().find(|t| t["key"] == "mlflow.data.context").and_then(|t| t["value"].as_str())
                });
                Some((name, digest, context))
            })
            .collect()
    }
}

impl index::Indexed for Run {
    const KIND: Kind = Kind::MlRun;

    fn from_resource(r: &holdfast_store::Resource) -> Result<Self> {
        Ok(Run { id: r.id.clone(), body: parse(r)? })
    }
}

pub(crate) fn get(view: &StateView<'_>, id: &str) -> Result<Run> {
    let r = view.get(Kind::MlRun, id).map_err(store_err)?.ok_or_else(|| Error::not_found(format!("Run with id={id} not found")))?;
    Ok(Run { id: r.id.clone(), body: parse(&r)? })
}

fn get_active(view: &StateView<'_>, id: &str) -> Result<Run> {
    let run = get(view, id)?;
    if !run.active() {
        return Err(Error::invalid(format!("The run {id} must be in the 'active' state. Current state is deleted.")));
    }
    Ok(run)
}

/// A run's id from a request: `run_id`, or the older `run_uuid`.
#[derive(Debug, Default, Deserialize)]
pub struct RunRef {
    #[serde(default, deserialize_with = "opt_string")]
    pub run_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub run_uuid: Option<String>,
}

impl RunRef {
    fn id(&self) -> Result<String> {
        self.run_id
            .clone()
            .or_else(|| self.run_uuid.clone())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::invalid("Missing value for required parameter 'run_id'."))
    }
}

#[derive(Debug, Deserialize)]
pub struct CreateRun {
    #[serde(default, deserialize_with = "opt_string")]
    pub experiment_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub user_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub run_name: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub start_time: Option<i64>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

#[derive(Debug, Deserialize)]
pub struct UpdateRun {
    #[serde(flatten)]
    pub run: RunRef,
    #[serde(default, deserialize_with = "opt_string")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub end_time: Option<i64>,
    #[serde(default, deserialize_with = "opt_string")]
    pub run_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct MetricIn {
    pub key: String,
    pub value: Value,
    #[serde(default, deserialize_with = "opt_i64")]
    pub timestamp: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub step: Option<i64>,
    #[serde(default, deserialize_with = "opt_string")]
    pub model_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub dataset_name: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub dataset_digest: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LogMetric {
    #[serde(flatten)]
    pub run: RunRef,
    #[serde(flatten)]
    pub metric: MetricIn,
}

#[derive(Debug, Deserialize)]
pub struct LogBatch {
    #[serde(flatten)]
    pub run: RunRef,
    #[serde(default)]
    pub metrics: Vec<MetricIn>,
    #[serde(default)]
    pub params: Vec<KeyValue>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

#[derive(Debug, Deserialize)]
pub struct KeyedRun {
    #[serde(flatten)]
    pub run: RunRef,
    #[serde(default, deserialize_with = "opt_string")]
    pub key: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub value: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LogInputs {
    #[serde(flatten)]
    pub run: RunRef,
    #[serde(default)]
    pub datasets: Vec<Value>,
    #[serde(default)]
    pub models: Vec<Value>,
}

#[derive(Debug, Deserialize)]
pub struct LogOutputs {
    #[serde(flatten)]
    pub run: RunRef,
    #[serde(default)]
    pub models: Vec<Value>,
}

#[derive(Debug, Deserialize)]
pub struct LogModel {
    #[serde(flatten)]
    pub run: RunRef,
    #[serde(default, deserialize_with = "opt_string")]
    pub model_json: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SearchRuns {
    #[serde(default, deserialize_with = "strings")]
    pub experiment_ids: Vec<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub filter: Option<String>,
    #[serde(default)]
    pub run_view_type: Option<Value>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub max_results: Option<i64>,
    #[serde(default, deserialize_with = "strings")]
    pub order_by: Vec<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct MetricHistory {
    #[serde(flatten)]
    pub run: RunRef,
    #[serde(default, deserialize_with = "opt_string")]
    pub metric_key: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub max_results: Option<i64>,
    #[serde(default, deserialize_with = "opt_string")]
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct MetricHistoryBulk {
    #[serde(default, deserialize_with = "strings")]
    pub run_ids: Vec<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub metric_key: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub start_step: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub end_step: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub max_results: Option<i64>,
}

/// Most runs one bulk-interval request names, and most points per run (MLflow's limits).
const MAX_BULK_RUNS: usize = 100;
const MAX_BULK_RESULTS: usize = 2500;
/// Most points one metric-history page holds.
const MAX_HISTORY_PAGE: usize = 25_000;

/// A batch of metric points as journaled: `[key, value, timestamp, step]` each, plus what the
/// call said of them all (a logged model, a dataset).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct MetricsBody {
    pub points: Vec<(String, Value, i64, i64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_digest: Option<String>,
}

/// The name of a batch: its run and a digest of its content, so the same batch sent again is
/// the same resource.
fn batch_id(run: &str, body: &Value) -> String {
    let digest = Sha256::digest(body.to_string().as_bytes());
    format!("{run}:{}", hex::encode(&digest[..12]))
}

/// Checked metrics, grouped by what they share (a logged model, a dataset), as batches.
fn metric_batches(metrics: Vec<MetricIn>, now: i64) -> Result<Vec<MetricsBody>> {
    let mut batches: BTreeMap<(Option<String>, Option<String>, Option<String>), Vec<(String, Value, i64, i64)>> = BTreeMap::new();
    for m in metrics {
        wire::check_key("metric", &m.key)?;
        let value = metric_json(metric_value(&m.value).map_err(|e| Error::invalid(format!("metric '{}': {}", m.key, e.message)))?);
        let point = (m.key, value, m.timestamp.unwrap_or(now), m.step.unwrap_or(0));
        batches.entry((m.model_id, m.dataset_name, m.dataset_digest)).or_default().push(point);
    }
    Ok(batches
        .into_iter()
        .map(|((model_id, dataset_name, dataset_digest), points)| MetricsBody { points, model_id, dataset_name, dataset_digest })
        .collect())
}

/// What a log call changes in a run: params and tags added, latest metrics moved on. Refuses a
/// param whose value differs from the one logged (params are immutable).
struct RunDelta {
    params: BTreeMap<String, String>,
    tags: BTreeMap<String, Value>,
    metrics: BTreeMap<String, Point>,
}

impl RunDelta {
    fn new() -> Self {
        Self { params: BTreeMap::new(), tags: BTreeMap::new(), metrics: BTreeMap::new() }
    }

    fn param(&mut self, run: &Run, key: String, value: String) -> Result<()> {
        match run.body.params.get(&key).or_else(|| self.params.get(&key)) {
            Some(old) if *old == value => Ok(()),
            Some(old) => Err(Error::invalid(format!(
                "Changing param values is not allowed. Param with key='{key}' was already logged with value='{old}' for run ID='{}'. Attempted logging new value '{value}'.",
                run.id
            ))),
            None => {
                self.params.insert(key, value);
                Ok(())
            }
        }
    }

    fn metric(&mut self, run: &Run, key: &str, point: Point) {
        let current = self.metrics.get(key).or_else(|| run.body.metrics.get(key));
        if current.is_none_or(|c| point.newer_than(c)) {
            self.metrics.insert(key.to_owned(), point);
        }
    }

    fn ops(self, run: &Run) -> Result<Vec<Op>> {
        let mut patch = serde_json::Map::new();
        if !self.params.is_empty() {
            patch.insert("params".into(), to_body(&self.params)?);
        }
        let tags: serde_json::Map<String, Value> =
            self.tags.into_iter().filter(|(k, v)| run.body.tags.get(k).map(|old| json!(old)) != Some(v.clone())).collect();
        if let Some(name) = tags.get(RUN_NAME_TAG).and_then(Value::as_str) {
            patch.insert("run_name".into(), json!(name));
        }
        if !tags.is_empty() {
            patch.insert("tags".into(), Value::Object(tags));
        }
        if !self.metrics.is_empty() {
            patch.insert("metrics".into(), to_body(&self.metrics)?);
        }
        Ok(if patch.is_empty() { Vec::new() } else { vec![Op::Patch { kind: Kind::MlRun, id: run.id.clone(), patch: Value::Object(patch) }] })
    }
}

const ADJECTIVES: [&str; 16] = [
    "bold", "calm", "keen", "brave", "bright", "clever", "gentle", "honest", "lively", "merry", "nimble", "proud", "quiet", "steady", "swift", "wise",
];
const ANIMALS: [&str; 16] = [
    "fox", "owl", "lynx", "hare", "wren", "seal", "crab", "moth", "toad", "yak", "eel", "ibis", "newt", "orca", "puma", "wolf",
];

/// A run name like MLflow's (`adjective-animal-NNN`), from the run's id.
fn run_name_for(id: &str) -> String {
    let byte = |i: usize| u8::from_str_radix(id.get(i * 2..i * 2 + 2).unwrap_or("00"), 16).unwrap_or(0) as usize;
    format!("{}-{}-{}", ADJECTIVES[byte(0) % 16], ANIMALS[byte(1) % 16], byte(2) * 4 % 1000)
}

impl Ml {
    pub async fn create_run(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: CreateRun = wire::request(req)?;
        wire::check_tags(&req.tags)?;
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        let experiment_id = req.experiment_id.filter(|s| !s.is_empty()).unwrap_or_else(|| experiments::DEFAULT_EXPERIMENT.into());
        let user = req.user_id.filter(|u| !u.is_empty()).unwrap_or_else(|| caller.principal.name.clone());
        let id = wire::hex_id()?;
        let mut tags: BTreeMap<String, String> = req.tags.into_iter().map(|t| (t.key, t.value)).collect();
        let run_name = req.run_name.filter(|n| !n.is_empty()).or_else(|| tags.get(RUN_NAME_TAG).cloned()).unwrap_or_else(|| run_name_for(&id));
        tags.insert(RUN_NAME_TAG.into(), run_name.clone());
        tags.entry("mlflow.user".into()).or_insert_with(|| user.clone());
        let body = RunBody {
            artifact_uri: format!("mlflow-artifacts:/{experiment_id}/{id}/artifacts"),
            experiment_id,
            run_name,
            user_id: user,
            status: "RUNNING".into(),
            start_time: req.start_time.unwrap_or_else(now_ms),
            end_time: None,
            lifecycle_stage: "active".into(),
            deleted_time: None,
            params: BTreeMap::new(),
            tags,
            metrics: BTreeMap::new(),
            datasets: Vec::new(),
            model_inputs: Vec::new(),
            model_outputs: Vec::new(),
        };
        let (_, run) = data
            .commit_with(move |view| {
                let experiment = experiments::get_active(view, &body.experiment_id)?;
                let mut ops = experiments::materialise(view, &experiment)?;
                ops.push(Op::Put { kind: Kind::MlRun, id: id.clone(), parent: Some(experiment.id), body: to_body(&body)? });
                Ok((ops, Run { id, body }))
            })
            .await?;
        Ok(json!({ "run": run.wire() }))
    }

    pub async fn get_run(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let id = wire::request::<RunRef>(req)?.id()?;
        self.read(caller, project, move |view| Ok(json!({ "run": get(view, &id)?.wire() }))).await
    }

    /// One change of a run: `change` returns the ops (a patch of the run, and whatever else).
    async fn change_run<F>(&self, caller: &Caller, project: &str, id: String, change: F) -> Result<Value>
    where
        F: FnOnce(&StateView<'_>, &Run) -> Result<(Vec<Op>, Value)> + Send + 'static,
    {
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        let (_, answer) = data.commit_with(move |view| change(view, &get(view, &id)?)).await?;
        Ok(answer)
    }

    pub async fn update_run(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: UpdateRun = wire::request(req)?;
        if let Some(status) = &req.status
            && !STATUSES.contains(&status.as_str())
        {
            return Err(Error::invalid(format!("Invalid value {status:?} for parameter 'status': one of {}", STATUSES.join(", "))));
        }
        let id = req.run.id()?;
        self.change_run(caller, project, id, move |_, run| {
            if !run.active() {
                return Err(Error::invalid(format!("The run {} must be in the 'active' state. Current state is deleted.", run.id)));
            }
            let mut patch = serde_json::Map::new();
            let mut body = run.body.clone();
            if let Some(status) = req.status {
                patch.insert("status".into(), json!(status));
                body.status = status;
            }
            if let Some(end) = req.end_time {
                patch.insert("end_time".into(), json!(end));
                body.end_time = Some(end);
            }
            if let Some(name) = req.run_name.filter(|n| !n.is_empty()) {
                patch.insert("run_name".into(), json!(name));
                patch.insert("tags".into(), json!({ RUN_NAME_TAG: name }));
                body.tags.insert(RUN_NAME_TAG.into(), name.clone());
                body.run_name = name;
            }
            let ops = if patch.is_empty() { Vec::new() } else { vec![Op::Patch { kind: Kind::MlRun, id: run.id.clone(), patch: Value::Object(patch) }] };
            let updated = Run { id: run.id.clone(), body };
            let info = updated.wire()["info"].clone();
            Ok((ops, json!({ "run_info": info })))
        })
        .await
    }

    /// Marks a run deleted (MLflow's soft delete; a lock that forbids deletes refuses it).
    pub async fn delete_run(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let id = wire::request::<RunRef>(req)?.id()?;
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        data.commit_soft_delete(Box::new(move |view| {
            let run = get(view, &id)?;
            let patch = json!({ "lifecycle_stage": "deleted", "deleted_time": now_ms() });
            Ok(vec![Op::Patch { kind: Kind::MlRun, id: run.id, patch }])
        }))
        .await?;
        Ok(json!({}))
    }

    pub async fn restore_run(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let id = wire::request::<RunRef>(req)?.id()?;
        self.change_run(caller, project, id, |_, run| {
            let patch = json!({ "lifecycle_stage": "active", "deleted_time": null });
            Ok((vec![Op::Patch { kind: Kind::MlRun, id: run.id.clone(), patch }], json!({})))
        })
        .await
    }

    /// Metrics, params and tags in one change: the batches of points (named by content, so a
    /// retry adds none), the params and tags, the latest values.
    async fn log(&self, caller: &Caller, project: &str, id: String, metrics: Vec<MetricIn>, params: Vec<KeyValue>, tags: Vec<KeyValue>) -> Result<Value> {
        for p in &params {
            wire::check_key("param", &p.key)?;
            wire::check_value("Param value for", &p.key, &p.value, wire::MAX_PARAM_VALUE_LENGTH)?;
        }
        wire::check_tags(&tags)?;
        let mut seen = BTreeMap::new();
        for p in &params {
            if seen.insert(p.key.as_str(), p.value.as_str()).is_some_and(|v| v != p.value) {
                return Err(Error::invalid(format!("Duplicate parameter keys have been submitted: ['{}']", p.key)));
            }
        }
        let batches = metric_batches(metrics, now_ms())?;
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        data.commit(Box::new(move |view| {
            let run = get_active(view, &id)?;
            let mut delta = RunDelta::new();
            for p in params {
                delta.param(&run, p.key, p.value)?;
            }
            for t in tags {
                delta.tags.insert(t.key, json!(t.value));
            }
            let mut ops = Vec::new();
            for batch in batches {
                let body = to_body(&batch)?;
                let bid = batch_id(&run.id, &body);
                if view.get(Kind::MlMetrics, &bid).map_err(store_err)?.is_some() {
                    continue;
                }
                for (key, value, timestamp, step) in &batch.points {
                    delta.metric(&run, key, Point { value: value.clone(), timestamp: *timestamp, step: *step });
                }
                if let Some(model) = &batch.model_id {
                    let points: Vec<Value> = batch
                        .points
                        .iter()
                        .map(|(key, value, timestamp, step)| {
                            json!({ "key": key, "value": value, "timestamp": timestamp, "step": step,
                                    "dataset_name": batch.dataset_name, "dataset_digest": batch.dataset_digest })
                        })
                        .collect();
                    ops.extend(crate::logged_models::metric_ops(view, model, &run.id, &points)?);
                }
                ops.push(Op::Put { kind: Kind::MlMetrics, id: bid, parent: Some(run.id.clone()), body });
            }
            let mut all = delta.ops(&run)?;
            all.extend(ops);
            Ok(all)
        }))
        .await?;
        Ok(json!({}))
    }

    pub async fn log_metric(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: LogMetric = wire::request(req)?;
        let id = req.run.id()?;
        self.log(caller, project, id, vec![req.metric], Vec::new(), Vec::new()).await
    }

    pub async fn log_param(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: KeyedRun = wire::request(req)?;
        let id = req.run.id()?;
        let key = req.key.ok_or_else(|| Error::invalid("Missing value for required parameter 'key'."))?;
        self.log(caller, project, id, Vec::new(), vec![KeyValue { key, value: req.value.unwrap_or_default() }], Vec::new()).await
    }

    pub async fn set_tag(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: KeyedRun = wire::request(req)?;
        let id = req.run.id()?;
        let key = req.key.ok_or_else(|| Error::invalid("Missing value for required parameter 'key'."))?;
        self.log(caller, project, id, Vec::new(), Vec::new(), vec![KeyValue { key, value: req.value.unwrap_or_default() }]).await
    }

    pub async fn log_batch(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: LogBatch = wire::request(req)?;
        let id = req.run.id()?;
        let (m, p, t) = (req.metrics.len(), req.params.len(), req.tags.len());
        if m > wire::MAX_BATCH_METRICS || p > wire::MAX_BATCH_PARAMS || t > wire::MAX_BATCH_TAGS || m + p + t > wire::MAX_BATCH_ENTRIES {
            return Err(Error::invalid(format!(
                "A batch logging request can contain at most {} metrics, {} params, {} tags and {} entries in total; got {m} metrics, {p} params and {t} tags",
                wire::MAX_BATCH_METRICS,
                wire::MAX_BATCH_PARAMS,
                wire::MAX_BATCH_TAGS,
                wire::MAX_BATCH_ENTRIES
            )));
        }
        self.log(caller, project, id, req.metrics, req.params, req.tags).await
    }

    pub async fn delete_tag(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: KeyedRun = wire::request(req)?;
        let id = req.run.id()?;
        let key = req.key.ok_or_else(|| Error::invalid("Missing value for required parameter 'key'."))?;
        self.change_run(caller, project, id, move |_, run| {
            if !run.active() {
                return Err(Error::invalid(format!("The run {} must be in the 'active' state.", run.id)));
            }
            if !run.body.tags.contains_key(&key) {
                return Err(Error::not_found(format!("No tag with name: {key} in run with id {}", run.id)));
            }
            let patch = json!({ "tags": { key: null } });
            Ok((vec![Op::Patch { kind: Kind::MlRun, id: run.id.clone(), patch }], json!({})))
        })
        .await
    }

    pub async fn log_inputs(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: LogInputs = wire::request(req)?;
        let id = req.run.id()?;
        for d in &req.datasets {
            let ok = d.pointer("/dataset/name").and_then(Value::as_str).is_some_and(|n| !n.is_empty())
                && d.pointer("/dataset/digest").and_then(Value::as_str).is_some();
            if !ok {
                return Err(Error::invalid("every dataset input needs dataset.name and dataset.digest"));
            }
        }
        self.change_run(caller, project, id, move |_, run| {
            if !run.active() {
                return Err(Error::invalid(format!("The run {} must be in the 'active' state.", run.id)));
            }
            let key = |d: &Value| (d.pointer("/dataset/name").cloned(), d.pointer("/dataset/digest").cloned(), d.get("tags").cloned());
            let mut datasets = run.body.datasets.clone();
            for d in req.datasets {
                if !datasets.iter().any(|old| key(old) == key(&d)) {
                    datasets.push(d);
                }
            }
            let mut models = run.body.model_inputs.clone();
            for m in req.models {
                if !models.contains(&m) {
                    models.push(m);
                }
            }
            let mut patch = serde_json::Map::new();
            if datasets != run.body.datasets {
                patch.insert("datasets".into(), Value::Array(datasets));
            }
            if models != run.body.model_inputs {
                patch.insert("model_inputs".into(), Value::Array(models));
            }
            let ops = if patch.is_empty() { Vec::new() } else { vec![Op::Patch { kind: Kind::MlRun, id: run.id.clone(), patch: Value::Object(patch) }] };
            Ok((ops, json!({})))
        })
        .await
    }

    pub async fn log_outputs(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: LogOutputs = wire::request(req)?;
        let id = req.run.id()?;
        self.change_run(caller, project, id, move |_, run| {
            let mut models = run.body.model_outputs.clone();
            for m in req.models {
                if !models.contains(&m) {
                    models.push(m);
                }
            }
            let ops = if models == run.body.model_outputs {
                Vec::new()
            } else {
                vec![Op::Patch { kind: Kind::MlRun, id: run.id.clone(), patch: json!({ "model_outputs": models }) }]
            };
            Ok((ops, json!({})))
        })
        .await
    }

    /// MLflow 2's `log-model`: the model's description appended to the run's
    /// `mlflow.log-model.history` tag.
    pub async fn log_model(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: LogModel = wire::request(req)?;
        let id = req.run.id()?;
        let model: Value = serde_json::from_str(req.model_json.as_deref().unwrap_or(""))
            .map_err(|e| Error::invalid(format!("model_json is not JSON: {e}")))?;
        self.change_run(caller, project, id, move |_, run| {
            const HISTORY: &str = "mlflow.log-model.history";
            let mut history: Vec<Value> =
                run.body.tags.get(HISTORY).and_then(|h| serde_json::from_str(h).ok()).unwrap_or_default();
            history.push(model);
            let value = serde_json::to_string(&history).map_err(|e| Error::internal(e.to_string()))?;
            wire::check_value("Tag value for", HISTORY, &value, wire::MAX_TAG_VALUE_LENGTH)?;
            let patch = json!({ "tags": { HISTORY: value } });
            Ok((vec![Op::Patch { kind: Kind::MlRun, id: run.id.clone(), patch }], json!({})))
        })
        .await
    }

    /// Runs of the experiments matching a filter, in order, a page at a time. Reads the
    /// project's parsed runs (`index.rs`), brought up to date with the journal first.
    pub async fn search_runs(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: SearchRuns = wire::request(req)?;
        let view_type = ViewType::parse(req.run_view_type.as_ref())?;
        let filter = Filter::parse(Entity::Run, req.filter.as_deref().unwrap_or("")).map_err(Error::invalid)?;
        let order = OrderBy::parse(Entity::Run, &req.order_by).map_err(Error::invalid)?;
        let limit = wire::max_results(req.max_results, 1000, wire::MAX_RESULTS)?;
        let data = self.core.data(caller, project, Action::MlRead).await?;
        let projection = self.runs.of(data.store.id().as_str());
        data.read(move |view| {
            let mut runs = index::lock(&projection);
            runs.catch_up(view)?;
            let experiments: std::collections::HashSet<&str> = req.experiment_ids.iter().map(String::as_str).collect();
            let mut found: Vec<&Arc<Run>> = runs
                .items
                .values()
                .filter(|r| experiments.contains(r.body.experiment_id.as_str()))
                .filter(|r| view_type.admits(r.active()) && filter.matches(r.as_ref()))
                .collect();
            found.sort_by(|a, b| order.compare(a.as_ref(), b.as_ref()));
            let (page, next) = page(found, req.page_token.as_deref(), limit)?;
            Ok(paged("runs", json!(page.iter().map(|r| r.wire()).collect::<Vec<_>>()), next))
        })
        .await
    }

    pub async fn get_metric_history(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: MetricHistory = wire::request(req)?;
        let id = req.run.id()?;
        let key = req.metric_key.ok_or_else(|| Error::invalid("Missing value for required parameter 'metric_key'."))?;
        let limit = wire::max_results(req.max_results, MAX_HISTORY_PAGE, MAX_HISTORY_PAGE)?;
        self.read(caller, project, move |view| {
            get(view, &id)?;
            let points = history(view, &id, &key)?;
            let (page, next) = page(points, req.page_token.as_deref(), limit)?;
            let metrics: Vec<Value> = page.iter().map(|p| point_wire(&key, p)).collect();
            Ok(paged("metrics", json!(metrics), next))
        })
        .await
    }

    pub async fn get_metric_history_bulk_interval(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: MetricHistoryBulk = wire::request(req)?;
        let key = req.metric_key.ok_or_else(|| Error::invalid("Missing value for required parameter 'metric_key'."))?;
        if req.run_ids.is_empty() || req.run_ids.len() > MAX_BULK_RUNS {
            return Err(Error::invalid(format!("GetMetricHistoryBulkInterval request must specify 1 to {MAX_BULK_RUNS} run_ids, got {}", req.run_ids.len())));
        }
        let max = wire::max_results(req.max_results, MAX_BULK_RESULTS, MAX_BULK_RESULTS)?;
        let range = match (req.start_step, req.end_step) {
            (Some(s), Some(e)) if s > e => {
                return Err(Error::invalid(format!("end_step must be greater than start_step. Found start_step={s} and end_step={e}.")));
            }
            (Some(s), Some(e)) => Some((s, e)),
            (None, None) => None,
            _ => return Err(Error::invalid("If either start step or end step are specified, both must be specified.")),
        };
        self.read(caller, project, move |view| {
            let mut histories = Vec::new();
            for id in &req.run_ids {
                get(view, id)?;
                histories.push((id.clone(), history(view, id, &key)?));
            }
            let steps = sampled_steps(&histories, range, max);
            let mut metrics = Vec::new();
            for (id, points) in &histories {
                let mut chosen: Vec<&Point> = points.iter().filter(|p| steps.contains(&p.step)).collect();
                chosen.sort_by_key(|p| (p.step, p.timestamp));
                chosen.truncate(max.max(steps.len()));
                for p in chosen {
                    let mut w = point_wire(&key, p);
                    w["run_id"] = json!(id);
                    metrics.push(w);
                }
            }
            Ok(json!({ "metrics": metrics }))
        })
        .await
    }
}

fn point_wire(key: &str, p: &Point) -> Value {
    json!({ "key": key, "value": p.value, "timestamp": p.timestamp, "step": p.step })
}

/// MLflow's sampling of steps for charts: evenly spaced over the steps that exist in the
/// range, keeping every run's first and last step.
fn sampled_steps(histories: &[(String, Vec<Point>)], range: Option<(i64, i64)>, max: usize) -> BTreeSet<i64> {
    let all: Vec<i64> = histories.iter().flat_map(|(_, ps)| ps.iter().map(|p| p.step)).collect::<BTreeSet<_>>().into_iter().collect();
    let (start, end) = range.unwrap_or((0, all.last().copied().unwrap_or(0)));
    let mut steps: BTreeSet<i64> = histories
        .iter()
        .filter(|(_, ps)| !ps.is_empty())
        .flat_map(|(_, ps)| [ps.iter().map(|p| p.step).min(), ps.iter().map(|p| p.step).max()])
        .flatten()
        .filter(|s| (start..=end).contains(s))
        .collect();
    let inside: Vec<i64> = all.into_iter().filter(|s| (start..=end).contains(s)).collect();
    if inside.len() <= max {
        steps.extend(inside);
    } else {
        let interval = inside.len() as f64 / max as f64;
        for i in 0..max {
            if let Some(s) = inside.get((i as f64 * interval) as usize) {
                steps.insert(*s);
            }
        }
        steps.extend(inside.last());
    }
    steps
}

/// A metric's history in a run: every point once (a point logged twice with the same value,
/// time and step is one point, as in MLflow's stores), by time, step and value.
fn history(view: &StateView<'_>, run: &str, key: &str) -> Result<Vec<Point>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in &wire::children(view, Kind::MlMetrics, Some(run))? {
        let batch: MetricsBody = parse(r)?;
        for (k, value, timestamp, step) in batch.points {
            if k == key && seen.insert((value.to_string(), timestamp, step)) {
                out.push(Point { value, timestamp, step });
            }
        }
    }
    out.sort_by(|a, b| (a.timestamp, a.step).cmp(&(b.timestamp, b.step)).then_with(|| a.f().total_cmp(&b.f())));
    Ok(out)
}


#[cfg(test)]
mod tests {
    use super::*;

    fn p(step: i64, timestamp: i64, value: f64) -> Point {
        Point { value: metric_json(value), timestamp, step }
    }

    #[test]
    fn the_latest_metric_is_the_greatest_step_then_time_then_value() {
        assert!(p(2, 0, 0.0).newer_than(&p(1, 9, 9.0)));
        assert!(p(1, 2, 0.0).newer_than(&p(1, 1, 9.0)));
        assert!(p(1, 1, 2.0).newer_than(&p(1, 1, 1.0)));
        assert!(!p(1, 1, 1.0).newer_than(&p(1, 1, 1.0)));
    }

    #[test]
    fn sampling_keeps_the_ends_and_at_most_about_max_steps() {
        let points: Vec<Point> = (0..100).map(|s| p(s, s, 0.0)).collect();
        let steps = sampled_steps(&[("r".into(), points)], None, 10);
        assert!(steps.contains(&0) && steps.contains(&99));
        assert!(steps.len() <= 12, "{steps:?}");
        let few: Vec<Point> = (0..5).map(|s| p(s, s, 0.0)).collect();
        assert_eq!(sampled_steps(&[("r".into(), few)], Some((1, 3)), 10), BTreeSet::from([1, 2, 3]));
    }

    #[test]
    fn a_batch_is_named_by_its_content() {
        let a = json!({"points": [["loss", 1.0, 5, 0]]});
        assert_eq!(batch_id("r", &a), batch_id("r", &a.clone()));
        assert_ne!(batch_id("r", &a), batch_id("r", &json!({"points": [["loss", 2.0, 5, 0]]})));
        assert_ne!(batch_id("r", &a), batch_id("s", &a));
    }

    #[test]
    fn run_names_look_like_mlflows() {
        let name = run_name_for("0123456789abcdef0123456789abcdef");
        assert_eq!(name.split('-').count(), 3, "{name}");
    }
}
