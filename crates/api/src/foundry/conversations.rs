//! OpenAI conversations and conversation items.

use axum::Json;
use axum::extract::{Path, State};
use holdfast_agents::conversations::{ConversationCreate, ConversationListQuery, ConversationUpdate, ItemsCreate};
use holdfast_agents::{List, ListQuery};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{OaAuthed, OaJson, OaQuery, OaResult};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_conversation, list_conversations))
        .routes(routes!(get_conversation, update_conversation, delete_conversation))
        .routes(routes!(create_items, list_items))
        .routes(routes!(get_item, delete_item))
}

/// Creates a conversation, optionally with initial items and metadata.
#[utoipa::path(post, path = "/api/projects/{project}/openai/v1/conversations", tag = "openai",
    params(("project" = String, Path)), request_body = Object, responses((status = 200, body = Object)))]
async fn create_conversation(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path(project): Path<String>,
    OaJson(req): OaJson<ConversationCreate>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.create_conversation(&c, &project, req).await?))
}

/// Lists the project's conversations (newest first; `order`, `after`, `limit`, and
/// `metadata[KEY]=VALUE` filters).
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/conversations", tag = "openai",
    params(("project" = String, Path), ("after" = Option<String>, Query), ("limit" = Option<usize>, Query),
        ("order" = Option<String>, Query, description = "desc (default) or asc")),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 401, body = Object),
        (status = 403, body = Object), (status = 404, body = Object)))]
async fn list_conversations(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path(project): Path<String>,
    OaQuery(query): OaQuery<ConversationListQuery>,
) -> OaResult<Json<List>> {
    Ok(Json(s.node.agents.list_conversations(&c, &project, query).await?))
}

/// Gets a conversation.
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/conversations/{conversation_id}", tag = "openai",
    params(("project" = String, Path), ("conversation_id" = String, Path)), responses((status = 200, body = Object)))]
async fn get_conversation(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.get_conversation(&c, &project, &id).await?))
}

/// Replaces a conversation's metadata.
#[utoipa::path(post, path = "/api/projects/{project}/openai/v1/conversations/{conversation_id}", tag = "openai",
    params(("project" = String, Path), ("conversation_id" = String, Path)), request_body = Object,
    responses((status = 200, body = Object)))]
async fn update_conversation(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
    OaJson(req): OaJson<ConversationUpdate>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.update_conversation(&c, &project, &id, req).await?))
}

/// Deletes a conversation and its items.
#[utoipa::path(delete, path = "/api/projects/{project}/openai/v1/conversations/{conversation_id}", tag = "openai",
    params(("project" = String, Path), ("conversation_id" = String, Path)), responses((status = 200, body = Object)))]
async fn delete_conversation(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.delete_conversation(&c, &project, &id).await?))
}

/// Appends items to a conversation.
#[utoipa::path(post, path = "/api/projects/{project}/openai/v1/conversations/{conversation_id}/items", tag = "openai",
    params(("project" = String, Path), ("conversation_id" = String, Path)), request_body = Object,
    responses((status = 200, body = Object)))]
async fn create_items(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
    OaJson(req): OaJson<ItemsCreate>,
) -> OaResult<Json<List>> {
    Ok(Json(s.node.agents.create_items(&c, &project, &id, req).await?))
}

/// Lists a conversation's items (`after`, `limit`, `order`; newest first by default).
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/conversations/{conversation_id}/items", tag = "openai",
    params(("project" = String, Path), ("conversation_id" = String, Path)), responses((status = 200, body = Object)))]
async fn list_items(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
    OaQuery(q): OaQuery<ListQuery>,
) -> OaResult<Json<List>> {
    Ok(Json(s.node.agents.list_items(&c, &project, &id, q).await?))
}

/// Gets one item of a conversation.
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/conversations/{conversation_id}/items/{item_id}",
    tag = "openai", params(("project" = String, Path), ("conversation_id" = String, Path), ("item_id" = String, Path)),
    responses((status = 200, body = Object)))]
async fn get_item(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id, item)): Path<(String, String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.get_item(&c, &project, &id, &item).await?))
}

/// Deletes one item; answers with the conversation.
#[utoipa::path(delete, path = "/api/projects/{project}/openai/v1/conversations/{conversation_id}/items/{item_id}",
    tag = "openai", params(("project" = String, Path), ("conversation_id" = String, Path), ("item_id" = String, Path)),
    responses((status = 200, body = Object)))]
async fn delete_item(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id, item)): Path<(String, String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.delete_item(&c, &project, &id, &item).await?))
}
