//! Verifying an import file takes memory that does not grow with the resources' bodies: a file
//! of 200,000 conversations (about 60 MB) is verified with its peak resident memory growing by
//! far less than the file's size (it keeps a 16-byte hash per resource id, not the resources).
//! Linux only: the peak is read from `/proc/self/status` (`VmHWM`), reset through
//! `/proc/self/clear_refs`. The only test in its binary, so no other test shares the process.
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::io::Write;

use holdfast_recovery::export::{EXPORT_FORMAT, Encoder, ExportedProject, ExportedResource, Header, verify};
use holdfast_types::Kind;

const RESOURCES: usize = 100_000;

/// The process's peak resident memory, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM value");
    kib * 1024
}

/// Writes the file straight to disk, a line at a time, so making it leaves no large buffer.
fn write_file(path: &std::path::Path) -> u64 {
    let header = Header {
        format: EXPORT_FORMAT.into(),
        version: 1,
        project: ExportedProject {
            id: "proj_01m80mg0dm5fvcsadp142rt41a".into(),
            name: "big".into(),
            display_name: "Big".into(),
            description: String::new(),
            tags: BTreeMap::new(),
        },
        exported_at: 1_795_317_826_030_328,
        source_lsn: RESOURCES as u64,
        kinds: vec![Kind::Conversation],
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create file"));
    let (mut encoder, line) = Encoder::start(&header).expect("header");
    file.write_all(&line).expect("write");
    let mut out = Vec::new();
    for n in 0..RESOURCES {
        let resource = ExportedResource {
            kind: Kind::Conversation,
            id: format!("conv_{n:026}"),
            parent: None,
            created_us: 1_795_317_826_031_000 + n as i64,
            updated_us: 1_795_317_826_031_000 + n as i64,
            body: serde_json::json!({"metadata": {"topic": format!("conversation number {n}"), "team": "memory", "note": "x".repeat(120)}}),
            secret_removed: false,
        };
        out.clear();
        encoder.resource(&resource, &mut out).expect("resource");
        file.write_all(&out).expect("write");
    }
    let (_, trailer) = encoder.finish().expect("trailer");
    file.write_all(&trailer).expect("write");
    file.flush().expect("flush");
    std::fs::metadata(path).expect("metadata").len()
}

#[test]
fn verification_does_not_hold_the_resources() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("big.jsonl");
    let size = write_file(&path);
    assert!(size > 25_000_000, "the file is large: {size} bytes");

    // Reset the peak to the present (if the kernel refuses, the peak so far is the baseline,
    // which only makes the check weaker).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = peak_rss();
    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path).expect("open"));
    let verified = verify(reader).expect("verify");
    let grown = peak_rss().saturating_sub(before);
    assert_eq!(verified.trailer.resources, RESOURCES as u64);
    drop(verified);
    // 100,000 id hashes and a line buffer take a few MB; the resources themselves would take
    // several times the file's size.
    assert!(grown < 16 * 1024 * 1024, "verifying a {size}-byte file grew the peak resident memory by {grown} bytes");
}
