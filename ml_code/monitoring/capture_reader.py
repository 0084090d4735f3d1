"""Capture files to inference-log rows at volume: one file at a time, in order, on every core.

``parse_lines`` (``capture``) reads each request's image features from the endpoint's answer, and
decodes the image only for lines whose answer has none (packages from before the endpoint returned
them, other writers); that decode is most of a run's cost when it happens, and it is independent per
file. So files can be parsed in worker processes (``spawn``: the Dagster run process has threads,
and forking one is unsafe), at most ``2 * workers`` files in flight so memory stays bounded by a few
files, and results come back in file order, so the log is the same whatever the number of workers.
Captures that carry their features, and small batches (the hourly incremental case), are parsed in
this process: starting workers costs about a second each, and shipping them the bytes more than
reading the answers does.

No Dagster, no object store here: the caller reads the bytes and writes the parts.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import pandas as pd

from .capture import VersionTimeline, parse_lines
from .health import health_from_metadata

PARALLEL_MIN_BYTES = 32 << 20
"""Below this many bytes of captures whose images must be decoded (about 6,000 requests), files are
parsed in-process: starting workers costs more than it saves."""


@dataclass
class ParsedFile:
    """One capture file: validated-to-be rows, skip reasons, health events, and how many of its
    rows had their image decoded (no valid features in the answer)."""

    rows: pd.DataFrame
    skipped: dict[str, int]
    health: pd.DataFrame  # ml_code.monitoring.health.HEALTH_COLUMNS
    decoded: int = 0


def parse_file(source: str, data: bytes, image_size: int, model_version: int,
               timeline: VersionTimeline | None = None) -> ParsedFile:
    """``parse_lines`` and ``health_events`` of one capture file's bytes (JSONL); ``source`` is the
    file's URI, kept with each row's line number. ``timeline``: which package a SageMaker line
    without a version was answered by (see ``parse_lines``)."""
    metas: list[dict] = []  # each line's eventMetadata, parsed once for the rows and the health events
    batch = parse_lines(data.splitlines(), image_size=image_size, model_version=model_version, timeline=timeline,
                        source=source, metadata=metas)
    return ParsedFile(batch.rows, dict(batch.skipped), health_from_metadata(metas), batch.decoded)


def default_workers() -> int:
    """Worker processes to use: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_files(blobs: Iterable[tuple[str, bytes]], image_size: int, model_version: int, workers: int = 1,
                timeline: VersionTimeline | None = None) -> Iterator[ParsedFile]:
    """``parse_file`` of each ``(uri, bytes)`` blob, in the order given.

    ``blobs`` is consumed lazily (at most ``2 * workers`` ahead of what was yielded), so a
    generator that reads files from the store keeps only a few of them in memory.
    ``workers <= 1`` parses in this process."""
    if workers <= 1:
        for source, data in blobs:
            yield parse_file(source, data, image_size, model_version, timeline)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: deque[Future] = deque()
        for source, data in blobs:
            pending.append(pool.submit(parse_file, source, data, image_size, model_version, timeline))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
