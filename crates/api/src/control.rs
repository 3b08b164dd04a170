//! Holdfast's own API: operations endpoints and `/v1` (projects, journals, keys, info).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use holdfast_types::api::{ErrorBody, Info, JournalPage, KeyCreate, KeyCreated, KeyPage, Project, ProjectCreate, ProjectPage, ProjectUpdate};
use holdfast_types::{Error, Lsn};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, Authed};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(info))
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project, update_project, delete_project))
        .routes(routes!(list_deleted_projects))
        .routes(routes!(recover_project))
        .routes(routes!(purge_project))
        .routes(routes!(journal))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "alive", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the server can take requests (its stores answer).
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, description = "ready", body = String), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> ApiResult<&'static str> {
    state.node.core.ready().await?;
    Ok("ready")
}

/// Prometheus metrics: request counts and latencies, per-project LSN, commit batch sizes and
/// commit (fsync) times. They name every project, so they need a key with `metrics/read` (the
/// `monitoring_reader` role): Prometheus sends it with `authorization: {credentials: KEY}`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// This document: the OpenAPI description of every route.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(crate::openapi())
}

/// The server's version and region.
#[utoipa::path(get, path = "/v1/info", tag = "operations",
    responses((status = 200, body = Info), (status = 401, body = ErrorBody)))]
async fn info(State(state): State<AppState>, Authed(_caller): Authed) -> Json<Info> {
    Json(state.node.core.info())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    /// Return items after this cursor (the `next_after` of the previous page).
    after: Option<String>,
    /// Page size, 1 to 100 (default 20).
    limit: Option<usize>,
}

/// Lists projects by name.
#[utoipa::path(get, path = "/v1/projects", tag = "projects", params(PageQuery),
    responses((status = 200, body = ProjectPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_projects(
    State(state): State<AppState>,
    Authed(caller): Authed,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<ProjectPage>> {
    Ok(Json(state.node.core.list_projects(&caller, q.after, q.limit).await?))
}

/// Creates a project.
#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = ProjectCreate,
    responses((status = 201, body = Project), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, description = "the name is taken", body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn create_project(
    State(state): State<AppState>,
    Authed(caller): Authed,
    ApiJson(req): ApiJson<ProjectCreate>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    Ok((StatusCode::CREATED, Json(state.node.core.create_project(&caller, req).await?)))
}

/// Gets a project by name (or id).
#[utoipa::path(get, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path, description = "project name or id")),
    responses((status = 200, body = Project), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_project(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
) -> ApiResult<Json<Project>> {
    Ok(Json(state.node.core.get_project(&caller, &project).await?))
}

/// Updates a project's display name, description or tags; absent fields are kept, a tag set to
/// null is removed.
#[utoipa::path(patch, path = "/v1/projects/{project}", tag = "projects", request_body = ProjectUpdate,
    params(("project" = String, Path, description = "project name or id")),
    responses((status = 200, body = Project), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn update_project(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
    ApiJson(req): ApiJson<ProjectUpdate>,
) -> ApiResult<Json<Project>> {
    Ok(Json(state.node.core.update_project(&caller, &project, req).await?))
}

/// Soft-deletes a project: hidden, its name reserved, its data kept for its retention period
/// (recover with `POST /v1/deleted-projects/{project}/recover`).
#[utoipa::path(delete, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path, description = "project name or id")),
    responses((status = 204, description = "deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "a lock forbids it", body = ErrorBody)))]
async fn delete_project(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
) -> ApiResult<StatusCode> {
    state.node.core.delete_project(&caller, &project).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Soft-deleted projects, with `deleted_at` and `purge_after`.
#[utoipa::path(get, path = "/v1/deleted-projects", tag = "projects", params(PageQuery),
    responses((status = 200, body = ProjectPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_deleted_projects(
    State(state): State<AppState>,
    Authed(caller): Authed,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<ProjectPage>> {
    Ok(Json(state.node.core.list_deleted_projects(&caller, q.after, q.limit).await?))
}

/// Brings a soft-deleted project back as it was.
#[utoipa::path(post, path = "/v1/deleted-projects/{project}/recover", tag = "projects",
    params(("project" = String, Path, description = "project name or id")),
    responses((status = 200, body = Project), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn recover_project(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
) -> ApiResult<Json<Project>> {
    Ok(Json(state.node.core.recover_project(&caller, &project).await?))
}

/// Purges a soft-deleted project for good; refused while purge protection holds.
#[utoipa::path(delete, path = "/v1/deleted-projects/{project}", tag = "projects",
    params(("project" = String, Path, description = "project name or id")),
    responses((status = 204, description = "purged"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "purge protection or a lock", body = ErrorBody)))]
async fn purge_project(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
) -> ApiResult<StatusCode> {
    state.node.core.purge_project(&caller, &project).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct JournalQuery {
    /// Return changes with an LSN greater than this (default 0: from the start).
    after: Option<u64>,
    /// Most changes to return, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// If no change is newer than `after`, wait up to this many milliseconds (at most 30000)
    /// for one: a long poll for followers.
    wait_ms: Option<u64>,
}

/// Reads a project's journal in LSN order (admin only).
#[utoipa::path(get, path = "/v1/projects/{project}/journal", tag = "projects", params(
        ("project" = String, Path, description = "project name or id"), JournalQuery),
    responses((status = 200, body = JournalPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn journal(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
    ApiQuery(q): ApiQuery<JournalQuery>,
) -> ApiResult<Json<JournalPage>> {
    let page = state
        .node
        .core.journal(&caller, &project, Lsn(q.after.unwrap_or(0)), q.limit, q.wait_ms.map(Duration::from_millis))
        .await?;
    Ok(Json(page))
}

/// Lists API keys (never their secrets).
#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses((status = 200, body = KeyPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_keys(State(state): State<AppState>, Authed(caller): Authed) -> ApiResult<Json<KeyPage>> {
    Ok(Json(state.node.governance.list_keys(&caller).await?))
}

/// Creates a principal with an API key; the key is in this response only.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = KeyCreate,
    responses((status = 201, body = KeyCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn create_key(
    State(state): State<AppState>,
    Authed(caller): Authed,
    ApiJson(req): ApiJson<KeyCreate>,
) -> ApiResult<(StatusCode, Json<KeyCreated>)> {
    Ok((StatusCode::CREATED, Json(state.node.governance.create_key(&caller, req).await?)))
}

/// Revokes a key (by key id) or every key of a principal (by principal id).
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "key id (key_…) or principal id (prn_…)")),
    responses((status = 204, description = "revoked"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the last live key of an admin at / stays", body = ErrorBody)))]
async fn revoke_key(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if id.is_empty() {
        return Err(ApiError(Error::invalid("key id is empty")));
    }
    state.node.governance.revoke_key(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
