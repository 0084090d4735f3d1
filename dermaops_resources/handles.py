"""Small typed handles that assets pass to each other.

Bytes (images, shards, weights) live in the object store under content-addressed
keys; what flows along the asset graph is only these JSON-serialisable records:
a URI, a content hash and a few numbers. The handle IO manager stores them as
JSON, so a handle can be read by a human and by any backend.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class RawImagesHandle(BaseModel):
    """The validated, content-addressed raw image set (output of ingestion)."""

    manifest_uri: str = Field(description="CSV manifest: one row per accepted image")
    manifest_hash: str = Field(description="sha256 of the manifest: the data version")
    images_prefix_uri: str = Field(description="prefix holding images as <sha[:2]>/<sha><ext>")
    quarantine_uri: str = Field(description="CSV of rejected rows/images with a reason each")
    num_images: int
    num_quarantined: int
    class_counts: dict[str, int]
    source_uri: str
    source_layout: str = "ham10000"


class ProcessedSplitsHandle(BaseModel):
    """Resized, lesion-grouped train/val/test arrays ready to memory-map."""

    splits_uri: str = Field(description="prefix with {split}_pixels.json, pixels/ segments, {split}_labels.npy, "
                            "{split}_index.csv")
    content_hash: str
    image_size: int
    classes: list[str]
    split_counts: dict[str, dict[str, int]]
    raw_manifest_hash: str
    real_data: bool = Field(default=False, description="not the synthetic demo set: training then defaults to the "
                            "real-data recipe")


class TrainedModelHandle(BaseModel):
    """A model.tar.gz in SageMaker layout (state_dict + code/inference.py)."""

    model_uri: str
    model_hash: str
    arch: str
    image_size: int
    classes: list[str]
    data_version: str
    code_version: str
    history: list[dict[str, Any]] = Field(default_factory=list)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    baseline_uri: str | None = Field(default=None, description="Model Monitor baseline prefix")
    job_name: str = ""
    training_seconds: float = 0.0


class EvaluationHandle(BaseModel):
    """Test-split metrics of one trained model and where the full report lives."""

    evaluation_uri: str = Field(description="evaluation.json in SageMaker ModelQuality layout")
    report_uri: str = Field(description="prefix holding report.json, images and tables")
    model_uri: str
    model_hash: str
    metrics: dict[str, float]
    champion: dict[str, Any] | None = Field(default=None, description="the Approved package scored on the same "
                                            "test images (ml_code.evaluation.compare), when there is one")


class RegisteredPackageHandle(BaseModel):
    """Outcome of conditional registration: a package, or why there is none."""

    registered: bool
    reason: str
    group: str
    version: int | None = None
    package_arn: str | None = None
    status: str | None = None
    model_uri: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class EndpointHandle(BaseModel):
    """A live endpoint serving one registered package."""

    name: str
    url: str
    package_version: int
    package_arn: str | None = None
    model_uri: str
    capture_uri: str = Field(description="data-capture destination (like DataCaptureConfig.DestinationS3Uri); "
                             "files land under <capture_uri>/<name>/<variant>/yyyy/mm/dd/hh/")
    variant: str = "AllTraffic"
    instance_count: int = 1
    min_instances: int = 1
    max_instances: int = 5
