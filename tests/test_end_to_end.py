"""The whole graph on the local default, driven the way a user drives it: the `dermaops` and
`dagster asset materialize` commands, then HTTP against the live endpoint."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dermaops_resources.settings import Settings

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

TINY_RUN_CONFIG = {
    "ops": {
        "processed_splits": {"config": {"image_size": 32}},
        "trained_model": {"config": {"epochs": 8, "batch_size": 32, "arch": "dermanet"}},
        "evaluation_report": {"config": {"bootstrap_samples": 100}},
        "registered_model_package": {"config": {"min_balanced_accuracy": 0.0, "min_melanoma_sensitivity": 0.0,
                                                   "auto_approve": True}},
    }
}


def _run(cmd: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def _jpeg(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


class Deployment:
    """The demo graph materialized once for this module, with its endpoint live."""

    def __init__(self, tmp: Path):
        self.home = tmp / "home"
        self.dagster_home = tmp / "dagster_home"
        self.dagster_home.mkdir()
        (self.dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
        self.env = {**os.environ, "DERMAOPS_HOME": str(self.home), "DAGSTER_HOME": str(self.dagster_home),
                    "DERMAOPS_BACKEND": "local", "PYTHONUNBUFFERED": "1"}
        self.env.pop("DERMAOPS_RAW_URI", None)
        self.tmp = tmp
        self.url = ""

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return _run([str(BIN / args[0]), *args[1:]], self.env)

    def materialize(self, selection: str, config: dict | None = None) -> None:
        cmd = ["dagster", "asset", "materialize", "-m", "dermaops_assets", "--select", selection]
        if config:
            path = self.tmp / f"config-{time.time_ns()}.yaml"
            path.write_text(yaml.safe_dump(config))
            cmd += ["-c", str(path)]
        self.cli(*cmd)

    def whole_graph_run(self) -> tuple:
        """``(instance, run, events)`` of the ``"*"`` run (the first successful one): its events
        that carry a Dagster event, in order."""
        import dagster as dg

        instance = dg.DagsterInstance.from_config(str(self.dagster_home))
        run = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))[-1]
        return instance, run, [e for e in instance.all_logs(run.run_id) if e.dagster_event is not None]

    def latest_metadata(self, asset: str) -> dict:
        import dagster as dg

        instance = dg.DagsterInstance.from_config(str(self.dagster_home))
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Deployment:
    d = Deployment(tmp_path_factory.mktemp("e2e"))
    d.cli("dermaops", "demo-data", "--lesions-per-class", "12")
    try:
        d.materialize("*", TINY_RUN_CONFIG)
        d.url = json.loads(d.cli("dermaops", "endpoint", "status").stdout)["url"].rstrip("/")
        yield d
    finally:
        subprocess.run([str(BIN / "dermaops"), "endpoint", "stop"], cwd=REPO, env=d.env, timeout=60)
    if d.url:  # the endpoint is gone after stop
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{d.url}/ping", timeout=3)


def test_whole_graph_to_live_endpoint(deployed: Deployment) -> None:
    home, url = deployed.home, deployed.url
    status = json.loads(deployed.cli("dermaops", "endpoint", "status").stdout)
    assert status["package_version"] == 1
    assert urllib.request.urlopen(f"{url}/ping", timeout=10).status == 200

    image = sorted((home / "demo-data" / "images").glob("*.jpg"))[0]
    req = urllib.request.Request(f"{url}/invocations", data=_jpeg(image), method="POST",
                                 headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
        inference_id = resp.headers.get("X-Inference-Id")
    assert abs(sum(answer["probabilities"].values()) - 1.0) < 1e-4
    assert answer["predicted_class"] in answer["probabilities"]

    capture_root = home / "store" / "logs" / "datacapture"
    deadline, records = time.time() + 15, []
    while time.time() < deadline and not any(r["eventMetadata"]["inferenceId"] == inference_id for r in records):
        records = [json.loads(line) for f in capture_root.rglob("*.jsonl") for line in f.read_text().splitlines()]
        time.sleep(0.5)
    assert any(r["eventMetadata"]["inferenceId"] == inference_id for r in records), records[:2]
    assert records[0]["captureData"]["endpointInput"]["encoding"] == "BASE64"

    registry = json.loads(deployed.cli("dermaops", "registry", "list", "--json").stdout)
    assert registry[0]["status"] == "Approved"
    assert registry[0]["lineage"]["dagster_run_id"]
    metadata = deployed.latest_metadata("evaluation_report")
    for key in ("balanced_accuracy", "accuracy", "macro_auc"):
        assert isinstance(metadata[key], float) and 0.0 <= metadata[key] <= 1.0
    raw = deployed.latest_metadata("raw_images")
    assert raw["num_images"] > 0 and raw["num_quarantined"] == 0
    # the synthetic set trained its own recipe, as real data trains the real-data one (the run
    # config set arch, epochs and batch; the recipe gave the rest)
    trained = deployed.latest_metadata("trained_model")
    assert trained["recipe"] == "synthetic_demo" and trained["hyperparameters"]["small_input"] is False
    # the baseline's expected prediction mix is from the evaluation's scoring, not a second one
    assert deployed.latest_metadata("model_baseline")["prediction_distribution_from"].startswith("evaluation")


def test_each_step_ran_in_its_own_process_with_its_own_logs(deployed: Deployment) -> None:
    """The default executor (DERMAOPS_STEP_PROCESSES=forkserver) keeps what Dagster's spawn executor
    gives a user: every step in a process of its own (not the run's), started by the executor, and
    each step's stdout/stderr captured where the UI shows it."""
    from dagster._core.events import DagsterEventType as T

    instance, run, events = deployed.whole_graph_run()
    run_pid = next(e.dagster_event.pid for e in events if e.dagster_event.event_type == T.RUN_START)
    started = {e.dagster_event.step_key: e.dagster_event.pid for e in events
               if e.dagster_event.event_type == T.STEP_START}
    launched = {e.dagster_event.step_key for e in events if e.dagster_event.event_type == T.STEP_WORKER_STARTING}
    assert {"raw_images", "processed_splits", "trained_model", "live_endpoint"} <= set(started)
    assert set(started) <= launched, "a step ran without the executor starting a process for it"
    assert run_pid not in started.values() and len(set(started.values())) == len(started)
    captured = [e.dagster_event.logs_captured_data for e in events if e.dagster_event.event_type == T.LOGS_CAPTURED]
    raw_log = next(c for c in captured if "raw_images" in c.step_keys)
    data = instance.compute_log_manager.get_log_data([run.run_id, "compute_logs", raw_log.file_key])
    text = (data.stdout or b"").decode() + (data.stderr or b"").decode()
    assert "raw_images" in text, text[:2000]


def test_steps_that_use_every_core_ran_one_per_core_and_light_ones_beside_them(deployed: Deployment) -> None:
    """The executor (dermaops_assets.executor): steps tagged as using every core (jobs, image
    pools, endpoint workers) never outnumbered the cores, while the five light reports that wait on
    ``inference_log`` were started together, more of them than cores (all five on two cores; with
    Dagster's default of one step per core they went in waves of two)."""
    from dagster._core.events import DagsterEventType as T

    from dermaops_assets import defs
    from dermaops_assets.executor import CORES_TAG_KEY
    from ml_code.contract import available_cpus

    heavy = {ad.node_def.name for ad in defs.resolve_asset_graph().assets_defs
             if ad.is_executable and ad.node_def.tags.get(CORES_TAG_KEY)}
    assert {"raw_images", "processed_splits", "trained_model", "evaluation_report", "live_endpoint"} <= heavy
    launched, finished = {}, {}
    for e in deployed.whole_graph_run()[2]:
        if e.dagster_event.step_key:
            if e.dagster_event.event_type == T.STEP_WORKER_STARTING:
                launched.setdefault(e.dagster_event.step_key, e.timestamp)
            elif e.dagster_event.event_type in (T.STEP_SUCCESS, T.STEP_FAILURE):
                finished[e.dagster_event.step_key] = e.timestamp
    running_heavy = [sum(launched[s] <= launched[t] < finished[s] for s in heavy & set(launched)) for t in launched]
    assert max(running_heavy) <= available_cpus()
    reports = {"challenger_report", "cost_report", "drift_report", "labelling_queue", "model_quality_report"}
    assert reports <= set(launched)
    first_done = min(finished[r] for r in reports)
    together = sum(launched[r] < first_done for r in reports)
    # more at once than cores, which Dagster's default of one step per core never does (how many
    # more depends on whether model_baseline, which drift_report waits on, was still running)
    assert together > available_cpus(), (together, available_cpus())


def test_drift_and_quality_alarms_request_retraining(deployed: Deployment) -> None:
    """Held-out traffic of the training distribution: no drift. A different acquisition (contrast-
    stretched): drift, and the drift sensor asks for a retraining run tagged with its reason.
    Wrong ground-truth labels: the accuracy-drop alarm fires and the quality sensor asks too."""
    import dagster as dg

    from dermaops_assets.sensors import drift_sensor, model_quality_sensor

    held_out = deployed.tmp / "held-out"
    # 12 lesions a class: 60 requests then come from many lesions, so the case mix is not one of a few patients
    deployed.cli("dermaops", "demo-data", "--out", str(held_out), "--lesions-per-class", "12", "--seed", "7")
    images = str(held_out / "images")
    traffic = ["dermaops", "traffic", "--endpoint", deployed.url, "--images", images, "--rate", "50",
               "--limit", "60"]
    monitoring = "inference_log,drift_report,model_quality_report"

    # a clinic's system sends the clinical context too: the case mix is watched as well
    deployed.cli(*traffic, "--metadata", str(held_out / "HAM10000_metadata.csv"), "--with-context")
    deployed.materialize(monitoring, {"ops": {"drift_report": {"config": {"max_requests": 60}}}})
    calm = deployed.latest_metadata("drift_report")
    assert calm["status"] != "insufficient_data" and calm["n_requests"] >= 50, calm
    assert calm["drift_detected"] is False, calm
    # the served answers carried their projected embeddings: the monitor decoded and embedded none
    assert (calm["embeddings_from_answers"], calm["embeddings_recomputed"]) == (calm["n_requests"], 0), calm
    assert "| case mix | requests |" in calm["report"] and "| body_region |" in calm["report"], calm

    deployed.cli(*traffic, "--perturb", "contrast", "--seed", "1")
    deployed.materialize(monitoring, {"ops": {"drift_report": {"config": {"max_requests": 60}}}})
    drifted = deployed.latest_metadata("drift_report")
    assert drifted["drift_detected"] is True, drifted
    # The drift sensor reads the newest drift_report: this one asks for a retraining run.
    instance = dg.DagsterInstance.from_config(str(deployed.dagster_home))
    drift_result = drift_sensor(dg.build_sensor_context(instance=instance, resources={"settings": Settings.from_env({})}))
    drift_requests = drift_result.run_requests if hasattr(drift_result, "run_requests") else list(drift_result or [])
    assert drift_requests and drift_requests[0].tags["dermaops/retrain_reason"] == "drift"

    labels = deployed.home / "labels-landing"
    deployed.cli(*traffic, "--seed", "2", "--metadata", str(held_out / "HAM10000_metadata.csv"),
                 "--labels-out", str(labels), "--wrong-labels", "1.0")
    deployed.materialize(monitoring, {"ops": {"drift_report": {"config": {"max_requests": 60}}}})
    quality = deployed.latest_metadata("model_quality_report")
    assert quality["accuracy_drop"] > 5.0, quality

    alerts = [json.loads(line) for line in (deployed.home / "alerts.jsonl").read_text().splitlines()]
    subjects = " ".join(a["subject"] + " " + a["message"] for a in alerts).lower()
    assert any(a["severity"] == "critical" for a in alerts), alerts
    assert "drift" in subjects and "accuracy" in subjects

    quality_result = model_quality_sensor(dg.build_sensor_context(instance=instance,
                                                                  resources={"settings": Settings.from_env({})}))
    quality_requests = quality_result.run_requests if hasattr(quality_result, "run_requests") \
        else list(quality_result or [])
    assert quality_requests and quality_requests[0].tags["dermaops/retrain_reason"] == "quality-drop"
