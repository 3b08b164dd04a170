//! Connections and deployments: managed on `/v1/projects/{project}/…` (Holdfast's control
//! plane, used by the CLI), read by the Azure SDK on `/api/projects/{project}/…`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use holdfast_agents::connections::{ConnectionCreate, ConnectionFilter};
use holdfast_agents::deployments::{DeploymentCreate, DeploymentFilter};
use holdfast_types::api::ErrorBody;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{OaAuthed, OaQuery, OaResult};
use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, Authed};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(v1_list_connections, v1_create_connection))
        .routes(routes!(v1_delete_connection))
        .routes(routes!(v1_upstream_health))
        .routes(routes!(v1_list_deployments, v1_create_deployment))
        .routes(routes!(v1_delete_deployment))
        .routes(routes!(list_connections))
        .routes(routes!(get_connection))
        .routes(routes!(get_connection_with_credentials))
        .routes(routes!(list_deployments))
        .routes(routes!(get_deployment))
}

/// Lists a project's connections (secrets never included).
#[utoipa::path(get, path = "/v1/projects/{project}/connections", tag = "connections",
    params(("project" = String, Path)), responses((status = 200, body = Object)))]
async fn v1_list_connections(State(s): State<AppState>, Authed(c): Authed, Path(project): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(s.node.agents.list_connections(&c, &project, ConnectionFilter::default()).await?))
}

/// Creates a connection to an OpenAI-compatible upstream; its API key is stored encrypted.
#[utoipa::path(post, path = "/v1/projects/{project}/connections", tag = "connections",
    params(("project" = String, Path)), request_body = Object, responses((status = 201, body = Object)))]
async fn v1_create_connection(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(project): Path<String>,
    ApiJson(req): ApiJson<ConnectionCreate>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    Ok((StatusCode::CREATED, Json(s.node.agents.create_connection(&c, &project, req).await?)))
}

/// Deletes a connection no deployment uses.
#[utoipa::path(delete, path = "/v1/projects/{project}/connections/{name}", tag = "connections",
    params(("project" = String, Path), ("name" = String, Path)), responses((status = 204)))]
async fn v1_delete_connection(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.node.agents.delete_connection(&c, &project, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Each of the project's connections' health as this region's model calls found it: `healthy`,
/// `failing` (failures in a row), `open` (its circuit breaker skips it; `probe_in_ms`) or
/// `probing`.
#[utoipa::path(get, path = "/v1/projects/{project}/upstreams", tag = "connections",
    params(("project" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn v1_upstream_health(State(s): State<AppState>, Authed(c): Authed, Path(project): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(s.node.agents.upstream_health(&c, &project).await?))
}

/// Lists a project's deployments.
#[utoipa::path(get, path = "/v1/projects/{project}/deployments", tag = "connections",
    params(("project" = String, Path)), responses((status = 200, body = Object)))]
async fn v1_list_deployments(State(s): State<AppState>, Authed(c): Authed, Path(project): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(s.node.agents.list_deployments(&c, &project, DeploymentFilter::default()).await?))
}

/// Creates a deployment: a model name bound to a connection and the upstream's model id.
#[utoipa::path(post, path = "/v1/projects/{project}/deployments", tag = "connections",
    params(("project" = String, Path)), request_body = Object, responses((status = 201, body = Object)))]
async fn v1_create_deployment(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(project): Path<String>,
    ApiJson(req): ApiJson<DeploymentCreate>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    Ok((StatusCode::CREATED, Json(s.node.agents.create_deployment(&c, &project, req).await?)))
}

/// Deletes a deployment.
#[utoipa::path(delete, path = "/v1/projects/{project}/deployments/{name}", tag = "connections",
    params(("project" = String, Path), ("name" = String, Path)), responses((status = 204)))]
async fn v1_delete_deployment(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.node.agents.delete_deployment(&c, &project, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Foundry: lists connections, Azure-style (`{"value": [...], "nextLink"}`); `connectionType`
/// and `defaultConnection` filter.
#[utoipa::path(get, path = "/api/projects/{project}/connections", tag = "foundry",
    params(("project" = String, Path)), responses((status = 200, body = Object)))]
async fn list_connections(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path(project): Path<String>,
    OaQuery(filter): OaQuery<ConnectionFilter>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.list_connections(&c, &project, filter).await?))
}

/// Foundry: gets a connection without its secret.
#[utoipa::path(get, path = "/api/projects/{project}/connections/{name}", tag = "foundry",
    params(("project" = String, Path), ("name" = String, Path)), responses((status = 200, body = Object)))]
async fn get_connection(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, name)): Path<(String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.get_connection(&c, &project, &name, false).await?))
}

/// Foundry: gets a connection with its secret (callers allowed to read secrets only).
#[utoipa::path(post, path = "/api/projects/{project}/connections/{name}/getConnectionWithCredentials", tag = "foundry",
    params(("project" = String, Path), ("name" = String, Path)), responses((status = 200, body = Object)))]
async fn get_connection_with_credentials(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, name)): Path<(String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.get_connection(&c, &project, &name, true).await?))
}

/// Foundry: lists deployments, Azure-style; `modelName`, `modelPublisher` and
/// `deploymentType` filter.
#[utoipa::path(get, path = "/api/projects/{project}/deployments", tag = "foundry",
    params(("project" = String, Path)), responses((status = 200, body = Object)))]
async fn list_deployments(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path(project): Path<String>,
    OaQuery(filter): OaQuery<DeploymentFilter>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.list_deployments(&c, &project, filter).await?))
}

/// Foundry: gets a deployment.
#[utoipa::path(get, path = "/api/projects/{project}/deployments/{name}", tag = "foundry",
    params(("project" = String, Path), ("name" = String, Path)), responses((status = 200, body = Object)))]
async fn get_deployment(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, name)): Path<(String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.get_deployment(&c, &project, &name).await?))
}
