//! Calls to upstream models: `POST {target}/chat/completions` on an OpenAI-compatible server,
//! streamed (`stream: true`), read as server-sent events one chunk at a time.
//!
//! Every failure — no connection, an HTTP error, a stream that breaks off or does not parse, an
//! error event inside the stream — becomes an [`UpstreamError`] carrying the upstream's own
//! message, which the response that made the call reports as its `error`. Time limits are the
//! caller's: it races [`ChatStream::next`] against its deadline.

use std::pin::Pin;
use std::sync::LazyLock;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde_json::Value;

use super::connections::Upstream;
use super::translate::completion_as_chunk;

/// Longest upstream error body kept in a message.
const MAX_ERROR_CHARS: usize = 2000;

/// One HTTP client for every upstream call: it pools connections per host.
static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("holdfast/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
});

/// Why an upstream call failed, in the shape of a response's `error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UpstreamError {
    /// A Responses error code: `rate_limit_exceeded` for HTTP 429, `invalid_prompt` for 400,
    /// `server_error` otherwise.
    pub code: &'static str,
    pub message: String,
}

impl UpstreamError {
    pub(crate) fn server(message: impl Into<String>) -> Self {
        Self { code: "server_error", message: message.into() }
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

/// The chunks of one streamed chat completion.
pub(crate) struct ChatStream {
    source: Source,
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
                    "upstream model sent a malformed stream event: {}",
                    clip(data)
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
    let url = chat_url(&upstream.target);
    let mut request = CLIENT.post(&url).json(body).header(reqwest::header::ACCEPT, "text/event-stream");
    if let Some(key) = upstream.api_key.as_deref() {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|e| {
        UpstreamError::server(format!("cannot reach the upstream model at {url}: {}", error_chain(&e)))
    })?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let code = match status.as_u16() {
            429 => "rate_limit_exceeded",
            400 => "invalid_prompt",
            _ => "server_error",
        };
        return Err(UpstreamError {
            code,
            message: format!("upstream model returned HTTP {}: {}", status.as_u16(), error_message(&text)),
        });
    }
    let is_sse = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        // An upstream that ignored `stream: true` and answered with the whole completion.
        let text = response
            .text()
            .await
            .map_err(|e| UpstreamError::server(format!("upstream model answer broke off: {}", error_chain(&e))))?;
        let completion: Value = serde_json::from_str(&text).map_err(|_| {
            UpstreamError::server(format!("upstream model sent neither an event stream nor JSON: {}", clip(&text)))
        })?;
        if let Some(e) = completion.get("error") {
            return Err(UpstreamError::server(format!("upstream model error: {}", error_text(e))));
        }
        if completion.get("choices").is_none() {
            return Err(UpstreamError::server(format!("upstream model sent no choices: {}", clip(&text))));
        }
        let chunk = completion_as_chunk(&completion);
        return Ok(ChatStream { source: Source::Whole(Some(chunk)), finished: true, over: false });
    }
    let events = response.bytes_stream().eventsource().map(|r| r.map_err(|e| e.to_string()));
    Ok(ChatStream { source: Source::Events(Box::pin(events)), finished: false, over: false })
}

/// The message an upstream put in its error body (`{"error": {"message"}}`, `{"message"}`,
/// `{"detail"}`, `{"error": "…"}`), else the body itself.
pub(crate) fn error_message(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => {
            let found = v
                .get("error")
                .map(error_text)
                .or_else(|| v.get("message").or(v.get("detail")).and_then(Value::as_str).map(str::to_owned));
            found.unwrap_or_else(|| clip(body))
        }
        Err(_) if body.trim().is_empty() => "(empty body)".to_owned(),
        Err(_) => clip(body.trim()),
    }
}

fn error_text(e: &Value) -> String {
    match e {
        Value::String(s) => clip(s),
        Value::Object(o) => match o.get("message").and_then(Value::as_str) {
            Some(m) => clip(m),
            None => clip(&e.to_string()),
        },
        other => clip(&other.to_string()),
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
    fn error_bodies_yield_the_upstream_message() {
        assert_eq!(error_message(r#"{"error":{"message":"model overloaded","type":"x"}}"#), "model overloaded");
        assert_eq!(error_message(r#"{"error":"bad key"}"#), "bad key");
        assert_eq!(error_message(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(error_message("plain text\n"), "plain text");
        assert_eq!(error_message(""), "(empty body)");
        assert!(error_message(&"x".repeat(5000)).chars().count() <= MAX_ERROR_CHARS + 1);
    }

    #[test]
    fn chat_url_joins_the_target() {
        assert_eq!(chat_url("http://h:1/v1/"), "http://h:1/v1/chat/completions");
        assert_eq!(chat_url("http://h:1/v1"), "http://h:1/v1/chat/completions");
    }
}
