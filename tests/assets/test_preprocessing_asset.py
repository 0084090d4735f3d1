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


def test_a_rerun_after_a_landed_batch_decodes_only_its_images(dermaops_home: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    """processed_splits hands its job the newest splits of the same size: after a batch lands,
    the job copies the pixels it already has and decodes only the batch's images."""
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

    def summary() -> dict:
        result = dg.materialize([raw_images, processed_splits], resources=resources)
        assert result.success
        splits_uri = result.asset_materializations_for_node("processed_splits")[0].metadata["splits_uri"].value
        return store.get_json(f"{splits_uri}/summary.json")

    first = summary()
    assert first["reused"] == 0 and first["decoded"] == sum(first["images"].values())
    new_rows = land_batch(landing / "2026-11-30-clinic-b", dataset)
    second = summary()
    assert second["decoded"] == len(new_rows) and second["reused"] == sum(first["images"].values())
