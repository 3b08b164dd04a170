//! Idempotency keys: a write sent again with the same `Idempotency-Key` writes nothing and gets
//! the first answer, in any region, before and after a failover or a restore.
//!
//! The HTTP layer runs a keyed request inside [`keyed`]; the first [`crate::Data::commit`] of
//! that request adds, to the same change as the write, a `idempotency_key` resource `idem:{key}`
//! holding the request's fingerprint, refused there (on the writer, so two racing requests
//! cannot both write) when a live record of the key exists already. Once the handler has
//! answered, [`Service::record_answer`] journals the answer on the record. A retry looks the
//! record up ([`Service::idempotent_answer`]): same fingerprint, the recorded answer; another
//! fingerprint, refused. The record rides the journal, so it replicates, fails over, is
//! archived and restored like everything else; it lives [`KEEP`] and is then written over.

use std::cell::RefCell;
use std::future::Future;

use holdfast_types::{Error, Kind, Lsn, Micros, Op, now_micros};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Result, Service};

/// How long a key is remembered: OpenAI's 24 hours.
pub const KEEP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The resource id of a key.
pub fn record_id(key: &str) -> String {
    format!("idem:{key}")
}

/// A keyed request being served.
#[derive(Clone, Debug)]
struct Pending {
    key: String,
    fingerprint: String,
    /// The LSN of the change its record went into, once journaled.
    journaled: Option<Lsn>,
    taken: bool,
}

tokio::task_local! {
    static PENDING: RefCell<Option<Pending>>;
}

/// Runs `f` (a handler) as the keyed request `key` with `fingerprint`; returns its output and
/// the LSN of the change that journaled the key, when one did.
pub async fn keyed<F: Future>(key: String, fingerprint: String, f: F) -> (F::Output, Option<Lsn>) {
    let cell = RefCell::new(Some(Pending { key, fingerprint, journaled: None, taken: false }));
    PENDING
        .scope(cell, async {
            let out = f.await;
            let lsn = PENDING.with(|p| p.borrow().as_ref().and_then(|p| p.journaled));
            (out, lsn)
        })
        .await
}

/// The key of the request being served, taken by its first commit: `(key, fingerprint)`.
pub(crate) fn take() -> Option<(String, String)> {
    PENDING
        .try_with(|p| {
            let mut p = p.borrow_mut();
            let pending = p.as_mut().filter(|p| !p.taken)?;
            pending.taken = true;
            Some((pending.key.clone(), pending.fingerprint.clone()))
        })
        .ok()
        .flatten()
}

/// Gives the key back when the commit that took it wrote nothing: the next one journals it.
pub(crate) fn untake() {
    let _ = PENDING.try_with(|p| {
        if let Some(p) = p.borrow_mut().as_mut() {
            p.taken = false;
        }
    });
}

/// Notes the LSN of the change that journaled the key.
pub(crate) fn journaled(lsn: Lsn) {
    let _ = PENDING.try_with(|p| {
        if let Some(p) = p.borrow_mut().as_mut() {
            p.journaled = Some(lsn);
        }
    });
}

/// A key's record as journaled.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub fingerprint: String,
    pub at_us: Micros,
    /// The answer, once recorded: status, content type, body.
    #[serde(default)]
    pub answer: Option<Answer>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// What a retry gets.
pub enum Outcome {
    /// No live record: serve the request.
    New,
    /// The same request was served: its answer.
    Replay(Answer),
    /// The same request's write is committed but its answer was not kept (a stream, a crash
    /// between the two): it must not be written again.
    CommittedWithoutAnswer,
}

/// How many of the oldest records each keyed write looks at, deleting the expired ones: the
/// records kept stay those of the last [`KEEP`].
const SWEEP: usize = 8;

/// The ops that journal `key` in the write's change (refused when a live record exists), and
/// delete the oldest expired records.
pub(crate) fn record_ops(view: &holdfast_store::StateView<'_>, key: &str, fingerprint: &str, now: Micros) -> Result<Vec<Op>> {
    let mut ops = vec![record_op(view, key, fingerprint, now)?];
    let oldest = view.list(Kind::IdempotencyKey, None, None, SWEEP, holdfast_store::Order::Asc).map_err(Error::from)?;
    for r in oldest {
        let expired = serde_json::from_value::<Record>(r.body).is_ok_and(|rec| !live(&rec, now));
        if expired && r.id != record_id(key) {
            ops.insert(0, Op::Delete { kind: Kind::IdempotencyKey, id: r.id });
        }
    }
    Ok(ops)
}

fn record_op(view: &holdfast_store::StateView<'_>, key: &str, fingerprint: &str, now: Micros) -> Result<Op> {
    let id = record_id(key);
    if let Some(existing) = view.get(Kind::IdempotencyKey, &id).map_err(Error::from)?
        && let Ok(record) = serde_json::from_value::<Record>(existing.body)
        && live(&record, now)
    {
        return Err(Error::conflict(format!(
            "a request with Idempotency-Key {key:?} was served already or is being served; send a new key for a new request"
        )));
    }
    let body = serde_json::to_value(Record { fingerprint: fingerprint.to_owned(), at_us: now, answer: None })
        .map_err(|e| Error::internal(e.to_string()))?;
    Ok(Op::Put { kind: Kind::IdempotencyKey, id, parent: None, body })
}

fn live(record: &Record, now: Micros) -> bool {
    now - record.at_us < KEEP.as_micros() as Micros
}

impl Service {
    /// What a request with `key` and `fingerprint` gets on `store`.
    pub async fn idempotent_answer(&self, project: &str, key: &str, fingerprint: &str) -> Result<Outcome> {
        let store = self.project_store(project).await?;
        let id = record_id(key);
        let found = store.read(move |view| view.get(Kind::IdempotencyKey, &id)).await.map_err(Error::from)?;
        let Some(found) = found else { return Ok(Outcome::New) };
        let record: Record = serde_json::from_value(found.body).map_err(|e| Error::internal(format!("bad idempotency record: {e}")))?;
        if !live(&record, now_micros()) {
            return Ok(Outcome::New);
        }
        if record.fingerprint != fingerprint {
            return Err(Error::new(
                holdfast_types::ErrorKind::Unprocessable,
                format!("Idempotency-Key {key:?} was used for another request (another method, path or body); send a new key"),
            ));
        }
        Ok(match record.answer {
            Some(answer) => Outcome::Replay(answer),
            None => Outcome::CommittedWithoutAnswer,
        })
    }

    /// Journals the answer a keyed request got, for its retries (as the system: bookkeeping of
    /// a write that passed its checks already).
    pub async fn record_answer(&self, project: &str, key: &str, answer: Answer) -> Result<()> {
        let store = self.project_store(project).await?;
        let id = record_id(key);
        let patch = json!({ "answer": answer });
        self.commit_repair(&store, Box::new(move |view| {
            Ok(if view.get(Kind::IdempotencyKey, &id)?.is_some() {
                vec![Op::Patch { kind: Kind::IdempotencyKey, id, patch }]
            } else {
                Vec::new()
            })
        }))
        .await
        .map(drop)
    }
}
