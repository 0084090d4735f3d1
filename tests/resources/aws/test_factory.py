"""build_aws_resources: the same keys as the local factory, and clear errors for missing settings."""

from __future__ import annotations


import pytest

from dermaops_resources.aws.factory import build_aws_resources
from dermaops_resources.factory import RESOURCE_KEYS
from dermaops_resources.settings import Settings

pytestmark = pytest.mark.aws


def _settings(monkeypatch, tmp_path, **env) -> Settings:
    monkeypatch.setenv("DERMAOPS_BACKEND", "aws")
    monkeypatch.setenv("DERMAOPS_HOME", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def test_aws_factory_builds_every_resource(monkeypatch, tmp_path):
    settings = _settings(monkeypatch, tmp_path, DERMAOPS_KMS_KEY_ID="arn:aws:kms:us-east-1:1:key/k",
                         DERMAOPS_SAGEMAKER_ROLE_ARN="arn:aws:iam::1:role/r", DERMAOPS_BUCKET_PREFIX="acme",
                         DERMAOPS_USE_SPOT="false", DERMAOPS_SAGEMAKER_ENDPOINT_ROLE_ARN="arn:aws:iam::1:role/ep",
                         DERMAOPS_VPC_SUBNETS="subnet-1, subnet-2", DERMAOPS_VPC_SECURITY_GROUPS="sg-9",
                         DERMAOPS_JOB_IMAGE_URI="1.dkr.ecr.us-east-1.amazonaws.com/dermaops-training:v1")
    resources = build_aws_resources(settings)
    assert set(resources) == set(RESOURCE_KEYS)
    store = resources["store"]
    assert store.uri("raw", "a/b.jpg") == "s3://acme-raw/a/b.jpg"
    assert store.split_uri("s3://acme-logs/datacapture/x") == ("logs", "datacapture/x")
    jobs = resources["jobs"]
    assert jobs.volume_kms_key_id == jobs.output_kms_key_id == settings.kms_key_id
    assert jobs.use_spot is False and jobs.subnets == ["subnet-1", "subnet-2"] and jobs.security_group_ids == ["sg-9"]
    assert jobs.image_uri.endswith("dermaops-training:v1") and jobs.container_requirements == []  # baked in
    # the endpoint runs as its own role, never the jobs' (which can read every raw patient image)
    assert resources["endpoint"].role_arn == "arn:aws:iam::1:role/ep" != jobs.role_arn
    assert resources["endpoint"].subnets == ["subnet-1", "subnet-2"]
    assert resources["endpoint"].kms_key_id == settings.kms_key_id


def test_aws_factory_names_the_missing_settings(monkeypatch, tmp_path):
    monkeypatch.delenv("DERMAOPS_KMS_KEY_ID", raising=False)
    monkeypatch.delenv("DERMAOPS_SAGEMAKER_ROLE_ARN", raising=False)
    settings = _settings(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="DERMAOPS_KMS_KEY_ID, DERMAOPS_SAGEMAKER_ROLE_ARN"):
        build_aws_resources(settings)
    ok = settings.model_copy(update={"kms_key_id": "k", "role_arn": "r"})
    assert set(build_aws_resources(ok)) == set(RESOURCE_KEYS)


def test_aws_resources_load_as_dagster_resources(monkeypatch, tmp_path):
    """Config schemas of every field (dicts, lists, optionals) must be valid Dagster config."""
    import dagster as dg

    settings = _settings(monkeypatch, tmp_path, DERMAOPS_KMS_KEY_ID="k", DERMAOPS_SAGEMAKER_ROLE_ARN="r")
    with dg.build_resources(build_aws_resources(settings)) as built:
        assert built.jobs.price_per_hour["ml.g5.xlarge"] == 1.408
        assert built.store.buckets == settings.buckets
