"""Monitoring: the architecture document's Model Monitor boxes as assets.

- ``model_baseline``: statistics/constraints/embeddings of a trained model (processing job
  ``ml_code.monitoring.baseline``), indexed by model hash so the monitor finds the *deployed* model's.
- ``inference_log``: reads only capture files not read before (cursor in the logs bucket),
  validates rows (pandera) and appends parquet parts (image features from the endpoint's answers,
  a pointer to each capture line; no images).
- ``drift_report``: recent traffic vs the deployed model's baseline (PSI/KS per feature,
  embedding MMD, prediction drift) -> ``constraint_violations.json``, metrics, alarms.
- ``model_quality_report``: ground-truth labels joined to predictions by inference id ->
  accuracy / balanced accuracy vs the deployed model's evaluation -> ``AccuracyDropPoints``.

The statistics and report rendering live in ``ml_code`` (no Dagster there); reading the
inference log, baselines and labels from the store lives in ``dermaops_services.monitoring``;
this module wires them together and turns results into metadata.
"""


import json
import tempfile
import time
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path

import dagster as dg
import pandas as pd

from dermaops_services.alarms import evaluate_alarms
from dermaops_resources.cost import JobCost, monthly_cost
from dermaops_resources.endpoint import deployment_timeline
from dermaops_resources.handles import EndpointHandle, EvaluationHandle, ProcessedSplitsHandle, TrainedModelHandle
from dermaops_resources.jobs import JobRunner, JobSpec, job_output_prefix
from dermaops_resources.metrics import MetricsPublisher
from dermaops_resources.monitoring_handles import (
    BaselineHandle, DriftReportHandle, InferenceLogHandle, ModelQualityHandle,
)
from dermaops_services.monitoring import (
    BASELINE_INDEX, CURSOR_KEY, LOG_PREFIX, PART_ROWS, append_captures, baseline_for_deployed_model, case_mix_rows,
    load_inference_log, read_labels, read_model_config, traffic_embeddings,
)
from dermaops_resources.notifier import Notifier
from dermaops_resources.object_store import ObjectStore, join_uri
from dermaops_resources.registry import ModelRegistry
from dermaops_resources.settings import Settings
from ml_code.monitoring.health import HEALTH_COLUMNS, keep_recent, window_figures
from ml_code.monitoring.drift import (
    case_mix_drift, category_drift, constraint_violations, drift_report_markdown, drift_verdict, feature_drift,
    mmd_test, psi_plot_data_uri,
)
from ml_code.monitoring.ood_share import flagged_share
from ml_code.monitoring.quality import QUALITY_WINDOW_COLUMNS, live_accuracy, quality_by_window, quality_report_markdown
from .executor import USES_ALL_CORES
from .ui import table_markdown


# -- assets -----------------------------------------------------------------------------

@dg.asset(group_name="monitoring", kinds={"sagemaker", "python"}, op_tags=USES_ALL_CORES,  # the baseline job
          description="Model Monitor baseline of the trained model: training-split feature statistics "
          "(statistics.json/constraints.json), held-out embeddings and the predicted-class distribution "
          "expected from the evaluation's held-out predictions.")
def model_baseline(context: dg.AssetExecutionContext, trained_model: TrainedModelHandle,
                   processed_splits: ProcessedSplitsHandle, evaluation_report: EvaluationHandle,
                   store: ObjectStore, jobs: JobRunner) -> dg.Output[BaselineHandle]:
    """After the evaluation, not beside it: the evaluation has already scored every held-out image
    through the served views, and rescoring them here competed with it for the same cores (on
    HAM10000, two cores, it delayed the endpoint by about ten minutes)."""
    from ml_code.monitoring.baseline import case_mix_counts

    name = f"dermaops-baseline-{trained_model.model_hash[:12]}-{int(time.time())}"  # IAM scopes jobs to dermaops-*
    inputs = {"model": trained_model.model_uri.rsplit("/", 1)[0], "splits": processed_splits.splits_uri}
    if evaluation_report.model_hash == trained_model.model_hash:
        inputs["evaluation"] = evaluation_report.report_uri  # its held-out predictions
    else:  # an evaluation of another model (a partial run): the job scores a held-out sample itself
        context.log.warning(f"evaluation_report is of model {evaluation_report.model_hash[:12]}, not the trained "
                            f"{trained_model.model_hash[:12]}: the baseline scores its held-out sample itself. "
                            "Materialize evaluation_report with model_baseline to reuse its predictions.")
    manifest_prefix = store.uri("raw", f"manifests/{processed_splits.raw_manifest_hash}")
    if store.exists(join_uri(manifest_prefix, "manifest.csv")):
        inputs["manifest"] = manifest_prefix  # original width/height for the geometry features
    spec = JobSpec(job_type="processing", name=name, entry_point="ml_code.monitoring.baseline", inputs=inputs,
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
        "prediction_distribution_from": f"{preds.get('scored_by', 'baseline')} ({preds.get('n', 0)} held-out images)",
        "case_mix": dg.MetadataValue.json(case_mix_counts(stats)),
    })


class InferenceLogConfig(dg.Config):
    max_files_per_run: int = 2000
    part_rows: int = PART_ROWS  # rows per log part: bounds the run's memory
    parse_workers: int = 0  # capture-parsing processes; 0: in-process, or every CPU for a large backlog to decode


@dg.asset(group_name="monitoring", kinds={"s3", "pandas"}, op_tags=USES_ALL_CORES,  # a large backlog is read in a process per core
          description="Captured endpoint traffic, read incrementally (only capture files newer than the cursor), "
          "validated with a pandera schema and stored as parquet parts: the image features the endpoint returned "
          "with each answer (the image is decoded only for answers without them) and a pointer to the capture "
          "line, never a copy of the image. Also the "
          "endpoint's health over the last hour (5xx count, worst 5-minute p95 latency), published as "
          "EndpointErrors / EndpointLatencyMs and judged by their alarms.")
def inference_log(context: dg.AssetExecutionContext, config: InferenceLogConfig, live_endpoint: EndpointHandle,
                  store: ObjectStore, metrics: MetricsPublisher, notifier: Notifier) -> dg.Output[InferenceLogHandle]:
    cursor_uri = store.uri("logs", CURSOR_KEY)
    cursor = store.get_json_or(cursor_uri, {"last_key": None, "total": 0, "parts": 0, "skipped": {}})
    capture_prefix = join_uri(live_endpoint.capture_uri, live_endpoint.name, live_endpoint.variant)
    files = [o for o in islice(store.list(capture_prefix, start_after=cursor["last_key"]), config.max_files_per_run)
             if o.key.endswith(".jsonl")]
    with tempfile.TemporaryDirectory(prefix="dermaops-log-") as scratch:
        image_size = int(read_model_config(store, live_endpoint.model_uri, Path(scratch))["image_size"])
    # SageMaker's capture lines name no model: the endpoint variant's deployment record says which
    # package served at each line's inferenceTime (an update can fall inside one hour). Without a
    # record, the package deployed now is assumed; the local endpoint writes its version per line.
    # Part first, cursor last: a crash in between re-reads the same files into the same part seqs.
    timeline = deployment_timeline(store, live_endpoint.name, live_endpoint.variant)
    appended = append_captures(store, files, image_size, live_endpoint.package_version, int(cursor["parts"]),
                               cursor.get("skipped", {}), part_rows=config.part_rows,
                               workers=config.parse_workers or None, timeline=timeline)
    health = [pd.DataFrame(cursor.get("health", []), columns=list(HEALTH_COLUMNS)), *appended.health]
    skipped, new = appended.skipped, appended.new_rows
    cursor["parts"] = appended.parts
    if files:
        cursor["last_key"] = files[-1].key
    cursor["total"] = int(cursor["total"]) + new
    cursor["skipped"] = skipped
    now = time.time()
    events = pd.concat([h for h in health if len(h)], ignore_index=True) if any(len(h) for h in health) \
        else health[0]
    cursor["health"] = keep_recent(events, now)
    cursor["updated_at"] = now
    # Only the local endpoint writes status and latency into its capture; on AWS, SageMaker's own
    # Invocation5XXErrors and ModelLatency feed the CloudWatch alarms and nothing is judged here.
    cursor["health_seen"] = bool(cursor.get("health_seen")) or bool(len(events))
    figures = window_figures(events, now) if cursor["health_seen"] else {}
    for name, value in figures.items():
        metrics.put(name, value, "Count" if name == "EndpointErrors" else "Milliseconds",
                    {"EndpointName": live_endpoint.name, "VariantName": live_endpoint.variant})
    # Alarm state first, cursor last: a crash in between re-judges the same hour, notifying at most once.
    evaluate_alarms(metrics, notifier, figures)
    store.put_json("logs", CURSOR_KEY, cursor)
    handle = InferenceLogHandle(log_uri=store.uri("logs", LOG_PREFIX), cursor_uri=cursor_uri,
                                capture_prefix_uri=capture_prefix, total_records=cursor["total"],
                                num_new_records=new, parts=cursor["parts"], skipped=skipped)
    return dg.Output(handle, metadata={
        "num_new_records": new, "total": handle.total_records, "files_read": len(files),
        "requests_decoded": appended.decoded,  # answers without image_features: older packages, other writers
        "cursor_last_key": cursor["last_key"] or "", "skipped": dg.MetadataValue.json(skipped),
        "endpoint_errors_last_hour": figures.get("EndpointErrors", float("nan")),
        "latency_p95_ms_worst_5min": figures.get("EndpointLatencyMs", float("nan")),
    })


class DriftConfig(dg.Config):
    window_hours: float = 24.0
    max_requests: int = 500
    mmd_permutations: int = 1999


@dg.asset(group_name="monitoring", kinds={"python"},
          description="Data drift of recent traffic vs the deployed model's baseline: PSI and KS per image "
          "feature, embedding MMD, prediction drift, case mix (age, sex, body region). Writes Model Monitor "
          "constraint_violations.json, publishes DriftDetected/DriftScore and raises the data-drift alarm.")
def drift_report(context: dg.AssetExecutionContext, config: DriftConfig, inference_log: InferenceLogHandle,
                 model_baseline: BaselineHandle, live_endpoint: EndpointHandle, store: ObjectStore,
                 registry: ModelRegistry, metrics: MetricsPublisher,
                 notifier: Notifier) -> dg.Output[DriftReportHandle]:
    from ml_code.monitoring.baseline import load_baseline
    from ml_code.package.drift_embedding import project

    baseline, matches = baseline_for_deployed_model(store, registry, live_endpoint, model_baseline, context.log)
    cursor = store.get_json_or(inference_log.cursor_uri, {"parts": 0})
    since = datetime.now(timezone.utc) - timedelta(hours=config.window_hours)
    rows, _ = load_inference_log(store, cursor, max_rows=config.max_requests, since=since)
    embedded = {"from_answers": 0, "recomputed": 0, "left_out": 0}
    with tempfile.TemporaryDirectory(prefix="dermaops-drift-") as scratch:
        base = load_baseline(store.materialize_dir(baseline.baseline_uri, Path(scratch) / "baseline"))
        t = base["thresholds"]
        verdict = drift_verdict(len(rows), thresholds=t)
        if verdict.status != "insufficient_data":
            names = [c for c in base["features"].columns if c in rows.columns]
            feats = feature_drift(base["features"], rows, t, edges=base["edges"], features=names)
            mmd = pred = None
            if matches:
                # the answers' projected embeddings; only older answers are decoded and embedded here
                emb, embedded = traffic_embeddings(store, rows, live_endpoint, Path(scratch))
                if len(emb) >= 2:
                    mmd = mmd_test(project(base["embeddings"]), emb, n_permutations=config.mmd_permutations)
                served = rows["model_version"].to_numpy() == live_endpoint.package_version
                if served.sum() >= t.min_requests:
                    pred = category_drift(base["prediction_distribution"],
                                          rows.loc[served, "predicted_class"].tolist())
            mix, share = case_mix_drift(base["case_mix"], case_mix_rows(rows), t)
            verdict = drift_verdict(len(rows), feats, mmd, pred, t, mix, share)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    prefix = f"monitoring/drift_report/{stamp}"
    violations_uri = store.put_json("logs", f"{prefix}/constraint_violations.json", constraint_violations(verdict))
    ood = flagged_share(rows)  # requests the endpoint answered with in_distribution false
    report_uri = store.put_json("logs", f"{prefix}/drift_report.json", {**verdict.to_dict(), "ood_flagged": ood})
    dims = {"EndpointName": live_endpoint.name}
    if ood["share"] is not None:
        metrics.put("OODFlaggedShare", float(ood["share"]), "None", dims)
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
        "embeddings_from_answers": embedded["from_answers"], "embeddings_recomputed": embedded["recomputed"],
        "ood_assessed": ood["assessed"], "ood_flagged": ood["flagged"],  # share: plotted across runs in the UI
        **({"ood_flagged_share": dg.MetadataValue.float(ood["share"])} if ood["share"] is not None else {}),
        **({"clinical_context_share": dg.MetadataValue.float(verdict.context_share.current)}
           if verdict.context_share is not None else {}),
        "report": dg.MetadataValue.md(drift_report_markdown(verdict, psi_plot_data_uri(verdict))),
        "constraint_violations": dg.MetadataValue.path(violations_uri),
    })


class QualityConfig(dg.Config):
    window_hours: float = 24.0 * 7
    min_labelled: int = 30


@dg.asset(group_name="monitoring", kinds={"python"},
          description="Live model quality: ground-truth labels (labels landing location) joined to captured "
          "predictions by inference id; balanced accuracy vs the deployed model's evaluation, as AccuracyDropPoints.")
def model_quality_report(context: dg.AssetExecutionContext, config: QualityConfig, inference_log: InferenceLogHandle,
                         live_endpoint: EndpointHandle, store: ObjectStore, registry: ModelRegistry,
                         metrics: MetricsPublisher, notifier: Notifier) -> dg.Output[ModelQualityHandle]:
    settings = Settings.from_env()
    package = registry.get(settings.model_package_group, live_endpoint.package_version)
    reference = package.metrics.get("balanced_accuracy")
    cursor = store.get_json_or(inference_log.cursor_uri, {"parts": 0})
    since = datetime.now(timezone.utc) - timedelta(hours=config.window_hours)
    rows, _ = load_inference_log(store, cursor, since=since,
                        columns=["inference_time", "inference_id", "model_version", "predicted_class"])
    labels = read_labels(store, settings.labels_uri)  # class codes; unknown labels dropped and counted
    unknown_labels = labels.attrs.get("unknown_labels", {})
    joined = rows[rows["model_version"] == live_endpoint.package_version].merge(labels, on="inference_id")
    n = len(joined)
    acc = bacc = None
    drop = 0.0
    status = "insufficient_data"
    if n >= config.min_labelled and reference is not None:
        acc, bacc = live_accuracy(joined)
        drop = (float(reference) - bacc) * 100.0
        status = "degraded" if drop > 5.0 else "ok"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    table = quality_by_window(joined) if n else pd.DataFrame(columns=list(QUALITY_WINDOW_COLUMNS))
    report = {"status": status, "n_labelled": n, "accuracy": acc, "balanced_accuracy": bacc,
              "reference_balanced_accuracy": reference, "accuracy_drop_points": drop,
              "model_version": live_endpoint.package_version, "unknown_labels": unknown_labels,
              "windows": json.loads(table.to_json(orient="records", date_format="iso"))}
    report_uri = store.put_json("logs", f"monitoring/model_quality/{stamp}/report.json", report)
    if status != "insufficient_data":
        metrics.put("AccuracyDropPoints", drop, dimensions={"EndpointName": live_endpoint.name})
        metrics.put("LiveBalancedAccuracy", float(bacc), dimensions={"EndpointName": live_endpoint.name})
        evaluate_alarms(metrics, notifier, {"AccuracyDropPoints": drop})
    handle = ModelQualityHandle(status=status, n_labelled=n, accuracy=acc, balanced_accuracy=bacc,
                                reference_balanced_accuracy=reference, accuracy_drop=drop,
                                model_version=live_endpoint.package_version, report_uri=report_uri)
    return dg.Output(handle, metadata={
        "accuracy_drop": dg.MetadataValue.float(drop), "n_labelled": n, "status": status,
        "unknown_labels": sum(unknown_labels.values()),
        "balanced_accuracy": dg.MetadataValue.float(bacc if bacc is not None else float("nan")),
        "report": dg.MetadataValue.md(quality_report_markdown(status, n, live_endpoint.package_version, reference,
                                                              table)),
    })


COSTED_JOB_ASSETS: dict[str, str] = {"trained_model": "training", "processed_splits": "processing",
                                     "evaluation_report": "processing", "model_baseline": "processing"}


def _jobs_last_30_days(instance: dg.DagsterInstance, settings: Settings) -> list[JobCost]:
    """Billable seconds of the jobs behind the last 30 days' materializations, on the instance
    types they ran on (AWS) or would run on (local runs, priced as the configured types)."""
    since, jobs = time.time() - 30 * 86400, []
    for asset, kind in COSTED_JOB_ASSETS.items():
        for record in instance.fetch_materializations(dg.AssetKey(asset), limit=500).records:
            if record.timestamp < since:
                continue
            md = record.asset_materialization.metadata if record.asset_materialization else {}
            seconds = getattr(md.get("billable_seconds"), "value", None)
            if seconds:
                itype = settings.training_instance_type if kind == "training" else settings.processing_instance_type
                jobs.append(JobCost(kind, float(seconds), itype))
    return jobs


@dg.asset(group_name="monitoring", kinds={"python"}, deps=["inference_log"],
          description="What the platform costs a month on AWS (endpoint instance-hours, the last 30 days of "
          "training and processing jobs, stored bytes, at list prices): EstimatedMonthlyCostUSD for the $500 "
          "warning, training cost per run and inference cost per 1,000 requests.")
def cost_report(context: dg.AssetExecutionContext, live_endpoint: EndpointHandle, store: ObjectStore,
                settings: Settings, metrics: MetricsPublisher, notifier: Notifier) -> dg.MaterializeResult:
    stored = sum(obj.size for bucket in ("raw", "processed", "models", "logs")
                 for obj in store.list(store.uri(bucket, "")))
    cursor = store.get_json_or(store.uri("logs", CURSOR_KEY), {"parts": 0})
    day, _ = load_inference_log(store, cursor, since=datetime.now(timezone.utc) - timedelta(days=1),
                                columns=["inference_time"])
    cost = monthly_cost(endpoint_instance_type=settings.endpoint_instance_type,
                        endpoint_instances=live_endpoint.instance_count,
                        jobs_last_30_days=_jobs_last_30_days(context.instance, settings),
                        stored_bytes=stored, requests_per_month=len(day) * 30.0)
    metrics.put("EstimatedMonthlyCostUSD", cost.total_usd, "None")
    evaluate_alarms(metrics, notifier, {"EstimatedMonthlyCostUSD": cost.total_usd})
    figures = cost.as_dict()
    return dg.MaterializeResult(metadata={
        **figures, "breakdown": table_markdown([{"item": k, "usd_per_month": v} for k, v in figures.items()
                                                if k.endswith("_usd")])})
