"""The SageMaker registry's audit trail on moto: who approved or rejected a package, and why."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from dermaops_resources.aws.registry import (
    MAX_PROPERTIES,
    MAX_VALUE_CHARS,
    STATUS_PREFIX,
    SageMakerModelRegistry,
    decode_status_entry,
    encode_status_entry,
)

from .conftest import REGION

pytestmark = pytest.mark.aws

VALUE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _.:/=+-@")
"""What SageMaker accepts in a CustomerMetadataProperties value (its API pattern, ASCII part)."""


@pytest.fixture()
def registry(moto_server) -> SageMakerModelRegistry:
    return SageMakerModelRegistry(region=REGION)


def _package(registry, store, metrics: dict[str, float] | None = None) -> str:
    group = f"dermaops-audit-{uuid.uuid4().hex[:8]}"
    model_uri = store.put_bytes("models", f"jobs/train/{group}/model.tar.gz", b"weights")
    registry.register(group, model_uri, "f" * 64, metrics or {"balanced_accuracy": 0.6}, "", {"data_version": "d"})
    return group


def test_history_records_caller_identity_and_reason_in_order(registry, store):
    group = _package(registry, store)
    caller = boto3.client("sts", region_name=REGION).get_caller_identity()["Arn"]
    registry.set_status(group, 1, "Approved", reason="reviewed by dermatology lead, 2 readers")
    registry.set_status(group, 1, "Rejected", reason='accuracy drop: "mel" recall < 0.7')
    history = registry.history(group, 1)
    assert [(c.status, c.reason, c.actor) for c in history] == [
        ("PendingManualApproval", "registered", caller),
        ("Approved", "reviewed by dermatology lead, 2 readers", caller),
        ("Rejected", 'accuracy drop: "mel" recall < 0.7', caller)]
    assert [c.sequence for c in history] == [1, 2, 3] and history[0].at <= history[1].at <= history[2].at
    desc = boto3.client("sagemaker", region_name=REGION).describe_model_package(
        ModelPackageName=registry.get(group, 1).arn)
    props = desc["CustomerMetadataProperties"]
    assert desc["ModelApprovalStatus"] == "Rejected"
    assert props["lineage:data_version"] == "d" and props["metric:balanced_accuracy"] == "0.6", "metadata kept"
    entries = {k: v for k, v in props.items() if k.startswith(STATUS_PREFIX)}
    assert sorted(entries) == [f"{STATUS_PREFIX}{n}" for n in (1, 2, 3)]
    for value in entries.values():  # what real SageMaker would accept (moto does not check the pattern)
        assert set(value) <= VALUE_CHARS and len(value) <= MAX_VALUE_CHARS


def test_explicit_actor_and_long_reason_are_kept_within_limits(registry, store):
    group = _package(registry, store)
    registry.set_status(group, 1, "Approved", reason="é" * 400, actor="arn:aws:sts::123456789012:assumed-role/a/b")
    last = registry.history(group, 1)[-1]
    assert last.actor == "arn:aws:sts::123456789012:assumed-role/a/b"
    assert last.truncated and 0 < len(last.reason) < 400 and ("é" * 400).startswith(last.reason)
    assert registry.get(group, 1).status_reason == "é" * 400, "the full latest reason stays in ApprovalDescription"
    value = encode_status_entry("Approved", "x" * 1000, "a" * 300, 1.0)
    assert len(value) <= MAX_VALUE_CHARS and decode_status_entry(value)["x"] == 1
    assert json.loads(json.dumps(decode_status_entry("not base64 {")))["s"] == "?"


def test_history_past_the_50_property_limit_drops_the_oldest_changes_not_the_change(registry, store):
    # 44 metrics + hash + lineage + registration = 47 properties: three changes fit, then the oldest go.
    group = _package(registry, store, {f"m{i}": float(i) for i in range(44)})
    for i in range(6):
        registry.set_status(group, 1, "Approved" if i % 2 == 0 else "Rejected", reason=f"round {i}")
    desc = boto3.client("sagemaker", region_name=REGION).describe_model_package(
        ModelPackageName=registry.get(group, 1).arn)
    assert len(desc["CustomerMetadataProperties"]) == MAX_PROPERTIES
    assert desc["ModelApprovalStatus"] == "Rejected"
    history = registry.history(group, 1)
    assert [c.sequence for c in history] == [1, 5, 6, 7] and history[0].reason == "registered"
    assert [c.dropped_before for c in history] == [0, 3, 0, 0]
    assert [c.reason for c in history[1:]] == ["round 3", "round 4", "round 5"]
    assert len(registry.get(group, 1).metrics) == 44, "metrics are never dropped for history"
