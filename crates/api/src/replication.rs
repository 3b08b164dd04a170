//! Replication between regions. Users: `POST|DELETE /v1/projects/{project}/replicas[/{region}]`,
//! `POST /v1/projects/{project}/failover`, `GET /v1/status`. Peers (`/internal/v1/…`, admitted
//! by the cluster secret in the gate): a replica's snapshot, journal pulls and blobs from the
//! primary, and the primary's requests to start, stop and promote a replica.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use holdfast_types::api::{
    ControlCommitted, ControlOps, RegionKeyInfo,
    Divergence, DivergenceReport, ErrorBody, FailoverReport, FailoverRequest, JournalBatch, Position, Project, ProjectStatus,
    PromoteRequest, ReplayOutcome, ReplayRequest, ReplicaCreate, ReplicaStart,
};
use holdfast_types::Lsn;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiQuery, Authed};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(replicate))
        .routes(routes!(unreplicate))
        .routes(routes!(failover))
        .routes(routes!(status))
        .routes(routes!(pull_journal))
        .routes(routes!(snapshot))
        .routes(routes!(blob))
        .routes(routes!(start_replica))
        .routes(routes!(stop_replica))
        .routes(routes!(promote))
        .routes(routes!(divergences))
        .routes(routes!(divergence))
        .routes(routes!(replay))
        .routes(routes!(position))
        .routes(routes!(record_divergence))
        .routes(routes!(resubmit))
        .routes(routes!(region_key))
        .routes(routes!(control_ops))
}

/// Peers: a control write planned in a region that holds a replica of the control journal, for
/// this region (its primary) to commit if the journal has not moved on since it was planned.
#[utoipa::path(post, path = "/internal/v1/control/ops", tag = "internal", request_body = ControlOps,
    responses((status = 200, body = ControlCommitted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn control_ops(State(state): State<AppState>, ApiJson(ops): ApiJson<ControlOps>) -> ApiResult<Json<ControlCommitted>> {
    Ok(Json(state.node.core.commit_control_ops(ops).await?))
}

/// Peers: this region's public key, for wrapping a project's data key when it is replicated here.
#[utoipa::path(get, path = "/internal/v1/region-key", tag = "internal",
    responses((status = 200, body = RegionKeyInfo), (status = 401, body = ErrorBody)))]
async fn region_key(State(state): State<AppState>) -> Json<RegionKeyInfo> {
    Json(state.node.geo.region_key_for_peer())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitQuery {
    limit: Option<usize>,
}

/// Runs again, as new background responses, the responses a failover cut off (`region_failover`):
/// at most `limit` (default 100, at most 1000) per call; call again until fewer come back.
#[utoipa::path(post, path = "/v1/projects/{project}/resubmit", tag = "replication",
    params(("project" = String, Path), ("limit" = Option<usize>, Query)),
    responses((status = 200, description = "[{id, resubmitted_as}]"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn resubmit(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
    ApiQuery(query): ApiQuery<LimitQuery>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    Ok(Json(state.node.agents.resubmit(&caller, &project, query.limit).await?))
}

/// Starts a replica of the project in a peer region (hot or warm, async or sync commit).
#[utoipa::path(post, path = "/v1/projects/{project}/replicas", tag = "replication", request_body = ReplicaCreate,
    params(("project" = String, Path, description = "project name or id")),
    responses((status = 200, body = Project), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "peer unreachable", body = ErrorBody)))]
async fn replicate(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
    ApiJson(request): ApiJson<ReplicaCreate>,
) -> ApiResult<Json<Project>> {
    Ok(Json(state.node.geo.replicate(&caller, &project, request).await?))
}

/// Stops the project's replica in a region and removes that region's copy.
#[utoipa::path(delete, path = "/v1/projects/{project}/replicas/{region}", tag = "replication",
    params(("project" = String, Path), ("region" = String, Path)),
    responses((status = 200, body = Project), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn unreplicate(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((project, region)): Path<(String, String)>,
) -> ApiResult<Json<Project>> {
    Ok(Json(state.node.geo.unreplicate(&caller, &project, &region).await?))
}

/// Failover. Planned (at the primary's region): fences the primary, the target applies the last
/// change and takes the next epoch; this region then follows it as a replica; no acknowledged
/// write is lost. Forced (`"force": true`, at the target's region, when the primary is lost):
/// the target promotes what it has and reports the possible loss.
#[utoipa::path(post, path = "/v1/projects/{project}/failover", tag = "replication", request_body = FailoverRequest,
    params(("project" = String, Path)),
    responses((status = 200, body = FailoverReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn failover(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
    ApiJson(request): ApiJson<FailoverRequest>,
) -> ApiResult<Json<FailoverReport>> {
    Ok(Json(state.node.geo.failover(&caller, &project, request).await?))
}

/// The project's divergence records: changes a deposed primary committed that never reached the
/// region that took over.
/// A page, oldest first: `after` a record's id, at most `limit` (default 100, at most 1000).
#[utoipa::path(get, path = "/v1/projects/{project}/divergences", tag = "replication",
    params(("project" = String, Path), ("after" = Option<String>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = Vec<Divergence>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn divergences(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
    ApiQuery(page): ApiQuery<holdfast_core::PageQuery>,
) -> ApiResult<Json<Vec<Divergence>>> {
    Ok(Json(state.node.geo.list_divergences(&caller, &project, page).await?))
}

/// One divergence record with its changes.
#[utoipa::path(get, path = "/v1/projects/{project}/divergences/{id}", tag = "replication",
    params(("project" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Divergence), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn divergence(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<Divergence>> {
    Ok(Json(state.node.geo.get_divergence(&caller, &project, &id).await?))
}

/// Re-applies chosen changes of a divergence record as new changes on this primary (admin).
#[utoipa::path(post, path = "/v1/projects/{project}/divergences/{id}/replay", tag = "replication", request_body = ReplayRequest,
    params(("project" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Vec<ReplayOutcome>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn replay(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((project, id)): Path<(String, String)>,
    ApiJson(request): ApiJson<ReplayRequest>,
) -> ApiResult<Json<Vec<ReplayOutcome>>> {
    Ok(Json(state.node.geo.replay_divergence(&caller, &project, &id, request).await?))
}

/// Peers: what this region holds of a project (role, epoch, LSN, where each epoch begins).
#[utoipa::path(get, path = "/internal/v1/projects/{id}/position", tag = "internal", params(("id" = String, Path)),
    responses((status = 200, body = Position), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn position(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Position>> {
    Ok(Json(state.node.geo.position_for_peer(&id).await?))
}

/// Peers: a deposed primary hands over the changes the new primary never had.
#[utoipa::path(post, path = "/internal/v1/projects/{id}/divergences", tag = "internal", request_body = DivergenceReport,
    params(("id" = String, Path)),
    responses((status = 200, description = "kept"), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn record_divergence(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(report): ApiJson<DivergenceReport>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(state.node.geo.record_divergence(&id, report).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    project: Option<String>,
}

/// Each project as this region sees it: primary region, epoch, LSN, replicas and their lag.
#[utoipa::path(get, path = "/v1/status", tag = "replication", params(("project" = Option<String>, Query)),
    responses((status = 200, body = Vec<ProjectStatus>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn status(
    State(state): State<AppState>,
    Authed(caller): Authed,
    ApiQuery(query): ApiQuery<StatusQuery>,
) -> ApiResult<Json<Vec<ProjectStatus>>> {
    Ok(Json(state.node.geo.status(&caller, query.project.as_deref()).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullQuery {
    after: u64,
    /// The epoch of the replica's change at `after` (checked: the same lineage).
    epoch: Option<u64>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
    /// The pulling replica's region.
    region: String,
}

/// Peers: changes after `after`, waiting up to `wait_ms` (at most 30 s) for some.
#[utoipa::path(get, path = "/internal/v1/projects/{id}/journal", tag = "internal",
    params(("id" = String, Path), ("after" = u64, Query), ("epoch" = Option<u64>, Query), ("limit" = Option<usize>, Query), ("wait_ms" = Option<u64>, Query),
        ("region" = String, Query)),
    responses((status = 200, body = JournalBatch), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn pull_journal(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PullQuery>,
) -> ApiResult<Json<JournalBatch>> {
    let wait = std::time::Duration::from_millis(q.wait_ms.unwrap_or(0).min(30_000));
    let batch = state.node.geo.journal_for_replica(&id, Lsn(q.after), q.epoch.map(holdfast_types::Epoch), q.limit.unwrap_or(1000), wait, &q.region).await?;
    Ok(Json(batch))
}

/// Peers: a consistent copy of the project's database (SQLite), to bootstrap a replica.
#[utoipa::path(get, path = "/internal/v1/projects/{id}/snapshot", tag = "internal", params(("id" = String, Path)),
    responses((status = 200, description = "the database file", content_type = "application/octet-stream"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn snapshot(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let (lsn, bytes) = state.node.geo.snapshot_for_replica(&id).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream".to_owned()), (header::HeaderName::from_static("x-holdfast-lsn"), lsn.0.to_string())], Body::from(bytes))
        .into_response())
}

/// Peers: one of the project's blobs.
#[utoipa::path(get, path = "/internal/v1/projects/{id}/blobs/{hash}", tag = "internal",
    params(("id" = String, Path), ("hash" = String, Path)),
    responses((status = 200, description = "the blob's bytes", content_type = "application/octet-stream"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn blob(State(state): State<AppState>, Path((id, hash)): Path<(String, String)>) -> ApiResult<Response> {
    let bytes = state.node.geo.blob_for_replica(&id, &hash).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], Body::from(bytes)).into_response())
}

/// Peers: the primary asks this region to hold a replica (bootstraps, then follows).
#[utoipa::path(post, path = "/internal/v1/replicas", tag = "internal", request_body = ReplicaStart,
    responses((status = 200, description = "replicating"), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn start_replica(State(state): State<AppState>, ApiJson(start): ApiJson<ReplicaStart>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(state.node.geo.start_replica(start).await?))
}

/// Peers: stop following the project and remove this region's copy.
#[utoipa::path(delete, path = "/internal/v1/replicas/{id}", tag = "internal", params(("id" = String, Path)),
    responses((status = 200, description = "removed"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn stop_replica(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(state.node.geo.stop_replica(&id).await?))
}

/// Peers: a planned failover's target applies up to `until_lsn`, then takes the new epoch.
#[utoipa::path(post, path = "/internal/v1/projects/{id}/promote", tag = "internal", request_body = PromoteRequest,
    params(("id" = String, Path)),
    responses((status = 200, description = "promoted"), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn promote(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<PromoteRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(state.node.geo.promote(&id, request).await?))
}
