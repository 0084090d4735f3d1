"""The labelling queue and label promotion on real capture files (written by the endpoint's own
capture_record), a real model package and a real local store: the queue ranks the request the
model was unsure of first, its CSV filled in is what the labels location reads, and each label
becomes a training row exactly once, without the patient's identifier."""

from __future__ import annotations

import base64
import io
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermaops_assets.labelling import labelled_captures, labelling_queue
from dermaops_assets.monitoring import inference_log
from dermaops_resources.handles import EndpointHandle
from dermaops_resources.metrics import LocalMetricsStore
from dermaops_resources.notifier import LocalNotifier
from dermaops_resources.object_store import LocalObjectStore
from dermaops_resources.settings import Settings
from dermaops_services.ingestion import ingest_dataset, pseudonym_salt
from dermaops_services.labelling import (
    PROMOTED_PREFIX,
    capture_image_id,
    labelled_capture_batches,
)
from ml_code.data.ingest import patient_ref
from ml_code.monitoring.labelling import review_scores
from ml_code.serving.serve import capture_record
from tests.assets.test_monitoring import CLASSES, _package
from tests.support.dagster_io import HandleIO
from tests.support.monitoring_synth import lesion_images

CONFIDENT = {c: (0.94 if c == "nv" else 0.01) for c in CLASSES}
UNSURE = {c: round(1 / len(CLASSES), 6) for c in CLASSES}


def _answers(store: LocalObjectStore, answers: list[dict[str, float]]) -> list[str]:
    """One captured JSON request (image + clinical context) per answer; returns the inference ids."""
    lines, ids = [], []
    for i, (img, probs) in enumerate(zip(lesion_images(len(answers), 48, seed=5), answers)):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        body = json.dumps({"image": base64.b64encode(buf.getvalue()).decode(), "age": 40 + i, "sex": "female",
                           "anatom_site": "back"}).encode()
        ids.append(f"req-{uuid.uuid4().hex}")
        text = json.dumps({"predicted_class": max(probs, key=probs.get), "probabilities": probs})
        lines.append(json.dumps(capture_record(body=body, content_type="application/json", response_text=text,
                                               event_id=str(uuid.uuid4()), inference_id=ids[-1],
                                               inference_time=datetime.now(UTC).timestamp(),
                                               package_version=1)))
    store.put_bytes("logs", "datacapture/ep/AllTraffic/2026/01/01/00/a.jsonl", ("\n".join(lines) + "\n").encode())
    return ids


@pytest.fixture()
def world(tmp_path: Path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DERMAOPS_HOME", str(home))
    monkeypatch.setenv("DERMAOPS_LABELS_URI", str(tmp_path / "labels"))
    monkeypatch.delenv("DERMAOPS_PSEUDONYM_SALT", raising=False)
    store = LocalObjectStore(root=str(tmp_path / "store"))
    model_uri = store.put_file("models", "jobs/train/t1/model.tar.gz", _package(tmp_path))
    endpoint = EndpointHandle(name="ep", url="http://127.0.0.1:9", package_version=1, model_uri=model_uri,
                              capture_uri=store.uri("logs", "datacapture"))
    store.put_json("models", "handles/live_endpoint.json", {
        "type": f"{EndpointHandle.__module__}:EndpointHandle", "handle": endpoint.model_dump()})
    settings = Settings.from_env()
    resources = {"store": store, "io_manager": HandleIO(store), "settings": settings,
                 "metrics": LocalMetricsStore(db_path=str(tmp_path / "metrics.db")),
                 "notifier": LocalNotifier(alerts_path=str(tmp_path / "alerts.jsonl"))}
    return store, resources, settings, tmp_path


def _materialize(resources, *names: str) -> dict[str, dict]:
    result = dg.materialize([dg.AssetSpec("live_endpoint"), inference_log, labelling_queue, labelled_captures],
                            resources=resources, selection=list(names))
    assert result.success
    return {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


def test_queue_ranks_the_unsure_request_first_and_its_filled_csv_becomes_training_data(world) -> None:
    store, resources, settings, tmp = world
    ids = _answers(store, [CONFIDENT, CONFIDENT, UNSURE, CONFIDENT])
    unsure = ids[2]
    queue_meta = _materialize(resources, "inference_log", "labelling_queue")["labelling_queue"]
    assert queue_meta["queued"] == 4 and queue_meta["disagreement_scored"] is False  # no descriptor model
    queue = pd.read_csv(io.BytesIO(store.get_bytes(queue_meta["queue_csv"])), dtype=str, keep_default_na=False)
    assert list(queue.columns[:3]) == ["inference_id", "label", "patient_id"]
    assert queue["inference_id"].iloc[0] == unsure and queue["reason"].iloc[0] == "uncertain"
    assert float(queue["uncertainty"].iloc[0]) == pytest.approx(1.0, abs=1e-3)
    assert (queue["uncertainty"].iloc[1:].astype(float) < 0.5).all()
    assert "back" not in queue_meta["queue"] and "female" not in queue_meta["queue"]  # no clinical context shown

    # the labeller fills two rows (one with the patient's id), leaves the rest blank, drops the file as it is
    queue.loc[0, ["label", "patient_id"]] = ["Melanoma", "MRN-0042"]
    queue.loc[1, "label"] = "bcc"
    labels = tmp / "labels"
    labels.mkdir()
    queue.to_csv(labels / "reviewed-1.csv", index=False)
    pd.DataFrame({"inference_id": [ids[3], "req-never-captured"], "label": ["banana", "nv"]}).to_csv(
        labels / "reviewed-2.csv", index=False)

    promoted = _materialize(resources, "labelled_captures")["labelled_captures"]
    assert (promoted["promoted"], promoted["unknown_labels"], promoted["no_capture"],
            promoted["unlabelled_rows"]) == (2, 1, 1, 2)
    # the batch is a dataset ingestion reads: the two captures, their context, the confirmed class
    batches = labelled_capture_batches(store)
    assert len(batches) == 1
    salt = pseudonym_salt(settings.home_path)
    handle, _ = ingest_dataset(batches, store, salt)
    manifest = pd.read_csv(io.BytesIO(store.get_bytes(handle.manifest_uri)), dtype=str).set_index("image_id")
    first, second = capture_image_id(unsure), capture_image_id(queue["inference_id"].iloc[1])
    assert set(manifest.index) == {first, second}
    assert manifest.loc[first, "dx"] == "mel" and manifest.loc[second, "dx"] == "bcc"
    assert manifest.loc[first, "patient_ref"] == patient_ref("MRN-0042", salt)
    assert manifest.loc[first, "localization"] == "back" and manifest.loc[first, "sex"] == "female"
    written = b"".join(p.read_bytes() for p in (Path(store.root) / "raw" / PROMOTED_PREFIX).rglob("*") if p.is_file())
    assert b"MRN-0042" not in written and "MRN-0042" not in json.dumps(promoted, default=str)

    # promoted once: a re-run writes nothing; the queue now leaves the labelled requests out
    again = _materialize(resources, "labelled_captures", "labelling_queue")
    assert again["labelled_captures"]["promoted"] == 0 and again["labelled_captures"]["already_promoted"] == 2
    assert labelled_capture_batches(store) == batches
    requeued = pd.read_csv(io.BytesIO(store.get_bytes(again["labelling_queue"]["queue_csv"])), dtype=str)
    assert set(requeued["inference_id"]) == set(ids) - {unsure, queue["inference_id"].iloc[1]}


def test_out_of_distribution_answers_are_scored_when_the_log_has_them() -> None:
    rows = pd.DataFrame({"probabilities": [json.dumps(CONFIDENT)] * 3, "in_distribution": [True, False, None],
                         "ood_score": [1.2, 9.5, np.nan]})
    scores = review_scores(rows, CLASSES)
    assert scores["ood"].tolist() == [0.0, 1.0, 0.0]
    assert scores["ood_score"].iloc[1] == 9.5 and scores["disagreement"].isna().all()
    without = review_scores(rows.drop(columns=["in_distribution", "ood_score"]), CLASSES)
    assert (without["ood"] == 0.0).all() and without["ood_score"].isna().all()
