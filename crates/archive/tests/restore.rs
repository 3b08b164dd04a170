//! Restore equals the journal: for random operation sequences, cut into random segments with a
//! snapshot at a random point, restoring the archive to LSN n gives exactly the state the
//! journal had at n (the canonical dump of journal[1..=n] replayed), whether the plan starts
//! from the snapshot or from nothing.

use std::sync::OnceLock;

use holdfast_archive::{Archive, Manifest, Progress, SegmentWriter, Target};
use holdfast_store::ProjectStore;
use holdfast_store::apply::Replayer;
use holdfast_types::{Change, Kind, Lsn, Op, ProjectId};
use proptest::prelude::*;
use serde_json::json;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime"))
}

/// One write: which of a few ids it touches, what it does, under which parent.
#[derive(Clone, Debug)]
struct Spec {
    id: usize,
    parent: Option<usize>,
    action: u8,
    value: i64,
}

fn spec() -> impl Strategy<Value = Spec> {
    (0..6usize, proptest::option::of(0..6usize), 0..3u8, any::<i64>()).prop_map(|(id, parent, action, value)| Spec {
        id,
        parent,
        action,
        value,
    })
}

/// Turns a spec into ops valid against the current state: put when absent, else patch or delete.
fn plan(spec: Spec) -> holdfast_store::Plan {
    Box::new(move |view| {
        let id = format!("r{}", spec.id);
        let exists = view.get(Kind::Item, &id).map_err(holdfast_types::Error::from)?.is_some();
        let parent = spec
            .parent
            .filter(|p| *p != spec.id)
            .map(|p| format!("r{p}"))
            .filter(|p| view.get(Kind::Item, p).ok().flatten().is_some());
        Ok(vec![match (exists, spec.action) {
            (false, _) => Op::Put { kind: Kind::Item, id, parent, body: json!({"v": spec.value, "tags": {"a": 1}}) },
            (true, 0) => Op::Delete { kind: Kind::Item, id },
            (true, _) => Op::Patch { kind: Kind::Item, id, patch: json!({"v": spec.value, "tags": {"b": spec.value % 7}}) },
        }])
    })
}

fn replay_dump(db: &std::path::Path, project: &ProjectId, journal: &[Change], n: u64) -> Vec<u8> {
    let mut replayer = Replayer::create(db, project).expect("replayer");
    for change in journal.iter().take(n as usize) {
        replayer.apply(change).expect("apply");
    }
    replayer.dump().expect("dump")
}

async fn check(specs: Vec<Spec>, cuts: Vec<usize>, snapshot_at: usize, targets: Vec<usize>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = ProjectId::generate();
    let store = ProjectStore::create(&dir.path().join("state.db"), &project, "p").expect("store");
    let archive = Archive::open(&format!("file://{}", dir.path().join("archive").display())).expect("archive");
    let mut manifest = Manifest::new(&project, "p");
    let snapshot_at = snapshot_at % specs.len() + 1;
    for (i, spec) in specs.iter().enumerate() {
        store.write("prn_test", &format!("req_{i}"), plan(spec.clone())).await.expect("write");
        if i + 1 == snapshot_at {
            let copy = dir.path().join("snapshot.db");
            let info = store.snapshot_into(&copy).await.expect("snapshot");
            manifest.snapshots.push(archive.put_snapshot(&info, &copy, 0).await.expect("put snapshot"));
        }
    }
    let journal = store.read(|view| view.journal(Lsn::ZERO, usize::MAX >> 1)).await.expect("journal");
    // Ship the journal in segments of random sizes.
    let mut rest: &[Change] = &journal;
    let mut cuts = cuts.into_iter().cycle();
    while !rest.is_empty() {
        let size = cuts.next().unwrap_or(1).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        let mut writer = SegmentWriter::new(&project, chunk[0].lsn).expect("writer");
        for change in chunk {
            writer.push(change).expect("push");
        }
        let (meta, bytes) = writer.finish().expect("finish");
        archive.put_segment(&project, &meta, bytes).await.expect("put segment");
        manifest.archived_lsn = meta.last_lsn;
        manifest.archived_ts = meta.last_ts;
        manifest.segments.push(meta);
        rest = tail;
    }
    let last = journal.len() as u64;
    for (k, target) in targets.into_iter().enumerate() {
        let n = (target as u64) % last + 1;
        let db = dir.path().join(format!("restored-{k}.db"));
        let plan = manifest.plan(Target::Lsn(Lsn(n))).expect("plan");
        let restored =
            holdfast_archive::restore(&archive, &manifest, plan, &db, &project, false, &Progress::default()).await;
        let mut restored = restored.map_err(|e| TestCaseError::fail(format!("restore to {n}: {e}")))?;
        prop_assert_eq!(restored.lsn, Lsn(n));
        let dump = restored.replayer.dump().expect("dump");
        let reference = replay_dump(&dir.path().join(format!("reference-{k}.db")), &project, &journal, n);
        prop_assert_eq!(dump, reference, "restore to LSN {} differs from the journal replayed to {}", n, n);
        if n == snapshot_at as u64 {
            prop_assert!(restored.verified_against.is_some(), "the snapshot's hash was checked");
        }
    }
    drop(store);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn restore_to_any_lsn_equals_the_journal_replayed_to_it(
        specs in proptest::collection::vec(spec(), 1..60),
        cuts in proptest::collection::vec(1..12usize, 1..6),
        snapshot_at in any::<usize>(),
        targets in proptest::collection::vec(any::<usize>(), 1..4),
    ) {
        runtime().block_on(check(specs, cuts, snapshot_at, targets))?;
    }
}
