"""Atomic publish on a *versioned* bucket leaves no copy of the bytes under ``_tmp/``."""

from __future__ import annotations

import uuid

import boto3
import pytest

from dermaops_resources.aws.s3 import S3ObjectStore

from .conftest import REGION

pytestmark = pytest.mark.aws


@pytest.fixture()
def versioned_store(moto_server, kms_key_arn) -> tuple[S3ObjectStore, str]:
    name = f"dermaops-test-versioned-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    buckets = {b: name for b in ("raw", "processed", "models", "logs")}
    return S3ObjectStore(buckets=buckets, region=REGION, kms_key_id=kms_key_arn), name


def _tmp_versions(name: str) -> list[tuple[str, str]]:
    listing = boto3.client("s3", region_name=REGION).list_object_versions(Bucket=name, Prefix="_tmp/")
    return [(e["Key"], kind) for kind in ("Versions", "DeleteMarkers") for e in listing.get(kind, [])]


def test_publish_deletes_every_version_of_its_temporary_key(versioned_store, tmp_path, monkeypatch):
    store, name = versioned_store
    src = tmp_path / "lesion.jpg"
    src.write_bytes(b"\xff\xd8 not really a jpeg")
    store.put_bytes("raw", "images/a.jpg", b"bytes one")
    store.put_bytes("raw", "images/a.jpg", b"bytes two")  # an overwrite, as a re-ingested batch does
    store.put_file("raw", "images/b.jpg", src)
    assert store.get_bytes(store.uri("raw", "images/a.jpg")) == b"bytes two"
    assert _tmp_versions(name) == []

    def crash(self, name, tmp_key, final_key, expected_size):  # dies before it returns the version
        raise ConnectionError("network dropped between upload and publish")

    monkeypatch.setattr(S3ObjectStore, "_commit", crash)
    with pytest.raises(ConnectionError):
        store.put_bytes("raw", "images/c.jpg", b"never published")
    assert _tmp_versions(name) == [], "the failure path finds the temporary versions by listing"
    assert not store.exists(store.uri("raw", "images/c.jpg"))
