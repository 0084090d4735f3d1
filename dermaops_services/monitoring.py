"""Store- and registry-aware reads of the monitoring assets (``dermaops_assets.monitoring``).

They live here, not in the assets module, so that the asset bodies stay short (call these,
call ``ml_code``, turn results into metadata) and so that other monitors, sensors and tests
read the inference log, baselines and labels exactly the way the assets do. The statistics
themselves stay in ``ml_code`` (no Dagster, no object store there).

Layout in the object store (all written by the monitoring assets):

- ``logs/monitoring/inference_log/cursor.json``: last capture key read, number of parts, totals.
- ``logs/monitoring/inference_log/parts/<seq:08d>.parquet`` and ``.npy``: validated capture
  rows and the model-view images of the same rows, in the same order; a run writes one part
  per ``PART_ROWS`` rows or so (cut at capture-file boundaries), so neither writing nor
  reading the newest rows ever holds more than a part's images in memory.
- ``models/baselines/by-model/<model_hash>.json``: the ``BaselineHandle`` of each trained model.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from ml_code.monitoring.capture import VersionTimeline, rows_to_parquet_bytes, validate_rows, views_to_npy_bytes
from ml_code.monitoring.capture_reader import PARALLEL_MIN_BYTES, default_workers, parse_files
from ml_code.monitoring.casemix import CASE_MIX_COLUMNS

from dermaops_resources.handles import EndpointHandle
from dermaops_resources.monitoring_handles import BaselineHandle
from dermaops_resources.object_store import ObjectStore, StoredObject
from dermaops_resources.registry import ModelRegistry, RegistryError
from dermaops_resources.settings import Settings

LOG_PREFIX = "monitoring/inference_log"
"""Key prefix (``logs`` bucket) of the inference log: ``cursor.json`` and ``parts/``."""
CURSOR_KEY = f"{LOG_PREFIX}/cursor.json"
log = logging.getLogger("dermaops.monitoring")
BASELINE_INDEX = "baselines/by-model"
"""Key prefix (``models`` bucket) of the baseline index: ``<model_hash>.json`` -> ``BaselineHandle``."""


def local_copy(store: ObjectStore, uri: str, scratch: Path) -> Path:
    """A filesystem path holding the object's bytes: the object itself on a local store
    (no copy), else a download into ``scratch``. Model packages are large, so the local
    backend must not copy them."""
    return store.local_path(uri) or store.download_file(uri, scratch / Path(uri).name)


def read_model_config(store: ObjectStore, model_uri: str, scratch: Path) -> dict[str, Any]:
    """``model_config.json`` from inside a model.tar.gz, without extracting the weights.

    The inference log needs only the served image size, and the package may be hundreds of
    MB; a package without the file is not a DermaOps model, which fails the run (dg.Failure)
    with a message saying so."""
    with tarfile.open(local_copy(store, model_uri, scratch), "r:*") as tar:
        for name in ("model_config.json", "./model_config.json"):
            try:
                member = tar.extractfile(name)
            except KeyError:
                continue
            if member is not None:
                return json.loads(member.read())
    raise dg.Failure(f"{model_uri} has no model_config.json; it is not a DermaOps model package.")


def baseline_for_deployed_model(store: ObjectStore, registry: ModelRegistry, endpoint: EndpointHandle,
                                fallback: BaselineHandle, log) -> tuple[BaselineHandle, bool]:
    """(baseline of the deployed package's model, whether it matches that model).

    The endpoint may serve an older (or rolled-back) package than the latest trained model,
    and drift must be measured against the baseline of the model actually serving: looked up
    by model hash in the baseline index. Without one, ``fallback`` (the latest baseline) is
    still fine for input features but not for embeddings or predictions, so ``False`` tells
    the caller to skip those, and a warning says how to fix it."""
    try:
        package = registry.get(Settings.from_env().model_package_group, endpoint.package_version)
        model_hash = package.model_hash
    except RegistryError:
        model_hash = ""
    if model_hash:
        found = store.get_json_or(store.uri("models", f"{BASELINE_INDEX}/{model_hash}.json"), None)
        if found:
            return BaselineHandle.model_validate(found), True
    if fallback.model_hash == model_hash or fallback.model_uri == endpoint.model_uri:
        return fallback, True
    log.warning(f"No baseline for the deployed model (v{endpoint.package_version}); comparing input features "
                f"with the latest baseline ({fallback.model_hash[:12]}) and skipping embedding/prediction drift. "
                "Materialize model_baseline for the deployed model to fix this.")
    return fallback, False


PART_ROWS = 2048
"""Rows per inference-log part (at most one capture file more): 2,048 model views at 96 px are
57 MB, so a run's memory stays far below 1 GB however many requests it reads."""


@dataclass
class LogAppend:
    """What ``append_captures`` added: rows, the cursor's new part count, skips, health events."""

    new_rows: int
    parts: int
    skipped: dict[str, int]
    health: list[pd.DataFrame] = field(default_factory=list)


def append_captures(store: ObjectStore, files: list[StoredObject], image_size: int, model_version: int,
                    first_part: int, skipped: dict[str, int] | None = None, part_rows: int = PART_ROWS,
                    workers: int | None = None, timeline: VersionTimeline | None = None) -> LogAppend:
    """Parse capture ``files`` (in the order given) into inference-log parts ``first_part``, ...

    Rows are deduplicated by inference id within the run (counted as
    ``duplicate_inference_id``) and validated (``validate_rows``) per part; each part's
    ``.npy`` is written before its ``.parquet``. Parts are cut at file boundaries once
    ``part_rows`` rows are buffered, so the same files always give the same parts: a run that
    crashed before its cursor was written rewrites the same part numbers when repeated.
    ``workers``: parsing processes (``ml_code.monitoring.capture_reader``); None uses every
    CPU when the files hold at least ``PARALLEL_MIN_BYTES``, else this process.
    ``skipped`` (reason -> count) is added to and returned. ``timeline``: the endpoint variant's
    deployment record, which says which package answered SageMaker's lines (they name none);
    without one (local lines carry their version, or no record was kept) ``model_version``."""
    skipped = dict(skipped or {})
    if workers is None:
        workers = default_workers() if sum(f.size for f in files) >= PARALLEL_MIN_BYTES else 1
    seen: set[str] = set()
    frames: list[pd.DataFrame] = []
    views: list[np.ndarray] = []
    out = LogAppend(0, int(first_part), skipped)

    def write_part() -> None:
        rows = validate_rows(pd.concat(frames, ignore_index=True))
        name = f"{LOG_PREFIX}/parts/{out.parts:08d}"
        store.put_bytes("logs", f"{name}.npy", views_to_npy_bytes(views))
        store.put_bytes("logs", f"{name}.parquet", rows_to_parquet_bytes(rows))
        out.parts += 1
        out.new_rows += len(rows)
        frames.clear()
        views.clear()

    for parsed in parse_files((store.get_bytes(f.uri) for f in files), image_size, model_version, workers,
                              timeline):
        out.health.append(parsed.health)
        for reason, n in parsed.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + int(n)
        if not len(parsed.rows):
            continue
        # One set lookup per id: ``Series.isin(seen)`` converts the whole set on every file, which made a
        # 100,000-request run quadratic (benchmarks/monitoring_volume.py).
        dup = np.zeros(len(parsed.rows), dtype=bool)
        for i, inference_id in enumerate(parsed.rows["inference_id"].tolist()):
            if inference_id in seen:
                dup[i] = True
            else:
                seen.add(inference_id)
        if dup.any():
            skipped["duplicate_inference_id"] = skipped.get("duplicate_inference_id", 0) + int(dup.sum())
        frames.append(parsed.rows[~dup])
        views.append(parsed.views[~dup])
        if sum(len(f) for f in frames) >= part_rows:
            write_part()
    if sum(len(f) for f in frames):
        write_part()
    return out


def load_inference_log(store: ObjectStore, cursor: dict[str, Any], max_rows: int | None = None,
                       since: datetime | None = None, with_images: bool = False,
                       columns: list[str] | None = None) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The most recent inference-log rows (and model-view images): newest part first, until
    ``max_rows`` rows or a part entirely older than ``since``.

    The log only grows, and the monitors look at a recent window, so reading backwards from
    the cursor's last part keeps a run's cost bounded by the window, not by the log's age.
    Rows come back in log order (oldest first); with ``max_rows`` only the newest rows are
    kept, and their images stay aligned with them.

    Parts the cursor lists may be gone: the ``logs`` bucket expires them after 30 days (see
    ``infra/main.tf``), so after a quiet month every part can be. A missing part (or half of
    one: its ``.parquet``, or its ``.npy`` when images are wanted) is skipped, not an error;
    how many were skipped is in ``rows.attrs["missing_parts"]`` and in a warning. One listing
    of ``parts/`` tells which exist, so a long-expired log costs no failed reads."""
    frames: list[pd.DataFrame] = []
    images: list[np.ndarray] = []
    n = 0
    missing = 0
    parts_uri = store.uri("logs", f"{LOG_PREFIX}/parts")
    total = int(cursor.get("parts", 0))
    present = {obj.key.rsplit("/", 1)[-1] for obj in store.list(parts_uri)} if total else set()
    for seq in range(total - 1, -1, -1):
        name = f"{seq:08d}"
        if f"{name}.parquet" not in present or (with_images and f"{name}.npy" not in present):
            missing += 1
            continue
        base = store.uri("logs", f"{LOG_PREFIX}/parts/{name}")
        try:
            frame = pd.read_parquet(io.BytesIO(store.get_bytes(base + ".parquet")), columns=columns)
            imgs = _part_views(store, base + ".npy") if with_images else None
        except FileNotFoundError:  # expired between the listing and the read
            missing += 1
            continue
        if since is not None:
            keep = (frame["inference_time"] >= since).to_numpy()
            frame = frame[keep]
            imgs = imgs[keep] if imgs is not None else None
        if max_rows is not None and n + len(frame) > max_rows:  # only this part's newest rows are wanted
            cut = len(frame) - (max_rows - n)
            frame = frame.iloc[cut:]
            imgs = imgs[cut:] if imgs is not None else None
        frames.append(frame)
        if imgs is not None:
            images.append(np.array(imgs))  # a copy of the rows kept, out of the memory map
        n += len(frame)
        if (max_rows is not None and n >= max_rows) or (since is not None and len(frame) == 0):
            break
    if missing:
        log.warning("inference log: %d of %d part(s) listed in the cursor are gone from the store (expired by "
                    "the 30-day rule or deleted) and were skipped.", missing, total)
    if not frames:
        empty = pd.DataFrame(columns=columns or [])
        empty.attrs["missing_parts"] = missing
        return empty, []
    rows = pd.concat(frames[::-1], ignore_index=True)
    images = images[::-1]
    rows.attrs["missing_parts"] = missing
    return rows, images


def _part_views(store: ObjectStore, uri: str) -> np.ndarray:
    """A part's model views: memory-mapped when the store is local (a drift run wants the newest
    few hundred rows of a part, not all of its images in memory), else downloaded."""
    path = store.local_path(uri)
    if path is not None:
        return np.load(path, mmap_mode="r")
    return np.load(io.BytesIO(store.get_bytes(uri)))


def case_mix_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The case-mix columns (``ml_code.monitoring.casemix``) of inference-log rows, without the rows of
    parts written before the log kept them: their ``sex`` is missing rather than "unknown",
    and whether those requests carried clinical context cannot be told."""
    if "sex" not in rows.columns:
        return pd.DataFrame(columns=list(CASE_MIX_COLUMNS))
    return rows.loc[rows["sex"].notna(), list(CASE_MIX_COLUMNS)].reset_index(drop=True)


def read_labels(store: ObjectStore, labels_uri: str, extra_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """All ``inference_id,label`` CSVs in the labels landing location (folder or store prefix).

    Ground truth arrives late and in batches from whoever reviews the cases, as CSV files
    dropped into ``DERMAOPS_LABELS_URI`` (a local folder, a ``file://`` or an ``s3://``
    prefix). Files without both columns and hidden files (partial uploads) are ignored; a
    label for the same inference id in a later file (key/name order) wins, so a correction is
    just another file.

    Labels come back as class codes (``mel``, ...): any spelling the shared diagnosis table knows
    (``MEL``, ``Melanoma``, a hierarchy path) is normalised by ``known_labels``; the rest are
    dropped, never scored as a wrong answer, and counted in ``.attrs["unknown_labels"]``.

    A row whose label is empty is not labelled yet (a ``labelling_queue`` CSV dropped here with
    rows the reviewer skipped): it is left out before the later-file-wins rule, so it neither
    counts as an unknown label nor erases a label given elsewhere; ``.attrs["unlabelled"]`` counts
    them. ``extra_columns`` (e.g. ``patient_id``, read by label promotion only) come back too,
    empty where a file lacks them."""
    frames: list[pd.DataFrame] = []
    if labels_uri.startswith(("s3://", "file://")):
        for obj in store.list(labels_uri):
            if obj.key.endswith(".csv") and not obj.key.rsplit("/", 1)[-1].startswith("."):
                frames.append(pd.read_csv(io.BytesIO(store.get_bytes(obj.uri)), dtype=str))
    else:
        folder = Path(labels_uri)
        for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
            if not path.name.startswith("."):
                frames.append(pd.read_csv(path, dtype=str))
    columns = ["inference_id", "label", *extra_columns]
    frames = [f.reindex(columns=columns) for f in frames if {"inference_id", "label"} <= set(f.columns)]
    if not frames:
        empty = known_labels(pd.DataFrame({c: pd.Series(dtype=str) for c in columns}))
        empty.attrs["unlabelled"] = 0
        return empty
    rows = pd.concat(frames, ignore_index=True)
    blank = rows["label"].fillna("").astype(str).str.strip() == ""
    out = known_labels(rows[~blank].drop_duplicates("inference_id", keep="last"))
    out.attrs["unlabelled"] = int(blank.sum())
    return out


def known_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """``labels`` (``inference_id, label``) with each label as its class code by
    ``ml_code.data.diagnosis.normalise_label``; rows with an unknown label are dropped and
    ``.attrs["unknown_labels"]`` holds ``{label as written: count}`` (empty when none)."""
    from ml_code.data.diagnosis import normalise_labels

    codes, unknown = normalise_labels(labels["label"].tolist())
    out = labels.assign(label=pd.Series(codes, index=labels.index, dtype=object))
    out = out[out["label"].notna()].astype({"label": str}).reset_index(drop=True)
    out.attrs["unknown_labels"] = unknown
    return out
