//! Experiments: the MLflow id (sequential numbers, `"0"` for the default experiment, which every
//! project has from the start without a write), a unique name among the project's experiments,
//! an artifact location on the project's proxy (`mlflow-artifacts:/{id}`), tags, soft delete.

use std::borrow::Cow;
use std::collections::BTreeMap;

use holdfast_core::{Action, Caller, Result};
use holdfast_store::StateView;
use holdfast_types::{Error, Kind, Op};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::search::{self, Entity, Filter, KeyType, OrderBy, Searchable};
use crate::wire::{self, KeyValue, now_ms, opt_i64, opt_string, pairs, parse, store_err, strings, to_body};
use crate::{Ml, ViewType};

pub const DEFAULT_EXPERIMENT: &str = "0";
const DEFAULT_NAME: &str = "Default";

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct ExperimentBody {
    pub name: String,
    pub artifact_location: String,
    pub lifecycle_stage: String,
    pub creation_time: i64,
    pub last_update_time: i64,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

pub(crate) struct Experiment {
    pub id: String,
    pub body: ExperimentBody,
}

impl Experiment {
    pub(crate) fn wire(&self) -> Value {
        let b = &self.body;
        json!({
            "experiment_id": self.id,
            "name": b.name,
            "artifact_location": b.artifact_location,
            "lifecycle_stage": b.lifecycle_stage,
            "creation_time": b.creation_time,
            "last_update_time": b.last_update_time,
            "tags": pairs(&b.tags),
        })
    }

    pub(crate) fn active(&self) -> bool {
        self.body.lifecycle_stage == "active"
    }
}

impl Searchable for Experiment {
    fn field(&self, kind: KeyType, key: &str) -> Option<search::Value<'_>> {
        use search::Value::{Number, Str};
        match kind {
            KeyType::Tag => self.body.tags.get(key).map(|v| Str(Cow::Borrowed(v.as_str()))),
            KeyType::Attribute => match key {
                "name" => Some(Str(Cow::Borrowed(&self.body.name))),
                "experiment_id" => Some(Str(Cow::Borrowed(&self.id))),
                "creation_time" => Some(Number(self.body.creation_time as f64)),
                "last_update_time" => Some(Number(self.body.last_update_time as f64)),
                "lifecycle_stage" => Some(Str(Cow::Borrowed(&self.body.lifecycle_stage))),
                _ => None,
            },
            _ => None,
        }
    }
}

fn default_experiment(view: &StateView<'_>) -> Result<Experiment> {
    let created = view.get(Kind::Project, &view.project_id().map_err(store_err)?.as_str().to_owned()).map_err(store_err)?;
    let at = created.map(|r| r.created_us / 1000).unwrap_or(0);
    Ok(Experiment {
        id: DEFAULT_EXPERIMENT.into(),
        body: ExperimentBody {
            name: DEFAULT_NAME.into(),
            artifact_location: artifact_root(DEFAULT_EXPERIMENT),
            lifecycle_stage: "active".into(),
            creation_time: at,
            last_update_time: at,
            tags: BTreeMap::new(),
        },
    })
}

pub(crate) fn artifact_root(id: &str) -> String {
    format!("mlflow-artifacts:/{id}")
}

/// The experiment `id`, the default one even before anything wrote it; `None` if there is none.
pub(crate) fn find(view: &StateView<'_>, id: &str) -> Result<Option<Experiment>> {
    match view.get(Kind::MlExperiment, id).map_err(store_err)? {
        Some(r) => Ok(Some(Experiment { id: r.id.clone(), body: parse(&r)? })),
        None if id == DEFAULT_EXPERIMENT => default_experiment(view).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn get(view: &StateView<'_>, id: &str) -> Result<Experiment> {
    find(view, id)?.ok_or_else(|| Error::not_found(format!("No Experiment with id={id} exists")))
}

/// An experiment a run or model may be made in: it exists and is active.
pub(crate) fn get_active(view: &StateView<'_>, id: &str) -> Result<Experiment> {
    let e = get(view, id)?;
    if !e.active() {
        return Err(Error::invalid(format!("The experiment {id} must be in the 'active' state. Current state is deleted.")));
    }
    Ok(e)
}

/// The ops that make the default experiment real, when a write needs it stored.
pub(crate) fn materialise(view: &StateView<'_>, e: &Experiment) -> Result<Vec<Op>> {
    if e.id == DEFAULT_EXPERIMENT && view.get(Kind::MlExperiment, DEFAULT_EXPERIMENT).map_err(store_err)?.is_none() {
        return Ok(vec![Op::Put { kind: Kind::MlExperiment, id: e.id.clone(), parent: None, body: to_body(&e.body)? }]);
    }
    Ok(Vec::new())
}

/// Every experiment of the project (the default one included), in creation order.
pub(crate) fn all(view: &StateView<'_>) -> Result<Vec<Experiment>> {
    let mut out = Vec::new();
    for r in &wire::children(view, Kind::MlExperiment, None)? {
        out.push(Experiment { id: r.id.clone(), body: parse(r)? });
    }
    if !out.iter().any(|e| e.id == DEFAULT_EXPERIMENT) {
        out.insert(0, default_experiment(view)?);
    }
    Ok(out)
}

fn by_name(view: &StateView<'_>, name: &str) -> Result<Option<Experiment>> {
    Ok(all(view)?.into_iter().find(|e| e.body.name == name))
}

#[derive(Debug, Deserialize)]
pub struct CreateExperiment {
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "opt_string")]
    pub artifact_location: Option<String>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

#[derive(Debug, Deserialize)]
pub struct ExperimentRef {
    #[serde(default, deserialize_with = "opt_string")]
    pub experiment_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub experiment_name: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub new_name: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub key: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub value: Option<String>,
}

impl ExperimentRef {
    fn id(&self) -> Result<String> {
        self.experiment_id.clone().filter(|s| !s.is_empty()).ok_or_else(|| Error::invalid("Missing value for required parameter 'experiment_id'."))
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct SearchExperiments {
    #[serde(default, deserialize_with = "opt_i64")]
    pub max_results: Option<i64>,
    #[serde(default, deserialize_with = "opt_string")]
    pub page_token: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub filter: Option<String>,
    #[serde(default, deserialize_with = "strings")]
    pub order_by: Vec<String>,
    #[serde(default)]
    pub view_type: Option<Value>,
}

/// Patches of the experiment's runs in lifecycle stage `from`.
fn mark_runs(view: &StateView<'_>, experiment: &str, from: &str, patch: Value) -> Result<Vec<Op>> {
    Ok(wire::children(view, Kind::MlRun, Some(experiment))?
        .into_iter()
        .filter(|r| r.body["lifecycle_stage"] == from)
        .map(|r| Op::Patch { kind: Kind::MlRun, id: r.id, patch: patch.clone() })
        .collect())
}

/// A search's answer: the page's items under `key`, and `next_page_token` when there is more.
pub(crate) fn paged(key: &str, items: Value, next: Option<String>) -> Value {
    let mut out = json!({ key: items });
    if let Some(next) = next {
        out["next_page_token"] = json!(next);
    }
    out
}

/// MLflow's page of search results: `offset` into the sorted matches.
pub(crate) fn page<T>(items: Vec<T>, token: Option<&str>, limit: usize) -> Result<(Vec<T>, Option<String>)> {
    let offset = match token.filter(|t| !t.is_empty()) {
        Some(t) => search::decode_page_token(t).map_err(Error::invalid)?,
        None => 0,
    };
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(offset).take(limit).collect();
    let next = (offset + page.len() < total).then(|| search::encode_page_token(offset + page.len()));
    Ok((page, next))
}

impl Ml {
    pub async fn create_experiment(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: CreateExperiment = wire::request(req)?;
        wire::check_name("experiment", &req.name)?;
        wire::check_tags(&req.tags)?;
        if req.artifact_location.as_deref().is_some_and(|l| !l.is_empty()) {
            return Err(Error::invalid(
                "artifact_location cannot be chosen: Holdfast keeps every artifact in the project's own store (mlflow-artifacts:/)",
            ));
        }
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        let (_, id) = data
            .commit_with(move |view| {
                let existing = all(view)?;
                if existing.iter().any(|e| e.body.name == req.name) {
                    return Err(Error::conflict(format!("Experiment(name={}) already exists.", req.name)));
                }
                let next = existing.iter().filter_map(|e| e.id.parse::<u64>().ok()).max().unwrap_or(0) + 1;
                let id = next.to_string();
                let now = now_ms();
                let body = ExperimentBody {
                    name: req.name,
                    artifact_location: artifact_root(&id),
                    lifecycle_stage: "active".into(),
                    creation_time: now,
                    last_update_time: now,
                    tags: req.tags.into_iter().map(|t| (t.key, t.value)).collect(),
                };
                Ok((vec![Op::Put { kind: Kind::MlExperiment, id: id.clone(), parent: None, body: to_body(&body)? }], id))
            })
            .await?;
        Ok(json!({ "experiment_id": id }))
    }

    pub async fn get_experiment(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: ExperimentRef = wire::request(req)?;
        let id = req.id()?;
        self.read(caller, project, move |view| Ok(json!({ "experiment": get(view, &id)?.wire() }))).await
    }

    pub async fn get_experiment_by_name(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: ExperimentRef = wire::request(req)?;
        let name = req.experiment_name.ok_or_else(|| Error::invalid("Missing value for required parameter 'experiment_name'."))?;
        self.read(caller, project, move |view| match by_name(view, &name)? {
            Some(e) => Ok(json!({ "experiment": e.wire() })),
            None => Err(Error::not_found(format!("Could not find experiment with name '{name}'"))),
        })
        .await
    }

    pub async fn search_experiments(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        let req: SearchExperiments = wire::request(req)?;
        let view_type = ViewType::parse(req.view_type.as_ref())?;
        let filter = Filter::parse(Entity::Experiment, req.filter.as_deref().unwrap_or("")).map_err(Error::invalid)?;
        let order = OrderBy::parse(Entity::Experiment, &req.order_by).map_err(Error::invalid)?;
        let limit = wire::max_results(req.max_results, 1000, wire::MAX_RESULTS)?;
        self.read(caller, project, move |view| {
            let mut found: Vec<Experiment> =
                all(view)?.into_iter().filter(|e| view_type.admits(e.active()) && filter.matches(e)).collect();
            found.sort_by(|a, b| order.compare(a, b));
            let (page, next) = page(found, req.page_token.as_deref(), limit)?;
            Ok(paged("experiments", json!(page.iter().map(Experiment::wire).collect::<Vec<_>>()), next))
        })
        .await
    }

    /// Rename, delete, restore, set or delete a tag: one change of the experiment's record.
    async fn change_experiment<F>(&self, caller: &Caller, project: &str, req: Value, change: F) -> Result<Value>
    where
        F: Fn(&ExperimentRef, &StateView<'_>, &mut Experiment) -> Result<()> + Send + 'static,
    {
        self.change_experiment_as(caller, project, req, false, move |req, view, e| change(req, view, e).map(|()| Vec::new())).await
    }

    /// `change` edits the record and returns what else the change does; `soft_delete`: the
    /// change deletes the experiment (a mark), as locks judge it.
    async fn change_experiment_as<F>(&self, caller: &Caller, project: &str, req: Value, soft_delete: bool, change: F) -> Result<Value>
    where
        F: Fn(&ExperimentRef, &StateView<'_>, &mut Experiment) -> Result<Vec<Op>> + Send + 'static,
    {
        let req: ExperimentRef = wire::request(req)?;
        let id = req.id()?;
        let data = self.core.data(caller, project, Action::MlWrite).await?;
        let plan: holdfast_store::Plan = Box::new(move |view| {
            let mut e = get(view, &id)?;
            let more = change(&req, view, &mut e)?;
            e.body.last_update_time = now_ms();
            let mut ops = vec![Op::Put { kind: Kind::MlExperiment, id: e.id.clone(), parent: None, body: to_body(&e.body)? }];
            ops.extend(more);
            Ok(ops)
        });
        if soft_delete { data.commit_soft_delete(plan).await? } else { data.commit(plan).await? };
        Ok(json!({}))
    }

    pub async fn update_experiment(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_experiment(caller, project, req, |req, view, e| {
            let name = req.new_name.clone().ok_or_else(|| Error::invalid("Missing value for required parameter 'new_name'."))?;
            wire::check_name("experiment", &name)?;
            if !e.active() {
                return Err(Error::invalid("Cannot rename a non-active experiment."));
            }
            if by_name(view, &name)?.is_some_and(|other| other.id != e.id) {
                return Err(Error::conflict(format!("Experiment(name={name}) already exists.")));
            }
            e.body.name = name;
            Ok(())
        })
        .await
    }

    /// Marks an experiment deleted, and its runs with it (as MLflow's stores do).
    pub async fn delete_experiment(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_experiment_as(caller, project, req, true, |_, view, e| {
            if !e.active() {
                return Err(Error::not_found(format!("No Experiment with id={} exists", e.id)));
            }
            e.body.lifecycle_stage = "deleted".into();
            mark_runs(view, &e.id, "active", json!({ "lifecycle_stage": "deleted", "deleted_time": now_ms() }))
        })
        .await
    }

    /// Marks an experiment active again, and every run of it.
    pub async fn restore_experiment(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_experiment_as(caller, project, req, false, |_, view, e| {
            if e.active() {
                return Err(Error::invalid(format!("Cannot restore an active experiment ({}).", e.id)));
            }
            e.body.lifecycle_stage = "active".into();
            mark_runs(view, &e.id, "deleted", json!({ "lifecycle_stage": "active", "deleted_time": null }))
        })
        .await
    }

    pub async fn set_experiment_tag(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_experiment(caller, project, req, |req, _, e| {
            let key = req.key.clone().ok_or_else(|| Error::invalid("Missing value for required parameter 'key'."))?;
            let value = req.value.clone().unwrap_or_default();
            wire::check_tags(&[KeyValue { key: key.clone(), value: value.clone() }])?;
            if !e.active() {
                return Err(Error::invalid(format!("The experiment {} must be in the 'active' state.", e.id)));
            }
            e.body.tags.insert(key, value);
            Ok(())
        })
        .await
    }

    pub async fn delete_experiment_tag(&self, caller: &Caller, project: &str, req: Value) -> Result<Value> {
        self.change_experiment(caller, project, req, |req, _, e| {
            let key = req.key.clone().ok_or_else(|| Error::invalid("Missing value for required parameter 'key'."))?;
            if e.body.tags.remove(&key).is_none() {
                return Err(Error::not_found(format!("No tag with name: {key} in experiment with id {}", e.id)));
            }
            Ok(())
        })
        .await
    }
}
