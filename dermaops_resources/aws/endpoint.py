"""SageMaker real-time endpoint for an Approved model package, with data capture and auto-scaling.

First deployment: CreateModel -> CreateEndpointConfig -> CreateEndpoint. Later ones:
UpdateEndpoint with a blue/green *canary* traffic shift and automatic rollback on the
endpoint-errors and latency alarms (``dermaops_resources.metrics.ALARMS``; created by
``CloudWatchMetrics.ensure_alarms``, which must run first). SageMaker keeps the old fleet
serving until the new one is healthy, so requests in flight never fail; if the update is
rolled back or fails, ``DeploymentFailed`` carries SageMaker's FailureReason and the old
endpoint config keeps serving.

Data capture (100 %, input and output) goes to the logs bucket under ``datacapture/``,
KMS-encrypted: the monitoring assets read it from there exactly as they read the local
endpoint's capture files. Auto-scaling: 1..5 instances, target tracking on
``SageMakerVariantInvocationsPerInstance``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import Field, PrivateAttr

from ..endpoint import DeploymentFailed, EndpointDeployer, record_deployment
from ..handles import EndpointHandle
from ..metrics import ALARMS
from ..object_store import ObjectStore
from ..registry import ModelPackage
from . import aws_client, is_not_found

VARIANT = "AllTraffic"
CHALLENGER = "Challenger"
TRANSITIONAL = ("Creating", "Updating", "SystemUpdating", "RollingBack", "UpdateRollbackFailed")
# Auto-rollback watches the endpoint-health alarms of the architecture's thresholds.
ROLLBACK_ALARMS = tuple(a.name for a in ALARMS if a.metric in ("EndpointErrors", "EndpointLatencyMs"))



def _finished_at(requested_at: float, desc: dict[str, Any] | None) -> float:
    """When a deployment ended: SageMaker's LastModifiedTime of the endpoint when it lies between
    the request and now (the status change), else now (we saw it end no later than this)."""
    now = time.time()
    modified = (desc or {}).get("LastModifiedTime")
    if modified is not None and hasattr(modified, "timestamp") and requested_at <= modified.timestamp() <= now:
        return float(modified.timestamp())
    return now


def _stamp() -> str:
    """UTC timestamp that makes each deployment's model/config names unique (and sortable)."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime())


class SageMakerEndpointDeployer(EndpointDeployer):
    """Creates / blue-green updates one SageMaker endpoint and its auto-scaling policy."""

    endpoint_name: str = "dermaops-lesion-endpoint"
    role_arn: str = Field(default="", description="the endpoint's own execution role: model packages in, data capture "
                          "out, nothing on raw or processed data (DERMAOPS_SAGEMAKER_ENDPOINT_ROLE_ARN)")
    region: str = "us-east-1"
    subnets: list[str] = Field(default_factory=list, description="VPC subnets of the model (DERMAOPS_VPC_SUBNETS)")
    security_group_ids: list[str] = Field(default_factory=list, description="DERMAOPS_VPC_SECURITY_GROUPS")
    network_isolation: bool = Field(default=False, description="no outbound network for the model container")
    endpoint_url: str | None = None
    instance_type: str = "ml.m5.large"
    framework_version: str = "2.5"
    py_version: str = "py311"
    inference_image_uri: str = Field(default="", description="override; default: AWS PyTorch inference image")
    kms_key_id: str = Field(default="", description="encrypts the endpoint volume and the captured data")
    capture_prefix: str = "datacapture"
    capture_sampling_percent: int = 100
    min_instances: int = 1
    max_instances: int = 5
    target_invocations_per_instance: float = 100.0
    scale_in_cooldown_seconds: int = 300
    scale_out_cooldown_seconds: int = 60
    canary_percent: int = 10
    canary_wait_seconds: int = 300
    termination_wait_seconds: int = 120
    rollback_alarm_names: list[str] = Field(default_factory=lambda: list(ROLLBACK_ALARMS))
    poll_seconds: float = 30.0
    max_wait_seconds: int = 3600
    max_attempts: int = 10

    _clients: dict = PrivateAttr(default_factory=dict)

    def client(self, service: str = "sagemaker") -> Any:
        if service not in self._clients:
            self._clients[service] = aws_client(service, self.region, self.endpoint_url, self.max_attempts)
        return self._clients[service]

    @property
    def resource_id(self) -> str:
        return f"endpoint/{self.endpoint_name}/variant/{VARIANT}"

    @property
    def invocation_url(self) -> str:
        return f"https://runtime.sagemaker.{self.region}.amazonaws.com/endpoints/{self.endpoint_name}/invocations"

    def inference_image(self) -> str:
        if self.inference_image_uri:
            return self.inference_image_uri
        from sagemaker.core import image_uris

        return image_uris.retrieve(framework="pytorch", region=self.region, version=self.framework_version,
                                   py_version=self.py_version, instance_type=self.instance_type,
                                   image_scope="inference")

    def _describe(self) -> dict[str, Any] | None:
        try:
            return self.client().describe_endpoint(EndpointName=self.endpoint_name)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise

    def _wait(self, log: Callable[[str], None]) -> dict[str, Any]:
        deadline = time.monotonic() + self.max_wait_seconds
        last = ""
        while True:
            desc = self._describe()
            if desc is None:
                raise DeploymentFailed(f"Endpoint {self.endpoint_name} disappeared while deploying.")
            status = desc["EndpointStatus"]
            if status != last:
                log(f"endpoint {self.endpoint_name}: {status}")
                last = status
            if status not in TRANSITIONAL:
                return desc
            if time.monotonic() > deadline:
                raise DeploymentFailed(f"Endpoint {self.endpoint_name} still {status} after "
                                       f"{self.max_wait_seconds}s; check it in the SageMaker console.")
            time.sleep(self.poll_seconds)

    # -- deploy ---------------------------------------------------------------------------
    def deploy(self, package: ModelPackage, store: ObjectStore,
               on_log: Callable[[str], None] | None = None) -> EndpointHandle:
        log = on_log or (lambda line: None)
        if package.status != "Approved":
            raise DeploymentFailed(f"Model package {package.group} v{package.version} is {package.status}; "
                                   "only Approved packages are deployed (`dermaops registry approve`).")
        if not self.role_arn:
            raise ValueError("SageMakerEndpointDeployer.role_arn is empty; set DERMAOPS_SAGEMAKER_ENDPOINT_ROLE_ARN "
                             "(terraform output sagemaker_endpoint_role_arn).")
        sm = self.client()
        capture_uri = store.uri("logs", self.capture_prefix)
        stamp = _stamp()
        base = f"{self.endpoint_name[:36]}-v{package.version}-{stamp}"
        model_name, config_name = base, f"{base}-cfg"
        tags = self._package_tags(package)

        self._create_model(package, model_name, tags)
        capture: dict[str, Any] = {
            "EnableCapture": True, "InitialSamplingPercentage": self.capture_sampling_percent,
            "DestinationS3Uri": capture_uri,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
        }
        config: dict[str, Any] = {
            "EndpointConfigName": config_name, "Tags": tags, "DataCaptureConfig": capture,
            "ProductionVariants": [{"VariantName": VARIANT, "ModelName": model_name, "InitialInstanceCount": 1,
                                    "InstanceType": self.instance_type, "InitialVariantWeight": 1.0}],
        }
        if self.kms_key_id:
            capture["KmsKeyId"] = self.kms_key_id
            config["KmsKeyId"] = self.kms_key_id
        sm.create_endpoint_config(**config)

        current = self._describe()
        if current is not None and current["EndpointStatus"] in TRANSITIONAL:
            log(f"endpoint {self.endpoint_name} is {current['EndpointStatus']}; waiting before deploying")
            current = self._wait(log)
        if current is not None and current["EndpointStatus"] == "Failed":
            # Nothing is serving from a Failed endpoint: replace it rather than update it.
            log(f"endpoint {self.endpoint_name} is Failed ({current.get('FailureReason', '')}); recreating it")
            self._deregister_scaling()
            sm.delete_endpoint(EndpointName=self.endpoint_name)
            self._wait_deleted()
            current = None

        def record(kind: str, requested_at: float, desc: dict[str, Any] | None, outcome: str) -> None:
            record_deployment(store, self.endpoint_name, VARIANT, version=package.version,
                              endpoint_config=config_name, kind=kind, requested_at=requested_at,
                              finished_at=_finished_at(requested_at, desc), outcome=outcome)

        if current is None:
            log(f"creating endpoint {self.endpoint_name} with {config_name}")
            requested_at = time.time()
            sm.create_endpoint(EndpointName=self.endpoint_name, EndpointConfigName=config_name, Tags=tags)
            desc = self._wait(log)
            record("create", requested_at, desc, "in_service" if desc["EndpointStatus"] == "InService" else "failed")
            if desc["EndpointStatus"] != "InService":
                self._cleanup(model_name, config_name)
                raise DeploymentFailed(f"Endpoint {self.endpoint_name} ended {desc['EndpointStatus']}: "
                                       f"{desc.get('FailureReason') or 'no reason given'}")
        else:
            previous = current["EndpointConfigName"]
            log(f"updating endpoint {self.endpoint_name}: {previous} -> {config_name} "
                f"(canary {self.canary_percent}%, rollback alarms {', '.join(self.rollback_alarm_names)})")
            # Application Auto Scaling must let go of the variant during an update; it is
            # registered again below on whichever config ends up serving.
            self._deregister_scaling()
            requested_at = time.time()
            updating = False
            try:
                sm.update_endpoint(EndpointName=self.endpoint_name, EndpointConfigName=config_name,
                                   DeploymentConfig=self.deployment_config())
                updating = True
                desc = self._wait(log)
            except BaseException:
                if updating:  # the canary may be live: no line from now on can be attributed until the next deploy
                    record("update", requested_at, None, "interrupted")
                self._register_scaling_if_serving()
                raise
            went_live = desc["EndpointStatus"] == "InService" and desc["EndpointConfigName"] == config_name
            record("update", requested_at, desc, "in_service" if went_live else "rolled_back")
            if desc["EndpointStatus"] != "InService" or desc["EndpointConfigName"] != config_name:
                reason = desc.get("FailureReason") or "rolled back by SageMaker (alarm or health check)"
                self._register_scaling_if_serving()
                self._cleanup(model_name, config_name)
                serving = desc.get("EndpointConfigName", previous)
                raise DeploymentFailed(f"Update of {self.endpoint_name} to package v{package.version} failed "
                                       f"({desc['EndpointStatus']}): {reason}. Still serving {serving}.")
        self._register_scaling()
        log(f"endpoint {self.endpoint_name} InService with package v{package.version}; "
            f"auto-scaling {self.min_instances}..{self.max_instances}")
        variants = desc.get("ProductionVariants") or [{}]
        return EndpointHandle(
            name=self.endpoint_name, url=self.invocation_url, package_version=package.version,
            package_arn=package.arn or None, model_uri=package.model_uri, capture_uri=capture_uri,
            variant=VARIANT, instance_count=int(variants[0].get("CurrentInstanceCount") or 1),
            min_instances=self.min_instances, max_instances=self.max_instances)

    def _package_tags(self, package: ModelPackage) -> list[dict[str, str]]:
        return [{"Key": "dermaops:package_version", "Value": str(package.version)},
                {"Key": "dermaops:package_arn", "Value": package.arn or "-"},
                {"Key": "dermaops:model_hash", "Value": package.model_hash[:64] or "-"}]

    def _create_model(self, package: ModelPackage, model_name: str,
                      tags: list[dict[str, str]] | None = None) -> str:
        """CreateModel for ``package`` (the PyTorch inference image, in the VPC when configured)."""
        model: dict[str, Any] = dict(ModelName=model_name, ExecutionRoleArn=self.role_arn,
                                     Tags=tags or self._package_tags(package), PrimaryContainer={
            "Image": self.inference_image(), "ModelDataUrl": package.model_uri,
            "Environment": {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                            "SAGEMAKER_CONTAINER_LOG_LEVEL": "20", "SAGEMAKER_REGION": self.region}})
        if self.subnets:
            model["VpcConfig"] = {"Subnets": list(self.subnets), "SecurityGroupIds": list(self.security_group_ids)}
        if self.network_isolation:
            model["EnableNetworkIsolation"] = True
        self.client().create_model(**model)
        return model_name

    def deployment_config(self) -> dict[str, Any]:
        return {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {
                    "Type": "CANARY",
                    "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": self.canary_percent},
                    "WaitIntervalInSeconds": self.canary_wait_seconds,
                },
                "TerminationWaitInSeconds": self.termination_wait_seconds,
                "MaximumExecutionTimeoutInSeconds": self.max_wait_seconds,
            },
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": n} for n in self.rollback_alarm_names]},
        }

    def _cleanup(self, model_name: str, config_name: str) -> None:
        """Remove the rejected config and model so the console shows what serves, not what failed."""
        sm = self.client()
        for call, kwargs in ((sm.delete_endpoint_config, {"EndpointConfigName": config_name}),
                             (sm.delete_model, {"ModelName": model_name})):
            try:
                call(**kwargs)
            except Exception:  # noqa: BLE001 - cosmetic; never hide the deployment error
                pass

    def _wait_deleted(self) -> None:
        deadline = time.monotonic() + self.max_wait_seconds
        while self._describe() is not None:
            if time.monotonic() > deadline:
                raise DeploymentFailed(f"Endpoint {self.endpoint_name} was not deleted in {self.max_wait_seconds}s.")
            time.sleep(self.poll_seconds)

    # -- auto-scaling ---------------------------------------------------------------------
    def _register_scaling(self) -> None:
        aas = self.client("application-autoscaling")
        aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=self.resource_id,
                                     ScalableDimension="sagemaker:variant:DesiredInstanceCount",
                                     MinCapacity=self.min_instances, MaxCapacity=self.max_instances)
        aas.put_scaling_policy(
            PolicyName=f"{self.endpoint_name}-invocations-target", ServiceNamespace="sagemaker",
            ResourceId=self.resource_id, ScalableDimension="sagemaker:variant:DesiredInstanceCount",
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": self.target_invocations_per_instance,
                "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                "ScaleInCooldown": self.scale_in_cooldown_seconds,
                "ScaleOutCooldown": self.scale_out_cooldown_seconds,
            })

    def _register_scaling_if_serving(self) -> None:
        try:
            desc = self._describe()
            if desc is not None and desc["EndpointStatus"] == "InService":
                self._register_scaling()
        except Exception:  # noqa: BLE001 - the deployment error is what the caller needs
            pass

    def _deregister_scaling(self) -> None:
        try:
            self.client("application-autoscaling").deregister_scalable_target(
                ServiceNamespace="sagemaker", ResourceId=self.resource_id,
                ScalableDimension="sagemaker:variant:DesiredInstanceCount")
        except Exception as exc:  # noqa: BLE001
            if not (is_not_found(exc) or "ObjectNotFound" in str(exc) or "No scalable target" in str(exc)):
                raise

    # -- champion / challenger (issue 21) ---------------------------------------------------
    def _serving(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(endpoint, endpoint config) of the InService endpoint; DeploymentFailed otherwise."""
        desc = self._describe()
        if desc is None or desc["EndpointStatus"] != "InService":
            raise DeploymentFailed(f"Endpoint {self.endpoint_name} is "
                                   f"{desc['EndpointStatus'] if desc else 'not deployed'}: deploy a champion first.")
        return desc, self.client().describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])

    def _variant_config(self, name: str, model_name: str, weight: float) -> dict[str, Any]:
        return {"VariantName": name, "ModelName": model_name, "InitialInstanceCount": 1,
                "InstanceType": self.instance_type, "InitialVariantWeight": float(weight)}

    def _update_to(self, config: dict[str, Any], log: Callable[[str], None], blue_green: bool) -> dict[str, Any]:
        """Create ``config`` (the serving one's capture and KMS settings) and update the endpoint to it."""
        sm = self.client()
        sm.create_endpoint_config(**config)
        self._deregister_scaling()
        kwargs: dict[str, Any] = {"EndpointName": self.endpoint_name, "EndpointConfigName": config["EndpointConfigName"]}
        if blue_green:  # a promotion: the new fleet takes traffic only once healthy; the old serves until then
            kwargs["DeploymentConfig"] = self.deployment_config()
        try:
            sm.update_endpoint(**kwargs)
            desc = self._wait(log)
        finally:
            self._register_scaling_if_serving()
        if desc["EndpointStatus"] != "InService" or desc["EndpointConfigName"] != config["EndpointConfigName"]:
            raise DeploymentFailed(f"Update of {self.endpoint_name} to {config['EndpointConfigName']} failed "
                                   f"({desc['EndpointStatus']}): {desc.get('FailureReason') or 'rolled back'}. "
                                   f"Still serving {desc['EndpointConfigName']}.")
        return desc

    def _next_config(self, current: dict[str, Any], suffix: str, tags: list[dict[str, str]]) -> dict[str, Any]:
        config: dict[str, Any] = {"EndpointConfigName": f"{self.endpoint_name[:36]}-{suffix}-{_stamp()}-cfg",
                                  "Tags": tags, "DataCaptureConfig": current["DataCaptureConfig"]}
        if current.get("KmsKeyId"):
            config["KmsKeyId"] = current["KmsKeyId"]
        return config

    def set_traffic(self, challenger: ModelPackage | None, store: ObjectStore, *, weight: float = 0.0,
                    shadow: bool = False, on_log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Weighted: production variants ``AllTraffic`` + ``Challenger`` (only the weights change,
        with UpdateEndpointWeightsAndCapacities, when the same challenger already serves); shadow:
        ``Challenger`` as a ShadowProductionVariant. Data capture covers every variant, each under
        its own folder."""
        log = on_log or (lambda line: None)
        desc, current = self._serving()
        variants = {v["VariantName"]: v for v in current["ProductionVariants"]}
        tags = {t["Key"]: t["Value"] for t in self.client().list_tags(ResourceArn=current["EndpointConfigArn"])
                .get("Tags", [])}
        same = (challenger is not None and not shadow and CHALLENGER in variants
                and tags.get("dermaops:challenger_version") == str(challenger.version))
        if same:
            log(f"endpoint {self.endpoint_name}: challenger weight -> {weight:.0%}")
            self.client().update_endpoint_weights_and_capacities(EndpointName=self.endpoint_name, DesiredWeightsAndCapacities=[
                {"VariantName": VARIANT, "DesiredWeight": 1.0 - weight},
                {"VariantName": CHALLENGER, "DesiredWeight": float(weight)}])
            self._wait(log)
            return self.status() or {}
        keep = [{"Key": k, "Value": v} for k, v in tags.items() if k.startswith("dermaops:") and "challenger" not in k]
        champion = self._variant_config(VARIANT, variants[VARIANT]["ModelName"], 1.0)
        if challenger is None:
            config = {**self._next_config(current, "champion", keep), "ProductionVariants": [champion]}
        else:
            model_name = self._create_model(challenger, f"{self.endpoint_name[:30]}-chal-v{challenger.version}-{_stamp()}")
            extra = [{"Key": "dermaops:challenger_version", "Value": str(challenger.version)},
                     {"Key": "dermaops:challenger_shadow", "Value": str(bool(shadow)).lower()}]
            config = self._next_config(current, f"cc-v{challenger.version}", keep + extra)
            if shadow:
                config["ProductionVariants"] = [champion]
                config["ShadowProductionVariants"] = [self._variant_config(CHALLENGER, model_name, 1.0)]
            else:
                champion["InitialVariantWeight"] = 1.0 - weight
                config["ProductionVariants"] = [champion, self._variant_config(CHALLENGER, model_name, weight)]
        log(f"updating endpoint {self.endpoint_name} to {config['EndpointConfigName']}")
        requested_at = time.time()
        desc = self._update_to(config, log, blue_green=False)
        if challenger is not None:
            record_deployment(store, self.endpoint_name, CHALLENGER, version=challenger.version,
                              endpoint_config=config["EndpointConfigName"], kind="update", requested_at=requested_at,
                              finished_at=_finished_at(requested_at, desc), outcome="in_service")
        return self.status() or {}

    def promote(self, store: ObjectStore, on_log: Callable[[str], None] | None = None) -> EndpointHandle:
        """All traffic to the challenger first (weights: no fleet changes), then a blue/green update to
        a config whose only variant ``AllTraffic`` runs the challenger's model: no request fails."""
        log = on_log or (lambda line: None)
        desc, current = self._serving()
        variants = {v["VariantName"]: v for v in current["ProductionVariants"]}
        shadows = {v["VariantName"]: v for v in current.get("ShadowProductionVariants") or []}
        chal = variants.get(CHALLENGER) or shadows.get(CHALLENGER)
        if chal is None:
            raise DeploymentFailed(f"endpoint {self.endpoint_name} has no challenger to promote "
                                   "(`dermaops endpoint traffic --challenger N`)")
        tags = {t["Key"]: t["Value"] for t in self.client().list_tags(ResourceArn=current["EndpointConfigArn"])
                .get("Tags", [])}
        version = int(tags.get("dermaops:challenger_version", -1))
        if CHALLENGER in variants:
            self.client().update_endpoint_weights_and_capacities(EndpointName=self.endpoint_name, DesiredWeightsAndCapacities=[
                {"VariantName": VARIANT, "DesiredWeight": 0.0}, {"VariantName": CHALLENGER, "DesiredWeight": 1.0}])
            self._wait(log)
        config = {**self._next_config(current, f"v{version}", [{"Key": "dermaops:package_version",
                                                                "Value": str(version)}]),
                  "ProductionVariants": [self._variant_config(VARIANT, chal["ModelName"], 1.0)]}
        requested_at = time.time()
        desc = self._update_to(config, log, blue_green=True)
        record_deployment(store, self.endpoint_name, VARIANT, version=version,
                          endpoint_config=config["EndpointConfigName"], kind="update", requested_at=requested_at,
                          finished_at=_finished_at(requested_at, desc), outcome="in_service")
        log(f"endpoint {self.endpoint_name}: challenger v{version} promoted")
        return EndpointHandle(name=self.endpoint_name, url=self.invocation_url, package_version=version,
                              model_uri="", capture_uri=current["DataCaptureConfig"]["DestinationS3Uri"],
                              variant=VARIANT, min_instances=self.min_instances, max_instances=self.max_instances)

    # -- status / stop --------------------------------------------------------------------
    def status(self) -> dict[str, Any] | None:
        desc = self._describe()
        if desc is None:
            return None
        version: int | None = None
        tags: dict[str, str] = {}
        try:
            arn = self.client().describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])[
                "EndpointConfigArn"]
            tags = {t["Key"]: t["Value"] for t in self.client().list_tags(ResourceArn=arn).get("Tags", [])}
            version = int(tags["dermaops:package_version"]) if "dermaops:package_version" in tags else None
        except Exception:  # noqa: BLE001 - status is informative; a missing tag is not an outage
            pass
        variants = desc.get("ProductionVariants") or [{}]
        challenger = None
        if tags.get("dermaops:challenger_version"):
            weights = {v.get("VariantName"): v.get("CurrentWeight") for v in variants}
            challenger = {"variant": CHALLENGER, "package_version": int(tags["dermaops:challenger_version"]),
                          "shadow": tags.get("dermaops:challenger_shadow") == "true", "weight": weights.get(CHALLENGER)}
        return {
            "challenger": challenger,
            "name": self.endpoint_name, "url": self.invocation_url, "status": desc["EndpointStatus"],
            "healthy": desc["EndpointStatus"] == "InService", "package_version": version,
            "endpoint_config": desc["EndpointConfigName"],
            "instance_count": variants[0].get("CurrentInstanceCount"),
            "failure_reason": desc.get("FailureReason", ""),
        }

    def stop(self) -> bool:
        if self._describe() is None:
            return False
        self._deregister_scaling()
        self.client().delete_endpoint(EndpointName=self.endpoint_name)
        return True
