"""MLflow 3 objects through the official client (mlflow==3.17.2): logged models and traces
(`@mlflow.trace`, spans read back with `get_trace`, search, tags, delete)."""

from __future__ import annotations

import uuid

import mlflow
import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- logged models -----------------------------------------------------------------------------


def test_logged_model_create_get_finalize_tags_params_delete(mlc, tmp_path):
    eid = mlc.create_experiment(uniq("lm"))
    rid = mlc.create_run(eid).info.run_id
    lm = mlc.create_logged_model(eid, name="lm", source_run_id=rid, tags={"t": "1"}, params={"p": "x"}, model_type="agent")
    assert lm.model_id and lm.experiment_id == eid and lm.name == "lm"
    assert lm.source_run_id == rid and lm.model_type == "agent"
    assert lm.status == LoggedModelStatus.PENDING
    assert lm.params == {"p": "x"} and lm.tags["t"] == "1"
    assert lm.artifact_location and lm.creation_timestamp > 0

    got = mlc.get_logged_model(lm.model_id)
    assert (got.model_id, got.name, got.experiment_id, got.status) == (lm.model_id, "lm", eid, LoggedModelStatus.PENDING)
    assert got.artifact_location == lm.artifact_location

    # Artifacts of a logged model, under its own artifact location.
    (tmp_path / "weights.bin").write_bytes(b"\x01\x02\x03" * 100)
    mlc.log_model_artifact(lm.model_id, str(tmp_path / "weights.bin"))
    assert [(f.path, f.file_size) for f in mlc.list_logged_model_artifacts(lm.model_id)] == [("weights.bin", 300)]
    local = mlflow.artifacts.download_artifacts(f"{lm.artifact_location}/weights.bin", dst_path=str(tmp_path / "dl"))
    assert open(local, "rb").read() == b"\x01\x02\x03" * 100

    fin = mlc.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    assert fin.status == LoggedModelStatus.READY
    assert mlc.get_logged_model(lm.model_id).status == LoggedModelStatus.READY

    mlc.set_logged_model_tags(lm.model_id, {"a": "b", "t": "2"})
    mlc.delete_logged_model_tag(lm.model_id, "a")
    tags = mlc.get_logged_model(lm.model_id).tags
    assert tags["t"] == "2" and "a" not in tags
    mlc.log_model_params(lm.model_id, {"q": "2"})
    assert mlc.get_logged_model(lm.model_id).params == {"p": "x", "q": "2"}

    # A metric logged with a model id is the model's too.
    mlc.log_metric(rid, "acc", 0.75, step=1, model_id=lm.model_id)
    metrics = mlc.get_logged_model(lm.model_id).metrics
    assert [(m.key, m.value, m.step, m.run_id) for m in metrics] == [("acc", 0.75, 1, rid)]

    mlc.delete_logged_model(lm.model_id)
    with pytest.raises(MlflowException) as e:
        mlc.get_logged_model(lm.model_id)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert list(mlc.search_logged_models([eid])) == []


def test_search_logged_models_and_external_models(mlc):
    eid = mlc.create_experiment(uniq("lms"))
    a = mlc.create_logged_model(eid, name="alpha", params={"k": "1"})
    b = mlc.create_logged_model(eid, name="beta", params={"k": "2"})
    mlc.finalize_logged_model(b.model_id, LoggedModelStatus.READY)
    ext = mlflow.create_external_model(name="gamma", experiment_id=eid, tags={"src": "outside"})
    assert ext.status == LoggedModelStatus.READY and ext.experiment_id == eid
    assert mlc.get_logged_model(ext.model_id).tags["src"] == "outside"

    got = mlc.search_logged_models([eid], order_by=[{"field_name": "creation_time", "ascending": True}])
    assert [m.model_id for m in got] == [a.model_id, b.model_id, ext.model_id]
    got = mlc.search_logged_models([eid], order_by=[{"field_name": "name", "ascending": False}])
    assert [m.name for m in got] == ["gamma", "beta", "alpha"]
    assert [m.model_id for m in mlc.search_logged_models([eid], filter_string="name = 'beta'")] == [b.model_id]
    assert [m.model_id for m in mlc.search_logged_models([eid], filter_string="params.k = '1'")] == [a.model_id]
    got = mlc.search_logged_models([eid], filter_string="name != 'alpha'", order_by=[{"field_name": "name"}])
    assert [m.name for m in got] == ["beta", "gamma"]
    got = mlc.search_logged_models([eid], filter_string="name LIKE '%a%' AND params.k = '2'")
    assert [m.model_id for m in got] == [b.model_id]

    first = mlc.search_logged_models([eid], max_results=2, order_by=[{"field_name": "name"}])
    assert [m.name for m in first] == ["alpha", "beta"] and first.token
    rest = mlc.search_logged_models([eid], max_results=2, order_by=[{"field_name": "name"}], page_token=first.token)
    assert [m.name for m in rest] == ["gamma"] and not rest.token


# --- traces ------------------------------------------------------------------------------------


@mlflow.trace
def inner(v):
    return v * 2


@mlflow.trace(name="outer", span_type="CHAIN", attributes={"flavor": "test"})
def outer(x, y):
    mlflow.update_current_trace(tags={"from": "decorator"})
    return inner(x) + y


@mlflow.trace
def broken(z):
    raise ValueError(f"no {z}")


def _trace_once(fn, *args, **kwargs):
    """Calls a traced function and returns its trace id once the client has exported it."""
    try:
        fn(*args, **kwargs)
    except ValueError:
        pass
    tid = mlflow.get_last_active_trace_id()
    assert tid
    mlflow.flush_trace_async_logging()
    return tid


def test_trace_decorator_get_trace_spans(ml, mlc):
    exp = mlflow.set_experiment(uniq("traces"))
    tid = _trace_once(outer, 3, y=4)

    trace = mlc.get_trace(tid)
    assert trace.info.trace_id == tid
    assert trace.info.experiment_id == exp.experiment_id
    assert trace.info.state.value == "OK"
    assert trace.info.tags["from"] == "decorator"
    assert trace.info.execution_duration is not None and trace.info.execution_duration >= 0
    spans = {s.name: s for s in trace.data.spans}
    assert set(spans) == {"outer", "inner"}
    o, i = spans["outer"], spans["inner"]
    assert o.inputs == {"x": 3, "y": 4} and o.outputs == 10
    assert i.inputs == {"v": 3} and i.outputs == 6
    assert o.parent_id is None and i.parent_id == o.span_id
    assert o.trace_id == tid and i.trace_id == tid
    assert o.span_type == "CHAIN"
    assert o.get_attribute("flavor") == "test"
    assert o.start_time_ns <= i.start_time_ns <= i.end_time_ns <= o.end_time_ns

    # A function that raises makes a trace in state ERROR, with the exception on its span.
    bad = mlc.get_trace(_trace_once(broken, "way"))
    assert bad.info.state.value == "ERROR"
    (span,) = bad.data.spans
    assert span.name == "broken" and span.inputs == {"z": "way"}
    assert span.status.status_code.value == "ERROR"
    assert any(ev.name == "exception" and "no way" in str(ev.attributes) for ev in span.events)


def test_manual_span_and_run_link(ml, mlc):
    exp = mlflow.set_experiment(uniq("spans"))
    with mlflow.start_run() as run:
        with mlflow.start_span(name="manual", span_type="RETRIEVER") as span:
            span.set_inputs({"q": "hi"})
            span.set_attribute("k", 7)
            with mlflow.start_span(name="child") as child:
                child.set_outputs(["doc1", "doc2"])
            span.set_outputs("ok")
    tid = mlflow.get_last_active_trace_id()
    mlflow.flush_trace_async_logging()

    trace = mlc.get_trace(tid)
    spans = {s.name: s for s in trace.data.spans}
    assert spans["manual"].inputs == {"q": "hi"} and spans["manual"].outputs == "ok"
    assert spans["manual"].get_attribute("k") == 7 and spans["manual"].span_type == "RETRIEVER"
    assert spans["child"].outputs == ["doc1", "doc2"] and spans["child"].parent_id == spans["manual"].span_id
    # A trace made inside a run is found by the run.
    found = mlc.search_traces(experiment_ids=[exp.experiment_id], run_id=run.info.run_id)
    assert [t.info.trace_id for t in found] == [tid]


def test_search_tag_and_delete_traces(ml, mlc):
    exp = mlflow.set_experiment(uniq("tsearch"))
    eid = exp.experiment_id
    ids = [_trace_once(outer, n, y=1) for n in range(3)]

    found = mlc.search_traces(experiment_ids=[eid])
    assert sorted(t.info.trace_id for t in found) == sorted(ids)
    # Each trace was exported before the next one started, so their times order them.
    asc = mlc.search_traces(experiment_ids=[eid], order_by=["timestamp_ms ASC"])
    assert [t.info.trace_id for t in asc] == ids
    desc = mlc.search_traces(experiment_ids=[eid], order_by=["timestamp_ms DESC"])
    assert [t.info.trace_id for t in desc] == ids[::-1]
    # search_traces brings the spans along.
    by_id = {t.info.trace_id: t for t in found}
    assert {s.name for s in by_id[ids[0]].data.spans} == {"outer", "inner"}

    mlc.set_trace_tag(ids[1], "reviewed", "yes")
    assert mlc.get_trace(ids[1]).info.tags["reviewed"] == "yes"
    found = mlc.search_traces(experiment_ids=[eid], filter_string="tags.reviewed = 'yes'")
    assert [t.info.trace_id for t in found] == [ids[1]]
    mlc.delete_trace_tag(ids[1], "reviewed")
    assert "reviewed" not in mlc.get_trace(ids[1]).info.tags
    assert list(mlc.search_traces(experiment_ids=[eid], filter_string="tags.reviewed = 'yes'")) == []

    ok = mlc.search_traces(experiment_ids=[eid], filter_string="trace.status = 'OK'")
    assert sorted(t.info.trace_id for t in ok) == sorted(ids)

    first = mlc.search_traces(experiment_ids=[eid], max_results=2)
    assert len(first) == 2 and first.token
    rest = mlc.search_traces(experiment_ids=[eid], max_results=2, page_token=first.token)
    assert len(rest) == 1 and {t.info.trace_id for t in first} | {rest[0].info.trace_id} == set(ids)

    assert mlc.delete_traces(eid, trace_ids=[ids[0]]) == 1
    assert sorted(t.info.trace_id for t in mlc.search_traces(experiment_ids=[eid])) == sorted(ids[1:])
    with pytest.raises(MlflowException):
        mlc.get_trace(ids[0])
    # Deleting by age and count: everything older than now, at most 10.
    assert mlc.delete_traces(eid, max_timestamp_millis=2**62, max_traces=10) == 2
    assert list(mlc.search_traces(experiment_ids=[eid])) == []
