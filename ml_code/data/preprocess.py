"""Processing job: raw manifest + images -> lesion-grouped, resized, memory-mappable splits.

Runs unchanged as a SageMaker Processing script and under the local job runner
(``python -m ml_code.data.preprocess``). Contract (docs/ARCHITECTURE.md, "Processing job"):

inputs   ``manifest`` (folder holding manifest.csv), ``images`` (the raw images prefix,
         files at ``<images>/<image_key>``)
output   ``splits``: ``{split}_images.npy`` uint8 (N, S, S, 3) RGB, ``{split}_labels.npy``
         int64 (N,), ``{split}_index.csv``, ``classes.json``, ``summary.json``, ``quarantine.csv``
hyperparameters  :class:`ml_code.data.options.PreprocessOptions`: ``image_size`` (64),
         ``val_fraction`` (0.15), ``test_fraction`` (0.15), ``seed`` (42), optional
         ``num_workers`` (decoding threads; default: CPU count); an unknown one fails the job

Each image is centre-cropped to a square on its shorter side and resized with
Lanczos, so lesions are not squashed. Arrays are written through
``np.lib.format.open_memmap`` in bounded batches, so memory stays flat for any
dataset size, and every output is written under a temporary name and renamed
at the end. An image that cannot be read, fails its sha256, or does not decode is
written to quarantine.csv and the job goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ml_code import CLASSES, contract
from ml_code.atomic import atomic_open, atomic_path, write_text_atomic
from ml_code.data.options import DEFAULTS, parse_preprocess_options
from ml_code.data.splits import SPLITS, check_no_leakage, describe_split, grouped_stratified_split

#: Per-split index. ``age``/``sex``/``localization`` are the clinical context the descriptor
#: model reads (``ml_code.package.descriptors``); empty when the manifest has none.
INDEX_COLUMNS = ("image_id", "lesion_id", "dx", "label", "sha256", "age", "sex", "localization")
BATCH = 256  # images decoded per batch: bounds memory whatever the image size


# The endpoint's own decode/crop/resize (code/inference.py ships alone in model.tar.gz, so the
# definition lives there): training images and served requests get identical pixels.
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


def _safe(fn, *args):
    try:
        return fn(*args), None
    except _Rejected as exc:
        return None, str(exc)


def _write_split(
    split: str,
    rows: pd.DataFrame,
    images_dir: Path,
    out_dir: Path,
    size: int,
    pool: ThreadPoolExecutor,
    quarantine: list[dict[str, str]],
    progress: dict[str, float],
) -> pd.DataFrame:
    """Decode one split into a memmapped array; returns the index rows actually written."""
    n = len(rows)
    with atomic_path(out_dir / f"{split}_images.npy") as tmp_path:
        arr = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        ok = _decode_into(arr, split, rows, images_dir, size, pool, quarantine, progress)
        if not ok.all():
            # compact: copy the decoded rows into a right-sized array, in batches, which then
            # takes the place of the full-sized one (still unpublished)
            keep = np.flatnonzero(ok)
            with atomic_path(tmp_path) as compact:
                dst = np.lib.format.open_memmap(compact, mode="w+", dtype=np.uint8, shape=(len(keep), size, size, 3))
                for s in range(0, len(keep), BATCH * 4):
                    dst[s:s + BATCH * 4] = arr[keep[s:s + BATCH * 4]]
                dst.flush()
                del dst
        del arr
    written = rows.iloc[np.flatnonzero(ok)]
    labels = written["dx"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(dtype=np.int64)
    with atomic_open(out_dir / f"{split}_labels.npy") as fh:
        np.save(fh, labels)
    index = written.assign(label=labels).reindex(columns=list(INDEX_COLUMNS), fill_value="")
    write_text_atomic(out_dir / f"{split}_index.csv", index.to_csv(index=False, lineterminator="\n"))
    return written


def _decode_into(
    arr: np.ndarray,
    split: str,
    rows: pd.DataFrame,
    images_dir: Path,
    size: int,
    pool: ThreadPoolExecutor,
    quarantine: list[dict[str, str]],
    progress: dict[str, float],
) -> np.ndarray:
    """Decode ``rows``' images into ``arr`` in batches; returns which rows decoded."""
    n = len(rows)
    ok = np.zeros(n, dtype=bool)
    records = rows.to_dict("records")
    for start in range(0, n, BATCH):
        batch = records[start:start + BATCH]
        results = pool.map(
            lambda r: _safe(_process_one, images_dir / str(r["image_key"]), str(r.get("sha256", "")), size), batch
        )
        for offset, (pixels, reason) in enumerate(results):
            i = start + offset
            if pixels is None:
                quarantine.append({"image_id": str(records[i]["image_id"]), "reason": reason or "unknown error"})
            else:
                arr[i] = pixels
                ok[i] = True
        progress["done"] += len(batch)
        elapsed = time.monotonic() - progress["t0"]
        print(
            f"[preprocess] {split}: {min(start + BATCH, n)}/{n} images "
            f"({progress['done']:.0f}/{progress['total']:.0f} total, {progress['done'] / max(elapsed, 1e-9):.0f} img/s)",
            flush=True,
        )
    arr.flush()
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
) -> dict:
    """Do the whole job; returns the summary written to summary.json."""
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

    workers = int(num_workers or os.cpu_count() or 2)
    progress = {"done": 0.0, "total": float(len(manifest)), "t0": t0}
    written: dict[str, pd.DataFrame] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow releases the GIL while decoding/resizing
        for split in SPLITS:
            rows = manifest[manifest["split"] == split]
            written[split] = _write_split(split, rows, images_dir, out_dir, image_size, pool, quarantine, progress)

    write_text_atomic(out_dir / "classes.json", json.dumps(list(CLASSES)))
    qdf = pd.DataFrame(quarantine, columns=["image_id", "reason"])
    write_text_atomic(out_dir / "quarantine.csv", qdf.to_csv(index=False, lineterminator="\n"))
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
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True))
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
        **opts.model_dump(),
    )


if __name__ == "__main__":
    contract.run_entry_point(main)
