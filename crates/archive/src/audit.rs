//! The archived audit log: a server's hash-chained audit entries (`control.db`, table `audit`)
//! shipped by its archiver as zstd segments of JSON lines under `audit/{region}/`, named by
//! `audit/{region}/manifest.json` (docs/formats/archive.md §Audit log). The region keeps the logs
//! of several servers sharing one archive apart.
//!
//! The copy outlives the node and is the witness for the local log: since every entry hashes its
//! predecessor, a local entry at the archived `shipped_seq` with the archived `last_hash` proves
//! the whole local prefix equal to the archive's; an edited entry, or newest entries removed,
//! no longer match.
//!
//! Segments of one closed UTC hour are merged into one (`next_merge`), so the manifest grows by
//! at most one segment an hour however often the archiver ships.

use std::io::{BufRead, BufReader, Write};
use std::ops::Range;

use holdfast_store::control::AuditRecord;
use holdfast_types::Micros;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{ArchiveError, Result};

pub const AUDIT_MANIFEST_FORMAT: &str = "holdfast-archive-audit-manifest";
pub const AUDIT_SEGMENT_FORMAT: &str = "holdfast-archive-audit-segment";
pub const AUDIT_VERSION: u32 = 1;
/// The manifest's object name under the region's prefix.
pub const AUDIT_MANIFEST_KEY: &str = "manifest.json";
/// Where segments live under the region's prefix; [`AuditSegmentMeta::key`] names each.
pub const AUDIT_SEGMENTS_DIR: &str = "segments";

/// The prefix of one region's audit log under the archive URL.
pub fn prefix(region: &str) -> String {
    format!("audit/{region}")
}

/// Width of a merge bucket.
const HOUR_US: Micros = 3_600_000_000;

/// One archived run of consecutive audit entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSegmentMeta {
    pub first_seq: i64,
    pub last_seq: i64,
    pub first_ts: Micros,
    pub last_ts: Micros,
    pub count: u64,
    pub bytes: u64,
    /// sha256 of the compressed object.
    pub sha256: String,
}

impl AuditSegmentMeta {
    pub fn key(&self) -> String {
        format!("{AUDIT_SEGMENTS_DIR}/{:020}-{:020}.jsonl.zst", self.first_seq, self.last_seq)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditManifest {
    pub format: String,
    pub v: u32,
    /// Every entry up to here is in `segments`.
    pub shipped_seq: i64,
    /// The hash of entry `shipped_seq` (64 zeros when nothing is shipped).
    pub last_hash: String,
    /// In `seq` order, contiguous from 1.
    pub segments: Vec<AuditSegmentMeta>,
}

impl AuditManifest {
    pub fn new() -> Self {
        Self {
            format: AUDIT_MANIFEST_FORMAT.into(),
            v: AUDIT_VERSION,
            shipped_seq: 0,
            last_hash: holdfast_store::control::AUDIT_GENESIS.into(),
            segments: Vec::new(),
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let manifest: Self = serde_json::from_slice(bytes).map_err(|e| ArchiveError::Corrupt {
            object: AUDIT_MANIFEST_KEY.into(),
            message: e.to_string(),
        })?;
        if manifest.format != AUDIT_MANIFEST_FORMAT || manifest.v != AUDIT_VERSION {
            return Err(ArchiveError::Corrupt {
                object: AUDIT_MANIFEST_KEY.into(),
                message: format!(
                    "format {:?} version {}; this build reads {AUDIT_MANIFEST_FORMAT} version {AUDIT_VERSION}",
                    manifest.format, manifest.v
                ),
            });
        }
        Ok(manifest)
    }

    /// The next merge: the segments of the oldest closed hour (by each segment's first entry;
    /// an hour is closed once a segment of a later hour exists) when there are several.
    pub fn next_merge(&self) -> Option<Range<usize>> {
        let hour = |s: &AuditSegmentMeta| s.first_ts.div_euclid(HOUR_US);
        let newest = self.segments.last().map(hour)?;
        let mut start = 0;
        while start < self.segments.len() {
            let h = hour(&self.segments[start]);
            let end = start + self.segments[start..].iter().take_while(|s| hour(s) == h).count();
            if h < newest && end - start > 1 {
                return Some(start..end);
            }
            start = end;
        }
        None
    }
}

impl Default for AuditManifest {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    v: u32,
    first_seq: i64,
}

/// One segment from entries in `seq` order (at least one): its description and its bytes.
pub fn encode(records: &[AuditRecord]) -> Result<(AuditSegmentMeta, Vec<u8>)> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(ArchiveError::Invalid("an audit segment holds at least one entry".into()));
    };
    let mut encoder = zstd::Encoder::new(Vec::new(), 3)?;
    let header = Header { format: AUDIT_SEGMENT_FORMAT.into(), v: AUDIT_VERSION, first_seq: first.seq };
    serde_json::to_writer(&mut encoder, &header)?;
    encoder.write_all(b"\n")?;
    for (i, record) in records.iter().enumerate() {
        if record.seq != first.seq + i as i64 {
            return Err(ArchiveError::Invalid(format!("audit entry {} does not follow {}", record.seq, first.seq + i as i64 - 1)));
        }
        serde_json::to_writer(&mut encoder, record)?;
        encoder.write_all(b"\n")?;
    }
    let bytes = encoder.finish()?;
    let meta = AuditSegmentMeta {
        first_seq: first.seq,
        last_seq: last.seq,
        first_ts: first.ts_us,
        last_ts: last.ts_us,
        count: records.len() as u64,
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
    };
    Ok((meta, bytes))
}

/// A segment's entries, after checking the object's hash, the header and the `seq` range. The
/// hash chain itself is the caller's to walk (`AuditChain`), across segments.
/// `object` names it in errors.
pub fn decode(object: &str, meta: &AuditSegmentMeta, bytes: &[u8]) -> Result<Vec<AuditRecord>> {
    let corrupt = |message: String| ArchiveError::Corrupt { object: object.to_owned(), message };
    let actual = hex::encode(Sha256::digest(bytes));
    if actual != meta.sha256 {
        return Err(corrupt(format!("object hashes to {actual}, the manifest says {}", meta.sha256)));
    }
    let mut lines = BufReader::new(zstd::Decoder::new(bytes).map_err(|e| corrupt(format!("not zstd: {e}")))?).lines();
    let header = lines.next().ok_or_else(|| corrupt("empty".into()))?.map_err(|e| corrupt(e.to_string()))?;
    let header: Header = serde_json::from_str(&header).map_err(|e| corrupt(format!("bad header: {e}")))?;
    if header.format != AUDIT_SEGMENT_FORMAT || header.v != AUDIT_VERSION || header.first_seq != meta.first_seq {
        return Err(corrupt(format!("header says {} version {} from {}", header.format, header.v, header.first_seq)));
    }
    let mut records = Vec::with_capacity(meta.count as usize);
    for line in lines {
        let line = line.map_err(|e| corrupt(e.to_string()))?;
        let record: AuditRecord = serde_json::from_str(&line).map_err(|e| corrupt(format!("bad entry: {e}")))?;
        if record.seq != meta.first_seq + records.len() as i64 {
            return Err(corrupt(format!("entry {} out of order", record.seq)));
        }
        records.push(record);
    }
    if records.len() as u64 != meta.count || records.last().map(|r| r.seq) != Some(meta.last_seq) {
        return Err(corrupt(format!("holds {} entries, the manifest says {}", records.len(), meta.count)));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64, ts_us: Micros) -> AuditRecord {
        AuditRecord {
            seq,
            ts_us,
            principal: "prn_admin".into(),
            method: "POST".into(),
            route: "/v1/projects".into(),
            path: "/v1/projects".into(),
            scope: "/".into(),
            action: "projects/write".into(),
            address: "127.0.0.1".into(),
            status: 201,
            outcome: "ok".into(),
            request_id: format!("req_{seq}"),
            prev_hash: "p".into(),
            hash: "h".into(),
        }
    }

    fn meta(first: i64, last: i64, first_ts: Micros) -> AuditSegmentMeta {
        AuditSegmentMeta { first_seq: first, last_seq: last, first_ts, last_ts: first_ts, count: 1, bytes: 1, sha256: String::new() }
    }

    #[test]
    fn round_trip_and_corruption_is_named() {
        let records: Vec<_> = (5..=9).map(|s| record(s, s * 10)).collect();
        let (meta, bytes) = encode(&records).expect("encode");
        assert_eq!((meta.first_seq, meta.last_seq, meta.count, meta.first_ts, meta.last_ts), (5, 9, 5, 50, 90));
        assert_eq!(decode("seg", &meta, &bytes).expect("decode"), records);
        let mut flipped = bytes.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        let err = decode("audit/r/seg", &meta, &flipped).expect_err("flipped");
        assert!(err.to_string().contains("audit/r/seg"), "{err}");
        assert!(encode(&[record(1, 0), record(3, 0)]).is_err(), "a gap is refused");
        assert!(encode(&[]).is_err());
    }

    #[test]
    fn closed_hours_with_several_segments_merge_oldest_first() {
        let mut m = AuditManifest::new();
        assert_eq!(m.next_merge(), None);
        m.segments = vec![meta(1, 1, 10), meta(2, 2, 20), meta(3, 3, HOUR_US + 1), meta(4, 4, HOUR_US + 2)];
        assert_eq!(m.next_merge(), Some(0..2), "hour 0 is closed, hour 1 is open");
        m.segments.splice(0..2, [meta(1, 2, 10)]);
        assert_eq!(m.next_merge(), None, "one segment per closed hour, the open one waits");
        m.segments.push(meta(5, 5, 2 * HOUR_US));
        assert_eq!(m.next_merge(), Some(1..3));
    }
}
