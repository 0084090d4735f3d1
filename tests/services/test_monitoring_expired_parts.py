"""The inference log after the 30-day rule expired some (or all) of its parts, or the capture files
its rows point at."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermaops_services.monitoring import LOG_PREFIX, load_inference_log
from dermaops_resources.object_store import LocalObjectStore
from ml_code.monitoring.capture import rows_to_parquet_bytes
from tests.support.monitoring_world import solid_capture

START = datetime(2024, 5, 1, tzinfo=UTC)


def _write_parts(store: LocalObjectStore, parts: int) -> None:
    """2 rows per part; each part's requests in their own capture file, image grey level = global row number."""
    for seq in range(parts):
        capture = solid_capture(store, f"datacapture/ep/AllTraffic/{seq}.jsonl", [2 * seq, 2 * seq + 1])
        rows = pd.DataFrame({"inference_time": [START + timedelta(hours=2 * seq + i) for i in range(2)],
                             "inference_id": [f"i{2 * seq + i}" for i in range(2)],
                             "capture_object_uri": [capture] * 2, "capture_line": [0, 1]})
        store.put_bytes("logs", f"{LOG_PREFIX}/parts/{seq:08d}.parquet", rows_to_parquet_bytes(rows))


def test_an_expired_part_is_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    _write_parts(store, 4)
    store.delete(store.uri("logs", f"{LOG_PREFIX}/parts/00000001.parquet"))  # expired
    store.delete(store.uri("logs", "datacapture/ep/AllTraffic/2.jsonl"))  # the captures of part 2 expired
    with caplog.at_level(logging.WARNING, logger="dermaops.monitoring"):
        rows, images = load_inference_log(store, {"parts": 4}, with_images=True, image_size=2)
    assert rows["inference_id"].tolist() == ["i0", "i1", "i6", "i7"]
    assert np.concatenate(images)[:, 0, 0, 0].tolist() == [0, 1, 6, 7], "images stay aligned with rows"
    assert rows.attrs["missing_parts"] == 1 and rows.attrs["captures_gone"] == 2
    assert "1 of 4 part(s)" in caplog.text and "2 whose capture object is gone" in caplog.text

    rows, images = load_inference_log(store, {"parts": 4}, columns=["inference_id"])
    assert rows["inference_id"].tolist() == ["i0", "i1", "i4", "i5", "i6", "i7"] and images == []
    assert rows.attrs["missing_parts"] == 1, "without images, the rows whose captures expired still count"


def test_rows_of_parts_written_before_capture_pointers_have_no_image(tmp_path: Path) -> None:
    """A part from before the log kept pointers (its images were in a ``.npy`` no longer read): its rows
    are there without images, and asking for images leaves them out, counted."""
    store = LocalObjectStore(root=str(tmp_path / "store"))
    _write_parts(store, 2)
    old = pd.DataFrame({"inference_time": [START - timedelta(hours=1)], "inference_id": ["old"]})
    store.put_bytes("logs", f"{LOG_PREFIX}/parts/00000002.parquet", rows_to_parquet_bytes(old))
    rows, _ = load_inference_log(store, {"parts": 3}, columns=["inference_id"])
    assert rows["inference_id"].tolist() == ["i0", "i1", "i2", "i3", "old"]
    rows, images = load_inference_log(store, {"parts": 3}, with_images=True, image_size=2,
                                      columns=["inference_id"])
    assert rows["inference_id"].tolist() == ["i0", "i1", "i2", "i3"] and list(rows.columns) == ["inference_id"]
    assert np.concatenate(images)[:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert rows.attrs["no_capture_pointer"] == 1


def test_a_log_whose_every_part_expired_is_empty_not_an_error(tmp_path: Path) -> None:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    _write_parts(store, 3)
    for obj in list(store.list(store.uri("logs", f"{LOG_PREFIX}/parts"))):
        store.delete(obj.uri)
    rows, images = load_inference_log(store, {"parts": 3}, since=START, with_images=True, image_size=2,
                                      columns=["inference_time", "inference_id"])
    assert rows.empty and list(rows.columns) == ["inference_time", "inference_id"] and images == []
    assert rows.attrs["missing_parts"] == 3
