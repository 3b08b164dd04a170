//! Environments of a project's ML workspace (`/v1/projects/{project}/environments`): versioned,
//! immutable images or build specs.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use holdfast_ml::environments::{Environment, EnvironmentCreate};
use holdfast_types::api::ErrorBody;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiQuery, Authed};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_environments, create_environment))
        .routes(routes!(get_environment))
        .routes(routes!(get_environment_version))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct EnvironmentQuery {
    /// Only the versions of this environment.
    name: Option<String>,
}

/// Lists environment versions, by name then version.
#[utoipa::path(get, path = "/v1/projects/{project}/environments", tag = "environments",
    params(("project" = String, Path), EnvironmentQuery),
    responses((status = 200, body = Vec<Environment>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_environments(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(project): Path<String>,
    ApiQuery(q): ApiQuery<EnvironmentQuery>,
) -> ApiResult<Json<Vec<Environment>>> {
    Ok(Json(s.node.ml.list_environments(&c, &project, q.name).await?))
}

/// Creates the next version of an environment (1 for a new name); versions are immutable.
#[utoipa::path(post, path = "/v1/projects/{project}/environments", tag = "environments",
    params(("project" = String, Path)), request_body = EnvironmentCreate,
    responses((status = 201, body = Environment), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_environment(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path(project): Path<String>,
    ApiJson(req): ApiJson<EnvironmentCreate>,
) -> ApiResult<(StatusCode, Json<Environment>)> {
    Ok((StatusCode::CREATED, Json(s.node.ml.create_environment(&c, &project, req).await?)))
}

/// The latest version of an environment.
#[utoipa::path(get, path = "/v1/projects/{project}/environments/{name}", tag = "environments",
    params(("project" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Environment), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn get_environment(State(s): State<AppState>, Authed(c): Authed, Path((project, name)): Path<(String, String)>) -> ApiResult<Json<Environment>> {
    Ok(Json(s.node.ml.get_environment(&c, &project, &name, None).await?))
}

/// One version of an environment.
#[utoipa::path(get, path = "/v1/projects/{project}/environments/{name}/versions/{version}", tag = "environments",
    params(("project" = String, Path), ("name" = String, Path), ("version" = u64, Path)),
    responses((status = 200, body = Environment), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_environment_version(
    State(s): State<AppState>,
    Authed(c): Authed,
    Path((project, name, version)): Path<(String, String, u64)>,
) -> ApiResult<Json<Environment>> {
    Ok(Json(s.node.ml.get_environment(&c, &project, &name, Some(version)).await?))
}
