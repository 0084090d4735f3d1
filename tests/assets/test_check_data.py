"""'Check Data': a retrain with nothing new since the serving model ends without training, says so
in the run's tags, and keeps the report-driven triggers from firing again until data changes."""

from __future__ import annotations

import dagster as dg
import pytest

from dermaops_assets.jobs import FORCE_RETRAIN_TAG, NOTHING_NEW, RETRAIN_OUTCOME_TAG, RETRAIN_REASON_TAG
from dermaops_assets.sensors import drift_sensor
from dermaops_assets.training import trained_model
from dermaops_resources.handles import ProcessedSplitsHandle
from dermaops_resources.object_store import LocalObjectStore
from dermaops_resources.registry import SqliteModelRegistry
from dermaops_resources.settings import Settings
from tests.support.dagster_io import HandleIO

SPLITS = ProcessedSplitsHandle(splits_uri="file:///nowhere/splits", content_hash="c0ffee" * 10, image_size=16,
                               classes=["mel", "nv"], split_counts={}, raw_manifest_hash="m")


class _NoJobs(dg.ConfigurableResource):
    """A job runner that fails the test if training starts."""

    def run(self, *args, **kwargs):
        raise AssertionError("trained although there was nothing new")


@pytest.fixture()
def world(tmp_path):
    store = LocalObjectStore(root=str(tmp_path / "store"))
    store.put_json("models", "handles/processed_splits.json",
                   {"type": f"{ProcessedSplitsHandle.__module__}:ProcessedSplitsHandle", "handle": SPLITS.model_dump()})
    registry = SqliteModelRegistry(db_path=str(tmp_path / "registry.db"))
    settings = Settings.from_env({"DERMAOPS_HOME": str(tmp_path)})
    package = registry.register(settings.model_package_group, "file:///m.tar.gz", "h", {}, "",
                                {"data_version": SPLITS.content_hash[:16]})
    registry.set_status(settings.model_package_group, package.version, "Approved")
    return {"store": store, "io_manager": HandleIO(store), "registry": registry, "settings": settings,
            "jobs": _NoJobs()}


def test_a_retrain_on_the_serving_models_data_ends_without_training(world):
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([dg.AssetSpec("processed_splits"), trained_model], resources=world,
                                selection=["trained_model"], instance=instance,
                                tags={RETRAIN_REASON_TAG: "drift"})
        assert result.success and not result.get_asset_materialization_events()
        run = instance.get_run_by_id(result.run_id)
        assert run.tags[RETRAIN_OUTCOME_TAG] == NOTHING_NEW


def test_forcing_or_a_users_own_run_trains(world):
    for tags in ({RETRAIN_REASON_TAG: "manual", FORCE_RETRAIN_TAG: "true"}, {}):
        with pytest.raises(Exception, match="trained although there was nothing new"):
            dg.materialize([dg.AssetSpec("processed_splits"), trained_model], resources=world,
                           selection=["trained_model"], tags=tags)


def test_after_nothing_new_the_drift_trigger_waits_for_new_data(world):
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([dg.AssetSpec("processed_splits"), trained_model], resources=world,
                                selection=["trained_model"], instance=instance, tags={RETRAIN_REASON_TAG: "drift"})
        # pretend the nothing-new run was a retrain_job run, as the sensors see them
        assert instance.get_run_by_id(result.run_id).tags[RETRAIN_OUTCOME_TAG] == NOTHING_NEW
        run = instance.create_run_for_job(dg.GraphDefinition(name="noop", node_defs=[]).to_job("retrain_job"),
                                          tags={RETRAIN_OUTCOME_TAG: NOTHING_NEW})
        for event in (dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS):
            instance.handle_run_event(run.run_id, dg.DagsterEvent(event_type_value=event.value,
                                                                  job_name="retrain_job"))
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "drift_report", metadata={"drift_detected": True, "drift_score": 0.9}))
        no_cooldown = {"settings": Settings.from_env({"DERMAOPS_RETRAIN_COOLDOWN_HOURS": "0"})}
        result = drift_sensor(dg.build_sensor_context(instance=instance, resources=no_cooldown))
        assert not result.run_requests and "nothing new to learn" in result.skip_reason.skip_message
