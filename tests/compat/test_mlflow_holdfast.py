"""What only Holdfast does for the mlflow client (mlflow==3.17.2): projects as MLflow workspaces
(`{server}/mlflow` with `MLFLOW_WORKSPACE`), the Holdfast key as a bearer token or as the basic-auth
password, refusals of bad keys in MLflow's error form, and runs, metrics, params, models and
artifacts that survive a restart (a server of its own, so the restart disturbs no other test)."""

from __future__ import annotations

import uuid

import mlflow
import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from harness import HoldfastServer

ML_PROJECT = "mlproj"  # conftest.ML_PROJECT
OTHER_PROJECT = "other"  # conftest.OTHER_PROJECT, made by the session server

AUTH_ERRORS = ("UNAUTHENTICATED", "PERMISSION_DENIED")


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_workspace_header_selects_the_project(ml, mlc, monkeypatch, tmp_path):
    ws_uri = f"{ml.holdfast.url}/mlflow"
    monkeypatch.setenv("MLFLOW_WORKSPACE", ML_PROJECT)
    wc = MlflowClient(tracking_uri=ws_uri, registry_uri=ws_uri)
    name = uniq("ws")
    eid = wc.create_experiment(name)
    rid = wc.create_run(eid).info.run_id
    wc.log_batch(rid, metrics=[Metric("m", 1.5, 1_700_000_000_000, 0)], params=[Param("p", "v")])
    wc.log_text(rid, "via the workspace route", "w.txt")
    assert wc.get_run(rid).data.metrics == {"m": 1.5}
    # Artifacts through the workspace route too (mlflow-artifacts URIs resolve against ws_uri).
    local = wc.download_artifacts(rid, "w.txt", str(tmp_path))
    assert open(local).read() == "via the workspace route"
    wc.create_registered_model(name)
    assert wc.get_registered_model(name).name == name
    # The workspace routes list the projects the key may see.
    names = [w.name for w in wc.list_workspaces()]
    assert ML_PROJECT in names and OTHER_PROJECT in names
    assert wc.get_workspace(ML_PROJECT).name == ML_PROJECT

    # Another workspace is another project: none of it is there.
    monkeypatch.setenv("MLFLOW_WORKSPACE", OTHER_PROJECT)
    assert wc.get_experiment_by_name(name) is None
    with pytest.raises(MlflowException) as e:
        wc.get_run(rid)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    # And it is the same project as the project URI.
    monkeypatch.delenv("MLFLOW_WORKSPACE")
    assert mlc.get_experiment_by_name(name).experiment_id == eid
    run = mlc.get_run(rid)
    assert run.data.params == {"p": "v"} and run.data.metrics == {"m": 1.5}
    assert mlflow.artifacts.load_text(f"runs:/{rid}/w.txt") == "via the workspace route"
    assert mlc.get_registered_model(name).name == name


def test_basic_auth_with_the_key_as_password(ml, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "anything")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ml.key)
    c = MlflowClient(tracking_uri=ml.uri)
    name = uniq("basic")
    eid = c.create_experiment(name)
    assert c.get_experiment(eid).name == name
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hf_not_a_key")
    with pytest.raises(MlflowException) as e:
        c.get_experiment(eid)
    assert e.value.error_code in AUTH_ERRORS


def test_bad_or_missing_key_is_refused(ml, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "hf_not_a_key")
    c = MlflowClient(tracking_uri=ml.uri)
    with pytest.raises(MlflowException) as e:
        c.create_experiment(uniq("nokey"))
    assert e.value.error_code in AUTH_ERRORS
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    with pytest.raises(MlflowException) as e:
        c.search_experiments()
    assert e.value.error_code in AUTH_ERRORS
    r = requests.get(f"{ml.uri}/api/2.0/mlflow/experiments/get", params={"experiment_id": "0"}, timeout=10)
    assert r.status_code in (401, 403) and r.json()["error_code"] in AUTH_ERRORS


def test_unknown_route_is_endpoint_not_found(ml):
    r = requests.get(f"{ml.uri}/api/2.0/mlflow/no-such-route", headers=ml.headers(), timeout=10)
    assert r.status_code == 404 and r.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    r = requests.post(f"{ml.uri}/api/2.0/mlflow/runs/no-such-verb", json={}, headers=ml.headers(), timeout=10)
    assert r.status_code == 404 and r.json()["error_code"] == "ENDPOINT_NOT_FOUND"

    # The UI's prefix is the same API, and a method a route does not take is refused in MLflow's shape.
    r = requests.get(f"{ml.uri}/ajax-api/2.0/mlflow/experiments/get", params={"experiment_id": "0"}, headers=ml.headers(), timeout=10)
    assert r.status_code == 200 and r.json()["experiment"]["experiment_id"] == "0"
    r = requests.delete(f"{ml.uri}/api/2.0/mlflow/runs/create", headers=ml.headers(), timeout=10)
    assert r.status_code == 405 and "error_code" in r.json(), r.text


def test_a_create_retried_with_an_idempotency_key_makes_one_object(ml, mlc):
    """MLflow's creates are not idempotent; with Holdfast's `Idempotency-Key` a retry gets the
    first answer and makes nothing (the key and the answer are journaled with the write)."""
    eid = mlc.create_experiment(uniq("idem"))
    url = f"{ml.uri}/api/2.0/mlflow/runs/create"
    headers = {**ml.headers(), "Idempotency-Key": uniq("key")}
    first = requests.post(url, json={"experiment_id": eid}, headers=headers, timeout=10)
    again = requests.post(url, json={"experiment_id": eid}, headers=headers, timeout=10)
    assert first.status_code == again.status_code == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["run"]["info"]["run_id"] == first.json()["run"]["info"]["run_id"]
    assert len(mlc.search_runs([eid])) == 1
    # The same key for another request is refused, and makes nothing either.
    other = requests.post(url, json={"experiment_id": eid, "run_name": "other"}, headers=headers, timeout=10)
    assert other.status_code in (400, 422) and other.json()["error_code"] == "INVALID_PARAMETER_VALUE", other.text
    assert len(mlc.search_runs([eid])) == 1


# --- persistence ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml_persist(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml-persist")
    hf = HoldfastServer(root / "data", root / "logs")
    hf.start()
    try:
        hf.cli("project", "create", ML_PROJECT)
        yield hf
    finally:
        hf.stop()


def test_ml_state_survives_restart(ml, ml_persist, monkeypatch, tmp_path):
    uri = f"{ml_persist.url}/api/projects/{ML_PROJECT}/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", ml_persist.admin_key)
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    eid = c.create_experiment("kept", tags={"k": "v"})
    t0 = 1_700_000_000_000
    run = c.create_run(eid, start_time=t0, run_name="kept-run")
    rid = run.info.run_id
    c.log_batch(rid, metrics=[Metric("loss", 1.0 / (s + 1), t0 + s, s) for s in range(50)],
                params=[Param("lr", "0.01")], tags=[RunTag("team", "ml")])
    blob = bytes(range(256)) * 64
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(blob)
    c.log_artifacts(rid, str(tmp_path / "model"), "model")
    c.set_terminated(rid, "FINISHED", end_time=t0 + 60_000)
    c.create_registered_model("kept-model", description="survives")
    mv = c.create_model_version("kept-model", f"{run.info.artifact_uri}/model", run_id=rid)
    c.create_model_version("kept-model", f"{run.info.artifact_uri}/model", run_id=rid)
    c.set_registered_model_alias("kept-model", "champion", mv.version)
    lm = c.create_logged_model(eid, name="kept-lm", params={"a": "1"})
    c.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    gone = c.create_run(eid).info.run_id
    c.delete_run(gone)

    code = ml_persist.restart()
    assert code == 0, f"holdfast did not shut down cleanly on SIGTERM (exit {code}):\n{ml_persist.log_tail()}"

    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = c.get_experiment_by_name("kept")
    assert exp.experiment_id == eid and exp.tags == {"k": "v"}
    got = c.get_run(rid)
    assert (got.info.run_name, got.info.status, got.info.start_time, got.info.end_time) == \
        ("kept-run", "FINISHED", t0, t0 + 60_000)
    assert got.data.params == {"lr": "0.01"} and got.data.tags["team"] == "ml"
    assert got.data.metrics == {"loss": pytest.approx(1.0 / 50)}
    hist = sorted(c.get_metric_history(rid, "loss"), key=lambda m: m.step)
    assert [(m.step, m.timestamp, m.value) for m in hist] == [(s, t0 + s, 1.0 / (s + 1)) for s in range(50)]
    assert c.get_run(gone).info.lifecycle_stage == "deleted"
    assert [r.info.run_id for r in c.search_runs([eid])] == [rid]
    assert [r.info.run_id for r in c.search_runs([eid], filter_string="metrics.loss < 0.1 AND params.lr = '0.01'")] == [rid]

    rm = c.get_registered_model("kept-model")
    assert rm.description == "survives" and rm.aliases == {"champion": "1"}
    assert c.get_model_version_by_alias("kept-model", "champion").version == "1"
    assert sorted(v.version for v in c.search_model_versions("name = 'kept-model'")) == ["1", "2"]
    # Version numbers are never reused, across a restart too.
    assert c.create_model_version("kept-model", f"{run.info.artifact_uri}/model", run_id=rid).version == "3"
    assert c.get_logged_model(lm.model_id).status == LoggedModelStatus.READY

    local = c.download_artifacts(rid, "model/weights.bin", str(tmp_path))
    assert open(local, "rb").read() == blob
    src = c.get_model_version_download_uri("kept-model", "1")
    got_blob = mlflow.artifacts.download_artifacts(f"{src}/weights.bin", dst_path=str(tmp_path / "mv"), tracking_uri=uri)
    assert open(got_blob, "rb").read() == blob
