//! Managed identities (`/v1/identities`): principals for a project's workloads. Owners only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use holdfast_types::api::{ErrorBody, Identity, IdentityCreate, IdentityList, KeyCreated};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, Authed};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_identities, create_identity))
        .routes(routes!(delete_identity))
        .routes(routes!(create_identity_key))
}

/// Every managed identity, user- and system-assigned.
#[utoipa::path(get, path = "/v1/identities", tag = "keys",
    responses((status = 200, body = IdentityList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_identities(State(state): State<AppState>, Authed(caller): Authed) -> ApiResult<Json<IdentityList>> {
    Ok(Json(state.node.governance.list_identities(&caller).await?))
}

/// Creates a user-assigned identity: it exists apart from any project.
#[utoipa::path(post, path = "/v1/identities", tag = "keys", request_body = IdentityCreate,
    responses((status = 201, body = Identity), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, description = "the name is taken", body = ErrorBody)))]
async fn create_identity(
    State(state): State<AppState>,
    Authed(caller): Authed,
    ApiJson(req): ApiJson<IdentityCreate>,
) -> ApiResult<(StatusCode, Json<Identity>)> {
    Ok((StatusCode::CREATED, Json(state.node.governance.create_identity(&caller, req).await?)))
}

/// Removes a user-assigned identity: its keys stop working and its assignments go.
#[utoipa::path(delete, path = "/v1/identities/{name}", tag = "keys",
    params(("name" = String, Path, description = "identity name or principal id")),
    responses((status = 204, description = "removed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the identity holds the last live key of an admin at /", body = ErrorBody)))]
async fn delete_identity(State(state): State<AppState>, Authed(caller): Authed, Path(name): Path<String>) -> ApiResult<StatusCode> {
    state.node.governance.delete_identity(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a key that authenticates as the identity (shown once).
#[utoipa::path(post, path = "/v1/identities/{name}/keys", tag = "keys",
    params(("name" = String, Path, description = "identity name or principal id")),
    responses((status = 201, body = KeyCreated), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn create_identity_key(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<KeyCreated>)> {
    Ok((StatusCode::CREATED, Json(state.node.governance.create_identity_key(&caller, &name).await?)))
}
