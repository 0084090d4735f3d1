"""Batch prediction: a folder (or S3 prefix) of lesion images scored by a registered package
in a processing job (``ml_code.evaluation.batch_predict``), with ISIC-format predictions, a
per-image record (top class, probabilities, OOD score, package and data versions) and the
undecodable files listed with their reason. Resumable: a rerun on the same input with the same
package scores only images it has not scored (records keyed by content hash)."""

import hashlib
from pathlib import Path
from collections.abc import Iterator
from typing import Optional

import dagster as dg
from pydantic import Field

from dermaops_resources.endpoint import EndpointDeployer
from dermaops_resources.jobs import JobRunner, JobSpec
from dermaops_resources.object_store import ObjectStore, join_uri
from dermaops_resources.registry import ModelRegistry, RegistryError
from dermaops_resources.settings import Settings

from .executor import USES_ALL_CORES
from .ui import job_callbacks, table_markdown
from .versioning import code_version


class BatchPredictionConfig(dg.Config):
    input_uri: Optional[str] = Field(
        default=None, description="folder, file:// URI or s3:// prefix of the JPEG/PNG images; unset: nothing "
        "to score, the asset is skipped (so `--select '*'` runs without batch configuration)")
    metadata_uri: Optional[str] = Field(default=None, description="optional CSV (image id, age, sex, anatom_site)")
    package_version: Optional[int] = Field(default=None, description="registry version; default: the one serving")


def _stage(store: ObjectStore, uri: str, key: str) -> str:
    """A store URI the job can read for ``uri``: an s3:// or in-store URI as is, a local folder
    or file (outside the store) copied under ``raw/batch-inputs/<key>``."""
    if uri.startswith("s3://"):
        return uri
    path = Path(uri.removeprefix("file://"))
    try:
        store.split_uri(path.resolve().as_uri())
        return path.resolve().as_uri()
    except ValueError:
        pass
    if not path.exists():
        raise dg.Failure(f"batch_predictions: {uri} does not exist; give a folder of JPEG/PNG images or an s3:// prefix")
    if path.is_file():
        return store.put_file("raw", f"batch-inputs/{key}/{path.name}", path).rsplit("/", 1)[0]
    return store.upload_dir("raw", f"batch-inputs/{key}", path)


@dg.asset(group_name="evaluation", kinds={"pytorch", "sagemaker"}, op_tags=USES_ALL_CORES,  # the batch transform job
          code_version=code_version("ml_code.evaluation.batch_predict"),
          description="Predictions for a folder or S3 prefix of images by a registered package (default: the one "
          "serving): ISIC submission CSV, per-image records with OOD score and lineage, undecodable files with "
          "their reason. Reruns skip images already scored by the same package. Skipped without input_uri.",
          output_required=False)
def batch_predictions(context: dg.AssetExecutionContext, config: BatchPredictionConfig, store: ObjectStore,
                      jobs: JobRunner, registry: ModelRegistry, endpoint: EndpointDeployer) -> Iterator[dg.MaterializeResult]:
    if not config.input_uri:
        context.log.info("batch_predictions: no input_uri configured; nothing to score")
        return  # a generator that yields nothing: not materialized (`--select '*'` carries no batch input)
    group = Settings.from_env().model_package_group
    version = config.package_version
    if version is None:
        version = (endpoint.status() or {}).get("package_version")
    if version is None:
        raise dg.Failure("batch_predictions: no package_version given and no endpoint serving; set package_version")
    try:
        package = registry.get(group, int(version))
    except RegistryError as exc:
        raise dg.Failure(f"batch_predictions: {exc}") from exc
    key = hashlib.sha256(config.input_uri.encode()).hexdigest()[:16]
    inputs = {"model": package.model_uri.rsplit("/", 1)[0], "images": _stage(store, config.input_uri, f"{key}/images")}
    if config.metadata_uri:
        inputs["metadata"] = _stage(store, config.metadata_uri, f"{key}/metadata")
    output_uri = store.uri("models", f"batch-predictions/{key}-v{package.version}")
    previous = join_uri(output_uri, "predictions")
    if store.exists(join_uri(previous, "records.jsonl")):
        inputs["previous"] = previous
    on_log, on_metric, _ = job_callbacks(context, "batch-predict")
    spec = JobSpec(job_type="processing", name=f"dermaops-batch-{key[:12]}-{context.run_id[:8]}",
                   entry_point="ml_code.evaluation.batch_predict", inputs=inputs, outputs=["predictions"],
                   output_uri=output_uri, hyperparameters={
                       "package_version": package.version, "model_hash": package.model_hash,
                       "data_version": package.lineage.get("data_version", "")})
    out = jobs.run(spec, store, on_log=on_log, on_metric=on_metric).output_uris["predictions"]
    summary = store.get_json(join_uri(out, "summary.json"))
    yield dg.MaterializeResult(metadata={
        **{k: summary[k] for k in ("images", "scored", "reused", "skipped", "ood_flagged")},
        "package_version": package.version, "predictions": dg.MetadataValue.path(join_uri(out, "predictions.csv")),
        "records": dg.MetadataValue.path(join_uri(out, "records.jsonl")),
        "summary": table_markdown([{"figure": k, "value": v} for k, v in summary.items()]),
    })
