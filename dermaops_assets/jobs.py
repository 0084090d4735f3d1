"""Jobs: the Step Functions state machines of the architecture document, as asset selections.

- ``ingest_job``: validate and store the raw data and landed batches (``raw_images``) alone.
- ``retrain_job``: the whole training chain from raw data to a registered package, plus the
  new model's monitoring baseline; never deploys (deployment waits for approval). It starts by
  promoting newly labelled captures (``labelled_captures``), so every retrain learns from them.
- ``deploy_job``: put the newest Approved package behind the endpoint.
- ``monitoring_job``: read new captures, then drift and model-quality reports, the labelling queue and
  the champion/challenger report (which says "not enough data" while no challenger serves).
"""

from __future__ import annotations

import dagster as dg

RETRAIN_JOB = "retrain_job"
RETRAIN_REASON_TAG = "dermaops/retrain_reason"
RETRAIN_OUTCOME_TAG = "dermaops/retrain_outcome"
"""Set on a retrain_job run that found nothing new to learn (value NOTHING_NEW): it trained nothing."""
NOTHING_NEW = "nothing-new"
FORCE_RETRAIN_TAG = "dermaops/force_retrain"

ingest_job = dg.define_asset_job(
    "ingest_job", selection=dg.AssetSelection.assets("raw_images"),
    description="Validate and store the raw dataset and every landed batch (raw_images), without retraining.")

retrain_job = dg.define_asset_job(
    RETRAIN_JOB,
    selection=(dg.AssetSelection.assets("raw_images").downstream()
               - dg.AssetSelection.groups("monitoring") - dg.AssetSelection.assets("live_endpoint").downstream())
    | dg.AssetSelection.assets("model_baseline", "labelled_captures"),
    description="Retrain: promote labelled captures -> ingest -> preprocess -> train -> evaluate -> conditional registration, and the new "
    "model's monitoring baseline. Tag runs with dermaops/retrain_reason (drift|quality-drop|scheduled|manual|new-data).",
    # "dermaops/retrain" is limited to one run at a time by dagster.yaml's run coordinator.
    tags={RETRAIN_REASON_TAG: "manual", "dermaops/retrain": "true"},
)

deploy_job = dg.define_asset_job(
    "deploy_job", selection=dg.AssetSelection.assets("live_endpoint"),
    description="Deploy the newest Approved model package.")

monitoring_job = dg.define_asset_job(
    "monitoring_job", selection=dg.AssetSelection.assets("inference_log", "drift_report", "model_quality_report",
                                                         "cost_report", "labelling_queue", "challenger_report"),
    description="Read new data capture, then drift, model-quality and cost reports (metrics + alarms), the "
    "queue of captured requests most worth a dermatologist's label, and the champion/challenger comparison.")

all_jobs = [ingest_job, retrain_job, deploy_job, monitoring_job]
