"""Evaluation: test-split metrics of the trained model, computed by the evaluation job through
the same ``code/inference.py`` handlers the endpoint will serve."""


import io
import tempfile
from pathlib import Path
from typing import Optional

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field, create_model

from dermaops_resources.handles import EvaluationHandle, ProcessedSplitsHandle, TrainedModelHandle
from dermaops_resources.jobs import JobRunner, JobSpec
from dermaops_resources.object_store import ObjectStore, join_uri
from dermaops_resources.registry import ModelPackage, ModelRegistry
from dermaops_resources.settings import Settings
from ml_code.evaluation.compare import PROBABILITIES, compare_on_same_images
from ml_code.evaluation.options import DEPRECATED_ALIASES, EvaluationOptions, parse_evaluation_options
from ml_code.options import config_fields

from .executor import USES_ALL_CORES
from .preprocessing import splits_uri_for
from .versioning import code_version
from .ui import job_callbacks, png_markdown, table_markdown

EVALUATE_CODE_VERSION = code_version("ml_code.evaluation.evaluate")
HEADLINE = ("accuracy", "balanced_accuracy", "macro_auc", "macro_f1", "weighted_f1", "macro_precision",
            "macro_recall", "melanoma_sensitivity", "ece")


class EvaluationConfigBase(dg.Config):
    """Deprecated spellings of the old asset config (kept so saved run configs still launch)
    and the mapping to the job's hyperparameters; the option fields come from
    :class:`ml_code.evaluation.options.EvaluationOptions`."""

    bootstrap_samples: Optional[int] = Field(default=None, description="DEPRECATED: use n_bootstrap")
    melanoma_target_sensitivity: Optional[float] = Field(default=None, description="DEPRECATED: use target_sensitivity")

    def hyperparameters(self) -> dict:
        """The job's SM_HPS: every option (the job defaults are the field defaults), with a
        deprecated spelling mapped to its option. Raises dg.Failure on a bad value."""
        values = {name: getattr(self, name) for name in (*EvaluationOptions.model_fields, *DEPRECATED_ALIASES)}
        for old, new in DEPRECATED_ALIASES.items():
            # The typed field always holds a value (its default when unset): an old spelling
            # given next to an untouched new field wins; two different explicit values are refused.
            if values[old] is not None and values[new] == EvaluationOptions.model_fields[new].default:
                values.pop(new)
        try:
            opts = parse_evaluation_options(values)
        except ValueError as exc:
            raise dg.Failure(f"evaluation_report config: {exc}") from exc
        return {k: v for k, v in opts.model_dump().items() if v is not None}  # None: the job decides (tta_views)


EvaluationConfig = create_model(
    "EvaluationConfig", __base__=EvaluationConfigBase, __module__=__name__,
    __doc__="Evaluation options: the fields of ml_code.evaluation.options.EvaluationOptions, same names and defaults.",
    **config_fields(EvaluationOptions, unset_default=False),
)


def _evaluate(context: dg.AssetExecutionContext, config: EvaluationConfig, model_uri: str, model_hash: str,
              processed_splits: ProcessedSplitsHandle, store: ObjectStore, jobs: JobRunner, role: str) -> str:
    """Run the evaluation job on one package and the splits; the report's URI prefix."""
    output_uri = store.uri("models", f"evaluations/{model_hash[:16]}-{processed_splits.content_hash[:12]}-"
                                     f"{EVALUATE_CODE_VERSION}")
    on_log, on_metric, _ = job_callbacks(context, f"evaluate-{role}")
    spec = JobSpec(job_type="processing", name=f"dermaops-evaluate-{model_hash[:12]}-{context.run_id[:8]}",
                   entry_point="ml_code.evaluation.evaluate",
                   inputs={"model": model_uri.rsplit("/", 1)[0], "splits": processed_splits.splits_uri},
                   outputs=["evaluation"], output_uri=output_uri,
                   hyperparameters=config.hyperparameters())
    return jobs.run(spec, store, on_log=on_log, on_metric=on_metric).output_uris["evaluation"]


def champion_trained_on_test(store: ObjectStore, champion: ModelPackage,
                             processed_splits: ProcessedSplitsHandle) -> int | None:
    """How many of the challenger's test images are of lesions in the champion's train split
    (found from the ``data_version`` in its lineage); None when that split is not in the store.

    Zero when both models come from keyed-hash splits of growing data (ml_code.data.splits): old
    lesions never move into test. A champion trained on an earlier permutation split, or a test
    lesion that new rows joined to a training lesion's group, shows here; the champion's figure
    on those images is flattered, so the gate is stricter than it reads."""
    version = champion.lineage.get("data_version", "")
    train_uri = join_uri(splits_uri_for(store, version), "train_index.csv") if version else ""
    if not train_uri or not store.exists(train_uri):
        return None
    trained = pd.read_csv(io.BytesIO(store.get_bytes(train_uri)), usecols=["lesion_id"], dtype=str)["lesion_id"]
    test = pd.read_csv(io.BytesIO(store.get_bytes(join_uri(processed_splits.splits_uri, "test_index.csv"))),
                       usecols=["lesion_id"], dtype=str)["lesion_id"]
    return int(test.isin(set(trained)).sum())


def _champion_comparison(context: dg.AssetExecutionContext, config: EvaluationConfig, report_uri: str,
                         trained_model: TrainedModelHandle, processed_splits: ProcessedSplitsHandle,
                         store: ObjectStore, jobs: JobRunner, registry: ModelRegistry,
                         settings: Settings) -> dict | None:
    """The Approved champion scored through its own package on the challenger's test images,
    compared with a paired bootstrap; None when there is no other Approved package."""
    champion = registry.latest(settings.model_package_group, status="Approved")
    if champion is None or champion.model_hash == trained_model.model_hash:
        return None
    champion_uri = _evaluate(context, config, champion.model_uri, champion.model_hash, processed_splits, store,
                             jobs, "champion")
    with tempfile.TemporaryDirectory(prefix="dermaops-compare-") as tmp:
        y = np.load(store.download_file(join_uri(processed_splits.splits_uri, "test_labels.npy"), Path(tmp) / "y.npy"))
        new = np.load(store.download_file(join_uri(report_uri, PROBABILITIES), Path(tmp) / "new.npy"))
        old = np.load(store.download_file(join_uri(champion_uri, PROBABILITIES), Path(tmp) / "old.npy"))
    opts = config.hyperparameters()
    result = compare_on_same_images(y, new, old, processed_splits.classes, int(opts.get("n_bootstrap", 1000)),
                                    int(opts.get("seed", 0)))
    overlap = champion_trained_on_test(store, champion, processed_splits)
    if overlap:
        context.log.warning(f"the Approved v{champion.version} trained on the lesions of {overlap} of these "
                            f"{result['n_images']} test images; its figure on them is flattered")
    return {"version": champion.version, "model_hash": champion.model_hash,
            "trained_on_test_images": overlap, **result}


@dg.asset(
    group_name="evaluation",
    op_tags=USES_ALL_CORES,  # the evaluation job(s)
    kinds={"pytorch", "sagemaker"},
    code_version=EVALUATE_CODE_VERSION,
    description="Accuracy, balanced multiclass accuracy (ISIC definition), macro/weighted P/R/F1, one-vs-rest "
    "AUC, melanoma sensitivity, calibration, bootstrap CIs, subgroups and Grad-CAM on the lesion-grouped test "
    "split; evaluation.json in SageMaker ModelQuality layout. The Approved champion is scored on the same "
    "test images through its own package, for the registration gate.",
)
def evaluation_report(context: dg.AssetExecutionContext, config: EvaluationConfig, trained_model: TrainedModelHandle,
                      processed_splits: ProcessedSplitsHandle, store: ObjectStore, jobs: JobRunner,
                      registry: ModelRegistry, settings: Settings) -> dg.Output[EvaluationHandle]:
    report_uri = _evaluate(context, config, trained_model.model_uri, trained_model.model_hash, processed_splits,
                           store, jobs, "challenger")
    report = store.get_json(join_uri(report_uri, "report.json"))
    flat = {**report["headline"], **{k: report[k] for k in ("macro_precision", "macro_recall", "log_loss")
                                     if k in report}}
    metrics = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float))}
    if (report.get("melanoma_operating_point") or {}).get("test_sensitivity") is not None:
        metrics["melanoma_sensitivity_at_operating_point"] = float(report["melanoma_operating_point"]["test_sensitivity"])
    champion = _champion_comparison(context, config, report_uri, trained_model, processed_splits, store, jobs,
                                    registry, settings)
    handle = EvaluationHandle(evaluation_uri=join_uri(report_uri, "evaluation.json"), report_uri=report_uri,
                              model_uri=trained_model.model_uri, model_hash=trained_model.model_hash,
                              metrics=metrics, champion=champion)
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
    if report.get("subgroups"):  # age bands, sex, body regions: a model failing on one shows here
        metadata["subgroups"] = table_markdown(report["subgroups"])
        small = [g for g in report["subgroups"] if g["balanced_accuracy"] is not None]
        if small:
            worst = min(small, key=lambda g: g["balanced_accuracy"])
            metadata["worst_subgroup"] = f"{worst['subgroup']} (n={worst['n']}): balanced accuracy {worst['balanced_accuracy']:.3f}"
    for image, alt in (("confusion_matrix.png", "confusion matrix"), ("reliability.png", "reliability diagram"),
                       ("gradcam.png", "Grad-CAM")):
        uri = join_uri(report_uri, image)
        if store.exists(uri):
            metadata[alt.replace(" ", "_").replace("-", "").lower()] = png_markdown(store.get_bytes(uri), alt)
    if champion:  # both on these test images: the gate's comparison, with the interval of the difference
        ba = champion["balanced_accuracy"]
        metadata["champion_version"] = champion["version"]
        metadata["champion_balanced_accuracy_same_images"] = ba["champion"]
        metadata["balanced_accuracy_difference"] = ba["difference"]
        metadata["balanced_accuracy_difference_ci95"] = f"[{ba['ci_low']:.3f}, {ba['ci_high']:.3f}]"
        trained = champion.get("trained_on_test_images")
        metadata["champion_trained_on_test_images"] = "unknown" if trained is None else trained
        metadata["recall_vs_champion"] = table_markdown([{"class": c, **r} for c, r in champion["recall"].items()])
    metadata["evaluation_uri"] = dg.MetadataValue.path(handle.evaluation_uri)
    metadata["model_hash"] = trained_model.model_hash
    return dg.Output(handle, metadata=metadata)
