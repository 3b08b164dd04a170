"""MLflow tracking through the official `MlflowClient` (mlflow==3.17.2): experiments, runs,
metrics, params, tags, datasets, artifacts, MLflow's search grammar and paging, its limits and
its errors. Every test works in experiments of its own, so they run in any order."""

from __future__ import annotations

import math
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pytest
import requests
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def rest(ml, method: str, path: str, **kw) -> requests.Response:
    """A raw REST call under the tracking URI (what the client itself sends)."""
    return requests.request(method, f"{ml.uri}{path}", headers=ml.headers(), timeout=30, **kw)


# --- experiments -------------------------------------------------------------------------------


def test_default_experiment_exists(mlc):
    exp = mlc.get_experiment("0")
    assert exp.experiment_id == "0"
    assert exp.name == "Default"
    assert exp.lifecycle_stage == "active"
    assert mlc.get_experiment_by_name("Default").experiment_id == "0"


def test_experiment_create_get_rename_tags_delete_restore(mlc):
    name = uniq("exp")
    eid = mlc.create_experiment(name, tags={"team": "a"})
    exp = mlc.get_experiment(eid)
    assert (exp.experiment_id, exp.name, exp.lifecycle_stage) == (eid, name, "active")
    assert exp.tags == {"team": "a"}
    assert exp.artifact_location  # the server hands out where runs' artifacts go
    assert exp.creation_time > 0 and exp.last_update_time >= exp.creation_time
    assert mlc.get_experiment_by_name(name).experiment_id == eid
    assert mlc.get_experiment_by_name(uniq("never")) is None

    mlc.set_experiment_tag(eid, "k", "v")
    mlc.set_experiment_tag(eid, "team", "b")  # overwrites
    assert mlc.get_experiment(eid).tags == {"team": "b", "k": "v"}
    mlc.delete_experiment_tag(eid, "k")
    assert mlc.get_experiment(eid).tags == {"team": "b"}

    renamed = name + "-renamed"
    mlc.rename_experiment(eid, renamed)
    assert mlc.get_experiment(eid).name == renamed
    assert mlc.get_experiment_by_name(name) is None
    assert mlc.get_experiment_by_name(renamed).experiment_id == eid

    run = mlc.create_run(eid).info.run_id
    mlc.delete_experiment(eid)
    assert mlc.get_experiment(eid).lifecycle_stage == "deleted"
    assert mlc.get_run(run).info.lifecycle_stage == "deleted"  # its runs go with it, as in MLflow
    flt = f"name = '{renamed}'"
    assert list(mlc.search_experiments(filter_string=flt)) == []
    assert [e.experiment_id for e in mlc.search_experiments(view_type=ViewType.DELETED_ONLY, filter_string=flt)] == [eid]
    assert [e.experiment_id for e in mlc.search_experiments(view_type=ViewType.ALL, filter_string=flt)] == [eid]

    mlc.restore_experiment(eid)
    assert mlc.get_experiment(eid).lifecycle_stage == "active"
    assert mlc.get_run(run).info.lifecycle_stage == "active"
    assert [e.experiment_id for e in mlc.search_experiments(filter_string=flt)] == [eid]


def test_search_experiments_filter_order_and_paging(mlc):
    tag = uuid.uuid4().hex[:10]
    names = [f"se-{tag}-{i}" for i in range(5)]
    ids = [mlc.create_experiment(n, tags={"tag": tag, "parity": "even" if i % 2 == 0 else "odd"})
           for i, n in enumerate(names)]
    by_prefix = f"name LIKE 'se-{tag}-%'"

    got = mlc.search_experiments(filter_string=by_prefix, order_by=["name DESC"])
    assert [e.name for e in got] == names[::-1]
    assert [e.experiment_id for e in got] == ids[::-1]
    got = mlc.search_experiments(filter_string=f"name ILIKE 'SE-{tag.upper()}-%'", order_by=["name ASC"])
    assert [e.name for e in got] == names
    got = mlc.search_experiments(filter_string=f"tags.tag = '{tag}' AND tags.parity = 'even'", order_by=["name ASC"])
    assert [e.name for e in got] == [names[0], names[2], names[4]]
    got = mlc.search_experiments(filter_string=f"tags.tag = '{tag}' AND tags.parity != 'even'", order_by=["name ASC"])
    assert [e.name for e in got] == [names[1], names[3]]

    seen, token, pages = [], None, 0
    while True:
        page = mlc.search_experiments(filter_string=by_prefix, order_by=["name ASC"], max_results=2, page_token=token)
        pages += 1
        assert len(page) <= 2
        seen += [e.name for e in page]
        token = page.token
        if not token:
            break
    assert seen == names and pages == 3

    mlc.delete_experiment(ids[1])
    assert [e.name for e in mlc.search_experiments(filter_string=by_prefix, order_by=["name ASC"])] == \
        [names[0], names[2], names[3], names[4]]
    assert len(mlc.search_experiments(filter_string=by_prefix, view_type=ViewType.ALL)) == 5


# --- runs --------------------------------------------------------------------------------------


def test_run_create_get_update_delete_restore(mlc):
    eid = mlc.create_experiment(uniq("runs"))
    t0 = int(time.time() * 1000) - 60_000
    run = mlc.create_run(eid, start_time=t0, tags={"a": "1"}, run_name="first")
    info = run.info
    assert info.experiment_id == eid
    assert info.status == "RUNNING" and info.lifecycle_stage == "active"
    assert info.start_time == t0 and info.end_time is None
    assert info.run_name == "first"
    assert info.run_id and info.artifact_uri.rstrip("/").endswith(f"{info.run_id}/artifacts")
    assert run.data.tags["a"] == "1" and run.data.tags["mlflow.runName"] == "first"

    got = mlc.get_run(info.run_id)
    assert (got.info.run_id, got.info.experiment_id, got.info.start_time, got.info.run_name) == \
        (info.run_id, eid, t0, "first")
    assert got.info.artifact_uri == info.artifact_uri

    mlc.update_run(info.run_id, name="renamed")
    mlc.set_terminated(info.run_id, status="FINISHED", end_time=t0 + 5000)
    got = mlc.get_run(info.run_id)
    assert got.info.status == "FINISHED" and got.info.end_time == t0 + 5000
    assert got.info.run_name == "renamed" and got.data.tags["mlflow.runName"] == "renamed"

    mlc.set_tag(info.run_id, "b", "2")
    mlc.set_tag(info.run_id, "a", "one")
    mlc.delete_tag(info.run_id, "b")
    tags = mlc.get_run(info.run_id).data.tags
    assert tags["a"] == "one" and "b" not in tags

    mlc.delete_run(info.run_id)
    assert mlc.get_run(info.run_id).info.lifecycle_stage == "deleted"
    assert list(mlc.search_runs([eid])) == []
    assert [r.info.run_id for r in mlc.search_runs([eid], run_view_type=ViewType.DELETED_ONLY)] == [info.run_id]
    mlc.restore_run(info.run_id)
    assert mlc.get_run(info.run_id).info.lifecycle_stage == "active"
    assert [r.info.run_id for r in mlc.search_runs([eid])] == [info.run_id]


def test_metrics_history_latest_and_special_values(mlc):
    eid = mlc.create_experiment(uniq("metrics"))
    rid = mlc.create_run(eid).info.run_id
    ts = 1_700_000_000_000
    # Logged out of step order: the run's value is the one at the highest step.
    for step in (0, 1, 2, 4, 3):
        mlc.log_metric(rid, "loss", 1.0 / (step + 1), timestamp=ts + step, step=step)
    mlc.log_metric(rid, "nan", float("nan"), timestamp=ts, step=0)
    mlc.log_metric(rid, "inf", float("inf"), timestamp=ts, step=0)
    mlc.log_metric(rid, "ninf", float("-inf"), timestamp=ts, step=0)

    hist = sorted(mlc.get_metric_history(rid, "loss"), key=lambda m: m.step)
    assert [(m.key, m.step, m.value, m.timestamp) for m in hist] == \
        [("loss", s, 1.0 / (s + 1), ts + s) for s in range(5)]
    metrics = mlc.get_run(rid).data.metrics
    assert metrics["loss"] == pytest.approx(1.0 / 5)
    assert math.isnan(metrics["nan"])
    # MLflow's SQL store keeps ±inf as ±float max; either is the client's value back.
    assert metrics["inf"] >= sys.float_info.max and metrics["ninf"] <= -sys.float_info.max
    assert mlc.get_metric_history(rid, "never-logged") == []


def test_log_batch_and_params_are_immutable(mlc):
    eid = mlc.create_experiment(uniq("batch"))
    rid = mlc.create_run(eid).info.run_id
    ts = 1_700_000_000_000
    mlc.log_batch(rid, metrics=[Metric("m", float(i), ts + i, i) for i in range(10)],
                  params=[Param("lr", "0.1"), Param("depth", "3")], tags=[RunTag("t", "x")])
    run = mlc.get_run(rid)
    assert run.data.params == {"lr": "0.1", "depth": "3"}
    assert run.data.metrics == {"m": 9.0}
    assert run.data.tags["t"] == "x"
    assert [m.value for m in sorted(mlc.get_metric_history(rid, "m"), key=lambda m: m.step)] == \
        [float(i) for i in range(10)]

    # The same value again is allowed, through log_batch and log_param.
    mlc.log_batch(rid, params=[Param("lr", "0.1")])
    mlc.log_param(rid, "lr", "0.1")
    with pytest.raises(MlflowException) as e:
        mlc.log_batch(rid, params=[Param("lr", "0.2")])
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException) as e:
        mlc.log_param(rid, "depth", "4")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert mlc.get_run(rid).data.params == {"lr": "0.1", "depth": "3"}


def test_log_batch_limits(ml, mlc):
    rid = mlc.create_run(mlc.create_experiment(uniq("limits"))).info.run_id
    url = "/api/2.0/mlflow/runs/log-batch"
    too_many_metrics = {"run_id": rid, "metrics": [
        {"key": f"m{i}", "value": float(i), "timestamp": 1, "step": 0} for i in range(1001)]}
    r = rest(ml, "POST", url, json=too_many_metrics)
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    too_many_params = {"run_id": rid, "params": [{"key": f"p{i}", "value": "v"} for i in range(101)]}
    r = rest(ml, "POST", url, json=too_many_params)
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    too_many_tags = {"run_id": rid, "tags": [{"key": f"t{i}", "value": "v"} for i in range(101)]}
    r = rest(ml, "POST", url, json=too_many_tags)
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    # 1,000 entities in all, whatever the mix.
    r = rest(ml, "POST", url, json={"run_id": rid, "metrics": too_many_metrics["metrics"][:950],
                                     "params": too_many_params["params"][:100]})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    # A refused batch changes nothing.
    data = mlc.get_run(rid).data
    assert data.metrics == {} and data.params == {} and not any(k.startswith("t") for k in data.tags)

    r = rest(ml, "POST", url, json={"run_id": rid, "metrics": too_many_metrics["metrics"][:1000]})
    assert r.status_code == 200, r.text
    r = rest(ml, "POST", url, json={"run_id": rid, "params": too_many_params["params"][:100],
                                     "tags": too_many_tags["tags"][:100]})
    assert r.status_code == 200, r.text
    data = mlc.get_run(rid).data
    assert len(data.metrics) == 1000 and data.metrics["m999"] == 999.0
    assert len(data.params) == 100 and data.params["p99"] == "v"
    assert sum(1 for k in data.tags if k.startswith("t")) == 100


def test_retried_log_batch_does_not_double_metrics(ml, mlc):
    """The client retries on 429/5xx, so the same log-batch body can arrive twice."""
    rid = mlc.create_run(mlc.create_experiment(uniq("retry"))).info.run_id
    ts = 1_700_000_000_000
    body = {"run_id": rid,
            "metrics": [{"key": "acc", "value": 0.5 + i / 10, "timestamp": ts + i, "step": i} for i in range(3)],
            "params": [{"key": "p", "value": "1"}],
            "tags": [{"key": "t", "value": "x"}]}
    for _ in range(2):
        r = rest(ml, "POST", "/api/2.0/mlflow/runs/log-batch", json=body)
        assert r.status_code == 200, r.text
    hist = sorted(mlc.get_metric_history(rid, "acc"), key=lambda m: m.step)
    assert [(m.step, m.value, m.timestamp) for m in hist] == [(i, 0.5 + i / 10, ts + i) for i in range(3)]
    data = mlc.get_run(rid).data
    assert data.params == {"p": "1"} and data.tags["t"] == "x"


def test_metric_history_bulk_interval(ml, mlc):
    eid = mlc.create_experiment(uniq("bulk"))
    a = mlc.create_run(eid).info.run_id
    b = mlc.create_run(eid).info.run_id
    ts = 1_700_000_000_000
    mlc.log_batch(a, metrics=[Metric("loss", float(s), ts + s, s) for s in range(10)])
    mlc.log_batch(b, metrics=[Metric("loss", 100.0 + s, ts + s, s) for s in range(0, 10, 2)])

    def bulk(**params):
        r = rest(ml, "GET", "/api/2.0/mlflow/metrics/get-history-bulk-interval",
                 params={"run_ids": [a, b], "metric_key": "loss", **params})
        assert r.status_code == 200, r.text
        return sorted((m["run_id"], int(m["step"]), m["value"]) for m in r.json().get("metrics", []))

    assert bulk(max_results=100) == sorted([(a, s, float(s)) for s in range(10)] +
                                           [(b, s, 100.0 + s) for s in range(0, 10, 2)])
    assert bulk(max_results=100, start_step=3, end_step=6) == sorted(
        [(a, s, float(s)) for s in range(3, 7)] + [(b, s, 100.0 + s) for s in (4, 6)])
    # Sampled: at most max_results steps, but each run's first and last step are kept.
    sampled = bulk(max_results=3)
    for run, steps in ((a, range(10)), (b, range(0, 10, 2))):
        got = [s for r, s, _ in sampled if r == run]
        assert got[0] == min(steps) and got[-1] == max(steps)
        assert set(got) <= set(steps) and len(got) <= 3 + 2


def test_list_artifacts(mlc):
    rid = mlc.create_run(mlc.create_experiment(uniq("arts"))).info.run_id
    mlc.log_text(rid, "hello", "notes/a.txt")
    mlc.log_text(rid, "hello, world", "notes/deeper/b.txt")
    mlc.log_dict(rid, {"k": [1, 2, 3]}, "cfg.json")
    top = {f.path: (f.is_dir, f.file_size) for f in mlc.list_artifacts(rid)}
    assert set(top) == {"cfg.json", "notes"}
    assert top["notes"] == (True, None)
    assert top["cfg.json"][0] is False and top["cfg.json"][1] > 0
    notes = {f.path: (f.is_dir, f.file_size) for f in mlc.list_artifacts(rid, "notes")}
    assert notes == {"notes/a.txt": (False, 5), "notes/deeper": (True, None)}
    assert [(f.path, f.file_size) for f in mlc.list_artifacts(rid, "notes/deeper")] == [("notes/deeper/b.txt", 12)]
    assert mlflow.artifacts.load_dict(f"runs:/{rid}/cfg.json") == {"k": [1, 2, 3]}
    assert mlflow.artifacts.load_text(f"runs:/{rid}/notes/deeper/b.txt") == "hello, world"


def test_log_inputs_dataset(mlc):
    import pandas as pd

    eid = mlc.create_experiment(uniq("inputs"))
    rid = mlc.create_run(eid).info.run_id
    other = mlc.create_run(eid).info.run_id
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    ds = mlflow.data.from_pandas(df, name="tiny", targets="y")
    mlc.log_inputs(rid, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "training")])])

    inputs = mlc.get_run(rid).inputs.dataset_inputs
    assert len(inputs) == 1
    got = inputs[0].dataset
    assert (got.name, got.digest, got.source_type) == ("tiny", ds.digest, ds.source._get_source_type())
    assert got.schema == ds._to_mlflow_entity().schema and "x" in got.schema
    assert got.profile == ds._to_mlflow_entity().profile
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "training")]
    assert mlc.get_run(other).inputs.dataset_inputs == []

    assert [r.info.run_id for r in mlc.search_runs([eid], filter_string="datasets.name = 'tiny'")] == [rid]
    assert [r.info.run_id for r in mlc.search_runs([eid], filter_string="datasets.context = 'training'")] == [rid]
    assert [r.info.run_id for r in mlc.search_runs([eid], filter_string=f"datasets.digest IN ('{ds.digest}')")] == [rid]


# --- search_runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searchable(mlc):
    """Four runs with known metrics, params, tags, names, statuses and start times."""
    eid = mlc.create_experiment(uniq("search"))
    base = 1_700_000_000_000
    spec = {
        "a": dict(name="alpha", status="FINISHED", metrics={"acc": 0.9, "loss": 0.1}, params={"model": "lr"}, tags={"team": "vision"}),
        "b": dict(name="beta", status="FAILED", metrics={"acc": 0.7, "loss": 0.3}, params={"model": "rf"}, tags={"team": "Vision"}),
        "c": dict(name="gamma", status="RUNNING", metrics={"acc": 0.5}, params={"model": "lr-2"}, tags={}),
        "d": dict(name="delta", status="FINISHED", metrics={}, params={"model": "svm"}, tags={"team": "nlp"}),
    }
    ids = {}
    for i, (k, s) in enumerate(spec.items()):
        run = mlc.create_run(eid, start_time=base + i * 1000, run_name=s["name"], tags=s["tags"])
        rid = run.info.run_id
        mlc.log_batch(rid, metrics=[Metric(mk, mv, base, 0) for mk, mv in s["metrics"].items()],
                      params=[Param(pk, pv) for pk, pv in s["params"].items()])
        if s["status"] != "RUNNING":
            mlc.set_terminated(rid, status=s["status"], end_time=base + i * 1000 + 500)
        ids[k] = rid
    return eid, ids, base


@pytest.mark.parametrize("flt, want", [
    ("metrics.acc > 0.6", "ab"),
    ("metrics.acc >= 0.7", "ab"),
    ("metrics.acc < 0.7", "c"),
    ("metrics.acc <= 0.7", "bc"),
    ("metrics.acc = 0.5", "c"),
    ("metrics.acc != 0.5", "ab"),
    ("metrics.loss < 0.2 AND metrics.acc > 0.8", "a"),
    ("params.model = 'lr'", "a"),
    ("params.model != 'lr'", "bcd"),
    ("params.model LIKE 'lr%'", "ac"),
    ("params.model ILIKE 'LR%'", "ac"),
    ("params.model LIKE '%r%'", "abc"),
    ("tags.team = 'vision'", "a"),
    ("tags.team != 'vision'", "bd"),
    ("tags.team LIKE 'V%'", "b"),
    ("tags.team ILIKE 'vision'", "ab"),
    ("tags.team IS NULL", "c"),
    ("tags.team IS NOT NULL", "abd"),
    ("params.model IS NULL", ""),
    ("tags.`mlflow.runName` = 'beta'", "b"),
    ("attributes.status = 'FINISHED'", "ad"),
    ("attributes.status != 'FINISHED'", "bc"),
    ("attributes.run_name = 'alpha'", "a"),
    ("attributes.run_name LIKE '%ta'", "bd"),
    ("attributes.run_name ILIKE 'G%'", "c"),
    ("run_name = 'delta'", "d"),
    ("attributes.`Run name` = 'beta'", "b"),
    ("metrics.acc > 0.6 AND params.model = 'lr' AND tags.team = 'vision'", "a"),
])
def test_search_runs_filter(mlc, searchable, flt, want):
    eid, ids, _ = searchable
    got = {r.info.run_id for r in mlc.search_runs([eid], filter_string=flt)}
    assert got == {ids[k] for k in want}, flt


def test_search_runs_filter_by_id_and_time(mlc, searchable):
    eid, ids, base = searchable
    got = {r.info.run_id for r in mlc.search_runs([eid], filter_string=f"attributes.run_id IN ('{ids['a']}', '{ids['d']}')")}
    assert got == {ids["a"], ids["d"]}
    got = {r.info.run_id for r in mlc.search_runs([eid], filter_string=f"attributes.run_id NOT IN ('{ids['a']}')")}
    assert got == {ids["b"], ids["c"], ids["d"]}
    got = {r.info.run_id for r in mlc.search_runs([eid], filter_string=f"attributes.start_time >= {base + 2000}")}
    assert got == {ids["c"], ids["d"]}
    got = {r.info.run_id for r in mlc.search_runs([eid], filter_string=f"attributes.start_time < {base + 1000}")}
    assert got == {ids["a"]}


@pytest.mark.parametrize("order_by, want", [
    (None, "dcba"),  # MLflow's default: start_time DESC
    (["attributes.start_time ASC"], "abcd"),
    (["attributes.run_name ASC"], "abdc"),
    (["metrics.acc DESC"], "abcd"),
    (["metrics.acc ASC"], "cbad"),
    (["params.model ASC"], "acbd"),
    (["params.model DESC"], "dbca"),
])
def test_search_runs_order_by(mlc, searchable, order_by, want):
    eid, ids, _ = searchable
    got = [r.info.run_id for r in mlc.search_runs([eid], order_by=order_by)]
    assert got == [ids[k] for k in want], order_by


def test_search_runs_paging_small(mlc, searchable):
    eid, ids, _ = searchable
    first = mlc.search_runs([eid], order_by=["attributes.start_time ASC"], max_results=3)
    assert [r.info.run_id for r in first] == [ids[k] for k in "abc"] and first.token
    second = mlc.search_runs([eid], order_by=["attributes.start_time ASC"], max_results=3, page_token=first.token)
    assert [r.info.run_id for r in second] == [ids["d"]] and not second.token


def test_search_runs_returns_data(mlc, searchable):
    eid, ids, _ = searchable
    (run,) = mlc.search_runs([eid], filter_string="attributes.run_name = 'alpha'")
    assert run.info.run_id == ids["a"] and run.info.status == "FINISHED"
    assert run.data.metrics == {"acc": 0.9, "loss": 0.1}
    assert run.data.params == {"model": "lr"}
    assert run.data.tags["team"] == "vision"


def test_search_runs_paging_past_1000_runs(mlc):
    eid = mlc.create_experiment(uniq("many"))
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda i: mlc.create_run(eid, run_name=f"r{i}").info.run_id, range(1050)))
    assert len(set(created)) == 1050

    # The client's default page is 1,000 runs, with a token for the rest.
    first = mlc.search_runs([eid])
    assert len(first) == 1000 and first.token

    seen, token, sizes = [], None, []
    while True:
        page = mlc.search_runs([eid], max_results=500, page_token=token)
        sizes.append(len(page))
        seen += [r.info.run_id for r in page]
        token = page.token
        if not token:
            break
    assert sizes == [500, 500, 50]
    assert len(seen) == len(set(seen)) == 1050
    assert set(seen) == set(created)


# --- errors ------------------------------------------------------------------------------------


def test_missing_resources_are_resource_does_not_exist(mlc):
    missing = uuid.uuid4().hex
    with pytest.raises(MlflowException) as e:
        mlc.get_run(missing)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as e:
        mlc.get_experiment("987654321")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as e:
        mlc.log_metric(missing, "m", 1.0)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_existing_experiment_name_is_resource_already_exists(mlc):
    name = uniq("dup")
    eid = mlc.create_experiment(name)
    with pytest.raises(MlflowException) as e:
        mlc.create_experiment(name)
    assert e.value.error_code == "RESOURCE_ALREADY_EXISTS"
    assert mlc.get_experiment_by_name(name).experiment_id == eid


def test_bad_input_is_invalid_parameter_value(ml, mlc):
    rid = mlc.create_run(mlc.create_experiment(uniq("bad"))).info.run_id
    with pytest.raises(MlflowException) as e:
        mlc.search_runs(["0"], filter_string="metrics.acc >>> 1")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    # MLflow takes IN lists for run_id (and datasets.*) only.
    with pytest.raises(MlflowException) as e:
        mlc.search_runs(["0"], filter_string="attributes.status IN ('FAILED', 'RUNNING')")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException) as e:
        mlc.search_runs(["0"], order_by=["nonsense.x DESC"])
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    r = rest(ml, "POST", "/api/2.0/mlflow/experiments/create", json={})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    r = rest(ml, "POST", "/api/2.0/mlflow/runs/log-metric", json={"run_id": rid, "key": "m", "value": "not a number", "timestamp": 1})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert mlc.get_run(rid).data.metrics == {}
