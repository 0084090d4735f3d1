"""Schedules: the EventBridge cron rules of the architecture document."""


import dagster as dg

from .jobs import RETRAIN_REASON_TAG, monitoring_job, retrain_job
from .sensors import retrain_in_progress

monitoring_schedule = dg.ScheduleDefinition(
    name="hourly_monitoring_schedule", job=monitoring_job, cron_schedule="0 * * * *",
    execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every hour: read new data capture, then drift and model-quality reports.")


@dg.schedule(job=retrain_job, cron_schedule="0 3 1 * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.RUNNING,
             description="Monthly retraining at 03:00 UTC on the 1st, skipped while a retrain run is in flight.")
def monthly_retrain_schedule(context: dg.ScheduleEvaluationContext):
    if retrain_in_progress(context.instance):
        return dg.SkipReason("A retrain_job run is already queued or running; the scheduled retrain is skipped.")
    try:
        when = context.scheduled_execution_time
    except dg.DagsterInvariantViolationError:
        when = None
    except Exception:  # noqa: BLE001 - dagster raises CheckError when evaluated outside a tick
        when = None
    return dg.RunRequest(run_key=f"scheduled:{when:%Y-%m}" if when else None,
                         tags={RETRAIN_REASON_TAG: "scheduled", "dermaops/trigger": "monthly-schedule"})


all_schedules = [monitoring_schedule, monthly_retrain_schedule]
