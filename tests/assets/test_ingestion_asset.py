"""The raw_images asset: the dataset plus every batch landed since, as one data version."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dermaops_assets.ingestion import raw_images
from dermaops_resources.object_store import LocalObjectStore
from ml_code.tools.demo_data import generate_demo_dataset
from tests.resources.test_ingestion import _land_batch


def test_raw_images_ingests_landed_batches_unless_told_not_to(dermaops_home: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    dataset = generate_demo_dataset(tmp_path / "dataset", n_lesions_per_class=2, image_size=(64, 48), seed=1)
    landing = tmp_path / "landing"
    new_rows = _land_batch(landing / "2026-11-27-clinic-a", dataset)
    monkeypatch.setenv("DERMAOPS_RAW_URI", str(dataset))
    monkeypatch.setenv("DERMAOPS_LANDING_URI", str(landing))
    store = LocalObjectStore(root=str(tmp_path / "store"))

    def materialize(include_landed: bool) -> dict:
        result = dg.materialize([raw_images], resources={"store": store}, run_config={
            "ops": {"raw_images": {"config": {"include_landed": include_landed}}}})
        assert result.success
        return result.asset_materializations_for_node("raw_images")[0].metadata

    alone, with_batch = materialize(False), materialize(True)
    assert alone["landed_batches"].value == 0 and with_batch["landed_batches"].value == 1
    assert with_batch["num_images"].value == alone["num_images"].value + len(new_rows)
    assert with_batch["newly_stored"].value == len(new_rows)
    assert with_batch["manifest_hash"].value != alone["manifest_hash"].value
