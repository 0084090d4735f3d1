"""raw_images shows a landed batch it could not read, and still materializes everything else."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dermaops_assets.ingestion import raw_images
from dermaops_resources.object_store import LocalObjectStore
from dermaops_services.raw_source import batch_ref
from tests.support.batches import draw_batch as _draw_batch

TEST_SALT = "landing-tests-salt-" + "0" * 32  # pseudonym salts have at least 32 characters


def test_raw_images_shows_the_quarantined_batch(dermaops_home: Path, tmp_path: Path, monkeypatch) -> None:
    dataset = tmp_path / "dataset"
    _draw_batch(dataset, [("BASE_1", "nv", "50"), ("BASE_2", "mel", "61")])
    landing = tmp_path / "landing"
    _draw_batch(landing / "Doe_Jane_clinic", [("BAD_1", "nv", "50")], metadata=b"\x00\x01garbage" * 20)
    _draw_batch(landing / "good", [("GOOD_1", "nv", "50")], shade=40)
    monkeypatch.setenv("DERMAOPS_RAW_URI", str(dataset))
    monkeypatch.setenv("DERMAOPS_LANDING_URI", str(landing))
    monkeypatch.setenv("DERMAOPS_PSEUDONYM_SALT", TEST_SALT)
    result = dg.materialize([raw_images], resources={"store": LocalObjectStore(root=str(tmp_path / "store"))})
    assert result.success
    md = result.asset_materializations_for_node("raw_images")[0].metadata
    assert md["quarantined_batches"].value == 1 and md["landed_batches"].value == 2
    assert md["num_images"].value == 3 and md["num_quarantined"].value == 1  # base + good batch; the bad one whole
    table = md["quarantined_batch_reasons"].value
    assert batch_ref("Doe_Jane_clinic", TEST_SALT) in table and "NUL bytes" in table and "Doe" not in table
