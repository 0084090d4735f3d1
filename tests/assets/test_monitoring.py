"""Monitoring assets end to end on a real (tiny, untrained) model package and real capture files."""

import base64
import io
import json
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dermaops_assets.monitoring import drift_report, inference_log, model_quality_report
from dermaops_resources.handles import EndpointHandle

from dermaops_resources.metrics import LocalMetricsStore
from dermaops_resources.monitoring_handles import BaselineHandle
from dermaops_resources.notifier import LocalNotifier
from dermaops_resources.object_store import LocalObjectStore
from dermaops_resources.registry import SqliteModelRegistry
from ml_code.package import inference
from ml_code.monitoring.baseline import case_mix_counts, compute_baseline
from ml_code.serving.serve import capture_record
from tests.support.dagster_io import HandleIO as _HandleIO
from tests.support.monitoring_synth import contrast_stretched, lesion_images
from tests.support.monitoring_world import CLASSES, model_package

SIZE = 16


def _package(tmp: Path) -> Path:
    return model_package(tmp, SIZE)


def _capture(store: LocalObjectStore, images: np.ndarray, model, hour: str,
             contexts: list[dict] | None = None, without: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Write capture JSONL like the endpoint does: each answer is the served handlers' own (with the
    image features and projected embedding the monitor reads); returns (inference_id, predicted class).
    With ``contexts``, each request is the JSON body with that clinical context; ``without``: answer
    fields left out, as a package from before them answered."""
    out, lines = [], []
    now = datetime.now(timezone.utc).timestamp()
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        body, ctype = buf.getvalue(), "image/png"
        if contexts is not None:
            body, ctype = json.dumps({"image": base64.b64encode(body).decode(), **contexts[i]}).encode(), "application/json"
        iid = f"sim-{uuid.uuid4().hex}"
        text = inference.output_fn(inference.predict_fn(inference.input_fn(body, ctype), model), "application/json")
        if without:
            text = json.dumps({k: v for k, v in json.loads(text).items() if k not in without})
        lines.append(json.dumps(capture_record(body=body, content_type=ctype, response_text=text,
                                               event_id=str(uuid.uuid4()), inference_id=iid, inference_time=now,
                                               package_version=1)))
        out.append((iid, json.loads(text)["predicted_class"]))
    half = len(lines) // 2
    for i, chunk in enumerate((lines[:half], lines[half:])):
        store.put_bytes("logs", f"datacapture/ep/AllTraffic/{hour}/{hour.replace('/', '')}-{i}.jsonl",
                        ("\n".join(chunk) + "\n").encode())
    store.put_bytes("logs", f"datacapture/ep/AllTraffic/{hour}/.partial.jsonl.tmp", b"{half a line")
    return out


@pytest.fixture()
def world(tmp_path: Path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("DERMAOPS_MODEL_PACKAGE_GROUP", "g")
    monkeypatch.setenv("DERMAOPS_LABELS_URI", str(tmp_path / "labels"))
    store = LocalObjectStore(root=str(tmp_path / "store"))
    splits = tmp_path / "splits"
    splits.mkdir()
    np.save(splits / "train_images.npy", lesion_images(400, SIZE, seed=1))
    np.save(splits / "val_images.npy", lesion_images(150, SIZE, seed=2))
    rng = np.random.default_rng(3)  # an adult clinic: the case mix the baseline keeps
    pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(400)], "age": rng.integers(3, 17, 400) * 5.0,
                  "sex": rng.choice(["male", "female", "unknown"], 400, p=[0.53, 0.45, 0.02]),
                  "localization": rng.choice(["back", "lower extremity", "face", "unknown"], 400)}
                 ).to_csv(splits / "train_index.csv", index=False)
    tar = _package(tmp_path)
    model_uri = store.put_file("models", "jobs/train/t1/model.tar.gz", tar)
    summary = compute_baseline(splits, tar, tmp_path / "baseline", max_embeddings=150)
    assert summary["embedding_split"] == "val" and summary["n_embeddings"] == 150 and summary["case_mix"]
    assert "width" not in summary["features"]  # no manifest: no geometry baseline
    stats = json.loads((tmp_path / "baseline" / "statistics.json").read_text())
    assert stats["dataset"]["item_count"] == 400 and stats["features"][0]["numerical_statistics"]["distribution"]
    # the case mix in Model Monitor layout: age numerical, sex and body region categorical ("unknown" = missing)
    by_name = {f["name"]: f for f in stats["features"]}
    assert by_name["age"]["numerical_statistics"]["max"] <= 90
    sex = by_name["sex"]["string_statistics"]
    assert sex["common"]["num_present"] + sex["common"]["num_missing"] == 400
    assert {b["value"] for b in sex["distribution"]["categorical"]["buckets"]} == {"male", "female"}
    constraints = json.loads((tmp_path / "baseline" / "constraints.json").read_text())
    regions = next(f for f in constraints["features"] if f["name"] == "body_region")
    assert set(regions["string_constraints"]["domains"]) == {"torso", "lower_extremity", "head_neck"}
    assert case_mix_counts(stats)["sex"]["male"] + case_mix_counts(stats)["sex"]["female"] == sex["common"]["num_present"]
    baseline_uri = store.upload_dir("models", "jobs/baseline/b1/baseline", tmp_path / "baseline")
    registry = SqliteModelRegistry(db_path=str(tmp_path / "registry.db"))
    registry.register("g", model_uri, "hash1", {"balanced_accuracy": 0.9}, "", {})
    registry.set_status("g", 1, "Approved")
    endpoint = EndpointHandle(name="ep", url="http://127.0.0.1:9", package_version=1, model_uri=model_uri,
                              capture_uri=store.uri("logs", "datacapture"))
    baseline = BaselineHandle(baseline_uri=baseline_uri, model_uri=model_uri, model_hash="hash1", item_count=400,
                              n_embeddings=150, embedding_split="val", features=summary["features"])
    for key, handle in (("live_endpoint", endpoint), ("model_baseline", baseline)):
        cls = type(handle)
        store.put_json("models", f"handles/{key}.json", {"type": f"{cls.__module__}:{cls.__qualname__}",
                                                         "handle": handle.model_dump()})
    resources = {"store": store, "registry": registry, "io_manager": _HandleIO(store),
                 "metrics": LocalMetricsStore(db_path=str(tmp_path / "metrics.db")),
                 "notifier": LocalNotifier(alerts_path=str(tmp_path / "alerts.jsonl"))}
    model = inference.model_fn(tmp_path / "pkg")
    return store, resources, model, tmp_path


def _run(resources, window: int):
    assets = [dg.AssetSpec("live_endpoint"), dg.AssetSpec("model_baseline"), inference_log, drift_report,
              model_quality_report]
    result = dg.materialize(assets, resources=resources, selection=["inference_log", "drift_report",
                                                                    "model_quality_report"],
                            run_config={"ops": {"drift_report": {"config": {"max_requests": window,
                                                                            "mmd_permutations": 499}}}})
    assert result.success
    mats = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    return {m.asset_key.to_user_string(): {k: getattr(v, "value", v) for k, v in m.metadata.items()} for m in mats}


def test_in_distribution_then_shifted_traffic(world) -> None:
    store, resources, model, tmp = world
    ok_ids = _capture(store, lesion_images(120, SIZE, seed=30), model, "2026/01/01/10")
    pd.DataFrame(ok_ids, columns=["inference_id", "label"]).to_csv(tmp / "labels.csv", index=False)
    (tmp / "labels").mkdir()
    shutil.move(tmp / "labels.csv", tmp / "labels" / "batch1.csv")

    md = _run(resources, window=120)
    assert md["inference_log"]["num_new_records"] == 120 and md["inference_log"]["total"] == 120
    assert md["inference_log"]["requests_decoded"] == 0  # the answers carried the image features
    assert not list((tmp / "store" / "logs" / "monitoring" / "inference_log").rglob("*.npy"))  # no images kept
    # the embedding MMD ran on all 120 requests, their projected embeddings read from the answers
    assert "(150 baseline vs 120 current)" in md["drift_report"]["report"]
    assert (md["drift_report"]["embeddings_from_answers"], md["drift_report"]["embeddings_recomputed"]) == (120, 0)
    assert md["drift_report"]["status"] == "ok" and md["drift_report"]["drift_detected"] is False
    assert md["drift_report"]["drift_score"] < 0.5
    assert "| brightness |" in md["drift_report"]["report"] and "data:image/png;base64," in md["drift_report"]["report"]
    assert md["model_quality_report"]["n_labelled"] == 120
    assert md["model_quality_report"]["accuracy_drop"] == pytest.approx(-10.0)  # labels == predictions: bacc 1.0

    shifted_ids = _capture(store, contrast_stretched(lesion_images(120, SIZE, seed=31)), model, "2026/01/01/11")
    wrong = [(i, CLASSES[(CLASSES.index(p) + 1) % len(CLASSES)]) for i, p in shifted_ids]
    pd.DataFrame(wrong, columns=["inference_id", "label"]).to_csv(tmp / "labels" / "batch2.csv", index=False)
    md = _run(resources, window=120)
    assert md["inference_log"]["num_new_records"] == 120 and md["inference_log"]["total"] == 240
    assert md["drift_report"]["drift_detected"] is True and md["drift_report"]["drift_score"] >= 0.5
    assert md["model_quality_report"]["accuracy_drop"] > 5
    reports = list((tmp / "store" / "logs" / "monitoring" / "drift_report").glob("*/constraint_violations.json"))
    violations = json.loads(max(reports).read_text())["violations"]
    assert any(v["constraint_check_type"] == "baseline_drift_check" for v in violations)
    # bare image requests carry no clinical context, which the training split had
    assert ("clinical_context", "completeness_check") in {(v["feature_name"], v["constraint_check_type"])
                                                          for v in violations}
    alerts = resources["notifier"].read_alerts()
    assert {a["attributes"]["alarm"] for a in alerts} == {"dermaops-data-drift", "dermaops-accuracy-drop"}
    assert {"DriftDetected", "AccuracyDropPoints"} <= resources["metrics"].metric_names()

    md = _run(resources, window=120)  # nothing new: the cursor holds, no duplicate rows
    assert md["inference_log"]["num_new_records"] == 0 and md["inference_log"]["total"] == 240
    assert len(resources["notifier"].read_alerts()) == 2  # still in ALARM: no repeated page


def _mmd(tmp: Path) -> dict:
    reports = sorted((tmp / "store" / "logs" / "monitoring" / "drift_report").glob("*/drift_report.json"))
    return json.loads(reports[-1].read_text())["mmd"]


def test_answers_without_an_embedding_are_embedded_by_the_deployed_model(world) -> None:
    """Traffic answered by a package from before ``drift_embedding``: the monitor decodes those
    requests and embeds them with the deployed package, and the MMD is the one the answers' own
    embeddings give (the same numbers: the endpoint's embedding is the baseline's)."""
    store, resources, model, tmp = world
    images = contrast_stretched(lesion_images(80, SIZE, seed=31))
    _capture(store, images[:40], model, "2026/01/01/10")
    _capture(store, images[40:], model, "2026/01/01/11", without=("drift_embedding",))
    md = _run(resources, window=80)["drift_report"]
    assert (md["embeddings_from_answers"], md["embeddings_recomputed"]) == (40, 40)
    mixed = _mmd(tmp)
    shutil.rmtree(tmp / "store" / "logs" / "monitoring")  # the same traffic again, every answer with its embedding
    shutil.rmtree(tmp / "store" / "logs" / "datacapture")
    _capture(store, images[:40], model, "2026/01/01/10")
    _capture(store, images[40:], model, "2026/01/01/11")
    md = _run(resources, window=80)["drift_report"]
    assert (md["embeddings_from_answers"], md["embeddings_recomputed"]) == (80, 0)
    answered = _mmd(tmp)
    assert mixed["n_current"] == answered["n_current"] == 80
    assert answered["mmd2"] == pytest.approx(mixed["mmd2"], rel=1e-3)
    assert answered["p_value"] < 0.01 and mixed["p_value"] < 0.01  # contrast-stretched traffic drifted


def test_a_drift_run_over_todays_answers_never_imports_torch(world) -> None:
    """The drift run reads the endpoint's projected embeddings, so a fresh process running it never
    loads torch (several hundred MB resident: benchmarks/torch_import_memory.py)."""
    store, resources, model, tmp = world
    _capture(store, lesion_images(60, SIZE, seed=30), model, "2026/01/01/10")
    dg.materialize([dg.AssetSpec("live_endpoint"), inference_log], resources=resources, selection=["inference_log"])
    child = f"""
import sys
import dagster as dg
from dermaops_assets.monitoring import drift_report
from dermaops_resources.metrics import LocalMetricsStore
from dermaops_resources.notifier import LocalNotifier
from dermaops_resources.object_store import LocalObjectStore
from dermaops_resources.registry import SqliteModelRegistry
from tests.support.dagster_io import HandleIO
root = {str(tmp)!r}
store = LocalObjectStore(root=root + "/store")
resources = {{"store": store, "registry": SqliteModelRegistry(db_path=root + "/registry.db"),
             "io_manager": HandleIO(store), "metrics": LocalMetricsStore(db_path=root + "/metrics.db"),
             "notifier": LocalNotifier(alerts_path=root + "/alerts.jsonl")}}
result = dg.materialize([dg.AssetSpec("live_endpoint"), dg.AssetSpec("model_baseline"), dg.AssetSpec("inference_log"),
                         drift_report], resources=resources, selection=["drift_report"],
                        run_config={{"ops": {{"drift_report": {{"config": {{"mmd_permutations": 99}}}}}}}})
md = result.asset_materializations_for_node("drift_report")[0].metadata
print("RESULT", result.success, md["embeddings_from_answers"].value, md["embeddings_recomputed"].value,
      "torch" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", child], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("RESULT", 1)[1].split() == ["True", "60", "0", "False"]


def test_a_shifted_case_mix_alone_is_drift(world) -> None:
    """In-distribution images from a paediatric acral clinic: the image tests stay quiet, the
    case mix does not; exact ages over 89 never reach the inference log."""
    store, resources, model, tmp = world
    rng = np.random.default_rng(5)
    contexts = [{"age": float(rng.integers(2, 12)) if i else 97.0, "sex": str(rng.choice(["male", "female"])),
                 "anatom_site": str(rng.choice(["acral", "foot"]))} for i in range(120)]
    _capture(store, lesion_images(120, SIZE, seed=30), model, "2026/01/01/10", contexts)
    md = _run(resources, window=120)["drift_report"]
    assert md["drift_detected"] is True
    report = md["report"]
    assert "- case mix: age PSI" in report and "- case mix: body_region PSI" in report
    assert "features drifted" not in report  # the images themselves are in distribution
    assert "| case mix | requests |" in report and "Clinical context sent with 100% of requests" in report
    assert md["clinical_context_share"] == 1.0  # a number, so the UI plots it across materializations
    reports = list((tmp / "store" / "logs" / "monitoring" / "drift_report").glob("*/constraint_violations.json"))
    violations = json.loads(max(reports).read_text())["violations"]
    assert {v["feature_name"] for v in violations} >= {"age", "body_region"}
    parts = list((tmp / "store" / "logs" / "monitoring" / "inference_log" / "parts").glob("*.parquet"))
    logged = pd.concat([pd.read_parquet(p) for p in parts])
    assert logged["age"].max() == 90.0 and set(logged["body_region"]) <= {"palms_soles", "lower_extremity"}


def test_model_baseline_runs_the_processing_job(tmp_path: Path) -> None:
    from dermaops_assets.monitoring import model_baseline
    from dermaops_resources.handles import EvaluationHandle, ProcessedSplitsHandle, TrainedModelHandle
    from dermaops_resources.jobs import LocalJobRunner

    store = LocalObjectStore(root=str(tmp_path / "store"))
    splits = tmp_path / "splits"
    splits.mkdir()
    np.save(splits / "train_images.npy", lesion_images(60, SIZE, seed=1))
    np.save(splits / "val_images.npy", lesion_images(30, SIZE, seed=2))
    pd.DataFrame({"image_id": [f"ISIC_{i}" for i in range(60)]}).to_csv(splits / "train_index.csv", index=False)
    splits_uri = store.upload_dir("processed", "jobs/preprocess/p1/splits", splits)
    manifest = pd.DataFrame({"image_id": [f"ISIC_{i}" for i in range(60)], "width": 200, "height": 150})
    store.put_bytes("raw", "manifests/mhash/manifest.csv", manifest.to_csv(index=False).encode())
    model_uri = store.put_file("models", "jobs/train/t1/model.tar.gz", _package(tmp_path))
    handles = {
        "trained_model": TrainedModelHandle(model_uri=model_uri, model_hash="abc123", arch="dermanet",
                                            image_size=SIZE, classes=CLASSES, data_version="d", code_version="c"),
        "processed_splits": ProcessedSplitsHandle(splits_uri=splits_uri, content_hash="s", image_size=SIZE,
                                                  classes=CLASSES, split_counts={}, raw_manifest_hash="mhash"),
        # the last evaluation is of an older model: its predictions are not this model's
        "evaluation_report": EvaluationHandle(evaluation_uri="x/evaluation.json", report_uri=str(tmp_path / "old-eval"),
                                              model_uri="m", model_hash="older", metrics={}),
    }
    io = _HandleIO(store)
    for key, handle in handles.items():
        cls = type(handle)
        store.put_json("models", f"handles/{key}.json", {"type": f"{cls.__module__}:{cls.__qualname__}",
                                                         "handle": handle.model_dump()})
    result = dg.materialize([dg.AssetSpec("trained_model"), dg.AssetSpec("processed_splits"),
                             dg.AssetSpec("evaluation_report"), model_baseline],
                            selection=["model_baseline"],
                            resources={"store": store, "io_manager": io,
                                       "jobs": LocalJobRunner(work_root=str(tmp_path / "jobs"))})
    assert result.success
    out = result.output_for_node("model_baseline")
    assert out.item_count == 60 and out.n_embeddings == 30 and out.embedding_split == "val"
    assert store.get_json(out.baseline_uri + "/prediction_distribution.json")["scored_by"] == "baseline"
    assert {"width", "height", "aspect_ratio"} <= set(out.features)  # geometry from the raw manifest
    index = store.get_json(store.uri("models", "baselines/by-model/abc123.json"))
    assert index["baseline_uri"] == out.baseline_uri
    constraints = store.get_json(out.baseline_uri + "/constraints.json")
    assert constraints["monitoring_config"]["dermaops_drift_thresholds"]["min_requests"] == 50
