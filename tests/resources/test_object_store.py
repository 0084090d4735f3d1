from __future__ import annotations

import os
from pathlib import Path

import pytest

from dermaops_resources.object_store import LocalObjectStore, join_uri


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(root=str(tmp_path / "store"))


def test_round_trip_and_listing(store: LocalObjectStore) -> None:
    uri = store.put_bytes("raw", "images/ab/abc.jpg", b"jpeg-bytes")
    store.put_bytes("raw", "images/cd/cde.jpg", b"more")
    assert store.get_bytes(uri) == b"jpeg-bytes"
    assert store.exists(uri)
    listed = [o.key for o in store.list(store.uri("raw", "images"))]
    assert listed == ["images/ab/abc.jpg", "images/cd/cde.jpg"]
    after = [o.key for o in store.list(store.uri("raw", "images"), start_after="images/ab/abc.jpg")]
    assert after == ["images/cd/cde.jpg"]
    assert store.split_uri(uri) == ("raw", "images/ab/abc.jpg")


def test_the_set_of_keys_is_the_listing_s_keys(store: LocalObjectStore, tmp_path: Path) -> None:
    """``list_keys`` (what ingestion checks its memo against) names exactly the files ``list`` and
    the cursor walk name: nested folders, no hidden temporary file, no symbolic link followed."""
    for key in ("images/ab/abc.jpg", "images/ab/abd.png", "images/cd/cde.jpg", "images/cd/ef/deep.jpg"):
        store.put_bytes("raw", key, b"x")
    images = Path(store.local_path(store.uri("raw", "images")))
    (images / "ab" / ".segment-123.tmp").write_bytes(b"unpublished")
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (outside / "inner" / "secret.jpg").write_bytes(b"x")
    (images / "linked").symlink_to(outside, target_is_directory=True)
    (images / "cd" / "link.jpg").symlink_to(outside / "inner" / "secret.jpg")
    expected = {"images/ab/abc.jpg", "images/ab/abd.png", "images/cd/cde.jpg", "images/cd/ef/deep.jpg"}
    assert store.list_keys(store.uri("raw", "images")) == expected
    assert {o.key for o in store.list(store.uri("raw", "images"))} == expected
    assert store.list_keys(store.uri("raw", "images/cd")) == {"images/cd/cde.jpg", "images/cd/ef/deep.jpg"}
    assert store.list_keys(store.uri("raw", "nothing-here")) == set()


def test_interrupted_write_leaves_no_partial_object(store: LocalObjectStore) -> None:
    final = store.uri("models", "sha256/x/model.tar.gz")
    store.put_bytes("models", "sha256/x/model.tar.gz", b"old complete model")

    class Boom(RuntimeError):
        pass

    def failing_write(fh):
        fh.write(b"half of a new mod")
        raise Boom("disk went away")

    with pytest.raises(Boom):
        store._publish("models", "sha256/x/model.tar.gz", failing_write)
    # The previous object is intact and no temporary file is left behind or listed.
    assert store.get_bytes(final) == b"old complete model"
    folder = Path(store.local_path(final)).parent
    assert sorted(os.listdir(folder)) == ["model.tar.gz"]
    assert [o.key for o in store.list(store.uri("models", "sha256"))] == ["sha256/x/model.tar.gz"]


def test_upload_and_download_dir(store: LocalObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    prefix = store.upload_dir("processed", "splits/1", src)
    out = store.download_dir(prefix, tmp_path / "dst")
    assert (out / "a.txt").read_text() == "a" and (out / "sub" / "b.txt").read_text() == "b"
    assert store.get_json(store.put_json("logs", "x.json", {"k": 1})) == {"k": 1}
    assert join_uri(prefix, "a.txt") == store.uri("processed", "splits/1/a.txt")


def test_paths_outside_the_store_are_refused(store: LocalObjectStore, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("x")
    with pytest.raises(ValueError, match="outside the local object store"):
        store.get_bytes((tmp_path / "secret.txt").as_uri())
    with pytest.raises(FileNotFoundError):
        store.get_bytes(store.uri("raw", "missing"))


def test_downloading_a_missing_object_names_it_and_writes_nothing(store: LocalObjectStore, tmp_path: Path) -> None:
    """As the S3 store does: the error names the object, and no empty file is left where the copy
    would have gone (a job's staged input, a scratch folder) to be read as an empty object."""
    uri = store.uri("processed", "splits/1/summary.json")
    with pytest.raises(FileNotFoundError, match="No object at .*splits/1/summary.json"):
        store.download_file(uri, tmp_path / "staged" / "summary.json")
    assert not (tmp_path / "staged" / "summary.json").exists()


def test_get_json_or_default(store: LocalObjectStore) -> None:
    uri = store.uri("logs", "x/cursor.json")
    assert store.get_json_or(uri, {"parts": 0}) == {"parts": 0}
    store.put_json("logs", "x/cursor.json", {"parts": 2})
    assert store.get_json_or(uri, None) == {"parts": 2}


def test_copy_links_the_same_file_and_a_later_write_does_not_reach_the_copy(store: LocalObjectStore,
                                                                            monkeypatch) -> None:
    """A rerun's earlier split segments are published again by hard link (no byte copied); objects
    are replaced, never written in place, so writing the source again leaves the copy as it was.
    Where links are refused (another file system) the bytes are copied instead."""
    src = store.put_bytes("processed", "splits/a/splits/pixels/seg.npy", b"segment bytes")
    dst = store.copy(src, "processed", "splits/b/splits/pixels/seg.npy")
    assert os.path.samefile(store.local_path(src), store.local_path(dst))
    assert os.stat(store.local_path(dst)).st_mode & 0o777 == 0o600
    store.put_bytes("processed", "splits/a/splits/pixels/seg.npy", b"replaced")
    assert store.get_bytes(dst) == b"segment bytes"
    with pytest.raises(FileNotFoundError, match="No object at"):
        store.copy(store.uri("processed", "splits/none.npy"), "processed", "splits/c.npy")

    def refuse(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", refuse)
    copied = store.copy(src, "processed", "splits/d/seg.npy")
    assert store.get_bytes(copied) == b"replaced"
    assert not os.path.samefile(store.local_path(src), store.local_path(copied))
