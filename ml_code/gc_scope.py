"""Keep Python's cyclic garbage collector off the objects a process held before a bulk step.

Why: a step that builds tens of thousands of small objects (a 10,000-row manifest as dicts,
lists and pandas frames) triggers several full collections, and a full collection walks every
container object in the process, not only the step's own: with torch, pandas and Dagster
imported that is hundreds of thousands of objects, each time. ``gc.freeze()`` moves the objects
that exist now into a permanent generation the collector skips; ``gc.unfreeze()`` hands them
back when the step ends, so nothing is left uncollectable afterwards. Objects the step creates
are collected as usual, and reference counting frees the rest at once whatever the collector
does. (CPython's ``gc.freeze`` documentation; the same call prefork servers make before forking.)

For the same block the youngest generation is collected every :data:`YOUNG_THRESHOLD`
allocations instead of CPython's 700: the step's objects are rows, strings and small frames that
reference counting frees, so most young collections found nothing to collect, and each one that
promoted survivors brought an older-generation collection closer. The threshold is put back when
the block ends.

Measured by ``benchmarks/ingest_preprocess.py``, which prints the rerun's time: see
docs/PERFORMANCE.md, "P1", for the figures with and without it.

Standard library only: used by ``ml_code`` jobs and by the services Dagster calls.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation inside the block (CPython's
default is 700); cyclic garbage the block makes waits at most this many allocations longer."""


@contextlib.contextmanager
def older_objects_frozen() -> Iterator[None]:
    """For the block, the collector ignores every object that existed when it began, and collects
    young objects every :data:`YOUNG_THRESHOLD` allocations.

    Does nothing when the collector is disabled or something in the process has already frozen
    objects (a prefork server that froze its heap before forking keeps it frozen and its own
    thresholds: this block neither adds to nor undoes that). Also usable as a decorator
    (``@older_objects_frozen()``).
    """
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], YOUNG_THRESHOLD), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
