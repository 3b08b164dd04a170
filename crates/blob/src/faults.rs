//! A fault-injecting wrapper around any `ObjectStore`, for fault tests against the real binary
//! (in the manner of Neon's `UnreliableWrapper`). It is switched on only by the environment
//! variable `HOLDFAST_OBJECT_FAULTS`, and the server says so loudly in its log when it is.
//!
//! The variable holds rules separated by `;`, each `OP[:MATCH]=ACTION`:
//!
//! - `OP` is `put`, `get`, `delete`, `list` or `any`;
//! - `MATCH`, if given, must occur in the object's path (`segments/`, `snapshots/`, `blobs/`…);
//! - `ACTION` is `fail` (the call returns an error, nothing is done) or `delay:MS`. A delayed
//!   `put` stores the object first and then waits before returning, so a process killed during
//!   the wait leaves an object behind that its caller never heard of — the worst moment for a
//!   crash. Other delayed calls wait first.
//!
//! Example: `put:snapshots/=delay:3000;get:segments/=fail`.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use crate::BlobError;

/// The environment variable that switches fault injection on.
pub const FAULTS_ENV: &str = "HOLDFAST_OBJECT_FAULTS";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Put,
    Get,
    Delete,
    List,
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Fail,
    Delay(Duration),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    call: Call,
    matching: String,
    action: Action,
}

/// Parsed `HOLDFAST_OBJECT_FAULTS` rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    rules: Vec<Rule>,
}

impl Faults {
    /// The rules in `HOLDFAST_OBJECT_FAULTS`, or `None` when it is unset or empty.
    pub fn from_env() -> Result<Option<Self>, BlobError> {
        match std::env::var(FAULTS_ENV) {
            Ok(spec) if !spec.trim().is_empty() => Self::parse(&spec).map(Some),
            _ => Ok(None),
        }
    }

    pub fn parse(spec: &str) -> Result<Self, BlobError> {
        let bad = |rule: &str, why: &str| BlobError::BadUrl(format!("{FAULTS_ENV} rule {rule:?}: {why}"));
        let mut rules = Vec::new();
        for rule in spec.split(';').map(str::trim).filter(|r| !r.is_empty()) {
            let (target, action) = rule.split_once('=').ok_or_else(|| bad(rule, "expected OP[:MATCH]=ACTION"))?;
            let (call, matching) = target.split_once(':').unwrap_or((target, ""));
            let call = match call {
                "put" => Call::Put,
                "get" => Call::Get,
                "delete" => Call::Delete,
                "list" => Call::List,
                "any" => Call::Any,
                _ => return Err(bad(rule, "OP must be put, get, delete, list or any")),
            };
            let action = match action.split_once(':') {
                None if action == "fail" => Action::Fail,
                Some(("delay", ms)) => Action::Delay(Duration::from_millis(
                    ms.parse().map_err(|_| bad(rule, "delay takes milliseconds, e.g. delay:500"))?,
                )),
                _ => return Err(bad(rule, "ACTION must be fail or delay:MS")),
            };
            rules.push(Rule { call, matching: matching.to_owned(), action });
        }
        Ok(Self { rules })
    }

    /// The first rule that applies to `call` on `path`.
    fn action(&self, call: Call, path: &str) -> Option<Action> {
        self.rules
            .iter()
            .find(|r| (r.call == call || r.call == Call::Any) && path.contains(&r.matching))
            .map(|r| r.action)
    }
}

/// An object store that fails or delays the calls its [`Faults`] name.
#[derive(Debug)]
pub struct Unreliable {
    inner: Arc<dyn ObjectStore>,
    faults: Faults,
}

impl Unreliable {
    pub fn new(inner: Arc<dyn ObjectStore>, faults: Faults) -> Self {
        Self { inner, faults }
    }

    /// Applies the rule for a call that waits first (anything but a put).
    async fn before(&self, call: Call, path: &str) -> Result<()> {
        match self.faults.action(call, path) {
            Some(Action::Fail) => Err(injected(call, path)),
            Some(Action::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

fn injected(call: Call, path: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "unreliable",
        source: format!("injected fault: {call:?} {path} ({FAULTS_ENV})").into(),
    }
}

impl fmt::Display for Unreliable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Unreliable({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Unreliable {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let action = self.faults.action(Call::Put, location.as_ref());
        if action == Some(Action::Fail) {
            return Err(injected(Call::Put, location.as_ref()));
        }
        let result = self.inner.put_opts(location, payload, opts).await?;
        if let Some(Action::Delay(d)) = action {
            tokio::time::sleep(d).await;
        }
        Ok(result)
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.before(Call::Put, location.as_ref()).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.before(Call::Get, location.as_ref()).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.before(Call::Get, location.as_ref()).await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let faults = self.faults.clone();
        let checked = locations
            .then(move |location| {
                let faults = faults.clone();
                async move {
                    let location = location?;
                    match faults.action(Call::Delete, location.as_ref()) {
                        Some(Action::Fail) => Err(injected(Call::Delete, location.as_ref())),
                        Some(Action::Delay(d)) => {
                            tokio::time::sleep(d).await;
                            Ok(location)
                        }
                        None => Ok(location),
                    }
                }
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let path = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.faults.action(Call::List, &path) {
            Some(Action::Fail) => futures::stream::once(async move { Err(injected(Call::List, &path)) }).boxed(),
            Some(Action::Delay(d)) => {
                let inner = self.inner.list(prefix);
                futures::stream::once(tokio::time::sleep(d)).map(|()| futures::stream::empty()).flatten().chain(inner).boxed()
            }
            None => self.inner.list(prefix),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.before(Call::List, prefix.map(Path::as_ref).unwrap_or_default()).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.before(Call::Put, to.as_ref()).await?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.before(Call::Put, to.as_ref()).await?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    #[test]
    fn rules_parse_and_bad_ones_are_named() {
        let faults = Faults::parse("put:snapshots/=delay:250; get=fail").expect("parse");
        assert_eq!(faults.action(Call::Put, "p/snapshots/1.db.zst"), Some(Action::Delay(Duration::from_millis(250))));
        assert_eq!(faults.action(Call::Put, "p/segments/1.seg.zst"), None);
        assert_eq!(faults.action(Call::Get, "anything"), Some(Action::Fail));
        for bad in ["put", "copy=fail", "put=explode", "get=delay:soon"] {
            let e = Faults::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(FAULTS_ENV) && e.contains(bad), "{e}");
        }
    }

    #[tokio::test]
    async fn a_failed_put_stores_nothing_and_a_failed_get_reads_nothing() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = Unreliable::new(inner.clone(), Faults::parse("put:bad/=fail;get:seg=fail").expect("parse"));
        let bad = Path::from("p/bad/x");
        assert!(store.put(&bad, Bytes::from_static(b"x").into()).await.is_err());
        assert!(matches!(inner.head(&bad).await, Err(object_store::Error::NotFound { .. })));
        let seg = Path::from("p/seg/1");
        store.put(&seg, Bytes::from_static(b"y").into()).await.expect("put passes");
        assert!(inner.head(&seg).await.is_ok());
        let e = store.get(&seg).await.expect_err("get fails").to_string();
        assert!(e.contains("injected fault"), "{e}");
    }
}
