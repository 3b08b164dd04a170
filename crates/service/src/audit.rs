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

use std::time::{Duration, Instant};

use holdfast_archive::{AuditManifest, audit as archived};
use holdfast_store::control::{self, AuditChain, AuditFilter, AuditKey, AuditRecord, ControlStore};
use holdfast_types::api::{AuditArchiveCheck, AuditEntry, AuditPage, AuditVerify};
use holdfast_types::{Error, now_micros, parse_rfc3339, rfc3339};

use crate::auth::{Action, Caller};
use crate::{Result, Service};

/// The label of the audit chain's key, derived from the master key.
pub(crate) const AUDIT_KEY_LABEL: &str = "holdfast/audit-chain/v1";
/// How long the writer waits for more entries before it writes a batch.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);
/// Most entries one page returns.
const MAX_PAGE: usize = 1000;
/// Most entries one archived segment holds.
const SEGMENT_ENTRIES: usize = 10_000;
/// Longest a mutation's response waits for its audit entry to be durable.
const DURABLE_WAIT: Duration = Duration::from_secs(10);
/// Longest wait between retries when shipping the audit log fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
    key: AuditKey,
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

/// What the archiver remembers of the audit log between passes.
#[derive(Default)]
pub(crate) struct AuditShipping {
    manifest: Option<AuditManifest>,
    swept: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

/// An archived audit segment of `records`, built off the async runtime.
async fn encode(records: Vec<AuditRecord>) -> Result<(holdfast_archive::AuditSegmentMeta, Vec<u8>)> {
    tokio::task::spawn_blocking(move || archived::encode(&records))
        .await
        .map_err(|e| Error::internal(format!("audit segment task failed: {e}")))?
        .map_err(Error::from)
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
        self.audit.send(record_of(request), None);
    }

    /// Records a request in the audit log and returns once its entry is durable: the gate calls
    /// it for every mutation before the response leaves. The change itself is committed already,
    /// so a failure to write the entry is logged and counted, and the response still goes out
    /// (answering an error would invite a retry of a write that happened).
    pub async fn audit_durable(&self, request: Audited) {
        let (done, written) = tokio::sync::oneshot::channel();
        self.audit.send(record_of(request), Some(done));
        match tokio::time::timeout(DURABLE_WAIT, written).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("holdfast_audit_write_failures_total").increment(1);
                tracing::error!("a mutation's audit entry could not be made durable before its response");
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

impl Service {

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

    /// `holdfast audit-log verify`: walks the hash chain from the first entry and, when the
    /// server archives, the archived copy's chain, and checks that the local log still holds
    /// what was archived (so removing the newest entries is found too).
    pub async fn audit_verify(&self, caller: &Caller) -> Result<AuditVerify> {
        caller.require(Action::AuditRead, "/")?;
        let key = self.audit.key;
        let found = self.control.call(move |c| control::verify_audit(c, &key)).await.map_err(Error::from)?;
        let (entries, bad, unkeyed) = (found.entries, found.first_bad, found.unkeyed);
        let message = match bad {
            None if unkeyed > 0 => format!(
                "{entries} entries, the chain is intact; the first {unkeyed} predate the keyed chain and are proven \
                 only against the archive"
            ),
            None => format!("{entries} entries, the chain is intact"),
            Some(seq) => format!("entry {seq} does not match its MAC or its predecessor: the log was changed there"),
        };
        let archive = match &self.archiver {
            Some(archiver) => {
                // Shipping and merging wait meanwhile, so the segments read are the manifest's.
                let _shipping = archiver.audit.lock().await;
                Some(self.check_archived_audit(&archiver.archive).await?)
            }
            None => None,
        };
        let ok = bad.is_none() && archive.as_ref().is_none_or(|a| a.ok);
        Ok(AuditVerify { ok, entries, first_bad_seq: bad, unkeyed_entries: unkeyed, message, archive })
    }

    /// Walks the archived audit log's chain, then compares its newest entry with the local one.
    async fn check_archived_audit(&self, archive: &holdfast_archive::Archive) -> Result<AuditArchiveCheck> {
        let failed = |entries, message: String| AuditArchiveCheck { ok: false, url: archive.url().to_owned(), entries, message };
        let manifest = match archive.audit_manifest(&self.region).await {
            Ok(m) => m.unwrap_or_default(),
            Err(e) => return Ok(failed(0, format!("cannot read the archived audit log: {e}"))),
        };
        let mut chain = AuditChain::new(self.audit.key);
        for segment in &manifest.segments {
            let records = match archive.read_audit_segment(&self.region, segment).await {
                Ok(records) => records,
                Err(e) => return Ok(failed(chain.count, e.to_string())),
            };
            if let Some(r) = records.iter().find(|r| !chain.push(r)) {
                return Ok(failed(chain.count, format!("archived entry {} does not match its hash or its predecessor", r.seq)));
            }
        }
        if chain.count as i64 != manifest.shipped_seq || chain.last_hash() != manifest.last_hash {
            return Ok(failed(
                chain.count,
                format!("the archived segments end at entry {}, the audit manifest says {}", chain.count, manifest.shipped_seq),
            ));
        }
        if manifest.shipped_seq == 0 {
            return Ok(AuditArchiveCheck { ok: true, url: archive.url().to_owned(), entries: 0, message: "nothing archived yet".into() });
        }
        // The chain makes one comparison enough: a local entry with the archived hash at the
        // archived end proves every entry before it equal too.
        let shipped = manifest.shipped_seq;
        let filter = AuditFilter { after_seq: shipped - 1, limit: 1, ..AuditFilter::default() };
        let local = self.control.call(move |c| control::list_audit(c, &filter)).await.map_err(Error::from)?;
        let message = match local.first() {
            Some(r) if r.seq == shipped && r.hash == manifest.last_hash => {
                return Ok(AuditArchiveCheck {
                    ok: true,
                    url: archive.url().to_owned(),
                    entries: chain.count,
                    message: format!("{} archived entries, the chain is intact and the local log holds them all", chain.count),
                });
            }
            Some(r) if r.seq == shipped => format!("local entry {shipped} differs from the archived one: the local log was changed"),
            _ => format!("the archive holds {shipped} entries but the local log lacks entry {shipped}: entries were removed"),
        };
        Ok(failed(chain.count, message))
    }

    /// Ships the audit log's new entries to the archive (called by every archiver pass), then
    /// merges closed hours. Failures back off and are logged; the log itself is untouched.
    pub(crate) async fn ship_audit(&self, archiver: &crate::backup::Archiver) {
        let mut shipping = archiver.audit.lock().await;
        if shipping.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        match self.ship_audit_step(&archiver.archive, &mut shipping).await {
            Ok(()) => {
                shipping.failures = 0;
                shipping.retry_at = None;
            }
            Err(e) => {
                shipping.failures += 1;
                let backoff = Duration::from_secs(1 << shipping.failures.min(5)).min(MAX_BACKOFF);
                shipping.retry_at = Some(Instant::now() + backoff);
                shipping.manifest = None;
                tracing::warn!(error = %e, retry_in = ?backoff, "archiving the audit log failed");
                metrics::counter!("holdfast_audit_archive_failures_total").increment(1);
            }
        }
    }

    async fn ship_audit_step(&self, archive: &holdfast_archive::Archive, shipping: &mut AuditShipping) -> Result<()> {
        if shipping.manifest.is_none() {
            shipping.manifest = Some(archive.audit_manifest(&self.region).await.map_err(Error::from)?.unwrap_or_default());
        }
        let manifest = shipping.manifest.as_mut().ok_or_else(|| Error::internal("audit manifest vanished"))?;
        if !shipping.swept {
            archive.sweep_audit(&self.region, manifest).await.map_err(Error::from)?;
            shipping.swept = true;
        }
        loop {
            let filter = AuditFilter { after_seq: manifest.shipped_seq, limit: SEGMENT_ENTRIES, ..AuditFilter::default() };
            let records = self.control.call(move |c| control::list_audit(c, &filter)).await.map_err(Error::from)?;
            if records.is_empty() {
                break;
            }
            // Ship only a log that continues what was archived: a changed local log is for
            // `audit-log verify` to report, not for the archive to take in.
            let mut chain = AuditChain::after(manifest.shipped_seq, &manifest.last_hash, self.audit.key);
            if let Some(r) = records.iter().find(|r| !chain.push(r)) {
                return Err(Error::internal(format!(
                    "local audit entry {} does not continue the archived log: the log was changed; run `holdfast audit-log verify`",
                    r.seq
                )));
            }
            let last_hash = chain.last_hash().to_owned();
            let (meta, bytes) = encode(records).await?;
            archive.put_audit_segment(&self.region, &meta, bytes).await.map_err(Error::from)?;
            manifest.shipped_seq = meta.last_seq;
            manifest.last_hash = last_hash;
            manifest.segments.push(meta);
            archive.save_audit_manifest(&self.region, manifest).await.map_err(Error::from)?;
        }
        while let Some(range) = manifest.next_merge() {
            let run = manifest.segments[range.clone()].to_vec();
            let mut records = Vec::new();
            for segment in &run {
                records.extend(archive.read_audit_segment(&self.region, segment).await.map_err(Error::from)?);
            }
            let (merged, bytes) = encode(records).await?;
            archive.put_audit_segment(&self.region, &merged, bytes).await.map_err(Error::from)?;
            manifest.segments.splice(range, [merged]);
            archive.save_audit_manifest(&self.region, manifest).await.map_err(Error::from)?;
            for old in &run {
                archive.delete_audit_segment(&self.region, old).await.map_err(Error::from)?;
            }
        }
        Ok(())
    }
}
