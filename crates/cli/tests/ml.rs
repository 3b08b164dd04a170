//! The ML workspace (MLflow's REST API, driven with reqwest) against the real binary, through
//! what protects a project: a hot replica in another region serves a run's reads from its own
//! copy and forwards its writes, and a planned failover keeps runs, metrics and registered
//! models; point-in-time restore (from the journal and from the archive) gives the run exactly
//! as it was; export/import keeps ids, times, steps and version numbers; undelete brings a
//! registered model back with its versions; a data-plane lock refuses deleting a version; a
//! retried log-batch writes nothing twice and bad input writes nothing; a kill -9 loses no
//! acknowledged metric point; the ML roles are kept apart from the agents' ones.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::cluster::{pair, pair_with, status, wait_applied};
use common::{ADMIN_KEY, Api, Cli, Opts, Out, Resp, Server};
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;

/// A client-chosen metric time (MLflow's milliseconds), far from now so no server clock shows.
const T0: i64 = 1_700_000_000_000;

/// A project's MLflow tracking/registry route.
fn ml(project: &str, rest: &str) -> String {
    format!("/api/projects/{project}/mlflow/api/2.0/mlflow{rest}")
}

/// A project's MLflow artifact proxy route for `path` (under the project's artifact root).
fn artifact(project: &str, path: &str) -> String {
    format!("/api/projects/{project}/mlflow/api/2.0/mlflow-artifacts/artifacts/{path}")
}

/// Asserts MLflow's error shape `{"error_code", "message"}` with this status and code; returns
/// the message.
fn ml_err(r: &Resp, status: u16, code: &str) -> String {
    assert_eq!(r.status, status, "unexpected status; body: {}", r.text);
    let body = r.json();
    let fields = body.as_object().unwrap_or_else(|| panic!("not an object: {body}"));
    assert_eq!(fields.len(), 2, "exactly error_code and message: {body}");
    assert_eq!(body["error_code"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_else(|| panic!("no message: {body}"));
    assert!(!message.is_empty(), "{body}");
    message.to_owned()
}

fn lsn(api: &Api, project: &str) -> u64 {
    api.get(&format!("/v1/projects/{project}")).ok(200)["lsn"].as_u64().expect("lsn")
}

fn create_experiment(api: &Api, project: &str, name: &str) -> String {
    let r = api.post(&ml(project, "/experiments/create"), &json!({ "name": name })).ok(200);
    r["experiment_id"].as_str().unwrap_or_else(|| panic!("no experiment_id: {r}")).to_owned()
}

/// Creates a run started at `start`; returns its id and its artifact root (a path under the
/// project's artifact root).
fn create_run(api: &Api, project: &str, experiment: &str, start: i64, tags: Value) -> (String, String) {
    let r = api.post(&ml(project, "/runs/create"), &json!({ "experiment_id": experiment, "start_time": start, "tags": tags })).ok(200);
    let info = &r["run"]["info"];
    assert_eq!((info["experiment_id"].as_str(), info["start_time"].as_i64()), (Some(experiment), Some(start)), "{r}");
    let id = info["run_id"].as_str().expect("run_id").to_owned();
    let uri = info["artifact_uri"].as_str().expect("artifact_uri");
    let root = uri.strip_prefix("mlflow-artifacts:").unwrap_or(uri).trim_start_matches('/').to_owned();
    (id, root)
}

/// `metrics` of a log-batch: `(key, value, timestamp, step)` each.
fn points(list: &[(&str, f64, i64, i64)]) -> Value {
    Value::Array(list.iter().map(|(k, v, t, s)| json!({ "key": k, "value": v, "timestamp": t, "step": s })).collect())
}

fn log_batch(api: &Api, project: &str, run: &str, metrics: &[(&str, f64, i64, i64)], params: Value, tags: Value) -> Resp {
    api.post(&ml(project, "/runs/log-batch"), &json!({ "run_id": run, "metrics": points(metrics), "params": params, "tags": tags }))
}

fn get_run(api: &Api, project: &str, run: &str) -> Value {
    api.get(&ml(project, &format!("/runs/get?run_id={run}"))).ok(200)["run"].clone()
}

/// A metric's history as `(value, timestamp, step)`, in the order the server gives it.
fn history(api: &Api, project: &str, run: &str, key: &str) -> Vec<(f64, i64, i64)> {
    let r = api.get(&ml(project, &format!("/metrics/get-history?run_id={run}&metric_key={key}"))).ok(200);
    let Some(metrics) = r["metrics"].as_array() else { return Vec::new() };
    metrics
        .iter()
        .map(|m| {
            assert_eq!(m["key"], key, "{m}");
            (m["value"].as_f64().expect("value"), m["timestamp"].as_i64().expect("timestamp"), m["step"].as_i64().expect("step"))
        })
        .collect()
}

/// The points of `list` for `key`, as [`history`] gives them.
fn expected(list: &[(&str, f64, i64, i64)], key: &str) -> Vec<(f64, i64, i64)> {
    let mut out: Vec<(f64, i64, i64)> = list.iter().filter(|p| p.0 == key).map(|p| (p.1, p.2, p.3)).collect();
    out.sort_by_key(|p| (p.1, p.2));
    out
}

/// A run's params, tags or metrics as `{key: value}`.
fn data_map(run: &Value, what: &str) -> serde_json::Map<String, Value> {
    run["data"][what].as_array().map_or_else(Default::default, |list| {
        list.iter().map(|kv| (kv["key"].as_str().expect("key").to_owned(), kv["value"].clone())).collect()
    })
}

fn put_artifact(api: &Api, project: &str, path: &str, bytes: &[u8]) {
    let r = api.send_raw(Method::PUT, &artifact(project, path), Some("application/octet-stream"), bytes.to_vec());
    r.ok(200);
}

fn search_runs(api: &Api, project: &str, experiment: &str, filter: &str) -> Vec<String> {
    let r = api.post(&ml(project, "/runs/search"), &json!({ "experiment_ids": [experiment], "filter": filter })).ok(200);
    r["runs"].as_array().map_or_else(Vec::new, |runs| runs.iter().map(|r| r["info"]["run_id"].as_str().expect("run_id").to_owned()).collect())
}

fn create_model(api: &Api, project: &str, name: &str) {
    let r = api.post(&ml(project, "/registered-models/create"), &json!({ "name": name })).ok(200);
    assert_eq!(r["registered_model"]["name"], name, "{r}");
}

/// Creates a version of `model`; returns its number as the wire gives it.
fn create_version(api: &Api, project: &str, model: &str, source: &str, run: &str) -> String {
    let r = api.post(&ml(project, "/model-versions/create"), &json!({ "name": model, "source": source, "run_id": run })).ok(200);
    r["model_version"]["version"].as_str().unwrap_or_else(|| panic!("no version: {r}")).to_owned()
}

fn get_version(api: &Api, project: &str, model: &str, version: &str) -> Resp {
    api.get(&ml(project, &format!("/model-versions/get?name={model}&version={version}")))
}

/// The version numbers of `model` that model-versions/search finds, ascending.
fn versions(api: &Api, project: &str, model: &str) -> Vec<i64> {
    let r = api.get(&ml(project, &format!("/model-versions/search?filter=name%3D%27{model}%27"))).ok(200);
    let mut out: Vec<i64> = r["model_versions"]
        .as_array()
        .map_or_else(Vec::new, |vs| vs.iter().map(|v| v["version"].as_str().expect("version").parse().expect("a number")).collect());
    out.sort_unstable();
    out
}

/// A registered model's resource id (`rm:{name}`), from the project's journal.
fn model_resource_id(api: &Api, project: &str, name: &str) -> String {
    for change in api.journal(project) {
        for op in change["ops"].as_array().expect("ops") {
            if op["type"] == "put" && op["kind"] == "ml_registered_model" && op["body"]["name"] == name {
                return op["id"].as_str().expect("id").to_owned();
            }
        }
    }
    panic!("no registered model {name:?} in the journal of {project}")
}

/// The CLI pointed at one server, always with `-o json`.
fn cli(cli: &Cli, server: &Server, args: &[&str]) -> Out {
    let mut all = vec!["--endpoint", server.base.as_str(), "--key", ADMIN_KEY, "-o", "json"];
    all.extend_from_slice(args);
    cli.run(&all)
}

// ---- 1. hot replica, then a planned failover ----

#[test]
fn a_hot_replica_serves_a_run_and_a_planned_failover_keeps_runs_metrics_and_models() {
    let (a, b, _da, _db) = pair();
    let (api_a, api_b) = (a.admin(), b.admin());
    let p = "mlrepl";
    api_a.create_project(p);
    let exp = create_experiment(&api_a, p, "replicated");
    let (run, root) = create_run(&api_a, p, &exp, T0, json!([{ "key": "team", "value": "ml" }]));
    let first = [
        ("loss", 1.0, T0 + 1, 0),
        ("loss", 0.5, T0 + 2, 1),
        ("loss", 0.25, T0 + 3, 2),
        ("loss", 0.125, T0 + 4, 3),
        ("acc", 0.5, T0 + 1, 0),
        ("acc", 0.75, T0 + 4, 3),
    ];
    log_batch(&api_a, p, &run, &first, json!([{ "key": "lr", "value": "0.01" }]), json!([{ "key": "stage", "value": "train" }])).ok(200);
    let weights = b"weights: 0.1 0.2 0.3\n".repeat(50);
    put_artifact(&api_a, p, &format!("{root}/model/weights.bin"), &weights);
    create_model(&api_a, p, "repl-model");
    let source = format!("mlflow-artifacts:/{root}/model");
    assert_eq!(create_version(&api_a, p, "repl-model", &source, &run), "1");
    assert_eq!(create_version(&api_a, p, "repl-model", &source, &run), "2");
    let run_on_a = get_run(&api_a, p, &run);

    api_a.post(&format!("/v1/projects/{p}/replicas"), &json!({ "region": "b", "mode": "hot" })).ok(200);
    wait_applied(&api_b, p, lsn(&api_a, p));

    // Reads on b's URL are b's own: with a stopped (SIGSTOP), b still answers them, at once.
    let quick = api_b.with_timeout(Duration::from_secs(5));
    common::send_signal(a.pid(), "STOP");
    let got = quick.try_get(&ml(p, &format!("/runs/get?run_id={run}")));
    let found = quick.try_post(&ml(p, "/runs/search"), &json!({ "experiment_ids": [exp], "filter": "metrics.loss < 0.2 and params.lr = '0.01'" }));
    let none = quick.try_post(&ml(p, "/runs/search"), &json!({ "experiment_ids": [exp], "filter": "metrics.loss > 0.2" }));
    let hist = quick.try_get(&ml(p, &format!("/metrics/get-history?run_id={run}&metric_key=loss")));
    let bytes = quick.try_get(&artifact(p, &format!("{root}/model/weights.bin")));
    let listed = quick.try_get(&ml(p, &format!("/artifacts/list?run_id={run}&path=model")));
    common::send_signal(a.pid(), "CONT");
    let answered = |r: Option<Resp>, what: &str| r.unwrap_or_else(|| panic!("b did not answer {what} while a was stopped"));
    assert_eq!(answered(got, "runs/get").ok(200)["run"], run_on_a, "b serves the run as a has it");
    let found = answered(found, "runs/search").ok(200);
    assert_eq!(found["runs"].as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(found["runs"][0]["info"]["run_id"], run.as_str());
    assert_eq!(answered(none, "runs/search").ok(200)["runs"].as_array().map_or(0, Vec::len), 0, "the filter filters");
    let hist = answered(hist, "get-history").ok(200);
    let steps: Vec<(f64, i64)> = hist["metrics"].as_array().expect("metrics").iter().map(|m| (m["value"].as_f64().expect("value"), m["step"].as_i64().expect("step"))).collect();
    assert_eq!(steps, [(1.0, 0), (0.5, 1), (0.25, 2), (0.125, 3)], "{hist}");
    let bytes = answered(bytes, "artifact");
    assert_eq!((bytes.status, bytes.text.as_bytes()), (200, &weights[..]), "the artifact's bytes on b");
    let listed = answered(listed, "artifacts/list").ok(200);
    assert_eq!(listed["files"], json!([{ "path": "model/weights.bin", "is_dir": false, "file_size": weights.len() }]), "{listed}");

    // A write on b's URL is forwarded: committed on a, and answered once b holds it, so the
    // next read on b sees it without asking (MLflow's client cannot send x-holdfast-min-lsn).
    let second = [("loss", 0.0625, T0 + 5, 4), ("acc", 0.875, T0 + 5, 4)];
    let w = log_batch(&api_b, p, &run, &second, json!([]), json!([]));
    w.ok(200);
    let written: u64 = w.header("x-holdfast-lsn").expect("an LSN on the forwarded write").parse().expect("a number");
    assert_eq!(written, lsn(&api_a, p), "the write is a's");
    assert_eq!(history(&api_a, p, &run, "loss").last(), Some(&(0.0625, T0 + 5, 4)));
    let read = api_b.get(&ml(p, &format!("/runs/get?run_id={run}")));
    assert_eq!(data_map(&read.ok(200)["run"], "metrics")["loss"], json!(0.0625));
    assert!(read.header("x-holdfast-lsn").and_then(|l| l.parse::<u64>().ok()) >= Some(written), "b has applied the write");
    put_artifact(&api_b, p, &format!("{root}/notes.txt"), b"written through b");
    assert_eq!(api_a.get(&artifact(p, &format!("{root}/notes.txt"))).text, "written through b");

    // A planned failover; everything is on the new primary.
    wait_applied(&api_b, p, lsn(&api_a, p));
    let run_before = get_run(&api_a, p, &run);
    let model_before = api_a.get(&ml(p, "/registered-models/get?name=repl-model")).ok(200);
    let moved = api_a.post(&format!("/v1/projects/{p}/failover"), &json!({ "to": "b" })).ok(200);
    assert_eq!((moved["from_region"].as_str(), moved["to_region"].as_str()), (Some("a"), Some("b")), "{moved:#}");
    let s = status(&api_b, p);
    assert_eq!((s["role"].as_str(), s["epoch"].as_u64()), (Some("primary"), Some(2)), "{s:#}");
    assert_eq!(get_run(&api_b, p, &run), run_before);
    assert_eq!(history(&api_b, p, &run, "loss"), expected(&[&first[..], &second[..]].concat(), "loss"));
    assert_eq!(history(&api_b, p, &run, "acc"), expected(&[&first[..], &second[..]].concat(), "acc"));
    assert_eq!(api_b.get(&ml(p, "/registered-models/get?name=repl-model")).ok(200), model_before);
    assert_eq!(versions(&api_b, p, "repl-model"), [1, 2]);
    for v in ["1", "2"] {
        let got = get_version(&api_b, p, "repl-model", v).ok(200);
        assert_eq!((got["model_version"]["source"].as_str(), got["model_version"]["run_id"].as_str()), (Some(source.as_str()), Some(run.as_str())), "{got}");
    }
    assert_eq!(api_b.get(&artifact(p, &format!("{root}/model/weights.bin"))).text.as_bytes(), &weights[..]);

    // b takes writes now; a, a hot replica, follows.
    let third = [("loss", 0.03125, T0 + 6, 5)];
    log_batch(&api_b, p, &run, &third, json!([{ "key": "epochs", "value": "6" }]), json!([])).ok(200);
    assert_eq!(create_version(&api_b, p, "repl-model", &source, &run), "3");
    let all = [&first[..], &second[..], &third[..]].concat();
    assert_eq!(history(&api_b, p, &run, "loss"), expected(&all, "loss"));
    wait_applied(&api_a, p, lsn(&api_b, p));
    assert_eq!(history(&api_a, p, &run, "loss"), expected(&all, "loss"), "the old primary follows");
    assert_eq!(data_map(&get_run(&api_a, p, &run), "params")["epochs"], "6");
    assert_eq!(versions(&api_a, p, "repl-model"), [1, 2, 3]);
    // A write sent to a is forwarded to b.
    log_batch(&api_a, p, &run, &[("loss", 0.015625, T0 + 7, 6)], json!([]), json!([])).ok(200);
    assert_eq!(history(&api_b, p, &run, "loss").last(), Some(&(0.015625, T0 + 7, 6)));
}

#[test]
fn a_hot_replica_whose_primary_is_gone_refuses_writes_in_mlflows_shape() {
    let (a, b, _da, _db) = pair_with(&|o| o.env("HOLDFAST_MIN_LSN_WAIT_MS", "300"));
    let (api_a, api_b) = (a.admin(), b.admin());
    let p = "mlgone";
    api_a.create_project(p);
    let exp = create_experiment(&api_a, p, "gone");
    let (run, _) = create_run(&api_a, p, &exp, T0, json!([]));
    log_batch(&api_a, p, &run, &[("loss", 1.0, T0, 0)], json!([]), json!([])).ok(200);
    api_a.post(&format!("/v1/projects/{p}/replicas"), &json!({ "region": "b", "mode": "hot" })).ok(200);
    wait_applied(&api_b, p, lsn(&api_a, p));
    assert!(!a.kill9().success());
    // Reads still come from b's copy.
    assert_eq!(history(&api_b, p, &run, "loss"), [(1.0, T0, 0)]);
    // A write cannot be forwarded: 503, in MLflow's shape (the client reads error_code to
    // decide whether to retry), and nothing is written here.
    let refused = log_batch(&api_b, p, &run, &[("loss", 9.0, T0 + 1, 1)], json!([]), json!([]));
    let message = ml_err(&refused, 503, "TEMPORARILY_UNAVAILABLE");
    assert!(message.contains("unreachable"), "{message}");
    // So is a read-your-writes wait that runs out.
    let late = api_b.send(Method::GET, &ml(p, &format!("/runs/get?run_id={run}")), None, &[("x-holdfast-min-lsn", "999999")]);
    ml_err(&late, 503, "TEMPORARILY_UNAVAILABLE");
    assert_eq!(history(&api_b, p, &run, "loss"), [(1.0, T0, 0)]);
}

// ---- 2. point-in-time restore ----

/// An archive directory and a server configuration shipping to it every 100 ms.
fn archive_config(archive: &TempDir) -> String {
    format!(
        "listen = \"127.0.0.1:{{port}}\"\n\n[archive]\nurl = \"file://{}\"\nretention_hours = 168\ninterval_ms = 100\nsnapshot_secs = 2\nlevels_secs = [1, 4]\n",
        archive.path().display()
    )
}

fn rfc3339_now() -> String {
    jiff::Timestamp::from_microsecond(common::now_us()).expect("a valid time").to_string()
}

#[test]
fn point_in_time_restore_gives_the_run_as_it_was() {
    let (data, archive) = (tempfile::tempdir().expect("data"), tempfile::tempdir().expect("archive"));
    let server = Server::start_with(data.path(), Opts { config: Some(archive_config(&archive)), ..Opts::default() });
    let api = server.admin();
    let c = Cli::new();
    let p = "mlpitr";
    api.create_project(p);
    let exp = create_experiment(&api, p, "pitr");
    let (run, root) = create_run(&api, p, &exp, T0, json!([{ "key": "phase", "value": "early" }, { "key": "scratch", "value": "x" }]));
    let early = [("loss", 1.0, T0 + 1, 0), ("loss", 0.5, T0 + 2, 1), ("loss", 0.25, T0 + 3, 2)];
    log_batch(&api, p, &run, &early, json!([{ "key": "lr", "value": "0.1" }]), json!([])).ok(200);
    put_artifact(&api, p, &format!("{root}/model.txt"), b"model as of the early steps");
    let run_then = get_run(&api, p, &run);
    let history_then = history(&api, p, &run, "loss");
    assert_eq!(history_then, expected(&early, "loss"));

    sleep(Duration::from_millis(50));
    let between = rfc3339_now();
    sleep(Duration::from_millis(50));

    let late = [("loss", 0.125, T0 + 4, 3), ("loss", 0.0625, T0 + 5, 4)];
    log_batch(&api, p, &run, &late, json!([{ "key": "batch", "value": "64" }]), json!([{ "key": "phase", "value": "late" }])).ok(200);
    api.post(&ml(p, "/runs/delete-tag"), &json!({ "run_id": run, "key": "scratch" })).ok(200);
    api.post(&ml(p, "/runs/update"), &json!({ "run_id": run, "status": "FINISHED", "end_time": T0 + 100 })).ok(200);
    put_artifact(&api, p, &format!("{root}/model.txt"), b"model as of the late steps");
    put_artifact(&api, p, &format!("{root}/late.txt"), b"only later");
    let run_now = get_run(&api, p, &run);
    assert_eq!((run_now["info"]["status"].as_str(), run_now["info"]["end_time"].as_i64()), (Some("FINISHED"), Some(T0 + 100)), "{run_now}");
    assert!(!data_map(&run_now, "tags").contains_key("scratch"), "{run_now}");

    // From the journal, then (once archived) from the archive: the run exactly as it was.
    let restore = |into: &str, more: &[&str]| {
        let mut args = vec!["restore", "--project", p, "--into", into, "--at", between.as_str()];
        args.extend_from_slice(more);
        cli(&c, &server, &args).json()
    };
    let summary = restore("mlpitr-journal", &[]);
    assert_eq!(summary["source"], "journal", "{summary}");
    let backed = cli(&c, &server, &["backup", "now", "--project", p]).json();
    assert_eq!(backed["archived_lsn"].as_u64(), Some(lsn(&api, p)), "{backed}");
    let summary = restore("mlpitr-archive", &["--from-archive"]);
    assert_eq!(summary["source"], "archive", "{summary}");
    for restored in ["mlpitr-journal", "mlpitr-archive"] {
        let got = get_run(&api, restored, &run);
        assert_eq!(got, run_then, "{restored}: the run as it was at {between}");
        assert_eq!(data_map(&got, "tags")["scratch"], "x", "{restored}");
        assert_eq!(data_map(&got, "tags")["phase"], "early", "{restored}");
        assert_eq!(got["info"]["status"], "RUNNING", "{restored}");
        assert_eq!(history(&api, restored, &run, "loss"), history_then, "{restored}: exactly the earlier points");
        assert_eq!(api.get(&artifact(restored, &format!("{root}/model.txt"))).text, "model as of the early steps", "{restored}");
        ml_err(&api.get(&artifact(restored, &format!("{root}/late.txt"))), 404, "RESOURCE_DOES_NOT_EXIST");
        assert_eq!(search_runs(&api, restored, &exp, "metrics.loss < 0.2"), Vec::<String>::new(), "{restored}");
        assert_eq!(search_runs(&api, restored, &exp, "metrics.loss = 0.25"), [run.as_str()], "{restored}");
    }
    // The source is untouched.
    assert_eq!(get_run(&api, p, &run), run_now);
    assert_eq!(history(&api, p, &run, "loss"), expected(&[&early[..], &late[..]].concat(), "loss"));
    assert_eq!(server.stop().code(), Some(0));
}

// ---- 3. export / import ----

#[test]
fn export_import_keeps_run_ids_times_steps_and_version_numbers() {
    let (dir_a, dir_b, work) = (tempfile::tempdir().expect("a"), tempfile::tempdir().expect("b"), tempfile::tempdir().expect("w"));
    let (a, b) = (Server::start(dir_a.path()), Server::start(dir_b.path()));
    let (api_a, api_b) = (a.admin(), b.admin());
    let c = Cli::new();
    api_a.create_project("mlsrc");
    let exp = create_experiment(&api_a, "mlsrc", "exported");
    let (run, root) = create_run(&api_a, "mlsrc", &exp, T0 - 5_000, json!([{ "key": "team", "value": "ml" }]));
    let logged = [
        ("loss", 1.0, T0 + 10, 0),
        ("loss", 0.5, T0 + 20, 5),
        ("loss", 0.5, T0 + 30, 5),
        ("loss", 0.25, T0 + 40, 10),
        ("acc", 0.9, T0 + 40, 10),
    ];
    log_batch(&api_a, "mlsrc", &run, &logged[..3], json!([{ "key": "lr", "value": "0.01" }]), json!([])).ok(200);
    log_batch(&api_a, "mlsrc", &run, &logged[3..], json!([]), json!([{ "key": "note", "value": "second batch" }])).ok(200);
    api_a.post(&ml("mlsrc", "/runs/update"), &json!({ "run_id": run, "status": "FINISHED", "end_time": T0 + 60_000 })).ok(200);
    put_artifact(&api_a, "mlsrc", &format!("{root}/model/MLmodel"), b"flavors: {}\n");
    create_model(&api_a, "mlsrc", "exported-model");
    let source = format!("mlflow-artifacts:/{root}/model");
    for n in ["1", "2", "3"] {
        assert_eq!(create_version(&api_a, "mlsrc", "exported-model", &source, &run), n);
    }
    api_a.send(Method::DELETE, &ml("mlsrc", "/model-versions/delete"), Some(&json!({ "name": "exported-model", "version": "2" })), &[]).ok(200);
    assert_eq!(versions(&api_a, "mlsrc", "exported-model"), [1, 3]);

    let snapshot = |api: &Api, project: &str| {
        json!({
            "experiment": api.get(&ml(project, &format!("/experiments/get?experiment_id={exp}"))).ok(200),
            "run": get_run(api, project, &run),
            "loss": history(api, project, &run, "loss"),
            "acc": history(api, project, &run, "acc"),
            "search": search_runs(api, project, &exp, "metrics.loss < 0.3"),
            "model": api.get(&ml(project, "/registered-models/get?name=exported-model")).ok(200),
            "v1": get_version(api, project, "exported-model", "1").ok(200),
            "v3": get_version(api, project, "exported-model", "3").ok(200),
            "artifacts": api.get(&ml(project, &format!("/artifacts/list?run_id={run}&path=model"))).ok(200),
            "mlmodel": api.get(&artifact(project, &format!("{root}/model/MLmodel"))).text,
        })
    };
    let source_view = snapshot(&api_a, "mlsrc");
    let info = &source_view["run"]["info"];
    assert_eq!((info["start_time"].as_i64(), info["end_time"].as_i64()), (Some(T0 - 5_000), Some(T0 + 60_000)), "{info}");
    assert_eq!(source_view["loss"], json!([[1.0, T0 + 10, 0], [0.5, T0 + 20, 5], [0.5, T0 + 30, 5], [0.25, T0 + 40, 10]]));

    let out = work.path().join("mlsrc.holdfast.jsonl");
    let summary = cli(&c, &a, &["export", "--project", "mlsrc", "--out", out.to_str().expect("path")]).json();
    assert_eq!(summary["kinds"]["ml_run"], 1, "{summary}");
    assert_eq!(summary["kinds"]["ml_model_version"], 2, "{summary}");
    assert_eq!(summary["kinds"]["ml_artifact"], 1, "{summary}");
    assert_eq!(summary["blobs"], 1, "{summary}");

    // In a later second, so times that were not kept would show.
    sleep(Duration::from_millis(1100));
    let imported = cli(&c, &b, &["import", "--in", out.to_str().expect("path"), "--project", "mldst", "--on-conflict", "skip"]).json();
    assert_eq!(imported["created_project"], true, "{imported}");
    assert_eq!(snapshot(&api_b, "mldst"), source_view, "ids, times, steps and versions survive");
    ml_err(&get_version(&api_b, "mldst", "exported-model", "2"), 404, "RESOURCE_DOES_NOT_EXIST");
    // Version numbers are never given twice: the next one is 4.
    assert_eq!(create_version(&api_b, "mldst", "exported-model", &source, &run), "4");
    assert_eq!(versions(&api_b, "mldst", "exported-model"), [1, 3, 4]);
    // The imported run takes more points; a new experiment gets a new id.
    log_batch(&api_b, "mldst", &run, &[("loss", 0.125, T0 + 50, 15)], json!([]), json!([])).ok(200);
    assert_eq!(history(&api_b, "mldst", &run, "loss").len(), 5);
    assert_ne!(create_experiment(&api_b, "mldst", "after-import"), exp);
    // Importing the same file again writes nothing.
    let before = lsn(&api_b, "mldst");
    let again = cli(&c, &b, &["import", "--in", out.to_str().expect("path"), "--project", "mldst", "--on-conflict", "skip"]).json();
    assert_eq!(again["changes"], 0, "{again}");
    assert_eq!(lsn(&api_b, "mldst"), before);
}

#[test]
fn importing_a_model_whose_name_is_taken_keeps_names_unique() {
    let (dir, work) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("work"));
    let server = Server::start(dir.path());
    let api = server.admin();
    let c = Cli::new();
    for project in ["mlsrc2", "mldst2"] {
        api.create_project(project);
        create_model(&api, project, "same-name");
        create_version(&api, project, "same-name", &format!("mlflow-artifacts:/0/{project}"), "");
    }
    let out = work.path().join("src.jsonl");
    cli(&c, &server, &["export", "--project", "mlsrc2", "--out", out.to_str().expect("path")]).success();
    let current = api.get(&ml("mldst2", "/registered-models/get?name=same-name")).ok(200);
    // Whatever the import does with it (refuse, skip), a second model of one name is not an
    // outcome: MLflow's registered model names are unique, and get-by-name would pick one.
    let imported = cli(&c, &server, &["import", "--in", out.to_str().expect("path"), "--project", "mldst2", "--on-conflict", "skip"]);
    let all = api.get(&ml("mldst2", "/registered-models/search")).ok(200);
    let names: Vec<&str> = all["registered_models"].as_array().expect("models").iter().map(|m| m["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["same-name"], "import answered {} {}{}; models now: {all:#}", imported.code, imported.stdout, imported.stderr);
    assert_eq!(api.get(&ml("mldst2", "/registered-models/get?name=same-name")).ok(200), current);
    assert_eq!(server.stop().code(), Some(0));
}

// ---- 4. undelete ----

#[test]
fn undelete_brings_back_a_registered_model_with_its_versions() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path());
    let api = server.admin();
    let c = Cli::new();
    let p = "mlundel";
    api.create_project(p);
    let exp = create_experiment(&api, p, "undelete");
    let (run, root) = create_run(&api, p, &exp, T0, json!([]));
    create_model(&api, p, "precious");
    let source = format!("mlflow-artifacts:/{root}/model");
    assert_eq!(create_version(&api, p, "precious", &source, &run), "1");
    assert_eq!(create_version(&api, p, "precious", &source, &run), "2");
    api.post(&ml(p, "/registered-models/alias"), &json!({ "name": "precious", "alias": "champion", "version": "2" })).ok(200);
    let model = api.get(&ml(p, "/registered-models/get?name=precious")).ok(200);
    let v1 = get_version(&api, p, "precious", "1").ok(200);
    let v2 = get_version(&api, p, "precious", "2").ok(200);
    let id = model_resource_id(&api, p, "precious");
    assert_eq!(id, "rm:precious", "a registered model's id is its name");

    api.send(Method::DELETE, &ml(p, "/registered-models/delete"), Some(&json!({ "name": "precious" })), &[]).ok(200);
    let deleted_lsn = lsn(&api, p);
    ml_err(&api.get(&ml(p, "/registered-models/get?name=precious")), 404, "RESOURCE_DOES_NOT_EXIST");
    ml_err(&get_version(&api, p, "precious", "1"), 404, "RESOURCE_DOES_NOT_EXIST");

    let history = cli(&c, &server, &["history", "--project", p, "--id", &id]).json();
    let entries = history["entries"].as_array().expect("entries");
    assert_eq!(entries.first().and_then(|e| e["operation"].as_str()), Some("create"), "{history:#}");
    assert_eq!(entries.last().and_then(|e| e["operation"].as_str()), Some("delete"), "{history:#}");
    assert_eq!(entries.last().and_then(|e| e["lsn"].as_u64()), Some(deleted_lsn), "{history:#}");

    let summary = cli(&c, &server, &["undelete", "--project", p, "--id", &id]).json();
    assert_eq!(summary["deleted_lsn"], deleted_lsn, "{summary}");
    assert_eq!(summary["resources"], 3, "the model and its two versions: {summary}");
    assert_eq!(api.get(&ml(p, "/registered-models/get?name=precious")).ok(200), model);
    assert_eq!(get_version(&api, p, "precious", "1").ok(200), v1);
    assert_eq!(get_version(&api, p, "precious", "2").ok(200), v2);
    let by_alias = api.get(&ml(p, "/registered-models/alias?name=precious&alias=champion")).ok(200);
    assert_eq!(by_alias["model_version"]["version"], "2", "{by_alias}");
    assert_eq!(versions(&api, p, "precious"), [1, 2]);
    // Its numbering goes on where it was.
    assert_eq!(create_version(&api, p, "precious", &source, &run), "3");
    // Exists now: refused, nothing written.
    let now = lsn(&api, p);
    api.post(&format!("/v1/projects/{p}/resources/{id}/undelete"), &json!({})).err(409, "conflict");
    assert_eq!(lsn(&api, p), now);
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn undeleting_a_model_whose_name_was_taken_since_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path());
    let api = server.admin();
    let p = "mlname";
    api.create_project(p);
    create_model(&api, p, "shared-name");
    create_version(&api, p, "shared-name", "mlflow-artifacts:/0/old", "");
    let old = model_resource_id(&api, p, "shared-name");
    api.send(Method::DELETE, &ml(p, "/registered-models/delete"), Some(&json!({ "name": "shared-name" })), &[]).ok(200);
    // The name is free, and taken by a new model.
    create_model(&api, p, "shared-name");
    create_version(&api, p, "shared-name", "mlflow-artifacts:/0/new", "");
    let before = lsn(&api, p);
    let current = api.get(&ml(p, "/registered-models/get?name=shared-name")).ok(200);

    // Undeleting the old one would make two models of one name (MLflow's names are unique):
    // it must be refused, with nothing written.
    let r = api.post(&format!("/v1/projects/{p}/resources/{old}/undelete"), &json!({}));
    assert_eq!(r.status, 409, "undelete of {old} while its name is taken: {}", r.text);
    assert_eq!(lsn(&api, p), before, "a refused undelete writes nothing");
    assert_eq!(api.get(&ml(p, "/registered-models/get?name=shared-name")).ok(200), current);
    let all = api.get(&ml(p, "/registered-models/search")).ok(200);
    assert_eq!(all["registered_models"].as_array().map(Vec::len), Some(1), "{all}");
    assert_eq!(server.stop().code(), Some(0));
}

// ---- 5. locks ----

#[test]
fn a_data_plane_lock_refuses_deleting_a_model_version_until_removed() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path());
    let api = server.admin();
    let p = "mllock";
    api.create_project(p);
    let exp = create_experiment(&api, p, "locked");
    let (run, root) = create_run(&api, p, &exp, T0, json!([]));
    create_model(&api, p, "guarded");
    let source = format!("mlflow-artifacts:/{root}/model");
    create_version(&api, p, "guarded", &source, &run);
    put_artifact(&api, p, &format!("{root}/model/MLmodel"), b"flavors: {}\n");
    let v1 = get_version(&api, p, "guarded", "1").ok(200);

    let lock = api.post("/v1/locks", &json!({ "scope": format!("/projects/{p}"), "kind": "CanNotDelete", "data_plane": true })).ok(201);
    let lock = lock["id"].as_str().expect("lock id").to_owned();
    let before = lsn(&api, p);
    let delete_v1 = json!({ "name": "guarded", "version": "1" });
    let refused = api.send(Method::DELETE, &ml(p, "/model-versions/delete"), Some(&delete_v1), &[]);
    let message = ml_err(&refused, 409, "RESOURCE_CONFLICT");
    assert!(message.contains(&lock), "the refusal names the lock: {message}");
    let refused = api.send(Method::DELETE, &ml(p, "/registered-models/delete"), Some(&json!({ "name": "guarded" })), &[]);
    ml_err(&refused, 409, "RESOURCE_CONFLICT");
    ml_err(&api.delete(&artifact(p, &format!("{root}/model/MLmodel"))), 409, "RESOURCE_CONFLICT");
    // MLflow's deletes of runs and experiments are marks (soft deletes), refused all the same.
    ml_err(&api.post(&ml(p, "/runs/delete"), &json!({ "run_id": run })), 409, "RESOURCE_CONFLICT");
    ml_err(&api.post(&ml(p, "/experiments/delete"), &json!({ "experiment_id": exp })), 409, "RESOURCE_CONFLICT");
    assert_eq!(get_run(&api, p, &run)["info"]["lifecycle_stage"], "active");
    assert_eq!(lsn(&api, p), before, "a refusal journals nothing");
    assert_eq!(get_version(&api, p, "guarded", "1").ok(200), v1, "the version is still there");
    assert_eq!(api.get(&artifact(p, &format!("{root}/model/MLmodel"))).text, "flavors: {}\n");
    // CanNotDelete lets writes through.
    log_batch(&api, p, &run, &[("loss", 1.0, T0, 0)], json!([]), json!([])).ok(200);
    assert_eq!(create_version(&api, p, "guarded", &source, &run), "2");

    api.delete(&format!("/v1/locks/{lock}")).ok(204);
    api.send(Method::DELETE, &ml(p, "/model-versions/delete"), Some(&delete_v1), &[]).ok(200);
    ml_err(&get_version(&api, p, "guarded", "1"), 404, "RESOURCE_DOES_NOT_EXIST");
    assert_eq!(versions(&api, p, "guarded"), [2]);
    assert_eq!(server.stop().code(), Some(0));
}

/// A lock on one experiment, run or registered model guards what lies under it, and nothing else.
#[test]
fn a_resource_lock_guards_what_lies_under_it() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path());
    let api = server.admin();
    let p = "mlreslock";
    api.create_project(p);
    let exp = create_experiment(&api, p, "guarded-exp");
    let other = create_experiment(&api, p, "free-exp");
    let (run, root) = create_run(&api, p, &exp, T0, json!([]));
    let (free_run, free_root) = create_run(&api, p, &other, T0, json!([]));
    let (_, spare_root) = create_run(&api, p, &other, T0, json!([]));
    put_artifact(&api, p, &format!("{root}/a.txt"), b"a");
    put_artifact(&api, p, &format!("{free_root}/a.txt"), b"a");
    put_artifact(&api, p, &format!("{spare_root}/a.txt"), b"a");
    create_model(&api, p, "kept");
    create_version(&api, p, "kept", "mlflow-artifacts:/0/x", "");

    let lock = |scope: String, kind: &str| {
        api.post("/v1/locks", &json!({ "scope": scope, "kind": kind, "data_plane": true })).ok(201)["id"].as_str().expect("id").to_owned()
    };
    let on_exp = lock(format!("/projects/{p}/experiments/{exp}"), "CanNotDelete");
    let on_run = lock(format!("/projects/{p}/runs/{free_run}"), "ReadOnly");
    let on_model = lock(format!("/projects/{p}/registered_models/kept"), "CanNotDelete");
    let before = lsn(&api, p);
    // The experiment's run's artifact (a grandchild) and the run itself (a soft delete).
    ml_err(&api.delete(&artifact(p, &format!("{root}/a.txt"))), 409, "RESOURCE_CONFLICT");
    ml_err(&api.post(&ml(p, "/runs/delete"), &json!({ "run_id": run })), 409, "RESOURCE_CONFLICT");
    // A read-only run takes no metric; the model's versions are guarded by its lock.
    ml_err(&log_batch(&api, p, &free_run, &[("loss", 1.0, T0, 0)], json!([]), json!([])), 409, "RESOURCE_CONFLICT");
    ml_err(&api.send(Method::DELETE, &ml(p, "/model-versions/delete"), Some(&json!({ "name": "kept", "version": "1" })), &[]), 409, "RESOURCE_CONFLICT");
    assert_eq!(lsn(&api, p), before, "refusals write nothing");
    // What the locks do not cover goes through.
    log_batch(&api, p, &run, &[("loss", 1.0, T0, 0)], json!([]), json!([])).ok(200);
    ml_err(&api.delete(&artifact(p, &format!("{free_root}/a.txt"))), 409, "RESOURCE_CONFLICT");
    api.delete(&artifact(p, &format!("{spare_root}/a.txt"))).ok(200);
    for id in [on_exp, on_run, on_model] {
        api.delete(&format!("/v1/locks/{id}")).ok(204);
    }
    api.delete(&artifact(p, &format!("{root}/a.txt"))).ok(200);
    assert_eq!(server.stop().code(), Some(0));
}

// ---- 6. retries and bad input ----

#[test]
fn a_retried_log_batch_writes_once_and_bad_input_writes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path());
    let api = server.admin();
    let p = "mlretry";
    api.create_project(p);
    let exp = create_experiment(&api, p, "retry");
    let (run, _) = create_run(&api, p, &exp, T0, json!([]));
    let batch = [("loss", 1.0, T0 + 1, 0), ("loss", 0.5, T0 + 2, 1), ("acc", 0.25, T0 + 2, 1)];
    let body = json!({ "run_id": run, "metrics": points(&batch), "params": [{ "key": "lr", "value": "0.01" }], "tags": [{ "key": "t", "value": "v" }] });
    api.post(&ml(p, "/runs/log-batch"), &body).ok(200);
    let after_first = lsn(&api, p);
    let run_once = get_run(&api, p, &run);
    // The same body again (a client's retry): answered the same, nothing journaled.
    assert_eq!(api.post(&ml(p, "/runs/log-batch"), &body).ok(200), json!({}));
    assert_eq!(lsn(&api, p), after_first, "a retry journals nothing");
    assert_eq!(history(&api, p, &run, "loss"), expected(&batch, "loss"), "each point once");
    assert_eq!(history(&api, p, &run, "acc"), expected(&batch, "acc"));
    assert_eq!(get_run(&api, p, &run), run_once);
    // One point logged alone, twice, is one point too.
    let single = json!({ "run_id": run, "key": "loss", "value": 0.25, "timestamp": T0 + 3, "step": 2 });
    api.post(&ml(p, "/runs/log-metric"), &single).ok(200);
    api.post(&ml(p, "/runs/log-metric"), &single).ok(200);
    assert_eq!(history(&api, p, &run, "loss").len(), 3);

    let before = lsn(&api, p);
    let many: Vec<(&str, f64, i64, i64)> = (0..1001).map(|i| ("loss", 0.1, T0 + 10 + i, i)).collect();
    let too_many = log_batch(&api, p, &run, &many, json!([]), json!([]));
    ml_err(&too_many, 400, "INVALID_PARAMETER_VALUE");
    let changed = log_batch(&api, p, &run, &[("loss", 0.01, T0 + 99, 99)], json!([{ "key": "lr", "value": "0.02" }]), json!([]));
    let message = ml_err(&changed, 400, "INVALID_PARAMETER_VALUE");
    assert!(message.contains("lr"), "{message}");
    ml_err(&api.post(&ml(p, "/runs/log-batch"), &json!([])), 400, "INVALID_PARAMETER_VALUE");
    ml_err(&api.post(&ml(p, "/runs/log-batch"), &json!({ "run_id": run, "metrics": [{ "key": "loss", "value": "lots" }] })), 400, "INVALID_PARAMETER_VALUE");
    assert_eq!(lsn(&api, p), before, "bad input journals nothing");
    assert_eq!(history(&api, p, &run, "loss").len(), 3, "not even the good metric of a refused batch");
    assert_eq!(data_map(&get_run(&api, p, &run), "params")["lr"], "0.01");
    assert_eq!(server.stop().code(), Some(0));
}

// ---- 7. kill -9 ----

#[test]
fn kill_9_loses_no_acknowledged_metric_point() {
    const KILL_AFTER: usize = 40;
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path());
    let api = server.admin();
    let p = "mlcrash";
    api.create_project(p);
    let exp = create_experiment(&api, p, "crash");
    let (run, _) = create_run(&api, p, &exp, T0, json!([]));

    // Log-batches run until the server dies under them; each acknowledged step is remembered.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let dead = Arc::new(AtomicBool::new(false));
    let writer = {
        let (api, run, acked, dead) = (api.with_timeout(Duration::from_secs(5)), run.clone(), acked.clone(), dead.clone());
        std::thread::spawn(move || -> Result<i64, String> {
            let mut sent = 0;
            for step in 0..10_000i64 {
                sent = step + 1;
                let body = json!({ "run_id": run, "metrics": points(&[("loss", step as f64, T0 + step, step), ("acc", 0.5, T0 + step, step)]) });
                let Some(r) = api.try_post(&ml(p, "/runs/log-batch"), &body) else { break };
                if r.status != 200 {
                    if dead.load(Ordering::SeqCst) {
                        break;
                    }
                    return Err(format!("step {step}: HTTP {} {}", r.status, r.text));
                }
                acked.lock().expect("acked").push(step);
            }
            Ok(sent)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().expect("acked").len() < KILL_AFTER {
        assert!(!writer.is_finished(), "the writer stopped early: {:?}", writer.join());
        assert!(Instant::now() < deadline, "too few writes acknowledged");
        sleep(Duration::from_millis(5));
    }
    dead.store(true, Ordering::SeqCst);
    assert!(!server.kill9().success());
    let sent = writer.join().expect("writer").expect("every write before the kill was acknowledged");
    let acked = acked.lock().expect("acked").clone();
    assert!(acked.len() >= KILL_AFTER);

    let server = Server::start(dir.path());
    let api = server.admin();
    let steps: Vec<i64> = history(&api, p, &run, "loss").iter().map(|&(v, t, s)| {
        assert_eq!((v, t), (s as f64, T0 + s), "a point as it was logged");
        s
    }).collect();
    for step in &acked {
        assert!(steps.contains(step), "acknowledged step {step} is lost; history has {steps:?}");
    }
    assert!(steps.iter().all(|s| *s < sent), "only what was sent: {steps:?}");
    assert_eq!(history(&api, p, &run, "acc").len(), steps.len(), "each batch whole or not at all");
    let latest = data_map(&get_run(&api, p, &run), "metrics")["loss"].as_f64().expect("latest loss");
    assert_eq!(latest, *steps.iter().max().expect("points") as f64, "the run's latest value matches its history");
    // And the run takes more.
    log_batch(&api, p, &run, &[("loss", -1.0, T0 + 20_000, 20_000)], json!([]), json!([])).ok(200);
    assert_eq!(server.stop().code(), Some(0));
}

// ---- 8. roles ----

#[test]
fn ml_roles_are_kept_apart_from_the_agents_roles() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path());
    let admin = server.admin();
    let p = "mlroles";
    admin.create_project(p);
    let exp = create_experiment(&admin, p, "roles");
    let (run, root) = create_run(&admin, p, &exp, T0, json!([]));
    log_batch(&admin, p, &run, &[("loss", 0.5, T0, 0)], json!([]), json!([])).ok(200);
    put_artifact(&admin, p, &format!("{root}/a.txt"), b"artifact");
    let key = |role: &str| {
        let k = admin.create_key(&format!("{role}-key"), role)["key"].as_str().expect("key").to_owned();
        server.api(Some(&k))
    };
    let (reader, ai_user, ml_user) = (key("ml_reader"), key("ai_user"), key("ml_user"));

    // ml_reader: reads, never writes.
    assert_eq!(get_run(&reader, p, &run)["info"]["run_id"], run.as_str());
    assert_eq!(search_runs(&reader, p, &exp, "metrics.loss < 1"), [run.as_str()]);
    assert_eq!(history(&reader, p, &run, "loss"), [(0.5, T0, 0)]);
    assert_eq!(reader.get(&artifact(p, &format!("{root}/a.txt"))).text, "artifact");
    let before = lsn(&admin, p);
    ml_err(&reader.post(&ml(p, "/runs/create"), &json!({ "experiment_id": exp })), 403, "PERMISSION_DENIED");
    ml_err(&log_batch(&reader, p, &run, &[("loss", 0.1, T0 + 1, 1)], json!([]), json!([])), 403, "PERMISSION_DENIED");
    ml_err(&reader.post(&ml(p, "/registered-models/create"), &json!({ "name": "nope" })), 403, "PERMISSION_DENIED");
    ml_err(&reader.send_raw(Method::PUT, &artifact(p, &format!("{root}/b.txt")), None, b"x".to_vec()), 403, "PERMISSION_DENIED");
    assert_eq!(lsn(&admin, p), before, "nothing a reader tried was written");

    // ai_user: the agents' data plane, not the ML workspace.
    ml_err(&ai_user.get(&ml(p, &format!("/runs/get?run_id={run}"))), 403, "PERMISSION_DENIED");
    ml_err(&ai_user.post(&ml(p, "/runs/search"), &json!({ "experiment_ids": [exp] })), 403, "PERMISSION_DENIED");
    ml_err(&ai_user.post(&ml(p, "/runs/create"), &json!({ "experiment_id": exp })), 403, "PERMISSION_DENIED");
    ml_err(&ai_user.get(&artifact(p, &format!("{root}/a.txt"))), 403, "PERMISSION_DENIED");
    ai_user.post(&format!("/api/projects/{p}/openai/v1/conversations"), &json!({})).ok(200);

    // ml_user: the ML workspace, not the agents' data plane.
    let (other, _) = create_run(&ml_user, p, &exp, T0, json!([]));
    log_batch(&ml_user, p, &other, &[("loss", 0.25, T0, 0)], json!([]), json!([])).ok(200);
    let refused = ml_user.post(&format!("/api/projects/{p}/openai/v1/conversations"), &json!({}));
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(refused.text.contains("projects/data/write"), "the refusal names the action: {}", refused.text);
    assert_eq!(server.stop().code(), Some(0));
}
