"""SageMaker Model Registry behind the ``ModelRegistry`` interface.

A package carries what an approver needs in the console, not only in DermaOps:
the inference container (PyTorch inference image + model.tar.gz), the evaluation
report as ``ModelMetrics.ModelQuality.Statistics``, and lineage + headline metrics as
``CustomerMetadataProperties`` (strings, as SageMaker requires). Approval changes go
through the same ``check_transition`` as the SQLite registry, so both backends refuse
the same requests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, PrivateAttr

from ..registry import APPROVAL_STATUSES, ApprovalStatus, ModelPackage, ModelRegistry, RegistryError, check_transition
from . import aws_client, is_not_found

LINEAGE_PREFIX = "lineage:"
METRIC_PREFIX = "metric:"
MODEL_HASH_KEY = "dermaops:model_hash"
INFERENCE_CONTENT_TYPES = ["image/jpeg", "image/png", "application/x-image"]


def _ts(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value or 0.0)


class SageMakerModelRegistry(ModelRegistry):
    """Model package groups and versioned packages in SageMaker Model Registry."""

    region: str = "us-east-1"
    endpoint_url: str | None = None
    framework_version: str = "2.5"
    py_version: str = "py311"
    inference_image_uri: str = Field(default="", description="override; default: AWS PyTorch inference image")
    inference_instance_types: list[str] = Field(default_factory=lambda: ["ml.m5.large", "ml.m5.xlarge",
                                                                         "ml.g4dn.xlarge"])
    max_attempts: int = 10

    _sm: Any = PrivateAttr(default=None)

    @property
    def client(self) -> Any:
        if self._sm is None:
            self._sm = aws_client("sagemaker", self.region, self.endpoint_url, self.max_attempts)
        return self._sm

    def inference_image(self) -> str:
        if self.inference_image_uri:
            return self.inference_image_uri
        from sagemaker.core import image_uris

        return image_uris.retrieve(framework="pytorch", region=self.region, version=self.framework_version,
                                   py_version=self.py_version, instance_type=self.inference_instance_types[0],
                                   image_scope="inference")

    def ensure_group(self, group: str) -> None:
        try:
            self.client.describe_model_package_group(ModelPackageGroupName=group)
        except Exception as exc:
            if not is_not_found(exc):
                raise
            self.client.create_model_package_group(
                ModelPackageGroupName=group,
                ModelPackageGroupDescription="DermaOps skin-lesion classifier (HAM10000 classes)",
                Tags=[{"Key": "project", "Value": "dermaops"}])

    # -- ModelRegistry --------------------------------------------------------------------
    def register(self, group: str, model_uri: str, model_hash: str, metrics: dict[str, float],
                 evaluation_uri: str, lineage: dict[str, str],
                 status: ApprovalStatus = "PendingManualApproval") -> ModelPackage:
        if status not in APPROVAL_STATUSES:
            raise RegistryError(f"{status!r} is not an approval status; use one of {', '.join(APPROVAL_STATUSES)}.")
        if not model_uri.startswith("s3://"):
            raise RegistryError(f"model_uri {model_uri!r} must be an s3:// model.tar.gz for SageMaker.")
        properties = {MODEL_HASH_KEY: model_hash}
        properties.update({f"{LINEAGE_PREFIX}{k}": str(v)[:256] for k, v in lineage.items()})
        properties.update({f"{METRIC_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()})
        if len(properties) > 50:
            raise RegistryError(f"{len(properties)} metadata properties exceed SageMaker's 50; "
                                "register fewer headline metrics (the full set is in evaluation_uri).")
        self.ensure_group(group)
        request: dict[str, Any] = {
            "ModelPackageGroupName": group,
            "ModelPackageDescription": f"model sha256 {model_hash[:16]}; data {lineage.get('data_version', '?')[:16]}",
            "InferenceSpecification": {
                "Containers": [{"Image": self.inference_image(), "ModelDataUrl": model_uri,
                                "Environment": {"SAGEMAKER_PROGRAM": "inference.py"}}],
                "SupportedContentTypes": INFERENCE_CONTENT_TYPES,
                "SupportedResponseMIMETypes": ["application/json"],
                "SupportedRealtimeInferenceInstanceTypes": self.inference_instance_types,
            },
            "ModelApprovalStatus": status,
            "CustomerMetadataProperties": properties,
        }
        if evaluation_uri:
            request["ModelMetrics"] = {"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                                                        "S3Uri": evaluation_uri}}}
        arn = self.client.create_model_package(**request)["ModelPackageArn"]
        return self._package(self.client.describe_model_package(ModelPackageName=arn))

    def _package(self, desc: dict[str, Any]) -> ModelPackage:
        props: dict[str, str] = desc.get("CustomerMetadataProperties") or {}
        containers = desc.get("InferenceSpecification", {}).get("Containers") or [{}]
        stats = desc.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {})
        created = _ts(desc.get("CreationTime"))
        return ModelPackage(
            group=desc["ModelPackageGroupName"], version=int(desc["ModelPackageVersion"]),
            status=desc["ModelApprovalStatus"], created_at=created,
            updated_at=_ts(desc.get("LastModifiedTime")) or created,
            model_uri=containers[0].get("ModelDataUrl", ""), model_hash=props.get(MODEL_HASH_KEY, ""),
            evaluation_uri=stats.get("S3Uri", ""),
            metrics={k[len(METRIC_PREFIX):]: float(v) for k, v in props.items() if k.startswith(METRIC_PREFIX)},
            lineage={k[len(LINEAGE_PREFIX):]: v for k, v in props.items() if k.startswith(LINEAGE_PREFIX)},
            arn=desc["ModelPackageArn"], status_reason=desc.get("ApprovalDescription", "") or "",
        )

    def _summaries(self, group: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            for page in self.client.get_paginator("list_model_packages").paginate(
                    ModelPackageGroupName=group, ModelPackageType="Versioned"):
                out.extend(page.get("ModelPackageSummaryList", []))
        except Exception as exc:
            if is_not_found(exc):
                return []
            raise
        return sorted(out, key=lambda s: int(s.get("ModelPackageVersion", 0)), reverse=True)

    def list_packages(self, group: str) -> list[ModelPackage]:
        return [self._package(self.client.describe_model_package(ModelPackageName=s["ModelPackageArn"]))
                for s in self._summaries(group)]

    def _arn(self, group: str, version: int) -> str:
        for summary in self._summaries(group):
            if int(summary.get("ModelPackageVersion", 0)) == int(version):
                return summary["ModelPackageArn"]
        raise RegistryError(f"No model package {group} version {version}; see `dermaops registry list`.")

    def get(self, group: str, version: int) -> ModelPackage:
        return self._package(self.client.describe_model_package(ModelPackageName=self._arn(group, version)))

    def set_status(self, group: str, version: int, status: ApprovalStatus, reason: str = "") -> ModelPackage:
        arn = self._arn(group, version)
        current = self.client.describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"]
        check_transition(current, status, f"Model package {group} v{version}")
        kwargs: dict[str, Any] = {"ModelPackageArn": arn, "ModelApprovalStatus": status}
        if reason:
            kwargs["ApprovalDescription"] = reason[:1024]
        self.client.update_model_package(**kwargs)
        return self._package(self.client.describe_model_package(ModelPackageName=arn))
