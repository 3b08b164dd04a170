//! Journal segments: a run of consecutive changes as one zstd-compressed object.
//!
//! Uncompressed, a segment is text lines (docs/formats/archive.md):
//!
//! ```text
//! {"format":"holdfast-archive-segment","v":1,"project":"proj_…","first_lsn":1}
//! 3f2a9c01<TAB>{…change as in the journal format…}
//! …
//! {"end":{"last_lsn":100,"count":100,"sha256":"…"}}
//! ```
//!
//! Each entry carries the crc32 of its JSON; the trailer carries the count and the sha256 of
//! every byte before it. A reader checks all of it, and the LSNs' density, before trusting a
//! change.

use std::io::{BufRead, BufReader, Write};

use holdfast_types::{Change, Epoch, Lsn, Micros, ProjectId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{ArchiveError, Result};

pub const SEGMENT_FORMAT: &str = "holdfast-archive-segment";
pub const SEGMENT_VERSION: u32 = 1;

/// zstd level: 3 compresses JSON changes about 8:1 at several hundred MB/s.
const ZSTD_LEVEL: i32 = 3;

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    v: u32,
    project: ProjectId,
    first_lsn: Lsn,
}

#[derive(Serialize, Deserialize)]
struct Trailer {
    end: TrailerBody,
}

#[derive(Serialize, Deserialize)]
struct TrailerBody {
    last_lsn: Lsn,
    count: u64,
    sha256: String,
}

/// A segment as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// Compaction level: 0 as shipped, higher once merged (see `Manifest::next_compaction`).
    pub level: u8,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub first_ts: Micros,
    pub last_ts: Micros,
    /// The epoch of its last change.
    pub epoch: Epoch,
    pub count: u64,
    /// Size of the compressed object.
    pub bytes: u64,
    /// sha256 of the compressed object.
    pub sha256: String,
}

impl SegmentMeta {
    /// The object's name under the project's prefix: epoch and LSN range, zero-padded so names
    /// sort by LSN.
    pub fn key(&self) -> String {
        format!("segments/{:020}-{:020}-e{}.seg.zst", self.first_lsn.0, self.last_lsn.0, self.epoch.0)
    }
}

/// Builds one segment from changes given in LSN order.
pub struct SegmentWriter {
    encoder: zstd::Encoder<'static, Vec<u8>>,
    hasher: Sha256,
    first: Option<(Lsn, Micros)>,
    last: Option<(Lsn, Micros, Epoch)>,
    count: u64,
}

impl SegmentWriter {
    pub fn new(project: &ProjectId, first_lsn: Lsn) -> Result<Self> {
        let mut writer = Self {
            encoder: zstd::Encoder::new(Vec::new(), ZSTD_LEVEL)?,
            hasher: Sha256::new(),
            first: None,
            last: None,
            count: 0,
        };
        let header = Header { format: SEGMENT_FORMAT.into(), v: SEGMENT_VERSION, project: project.clone(), first_lsn };
        let mut line = serde_json::to_vec(&header)?;
        line.push(b'\n');
        writer.write(&line)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.encoder.write_all(bytes)?;
        Ok(())
    }

    /// Appends a change; it must follow the previous one.
    pub fn push(&mut self, change: &Change) -> Result<()> {
        if let Some((last, ..)) = self.last
            && change.lsn != last.next()
        {
            return Err(ArchiveError::Invalid(format!("change {} does not follow {last} in a segment", change.lsn)));
        }
        let json = serde_json::to_vec(change)?;
        let mut line = format!("{:08x}\t", crc32fast::hash(&json)).into_bytes();
        line.extend_from_slice(&json);
        line.push(b'\n');
        self.write(&line)?;
        self.first.get_or_insert((change.lsn, change.ts));
        self.last = Some((change.lsn, change.ts, change.epoch));
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Finishes the segment: its description (level 0) and its compressed bytes.
    pub fn finish(mut self) -> Result<(SegmentMeta, Vec<u8>)> {
        let (Some((first_lsn, first_ts)), Some((last_lsn, last_ts, epoch))) = (self.first, self.last) else {
            return Err(ArchiveError::Invalid("a segment holds at least one change".into()));
        };
        let sha256 = hex::encode(self.hasher.clone().finalize());
        let mut line = serde_json::to_vec(&Trailer { end: TrailerBody { last_lsn, count: self.count, sha256 } })?;
        line.push(b'\n');
        self.encoder.write_all(&line)?;
        let bytes = self.encoder.finish()?;
        let meta = SegmentMeta {
            level: 0,
            first_lsn,
            last_lsn,
            first_ts,
            last_ts,
            epoch,
            count: self.count,
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        };
        Ok((meta, bytes))
    }
}

/// Reads a segment's changes, checking everything on the way: the object's hash against the
/// manifest, the header, each entry's crc, dense LSNs, and the trailer. A failure names the
/// segment and the first bad place.
pub fn decode(project: &ProjectId, meta: &SegmentMeta, bytes: &[u8]) -> Result<Vec<Change>> {
    let name = meta.key();
    let corrupt = |why: String| ArchiveError::Corrupt { object: format!("{project}/{name}"), message: why };
    let actual = hex::encode(Sha256::digest(bytes));
    if actual != meta.sha256 {
        return Err(corrupt(format!("object hashes to {actual}, the manifest says {}", meta.sha256)));
    }
    let decoder = zstd::Decoder::new(bytes).map_err(|e| corrupt(format!("not zstd: {e}")))?;
    let mut lines = BufReader::new(decoder);
    let mut hasher = Sha256::new();
    let mut line = Vec::new();
    let mut read_line = |line: &mut Vec<u8>| -> Result<bool> {
        line.clear();
        let n = lines.read_until(b'\n', line).map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
        Ok(n > 0)
    };
    if !read_line(&mut line)? {
        return Err(corrupt("empty".into()));
    }
    hasher.update(&line);
    let header: Header = serde_json::from_slice(&line).map_err(|e| corrupt(format!("bad header: {e}")))?;
    if header.format != SEGMENT_FORMAT || header.v != SEGMENT_VERSION {
        return Err(corrupt(format!(
            "format {:?} version {}; this build reads {SEGMENT_FORMAT} version {SEGMENT_VERSION}",
            header.format, header.v
        )));
    }
    if &header.project != project || header.first_lsn != meta.first_lsn {
        return Err(corrupt(format!("header names {} from LSN {}", header.project, header.first_lsn)));
    }
    let mut changes = Vec::with_capacity(meta.count as usize);
    let mut expected = meta.first_lsn;
    loop {
        if !read_line(&mut line)? {
            return Err(corrupt(format!("truncated after {} changes: no trailer", changes.len())));
        }
        if line.starts_with(b"{") {
            let trailer: Trailer = serde_json::from_slice(&line).map_err(|e| corrupt(format!("bad trailer: {e}")))?;
            let sha256 = hex::encode(hasher.finalize());
            let count = changes.len() as u64;
            if trailer.end.sha256 != sha256 || trailer.end.count != count || trailer.end.last_lsn != meta.last_lsn {
                return Err(corrupt(format!(
                    "trailer (last {}, count {}, sha256 {}) does not match the content (count {count}, sha256 {sha256})",
                    trailer.end.last_lsn, trailer.end.count, trailer.end.sha256
                )));
            }
            if count != meta.count {
                return Err(corrupt(format!("holds {count} changes, the manifest says {}", meta.count)));
            }
            return Ok(changes);
        }
        hasher.update(&line);
        let text = line.strip_suffix(b"\n").ok_or_else(|| corrupt("truncated entry".into()))?;
        let (crc, json) = text
            .iter()
            .position(|b| *b == b'\t')
            .map(|tab| (&text[..tab], &text[tab + 1..]))
            .ok_or_else(|| corrupt(format!("entry for LSN {expected} has no checksum")))?;
        let crc = std::str::from_utf8(crc).ok().and_then(|c| u32::from_str_radix(c, 16).ok());
        if crc != Some(crc32fast::hash(json)) {
            return Err(corrupt(format!("entry for LSN {expected} fails its checksum")));
        }
        let change: Change =
            serde_json::from_slice(json).map_err(|e| corrupt(format!("entry for LSN {expected}: {e}")))?;
        if change.lsn != expected {
            return Err(corrupt(format!("LSN {} where {expected} was expected", change.lsn)));
        }
        expected = expected.next();
        changes.push(change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_types::{CHANGE_FORMAT_VERSION, Kind, Op};

    fn change(lsn: u64) -> Change {
        Change {
            v: CHANGE_FORMAT_VERSION,
            lsn: Lsn(lsn),
            epoch: Epoch::FIRST,
            ts: 1_000 + lsn as i64,
            actor: "system".into(),
            request_id: format!("req_{lsn}"),
            ops: vec![Op::Put { kind: Kind::Item, id: format!("msg_{lsn}"), parent: None, body: serde_json::json!({"n": lsn}) }],
        }
    }

    fn segment(project: &ProjectId, range: std::ops::RangeInclusive<u64>) -> (SegmentMeta, Vec<u8>) {
        let mut w = SegmentWriter::new(project, Lsn(*range.start())).expect("writer");
        for lsn in range {
            w.push(&change(lsn)).expect("push");
        }
        w.finish().expect("finish")
    }

    #[test]
    fn round_trip() {
        let p = ProjectId::generate();
        let (meta, bytes) = segment(&p, 5..=104);
        assert_eq!((meta.first_lsn, meta.last_lsn, meta.count, meta.first_ts, meta.last_ts), (Lsn(5), Lsn(104), 100, 1005, 1104));
        let changes = decode(&p, &meta, &bytes).expect("decode");
        assert_eq!(changes, (5..=104).map(change).collect::<Vec<_>>());
    }

    #[test]
    fn every_corruption_is_named() {
        let p = ProjectId::generate();
        let (meta, bytes) = segment(&p, 1..=50);
        // A flipped bit in the object.
        let mut flipped = bytes.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        let err = decode(&p, &meta, &flipped).expect_err("flipped bit");
        assert!(err.to_string().contains(&meta.key()), "{err}");
        // Consistent object hash but a tampered entry: recompress edited content.
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut zstd::Decoder::new(&bytes[..]).expect("zstd"), &mut text).expect("read");
        let edited = String::from_utf8(text).expect("utf8").replace("\"n\":7}", "\"n\":8}");
        let recompressed = zstd::encode_all(edited.as_bytes(), 3).expect("zstd");
        let meta2 = SegmentMeta { sha256: hex::encode(Sha256::digest(&recompressed)), ..meta.clone() };
        let err = decode(&p, &meta2, &recompressed).expect_err("tampered entry");
        assert!(err.to_string().contains("LSN 7 fails its checksum"), "{err}");
        // Truncated: the last lines are gone.
        let cut = zstd::encode_all(&edited.as_bytes()[..edited.len() / 2], 3).expect("zstd");
        let meta3 = SegmentMeta { sha256: hex::encode(Sha256::digest(&cut)), ..meta.clone() };
        assert!(decode(&p, &meta3, &cut).is_err());
        // Another project's segment.
        assert!(decode(&ProjectId::generate(), &meta, &bytes).is_err());
    }

    #[test]
    fn gaps_are_refused_when_writing() {
        let p = ProjectId::generate();
        let mut w = SegmentWriter::new(&p, Lsn(1)).expect("writer");
        w.push(&change(1)).expect("push");
        assert!(w.push(&change(3)).is_err());
    }
}
