"""Capture files to inference-log rows at volume: one file at a time, in order, on every core.

``parse_lines`` (``capture``) decodes each request's image and computes its features; at
100,000 requests that is most of a monitoring run, and it is independent per file. So files
are parsed in worker processes (``spawn``: the Dagster run process has threads, and forking
one is unsafe), at most ``2 * workers`` files in flight so memory stays bounded by a few
files, and results come back in file order, so the log is the same whatever the number of
workers. Small batches (the hourly incremental case) are parsed in this process: starting
workers costs about a second.

No Dagster, no object store here: the caller reads the bytes and writes the parts.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .capture import VersionTimeline, parse_lines
from .health import health_events

PARALLEL_MIN_BYTES = 32 << 20
"""Below this many capture bytes in a run, files are parsed in-process (about 6,000 requests)."""


@dataclass
class ParsedFile:
    """One capture file: validated-to-be rows, their model views, skip reasons, health events."""

    rows: pd.DataFrame
    views: np.ndarray  # (len(rows), size, size, 3) uint8
    skipped: dict[str, int]
    health: pd.DataFrame  # ml_code.monitoring.health.HEALTH_COLUMNS


def parse_file(data: bytes, image_size: int, model_version: int,
               timeline: VersionTimeline | None = None) -> ParsedFile:
    """``parse_lines`` with images and ``health_events`` of one capture file's bytes (JSONL).
    ``timeline``: which package a SageMaker line without a version was answered by (see
    ``parse_lines``)."""
    lines = data.splitlines()
    batch = parse_lines(lines, image_size=image_size, keep_images=True, model_version=model_version,
                        timeline=timeline)
    views = (batch.images if isinstance(batch.images, np.ndarray)
             else np.zeros((0, image_size, image_size, 3), np.uint8))
    return ParsedFile(batch.rows, views, dict(batch.skipped), health_events(lines))


def default_workers() -> int:
    """Worker processes to use: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_files(blobs: Iterable[bytes], image_size: int, model_version: int, workers: int = 1,
                timeline: VersionTimeline | None = None) -> Iterator[ParsedFile]:
    """``parse_file`` of each blob, in the order given.

    ``blobs`` is consumed lazily (at most ``2 * workers`` ahead of what was yielded), so a
    generator that reads files from the store keeps only a few of them in memory.
    ``workers <= 1`` parses in this process."""
    if workers <= 1:
        for data in blobs:
            yield parse_file(data, image_size, model_version, timeline)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: deque[Future] = deque()
        for data in blobs:
            pending.append(pool.submit(parse_file, data, image_size, model_version, timeline))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
