"""Monitoring: the architecture document's Model Monitor boxes as assets.

- ``model_baseline``: statistics/constraints/embeddings of a trained model (processing job
  ``ml_code.baseline``), indexed by model hash so the monitor finds the *deployed* model's.
- ``inference_log``: reads only capture files not read before (cursor in the logs bucket),
  validates rows (pandera) and appends parquet + image parts.
- ``drift_report``: recent traffic vs the deployed model's baseline (PSI/KS per feature,
  embedding MMD, prediction drift) -> ``constraint_violations.json``, metrics, alarms.
- ``model_quality_report``: ground-truth labels joined to predictions by inference id ->
  accuracy / balanced accuracy vs the deployed model's evaluation -> ``AccuracyDropPoints``.

The statistics live in ``ml_code`` (no Dagster there); this module moves bytes between the
object store and those functions and turns results into metadata.
"""


import base64
import io
import json
import tarfile
import tempfile
import time
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from dermaops_resources.alarms import evaluate_alarms
from dermaops_resources.handles import EndpointHandle, ProcessedSplitsHandle, TrainedModelHandle
from dermaops_resources.jobs import JobRunner, JobSpec, job_output_prefix
from dermaops_resources.metrics import MetricsPublisher
from dermaops_resources.monitoring_handles import (
    BaselineHandle, DriftReportHandle, InferenceLogHandle, ModelQualityHandle,
)
from dermaops_resources.notifier import Notifier
from dermaops_resources.object_store import ObjectStore, join_uri
from dermaops_resources.registry import ModelRegistry, RegistryError
from dermaops_resources.settings import Settings
from ml_code.capture import parse_capture_bytes, validate_rows
from ml_code.drift import (
    DriftVerdict, constraint_violations, drift_verdict, feature_drift, mmd_test, prediction_drift,
)

LOG_PREFIX = "monitoring/inference_log"
CURSOR_KEY = f"{LOG_PREFIX}/cursor.json"
BASELINE_INDEX = "baselines/by-model"


# -- store helpers ----------------------------------------------------------------------

def _get_json_or(store: ObjectStore, uri: str, default: Any) -> Any:
    try:
        return store.get_json(uri)
    except FileNotFoundError:
        return default
    except Exception as exc:  # S3 NoSuchKey surfaces as a botocore ClientError
        if "NoSuchKey" in str(exc) or "404" in str(exc):
            return default
        raise


def _local_file(store: ObjectStore, uri: str, scratch: Path) -> Path:
    return store.local_path(uri) or store.download_file(uri, scratch / Path(uri).name)


def _model_config(store: ObjectStore, model_uri: str, scratch: Path) -> dict[str, Any]:
    """model_config.json from inside a model.tar.gz (without extracting the weights)."""
    with tarfile.open(_local_file(store, model_uri, scratch), "r:*") as tar:
        for name in ("model_config.json", "./model_config.json"):
            try:
                member = tar.extractfile(name)
            except KeyError:
                continue
            if member is not None:
                return json.loads(member.read())
    raise dg.Failure(f"{model_uri} has no model_config.json; it is not a DermaOps model package.")


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _baseline_for_model(store: ObjectStore, registry: ModelRegistry, endpoint: EndpointHandle,
                        fallback: BaselineHandle, log) -> tuple[BaselineHandle, bool]:
    """(baseline of the deployed package's model, whether it matches that model)."""
    try:
        package = registry.get(Settings.from_env().model_package_group, endpoint.package_version)
        model_hash = package.model_hash
    except RegistryError:
        model_hash = ""
    if model_hash:
        found = _get_json_or(store, store.uri("models", f"{BASELINE_INDEX}/{model_hash}.json"), None)
        if found:
            return BaselineHandle.model_validate(found), True
    if fallback.model_hash == model_hash or fallback.model_uri == endpoint.model_uri:
        return fallback, True
    log.warning(f"No baseline for the deployed model (v{endpoint.package_version}); comparing input features "
                f"with the latest baseline ({fallback.model_hash[:12]}) and skipping embedding/prediction drift. "
                "Materialize model_baseline for the deployed model to fix this.")
    return fallback, False


def _load_log(store: ObjectStore, cursor: dict[str, Any], max_rows: int | None = None,
              since: datetime | None = None, with_images: bool = False,
              columns: list[str] | None = None) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Newest-first walk over inference-log parts until ``max_rows`` rows or ``since`` is passed."""
    frames: list[pd.DataFrame] = []
    images: list[np.ndarray] = []
    n = 0
    for seq in range(int(cursor.get("parts", 0)) - 1, -1, -1):
        base = store.uri("logs", f"{LOG_PREFIX}/parts/{seq:08d}")
        frame = pd.read_parquet(io.BytesIO(store.get_bytes(base + ".parquet")), columns=columns)
        imgs = np.load(io.BytesIO(store.get_bytes(base + ".npy"))) if with_images else None
        if since is not None:
            keep = (frame["inference_time"] >= since).to_numpy()
            frame = frame[keep]
            imgs = imgs[keep] if imgs is not None else None
        frames.append(frame)
        if imgs is not None:
            images.append(imgs)
        n += len(frame)
        if (max_rows is not None and n >= max_rows) or (since is not None and len(frame) == 0):
            break
    if not frames:
        return pd.DataFrame(columns=columns or []), []
    rows = pd.concat(frames[::-1], ignore_index=True)
    images = images[::-1]
    if max_rows is not None and len(rows) > max_rows:
        cut = len(rows) - max_rows
        rows = rows.iloc[cut:].reset_index(drop=True)
        flat = [img for part in images for img in part][cut:]
        images = [np.stack(flat)] if flat else []
    return rows, images


# -- assets -----------------------------------------------------------------------------

@dg.asset(group_name="monitoring", kinds={"sagemaker", "python"},
          description="Model Monitor baseline of the trained model: training-split feature statistics "
          "(statistics.json/constraints.json), held-out embeddings and predicted-class distribution.")
def model_baseline(context: dg.AssetExecutionContext, trained_model: TrainedModelHandle,
                   processed_splits: ProcessedSplitsHandle, store: ObjectStore, jobs: JobRunner) -> dg.Output[BaselineHandle]:
    name = f"baseline-{trained_model.model_hash[:12]}-{int(time.time())}"
    inputs = {"model": trained_model.model_uri.rsplit("/", 1)[0], "splits": processed_splits.splits_uri}
    manifest_prefix = store.uri("raw", f"manifests/{processed_splits.raw_manifest_hash}")
    if store.exists(join_uri(manifest_prefix, "manifest.csv")):
        inputs["manifest"] = manifest_prefix  # original width/height for the geometry features
    spec = JobSpec(job_type="processing", name=name, entry_point="ml_code.baseline", inputs=inputs,
                   output_uri=job_output_prefix(store, "models", "baseline", name), outputs=["baseline"])
    result = jobs.run(spec, store, on_log=context.log.info)
    baseline_uri = result.output_uris["baseline"]
    stats = store.get_json(join_uri(baseline_uri, "statistics.json"))
    preds = store.get_json(join_uri(baseline_uri, "prediction_distribution.json"))
    emb_meta = result.metrics[-1] if result.metrics else {}
    handle = BaselineHandle(baseline_uri=baseline_uri, model_uri=trained_model.model_uri,
                            model_hash=trained_model.model_hash, item_count=stats["dataset"]["item_count"],
                            n_embeddings=int(emb_meta.get("baseline_embeddings", preds.get("n", 0))),
                            embedding_split=preds.get("split", ""), features=[f["name"] for f in stats["features"]],
                            job_name=name)
    store.put_json("models", f"{BASELINE_INDEX}/{trained_model.model_hash}.json", handle.model_dump())
    return dg.Output(handle, metadata={
        "baseline_uri": dg.MetadataValue.path(baseline_uri), "item_count": handle.item_count,
        "n_embeddings": handle.n_embeddings, "embedding_split": handle.embedding_split,
        "features": ", ".join(handle.features),
        "prediction_distribution": dg.MetadataValue.json(preds.get("distribution", {})),
    })


class InferenceLogConfig(dg.Config):
    max_files_per_run: int = 2000


@dg.asset(group_name="monitoring", kinds={"s3", "pandas"},
          description="Captured endpoint traffic, read incrementally (only capture files newer than the cursor), "
          "validated with a pandera schema and stored as parquet parts with the model-view images.")
def inference_log(context: dg.AssetExecutionContext, config: InferenceLogConfig, live_endpoint: EndpointHandle,
                  store: ObjectStore) -> dg.Output[InferenceLogHandle]:
    cursor_uri = store.uri("logs", CURSOR_KEY)
    cursor = _get_json_or(store, cursor_uri, {"last_key": None, "total": 0, "parts": 0, "skipped": {}})
    capture_prefix = join_uri(live_endpoint.capture_uri, live_endpoint.name, live_endpoint.variant)
    files = [o for o in islice(store.list(capture_prefix, start_after=cursor["last_key"]), config.max_files_per_run)
             if o.key.endswith(".jsonl")]
    with tempfile.TemporaryDirectory(prefix="dermaops-log-") as scratch:
        image_size = int(_model_config(store, live_endpoint.model_uri, Path(scratch))["image_size"])
    frames, images, skipped = [], [], dict(cursor.get("skipped", {}))
    for obj in files:
        batch = parse_capture_bytes(store.get_bytes(obj.uri), image_size=image_size, keep_images=True)
        frames.append(batch.rows)
        images.extend(batch.images)
        for reason, n in batch.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + int(n)
    new = 0
    if frames and sum(len(f) for f in frames):
        rows = pd.concat(frames, ignore_index=True)
        dup = rows["inference_id"].duplicated().to_numpy()
        if dup.any():
            skipped["duplicate_inference_id"] = skipped.get("duplicate_inference_id", 0) + int(dup.sum())
        rows = validate_rows(rows[~dup].reset_index(drop=True))
        views = np.stack([img for img, d in zip(images, dup) if not d])
        seq = int(cursor["parts"])
        # Part first, cursor last: a crash in between re-reads the same files into the same part seq.
        store.put_bytes("logs", f"{LOG_PREFIX}/parts/{seq:08d}.npy", _npy_bytes(views))
        store.put_bytes("logs", f"{LOG_PREFIX}/parts/{seq:08d}.parquet", _parquet_bytes(rows))
        cursor["parts"], new = seq + 1, len(rows)
    if files:
        cursor["last_key"] = files[-1].key
    cursor["total"] = int(cursor["total"]) + new
    cursor["skipped"] = skipped
    cursor["updated_at"] = time.time()
    store.put_json("logs", CURSOR_KEY, cursor)
    handle = InferenceLogHandle(log_uri=store.uri("logs", LOG_PREFIX), cursor_uri=cursor_uri,
                                capture_prefix_uri=capture_prefix, total_records=cursor["total"],
                                num_new_records=new, parts=cursor["parts"], skipped=skipped)
    return dg.Output(handle, metadata={
        "num_new_records": new, "total": handle.total_records, "files_read": len(files),
        "cursor_last_key": cursor["last_key"] or "", "skipped": dg.MetadataValue.json(skipped),
    })


class DriftConfig(dg.Config):
    window_hours: float = 24.0
    max_requests: int = 500
    mmd_permutations: int = 1999


def _drift_markdown(verdict: DriftVerdict, png: str | None) -> str:
    lines = [f"**Status:** {verdict.status} - drift score {verdict.drift_score:.2f} over "
             f"{verdict.n_requests} requests", ""]
    lines += [f"- {r}" for r in verdict.reasons] + [""]
    if verdict.features:
        lines += ["| feature | PSI | KS | KS p | baseline mean | current mean | drifted |", "|---|---|---|---|---|---|---|"]
        for f in verdict.features:
            lines.append(f"| {f.feature} | {f.psi:.3f} | {f.ks_statistic:.3f} | {f.ks_p_value:.2g} | "
                         f"{f.baseline_mean:.4g} | {f.current_mean:.4g} | {'**yes**' if f.drifted else 'no'} |")
    if verdict.mmd is not None:
        lines += ["", f"Embedding MMD^2 {verdict.mmd.mmd2:.4g}, permutation p = {verdict.mmd.p_value:.4f} "
                      f"({verdict.mmd.n_baseline} baseline vs {verdict.mmd.n_current} current)"]
    if verdict.prediction is not None:
        lines += ["", f"Prediction drift: PSI {verdict.prediction.psi:.3f}, chi-square p = "
                      f"{verdict.prediction.p_value:.2g}"]
    if png:
        lines += ["", f"![PSI per feature]({png})"]
    return "\n".join(lines)


def _psi_plot(verdict: DriftVerdict) -> str | None:
    if not verdict.features:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    names = [f.feature for f in verdict.features]
    ax.bar(names, [f.psi for f in verdict.features], color=["#c0392b" if f.drifted else "#2e86c1"
                                                             for f in verdict.features])
    ax.axhline(verdict.thresholds.psi, color="k", linestyle="--", linewidth=1)
    ax.set_ylabel("PSI")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    try:
        return _png_data_uri(fig)
    finally:
        plt.close(fig)


@dg.asset(group_name="monitoring", kinds={"python"},
          description="Data drift of recent traffic vs the deployed model's baseline: PSI and KS per image "
          "feature, embedding MMD, prediction drift. Writes Model Monitor constraint_violations.json, publishes "
          "DriftDetected/DriftScore and raises the data-drift alarm.")
def drift_report(context: dg.AssetExecutionContext, config: DriftConfig, inference_log: InferenceLogHandle,
                 model_baseline: BaselineHandle, live_endpoint: EndpointHandle, store: ObjectStore,
                 registry: ModelRegistry, metrics: MetricsPublisher,
                 notifier: Notifier) -> dg.Output[DriftReportHandle]:
    from ml_code.baseline import embed_and_predict, load_baseline, load_packaged_model

    baseline, matches = _baseline_for_model(store, registry, live_endpoint, model_baseline, context.log)
    cursor = _get_json_or(store, inference_log.cursor_uri, {"parts": 0})
    since = datetime.now(timezone.utc) - timedelta(hours=config.window_hours)
    rows, images = _load_log(store, cursor, max_rows=config.max_requests, since=since, with_images=True)
    with tempfile.TemporaryDirectory(prefix="dermaops-drift-") as scratch:
        base = load_baseline(store.materialize_dir(baseline.baseline_uri, Path(scratch) / "baseline"))
        t = base["thresholds"]
        verdict = drift_verdict(len(rows), thresholds=t)
        if verdict.status != "insufficient_data":
            names = [c for c in base["features"].columns if c in rows.columns]
            feats = feature_drift(base["features"], rows, t, edges=base["edges"], features=names)
            mmd = pred = None
            if matches:
                served = rows["model_version"].to_numpy() == live_endpoint.package_version
                views = np.concatenate(images) if images else np.zeros((0,))
                tar = _local_file(store, live_endpoint.model_uri, Path(scratch))
                module, model = load_packaged_model(tar, Path(scratch) / "model")
                if views.ndim == 4 and views.shape[1] == int(model.image_size) and len(views) >= 2:
                    emb, _ = embed_and_predict(module, model, views)
                    mmd = mmd_test(base["embeddings"], emb, n_permutations=config.mmd_permutations)
                if served.sum() >= t.min_requests:
                    pred = prediction_drift(base["prediction_distribution"],
                                            rows.loc[served, "predicted_class"].tolist())
            verdict = drift_verdict(len(rows), feats, mmd, pred, t)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    prefix = f"monitoring/drift_report/{stamp}"
    violations_uri = store.put_json("logs", f"{prefix}/constraint_violations.json", constraint_violations(verdict))
    report_uri = store.put_json("logs", f"{prefix}/drift_report.json", verdict.to_dict())
    dims = {"EndpointName": live_endpoint.name}
    metrics.put("DriftDetected", 1.0 if verdict.drift_detected else 0.0, dimensions=dims)
    metrics.put("DriftScore", verdict.drift_score, dimensions=dims)
    if verdict.status != "insufficient_data":
        evaluate_alarms(metrics, notifier, {"DriftDetected": 1.0 if verdict.drift_detected else 0.0})
    handle = DriftReportHandle(status=verdict.status, drift_detected=verdict.drift_detected,
                               drift_score=verdict.drift_score, n_requests=verdict.n_requests,
                               model_version=live_endpoint.package_version, report_uri=report_uri,
                               violations_uri=violations_uri, baseline_uri=baseline.baseline_uri,
                               reasons=verdict.reasons)
    return dg.Output(handle, metadata={
        "drift_score": dg.MetadataValue.float(verdict.drift_score),
        "drift_detected": dg.MetadataValue.bool(verdict.drift_detected),
        "status": verdict.status,
        "insufficient_data": dg.MetadataValue.bool(verdict.status == "insufficient_data"),
        "n_requests": verdict.n_requests,
        "report": dg.MetadataValue.md(_drift_markdown(verdict, _psi_plot(verdict))),
        "constraint_violations": dg.MetadataValue.path(violations_uri),
    })


class QualityConfig(dg.Config):
    window_hours: float = 24.0 * 7
    min_labelled: int = 30


def read_labels(store: ObjectStore, labels_uri: str) -> pd.DataFrame:
    """All ``inference_id,label`` CSVs in the labels landing location (folder or store prefix)."""
    frames: list[pd.DataFrame] = []
    if labels_uri.startswith(("s3://", "file://")):
        for obj in store.list(labels_uri):
            if obj.key.endswith(".csv") and not obj.key.rsplit("/", 1)[-1].startswith("."):
                frames.append(pd.read_csv(io.BytesIO(store.get_bytes(obj.uri)), dtype=str))
    else:
        folder = Path(labels_uri)
        for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
            if not path.name.startswith("."):
                frames.append(pd.read_csv(path, dtype=str))
    frames = [f for f in frames if {"inference_id", "label"} <= set(f.columns)]
    if not frames:
        return pd.DataFrame({"inference_id": pd.Series(dtype=str), "label": pd.Series(dtype=str)})
    return pd.concat(frames, ignore_index=True)[["inference_id", "label"]].drop_duplicates("inference_id", keep="last")


def quality_by_window(joined: pd.DataFrame, freq: str = "D") -> pd.DataFrame:
    """Accuracy and balanced accuracy per time window (rows need inference_time, label, predicted_class)."""
    from sklearn.metrics import balanced_accuracy_score

    out = []
    for window, grp in joined.groupby(joined["inference_time"].dt.floor(freq)):
        out.append({"window": window, "n": len(grp),
                    "accuracy": float((grp["label"] == grp["predicted_class"]).mean()),
                    "balanced_accuracy": float(balanced_accuracy_score(grp["label"], grp["predicted_class"]))})
    return pd.DataFrame(out, columns=["window", "n", "accuracy", "balanced_accuracy"])


@dg.asset(group_name="monitoring", kinds={"python"},
          description="Live model quality: ground-truth labels (labels landing location) joined to captured "
          "predictions by inference id; balanced accuracy vs the deployed model's evaluation, as AccuracyDropPoints.")
def model_quality_report(context: dg.AssetExecutionContext, config: QualityConfig, inference_log: InferenceLogHandle,
                         live_endpoint: EndpointHandle, store: ObjectStore, registry: ModelRegistry,
                         metrics: MetricsPublisher, notifier: Notifier) -> dg.Output[ModelQualityHandle]:
    from sklearn.metrics import balanced_accuracy_score

    settings = Settings.from_env()
    package = registry.get(settings.model_package_group, live_endpoint.package_version)
    reference = package.metrics.get("balanced_accuracy")
    cursor = _get_json_or(store, inference_log.cursor_uri, {"parts": 0})
    since = datetime.now(timezone.utc) - timedelta(hours=config.window_hours)
    rows, _ = _load_log(store, cursor, since=since,
                        columns=["inference_time", "inference_id", "model_version", "predicted_class"])
    labels = read_labels(store, settings.labels_uri)
    joined = rows[rows["model_version"] == live_endpoint.package_version].merge(labels, on="inference_id")
    n = len(joined)
    acc = bacc = None
    drop = 0.0
    status = "insufficient_data"
    if n >= config.min_labelled and reference is not None:
        acc = float((joined["label"] == joined["predicted_class"]).mean())
        bacc = float(balanced_accuracy_score(joined["label"], joined["predicted_class"]))
        drop = (float(reference) - bacc) * 100.0
        status = "degraded" if drop > 5.0 else "ok"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    table = quality_by_window(joined) if n else pd.DataFrame(columns=["window", "n", "accuracy", "balanced_accuracy"])
    report = {"status": status, "n_labelled": n, "accuracy": acc, "balanced_accuracy": bacc,
              "reference_balanced_accuracy": reference, "accuracy_drop_points": drop,
              "model_version": live_endpoint.package_version,
              "windows": json.loads(table.to_json(orient="records", date_format="iso"))}
    report_uri = store.put_json("logs", f"monitoring/model_quality/{stamp}/report.json", report)
    if status != "insufficient_data":
        metrics.put("AccuracyDropPoints", drop, dimensions={"EndpointName": live_endpoint.name})
        metrics.put("LiveBalancedAccuracy", float(bacc), dimensions={"EndpointName": live_endpoint.name})
        evaluate_alarms(metrics, notifier, {"AccuracyDropPoints": drop})
    md = [f"**Status:** {status}: {n} labelled predictions of v{live_endpoint.package_version}; reference "
          f"balanced accuracy {reference if reference is None else f'{reference:.3f}'}", "",
          "| window | n | accuracy | balanced accuracy |", "|---|---|---|---|"]
    md += [f"| {r.window} | {r.n} | {r.accuracy:.3f} | {r.balanced_accuracy:.3f} |" for r in table.itertuples()]
    handle = ModelQualityHandle(status=status, n_labelled=n, accuracy=acc, balanced_accuracy=bacc,
                                reference_balanced_accuracy=reference, accuracy_drop=drop,
                                model_version=live_endpoint.package_version, report_uri=report_uri)
    return dg.Output(handle, metadata={
        "accuracy_drop": dg.MetadataValue.float(drop), "n_labelled": n, "status": status,
        "balanced_accuracy": dg.MetadataValue.float(bacc if bacc is not None else float("nan")),
        "report": dg.MetadataValue.md("\n".join(md)),
    })
