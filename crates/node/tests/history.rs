//! History and undelete of one resource, at the node level:
//!
//! - a conversation with 120 items, deleted then undeleted, comes back with the same ids, items
//!   in the same order, the same creation and update times; its history lists the create, the
//!   item appends, the delete and the undelete, with their LSNs;
//! - an agent comes back with both its versions;
//! - an item deleted with its conversation shows a cascade delete, and cannot come back alone;
//! - refusals (exists now, never deleted, LSN or time outside the journal, not an admin) write
//!   nothing;
//! - afterwards, replaying the whole journal gives the live state.

use std::path::Path;

use holdfast_agents::conversations::{ConversationCreate, ItemsCreate};
use holdfast_recovery::history::UndeleteRequest;
use holdfast_core::Caller;
use holdfast_node::{Config, Holdfast};
use holdfast_store::apply::Replayer;
use holdfast_types::api::{KeyCreate, ProjectCreate, Role};
use holdfast_types::{ErrorKind, Lsn, RequestId};
use serde_json::{Value, json};

const KEY: &str = "test-admin-key-0123456789";
const P: &str = "hist";

fn open(dir: &Path) -> Holdfast {
    Holdfast::open(Config::new(dir.to_owned(), "test", Some(KEY.into()))).expect("open node").node
}

fn admin(node: &Holdfast) -> Caller {
    Caller { principal: node.core.authenticate(Some(KEY)).expect("authenticate"), request_id: RequestId::generate() }
}

async fn setup() -> (tempfile::TempDir, Holdfast, Caller) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path());
    let c = admin(&node);
    node.core.create_project(&c, ProjectCreate { name: P.into(), ..Default::default() }).await.expect("project");
    (dir, node, c)
}

async fn last_lsn(node: &Holdfast) -> u64 {
    node.core.project_store(P).await.expect("store").last_lsn().0
}

/// The dump rows of `root` and everything under it (by parent), without positions, in
/// (depth, position) order: what undelete must bring back exactly.
async fn subtree(node: &Holdfast, root: &str) -> Vec<Value> {
    let dump = node.core.project_store(P).await.expect("store").dump().await.expect("dump");
    let rows: Vec<Value> =
        dump.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).expect("row")).collect();
    let mut out = Vec::new();
    let mut level: Vec<String> = vec![root.to_owned()];
    if let Some(r) = rows.iter().find(|r| r["id"] == root) {
        out.push(r.clone());
    } else {
        return out;
    }
    while !level.is_empty() {
        let mut next: Vec<&Value> =
            rows.iter().filter(|r| r["parent"].as_str().is_some_and(|p| level.iter().any(|l| l == p))).collect();
        next.sort_by_key(|r| r["seq"].as_i64());
        level = next.iter().map(|r| r["id"].as_str().expect("id").to_owned()).collect();
        out.extend(next.into_iter().cloned());
    }
    for r in &mut out {
        r.as_object_mut().expect("row").remove("seq");
    }
    out
}

/// Replays the whole journal into a scratch database and compares with the live state.
async fn assert_replay_equals_live(node: &Holdfast, c: &Caller) {
    let store = node.core.project_store(P).await.expect("store");
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut replayer = Replayer::create(&scratch.path().join("state.db"), store.id()).expect("replayer");
    let mut after = Lsn::ZERO;
    loop {
        let page = node.core.journal(c, P, after, Some(1000), None).await.expect("journal");
        if page.changes.is_empty() {
            break;
        }
        for change in &page.changes {
            replayer.apply(change).expect("apply");
            after = change.lsn;
        }
    }
    assert_eq!(replayer.dump().expect("dump"), store.dump().await.expect("dump"), "replay equals live state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_with_120_items_comes_back_whole() {
    let (_dir, node, c) = setup().await;
    let conv = node.agents.create_conversation(&c, P, ConversationCreate::default()).await.expect("conversation");
    let conv_id = conv["id"].as_str().expect("id").to_owned();
    let created_lsn = last_lsn(&node).await;
    let message = |i: usize| json!({"type": "message", "role": "user", "content": format!("m{i}")});
    let mut append_lsns = Vec::new();
    for batch in [0..50, 50..100, 100..120] {
        node.agents.create_items(&c, P, &conv_id, ItemsCreate { items: batch.map(message).collect() }).await.expect("items");
        append_lsns.push(last_lsn(&node).await);
    }
    let before = subtree(&node, &conv_id).await;
    assert_eq!(before.len(), 121);
    let first_item = before[1]["id"].as_str().expect("item id").to_owned();

    node.agents.delete_conversation(&c, P, &conv_id).await.expect("delete");
    let deleted_lsn = last_lsn(&node).await;
    assert!(subtree(&node, &conv_id).await.is_empty());

    let history = node.recovery.resource_history(&c, P, &conv_id).await.expect("history");
    assert!(!history.exists);
    let ops: Vec<(u64, &str)> = history.entries.iter().map(|e| (e.lsn, e.operation.as_str())).collect();
    let mut expected = vec![(created_lsn, "create")];
    expected.extend(append_lsns.iter().map(|l| (*l, "children")));
    expected.push((deleted_lsn, "delete"));
    assert_eq!(ops, expected);
    assert_eq!(history.entries[1].children.get("put item"), Some(&50));
    assert!(history.entries.iter().all(|e| e.actor == c.principal.id.as_str() && !e.time.is_empty()));

    // An item went with its conversation: a cascade, and it cannot come back without it.
    let item_history = node.recovery.resource_history(&c, P, &first_item).await.expect("item history");
    let last = item_history.entries.last().expect("entry");
    assert_eq!((last.lsn, last.operation.as_str(), last.deleted_via.as_deref()), (deleted_lsn, "cascade_delete", Some(conv_id.as_str())));
    let lsn = last_lsn(&node).await;
    let e = node.recovery.undelete_resource(&c, P, &first_item, UndeleteRequest::default()).await.expect_err("orphan");
    assert_eq!(e.kind, ErrorKind::Conflict, "{e:?}");
    assert_eq!(last_lsn(&node).await, lsn);

    let summary = node.recovery.undelete_resource(&c, P, &conv_id, UndeleteRequest::default()).await.expect("undelete");
    assert_eq!(summary.deleted_lsn, deleted_lsn);
    assert_eq!(summary.restored_from_lsn, deleted_lsn - 1);
    assert_eq!(summary.resources, 121);
    assert_eq!(summary.lsn, deleted_lsn + 1);
    assert_eq!(subtree(&node, &conv_id).await, before, "same ids, order, times and bodies");
    let wire = node.agents.get_conversation(&c, P, &conv_id).await.expect("get");
    assert_eq!(wire["created_at"], conv["created_at"]);

    let history = node.recovery.resource_history(&c, P, &conv_id).await.expect("history");
    assert!(history.exists);
    let last = history.entries.last().expect("entry");
    assert_eq!((last.lsn, last.operation.as_str()), (summary.lsn, "create"));
    assert_eq!(last.children.get("put item"), Some(&120));

    // Undeleting again: it exists now.
    let e = node.recovery.undelete_resource(&c, P, &conv_id, UndeleteRequest::default()).await.expect_err("exists");
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert_eq!(last_lsn(&node).await, summary.lsn);
    assert_replay_equals_live(&node, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_comes_back_with_its_versions() {
    let (_dir, node, c) = setup().await;
    let conn = serde_json::from_value(json!({"name": "up", "target": "http://127.0.0.1:9"})).expect("conn");
    node.agents.create_connection(&c, P, conn).await.expect("connection");
    let dep = serde_json::from_value(json!({"name": "gpt", "connection": "up", "model": "m"})).expect("dep");
    node.agents.create_deployment(&c, P, dep).await.expect("deployment");
    for text in ["one", "two"] {
        let v = serde_json::from_value(json!({"definition": {"kind": "prompt", "model": "gpt", "instructions": text}}))
            .expect("version");
        node.agents.create_agent_version(&c, P, "bot", v).await.expect("agent version");
    }
    let before = subtree(&node, "agent:bot").await;
    assert_eq!(before.len(), 3, "agent and two versions");
    let agent = node.agents.get_agent(&c, P, "bot").await.expect("agent");
    node.agents.delete_agent(&c, P, "bot").await.expect("delete");

    // The wire name and the internal id both work.
    let history = node.recovery.resource_history(&c, P, "bot").await.expect("history");
    assert_eq!(history.id, "agent:bot");
    let ops: Vec<&str> = history.entries.iter().map(|e| e.operation.as_str()).collect();
    assert_eq!(ops.first(), Some(&"create"));
    assert_eq!(ops.last(), Some(&"delete"));
    assert_eq!(node.recovery.resource_history(&c, P, "agent:bot").await.expect("history"), history);

    let summary = node.recovery.undelete_resource(&c, P, "bot", UndeleteRequest::default()).await.expect("undelete");
    assert_eq!(summary.resources, 3);
    assert_eq!(subtree(&node, "agent:bot").await, before);
    assert_eq!(node.agents.get_agent(&c, P, "bot").await.expect("agent"), agent);
    let versions = node.agents.list_agent_versions(&c, P, "bot", Default::default()).await.expect("versions");
    assert_eq!(versions.data.len(), 2);

    // A connection by its wire id.
    node.agents.delete_deployment(&c, P, "gpt").await.expect("delete deployment");
    let summary = node.recovery.undelete_resource(&c, P, "dep:gpt", UndeleteRequest::default()).await.expect("undelete dep");
    assert_eq!(summary.id, "dep:gpt");
    assert_replay_equals_live(&node, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_write_nothing() {
    let (_dir, node, c) = setup().await;
    let conv = node.agents.create_conversation(&c, P, ConversationCreate::default()).await.expect("conversation");
    let id = conv["id"].as_str().expect("id").to_owned();
    let lsn = last_lsn(&node).await;
    let check = |e: holdfast_types::Error, kind: ErrorKind| assert_eq!(e.kind, kind, "{e:?}");

    // Exists now.
    check(node.recovery.undelete_resource(&c, P, &id, UndeleteRequest::default()).await.expect_err("exists"), ErrorKind::Conflict);
    // Never in the journal.
    check(node.recovery.undelete_resource(&c, P, "conv_nope", UndeleteRequest::default()).await.expect_err("never"), ErrorKind::NotFound);
    check(node.recovery.resource_history(&c, P, "conv_nope").await.expect_err("never"), ErrorKind::NotFound);

    node.agents.delete_conversation(&c, P, &id).await.expect("delete");
    let lsn_deleted = last_lsn(&node).await;
    assert!(lsn_deleted > lsn);
    // Outside the journal: the window is in the message.
    for bad in [0, lsn_deleted + 1] {
        let e = node.recovery.undelete_resource(&c, P, &id, UndeleteRequest { at: None, lsn: Some(bad) }).await.expect_err("range");
        assert!(e.message.contains(&format!("LSN 1 to {lsn_deleted}")), "{}", e.message);
        check(e, ErrorKind::InvalidInput);
    }
    let e = node
        .recovery.undelete_resource(&c, P, &id, UndeleteRequest { at: Some("2001-01-01T00:00:00Z".into()), lsn: None })
        .await
        .expect_err("before the journal");
    check(e, ErrorKind::InvalidInput);
    let e = node
        .recovery.undelete_resource(&c, P, &id, UndeleteRequest { at: Some("not a time".into()), lsn: None })
        .await
        .expect_err("bad time");
    check(e, ErrorKind::InvalidInput);
    // Not deleted at or before an LSN before its deletion.
    let e = node.recovery.undelete_resource(&c, P, &id, UndeleteRequest { at: None, lsn: Some(lsn) }).await.expect_err("not yet");
    check(e, ErrorKind::NotFound);
    // Only admins.
    let key = node.governance.create_key(&c, KeyCreate { name: "w".into(), role: Some(Role::Contributor), scope: None }).await.expect("key");
    let writer = Caller { principal: node.core.authenticate(Some(&key.key)).expect("auth"), request_id: RequestId::generate() };
    check(node.recovery.undelete_resource(&writer, P, &id, UndeleteRequest::default()).await.expect_err("403"), ErrorKind::Forbidden);
    check(node.recovery.resource_history(&writer, P, &id).await.expect_err("403"), ErrorKind::Forbidden);
    assert_eq!(last_lsn(&node).await, lsn_deleted, "refusals wrote nothing");

    // At the deletion's own LSN it works; the scratch directory is gone afterwards.
    let summary =
        node.recovery.undelete_resource(&c, P, &id, UndeleteRequest { at: None, lsn: Some(lsn_deleted) }).await.expect("undelete");
    assert_eq!(summary.deleted_lsn, lsn_deleted);
    let tmp = _dir.path().join("tmp");
    assert!(!tmp.exists() || std::fs::read_dir(&tmp).expect("tmp").next().is_none(), "scratch removed");
    assert_replay_equals_live(&node, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_store_comes_back_with_its_file_links_and_is_searchable() {
    use holdfast_agents::files::FileUpload;
    use holdfast_agents::vector_stores::{VectorStoreCreate, VectorStoreSearch};
    let (_dir, node, c) = setup().await;
    let upload = |name: &str, text: &str| FileUpload {
        filename: Some(name.into()),
        purpose: "assistants".into(),
        bytes: bytes::Bytes::from(text.to_owned()),
    };
    let bees = node.agents.create_file(&c, P, upload("bees.txt", "bees make honey in hives")).await.expect("file");
    let trains = node.agents.create_file(&c, P, upload("trains.txt", "trains run on rails")).await.expect("file");
    let ids = vec![bees["id"].as_str().expect("id").to_owned(), trains["id"].as_str().expect("id").to_owned()];
    let req = VectorStoreCreate { name: Some("kb".into()), file_ids: Some(ids.clone()), ..Default::default() };
    let store = node.agents.create_vector_store(&c, P, req).await.expect("store");
    let sid = store["id"].as_str().expect("id").to_owned();
    let search = |q: &str| VectorStoreSearch {
        query: json!(q),
        max_num_results: Some(5),
        filters: None,
        ranking_options: None,
        rewrite_query: None,
    };
    let found = node.agents.search_vector_store(&c, P, &sid, search("honey")).await.expect("search");
    let before = subtree(&node, &sid).await;
    assert_eq!(before.len(), 3, "store and two links");

    node.agents.delete_vector_store(&c, P, &sid).await.expect("delete");
    // A linked file deleted after the store: refused, nothing written, until it is back.
    node.agents.delete_file(&c, P, &ids[1]).await.expect("delete file");
    let lsn = last_lsn(&node).await;
    let e = node.recovery.undelete_resource(&c, P, &sid, UndeleteRequest::default()).await.expect_err("file gone");
    assert_eq!(e.kind, ErrorKind::Conflict, "{e:?}");
    assert!(e.message.contains(&ids[1]), "{}", e.message);
    assert_eq!(last_lsn(&node).await, lsn);
    node.recovery.undelete_resource(&c, P, &ids[1], UndeleteRequest::default()).await.expect("undelete file");

    node.recovery.undelete_resource(&c, P, &sid, UndeleteRequest::default()).await.expect("undelete store");
    assert_eq!(subtree(&node, &sid).await, before);
    let again = node.agents.search_vector_store(&c, P, &sid, search("honey")).await.expect("search");
    assert_eq!(again, found, "the index caught up");
    assert_replay_equals_live(&node, &c).await;
}
