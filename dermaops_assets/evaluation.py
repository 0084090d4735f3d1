"""Evaluation: test-split metrics of the trained model, computed by the evaluation job through
the same ``code/inference.py`` handlers the endpoint will serve."""


import dagster as dg
from pydantic import Field

from dermaops_resources.handles import EvaluationHandle, ProcessedSplitsHandle, TrainedModelHandle
from dermaops_resources.jobs import JobRunner, JobSpec
from dermaops_resources.object_store import ObjectStore, join_uri

from .versioning import code_version
from .ui import job_callbacks, png_markdown, table_markdown

EVALUATE_CODE_VERSION = code_version("ml_code.evaluation.evaluate")
HEADLINE = ("accuracy", "balanced_accuracy", "macro_auc", "macro_f1", "weighted_f1", "macro_precision",
            "macro_recall", "melanoma_sensitivity", "ece")


class EvaluationConfig(dg.Config):
    melanoma_target_sensitivity: float = Field(default=0.85, description="operating point chosen on validation")
    bootstrap_samples: int = 1000
    tta: bool = Field(default=True, description="average the network over the package's test-time views "
                      "(flips, quarter turns), as the endpoint serves it; false scores one view")


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch", "sagemaker"},
    code_version=EVALUATE_CODE_VERSION,
    description="Accuracy, balanced multiclass accuracy (ISIC definition), macro/weighted P/R/F1, one-vs-rest "
    "AUC, melanoma sensitivity, calibration, bootstrap CIs and Grad-CAM on the lesion-grouped test split; "
    "evaluation.json in SageMaker ModelQuality layout.",
)
def evaluation_report(context: dg.AssetExecutionContext, config: EvaluationConfig, trained_model: TrainedModelHandle,
                      processed_splits: ProcessedSplitsHandle, store: ObjectStore,
                      jobs: JobRunner) -> dg.Output[EvaluationHandle]:
    output_uri = store.uri("models", f"evaluations/{trained_model.model_hash[:16]}-{EVALUATE_CODE_VERSION}")
    on_log, on_metric, _ = job_callbacks(context, "evaluate")
    spec = JobSpec(job_type="processing", name=f"dermaops-evaluate-{trained_model.model_hash[:12]}-{context.run_id[:8]}",
                   entry_point="ml_code.evaluation.evaluate",
                   inputs={"model": trained_model.model_uri.rsplit("/", 1)[0], "splits": processed_splits.splits_uri},
                   outputs=["evaluation"], output_uri=output_uri,
                   hyperparameters={"target_sensitivity": config.melanoma_target_sensitivity,
                                    "n_bootstrap": config.bootstrap_samples, "tta": config.tta})
    result = jobs.run(spec, store, on_log=on_log, on_metric=on_metric)
    report_uri = result.output_uris["evaluation"]
    report = store.get_json(join_uri(report_uri, "report.json"))
    flat = {**report["headline"], **{k: report[k] for k in ("macro_precision", "macro_recall", "log_loss")
                                     if k in report}}
    metrics = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float))}
    handle = EvaluationHandle(evaluation_uri=join_uri(report_uri, "evaluation.json"), report_uri=report_uri,
                              model_uri=trained_model.model_uri, model_hash=trained_model.model_hash,
                              metrics=metrics)
    metadata: dict = {k: float(metrics[k]) for k in HEADLINE if k in metrics}
    image_only = report.get("image_only")
    if image_only:  # the fused model scored without clinical context (a bare image at the endpoint)
        metadata["image_only_balanced_accuracy"] = float(image_only["balanced_accuracy"])
        metadata["image_only_macro_auc"] = float(image_only["macro_auc"])
    for name in ("balanced_accuracy", "macro_auc"):
        ci = report.get("confidence_intervals", {}).get(name)
        if ci:
            metadata[f"{name}_ci95"] = f"[{ci['low']:.3f}, {ci['high']:.3f}]"
    operating_point = report.get("melanoma_operating_point")
    if operating_point:
        metadata["melanoma_operating_point"] = dg.MetadataValue.json(operating_point)
    if report.get("per_class"):
        metadata["per_class"] = table_markdown(report["per_class"])
    for image, alt in (("confusion_matrix.png", "confusion matrix"), ("reliability.png", "reliability diagram"),
                       ("gradcam.png", "Grad-CAM")):
        uri = join_uri(report_uri, image)
        if store.exists(uri):
            metadata[alt.replace(" ", "_").replace("-", "").lower()] = png_markdown(store.get_bytes(uri), alt)
    metadata["evaluation_uri"] = dg.MetadataValue.path(handle.evaluation_uri)
    metadata["model_hash"] = trained_model.model_hash
    return dg.Output(handle, metadata=metadata)
