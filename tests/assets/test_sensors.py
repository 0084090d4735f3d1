"""Sensors and schedules evaluated against an ephemeral Dagster instance and real folders."""

import json
import os
import time
from pathlib import Path

import dagster as dg

from dermaops_resources.settings import Settings
import pytest

from dermaops_assets.jobs import RETRAIN_JOB, RETRAIN_REASON_TAG
from dermaops_assets.schedules import monthly_retrain_schedule
from dermaops_assets.sensors import (
    approval_sensor, drift_sensor, landing_tick, model_quality_sensor, raw_landing_sensor,
)
from dermaops_resources.object_store import LocalObjectStore, walk_after
from dermaops_resources.registry import SqliteModelRegistry

TEST_SALT = "landing-tests-salt-" + "0" * 32  # pseudonym salts have at least 32 characters


def _land(root: Path, *keys: str, age: float = 0.0) -> None:
    for key in keys:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"jpeg")
        if age:
            t = time.time() - age
            os.utime(path, (t, t))


@pytest.fixture()
def instance():
    # A temporary on-disk instance (not ephemeral): schedule contexts need an instance ref.
    with dg.instance_for_test() as inst:
        yield inst


def test_local_walk_resumes_after_cursor_in_component_order(tmp_path: Path) -> None:
    _land(tmp_path, "a/1.jpg", "a/2.jpg", "b/x/1.jpg", "b/y.jpg", "c.jpg", ".tmp-partial.jpg", "a/.h.tmp")
    def keys(after=None, root=tmp_path):
        return [key for key, _ in walk_after(root, after)]

    assert keys() == ["a/1.jpg", "a/2.jpg", "b/x/1.jpg", "b/y.jpg", "c.jpg"]
    assert keys("a/2.jpg") == ["b/x/1.jpg", "b/y.jpg", "c.jpg"]
    assert keys("b/x/1.jpg") == ["b/y.jpg", "c.jpg"]
    assert keys(root=tmp_path / "missing") == []
    # The local store lists the same way (bucket-relative keys), resuming inside a prefix.
    store = LocalObjectStore(root=str(tmp_path / "store"))
    for key in ("landing/a/1.jpg", "landing/a/2.jpg", "landing/b/1.jpg", "other/z.jpg"):
        store.put_bytes("raw", key, b"x")
    prefix = store.uri("raw", "landing")
    assert [o.key for o in store.list(prefix)] == ["landing/a/1.jpg", "landing/a/2.jpg", "landing/b/1.jpg"]
    assert [o.key for o in store.list(prefix, start_after="landing/a/1.jpg")] == ["landing/a/2.jpg", "landing/b/1.jpg"]
    assert [o.key for o in store.list(prefix, start_after="landing/b/1.jpg")] == []


def test_each_batch_completes_on_its_own_quiet_window_and_cursor_is_a_sequence(tmp_path: Path, instance, monkeypatch) -> None:
    monkeypatch.setenv("DERMAOPS_PSEUDONYM_SALT", TEST_SALT)
    store = LocalObjectStore(root=str(tmp_path / "store"))
    landing = tmp_path / "landing"
    _land(landing, "batch1/img_001.jpg", "batch1/img_002.jpg", "batch2/img_001.jpg", age=3600)
    ctx = dg.build_sensor_context(instance=instance, resources={"store": store})
    first = landing_tick(ctx, store, str(landing), quiet_seconds=60)
    assert not first.run_requests and "still arriving" in first.skip_reason.skip_message  # old mtimes prove nothing
    _land(landing, "batch1/img_003.jpg", age=3600)
    later = time.time() + 61
    ctx = dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"store": store})
    result = landing_tick(ctx, store, str(landing), quiet_seconds=60, now=later)
    (req,) = result.run_requests  # batch2 was quiet for 60 s of the sensor's clock; batch1 just changed
    assert req.tags["dermaops/landing_batches"] == "1" and req.tags["dermaops/landing_files"] == "1"
    assert req.job_name == RETRAIN_JOB and req.tags[RETRAIN_REASON_TAG] == "new-data"
    assert req.run_key.startswith(f"raw-landing:{json.loads(result.cursor)['seq']}:")
    ctx2 = dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={"store": store})
    result2 = landing_tick(ctx2, store, str(landing), quiet_seconds=60, now=later + 61)
    (req2,) = result2.run_requests
    assert req2.tags["dermaops/landing_files"] == "3" and req2.run_key != req.run_key
    ctx3 = dg.build_sensor_context(instance=instance, cursor=result2.cursor, resources={"store": store})
    assert isinstance(landing_tick(ctx3, store, str(landing), quiet_seconds=60, now=later + 300), dg.SkipReason)


def test_landing_inside_the_store_ignores_a_sibling_prefix(tmp_path: Path, instance) -> None:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    for key in ("landing/b1/img_000.jpg", "landing/b1/_SUCCESS", "landing-archive/old/HAM10000_metadata.csv"):
        store.put_bytes("raw", key, b"x")
    ctx = dg.build_sensor_context(instance=instance, resources={"store": store})
    result = landing_tick(ctx, store, store.uri("raw", "landing"), quiet_seconds=3600, salt="s")
    (req,) = result.run_requests  # the marker completes b1 at once; landing-archive/ is not in landing/
    assert req.tags["dermaops/landing_batches"] == "1" and req.tags["dermaops/landing_files"] == "2"


def test_landing_sensor_definition_reads_settings(tmp_path: Path, instance, monkeypatch) -> None:
    landing = tmp_path / "landing"
    _land(landing, "b/x.jpg", "b/_SUCCESS", age=3600)
    monkeypatch.setenv("DERMAOPS_LANDING_URI", str(landing))
    monkeypatch.setenv("DERMAOPS_PSEUDONYM_SALT", TEST_SALT)
    store = LocalObjectStore(root=str(tmp_path / "store"))
    ctx = dg.build_sensor_context(instance=instance, resources={"store": store})
    result = raw_landing_sensor(ctx)
    assert result.run_requests[0].job_name == RETRAIN_JOB


def _report(instance, asset: str, **metadata) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, metadata=metadata))


SETTINGS = {"settings": Settings.from_env({})}  # defaults, whatever the developer's environment says


def test_drift_sensor_fires_once_per_drifting_report(instance) -> None:
    ctx = dg.build_sensor_context(instance=instance, resources=SETTINGS)
    assert isinstance(drift_sensor(ctx), dg.SkipReason)  # no report yet
    _report(instance, "drift_report", drift_detected=False, drift_score=0.1)
    quiet = drift_sensor(ctx)
    assert not quiet.run_requests and quiet.cursor
    _report(instance, "drift_report", drift_detected=True, drift_score=0.9)
    ctx = dg.build_sensor_context(instance=instance, cursor=quiet.cursor, resources=SETTINGS)
    fired = drift_sensor(ctx)
    assert len(fired.run_requests) == 1
    req = fired.run_requests[0]
    assert req.job_name == RETRAIN_JOB and req.tags[RETRAIN_REASON_TAG] == "drift"
    assert req.run_key.startswith("drift:")
    again = drift_sensor(dg.build_sensor_context(instance=instance, cursor=fired.cursor, resources=SETTINGS))
    assert isinstance(again, dg.SkipReason)  # the same report never triggers twice


def test_retrain_requests_skip_while_retrain_in_flight(instance, tmp_path: Path) -> None:
    run = instance.create_run_for_job(dg.GraphDefinition(name="noop", node_defs=[]).to_job(RETRAIN_JOB))
    instance.handle_run_event(run.run_id, dg.DagsterEvent(event_type_value=dg.DagsterEventType.RUN_START.value,
                                                          job_name=RETRAIN_JOB))
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    _report(instance, "drift_report", drift_detected=True, drift_score=0.8)
    result = drift_sensor(dg.build_sensor_context(instance=instance, resources=SETTINGS))
    assert not result.run_requests and "already" in result.skip_reason.skip_message
    _report(instance, "model_quality_report", accuracy_drop=12.0)
    result = model_quality_sensor(dg.build_sensor_context(instance=instance, resources=SETTINGS))
    assert not result.run_requests
    with dg.build_schedule_context(instance=instance) as sctx:
        assert isinstance(monthly_retrain_schedule(sctx), dg.SkipReason)
    # A complete batch stays pending, so the run after this one retrains on it.
    _land(tmp_path / "landing", "2026-11-27-clinic-a/HAM10000_metadata.csv", "2026-11-27-clinic-a/_SUCCESS", age=3600)
    store = LocalObjectStore(root=str(tmp_path / "store"))
    ctx = dg.build_sensor_context(instance=instance, resources={"store": store})
    result = landing_tick(ctx, store, str(tmp_path / "landing"), salt="s")
    assert not result.run_requests and "already queued or running" in result.skip_reason.skip_message
    instance.handle_run_event(run.run_id, dg.DagsterEvent(event_type_value=dg.DagsterEventType.RUN_SUCCESS.value,
                                                          job_name=RETRAIN_JOB))
    ctx = dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={"store": store})
    assert len(landing_tick(ctx, store, str(tmp_path / "landing"), salt="s").run_requests) == 1


def test_persisting_drift_waits_for_the_cooldown_after_a_retrain(instance) -> None:
    import dermaops_assets.sensors as sensors

    day = {"settings": Settings.from_env({})}  # the default 24 h, whatever the developer's environment says

    run = instance.create_run_for_job(dg.GraphDefinition(name="noop", node_defs=[]).to_job(RETRAIN_JOB))
    for event in (dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS):
        instance.handle_run_event(run.run_id, dg.DagsterEvent(event_type_value=event.value, job_name=RETRAIN_JOB))
    assert 0 <= sensors.hours_since_last_retrain(instance) < 0.1
    _report(instance, "drift_report", drift_detected=True, drift_score=0.8)
    result = drift_sensor(dg.build_sensor_context(instance=instance, resources=day))
    assert not result.run_requests and "cooldown 24 h" in result.skip_reason.skip_message
    _report(instance, "drift_report", drift_detected=True, drift_score=0.8)  # still drifting, cooldown over
    over = {"settings": Settings.from_env({"DERMAOPS_RETRAIN_COOLDOWN_HOURS": "0"})}
    result = drift_sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor, resources=over))
    assert result.run_requests[0].tags[RETRAIN_REASON_TAG] == "drift"


def test_model_quality_sensor_retrains_without_a_second_page(instance) -> None:
    """The accuracy-drop alarm of model_quality_report pages once (tests/assets/test_monitoring.py);
    the sensor only requests the retrain, so a quality drop is one critical notification, not two."""
    _report(instance, "model_quality_report", accuracy_drop=3.0)
    settings = {"settings": Settings.from_env({})}
    first = model_quality_sensor(dg.build_sensor_context(instance=instance, resources=settings))
    assert not first.run_requests
    _report(instance, "model_quality_report", accuracy_drop=7.5)
    fired = model_quality_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=settings))
    assert fired.run_requests[0].tags[RETRAIN_REASON_TAG] == "quality-drop"


def test_monthly_schedule_tags_reason(instance) -> None:
    from datetime import datetime, timezone

    when = datetime(2026, 3, 1, 3, 0, tzinfo=timezone.utc)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=when) as sctx:
        req = monthly_retrain_schedule(sctx)
    assert req.tags[RETRAIN_REASON_TAG] == "scheduled" and req.run_key == "scheduled:2026-03"
    assert monthly_retrain_schedule.cron_schedule == "0 3 1 * *"


def test_approval_sensor_deploys_each_new_approval_and_rolls_back_a_rejection(instance, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DERMAOPS_MODEL_PACKAGE_GROUP", "g")
    registry = SqliteModelRegistry(db_path=str(tmp_path / "registry.db"))
    for _ in range(2):
        registry.register("g", "file:///m.tar.gz", "h", {"balanced_accuracy": 0.6}, "", {})
    ctx = dg.build_sensor_context(instance=instance, resources={"registry": registry})
    assert isinstance(approval_sensor(ctx), dg.SkipReason)  # pending only
    registry.set_status("g", 2, "Approved")
    fired = approval_sensor(ctx)
    assert fired.run_requests[0].run_key == "deploy:g:v2:1" and fired.run_requests[0].job_name == "deploy_job"
    assert fired.run_requests[0].tags["dermaops/trigger"] == "approval"

    def tick(cursor):
        return approval_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"registry": registry}))

    registry.set_status("g", 1, "Approved")  # older than what was deployed: v2 stays
    assert "already deployed" in tick(fired.cursor).skip_message
    registry.set_status("g", 2, "Rejected", "unsafe on darker skin")  # the served model is pulled: roll back
    rollback = tick(fired.cursor)
    assert rollback.run_requests[0].tags == {"dermaops/package_version": "1", "dermaops/trigger": "rollback"}
    registry.set_status("g", 2, "Approved")  # re-approved after review: deployed again, under a new run key
    again = tick(rollback.cursor)
    assert again.run_requests[0].run_key == "deploy:g:v2:3" and again.run_requests[0].tags["dermaops/trigger"] == "approval"
    registry.set_status("g", 1, "Rejected", "x")
    registry.set_status("g", 2, "Rejected", "x")
    assert "v2 keeps serving" in tick(again.cursor).skip_message  # nothing approved: said, not stopped
    assert "v1 keeps serving" in tick("1").skip_message  # a cursor of the older bare-version form still reads
