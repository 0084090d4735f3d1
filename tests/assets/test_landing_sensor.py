"""The landing sensor against a real Dagster instance: completeness, late and corrected files,
markers, and no patient-identifying names in anything it emits.

Each scenario takes a ``Lander`` (how files arrive) so the same checks run on a local folder
here and on moto S3 in tests/resources/aws/test_landing_sensor_s3.py."""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import dagster as dg
import pandas as pd
import pytest
from PIL import Image

from dermaops_assets.jobs import RETRAIN_JOB, RETRAIN_REASON_TAG
from dermaops_assets.sensors import LANDING_STATE_PREFIX, landing_tick
from dermaops_services.ingestion import ingest_dataset
from dermaops_resources.object_store import LocalObjectStore, ObjectStore
from dermaops_services.raw_source import landed_batches
from tests.support.batches import draw_batch as _draw_batch

SALT = "landing-test-salt"
QUIET = 60.0


@dataclass
class Lander:
    """Where batches land and how a file is written there (``old_mtime``: as cp -p / rsync -a)."""

    landing_uri: str
    write: Callable[[str, bytes, bool], None]
    store: ObjectStore


def local_lander(tmp_path: Path) -> Lander:
    root = tmp_path / "landing"

    def write(key: str, data: bytes, old_mtime: bool = True) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if old_mtime:  # preserved times: the file looks a day old the moment it arrives
            t = time.time() - 86400
            os.utime(path, (t, t))

    return Lander(str(root), write, LocalObjectStore(root=str(tmp_path / "store")))


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 36), (seed * 37 % 256, seed * 91 % 256, 120)).save(buf, format="PNG")
    return buf.getvalue()


def metadata(*rows: tuple[str, str]) -> bytes:
    return ("lesion_id,image_id,dx,dx_type,age,sex,localization\n"
            + "".join(f"L_{i},{i},nv,histo,{age},female,back\n" for i, age in rows)).encode()


class Ticker:
    """Runs sensor ticks the way the daemon does: each with the cursor the previous one returned."""

    def __init__(self, instance, lander: Lander):
        self.instance, self.lander, self.cursor = instance, lander, None
        self.requests: list[dg.RunRequest] = []
        self.cursors: list[str] = []
        self.messages: list[str] = []

    def __call__(self, now: float) -> list[dg.RunRequest]:
        ctx = dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                      resources={"store": self.lander.store})
        result = landing_tick(ctx, self.lander.store, self.lander.landing_uri, quiet_seconds=QUIET, now=now,
                              salt=SALT)
        if isinstance(result, dg.SkipReason):
            self.messages.append(result.skip_message or "")
            return []
        if result.cursor is not None:
            self.cursor = result.cursor
            self.cursors.append(result.cursor)
        if result.skip_reason:
            self.messages.append(result.skip_reason.skip_message or "")
        self.requests += result.run_requests or []
        return list(result.run_requests or [])


# -- scenarios (shared with the S3 tests) ----------------------------------------------------

def scenario_copy_in_progress_is_not_taken(instance, lander: Lander) -> None:
    tick, t = Ticker(instance, lander), 1_000_000.0
    lander.write("2026-11-30-a/HAM10000_metadata.csv", metadata(("A_1", 50), ("A_2", 60)), True)
    lander.write("2026-11-30-a/images/A_1.png", png(1), True)
    assert tick(t) == []  # first sight: old mtimes mean nothing
    assert "still arriving" in tick.messages[-1]
    lander.write("2026-11-30-a/images/A_2.png", png(2), True)  # the copy goes on, still with old times
    assert tick(t + QUIET + 1) == []  # it changed since the last look: the quiet window restarts
    assert tick(t + QUIET + 30) == []
    (request,) = tick(t + 2 * QUIET + 2)  # unchanged across observations spanning the quiet window
    assert request.job_name == RETRAIN_JOB and request.tags[RETRAIN_REASON_TAG] == "new-data"
    assert request.tags["dermaops/landing_batches"] == "1" and request.tags["dermaops/landing_files"] == "3"
    assert tick(t + 10 * QUIET) == []  # requested once


def scenario_late_arrivals_sorting_before_are_seen(instance, lander: Lander) -> None:
    tick, t = Ticker(instance, lander), 1_000_000.0
    lander.write("2026-11-28-b/HAM10000_metadata.csv", metadata(("B_1", 50)), True)
    lander.write("2026-11-28-b/images/B_1.png", png(3), True)
    lander.write("2026-11-28-b/_SUCCESS", b"", True)
    (first,) = tick(t)
    # a batch that sorts before the one already requested
    lander.write("2026-11-27-a/HAM10000_metadata.csv", metadata(("A_1", 40)), True)
    lander.write("2026-11-27-a/images/A_1.png", png(4), True)
    lander.write("2026-11-27-a/_SUCCESS", b"", True)
    (second,) = tick(t + 1)
    assert second.run_key != first.run_key and second.tags["dermaops/landing_batches"] == "1"
    # a late file inside an already requested batch, sorting before its other files
    lander.write("2026-11-28-b/images/A_0.png", png(5), True)
    (third,) = tick(t + 2)  # the marker is there: complete at once
    assert third.run_key not in (first.run_key, second.run_key) and third.tags["dermaops/landing_files"] == "4"
    assert tick(t + 3) == []


def scenario_corrected_metadata_under_the_same_key_lands_again(instance, lander: Lander, base: Path) -> None:
    tick, t = Ticker(instance, lander), 1_000_000.0
    lander.write("clinic-x/HAM10000_metadata.csv", metadata(("X_1", 50), ("X_2", 60)), True)
    lander.write("clinic-x/images/X_1.png", png(6), True)
    lander.write("clinic-x/images/X_2.png", png(7), True)
    assert tick(t) == []
    (first,) = tick(t + QUIET + 1)
    assert tick(t + QUIET + 2) == []
    # the same key, the same size, new bytes, an old preserved mtime
    lander.write("clinic-x/HAM10000_metadata.csv", metadata(("X_1", 51), ("X_2", 60)), True)
    assert tick(t + QUIET + 3) == []  # a change: a new landing, complete after its own quiet window
    (again,) = tick(t + 2 * QUIET + 4)
    assert again.run_key != first.run_key
    # what the requested job ingests: the corrected age reaches the manifest
    handle, _ = ingest_dataset([str(base), *landed_batches(lander.landing_uri)], lander.store, salt=SALT)
    manifest = pd.read_csv(io.BytesIO(lander.store.get_bytes(handle.manifest_uri)), dtype=str)
    assert manifest.set_index("image_id").loc["X_1", "age"] in ("51", "51.0")


def scenario_marker_completes_at_once(instance, lander: Lander) -> None:
    tick, t = Ticker(instance, lander), 1_000_000.0
    lander.write("m/HAM10000_metadata.csv", metadata(("M_1", 30)), False)
    lander.write("m/images/M_1.png", png(8), False)
    assert tick(t) == []
    lander.write("m/manifest.json", json.dumps({"files": 2}).encode(), False)
    (request,) = tick(t + 1)  # no quiet wait
    assert request.tags["dermaops/landing_files"] == "3"


def scenario_no_folder_name_in_anything_emitted(instance, lander: Lander) -> None:
    name = "Smith_John_MRN12345"
    tick, t = Ticker(instance, lander), 1_000_000.0
    lander.write(f"{name}/HAM10000_metadata.csv", metadata(("S_1", 30)), True)
    lander.write(f"{name}/images/{name}_left_arm.png", png(9), True)
    tick(t)
    tick(t + QUIET + 1)
    assert len(tick.requests) == 1
    emitted = json.dumps([{"run_key": r.run_key, "tags": r.tags, "run_config": r.run_config}
                          for r in tick.requests]) + json.dumps(tick.cursors) + json.dumps(tick.messages)
    for fragment in (name, "Smith", "MRN12345"):
        assert fragment not in emitted
    # the sensor's own state (in the logs bucket) holds references and digests only
    seq = json.loads(tick.cursor)["seq"]
    state = lander.store.get_bytes(lander.store.uri("logs", f"{LANDING_STATE_PREFIX}/{seq:012d}.json"))
    assert b"Smith" not in state


def scenario_ingestion_leaves_a_batch_still_arriving(instance, lander: Lander, base: Path) -> None:
    from dermaops_services.raw_source import batch_ref

    def ingested_ids():
        handle, stats = ingest_dataset([str(base), *landed_batches(lander.landing_uri)], lander.store, salt=SALT)
        manifest = pd.read_csv(io.BytesIO(lander.store.get_bytes(handle.manifest_uri)), dtype=str)
        quarantine = pd.read_csv(io.BytesIO(lander.store.get_bytes(handle.quarantine_uri)), dtype=str)
        return set(manifest["image_id"]), set(quarantine["image_id"].dropna()), stats

    tick, t = Ticker(instance, lander), 1_000_000.0
    lander.write("a/HAM10000_metadata.csv", metadata(("A_1", 50)), True)
    lander.write("a/images/A_1.png", png(10), True)
    lander.write("a/_SUCCESS", b"", True)
    lander.write("b/HAM10000_metadata.csv", metadata(("B_1", 50), ("B_2", 60)), True)
    lander.write("b/images/B_1.png", png(11), True)  # B_2 is still being copied
    (request,) = tick(t)
    assert request.tags["dermaops/landing_batches"] == "1"
    ids, quarantined, stats = ingested_ids()  # what the requested run ingests
    assert "A_1" in ids and not {"B_1", "B_2"} & (ids | quarantined)  # b is not taken, nor called broken
    assert stats.arriving_batches == [batch_ref("b", SALT)]
    lander.write("b/images/B_2.png", png(12), True)
    assert tick(t + 1) == []
    (request,) = tick(t + QUIET + 2)
    ids, quarantined, stats = ingested_ids()
    assert {"A_1", "B_1", "B_2"} <= ids and stats.arriving_batches == []


# -- local runs ------------------------------------------------------------------------------

@pytest.fixture()
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return base_dataset(tmp_path_factory.mktemp("base"))


def base_dataset(folder: Path) -> Path:
    """A small base dataset drawn here (no dependency on where the demo generator lives)."""
    _draw_batch(folder, [("BASE_1", "nv", "50"), ("BASE_2", "mel", "61"), ("BASE_3", "bkl", "70")])
    return folder


def test_mtime_preserved_copy_midway_is_not_taken(instance, tmp_path):
    scenario_copy_in_progress_is_not_taken(instance, local_lander(tmp_path))


def test_late_batch_and_late_file_sorting_before_the_cursor_are_seen(instance, tmp_path):
    scenario_late_arrivals_sorting_before_are_seen(instance, local_lander(tmp_path))


def test_corrected_metadata_under_the_same_key_is_a_new_landing(instance, tmp_path, base):
    scenario_corrected_metadata_under_the_same_key_lands_again(instance, local_lander(tmp_path), base)


def test_completion_marker_completes_the_batch_at_once(instance, tmp_path):
    scenario_marker_completes_at_once(instance, local_lander(tmp_path))


def test_patient_named_folder_never_reaches_keys_tags_cursor_or_config(instance, tmp_path):
    scenario_no_folder_name_in_anything_emitted(instance, local_lander(tmp_path))


def test_ingestion_leaves_a_batch_the_sensor_still_sees_arriving(instance, tmp_path, base):
    scenario_ingestion_leaves_a_batch_still_arriving(instance, local_lander(tmp_path), base)


def test_symlinks_in_landing_are_not_followed(instance, tmp_path):
    lander = local_lander(tmp_path)
    secret = tmp_path / "outside" / "notes.csv"
    secret.parent.mkdir()
    secret.write_bytes(b"patient notes")
    lander.write("b/HAM10000_metadata.csv", metadata(("B_1", 30)), False)
    lander.write("b/_SUCCESS", b"", False)
    tick = Ticker(instance, lander)
    (first,) = tick(1.0)
    Path(lander.landing_uri, "b", "linked.csv").symlink_to(secret)  # a link inside a batch: not data
    Path(lander.landing_uri, "c").symlink_to(secret.parent, target_is_directory=True)  # a linked folder: no batch
    assert tick(2.0) == [] and first.tags["dermaops/landing_files"] == "2"


def test_new_batches_beyond_the_listing_budget_wait_for_the_next_tick(instance, tmp_path):
    lander = local_lander(tmp_path)
    for b in range(3):
        for i in range(3):
            lander.write(f"batch{b}/f{i}.jpg", b"x", True)
        lander.write(f"batch{b}/_SUCCESS", b"", True)
    ctx = dg.build_sensor_context(instance=instance, resources={"store": lander.store})
    result = landing_tick(ctx, lander.store, lander.landing_uri, quiet_seconds=QUIET, max_files=4, salt=SALT)
    assert result.run_requests[0].tags["dermaops/landing_batches"] == "1"
    ctx = dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={"store": lander.store})
    result = landing_tick(ctx, lander.store, lander.landing_uri, quiet_seconds=QUIET, max_files=4, salt=SALT)
    assert result.run_requests[0].tags["dermaops/landing_batches"] == "1"


def test_older_last_key_cursor_does_not_request_old_batches_again(instance, tmp_path):
    lander = local_lander(tmp_path)
    lander.write("2026-01-a/x.jpg", b"x", True)
    lander.write("2026-02-b/y.jpg", b"y", True)
    ctx = dg.build_sensor_context(instance=instance, cursor=json.dumps({"last_key": "2026-01-a/x.jpg"}),
                                  resources={"store": lander.store})
    result = landing_tick(ctx, lander.store, lander.landing_uri, quiet_seconds=0.0, max_files=1, salt=SALT)
    (request,) = result.run_requests
    assert "last_key" not in json.loads(result.cursor)
    assert request.tags["dermaops/landing_batches"] == "1"  # only the batch after the old cursor
    assert request.tags["dermaops/landing_files"] == "1"


def test_a_reset_cursor_never_reuses_a_run_key(instance, tmp_path):
    lander = local_lander(tmp_path)
    lander.write("a/HAM10000_metadata.csv", metadata(("A_1", 30)), True)
    lander.write("a/_SUCCESS", b"", True)
    first = Ticker(instance, lander)
    (r1,) = first(1.0)
    again = Ticker(instance, lander)  # the cursor was reset by hand: everything is observed afresh
    (r2,) = again(2.0)
    assert r2.run_key != r1.run_key  # Dagster would silently drop a request under a key it has seen
    assert json.loads(again.cursor)["seq"] > json.loads(first.cursor)["seq"]
