"""The ``batch_predictions`` asset, materialized with the local backend against a registered
package: broken files listed with their reason, a rerun scores only new images, and nothing is
materialized without an ``input_uri``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import dagster as dg
import pytest

from dermaops_assets.batch import batch_predictions
from dermaops_resources.endpoint import LocalEndpointDeployer
from dermaops_resources.jobs import LocalJobRunner
from dermaops_resources.object_store import LocalObjectStore, join_uri, sha256_file
from dermaops_resources.registry import SqliteModelRegistry
from dermaops_resources.settings import Settings
from tests.support.batch_inputs import BROKEN, GOOD, jpeg, package_dir, write_images


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return package_dir(tmp_path_factory.mktemp("batch-asset-model")) / "model.tar.gz"


@pytest.fixture()
def world(tmp_path: Path, package: Path) -> dict:
    """Local store, job runner and registry with the package registered (version 1, approved);
    an endpoint that was never deployed."""
    store = LocalObjectStore(root=str(tmp_path / "store"))
    registry = SqliteModelRegistry(db_path=str(tmp_path / "registry.db"))
    uri = store.put_file("models", "packages/v1/model.tar.gz", package)
    registered = registry.register(Settings.from_env().model_package_group, uri, sha256_file(package), {}, "",
                                   {"data_version": "data-v7"}, status="Approved")
    return {"resources": {"store": store, "registry": registry,
                          "jobs": LocalJobRunner(work_root=str(tmp_path / "jobs")),
                          "endpoint": LocalEndpointDeployer(state_dir=str(tmp_path / "endpoint"),
                                                            capture_uri=store.uri("logs", "datacapture"))},
            "store": store, "package": registered, "images": write_images(tmp_path / "clinic-upload")}


def materialize(resources: dict, **config) -> tuple[dg.ExecuteInJobResult, dict]:
    result = dg.materialize([batch_predictions], resources=resources, raise_on_error=False,
                            run_config={"ops": {"batch_predictions": {"config": config}}})
    events = result.get_asset_materialization_events()
    metadata = {k: getattr(v, "value", v) for k, v in events[0].materialization.metadata.items()} if events else {}
    return result, metadata


def read(store: LocalObjectStore, uri: str) -> str:
    return store.get_bytes(uri).decode()


def test_folder_with_broken_files_then_a_rerun_that_scores_only_the_new_image(world):
    resources, store = world["resources"], world["store"]
    result, md = materialize(resources, input_uri=str(world["images"]), package_version=1)
    assert result.success
    assert (md["images"], md["scored"], md["reused"], md["skipped"]) == (6, 4, 0, 2)
    records = [json.loads(x) for x in read(store, md["records"]).splitlines()]
    assert sorted(r["image"] for r in records) == sorted(GOOD)
    assert {(r["package_version"], r["model_hash"], r["data_version"]) for r in records} == \
        {(1, world["package"].model_hash, "data-v7")}
    assert all(isinstance(r["in_distribution"], bool) for r in records)
    assert md["ood_flagged"] == sum(not r["in_distribution"] for r in records)
    skipped_uri = join_uri(md["predictions"].rsplit("/", 1)[0], "skipped.csv")
    skipped = {r["image"]: r["reason"] for r in csv.DictReader(io.StringIO(read(store, skipped_uri)))}
    assert sorted(skipped) == sorted(BROKEN) and all(r.startswith("cannot decode") for r in skipped.values())
    rows = list(csv.reader(io.StringIO(read(store, md["predictions"]))))
    assert rows[0] == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"] and len(rows) == 1 + len(GOOD)

    (world["images"] / "lesion_new.jpg").write_bytes(jpeg(42))
    result, again = materialize(resources, input_uri=str(world["images"]), package_version=1)
    assert result.success
    assert (again["images"], again["scored"], again["reused"], again["skipped"]) == (7, 1, 4, 2)
    by_image = {r["image"]: r for r in map(json.loads, read(store, again["records"]).splitlines())}
    assert all(by_image[r["image"]]["probabilities"] == r["probabilities"] for r in records)  # reused as they were
    assert "lesion_new" in by_image


def test_without_input_uri_nothing_is_materialized_and_no_job_runs(world, tmp_path):
    result, md = materialize(world["resources"])
    assert result.success and md == {}
    assert not result.get_asset_materialization_events()
    assert not (tmp_path / "jobs").exists()


def test_no_package_version_and_no_endpoint_serving_fails_with_what_to_set(world):
    result, _ = materialize(world["resources"], input_uri=str(world["images"]))
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "set package_version" in str(failure.event_specific_data.error)
