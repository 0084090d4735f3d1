"""Typed handles of the monitoring assets (baseline, inference log, drift and quality reports).

Like every DermaOps handle they carry URIs and a few numbers, never bytes: the parquet
parts, baselines and reports live in the object store.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class BaselineHandle(BaseModel):
    """Model Monitor baseline of one trained model (statistics, constraints, embeddings)."""

    baseline_uri: str = Field(description="prefix with statistics.json, constraints.json, embeddings.npy, ...")
    model_uri: str
    model_hash: str
    item_count: int
    n_embeddings: int
    embedding_split: str
    features: list[str]
    job_name: str = ""


class InferenceLogHandle(BaseModel):
    """The captured traffic read so far, as validated parquet parts plus model-view image arrays."""

    log_uri: str = Field(description="prefix holding parts/<seq>.parquet and parts/<seq>.npy")
    cursor_uri: str = Field(description="cursor.json: last capture key read, parts, totals")
    capture_prefix_uri: str
    total_records: int
    num_new_records: int
    parts: int
    skipped: dict[str, int] = Field(default_factory=dict)


class DriftReportHandle(BaseModel):
    status: str = Field(description="ok | drift | insufficient_data")
    drift_detected: bool
    drift_score: float
    n_requests: int
    model_version: int
    report_uri: str
    violations_uri: str
    baseline_uri: str
    reasons: list[str] = Field(default_factory=list)


class ModelQualityHandle(BaseModel):
    status: str = Field(description="ok | degraded | insufficient_data")
    n_labelled: int
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    reference_balanced_accuracy: float | None = None
    accuracy_drop: float = Field(description="reference minus live balanced accuracy, in percentage points")
    model_version: int
    report_uri: str
