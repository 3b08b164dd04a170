//! The audit log (`/v1/audit`): every mutation and every denied request, hash-chained. Owners only.

use axum::Json;
use axum::extract::State;
use holdfast_governance::AuditQuery;
use holdfast_types::api::{AuditPage, AuditVerify, ErrorBody};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiQuery, Authed};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(audit_log)).routes(routes!(verify))
}

/// Audit entries, oldest first: `?since=&until=` (RFC 3339), `principal=prn_…`, `scope=/projects/P`
/// (that scope and under it), `after=SEQ&limit=N` (at most 1000) to page.
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(("since" = Option<String>, Query), ("until" = Option<String>, Query), ("principal" = Option<String>, Query),
        ("scope" = Option<String>, Query), ("after" = Option<i64>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn audit_log(
    State(state): State<AppState>,
    Authed(caller): Authed,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    Ok(Json(state.node.governance.audit_log(&caller, query).await?))
}

/// Walks the hash chain: `ok` is false, with the first bad entry, when an entry was changed or removed.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, body = AuditVerify), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn verify(State(state): State<AppState>, Authed(caller): Authed) -> ApiResult<Json<AuditVerify>> {
    Ok(Json(state.node.governance.audit_verify(&caller).await?))
}
