//! OpenAI vector stores, their files and file batches, and search.

use axum::Json;
use axum::extract::{Path, State};
use holdfast_agents::vector_stores::{
    FileBatchCreate, VectorStoreCreate, VectorStoreFileCreate, VectorStoreFileListQuery, VectorStoreFileUpdate,
    VectorStoreSearch, VectorStoreUpdate,
};
use holdfast_agents::{List, ListQuery};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{OaAuthed, OaJson, OaQuery, OaResult};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_vector_store, list_vector_stores))
        .routes(routes!(get_vector_store, update_vector_store, delete_vector_store))
        .routes(routes!(search_vector_store))
        .routes(routes!(create_vector_store_file, list_vector_store_files))
        .routes(routes!(get_vector_store_file, update_vector_store_file, delete_vector_store_file))
        .routes(routes!(vector_store_file_content))
        .routes(routes!(create_file_batch))
        .routes(routes!(get_file_batch))
        .routes(routes!(cancel_file_batch))
        .routes(routes!(list_file_batch_files))
}

/// Creates a vector store, attaching `file_ids` (indexed before this answers).
#[utoipa::path(post, path = "/api/projects/{project}/openai/v1/vector_stores", tag = "openai",
    params(("project" = String, Path)), request_body = Object, responses((status = 200, body = Object)))]
async fn create_vector_store(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path(project): Path<String>,
    OaJson(req): OaJson<VectorStoreCreate>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.create_vector_store(&c, &project, req).await?))
}

/// Lists vector stores, newest first (`after`, `limit`, `order`).
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/vector_stores", tag = "openai",
    params(("project" = String, Path)), responses((status = 200, body = Object)))]
async fn list_vector_stores(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path(project): Path<String>,
    OaQuery(q): OaQuery<ListQuery>,
) -> OaResult<Json<List>> {
    Ok(Json(s.node.agents.list_vector_stores(&c, &project, q).await?))
}

/// Gets a vector store, with its file counts and usage.
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}", tag = "openai",
    params(("project" = String, Path), ("vector_store_id" = String, Path)), responses((status = 200, body = Object)))]
async fn get_vector_store(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.get_vector_store(&c, &project, &id).await?))
}

/// Changes a vector store's name, metadata or expiry policy.
#[utoipa::path(post, path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}", tag = "openai",
    params(("project" = String, Path), ("vector_store_id" = String, Path)), request_body = Object,
    responses((status = 200, body = Object)))]
async fn update_vector_store(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
    OaJson(req): OaJson<VectorStoreUpdate>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.update_vector_store(&c, &project, &id, req).await?))
}

/// Deletes a vector store with its file links (the files stay).
#[utoipa::path(delete, path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}", tag = "openai",
    params(("project" = String, Path), ("vector_store_id" = String, Path)), responses((status = 200, body = Object)))]
async fn delete_vector_store(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.delete_vector_store(&c, &project, &id).await?))
}

/// Searches a vector store (BM25 over the chunks of its text files).
#[utoipa::path(post, path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}/search", tag = "openai",
    params(("project" = String, Path), ("vector_store_id" = String, Path)), request_body = Object,
    responses((status = 200, body = Object)))]
async fn search_vector_store(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
    OaJson(req): OaJson<VectorStoreSearch>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.search_vector_store(&c, &project, &id, req).await?))
}

/// Attaches a file to a vector store (indexed before this answers; a file that is not UTF-8
/// text is attached with status `failed`).
#[utoipa::path(post, path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}/files", tag = "openai",
    params(("project" = String, Path), ("vector_store_id" = String, Path)), request_body = Object,
    responses((status = 200, body = Object)))]
async fn create_vector_store_file(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
    OaJson(req): OaJson<VectorStoreFileCreate>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.create_vector_store_file(&c, &project, &id, req).await?))
}

/// Lists a vector store's files (`after`, `limit`, `order`, `filter` by status).
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}/files", tag = "openai",
    params(("project" = String, Path), ("vector_store_id" = String, Path)), responses((status = 200, body = Object)))]
async fn list_vector_store_files(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
    OaQuery(q): OaQuery<VectorStoreFileListQuery>,
) -> OaResult<Json<List>> {
    Ok(Json(s.node.agents.list_vector_store_files(&c, &project, &id, q).await?))
}

/// Gets one file of a vector store.
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}/files/{file_id}",
    tag = "openai", params(("project" = String, Path), ("vector_store_id" = String, Path), ("file_id" = String, Path)),
    responses((status = 200, body = Object)))]
async fn get_vector_store_file(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id, file)): Path<(String, String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.get_vector_store_file(&c, &project, &id, &file).await?))
}

/// Replaces the attributes of a vector store's file.
#[utoipa::path(post, path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}/files/{file_id}",
    tag = "openai", params(("project" = String, Path), ("vector_store_id" = String, Path), ("file_id" = String, Path)),
    request_body = Object, responses((status = 200, body = Object)))]
async fn update_vector_store_file(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id, file)): Path<(String, String, String)>,
    OaJson(req): OaJson<VectorStoreFileUpdate>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.update_vector_store_file(&c, &project, &id, &file, req).await?))
}

/// Detaches a file from a vector store (the file stays).
#[utoipa::path(delete, path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}/files/{file_id}",
    tag = "openai", params(("project" = String, Path), ("vector_store_id" = String, Path), ("file_id" = String, Path)),
    responses((status = 200, body = Object)))]
async fn delete_vector_store_file(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id, file)): Path<(String, String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.delete_vector_store_file(&c, &project, &id, &file).await?))
}

/// The parsed text of a vector store's file.
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}/files/{file_id}/content",
    tag = "openai", params(("project" = String, Path), ("vector_store_id" = String, Path), ("file_id" = String, Path)),
    responses((status = 200, body = Object)))]
async fn vector_store_file_content(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id, file)): Path<(String, String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.vector_store_file_content(&c, &project, &id, &file).await?))
}

/// Attaches several files at once (`file_ids`, or `files` with per-file attributes).
#[utoipa::path(post, path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}/file_batches",
    tag = "openai", params(("project" = String, Path), ("vector_store_id" = String, Path)), request_body = Object,
    responses((status = 200, body = Object)))]
async fn create_file_batch(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
    OaJson(req): OaJson<FileBatchCreate>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.create_file_batch(&c, &project, &id, req).await?))
}

/// Gets a file batch.
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}",
    tag = "openai", params(("project" = String, Path), ("vector_store_id" = String, Path), ("batch_id" = String, Path)),
    responses((status = 200, body = Object)))]
async fn get_file_batch(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id, batch)): Path<(String, String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.get_file_batch(&c, &project, &id, &batch).await?))
}

/// Cancels a file batch: batches finish before they are acknowledged, so this answers with
/// the batch unchanged.
#[utoipa::path(post,
    path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel",
    tag = "openai", params(("project" = String, Path), ("vector_store_id" = String, Path), ("batch_id" = String, Path)),
    responses((status = 200, body = Object)))]
async fn cancel_file_batch(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id, batch)): Path<(String, String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.cancel_file_batch(&c, &project, &id, &batch).await?))
}

/// Lists the files a batch attached (`after`, `limit`, `order`, `filter` by status).
#[utoipa::path(get,
    path = "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/files",
    tag = "openai", params(("project" = String, Path), ("vector_store_id" = String, Path), ("batch_id" = String, Path)),
    responses((status = 200, body = Object)))]
async fn list_file_batch_files(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id, batch)): Path<(String, String, String)>,
    OaQuery(q): OaQuery<VectorStoreFileListQuery>,
) -> OaResult<Json<List>> {
    Ok(Json(s.node.agents.list_file_batch_files(&c, &project, &id, &batch, q).await?))
}
