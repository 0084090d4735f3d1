"""S3ObjectStore against moto: round trips, SSE-KMS on every write, atomic publish, listing."""

from __future__ import annotations

import os

import boto3
import pytest

from dermaops_resources.aws.s3 import S3ObjectStore, parse_s3_uri

pytestmark = pytest.mark.aws


def _head(uri: str) -> dict:
    bucket, key = parse_s3_uri(uri)
    return boto3.client("s3").head_object(Bucket=bucket, Key=key)


def _all_keys(bucket: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_uris_round_trip_through_split_uri(store: S3ObjectStore, bucket_names):
    assert store.uri("raw", "") == f"s3://{bucket_names['raw']}/"
    uri = store.uri("processed", "jobs/preprocess/j1/splits")
    assert store.split_uri(uri) == ("processed", "jobs/preprocess/j1/splits")
    assert store.local_path(uri) is None
    with pytest.raises(ValueError, match="not in any DermaOps bucket"):
        store.split_uri("s3://someone-elses-bucket/x")
    with pytest.raises(ValueError, match="Unknown DermaOps bucket 'scratch'"):
        store.uri("scratch", "x")


def test_bytes_json_file_round_trip_all_kms(store: S3ObjectStore, kms_key_arn, tmp_path):
    uri = store.put_bytes("raw", "manifests/abc/manifest.csv", b"image_id,dx\nISIC_1,nv\n")
    assert store.get_bytes(uri) == b"image_id,dx\nISIC_1,nv\n"
    assert store.exists(uri)
    json_uri = store.put_json("models", "handles/x.json", {"a": 1})
    assert store.get_json(json_uri) == {"a": 1}
    src = tmp_path / "img.jpg"
    src.write_bytes(os.urandom(4096))
    file_uri = store.put_file("raw", "images/ab/abcdef.jpg", src)
    got = store.download_file(file_uri, tmp_path / "out" / "img.jpg")
    assert got.read_bytes() == src.read_bytes()
    for written in (uri, json_uri, file_uri):
        head = _head(written)
        assert head["ServerSideEncryption"] == "aws:kms", written
        assert head["SSEKMSKeyId"] == kms_key_arn, written
    store.delete(uri)
    assert not store.exists(uri)
    with pytest.raises(FileNotFoundError, match="No object at"):
        store.get_bytes(uri)
    with pytest.raises(ValueError, match="not an S3 URI"):
        store.get_bytes("file:///etc/passwd")


def test_multipart_upload_of_large_file_is_kms_encrypted(store: S3ObjectStore, kms_key_arn, tmp_path):
    big = tmp_path / "big.npy"
    payload = os.urandom(9 * 1024 * 1024)  # over the 8 MB multipart threshold
    big.write_bytes(payload)
    uri = store.put_file("processed", "splits/big.npy", big)
    head = _head(uri)
    assert head["ContentLength"] == len(payload)
    assert head["ETag"].strip('"').endswith("-2"), "expected a 2-part multipart object"
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms_key_arn
    assert store.download_file(uri, tmp_path / "back.npy").read_bytes() == payload
    # put_bytes over the threshold goes multipart too, and is encrypted the same way
    uri2 = store.put_bytes("processed", "splits/big2.npy", payload)
    assert _head(uri2)["SSEKMSKeyId"] == kms_key_arn


def test_copy_is_server_side_kms_encrypted_and_names_a_missing_source(store: S3ObjectStore, kms_key_arn, tmp_path,
                                                                     monkeypatch):
    """A rerun's earlier split segments are copied within S3 (CopyObject / UploadPartCopy), never
    downloaded and uploaded again through this process."""
    segment = tmp_path / "segment.npy"
    payload = os.urandom(9 * 1024 * 1024)  # over the multipart threshold: a multipart server-side copy
    segment.write_bytes(payload)
    src = store.put_file("processed", "splits/aaa/splits/pixels/seg.npy", segment)
    monkeypatch.setattr(store.client, "download_file", None)  # no byte may come back to this process
    monkeypatch.setattr(store.client, "upload_file", None)
    dst = store.copy(src, "processed", "splits/bbb/splits/pixels/seg.npy")
    monkeypatch.undo()
    assert dst.endswith("/splits/bbb/splits/pixels/seg.npy")
    head = _head(dst)
    assert head["ContentLength"] == len(payload)
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms_key_arn
    assert store.download_file(dst, tmp_path / "back.npy").read_bytes() == payload
    with pytest.raises(FileNotFoundError, match="No object at"):
        store.copy(store.uri("processed", "splits/none.npy"), "processed", "splits/ccc.npy")


def test_failed_publish_leaves_no_final_key_and_no_temp(store: S3ObjectStore, bucket_names, monkeypatch):
    def crash(self, name, tmp_key, final_key, expected_size):
        # the temp object is fully uploaded at this point: prove it, then die before publishing
        assert boto3.client("s3").head_object(Bucket=name, Key=tmp_key)["ContentLength"] == expected_size
        raise ConnectionError("network dropped between upload and publish")

    monkeypatch.setattr(S3ObjectStore, "_commit", crash)
    with pytest.raises(ConnectionError):
        store.put_bytes("models", "atomic/model.tar.gz", b"x" * 1000)
    keys = _all_keys(bucket_names["models"])
    assert "atomic/model.tar.gz" not in keys
    assert not [k for k in keys if k.startswith("_tmp/")], keys


def test_truncated_upload_is_not_published(store: S3ObjectStore, bucket_names, monkeypatch, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"y" * 100)
    real_upload = store.client.upload_file

    def short_upload(filename, bucket, key, ExtraArgs=None, Config=None):  # noqa: N803 - boto3 names
        half = tmp_path / "half.bin"
        half.write_bytes(b"y" * 50)
        real_upload(str(half), bucket, key, ExtraArgs=ExtraArgs, Config=Config)

    monkeypatch.setattr(store.client, "upload_file", short_upload)
    with pytest.raises(OSError, match="incomplete: 50 of 100 bytes"):
        store.put_file("models", "atomic/short.bin", src)
    assert "atomic/short.bin" not in _all_keys(bucket_names["models"])


def test_list_is_ordered_resumes_after_key_and_respects_folder_boundaries(store: S3ObjectStore, tmp_path):
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        store.put_bytes("logs", f"datacapture/ep/AllTraffic/{name}", name.encode())
    store.put_bytes("logs", "datacapture/ep2/other.jsonl", b"sibling")
    prefix = store.uri("logs", "datacapture/ep")
    keys = [o.key for o in store.list(prefix)]
    assert keys == [f"datacapture/ep/AllTraffic/{n}" for n in ("a.jsonl", "b.jsonl", "c.jsonl")]
    after = [o.key for o in store.list(prefix, start_after="datacapture/ep/AllTraffic/a.jsonl")]
    assert after == ["datacapture/ep/AllTraffic/b.jsonl", "datacapture/ep/AllTraffic/c.jsonl"]
    objs = list(store.list(prefix))
    assert all(o.size == 7 and o.modified > 0 for o in objs)
    # an exact object key lists as itself, like a file in the local store
    single = list(store.list(store.uri("logs", "datacapture/ep2/other.jsonl")))
    assert [o.key for o in single] == ["datacapture/ep2/other.jsonl"]
    assert list(store.list(store.uri("logs", "nothing/here"))) == []
    # upload_dir / download_dir round trip through the shared helpers
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "x.txt").write_text("x")
    (src / "sub" / "y.txt").write_text("y")
    dir_uri = store.upload_dir("processed", "trees/t1", src)
    out = store.download_dir(dir_uri, tmp_path / "copy")
    assert (out / "x.txt").read_text() == "x" and (out / "sub" / "y.txt").read_text() == "y"


def test_pagination_with_start_after_crosses_pages(store: S3ObjectStore, monkeypatch):
    for i in range(7):
        store.put_bytes("logs", f"paged/k{i:02d}", b"1")
    calls = []
    real = store.client.get_paginator

    def small_pages(op):
        pager = real(op)
        orig = pager.paginate

        def paginate(**kw):
            calls.append(kw)
            return orig(PaginationConfig={"PageSize": 2}, **kw)

        pager.paginate = paginate
        return pager

    monkeypatch.setattr(store.client, "get_paginator", small_pages)
    keys = [o.key for o in store.list(store.uri("logs", "paged"), start_after="paged/k02")]
    assert keys == [f"paged/k{i:02d}" for i in range(3, 7)]
    assert calls[0]["StartAfter"] == "paged/k02"


def test_missing_kms_key_is_a_clear_error(bucket_names):
    with pytest.raises(ValueError, match="DERMAOPS_KMS_KEY_ID"):
        S3ObjectStore(buckets=bucket_names, kms_key_id="").put_bytes("raw", "k", b"1")
