//! The agent data plane: what lives inside an agents project — connections, deployments,
//! agents and their versions, conversations and items, responses, files, vector stores and
//! their search index — and the client that calls upstream models. The Foundry Agent Service
//! and OpenAI facades of `holdfast-api` call [`Agents`]; every mutation is a plan committed
//! through the core's door ([`holdfast_core::Data::commit`]), so it is journaled, locked,
//! replicated, archived, exported and undeletable without code here.
//!
//! Resource bodies are stored in the shape the OpenAI/Foundry wire uses (minus computed fields
//! such as `created_at`), so reads are a lookup plus a few fields.
//!
//! Architecture Invariant: this crate depends on the core and the layers below it, never on
//! another domain crate or on HTTP routing; it knows the wire's JSON shapes, not its routes.

pub mod agents;
pub mod connections;
pub mod conversations;
pub mod deployments;
pub mod egress;
pub mod files;
mod index;
pub mod items;
pub mod responses;
mod translate;
mod upstream;
pub mod vector_stores;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use holdfast_core::{Data, Domain, Result, Service};
use holdfast_store::{ProjectStore, StateView};
use holdfast_types::{Error, Kind, Op, ProjectId};
use serde_json::Value;

pub use wire::{List, ListQuery};

use index::SearchIndex;
use upstream::UpstreamClient;

/// How long a call to an upstream model may take by default, end to end.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_BREAKER_OPEN: Duration = Duration::from_secs(30);

/// The agent data plane's settings (`[upstream]`).
#[derive(Clone, Debug)]
pub struct AgentsConfig {
    /// How long a call to an upstream model may take, end to end.
    pub upstream_timeout: Duration,
    /// How long a deployment's connection may take to send its first chunk before the next of
    /// its connections is tried (when there is one).
    pub attempt_timeout: Duration,
    /// How long calls skip a connection whose circuit breaker opened (it failed
    /// several calls in a row) before one probes it again.
    pub breaker_open: Duration,
    /// Where model calls may go (allow_private, allow_hosts; the listen address).
    pub egress: egress::EgressConfig,
}

impl AgentsConfig {
    /// The documented defaults.
    pub fn new() -> Self {
        Self {
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            breaker_open: DEFAULT_BREAKER_OPEN,
            egress: egress::EgressConfig::default(),
        }
    }
}

/// What the agent data plane adds to a project's life, for the core ([`Domain`]).
pub struct AgentsDomain {
    upstream: Arc<UpstreamClient>,
    /// Cut-off background responses to run again (filled by `opened` and `promotion_ops`,
    /// drained by [`Agents::spawn_resumer`]).
    resume: Arc<responses::ResumeQueue>,
}

impl AgentsDomain {
    /// `peers`: the other regions' base URLs, never a model target.
    pub fn new(config: &AgentsConfig, peers: impl IntoIterator<Item = String>) -> Result<Arc<Self>> {
        let egress = egress::Egress::new(config.egress.clone(), peers);
        Ok(Arc::new(Self { upstream: Arc::new(UpstreamClient::new(egress)?), resume: Arc::default() }))
    }
}

#[async_trait]
impl Domain for AgentsDomain {
    fn name(&self) -> &'static str {
        "agents"
    }

    /// Responses the last process left running are failed (they cannot finish), and secrets
    /// sealed under the master key (before data keys) are sealed again under the project's
    /// data key.
    async fn opened(&self, core: &Service, store: &ProjectStore) -> Result<()> {
        core.commit_repair(store, responses::fail_interrupted(store.id().clone(), self.resume.clone())).await?;
        let (keys, id) = (connections::SecretKeys::of(core), store.id().clone());
        core.commit_repair(store, Box::new(move |view| connections::reseal_ops(view, &keys, &id, &id))).await?;
        Ok(())
    }

    fn rebind_ops(&self, core: &Service, view: &StateView<'_>, from: &ProjectId, to: &ProjectId) -> Result<Vec<Op>> {
        connections::reseal_ops(view, &connections::SecretKeys::of(core), from, to)
    }

    fn promotion_ops(&self, view: &StateView<'_>) -> Result<Vec<Op>> {
        let id = view.project_id().map_err(|e| holdfast_types::Error::internal(e.to_string()))?;
        responses::failed_by_failover(view, &id, &self.resume)
    }

    async fn catch_up(&self, core: &Service, data: &Data, kinds: &[Kind]) -> Result<()> {
        if kinds.iter().any(|k| matches!(k, Kind::VectorStore | Kind::VectorStoreFile)) {
            SearchIndex(core).index_catch_up(data, Default::default()).await?;
        }
        Ok(())
    }

    /// An imported connection is held to the same rules as one made through the API.
    fn check_imported(&self, kind: Kind, name: &str, body: &Value) -> Result<()> {
        if kind != Kind::Connection {
            return Ok(());
        }
        let target = body.get("target").and_then(Value::as_str).unwrap_or_default();
        self.upstream
            .check_target(target)
            .map_err(|e| Error::invalid(format!("connection {name:?} of the file: {}; nothing was imported", e.message)))
    }
}

/// The agent data plane's operations, as the facades call them.
pub struct Agents {
    core: Arc<Service>,
    upstream: Arc<UpstreamClient>,
    upstream_timeout: Duration,
    attempt_timeout: Duration,
    /// Each connection's health in this region (`upstream::Breakers`).
    breakers: Arc<upstream::Breakers>,
    /// Shared with [`AgentsDomain`].
    resume: Arc<responses::ResumeQueue>,
}

impl Agents {
    pub fn new(core: Arc<Service>, domain: &AgentsDomain, config: &AgentsConfig) -> Self {
        Self {
            core,
            upstream: domain.upstream.clone(),
            upstream_timeout: config.upstream_timeout,
            attempt_timeout: config.attempt_timeout,
            breakers: Arc::new(upstream::Breakers::new(config.breaker_open)),
            resume: domain.resume.clone(),
        }
    }

    /// The project's search index.
    fn index(&self) -> SearchIndex<'_> {
        SearchIndex(&self.core)
    }
}
