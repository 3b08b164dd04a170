//! Calls to upstream models: `POST {target}/chat/completions` on an OpenAI-compatible server,
//! streamed (`stream: true`), read as server-sent events one chunk at a time.
//!
//! Every failure — a refused target, no connection, an HTTP error, a stream that breaks off or
//! does not parse, an error event inside the stream — becomes an [`UpstreamError`], which the
//! response that made the call reports as its `error`. What it says of the upstream's answer is
//! bounded: its HTTP status and, only when the body is a model API's JSON error object, a short
//! excerpt of that object's message — never a body otherwise, so a target that is not a model
//! server (the SSRF case) cannot have its pages read back. Time limits are the caller's: it
//! races [`ChatStream::next`] against its deadline.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::egress::{Egress, Resolver};
use crate::translate::completion_as_chunk;

/// Longest excerpt of an upstream's error message kept in a response's error.
const MAX_ERROR_CHARS: usize = 300;
/// Most bytes of an upstream's error body read (to find its message).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Most bytes of a whole (non-streamed) completion read.
const MAX_COMPLETION_BODY: usize = 32 * 1024 * 1024;

/// What a model call needs from a connection.
pub(crate) struct Upstream {
    /// The connection's name, and its health's key (`{project id}/{name}`).
    pub connection: String,
    pub health_key: String,
    pub target: String,
    pub api_key: Option<String>,
    /// The client that calls it, with the rules of where it may connect.
    pub client: std::sync::Arc<UpstreamClient>,
}

/// The HTTP client of every upstream call (it pools connections per host), with the rules of
/// where it may connect.
pub(crate) struct UpstreamClient {
    http: reqwest::Client,
    egress: Arc<Egress>,
}

impl UpstreamClient {
    pub(crate) fn new(egress: Egress) -> crate::Result<Self> {
        let egress = Arc::new(egress);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("holdfast/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect where the resolver's rules cannot see.
            .no_proxy()
            .dns_resolver(Arc::new(Resolver(egress.clone())))
            .build()
            .map_err(|e| holdfast_types::Error::internal(format!("cannot build the upstream HTTP client: {e}")))?;
        Ok(Self { http, egress })
    }

    /// Checks a connection's target against the rules (when it is created).
    pub(crate) fn check_target(&self, target: &str) -> crate::Result<()> {
        self.egress.check_target(target).map(drop)
    }
}

/// Why an upstream call failed, in the shape of a response's `error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UpstreamError {
    /// A Responses error code: `rate_limit_exceeded` for HTTP 429, `invalid_prompt` for 400,
    /// `server_error` otherwise.
    pub code: &'static str,
    pub message: String,
    /// Another upstream may answer where this one did not (no connection, a timeout, 429, a
    /// 5xx, a stream that broke off): not so for a request the upstream refused as bad.
    pub retryable: bool,
}

impl UpstreamError {
    pub(crate) fn server(message: impl Into<String>) -> Self {
        Self { code: "server_error", message: message.into(), retryable: true }
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

/// The chunks of one streamed chat completion.
pub(crate) struct ChatStream {
    source: Source,
    /// A chunk read ahead (to know the upstream answers before committing to it), given first.
    pending: Option<Value>,
    /// A chunk with a finish reason has arrived, so a close without `[DONE]` is still an end.
    finished: bool,
    /// The stream has ended (or reported an error, after which it ends).
    over: bool,
}

enum Source {
    Events(Events),
    /// An upstream that ignored `stream: true`: its whole completion as one chunk.
    Whole(Option<Value>),
}

impl ChatStream {
    /// The next `chat.completion.chunk`; `None` once the stream has ended properly.
    pub(crate) async fn next(&mut self) -> Option<Result<Value, UpstreamError>> {
        if let Some(chunk) = self.pending.take() {
            return Some(Ok(chunk));
        }
        if self.over {
            return None;
        }
        let result = self.read().await;
        if !matches!(result, Some(Ok(_))) {
            self.over = true;
        }
        result
    }

    async fn read(&mut self) -> Option<Result<Value, UpstreamError>> {
        let events = match &mut self.source {
            Source::Whole(chunk) => return chunk.take().map(Ok),
            Source::Events(events) => events,
        };
        loop {
            let event = match events.next().await {
                None if self.finished => return None,
                None => {
                    return Some(Err(UpstreamError::server(
                        "upstream model stream ended before the answer was complete",
                    )));
                }
                Some(Err(e)) => {
                    return Some(Err(UpstreamError::server(format!("upstream model stream broke off: {e}"))));
                }
                Some(Ok(event)) => event,
            };
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                return None;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                return Some(Err(UpstreamError::server(format!(
                    "upstream model sent a stream event that is not JSON ({} bytes)",
                    data.len()
                ))));
            };
            if event.event == "error" || chunk.get("error").is_some_and(|e| !e.is_null()) {
                let e = chunk.get("error").unwrap_or(&chunk);
                return Some(Err(UpstreamError::server(format!("upstream model error: {}", error_text(e)))));
            }
            self.finished |= chunk.pointer("/choices/0/finish_reason").is_some_and(Value::is_string);
            return Some(Ok(chunk));
        }
    }
}

/// The URL of the chat-completions endpoint under a connection's target.
pub(crate) fn chat_url(target: &str) -> String {
    format!("{}/chat/completions", target.trim_end_matches('/'))
}

/// Starts a streamed chat completion and returns once the upstream has answered with a
/// success status (its chunks follow through the stream).
pub(crate) async fn chat_stream(upstream: &Upstream, body: &Value) -> Result<ChatStream, UpstreamError> {
    let client = &upstream.client;
    client.egress.check_call(&upstream.target).await.map_err(|e| UpstreamError::server(e.message))?;
    let url = chat_url(&upstream.target);
    let mut request = client.http.post(&url).json(body).header(reqwest::header::ACCEPT, "text/event-stream");
    if let Some(key) = upstream.api_key.as_deref() {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|e| {
        UpstreamError::server(format!("cannot reach the upstream model at {url}: {}", error_chain(&e)))
    })?;
    let status = response.status();
    if !status.is_success() {
        let text = read_bounded(response, MAX_ERROR_BODY).await.unwrap_or_default();
        let code = match status.as_u16() {
            429 => "rate_limit_exceeded",
            400 => "invalid_prompt",
            _ => "server_error",
        };
        let message = match model_error_message(&text) {
            Some(m) => format!("upstream model returned HTTP {}: {m}", status.as_u16()),
            None => format!("upstream model returned HTTP {}", status.as_u16()),
        };
        // A request the upstream refused as bad would be refused by any: the rest (a key it does
        // not take, a path it does not have, 429, 5xx) is this upstream's.
        let retryable = !matches!(status.as_u16(), 400 | 413 | 422);
        return Err(UpstreamError { code, message, retryable });
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !content_type.starts_with("text/event-stream") {
        // An upstream that ignored `stream: true` and answered with the whole completion.
        let text = read_bounded(response, MAX_COMPLETION_BODY)
            .await
            .map_err(|e| UpstreamError::server(format!("upstream model answer broke off: {e}")))?;
        let not_model = || {
            UpstreamError::server(format!(
                "upstream model answered with {}, which is neither an event stream nor a chat completion",
                if content_type.is_empty() { "no content type".to_owned() } else { format!("content type {content_type:?}") }
            ))
        };
        let completion: Value = serde_json::from_str(&text).map_err(|_| not_model())?;
        if let Some(m) = model_error_message(&text) {
            return Err(UpstreamError::server(format!("upstream model error: {m}")));
        }
        if completion.get("choices").is_none() {
            return Err(not_model());
        }
        let chunk = completion_as_chunk(&completion);
        return Ok(ChatStream { source: Source::Whole(Some(chunk)), pending: None, finished: true, over: false });
    }
    let events = response.bytes_stream().eventsource().map(|r| r.map_err(|e| e.to_string()));
    Ok(ChatStream { source: Source::Events(Box::pin(events)), pending: None, finished: false, over: false })
}

/// How many failed calls in a row open a connection's circuit breaker.
const FAILURES_TO_OPEN: u32 = 3;

/// Each connection's health in this region: calls that failed in a row and, once they reach
/// [`FAILURES_TO_OPEN`], until when calls skip it (an open breaker). When that time has come,
/// one call probes it (half-open): its success closes the breaker, its failure opens it again.
pub(crate) struct Breakers {
    open_for: Duration,
    state: std::sync::Mutex<std::collections::HashMap<String, Breaker>>,
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<std::time::Instant>,
    /// A probe is out (half-open): other calls keep skipping it.
    probing: bool,
}

impl Breakers {
    pub(crate) fn new(open_for: Duration) -> Self {
        Self { open_for, state: std::sync::Mutex::default() }
    }

    /// Whether calls skip the connection now: its breaker is open and not yet due for a probe,
    /// or a probe is out.
    fn skips(&self, key: &str) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.get(key).is_some_and(|b| b.open_until.is_some_and(|until| std::time::Instant::now() < until || b.probing))
    }

    /// A call to the connection begins: when its breaker is due for a probe, this call is it
    /// (until the guard goes: a probe cut off by a cancel or a deadline is no answer).
    fn attempt<'a>(&'a self, key: &'a str) -> ProbeGuard<'a> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let probe = state.get_mut(key).is_some_and(|b| {
            let due = b.open_until.is_some_and(|until| std::time::Instant::now() >= until) && !b.probing;
            b.probing |= due;
            due
        });
        ProbeGuard { breakers: self, key, probe }
    }

    /// A connection's health here: `healthy`, `failing` (failures in a row, below the
    /// threshold), `open` (skipped; with the milliseconds until a probe may go) or `probing`.
    pub(crate) fn health(&self, key: &str) -> Value {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(b) = state.get(key) else { return serde_json::json!({ "state": "healthy", "failures": 0 }) };
        let now = std::time::Instant::now();
        match b.open_until {
            None => serde_json::json!({ "state": "failing", "failures": b.failures }),
            Some(_) if b.probing => serde_json::json!({ "state": "probing", "failures": b.failures }),
            Some(until) => serde_json::json!({
                "state": "open",
                "failures": b.failures,
                "probe_in_ms": until.saturating_duration_since(now).as_millis() as u64,
            }),
        }
    }

    /// Forgets a connection (deleted).
    pub(crate) fn forget(&self, key: &str) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    fn succeeded(&self, key: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.remove(key).is_some_and(|b| b.open_until.is_some()) {
            metrics::gauge!("holdfast_upstream_breaker_open", "connection" => key.to_owned()).set(0.0);
            tracing::info!(connection = key, "upstream answers again: its circuit breaker is closed");
        }
    }

    fn failed(&self, key: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let b = state.entry(key.to_owned()).or_default();
        b.failures += 1;
        b.probing = false;
        if b.failures >= FAILURES_TO_OPEN {
            if b.open_until.is_none() {
                tracing::warn!(connection = key, failures = b.failures, open_for = ?self.open_for, "upstream keeps failing: its circuit breaker is open");
            }
            b.open_until = Some(std::time::Instant::now() + self.open_for);
            metrics::gauge!("holdfast_upstream_breaker_open", "connection" => key.to_owned()).set(1.0);
        }
    }
}

/// Ends a probe when the call that is it ends, whatever its outcome was recorded as.
struct ProbeGuard<'a> {
    breakers: &'a Breakers,
    key: &'a str,
    probe: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.probe {
            let mut state = self.breakers.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(b) = state.get_mut(self.key) {
                b.probing = false;
            }
        }
    }
}

/// Starts a streamed chat completion on the first of `upstreams` (a deployment's connections,
/// in order) that answers: one whose call fails before its first chunk arrives — no
/// connection, a 429 or 5xx, no answer within `attempt` while another upstream is left, a
/// stream that breaks off — is left for the next, and one whose breaker is open is skipped
/// (unless every one is). Nothing has reached the client before the first chunk, so trying
/// another upstream is invisible to it. Returns the stream (its first chunk read ahead) and
/// the index of the upstream that answers.
pub(crate) async fn open_chat(
    upstreams: &[Upstream],
    body: &Value,
    attempt: Duration,
    breakers: &Breakers,
) -> Result<(ChatStream, usize), UpstreamError> {
    let allowed: Vec<usize> = (0..upstreams.len()).filter(|&i| !breakers.skips(&upstreams[i].health_key)).collect();
    let order: Vec<usize> = if allowed.is_empty() { (0..upstreams.len()).collect() } else { allowed };
    let mut last = UpstreamError::server("the deployment names no connection");
    for (pos, &i) in order.iter().enumerate() {
        let upstream = &upstreams[i];
        let more = pos + 1 < order.len();
        let _probe = breakers.attempt(&upstream.health_key);
        let call = async {
            let mut chat = chat_stream(upstream, body).await?;
            let first = chat.next().await;
            Ok::<_, UpstreamError>((chat, first))
        };
        let outcome = if more {
            tokio::time::timeout(attempt, call).await.unwrap_or_else(|_| {
                Err(UpstreamError::server(format!("upstream model sent nothing within {attempt:?}")))
            })
        } else {
            call.await
        };
        let error = match outcome {
            Ok((mut chat, Some(Ok(chunk)))) => {
                chat.pending = Some(chunk);
                breakers.succeeded(&upstream.health_key);
                return Ok((chat, i));
            }
            Ok((chat, None)) => {
                breakers.succeeded(&upstream.health_key);
                return Ok((chat, i));
            }
            Ok((_, Some(Err(e)))) | Err(e) => e,
        };
        if !error.retryable {
            // The request's fault, not the upstream's: no other answers it, and the upstream's
            // health is not in question.
            return Err(error);
        }
        breakers.failed(&upstream.health_key);
        if !more {
            return Err(error);
        }
        tracing::warn!(connection = %upstream.connection, error = %error.message, "upstream failed before answering; trying the deployment's next connection");
        metrics::counter!("holdfast_upstream_fallbacks_total", "connection" => upstream.connection.clone()).increment(1);
        last = error;
    }
    Err(last)
}

/// At most `limit` bytes of a body, as text (the rest is not read).
async fn read_bounded(response: reqwest::Response, limit: usize) -> Result<String, String> {
    let mut body = std::pin::pin!(response.bytes_stream());
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| error_chain(&e))?;
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The message of a model API's JSON error object — `{"error": {"message": …}}` (OpenAI,
/// Azure OpenAI), `{"error": "…"}` (Ollama), `{"object": "error", "message": …}` (vLLM) —
/// clipped; `None` for any other body, whose contents are never repeated.
pub(crate) fn model_error_message(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let message = match v.get("error") {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => o.get("message")?.as_str()?,
        _ if v.get("object").and_then(Value::as_str) == Some("error") => v.get("message")?.as_str()?,
        _ => return None,
    };
    Some(clip(message))
}

/// The message of an error event inside a stream (its `message`, else nothing of it).
fn error_text(e: &Value) -> String {
    match e {
        Value::String(s) => clip(s),
        Value::Object(o) => o.get("message").and_then(Value::as_str).map(clip).unwrap_or_else(|| "(no message)".to_owned()),
        _ => "(no message)".to_owned(),
    }
}

fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_ERROR_CHARS {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(MAX_ERROR_CHARS).collect();
    out.push('…');
    out
}

/// An error with its causes: reqwest's own message alone says little ("error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_model_error_objects_are_quoted() {
        assert_eq!(model_error_message(r#"{"error":{"message":"model overloaded","type":"x"}}"#).as_deref(), Some("model overloaded"));
        assert_eq!(model_error_message(r#"{"error":"bad key"}"#).as_deref(), Some("bad key"));
        assert_eq!(model_error_message(r#"{"object":"error","message":"no such model"}"#).as_deref(), Some("no such model"));
        for other in [r#"{"detail":"Not Found"}"#, r#"{"secret":"s3cr3t"}"#, "<html>admin page</html>", "", "plain text"] {
            assert_eq!(model_error_message(other), None, "{other}");
        }
        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(5000));
        assert!(model_error_message(&long).expect("message").chars().count() <= MAX_ERROR_CHARS + 1);
    }

    #[test]
    fn chat_url_joins_the_target() {
        assert_eq!(chat_url("http://h:1/v1/"), "http://h:1/v1/chat/completions");
        assert_eq!(chat_url("http://h:1/v1"), "http://h:1/v1/chat/completions");
    }
}
