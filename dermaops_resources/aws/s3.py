"""S3 object store: the four DermaOps buckets, every object encrypted with the project's KMS key.

Why the shape:
- SSE-KMS is set on *every* write (single PUT, multipart upload, and the publishing
  copy), with the customer key, instead of trusting the bucket default: a bucket whose
  default encryption was changed by hand still receives only KMS-encrypted lesion images.
- Atomic publish: bytes go to ``_tmp/<uuid>/<key>``, their size is checked, then the
  object is copied under the final key and the temporary one deleted *by version id*
  (the buckets are versioned: a plain delete would keep the bytes as a noncurrent
  version). A crashed or
  truncated upload therefore never appears under a name that readers (sensors, jobs)
  trust; the ``_tmp/`` prefix also expires by lifecycle rule (see ``infra/main.tf``)
  in case the process dies before its own cleanup.
- Large files use multipart upload and multipart copy (boto3 ``TransferConfig``).
- Listing uses ``StartAfter`` with the paginator, so a sensor that remembers its last
  key pays only for new keys; a prefix is always listed as a folder (``<prefix>/``), so
  ``landing`` never includes ``landing-archive/``. Each object carries its ETag, which
  changes when the bytes do (the landing sensor's change signal; LastModified is not).
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import Field, PrivateAttr

from ml_code.atomic import atomic_path

from ..object_store import Bucket, ObjectStore, StoredObject
from . import is_not_found

TMP_PREFIX = "_tmp/"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket name, key) of ``s3://bucket/key``; a clear error for anything else."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an S3 URI; expected s3://<bucket>/<key>.")
    return parsed.netloc, parsed.path.lstrip("/")


class S3ObjectStore(ObjectStore):
    """``ObjectStore`` on S3: logical buckets (raw, processed, models, logs) map to real names."""

    buckets: dict[str, str] = Field(description="logical bucket -> S3 bucket name")
    region: str = "us-east-1"
    kms_key_id: str = Field(description="KMS key id/ARN/alias used for SSE-KMS on every write")
    endpoint_url: str | None = Field(default=None, description="custom endpoint; default honours AWS_ENDPOINT_URL")
    max_attempts: int = Field(default=10, description="botocore retries (standard mode, backoff on throttling)")
    multipart_threshold_mb: int = 8
    multipart_chunk_mb: int = 8
    max_concurrency: int = 4

    _client: Any = PrivateAttr(default=None)

    # -- plumbing -------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            if not self.kms_key_id:
                raise ValueError("S3ObjectStore.kms_key_id is empty: every DermaOps object is written with "
                                 "SSE-KMS; set DERMAOPS_KMS_KEY_ID to the key ARN from `terraform output "
                                 "kms_key_arn`.")
            from dagster_aws.s3 import S3Resource

            # dagster-aws builds the client with botocore 'standard' retries and max_attempts.
            self._client = S3Resource(region_name=self.region, endpoint_url=self.endpoint_url,
                                      max_attempts=self.max_attempts).get_client()
        return self._client

    @property
    def _sse(self) -> dict[str, str]:
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}

    @property
    def _transfer(self):
        from boto3.s3.transfer import TransferConfig

        mb = 1024 * 1024
        return TransferConfig(multipart_threshold=self.multipart_threshold_mb * mb,
                              multipart_chunksize=self.multipart_chunk_mb * mb,
                              max_concurrency=self.max_concurrency)

    def _bucket_name(self, bucket: Bucket) -> str:
        try:
            return self.buckets[bucket]
        except KeyError:
            raise ValueError(f"Unknown DermaOps bucket {bucket!r}; configured: {sorted(self.buckets)}.") from None

    # -- ObjectStore ----------------------------------------------------------------------
    def uri(self, bucket: Bucket, key: str) -> str:
        return f"s3://{self._bucket_name(bucket)}/{key.lstrip('/')}"

    def _publish(self, bucket: Bucket, key: str, upload, expected_size: int) -> str:
        """Upload via ``upload(bucket_name, tmp_key)`` then publish under ``key``; never a partial object."""
        name, final_key = self._bucket_name(bucket), key.lstrip("/")
        if not final_key or final_key.startswith(TMP_PREFIX):
            raise ValueError(f"Cannot write key {key!r}: it must be non-empty and outside {TMP_PREFIX!r}.")
        tmp_key = f"{TMP_PREFIX}{uuid.uuid4().hex}/{final_key}"
        version_id: str | None = None
        try:
            upload(name, tmp_key)
            version_id = self._commit(name, tmp_key, final_key, expected_size)
        finally:
            self._discard_tmp(name, tmp_key, version_id)
        return f"s3://{name}/{final_key}"

    def _commit(self, name: str, tmp_key: str, final_key: str, expected_size: int) -> str:
        """Check the temporary object is complete, then copy it (server side, SSE-KMS) to the final key.

        Returns the temporary object's VersionId ("" on an unversioned bucket), so that
        ``_discard_tmp`` deletes exactly that version. On an incomplete upload it raises before
        returning, and ``_discard_tmp`` finds the version by listing."""
        head = self.client.head_object(Bucket=name, Key=tmp_key)
        if int(head["ContentLength"]) != expected_size:
            raise OSError(f"Upload of s3://{name}/{final_key} is incomplete: {head['ContentLength']} of "
                          f"{expected_size} bytes arrived; nothing was published, retry the write.")
        self.client.copy({"Bucket": name, "Key": tmp_key}, name, final_key,
                         ExtraArgs={**self._sse, "MetadataDirective": "COPY"}, Config=self._transfer)
        return str(head.get("VersionId") or "")

    def _discard_tmp(self, name: str, tmp_key: str, version_id: str | None) -> None:
        """Remove the temporary object for good, leaving no noncurrent copy of patient data.

        On a versioned bucket a plain DeleteObject only adds a delete marker and keeps the bytes
        as a noncurrent version (for ``noncurrent_days``); deleting by VersionId removes them.
        ``version_id`` is the one ``_commit`` returned ("" = unversioned bucket: a plain delete is
        final). When the write failed before that (None), every version and delete marker of
        exactly this key is listed and deleted (needs s3:ListBucketVersions). Failures are
        swallowed: the ``_tmp/`` lifecycle rule removes leftovers (see ``infra/main.tf``)."""
        try:
            if version_id:
                self.client.delete_object(Bucket=name, Key=tmp_key, VersionId=version_id)
            elif version_id == "":
                self.client.delete_object(Bucket=name, Key=tmp_key)
            else:
                listing = self.client.list_object_versions(Bucket=name, Prefix=tmp_key)
                for entry in [*listing.get("Versions", []), *listing.get("DeleteMarkers", [])]:
                    if entry["Key"] == tmp_key:
                        self.client.delete_object(Bucket=name, Key=tmp_key, VersionId=entry["VersionId"])
        except Exception:  # noqa: BLE001, S110 - the _tmp/ lifecycle rule removes leftovers
            pass

    def put_bytes(self, bucket: Bucket, key: str, data: bytes) -> str:
        def upload(name: str, tmp_key: str) -> None:
            if len(data) < self.multipart_threshold_mb * 1024 * 1024:
                self.client.put_object(Bucket=name, Key=tmp_key, Body=data, **self._sse)
            else:
                self.client.upload_fileobj(io.BytesIO(data), name, tmp_key, ExtraArgs=self._sse,
                                           Config=self._transfer)

        return self._publish(bucket, key, upload, len(data))

    def put_file(self, bucket: Bucket, key: str, path: str | os.PathLike) -> str:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Cannot upload {path}: no such file.")

        def upload(name: str, tmp_key: str) -> None:
            self.client.upload_file(str(path), name, tmp_key, ExtraArgs=self._sse, Config=self._transfer)

        return self._publish(bucket, key, upload, path.stat().st_size)

    def copy(self, src_uri: str, bucket: Bucket, key: str) -> str:
        """A server-side copy (CopyObject; multipart UploadPartCopy above the multipart threshold),
        re-encrypted with this store's KMS key: S3 publishes the copy only once it is whole."""
        src_name, src_key = parse_s3_uri(src_uri)
        name, final_key = self._bucket_name(bucket), key.lstrip("/")
        if not final_key or final_key.startswith(TMP_PREFIX):
            raise ValueError(f"Cannot write key {key!r}: it must be non-empty and outside {TMP_PREFIX!r}.")
        try:
            self.client.copy({"Bucket": src_name, "Key": src_key}, name, final_key,
                             ExtraArgs={**self._sse, "MetadataDirective": "COPY"}, Config=self._transfer)
        except Exception as exc:
            if is_not_found(exc):
                raise FileNotFoundError(f"No object at {src_uri}") from exc
            raise
        return f"s3://{name}/{final_key}"

    def get_bytes(self, uri: str) -> bytes:
        name, key = parse_s3_uri(uri)
        try:
            return self.client.get_object(Bucket=name, Key=key)["Body"].read()
        except Exception as exc:
            if is_not_found(exc):
                raise FileNotFoundError(f"No object at {uri}") from exc
            raise

    def download_file(self, uri: str, dest: str | os.PathLike) -> Path:
        name, key = parse_s3_uri(uri)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_path(dest, mode=0o600) as tmp:  # a download is patient data: owner only
                self.client.download_file(name, key, str(tmp), Config=self._transfer)
        except Exception as exc:
            if is_not_found(exc):
                raise FileNotFoundError(f"No object at {uri}") from exc
            raise
        return dest

    def exists(self, uri: str) -> bool:
        name, key = parse_s3_uri(uri)
        try:
            self.client.head_object(Bucket=name, Key=key)
            return True
        except Exception as exc:
            if is_not_found(exc):
                return False
            raise

    def list(self, prefix_uri: str, start_after: str | None = None) -> Iterator[StoredObject]:
        """Objects under the prefix (a folder-like prefix, or one exact object), in key order."""
        name, key = parse_s3_uri(prefix_uri)
        folder = key.rstrip("/") + "/" if key.rstrip("/") else ""
        kwargs: dict[str, Any] = {"Bucket": name, "Prefix": folder}
        if start_after:
            kwargs["StartAfter"] = start_after
        found = False
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                if obj["Key"].startswith(TMP_PREFIX):
                    continue  # an unpublished write
                found = True
                yield StoredObject(uri=f"s3://{name}/{obj['Key']}", key=obj["Key"], size=int(obj["Size"]),
                                   modified=obj["LastModified"].timestamp(), version=obj.get("ETag", ""))
        if not found and folder and (start_after is None or key > start_after):
            # The prefix may name one object (LocalObjectStore lists a file as itself).
            try:
                head = self.client.head_object(Bucket=name, Key=key)
            except Exception as exc:
                if is_not_found(exc):
                    return
                raise
            yield StoredObject(uri=f"s3://{name}/{key}", key=key, size=int(head["ContentLength"]),
                               modified=head["LastModified"].timestamp(), version=head.get("ETag", ""))

    def list_level(self, prefix_uri: str) -> tuple[list[str], list[StoredObject]]:
        """One level under ``<prefix>/`` with ``Delimiter='/'``: pages of folder names, not every key,
        and the trailing slash keeps a sibling (``landing-archive/``) out of ``landing``."""
        name, key = parse_s3_uri(prefix_uri)
        folder = key.rstrip("/") + "/" if key.rstrip("/") else ""
        folders, objects = [], []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=folder, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                sub = common["Prefix"][len(folder):].rstrip("/")
                if sub and f"{folder}{sub}/" != TMP_PREFIX:
                    folders.append(sub)
            for obj in page.get("Contents", []):
                objects.append(StoredObject(uri=f"s3://{name}/{obj['Key']}", key=obj["Key"], size=int(obj["Size"]),
                                            modified=obj["LastModified"].timestamp(), version=obj.get("ETag", "")))
        return sorted(folders), objects

    def delete(self, uri: str) -> None:
        name, key = parse_s3_uri(uri)
        self.client.delete_object(Bucket=name, Key=key)

    def local_path(self, uri: str) -> Path | None:
        return None
