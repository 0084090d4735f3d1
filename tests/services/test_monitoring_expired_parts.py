"""The inference log after the 30-day rule expired some (or all) of its parts."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermaops_services.monitoring import LOG_PREFIX, load_inference_log
from dermaops_resources.object_store import LocalObjectStore
from ml_code.monitoring.capture import rows_to_parquet_bytes, views_to_npy_bytes

START = datetime(2024, 5, 1, tzinfo=UTC)


def _write_parts(store: LocalObjectStore, parts: int) -> None:
    for seq in range(parts):  # 2 rows per part, image pixel value = global row number
        rows = pd.DataFrame({"inference_time": [START + timedelta(hours=2 * seq + i) for i in range(2)],
                             "inference_id": [f"i{2 * seq + i}" for i in range(2)]})
        views = np.stack([np.full((2, 2, 3), 2 * seq + i, np.uint8) for i in range(2)])
        store.put_bytes("logs", f"{LOG_PREFIX}/parts/{seq:08d}.npy", views_to_npy_bytes(views))
        store.put_bytes("logs", f"{LOG_PREFIX}/parts/{seq:08d}.parquet", rows_to_parquet_bytes(rows))


def test_an_expired_part_is_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    _write_parts(store, 4)
    store.delete(store.uri("logs", f"{LOG_PREFIX}/parts/00000001.parquet"))  # expired
    store.delete(store.uri("logs", f"{LOG_PREFIX}/parts/00000002.npy"))  # half expired: no images for it
    with caplog.at_level(logging.WARNING, logger="dermaops.monitoring"):
        rows, images = load_inference_log(store, {"parts": 4}, with_images=True)
    assert rows["inference_id"].tolist() == ["i0", "i1", "i6", "i7"]
    assert np.concatenate(images)[:, 0, 0, 0].tolist() == [0, 1, 6, 7], "images stay aligned with rows"
    assert rows.attrs["missing_parts"] == 2
    assert "2 of 4 part(s)" in caplog.text

    rows, images = load_inference_log(store, {"parts": 4}, columns=["inference_id"])
    assert rows["inference_id"].tolist() == ["i0", "i1", "i4", "i5", "i6", "i7"] and images == []
    assert rows.attrs["missing_parts"] == 1, "without images, the part whose .npy expired still counts"


def test_a_log_whose_every_part_expired_is_empty_not_an_error(tmp_path: Path) -> None:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    _write_parts(store, 3)
    for obj in list(store.list(store.uri("logs", f"{LOG_PREFIX}/parts"))):
        store.delete(obj.uri)
    rows, images = load_inference_log(store, {"parts": 3}, since=START, with_images=True,
                                      columns=["inference_time", "inference_id"])
    assert rows.empty and list(rows.columns) == ["inference_time", "inference_id"] and images == []
    assert rows.attrs["missing_parts"] == 3
