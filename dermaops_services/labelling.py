"""Human in the loop: reviewed captures become training data, and the captures most worth a
review are queued for a dermatologist.

Called by ``dermaops_assets.labelling``. Two halves:

- **Promotion** (:func:`promote_labelled_captures`): a ground-truth label (``inference_id,label``
  CSVs in ``DERMAOPS_LABELS_URI``, read by ``dermaops_services.monitoring.read_labels``) for a
  request the endpoint captured turns the captured image, the clinical context the request
  carried (age, sex, body site) and the confirmed diagnosis into one row of a dataset batch in
  the HAM10000 layout of a landed batch, under ``raw/labelled-captures/<batch>/``. ``raw_images``
  ingests every such batch next to the dataset and the landed batches, so the manifest, the
  splits and the data version change, and the retrain's 'Check Data' step sees new data.
- **Queue** (:func:`review_queue`): the captured requests the model was least sure of, where its
  network and descriptor model disagree, or that look out of distribution, ranked, as a CSV a
  labeller fills in and drops into the labels location as it is.

Store layout (``raw`` bucket, written only here)::

    labelled-captures/<batch>/images/<image_id>.jpg|png    the captured image, as sent
    labelled-captures/<batch>/promotion.json                 [{inference_id, image_id, label}]: the record
    labelled-captures/<batch>/HAM10000_metadata.csv          published last: the batch exists once this does

``<batch>`` is a hash of the inference ids it promotes, and each image and lesion id a hash of
its inference id, so a run that died half way and is re-run rewrites the same keys, and an
inference id promoted once (its id is in a published ``promotion.json``) is never promoted again.
Nothing here logs or returns a patient identifier, an age, a site or image bytes: only counts,
hashes and inference ids (random ids the endpoint made).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd
from PIL import Image

from dermaops_resources.object_store import ObjectStore, join_uri
from dermaops_services.monitoring import read_labels
from dermaops_services.raw_source import landed_batches
from ml_code.data.ingest import HAM10000_COLUMNS, patient_ref
from ml_code.monitoring.capture import CapturedRequest, decode_request

PROMOTED_PREFIX = "labelled-captures"
"""Key prefix (``raw`` bucket) of the labelled-capture batches."""
CAPTURE_PREFIX = "datacapture"
"""Key prefix (``logs`` bucket) of every endpoint's data capture (local and SageMaker)."""
RECORD_NAME = "promotion.json"
METADATA_NAME = "HAM10000_metadata.csv"
BATCH_COLUMNS: tuple[str, ...] = (*HAM10000_COLUMNS, "patient_ref")
"""The batch metadata: HAM10000's columns plus the optional, already pseudonymised ``patient_ref``
(``ml_code.data.ingest`` keeps a 16-hex reference as it is)."""


def capture_image_id(inference_id: str) -> str:
    """The image id of a promoted capture: ``cap-`` + 20 hex of sha256 of its inference id.

    Deterministic (a re-run writes the same key; a duplicate never appears) and a safe file name
    (``ml_code.data.ingest.IMAGE_ID_PATTERN``) whatever the inference id's characters."""
    return "cap-" + hashlib.sha256(f"labelled-capture\x00{inference_id}".encode()).hexdigest()[:20]


def capture_lesion_id(inference_id: str) -> str:
    """The lesion id of a promoted capture: its own lesion (nothing says two requests showed the
    same lesion), so lesion-grouped splits treat it like any other single-image lesion; pictures
    that are near-duplicates of another lesion's are still kept in one split by the splitter."""
    return "caplesion-" + capture_image_id(inference_id)[4:]


@dataclass
class PromotionResult:
    """What one promotion run did; counts only (no identifiers but the batch hash)."""

    promoted: int = 0
    already_promoted: int = 0
    corrections_not_applied: int = 0
    """labels for already promoted captures that name another class: a promoted row is never
    replaced (ingestion would quarantine the clash); correct it in the batch by hand."""
    no_capture: int = 0
    """labels whose captured request was not found (expired, another deployment's, not yet
    flushed): retried on the next run."""
    undecodable: int = 0
    unknown_labels: int = 0
    unlabelled: int = 0
    batch: str = ""
    batch_uri: str = ""
    class_counts: dict[str, int] = field(default_factory=dict)


def labelled_capture_batches(store: ObjectStore) -> list[str]:
    """URIs of the published labelled-capture batches (those with a metadata CSV), in name
    order: what ``raw_images`` ingests after the dataset and the landed batches."""
    return landed_batches(store.uri("raw", PROMOTED_PREFIX))


def promoted_labels(store: ObjectStore) -> dict[str, str]:
    """inference id -> class code of every capture already promoted (published batches only)."""
    out: dict[str, str] = {}
    for batch_uri in labelled_capture_batches(store):
        for row in store.get_json_or(join_uri(batch_uri, RECORD_NAME), []):
            out[str(row["inference_id"])] = str(row["label"])
    return out


def unpromoted_labels(store: ObjectStore, labels_uri: str) -> set[str]:
    """Inference ids with a known label in the labels location that are not promoted yet
    (including any whose capture is gone: the caller must not wait for those forever)."""
    labels = read_labels(store, labels_uri)
    return set(labels["inference_id"].astype(str)) - set(promoted_labels(store))


def find_captures(store: ObjectStore, capture_root: str, wanted: set[str]) -> dict[str, tuple[dict, dict]]:
    """inference id -> (endpointInput, endpointOutput) of the captured requests in ``wanted``.

    Reads the capture files under ``capture_root`` (every endpoint and variant), newest key
    first, since labels mostly arrive for recent traffic, and stops once every id is found. A
    line that is not a capture record is skipped (capture files are written by others)."""
    found: dict[str, tuple[dict, dict]] = {}
    if not wanted:
        return found
    files = [o for o in store.list(capture_root) if o.key.endswith(".jsonl")]
    for obj in reversed(files):
        for line in store.get_bytes(obj.uri).splitlines():
            try:
                record = json.loads(line)
                meta, data = record["eventMetadata"], record["captureData"]
                inference_id = str(meta.get("inferenceId") or meta.get("eventId") or "")
                pair = (data["endpointInput"], data["endpointOutput"])
            except (ValueError, KeyError, TypeError):
                continue
            if inference_id in wanted and inference_id not in found:
                found[inference_id] = pair
        if len(found) == len(wanted):
            break
    return found


def _image_suffix(image: bytes) -> str:
    with Image.open(io.BytesIO(image)) as img:
        return ".png" if img.format == "PNG" else ".jpg"


def _metadata_row(inference_id: str, label: str, request: CapturedRequest, patient_id: str, salt: str) -> dict:
    age = request.age if isinstance(request.age, (int, float)) and not isinstance(request.age, bool) else ""
    return {"lesion_id": capture_lesion_id(inference_id), "image_id": capture_image_id(inference_id),
            "dx": label, "dx_type": "", "age": age, "sex": request.sex or "", "localization": request.site or "",
            "patient_ref": patient_ref(patient_id, salt) if patient_id else ""}


def promote_labelled_captures(store: ObjectStore, labels_uri: str, salt: str,
                              capture_root: str | None = None) -> PromotionResult:
    """Turn every new label for a captured request into a training row; see the module docstring.

    ``labels_uri``: the labels landing location (``DERMAOPS_LABELS_URI``); an optional
    ``patient_id`` column there becomes a salted ``patient_ref`` (``salt``: the deployment's
    pseudonym salt) before anything is written, so the raw id never reaches the store.
    ``capture_root``: where capture files are (default the ``logs`` bucket's ``datacapture/``).
    Unknown labels are counted and left out; a label without a captured request is left for a
    later run. Returns what was done; writes nothing when there is nothing new."""
    result = PromotionResult()
    labels = read_labels(store, labels_uri, extra_columns=("patient_id",))
    result.unknown_labels = int(sum(labels.attrs.get("unknown_labels", {}).values()))
    result.unlabelled = int(labels.attrs.get("unlabelled", 0))
    done = promoted_labels(store)
    fresh = []
    for inference_id, label, patient_id in labels[["inference_id", "label", "patient_id"]].itertuples(index=False):
        inference_id = str(inference_id).strip()
        if inference_id in done:
            result.already_promoted += 1
            result.corrections_not_applied += int(done[inference_id] != label)
        elif inference_id:
            fresh.append((inference_id, label, "" if pd.isna(patient_id) else str(patient_id).strip()))
    captures = find_captures(store, capture_root or store.uri("logs", CAPTURE_PREFIX), {f[0] for f in fresh})
    rows, records, images = [], [], []
    for inference_id, label, patient_id in fresh:
        if inference_id not in captures:
            result.no_capture += 1
            continue
        request_in, _ = captures[inference_id]
        try:
            request = decode_request(request_in.get("data", ""), str(request_in.get("encoding", "BASE64")))
        except ValueError:
            result.undecodable += 1
            continue
        row = _metadata_row(inference_id, label, request, patient_id, salt)
        rows.append(row)
        records.append({"inference_id": inference_id, "image_id": row["image_id"], "label": label})
        images.append((row["image_id"] + _image_suffix(request.image), request.image))
    if not rows:
        return result
    batch = "batch-" + hashlib.sha256("\n".join(sorted(r["inference_id"] for r in records)).encode()).hexdigest()[:16]
    prefix = f"{PROMOTED_PREFIX}/{batch}"
    # Images and the record first, the metadata CSV last: the batch exists (for ingestion and
    # for the promoted record) only once it is whole; a re-run after a crash rewrites these keys.
    for name, data in images:
        store.put_bytes("raw", f"{prefix}/images/{name}", data)
    store.put_json("raw", f"{prefix}/{RECORD_NAME}", records)
    frame = pd.DataFrame(rows, columns=list(BATCH_COLUMNS))
    store.put_bytes("raw", f"{prefix}/{METADATA_NAME}", frame.to_csv(index=False).encode())
    result.promoted, result.batch, result.batch_uri = len(rows), batch, store.uri("raw", prefix)
    result.class_counts = {str(k): int(v) for k, v in frame["dx"].value_counts().sort_index().items()}
    return result


# -- the review queue -----------------------------------------------------------------------

QUEUE_COLUMNS: tuple[str, ...] = (
    "inference_id", "label", "patient_id", "reason", "priority", "uncertainty", "disagreement", "ood_score",
    "predicted_class", "confidence", "network_class", "descriptor_class", "model_version", "inference_time",
)
"""The queue CSV: ``inference_id`` and an empty ``label`` first (what the labels location reads),
an optional empty ``patient_id`` (pseudonymised on promotion; leave empty when unknown), then why
the case is there. Nothing in it identifies a patient until the reviewer adds one."""

REASON_THRESHOLDS = {"uncertain": 0.5, "models disagree": 0.5, "out of distribution": 0.5}
"""A component at or above its threshold is named in ``reason``; the rank uses the scores."""


def review_queue(rows: pd.DataFrame, scores: pd.DataFrame, labelled: Iterable[str], size: int) -> pd.DataFrame:
    """The ``size`` captured requests most worth a dermatologist's review, best first.

    ``rows``: inference-log rows (``inference_id``, ``inference_time``, ``model_version``,
    ``predicted_class``), aligned with ``scores`` (``ml_code.monitoring.labelling.review_scores``:
    ``uncertainty``, ``disagreement``, ``ood``, ``ood_score``, ``confidence``, ``network_class``,
    ``descriptor_class``); ``labelled``: inference ids that already have a label (left out).
    Priority = the largest of the three components, each in [0, 1] (uncertainty sampling and
    query-by-committee, Settles 2009, "Active Learning Literature Survey", sections 3.1-3.2);
    ties go to the more uncertain. Returns :data:`QUEUE_COLUMNS`."""
    if rows.empty:  # nothing captured in the window (e.g. the first run of a fresh deployment)
        return pd.DataFrame(columns=list(QUEUE_COLUMNS))
    # the log's own ood_score / in_distribution columns are what ``scores`` was computed from
    rows = rows.drop(columns=[c for c in scores.columns if c in rows.columns])
    frame = pd.concat([rows.reset_index(drop=True), scores.reset_index(drop=True)], axis=1)
    frame = frame[~frame["inference_id"].isin(set(labelled))]
    frame = frame.drop_duplicates("inference_id", keep="last")
    components = frame[["uncertainty", "disagreement", "ood"]].fillna(0.0)
    frame = frame.assign(priority=components.max(axis=1).round(4))
    names = {"uncertainty": "uncertain", "disagreement": "models disagree", "ood": "out of distribution"}
    frame["reason"] = [
        "; ".join(names[c] for c in names if row[c] >= REASON_THRESHOLDS[names[c]]) or "least confident of the rest"
        for _, row in components.iterrows()]
    frame = frame.sort_values(["priority", "uncertainty"], ascending=False, kind="stable").head(size)
    frame = frame.assign(label="", patient_id="",
                         inference_time=pd.to_datetime(frame["inference_time"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return frame.reindex(columns=list(QUEUE_COLUMNS)).reset_index(drop=True)


def publish_queue(store: ObjectStore, queue: pd.DataFrame) -> str:
    """Write the queue CSV (one object, published atomically by the store) under
    ``logs/labelling/queue/<UTC stamp>/labelling_queue.csv``; returns its URI."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return store.put_bytes("logs", f"labelling/queue/{stamp}/labelling_queue.csv",
                           queue.to_csv(index=False, float_format="%.4f").encode())
