//! Export → import at the service level:
//!
//! - property: for random sequences of conversation, item, file and metadata operations,
//!   exporting a project and importing it into an empty project on another data directory gives
//!   the same canonical dump (ids, parents, bodies, creation and update times), the same order
//!   of siblings, and re-importing journals nothing;
//! - only admins import; readers cannot export.

use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;
use holdfast_service::data::conversations::{ConversationCreate, ConversationUpdate, ItemsCreate};
use holdfast_service::data::files::FileUpload;
use holdfast_service::export::{OnConflict, Selection};
use holdfast_service::{Caller, Service, ServiceConfig};
use holdfast_types::api::{KeyCreate, ProjectCreate, Role};
use holdfast_types::{ErrorKind, RequestId};
use proptest::prelude::*;
use serde_json::{Value, json};

const KEY: &str = "test-admin-key-0123456789";

fn open(dir: &Path) -> Service {
    Service::open(ServiceConfig::new(dir.to_owned(), "test", Some(KEY.into()))).expect("open service").service
}

fn admin(service: &Service) -> Caller {
    Caller { principal: service.authenticate(Some(KEY)).expect("authenticate"), request_id: RequestId::generate() }
}

async fn export_bytes(service: &Service, project: &str) -> Vec<u8> {
    let (_, mut stream) = service.export_project(&admin(service), project, Selection::default()).await.expect("export");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend(chunk.expect("chunk"));
    }
    out
}

async fn import(service: &Service, project: &str, file: &[u8]) -> holdfast_service::export::ImportSummary {
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(file))]);
    service.import_project(&admin(service), project, OnConflict::Skip, body).await.expect("import")
}

/// The dump without the project's own record, and without positions (renumbered by import),
/// plus, per (kind, parent), the ids in sibling order.
async fn comparable(service: &Service, project: &str) -> (Vec<Value>, Vec<(String, Vec<String>)>) {
    let dump = service.project_store(project).await.expect("store").dump().await.expect("dump");
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
    a.create_project(&caller, req).await.expect("project");
    let mut conversations: Vec<String> = Vec::new();
    let message = |i: usize| json!({"type": "message", "role": "user", "content": format!("m{i}")});
    for (n, step) in steps.into_iter().enumerate() {
        match step {
            Step::Conversation { items } => {
                let req = ConversationCreate { items: Some((0..items).map(message).collect()), metadata: None };
                let conv = a.create_conversation(&caller, "src", req).await.expect("conversation");
                conversations.push(conv["id"].as_str().expect("id").to_owned());
            }
            Step::Items { conversation, items } if !conversations.is_empty() => {
                let conv = &conversations[conversation % conversations.len()];
                let req = ItemsCreate { items: (0..items).map(message).collect() };
                a.create_items(&caller, "src", conv, req).await.expect("items");
            }
            Step::Metadata { conversation, value } if !conversations.is_empty() => {
                let conv = &conversations[conversation % conversations.len()];
                let req = ConversationUpdate { metadata: Some(json!({"v": value.to_string()})) };
                a.update_conversation(&caller, "src", conv, req).await.expect("update");
            }
            Step::DeleteConversation { conversation } if !conversations.is_empty() => {
                let conv = conversations.remove(conversation % conversations.len());
                a.delete_conversation(&caller, "src", &conv).await.expect("delete");
            }
            Step::File { size } => {
                let upload = FileUpload { filename: Some(format!("f{n}.txt")), purpose: "assistants".into(), bytes: vec![b'a' + (n % 26) as u8; size].into() };
                a.create_file(&caller, "src", upload).await.expect("file");
            }
            _ => {}
        }
    }
    let file = export_bytes(&a, "src").await;
    let first = import(&b, "copy", &file).await;
    assert!(first.created_project);
    assert_eq!(comparable(&a, "src").await, comparable(&b, "copy").await, "export → import keeps the state");
    let lsn = b.project_store("copy").await.expect("store").last_lsn();
    let again = import(&b, "copy", &file).await;
    assert_eq!(again.changes, 0);
    assert_eq!(b.project_store("copy").await.expect("store").last_lsn(), lsn, "re-import journals nothing");
    a.shutdown().await;
    b.shutdown().await;
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
    let service = open(dir.path());
    let caller = admin(&service);
    let req = ProjectCreate { name: "src".into(), ..Default::default() };
    service.create_project(&caller, req).await.expect("project");
    let as_role = |role: Role| {
        let service = &service;
        let caller = caller.clone();
        async move {
            let key = service.create_key(&caller, KeyCreate { name: format!("{}-user", role.as_str()), role, scope: None }).await.expect("key");
            Caller { principal: service.authenticate(Some(&key.key)).expect("auth"), request_id: RequestId::generate() }
        }
    };
    let contributor = as_role(Role::Contributor).await;
    let reader = as_role(Role::Reader).await;
    let file = export_bytes(&service, "src").await;
    let (_, _) = service.export_project(&contributor, "src", Selection::default()).await.expect("contributors export");
    let refused = service.export_project(&reader, "src", Selection::default()).await.err().expect("readers do not export");
    assert_eq!(refused.kind, ErrorKind::Forbidden);
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(file))]);
    let refused = service.import_project(&contributor, "copy", OnConflict::Skip, body).await.expect_err("contributors do not import");
    assert_eq!(refused.kind, ErrorKind::Forbidden);
}
