//! History and undelete of one resource (admin): `GET …/resources/{id}/history` lists every
//! change that touched it, from the project's journal; `POST …/resources/{id}/undelete` brings a
//! deleted resource back, with its descendants, as a new change keeping its ids.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use holdfast_recovery::history::{History, UndeleteRequest, UndeleteSummary};
use holdfast_types::Error;
use holdfast_types::api::ErrorBody;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Authed;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(history)).routes(routes!(undelete))
}

/// Every change that touched a resource (admin only): its puts, patches, stamps and deletes,
/// its deletion with an ancestor, and changes to its descendants, each with LSN, time, actor and
/// request id. Scans the whole journal.
#[utoipa::path(get, path = "/v1/projects/{project}/resources/{id}/history", tag = "projects", params(
        ("project" = String, Path, description = "project name or id"),
        ("id" = String, Path, description = "resource id as the wire shows it (an agent's name, conn:{name}, dep:{name}, conv_…), or its internal id")),
    responses((status = 200, description = "the resource's history", body = Object),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn history(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<History>> {
    Ok(Json(state.node.recovery.resource_history(&caller, &project, &id).await?))
}

/// Brings a deleted resource back with its descendants, as one new change keeping ids and times
/// (admin only). Body (optional): `{"at": RFC 3339}` or `{"lsn": N}` picks the latest deletion at
/// or before that point; default the latest.
#[utoipa::path(post, path = "/v1/projects/{project}/resources/{id}/undelete", tag = "projects", params(
        ("project" = String, Path, description = "project name or id"),
        ("id" = String, Path, description = "resource id as the wire shows it, or its internal id")),
    request_body(content = Object, description = "optional: {\"at\": RFC 3339} or {\"lsn\": N}"),
    responses((status = 200, description = "undelete summary", body = Object),
        (status = 400, description = "bad time or LSN, outside the journal", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "never deleted", body = ErrorBody),
        (status = 409, description = "exists now, or a referenced blob is missing", body = ErrorBody)))]
async fn undelete(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((project, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<UndeleteSummary>> {
    let req: UndeleteRequest = if body.iter().all(u8::is_ascii_whitespace) {
        UndeleteRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Error::invalid(format!("bad undelete body: {e}")))?
    };
    Ok(Json(state.node.recovery.undelete_resource(&caller, &project, &id, req).await?))
}
