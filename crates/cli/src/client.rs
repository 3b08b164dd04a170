//! The HTTP client behind the CLI's client commands.

use std::time::Duration;

use anyhow::anyhow;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Exit;

pub struct Client {
    http: reqwest::Client,
    endpoints: Vec<String>,
    key: Option<String>,
}

impl Client {
    pub fn new(endpoints: Vec<String>, key: Option<String>) -> Result<Self, Exit> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("holdfast-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Exit::error(anyhow!("cannot build HTTP client: {e}")))?;
        let endpoints = endpoints.into_iter().map(|e| e.trim_end_matches('/').to_owned()).collect();
        Ok(Self { http, endpoints, key })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Exit> {
        self.send(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Exit> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Exit> {
        self.send(Method::PATCH, path, Some(body)).await
    }

    /// A POST whose answer has no body (204).
    pub async fn post_empty<B: Serialize>(&self, path: &str, body: &B) -> Result<(), Exit> {
        self.send::<B, Value>(Method::POST, path, Some(body)).await.map(|_| ())
    }

    pub async fn delete(&self, path: &str) -> Result<(), Exit> {
        self.send::<(), Value>(Method::DELETE, path, None).await.map(|_| ())
    }

    /// A DELETE whose answer has a body.
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Exit> {
        self.send::<(), T>(Method::DELETE, path, None).await
    }

    /// Sends a request whose body `body` makes (once per endpoint tried), with no overall
    /// time limit (exports and imports may be large); an error status is decoded as usual.
    /// `length`, when known, is announced as the body's `Content-Length`, so the server can
    /// refuse a body it cannot take before it is sent.
    pub async fn stream(
        &self,
        method: Method,
        path: &str,
        length: Option<u64>,
        body: impl Fn() -> Result<Option<reqwest::Body>, Exit>,
    ) -> Result<reqwest::Response, Exit> {
        let mut last_error = None;
        for endpoint in &self.endpoints {
            let mut request =
                self.http.request(method.clone(), format!("{endpoint}{path}")).timeout(Duration::from_secs(7 * 24 * 3600));
            if let Some(key) = &self.key {
                request = request.bearer_auth(key);
            }
            if let Some(body) = body()? {
                request = request.header(reqwest::header::CONTENT_TYPE, "application/x-ndjson").body(body);
                if let Some(length) = length {
                    request = request.header(reqwest::header::CONTENT_LENGTH, length);
                }
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => return Err(decode::<Value>(response).await.err().unwrap_or_else(|| Exit::error(anyhow!("unexpected response")))),
                Err(e) if e.is_connect() => last_error = Some(format!("{endpoint}: {e}")),
                Err(e) => return Err(Exit::error(anyhow!("request to {endpoint} failed: {e}"))),
            }
        }
        Err(Exit::error(anyhow!(
            "no endpoint answered ({})",
            last_error.unwrap_or_else(|| "no endpoint configured".into())
        )))
    }

    /// Sends to each endpoint in turn until one answers; only a failure to connect moves on to
    /// the next, so a request is never sent twice. A write carries one fresh `Idempotency-Key`
    /// to every endpoint it tries, so even one that took it before the connection broke does
    /// not write it twice.
    async fn send<B: Serialize, T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&B>) -> Result<T, Exit> {
        let mut last_error = None;
        let idempotency = (method != Method::GET).then(|| format!("holdfast-cli-{}", ulid::Ulid::generate().to_string().to_lowercase()));
        for endpoint in &self.endpoints {
            let mut request = self.http.request(method.clone(), format!("{endpoint}{path}"));
            if let Some(key) = &self.key {
                request = request.bearer_auth(key);
            }
            if let Some(idempotency) = &idempotency {
                request = request.header("Idempotency-Key", idempotency);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) => return decode(response).await,
                Err(e) if e.is_connect() => last_error = Some(format!("{endpoint}: {e}")),
                Err(e) => return Err(Exit::error(anyhow!("request to {endpoint} failed: {e}"))),
            }
        }
        Err(Exit::error(anyhow!(
            "no endpoint answered ({})",
            last_error.unwrap_or_else(|| "no endpoint configured".into())
        )))
    }
}

/// A user-supplied path segment or query value, percent-encoded, so that a name can never
/// change which route a request goes to (`a/../../keys/key_…` stays one segment).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, Exit> {
    let status = response.status();
    let text = response.text().await.map_err(|e| Exit::error(anyhow!("cannot read response: {e}")))?;
    if status.is_success() {
        let text = if text.is_empty() { "null" } else { &text };
        return serde_json::from_str(text).map_err(|e| Exit::error(anyhow!("unexpected response ({status}): {e}")));
    }
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or(text);
    Err(Exit::new(exit_code(status), anyhow!("{message} (HTTP {})", status.as_u16())))
}

/// The documented exit codes: 3 not found, 4 conflict or locked, 5 unauthorized or forbidden.
fn exit_code(status: StatusCode) -> i32 {
    match status.as_u16() {
        404 => 3,
        409 | 423 => 4,
        401 | 403 => 5,
        _ => 1,
    }
}
