//! Shipping the audit log to the archive: every archiver pass sends the entries written since
//! the last one as a segment, then merges closed hours. Only a log that continues what was
//! archived is shipped; a changed local log is for `audit-log verify` to report.

use std::time::{Duration, Instant};

use holdfast_archive::{AuditManifest, audit as archived};
use holdfast_core::Result;
use holdfast_store::control::{self, AuditChain, AuditFilter, AuditRecord};
use holdfast_types::Error;
use holdfast_types::api::AuditArchiveCheck;

use crate::Recovery;

/// Most entries one archived segment holds.
const SEGMENT_ENTRIES: usize = 10_000;
/// Longest wait between retries when shipping the audit log fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the archiver remembers of the audit log between passes.
#[derive(Default)]
pub struct AuditShipping {
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

impl Recovery {
    /// The archived audit log's check for `audit-log verify`: its chain walked, its newest
    /// entry compared with the local log's; `None` when the server does not archive.
    pub async fn verify_archived_audit(&self) -> Result<Option<AuditArchiveCheck>> {
        let Some(archiver) = &self.archiver else { return Ok(None) };
        // Shipping and merging wait meanwhile, so the segments read are the manifest's.
        let _shipping = archiver.audit.lock().await;
        Ok(Some(self.check_archived_audit(&archiver.archive).await?))
    }

    /// Walks the archived audit log's chain, then compares its newest entry with the local one.
    async fn check_archived_audit(&self, archive: &holdfast_archive::Archive) -> Result<AuditArchiveCheck> {
        let failed = |entries, message: String| AuditArchiveCheck { ok: false, url: archive.url().to_owned(), entries, message };
        let manifest = match archive.audit_manifest(&self.core.region()).await {
            Ok(m) => m.unwrap_or_default(),
            Err(e) => return Ok(failed(0, format!("cannot read the archived audit log: {e}"))),
        };
        let mut chain = AuditChain::new(self.core.audit_key());
        for segment in &manifest.segments {
            let records = match archive.read_audit_segment(&self.core.region(), segment).await {
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
        let local = self.core.control().call(move |c| control::list_audit(c, &filter)).await.map_err(Error::from)?;
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
    pub(crate) async fn ship_audit(&self, archive: &holdfast_archive::Archive, shipping: &tokio::sync::Mutex<AuditShipping>) {
        let mut shipping = shipping.lock().await;
        if shipping.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        match self.ship_audit_step(archive, &mut shipping).await {
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
            shipping.manifest = Some(archive.audit_manifest(&self.core.region()).await.map_err(Error::from)?.unwrap_or_default());
        }
        let manifest = shipping.manifest.as_mut().ok_or_else(|| Error::internal("audit manifest vanished"))?;
        if !shipping.swept {
            archive.sweep_audit(&self.core.region(), manifest).await.map_err(Error::from)?;
            shipping.swept = true;
        }
        loop {
            let filter = AuditFilter { after_seq: manifest.shipped_seq, limit: SEGMENT_ENTRIES, ..AuditFilter::default() };
            let records = self.core.control().call(move |c| control::list_audit(c, &filter)).await.map_err(Error::from)?;
            if records.is_empty() {
                break;
            }
            // Ship only a log that continues what was archived: a changed local log is for
            // `audit-log verify` to report, not for the archive to take in.
            let mut chain = AuditChain::after(manifest.shipped_seq, &manifest.last_hash, self.core.audit_key());
            if let Some(r) = records.iter().find(|r| !chain.push(r)) {
                return Err(Error::internal(format!(
                    "local audit entry {} does not continue the archived log: the log was changed; run `holdfast audit-log verify`",
                    r.seq
                )));
            }
            let last_hash = chain.last_hash().to_owned();
            let (meta, bytes) = encode(records).await?;
            archive.put_audit_segment(&self.core.region(), &meta, bytes).await.map_err(Error::from)?;
            manifest.shipped_seq = meta.last_seq;
            manifest.last_hash = last_hash;
            manifest.segments.push(meta);
            archive.save_audit_manifest(&self.core.region(), manifest).await.map_err(Error::from)?;
        }
        while let Some(range) = manifest.next_merge() {
            let run = manifest.segments[range.clone()].to_vec();
            let mut records = Vec::new();
            for segment in &run {
                records.extend(archive.read_audit_segment(&self.core.region(), segment).await.map_err(Error::from)?);
            }
            let (merged, bytes) = encode(records).await?;
            archive.put_audit_segment(&self.core.region(), &merged, bytes).await.map_err(Error::from)?;
            manifest.segments.splice(range, [merged]);
            archive.save_audit_manifest(&self.core.region(), manifest).await.map_err(Error::from)?;
            for old in &run {
                archive.delete_audit_segment(&self.core.region(), old).await.map_err(Error::from)?;
            }
        }
        Ok(())
    }
}
