"""Sensors: the EventBridge rules and Lambda triggers of the architecture document.

- ``raw_landing_sensor``: new raw files in the landing location -> ``retrain_job`` (reason
  ``new-data``), whose ``raw_images`` ingests the dataset plus every landed batch (a folder
  per batch, in either public layout). Lists only keys after the cursor (S3 ``StartAfter`` /
  a pruned sorted walk locally), so a tick costs O(new files), not O(all files); a burst of
  uploads is coalesced into one run by waiting for ``quiet_seconds`` without new files (or
  ``max_batch`` files). Because the cursor is a key, batches must be named so that they sort
  in arrival order (a date-stamped folder such as ``2026-11-27-clinic-a/``): a batch that
  sorts before one already seen is ingested by the next retraining, not by its own.
- ``drift_sensor`` / ``model_quality_sensor``: the latest drift / quality report's metadata
  -> ``retrain_job`` tagged with the reason.
- ``approval_sensor``: the newest Approved model package changed (an approval, or a rollback
  after the served one was rejected) -> ``deploy_job``.

Every retraining request carries ``dermaops/retrain_reason`` and is skipped while a
retrain run is already queued or running; the report-driven ones also wait
``RETRAIN_COOLDOWN_HOURS`` after the last retraining started.
"""


import json
import os
import time

import dagster as dg

from dermaops_resources.notifier import Notifier
from dermaops_resources.object_store import ObjectStore, list_after
from dermaops_resources.registry import ModelRegistry
from dermaops_resources.settings import Settings

from .jobs import RETRAIN_JOB, RETRAIN_REASON_TAG, deploy_job, retrain_job

IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED]
QUIET_SECONDS = float(os.environ.get("DERMAOPS_LANDING_QUIET_SECONDS", "60"))
MAX_BATCH = int(os.environ.get("DERMAOPS_LANDING_MAX_BATCH", "5000"))
# A report-driven retrain waits this long after the last retraining started: drift or a quality
# drop that persists (the new package may still await approval) is reported every hour, and
# each report would otherwise start another full retraining on the same data.
RETRAIN_COOLDOWN_HOURS = float(os.environ.get("DERMAOPS_RETRAIN_COOLDOWN_HOURS", "24"))
DRIFT_SCORE_THRESHOLD = 0.5  # drift_verdict scores >= 0.5 exactly when drift is detected
ACCURACY_DROP_POINTS = 5.0


def retrain_in_progress(instance: dg.DagsterInstance) -> bool:
    """True when a retrain_job run is queued, starting or running."""
    return bool(instance.get_run_records(dg.RunsFilter(job_name=RETRAIN_JOB, statuses=IN_PROGRESS), limit=1))


def hours_since_last_retrain(instance: dg.DagsterInstance) -> float | None:
    """Hours since the newest retrain_job run (any trigger, any outcome) was created; None if none."""
    records = instance.get_run_records(dg.RunsFilter(job_name=RETRAIN_JOB), limit=1)
    if not records:
        return None
    return (time.time() - records[0].create_timestamp.timestamp()) / 3600.0


def retrain_blocked(instance: dg.DagsterInstance, what: str) -> str | None:
    """Why a report-driven retrain must not start now (one in flight, or within the cooldown), or None."""
    if retrain_in_progress(instance):
        return f"{what}, but a retrain_job run is already queued or running."
    since = hours_since_last_retrain(instance)
    if since is not None and since < RETRAIN_COOLDOWN_HOURS:
        return (f"{what}, but the last retraining started {since:.1f} h ago (cooldown {RETRAIN_COOLDOWN_HOURS:g} h, "
                "DERMAOPS_RETRAIN_COOLDOWN_HOURS); if it persists, a report after the cooldown retrains.")
    return None


def landing_tick(context: dg.SensorEvaluationContext, store: ObjectStore, landing_uri: str,
                 quiet_seconds: float = QUIET_SECONDS, max_batch: int = MAX_BATCH,
                 now: float | None = None) -> dg.SensorResult | dg.SkipReason:
    """One evaluation of the landing sensor (separate from the decorator so it is testable)."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    last_key = cursor.get("last_key")
    new = list_after(store, landing_uri, last_key, max_batch + 1)
    if not new:
        return dg.SkipReason(f"No new files in {landing_uri} after {last_key or 'the start'}.")
    now = time.time() if now is None else now
    newest_mtime = max(f.modified for f in new)
    if len(new) <= max_batch and now - newest_mtime < quiet_seconds:
        return dg.SkipReason(f"{len(new)} new file(s) in {landing_uri}; last arrived {now - newest_mtime:.0f}s ago, "
                             f"waiting for {quiet_seconds:.0f}s of quiet so the upload burst becomes one run.")
    if retrain_in_progress(context.instance):
        # Keep the cursor: these files are requested once the run in flight (which may have
        # listed the landing location before they arrived) has finished.
        return dg.SkipReason(f"{len(new)} new file(s) in {landing_uri}, but a retrain_job run is already queued "
                             "or running; retraining on them once it ends.")
    batch = new[:max_batch]
    newest = batch[-1].key
    request = _retrain_request("new-data", f"raw-landing:{newest}",
                               {"dermaops/landing_files": str(len(batch)), "dermaops/landing_last_key": newest[-200:]})
    return dg.SensorResult(run_requests=[request], cursor=json.dumps({"last_key": newest}))


@dg.sensor(job=retrain_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="New raw files in the landing location (DERMAOPS_LANDING_URI) -> retrain_job (reason "
           "new-data), one run per upload burst; lists only keys after the cursor, so name batch folders to sort "
           "in arrival order (e.g. date-stamped).")
def raw_landing_sensor(context: dg.SensorEvaluationContext, store: ObjectStore):
    return landing_tick(context, store, Settings.from_env().landing_uri)


# -- report-driven retraining -----------------------------------------------------------

def _latest_report(context: dg.SensorEvaluationContext, asset: str) -> tuple[int, dict] | None:
    """(storage id, metadata values) of the asset's newest materialization, if newer than the cursor."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return None
    storage_id = int(getattr(event, "storage_id", 0) or 0) or int(event.timestamp * 1000)
    if context.cursor and storage_id <= int(context.cursor):
        return None
    metadata = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
    return storage_id, metadata


def _retrain_request(reason: str, run_key: str, extra: dict[str, str]) -> dg.RunRequest:
    return dg.RunRequest(run_key=run_key, job_name=retrain_job.name,
                         tags={RETRAIN_REASON_TAG: reason, "dermaops/trigger": f"{reason}-sensor", **extra})


@dg.sensor(job=retrain_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Retrain when the newest drift_report says drift_detected (or drift_score >= 0.5).")
def drift_sensor(context: dg.SensorEvaluationContext):
    latest = _latest_report(context, "drift_report")
    if latest is None:
        return dg.SkipReason("No new drift_report materialization.")
    storage_id, md = latest
    score = float(md.get("drift_score", 0.0) or 0.0)
    if not (bool(md.get("drift_detected")) or score >= DRIFT_SCORE_THRESHOLD):
        return dg.SensorResult(skip_reason=f"drift_report {storage_id}: no drift (score {score:.2f}).",
                               cursor=str(storage_id))
    blocked = retrain_blocked(context.instance, "Drift detected")
    if blocked:  # the run in flight (or just done) answers this report; do not queue another for it later
        return dg.SensorResult(skip_reason=blocked, cursor=str(storage_id))
    return dg.SensorResult(run_requests=[_retrain_request("drift", f"drift:{storage_id}",
                                                          {"dermaops/drift_score": f"{score:.3f}"})],
                           cursor=str(storage_id))


@dg.sensor(job=retrain_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Retrain (and page the team) when the live balanced accuracy dropped more than 5 points.")
def model_quality_sensor(context: dg.SensorEvaluationContext, notifier: Notifier):
    latest = _latest_report(context, "model_quality_report")
    if latest is None:
        return dg.SkipReason("No new model_quality_report materialization.")
    storage_id, md = latest
    drop = float(md.get("accuracy_drop", 0.0) or 0.0)
    if not drop > ACCURACY_DROP_POINTS:
        return dg.SensorResult(skip_reason=f"model_quality_report {storage_id}: drop {drop:.1f} points.",
                               cursor=str(storage_id))
    blocked = retrain_blocked(context.instance, "Accuracy dropped")
    if blocked:
        return dg.SensorResult(skip_reason=blocked, cursor=str(storage_id))
    notifier.notify("DermaOps: model accuracy dropped, retraining",
                    f"Live balanced accuracy is {drop:.1f} points below the deployed model's evaluation "
                    f"(threshold {ACCURACY_DROP_POINTS:g}); retrain_job requested.", severity="critical",
                    attributes={"accuracy_drop_points": f"{drop:.2f}"})
    return dg.SensorResult(run_requests=[_retrain_request("quality-drop", f"quality-drop:{storage_id}",
                                                          {"dermaops/accuracy_drop": f"{drop:.2f}"})],
                           cursor=str(storage_id))


# -- approval -> deployment -------------------------------------------------------------

@dg.sensor(job=deploy_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Deploy when the newest Approved model package changes: a new approval, or a rollback "
           "(the served version rejected, so an older Approved one becomes the newest). SQLite registry "
           "locally, SageMaker Model Registry on AWS.")
def approval_sensor(context: dg.SensorEvaluationContext, registry: ModelRegistry):
    group = Settings.from_env().model_package_group
    cursor = _approval_cursor(context.cursor)
    target = registry.latest(group, status="Approved")
    requested = cursor["version"]
    if target is None:
        return dg.SkipReason(f"No Approved package in {group}"
                             + (f"; v{requested} keeps serving until one is approved or the endpoint is stopped "
                                "(`dermaops endpoint stop`)." if requested else "."))
    if target.version == requested:
        return dg.SkipReason(f"The newest Approved package in {group} is v{target.version}, already deployed.")
    why = "rollback" if requested and target.version < requested else "approval"
    count = cursor["requests"] + 1
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"deploy:{group}:v{target.version}:{count}", job_name=deploy_job.name,
                                    tags={"dermaops/package_version": str(target.version),
                                          "dermaops/trigger": why})],
        cursor=json.dumps({"version": target.version, "requests": count}))


def _approval_cursor(text: str | None) -> dict[str, int]:
    """The version the sensor last asked to deploy and how many deploys it has asked for (the
    count keeps run keys unique when a version is deployed again after a rollback). Older
    cursors were the bare highest version seen; their run keys had no count, so counting
    starts again at 0."""
    if not text:
        return {"version": 0, "requests": 0}
    if text.isdigit():
        return {"version": int(text), "requests": 0}
    return json.loads(text)


all_sensors = [raw_landing_sensor, drift_sensor, model_quality_sensor, approval_sensor]
