"""Preprocessing: lesion-grouped train/val/test splits as memory-mappable uint8 arrays
(the architecture's SageMaker Processing job)."""


import hashlib
import json

import dagster as dg
from pydantic import Field

from dermaops_resources.handles import ProcessedSplitsHandle, RawImagesHandle
from dermaops_resources.jobs import JobRunner, JobSpec
from dermaops_resources.object_store import ObjectStore, join_uri

from .versioning import code_version
from .ui import job_callbacks, table_markdown

PREPROCESS_CODE_VERSION = code_version("ml_code.data.preprocess")


class SplitsConfig(dg.Config):
    image_size: int = Field(default=64, description="square side in pixels (64-96 on CPU, 224 on GPU)")
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    processing_instances: int = Field(default=1, description="SageMaker instances (images sharded by key)")


def _complete_splits(store: ObjectStore, splits_uri: str) -> bool:
    """Whether every file of an earlier job's splits is in the store, not just its summary.

    Outputs are uploaded file by file (in name order locally, in no promised order by
    SageMaker), so an upload cut short can leave ``summary.json`` without the arrays it
    describes; reusing such a folder would fail every later training run. An incomplete
    folder is recomputed and overwritten instead."""
    summary_uri = join_uri(splits_uri, "summary.json")
    if not store.exists(summary_uri):
        return False
    splits = store.get_json(summary_uri).get("splits", {})
    names = ["classes.json", *(f"{split}_{part}" for split in splits
                               for part in ("images.npy", "labels.npy", "index.csv"))]
    return bool(splits) and all(store.exists(join_uri(splits_uri, name)) for name in names)


@dg.asset(
    group_name="preprocessing",
    kinds={"python", "sagemaker"},
    code_version=PREPROCESS_CODE_VERSION,
    description="Train/val/test split grouped by lesion_id and stratified by diagnosis; images centre-cropped "
    "and resized into uint8 .npy arrays that training memory-maps. Runs as a processing job.",
)
def processed_splits(context: dg.AssetExecutionContext, config: SplitsConfig, raw_images: RawImagesHandle,
                     store: ObjectStore, jobs: JobRunner) -> dg.Output[ProcessedSplitsHandle]:
    params = {"image_size": config.image_size, "val_fraction": config.val_fraction,
              "test_fraction": config.test_fraction, "seed": config.seed}
    content_hash = hashlib.sha256(json.dumps(
        [raw_images.manifest_hash, params, PREPROCESS_CODE_VERSION], sort_keys=True).encode()).hexdigest()
    output_uri = store.uri("processed", f"splits/{content_hash[:16]}")
    splits_uri = join_uri(output_uri, "splits")
    if _complete_splits(store, splits_uri):
        context.log.info(f"splits for these inputs already exist at {splits_uri}; not recomputing")
    else:
        on_log, on_metric, _ = job_callbacks(context, "preprocess")
        spec = JobSpec(job_type="processing", name=f"dermaops-preprocess-{content_hash[:12]}",
                       entry_point="ml_code.data.preprocess",
                       inputs={"manifest": raw_images.manifest_uri.rsplit("/", 1)[0],
                               "images": raw_images.images_prefix_uri},
                       outputs=["splits"], output_uri=output_uri, hyperparameters=params,
                       instance_count=config.processing_instances,
                       sharded_inputs=["images"] if config.processing_instances > 1 else [])
        result = jobs.run(spec, store, on_log=on_log, on_metric=on_metric)
        splits_uri = result.output_uris["splits"]
    summary = store.get_json(join_uri(splits_uri, "summary.json"))
    classes = store.get_json(join_uri(splits_uri, "classes.json"))
    split_counts = {s: {c: int(n) for c, n in counts.items()} for s, counts in summary["splits"].items()}
    handle = ProcessedSplitsHandle(splits_uri=splits_uri, content_hash=content_hash, image_size=config.image_size,
                                   classes=classes, split_counts=split_counts,
                                   raw_manifest_hash=raw_images.manifest_hash)
    rows = [{"dx": c, **{s: split_counts[s].get(c, 0) for s in ("train", "val", "test")}} for c in classes]
    return dg.Output(
        handle,
        data_version=dg.DataVersion(content_hash[:16]),
        metadata={
            "image_size": config.image_size,
            **{f"num_{s}": sum(split_counts[s].values()) for s in ("train", "val", "test")},
            "lesions_per_split": dg.MetadataValue.json(summary.get("lesions", {})),
            "split_counts": table_markdown(rows),
            "splits_uri": dg.MetadataValue.path(splits_uri),
        },
    )
