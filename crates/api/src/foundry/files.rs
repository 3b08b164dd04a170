//! OpenAI files: multipart upload, list, get, raw content, delete.

use axum::Json;
use axum::body::Bytes;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::header;
use axum::response::IntoResponse;
use holdfast_agents::List;
use holdfast_agents::files::{FileListQuery, FileUpload};
use holdfast_types::{Error, ErrorKind};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{OaAuthed, OaError, OaQuery, OaResult};
use crate::AppState;

/// Room for the multipart framing and the small fields beside the file (purpose, expiry).
const MULTIPART_OVERHEAD: usize = 64 * 1024;
/// Most parts an upload may have.
const MAX_PARTS: usize = 16;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_file, list_files))
        .routes(routes!(get_file, delete_file))
        .routes(routes!(file_content))
}

fn multipart_rejection(rejection: MultipartRejection) -> OaError {
    OaError(Error::invalid(format!("expected a multipart/form-data body: {}", rejection.body_text())))
}

/// A multipart read error; `limit` is the largest file this server takes.
fn multipart_error(limit: usize) -> impl Fn(MultipartError) -> OaError {
    move |e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            return OaError(too_large(limit));
        }
        OaError(Error::invalid(format!("malformed multipart body: {}", e.body_text())))
    }
}

fn too_large(limit: usize) -> Error {
    Error::new(ErrorKind::PayloadTooLarge, format!("the upload is larger than this server's limit of {limit} bytes per file"))
}

/// Uploads a file (`multipart/form-data` with `file` and `purpose`). The bytes are stored
/// durably before the file is recorded; a file over the server's limit is refused with 413
/// and nothing is stored.
#[utoipa::path(post, path = "/api/projects/{project}/openai/v1/files", tag = "openai",
    params(("project" = String, Path)),
    request_body(content = Object, content_type = "multipart/form-data", description = "`file` (the bytes, with a filename) and `purpose`"),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 413, body = Object)))]
async fn create_file(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path(project): Path<String>,
    mut request: Request,
) -> OaResult<Json<Value>> {
    // Authorised (and the project found) before a byte of the upload is read.
    s.node.agents.may_upload(&c, &project).await?;
    let limit = s.node.core.max_file_bytes();
    // The router-wide body limit is sized for JSON; an upload may be as large as a file may be.
    DefaultBodyLimit::max(limit.saturating_add(MULTIPART_OVERHEAD)).apply(&mut request);
    let mut multipart = Multipart::from_request(request, &s).await.map_err(multipart_rejection)?;
    let (mut file, mut purpose, mut parts) = (None, None, 0);
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error(limit))? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(OaError(Error::invalid(format!("an upload has at most {MAX_PARTS} parts"))));
        }
        match field.name() {
            Some("file") => {
                if file.is_some() {
                    return Err(OaError(Error::invalid("only one 'file' part is allowed")));
                }
                let filename = field.file_name().map(str::to_owned);
                let mut bytes = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error(limit))? {
                    if bytes.len() + chunk.len() > limit {
                        return Err(OaError(too_large(limit)));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                file = Some((filename, Bytes::from(bytes)));
            }
            Some("purpose") => purpose = Some(field.text().await.map_err(multipart_error(limit))?.trim().to_owned()),
            // Other parts (`expires_after[…]`) are accepted and ignored.
            _ => {}
        }
    }
    let (filename, bytes) = file.ok_or_else(|| OaError(Error::invalid("'file' is required")))?;
    let purpose = purpose.ok_or_else(|| OaError(Error::invalid("'purpose' is required")))?;
    Ok(Json(s.node.agents.create_file(&c, &project, FileUpload { filename, purpose, bytes }).await?))
}

/// Lists files, newest first (`after`, `limit` up to 10000, `order`, `purpose`).
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/files", tag = "openai",
    params(("project" = String, Path)), responses((status = 200, body = Object)))]
async fn list_files(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path(project): Path<String>,
    OaQuery(q): OaQuery<FileListQuery>,
) -> OaResult<Json<List>> {
    Ok(Json(s.node.agents.list_files(&c, &project, q).await?))
}

/// Gets a file's record.
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/files/{file_id}", tag = "openai",
    params(("project" = String, Path), ("file_id" = String, Path)), responses((status = 200, body = Object)))]
async fn get_file(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.get_file(&c, &project, &id).await?))
}

/// Deletes a file and detaches it from every vector store.
#[utoipa::path(delete, path = "/api/projects/{project}/openai/v1/files/{file_id}", tag = "openai",
    params(("project" = String, Path), ("file_id" = String, Path)), responses((status = 200, body = Object)))]
async fn delete_file(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
) -> OaResult<Json<Value>> {
    Ok(Json(s.node.agents.delete_file(&c, &project, &id).await?))
}

/// A file's bytes, as uploaded.
#[utoipa::path(get, path = "/api/projects/{project}/openai/v1/files/{file_id}/content", tag = "openai",
    params(("project" = String, Path), ("file_id" = String, Path)),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream")))]
async fn file_content(
    State(s): State<AppState>,
    OaAuthed(c): OaAuthed,
    Path((project, id)): Path<(String, String)>,
) -> OaResult<impl IntoResponse> {
    let content = s.node.agents.file_content(&c, &project, &id).await?;
    let ascii: String =
        content.filename.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let disposition = format!("attachment; filename=\"{ascii}\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        content.bytes,
    ))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request as HttpRequest, StatusCode, header};
    use holdfast_core::Caller;
    use holdfast_node::{Config, Holdfast};
    use holdfast_types::RequestId;
    use holdfast_types::api::ProjectCreate;
    use tower::ServiceExt;

    use crate::{AppState, HttpLimits, app};

    const KEY: &str = "test-admin-key-0123456789";
    const BOUNDARY: &str = "holdfast-test-boundary";

    /// A multipart body of `(name, filename, bytes)` parts.
    fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, filename, bytes) in parts {
            body.extend(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
            if let Some(f) = filename {
                body.extend(format!("; filename=\"{f}\"").as_bytes());
            }
            body.extend(b"\r\n\r\n");
            body.extend(*bytes);
            body.extend(b"\r\n");
        }
        body.extend(format!("--{BOUNDARY}--\r\n").as_bytes());
        body
    }

    struct Server {
        _dir: tempfile::TempDir,
        node: Holdfast,
        app: axum::Router,
    }

    impl Server {
        /// Files up to 100 000 bytes, JSON bodies up to 1 KiB.
        async fn start() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = Config::new(dir.path().to_owned(), "test", Some(KEY.into()));
            config.core.max_file_bytes = 100_000;
            let node = Holdfast::open(config).expect("open").node;
            let caller = Caller { principal: node.core.authenticate(Some(KEY)).expect("auth"), request_id: RequestId::generate() };
            let req = ProjectCreate { name: "demo".into(), ..Default::default() };
            node.core.create_project(&caller, req).await.expect("project");
            let app = app(AppState { node: node.clone(), metrics: None }, HttpLimits { max_body_bytes: 1024 });
            Self { _dir: dir, node, app }
        }

        async fn upload(&self, content_type: &str, body: Vec<u8>) -> (StatusCode, serde_json::Value) {
            let request = HttpRequest::post("/api/projects/demo/openai/v1/files")
                .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(body))
                .expect("request");
            let response = self.app.clone().oneshot(request).await.expect("response");
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
            (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
        }

        async fn lsn(&self) -> u64 {
            self.node.core.project_store("demo").await.expect("store").last_lsn().0
        }
    }

    fn form() -> String {
        format!("multipart/form-data; boundary={BOUNDARY}")
    }

    #[tokio::test]
    async fn uploads_past_the_json_limit_up_to_the_file_limit() {
        let server = Server::start().await;
        let before = server.lsn().await;
        let bytes = vec![b'x'; 100_000];
        let body = multipart(&[("purpose", None, b"assistants"), ("file", Some("big.txt"), &bytes)]);
        let (status, file) = server.upload(&form(), body).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        assert_eq!(file["bytes"], 100_000);
        assert_eq!(file["filename"], "big.txt");
        assert_eq!(server.lsn().await, before + 1);
    }

    #[tokio::test]
    async fn refused_uploads_journal_nothing() {
        let server = Server::start().await;
        let before = server.lsn().await;
        let over = vec![b'x'; 100_001];
        let far_over = vec![b'x'; 300_000];
        let cases: Vec<(&str, String, Vec<u8>, StatusCode)> = vec![
            ("one byte too many", form(), multipart(&[("purpose", None, b"assistants"), ("file", Some("a.txt"), &over)]), StatusCode::PAYLOAD_TOO_LARGE),
            ("far past the body limit", form(), multipart(&[("file", Some("a.txt"), &far_over), ("purpose", None, b"assistants")]), StatusCode::PAYLOAD_TOO_LARGE),
            ("a huge other part", form(), multipart(&[("junk", None, &far_over), ("purpose", None, b"assistants"), ("file", Some("a.txt"), b"hi")]), StatusCode::PAYLOAD_TOO_LARGE),
            ("no purpose", form(), multipart(&[("file", Some("a.txt"), b"hello")]), StatusCode::BAD_REQUEST),
            ("no file", form(), multipart(&[("purpose", None, b"assistants")]), StatusCode::BAD_REQUEST),
            ("bad purpose", form(), multipart(&[("purpose", None, b"nope"), ("file", Some("a.txt"), b"hello")]), StatusCode::BAD_REQUEST),
            ("truncated", form(), b"--holdfast-test-boundary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nhel".to_vec(), StatusCode::BAD_REQUEST),
            ("garbage", form(), b"this is not multipart at all".to_vec(), StatusCode::BAD_REQUEST),
            ("no boundary", "multipart/form-data".into(), multipart(&[("purpose", None, b"assistants")]), StatusCode::BAD_REQUEST),
            ("json", "application/json".into(), br#"{"purpose":"assistants"}"#.to_vec(), StatusCode::BAD_REQUEST),
        ];
        for (what, content_type, body, want) in cases {
            let (status, error) = server.upload(&content_type, body).await;
            assert_eq!(status, want, "{what}: {error}");
            assert!(error["error"]["message"].is_string(), "{what}: OpenAI error shape, got {error}");
            assert_eq!(server.lsn().await, before, "{what}: nothing journaled");
        }
        let project = server.node.core.project_store("demo").await.expect("store").id().clone();
        let blobs = server._dir.path().join("blobs").join(project.as_str());
        assert!(!blobs.exists(), "no blob stored for a refused upload");
    }
}
