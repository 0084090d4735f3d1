"""SageMaker champion/challenger against moto: production variants with weights, a shadow variant,
weight changes (UpdateEndpointWeightsAndCapacities, which moto implements) and promotion.

moto 5.2.5 lacks UpdateEndpoint (REFERENCE.md): the deployer's client answers that one call
from moto's own in-process backend (the endpoint takes the named config's variants, as
SageMaker's endpoint does once an update finishes); every other call is real moto over HTTP."""

from __future__ import annotations

import json
import types
import uuid

import boto3
import pytest
from moto.sagemaker.models import sagemaker_backends

from dermaops_resources.endpoint import DeploymentFailed, deployment_timeline

from .conftest import ACCOUNT, REGION
from .test_endpoint import _deployer, _package

pytestmark = pytest.mark.aws


def _emulate_update_endpoint(deployer, seen: list[dict]) -> None:
    def update(params, **_):
        args = json.loads(params["body"])
        seen.append(args)
        backend = sagemaker_backends[ACCOUNT][REGION]
        endpoint = backend.endpoints[args["EndpointName"]]
        config = backend.endpoint_configs[args["EndpointConfigName"]]
        endpoint.endpoint_config_name = config.endpoint_config_name
        endpoint.production_variants = endpoint._process_production_variants(config.production_variants)
        return types.SimpleNamespace(status_code=200, headers={}), {"EndpointArn": endpoint.arn}

    deployer.client("sagemaker").meta.events.register("before-call.sagemaker.UpdateEndpoint", update)


def _weights(name: str) -> dict[str, float]:
    desc = boto3.client("sagemaker").describe_endpoint(EndpointName=name)
    return {v["VariantName"]: v.get("CurrentWeight") for v in desc["ProductionVariants"]}


def test_weighted_challenger_weight_change_and_promotion(store, kms_key_arn):
    name = f"dermaops-cc-{uuid.uuid4().hex[:6]}"
    deployer = _deployer(name, kms_key_arn)
    updates: list[dict] = []
    _emulate_update_endpoint(deployer, updates)
    with pytest.raises(DeploymentFailed, match="deploy a champion first"):
        deployer.set_traffic(_package(store, 2), store, weight=0.1)
    deployer.deploy(_package(store, 1), store)
    with pytest.raises(DeploymentFailed, match="no challenger"):
        deployer.promote(store)

    status = deployer.set_traffic(_package(store, 2), store, weight=0.1)
    assert status["challenger"] == {"variant": "Challenger", "package_version": 2, "shadow": False, "weight": 0.1}
    assert _weights(name) == pytest.approx({"AllTraffic": 0.9, "Challenger": 0.1})
    sm = boto3.client("sagemaker")
    cfg = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName=name)["EndpointConfigName"])
    assert cfg["DataCaptureConfig"]["DestinationS3Uri"] == store.uri("logs", "datacapture")  # every variant captured
    models = {v["VariantName"]: sm.describe_model(ModelName=v["ModelName"]) for v in cfg["ProductionVariants"]}
    assert models["Challenger"]["PrimaryContainer"]["ModelDataUrl"].endswith("t2/model.tar.gz")
    assert deployment_timeline(store, name, "Challenger").versions_at([1e10]).tolist() == [2]

    n = len(updates)
    status = deployer.set_traffic(_package(store, 2), store, weight=0.3)  # same challenger: weights only
    assert len(updates) == n and _weights(name) == pytest.approx({"AllTraffic": 0.7, "Challenger": 0.3})
    assert status["challenger"]["weight"] == pytest.approx(0.3)

    handle = deployer.promote(store)
    assert handle.package_version == 2
    assert "BlueGreenUpdatePolicy" in updates[-1]["DeploymentConfig"]  # the old fleet serves until the new is healthy
    cfg = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName=name)["EndpointConfigName"])
    (only,) = cfg["ProductionVariants"]
    assert only["VariantName"] == "AllTraffic" and only["ModelName"] == models["Challenger"]["ModelName"]
    status = deployer.status()
    assert status["package_version"] == 2 and status["challenger"] is None
    assert deployment_timeline(store, name, "AllTraffic").versions_at([1e10]).tolist() == [2]
    deployer.stop()


def test_shadow_challenger_is_a_shadow_production_variant(store, kms_key_arn):
    name = f"dermaops-sh-{uuid.uuid4().hex[:6]}"
    deployer = _deployer(name, kms_key_arn)
    updates: list[dict] = []
    _emulate_update_endpoint(deployer, updates)
    sent: list[dict] = []
    deployer.client().meta.events.register("provide-client-params.sagemaker.CreateEndpointConfig",
                                           lambda params, **_: sent.append(dict(params)))
    deployer.deploy(_package(store, 1), store)
    status = deployer.set_traffic(_package(store, 3), store, shadow=True)
    assert status["challenger"]["shadow"] is True and status["challenger"]["package_version"] == 3
    # moto keeps no ShadowProductionVariants: what was sent is the evidence here
    config = sent[-1]
    assert [v["VariantName"] for v in config["ProductionVariants"]] == ["AllTraffic"]
    assert [v["VariantName"] for v in config["ShadowProductionVariants"]] == ["Challenger"]
    assert config["DataCaptureConfig"]["EnableCapture"] is True
    assert _weights(name) == {"AllTraffic": 1.0}  # every client answer comes from the champion
    # Promoting a shadow is not exercised here: moto's DescribeEndpointConfig drops
    # ShadowProductionVariants, so the deployer cannot find the shadow's model on moto.
    deployer.stop()
