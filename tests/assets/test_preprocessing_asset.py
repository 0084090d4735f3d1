"""processed_splits reuses an earlier job's splits only when every file of them is stored, and keeps
every lesion in its split when data grows."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from dermaops_assets.checks import no_lesion_leakage
from dermaops_assets.preprocessing import _complete_splits, processed_splits
from dermaops_resources.handles import ProcessedSplitsHandle, RawImagesHandle
from dermaops_resources.jobs import LocalJobRunner, read_split_index
from dermaops_resources.object_store import LocalObjectStore
from dermaops_services.ingestion import ingest_dataset
from ml_code.data.splits import SPLITS
from ml_code.tools.demo_data import generate_demo_dataset
from tests.support.batches import land_batch
from tests.support.dagster_io import HandleIO


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


def _materialize_splits(store: LocalObjectStore, raw: RawImagesHandle, work: Path):
    """processed_splits and its no_lesion_leakage check, as a run materialises them."""
    store.put_json("models", "handles/raw_images.json", {
        "type": f"{RawImagesHandle.__module__}:{RawImagesHandle.__qualname__}", "handle": raw.model_dump()})
    result = dg.materialize(
        [dg.AssetSpec("raw_images"), processed_splits, no_lesion_leakage],
        resources={"store": store, "io_manager": HandleIO(store), "jobs": LocalJobRunner(work_root=str(work))},
        selection=["processed_splits"],
        run_config={"ops": {"processed_splits": {"config": {"image_size": 16, "num_workers": 1}}}})
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    (mat,) = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    index = read_split_index(store, result.output_for_node("processed_splits").splits_uri)
    return index, check, {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def test_a_landed_batch_keeps_every_lesion_in_its_split_and_the_check_still_blocks(tmp_path: Path) -> None:
    """Data grows by a landed batch (a fifth more lesions): every old image stays in its split,
    the new test split holds the old one, the split rule is on the asset; a planted leak in the
    stored splits still fails the blocking check."""
    base = generate_demo_dataset(tmp_path / "base", n_lesions_per_class=5, images_per_lesion=(1, 2),
                                 image_size=(40, 30), seed=4)
    batch = tmp_path / "batch"
    land_batch(batch, base)
    store = LocalObjectStore(root=str(tmp_path / "store"))
    first, _ = ingest_dataset(str(base), store, salt="t")
    grown, _ = ingest_dataset([str(base), str(batch)], store, salt="t")
    assert grown.num_images > first.num_images
    before, check_before, metadata = _materialize_splits(store, first, tmp_path / "jobs1")
    after, check_after, _ = _materialize_splits(store, grown, tmp_path / "jobs2")
    assert check_before.passed and check_after.passed
    assert "keyed-hash-v1" in metadata["split_rule"] and "dermaops-split-v1:seed=42" in metadata["split_rule"]
    old = before.set_index("image_id")["split"]
    assert after.set_index("image_id")["split"].reindex(old.index).equals(old)
    assert set(before.loc[before["split"] == "test", "image_id"]) <= set(after.loc[after["split"] == "test", "image_id"])
    assert len(after) > len(before)

    # a planted leak: one lesion's image copied into another split's stored index
    splits_uri = store.uri("processed", "leaky")
    leaked = after[after["split"] == "train"].iloc[[0]]
    for split in SPLITS:
        rows = after[after["split"] == split]
        if split == "test":
            rows = pd.concat([rows, leaked.assign(image_id="LEAK")])
        store.put_bytes("processed", f"leaky/{split}_index.csv", rows.drop(columns="split").to_csv(index=False).encode())
    leaky = ProcessedSplitsHandle(splits_uri=splits_uri, content_hash="c", image_size=16, classes=[], split_counts={},
                                  raw_manifest_hash=grown.manifest_hash)
    result = no_lesion_leakage(leaky, grown, store)
    assert not result.passed and result.metadata["lesions_in_several_splits"].value == 1


def test_a_rerun_after_a_landed_batch_decodes_only_its_images(dermaops_home: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    """processed_splits hands its job the newest splits of the same size: after a batch lands,
    the job decodes only the batch's images and names the segments it already has; the asset
    links those into the new stored splits (the same files, no bytes copied), which then read
    as the earlier pixels plus the batch's."""
    import os

    import numpy as np

    from ml_code.data.split_reader import load_splits
    import dagster as dg

    from dermaops_assets.ingestion import raw_images
    from dermaops_assets.preprocessing import processed_splits
    from dermaops_resources.jobs import LocalJobRunner
    from ml_code.tools.demo_data import generate_demo_dataset
    from tests.support.batches import land_batch

    dataset = generate_demo_dataset(tmp_path / "dataset", n_lesions_per_class=4, image_size=(64, 48), seed=3)
    landing = tmp_path / "landing"
    monkeypatch.setenv("DERMAOPS_RAW_URI", str(dataset))
    monkeypatch.setenv("DERMAOPS_LANDING_URI", str(landing))
    store = LocalObjectStore(root=str(tmp_path / "store"))
    resources = {"store": store, "jobs": LocalJobRunner(work_root=str(tmp_path / "jobs"))}

    folders: list[Path] = []

    def summary() -> dict:
        result = dg.materialize([raw_images, processed_splits], resources=resources)
        assert result.success
        splits_uri = result.asset_materializations_for_node("processed_splits")[0].metadata["splits_uri"].value
        folders.append(store.local_path(splits_uri))
        return store.get_json(f"{splits_uri}/summary.json")

    first = summary()
    assert first["reused"] == 0 and first["decoded"] == sum(first["images"].values())
    new_rows = land_batch(landing / "2026-11-30-clinic-b", dataset)
    second = summary()
    assert second["decoded"] == len(new_rows) and second["reused"] == sum(first["images"].values())
    earlier = [name for name, meta in second["segments"].items() if not meta["in_output"]]
    assert sorted(earlier) == sorted(first["segments"])
    assert all(os.path.samefile(folders[0] / name, folders[1] / name) for name in earlier)
    before, _ = load_splits(folders[0])
    after, _ = load_splits(folders[1])

    def pixels_by_id(folder: Path, splits: dict) -> dict[str, np.ndarray]:
        return {image_id: splits[split].images[row] for split in SPLITS for row, image_id in
                enumerate(pd.read_csv(folder / f"{split}_index.csv", dtype=str)["image_id"])}

    old, new = pixels_by_id(folders[0], before), pixels_by_id(folders[1], after)
    assert set(old) < set(new) and len(new) - len(old) == len(new_rows)
    for image_id, pixels in old.items():  # every earlier image, wherever the rerun put it
        np.testing.assert_array_equal(new[image_id], pixels, err_msg=image_id)


def test_splits_that_name_earlier_segments_fail_clearly_without_them(tmp_path: Path) -> None:
    """A job output naming earlier segments it did not write is completed from the earlier splits;
    when none were given, or one is gone from them, the asset fails saying so, and such a folder
    is never taken as complete."""
    from dermaops_assets.preprocessing import complete_from_previous

    store = LocalObjectStore(root=str(tmp_path / "store"))
    prefix = "splits/0123456789abcdef/splits"
    splits_uri = store.uri("processed", prefix)
    store.put_json("processed", f"{prefix}/summary.json", {
        "splits": {"train": {}}, "segments": {"pixels/aa.npy": {"rows": 2, "in_output": False}}})
    store.put_json("processed", f"{prefix}/classes.json", ["mel", "nv"])
    for part in ("pixels.json", "labels.npy", "index.csv"):
        store.put_bytes("processed", f"{prefix}/train_{part}", b"x")
    assert not _complete_splits(store, splits_uri)
    with pytest.raises(dg.Failure, match="no earlier splits were given"):
        complete_from_previous(store, splits_uri, None)
    earlier = store.uri("processed", "splits/fedcba9876543210/splits")
    with pytest.raises(dg.Failure, match="missing from"):
        complete_from_previous(store, splits_uri, earlier)
    store.put_bytes("processed", "splits/fedcba9876543210/splits/pixels/aa.npy", b"segment")
    assert complete_from_previous(store, splits_uri, earlier) == 1
    assert _complete_splits(store, splits_uri)
