"""Capture files to inference-log rows at volume: a chunk of files at a time, in order, on every core.

``parse_lines`` (``capture``) reads each request's image features from the endpoint's answer, and
decodes the image only for lines whose answer has none (packages from before the endpoint returned
them, other writers); that decode is most of a run's cost when it happens, and it is independent per
file. So chunks of files can be parsed in worker processes (``spawn``: the Dagster run process has
threads, and forking one is unsafe), at most ``2 * workers`` chunks in flight so memory stays bounded
by a few chunks, and results come back in file order, so the log is the same whatever the number of
workers. Files are grouped into chunks (:func:`chunked`) because building a frame per file of 100
requests was a large share of the read (benchmarks/monitoring_volume.py: 26.5 s for 100,000 requests
a frame per file, 14.5 s in chunks, with the larger parts below, on the same slow machine).
Small batches (the hourly incremental case) are parsed in this process: starting a worker costs
about a second. Captures that carry their features are parsed in workers only when the workers can
read the files themselves (a local store) and there are enough of them: one process reads 100,000
answered requests in 10-14 s on this 2-core machine (benchmarks/monitoring_volume.py), close to the
15 s target on a slow spell, and sending their bytes to workers through pipes took longer than one
process (a trial on 2026-12-03, its figures not kept).

No Dagster, no object store here: the caller reads the bytes and writes the parts.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ml_code import contract

from .capture import VersionTimeline, parse_sources
from .health import health_from_metadata

PARALLEL_MIN_BYTES = 32 << 20
"""Below this many bytes of captures whose images must be decoded (about 6,000 requests), files are
parsed in-process: starting workers costs more than it saves."""
PARALLEL_ANSWERED_MIN_BYTES = 128 << 20
"""...and below this many bytes of captures whose answers carry their image features (about 20,000
requests of 6 kB), when the workers can read the files themselves (a local store): each worker's
start costs about a second, and one process parses such captures at 7,000-10,000 requests a second
(benchmarks/monitoring_volume.py: 100,000 in 10-14 s before they were shared out)."""


CHUNK_LINES = 2048
"""Capture lines parsed into one frame (whole objects; one object more than this is not split): a frame
costs much the same however few rows it holds, and the local endpoint writes an object per 100 requests."""
CHUNK_BYTES = 16 << 20
"""...and at most about this many bytes of them (one object more), so that captures of full-size
images (100 kB a line) hold a chunk to a few hundred lines in memory."""


@dataclass
class ParsedChunk:
    """Consecutive capture objects: validated-to-be rows, skip reasons, health events, and how many of
    its rows had their image decoded (no valid features in the answer)."""

    rows: pd.DataFrame
    skipped: dict[str, int]
    health: pd.DataFrame  # ml_code.monitoring.health.HEALTH_COLUMNS
    decoded: int = 0


def parse_chunk(blobs: list[tuple[str, bytes]], image_size: int, model_version: int,
                timeline: VersionTimeline | None = None) -> ParsedChunk:
    """``parse_sources`` and ``health_events`` of capture objects' ``(URI, bytes)`` (JSONL), in the
    order given; each row keeps its object's URI and line number. ``timeline``: which package a
    SageMaker line without a version was answered by (see ``parse_lines``)."""
    metas: list[dict] = []  # each line's eventMetadata, parsed once for the rows and the health events
    batch = parse_sources([(source, data.splitlines()) for source, data in blobs], image_size=image_size,
                          model_version=model_version, timeline=timeline, metadata=metas)
    return ParsedChunk(batch.rows, dict(batch.skipped), health_from_metadata(metas), batch.decoded)


def default_workers() -> int:
    """Worker processes to use: the CPUs this process may run on (``ml_code.contract.available_cpus``)."""
    return contract.available_cpus()


def chunked(blobs: Iterable[tuple[str, bytes]], max_lines: int = CHUNK_LINES,
            max_bytes: int = CHUNK_BYTES) -> Iterator[list[tuple[str, bytes]]]:
    """Consecutive blobs, grouped until they hold ``max_lines`` lines or ``max_bytes`` bytes together;
    lazy, so at most one chunk's bytes are held. The grouping depends on the blobs alone, not on the
    workers, so a run gives the same chunks (and the log the same parts) however it is parallelised."""
    chunk: list[tuple[str, bytes]] = []
    lines = size = 0
    for source, data in blobs:
        chunk.append((source, data))
        lines += data.count(b"\n") + (not data.endswith(b"\n"))
        size += len(data)
        if lines >= max_lines or size >= max_bytes:
            yield chunk
            chunk, lines, size = [], 0, 0
    if chunk:
        yield chunk


def parse_files(blobs: Iterable[tuple[str, bytes]], image_size: int, model_version: int, workers: int = 1,
                timeline: VersionTimeline | None = None, max_lines: int = CHUNK_LINES,
                local_file: Callable[[str], Path | None] | None = None) -> Iterator[ParsedChunk]:
    """``parse_chunk`` of each chunk of the ``(uri, bytes)`` blobs (:func:`chunked`), in the order given.

    ``blobs`` is consumed lazily (at most ``2 * workers`` chunks ahead of what was yielded), so a
    generator that reads files from the store keeps only a few of them in memory.
    ``workers <= 1`` parses in this process. ``local_file``: the file on this machine holding a
    blob's URI's bytes, or None; a chunk whose blobs all have one is sent to its worker as paths,
    which the worker reads again (:func:`parse_chunk_files`), instead of as bytes: pickling 100,000
    captured requests through the workers' pipes took longer than parsing them in one process (a trial
    on 2026-12-03, its figures not kept). The chunks, and so the results, are the same either way."""
    if workers <= 1:
        for chunk in chunked(blobs, max_lines):
            yield parse_chunk(chunk, image_size, model_version, timeline)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: deque[tuple[Future, list[tuple[str, bytes]]]] = deque()

        def result() -> ParsedChunk:
            future, chunk = pending.popleft()
            try:
                return future.result()
            except ChangedOnDisk:  # the file is not what this process read: parse the bytes it holds
                return parse_chunk(chunk, image_size, model_version, timeline)

        for chunk in chunked(blobs, max_lines):
            files = [local_file(uri) for uri, _ in chunk] if local_file else []
            if files and all(files):
                listed = [(uri, str(path), len(data)) for (uri, data), path in zip(chunk, files)]
                future = pool.submit(parse_chunk_files, listed, image_size, model_version, timeline)
            else:
                future = pool.submit(parse_chunk, chunk, image_size, model_version, timeline)
            pending.append((future, chunk))
            if len(pending) >= 2 * workers:
                yield result()
        while pending:
            yield result()


class ChangedOnDisk(Exception):
    """A file :func:`parse_chunk_files` was given is gone or of another size than the caller read."""


def parse_chunk_files(files: list[tuple[str, str, int]], image_size: int, model_version: int,
                      timeline: VersionTimeline | None = None) -> ParsedChunk:
    """:func:`parse_chunk` of capture objects read from local files: ``(URI, path, size in bytes)``
    each, the URI kept with the rows. :class:`ChangedOnDisk` when a file cannot be read or its size
    is not the one given (the caller parses the bytes it read instead)."""
    blobs = []
    for uri, path, size in files:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ChangedOnDisk(f"{uri}: {exc}") from None
        if len(data) != size:
            raise ChangedOnDisk(f"{uri}: {len(data)} bytes on disk, {size} read before")
        blobs.append((uri, data))
    return parse_chunk(blobs, image_size, model_version, timeline)
