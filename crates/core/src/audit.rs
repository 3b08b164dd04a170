//! The audit log: every mutation, every denied request and every request no route matched —
//! who, what, at which scope, when, from which address, with what outcome — in `control.db`,
//! each entry chained to its predecessor by an HMAC-SHA-256 under a key derived from the node's
//! master key (kept apart from `control.db`), so an edited, reordered or removed entry is
//! detected (`holdfast audit-log verify`), and a rewritten chain cannot be made to verify by
//! whoever can write `control.db` but lacks the master key.
//!
//! The API's authorization gate records each request once it is answered. A mutation's entry is
//! durable before its response is sent ([`Service::audit_durable`]); a writer thread of its own
//! batches whatever is queued into one transaction (one fsync for many entries). Refusals and
//! unmatched requests are queued without waiting, after a short gathering delay, so a crash can
//! lose the last few milliseconds of those.

use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;

use std::time::Duration;

use holdfast_store::control::{self, AuditKey, AuditRecord, ControlStore};
use holdfast_types::{Error, now_micros};

use crate::{Result, Service};

/// The label of the audit chain's key, derived from the master key.
pub const AUDIT_KEY_LABEL: &str = "holdfast/audit-chain/v1";
/// How long the writer waits for more entries before it writes a batch.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);
/// Longest a mutation's response waits for its audit entry to be durable.
const DURABLE_WAIT: Duration = Duration::from_secs(10);

/// A request as the gate saw it, to be audited.
#[derive(Clone, Debug, Default)]
pub struct Audited {
    pub principal: String,
    pub method: String,
    pub route: String,
    pub path: String,
    pub scope: String,
    pub action: String,
    pub address: String,
    pub status: u16,
    pub request_id: String,
}

/// An entry for the writer, with whoever waits for it to be durable.
struct Queued {
    record: AuditRecord,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The writer thread and the queue in front of it.
pub(crate) struct AuditLog {
    tx: Mutex<Option<mpsc::Sender<Queued>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The chain's MAC key, for verifying.
    pub(crate) key: AuditKey,
}

impl AuditLog {
    pub(crate) fn start(control: ControlStore, key: AuditKey) -> Result<Self> {
        let sealed = control.call_blocking(|c| control::seal_audit_keying(c, &key)).map_err(Error::from)?;
        if let Some(until) = sealed.filter(|n| *n > 0) {
            tracing::warn!(entries = until, "the audit chain is keyed from now on; its first entries carry plain hashes");
        }
        let (tx, rx) = mpsc::channel::<Queued>();
        let writer = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Nobody waits for a refusal's entry: gather what arrives in the next few
                    // milliseconds too, so a flood of them costs one transaction (one fsync) per
                    // batch. A mutation's entry is written at once; those that queue meanwhile
                    // share the next transaction.
                    if first.done.is_none() {
                        std::thread::sleep(GATHER);
                    }
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let (mut records, waiters): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.record, q.done)).unzip();
                    match control.call_blocking(|c| control::append_audit(c, &mut records, &key)) {
                        Ok(()) => waiters.into_iter().flatten().for_each(|w| {
                            let _ = w.send(());
                        }),
                        Err(e) => tracing::error!(error = %e, lost = records.len(), "cannot write audit entries"),
                    }
                }
            })
            .map_err(|e| Error::internal(format!("cannot start the audit writer: {e}")))?;
        Ok(Self { tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), key })
    }

    fn send(&self, record: AuditRecord, done: Option<tokio::sync::oneshot::Sender<()>>) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(Queued { record, done });
        }
    }

    /// Writes what is queued and stops the writer.
    pub(crate) fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

fn outcome(status: u16) -> &'static str {
    match status {
        401 | 403 => "denied",
        s if s >= 400 => "error",
        _ => "ok",
    }
}

impl Service {
    /// Queues a request for the audit log (returns at once).
    pub fn audit(&self, request: Audited) {
        self.audit.send(record_of(request), None);
    }

    /// Records a request in the audit log and returns once its entry is durable: the gate calls
    /// it for every mutation before the response leaves. The change itself is committed already,
    /// so a failure to write the entry is logged and counted, and the response still goes out
    /// (answering an error would invite a retry of a write that happened).
    /// Returns whether the entry is durable.
    pub async fn audit_durable(&self, request: Audited) -> bool {
        let (done, written) = tokio::sync::oneshot::channel();
        self.audit.send(record_of(request), Some(done));
        match tokio::time::timeout(DURABLE_WAIT, written).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("holdfast_audit_write_failures_total").increment(1);
                tracing::error!("a mutation's audit entry could not be made durable before its response");
                false
            }
        }
    }
}

fn record_of(request: Audited) -> AuditRecord {
    let status = request.status;
    AuditRecord {
            seq: 0,
            ts_us: now_micros(),
            principal: request.principal,
            method: request.method,
            route: request.route,
            path: request.path,
            scope: request.scope,
            action: request.action,
            address: request.address,
            status,
            outcome: outcome(status).to_owned(),
        request_id: request.request_id,
        prev_hash: String::new(),
        hash: String::new(),
    }
}
