//! Serving a project from either region (README §Replication between regions): a middleware over
//! every project route (`/v1/projects/{project}/…`, `/api/projects/{project}/…`), inside the
//! authorization gate (so the caller is authenticated with this region's keys, which regions
//! share by configuration, and the request is audited here too).
//!
//! - A write (any method but GET and HEAD, except the POSTs that only read — a vector store
//!   search, a connection's credentials — and the failover routes, which act in the region they
//!   are sent to) for a project this region holds as a **hot replica** is
//!   forwarded to the primary region: same method, path, query, headers (minus hop-by-hop ones
//!   and `Host`) and body, plus `x-holdfast-forwarded-by: <region>`; the primary's status,
//!   headers and body come back as they are, streamed (server-sent events included). A request
//!   that already carries `x-holdfast-forwarded-by` is never forwarded again (503: a loop).
//! - `x-holdfast-min-lsn: N` waits, bounded, until this region's copy has applied `N`.
//! - Every response carries `x-holdfast-lsn` (the copy's last LSN after the request) and
//!   `x-holdfast-lag-ms` (0 on the primary); a forwarded write carries the primary's, and is
//!   answered once this region's copy has applied it (bounded as `x-holdfast-min-lsn` is), so a
//!   client that reads here next reads its own write — clients that cannot send
//!   `x-holdfast-min-lsn`, such as MLflow's, included.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use holdfast_core::Action;
use holdfast_geo::consistency::{Holding, LocalCopy};
use holdfast_types::{Error, ErrorKind, Lsn, RequestId};

use crate::authz::{Need, need_of};
use crate::{AppState, HttpLimits};

/// The copy's last LSN after the request.
pub const LSN_HEADER: &str = "x-holdfast-lsn";
/// How far the copy is behind the primary, in milliseconds (0 on the primary).
pub const LAG_HEADER: &str = "x-holdfast-lag-ms";
/// Asks the region to have applied this LSN before it serves the request.
pub const MIN_LSN_HEADER: &str = "x-holdfast-min-lsn";
/// Set on a forwarded request: the region that forwarded it.
pub const FORWARDED_BY_HEADER: &str = "x-holdfast-forwarded-by";
/// How long `x-holdfast-min-lsn` waits by default; `HOLDFAST_MIN_LSN_WAIT_MS` overrides it.
pub const DEFAULT_MIN_LSN_WAIT: Duration = Duration::from_secs(5);
/// How long a forward may take to connect to the primary (no overall bound: streams run long).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Room for the multipart framing beside an uploaded file (as the files route allows).
const MULTIPART_OVERHEAD: usize = 64 * 1024;
const FILES_ROUTE: &str = "/api/projects/{project}/openai/v1/files";
/// Bodies with no router-wide limit (the service enforces its own, as it reads them): an import,
/// an MLflow artifact. Streamed through.
const STREAMED_ROUTES: [&str; 2] =
    ["/v1/projects/{project}/import", "/api/projects/{project}/mlflow/api/2.0/mlflow-artifacts/artifacts/{*path}"];

/// The middleware's state: the application's, the body limit, the min-LSN bound.
#[derive(Clone)]
pub struct Consistency {
    state: AppState,
    max_body_bytes: usize,
    min_lsn_wait: Duration,
}

impl Consistency {
    /// Reads `HOLDFAST_MIN_LSN_WAIT_MS` (at start: `app()` builds this once).
    pub fn new(state: AppState, limits: HttpLimits) -> Self {
        let min_lsn_wait = match std::env::var("HOLDFAST_MIN_LSN_WAIT_MS") {
            Err(_) => DEFAULT_MIN_LSN_WAIT,
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => {
                    tracing::warn!(value = %v, default_ms = DEFAULT_MIN_LSN_WAIT.as_millis() as u64,
                        "HOLDFAST_MIN_LSN_WAIT_MS is not a number of milliseconds; using the default");
                    DEFAULT_MIN_LSN_WAIT
                }
            },
        };
        Self { state, max_body_bytes: limits.max_body_bytes, min_lsn_wait }
    }
}

/// The project a template's path names, for the two project-scoped route families.
fn project_of<'a>(template: &str, path: &'a str) -> Option<&'a str> {
    let scoped = template.starts_with("/v1/projects/{project}") || template.starts_with("/api/projects/{project}");
    // "", "v1" | "api", "projects", "{project}".
    scoped.then(|| path.split('/').nth(3)).flatten().filter(|p| !p.is_empty())
}

/// Whether a hot replica sends a request to the primary: a write, but not a POST that only reads
/// (served from the local copy) nor a failover route (`Failover` action: a forced failover and a
/// divergence replay are addressed to the region they are sent to, often the replica itself).
fn forwards(method: &Method, template: &str) -> bool {
    if method == Method::GET || method == Method::HEAD {
        return false;
    }
    !matches!(need_of(method.as_str(), template), Some(Need::Action(Action::DataRead | Action::MlRead | Action::SecretsRead | Action::Failover)))
}

fn refuse(template: &str, e: Error) -> Response {
    crate::refusal(template, e)
}

/// The middleware.
pub async fn serve(State(c): State<Consistency>, request: Request, next: Next) -> Response {
    let Some(template) = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()) else {
        return next.run(request).await;
    };
    let Some(project) = project_of(&template, request.uri().path()).map(str::to_owned) else {
        return next.run(request).await;
    };
    let geo = c.state.node.geo.clone();
    let min_lsn = match request.headers().get(MIN_LSN_HEADER) {
        None => None,
        Some(value) => match value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(n) => Some(Lsn(n)),
            None => {
                return refuse(
                    &template,
                    Error::invalid(format!(
                        "{MIN_LSN_HEADER} must be an LSN (a whole number, as returned in {LSN_HEADER}); got {:?}",
                        String::from_utf8_lossy(value.as_bytes())
                    )),
                );
            }
        },
    };
    if forwards(request.method(), &template)
        && let Ok(LocalCopy { holding: Holding::HotReplica { primary_region, primary_url }, .. }) = geo.local_copy(&project).await
    {
        return forward(&c, request, &template, &project, &primary_region, primary_url).await;
    }
    if let Some(min) = min_lsn
        && let Err(e) = geo.wait_until_applied(&project, min, c.min_lsn_wait).await
    {
        return with_position(refuse(&template, e), geo.local_copy(&project).await.ok());
    }
    let keyed = forwards(request.method(), &template)
        && request.headers().contains_key(crate::idempotency::IDEMPOTENCY_HEADER)
        && !crate::idempotency::UNKEYED_ROUTES.contains(&template.as_str());
    let response = if keyed {
        crate::idempotency::serve(&c.state, &template, &project, request, next, c.max_body_bytes, refuse).await
    } else {
        next.run(request).await
    };
    with_position(response, geo.local_copy(&project).await.ok())
}

fn with_position(mut response: Response, position: Option<LocalCopy>) -> Response {
    if let Some(p) = position {
        let headers = response.headers_mut();
        headers.insert(LSN_HEADER, HeaderValue::from(p.lsn.0));
        headers.insert(LAG_HEADER, HeaderValue::from(p.lag_ms));
    }
    response
}

/// The client forwards go out on: connect bounded, no overall timeout (responses may stream),
/// redirects passed back as they are.
fn client() -> Result<&'static reqwest::Client, Error> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::internal(format!("cannot build the forwarding client: {e}")))
}

/// Headers that belong to one connection, never forwarded either way (RFC 9110 §7.6.1), and
/// those the outgoing request computes itself.
fn hop_by_hop(name: &HeaderName, connection: &HeaderMap) -> bool {
    const HOP: &[&str] = &["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];
    HOP.contains(&name.as_str())
        || connection
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|listed| listed.trim().eq_ignore_ascii_case(name.as_str()))
}

/// Sends a hot replica's write to the primary region and answers with what it answered.
async fn forward(c: &Consistency, request: Request, template: &str, project: &str, primary_region: &str, primary_url: Option<String>) -> Response {
    let here = c.state.node.core.region().to_owned();
    if let Some(by) = request.headers().get(FORWARDED_BY_HEADER) {
        return refuse(
            template,
            Error::unavailable(format!(
                "project {project:?} is a hot replica in region {here}, and region {} already forwarded this write here: \
                 a forwarding loop (the regions disagree about which holds the primary; see holdfast status in each); refused",
                String::from_utf8_lossy(by.as_bytes())
            )),
        );
    }
    let Some(base) = primary_url else {
        return refuse(
            template,
            Error::unavailable(format!(
                "project {project:?} is a hot replica in region {here}; its writes go to region {primary_region}, \
                 which is not a peer of this server (configure --peer {primary_region}=URL)"
            )),
        );
    };
    let client = match client() {
        Ok(client) => client,
        Err(e) => return refuse(template, e),
    };
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !hop_by_hop(name, &parts.headers) && name != header::HOST && name != header::CONTENT_LENGTH {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(region) = HeaderValue::from_str(&here) {
        headers.insert(FORWARDED_BY_HEADER, region);
    }
    // One request id in both regions' logs, audit and error bodies.
    if let Some(id) = parts.extensions.get::<RequestId>().and_then(|id| HeaderValue::from_str(id.as_str()).ok()) {
        headers.insert("x-request-id", id);
    }
    let body = if STREAMED_ROUTES.contains(&template) {
        reqwest::Body::wrap_stream(body.into_data_stream())
    } else {
        let limit = if template == FILES_ROUTE {
            c.state.node.core.max_file_bytes().saturating_add(MULTIPART_OVERHEAD)
        } else {
            c.max_body_bytes
        };
        match axum::body::to_bytes(body, limit).await {
            Ok(bytes) => reqwest::Body::from(bytes),
            Err(e) => {
                return refuse(
                    template,
                    Error::new(ErrorKind::PayloadTooLarge, format!("request body is larger than the server's limit of {limit} bytes, or unreadable: {e}")),
                );
            }
        }
    };
    let sent = client.request(parts.method.clone(), &url).headers(headers).body(body).send().await;
    let upstream = match sent {
        Ok(upstream) => upstream,
        Err(e) => {
            metrics::counter!("holdfast_forwarded_requests_total", "region" => primary_region.to_owned(), "outcome" => "unreachable").increment(1);
            tracing::warn!(project, primary_region, %url, error = %e, "cannot forward a write to the primary region");
            return refuse(
                template,
                Error::unavailable(format!(
                    "project {project:?} is a hot replica in region {here}, and its primary region {primary_region} is unreachable \
                     ({base}): the write was not forwarded: {e}"
                )),
            );
        }
    };
    metrics::counter!("holdfast_forwarded_requests_total", "region" => primary_region.to_owned(), "outcome" => "forwarded").increment(1);
    tracing::debug!(project, primary_region, method = %parts.method, status = upstream.status().as_u16(), "forwarded a write to the primary region");
    // Read-your-writes: the answer leaves once this copy holds the write (bounded; past the
    // bound the answer leaves anyway, and its LSN header says what to wait for).
    let written = upstream.headers().get(LSN_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(lsn) = written.filter(|_| upstream.status().is_success()) {
        let _ = c.state.node.geo.wait_until_applied(project, Lsn(lsn), c.min_lsn_wait).await;
    }
    let mut response = Response::builder().status(upstream.status());
    for (name, value) in upstream.headers() {
        if !hop_by_hop(name, upstream.headers()) {
            response = response.header(name, value);
        }
    }
    let answered = response.body(Body::from_stream(upstream.bytes_stream()));
    answered.unwrap_or_else(|e| refuse(template, Error::internal(format!("cannot relay the primary's answer: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_is_the_path_segment_the_template_names() {
        assert_eq!(project_of("/v1/projects/{project}/journal", "/v1/projects/demo/journal"), Some("demo"));
        assert_eq!(project_of("/api/projects/{project}/openai/v1/responses", "/api/projects/p/openai/v1/responses"), Some("p"));
        assert_eq!(project_of("/v1/projects/{project}", "/v1/projects/demo"), Some("demo"));
        assert_eq!(project_of("/v1/deleted-projects/{project}", "/v1/deleted-projects/demo"), None);
        assert_eq!(project_of("/v1/keys", "/v1/keys"), None);
    }

    #[test]
    fn writes_are_forwarded_but_not_the_posts_that_read_nor_failovers() {
        assert!(forwards(&Method::POST, "/api/projects/{project}/openai/v1/conversations"));
        assert!(forwards(&Method::DELETE, "/v1/projects/{project}"));
        assert!(forwards(&Method::PATCH, "/v1/projects/{project}"));
        assert!(!forwards(&Method::GET, "/api/projects/{project}/openai/v1/conversations/{conversation_id}"));
        assert!(!forwards(&Method::HEAD, "/v1/projects/{project}"));
        assert!(!forwards(&Method::POST, "/api/projects/{project}/openai/v1/vector_stores/{vector_store_id}/search"));
        assert!(!forwards(&Method::POST, "/api/projects/{project}/connections/{name}/getConnectionWithCredentials"));
        assert!(!forwards(&Method::POST, "/v1/projects/{project}/failover"));
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_stay_behind() {
        let mut connection = HeaderMap::new();
        connection.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        assert!(hop_by_hop(&header::TRANSFER_ENCODING, &connection));
        assert!(hop_by_hop(&HeaderName::from_static("x-private"), &connection));
        assert!(!hop_by_hop(&header::AUTHORIZATION, &connection));
        assert!(!hop_by_hop(&header::CONTENT_TYPE, &connection));
    }
}
