"""Store-aware reads of the monitoring assets: labels, JSON that may not exist yet, the inference log."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermaops_services.monitoring import LOG_PREFIX, case_mix_rows, load_inference_log, read_labels
from dermaops_resources.object_store import LocalObjectStore
from ml_code.monitoring.capture import rows_to_parquet_bytes
from tests.support.monitoring_world import solid_capture


def test_read_labels_from_folder_and_store_prefix(tmp_path: Path) -> None:
    folder = tmp_path / "labels"
    folder.mkdir()
    (folder / "a.csv").write_text("inference_id,label\ni1,mel\ni2,nv\n")
    (folder / "b.csv").write_text("inference_id,label,reviewer\ni2,bcc,x\n")  # a later correction wins
    (folder / ".partial.csv").write_text("inference_id,label\ni3,df\n")  # hidden: an upload in progress
    (folder / "other.csv").write_text("id,dx\ni4,vasc\n")  # not a labels file
    labels = read_labels(LocalObjectStore(root=str(tmp_path / "store")), str(folder))
    assert dict(zip(labels["inference_id"], labels["label"])) == {"i1": "mel", "i2": "bcc"}

    store = LocalObjectStore(root=str(tmp_path / "store"))
    store.put_bytes("logs", "labels/x.csv", (folder / "a.csv").read_bytes())
    store.put_bytes("logs", "labels/y.csv", (folder / "b.csv").read_bytes())
    labels = read_labels(store, store.uri("logs", "labels"))
    assert dict(zip(labels["inference_id"], labels["label"])) == {"i1": "mel", "i2": "bcc"}

    empty = read_labels(store, str(tmp_path / "nowhere"))
    assert list(empty.columns) == ["inference_id", "label"] and empty.empty


def test_load_inference_log_newest_rows_with_aligned_images(tmp_path: Path) -> None:
    """Rows point at their capture lines (two capture files, rows of one part spanning both); the views
    of the rows returned are decoded from those lines, and only those rows' files are read."""
    store = LocalObjectStore(root=str(tmp_path / "store"))
    start = datetime(2024, 5, 1, tzinfo=timezone.utc)
    first = solid_capture(store, "datacapture/ep/AllTraffic/a.jsonl", list(range(0, 6)))
    second = solid_capture(store, "datacapture/ep/AllTraffic/b.jsonl", list(range(6, 12)))
    for seq in range(3):  # 4 rows per part, image grey level = global row number
        n0 = 4 * seq
        rows = pd.DataFrame({"inference_time": [start + timedelta(hours=n0 + i) for i in range(4)],
                             "inference_id": [f"i{n0 + i}" for i in range(4)],
                             "capture_object_uri": [first if n0 + i < 6 else second for i in range(4)],
                             "capture_line": [(n0 + i) % 6 for i in range(4)]})
        store.put_bytes("logs", f"{LOG_PREFIX}/parts/{seq:08d}.parquet", rows_to_parquet_bytes(rows))
    cursor = {"parts": 3}

    rows, images = load_inference_log(store, cursor, max_rows=6, with_images=True, image_size=2)
    assert rows["inference_id"].tolist() == [f"i{k}" for k in range(6, 12)]
    assert np.concatenate(images)[:, 0, 0, 0].tolist() == list(range(6, 12))
    store.delete(first)  # only the second file is read for the newest 6 rows
    again, images = load_inference_log(store, cursor, max_rows=6, with_images=True, image_size=2)
    pd.testing.assert_frame_equal(again, rows)

    rows, images = load_inference_log(store, cursor, since=start + timedelta(hours=9), columns=["inference_time",
                                                                                               "inference_id"])
    assert rows["inference_id"].tolist() == ["i9", "i10", "i11"] and images == []

    rows, images = load_inference_log(store, {"parts": 0}, columns=["inference_id"])
    assert rows.empty and list(rows.columns) == ["inference_id"] and images == []
    with pytest.raises(ValueError, match="image_size"):
        load_inference_log(store, cursor, with_images=True)


def test_case_mix_rows_leave_out_parts_written_before_the_case_mix() -> None:
    """Rows of older parts have no sex at all (not "unknown"): counting them as requests
    without clinical context would report a completeness drop that never happened."""
    old = pd.DataFrame({"inference_id": ["a", "b"], "brightness": [0.1, 0.2]})
    new = pd.DataFrame({"inference_id": ["c", "d"], "age": [40.0, None], "sex": ["male", "unknown"],
                        "body_region": ["torso", "unknown"]})
    mix = case_mix_rows(pd.concat([old, new], ignore_index=True))
    assert list(mix.columns) == ["age", "sex", "body_region"] and mix["sex"].tolist() == ["male", "unknown"]
    assert case_mix_rows(old).empty


def test_read_labels_normalises_spellings_and_counts_unknown_labels(tmp_path: Path) -> None:
    """Reviewers write 'MEL', 'Melanoma' or 'nv' alike; a label the diagnosis table does not know is
    dropped and counted, never joined as a wrong answer."""
    folder = tmp_path / "labels"
    folder.mkdir()
    (folder / "a.csv").write_text("inference_id,label\ni1,MEL\ni2,Melanocytic nevi\ni3,SCC\ni4,scc\ni5,bkl\n"
                                  "i6,mel\n")
    (folder / "b.csv").write_text("inference_id,label\ni6,lentigo simplex\n")  # the correction is unknown
    labels = read_labels(LocalObjectStore(root=str(tmp_path / "store")), str(folder))
    assert dict(zip(labels["inference_id"], labels["label"])) == {"i1": "mel", "i2": "nv", "i5": "bkl"}
    assert labels.attrs["unknown_labels"] == {"SCC": 1, "lentigo simplex": 1, "scc": 1}
