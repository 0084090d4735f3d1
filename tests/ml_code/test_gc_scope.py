"""ml_code.gc_scope: inside the block the collector skips the objects that existed before it, still
collects what the block makes, and gets the older objects back after."""

from __future__ import annotations

import gc
import weakref

import pytest

from ml_code.gc_scope import YOUNG_THRESHOLD, older_objects_frozen


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_collector_skips_older_objects_inside_and_gets_them_back_after() -> None:
    older = _Cycle()
    older_ref = weakref.ref(older)
    with older_objects_frozen():
        assert gc.get_freeze_count() > 1000  # the interpreter, pytest, numpy...: not walked now
        del older
        newer = _Cycle()
        newer_ref = weakref.ref(newer)
        del newer
        gc.collect()
        assert newer_ref() is None  # garbage made inside the block is collected as usual
        assert older_ref() is not None  # an older cycle is left alone...
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert older_ref() is None  # ...until the block has handed it back


def _young_collections_while_allocating(containers: int) -> int:
    """Collections of the youngest generation while ``containers`` lists are made and kept."""
    collections = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 0:
            collections.append(1)

    gc.callbacks.append(count)
    try:
        kept = [[] for _ in range(containers)]  # noqa: F841 - kept alive, so every list counts
    finally:
        gc.callbacks.remove(count)
    return len(collections)


def test_young_objects_are_collected_less_often_inside_and_as_before_after() -> None:
    before = gc.get_threshold()
    outside = _young_collections_while_allocating(20_000)
    with older_objects_frozen():
        assert gc.get_threshold()[0] == max(before[0], YOUNG_THRESHOLD)
        inside = _young_collections_while_allocating(20_000)
    assert gc.get_threshold() == before
    # 20,000 allocations: about 28 young collections at CPython's 700, two or three at 10,000
    assert inside <= 20_000 // YOUNG_THRESHOLD + 1 and outside >= 20_000 // before[0] // 2


def test_an_error_inside_still_unfreezes() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), older_objects_frozen():
        raise RuntimeError("boom")
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_a_heap_frozen_by_someone_else_stays_as_they_left_it() -> None:
    """Neither frozen again (objects made since would join) nor unfrozen. Frozen objects that die
    leave the count, so it may only shrink a little on its own."""
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        since = [[] for _ in range(1000)]  # noqa: F841 - made after the freeze: a second freeze takes them
        before = gc.get_threshold()
        with older_objects_frozen():
            assert frozen - 100 < gc.get_freeze_count() <= frozen
            assert gc.get_threshold() == before  # their thresholds too
        assert frozen - 100 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()


def test_failing_ingestion_and_processing_runs_hand_the_heap_back(tmp_path) -> None:
    from dermaops_resources.object_store import LocalObjectStore
    from dermaops_services.ingestion import ingest_dataset
    from ml_code.data import preprocess

    with pytest.raises(Exception, match="does not exist"):
        ingest_dataset(str(tmp_path / "absent"), LocalObjectStore(root=str(tmp_path / "store")), "s" * 32)
    assert gc.get_freeze_count() == 0
    with pytest.raises(FileNotFoundError):
        preprocess.run(tmp_path / "absent", tmp_path / "images", tmp_path / "out")
    assert gc.get_freeze_count() == 0
