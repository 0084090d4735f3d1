"""Environment-driven settings: the one place that decides local vs AWS.

Everything a user may change without editing code is read here from environment
variables, so the README can document one table and every resource agrees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parent.parent

Backend = Literal["local", "aws"]
BUCKETS = ("raw", "processed", "models", "logs")


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class Settings:
    """A snapshot of the DERMAOPS_* environment."""

    backend: Backend
    home: Path
    raw_uri: str
    landing_uri: str
    labels_uri: str
    region: str
    buckets: dict[str, str] = field(default_factory=dict)
    kms_key_id: str = ""
    role_arn: str = ""
    training_instance_type: str = "ml.g5.xlarge"
    processing_instance_type: str = "ml.m5.xlarge"
    endpoint_instance_type: str = "ml.m5.large"
    model_package_group: str = "dermaops-lesion-classifier"
    endpoint_name: str = "dermaops-lesion-endpoint"
    sns_topic_arn: str = ""
    webhook_url: str = ""
    use_spot: bool = True
    endpoint_port: int = 0
    train_recipe: str = ""
    """Recipe for training runs whose config names none (sensor, schedule and CLI retrains)."""
    landing_quiet_seconds: float = 60.0
    """A landed batch without a completion marker is complete once the landing sensor's own
    observations see no change in it for this long (DERMAOPS_LANDING_QUIET_SECONDS)."""
    landing_max_files: int = 5000
    """Files of new landed batches the landing sensor lists per tick (DERMAOPS_LANDING_MAX_BATCH);
    more batches wait for the next tick, so a tick stays well inside Dagster's 60 s limit."""
    landing_verify_files: int = 2000
    """Files of already-requested batches re-listed per tick, in rotation, to notice late files
    and rewritten objects (DERMAOPS_LANDING_VERIFY_FILES). A change in an old batch is seen
    within (files landed / this) ticks."""
    sagemaker_executor: str = ""
    """Test-only hook (module:function) that runs job entry points when a fake SageMaker does not."""

    @classmethod
    def from_env(cls) -> "Settings":
        backend = _env("DERMAOPS_BACKEND", "local").lower()
        if backend not in ("local", "aws"):
            raise ValueError(
                f"DERMAOPS_BACKEND={backend!r} is not a backend; set it to 'local' (the default) or 'aws'."
            )
        home = Path(_env("DERMAOPS_HOME", str(REPO_ROOT / ".dermaops"))).expanduser().resolve()
        prefix = _env("DERMAOPS_BUCKET_PREFIX", "dermaops")
        buckets = {b: _env(f"DERMAOPS_{b.upper()}_BUCKET", f"{prefix}-{b}") for b in BUCKETS}
        return cls(
            backend=backend,  # type: ignore[arg-type]
            home=home,
            raw_uri=_env("DERMAOPS_RAW_URI", str(home / "demo-data")),
            landing_uri=_env("DERMAOPS_LANDING_URI", str(home / "landing")),
            labels_uri=_env("DERMAOPS_LABELS_URI", str(home / "labels-landing")),
            region=_env("AWS_REGION", _env("AWS_DEFAULT_REGION", "us-east-1")),
            buckets=buckets,
            kms_key_id=_env("DERMAOPS_KMS_KEY_ID", ""),
            role_arn=_env("DERMAOPS_SAGEMAKER_ROLE_ARN", ""),
            training_instance_type=_env("DERMAOPS_TRAINING_INSTANCE_TYPE", "ml.g5.xlarge"),
            processing_instance_type=_env("DERMAOPS_PROCESSING_INSTANCE_TYPE", "ml.m5.xlarge"),
            endpoint_instance_type=_env("DERMAOPS_ENDPOINT_INSTANCE_TYPE", "ml.m5.large"),
            model_package_group=_env("DERMAOPS_MODEL_PACKAGE_GROUP", "dermaops-lesion-classifier"),
            endpoint_name=_env("DERMAOPS_ENDPOINT_NAME", "dermaops-lesion-endpoint"),
            sns_topic_arn=_env("DERMAOPS_SNS_TOPIC_ARN", ""),
            webhook_url=_env("DERMAOPS_ALERT_WEBHOOK_URL", ""),
            endpoint_port=int(_env("DERMAOPS_ENDPOINT_PORT", "0")),
            use_spot=_env("DERMAOPS_USE_SPOT", "true").lower() not in ("0", "false", "no"),
            train_recipe=_env("DERMAOPS_TRAIN_RECIPE", ""),
            sagemaker_executor=_env("DERMAOPS_SAGEMAKER_EXECUTOR", ""),
            landing_quiet_seconds=float(_env("DERMAOPS_LANDING_QUIET_SECONDS", "60")),
            landing_max_files=int(_env("DERMAOPS_LANDING_MAX_BATCH", "5000")),
            landing_verify_files=int(_env("DERMAOPS_LANDING_VERIFY_FILES", "2000")),
        )
