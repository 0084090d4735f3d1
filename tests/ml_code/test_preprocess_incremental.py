"""The processing job's speed-ups keep its outputs: the process pool gives the bytes the serial
path gives, and a rerun after new images arrive decodes only those into a new segment, naming
the earlier segments again by content hash, and reads back as the splits a fresh run writes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermaops_resources.object_store import LocalObjectStore
from dermaops_services.ingestion import ingest_dataset
from ml_code.data import preprocess
from ml_code.data.split_reader import SegmentedImages, load_splits, open_split_images, previous_input_files
from ml_code.package.image_policy import decode_square
from ml_code.tools.demo_data import generate_demo_dataset

SPLITS = ("train", "val", "test")
NEW = 3  # images added between the two runs (about 2 % of the set)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, Path]:
    """One demo set ingested twice into one store: first without its last NEW rows, then whole."""
    base = tmp_path_factory.mktemp("incr")
    source = generate_demo_dataset(base / "source", n_lesions_per_class=12, images_per_lesion=(1, 2),
                                   image_size=(90, 70), seed=5)
    full = pd.read_csv(source / "HAM10000_metadata.csv", dtype=str)
    store = LocalObjectStore(root=str(base / "store"))
    out = {}
    for name, meta in (("old", full.iloc[:-NEW]), ("new", full)):
        meta.to_csv(source / "HAM10000_metadata.csv", index=False)
        handle, _ = ingest_dataset(str(source), store, salt="s" * 32)
        out[name] = store.local_path(handle.manifest_uri).parent
        out["images"] = store.local_path(handle.images_prefix_uri)
    return out


def _run(manifests: dict[str, Path], which: str, out: Path, **kwargs) -> dict:
    return preprocess.run(manifests[which], manifests["images"], out, image_size=32, **kwargs)


def _same_outputs(a: Path, b: Path) -> None:
    """The same splits: labels and index byte for byte, and the same pixels row for row (a rerun's
    pixels sit in other segments than a fresh run's, so the files differ)."""
    for split in SPLITS:
        for part in ("labels.npy", "index.csv"):
            assert (a / f"{split}_{part}").read_bytes() == (b / f"{split}_{part}").read_bytes(), f"{split}_{part}"
        pixels_a, pixels_b = open_split_images(a, split), open_split_images(b, split)
        assert pixels_a.shape == pixels_b.shape
        np.testing.assert_array_equal(np.asarray(pixels_a), np.asarray(pixels_b), err_msg=split)


def test_the_process_pool_writes_the_bytes_the_serial_path_writes(manifests, tmp_path: Path) -> None:
    serial = _run(manifests, "new", tmp_path / "serial", num_workers=1)
    pooled = _run(manifests, "new", tmp_path / "pooled", num_workers=2)
    _same_outputs(tmp_path / "serial", tmp_path / "pooled")
    assert serial["decoded"] == pooled["decoded"] == sum(serial["images"].values()) > 100


def test_a_handful_of_images_is_shared_among_every_worker(manifests, tmp_path: Path) -> None:
    """Fewer images than a chunk per worker (a rerun's few new images in one split) are cut into
    one chunk per worker, and give the pixels the serial path gives."""
    rows = pd.read_csv(manifests["new"] / "manifest.csv", dtype=str).head(6)
    items = list(zip(rows["image_key"], rows["sha256"]))
    decoded = {}
    for workers in (1, 2):
        path = tmp_path / f"w{workers}.npy"
        with preprocess.SplitPixelsFile(path, len(items), 32) as out, preprocess.Decoder(workers) as decoder:
            starts = [start for start, reasons in decoder.map_into(manifests["images"], items, 32, out,
                                                                   np.arange(len(items))) if not any(reasons)]
        decoded[workers] = np.load(path)
        assert starts == ([0] if workers == 1 else [0, 3])
    np.testing.assert_array_equal(decoded[1], decoded[2])
    assert decoded[2].any(axis=(1, 2, 3)).all()


@pytest.mark.parametrize("mode", ["segments", "merged, copy_file_range", "merged, read-write"])
def test_a_rerun_with_new_images_decodes_only_those(manifests, tmp_path: Path, monkeypatch, mode) -> None:
    """Known pixels are named again in the earlier segments; a split that would span more than
    MAX_SEGMENTS is merged into one by copying, by the kernel where it can (``copy_file_range``)
    and by reads and writes where it cannot (another file system, macOS): the same splits as a
    fresh run every way."""
    if mode.startswith("merged"):
        monkeypatch.setattr(preprocess, "MAX_SEGMENTS", 1)
        monkeypatch.setattr(preprocess, "_KERNEL_COPY", mode.endswith("copy_file_range") and preprocess._KERNEL_COPY)
    first = _run(manifests, "old", tmp_path / "first", num_workers=1)
    decoded: list[int] = []

    def counting(data: bytes, size: int, **kw) -> np.ndarray:
        decoded.append(len(data))
        return decode_square(data, size, **kw)

    monkeypatch.setattr(preprocess, "decode_square", counting)  # in process: num_workers=1
    again = _run(manifests, "new", tmp_path / "again", num_workers=1, previous_dir=tmp_path / "first")
    assert len(decoded) == NEW == again["decoded"]
    assert again["reused"] == sum(first["images"].values())
    spans = {split: len(json.loads((tmp_path / "again" / f"{split}_pixels.json").read_text())["segments"])
             for split in SPLITS}
    assert max(spans.values()) == (1 if mode.startswith("merged") else 2), spans
    monkeypatch.undo()
    _run(manifests, "new", tmp_path / "fresh", num_workers=1)
    _same_outputs(tmp_path / "again", tmp_path / "fresh")


def _staged_maps(first: Path, staged: Path) -> Path:
    """The earlier output as the asset stages it (``JobSpec.input_files``): its maps and indexes
    alone, no pixel segment."""
    for name in previous_input_files(SPLITS):
        (staged / name).parent.mkdir(parents=True, exist_ok=True)
        (staged / name).hardlink_to(first / name)
    return staged


@pytest.mark.parametrize("merging", [False, True], ids=["names the earlier pixels", "decodes a split it would merge"])
def test_a_rerun_given_only_the_earlier_maps_gives_a_fresh_runs_splits(manifests, tmp_path: Path, monkeypatch,
                                                                        merging: bool) -> None:
    """A rerun whose ``previous`` input holds the maps but not the segments (how the asset stages
    it, so SageMaker does not download every earlier pixel) decodes only the new images; a split
    that would merge earlier segments it does not have (past MAX_SEGMENTS) is decoded afresh
    instead of failing on a missing file. Either way the folder, with the segments it names copied
    in as the store does, reads as a fresh run's splits."""
    if merging:
        monkeypatch.setattr(preprocess, "MAX_SEGMENTS", 1)
    first = _run(manifests, "old", tmp_path / "first", num_workers=1)
    staged = _staged_maps(tmp_path / "first", tmp_path / "staged")
    assert not (staged / "pixels").exists()
    again = _run(manifests, "new", tmp_path / "again", num_workers=1, previous_dir=staged, link_previous=False)
    if merging:  # no split spans more segments than allowed; one was decoded afresh, not merged from absent files
        spans = [len(json.loads((tmp_path / "again" / f"{split}_pixels.json").read_text())["segments"])
                 for split in SPLITS]
        assert max(spans) == 1 and again["decoded"] > NEW, (spans, again["decoded"])
    else:
        assert (again["decoded"], again["reused"]) == (NEW, sum(first["images"].values()))
    for name, meta in again["segments"].items():
        if not meta["in_output"]:
            (tmp_path / "again" / name).hardlink_to(tmp_path / "first" / name)
    monkeypatch.undo()
    _run(manifests, "new", tmp_path / "fresh", num_workers=1)
    _same_outputs(tmp_path / "again", tmp_path / "fresh")


def test_a_rerun_writes_only_the_new_pixels_and_names_the_rest(manifests, tmp_path: Path) -> None:
    """What the job entry point writes (``link_previous=False``): segments of the new images only;
    ``summary.json`` lists the earlier segments it names as not in the output, and with them
    copied in (as the store does) the folder reads as a fresh run's splits."""
    first = _run(manifests, "old", tmp_path / "first", num_workers=1)
    again = _run(manifests, "new", tmp_path / "again", num_workers=1, previous_dir=tmp_path / "first",
                 link_previous=False)
    written = {f"pixels/{p.name}" for p in (tmp_path / "again" / "pixels").iterdir()}
    assert written == {name for name, meta in again["segments"].items() if meta["in_output"]}
    assert sum(again["segments"][name]["rows"] for name in written) == NEW
    earlier = {name for name, meta in again["segments"].items() if not meta["in_output"]}
    assert earlier == set(first["segments"])  # every earlier segment is named again, none rewritten
    with pytest.raises(FileNotFoundError, match="materialize processed_splits again"):
        load_splits(tmp_path / "again")
    for name in earlier:
        (tmp_path / "again" / name).hardlink_to(tmp_path / "first" / name)
    _run(manifests, "new", tmp_path / "fresh", num_workers=1)
    _same_outputs(tmp_path / "again", tmp_path / "fresh")


def test_segmented_pixels_index_like_the_array_they_stand_for(manifests, tmp_path: Path) -> None:
    """What training, evaluation and monitoring do with a split's pixels: one image, slices with
    steps, fancy and boolean indexing, the whole array; on a rerun's gathered split."""
    _run(manifests, "old", tmp_path / "first", num_workers=1)
    _run(manifests, "new", tmp_path / "again", num_workers=1, previous_dir=tmp_path / "first")
    splits, _ = load_splits(tmp_path / "again")
    images = splits["train"].images
    assert isinstance(images, SegmentedImages) and images.dtype == np.uint8 and images.ndim == 4
    whole = np.asarray(images)
    assert whole.shape == images.shape == (len(splits["train"].labels), 32, 32, 3)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(whole), 17, replace=False)
    np.testing.assert_array_equal(images[picks], whole[picks])
    np.testing.assert_array_equal(images[np.sort(picks)], whole[np.sort(picks)])
    np.testing.assert_array_equal(images[whole[:, 0, 0, 0] > 128], whole[whole[:, 0, 0, 0] > 128])
    np.testing.assert_array_equal(images[3:40:3], whole[3:40:3])
    np.testing.assert_array_equal(images[-1], whole[-1])
    np.testing.assert_array_equal(images[len(whole) // 2], whole[len(whole) // 2])
    with pytest.raises(IndexError):
        images[len(whole)]


def test_earlier_splits_of_other_pixels_are_not_reused(manifests, tmp_path: Path) -> None:
    _run(manifests, "old", tmp_path / "first", num_workers=1)
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())
    summary["pixels_version"] = "0" * 16  # e.g. made by another Pillow or another image policy
    (tmp_path / "first" / "summary.json").write_text(json.dumps(summary))
    again = _run(manifests, "new", tmp_path / "again", num_workers=1, previous_dir=tmp_path / "first")
    assert again["reused"] == 0 and again["decoded"] == sum(again["images"].values())
    # a missing or broken folder is only a cache miss, never an error
    (tmp_path / "first" / "train_pixels.json").write_bytes(b"not a pixel map")
    summary["pixels_version"] = preprocess.pixels_version(32)
    (tmp_path / "first" / "summary.json").write_text(json.dumps(summary))
    assert _run(manifests, "new", tmp_path / "third", num_workers=1, previous_dir=tmp_path / "first")["reused"] == 0


DRAFT_TOLERANCE = {"max": 32, "mean": 2.5}
"""How far JPEG draft decoding (DCT scaling, ``Image.draft``, which ``decode_square`` uses when
the reduced image still covers the output) may move pixels from a full-resolution decode of the
same crop: largest difference of one channel value (0-255) and mean absolute difference of one
image. Measured (benchmarks/ingest_preprocess.py --image-size 64): HAM10000 200 x 150 at 64 px
(scale 1/2), max 28, per-image mean 0.60 on average, 2.0 at worst; at 96 px no draft applies
and the pixels are identical. This test's textured 640 x 480 JPEG at 64 px: max 5, mean 0.55."""


def test_draft_decoding_stays_within_the_stated_tolerance_of_a_full_decode() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    lesion = ((xx - 320) ** 2 / 150**2 + (yy - 240) ** 2 / 110**2 < 1)[..., None]
    skin = np.array([205, 150, 130]) + rng.normal(0, 12, (480, 640, 3))
    img = np.where(lesion, np.array([90, 55, 40]) + rng.normal(0, 20, (480, 640, 3)), skin)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    full = Image.open(io.BytesIO(data)).convert("RGB")  # no draft: every DCT coefficient decoded
    side = min(full.size)
    left, top = (full.width - side) / 2, (full.height - side) / 2
    reference = np.asarray(full.resize((64, 64), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side)))
    drafted = decode_square(data, 64)
    diff = np.abs(drafted.astype(int) - reference.astype(int))
    assert diff.max() <= DRAFT_TOLERANCE["max"] and diff.mean() <= DRAFT_TOLERANCE["mean"], (diff.max(), diff.mean())
    assert diff.max() > 0  # draft mode really was used (else this test proves nothing)


def test_a_rerun_decodes_its_new_images_while_the_split_is_assigned(manifests, tmp_path: Path, monkeypatch) -> None:
    """The new images go to the decoding workers before the split is worked out (the split waits
    here until a worker has written pixels into the new segment, and would time out otherwise),
    into one segment that every split holding a new image names. A new image that does not decode
    is quarantined and left out of every split; the rest reads back as a fresh run's splits."""
    import shutil
    import time

    images = tmp_path / "images"
    shutil.copytree(manifests["images"], images)
    old_ids = set(pd.read_csv(manifests["old"] / "manifest.csv", dtype=str)["image_id"])
    new_rows = pd.read_csv(manifests["new"] / "manifest.csv", dtype=str)
    new_rows = new_rows[~new_rows["image_id"].isin(old_ids)]
    broken = new_rows.iloc[0]
    (images / broken["image_key"]).write_bytes(b"not a JPEG any more")
    first = preprocess.run(manifests["old"], images, tmp_path / "first", image_size=32, num_workers=2)

    split_rows = preprocess.grouped_stratified_split
    seen: list[float] = []

    def split_after_a_worker_has_written(manifest, *args, **kwargs):
        pending = list((tmp_path / "again" / "pixels").glob(".segment-*.tmp"))
        assert len(pending) == 1, pending  # the one new segment, created before the split
        header = int(np.load(pending[0], mmap_mode="r").offset)
        deadline = time.monotonic() + 30
        while not pending[0].read_bytes()[header:].strip(b"\0"):
            assert time.monotonic() < deadline, "no new image was decoded while the split was assigned"
            time.sleep(0.01)
        seen.append(time.monotonic())
        return split_rows(manifest, *args, **kwargs)

    monkeypatch.setattr(preprocess, "grouped_stratified_split", split_after_a_worker_has_written)
    again = preprocess.run(manifests["new"], images, tmp_path / "again", image_size=32, num_workers=2,
                           previous_dir=tmp_path / "first", link_previous=False)
    monkeypatch.undo()
    assert seen
    written = [name for name, meta in again["segments"].items() if meta["in_output"]]
    assert len(written) == 1 and again["segments"][written[0]]["rows"] == NEW - 1
    assert again["decoded"] == NEW and again["reused"] == sum(first["images"].values())
    holding = {split for split in SPLITS
               if written[0] in json.loads((tmp_path / "again" / f"{split}_pixels.json").read_text())["segments"]}
    assert holding == {split for split in SPLITS
                       if set(pd.read_csv(tmp_path / "again" / f"{split}_index.csv", dtype=str)["image_id"])
                       & set(new_rows["image_id"])}
    quarantined = pd.read_csv(tmp_path / "again" / "quarantine.csv", dtype=str)
    assert quarantined["image_id"].tolist() == [broken["image_id"]]
    assert "sha256 does not match" in quarantined["reason"].iloc[0]
    for name, meta in again["segments"].items():  # the earlier segments, as the store copies them in
        if not meta["in_output"]:
            (tmp_path / "again" / name).hardlink_to(tmp_path / "first" / name)
    preprocess.run(manifests["new"], images, tmp_path / "fresh", image_size=32, num_workers=2)
    _same_outputs(tmp_path / "again", tmp_path / "fresh")
