"""SageMakerModelRegistry against moto: register, list, approve/reject, refused transitions."""

from __future__ import annotations

import uuid

import boto3
import pytest

from dermaops_resources.aws.registry import SageMakerModelRegistry
from dermaops_resources.registry import RegistryError

from .conftest import REGION

pytestmark = pytest.mark.aws


@pytest.fixture()
def registry(moto_server) -> SageMakerModelRegistry:
    return SageMakerModelRegistry(region=REGION)


def test_register_list_approve_reject(registry, store):
    group = f"dermaops-test-{uuid.uuid4().hex[:8]}"
    assert registry.list_packages(group) == []
    model_uri = store.put_bytes("models", f"jobs/train/{group}/model.tar.gz", b"weights")
    eval_uri = store.put_json("models", f"jobs/eval/{group}/evaluation.json",
                              {"multiclass_classification_metrics": {"accuracy": {"value": 0.8}}})
    lineage = {"data_version": "a" * 64, "code_version": "c0ffee", "dagster_run_id": "run-1"}
    v1 = registry.register(group, model_uri, "f" * 64, {"balanced_accuracy": 0.6123456789, "macro_f1": 0.5},
                           eval_uri, lineage)
    v2 = registry.register(group, model_uri, "e" * 64, {"balanced_accuracy": 0.65}, eval_uri, lineage)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.status == "PendingManualApproval" and v1.arn.endswith(f"{group}/1")
    assert v1.metrics == {"balanced_accuracy": 0.6123456789, "macro_f1": 0.5}, "metrics survive the string round trip"
    assert v1.lineage == lineage and v1.model_hash == "f" * 64
    assert v1.model_uri == model_uri and v1.evaluation_uri == eval_uri
    # what an approver sees in SageMaker: container, metrics report, metadata
    desc = boto3.client("sagemaker").describe_model_package(ModelPackageName=v1.arn)
    container = desc["InferenceSpecification"]["Containers"][0]
    assert container["Image"].endswith("pytorch-inference:2.5-cpu-py311")
    assert container["ModelDataUrl"] == model_uri
    assert desc["ModelMetrics"]["ModelQuality"]["Statistics"] == {"ContentType": "application/json",
                                                                   "S3Uri": eval_uri}
    assert desc["CustomerMetadataProperties"]["lineage:dagster_run_id"] == "run-1"

    assert [p.version for p in registry.list_packages(group)] == [2, 1]
    assert registry.latest(group) is None
    approved = registry.set_status(group, 1, "Approved", reason="reviewed by dermatology lead")
    assert approved.status == "Approved" and approved.status_reason == "reviewed by dermatology lead"
    assert registry.latest(group).version == 1
    assert registry.set_status(group, 2, "Rejected").status == "Rejected"
    assert registry.get(group, 2).status == "Rejected"
    with pytest.raises(RegistryError, match="cannot go from Approved to PendingManualApproval"):
        registry.set_status(group, 1, "PendingManualApproval")
    with pytest.raises(RegistryError, match="already Rejected"):
        registry.set_status(group, 2, "Rejected")
    with pytest.raises(RegistryError, match="not an approval status"):
        registry.set_status(group, 2, "Deployed")
    with pytest.raises(RegistryError, match=f"No model package {group} version 9"):
        registry.get(group, 9)
    # Approved -> Rejected retires a model, and it is then no longer the latest approved
    registry.set_status(group, 1, "Rejected", reason="accuracy drop in production")
    assert registry.latest(group) is None


def test_register_refuses_non_s3_models(registry):
    with pytest.raises(RegistryError, match="must be an s3://"):
        registry.register("g", "file:///tmp/model.tar.gz", "h", {}, "", {})
