"""Ingestion: the raw dermoscopy images, validated and content-addressed (S3 raw bucket box)."""

import dagster as dg
from pydantic import Field

from dermaops_resources.handles import RawImagesHandle
from dermaops_services.ingestion import ingest_dataset, pseudonym_salt
from dermaops_services.labelling import labelled_capture_batches
from dermaops_resources.object_store import ObjectStore
from dermaops_services.raw_source import landed_batches
from dermaops_resources.settings import Settings
from ml_code.data import ingest, near_duplicates

from .executor import USES_ALL_CORES
from .versioning import code_version
from .ui import table_markdown


class RawImagesConfig(dg.Config):
    source_uri: str = Field(default="", description="dataset folder or s3:// prefix; default DERMAOPS_RAW_URI")
    include_landed: bool = Field(default=True, description="also ingest every batch landed under "
                                 "DERMAOPS_LANDING_URI (one folder per batch, in either layout)")
    include_labelled_captures: bool = Field(default=True, description="also ingest the labelled-capture batches "
                                            "(reviewed endpoint requests, written by labelled_captures)")
    max_file_mb: float = Field(default=20.0, description="larger image files are quarantined")
    min_side_px: int = 32
    max_side_px: int = 8192


@dg.asset(
    group_name="ingestion",
    op_tags=USES_ALL_CORES,  # decodes every new image in a process per core
    kinds={"python", "s3"},
    code_version=code_version("ml_code.data.ingest", "dermaops_services.ingestion"),
    deps=["labelled_captures"],
    description="Dermoscopy images and metadata from DERMAOPS_RAW_URI (HAM10000 or ISIC layout) plus every "
    "batch landed under DERMAOPS_LANDING_URI and every labelled-capture batch, validated with a pandera schema and per-image checks; bad rows "
    "and files are quarantined with a reason; good images stored once under content-addressed keys. Data "
    "version = manifest hash.",
)
def raw_images(context: dg.AssetExecutionContext, config: RawImagesConfig, store: ObjectStore) -> dg.Output[RawImagesHandle]:
    settings = Settings.from_env()
    limits = ingest.ImageLimits(max_bytes=int(config.max_file_mb * 1024 * 1024),
                                min_side=config.min_side_px, max_side=config.max_side_px)
    batches = landed_batches(settings.landing_uri) if config.include_landed else []
    labelled = labelled_capture_batches(store) if config.include_labelled_captures else []
    handle, stats = ingest_dataset([config.source_uri or settings.raw_uri, *batches, *labelled], store,
                                   pseudonym_salt(settings.home_path, settings.pseudonym_salt,
                                                  settings.pseudonym_salt_secret_arn, settings.region), limits, log=context.log.info)
    context.log.info(f"{handle.num_images} images accepted ({stats.copied} newly stored, "
                     f"{stats.already_stored} already in the store), {handle.num_quarantined} quarantined")
    # near-duplicate pictures (perceptual hash): the splitter keeps each pair in one split; shown for review
    pairs = near_duplicates.pairs_table(stats.manifest.sort_values("image_id", kind="mergesort"))  # as published
    cross = pairs[pairs["lesion_id_a"] != pairs["lesion_id_b"]]
    return dg.Output(
        handle,
        data_version=dg.DataVersion(handle.manifest_hash),
        metadata={
            "num_images": handle.num_images,
            "num_quarantined": handle.num_quarantined,
            "newly_stored": stats.copied,
            "landed_batches": len(batches),
            "labelled_capture_batches": len(labelled),
            # A landed batch whose metadata could not be read is left out whole; shown by its
            # reference (a salted hash: folder names may name a patient), never by name.
            "quarantined_batches": len(stats.quarantined_batches),
            "landed_batches_still_arriving": len(stats.arriving_batches),
            "quarantined_batch_reasons": table_markdown(
                [{"batch": ref, "reason": reason.replace("|", "\\|")} for ref, reason in stats.quarantined_batches]),
            "class_counts": table_markdown([{"dx": k, "images": v} for k, v in handle.class_counts.items()]),
            "layout": handle.source_layout,
            "manifest_uri": dg.MetadataValue.path(handle.manifest_uri),
            "quarantine_uri": dg.MetadataValue.path(handle.quarantine_uri),
            "manifest_hash": handle.manifest_hash,
            "near_duplicate_pairs": pairs.attrs["pairs"],  # exact, though the table stops at PAIR_ROWS
            "near_duplicate_pairs_across_lesions": pairs.attrs["cross_lesion_pairs"],
            "near_duplicates": table_markdown(cross.head(50).to_dict("records")),  # across lesions, closest first
            # > PAIR_ROWS pairs: the table then holds the cross-lesion pairs first
            "near_duplicate_table_truncated": dg.MetadataValue.bool(pairs.attrs["truncated"]),
        },
    )
