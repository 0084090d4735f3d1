"""Every setting a user may change without editing code, read from the environment in one place.

``Settings.from_env()`` is the only reader of ``DERMAOPS_*`` variables (plus boto3's region
variables): the factory builds every resource from it, and it is itself the ``settings``
resource, so assets, sensors and the CLI read the same snapshot. Each field names its
variable in :data:`ENV_VARS`; the README's configuration table lists every one, and
``tests/resources/test_settings.py`` fails when code mentions a ``DERMAOPS_*`` name that is
not a field here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
from pydantic import Field

REPO_ROOT = Path(__file__).resolve().parent.parent

BUCKETS = ("raw", "processed", "models", "logs")
TRUE_WORDS = ("1", "true", "yes", "on")
STEP_PROCESSES = ("forkserver", "spawn", "in_process")
"""Values of DERMAOPS_STEP_PROCESSES (see ``dermaops_assets.executor``)."""

#: field -> (environment variable, default as text; "" = unset). Defaults that depend on
#: other settings (paths under DERMAOPS_HOME, bucket names) are filled in by from_env.
ENV_VARS: dict[str, tuple[str, str]] = {
    "backend": ("DERMAOPS_BACKEND", "local"),
    "home": ("DERMAOPS_HOME", ""),
    "raw_uri": ("DERMAOPS_RAW_URI", ""),
    "landing_uri": ("DERMAOPS_LANDING_URI", ""),
    "labels_uri": ("DERMAOPS_LABELS_URI", ""),
    "bucket_prefix": ("DERMAOPS_BUCKET_PREFIX", "dermaops"),
    "kms_key_id": ("DERMAOPS_KMS_KEY_ID", ""),
    "role_arn": ("DERMAOPS_SAGEMAKER_ROLE_ARN", ""),
    "endpoint_role_arn": ("DERMAOPS_SAGEMAKER_ENDPOINT_ROLE_ARN", ""),
    "vpc_subnets": ("DERMAOPS_VPC_SUBNETS", ""),
    "vpc_security_groups": ("DERMAOPS_VPC_SECURITY_GROUPS", ""),
    "network_isolation": ("DERMAOPS_NETWORK_ISOLATION", "false"),
    "job_image_uri": ("DERMAOPS_JOB_IMAGE_URI", ""),
    "inference_image_uri": ("DERMAOPS_INFERENCE_IMAGE_URI", ""),
    "training_instance_type": ("DERMAOPS_TRAINING_INSTANCE_TYPE", "ml.g5.xlarge"),
    "processing_instance_type": ("DERMAOPS_PROCESSING_INSTANCE_TYPE", "ml.m5.xlarge"),
    "endpoint_instance_type": ("DERMAOPS_ENDPOINT_INSTANCE_TYPE", "ml.m5.large"),
    "model_package_group": ("DERMAOPS_MODEL_PACKAGE_GROUP", "dermaops-lesion-classifier"),
    "endpoint_name": ("DERMAOPS_ENDPOINT_NAME", "dermaops-lesion-endpoint"),
    "sns_topic_arn": ("DERMAOPS_SNS_TOPIC_ARN", ""),
    "webhook_url": ("DERMAOPS_ALERT_WEBHOOK_URL", ""),
    "use_spot": ("DERMAOPS_USE_SPOT", "true"),
    "endpoint_port": ("DERMAOPS_ENDPOINT_PORT", "0"),
    "endpoint_host": ("DERMAOPS_ENDPOINT_HOST", "127.0.0.1"),
    "endpoint_token": ("DERMAOPS_ENDPOINT_TOKEN", ""),
    "endpoint_max_inflight": ("DERMAOPS_ENDPOINT_MAX_INFLIGHT", "8"),
    "endpoint_workers": ("DERMAOPS_ENDPOINT_WORKERS", "0"),
    "serve_log_level": ("DERMAOPS_SERVE_LOG_LEVEL", "INFO"),
    "step_processes": ("DERMAOPS_STEP_PROCESSES", "forkserver"),
    "train_recipe": ("DERMAOPS_TRAIN_RECIPE", ""),
    "auto_approve": ("DERMAOPS_AUTO_APPROVE", "false"),
    "retrain_cooldown_hours": ("DERMAOPS_RETRAIN_COOLDOWN_HOURS", "24"),
    "retrain_min_new_labels": ("DERMAOPS_RETRAIN_MIN_NEW_LABELS", "20"),
    "landing_quiet_seconds": ("DERMAOPS_LANDING_QUIET_SECONDS", "60"),
    "landing_max_batch": ("DERMAOPS_LANDING_MAX_BATCH", "5000"),
    "local_num_gpus": ("DERMAOPS_LOCAL_NUM_GPUS", "0"),
    "pseudonym_salt": ("DERMAOPS_PSEUDONYM_SALT", ""),
    "pseudonym_salt_secret_arn": ("DERMAOPS_PSEUDONYM_SALT_SECRET_ARN", ""),
}
#: Per-bucket name overrides, DERMAOPS_<BUCKET>_BUCKET (default ``<bucket_prefix>-<bucket>``).
BUCKET_ENV_VARS: dict[str, str] = {b: f"DERMAOPS_{b.upper()}_BUCKET" for b in BUCKETS}
#: Region, read as boto3 reads it.
REGION_ENV_VARS: tuple[str, ...] = ("AWS_REGION", "AWS_DEFAULT_REGION")


def all_env_var_names() -> set[str]:
    """Every ``DERMAOPS_*`` variable Settings reads."""
    return {name for name, _ in ENV_VARS.values()} | set(BUCKET_ENV_VARS.values())


def _read(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


class Settings(dg.ConfigurableResource):
    """A snapshot of the ``DERMAOPS_*`` environment; also the ``settings`` resource."""

    backend: str = Field(default="local", description="local | aws (DERMAOPS_BACKEND)")
    home: str = Field(default=str(REPO_ROOT / ".dermaops"), description="local state folder (DERMAOPS_HOME)")
    raw_uri: str = ""
    landing_uri: str = ""
    labels_uri: str = ""
    region: str = "us-east-1"
    bucket_prefix: str = "dermaops"
    buckets: dict[str, str] = Field(default_factory=dict)
    kms_key_id: str = ""
    role_arn: str = ""
    endpoint_role_arn: str = Field(default="", description="the endpoint's own role; empty = role_arn")
    vpc_subnets: str = Field(default="", description="comma-separated subnet ids for jobs and the endpoint")
    vpc_security_groups: str = Field(default="", description="comma-separated security group ids")
    network_isolation: bool = False
    job_image_uri: str = Field(default="", description="processing/training image (docker/Dockerfile.training)")
    inference_image_uri: str = Field(default="", description="endpoint image (docker/Dockerfile.inference)")
    training_instance_type: str = "ml.g5.xlarge"
    processing_instance_type: str = "ml.m5.xlarge"
    endpoint_instance_type: str = "ml.m5.large"
    model_package_group: str = "dermaops-lesion-classifier"
    endpoint_name: str = "dermaops-lesion-endpoint"
    sns_topic_arn: str = ""
    webhook_url: str = ""
    use_spot: bool = True
    endpoint_port: int = 0
    endpoint_host: str = Field(default="127.0.0.1", description="address the local endpoint binds; a non-loopback "
                                                                "one needs endpoint_token")
    endpoint_token: str = Field(default="", repr=False, description="secret bearer token of the local endpoint's "
                                                                    "/invocations; empty = none (loopback only)")
    endpoint_max_inflight: int = 8
    endpoint_workers: int = Field(default=0, ge=0, description="worker processes of the local endpoint; "
                                                               "0 = one per core")
    serve_log_level: str = "INFO"
    step_processes: str = Field(default="forkserver", description="how a run starts its steps: forkserver (a "
                                "process per step, forked from one that imported the platform once), spawn "
                                "(a fresh interpreter per step) or in_process (one process, for debugging)")
    train_recipe: str = Field(default="", description="recipe of training runs whose config names none "
                                                      "(sensor, schedule and CLI retrains)")
    auto_approve: bool = False
    retrain_cooldown_hours: float = 24.0
    retrain_min_new_labels: int = Field(default=20, description="new labels (not yet promoted) that start a retrain")
    landing_quiet_seconds: float = 60.0
    landing_max_batch: int = 5000
    local_num_gpus: int = 0
    pseudonym_salt: str = Field(default="", description="secret; empty = the secret below or the salt file")
    pseudonym_salt_secret_arn: str = Field(default="", description="AWS Secrets Manager secret holding the salt")

    @property
    def home_path(self) -> Path:
        return Path(self.home)

    @staticmethod
    def id_list(text: str) -> list[str]:
        """``"a, b,,c"`` -> ``["a", "b", "c"]`` (the comma-separated id lists Terraform prints)."""
        return [part.strip() for part in text.split(",") if part.strip()]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read the environment (or ``env``); a value that does not parse is a ValueError naming
        the variable and the form it needs."""
        env = os.environ if env is None else env
        raw = {field: _read(env, name, default) for field, (name, default) in ENV_VARS.items()}
        backend = raw["backend"].lower()
        if backend not in ("local", "aws"):
            raise ValueError(f"DERMAOPS_BACKEND={backend!r} is not a backend; set it to 'local' (the default) or "
                             "'aws'.")
        home = Path(raw["home"] or str(REPO_ROOT / ".dermaops")).expanduser().resolve()
        values: dict[str, object] = dict(raw, backend=backend, home=str(home))
        values["raw_uri"] = raw["raw_uri"] or str(home / "demo-data")
        values["landing_uri"] = raw["landing_uri"] or str(home / "landing")
        values["labels_uri"] = raw["labels_uri"] or str(home / "labels-landing")
        values["buckets"] = {b: _read(env, var, f"{raw['bucket_prefix']}-{b}") for b, var in BUCKET_ENV_VARS.items()}
        values["region"] = next((env[v].strip() for v in REGION_ENV_VARS if env.get(v, "").strip()), "us-east-1")
        values["step_processes"] = raw["step_processes"].lower()
        if values["step_processes"] not in STEP_PROCESSES:
            raise ValueError(f"DERMAOPS_STEP_PROCESSES={raw['step_processes']!r} is not a way to start steps; set it "
                             f"to one of {', '.join(STEP_PROCESSES)} (default forkserver).")
        for field in ("use_spot", "auto_approve", "network_isolation"):
            values[field] = raw[field].lower() in TRUE_WORDS
        numbers = {"endpoint_port": int, "endpoint_max_inflight": int, "endpoint_workers": int, "landing_max_batch": int,
                   "local_num_gpus": int, "retrain_cooldown_hours": float,
                   "retrain_min_new_labels": int, "landing_quiet_seconds": float}
        for field, kind in numbers.items():
            try:
                values[field] = kind(raw[field])
            except ValueError:
                raise ValueError(f"{ENV_VARS[field][0]} must be {'a whole number' if kind is int else 'a number'}, "
                                 "as in the README's configuration table") from None
        return cls(**values)


def child_environment(drop_prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment for a process this platform starts (a local job, the endpoint server):
    this process's, less variables under ``drop_prefixes``, so the child reads the same settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}
