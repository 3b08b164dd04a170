//! The ML workspace: experiments, runs, metrics, artifacts, registered models, logged models,
//! traces and environments, served over MLflow's wire protocol by `holdfast-api`'s `mlflow`
//! facade.
//!
//! Like `holdfast-agents`, it keeps its state as resources of a project (the `ml_*` kinds) and
//! changes them only through the core's door ([`holdfast_core::Service::data`] →
//! [`holdfast_core::Data::commit`]), so replication, failover, backup, restore, export,
//! undelete, locks and audit cover it without code here. Bodies are kept close to MLflow's wire
//! shape; metric histories are batches of points, one resource per logging call (see
//! docs/formats/journal.md).
//!
//! Architecture Invariant: this crate depends on the core and the layers below it, never on
//! another domain crate or on HTTP routing; it knows MLflow's JSON shapes, not its routes.

pub mod artifacts;
pub mod environments;
pub mod experiments;
mod index;
pub mod logged_models;
pub mod registry;
pub mod runs;
pub mod search;
pub mod traces;
pub mod wire;

use std::sync::Arc;

use holdfast_core::{Action, Caller, Domain, Result, Service};
use holdfast_store::StateView;
use holdfast_types::{Error, Kind, Op};
use serde_json::Value;

/// The MLflow version whose wire this workspace speaks (`GET /version`).
pub const MLFLOW_VERSION: &str = "3.17.2";

/// What the ML workspace adds to a project's life, for the core ([`Domain`]): what an import,
/// an undelete or a replay brings back keeps the rules the domain's own operations keep —
/// experiment names unique, and a sequential id (an experiment's, a model version's) never
/// taken over by another object that happens to have it. (A registered model's id is its name,
/// so its uniqueness needs no check.)
pub struct MlDomain;

/// The kinds whose `name` is unique in a project, as the domain's own operations keep it.
const NAMED: [(Kind, &str); 1] = [(Kind::MlExperiment, "experiment")];

/// The kinds with sequential ids, and the body field that says when the object was made: a
/// joining `put` of an existing id is the same object only if it was made at the same time.
const SEQUENTIAL: [(Kind, &str, &str); 2] =
    [(Kind::MlExperiment, "creation_time", "experiment"), (Kind::MlModelVersion, "creation_timestamp", "model version")];

#[async_trait::async_trait]
impl Domain for MlDomain {
    fn name(&self) -> &'static str {
        "ml"
    }

    fn check_joining(&self, view: &StateView<'_>, ops: &[Op]) -> Result<()> {
        for op in ops {
            let Op::Put { kind, id, body, .. } = op else { continue };
            let Some((_, made, what)) = SEQUENTIAL.iter().find(|(k, _, _)| k == kind) else { continue };
            if let Some(existing) = view.get(*kind, id).map_err(Error::from)?
                && existing.body.get(*made) != body.get(*made)
            {
                return Err(Error::conflict(format!(
                    "{what} {id} here is another object than the one being brought back (made at another time); \
                     nothing of it was written"
                )));
            }
        }
        for (kind, what) in NAMED {
            let joining: Vec<(&str, &str)> = ops
                .iter()
                .filter_map(|op| match op {
                    Op::Put { kind: k, id, body, .. } if *k == kind => body.get("name").and_then(Value::as_str).map(|n| (id.as_str(), n)),
                    _ => None,
                })
                .collect();
            if joining.is_empty() {
                continue;
            }
            for r in &wire::children(view, kind, None)? {
                let name = r.body.get("name").and_then(Value::as_str);
                if let Some((id, n)) = joining.iter().find(|(id, n)| Some(*n) == name && *id != r.id) {
                    return Err(Error::conflict(format!(
                        "{what} {id} is named {n:?}, which {what} {} holds in this project; rename or delete one of them first",
                        r.id
                    )));
                }
            }
            let mut names: Vec<&str> = joining.iter().map(|(_, n)| *n).collect();
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(Error::conflict(format!("two {what}s named {:?} would join the project", w[0])));
            }
        }
        Ok(())
    }
}

/// The ML workspace's operations, as the facade calls them.
pub struct Ml {
    core: Arc<Service>,
    /// Each project's runs, parsed, for searches.
    runs: index::Projections<runs::Run>,
}

impl Ml {
    pub fn new(core: Arc<Service>) -> Self {
        Self { core, runs: index::Projections::default() }
    }

    /// Reads the project for a caller who may read its ML workspace.
    async fn read<R, F>(&self, caller: &Caller, project: &str, f: F) -> Result<R>
    where
        F: FnOnce(&StateView<'_>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.core.data(caller, project, Action::MlRead).await?.read(f).await
    }

    /// The projects whose ML workspace the caller may read (MLflow's workspaces).
    pub async fn workspaces(&self, caller: &Caller) -> Result<Vec<Value>> {
        let names = self.core.project_names_where(caller, Action::MlRead).await?;
        Ok(names.into_iter().map(|name| serde_json::json!({ "name": name })).collect())
    }
}

/// Which lifecycle stages a search sees: MLflow's `ViewType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ViewType {
    ActiveOnly,
    DeletedOnly,
    All,
}

impl ViewType {
    /// From its name or proto number; active only when absent.
    pub(crate) fn parse(value: Option<&Value>) -> Result<Self> {
        let text = match value {
            None | Some(Value::Null) => return Ok(Self::ActiveOnly),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        match text.as_str() {
            "ACTIVE_ONLY" | "1" | "" => Ok(Self::ActiveOnly),
            "DELETED_ONLY" | "2" => Ok(Self::DeletedOnly),
            "ALL" | "3" => Ok(Self::All),
            other => Err(Error::invalid(format!("Invalid view type {other:?}: ACTIVE_ONLY, DELETED_ONLY or ALL"))),
        }
    }

    pub(crate) fn admits(self, active: bool) -> bool {
        match self {
            Self::ActiveOnly => active,
            Self::DeletedOnly => !active,
            Self::All => true,
        }
    }
}
