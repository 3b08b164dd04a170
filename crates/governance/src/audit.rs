//! Reading the audit log: pages of entries by time, principal and scope, and `verify`, which
//! walks the keyed chain here and, when the server archives, the archived copy's chain. The
//! log itself is written by the core ([`holdfast_core::audit`]) and shipped by the archiver
//! (`holdfast_recovery::audit_shipping`).

use holdfast_core::Result;
use holdfast_core::auth::{Action, Caller};
use holdfast_store::control::{self, AuditFilter, AuditRecord};
use holdfast_types::api::{AuditEntry, AuditPage, AuditVerify};
use holdfast_types::{Error, parse_rfc3339, rfc3339};

use crate::Governance;

/// Most entries one page returns.
const MAX_PAGE: usize = 1000;

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

impl Governance {
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
        let rows = self.core.control().call(move |c| control::list_audit(c, &filter)).await.map_err(Error::from)?;
        let next_after = (rows.len() == limit).then(|| rows.last().map(|r| r.seq)).flatten();
        Ok(AuditPage { data: rows.into_iter().map(entry).collect(), next_after })
    }

    /// `holdfast audit-log verify`: walks the hash chain from the first entry and, when the
    /// server archives, the archived copy's chain, and checks that the local log still holds
    /// what was archived (so removing the newest entries is found too).
    pub async fn audit_verify(&self, caller: &Caller) -> Result<AuditVerify> {
        caller.require(Action::AuditRead, "/")?;
        let key = self.core.audit_key();
        let found = self.core.control().call(move |c| control::verify_audit(c, &key)).await.map_err(Error::from)?;
        let (entries, bad, unkeyed) = (found.entries, found.first_bad, found.unkeyed);
        let message = match bad {
            None if unkeyed > 0 => format!(
                "{entries} entries, the chain is intact; the first {unkeyed} predate the keyed chain and are proven \
                 only against the archive"
            ),
            None => format!("{entries} entries, the chain is intact"),
            Some(seq) => format!("entry {seq} does not match its MAC or its predecessor: the log was changed there"),
        };
        let archive = self.recovery.verify_archived_audit().await?;
        let ok = bad.is_none() && archive.as_ref().is_none_or(|a| a.ok);
        Ok(AuditVerify { ok, entries, first_bad_seq: bad, unkeyed_entries: unkeyed, message, archive })
    }
}
