//! Start-up and first-open recovery: what a crash between two steps leaves behind is finished
//! or rolled back, never left stuck.

use holdfast_core::Caller;
use holdfast_node::{Config, Holdfast};
use holdfast_types::api::ProjectCreate;
use holdfast_types::{ErrorKind, Kind, Op, RequestId};

const KEY: &str = "recovery-admin-key-0123456789";

fn open(dir: &std::path::Path) -> Holdfast {
    Holdfast::open(Config::new(dir.to_owned(), "test", Some(KEY.into()))).expect("open").node
}

fn caller(node: &Holdfast) -> Caller {
    Caller { principal: node.core.authenticate(Some(KEY)).expect("auth"), request_id: RequestId::generate() }
}

/// A delete whose change is journaled but whose catalog step never ran (a crash in between) is
/// finished when the project is next opened: the project is gone and its name free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_cut_off_after_its_journal_entry_is_finished_on_next_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first_id = {
        let node = open(dir.path());
        let c = caller(&node);
        let project = node
            .core.create_project(&c, ProjectCreate { name: "half-gone".into(), ..Default::default() })
            .await
            .expect("create");
        // The first step of a delete only: journal the deletion of the project's record.
        let store = node.core.project_store("half-gone").await.expect("store");
        let id = project.id.as_str().to_owned();
        store
            .write("prn_test", "req_test", Box::new(move |_| Ok(vec![Op::Delete { kind: Kind::Project, id }])))
            .await
            .expect("journal the delete");
        let refused = store.write("prn_test", "req_after", Box::new(|_| Ok(Vec::new()))).await;
        assert!(refused.is_err(), "nothing is written after a project's deletion");
        node.core.shutdown().await;
        project.id
    };

    let node = open(dir.path());
    let c = caller(&node);
    let e = node.core.get_project(&c, "half-gone").await.expect_err("deleted project");
    assert_eq!(e.kind, ErrorKind::NotFound);
    let again = node
        .core.create_project(&c, ProjectCreate { name: "half-gone".into(), ..Default::default() })
        .await
        .expect("the name is free again");
    assert_ne!(again.id, first_id);
    let listed = node.core.list_projects(&c, None, None).await.expect("list");
    assert_eq!(listed.data.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), vec![again.id]);
    assert!(
        std::fs::read_dir(dir.path().join("trash")).expect("trash").any(|e| {
            e.map(|e| e.file_name().to_string_lossy().starts_with(first_id.as_str())).unwrap_or(false)
        }),
        "the deleted project's files are kept in the trash"
    );
}
