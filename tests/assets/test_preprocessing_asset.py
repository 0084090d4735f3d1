"""processed_splits reuses an earlier job's splits only when every file of them is stored."""

from __future__ import annotations

from pathlib import Path

from dermaops_assets.preprocessing import _complete_splits
from dermaops_resources.object_store import LocalObjectStore


def test_a_summary_without_its_arrays_is_not_reused(tmp_path: Path) -> None:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    prefix = "splits/0123456789abcdef/splits"
    splits_uri = store.uri("processed", prefix)
    assert not _complete_splits(store, splits_uri)  # nothing there
    # An upload cut short after summary.json (it sorts before the arrays): not complete.
    store.put_json("processed", f"{prefix}/summary.json", {"splits": {"train": {}, "val": {}, "test": {}}})
    store.put_json("processed", f"{prefix}/classes.json", ["mel", "nv"])
    store.put_bytes("processed", f"{prefix}/test_images.npy", b"npy")
    assert not _complete_splits(store, splits_uri)
    for split in ("train", "val", "test"):
        for part in ("images.npy", "labels.npy", "index.csv"):
            store.put_bytes("processed", f"{prefix}/{split}_{part}", b"x")
    assert _complete_splits(store, splits_uri)
