//! The runs projection behind `search_runs` (holdfast-ml's `index.rs`) answers as a projection
//! rebuilt from the state does, whatever happened in between: runs created, metrics logged
//! (latest values moving), tags set and removed, runs deleted and restored, an experiment's runs
//! in another experiment. Each step searches with the node's long-lived `Ml` (caught up from the
//! journal) and with a fresh `Ml` (built from the state), and the two answers must be equal —
//! and match what the test itself expects of the filter.

use std::sync::Arc;

use holdfast_core::Caller;
use holdfast_ml::Ml;
use holdfast_node::{Config, Holdfast};
use holdfast_types::RequestId;
use holdfast_types::api::ProjectCreate;
use proptest::prelude::*;
use serde_json::{Value, json};

const KEY: &str = "test-admin-key-0123456789";
const P: &str = "mlsearch";

fn ids(answer: &Value) -> Vec<String> {
    answer["runs"].as_array().expect("runs").iter().map(|r| r["info"]["run_id"].as_str().expect("id").to_owned()).collect()
}

#[derive(Clone, Debug)]
enum Step {
    Create { experiment: usize },
    Log { run: usize, value: f64, step: i64 },
    Tag { run: usize, on: bool },
    Delete { run: usize },
    Restore { run: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..2usize).prop_map(|experiment| Step::Create { experiment }),
        (0..8usize, -5.0..5.0f64, 0..4i64).prop_map(|(run, value, step)| Step::Log { run, value, step }),
        (0..8usize, any::<bool>()).prop_map(|(run, on)| Step::Tag { run, on }),
        (0..8usize).prop_map(|run| Step::Delete { run }),
        (0..8usize).prop_map(|run| Step::Restore { run }),
    ]
}

async fn check(steps: Vec<Step>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Holdfast::open(Config::new(dir.path().to_owned(), "test", Some(KEY.into()))).expect("open node").node;
    let c = Caller { principal: node.core.authenticate(Some(KEY)).expect("authenticate"), request_id: RequestId::generate() };
    node.core.create_project(&c, ProjectCreate { name: P.into(), ..Default::default() }).await.expect("project");
    let mut experiments = Vec::new();
    for name in ["a", "b"] {
        let made = node.ml.create_experiment(&c, P, json!({ "name": name })).await.expect("experiment");
        experiments.push(made["experiment_id"].as_str().expect("id").to_owned());
    }
    let mut runs: Vec<String> = Vec::new();
    let searches = [
        ("", vec![]),
        ("metrics.loss > 0", vec!["metrics.loss DESC".to_owned()]),
        ("tags.keep = 'yes'", vec![]),
        ("attributes.status = 'RUNNING'", vec!["attributes.start_time ASC".to_owned()]),
    ];
    for step in steps {
        let result = match step {
            Step::Create { experiment } => {
                let run = node.ml.create_run(&c, P, json!({ "experiment_id": experiments[experiment] })).await.expect("run");
                runs.push(run["run"]["info"]["run_id"].as_str().expect("id").to_owned());
                Ok(json!({}))
            }
            _ if runs.is_empty() => continue,
            Step::Log { run, value, step } => {
                let id = &runs[run % runs.len()];
                node.ml.log_metric(&c, P, json!({ "run_id": id, "key": "loss", "value": value, "timestamp": 1, "step": step })).await
            }
            Step::Tag { run, on } => {
                let id = &runs[run % runs.len()];
                if on {
                    node.ml.set_tag(&c, P, json!({ "run_id": id, "key": "keep", "value": "yes" })).await
                } else {
                    node.ml.delete_tag(&c, P, json!({ "run_id": id, "key": "keep" })).await
                }
            }
            Step::Delete { run } => node.ml.delete_run(&c, P, json!({ "run_id": runs[run % runs.len()] })).await,
            Step::Restore { run } => node.ml.restore_run(&c, P, json!({ "run_id": runs[run % runs.len()] })).await,
        };
        // Refusals (logging to a deleted run, removing an absent tag) are part of the game.
        drop(result);
        let fresh = Ml::new(Arc::clone(&node.core));
        for (filter, order) in &searches {
            for view in ["ACTIVE_ONLY", "ALL"] {
                let req = json!({ "experiment_ids": experiments, "filter": filter, "order_by": order, "run_view_type": view });
                let kept = node.ml.search_runs(&c, P, req.clone()).await.expect("search");
                let rebuilt = fresh.search_runs(&c, P, req).await.expect("search");
                assert_eq!(ids(&kept), ids(&rebuilt), "filter {filter:?} order {order:?} view {view}");
                assert_eq!(kept, rebuilt, "the runs themselves, filter {filter:?}");
            }
        }
    }
    // What the filters say holds of the answer too.
    let all = node.ml.search_runs(&c, P, json!({ "experiment_ids": experiments, "filter": "metrics.loss > 0" })).await.expect("search");
    for run in all["runs"].as_array().expect("runs") {
        let loss = run["data"]["metrics"].as_array().expect("metrics").iter().find(|m| m["key"] == "loss").expect("loss");
        assert!(loss["value"].as_f64().expect("value") > 0.0, "{run}");
        assert_eq!(run["info"]["lifecycle_stage"], "active");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn the_kept_projection_answers_as_a_rebuilt_one(steps in prop::collection::vec(step(), 1..30)) {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        rt.block_on(check(steps));
    }
}
