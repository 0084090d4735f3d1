"""The no_lesion_leakage check fails on a lesion in two splits and on near-duplicate pictures
across splits."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dermaops_assets.checks import no_lesion_leakage
from dermaops_resources.handles import ProcessedSplitsHandle, RawImagesHandle
from dermaops_resources.object_store import LocalObjectStore
from ml_code.data.splits import SPLITS

A, A_COPY, B = "0" * 64, f"{0b1011:064x}", "f" * 64  # A_COPY is 3 bits from A


def _world(tmp_path: Path, dup_split: str, with_phash: bool = True, lesions: tuple[str, ...] = ("L1", "L2", "L3")):
    store = LocalObjectStore(root=str(tmp_path / "store"))
    index = pd.DataFrame({"image_id": ["I1", "I2", "I3"], "lesion_id": list(lesions), "dx": "nv",
                          "split": ["train", dup_split, "test"]})
    for split in SPLITS:
        rows = index[index["split"] == split].drop(columns="split")
        store.put_bytes("processed", f"splits/{split}_index.csv", rows.to_csv(index=False).encode())
    manifest = index.drop(columns="split").assign(phash=[A, A_COPY, B])
    if not with_phash:
        manifest = manifest.drop(columns="phash")
    manifest_uri = store.put_bytes("raw", "manifests/x/manifest.csv", manifest.to_csv(index=False).encode())
    splits = ProcessedSplitsHandle(splits_uri=store.uri("processed", "splits"), content_hash="c", image_size=8,
                                   classes=["nv"], split_counts={}, raw_manifest_hash="x")
    raw = RawImagesHandle(manifest_uri=manifest_uri, manifest_hash="x", images_prefix_uri="", quarantine_uri="",
                          num_images=3, num_quarantined=0, class_counts={"nv": 3}, source_uri="")
    return splits, raw, store


def test_near_duplicate_pair_across_splits_fails_the_check(tmp_path: Path) -> None:
    result = no_lesion_leakage(*_world(tmp_path, dup_split="val"))
    assert not result.passed
    assert result.metadata["near_duplicates_across_splits"].value == 1
    assert "I1 and I2" in str(result.metadata["problems"].value)


def test_same_split_or_no_hashes_passes(tmp_path: Path) -> None:
    assert no_lesion_leakage(*_world(tmp_path / "a", dup_split="train")).passed
    assert no_lesion_leakage(*_world(tmp_path / "b", dup_split="val", with_phash=False)).passed


def test_one_lesion_in_two_splits_fails_the_check(tmp_path: Path) -> None:
    result = no_lesion_leakage(*_world(tmp_path, dup_split="train", with_phash=False, lesions=("L1", "L2", "L1")))
    assert not result.passed
    assert result.metadata["lesions_in_several_splits"].value == 1
    assert "lesion_id L1 appears in splits ['test', 'train']" in str(result.metadata["problems"].value)
