"""The inference log at volume: reading capture files incrementally (cursor), in parallel and in
bounded parts gives exactly the log a single full read gives; captures of today's endpoint (image
features in the answer) and of older packages (decoded by the monitor) give the same log; the
faster feature code gives the same drift figures as the code it replaced."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import base64
import json

import numpy as np
import pandas as pd
import pytest

from dermaops_resources.object_store import LocalObjectStore
from dermaops_services.monitoring import append_captures, load_inference_log
from ml_code.monitoring import features as F
from ml_code.monitoring.drift import DriftThresholds, feature_drift, psi_edges
from tests.support.monitoring_synth import contrast_stretched, lesion_images
from tests.support.monitoring_world import jpeg_bodies, utc_now, write_captures

SIZE = 24
START = utc_now() - timedelta(hours=2)


def _store_with_captures(root: Path, n: int, answered_features: bool = True) -> tuple[LocalObjectStore, str]:
    """A store whose capture folder holds ``n`` requests; ``answered_features=False``: lines as packages
    from before the endpoint returned ``image_features`` wrote them."""
    store = LocalObjectStore(root=str(root))
    folder = Path(store.uri("logs", "datacapture/ep/AllTraffic")[len("file://"):])
    bodies = jpeg_bodies(lesion_images(16, SIZE, seed=3), 32, 24)
    write_captures(folder, bodies, n, 25, START, 3600, image_size=SIZE if answered_features else None)
    return store, store.uri("logs", "datacapture/ep/AllTraffic")


def _read(store: LocalObjectStore, parts: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The log's rows, each pointing at its capture by key (the stores' roots differ), and their views."""
    rows, images = load_inference_log(store, {"parts": parts}, with_images=True, image_size=SIZE)
    root = store.uri("logs", "")
    assert rows["capture_object_uri"].str.startswith(root).all()
    return rows.assign(capture_object_uri=rows["capture_object_uri"].str[len(root):]), np.concatenate(images)


def test_incremental_and_parallel_reads_give_the_full_read(tmp_path: Path) -> None:
    full_store, prefix = _store_with_captures(tmp_path / "a", 300)
    files = list(full_store.list(prefix))
    full = append_captures(full_store, files, SIZE, 1, 0, workers=1)
    assert full.new_rows == 300 and full.parts == 1 and not full.skipped
    assert full.decoded == 0, "today's captures carry their features: no image is decoded"
    assert not list(full_store.list(full_store.uri("logs", "monitoring/inference_log/parts/00000000.npy")))

    inc_store, prefix = _store_with_captures(tmp_path / "b", 300)
    files = list(inc_store.list(prefix))
    first = append_captures(inc_store, files[:5], SIZE, 1, 0, part_rows=40, workers=1)
    # the second run: only the files after the cursor (the last key read), in worker processes
    after = list(inc_store.list(prefix, start_after=files[4].key))
    assert [f.key for f in after] == [f.key for f in files[5:]]
    second = append_captures(inc_store, after, SIZE, 1, first.parts, first.skipped, part_rows=100, workers=2)
    assert first.new_rows + second.new_rows == 300 and second.parts > first.parts + 1  # several bounded parts

    rows_full, views_full = _read(full_store, full.parts)
    rows_inc, views_inc = _read(inc_store, second.parts)
    pd.testing.assert_frame_equal(rows_inc, rows_full)
    np.testing.assert_array_equal(views_inc, views_full)
    assert len(pd.concat([e for e in first.health + second.health])) == 300  # every line's status/latency

    # the newest rows only (what drift reads): trimmed inside a part, images aligned
    newest, images = load_inference_log(inc_store, {"parts": second.parts}, max_rows=130, with_images=True,
                                        image_size=SIZE)
    root = inc_store.uri("logs", "")
    newest = newest.assign(capture_object_uri=newest["capture_object_uri"].str[len(root):])
    pd.testing.assert_frame_equal(newest, rows_full.iloc[-130:].reset_index(drop=True))
    np.testing.assert_array_equal(np.concatenate(images), views_full[-130:])


def test_a_large_answered_backlog_on_local_disk_is_read_by_workers_into_the_same_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Left to choose (``workers=None``), a backlog of answered captures past
    ``PARALLEL_ANSWERED_MIN_BYTES`` in a local store is parsed by worker processes that read the files
    themselves: the same log, row for row, as one process gives."""
    import dermaops_services.monitoring as M
    from ml_code.monitoring import capture_reader

    store, prefix = _store_with_captures(tmp_path / "a", 200)
    alone = append_captures(store, list(store.list(prefix)), SIZE, 1, 0, workers=1)
    shared, shared_prefix = _store_with_captures(tmp_path / "b", 200)
    monkeypatch.setattr(M, "PARALLEL_ANSWERED_MIN_BYTES", 1)
    monkeypatch.setattr(M, "default_workers", lambda: 2)  # a test worker may be pinned to one core (conftest.py)
    read_by_workers: list[int] = []
    real = capture_reader.parse_chunk_files
    monkeypatch.setattr(capture_reader.ProcessPoolExecutor, "submit",
                        _counting_submit(capture_reader.ProcessPoolExecutor.submit, real, read_by_workers))
    out = append_captures(shared, list(shared.list(shared_prefix)), SIZE, 1, 0, part_rows=60)
    assert read_by_workers and sum(read_by_workers) == len(list(shared.list(shared_prefix))) - 1  # all but the first
    assert out.new_rows == alone.new_rows == 200
    pd.testing.assert_frame_equal(_read(shared, out.parts)[0], _read(store, alone.parts)[0])


def _counting_submit(submit, parse_chunk_files, counts: list[int]):
    """``ProcessPoolExecutor.submit`` that notes how many files each ``parse_chunk_files`` call was given."""
    def counting(pool, fn, *args, **kwargs):
        if fn is parse_chunk_files:
            counts.append(len(args[0]))
        return submit(pool, fn, *args, **kwargs)
    return counting


def test_a_worker_parses_the_bytes_read_not_a_file_changed_since(tmp_path: Path) -> None:
    """Workers re-read local capture files by path; a file that is no longer what the run read (another
    size, or gone) is parsed from the bytes the run holds, so the rows are those of what was read."""
    from ml_code.monitoring.capture_reader import parse_files

    store, prefix = _store_with_captures(tmp_path, 100)
    files = list(store.list(prefix))
    blobs = [(f.uri, store.get_bytes(f.uri)) for f in files]
    expected = pd.concat([c.rows for c in parse_files(blobs, SIZE, 1, workers=1)], ignore_index=True)
    changed = Path(files[1].uri[len("file://"):])
    changed.write_bytes(blobs[1][1].splitlines(keepends=True)[0])  # one line left of 25
    Path(files[2].uri[len("file://"):]).unlink()
    got = pd.concat([c.rows for c in parse_files(blobs, SIZE, 1, workers=2, max_lines=25,
                                                 local_file=store.local_path)], ignore_index=True)
    assert len(got) == 100
    pd.testing.assert_frame_equal(got, expected)


def test_older_captures_are_decoded_into_the_same_log(tmp_path: Path) -> None:
    """Lines without ``image_features`` (packages from before the endpoint returned them) fall back to
    decoding the image in the monitor: the same features, geometry, case mix and views as the
    endpoint's own answers give."""
    new_store, prefix = _store_with_captures(tmp_path / "new", 60)
    old_store, old_prefix = _store_with_captures(tmp_path / "old", 60, answered_features=False)
    new = append_captures(new_store, list(new_store.list(prefix)), SIZE, 1, 0, workers=1)
    old = append_captures(old_store, list(old_store.list(old_prefix)), SIZE, 1, 0, workers=1)
    assert (new.new_rows, new.decoded) == (60, 0) and (old.new_rows, old.decoded) == (60, 60)
    rows_new, views_new = _read(new_store, new.parts)
    rows_old, views_old = _read(old_store, old.parts)
    pd.testing.assert_frame_equal(rows_new, rows_old, check_exact=True)  # the very same floats
    assert np.isfinite(rows_new[list(F.PIXEL_FEATURES)].to_numpy()).all()
    np.testing.assert_array_equal(views_new, views_old)


def _truncate_first_body(store: LocalObjectStore, prefix: str) -> None:
    first = next(iter(store.list(prefix)))
    path = Path(first.uri[len("file://"):])
    lines = path.read_text().splitlines()
    rec = json.loads(lines[0])
    body = base64.b64decode(rec["captureData"]["endpointInput"]["data"])
    rec["captureData"]["endpointInput"]["data"] = base64.b64encode(body[: len(body) // 2]).decode()  # truncated
    path.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")


def test_a_body_that_fails_to_decode_is_skipped_with_its_reason(tmp_path: Path) -> None:
    store, prefix = _store_with_captures(tmp_path, 50, answered_features=False)
    _truncate_first_body(store, prefix)
    out = append_captures(store, list(store.list(prefix)), SIZE, 1, 0, workers=1)
    assert out.new_rows == 49 and out.skipped == {"undecodable_image": 1}


def test_a_logged_request_whose_image_no_longer_decodes_is_left_out_of_the_views(tmp_path: Path) -> None:
    """The endpoint answered (so its features are logged), but the captured body no longer decodes:
    the row stays in the log; asking for images drops it, counted, with the rest aligned."""
    store, prefix = _store_with_captures(tmp_path, 50)
    _truncate_first_body(store, prefix)
    out = append_captures(store, list(store.list(prefix)), SIZE, 1, 0, workers=1)
    assert out.new_rows == 50 and not out.skipped
    rows, images = load_inference_log(store, {"parts": out.parts}, with_images=True, image_size=SIZE)
    assert len(rows) == 49 == len(np.concatenate(images)) and rows.attrs["undecodable"] == 1
    assert rows["inference_id"].iloc[0] == "bench-000000001"


def _reference_features(images: np.ndarray) -> pd.DataFrame:
    """The feature code before issue 19 (interleaved float32, sequential sums), for comparison."""
    rgb = images.astype(np.float32) / 255.0
    n = rgb.shape[0]
    lum = rgb @ F._LUMA
    flat_rgb, flat_lum = rgb.reshape(n, -1, 3), lum.reshape(n, -1)
    cmax, cmin = flat_rgb.max(axis=2), flat_rgb.min(axis=2)
    sat = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-12), 0.0)
    lap = lum[:, :-2, 1:-1] + lum[:, 2:, 1:-1] + lum[:, 1:-1, :-2] + lum[:, 1:-1, 2:] - 4.0 * lum[:, 1:-1, 1:-1]
    bins = np.minimum((flat_lum * 64).astype(np.int64), 63)
    counts = np.stack([np.bincount(b, minlength=64) for b in bins])
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    means, stds = flat_rgb.mean(axis=1), flat_rgb.std(axis=1)
    return pd.DataFrame({
        "brightness": flat_lum.mean(axis=1), "contrast": flat_lum.std(axis=1),
        "red_mean": means[:, 0], "green_mean": means[:, 1], "blue_mean": means[:, 2],
        "red_std": stds[:, 0], "green_std": stds[:, 1], "blue_std": stds[:, 2],
        "saturation_mean": sat.mean(axis=1), "sharpness": lap.reshape(n, -1).var(axis=1), "entropy": entropy})


@pytest.mark.parametrize("shift", [False, True])
def test_feature_code_gives_the_drift_figures_of_the_code_it_replaced(shift: bool) -> None:
    base_imgs = lesion_images(400, 32, seed=1)
    cur_imgs = lesion_images(120, 32, seed=30)
    cur_imgs = contrast_stretched(cur_imgs) if shift else cur_imgs
    names = list(F.PIXEL_FEATURES)
    old_b, old_c = _reference_features(base_imgs), _reference_features(cur_imgs)
    new_b, new_c = F.batch_features(base_imgs)[names], F.batch_features(cur_imgs)[names]
    np.testing.assert_allclose(new_b.to_numpy(), old_b[names].to_numpy(), rtol=1e-4, atol=1e-7)
    t = DriftThresholds()
    figures = []
    for b, c in ((old_b, old_c), (new_b, new_c)):
        edges = {k: psi_edges(b[k].to_numpy()) for k in names}
        figures.append([(f.feature, round(f.psi, 9), round(f.ks_statistic, 9), round(f.ks_p_value, 9), f.drifted)
                        for f in feature_drift(b, c, t, edges=edges, features=names)])
    assert figures[0] == figures[1]
    assert any(d for *_, d in figures[1]) == shift


def test_a_request_captured_twice_is_logged_once_and_counted(tmp_path: Path) -> None:
    """A capture line repeated within a file and in a later file (a retried upload) keeps its first row
    and counts the others as ``duplicate_inference_id``, with the images still aligned to the rows."""
    store, prefix = _store_with_captures(tmp_path / "a", 75)
    files = list(store.list(prefix))
    first, last = (Path(f.uri[len("file://"):]) for f in (files[0], files[-1]))
    lines = first.read_bytes().splitlines()
    first.write_bytes(b"\n".join([*lines, lines[3]]) + b"\n")  # twice within the first file
    last.write_bytes(last.read_bytes() + lines[7] + b"\n" + lines[3] + b"\n")  # and in the last one
    out = append_captures(store, list(store.list(prefix)), SIZE, 1, 0, workers=1)
    assert out.new_rows == 75 and out.skipped == {"duplicate_inference_id": 3}
    rows, views = _read(store, out.parts)
    assert rows["inference_id"].is_unique and len(views) == 75
    clean, clean_prefix = _store_with_captures(tmp_path / "b", 75)
    expected = append_captures(clean, list(clean.list(clean_prefix)), SIZE, 1, 0, workers=1)
    rows_clean, views_clean = _read(clean, expected.parts)
    pd.testing.assert_frame_equal(rows, rows_clean)
    np.testing.assert_array_equal(views, views_clean)
