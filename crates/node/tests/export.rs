//! Export → import at the node level:
//!
//! - property: for random sequences of conversation, item, file and metadata operations,
//!   exporting a project and importing it into an empty project on another data directory gives
//!   the same canonical dump (ids, parents, bodies, creation and update times), the same order
//!   of siblings, and re-importing journals nothing;
//! - only admins import; readers cannot export;
//! - an import over the import limit (413) or the disk's reserve (507) changes nothing and
//!   leaves no spool behind;
//! - an overwrite that changes a connection's target drops its secret; one that keeps the
//!   target keeps it.

use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;
use holdfast_agents::connections::ConnectionCreate;
use holdfast_agents::conversations::{ConversationCreate, ConversationUpdate, ItemsCreate};
use holdfast_agents::files::FileUpload;
use holdfast_recovery::export::{EXPORT_FORMAT, Encoder, ExportedProject, ExportedResource, Header, OnConflict, Selection};
use holdfast_core::Caller;
use holdfast_node::{Config, Holdfast};
use holdfast_types::api::{KeyCreate, ProjectCreate, Role};
use holdfast_types::{ErrorKind, RequestId};
use proptest::prelude::*;
use serde_json::{Value, json};

const KEY: &str = "test-admin-key-0123456789";

fn open(dir: &Path) -> Holdfast {
    open_with(dir, |_| {})
}

fn open_with(dir: &Path, f: impl FnOnce(&mut Config)) -> Holdfast {
    let mut config = Config::new(dir.to_owned(), "test", Some(KEY.into()));
    f(&mut config);
    Holdfast::open(config).expect("open node").node
}

fn admin(node: &Holdfast) -> Caller {
    Caller { principal: node.core.authenticate(Some(KEY)).expect("authenticate"), request_id: RequestId::generate() }
}

async fn export_bytes(node: &Holdfast, project: &str) -> Vec<u8> {
    let (_, mut stream) = node.recovery.export_project(&admin(node), project, Selection::default()).await.expect("export");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend(chunk.expect("chunk"));
    }
    out
}

async fn import(node: &Holdfast, project: &str, file: &[u8]) -> holdfast_recovery::export::ImportSummary {
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(file))]);
    node.recovery.import_project(&admin(node), project, OnConflict::Skip, body).await.expect("import")
}

/// The dump without the project's own record, and without positions (renumbered by import),
/// plus, per (kind, parent), the ids in sibling order.
async fn comparable(node: &Holdfast, project: &str) -> (Vec<Value>, Vec<(String, Vec<String>)>) {
    let dump = node.core.project_store(project).await.expect("store").dump().await.expect("dump");
    let mut rows: Vec<Value> = dump
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<Value>(l).expect("dump line"))
        .filter(|r| r["kind"] != "project")
        .collect();
    let mut order: std::collections::BTreeMap<String, Vec<(i64, String)>> = Default::default();
    for r in &mut rows {
        let key = format!("{}/{}", r["kind"], r["parent"]);
        order.entry(key).or_default().push((r["seq"].as_i64().expect("seq"), r["id"].as_str().expect("id").to_owned()));
        r.as_object_mut().expect("row").remove("seq");
    }
    let order = order
        .into_iter()
        .map(|(k, mut v)| {
            v.sort();
            (k, v.into_iter().map(|(_, id)| id).collect())
        })
        .collect();
    (rows, order)
}

#[derive(Clone, Debug)]
enum Step {
    Conversation { items: usize },
    Items { conversation: usize, items: usize },
    Metadata { conversation: usize, value: u8 },
    DeleteConversation { conversation: usize },
    File { size: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..5).prop_map(|items| Step::Conversation { items }),
        (0usize..8, 1usize..6).prop_map(|(conversation, items)| Step::Items { conversation, items }),
        (0usize..8, any::<u8>()).prop_map(|(conversation, value)| Step::Metadata { conversation, value }),
        (0usize..8).prop_map(|conversation| Step::DeleteConversation { conversation }),
        (1usize..64).prop_map(|size| Step::File { size }),
    ]
}

async fn run(steps: Vec<Step>) {
    let (a_dir, b_dir) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"));
    let (a, b) = (open(a_dir.path()), open(b_dir.path()));
    let caller = admin(&a);
    let req = ProjectCreate { name: "src".into(), ..Default::default() };
    a.core.create_project(&caller, req).await.expect("project");
    let mut conversations: Vec<String> = Vec::new();
    let message = |i: usize| json!({"type": "message", "role": "user", "content": format!("m{i}")});
    for (n, step) in steps.into_iter().enumerate() {
        match step {
            Step::Conversation { items } => {
                let req = ConversationCreate { items: Some((0..items).map(message).collect()), metadata: None };
                let conv = a.agents.create_conversation(&caller, "src", req).await.expect("conversation");
                conversations.push(conv["id"].as_str().expect("id").to_owned());
            }
            Step::Items { conversation, items } if !conversations.is_empty() => {
                let conv = &conversations[conversation % conversations.len()];
                let req = ItemsCreate { items: (0..items).map(message).collect() };
                a.agents.create_items(&caller, "src", conv, req).await.expect("items");
            }
            Step::Metadata { conversation, value } if !conversations.is_empty() => {
                let conv = &conversations[conversation % conversations.len()];
                let req = ConversationUpdate { metadata: Some(json!({"v": value.to_string()})) };
                a.agents.update_conversation(&caller, "src", conv, req).await.expect("update");
            }
            Step::DeleteConversation { conversation } if !conversations.is_empty() => {
                let conv = conversations.remove(conversation % conversations.len());
                a.agents.delete_conversation(&caller, "src", &conv).await.expect("delete");
            }
            Step::File { size } => {
                let upload = FileUpload { filename: Some(format!("f{n}.txt")), purpose: "assistants".into(), bytes: vec![b'a' + (n % 26) as u8; size].into() };
                a.agents.create_file(&caller, "src", upload).await.expect("file");
            }
            _ => {}
        }
    }
    let file = export_bytes(&a, "src").await;
    let first = import(&b, "copy", &file).await;
    assert!(first.created_project);
    assert_eq!(comparable(&a, "src").await, comparable(&b, "copy").await, "export → import keeps the state");
    let lsn = b.core.project_store("copy").await.expect("store").last_lsn();
    let again = import(&b, "copy", &file).await;
    assert_eq!(again.changes, 0);
    assert_eq!(b.core.project_store("copy").await.expect("store").last_lsn(), lsn, "re-import journals nothing");
    a.core.shutdown().await;
    b.core.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn export_then_import_keeps_the_state(steps in proptest::collection::vec(step(), 0..12)) {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime").block_on(run(steps));
    }
}

#[tokio::test]
async fn only_admins_import_and_readers_do_not_export() {
    let dir = tempfile::tempdir().expect("dir");
    let node = open(dir.path());
    let caller = admin(&node);
    let req = ProjectCreate { name: "src".into(), ..Default::default() };
    node.core.create_project(&caller, req).await.expect("project");
    let as_role = |role: Role| {
        let node = &node;
        let caller = caller.clone();
        async move {
            let key = node.governance.create_key(&caller, KeyCreate { name: format!("{}-user", role.as_str()), role: Some(role), scope: None }).await.expect("key");
            Caller { principal: node.core.authenticate(Some(&key.key)).expect("auth"), request_id: RequestId::generate() }
        }
    };
    let contributor = as_role(Role::Contributor).await;
    let reader = as_role(Role::Reader).await;
    let file = export_bytes(&node, "src").await;
    let (_, _) = node.recovery.export_project(&contributor, "src", Selection::default()).await.expect("contributors export");
    let refused = node.recovery.export_project(&reader, "src", Selection::default()).await.err().expect("readers do not export");
    assert_eq!(refused.kind, ErrorKind::Forbidden);
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(file))]);
    let refused = node.recovery.import_project(&contributor, "copy", OnConflict::Skip, body).await.expect_err("contributors do not import");
    assert_eq!(refused.kind, ErrorKind::Forbidden);
}

/// Files left in the data directory's scratch space.
fn spooled(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir.join("tmp")) {
        Ok(entries) => entries.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn an_import_over_the_limit_or_the_disk_reserve_changes_nothing() {
    let (a_dir, b_dir, c_dir) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"), tempfile::tempdir().expect("c"));
    let a = open(a_dir.path());
    let caller = admin(&a);
    a.core.create_project(&caller, ProjectCreate { name: "src".into(), ..Default::default() }).await.expect("project");
    let items = (0..40).map(|i| json!({"type": "message", "role": "user", "content": format!("message {i} {}", "x".repeat(200))})).collect();
    a.agents.create_conversation(&caller, "src", ConversationCreate { items: Some(items), metadata: None }).await.expect("conversation");
    let file = export_bytes(&a, "src").await;
    assert!(file.len() > 8192, "{} bytes", file.len());
    let body = || futures::stream::iter(file.chunks(1000).map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c))).collect::<Vec<_>>());

    // A server whose import limit is below the file's size.
    let b = open_with(b_dir.path(), |c| c.recovery.max_import_bytes = 8192);
    let cb = admin(&b);
    assert_eq!(b.recovery.max_import_bytes(), 8192);
    let streamed = b.recovery.import_project(&cb, "copy", OnConflict::Skip, body()).await.expect_err("over the limit");
    assert_eq!(streamed.kind, ErrorKind::PayloadTooLarge, "{}", streamed.message);
    assert!(streamed.message.contains("import limit of 8192 bytes") && streamed.message.contains("nothing was imported"), "{}", streamed.message);
    let announced = b.recovery.import_upload(&cb, "copy", OnConflict::Skip, Some(file.len() as u64), body()).await.expect_err("announced");
    assert_eq!(announced.kind, ErrorKind::PayloadTooLarge);
    assert!(announced.message.contains(&format!("import file is {} bytes", file.len())), "{}", announced.message);
    assert_eq!(b.core.project_store("copy").await.err().expect("no project").kind, ErrorKind::NotFound);
    // An existing project is left as it was.
    b.core.create_project(&cb, ProjectCreate { name: "there".into(), ..Default::default() }).await.expect("project");
    let lsn = b.core.project_store("there").await.expect("store").last_lsn();
    assert_eq!(b.recovery.import_project(&cb, "there", OnConflict::Overwrite, body()).await.expect_err("over").kind, ErrorKind::PayloadTooLarge);
    assert_eq!(b.core.project_store("there").await.expect("store").last_lsn(), lsn);
    assert_eq!(spooled(b_dir.path()), Vec::<String>::new(), "no spool is left behind");

    // A server whose disk reserve no disk has: refused up front, announced or not.
    let c = open_with(c_dir.path(), |c| c.recovery.import_min_free_bytes = u64::MAX / 2);
    let cc = admin(&c);
    for length in [None, Some(file.len() as u64)] {
        let e = c.recovery.import_upload(&cc, "copy", OnConflict::Skip, length, body()).await.expect_err("no room");
        assert_eq!(e.kind, ErrorKind::InsufficientStorage, "{}", e.message);
        assert!(e.message.contains("not enough free disk space") && e.message.contains("limits.import_min_free_bytes"), "{}", e.message);
    }
    assert_eq!(c.core.project_store("copy").await.err().expect("no project").kind, ErrorKind::NotFound);
    assert_eq!(spooled(c_dir.path()), Vec::<String>::new());

    // Within the limits, the same file imports.
    let summary = import(&a, "copy", &file).await;
    assert_eq!(summary.kinds["item"].imported, 40);
    for s in [a, b, c] {
        s.core.shutdown().await;
    }
}

#[tokio::test]
async fn an_overwrite_that_repoints_a_connection_drops_its_secret() {
    let dir = tempfile::tempdir().expect("dir");
    let node = open(dir.path());
    let caller = admin(&node);
    let connection = |target: &str, key: Option<&str>| ConnectionCreate {
        name: "up".into(),
        kind: "openai".into(),
        target: target.into(),
        api_key: key.map(str::to_owned),
        metadata: Default::default(),
    };
    for project in ["src", "same", "moved"] {
        node.core.create_project(&caller, ProjectCreate { name: project.into(), ..Default::default() }).await.expect("project");
    }
    node.agents.create_connection(&caller, "src", connection("http://upstream.test/v1", Some("sk-source-key"))).await.expect("source");
    let file = export_bytes(&node, "src").await;
    // "same" points where the file's connection does, "moved" elsewhere; both hold a key.
    node.agents.create_connection(&caller, "same", connection("http://upstream.test/v1", Some("sk-same-key"))).await.expect("same");
    node.agents.create_connection(&caller, "moved", connection("http://attacker.test/v1", Some("sk-moved-key"))).await.expect("moved");
    let key = |project: &'static str| {
        let (node, caller) = (&node, caller.clone());
        async move { node.agents.get_connection(&caller, project, "up", true).await.expect("connection")["credentials"].clone() }
    };
    let overwrite = |project: &'static str| {
        let (node, caller, file) = (&node, caller.clone(), file.clone());
        async move {
            let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(file))]);
            node.recovery.import_project(&caller, project, OnConflict::Overwrite, body).await.expect("import")
        }
    };

    let same = overwrite("same").await;
    assert_eq!(same.kinds["connection"].overwritten, 1);
    assert!(same.secrets_removed.is_empty(), "the key is kept: {:?}", same.secrets_removed);
    assert_eq!(key("same").await, json!({"type": "ApiKey", "key": "sk-same-key"}));

    let moved = overwrite("moved").await;
    assert_eq!(moved.kinds["connection"].overwritten, 1);
    assert_eq!(moved.secrets_removed, vec!["up".to_owned()], "the connection needs a key again");
    assert_eq!(key("moved").await, json!({"type": "None"}), "a repointed connection keeps no key");
    let shown = node.agents.get_connection(&caller, "moved", "up", false).await.expect("connection");
    assert_eq!(shown["target"], "http://upstream.test/v1");
    node.core.shutdown().await;
}

/// An export file of `n` conversations, made with the encoder.
fn conversations_file(n: usize) -> (Vec<u8>, Vec<String>) {
    let header = Header {
        format: EXPORT_FORMAT.into(),
        version: 1,
        project: ExportedProject {
            id: "proj_01m80mg0dm5fvcsadp142rt41a".into(),
            name: "many".into(),
            display_name: "Many".into(),
            description: String::new(),
            tags: Default::default(),
        },
        exported_at: 1_795_317_826_030_328,
        source_lsn: n as u64,
        kinds: vec![holdfast_types::Kind::Conversation],
    };
    let (mut encoder, mut out) = Encoder::start(&header).expect("header");
    let ids: Vec<String> = (0..n).map(|i| format!("conv_01m80mg0fd4ahn3x3q7{i:08}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let r = ExportedResource {
            kind: holdfast_types::Kind::Conversation,
            id: id.clone(),
            parent: None,
            created_us: 1_795_317_826_031_000 + i as i64,
            updated_us: 1_795_317_826_031_000 + i as i64,
            body: json!({"metadata": {"n": i.to_string()}}),
            secret_removed: false,
        };
        encoder.resource(&r, &mut out).expect("resource");
    }
    out.extend(encoder.finish().expect("trailer").1);
    (out, ids)
}

/// More resources than one change takes: the import reads the file again chunk by chunk, and
/// `on_conflict=fail` finds a conflict in a later chunk before anything is written.
#[tokio::test]
async fn a_large_import_is_written_and_checked_chunk_by_chunk() {
    let dir = tempfile::tempdir().expect("dir");
    let node = open(dir.path());
    let caller = admin(&node);
    let (file, ids) = conversations_file(9000);
    let first = import(&node, "many", &file).await;
    assert_eq!((first.kinds["conversation"].imported, first.changes), (9000, 2), "8192 resources per change");
    let last = ids.last().expect("ids");
    let shown = node.agents.get_conversation(&caller, "many", last).await.expect("conversation");
    assert_eq!(shown["metadata"]["n"], "8999");
    // A change to the last conversation, then an import that must fail on it.
    let req = ConversationUpdate { metadata: Some(json!({"n": "changed"})) };
    node.agents.update_conversation(&caller, "many", last, req).await.expect("update");
    let lsn = node.core.project_store("many").await.expect("store").last_lsn();
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(file.clone()))]);
    let refused = node.recovery.import_project(&caller, "many", OnConflict::Fail, body).await.expect_err("conflict");
    assert_eq!(refused.kind, ErrorKind::Conflict);
    assert!(refused.message.starts_with("1 resources of the file exist") && refused.message.contains(last), "{}", refused.message);
    assert_eq!(node.core.project_store("many").await.expect("store").last_lsn(), lsn, "nothing was written");
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(file))]);
    let overwritten = node.recovery.import_project(&caller, "many", OnConflict::Overwrite, body).await.expect("overwrite");
    assert_eq!((overwritten.kinds["conversation"].overwritten, overwritten.kinds["conversation"].unchanged), (1, 8999));
    node.core.shutdown().await;
}

/// An imported connection meets the rules of one made through the API: a file whose connection
/// targets a cloud metadata endpoint is refused whole.
#[tokio::test]
async fn an_import_cannot_bring_a_connection_to_a_refused_target() {
    let dir = tempfile::tempdir().expect("dir");
    let node = open(dir.path());
    let caller = admin(&node);
    let header = Header {
        format: EXPORT_FORMAT.into(),
        version: 1,
        project: ExportedProject {
            id: "proj_01m80mg0dm5fvcsadp142rt41a".into(),
            name: "metadata".into(),
            display_name: "Metadata".into(),
            description: String::new(),
            tags: Default::default(),
        },
        exported_at: 1_795_317_826_030_328,
        source_lsn: 1,
        kinds: vec![holdfast_types::Kind::Connection],
    };
    let (mut encoder, mut file) = Encoder::start(&header).expect("header");
    let r = ExportedResource {
        kind: holdfast_types::Kind::Connection,
        id: "conn:imds".into(),
        parent: None,
        created_us: 1_795_317_826_031_000,
        updated_us: 1_795_317_826_031_000,
        body: json!({"name": "imds", "type": "openai", "target": "http://169.254.169.254/latest", "secret": null, "metadata": {}}),
        secret_removed: false,
    };
    encoder.resource(&r, &mut file).expect("resource");
    file.extend(encoder.finish().expect("trailer").1);
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(file))]);
    let e = node.recovery.import_project(&caller, "metadata", OnConflict::Fail, body).await.expect_err("refused target");
    assert!(e.message.contains("imds") && e.message.contains("link-local"), "{}", e.message);
    let gone = node.core.get_project(&caller, "metadata").await.expect_err("nothing was created");
    assert_eq!(gone.kind, holdfast_types::ErrorKind::NotFound);
    node.core.shutdown().await;
}
