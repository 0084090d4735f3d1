"""Processing job: raw manifest + images -> lesion-grouped, resized, memory-mappable splits.

Runs unchanged as a SageMaker Processing script and under the local job runner
(``python -m ml_code.data.preprocess``). Contract (docs/ARCHITECTURE.md, "Processing job"):

inputs   ``manifest`` (folder holding manifest.csv), ``images`` (the raw images prefix,
         files at ``<images>/<image_key>``)
output   ``splits``: ``{split}_images.npy`` uint8 (N, S, S, 3) RGB, ``{split}_labels.npy``
         int64 (N,), ``{split}_index.csv``, ``classes.json``, ``summary.json``, ``quarantine.csv``
optional input ``previous``: an earlier job's ``splits`` output, whose arrays are reused by
         content hash (:class:`PreviousPixels`): a rerun decodes only the new images
hyperparameters  :class:`ml_code.data.options.PreprocessOptions`: ``image_size`` (64),
         ``val_fraction`` (0.15), ``test_fraction`` (0.15), ``seed`` (42), optional
         ``num_workers`` (decoding processes; default: CPU count); an unknown one fails the job

Each image is centre-cropped to a square on its shorter side and resized with
Lanczos, so lesions are not squashed. Arrays are written row by row at their offsets
in an ``.npy`` file (:class:`SplitPixelsFile`), so memory stays flat for any dataset
size, and every output is written under a temporary name and renamed at the end. An image that cannot be read, fails its sha256, or does not decode is
written to quarantine.csv and the job goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ml_code import CLASSES, contract
from ml_code.atomic import atomic_open, atomic_path, sync_file, sync_folder, write_text_atomic
from ml_code.data.options import DEFAULTS, parse_preprocess_options
from ml_code.data.splits import SPLITS, check_no_leakage, describe_split, grouped_stratified_split

#: Per-split index. ``age``/``sex``/``localization`` are the clinical context the descriptor
#: model reads (``ml_code.package.descriptors``); empty when the manifest has none.
INDEX_COLUMNS = ("image_id", "lesion_id", "dx", "label", "sha256", "age", "sex", "localization")
BATCH = 256  # images per progress line and per copy batch: bounds memory whatever the image size
CHUNK = 64  # images per pool task: few enough tasks to cost little, small enough to keep every core busy


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
    """A split's ``{split}_images.npy`` while it is written: uint8 ``(n, size, size, 3)`` rows land
    at their byte offsets, decoded ones written by the decoding workers (:func:`decode_chunk_into`,
    by path and offset) and runs of an earlier split's rows with
    ``copy_file_range`` (the kernel copies page cache to page cache: no memory map, no page
    fault per 4 KiB, no Python loop per image), so a rerun that reuses 99% of the pixels costs
    little more than its new images. numpy writes the header (``open_memmap``, which leaves
    the body sparse); the file is synced by :class:`EarlySync` and the ``atomic_path`` that
    publishes it."""

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
    """The decoded arrays of an earlier job's splits, by image content hash: a rerun after new
    images arrive copies every known image's pixels instead of decoding it again.

    Content addressing makes this safe: an index row's ``sha256`` is that of the stored raw
    bytes the row's pixels were decoded from, the manifest check in :func:`_process_one` ties a
    new row to the same bytes, and ``summary.json``'s ``pixels_version`` must equal this job's
    (:func:`pixels_version`), so a change to the decoder, Pillow or the size decodes afresh.
    A folder that is missing, of another version or unreadable offers nothing (never an error:
    it is only a cache)."""

    def __init__(self, folder: Path | None, size: int):
        self.arrays: dict[str, np.ndarray] = {}
        self.where: dict[str, tuple[str, int]] = {}
        self.files: dict[str, tuple[Path, int]] = {}  # split -> (its .npy, byte offset of its rows)
        self.reason = ""
        if folder is None or not (folder / "summary.json").is_file():
            self.reason = "no earlier splits given"
            return
        try:
            summary = json.loads((folder / "summary.json").read_text())
            if summary.get("pixels_version") != pixels_version(size):
                self.reason = "earlier splits have other pixels (decoder, Pillow or size changed)"
                return
            for split in summary.get("splits", {}):
                arr = np.load(folder / f"{split}_images.npy", mmap_mode="r")
                index = pd.read_csv(folder / f"{split}_index.csv", dtype=str, keep_default_na=False)
                if arr.shape[1:] != (size, size, 3) or len(arr) != len(index):
                    raise ValueError(f"{split} arrays do not match their index")
                self.arrays[split] = arr
                self.files[split] = (folder / f"{split}_images.npy", int(arr.offset))
                for row, sha in enumerate(index["sha256"]):
                    if sha:
                        self.where.setdefault(sha, (split, row))
        except (OSError, ValueError, KeyError) as exc:
            self.arrays, self.where, self.files = {}, {}, {}
            self.reason = f"earlier splits unreadable ({type(exc).__name__}: {exc})"

    def fill(self, out: SplitPixelsFile, shas: list[str]) -> np.ndarray:
        """Copy the known images' pixels into ``out`` (row i <- ``shas[i]``); returns which rows were
        filled. Rows that follow each other in both files are copied as one run: a rerun's split
        keeps its earlier images in their order, so a few hundred copies move a whole split."""
        found = np.zeros(len(shas), dtype=bool)
        runs: list[list] = []  # [split, first source row, first destination row, rows]
        for i, sha in enumerate(shas):
            hit = self.where.get(sha) if sha else None
            if hit is None:
                continue
            found[i] = True
            last = runs[-1] if runs else None
            if last is not None and last[0] == hit[0] and last[1] + last[3] == hit[1] and last[2] + last[3] == i:
                last[3] += 1
            else:
                runs.append([hit[0], hit[1], i, 1])
        fds: dict[str, int] = {}
        try:
            for split, src_row, dst_row, count in runs:
                if split not in fds:
                    fds[split] = os.open(self.files[split][0], os.O_RDONLY)
                out.copy_rows(fds[split], self.files[split][1], src_row, dst_row, count)
        finally:
            for fd in fds.values():
                os.close(fd)
        return found


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
            # fork: workers start in milliseconds without re-importing pandas; they are all started
            # here (one task each), before this job starts a thread of its own (EarlySync's), so no
            # fork copies a thread's half-held state; where fork is unavailable the platform
            # default is used
            method = "fork" if "fork" in mp.get_all_start_methods() else None
            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context(method))
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
        chunk of ``items``, in order, with at most ``2 * workers`` chunks in flight."""
        chunks = [(s, items[s:s + CHUNK], [int(r) for r in rows[s:s + CHUNK]]) for s in range(0, len(items), CHUNK)]
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


class EarlySync:
    """Starts writing finished split files to disk in a background thread.

    Each split's ``.npy`` is ``fsync``-ed before it is published (``atomic_path``); done at the end,
    the three syncs of a HAM10000-sized job (hundreds of MB) ran one after another with every core
    idle. ``start`` syncs a finished file while the job decodes the next split (``fsync`` waits on
    the disk and holds no GIL), and leaving the block waits for every sync, so a file is published
    only after its own sync has returned (``atomic_path`` syncs it again; by then it is clean, and
    cheap). An error of a background sync is raised when the block is left."""

    def __enter__(self) -> EarlySync:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="split-sync")
        self._pending: list[Future] = []
        return self

    def start(self, path: Path) -> None:
        """Begin writing ``path``'s data to disk (returns at once)."""
        self._pending.append(self._pool.submit(sync_file, path))

    def __exit__(self, exc_type, *exc) -> None:
        self._pool.shutdown(wait=True)
        if exc_type is None:
            for done in self._pending:
                done.result()


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
) -> pd.DataFrame:
    """Write one split's pixels (copied or decoded) into its ``.npy``; returns the index rows actually written.

    The pixels file is published when ``publish`` closes (after every split is written), and
    ``early_sync`` starts writing it to disk at once, while the next split decodes: the final
    ``fsync`` then finds little left to write."""
    n = len(rows)
    tmp_path = publish.enter_context(atomic_path(out_dir / f"{split}_images.npy", sync_folder=False))
    with SplitPixelsFile(tmp_path, n, size) as out:
        ok = _decode_into(out, split, rows, images_dir, size, decoder, previous, quarantine, progress)
    if not ok.all():
        # compact: copy the decoded rows into a right-sized array, in batches, which then
        # takes the place of the full-sized one (still unpublished)
        keep = np.flatnonzero(ok)
        arr = np.load(tmp_path, mmap_mode="r")
        with atomic_path(tmp_path) as compact:
            dst = np.lib.format.open_memmap(compact, mode="w+", dtype=np.uint8, shape=(len(keep), size, size, 3))
            for s in range(0, len(keep), BATCH * 4):
                dst[s:s + BATCH * 4] = arr[keep[s:s + BATCH * 4]]
            dst.flush()
            del dst
        del arr
    early_sync.start(tmp_path)
    written = rows.iloc[np.flatnonzero(ok)]
    labels = written["dx"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(dtype=np.int64)
    with atomic_open(out_dir / f"{split}_labels.npy", sync_folder=False) as fh:
        np.save(fh, labels)
    index = written.assign(label=labels).reindex(columns=list(INDEX_COLUMNS), fill_value="")
    write_text_atomic(out_dir / f"{split}_index.csv", index.to_csv(index=False, lineterminator="\n"), sync_folder=False)
    return written


def _decode_into(
    out: SplitPixelsFile,
    split: str,
    rows: pd.DataFrame,
    images_dir: Path,
    size: int,
    decoder: Decoder,
    previous: PreviousPixels,
    quarantine: list[dict[str, str]],
    progress: dict[str, float],
) -> np.ndarray:
    """Fill ``out`` with ``rows``' pixels: copied from ``previous`` where the content hash is
    known, decoded otherwise; returns which rows are filled (the others are quarantined)."""
    n = len(rows)
    image_ids = rows["image_id"].astype(str).tolist()
    keys = rows["image_key"].astype(str).tolist()
    shas = rows["sha256"].astype(str).tolist() if "sha256" in rows else [""] * n
    ok = previous.fill(out, shas)
    reused = int(ok.sum())
    progress["reused"] += reused
    todo = np.flatnonzero(~ok)
    items = [(keys[i], shas[i]) for i in todo]
    reported = 0
    for start, reasons in decoder.map_into(images_dir, items, size, out, todo):
        rows_here = todo[start:start + len(reasons)]
        good = np.array([r is None for r in reasons], dtype=bool)
        ok[rows_here[good]] = True
        for i, reason in zip(rows_here[~good], (r for r in reasons if r is not None)):
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
) -> dict:
    """Do the whole job; returns the summary written to summary.json. ``previous_dir``: an earlier
    ``splits`` output whose arrays are copied for known content hashes (:class:`PreviousPixels`;
    same bytes either way); ``num_workers`` decoding processes (unset: the CPUs usable here)."""
    if not isinstance(image_size, int) or not (8 <= image_size <= 1024):
        raise ValueError(f"hyperparameter image_size must be an integer in 8..1024, got {image_size!r}")
    t0 = time.monotonic()
    manifest_file = _manifest_path(manifest_input)
    manifest = pd.read_csv(manifest_file, dtype=str, keep_default_na=False)
    required = ["image_id", "lesion_id", "dx", "image_key", "sha256"]
    missing = [c for c in required if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest.csv lacks columns {missing}; it must follow the raw manifest schema "
                         "(docs/ARCHITECTURE.md)")
    if manifest["image_id"].duplicated().any():
        dups = manifest.loc[manifest["image_id"].duplicated(), "image_id"].head(5).tolist()
        raise ValueError(f"manifest.csv has duplicate image_id values (e.g. {dups}); re-run ingestion")
    out_dir.mkdir(parents=True, exist_ok=True)
    quarantine: list[dict[str, str]] = []
    known = manifest["dx"].isin(CLASSES)
    for image_id, dx in manifest.loc[~known, ["image_id", "dx"]].itertuples(index=False):
        quarantine.append({"image_id": image_id, "reason": f"dx {dx!r} is not one of {list(CLASSES)}"})
    manifest = manifest[known].sort_values("image_id", kind="mergesort").reset_index(drop=True)

    manifest["split"] = grouped_stratified_split(manifest, val_fraction, test_fraction, seed)
    problems = check_no_leakage(manifest)
    if problems:  # cannot happen unless the split code is broken: refuse to write leaky splits
        raise RuntimeError("split leaks lesions across splits: " + "; ".join(problems[:5]))
    print(
        f"[preprocess] {len(manifest)} images, {manifest['lesion_id'].nunique()} lesions; "
        f"size {image_size}px; split counts {manifest['split'].value_counts().to_dict()}",
        flush=True,
    )

    workers = int(num_workers or contract.available_cpus())
    progress = {"done": 0.0, "reused": 0.0, "total": float(len(manifest)), "t0": t0}
    earlier = PreviousPixels(previous_dir, image_size)
    print(f"[preprocess] earlier splits: {len(earlier.where)} images' pixels reusable"
          + (f" ({earlier.reason})" if earlier.reason else ""), flush=True)
    written: dict[str, pd.DataFrame] = {}
    with contextlib.ExitStack() as publish, EarlySync() as early_sync, Decoder(workers) as decoder:
        for split in SPLITS:
            rows = manifest[manifest["split"] == split]
            written[split] = _write_split(split, rows, images_dir, out_dir, image_size, decoder, earlier,
                                          quarantine, progress, publish, early_sync)

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
        "decoded": int(progress["done"]),
        "reused": int(progress["reused"]),
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True), sync_folder=False)
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
        **opts.model_dump(),
    )


def _optional_input(name: str) -> Path | None:
    """A processing input that the caller may leave out: None when it is absent."""
    path = contract.processing_input(name)
    return path if path.is_dir() else None


if __name__ == "__main__":
    contract.run_entry_point(main)
