//! The change record: one logical mutation of a project's state, as it is journaled.
//! The format is documented in `docs/formats/journal.md`; change it only with a version bump.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Epoch, Lsn, Micros};

/// The version written into every change record (`"v"`). A reader refuses versions it does not
/// know rather than guess at their meaning.
pub const CHANGE_FORMAT_VERSION: u32 = 1;

/// Most operations one change may carry; keeps a resource's ordering key (`lsn << 16 | index`)
/// inside an `i64`.
pub const MAX_OPS_PER_CHANGE: usize = 1 << 16;

/// One entry of a project's journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Change {
    /// Record format version, [`CHANGE_FORMAT_VERSION`].
    pub v: u32,
    pub lsn: Lsn,
    pub epoch: Epoch,
    /// Commit time in microseconds since the Unix epoch; never decreases along a journal.
    pub ts: Micros,
    /// The principal that made the change (`prn_…`), or `system`.
    pub actor: String,
    /// The request that made the change.
    pub request_id: String,
    /// Applied in order, all or nothing.
    pub ops: Vec<Op>,
}

/// The type of a stored resource. New kinds are added here, and only here, for the journal,
/// replay, dumps and (later) export to carry them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The project's own record: name, display name, description, tags.
    Project,
    /// An upstream model endpoint (`conn:{name}`); its secret is stored encrypted.
    Connection,
    /// A model name agents and responses use, bound to a connection (`dep:{name}`).
    Deployment,
    /// A named agent (`agent:{name}`); parent of its versions.
    Agent,
    /// An immutable version of an agent (`agent:{name}:{version}`).
    AgentVersion,
    /// A conversation (`conv_…`); parent of its items.
    Conversation,
    /// A conversation item (`msg_…`, `fc_…`, …); child of its conversation.
    Item,
    /// A model response (`resp_…`).
    Response,
    /// An uploaded file (`file-…`); its bytes are a blob.
    File,
    /// A vector store (`vs_…`); parent of its file links.
    VectorStore,
    /// A file attached to a vector store (`vsf:{store}:{file}`); child of the vector store.
    VectorStoreFile,
    /// A batch of files attached to a vector store (`vsfb_…`); child of the vector store.
    FileBatch,
    /// Changes a deposed primary committed that never reached the new one (`div_…`), kept for
    /// an operator to list and replay (DESIGN.md invariant 5).
    Divergence,
    /// A write made with an `Idempotency-Key` (`idem:{key}`): the request's fingerprint,
    /// journaled in the write's own change, then the answer to give its retries.
    IdempotencyKey,
    /// Control plane (the control journal only): a principal — a key holder or a managed
    /// identity (`prn_…`).
    Principal,
    /// Control plane: an API key's hash, prefix and state (`key_…`).
    ApiKey,
    /// Control plane: a role held at a scope (`{principal}|{role}|{scope}`).
    RoleAssignment,
    /// Control plane: a custom role's definition (`{name}`).
    RoleDefinition,
    /// Control plane: a resource lock (`lock_…`).
    Lock,
    /// Control plane: which project holds a name across regions (`{name}`).
    ProjectName,
    /// ML workspace: an experiment (its MLflow id, `"0"` for the default one).
    MlExperiment,
    /// ML workspace: a run (its 32-hex MLflow id); child of its experiment. Its body keeps the
    /// params, tags and latest value of each metric.
    MlRun,
    /// ML workspace: a batch of metric points logged in one call (`{run}:{digest}`, named by
    /// its content so a retried batch is the same resource); child of its run.
    MlMetrics,
    /// ML workspace: an artifact (its path under the project's artifact root); its bytes are a
    /// blob. Child of the run, logged model or trace whose directory holds it.
    MlArtifact,
    /// ML workspace: a registered model (`rm_…`); parent of its versions.
    MlRegisteredModel,
    /// ML workspace: a version of a registered model (`{model}/{version}`).
    MlModelVersion,
    /// ML workspace: an MLflow 3 logged model (`m-…`); child of its experiment.
    MlLoggedModel,
    /// ML workspace: a trace (`tr-…`); child of its experiment.
    MlTrace,
    /// ML workspace: an immutable environment version (`{name}:{version}`).
    MlEnvironment,
}

impl Kind {
    pub const ALL: [Kind; 29] = [
        Kind::Project,
        Kind::Connection,
        Kind::Deployment,
        Kind::Agent,
        Kind::AgentVersion,
        Kind::Conversation,
        Kind::Item,
        Kind::Response,
        Kind::File,
        Kind::VectorStore,
        Kind::VectorStoreFile,
        Kind::FileBatch,
        Kind::Divergence,
        Kind::IdempotencyKey,
        Kind::Principal,
        Kind::ApiKey,
        Kind::RoleAssignment,
        Kind::RoleDefinition,
        Kind::Lock,
        Kind::ProjectName,
        Kind::MlExperiment,
        Kind::MlRun,
        Kind::MlMetrics,
        Kind::MlArtifact,
        Kind::MlRegisteredModel,
        Kind::MlModelVersion,
        Kind::MlLoggedModel,
        Kind::MlTrace,
        Kind::MlEnvironment,
    ];

    /// The kinds only the control journal holds.
    pub const CONTROL: [Kind; 6] =
        [Kind::Principal, Kind::ApiKey, Kind::RoleAssignment, Kind::RoleDefinition, Kind::Lock, Kind::ProjectName];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Project => "project",
            Kind::Connection => "connection",
            Kind::Deployment => "deployment",
            Kind::Agent => "agent",
            Kind::AgentVersion => "agent_version",
            Kind::Conversation => "conversation",
            Kind::Item => "item",
            Kind::Response => "response",
            Kind::File => "file",
            Kind::VectorStore => "vector_store",
            Kind::VectorStoreFile => "vector_store_file",
            Kind::FileBatch => "file_batch",
            Kind::Divergence => "divergence",
            Kind::IdempotencyKey => "idempotency_key",
            Kind::Principal => "principal",
            Kind::ApiKey => "api_key",
            Kind::RoleAssignment => "role_assignment",
            Kind::RoleDefinition => "role_definition",
            Kind::Lock => "lock",
            Kind::ProjectName => "project_name",
            Kind::MlExperiment => "ml_experiment",
            Kind::MlRun => "ml_run",
            Kind::MlMetrics => "ml_metrics",
            Kind::MlArtifact => "ml_artifact",
            Kind::MlRegisteredModel => "ml_registered_model",
            Kind::MlModelVersion => "ml_model_version",
            Kind::MlLoggedModel => "ml_logged_model",
            Kind::MlTrace => "ml_trace",
            Kind::MlEnvironment => "ml_environment",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A state mutation. Every value `apply` needs is carried here, so applying a change is a pure
/// function of (state, change).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// Creates the resource, or replaces its body (keeping its creation time and position).
    Put {
        kind: Kind,
        id: String,
        /// The id of the resource this one belongs to; deleting the parent deletes it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<String>,
        body: Value,
    },
    /// Applies an RFC 7396 JSON merge patch to an existing resource's body.
    Patch { kind: Kind, id: String, patch: Value },
    /// Deletes the resource and, recursively, every resource whose parent it is.
    Delete { kind: Kind, id: String },
    /// Sets an existing resource's creation and update times (microseconds), which otherwise
    /// are the `ts` of the changes that put and last touched it. Written by import, after the
    /// `put` of the same resource, so imported resources keep the times they had at the source.
    Stamp { kind: Kind, id: String, created_us: Micros, updated_us: Micros },
}

impl Op {
    pub fn kind(&self) -> Kind {
        match self {
            Op::Put { kind, .. } | Op::Patch { kind, .. } | Op::Delete { kind, .. } | Op::Stamp { kind, .. } => *kind,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Op::Put { id, .. } | Op::Patch { id, .. } | Op::Delete { id, .. } | Op::Stamp { id, .. } => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_round_trips_through_json() {
        let change = Change {
            v: CHANGE_FORMAT_VERSION,
            lsn: Lsn(7),
            epoch: Epoch(1),
            ts: 1_700_000_000_000_001,
            actor: "prn_x".into(),
            request_id: "req_y".into(),
            ops: vec![
                Op::Put { kind: Kind::Project, id: "proj_a".into(), parent: None, body: serde_json::json!({"name":"a"}) },
                Op::Patch { kind: Kind::Project, id: "proj_a".into(), patch: serde_json::json!({"tags":{"x":null}}) },
                Op::Stamp { kind: Kind::Project, id: "proj_a".into(), created_us: 1, updated_us: 2 },
                Op::Delete { kind: Kind::Project, id: "proj_a".into() },
            ],
        };
        let text = serde_json::to_string(&change).expect("serialize");
        assert_eq!(serde_json::from_str::<Change>(&text).expect("parse"), change);
    }

    /// The documented v1 records (docs/formats/journal.md) decode, and encode back byte for byte.
    #[test]
    fn golden_v1_fixture_round_trips() {
        let fixture = include_str!("../../../tests/fixtures/journal-v1.jsonl");
        let mut lsn = 0;
        for line in fixture.lines() {
            let change: Change = serde_json::from_str(line).expect("fixture line decodes");
            assert_eq!(change.v, CHANGE_FORMAT_VERSION);
            lsn += 1;
            assert_eq!(change.lsn, Lsn(lsn), "fixture LSNs are dense");
            assert_eq!(serde_json::to_string(&change).expect("encode"), line);
        }
        assert_eq!(lsn, 3);
    }

    #[test]
    fn kind_names_round_trip_and_match_serde() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).expect("encode"), serde_json::json!(kind.as_str()));
        }
    }

    #[test]
    fn unknown_kinds_and_ops_are_refused() {
        assert!(serde_json::from_str::<Op>(r#"{"type":"put","kind":"galaxy","id":"x","body":{}}"#).is_err());
        assert!(serde_json::from_str::<Op>(r#"{"type":"explode","kind":"project","id":"x"}"#).is_err());
    }
}
