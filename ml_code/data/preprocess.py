"""Processing job: raw manifest + images -> lesion-grouped, resized, memory-mappable splits.

Runs unchanged as a SageMaker Processing script and under the local job runner
(``python -m ml_code.data.preprocess``). Contract (docs/ARCHITECTURE.md, "Processing job"):

inputs   ``manifest`` (folder holding manifest.csv), ``images`` (the raw images prefix,
         files at ``<images>/<image_key>``)
output   ``splits``: ``pixels/<sha256>.npy`` segments of uint8 (n, S, S, 3) RGB and
         ``{split}_pixels.json`` naming a split's rows in them (``ml_code.data.split_reader``),
         ``{split}_labels.npy`` int64 (N,), ``{split}_index.csv``, ``classes.json``,
         ``summary.json`` (its ``segments`` say which segment files the output holds),
         ``quarantine.csv``
optional input ``previous``: an earlier job's ``splits`` output, whose segments are reused by
         content hash (:class:`PreviousPixels`): a rerun decodes only the new images, into one
         new segment the splits share, while it assigns the split (:class:`DecodedAhead`), and
         names the earlier segments again (``in_output: false`` in
         ``summary.json``: the caller copies them from ``previous``, server-side; see
         ``dermaops_assets.preprocessing.complete_from_previous``)
hyperparameters  :class:`ml_code.data.options.PreprocessOptions`: ``image_size`` (64),
         ``val_fraction`` (0.15), ``test_fraction`` (0.15), ``seed`` (42), optional
         ``num_workers`` (decoding processes; default: CPU count); an unknown one fails the job

Each image is centre-cropped to a square on its shorter side and resized with
Lanczos, so lesions are not squashed. Arrays are written row by row at their offsets
in an ``.npy`` file (:class:`SplitPixelsFile`), so memory stays flat for any dataset
size, and every output is written under a temporary name and renamed at the end.
A split whose rows would span more than :data:`MAX_SEGMENTS` segments is written into one
fresh segment (copied from the earlier ones), so reruns never fragment a split without bound. An image that cannot be read, fails its sha256, or does not decode is
written to quarantine.csv and the job goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ml_code import CLASSES, contract
from ml_code.atomic import atomic_open, atomic_path, sync_file, sync_folder, write_text_atomic
from ml_code.data import near_duplicates
from ml_code.data.csv_text import csv_text
from ml_code.data.options import DEFAULTS, parse_preprocess_options
from ml_code.data.split_reader import (PIXELS_FORMAT, SEGMENT_FOLDER, pixels_manifest_name, read_pixel_map,
                                      rows_of_runs, runs_of_rows)
from ml_code.data.splits import SPLITS, check_no_leakage, describe_split, grouped_stratified_split
from ml_code.gc_scope import older_objects_frozen

#: Per-split index. ``age``/``sex``/``localization`` are the clinical context the descriptor
#: model reads (``ml_code.package.descriptors``); empty when the manifest has none.
INDEX_COLUMNS = ("image_id", "lesion_id", "dx", "label", "sha256", "age", "sex", "localization")
BATCH = 256  # images per progress line and per copy batch: bounds memory whatever the image size
CHUNK = 64  # images per pool task: few enough tasks to cost little, small enough to keep every core busy
MAX_SEGMENTS = 8
"""Most segments one split's rows may span; beyond it the split is copied into one new segment.
Monthly reruns reach it after about eight months; a reader's gather over eight files costs
little next to decoding."""


# The endpoint's own decode/crop/resize (code/inference.py ships alone in model.tar.gz, so the
# definition lives there): training images and served requests get identical pixels.
from ml_code.package import image_policy  # noqa: E402
from ml_code.package.image_policy import ImageRefused, decode_square  # noqa: E402


class _Rejected(Exception):
    pass


def _process_one(path: Path, expected_sha: str, size: int) -> np.ndarray:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _Rejected(f"image file missing at {path.name} (under the images input)") from None
    except OSError as exc:
        raise _Rejected(f"cannot read {path.name}: {exc}") from None
    if expected_sha and hashlib.sha256(data).hexdigest() != expected_sha:
        raise _Rejected(f"{path.name}: sha256 does not match the manifest; the stored file changed after ingestion")
    try:
        return decode_square(data, size)
    except ImageRefused as exc:  # the one image policy's reason, as ingestion and the endpoint give it
        raise _Rejected(f"{path.name}: {exc.reason}") from None
    except Exception as exc:  # noqa: BLE001 - any decode failure quarantines this image only
        raise _Rejected(f"{path.name}: does not decode ({type(exc).__name__}: {exc})") from None


def pixels_version(size: int) -> str:
    """What a stored ``(size, size, 3)`` array of an image depends on besides the image's bytes:
    the image policy's source (decode, orientation, colour, crop, resize), the Pillow version
    (its decoders and resampling) and ``size``. Arrays are reused across jobs only when this
    matches (:class:`PreviousPixels`); 16 hex digits."""
    import PIL

    policy = Path(image_policy.__file__ or "").read_bytes()
    return hashlib.sha256(policy + f"\0Pillow {PIL.__version__}\0{int(size)}".encode()).hexdigest()[:16]


class SplitPixelsFile:
    """A segment (``pixels/<sha256>.npy``) while it is written: uint8 ``(n, size, size, 3)`` rows land
    at their byte offsets, decoded ones written by the decoding workers (:func:`decode_chunk_into`,
    by path and offset) and, when a split is merged (:data:`MAX_SEGMENTS`), runs of earlier
    segments' rows with ``copy_file_range`` (the kernel copies page cache to page cache: no memory
    map, no page fault per 4 KiB, no Python loop per image). numpy writes the header
    (``open_memmap``, which leaves the body sparse); the file is named and synced by
    :class:`EarlySync` before it is published."""

    def __init__(self, path: Path, n: int, size: int):
        created = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        self.path, self.offset, self.row_bytes = Path(path), int(created.offset), size * size * 3
        del created
        self.fd = os.open(path, os.O_RDWR)

    def __enter__(self) -> SplitPixelsFile:
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)

    def copy_rows(self, src_fd: int, src_offset: int, src_row: int, dst_row: int, count: int) -> None:
        """Rows ``dst_row..dst_row+count`` <- the same number of rows of another file of this row
        size, starting at its row ``src_row`` (its array data at byte ``src_offset``)."""
        _copy_range(src_fd, self.fd, count * self.row_bytes, src_offset + src_row * self.row_bytes,
                    self.offset + dst_row * self.row_bytes)


def _copy_range(src_fd: int, dst_fd: int, count: int, src_at: int, dst_at: int) -> None:
    """``count`` bytes from ``src_fd`` at ``src_at`` to ``dst_fd`` at ``dst_at``: ``os.copy_file_range``
    where the kernel offers it between these files, else reads and writes of 8 MiB."""
    global _KERNEL_COPY
    while count > 0:
        if _KERNEL_COPY:
            try:
                done = os.copy_file_range(src_fd, dst_fd, count, src_at, dst_at)
            except (AttributeError, OSError):  # no such call here, or not between these file systems
                _KERNEL_COPY = False
                continue
        else:
            data = os.pread(src_fd, min(count, 8 << 20), src_at)
            done = os.pwrite(dst_fd, data, dst_at) if data else 0
        if done <= 0:
            raise OSError(f"earlier split file ended {count} bytes early; it was truncated after it was written")
        count, src_at, dst_at = count - done, src_at + done, dst_at + done


_KERNEL_COPY = hasattr(os, "copy_file_range")


class PreviousPixels:
    """Where an earlier job's splits hold each image's decoded pixels, by image content hash: a
    rerun after new images arrive names those rows again instead of decoding (or copying) them.

    Content addressing makes this safe: an index row's ``sha256`` is that of the stored raw
    bytes the row's pixels were decoded from, the manifest check in :func:`_process_one` ties a
    new row to the same bytes, segments are named by the sha256 of their own bytes, and
    ``summary.json``'s ``pixels_version`` must equal this job's (:func:`pixels_version`), so a
    change to the decoder, Pillow or the size decodes afresh. A folder that is missing, of
    another version, of the single-file format from before segments, or unreadable offers
    nothing (never an error: it is only a cache). Only the small maps and indexes are read
    (:func:`ml_code.data.split_reader.previous_input_files` names them); segment bytes are read only to link them
    (``run(link_previous=True)``) or to merge a split (:data:`MAX_SEGMENTS`). A folder staged
    without its segments (the asset stages only those files) is still a complete cache for a rerun:
    rows are named in segments the caller copies in the store; a split that would have to merge
    them is decoded afresh instead (:func:`_unstaged_merge`)."""

    def __init__(self, folder: Path | None, size: int):
        self.folder = folder
        self.where: dict[str, tuple[str, int]] = {}  # image sha256 -> (segment name, row in it)
        self.segment_rows: dict[str, int] = {}  # segment name -> rows it holds
        self.reason = ""
        if folder is None or not (folder / "summary.json").is_file():
            self.reason = "no earlier splits given"
            return
        try:
            summary = json.loads((folder / "summary.json").read_text())
            if summary.get("pixels_version") != pixels_version(size):
                self.reason = "earlier splits have other pixels (decoder, Pillow or size changed)"
                return
            if "segments" not in summary:
                self.reason = "earlier splits are single files (written before segments); decoding afresh"
                return
            self.segment_rows = {name: int(meta["rows"]) for name, meta in summary["segments"].items()}
            for split in summary.get("splits", {}):
                pixel_map = read_pixel_map(folder, split)
                index = read_text_csv(folder / f"{split}_index.csv", usecols=["sha256"])
                if pixel_map is None or int(pixel_map["shape"][0]) != len(index) or \
                        list(pixel_map["shape"][1:]) != [size, size, 3]:
                    raise ValueError(f"{split} pixel map does not match its index")
                runs = pixel_map["runs"]
                names = [str(n) for n in pixel_map["segments"]]
                if not set(names) <= set(self.segment_rows):
                    raise ValueError(f"{split} names segments summary.json does not list")
                segment_of_row, row_in_segment = rows_of_runs(runs)
                for sha, seg, row in zip(index["sha256"].tolist(), segment_of_row.tolist(), row_in_segment.tolist()):
                    if sha:
                        self.where.setdefault(sha, (names[seg], row))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.where, self.segment_rows = {}, {}
            self.reason = f"earlier splits unreadable ({type(exc).__name__}: {exc})"

    def describe(self) -> str:
        """What the job log says of the earlier splits: images reusable, why none, segments staged."""
        staged = sum(map(self.has_segment, self.segment_rows))
        return (f"{len(self.where)} images' pixels reusable" + (f" ({self.reason})" if self.reason else "")
                + (f"; {staged} of {len(self.segment_rows)} earlier segments staged here" if self.segment_rows else ""))

    def has_segment(self, name: str) -> bool:
        """Whether segment ``name``'s bytes were staged with the earlier output (only its maps may be)."""
        return self.folder is not None and (self.folder / name).is_file()

    def segment_path(self, name: str) -> Path:
        """The earlier output's file of segment ``name`` (FileNotFoundError when it is not there)."""
        path = Path(self.folder or ".") / name
        if not path.is_file():
            raise FileNotFoundError(f"segment {name} of the earlier splits is missing from the 'previous' input "
                                    f"{self.folder}; pass the complete splits folder of an earlier run")
        return path


def decode_chunk_into(images_dir: Path, items: list[tuple[str, str]], size: int, path: Path, data_offset: int,
                      rows: list[int]) -> list[str | None]:
    """Decode ``items`` (``(image_key, sha256)`` pairs) and write item i's ``(size, size, 3)`` uint8
    pixels at row ``rows[i]`` of the ``.npy`` at ``path`` (its array data starting at byte
    ``data_offset``); returns a reason per item (None when it decoded; its row is then left as it
    was). A module-level function so a process pool can run it: each worker writes its rows
    itself, so only the reasons travel back, not the pixels (9,913 images at 96 px were 275 MB
    pickled through pipes and written again by the job process)."""
    row_bytes = size * size * 3
    reasons: list[str | None] = []
    fd = os.open(path, os.O_WRONLY)
    try:
        for (key, sha), row in zip(items, rows):
            try:
                pixels = _process_one(images_dir / key, sha, size)
            except _Rejected as exc:
                reasons.append(str(exc))
                continue
            data = memoryview(np.ascontiguousarray(pixels, dtype=np.uint8)).cast("B")
            if len(data) != row_bytes:
                raise ValueError(f"row {row}: {len(data)} bytes of pixels, expected {row_bytes}")
            at = data_offset + int(row) * row_bytes
            while data:
                done = os.pwrite(fd, data, at)
                data, at = data[done:], at + done
            reasons.append(None)
    finally:
        os.close(fd)
    return reasons


class Decoder:
    """Decodes chunks of images in a process pool sized to the cores (or in this process when
    ``workers`` is 1): Pillow's resampling and the policy's Python code hold the GIL long enough
    that threads did not scale. Outputs are byte-identical whatever ``workers`` is (the same
    :func:`decode_chunk_into` runs either way; ``tests/ml_code/test_preprocess_incremental.py``)."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self.pool = None
        if self.workers > 1:
            # forked: the workers are all started here (one task each), before this job starts a
            # thread of its own (EarlySync's)
            self.pool = contract.forked_process_pool(self.workers)
            for started in [self.pool.submit(os.getpid) for _ in range(self.workers)]:
                started.result()
        self.decoded = 0

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def map_into(self, images_dir: Path, items: list[tuple[str, str]], size: int, out: SplitPixelsFile,
                 rows: np.ndarray):
        """Decode ``items`` into ``out``, item i at row ``rows[i]``; yield ``(start, reasons)`` per
        chunk of ``items``, in order, with at most ``2 * workers`` chunks in flight. Chunks hold
        :data:`CHUNK` items, fewer when there are too few items to give every worker one: a rerun's
        handful of new images per split would otherwise go to one worker while the others idle."""
        chunks = self._chunks(items, rows)
        self.decoded += len(items)
        if self.pool is None:
            for start, chunk, chunk_rows in chunks:
                yield start, decode_chunk_into(images_dir, chunk, size, out.path, out.offset, chunk_rows)
            return
        pending: deque = deque()
        for start, chunk, chunk_rows in chunks:
            pending.append((start, self.pool.submit(decode_chunk_into, images_dir, chunk, size, out.path,
                                                    out.offset, chunk_rows)))
            if len(pending) >= 2 * self.workers:
                s, fut = pending.popleft()
                yield s, fut.result()
        while pending:
            s, fut = pending.popleft()
            yield s, fut.result()

    def decode_ahead(self, images_dir: Path, items: list[tuple[str, str]], size: int, out: SplitPixelsFile,
                     rows: np.ndarray) -> Iterator[tuple[int, list[str | None]]]:
        """:meth:`map_into` with every chunk handed to the workers now, so they decode while this
        process does something else; the returned iterator gives ``(start, reasons)`` in order,
        waiting where a chunk is not done. For a few images (a rerun's new ones): every chunk is
        in flight at once. Without a pool the images are decoded as the iterator is read."""
        chunks = self._chunks(items, rows)
        self.decoded += len(items)
        if self.pool is None:
            return ((start, decode_chunk_into(images_dir, chunk, size, out.path, out.offset, chunk_rows))
                    for start, chunk, chunk_rows in chunks)
        futures = [(start, self.pool.submit(decode_chunk_into, images_dir, chunk, size, out.path, out.offset,
                                            chunk_rows)) for start, chunk, chunk_rows in chunks]
        return ((start, future.result()) for start, future in futures)

    def _chunks(self, items: list[tuple[str, str]], rows: np.ndarray) -> list[tuple[int, list, list[int]]]:
        step = max(1, min(CHUNK, -(-len(items) // self.workers)))
        return [(s, items[s:s + step], [int(r) for r in rows[s:s + step]]) for s in range(0, len(items), step)]


AHEAD_SHARE = 4
"""A job decodes its new images ahead, into one segment the splits share (:class:`DecodedAhead`),
when an earlier job's pixels are reused and the new images are at most 1/AHEAD_SHARE of its rows."""


class DecodedAhead:
    """A rerun's new images (rows whose pixels ``previous`` does not hold), decoded by the workers
    into one new segment while this process assigns the split, then named by every split that
    holds them: the split and leakage check (a tenth of a 10,000-row rerun) and the decoding no
    longer wait for each other, and a rerun writes one small segment, not one per split.

    Only for a rerun's few new images (:data:`AHEAD_SHARE`): a job that decodes most of its rows
    writes each split's pixels as one contiguous segment after the split (what training reads).
    :meth:`collect` waits for the workers, quarantines the images that did not decode and seals
    the segment; :attr:`where` then maps each decoded image's sha256 to ``(segment, row)``, as
    :attr:`PreviousPixels.where` does, and :attr:`failed` names the rows left out."""

    def __init__(self, manifest: pd.DataFrame, images_dir: Path, out_dir: Path, size: int, decoder: Decoder,
                 previous: PreviousPixels, publish: contextlib.ExitStack):
        self.where: dict[str, tuple[str | Future, int]] = {}
        self.failed: set[str] = set()  # image ids
        self.name: str | Future | None = None
        self.slot: dict | None = None
        self.rows = 0
        self._pending: Iterator | None = None
        shas = manifest["sha256"].astype(str).tolist()  # a required manifest column (_read_manifest)
        new = [i for i, sha in enumerate(shas) if sha not in previous.where]
        if not previous.where or not new or len(new) * AHEAD_SHARE > len(manifest):
            return
        self._ids = [str(v) for v in manifest["image_id"].to_numpy()[new]]
        self._shas = [shas[i] for i in new]
        items = list(zip(manifest["image_key"].astype(str).to_numpy()[new].tolist(), self._shas))
        self.slot = _new_segment(out_dir, publish)
        self._file = SplitPixelsFile(self.slot["tmp"], len(new), size)
        publish.callback(self._close)  # on an error before collect(); closing twice is harmless
        self._size = size
        self._pending = decoder.decode_ahead(images_dir, items, size, self._file, np.arange(len(new)))

    def collect(self, out_dir: Path, early_sync: EarlySync, quarantine: list[dict[str, str]],
                progress: dict[str, float]) -> None:
        """Wait for the new images; quarantine those that did not decode; seal the segment."""
        if self._pending is None:
            return
        ok = np.zeros(len(self._ids), dtype=bool)
        try:
            for start, reasons in self._pending:
                for k, reason in enumerate(reasons, start):
                    if reason is None:
                        ok[k] = True
                    else:
                        quarantine.append({"image_id": self._ids[k], "reason": reason})
                        self.failed.add(self._ids[k])
        finally:
            self._close()
        self._pending = None
        progress["done"] += len(ok)
        kept = np.flatnonzero(ok)
        print(f"[preprocess] {len(kept)}/{len(ok)} new images decoded while the split was assigned", flush=True)
        if not len(kept):
            return
        if len(kept) < len(ok):
            _compact_rows(self.slot["tmp"], kept, self._size)
        self.name = early_sync.seal(self.slot, out_dir)
        self.rows = int(len(kept))
        self.where = {self._shas[k]: (self.name, row) for row, k in enumerate(kept.tolist())}

    def _close(self) -> None:
        if self._file.fd >= 0:
            os.close(self._file.fd)
            self._file.fd = -1


class EarlySync:
    """Names and writes finished segments to disk in a background thread.

    Each segment is hashed (its content-addressed name) and ``fsync``-ed before it is published;
    done at the end, the three hashes and syncs of a HAM10000-sized job (hundreds of MB) ran one
    after another with every core idle. ``seal`` does both while the job decodes the next split
    (``hashlib`` and ``fsync`` hold no GIL), and leaving the block waits for every one, so a
    segment is published only after its own sync has returned. An error in the background is
    raised when the block is left."""

    def __enter__(self) -> EarlySync:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="split-sync")
        self._pending: list[Future] = []
        return self

    def seal(self, slot: dict, out_dir: Path) -> Future:
        """Hash the finished segment ``slot["tmp"]``, set ``slot["final"]`` to its content-addressed
        path under ``out_dir`` and sync it, in the background; the Future gives its name."""
        def name_and_sync() -> str:
            name = _segment_name(slot["tmp"])
            slot["final"] = out_dir / name
            sync_file(slot["tmp"])
            return name

        done = self._pool.submit(name_and_sync)
        self._pending.append(done)
        return done

    def __exit__(self, exc_type, *exc) -> None:
        self._pool.shutdown(wait=True)
        if exc_type is None:
            for done in self._pending:
                done.result()


def _new_segment(out_dir: Path, publish_at_end: contextlib.ExitStack) -> dict[str, Path | None]:
    """A temporary segment file in ``out_dir/pixels`` (``slot["tmp"]``); the caller sets
    ``slot["final"]`` (its content-addressed path) and it is renamed to that when
    ``publish_at_end`` closes without an error, or deleted otherwise: a failed job publishes no
    pixels."""
    folder = out_dir / SEGMENT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=".segment-", suffix=".tmp")
    os.close(fd)
    slot: dict[str, Path | bool | None] = {"tmp": Path(name), "final": None, "drop": False}

    @contextlib.contextmanager
    def rename_when_published():
        try:
            yield
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        if slot["final"] is not None and not slot["drop"]:
            os.replace(name, slot["final"])  # same name = same bytes: replacing is harmless
        else:
            Path(name).unlink(missing_ok=True)

    publish_at_end.enter_context(rename_when_published())
    return slot


def _segment_name(path: Path) -> str:
    """The content-addressed name of a finished segment file: ``pixels/<sha256 of its bytes>.npy``."""
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return f"{SEGMENT_FOLDER}/{digest}.npy"


def _write_split(
    split: str,
    rows: pd.DataFrame,
    images_dir: Path,
    out_dir: Path,
    size: int,
    decoder: Decoder,
    previous: PreviousPixels,
    quarantine: list[dict[str, str]],
    progress: dict[str, float],
    publish: contextlib.ExitStack,
    early_sync: EarlySync,
    new_segments: dict[str, int],
    ahead: DecodedAhead,
) -> tuple[pd.DataFrame, dict]:
    """Write one split: rows named where ``previous`` or ``ahead`` holds their pixels, the rest
    decoded into one new segment; returns the index rows actually written and the split's pixel
    map (``{split}_pixels.json``, written by the caller once every segment is synced). Rows whose
    image ``ahead`` could not decode are left out (quarantined there).

    ``new_segments`` (name -> rows) collects the segments this job writes. The new segment is
    published when ``publish`` closes (after every split is written), and
    ``early_sync`` starts writing it to disk at once, while the next split decodes."""
    if ahead.failed:
        rows = rows[~rows["image_id"].astype(str).isin(ahead.failed)]
    n = len(rows)
    shas = rows["sha256"].astype(str).tolist() if "sha256" in rows else [""] * n
    known = [previous.where.get(sha) if sha else None for sha in shas]
    if _unstaged_merge(known, shas, previous, ahead):
        known = [None] * n
    reused = sum(k is not None for k in known)
    progress["reused"] += reused
    if ahead.where:
        known = [k if k is not None else ahead.where.get(sha) for k, sha in zip(known, shas)]
    ok = np.fromiter((k is not None for k in known), dtype=bool, count=n)
    names: list = list(dict.fromkeys(k[0] for k in known if k is not None))  # in first-use order
    number = {name: j for j, name in enumerate(names)}
    segment_of_row = np.full(n, -1, np.int64)
    row_in_segment = np.zeros(n, np.int64)
    hits = np.flatnonzero(ok)
    if len(hits):
        segment_of_row[hits] = [number[known[i][0]] for i in hits]
        row_in_segment[hits] = [known[i][1] for i in hits]

    todo = np.flatnonzero(~ok)
    slot = None
    if len(todo):
        slot = _new_segment(out_dir, publish)
        with SplitPixelsFile(slot["tmp"], len(todo), size) as out:
            decoded = _decode_into(out, split, rows.iloc[todo], images_dir, size, decoder, quarantine, progress,
                                   reused)
        kept = np.flatnonzero(decoded)
        if len(kept) < len(todo):
            _compact_rows(slot["tmp"], kept, size)
        if len(kept):
            name = early_sync.seal(slot, out_dir)  # a Future of the name, until the job resolves it
            names.append(name)
            new_segments[name] = int(len(kept))
            ok[todo[kept]] = True
            segment_of_row[todo[kept]] = len(names) - 1
            row_in_segment[todo[kept]] = np.arange(len(kept))

    keep = np.flatnonzero(ok)
    segment_of_row, row_in_segment = segment_of_row[keep], row_in_segment[keep]
    if len(names) > MAX_SEGMENTS:  # merge: one segment again, copied from the others
        paths = {name: previous.segment_path(name) for name in names if name not in new_segments}
        if ahead.name in names:  # shared with other splits: read unpublished, kept for them
            paths[ahead.name] = ahead.slot["tmp"]
        if slot is not None and names[-1] in new_segments and names[-1] is not ahead.name:
            paths[names[-1]] = slot["tmp"]  # this split's new segment: not yet published
            new_segments.pop(names[-1])
            slot["drop"] = True  # merged, so no split names it: dropped when the job publishes
        name = _merge_into_one_segment(out_dir, [paths[name] for name in names], segment_of_row, row_in_segment,
                                       size, publish, early_sync)
        names, segment_of_row, row_in_segment = [name], np.zeros(len(keep), np.int64), np.arange(len(keep))
        new_segments[name] = int(len(keep))
    pixel_map = {"format": PIXELS_FORMAT, "shape": [int(len(keep)), size, size, 3], "segments": names,
                 "runs": runs_of_rows(segment_of_row, row_in_segment)}

    written = rows if len(keep) == n else rows.iloc[keep]  # a copy of every column when nothing was dropped
    labels = written["dx"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(dtype=np.int64)
    with atomic_open(out_dir / f"{split}_labels.npy", sync_folder=False) as fh:
        np.save(fh, labels)
    index = [labels.astype(str).tolist() if c == "label" else
             written[c].tolist() if c in written.columns else [""] * len(written) for c in INDEX_COLUMNS]
    write_text_atomic(out_dir / f"{split}_index.csv", csv_text(INDEX_COLUMNS, index), sync_folder=False)
    return written, pixel_map


def _unstaged_merge(known: list[tuple[str, int] | None], shas: list[str], previous: PreviousPixels,
                    ahead: DecodedAhead) -> bool:
    """Whether a split whose rows ``previous`` holds as ``known`` would span more than
    :data:`MAX_SEGMENTS` segments (the earlier ones, the rerun's decoded-ahead one, a new one for the
    rest) while some earlier segment was not staged: merging copies bytes that are not here, so
    the split is decoded afresh into one segment instead (what a monthly rerun reaches after about
    eight months when only the maps are staged)."""
    earlier = {k[0] for k in known if k is not None}
    if all(previous.has_segment(name) for name in earlier):
        return False
    rest = [sha for sha, k in zip(shas, known) if k is None]
    extra = int(any(sha in ahead.where for sha in rest)) + int(any(sha not in ahead.where for sha in rest))
    return len(earlier) + extra > MAX_SEGMENTS


def _compact_rows(path: Path, keep: np.ndarray, size: int) -> None:
    """Rewrite the ``.npy`` at ``path`` to hold only rows ``keep`` (the images that decoded), in
    batches; the compact file takes ``path``'s place (still unpublished)."""
    arr = np.load(path, mmap_mode="r")
    with atomic_path(path) as compact:
        dst = np.lib.format.open_memmap(compact, mode="w+", dtype=np.uint8, shape=(len(keep), size, size, 3))
        for s in range(0, len(keep), BATCH * 4):
            dst[s:s + BATCH * 4] = arr[keep[s:s + BATCH * 4]]
        dst.flush()
        del dst
    del arr


def _merge_into_one_segment(out_dir: Path, files: list[Path], segment_of_row: np.ndarray, row_in_segment: np.ndarray,
                            size: int, publish: contextlib.ExitStack, early_sync: EarlySync) -> Future:
    """Copy a split's rows, in order, from the segment ``files`` (``segment_of_row`` indexes them)
    into one new segment; returns a Future of its name (:meth:`EarlySync.seal`)."""
    runs = runs_of_rows(segment_of_row, row_in_segment)
    slot = _new_segment(out_dir, publish)
    with SplitPixelsFile(slot["tmp"], len(segment_of_row), size) as out, contextlib.ExitStack() as opened:
        fds: dict[int, tuple[int, int]] = {}
        at = 0
        for seg, first, count in runs:
            if seg not in fds:
                fd = os.open(files[seg], os.O_RDONLY)
                opened.callback(os.close, fd)
                fds[seg] = (fd, int(np.load(files[seg], mmap_mode="r").offset))
            out.copy_rows(fds[seg][0], fds[seg][1], first, at, count)
            at += count
    return early_sync.seal(slot, out_dir)


def _decode_into(
    out: SplitPixelsFile,
    split: str,
    rows: pd.DataFrame,
    images_dir: Path,
    size: int,
    decoder: Decoder,
    quarantine: list[dict[str, str]],
    progress: dict[str, float],
    reused: int = 0,
) -> np.ndarray:
    """Decode ``rows``' images into ``out``, row i of ``rows`` at row i; returns which rows
    decoded (the others are quarantined with their reason)."""
    image_ids = rows["image_id"].astype(str).tolist()
    keys = rows["image_key"].astype(str).tolist()
    shas = rows["sha256"].astype(str).tolist() if "sha256" in rows else [""] * len(rows)
    ok = np.zeros(len(rows), dtype=bool)
    items = list(zip(keys, shas))
    reported = 0
    for start, reasons in decoder.map_into(images_dir, items, size, out, np.arange(len(items))):
        here = np.arange(start, start + len(reasons))
        good = np.array([r is None for r in reasons], dtype=bool)
        ok[here[good]] = True
        for i, reason in zip(here[~good], (r for r in reasons if r is not None)):
            quarantine.append({"image_id": image_ids[i], "reason": reason or "unknown error"})
        progress["done"] += len(reasons)
        if start + len(reasons) - reported >= BATCH or start + len(reasons) == len(items):
            reported = start + len(reasons)
            elapsed = time.monotonic() - progress["t0"]
            print(
                f"[preprocess] {split}: {reported}/{len(items)} images decoded, {reused} reused "
                f"({progress['done']:.0f}/{progress['total']:.0f} decoded in total, "
                f"{progress['done'] / max(elapsed, 1e-9):.0f} img/s)",
                flush=True,
            )
    return ok


def _resolved(name: str | Future) -> str:
    return name.result() if isinstance(name, Future) else name


def link_previous_segments(out_dir: Path, previous: PreviousPixels, segments: dict[str, dict]) -> None:
    """Put the earlier segments a rerun names into ``out_dir`` too (a hard link where the file
    systems allow, else a synced copy), so the folder is a whole splits channel on its own:
    for callers that read the output in place. The job entry point leaves them out; the
    object store copies them server-side instead."""
    for name, meta in segments.items():
        if meta["in_output"]:
            continue
        src, dst = previous.segment_path(name), out_dir / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:  # another file system, or links not allowed: copy
                with atomic_path(dst, sync_folder=False) as tmp:
                    shutil.copyfile(src, tmp)
        meta["in_output"] = True


def _manifest_path(manifest_input: Path) -> Path:
    if manifest_input.is_file():
        return manifest_input
    path = manifest_input / "manifest.csv"
    if not path.is_file():
        found = sorted(p.name for p in manifest_input.iterdir()) if manifest_input.is_dir() else []
        raise FileNotFoundError(
            f"manifest.csv not found in the 'manifest' input {manifest_input} (found: {found[:10]}); "
            "pass the folder the ingestion step wrote manifest.csv to"
        )
    return path


def read_text_csv(path: Path, usecols: list[str] | None = None) -> pd.DataFrame:
    """A CSV file as text columns, empty cells as ``""``: ``pd.read_csv(path, dtype=str,
    keep_default_na=False, usecols=usecols)``. Parsed by pyarrow (a quarter of the time for a
    10,000-row manifest, which every rerun reads); a file it will not parse (a line break inside
    a quoted cell, a short row) goes to pandas' own parser, whose result or error is the answer."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, usecols=usecols, engine="pyarrow")
    except Exception:  # noqa: BLE001 - the fast path only; the C parser gives the answer or the error
        return pd.read_csv(path, dtype=str, keep_default_na=False, usecols=usecols)


def _read_manifest(manifest_file: Path) -> pd.DataFrame:
    """The raw manifest, all text; ValueError when a required column is missing or an id repeats."""
    manifest = read_text_csv(manifest_file)
    required = ["image_id", "lesion_id", "dx", "image_key", "sha256"]
    missing = [c for c in required if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest.csv lacks columns {missing}; it must follow the raw manifest schema "
                         "(docs/ARCHITECTURE.md)")
    if manifest["image_id"].duplicated().any():
        dups = manifest.loc[manifest["image_id"].duplicated(), "image_id"].head(5).tolist()
        raise ValueError(f"manifest.csv has duplicate image_id values (e.g. {dups}); re-run ingestion")
    return manifest


def _write_splits(manifest: pd.DataFrame, images_dir: Path, out_dir: Path, image_size: int, decoder: Decoder,
                  earlier: PreviousPixels, ahead: DecodedAhead, quarantine: list[dict[str, str]],
                  progress: dict[str, float], publish: contextlib.ExitStack,
                  early_sync: EarlySync) -> tuple[dict[str, pd.DataFrame], dict[str, dict], dict]:
    """Every split's segments, pixel map, labels and index (:func:`_write_split`); returns each
    split's written index rows, its pixel map and the segments written (name -> rows), names
    still Futures until ``early_sync`` is done (:func:`_publish_pixel_maps`)."""
    written: dict[str, pd.DataFrame] = {}
    pixel_maps: dict[str, dict] = {}
    new_segments: dict = {ahead.name: ahead.rows} if ahead.name is not None else {}
    groups = manifest.groupby("split", sort=False).indices
    for split in SPLITS:
        rows = manifest.iloc[groups.get(split, [])]
        written[split], pixel_maps[split] = _write_split(split, rows, images_dir, out_dir, image_size, decoder,
                                                         earlier, quarantine, progress, publish, early_sync,
                                                         new_segments, ahead)
    if ahead.name is not None and not any(ahead.name in pm["segments"] for pm in pixel_maps.values()):
        new_segments.pop(ahead.name)  # every split that held it was merged into a segment of its own
        ahead.slot["drop"] = True
    return written, pixel_maps, new_segments


def _publish_pixel_maps(out_dir: Path, earlier: PreviousPixels, pixel_maps: dict[str, dict], new_segments: dict,
                        link_previous: bool) -> dict[str, dict]:
    """Once every segment is synced and published: write each split's pixel map and return
    ``summary.json``'s ``segments`` (every segment a split names: written here, or an earlier one,
    for the caller to copy, or linked when ``link_previous``)."""
    pixel_maps = {split: {**pm, "segments": [_resolved(n) for n in pm["segments"]]} for split, pm in pixel_maps.items()}
    new_segments = {_resolved(name): rows for name, rows in new_segments.items()}
    segments = {name: {"rows": new_segments[name] if name in new_segments else earlier.segment_rows[name],
                       "in_output": name in new_segments}
                for pixel_map in pixel_maps.values() for name in pixel_map["segments"]}
    if link_previous:
        link_previous_segments(out_dir, earlier, segments)
    for split, pixel_map in pixel_maps.items():
        write_text_atomic(out_dir / pixels_manifest_name(split), json.dumps(pixel_map), sync_folder=False)
    return segments


@older_objects_frozen()  # the manifest, split and index frames: see ml_code.gc_scope
def run(
    manifest_input: Path,
    images_dir: Path,
    out_dir: Path,
    image_size: int = DEFAULTS.image_size,
    val_fraction: float = DEFAULTS.val_fraction,
    test_fraction: float = DEFAULTS.test_fraction,
    seed: int = DEFAULTS.seed,
    num_workers: int | None = DEFAULTS.num_workers,
    previous_dir: Path | None = None,
    link_previous: bool = True,
) -> dict:
    """Do the whole job; returns the summary written to summary.json. ``previous_dir``: an earlier
    ``splits`` output whose segments are named again for known content hashes
    (:class:`PreviousPixels`; the same pixels either way); ``link_previous``: also put those
    segments in ``out_dir`` (:func:`link_previous_segments`), else ``summary.json`` marks them
    ``in_output: false`` for the caller to copy; ``num_workers`` decoding processes (unset: the
    CPUs usable here)."""
    if not isinstance(image_size, int) or not (8 <= image_size <= 1024):
        raise ValueError(f"hyperparameter image_size must be an integer in 8..1024, got {image_size!r}")
    t0 = time.monotonic()
    manifest_file = _manifest_path(manifest_input)
    manifest = _read_manifest(manifest_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    quarantine: list[dict[str, str]] = []
    known = manifest["dx"].isin(CLASSES)
    for image_id, dx in manifest.loc[~known, ["image_id", "dx"]].itertuples(index=False):
        quarantine.append({"image_id": image_id, "reason": f"dx {dx!r} is not one of {list(CLASSES)}"})
    manifest = manifest[known].sort_values("image_id", kind="mergesort").reset_index(drop=True)

    workers = int(num_workers or contract.available_cpus())
    progress = {"done": 0.0, "reused": 0.0, "total": float(len(manifest)), "t0": t0}
    earlier = PreviousPixels(previous_dir, image_size)
    print(f"[preprocess] earlier splits: {earlier.describe()}", flush=True)
    # the decoding pool forks first (no thread of this job exists yet); publish renames every
    # segment once all are written and synced, or deletes them if anything fails
    with contextlib.ExitStack() as publish, Decoder(workers) as decoder, EarlySync() as early_sync:
        ahead = DecodedAhead(manifest, images_dir, out_dir, image_size, decoder, earlier, publish)
        with near_duplicates.pairs_reused():  # the split and its leakage check search the same hashes
            manifest["split"] = grouped_stratified_split(manifest, val_fraction, test_fraction, seed)
            problems = check_no_leakage(manifest)
        if problems:  # cannot happen unless the split code is broken: refuse to write leaky splits
            raise RuntimeError("split leaks lesions across splits: " + "; ".join(problems[:5]))
        print(
            f"[preprocess] {len(manifest)} images, {manifest['lesion_id'].nunique()} lesions; "
            f"size {image_size}px; split counts {manifest['split'].value_counts().to_dict()}",
            flush=True,
        )
        ahead.collect(out_dir, early_sync, quarantine, progress)
        written, pixel_maps, new_segments = _write_splits(manifest, images_dir, out_dir, image_size, decoder, earlier,
                                                          ahead, quarantine, progress, publish, early_sync)
    segments = _publish_pixel_maps(out_dir, earlier, pixel_maps, new_segments, link_previous)
    write_text_atomic(out_dir / "classes.json", json.dumps(list(CLASSES)), sync_folder=False)
    qdf = pd.DataFrame(quarantine, columns=["image_id", "reason"])
    write_text_atomic(out_dir / "quarantine.csv", qdf.to_csv(index=False, lineterminator="\n"), sync_folder=False)
    summary = {
        "image_size": image_size,
        "splits": {s: {c: int((written[s]["dx"] == c).sum()) for c in CLASSES} for s in SPLITS},
        "lesions": {s: int(written[s]["lesion_id"].nunique()) for s in SPLITS},
        "images": {s: int(len(written[s])) for s in SPLITS},
        "quarantined": int(len(qdf)),
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "split_rule": describe_split(val_fraction, test_fraction, seed),
        "manifest_sha256": hashlib.sha256(manifest_file.read_bytes()).hexdigest(),
        "pixels_version": pixels_version(image_size),
        "segments": {name: segments[name] for name in sorted(segments)},
        "decoded": int(progress["done"]),
        "reused": int(progress["reused"]),
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True), sync_folder=False)
    if (out_dir / SEGMENT_FOLDER).is_dir():
        sync_folder(out_dir / SEGMENT_FOLDER)
    sync_folder(out_dir)  # every rename above, in one journal commit instead of one per file
    seconds = time.monotonic() - t0
    print(f"[preprocess] done in {seconds:.1f}s; quarantined {len(qdf)}", flush=True)
    contract.emit_metric(
        images_train=summary["images"]["train"],
        images_val=summary["images"]["val"],
        images_test=summary["images"]["test"],
        lesions_train=summary["lesions"]["train"],
        lesions_val=summary["lesions"]["val"],
        lesions_test=summary["lesions"]["test"],
        quarantined=summary["quarantined"],
        image_size=image_size,
        seconds=round(seconds, 2),
    )
    return summary


def main() -> None:
    opts = parse_preprocess_options(contract.parse_hyperparameters())  # unknown option: ValueError
    run(
        manifest_input=contract.processing_input("manifest"),
        images_dir=contract.processing_input("images"),
        out_dir=contract.processing_output("splits"),
        previous_dir=_optional_input("previous"),
        link_previous=False,  # the caller copies earlier segments in the store (summary.json says which)
        **opts.model_dump(),
    )


def _optional_input(name: str) -> Path | None:
    """A processing input that the caller may leave out: None when it is absent."""
    path = contract.processing_input(name)
    return path if path.is_dir() else None


if __name__ == "__main__":
    contract.run_entry_point(main)
