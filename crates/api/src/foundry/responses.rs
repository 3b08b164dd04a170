//! OpenAI responses: create (JSON, or `text/event-stream` with `stream: true`), get, delete,
//! cancel and input items.

use std::convert::Infallible;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use holdfast_agents::responses::{Created, ResponseCreate};
use holdfast_agents::{List, ListQuery};
use holdfast_types::Error;
use serde::Deserialize;
use serde_json::Value;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{OaAuthed, OaJson, OaQuery, OaResult};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_response))
        .routes(routes!(get_response, delete_response))
        .routes(routes!(cancel_response))
        .routes(routes!(list_input_items))
}

/// Creates a model response over a deployment (`model`) or an agent (`agent_reference`), with
/// history from `conversation` or `previous_response_id`. With `stream: true` the answer is a
/// stream of Responses events (`text/event-stream`); the response completes and is stored even
/// if the client goes away.
#[utoipa::path(post, path = "/api/projects/{project}/openai/v1/responses", tag = "openai",
    params(("project" = String, Path)), request_body = Object,
    responses((status = 200, body = Object, description = "the response, or its events with stream: true")))]
async fn create_response(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path(project): Path<String>,
    OaJson(req): OaJson<ResponseCreate>,
) -> OaResult<Response> {
    match s.node.agents.create_response(&c, &project, req).await? {
        Created::Done(response) => Ok(Json(response).into_response()),
        Created::Stream(events) => {
            let events = UnboundedReceiverStream::new(events)
                .map(|e| Ok::<_, Infallible>(Event::default().event(e.event).data(e.data.to_string())));
            Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct GetQuery {
    #[serde(default)]
    stream: Option<bool>,
}

/// Gets a stored response.
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/responses/{response_id}", tag = "openai",
    params(("project" = String, Path), ("response_id" = String, Path)), responses((status = 200, body = Object)))]
async fn get_response(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
    OaQuery(q): OaQuery<GetQuery>,
) -> OaResult<Json<Value>> {
    if q.stream == Some(true) {
        return Err(Error::invalid("streaming a stored response again is not supported; get it without stream").into());
    }
    Ok(Json(s.node.agents.get_response(&c, &project, &id).await?))
}

/// Deletes a stored response; its conversation keeps its items.
#[utoipa::path(delete, path = "/api/projects/{project}/openai/v1/responses/{response_id}", tag = "openai",
    params(("project" = String, Path), ("response_id" = String, Path)), responses((status = 200, body = Object)))]
async fn delete_response(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.delete_response(&c, &project, &id).await?))
}

/// Cancels a response in progress; a finished one is refused with 400.
#[utoipa::path(post, path = "/api/projects/{project}/openai/v1/responses/{response_id}/cancel", tag = "openai",
    params(("project" = String, Path), ("response_id" = String, Path)), responses((status = 200, body = Object)))]
async fn cancel_response(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.cancel_response(&c, &project, &id).await?))
}

/// Lists a response's input items (`after`, `limit`, `order`; newest first by default).
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/responses/{response_id}/input_items", tag = "openai",
    params(("project" = String, Path), ("response_id" = String, Path)), responses((status = 200, body = Object)))]
async fn list_input_items(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
    OaQuery(q): OaQuery<ListQuery>,
) -> OaResult<Json<List>> {
    Ok(Json(s.node.agents.list_response_input_items(&c, &project, &id, q).await?))
}
