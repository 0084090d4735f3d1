"""The human-in-the-loop retraining cycle, executed: a model is trained and deployed, real HTTP
traffic is captured, monitoring_job reports on it and queues the requests worth a label, a
labeller fills in the queue CSV and drops it into the labels location, and retrain_job learns
from those labels: a new data version holding the labelled captures, a new package compared with
the champion on one test set, deployed by deploy_job after approval, answering over HTTP. A
retrain with nothing new since then ends without training."""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from PIL import Image

from dermaops_assets.jobs import NOTHING_NEW, RETRAIN_OUTCOME_TAG, RETRAIN_REASON_TAG
from dermaops_assets.sensors import new_labels_sensor
from dermaops_resources.settings import Settings
from dermaops_services.labelling import capture_image_id
from ml_code.tools.demo_data import generate_demo_dataset

pytestmark = pytest.mark.slow

TINY = {
    "processed_splits": {"config": {"image_size": 24}},
    "trained_model": {"config": {"epochs": 2, "batch_size": 32, "arch": "dermanet", "descriptor_trees": 20,
                                 "tta_views": 1}},
    "evaluation_report": {"config": {"bootstrap_samples": 50}},
}


def _gates(auto_approve: bool) -> dict:
    return {"registered_model_package": {"config": {"min_balanced_accuracy": 0.0, "min_melanoma_sensitivity": 0.0,
                                                    "max_regression": 1.0, "max_class_recall_drop_points": 100.0,
                                                    "auto_approve": auto_approve}}}


class Loop:
    def __init__(self, tmp: Path):
        from dermaops_assets import definitions
        from dermaops_resources.factory import build_resources

        self.settings = Settings.from_env()
        self.defs = dg.Definitions(assets=definitions.stage_assets, asset_checks=definitions.all_checks,
                                   jobs=definitions.all_jobs, resources=build_resources(self.settings))
        self.instance = dg.DagsterInstance.ephemeral()
        self.tmp = tmp

    def run(self, job: str, ops: dict | None = None, tags: dict | None = None) -> dg.ExecuteInProcessResult:
        result = self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, run_config={"ops": ops or {}}, tags=tags)
        assert result.success, job
        return result

    def metadata(self, asset: str) -> dict:
        event = self.instance.get_latest_materialization_event(dg.AssetKey(asset))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    @property
    def resources(self) -> dict:
        return self.defs.resources

    def stop_endpoint(self) -> None:
        self.resources["endpoint"].stop()


def _invoke(url: str, path: Path, context: dict) -> tuple[dict, str, str]:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="JPEG", quality=92)
    body = json.dumps({"image": base64.b64encode(buf.getvalue()).decode(), **context}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read()), resp.headers["X-Inference-Id"], resp.headers.get("X-Model-Version", "")


def _wait_for_captures(loop: Loop, inference_ids: set[str], timeout: float = 20.0) -> None:
    """The endpoint publishes its capture buffer about once a second."""
    root = Path(loop.resources["store"].root) / "logs" / "datacapture"
    deadline, seen = time.time() + timeout, set()
    while time.time() < deadline and not inference_ids <= seen:
        time.sleep(0.5)
        seen = {json.loads(line)["eventMetadata"]["inferenceId"] for f in root.rglob("*.jsonl")
                for line in f.read_text().splitlines()}
    assert inference_ids <= seen, "captures not written"


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    patch = pytest.MonkeyPatch()
    patch.setenv("DERMAOPS_HOME", str(tmp / "home"))
    patch.setenv("DERMAOPS_BACKEND", "local")
    patch.setenv("DERMAOPS_RETRAIN_COOLDOWN_HOURS", "0")
    patch.setenv("DERMAOPS_RETRAIN_MIN_NEW_LABELS", "5")
    for name in ("DERMAOPS_RAW_URI", "DERMAOPS_LANDING_URI", "DERMAOPS_LABELS_URI", "DERMAOPS_TRAIN_RECIPE",
                 "DERMAOPS_AUTO_APPROVE", "DERMAOPS_ENDPOINT_TOKEN"):
        patch.delenv(name, raising=False)
    generate_demo_dataset(tmp / "home" / "demo-data", n_lesions_per_class=5, image_size=(64, 48), seed=0)
    loop = Loop(tmp)
    try:
        yield loop
    finally:
        loop.stop_endpoint()
        patch.undo()


def test_labels_for_captured_requests_retrain_and_redeploy(loop: Loop) -> None:
    # 1. the champion: trained, approved, deployed
    loop.run("retrain_job", {**TINY, **_gates(auto_approve=True)}, {RETRAIN_REASON_TAG: "manual"})
    first_data = loop.metadata("raw_images")["manifest_hash"]
    loop.run("deploy_job")
    url = loop.resources["endpoint"].status()["url"].rstrip("/")

    # 2. real traffic with clinical context, from lesions the model never saw
    held_out = generate_demo_dataset(loop.tmp / "held-out", n_lesions_per_class=2, image_size=(64, 48), seed=7)
    truth = pd.read_csv(held_out / "HAM10000_metadata.csv").drop_duplicates("lesion_id").head(10)
    sent = {}
    for row in truth.itertuples():
        answer, inference_id, version = _invoke(url, held_out / "images" / f"{row.image_id}.jpg",
                                                {"age": 55, "sex": row.sex, "anatom_site": "back"})
        assert version == "1" and answer["predicted_class"] in answer["probabilities"]
        sent[inference_id] = row.dx
    _wait_for_captures(loop, set(sent))

    # 3. monitoring over the captured traffic, and the queue of requests worth a label
    loop.run("monitoring_job", {"drift_report": {"config": {"mmd_permutations": 99}}})
    assert loop.metadata("inference_log")["total"] >= len(sent)
    assert loop.metadata("drift_report")["n_requests"] >= len(sent)
    assert loop.metadata("model_quality_report")["status"] == "insufficient_data"  # no labels yet
    queue_meta = loop.metadata("labelling_queue")
    assert queue_meta["queued"] == len(sent) and queue_meta["disagreement_scored"] is True

    # 4. a dermatologist fills in the queue and drops it into the labels location, one row left blank
    store = loop.resources["store"]
    queue = pd.read_csv(io.BytesIO(store.get_bytes(queue_meta["queue_csv"])), dtype=str, keep_default_na=False)
    assert set(queue["inference_id"]) == set(sent) and (queue["label"] == "").all()
    skipped = queue["inference_id"].iloc[-1]
    queue["label"] = [sent[i] if i != skipped else "" for i in queue["inference_id"]]
    labels = Path(loop.settings.labels_uri)
    labels.mkdir(parents=True, exist_ok=True)
    queue.to_csv(labels / "reviewed.csv", index=False)

    # 5. the new labels start a retrain, which learns from them: new data version, the captures in
    #    raw_images, a new package
    sensor_resources = {"store": loop.resources["store"], "settings": loop.settings}
    sensor_context = dg.build_sensor_context(instance=loop.instance, resources=sensor_resources)
    asked = new_labels_sensor(sensor_context)
    request = asked.run_requests[0]
    assert request.tags[RETRAIN_REASON_TAG] == "new-labels" and request.tags["dermaops/new_labels"] == str(len(sent) - 1)
    retrain = loop.run("retrain_job", {**TINY, **_gates(auto_approve=False)}, request.tags)
    promoted = loop.metadata("labelled_captures")
    assert promoted["promoted"] == len(sent) - 1 and promoted["unknown_labels"] == 0
    raw = loop.metadata("raw_images")
    assert raw["manifest_hash"] != first_data and raw["labelled_capture_batches"] == 1
    manifest = pd.read_csv(io.BytesIO(store.get_bytes(raw["manifest_uri"])), dtype=str)
    promoted_ids = {capture_image_id(i): dx for i, dx in sent.items() if i != skipped}
    rows = manifest[manifest["image_id"].isin(promoted_ids)]
    assert len(rows) == len(promoted_ids), raw.get("quarantined_batch_reasons")
    assert dict(zip(rows["image_id"], rows["dx"])) == promoted_ids and set(rows["age"].astype(float)) == {55.0}
    assert rows["lesion_id"].nunique() == len(rows)
    registered = loop.metadata("registered_model_package")
    assert registered["registered"] is True and registered["version"] == 2
    assert registered["status"] == "PendingManualApproval"
    # the gate compared challenger and champion on the same test images
    assert registered["champion_version"] == 1 and registered["champion_test_images"] > 0
    assert 0.0 <= registered["champion_balanced_accuracy_same_images"] <= 1.0
    assert not retrain.dagster_run.tags.get(RETRAIN_OUTCOME_TAG)

    # 6. approved, deployed: the endpoint answers with the new version
    loop.resources["registry"].set_status(loop.settings.model_package_group, 2, "Approved")
    loop.run("deploy_job")
    url = loop.resources["endpoint"].status()["url"].rstrip("/")
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as resp:
        assert json.loads(resp.read())["package_version"] == 2
    image = next(iter((held_out / "images").glob("*.jpg")))
    assert _invoke(url, image, {})[2] == "2"

    # 7. no new label since: the sensor waits; a retrain anyway finds nothing new and does not train
    assert not new_labels_sensor(dg.build_sensor_context(instance=loop.instance, resources=sensor_resources,
                                                         cursor=asked.cursor)).run_requests
    again = loop.run("retrain_job", {**TINY, **_gates(auto_approve=False)}, {RETRAIN_REASON_TAG: "drift"})
    assert loop.metadata("labelled_captures")["promoted"] == 0
    assert loop.metadata("labelled_captures")["already_promoted"] == len(sent) - 1
    assert again.dagster_run.tags[RETRAIN_OUTCOME_TAG] == NOTHING_NEW
    assert not again.get_asset_materialization_events() or "trained_model" not in {
        e.asset_key.to_user_string() for e in again.get_asset_materialization_events()}
