//! HTTP facades over the domain crates: one module per facade (`control` and the control
//! plane's resource modules beside it, `foundry`).
//!
//! Architecture Invariant: `holdfast-api` is the only crate that knows HTTP and JSON wire
//! shapes. Handlers extract a [`Caller`](holdfast_core::Caller), call a domain's handle on the
//! [`Holdfast`](holdfast_node::Holdfast) node, and map its coarse errors to statuses in one
//! place ([`error::status_of`]).

mod audit;
pub mod authz;
mod backup;
mod check;
pub mod consistency;
mod control;
pub mod error;
mod environments;
mod export;
mod extract;
mod foundry;
mod history;
mod idempotency;
mod identities;
mod locks;
mod middleware;
mod mlflow;
mod replication;
mod roles;
pub mod telemetry;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use holdfast_node::Holdfast;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub node: Holdfast,
    pub metrics: Option<PrometheusHandle>,
}

/// Limits the HTTP layer enforces.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Holdfast", description = "Self-hosted state for AI projects: control-plane API."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "projects"), (name = "keys"), (name = "locks"), (name = "audit"), (name = "operations"), (name = "connections"),
        (name = "foundry", description = "Foundry Agent Service wire protocol"),
        (name = "openai", description = "OpenAI-compatible routes"),
        (name = "mlflow", description = "MLflow's REST API under /api/projects/{project}/mlflow (also as /api/3.0/…, and /mlflow/… with X-MLFLOW-WORKSPACE)"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The `Idempotency-Key` header, and the statuses it adds, on every write of a project route
/// that takes it (`idempotency.rs`): described once here, as the middleware serves them all.
struct IdempotentWrites;

impl utoipa::Modify for IdempotentWrites {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, Required, ResponseBuilder, Type};
        for (path, item) in openapi.paths.paths.iter_mut() {
            let project_route = path.starts_with("/v1/projects/{project}/") || path.starts_with("/api/projects/{project}/");
            if !project_route || idempotency::UNKEYED_ROUTES.contains(&path.as_str()) {
                continue;
            }
            for operation in [&mut item.post, &mut item.put, &mut item.patch, &mut item.delete].into_iter().flatten() {
                let header = ParameterBuilder::new()
                    .name("Idempotency-Key")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some("1–255 visible ASCII characters; a retry with the same key and request gets the first answer"))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)));
                operation.parameters.get_or_insert_with(Vec::new).push(header.build().into());
                let responses = &mut operation.responses.responses;
                responses.entry("422".into()).or_insert_with(|| {
                    ResponseBuilder::new().description("the Idempotency-Key was used for another request").build().into()
                });
                responses.entry("409".into()).or_insert_with(|| {
                    ResponseBuilder::new().description("a retry of a committed keyed write whose answer was not kept").build().into()
                });
            }
        }
    }
}

/// Every route and its OpenAPI description, from one list, so the two cannot drift apart.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(control::routes()).merge(foundry::routes()).merge(mlflow::routes()).merge(environments::routes()).merge(export::routes()).merge(history::routes()).merge(backup::routes()).merge(check::routes()).merge(locks::routes()).merge(roles::routes()).merge(identities::routes()).merge(audit::routes()).merge(replication::routes())
}

/// The OpenAPI document of every route, built once.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static API: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    API.get_or_init(|| {
        let mut api = routes().split_for_parts().1;
        // Over the merged routes: the document's own modifiers run before they are added.
        utoipa::Modify::modify(&IdempotentWrites, &mut api);
        api
    })
}

/// An error before or around a handler, in the error shape of the facade the route template
/// belongs to: MLflow's, the OpenAI one (Foundry), or Holdfast's.
pub(crate) fn refusal(template: &str, e: holdfast_types::Error) -> axum::response::Response {
    use axum::response::IntoResponse;
    if mlflow::is_mlflow_path(template) {
        mlflow::MlError(e).into_response()
    } else if template.starts_with("/api/") {
        foundry::OaError(e).into_response()
    } else {
        error::ApiError(e).into_response()
    }
}

/// No route: MLflow's `ENDPOINT_NOT_FOUND` under its prefixes (the client probes with it),
/// Holdfast's 404 elsewhere.
async fn unknown_route(uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    if mlflow::is_mlflow_path(uri.path()) {
        return mlflow::endpoint_not_found(&uri);
    }
    error::unknown_route(uri).await.into_response()
}

/// A method a known path does not take: 405, in the facade's error shape.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> axum::response::Response {
    let mut response = refusal(uri.path(), holdfast_types::Error::invalid(format!("method {method} is not allowed on {}", uri.path())));
    *response.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    response
}

/// The whole HTTP application.
pub fn app(state: AppState, limits: HttpLimits) -> Router {
    let (router, _) = routes().split_for_parts();
    let inner = router
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        // Inside the gate: a hot replica's writes go to the primary; LSN headers, min-LSN waits.
        .layer(axum::middleware::from_fn_with_state(consistency::Consistency::new(state.clone(), limits), consistency::serve))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authz::authorize))
        .layer(axum::middleware::from_fn(middleware::observe))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .with_state(state);
    // MLflow's URL forms (workspace header, /api/3.0) become project routes before routing.
    Router::new().fallback_service(tower::ServiceExt::map_request(inner, mlflow::rewrite as fn(_) -> _))
}
