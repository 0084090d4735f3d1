"""Store- and registry-aware reads of the monitoring assets (``dermaops_assets.monitoring``).

They live here, not in the assets module, so that the asset bodies stay short (call these,
call ``ml_code``, turn results into metadata) and so that other monitors, sensors and tests
read the inference log, baselines and labels exactly the way the assets do. The statistics
themselves stay in ``ml_code`` (no Dagster, no object store there).

Layout in the object store (all written by the monitoring assets):

- ``logs/monitoring/inference_log/cursor.json``: last capture key read, number of parts, totals.
- ``logs/monitoring/inference_log/parts/<seq:08d>.parquet``: validated capture rows (features,
  predictions, case mix) and, per row, a pointer to its capture line (``capture_object_uri``,
  ``capture_line``); a run writes one part per ``PART_ROWS`` rows or so (cut at the boundary of a
  chunk of capture files). No images: whoever needs a logged request's model view (the labelling
  queue; embedding drift for answers from packages before ``drift_embedding``) decodes its capture
  line again (:func:`capture_views`), a few hundred rows at most, so the patient's image is stored
  once, in the capture, and expires with it. Embedding drift reads today's answers' projected
  embeddings from the same lines (:func:`capture_embeddings`, :func:`traffic_embeddings`). Logs written
  before kept the views in ``parts/<seq>.npy``; those files are no longer read.
- ``models/baselines/by-model/<model_hash>.json``: the ``BaselineHandle`` of each trained model.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from ml_code.monitoring.capture import (
    EMBEDDING_DIMENSIONS, POINTER_COLUMNS, VersionTimeline, capture_line_embeddings, capture_line_views,
    rows_to_parquet_bytes, validate_rows,
)
from ml_code.monitoring.capture_reader import (
    CHUNK_LINES, PARALLEL_ANSWERED_MIN_BYTES, PARALLEL_MIN_BYTES, ParsedChunk, default_workers, parse_files,
)
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


PART_ROWS = 16384
"""Rows per inference-log part (at most one parsing chunk more): a run holds at most a part's rows
(about 500 bytes a row: 8 MB) however many requests it reads. Parsing goes by chunks of at most
``capture_reader.CHUNK_LINES`` lines (and, for lines it must decode, their 96 px views: 57 MB).
Parts are this large because validating one (pandera) costs much the same however few rows it holds:
at 2,048 rows a part, validation was a large share of reading a backlog."""


@dataclass
class LogAppend:
    """What ``append_captures`` added: rows, the cursor's new part count, skips, health events, and
    how many rows had their image decoded (answers without ``image_features``)."""

    new_rows: int
    parts: int
    skipped: dict[str, int]
    health: list[pd.DataFrame] = field(default_factory=list)
    decoded: int = 0


def append_captures(store: ObjectStore, files: list[StoredObject], image_size: int, model_version: int,
                    first_part: int, skipped: dict[str, int] | None = None, part_rows: int = PART_ROWS,
                    workers: int | None = None, timeline: VersionTimeline | None = None) -> LogAppend:
    """Parse capture ``files`` (in the order given) into inference-log parts ``first_part``, ...

    Rows are deduplicated by inference id within the run (counted as
    ``duplicate_inference_id``) and validated (``validate_rows``) per part; each keeps the URI of
    its capture file and its line number. Files are parsed in chunks of whole files
    (``capture_reader.chunked``: at most ``min(part_rows, CHUNK_LINES)`` lines or so), and parts are
    cut at chunk boundaries once ``part_rows`` rows are buffered, so the same files always give the
    same parts: a run that crashed before its cursor was written rewrites the same part numbers when
    repeated.
    ``workers``: parsing processes (``ml_code.monitoring.capture_reader``); None: this process,
    unless the first file's answers lacked image features (captures of older packages, whose
    images must be decoded) and the rest hold at least ``PARALLEL_MIN_BYTES``, or the store keeps
    them on local disk (the workers read them there) and they hold at least
    ``PARALLEL_ANSWERED_MIN_BYTES``; then every CPU. Reading today's captures in one process took
    10-14 s for 100,000 requests on this 2-core machine, 16.7 s on a slow spell, against a 15 s
    target (benchmarks/monitoring_volume.py).
    ``skipped`` (reason -> count) is added to and returned. ``timeline``: the endpoint variant's
    deployment record, which says which package answered SageMaker's lines (they name none);
    without one (local lines carry their version, or no record was kept) ``model_version``."""
    skipped = dict(skipped or {})
    seen: set[str] = set()
    frames: list[pd.DataFrame] = []
    out = LogAppend(0, int(first_part), skipped)

    def write_part() -> None:
        rows = validate_rows(pd.concat(frames, ignore_index=True))
        store.put_bytes("logs", f"{LOG_PREFIX}/parts/{out.parts:08d}.parquet", rows_to_parquet_bytes(rows))
        out.parts += 1
        out.new_rows += len(rows)
        frames.clear()

    chunk_lines = min(part_rows, CHUNK_LINES)
    for parsed in _parsed_files(store, files, image_size, model_version, workers, timeline, chunk_lines):
        out.health.append(parsed.health)
        out.decoded += parsed.decoded
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
        if sum(len(f) for f in frames) >= part_rows:
            write_part()
    if sum(len(f) for f in frames):
        write_part()
    return out


def _parsed_files(store: ObjectStore, files: list[StoredObject], image_size: int, model_version: int,
                  workers: int | None, timeline: VersionTimeline | None, chunk_lines: int) -> Iterator[ParsedChunk]:
    """``parse_files`` of ``files`` read from the store, in order, on ``workers`` processes (None: see
    ``append_captures``), in chunks of about ``chunk_lines`` lines."""
    def blobs(chunk: list[StoredObject]) -> Iterator[tuple[str, bytes]]:
        return ((f.uri, store.get_bytes(f.uri)) for f in chunk)

    local_file = store.local_path  # workers read a local store's files themselves (capture_reader.parse_files)
    if workers is not None or not files:
        yield from parse_files(blobs(files), image_size, model_version, workers or 1, timeline, chunk_lines,
                               local_file)
        return
    head = next(parse_files(blobs(files[:1]), image_size, model_version, 1, timeline, chunk_lines))
    yield head
    decoding = head.decoded * 2 > len(head.rows)  # most answers lack image_features: an older package
    rest = files[1:]
    size = sum(f.size for f in rest)
    on_disk = store.local_path(files[0].uri) is not None
    parallel = size >= PARALLEL_MIN_BYTES if decoding else on_disk and size >= PARALLEL_ANSWERED_MIN_BYTES
    yield from parse_files(blobs(rest), image_size, model_version, default_workers() if parallel else 1, timeline,
                           chunk_lines, local_file)


def load_inference_log(store: ObjectStore, cursor: dict[str, Any], max_rows: int | None = None,
                       since: datetime | None = None, with_images: bool = False,
                       columns: list[str] | None = None, image_size: int | None = None
                       ) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The most recent inference-log rows (and model-view images): newest part first, until
    ``max_rows`` rows or a part entirely older than ``since``.

    The log only grows, and the monitors look at a recent window, so reading backwards from
    the cursor's last part keeps a run's cost bounded by the window, not by the log's age.
    Rows come back in log order (oldest first); with ``max_rows`` only the newest rows are kept.

    ``with_images``: also the rows' model views at ``image_size`` px (required then), decoded from
    their capture lines by :func:`capture_views` (one read of each capture file); rows whose image
    cannot be had (capture expired, or a part from before the log kept pointers) are dropped, so the
    returned rows and ``np.concatenate(images)`` stay aligned row for row.

    Parts the cursor lists may be gone: the ``logs`` bucket expires them after 30 days (see
    ``infra/main.tf``), so after a quiet month every part can be. A missing part is skipped, not an
    error; how many were skipped is in ``rows.attrs["missing_parts"]`` and in a warning. One listing
    of ``parts/`` tells which exist, so a long-expired log costs no failed reads."""
    if with_images and not image_size:
        raise ValueError("load_inference_log(with_images=True) needs image_size: the model's input size, "
                         "at which the captured requests are decoded (model_config.json's image_size)")
    wanted = None if columns is None else list(dict.fromkeys([*columns, *(POINTER_COLUMNS if with_images else ())]))
    frames: list[pd.DataFrame] = []
    n = 0
    missing = 0
    parts_uri = store.uri("logs", f"{LOG_PREFIX}/parts")
    total = int(cursor.get("parts", 0))
    present = {obj.key.rsplit("/", 1)[-1] for obj in store.list(parts_uri)} if total else set()
    for seq in range(total - 1, -1, -1):
        name = f"{seq:08d}.parquet"
        if name not in present:
            missing += 1
            continue
        try:
            frame = _read_part(store.get_bytes(store.uri("logs", f"{LOG_PREFIX}/parts/{name}")), wanted)
        except FileNotFoundError:  # expired between the listing and the read
            missing += 1
            continue
        if since is not None:
            frame = frame[(frame["inference_time"] >= since).to_numpy()]
        if max_rows is not None and n + len(frame) > max_rows:  # only this part's newest rows are wanted
            frame = frame.iloc[len(frame) - (max_rows - n):]
        frames.append(frame)
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
    images: list[np.ndarray] = []
    if with_images:
        rows, views = capture_views(store, rows, int(image_size))
        images = [views] if len(views) else []
        if columns is not None:
            rows = rows[list(columns)]
    rows.attrs["missing_parts"] = missing
    return rows, images


def _read_part(data: bytes, columns: list[str] | None) -> pd.DataFrame:
    """One parquet part, with ``columns`` (all when None); a requested column the part lacks (written
    before the log kept it) comes back empty (NaN) rather than failing the read."""
    if columns is None:
        return pd.read_parquet(io.BytesIO(data))
    import pyarrow.parquet as pq

    have = set(pq.ParquetFile(io.BytesIO(data)).schema_arrow.names)
    frame = pd.read_parquet(io.BytesIO(data), columns=[c for c in columns if c in have])
    return frame.reindex(columns=columns) if not set(columns) <= have else frame


def _per_capture_file(store: ObjectStore, rows: pd.DataFrame,
                      read: Callable[[bytes, list[int]], tuple[np.ndarray, np.ndarray]], width: tuple[int, ...],
                      dtype: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(values ``(len(rows), *width)``, ok, gone, no_pointer): ``read(capture file bytes, line numbers)``
    applied to each capture file the rows point at (``capture_object_uri``, ``capture_line``), each
    file read once; ``read`` returns (values of the good lines, ok per line). ``gone``: rows whose
    capture object is missing; ``no_pointer``: rows without a pointer."""
    n = len(rows)
    values = np.zeros((n, *width), dtype)
    ok = np.zeros(n, dtype=bool)
    gone = 0
    if set(POINTER_COLUMNS) <= set(rows.columns):
        uris = rows["capture_object_uri"].fillna("").astype(str).to_numpy()
        numbers = rows["capture_line"].fillna(-1).astype("int64").to_numpy()
    else:
        uris, numbers = np.full(n, "", dtype=object), np.full(n, -1, dtype="int64")
    pointed = (uris != "") & (numbers >= 0)
    no_pointer = int((~pointed).sum())
    by_object = pd.Series(uris[pointed]).groupby(uris[pointed], sort=False).indices  # uri -> positions in pointed
    positions = np.flatnonzero(pointed)
    for uri, where in by_object.items():
        idx = positions[where]
        try:
            data = store.get_bytes(uri)
        except FileNotFoundError:
            gone += len(idx)
            continue
        found, good = read(data, numbers[idx].tolist())
        values[idx[good]] = found
        ok[idx[good]] = True
    return values, ok, gone, no_pointer


def capture_views(store: ObjectStore, rows: pd.DataFrame, image_size: int) -> tuple[pd.DataFrame, np.ndarray]:
    """(rows kept, their model views ``(K, image_size, image_size, 3)`` uint8), decoded from each row's
    capture line (``capture_object_uri``, ``capture_line``) through the served package's own decode
    (``ml_code.monitoring.capture.capture_line_views``: ``decode_square``), reading each capture
    file once: the views the model was fed, without the log ever storing a copy of a patient's image.

    Rows whose image cannot be had are dropped (the views stay aligned with the rows kept), counted
    in a warning and in ``attrs``: ``captures_gone`` (the capture object expired, 30-day rule, or
    was deleted), ``no_capture_pointer`` (rows of parts written before the log kept pointers) and
    ``undecodable`` (the line no longer holds a decodable image). Cost: one decode per row, about
    0.25 ms at 96 px, so the few hundred rows the labelling queue or a drift fallback decode take a
    fraction of a second."""
    n = len(rows)
    views, ok, gone, no_pointer = _per_capture_file(
        store, rows, lambda data, numbers: capture_line_views(data, numbers, image_size),
        (image_size, image_size, 3), np.uint8)
    undecodable = n - int(ok.sum()) - gone - no_pointer
    if not ok.all():
        log.warning("inference log: %d of %d row(s) left out for want of their image: %d whose capture object is gone "
                    "(expired by the 30-day rule or deleted), %d without a capture pointer (logged before it was "
                    "kept), %d no longer decodable.", n - int(ok.sum()), n, gone, no_pointer, undecodable)
    kept = rows[ok].reset_index(drop=True)
    kept.attrs = {**rows.attrs, "captures_gone": gone, "no_capture_pointer": no_pointer, "undecodable": undecodable}
    return kept, views[ok]


def capture_embeddings(store: ObjectStore, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings ``(len(rows), DIMENSIONS)`` float32, ok ``(len(rows),)`` bool): each row's projected
    penultimate embedding as its answer returned it (``"drift_embedding"``,
    ``ml_code.package.drift_embedding``), read from its capture line, each capture file read once;
    rows without one (no pointer, capture gone, an answer from a package before the field) are
    False in ``ok`` and zero in ``embeddings``. Reads text only: no image decode, no network."""
    embeddings, ok, _gone, _no_pointer = _per_capture_file(store, rows, capture_line_embeddings,
                                                           (EMBEDDING_DIMENSIONS,), np.float32)
    return embeddings, ok


def traffic_embeddings(store: ObjectStore, rows: pd.DataFrame, live_endpoint: EndpointHandle,
                       scratch: Path) -> tuple[np.ndarray, dict[str, int]]:
    """(embeddings ``(K, DIMENSIONS)`` float32, counts): the rows' requests as the deployed model
    embeds them, projected (``ml_code.package.drift_embedding``), for the drift monitor's MMD
    against the baseline's embeddings under the same projection.

    A row served by the deployed package version whose answer carries its ``"drift_embedding"`` is
    read from its capture line (:func:`capture_embeddings`): no image decode and no network, so a
    drift run over today's traffic never imports torch (several hundred MB of a process,
    ``benchmarks/torch_import_memory.py``). The others (served by an earlier version, or by a
    package from before the field) are decoded from their capture lines (:func:`capture_views`)
    and embedded by the deployed package (opened under ``scratch``), so every row is compared
    under one model, as the baseline is. Rows whose image is gone too are left out.
    ``counts``: ``from_answers``, ``recomputed`` (rows embedded here) and ``left_out``."""
    from ml_code.package.drift_embedding import project

    served = rows["model_version"].to_numpy() == live_endpoint.package_version
    embeddings, answered = capture_embeddings(store, rows)
    answered &= served
    parts = [embeddings[answered]]
    rest = rows[~answered]
    recomputed = 0
    if len(rest):
        from ml_code.monitoring.baseline import embed_views, load_packaged_model

        module, model = load_packaged_model(local_copy(store, live_endpoint.model_uri, scratch), scratch / "model")
        _, views = capture_views(store, rest, int(model.image_size))
        if len(views):
            parts.append(project(embed_views(module, model, views)))
            recomputed = len(views)
    found = int(answered.sum())
    return np.concatenate(parts), {"from_answers": found, "recomputed": recomputed,
                                   "left_out": len(rows) - found - recomputed}


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
