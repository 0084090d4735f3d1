"""SageMakerEndpointDeployer: create (moto) with data capture + auto-scaling; failed blue/green update (Stubber)."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import boto3
import pytest
from botocore.stub import ANY, Stubber

from dermaops_resources.aws import endpoint as endpoint_mod
from dermaops_resources.aws.endpoint import SageMakerEndpointDeployer
from dermaops_resources.endpoint import DeploymentFailed, deployment_record_uri, deployment_timeline
from dermaops_resources.registry import ModelPackage

from .conftest import REGION, ROLE_ARN

pytestmark = pytest.mark.aws


def _package(store, version: int = 1, status: str = "Approved") -> ModelPackage:
    uri = store.put_bytes("models", f"jobs/train/t{version}/model.tar.gz", b"weights")
    now = time.time()
    return ModelPackage(group="dermaops-lesion-classifier", version=version, status=status, created_at=now,
                        updated_at=now, model_uri=uri, model_hash="ab" * 32,
                        arn=f"arn:aws:sagemaker:{REGION}:123456789012:model-package/dermaops-lesion-classifier/{version}")


def _deployer(name: str, kms_key_arn: str) -> SageMakerEndpointDeployer:
    return SageMakerEndpointDeployer(endpoint_name=name, role_arn=ROLE_ARN, region=REGION, kms_key_id=kms_key_arn,
                                     poll_seconds=0.0)


def test_first_deploy_creates_endpoint_with_capture_and_autoscaling(store, kms_key_arn):
    name = f"dermaops-ep-{uuid.uuid4().hex[:6]}"
    deployer = _deployer(name, kms_key_arn)
    assert deployer.status() is None and deployer.stop() is False
    logs: list[str] = []
    handle = deployer.deploy(_package(store, 3), store, on_log=logs.append)
    assert handle.name == name and handle.package_version == 3
    assert handle.capture_uri == store.uri("logs", "datacapture")
    assert handle.url == f"https://runtime.sagemaker.{REGION}.amazonaws.com/endpoints/{name}/invocations"
    assert (handle.min_instances, handle.max_instances) == (1, 5)

    sm = boto3.client("sagemaker")
    ep = sm.describe_endpoint(EndpointName=name)
    assert ep["EndpointStatus"] == "InService"
    cfg = sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
    capture = cfg["DataCaptureConfig"]
    assert capture["EnableCapture"] is True and capture["InitialSamplingPercentage"] == 100
    assert capture["DestinationS3Uri"] == store.uri("logs", "datacapture")
    assert capture["KmsKeyId"] == kms_key_arn
    assert {o["CaptureMode"] for o in capture["CaptureOptions"]} == {"Input", "Output"}
    variant = cfg["ProductionVariants"][0]
    assert variant["VariantName"] == "AllTraffic" and variant["InitialInstanceCount"] == 1
    model = sm.describe_model(ModelName=variant["ModelName"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == handle.model_uri
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert model["PrimaryContainer"]["Image"].endswith("pytorch-inference:2.5-cpu-py311")

    aas = boto3.client("application-autoscaling")
    (target,) = aas.describe_scalable_targets(ServiceNamespace="sagemaker",
                                              ResourceIds=[f"endpoint/{name}/variant/AllTraffic"])["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 5)
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    (policy,) = aas.describe_scaling_policies(ServiceNamespace="sagemaker",
                                              ResourceId=f"endpoint/{name}/variant/AllTraffic")["ScalingPolicies"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"

    (entry,) = store.get_json(deployment_record_uri(store, name, "AllTraffic"))["deployments"]
    assert (entry["version"], entry["kind"], entry["outcome"]) == (3, "create", "in_service")
    assert entry["endpoint_config"] == ep["EndpointConfigName"]
    assert entry["requested_at"] <= entry["finished_at"] <= time.time()

    status = deployer.status()
    assert status["healthy"] is True and status["status"] == "InService"
    assert status["endpoint_config"] == ep["EndpointConfigName"] and status["package_version"] == 3
    assert deployer.stop() is True
    assert deployer.status() is None


def test_only_approved_packages_deploy(store, kms_key_arn):
    with pytest.raises(DeploymentFailed, match="PendingManualApproval"):
        _deployer("dermaops-ep-x", kms_key_arn).deploy(_package(store, 4, "PendingManualApproval"), store)


def _endpoint(name: str, status: str, config: str, reason: str | None = None) -> dict:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    out = {"EndpointName": name, "EndpointArn": f"arn:aws:sagemaker:{REGION}:123456789012:endpoint/{name}",
           "EndpointConfigName": config, "EndpointStatus": status, "CreationTime": now, "LastModifiedTime": now,
           "ProductionVariants": [{"VariantName": "AllTraffic", "CurrentInstanceCount": 2}]}
    if reason:
        out["FailureReason"] = reason
    return out


def _stub_update(stub: Stubber, name: str, old_cfg: str, final: dict, deployer: SageMakerEndpointDeployer):
    arn = f"arn:aws:sagemaker:{REGION}:123456789012"
    stub.add_response("create_model", {"ModelArn": f"{arn}:model/new"},
                      {"ModelName": ANY, "ExecutionRoleArn": ROLE_ARN, "Tags": ANY, "PrimaryContainer": ANY})
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{arn}:endpoint-config/new"},
                      {"EndpointConfigName": ANY, "Tags": ANY, "DataCaptureConfig": ANY,
                       "ProductionVariants": ANY, "KmsKeyId": ANY})
    stub.add_response("describe_endpoint", _endpoint(name, "InService", old_cfg), {"EndpointName": name})
    stub.add_response("update_endpoint", {"EndpointArn": f"{arn}:endpoint/{name}"},
                      {"EndpointName": name, "EndpointConfigName": ANY,
                       "DeploymentConfig": deployer.deployment_config()})
    stub.add_response("describe_endpoint", _endpoint(name, "Updating", old_cfg), {"EndpointName": name})
    stub.add_response("describe_endpoint", final, {"EndpointName": name})


def test_failed_blue_green_update_keeps_previous_config(store, kms_key_arn):
    """moto lacks UpdateEndpoint: SageMaker's side is stubbed; auto-scaling is moto's."""
    name = f"dermaops-ep-{uuid.uuid4().hex[:6]}"
    old_cfg = f"{name}-v1-cfg"
    deployer = _deployer(name, kms_key_arn)
    sm = deployer.client("sagemaker")
    deployer._register_scaling()  # the live endpoint already scales 1..5
    reason = "Alarm dermaops-endpoint-errors went to ALARM during canary; rolled back to previous config"
    with Stubber(sm) as stub:
        _stub_update(stub, name, old_cfg, _endpoint(name, "InService", old_cfg, reason), deployer)
        stub.add_response("describe_endpoint", _endpoint(name, "InService", old_cfg), {"EndpointName": name})
        stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": ANY})
        stub.add_response("delete_model", {}, {"ModelName": ANY})
        with pytest.raises(DeploymentFailed) as err:
            deployer.deploy(_package(store, 2), store)
        stub.assert_no_pending_responses()
    assert reason in str(err.value) and f"Still serving {old_cfg}" in str(err.value)
    (entry,) = store.get_json(deployment_record_uri(store, name, "AllTraffic"))["deployments"]
    assert (entry["version"], entry["kind"], entry["outcome"]) == (2, "update", "rolled_back")
    # the old config still serves and auto-scaling is back on it
    targets = boto3.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[f"endpoint/{name}/variant/AllTraffic"])["ScalableTargets"]
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(1, 5)]


def test_successful_blue_green_update(store, kms_key_arn, monkeypatch):
    name = f"dermaops-ep-{uuid.uuid4().hex[:6]}"
    monkeypatch.setattr(endpoint_mod, "_stamp", lambda: "20260101000000")
    new_cfg = f"{name}-v5-20260101000000-cfg"
    deployer = _deployer(name, kms_key_arn)
    logs: list[str] = []
    with Stubber(deployer.client("sagemaker")) as stub:
        _stub_update(stub, name, f"{name}-v4-cfg", _endpoint(name, "InService", new_cfg), deployer)
        handle = deployer.deploy(_package(store, 5), store, on_log=logs.append)
        stub.assert_no_pending_responses()
    assert handle.package_version == 5 and handle.instance_count == 2
    (entry,) = store.get_json(deployment_record_uri(store, name, "AllTraffic"))["deployments"]
    assert (entry["version"], entry["kind"], entry["outcome"], entry["endpoint_config"]) == \
        (5, "update", "in_service", new_cfg)
    timeline = deployment_timeline(store, name, "AllTraffic")  # v4's lines before the request stay unknown
    assert timeline.versions_at([entry["requested_at"] - 1, entry["finished_at"] + 1]).tolist() == [-1, 5]
    assert any("canary 10%" in line for line in logs)
    canary = deployer.deployment_config()["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert canary["Type"] == "CANARY" and canary["CanarySize"] == {"Type": "CAPACITY_PERCENT", "Value": 10}
    alarms = [a["AlarmName"] for a in deployer.deployment_config()["AutoRollbackConfiguration"]["Alarms"]]
    assert alarms == ["dermaops-endpoint-errors", "dermaops-latency-p95"]


def test_model_runs_as_the_endpoint_role_in_the_vpc_isolated(store, kms_key_arn):
    endpoint_role = "arn:aws:iam::123456789012:role/dermaops-sagemaker-endpoint"
    deployer = SageMakerEndpointDeployer(
        endpoint_name=f"dermaops-vpc-{uuid.uuid4().hex[:6]}", role_arn=endpoint_role, region=REGION,
        kms_key_id=kms_key_arn, poll_seconds=0.0, subnets=["subnet-a"], security_group_ids=["sg-1"],
        network_isolation=True)
    sent: list[dict] = []
    deployer.client().meta.events.register("provide-client-params.sagemaker.CreateModel",
                                           lambda params, **_: sent.append(dict(params)))
    deployer.deploy(_package(store, 4), store)
    (model,) = sent
    assert model["ExecutionRoleArn"] == endpoint_role
    assert model["VpcConfig"] == {"Subnets": ["subnet-a"], "SecurityGroupIds": ["sg-1"]}
    assert model["EnableNetworkIsolation"] is True
