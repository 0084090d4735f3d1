"""Preprocessing: lesion-grouped train/val/test splits as memory-mappable uint8 arrays
(the architecture's SageMaker Processing job)."""


import hashlib
import io
import json

import dagster as dg
import pandas as pd
from pydantic import create_model

from dermaops_resources.handles import ProcessedSplitsHandle, RawImagesHandle
from dermaops_resources.jobs import JobRunner, JobSpec
from dermaops_resources.object_store import ObjectStore, join_uri
from ml_code.data.options import DEFAULTS, PreprocessOptions, output_options, parse_preprocess_options
from ml_code.data.split_reader import previous_input_files
from ml_code.data.splits import SPLITS
from ml_code.options import config_fields

from .executor import USES_ALL_CORES
from .versioning import code_version
from .ui import job_callbacks, table_markdown

PREPROCESS_CODE_VERSION = code_version("ml_code.data.preprocess")


class SplitsConfigBase(dg.Config):
    """Asset-only fields; the option fields come from :class:`ml_code.data.options.PreprocessOptions`.

    The job runs on one instance. Sharding the images across instances (ShardedByS3Key) was
    offered and lost data: every shard read the whole manifest, quarantined the images it
    lacked and wrote the same output keys, so about 1/N of the images survived. It comes back
    only with per-shard outputs and a merge step, tested against one shard byte for byte."""

    def options(self, real_data: bool) -> PreprocessOptions:
        """The job's options as set in this config, unset ones at the job's defaults, except the
        image size, which follows the data: the real-data recipe's 96 px for real images, the
        demo's 64 px for the synthetic set. dg.Failure on a bad value."""
        values = {name: getattr(self, name) for name in PreprocessOptions.model_fields
                  if getattr(self, name) is not None}
        values.setdefault("image_size", REAL_DATA_IMAGE_SIZE if real_data else DEFAULTS.image_size)
        try:
            return parse_preprocess_options(values)
        except ValueError as exc:
            raise dg.Failure(f"processed_splits config: {exc}") from exc


SplitsConfig = create_model(
    "SplitsConfig", __base__=SplitsConfigBase, __module__=__name__,
    __doc__="Preprocessing options: the fields of ml_code.data.options.PreprocessOptions, same names; unset = "
    "the job default (image size: 96 px for real data, 64 px for the synthetic demo).",
    **config_fields(PreprocessOptions, unset_default=True),
)


REAL_DATA_IMAGE_SIZE = 96
"""Square side of real-data splits: what the real-data recipe (RECIPES["ham10000"]) trains at."""


def is_real_data(store: ObjectStore, raw_images: RawImagesHandle) -> bool:
    """False only for the synthetic demo set (every row's ``dx_type`` is ``synthetic``)."""
    manifest = pd.read_csv(io.BytesIO(store.get_bytes(raw_images.manifest_uri)), usecols=["dx_type"])
    return bool(len(manifest)) and not (manifest["dx_type"].astype(str) == "synthetic").all()


def _complete_splits(store: ObjectStore, splits_uri: str) -> bool:
    """Whether every file of an earlier job's splits is in the store, not just its summary.

    Outputs are uploaded file by file (in name order locally, in no promised order by
    SageMaker), so an upload cut short can leave ``summary.json`` without the arrays it
    describes; reusing such a folder would fail every later training run. An incomplete
    folder is recomputed and overwritten instead."""
    return _complete_split_files(store, splits_uri) is not None


def _complete_split_files(store: ObjectStore, splits_uri: str) -> set[str] | None:
    """The file names (relative to ``splits_uri``) of a complete splits folder
    (:func:`_complete_splits`), from one listing; None when the folder is incomplete or absent.
    A rerun picks the files its job stages from this listing, not from a second one."""
    summary_uri = join_uri(splits_uri, "summary.json")
    if not store.exists(summary_uri):
        return None
    summary = store.get_json(summary_uri)
    splits = summary.get("splits", {})
    if "segments" in summary:  # pixels in content-addressed segments (ml_code.data.split_reader)
        names = ["classes.json", *summary["segments"], *(f"{split}_{part}" for split in splits
                                                           for part in ("pixels.json", "labels.npy", "index.csv"))]
    else:  # one pixels file per split, as written before segments
        names = ["classes.json", *(f"{split}_{part}" for split in splits
                                   for part in ("images.npy", "labels.npy", "index.csv"))]
    if not splits:
        return None
    lead = f"{store.split_uri(splits_uri)[1]}/"
    present = {key[len(lead):] for key in store.list_keys(splits_uri) if key.startswith(lead)}
    return present if all(name in present for name in names) else None


def complete_from_previous(store: ObjectStore, splits_uri: str, previous_uri: str | None) -> int:
    """Copy into ``splits_uri`` the earlier segments its splits name but the job did not write
    (``summary.json``'s ``in_output: false``: a rerun names the pixels it already had instead of
    writing them again), from ``previous_uri``, the job's ``previous`` input. Server-side on S3,
    a hard link locally: a 1 % rerun moves 1 % of the pixels. Returns how many were copied;
    dg.Failure when one is missing from ``previous_uri``."""
    summary = store.get_json(join_uri(splits_uri, "summary.json"))
    wanted = [name for name, meta in summary.get("segments", {}).items() if not meta.get("in_output", True)]
    if wanted and not previous_uri:
        raise dg.Failure(f"the splits at {splits_uri} name earlier segments {wanted[:2]} but no earlier splits "
                         "were given; materialize processed_splits again")
    for name in wanted:
        bucket, key = store.split_uri(join_uri(splits_uri, name))
        try:
            store.copy(join_uri(previous_uri, name), bucket, key)
        except FileNotFoundError as exc:
            raise dg.Failure(f"earlier segment {name} is missing from {previous_uri} ({exc}); the earlier splits "
                             "were changed after they were written. Materialize processed_splits again") from exc
    return len(wanted)


def splits_uri_for(store: ObjectStore, data_version: str) -> str:
    """Where the splits of a data version (the content hash's first 16 digits, which a trained
    model records as its ``data_version``) are stored."""
    return join_uri(store.uri("processed", f"splits/{data_version}"), "splits")


def split_rule_text(summary: dict) -> str:
    """How the splits were assigned, for the UI: the rule, its key and each split's interval of
    hash positions (``summary.json``'s ``split_rule``; splits from before it existed say so)."""
    rule = summary.get("split_rule")
    if not rule:
        return f"seeded per-class permutation (before keyed-hash splits), seed {summary.get('seed')}"
    spans = ", ".join(f"{s} [{lo:g}, {hi:g})" for s, (lo, hi) in rule["intervals"].items())
    return (f"{rule['method']}: {rule['hash']} hash (key {rule['key']!r}) of each lesion group's id, "
            f"read as a position in [0, 1): {spans}. A lesion keeps its split as data grows")


def _latest_key(image_size: int) -> str:
    """Where the newest complete splits of one image size are named (a pointer, not data)."""
    return f"splits/latest/{int(image_size)}px.json"


def _previous_splits(store: ObjectStore, image_size: int) -> tuple[str, set[str]] | None:
    """URI and file names of the newest complete splits at ``image_size``, for the job's optional
    ``previous`` input: adding 1 % new images then decodes only those (the job checks the pixels
    version and matches images by content hash). None when there are none or they are incomplete."""
    pointer = store.uri("processed", _latest_key(image_size))
    if not store.exists(pointer):
        return None
    uri = str(store.get_json(pointer).get("splits_uri", ""))
    files = _complete_split_files(store, uri) if uri else None
    return (uri, files) if files is not None else None


def _previous_files(present: set[str]) -> list[str]:
    """The files of the earlier splits (``present``: its file names) that the job reads: its maps
    and indexes, not its pixel segments, which stay in the store and are copied there by
    :func:`complete_from_previous`. Staged alone, a rerun on SageMaker downloads kilobytes instead of
    every earlier pixel. Splits written before segments have no maps; the job then decodes afresh,
    as it always did for them."""
    return [name for name in previous_input_files(SPLITS) if name in present]


@dg.asset(
    group_name="preprocessing",
    op_tags=USES_ALL_CORES,  # the preprocess job decodes in a process per core
    kinds={"python", "sagemaker"},
    code_version=PREPROCESS_CODE_VERSION,
    description="Train/val/test split grouped by lesion_id (and patient), stable as data grows (a keyed hash of "
    "the lesion group decides), every diagnosis in every split; images centre-cropped "
    "and resized into uint8 .npy arrays that training memory-maps. Runs as a processing job.",
)
def processed_splits(context: dg.AssetExecutionContext, config: SplitsConfig, raw_images: RawImagesHandle,
                     store: ObjectStore, jobs: JobRunner) -> dg.Output[ProcessedSplitsHandle]:
    real_data = is_real_data(store, raw_images)
    opts = config.options(real_data)
    params = output_options(opts)  # what the splits depend on: the content hash; num_workers is not
    content_hash = hashlib.sha256(json.dumps(
        [raw_images.manifest_hash, params, PREPROCESS_CODE_VERSION], sort_keys=True).encode()).hexdigest()
    splits_uri = splits_uri_for(store, content_hash[:16])
    output_uri = splits_uri.rsplit("/", 1)[0]
    if _complete_splits(store, splits_uri):
        context.log.info(f"splits for these inputs already exist at {splits_uri}; not recomputing")
    else:
        on_log, on_metric, _ = job_callbacks(context, "preprocess")
        inputs = {"manifest": raw_images.manifest_uri.rsplit("/", 1)[0], "images": raw_images.images_prefix_uri}
        earlier = _previous_splits(store, opts.image_size)
        previous = earlier[0] if earlier else None
        input_files = {}
        if earlier:  # pixels of images it already decoded are named, not decoded (only a cache)
            inputs["previous"] = previous
            input_files["previous"] = _previous_files(earlier[1])
        spec = JobSpec(job_type="processing", name=f"dermaops-preprocess-{content_hash[:12]}",
                       entry_point="ml_code.data.preprocess", inputs=inputs, input_files=input_files,
                       outputs=["splits"], output_uri=output_uri,
                       hyperparameters={k: v for k, v in opts.model_dump().items() if v is not None})
        result = jobs.run(spec, store, on_log=on_log, on_metric=on_metric)
        splits_uri = result.output_uris["splits"]
        copied = complete_from_previous(store, splits_uri, previous)
        if copied:
            context.log.info(f"{copied} earlier pixel segments named again and copied in the store, not rewritten")
    store.put_json("processed", _latest_key(opts.image_size), {"splits_uri": splits_uri})
    summary = store.get_json(join_uri(splits_uri, "summary.json"))
    classes = store.get_json(join_uri(splits_uri, "classes.json"))
    split_counts = {s: {c: int(n) for c, n in counts.items()} for s, counts in summary["splits"].items()}
    handle = ProcessedSplitsHandle(splits_uri=splits_uri, content_hash=content_hash, image_size=opts.image_size,
                                   classes=classes, split_counts=split_counts,
                                   raw_manifest_hash=raw_images.manifest_hash, real_data=real_data)
    rows = [{"dx": c, **{s: split_counts[s].get(c, 0) for s in ("train", "val", "test")}} for c in classes]
    return dg.Output(
        handle,
        data_version=dg.DataVersion(content_hash[:16]),
        metadata={
            "image_size": opts.image_size,
            "real_data": real_data,
            **{f"num_{s}": sum(split_counts[s].values()) for s in ("train", "val", "test")},
            "lesions_per_split": dg.MetadataValue.json(summary.get("lesions", {})),
            "split_rule": split_rule_text(summary),
            "split_counts": table_markdown(rows),
            "splits_uri": dg.MetadataValue.path(splits_uri),
        },
    )
