"""MLflow's fluent API (mlflow==3.17.2) against the tracking URI: set_experiment, start_run,
log_* and artifacts round trips, scikit-learn autolog, log_model with registration, and
loading a registered model back through `models:/name@alias`."""

from __future__ import annotations

import uuid

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

# A tiny, separable classification set (no downloads).
X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [2.0, 1.0], [2.0, 2.0], [3.0, 2.0], [3.0, 3.0]])
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def _no_active_run(ml):
    """Each test starts and leaves with no active run."""
    while mlflow.active_run():
        mlflow.end_run()
    yield
    while mlflow.active_run():
        mlflow.end_run()


def test_fluent_run_params_metrics_tags_artifacts(ml, tmp_path):
    exp = mlflow.set_experiment(uniq("fluent"))
    assert exp.experiment_id and mlflow.get_experiment(exp.experiment_id).name == exp.name
    blob = bytes(range(256)) * 40
    (tmp_path / "blob.bin").write_bytes(blob)
    tree = tmp_path / "tree"
    (tree / "inner").mkdir(parents=True)
    (tree / "x.txt").write_text("x-content")
    (tree / "inner" / "y.bin").write_bytes(b"\x00\x01\x02y")

    with mlflow.start_run(run_name="fluent-run") as run:
        rid = run.info.run_id
        assert mlflow.active_run().info.run_id == rid
        mlflow.log_param("alpha", 0.5)
        mlflow.log_params({"beta": "b", "gamma": 3})
        for step in range(3):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metrics({"acc": 0.9, "f1": 0.8}, step=2)
        mlflow.set_tag("stage", "dev")
        mlflow.set_tags({"owner": "me", "n": 1})
        mlflow.log_dict({"a": [1, 2], "b": {"c": "d"}}, "conf/d.json")
        mlflow.log_text("hello text\n", "notes.txt")
        mlflow.log_artifact(str(tmp_path / "blob.bin"))
        mlflow.log_artifact(str(tmp_path / "blob.bin"), artifact_path="sub")
        mlflow.log_artifacts(str(tree), artifact_path="tree")
    assert mlflow.active_run() is None

    got = MlflowClient().get_run(rid)
    assert got.info.experiment_id == exp.experiment_id
    assert got.info.run_name == "fluent-run"
    assert got.info.status == "FINISHED" and got.info.end_time >= got.info.start_time
    assert got.data.params == {"alpha": "0.5", "beta": "b", "gamma": "3"}
    assert got.data.metrics == {"loss": pytest.approx(1.0 / 3), "acc": 0.9, "f1": 0.8}
    assert {k: got.data.tags[k] for k in ("stage", "owner", "n")} == {"stage": "dev", "owner": "me", "n": "1"}
    assert [m.value for m in sorted(MlflowClient().get_metric_history(rid, "loss"), key=lambda m: m.step)] == \
        pytest.approx([1.0, 0.5, 1.0 / 3])

    out = tmp_path / "out"
    path = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path="blob.bin", dst_path=str(out / "a"))
    assert open(path, "rb").read() == blob
    path = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path="sub/blob.bin", dst_path=str(out / "b"))
    assert open(path, "rb").read() == blob
    assert mlflow.artifacts.load_dict(f"runs:/{rid}/conf/d.json") == {"a": [1, 2], "b": {"c": "d"}}
    assert mlflow.artifacts.load_text(f"runs:/{rid}/notes.txt") == "hello text\n"
    whole = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path="tree", dst_path=str(out / "c"))
    assert open(f"{whole}/x.txt").read() == "x-content"
    assert open(f"{whole}/inner/y.bin", "rb").read() == b"\x00\x01\x02y"
    # And the whole run at once.
    everything = mlflow.artifacts.download_artifacts(f"runs:/{rid}/", dst_path=str(out / "d"))
    assert open(f"{everything}/tree/inner/y.bin", "rb").read() == b"\x00\x01\x02y"
    assert open(f"{everything}/blob.bin", "rb").read() == blob


def test_fluent_end_run_status(ml):
    mlflow.set_experiment(uniq("status"))
    with pytest.raises(ZeroDivisionError):
        with mlflow.start_run() as run:
            1 / 0
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"

    run = mlflow.start_run()
    mlflow.end_run(status="KILLED")
    assert MlflowClient().get_run(run.info.run_id).info.status == "KILLED"

    # Nested runs carry their parent's id.
    with mlflow.start_run() as parent:
        with mlflow.start_run(nested=True) as child:
            pass
    got = MlflowClient().get_run(child.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id
    found = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list")
    assert [r.info.run_id for r in found] == [child.info.run_id]


def test_fluent_log_input_dataset(ml):
    import pandas as pd

    mlflow.set_experiment(uniq("input"))
    df = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    ds = mlflow.data.from_pandas(df, name="pair")
    with mlflow.start_run() as run:
        mlflow.log_input(ds, context="eval")
    (di,) = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    assert (di.dataset.name, di.dataset.digest) == ("pair", ds.digest)
    assert {t.key: t.value for t in di.tags}["mlflow.data.context"] == "eval"


def test_sklearn_autolog(ml):
    from sklearn.linear_model import LogisticRegression

    mlflow.set_experiment(uniq("autolog"))
    mlflow.sklearn.autolog(log_models=True, log_datasets=False, silent=True)
    try:
        with mlflow.start_run() as run:
            model = LogisticRegression(C=0.5, max_iter=200).fit(X, Y)
    finally:
        mlflow.sklearn.autolog(disable=True)

    got = MlflowClient().get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["C"] == "0.5" and got.data.params["max_iter"] == "200"
    assert got.data.metrics["training_accuracy_score"] == pytest.approx(model.score(X, Y))
    assert "training_log_loss" in got.data.metrics
    assert got.data.tags["estimator_name"] == "LogisticRegression"
    assert got.data.tags["estimator_class"] == "sklearn.linear_model._logistic.LogisticRegression"

    # MLflow 3: the autologged model is a logged model linked to the run.
    logged = mlflow.last_logged_model()
    assert logged is not None and logged.source_run_id == run.info.run_id
    assert MlflowClient().get_logged_model(logged.model_id).status.to_proto() == logged.status.to_proto()
    loaded = mlflow.sklearn.load_model(f"models:/{logged.model_id}")
    assert (loaded.predict(X) == model.predict(X)).all()


def test_log_model_register_alias_and_load(ml, mlc, tmp_path):
    from sklearn.linear_model import LogisticRegression

    mlflow.set_experiment(uniq("logmodel"))
    reg = uniq("reg")
    model = LogisticRegression(max_iter=200).fit(X, Y)
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(model, name="m", registered_model_name=reg, input_example=X[:2])
    assert str(info.registered_model_version) == "1"
    assert info.run_id == run.info.run_id and info.model_id

    mv = mlc.get_model_version(reg, "1")
    assert (mv.name, mv.version, mv.run_id, mv.status) == (reg, "1", run.info.run_id, "READY")
    # MLflow 3 registers the logged model: the version's source is `models:/<model_id>`.
    assert mv.source == f"models:/{info.model_id}"
    logged = mlc.get_logged_model(info.model_id)
    assert logged.name == "m" and logged.source_run_id == run.info.run_id and str(logged.status) == "READY"

    mlc.set_registered_model_alias(reg, "champion", "1")
    assert mlc.get_model_version_by_alias(reg, "champion").version == "1"
    loaded = mlflow.pyfunc.load_model(f"models:/{reg}@champion")
    assert loaded.metadata.run_id == run.info.run_id
    assert list(loaded.predict(X)) == list(model.predict(X))
    # By version and through the sklearn flavour too.
    assert list(mlflow.sklearn.load_model(f"models:/{reg}/1").predict_proba(X)[:, 1]) == \
        pytest.approx(list(model.predict_proba(X)[:, 1]))

    # The registered artifacts are the logged model's files, byte for byte.
    local = mlflow.artifacts.download_artifacts(f"models:/{reg}/1", dst_path=str(tmp_path / "dl"))
    again = mlflow.artifacts.download_artifacts(f"models:/{info.model_id}", dst_path=str(tmp_path / "dl2"))
    assert open(f"{local}/MLmodel").read() == open(f"{again}/MLmodel").read()
    assert "sklearn" in open(f"{local}/MLmodel").read()
