//! Foundry agents and their versions.

use axum::Json;
use axum::extract::{Path, State};
use holdfast_agents::{List, ListQuery};
use holdfast_agents::agents::AgentVersionCreate;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{OaAuthed, OaJson, OaQuery, OaResult};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents))
        .routes(routes!(get_agent, delete_agent))
        .routes(routes!(create_version, list_versions))
        .routes(routes!(get_version, delete_version))
}

/// Lists agents, newest first (`limit`, `order`, `after`).
#[utoipa::path(get, path = "/api/projects/{project}/agents", tag = "foundry",
    params(("project" = String, Path)), responses((status = 200, body = Object)))]
async fn list_agents(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path(project): Path<String>,
    OaQuery(q): OaQuery<ListQuery>,
) -> OaResult<Json<List>> {
    Ok(Json(s.node.agents.list_agents(&c, &project, q).await?))
}

/// Gets an agent with its latest version.
#[utoipa::path(get, path = "/api/projects/{project}/agents/{agent_name}", tag = "foundry",
    params(("project" = String, Path), ("agent_name" = String, Path)), responses((status = 200, body = Object)))]
async fn get_agent(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, name)): Path<(String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.get_agent(&c, &project, &name).await?))
}

/// Deletes an agent and all its versions.
#[utoipa::path(delete, path = "/api/projects/{project}/agents/{agent_name}", tag = "foundry",
    params(("project" = String, Path), ("agent_name" = String, Path)), responses((status = 200, body = Object)))]
async fn delete_agent(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, name)): Path<(String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.delete_agent(&c, &project, &name).await?))
}

/// Creates a new, immutable version of an agent (creating the agent if needed).
#[utoipa::path(post, path = "/api/projects/{project}/agents/{agent_name}/versions", tag = "foundry",
    params(("project" = String, Path), ("agent_name" = String, Path)), request_body = Object,
    responses((status = 200, body = Object)))]
async fn create_version(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, name)): Path<(String, String)>,
    OaJson(req): OaJson<AgentVersionCreate>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.create_agent_version(&c, &project, &name, req).await?))
}

/// Lists an agent's versions, newest first.
#[utoipa::path(get, path = "/api/projects/{project}/agents/{agent_name}/versions", tag = "foundry",
    params(("project" = String, Path), ("agent_name" = String, Path)), responses((status = 200, body = Object)))]
async fn list_versions(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, name)): Path<(String, String)>,
    OaQuery(q): OaQuery<ListQuery>,
) -> OaResult<Json<List>> {
    Ok(Json(s.node.agents.list_agent_versions(&c, &project, &name, q).await?))
}

/// Gets one version of an agent.
#[utoipa::path(get, path = "/api/projects/{project}/agents/{agent_name}/versions/{agent_version}", tag = "foundry",
    params(("project" = String, Path), ("agent_name" = String, Path), ("agent_version" = String, Path)),
    responses((status = 200, body = Object)))]
async fn get_version(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, name, version)): Path<(String, String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.get_agent_version(&c, &project, &name, &version).await?))
}

/// Deletes one version of an agent.
#[utoipa::path(delete, path = "/api/projects/{project}/agents/{agent_name}/versions/{agent_version}", tag = "foundry",
    params(("project" = String, Path), ("agent_name" = String, Path), ("agent_version" = String, Path)),
    responses((status = 200, body = Object)))]
async fn delete_version(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, name, version)): Path<(String, String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.delete_agent_version(&c, &project, &name, &version).await?))
}
