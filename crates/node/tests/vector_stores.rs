//! Files and vector stores at the node level:
//!
//! - an upload is stored, listed, read back byte for byte and deleted; a refused upload (too
//!   large, bad purpose) stores no blob and journals nothing;
//! - attaching text files makes them searchable before the attach answers; a file that is not
//!   text is attached as `failed`; deleting a link, a file or a store removes its chunks;
//! - the search index is a projection (DESIGN.md invariant 6): deleting it — live, or while
//!   the server is down — or putting back an older copy of it changes no answer.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use holdfast_agents::ListQuery;
use holdfast_agents::files::{FileListQuery, FileUpload};
use holdfast_agents::vector_stores::{
    FileBatchCreate, VectorStoreCreate, VectorStoreFileCreate, VectorStoreFileListQuery, VectorStoreFileUpdate,
    VectorStoreSearch,
};
use holdfast_core::Caller;
use holdfast_node::{Config, Holdfast};
use holdfast_types::api::ProjectCreate;
use holdfast_types::{ErrorKind, Lsn, RequestId};
use serde_json::{Value, json};

const KEY: &str = "test-admin-key-0123456789";
const PROJECT: &str = "demo";

fn open(dir: &Path, max_file_bytes: Option<usize>) -> Holdfast {
    let mut config = Config::new(dir.to_owned(), "test", Some(KEY.into()));
    if let Some(max) = max_file_bytes {
        config.core.max_file_bytes = max;
    }
    Holdfast::open(config).expect("open node").node
}

fn admin(node: &Holdfast) -> Caller {
    Caller { principal: node.core.authenticate(Some(KEY)).expect("authenticate"), request_id: RequestId::generate() }
}

async fn project(node: &Holdfast) {
    let req = ProjectCreate { name: PROJECT.into(), ..Default::default() };
    node.core.create_project(&admin(node), req).await.expect("create project");
}

async fn last_lsn(node: &Holdfast) -> Lsn {
    node.core.project_store(PROJECT).await.expect("store").last_lsn()
}

async fn project_dir(node: &Holdfast, data: &Path) -> PathBuf {
    let id = node.core.project_store(PROJECT).await.expect("store").id().clone();
    data.join("projects").join(id.as_str())
}

async fn upload(node: &Holdfast, name: &str, bytes: impl Into<Bytes>) -> String {
    let upload = FileUpload { filename: Some(name.into()), purpose: "assistants".into(), bytes: bytes.into() };
    let file = node.agents.create_file(&admin(node), PROJECT, upload).await.expect("upload");
    file["id"].as_str().expect("file id").to_owned()
}

async fn search(node: &Holdfast, store: &str, query: Value, max: usize, filters: Option<Value>) -> Value {
    let req = VectorStoreSearch { query, max_num_results: Some(max), filters, ranking_options: None, rewrite_query: None };
    node.agents.search_vector_store(&admin(node), PROJECT, store, req).await.expect("search")
}

fn filenames(page: &Value) -> Vec<String> {
    page["data"].as_array().expect("data").iter().map(|r| r["filename"].as_str().unwrap_or_default().to_owned()).collect()
}

/// Several paragraphs about one topic, long enough to make several chunks.
fn essay(topic: &str, paragraphs: usize) -> String {
    (0..paragraphs)
        .map(|i| {
            format!(
                "Paragraph {i} about {topic}. The {topic} section explains how {topic} works in practice, \
                 with notes on maintenance, history and the people who care for {topic} every day. "
            )
            .repeat(6)
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[tokio::test]
async fn files_round_trip_and_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path(), None);
    project(&node).await;
    let c = admin(&node);

    let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let upload = FileUpload { filename: Some("dir/data.bin".into()), purpose: "user_data".into(), bytes: bytes.clone().into() };
    let file = node.agents.create_file(&c, PROJECT, upload).await.expect("upload");
    assert_eq!(file["object"], "file");
    assert_eq!(file["filename"], "data.bin");
    assert_eq!(file["bytes"], 10_000);
    assert_eq!(file["purpose"], "user_data");
    assert_eq!(file["status"], "processed");
    assert!(file["id"].as_str().is_some_and(|id| id.starts_with("file-")));
    assert!(file["created_at"].as_i64().is_some_and(|t| t > 1_600_000_000), "created_at in seconds");
    let id = file["id"].as_str().expect("id").to_owned();

    let content = node.agents.file_content(&c, PROJECT, &id).await.expect("content");
    assert_eq!(content.bytes.as_ref(), bytes.as_slice());
    assert_eq!(node.agents.get_file(&c, PROJECT, &id).await.expect("get"), file);

    let mut ids = vec![id.clone()];
    for i in 0..4 {
        ids.push(upload_named(&node, &format!("n{i}.txt")).await);
    }
    // Newest first, paged by `after`.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let q = FileListQuery { after: after.clone(), limit: Some(2), ..Default::default() };
        let page = node.agents.list_files(&c, PROJECT, q).await.expect("list");
        seen.extend(page.data.iter().map(|f| f["id"].as_str().unwrap_or_default().to_owned()));
        if !page.has_more {
            break;
        }
        after = page.last_id;
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let q = FileListQuery { purpose: Some("user_data".into()), ..Default::default() };
    let only = node.agents.list_files(&c, PROJECT, q).await.expect("by purpose");
    assert_eq!(only.data.len(), 1);
    assert_eq!(only.data[0]["id"], id.as_str());

    assert_eq!(node.agents.delete_file(&c, PROJECT, &id).await.expect("delete"), json!({"id": id, "object": "file", "deleted": true}));
    let gone = node.agents.get_file(&c, PROJECT, &id).await.expect_err("deleted");
    assert_eq!(gone.kind, ErrorKind::NotFound);
    assert_eq!(node.agents.delete_file(&c, PROJECT, &id).await.expect_err("twice").kind, ErrorKind::NotFound);
}

async fn upload_named(node: &Holdfast, name: &str) -> String {
    upload(node, name, format!("contents of {name}")).await
}

#[tokio::test]
async fn refused_uploads_store_and_journal_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path(), Some(1000));
    project(&node).await;
    let c = admin(&node);
    let before = last_lsn(&node).await;
    let blobs = dir.path().join("blobs").join(node.core.project_store(PROJECT).await.expect("store").id().as_str());

    let big = FileUpload { filename: Some("big.txt".into()), purpose: "assistants".into(), bytes: vec![b'a'; 1001].into() };
    assert_eq!(node.agents.create_file(&c, PROJECT, big).await.expect_err("too big").kind, ErrorKind::PayloadTooLarge);
    let bad = FileUpload { filename: Some("x.txt".into()), purpose: "nonsense".into(), bytes: Bytes::from_static(b"x") };
    assert_eq!(node.agents.create_file(&c, PROJECT, bad).await.expect_err("bad purpose").kind, ErrorKind::InvalidInput);
    let bad = FileUpload { filename: Some("x\u{7}.txt".into()), purpose: "assistants".into(), bytes: Bytes::from_static(b"x") };
    assert_eq!(node.agents.create_file(&c, PROJECT, bad).await.expect_err("bad name").kind, ErrorKind::InvalidInput);
    assert_eq!(last_lsn(&node).await, before, "a refused upload journals nothing");
    assert!(!blobs.exists(), "a refused upload stores no blob");

    // Exactly at the limit is fine, and its blob is stored before it is journaled.
    let ok = FileUpload { filename: Some("ok.txt".into()), purpose: "assistants".into(), bytes: vec![b'a'; 1000].into() };
    node.agents.create_file(&c, PROJECT, ok).await.expect("at the limit");
    assert_eq!(last_lsn(&node).await, before.next());
    assert!(blobs.exists());
}

#[tokio::test]
async fn attach_search_detach() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path(), None);
    project(&node).await;
    let c = admin(&node);
    let bees = upload(&node, "bees.txt", essay("beekeeping", 8)).await;
    let trains = upload(&node, "trains.md", essay("railways", 2)).await;
    let binary = upload(&node, "image.png", vec![0x89, b'P', b'N', b'G', 0, 0, 0xff, 0xfe]).await;

    let req = VectorStoreCreate { name: Some("kb".into()), file_ids: Some(vec![bees.clone(), binary.clone()]), ..Default::default() };
    let store = node.agents.create_vector_store(&c, PROJECT, req).await.expect("create store");
    let sid = store["id"].as_str().expect("id").to_owned();
    assert_eq!(store["object"], "vector_store");
    assert_eq!(store["status"], "completed");
    assert_eq!(store["file_counts"], json!({"in_progress": 0, "completed": 1, "failed": 1, "cancelled": 0, "total": 2}));
    assert_eq!(store["usage_bytes"], essay("beekeeping", 8).len());

    let failed = node.agents.get_vector_store_file(&c, PROJECT, &sid, &binary).await.expect("link");
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["last_error"]["code"], "unsupported_file");
    assert_eq!(failed["id"], binary.as_str());

    // Searchable as soon as the attach answered.
    let page = search(&node, &sid, json!("beekeeping maintenance"), 5, None).await;
    assert_eq!(page["object"], "vector_store.search_results.page");
    assert_eq!(page["search_query"], json!(["beekeeping maintenance"]));
    assert_eq!(filenames(&page), vec!["bees.txt"; 5]);
    let first = &page["data"][0];
    assert_eq!(first["file_id"], bees.as_str());
    assert_eq!(first["content"][0]["type"], "text");
    assert!(first["content"][0]["text"].as_str().is_some_and(|t| t.contains("beekeeping") && t.len() <= 3200));
    let scores: Vec<f64> = page["data"].as_array().expect("data").iter().map(|r| r["score"].as_f64().expect("score")).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
    assert!(search(&node, &sid, json!("railways"), 5, None).await["data"].as_array().expect("data").is_empty());

    // Attach one more with attributes; filters use them.
    let req = VectorStoreFileCreate { file_id: trains.clone(), attributes: Some(json!({"topic": "trains", "year": 1825})), chunking_strategy: None };
    let link = node.agents.create_vector_store_file(&c, PROJECT, &sid, req).await.expect("attach");
    assert_eq!(link["status"], "completed");
    assert_eq!(link["object"], "vector_store.file");
    let page = search(&node, &sid, json!(["railways", "beekeeping"]), 50, Some(json!({"type": "gt", "key": "year", "value": 1800}))).await;
    assert!(!filenames(&page).is_empty());
    assert!(filenames(&page).iter().all(|f| f == "trains.md"), "{:?}", filenames(&page));
    let upd = VectorStoreFileUpdate { attributes: Some(json!({"topic": "rail"})) };
    let link = node.agents.update_vector_store_file(&c, PROJECT, &sid, &trains, upd).await.expect("update");
    assert_eq!(link["attributes"], json!({"topic": "rail"}));
    let page = search(&node, &sid, json!("railways"), 5, Some(json!({"type": "gt", "key": "year", "value": 1800}))).await;
    assert!(filenames(&page).is_empty(), "attributes were replaced");

    // Lists, with the status filter and paging by file id.
    let q = VectorStoreFileListQuery { filter: Some("completed".into()), ..Default::default() };
    let list = node.agents.list_vector_store_files(&c, PROJECT, &sid, q).await.expect("list");
    assert_eq!(list.data.iter().map(|l| l["id"].clone()).collect::<Vec<_>>(), vec![json!(trains), json!(bees)]);
    let q = VectorStoreFileListQuery { limit: Some(1), after: Some(trains.clone()), ..Default::default() };
    let list = node.agents.list_vector_store_files(&c, PROJECT, &sid, q).await.expect("page 2");
    assert_eq!(list.data[0]["id"], binary.as_str());
    assert!(list.has_more);

    // Detaching removes the chunks; deleting the file removes its links and chunks.
    node.agents.delete_vector_store_file(&c, PROJECT, &sid, &trains).await.expect("detach");
    assert!(filenames(&search(&node, &sid, json!("railways"), 5, None).await).is_empty());
    node.agents.delete_file(&c, PROJECT, &bees).await.expect("delete file");
    assert!(filenames(&search(&node, &sid, json!("beekeeping"), 5, None).await).is_empty());
    let store = node.agents.get_vector_store(&c, PROJECT, &sid).await.expect("store");
    assert_eq!(store["file_counts"]["total"], 1);

    // Batches.
    let req = FileBatchCreate { file_ids: Some(vec![trains.clone(), binary.clone()]), ..Default::default() };
    let batch = node.agents.create_file_batch(&c, PROJECT, &sid, req).await.expect("batch");
    assert_eq!(batch["object"], "vector_store.files_batch");
    assert_eq!(batch["status"], "completed");
    assert_eq!(batch["file_counts"]["completed"], 1);
    assert_eq!(batch["file_counts"]["failed"], 1);
    let bid = batch["id"].as_str().expect("batch id");
    let files = node.agents.list_file_batch_files(&c, PROJECT, &sid, bid, Default::default()).await.expect("batch files");
    assert_eq!(files.data.len(), 2);
    assert_eq!(node.agents.cancel_file_batch(&c, PROJECT, &sid, bid).await.expect("cancel"), batch);
    assert_eq!(filenames(&search(&node, &sid, json!("railways"), 1, None).await), vec!["trains.md"]);

    // Unknown things.
    let e = node.agents.create_vector_store_file(&c, PROJECT, &sid, VectorStoreFileCreate { file_id: "file-nope".into(), attributes: None, chunking_strategy: None });
    assert_eq!(e.await.expect_err("unknown file").kind, ErrorKind::NotFound);
    let req = VectorStoreSearch { query: json!("x"), max_num_results: Some(51), filters: None, ranking_options: None, rewrite_query: None };
    assert_eq!(node.agents.search_vector_store(&c, PROJECT, &sid, req).await.expect_err("too many").kind, ErrorKind::InvalidInput);

    // Deleting the store takes its chunks along.
    let other = node.agents.create_vector_store(&c, PROJECT, VectorStoreCreate { file_ids: Some(vec![trains.clone()]), ..Default::default() });
    let other = other.await.expect("other store")["id"].as_str().expect("id").to_owned();
    node.agents.delete_vector_store(&c, PROJECT, &sid).await.expect("delete store");
    assert_eq!(node.agents.get_vector_store(&c, PROJECT, &sid).await.expect_err("gone").kind, ErrorKind::NotFound);
    assert_eq!(filenames(&search(&node, &other, json!("railways"), 1, None).await), vec!["trains.md"]);
    let stores = node.agents.list_vector_stores(&c, PROJECT, ListQuery::default()).await.expect("list stores");
    assert_eq!(stores.data.len(), 1);
}

/// Queries whose answers the index must keep through rebuilds.
const QUERIES: [&str; 6] = ["beekeeping history", "railways maintenance", "gardens", "people every day", "paragraph 3", "nothing-matches-this"];

async fn answers(node: &Holdfast, stores: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for store in stores {
        for q in QUERIES {
            out.push(search(node, store, json!(q), 50, None).await["data"].clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_index_gives_the_same_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path(), None);
    project(&node).await;
    let c = admin(&node);
    let topics = ["beekeeping", "railways", "gardens", "lighthouses", "clocks"];
    let mut files = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        files.push(upload(&node, &format!("{topic}.txt"), essay(topic, 2 + i)).await);
    }
    let a = node.agents.create_vector_store(&c, PROJECT, VectorStoreCreate { file_ids: Some(files[..3].to_vec()), ..Default::default() });
    let a = a.await.expect("store a")["id"].as_str().expect("id").to_owned();
    let small = json!({"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}});
    let req = VectorStoreCreate { file_ids: Some(files[1..].to_vec()), chunking_strategy: Some(small), ..Default::default() };
    let b = node.agents.create_vector_store(&c, PROJECT, req).await.expect("store b")["id"].as_str().expect("id").to_owned();
    let scratch = node.agents.create_vector_store(&c, PROJECT, VectorStoreCreate { file_ids: Some(files.clone()), ..Default::default() });
    let scratch = scratch.await.expect("scratch")["id"].as_str().expect("id").to_owned();
    let stores = vec![a.clone(), b.clone()];

    // Keep a copy of the index as it is now, to put back later (an index behind the journal).
    let index = project_dir(&node, dir.path()).await.join("index");
    search(&node, &a, json!("warm up"), 1, None).await;
    let old_copy = dir.path().join("old-index");
    copy_dir(&index, &old_copy);

    // Deletes of every kind, and concurrent attaches, so that the incremental index has
    // deleted documents and several segments behind it.
    node.agents.delete_vector_store_file(&c, PROJECT, &a, &files[0]).await.expect("detach");
    node.agents.delete_vector_store(&c, PROJECT, &scratch).await.expect("delete store");
    node.agents.delete_file(&c, PROJECT, &files[4]).await.expect("delete file");
    let extra = upload(&node, "gardens-2.txt", essay("gardens", 3)).await;
    let attach = |store: String, file: String| {
        let (node, c) = (&node, c.clone());
        async move {
            let req = VectorStoreFileCreate { file_id: file, attributes: None, chunking_strategy: None };
            node.agents.create_vector_store_file(&c, PROJECT, &store, req).await.expect("attach")
        }
    };
    tokio::join!(attach(a.clone(), extra.clone()), attach(b.clone(), extra.clone()), attach(a.clone(), files[0].clone()));

    let incremental = answers(&node, &stores).await;
    assert!(incremental.iter().filter(|a| !a.as_array().expect("list").is_empty()).count() >= 8, "the queries find things");
    assert!(incremental[0].as_array().expect("list").iter().any(|r| r["filename"] == "beekeeping.txt"), "re-attached file found");

    // 1. Deleted while the server runs.
    std::fs::remove_dir_all(&index).expect("delete index");
    same(&answers(&node, &stores).await, &incremental, "rebuilt live");
    assert!(index.join("meta.json").exists(), "the index was rebuilt");

    // 2. Deleted while the server is down.
    node.core.shutdown().await;
    drop(node);
    std::fs::remove_dir_all(&index).expect("delete index");
    let node = open(dir.path(), None);
    same(&answers(&node, &stores).await, &incremental, "rebuilt after a restart");

    // 3. An older copy put back: caught up from the journal.
    node.core.shutdown().await;
    drop(node);
    std::fs::remove_dir_all(&index).expect("delete index");
    copy_dir(&old_copy, &index);
    let node = open(dir.path(), None);
    same(&answers(&node, &stores).await, &incremental, "caught up from an older index");
    let kept = segment_files(&old_copy).intersection(&segment_files(&index)).count();
    assert!(kept > 0, "the older index was caught up from the journal, not rebuilt");

    // 4. Garbage in place of the index.
    node.core.shutdown().await;
    drop(node);
    std::fs::remove_dir_all(&index).expect("delete index");
    std::fs::create_dir_all(&index).expect("mkdir");
    std::fs::write(index.join("meta.json"), b"{not json").expect("write");
    let node = open(dir.path(), None);
    same(&answers(&node, &stores).await, &incremental, "rebuilt over a corrupt index");
}

/// Asserts equal answers, showing (query, rank, file, score, chunk start) where they differ.
fn same(got: &[Value], want: &[Value], what: &str) {
    let brief = |answers: &[Value]| -> Vec<String> {
        answers
            .iter()
            .enumerate()
            .flat_map(|(q, a)| {
                a.as_array().into_iter().flatten().enumerate().map(move |(rank, r)| {
                    let text = r["content"][0]["text"].as_str().unwrap_or_default();
                    format!("q{q} #{rank} {} {} {:?}", r["filename"], r["score"], &text[..text.len().min(40)])
                })
            })
            .collect()
    };
    if got != want {
        let (g, w) = (brief(got), brief(want));
        let diff: Vec<_> = g.iter().zip(&w).filter(|(a, b)| a != b).take(10).collect();
        panic!("{what}: answers differ ({} vs {} results); first differences (got, want): {diff:#?}", g.len(), w.len());
    }
}

/// The names of an index directory's segment files (immutable; a rebuild makes new ones).
fn segment_files(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".idx"))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}
