"""SageMaker Model Registry behind the ``ModelRegistry`` interface.

A package carries what an approver needs in the console, not only in DermaOps:
the inference container (PyTorch inference image + model.tar.gz), the evaluation
report as ``ModelMetrics.ModelQuality.Statistics``, and lineage + headline metrics as
``CustomerMetadataProperties`` (strings, as SageMaker requires). Approval changes go
through the same ``check_transition`` as the SQLite registry, so both backends refuse
the same requests.

Audit trail: SageMaker keeps only the current ``ModelApprovalStatus``/``ApprovalDescription``,
so each change (registration included) is also written as one ``CustomerMetadataProperties``
entry ``dermaops:status:<n>`` (n = 1, 2, ...) in the same CreateModelPackage/UpdateModelPackage
call that sets the status: the status and its record cannot disagree. The value is
base64 of compact JSON ``{"s": status, "r": reason, "a": actor, "t": epoch}``: SageMaker
allows only letters, digits, spaces and ``_.:/=+-@`` in metadata values (no JSON
punctuation) and at most 256 characters, so a long reason is cut in the entry (``"x": 1``
marks it; the full latest reason stays in ``ApprovalDescription``, 1024 characters).
A package holds at most 50 properties in all (model hash, lineage, metrics, history):
when a change would pass that, the oldest status entry after the registration is dropped
(``CustomerMetadataPropertiesToRemove``) and :meth:`history` reports the gap in the
numbering as ``dropped``; the status change itself is never refused for lack of room
(retiring a dangerous model must not depend on it), and CloudTrail's UpdateModelPackage
events keep every call regardless.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from datetime import datetime
from typing import Any

from pydantic import Field, PrivateAttr

from ..registry import (
    APPROVAL_STATUSES,
    ApprovalStatus,
    ModelPackage,
    ModelRegistry,
    RegistryError,
    StatusChange,
    check_transition,
)
from . import aws_client, is_not_found

log = logging.getLogger("dermaops.registry")

LINEAGE_PREFIX = "lineage:"
METRIC_PREFIX = "metric:"
MODEL_HASH_KEY = "dermaops:model_hash"
INFERENCE_CONTENT_TYPES = ["image/jpeg", "image/png", "application/x-image"]
STATUS_PREFIX = "dermaops:status:"
MAX_PROPERTIES = 50
"""SageMaker's limit on CustomerMetadataProperties entries per package."""
MAX_VALUE_CHARS = 256
"""SageMaker's limit on one CustomerMetadataProperties value."""


def encode_status_entry(status: str, reason: str, actor: str, at: float) -> str:
    """One history entry as a metadata value SageMaker accepts (see the module docstring):
    base64 of compact JSON, the reason (then the actor) shortened until it fits 256 chars."""
    record: dict[str, Any] = {"s": status, "r": reason, "a": actor, "t": round(at, 3)}
    while True:
        value = base64.b64encode(json.dumps(record, separators=(",", ":")).encode()).decode()
        if len(value) <= MAX_VALUE_CHARS:
            return value
        if not record["r"] and not record["a"]:
            return value  # cannot happen (status + time are far below the limit); never loop
        record["x"] = 1
        field = "r" if record["r"] else "a"
        record[field] = record[field][: max(0, len(record[field]) - 8)]


def decode_status_entry(value: str) -> dict[str, Any]:
    """The record of :func:`encode_status_entry`; an unreadable value (edited by hand in the
    console) comes back as its raw text in the reason rather than hiding the entry."""
    try:
        record = json.loads(base64.b64decode(value, validate=True))
        if isinstance(record, dict):
            return record
    except (binascii.Error, ValueError):
        pass
    return {"s": "?", "r": f"unreadable entry: {value[:64]}", "a": "", "t": 0.0}


def status_entries(props: dict[str, str]) -> dict[int, str]:
    """{n: value} of the ``dermaops:status:<n>`` properties."""
    out: dict[int, str] = {}
    for key, value in props.items():
        if key.startswith(STATUS_PREFIX) and key[len(STATUS_PREFIX):].isdigit():
            out[int(key[len(STATUS_PREFIX):])] = value
    return out


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
    _caller: str = PrivateAttr(default="")

    @property
    def client(self) -> Any:
        if self._sm is None:
            self._sm = aws_client("sagemaker", self.region, self.endpoint_url, self.max_attempts)
        return self._sm

    def caller_identity(self) -> str:
        """The ARN of the AWS identity making the calls (``sts:GetCallerIdentity``): the actor of
        the audit trail. It needs no IAM permission, and it is what CloudTrail records too."""
        if not self._caller:
            try:
                sts = aws_client("sts", self.region, None, self.max_attempts)
                self._caller = str(sts.get_caller_identity()["Arn"])
            except Exception as exc:  # noqa: BLE001 - any failure means: no actor, so no change
                raise RegistryError(f"Cannot tell who is making this registry change (sts:GetCallerIdentity in "
                                    f"{self.region} failed: {exc}); nothing was changed, since a status change "
                                    "is only recorded with its actor. Check the AWS credentials and that STS is "
                                    "reachable, then retry.") from exc
        return self._caller

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
                 status: ApprovalStatus = "PendingManualApproval", actor: str | None = None) -> ModelPackage:
        if status not in APPROVAL_STATUSES:
            raise RegistryError(f"{status!r} is not an approval status; use one of {', '.join(APPROVAL_STATUSES)}.")
        if not model_uri.startswith("s3://"):
            raise RegistryError(f"model_uri {model_uri!r} must be an s3:// model.tar.gz for SageMaker.")
        properties = {MODEL_HASH_KEY: model_hash}
        properties.update({f"{LINEAGE_PREFIX}{k}": str(v)[:256] for k, v in lineage.items()})
        properties.update({f"{METRIC_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()})
        properties[f"{STATUS_PREFIX}1"] = encode_status_entry(status, "registered", actor or self.caller_identity(),
                                                              time.time())
        if len(properties) > MAX_PROPERTIES - 2:  # room for at least an approval and a rejection
            raise RegistryError(f"{len(properties)} metadata properties leave no room in SageMaker's "
                                f"{MAX_PROPERTIES} for the approval history; register fewer headline metrics "
                                "(the full set is in evaluation_uri).")
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

    def set_status(self, group: str, version: int, status: ApprovalStatus, reason: str = "",
                   actor: str | None = None) -> ModelPackage:
        arn = self._arn(group, version)
        desc = self.client.describe_model_package(ModelPackageName=arn)
        check_transition(desc["ModelApprovalStatus"], status, f"Model package {group} v{version}")
        props: dict[str, str] = dict(desc.get("CustomerMetadataProperties") or {})
        entries = status_entries(props)
        number = max(entries, default=0) + 1
        props[f"{STATUS_PREFIX}{number}"] = encode_status_entry(status, reason, actor or self.caller_identity(),
                                                                time.time())
        removed: list[str] = []
        droppable = sorted(n for n in entries if n != 1)  # the registration entry stays
        while len(props) > MAX_PROPERTIES and droppable:
            key = f"{STATUS_PREFIX}{droppable.pop(0)}"
            props.pop(key)
            removed.append(key)
        if removed:
            log.warning("Model package %s v%s: SageMaker's %d-property limit reached; dropped history entries %s "
                        "(CloudTrail UpdateModelPackage events still hold them).", group, version,
                        MAX_PROPERTIES, removed)
        # The full property set (SageMaker merges it; moto replaces with it) in the same call as
        # the status, so the status and its audit record change together or not at all.
        kwargs: dict[str, Any] = {"ModelPackageArn": arn, "ModelApprovalStatus": status,
                                  "CustomerMetadataProperties": props}
        if reason:
            kwargs["ApprovalDescription"] = reason[:1024]
        if removed:
            kwargs["CustomerMetadataPropertiesToRemove"] = removed
        self.client.update_model_package(**kwargs)
        return self._package(self.client.describe_model_package(ModelPackageName=arn))

    def history(self, group: str, version: int) -> list[StatusChange]:
        """The ``dermaops:status:<n>`` entries in order. Packages registered before the audit trail
        have none: their current status comes back as one entry with an empty actor (unknown)."""
        desc = self.client.describe_model_package(ModelPackageName=self._arn(group, version))
        entries = status_entries(desc.get("CustomerMetadataProperties") or {})
        changes: list[StatusChange] = []
        for number in sorted(entries):
            record = decode_status_entry(entries[number])
            changes.append(StatusChange(group=group, version=version, status=str(record.get("s", "?")),
                                        reason=str(record.get("r", "")), actor=str(record.get("a", "")),
                                        at=float(record.get("t", 0.0)), truncated=bool(record.get("x")),
                                        dropped_before=number - (changes[-1].sequence if changes else 0) - 1,
                                        sequence=number))
        if not changes:
            changes.append(StatusChange(group=group, version=version, status=desc["ModelApprovalStatus"],
                                        reason=desc.get("ApprovalDescription", "") or "", actor="",
                                        at=_ts(desc.get("LastModifiedTime") or desc.get("CreationTime"))))
        return changes
