"""Human in the loop: the review queue a dermatologist works through, and their labels turned
into training data.

- ``labelling_queue`` (monitoring_job): the captured requests most worth a review (uncertain,
  network vs descriptor model disagreeing, out of distribution), as a table in the UI and a CSV
  in the store that, filled in, is dropped as it is into ``DERMAOPS_LABELS_URI``.
- ``labelled_captures`` (retrain_job, before ``raw_images``): each new label for a captured
  request becomes a row of a dataset batch in the raw bucket, which ``raw_images`` ingests, so
  the data version changes and the retrain has something to learn.

The logic is in ``dermaops_services.labelling`` and ``ml_code.monitoring.labelling``.
"""

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd

from dermaops_resources.handles import EndpointHandle
from dermaops_resources.monitoring_handles import InferenceLogHandle
from dermaops_resources.object_store import ObjectStore
from dermaops_resources.settings import Settings
from dermaops_services.ingestion import pseudonym_salt
from dermaops_services.labelling import (
    promote_labelled_captures,
    publish_queue,
    review_queue,
)
from dermaops_services.monitoring import capture_views, load_inference_log, local_copy, read_labels
from ml_code.monitoring.labelling import committee_probabilities, review_scores

from .ui import table_markdown
from .versioning import code_version

QUEUE_ROWS_IN_UI = 25


@dg.asset(group_name="labelling", kinds={"python", "s3"},
          code_version=code_version("dermaops_services.labelling"),
          description="Ground-truth labels (DERMAOPS_LABELS_URI, inference_id,label) for captured requests, promoted "
          "once each into training data: the captured image, its clinical context and the confirmed diagnosis as a "
          "dataset batch (HAM10000 layout, own lesion id, pseudonymised patient reference) under "
          "raw/labelled-captures/, which raw_images ingests. Unknown labels are counted, not promoted.")
def labelled_captures(context: dg.AssetExecutionContext, store: ObjectStore,
                      settings: Settings) -> dg.MaterializeResult:
    salt = pseudonym_salt(settings.home_path, settings.pseudonym_salt, settings.pseudonym_salt_secret_arn,
                          settings.region)
    result = promote_labelled_captures(store, settings.labels_uri, salt)
    context.log.info(f"labelled captures: {result.promoted} promoted (batch {result.batch or 'none'}), "
                     f"{result.already_promoted} already promoted, {result.no_capture} without a captured request, "
                     f"{result.unknown_labels} unknown labels")
    if result.corrections_not_applied:
        context.log.warning(f"{result.corrections_not_applied} label(s) name another class than the one already "
                            "promoted for the same request; promoted rows are not replaced. Correct the row in "
                            "raw/labelled-captures/ by hand if the new label is right.")
    metadata = {"promoted": result.promoted, "already_promoted": result.already_promoted,
                "corrections_not_applied": result.corrections_not_applied, "no_capture": result.no_capture,
                "undecodable": result.undecodable, "unknown_labels": result.unknown_labels,
                "unlabelled_rows": result.unlabelled, "batch": result.batch,
                "class_counts": table_markdown([{"dx": k, "promoted": v} for k, v in result.class_counts.items()])}
    if result.batch_uri:
        metadata["batch_uri"] = dg.MetadataValue.path(result.batch_uri)
    # The data version moves only when a batch was published, so raw_images downstream is stale only then.
    return dg.MaterializeResult(metadata=metadata,
                                data_version=dg.DataVersion(result.batch) if result.batch else None)


class LabellingQueueConfig(dg.Config):
    window_hours: float = 24.0 * 7
    max_requests: int = 2000
    size: int = 100


@dg.asset(group_name="labelling", kinds={"python"},
          code_version=code_version("dermaops_services.labelling", "ml_code.monitoring.labelling"),
          description="The captured requests most worth a dermatologist's review, best first: highest uncertainty "
          "(normalised entropy of the answer), disagreement between the network and the descriptor model, and "
          "out-of-distribution answers. A CSV (inference_id, empty label, reason, scores) to fill in and drop into "
          "DERMAOPS_LABELS_URI as it is; requests already labelled are left out. No image or patient data here.")
def labelling_queue(context: dg.AssetExecutionContext, config: LabellingQueueConfig,
                    inference_log: InferenceLogHandle, live_endpoint: EndpointHandle, store: ObjectStore,
                    settings: Settings) -> dg.MaterializeResult:
    from ml_code.monitoring.baseline import load_packaged_model

    cursor = store.get_json_or(inference_log.cursor_uri, {"parts": 0})
    since = datetime.now(UTC) - timedelta(hours=config.window_hours)
    rows, _ = load_inference_log(store, cursor, max_rows=config.max_requests, since=since)
    labelled = set(read_labels(store, settings.labels_uri)["inference_id"])
    committee = None
    if not rows.empty:
        with tempfile.TemporaryDirectory(prefix="dermaops-queue-") as scratch:
            api, model = load_packaged_model(local_copy(store, live_endpoint.model_uri, Path(scratch)),
                                             Path(scratch) / "model")
            # decoded from the capture lines; a request whose capture expired cannot be promoted once
            # labelled (labelled_captures needs the image), so it leaves the queue
            rows, views = capture_views(store, rows, int(model.image_size))
            committee = committee_probabilities(api, model, views, rows)
        scores = review_scores(rows, list(model.classes), committee)
    else:
        scores = pd.DataFrame()
    queue = review_queue(rows, scores, labelled, config.size)
    queue_uri = publish_queue(store, queue)
    shown = queue.drop(columns=["label", "patient_id"]).head(QUEUE_ROWS_IN_UI)
    return dg.MaterializeResult(metadata={
        "queued": len(queue), "requests_considered": len(rows), "already_labelled": len(labelled),
        "disagreement_scored": committee is not None,
        "queue_csv": dg.MetadataValue.path(queue_uri),
        "queue": table_markdown(shown.round(4).to_dict("records")),
    })
