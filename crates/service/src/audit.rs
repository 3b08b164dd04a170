//! The audit log: every mutation and every denied request — who, what, at which scope, when,
//! from which address, with what outcome — in `control.db`, each entry hashing its
//! predecessor so an edited or removed entry is detected (`holdfast audit-log verify`).
//!
//! The API's authorization gate records each request once it is answered; a writer thread of
//! its own batches whatever is queued into one transaction (one fsync for many entries), so
//! auditing never holds a request. An entry is written after its response: a crash can lose the
//! last few entries (the changes themselves are in the project journals, with actor and request
//! id).

use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;

use holdfast_store::control::{self, AuditFilter, AuditRecord, ControlStore};
use holdfast_types::api::{AuditEntry, AuditPage, AuditVerify};
use holdfast_types::{Error, now_micros, parse_rfc3339, rfc3339};

use crate::auth::{Action, Caller};
use crate::{Result, Service};

/// How long the writer waits for more entries before it writes a batch.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);
/// Most entries one page returns.
const MAX_PAGE: usize = 1000;

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

/// The writer thread and the queue in front of it.
pub(crate) struct AuditLog {
    tx: Mutex<Option<mpsc::Sender<AuditRecord>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AuditLog {
    pub(crate) fn start(control: ControlStore) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<AuditRecord>();
        let writer = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Gather what arrives in the next few milliseconds too: under load one
                    // transaction (one fsync) takes hundreds of entries, and the audit's fsyncs
                    // stay out of the way of the projects' own.
                    std::thread::sleep(GATHER);
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    if let Err(e) = control.call_blocking(|c| control::append_audit(c, &mut batch)) {
                        tracing::error!(error = %e, lost = batch.len(), "cannot write audit entries");
                    }
                }
            })
            .map_err(|e| Error::internal(format!("cannot start the audit writer: {e}")))?;
        Ok(Self { tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)) })
    }

    fn send(&self, record: AuditRecord) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(record);
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

fn entry(r: AuditRecord) -> AuditEntry {
    AuditEntry {
        seq: r.seq,
        time: rfc3339(r.ts_us),
        principal: r.principal,
        method: r.method,
        route: r.route,
        path: r.path,
        scope: r.scope,
        action: r.action,
        address: r.address,
        status: r.status,
        outcome: r.outcome,
        request_id: r.request_id,
        hash: r.hash,
    }
}

/// Query of `holdfast audit-log`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// RFC 3339.
    pub since: Option<String>,
    pub until: Option<String>,
    pub principal: Option<String>,
    pub scope: Option<String>,
    pub after: Option<i64>,
    pub limit: Option<usize>,
}

impl Service {
    /// Queues a request for the audit log (returns at once).
    pub fn audit(&self, request: Audited) {
        let status = request.status;
        self.audit.send(AuditRecord {
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
        });
    }

    /// `GET /v1/audit`: entries by time, principal and scope, oldest first.
    pub async fn audit_log(&self, caller: &Caller, query: AuditQuery) -> Result<AuditPage> {
        caller.require(Action::AuditRead, "/")?;
        let time = |t: &Option<String>, what: &str| -> Result<Option<i64>> {
            t.as_deref()
                .map(|t| parse_rfc3339(t).ok_or_else(|| Error::invalid(format!("{what} must be an RFC 3339 time, got {t:?}"))))
                .transpose()
        };
        let limit = query.limit.unwrap_or(100);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Error::invalid(format!("limit must be between 1 and {MAX_PAGE}, got {limit}")));
        }
        let filter = AuditFilter {
            since_us: time(&query.since, "since")?,
            until_us: time(&query.until, "until")?,
            principal: query.principal,
            scope: query.scope,
            after_seq: query.after.unwrap_or(0),
            limit,
        };
        let rows = self.control.call(move |c| control::list_audit(c, &filter)).await.map_err(Error::from)?;
        let next_after = (rows.len() == limit).then(|| rows.last().map(|r| r.seq)).flatten();
        Ok(AuditPage { data: rows.into_iter().map(entry).collect(), next_after })
    }

    /// `holdfast audit-log verify`: walks the hash chain from the first entry.
    pub async fn audit_verify(&self, caller: &Caller) -> Result<AuditVerify> {
        caller.require(Action::AuditRead, "/")?;
        let (entries, bad) = self.control.call(control::verify_audit).await.map_err(Error::from)?;
        let message = match bad {
            None => format!("{entries} entries, the chain is intact"),
            Some(seq) => format!("entry {seq} does not match its hash or its predecessor: the log was changed there"),
        };
        Ok(AuditVerify { ok: bad.is_none(), entries, first_bad_seq: bad, message })
    }
}
