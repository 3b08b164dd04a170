//! Authorization in one place: [`ROUTES`] says, for every route of every facade, what a caller
//! needs to reach it, and [`authorize`] (one middleware over the whole router) checks it before
//! any handler runs. A route missing from the table is refused (deny by default), and a unit test
//! fails when the route table and [`ROUTES`] differ, so a new route cannot be forgotten.
//!
//! The gate checks the action at the scope the path names (`/projects/{project}` when the route
//! has a project, else `/`). Operations still call `Caller::require` themselves, for what only
//! they know: the scope of a lock in a request body, the target of a restore, secrets.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use holdfast_core::Action;
use holdfast_core::audit::Audited;
use holdfast_types::RequestId;
use holdfast_types::Error;

use crate::AppState;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health, readiness, the OpenAPI document.
    Public,
    /// Any valid key (the server's own description).
    Authenticated,
    /// This action at the route's scope.
    Action(Action),
    /// This action, at a scope only the operation knows (it is in the request body or in the
    /// object named): the gate authenticates, the operation checks the action.
    ActionInBody(Action),
    /// Another region of the cluster: the cluster secret in `x-holdfast-cluster-secret`.
    Cluster,
}

use Action::*;
use Need::{ActionInBody, Authenticated, Cluster, Public};

const fn act(a: Action) -> Need {
    Need::Action(a)
}

/// Every route: method, path template, what it needs. Kept in the order of the facades.
pub const ROUTES: &[(&str, &str, Need)] = &[
    // Service endpoints.
    ("GET", "/healthz", Public),
    ("GET", "/readyz", Public),
    // Metrics name every project: a key with metrics/read (the monitoring_reader role).
    ("GET", "/metrics", act(MetricsRead)),
    ("GET", "/openapi.json", Public),
    // Holdfast's own API.
    ("GET", "/v1/info", Authenticated),
    ("GET", "/v1/projects", act(ProjectsRead)),
    ("POST", "/v1/projects", act(ProjectsWrite)),
    ("GET", "/v1/projects/{project}", act(ProjectsRead)),
    ("PATCH", "/v1/projects/{project}", act(ProjectsWrite)),
    ("DELETE", "/v1/projects/{project}", act(ProjectsWrite)),
    ("GET", "/v1/deleted-projects", act(ProjectsRead)),
    ("POST", "/v1/deleted-projects/{project}/recover", act(ProjectsWrite)),
    ("DELETE", "/v1/deleted-projects/{project}", act(ProjectsPurge)),
    ("GET", "/v1/projects/{project}/journal", act(JournalRead)),
    ("GET", "/v1/keys", act(KeysManage)),
    ("POST", "/v1/keys", act(KeysManage)),
    ("DELETE", "/v1/keys/{id}", act(KeysManage)),
    ("GET", "/v1/role-assignments", act(KeysManage)),
    ("POST", "/v1/role-assignments", act(KeysManage)),
    ("POST", "/v1/role-assignments/remove", act(KeysManage)),
    ("GET", "/v1/roles", act(KeysManage)),
    ("POST", "/v1/roles", act(KeysManage)),
    ("DELETE", "/v1/roles/{name}", act(KeysManage)),
    ("GET", "/v1/identities", act(KeysManage)),
    ("POST", "/v1/identities", act(KeysManage)),
    ("DELETE", "/v1/identities/{name}", act(KeysManage)),
    ("POST", "/v1/identities/{name}/keys", act(KeysManage)),
    ("GET", "/v1/audit", act(AuditRead)),
    ("GET", "/v1/audit/verify", act(AuditRead)),
    ("GET", "/v1/locks", act(ProjectsRead)),
    ("POST", "/v1/locks", ActionInBody(LocksManage)),
    ("DELETE", "/v1/locks/{id}", ActionInBody(LocksManage)),
    ("GET", "/v1/operations/{id}", act(ProjectsRead)),
    ("GET", "/v1/projects/{project}/connections", act(DataRead)),
    ("POST", "/v1/projects/{project}/connections", act(ConnectionsWrite)),
    ("DELETE", "/v1/projects/{project}/connections/{name}", act(ConnectionsWrite)),
    ("GET", "/v1/projects/{project}/upstreams", act(DataRead)),
    ("GET", "/v1/projects/{project}/deployments", act(DataRead)),
    ("POST", "/v1/projects/{project}/deployments", act(DataWrite)),
    ("DELETE", "/v1/projects/{project}/deployments/{name}", act(DataWrite)),
    ("GET", "/v1/projects/{project}/export", act(Export)),
    ("POST", "/v1/projects/{project}/import", act(Import)),
    ("GET", "/v1/projects/{project}/resources/{id}/history", act(JournalRead)),
    ("POST", "/v1/projects/{project}/resources/{id}/undelete", act(Undelete)),
    ("GET", "/v1/backup", act(BackupRead)),
    ("GET", "/v1/projects/{project}/backup", act(BackupRead)),
    ("POST", "/v1/projects/{project}/backup/snapshot", act(BackupWrite)),
    ("POST", "/v1/projects/{project}/backup/verify", act(BackupWrite)),
    // The target of a restore is in the body: the operation checks it too.
    ("POST", "/v1/projects/{project}/restore", act(Restore)),
    // Replication.
    ("POST", "/v1/projects/{project}/replicas", act(ProjectsWrite)),
    ("DELETE", "/v1/projects/{project}/replicas/{region}", act(ProjectsWrite)),
    ("POST", "/v1/projects/{project}/failover", act(Failover)),
    ("GET", "/v1/status", act(ProjectsRead)),
    ("GET", "/v1/projects/{project}/divergences", act(ProjectsRead)),
    ("GET", "/v1/projects/{project}/divergences/{id}", act(JournalRead)),
    ("POST", "/v1/projects/{project}/divergences/{id}/replay", act(Failover)),
    ("POST", "/v1/projects/{project}/resubmit", act(DataWrite)),
    // Between regions: the cluster secret, never a user's key.
    ("GET", "/internal/v1/projects/{id}/journal", Cluster),
    ("GET", "/internal/v1/projects/{id}/snapshot", Cluster),
    ("GET", "/internal/v1/projects/{id}/blobs/{hash}", Cluster),
    ("POST", "/internal/v1/projects/{id}/promote", Cluster),
    ("GET", "/internal/v1/projects/{id}/position", Cluster),
    ("GET", "/internal/v1/region-key", Cluster),
    ("POST", "/internal/v1/control/ops", Cluster),
    ("POST", "/internal/v1/projects/{id}/divergences", Cluster),
    ("POST", "/internal/v1/replicas", Cluster),
    ("DELETE", "/internal/v1/replicas/{id}", Cluster),
    // The readiness review; `?project=` narrows it, and the operation checks that scope too.
    ("GET", "/v1/check", act(ProjectsRead)),
    // Foundry Agent Service.
    ("GET", const_concat::AGENTS, act(DataRead)),
    ("GET", const_concat::AGENT, act(DataRead)),
    ("DELETE", const_concat::AGENT, act(DataWrite)),
    ("GET", const_concat::AGENT_VERSIONS, act(DataRead)),
    ("POST", const_concat::AGENT_VERSIONS, act(DataWrite)),
    ("GET", const_concat::AGENT_VERSION, act(DataRead)),
    ("DELETE", const_concat::AGENT_VERSION, act(DataWrite)),
    ("GET", const_concat::CONNECTIONS, act(DataRead)),
    ("GET", const_concat::CONNECTION, act(DataRead)),
    ("POST", const_concat::CONNECTION_CREDENTIALS, act(SecretsRead)),
    ("GET", const_concat::DEPLOYMENTS, act(DataRead)),
    ("GET", const_concat::DEPLOYMENT, act(DataRead)),
    // OpenAI-compatible.
    ("POST", const_concat::CONVERSATIONS, act(DataWrite)),
    ("GET", const_concat::CONVERSATIONS, act(DataRead)),
    ("GET", const_concat::CONVERSATION, act(DataRead)),
    ("POST", const_concat::CONVERSATION, act(DataWrite)),
    ("DELETE", const_concat::CONVERSATION, act(DataWrite)),
    ("GET", const_concat::ITEMS, act(DataRead)),
    ("POST", const_concat::ITEMS, act(DataWrite)),
    ("GET", const_concat::ITEM, act(DataRead)),
    ("DELETE", const_concat::ITEM, act(DataWrite)),
    ("POST", const_concat::RESPONSES, act(DataWrite)),
    ("GET", const_concat::RESPONSE, act(DataRead)),
    ("DELETE", const_concat::RESPONSE, act(DataWrite)),
    ("POST", const_concat::RESPONSE_CANCEL, act(DataWrite)),
    ("GET", const_concat::RESPONSE_INPUT, act(DataRead)),
    ("GET", const_concat::FILES, act(DataRead)),
    ("POST", const_concat::FILES, act(DataWrite)),
    ("GET", const_concat::FILE, act(DataRead)),
    ("DELETE", const_concat::FILE, act(DataWrite)),
    ("GET", const_concat::FILE_CONTENT, act(DataRead)),
    ("GET", const_concat::STORES, act(DataRead)),
    ("POST", const_concat::STORES, act(DataWrite)),
    ("GET", const_concat::STORE, act(DataRead)),
    ("POST", const_concat::STORE, act(DataWrite)),
    ("DELETE", const_concat::STORE, act(DataWrite)),
    ("GET", const_concat::STORE_FILES, act(DataRead)),
    ("POST", const_concat::STORE_FILES, act(DataWrite)),
    ("GET", const_concat::STORE_FILE, act(DataRead)),
    ("POST", const_concat::STORE_FILE, act(DataWrite)),
    ("DELETE", const_concat::STORE_FILE, act(DataWrite)),
    ("GET", const_concat::STORE_FILE_CONTENT, act(DataRead)),
    ("POST", const_concat::STORE_BATCHES, act(DataWrite)),
    ("GET", const_concat::STORE_BATCH, act(DataRead)),
    ("GET", const_concat::STORE_BATCH_FILES, act(DataRead)),
    ("POST", const_concat::STORE_BATCH_CANCEL, act(DataWrite)),
    // A search writes nothing.
    ("POST", const_concat::STORE_SEARCH, act(DataRead)),
    // MLflow (tracking, registry, logged models, traces; searches write nothing).
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/experiments/create", act(MlWrite)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/experiments/get", act(MlRead)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/experiments/get-by-name", act(MlRead)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/experiments/search", act(MlRead)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/experiments/search", act(MlRead)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/experiments/update", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/experiments/delete", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/experiments/restore", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/experiments/set-experiment-tag", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/experiments/delete-experiment-tag", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/create", act(MlWrite)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/get", act(MlRead)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/update", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/delete", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/restore", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/search", act(MlRead)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/log-metric", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/log-parameter", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/log-batch", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/set-tag", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/delete-tag", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/log-inputs", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/outputs", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/runs/log-model", act(MlWrite)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/metrics/get-history", act(MlRead)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/metrics/get-history-bulk-interval", act(MlRead)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/artifacts/list", act(MlRead)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/registered-models/create", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/registered-models/rename", act(MlWrite)),
    ("PATCH", "/api/projects/{project}/mlflow/api/2.0/mlflow/registered-models/update", act(MlWrite)),
    ("DELETE", "/api/projects/{project}/mlflow/api/2.0/mlflow/registered-models/delete", act(MlWrite)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/registered-models/get", act(MlRead)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/registered-models/search", act(MlRead)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/registered-models/get-latest-versions", act(MlRead)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/registered-models/get-latest-versions", act(MlRead)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/registered-models/set-tag", act(MlWrite)),
    ("DELETE", "/api/projects/{project}/mlflow/api/2.0/mlflow/registered-models/delete-tag", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/registered-models/alias", act(MlWrite)),
    ("DELETE", "/api/projects/{project}/mlflow/api/2.0/mlflow/registered-models/alias", act(MlWrite)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/registered-models/alias", act(MlRead)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/model-versions/create", act(MlWrite)),
    ("PATCH", "/api/projects/{project}/mlflow/api/2.0/mlflow/model-versions/update", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/model-versions/transition-stage", act(MlWrite)),
    ("DELETE", "/api/projects/{project}/mlflow/api/2.0/mlflow/model-versions/delete", act(MlWrite)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/model-versions/get", act(MlRead)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/model-versions/search", act(MlRead)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/model-versions/get-download-uri", act(MlRead)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/model-versions/set-tag", act(MlWrite)),
    ("DELETE", "/api/projects/{project}/mlflow/api/2.0/mlflow/model-versions/delete-tag", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/logged-models", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/logged-models/search", act(MlRead)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/traces", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/traces/search", act(MlRead)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/traces/delete-traces", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/traces/link-to-run", act(MlWrite)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/logged-models/{model_id}", act(MlRead)),
    ("PATCH", "/api/projects/{project}/mlflow/api/2.0/mlflow/logged-models/{model_id}", act(MlWrite)),
    ("DELETE", "/api/projects/{project}/mlflow/api/2.0/mlflow/logged-models/{model_id}", act(MlWrite)),
    ("PATCH", "/api/projects/{project}/mlflow/api/2.0/mlflow/logged-models/{model_id}/tags", act(MlWrite)),
    ("DELETE", "/api/projects/{project}/mlflow/api/2.0/mlflow/logged-models/{model_id}/tags/{tag_key}", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow/logged-models/{model_id}/params", act(MlWrite)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/logged-models/{model_id}/artifacts/directories", act(MlRead)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/traces/{trace_id}", act(MlRead)),
    ("PATCH", "/api/projects/{project}/mlflow/api/2.0/mlflow/traces/{trace_id}/tags", act(MlWrite)),
    ("DELETE", "/api/projects/{project}/mlflow/api/2.0/mlflow/traces/{trace_id}/tags", act(MlWrite)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow/server-info", Authenticated),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow-artifacts/artifacts", act(MlRead)),
    ("GET", "/api/projects/{project}/mlflow/api/2.0/mlflow-artifacts/artifacts/{*path}", act(MlRead)),
    ("PUT", "/api/projects/{project}/mlflow/api/2.0/mlflow-artifacts/artifacts/{*path}", act(MlWrite)),
    ("DELETE", "/api/projects/{project}/mlflow/api/2.0/mlflow-artifacts/artifacts/{*path}", act(MlWrite)),
    ("POST", "/api/projects/{project}/mlflow/api/2.0/mlflow-artifacts/mpu/{action}/{*path}", act(MlWrite)),
    ("GET", "/api/projects/{project}/mlflow/version", Authenticated),
    ("GET", "/api/projects/{project}/mlflow/health", Public),
    ("POST", "/api/projects/{project}/mlflow/v1/traces", act(MlWrite)),
    ("GET", "/mlflow/api/2.0/mlflow/workspaces", Authenticated),
    ("GET", "/mlflow/api/2.0/mlflow/workspaces/{project}", act(MlRead)),
    // ML environments (Holdfast's API).
    ("GET", "/v1/projects/{project}/environments", act(MlRead)),
    ("POST", "/v1/projects/{project}/environments", act(MlWrite)),
    ("GET", "/v1/projects/{project}/environments/{name}", act(MlRead)),
    ("GET", "/v1/projects/{project}/environments/{name}/versions/{version}", act(MlRead)),
];

/// The Foundry and OpenAI templates, spelled out once (`concat!` needs literals).
mod const_concat {
    macro_rules! project_path {
        ($($name:ident = $rest:literal;)*) => { $(pub const $name: &str = concat!("/api/projects/{project}", $rest);)* };
    }
    project_path! {
        AGENTS = "/agents";
        AGENT = "/agents/{agent_name}";
        AGENT_VERSIONS = "/agents/{agent_name}/versions";
        AGENT_VERSION = "/agents/{agent_name}/versions/{agent_version}";
        CONNECTIONS = "/connections";
        CONNECTION = "/connections/{name}";
        CONNECTION_CREDENTIALS = "/connections/{name}/getConnectionWithCredentials";
        DEPLOYMENTS = "/deployments";
        DEPLOYMENT = "/deployments/{name}";
        CONVERSATIONS = "/openai/v1/conversations";
        CONVERSATION = "/openai/v1/conversations/{conversation_id}";
        ITEMS = "/openai/v1/conversations/{conversation_id}/items";
        ITEM = "/openai/v1/conversations/{conversation_id}/items/{item_id}";
        RESPONSES = "/openai/v1/responses";
        RESPONSE = "/openai/v1/responses/{response_id}";
        RESPONSE_CANCEL = "/openai/v1/responses/{response_id}/cancel";
        RESPONSE_INPUT = "/openai/v1/responses/{response_id}/input_items";
        FILES = "/openai/v1/files";
        FILE = "/openai/v1/files/{file_id}";
        FILE_CONTENT = "/openai/v1/files/{file_id}/content";
        STORES = "/openai/v1/vector_stores";
        STORE = "/openai/v1/vector_stores/{vector_store_id}";
        STORE_FILES = "/openai/v1/vector_stores/{vector_store_id}/files";
        STORE_FILE = "/openai/v1/vector_stores/{vector_store_id}/files/{file_id}";
        STORE_FILE_CONTENT = "/openai/v1/vector_stores/{vector_store_id}/files/{file_id}/content";
        STORE_BATCHES = "/openai/v1/vector_stores/{vector_store_id}/file_batches";
        STORE_BATCH = "/openai/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}";
        STORE_BATCH_FILES = "/openai/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/files";
        STORE_BATCH_CANCEL = "/openai/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel";
        STORE_SEARCH = "/openai/v1/vector_stores/{vector_store_id}/search";
    }
}

/// What the route `method template` needs; `None` for a route the table does not know.
pub fn need_of(method: &str, template: &str) -> Option<Need> {
    ROUTES.iter().find(|(m, t, _)| *m == method && *t == template).map(|(_, _, need)| *need)
}

/// The scope a request's path names: `/projects/{project}` when its route has a project.
/// The `{project}` segment of a path, as sent.
fn project_in_path(template: &str, path: &str) -> Option<String> {
    let index = template.split('/').position(|s| s == "{project}")?;
    path.split('/').nth(index).map(str::to_owned)
}

fn scope_of(template: &str, path: &str) -> String {
    match project_in_path(template, path) {
        // As sent: a segment that is not a plain project name matches no scoped assignment.
        Some(p) => format!("/projects/{p}"),
        None => "/".to_owned(),
    }
}

/// The one authorization gate, over every route.
pub async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let Some(template) = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()) else {
        // No route: the fallback answers 404, and the probe is audited.
        let audited = unmatched(&state, &request);
        let response = next.run(request).await;
        state.node.core.audit(Audited { status: response.status().as_u16(), ..audited });
        return response;
    };
    let refuse = |e: Error| crate::refusal(&template, e);
    let declared = if method == Method::HEAD { "GET" } else { method.as_str() };
    let need = match need_of(declared, &template) {
        Some(need) => need,
        // A real route the table does not know: refused. Another method on a known path: 405,
        // answered here, so nothing unlisted ever reaches a handler.
        None if route_table().contains(&(declared.to_owned(), template.clone())) => {
            let audited = Audited { route: template.clone(), ..unmatched(&state, &request) };
            let response = refuse(undeclared(&method, &template));
            state.node.core.audit(Audited { status: response.status().as_u16(), ..audited });
            return response;
        }
        None => {
            let audited = Audited { route: template.clone(), ..unmatched(&state, &request) };
            let response = crate::method_not_allowed(method, request.uri().clone()).await;
            state.node.core.audit(Audited { status: response.status().as_u16(), ..audited });
            return response;
        }
    };
    let (parts, body) = request.into_parts();
    let scope = scope_of(&template, parts.uri.path());
    let action = match need {
        Public => return next.run(Request::from_parts(parts, body)).await,
        Cluster => {
            let secret = parts.headers.get(holdfast_geo::replication::CLUSTER_SECRET_HEADER).and_then(|v| v.to_str().ok());
            return match state.node.geo.admit_peer(secret) {
                Ok(()) => next.run(Request::from_parts(parts, body)).await,
                Err(e) => refuse(e),
            };
        }
        Authenticated => None,
        ActionInBody(action) | Need::Action(action) => Some(action),
    };
    let caller = crate::extract::caller(&parts, &state);
    let checked = match (&caller, need) {
        (Err(e), _) => Err(e.clone()),
        (Ok(caller), Need::Action(action)) => caller.require(action, &scope),
        (Ok(_), _) => Ok(()),
    };
    let audited = Audited {
        principal: caller.as_ref().map(|c| c.principal.id.as_str().to_owned()).unwrap_or_default(),
        method: method.as_str().to_owned(),
        route: template.clone(),
        path: parts.uri.path().to_owned(),
        scope,
        action: action.map(|a| a.as_str().to_owned()).unwrap_or_default(),
        address: parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()).unwrap_or_default(),
        status: 0,
        request_id: parts.extensions.get::<RequestId>().map(|r| r.as_str().to_owned()).unwrap_or_default(),
    };
    // A lock on the project refuses every change of its record and control-plane resources,
    // before the body is read.
    let checked = match (checked, action) {
        (Ok(()), Some(action)) if action.changes_project() && method != Method::GET && template.contains("{project}") => {
            let project = project_in_path(&template, parts.uri.path()).unwrap_or_default();
            state.node.core.check_project_locks_by_ref(&project, method == Method::DELETE).await
        }
        (checked, _) => checked,
    };
    let response = match checked {
        Err(e) => refuse(e),
        Ok(()) => next.run(Request::from_parts(parts, body)).await,
    };
    // Every mutation and every refusal, whatever said no (this gate or the operation). A
    // mutation's entry is durable before its response leaves.
    let status = response.status().as_u16();
    // A POST whose declared action is a read (a search) is a read: audited only when refused.
    let reads = method == Method::GET
        || method == Method::HEAD
        || matches!(need, Need::Action(Action::DataRead | Action::MlRead | Action::ProjectsRead));
    if !reads {
        state.node.core.audit_durable(Audited { status, ..audited }).await;
    } else if status == 401 || status == 403 {
        state.node.core.audit(Audited { status, ..audited });
    }
    response
}

/// The audit entry of a request no route (or no method of its route) answers: whoever its key
/// names, if any, and where it came from.
fn unmatched(state: &AppState, request: &Request) -> Audited {
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let principal = token.and_then(|t| state.node.core.authenticate(Some(t)).ok()).map(|p| p.id.as_str().to_owned());
    Audited {
        principal: principal.unwrap_or_default(),
        method: request.method().as_str().to_owned(),
        route: String::new(),
        path: request.uri().path().to_owned(),
        scope: "/".to_owned(),
        action: String::new(),
        address: request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()).unwrap_or_default(),
        status: 0,
        request_id: request.extensions().get::<RequestId>().map(|r| r.as_str().to_owned()).unwrap_or_default(),
    }
}

/// Every route of the application as (method, template), from the OpenAPI document built from
/// the same list that registers the handlers (a test in `http_api` checks the two agree).
pub fn route_table() -> &'static BTreeSet<(String, String)> {
    static TABLE: OnceLock<BTreeSet<(String, String)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut routes = BTreeSet::new();
        for (path, item) in &crate::openapi().paths.paths {
            let methods = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ];
            for (method, present) in methods {
                if present {
                    routes.insert((method.to_owned(), path.clone()));
                }
            }
        }
        routes
    })
}

fn undeclared(method: &Method, template: &str) -> Error {
    tracing::error!(%method, template, "route declares no authorization need; refused");
    Error::forbidden(format!("route {method} {template} declares no action; refused by default"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_route_declares_what_it_needs_and_the_table_has_no_stale_rows() {
        let routes = route_table().clone();
        let declared: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, t, _)| ((*m).to_owned(), (*t).to_owned())).collect();
        let missing: Vec<_> = routes.difference(&declared).collect();
        assert!(missing.is_empty(), "routes without an entry in authz::ROUTES: {missing:?}");
        let stale: Vec<_> = declared.difference(&routes).collect();
        assert!(stale.is_empty(), "authz::ROUTES names routes that do not exist: {stale:?}");
        assert_eq!(declared.len(), ROUTES.len(), "a route is declared twice");
    }

    #[test]
    fn the_scope_is_the_project_the_path_names() {
        assert_eq!(scope_of("/v1/projects/{project}/journal", "/v1/projects/demo/journal"), "/projects/demo");
        assert_eq!(scope_of(const_concat::ITEMS, "/api/projects/p-1/openai/v1/conversations/c/items"), "/projects/p-1");
        assert_eq!(scope_of("/v1/keys", "/v1/keys"), "/");
    }
}
