"""The raw_images asset: the dataset plus every batch landed since, as one data version."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dermaops_assets.ingestion import raw_images
from dermaops_resources.object_store import LocalObjectStore
from ml_code.tools.demo_data import generate_demo_dataset
from tests.support.batches import land_batch as _land_batch


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


def test_raw_images_reports_near_duplicate_pairs(dermaops_home: Path, tmp_path: Path, monkeypatch) -> None:
    """The same picture under a second lesion id (re-encoded, so not byte-identical) is listed in
    the asset's metadata; the manifest carries the hashes the splitter joins it by."""
    import io

    import pandas as pd
    from PIL import Image

    dataset = generate_demo_dataset(tmp_path / "dataset", n_lesions_per_class=2, image_size=(64, 48), seed=1)
    meta = pd.read_csv(dataset / "HAM10000_metadata.csv", dtype=str)
    first = meta.iloc[0]
    source = next((dataset / "images").glob(f"{first['image_id']}.*"))
    copy = io.BytesIO()
    Image.open(source).convert("RGB").save(copy, "JPEG", quality=70)
    (dataset / "images" / "ISIC_COPY.jpg").write_bytes(copy.getvalue())
    extra = first.copy()
    extra["image_id"], extra["lesion_id"] = "ISIC_COPY", "HAM_COPY"
    pd.concat([meta, extra.to_frame().T]).to_csv(dataset / "HAM10000_metadata.csv", index=False)
    monkeypatch.setenv("DERMAOPS_RAW_URI", str(dataset))
    store = LocalObjectStore(root=str(tmp_path / "store"))
    result = dg.materialize([raw_images], resources={"store": store}, run_config={
        "ops": {"raw_images": {"config": {"include_landed": False}}}})
    assert result.success
    md = result.asset_materializations_for_node("raw_images")[0].metadata
    assert md["near_duplicate_pairs_across_lesions"].value >= 1
    assert "ISIC_COPY" in md["near_duplicates"].value and first["image_id"] in md["near_duplicates"].value
    # the table is the published manifest's, though worked out before reading it back: the copy's
    # row comes last in the metadata but first by image id, which orders each pair in the manifest
    from dermaops_assets.ui import table_markdown
    from ml_code.data import near_duplicates

    published = pd.read_csv(io.BytesIO(store.get_bytes(md["manifest_uri"].value)), dtype=str, keep_default_na=False)
    pairs = near_duplicates.pairs_table(published)
    cross = pairs[pairs["lesion_id_a"] != pairs["lesion_id_b"]]
    assert cross["image_id_a"].tolist()[:1] == ["ISIC_COPY"]
    assert md["near_duplicates"].value == table_markdown(cross.head(50).to_dict("records")).value
    assert md["near_duplicate_pairs"].value == len(pairs) == pairs.attrs["pairs"]
    assert md["near_duplicate_table_truncated"].value is False
