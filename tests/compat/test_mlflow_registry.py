"""The MLflow model registry through `MlflowClient` (mlflow==3.17.2): registered models, model
versions, stages, tags and aliases."""

from __future__ import annotations

import time
import uuid

import pytest
from mlflow.exceptions import MlflowException


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def run_with_model(mlc):
    """A run whose artifacts hold a (tiny, fake) model directory, as model version sources."""
    eid = mlc.create_experiment(uniq("registry"))
    run = mlc.create_run(eid)
    mlc.log_text(run.info.run_id, "flavors: {}\n", "model/MLmodel")
    return run


def test_registered_model_create_get_update_rename_tags_delete(mlc):
    name = uniq("rm")
    before = int(time.time() * 1000) - 5000
    rm = mlc.create_registered_model(name, tags={"team": "a"}, description="first")
    assert rm.name == name and rm.description == "first" and rm.tags == {"team": "a"}
    assert rm.creation_timestamp >= before

    got = mlc.get_registered_model(name)
    assert (got.name, got.description, got.tags) == (name, "first", {"team": "a"})
    assert got.latest_versions == [] and got.aliases == {}

    mlc.update_registered_model(name, description="second")
    assert mlc.get_registered_model(name).description == "second"
    mlc.set_registered_model_tag(name, "k", "v")
    mlc.delete_registered_model_tag(name, "team")
    assert mlc.get_registered_model(name).tags == {"k": "v"}

    with pytest.raises(MlflowException) as e:
        mlc.create_registered_model(name)
    assert e.value.error_code == "RESOURCE_ALREADY_EXISTS"

    renamed = name + "-renamed"
    mlc.rename_registered_model(name, renamed)
    assert mlc.get_registered_model(renamed).description == "second"
    with pytest.raises(MlflowException) as e:
        mlc.get_registered_model(name)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    mlc.delete_registered_model(renamed)
    with pytest.raises(MlflowException) as e:
        mlc.get_registered_model(renamed)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_search_registered_models(mlc):
    tag = uuid.uuid4().hex[:10]
    names = [f"srm-{tag}-{i}" for i in range(4)]
    for i, n in enumerate(names):
        mlc.create_registered_model(n, tags={"kind": "even" if i % 2 == 0 else "odd"})
    got = mlc.search_registered_models(filter_string=f"name LIKE 'srm-{tag}-%'", order_by=["name DESC"])
    assert [m.name for m in got] == names[::-1]
    got = mlc.search_registered_models(filter_string=f"name ILIKE 'SRM-{tag.upper()}-%'", order_by=["name ASC"])
    assert [m.name for m in got] == names
    got = mlc.search_registered_models(filter_string=f"name = '{names[2]}'")
    assert [m.name for m in got] == [names[2]]
    got = mlc.search_registered_models(filter_string=f"name LIKE 'srm-{tag}-%' AND tags.kind = 'odd'", order_by=["name ASC"])
    assert [m.name for m in got] == [names[1], names[3]]

    first = mlc.search_registered_models(filter_string=f"name LIKE 'srm-{tag}-%'", order_by=["name ASC"], max_results=3)
    assert [m.name for m in first] == names[:3] and first.token
    second = mlc.search_registered_models(filter_string=f"name LIKE 'srm-{tag}-%'", order_by=["name ASC"],
                                          max_results=3, page_token=first.token)
    assert [m.name for m in second] == names[3:] and not second.token


def test_model_versions(mlc, run_with_model):
    rid = run_with_model.info.run_id
    source = f"{run_with_model.info.artifact_uri}/model"
    name = uniq("mv")
    mlc.create_registered_model(name)
    v1 = mlc.create_model_version(name, source, run_id=rid, tags={"t": "1"}, description="v one")
    v2 = mlc.create_model_version(name, source, run_id=rid)
    v3 = mlc.create_model_version(name, source, run_id=rid)
    assert [v.version for v in (v1, v2, v3)] == ["1", "2", "3"]
    assert (v1.name, v1.source, v1.run_id, v1.description, v1.tags) == (name, source, rid, "v one", {"t": "1"})
    assert v1.current_stage == "None"

    got = mlc.get_model_version(name, "1")
    assert (got.version, got.source, got.run_id, got.status, got.description) == ("1", source, rid, "READY", "v one")
    mlc.update_model_version(name, "1", description="changed")
    assert mlc.get_model_version(name, "1").description == "changed"
    mlc.set_model_version_tag(name, "1", "k", "v")
    mlc.delete_model_version_tag(name, "1", "t")
    assert mlc.get_model_version(name, "1").tags == {"k": "v"}

    assert mlc.get_model_version_download_uri(name, "2") == source

    found = mlc.search_model_versions(f"name = '{name}'")
    assert sorted(v.version for v in found) == ["1", "2", "3"]
    found = mlc.search_model_versions(f"name = '{name}' AND run_id = '{rid}'", order_by=["version_number DESC"])
    assert [v.version for v in found] == ["3", "2", "1"]
    found = mlc.search_model_versions(f"name = '{name}' AND tags.k = 'v'")
    assert [v.version for v in found] == ["1"]

    rm = mlc.get_registered_model(name)
    assert [v.version for v in rm.latest_versions] == ["3"]

    mlc.delete_model_version(name, "2")
    with pytest.raises(MlflowException) as e:
        mlc.get_model_version(name, "2")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert sorted(v.version for v in mlc.search_model_versions(f"name = '{name}'")) == ["1", "3"]
    # Version numbers are never reused.
    assert mlc.create_model_version(name, source, run_id=rid).version == "4"

    # Deleting the registered model takes its versions with it.
    mlc.delete_registered_model(name)
    assert list(mlc.search_model_versions(f"name = '{name}'")) == []


def test_stages_and_latest_versions(mlc, run_with_model):
    rid = run_with_model.info.run_id
    source = f"{run_with_model.info.artifact_uri}/model"
    name = uniq("stage")
    mlc.create_registered_model(name)
    for _ in range(3):
        mlc.create_model_version(name, source, run_id=rid)

    got = mlc.transition_model_version_stage(name, "1", "Staging")
    assert got.current_stage == "Staging"
    mlc.transition_model_version_stage(name, "2", "Production")
    assert {v.current_stage: v.version for v in mlc.get_latest_versions(name)} == \
        {"Staging": "1", "Production": "2", "None": "3"}
    assert [v.version for v in mlc.get_latest_versions(name, stages=["Production"])] == ["2"]

    # Moving 3 to Production with archive_existing_versions archives 2.
    mlc.transition_model_version_stage(name, "3", "Production", archive_existing_versions=True)
    assert mlc.get_model_version(name, "2").current_stage == "Archived"
    assert mlc.get_model_version(name, "1").current_stage == "Staging"
    assert [v.version for v in mlc.get_latest_versions(name, stages=["Production"])] == ["3"]
    assert [v.version for v in mlc.get_latest_versions(name, stages=["None"])] == []

    with pytest.raises(MlflowException) as e:
        mlc.transition_model_version_stage(name, "1", "NotAStage")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"


def test_aliases(mlc, run_with_model):
    rid = run_with_model.info.run_id
    source = f"{run_with_model.info.artifact_uri}/model"
    name = uniq("alias")
    mlc.create_registered_model(name)
    mlc.create_model_version(name, source, run_id=rid)
    mlc.create_model_version(name, source, run_id=rid)

    mlc.set_registered_model_alias(name, "champion", "1")
    mlc.set_registered_model_alias(name, "challenger", "2")
    assert mlc.get_model_version_by_alias(name, "champion").version == "1"
    assert mlc.get_registered_model(name).aliases == {"champion": "1", "challenger": "2"}
    assert mlc.get_model_version(name, "2").aliases == ["challenger"]

    # An alias moves: set again on another version.
    mlc.set_registered_model_alias(name, "champion", "2")
    assert mlc.get_model_version_by_alias(name, "champion").version == "2"
    assert sorted(mlc.get_model_version(name, "2").aliases) == ["challenger", "champion"]
    assert mlc.get_model_version(name, "1").aliases == []

    mlc.delete_registered_model_alias(name, "challenger")
    assert mlc.get_registered_model(name).aliases == {"champion": "2"}
    with pytest.raises(MlflowException) as e:
        mlc.get_model_version_by_alias(name, "challenger")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"  # MLflow's code for an unknown alias

    # Deleting a version drops its aliases.
    mlc.delete_model_version(name, "2")
    assert mlc.get_registered_model(name).aliases == {}


def test_registry_errors(mlc, run_with_model):
    with pytest.raises(MlflowException) as e:
        mlc.get_registered_model(uniq("missing"))
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    name = uniq("err")
    mlc.create_registered_model(name)
    with pytest.raises(MlflowException) as e:
        mlc.get_model_version(name, "7")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as e:
        mlc.create_model_version(uniq("missing"), f"{run_with_model.info.artifact_uri}/model",
                                 run_id=run_with_model.info.run_id)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as e:
        mlc.get_model_version_by_alias(name, "nobody")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"  # MLflow's code for an unknown alias
