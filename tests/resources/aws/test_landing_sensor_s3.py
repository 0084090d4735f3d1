"""The landing sensor and landed-batch discovery on moto S3: the same scenarios as the local
tests (tests/assets/test_landing_sensor.py), plus a sibling prefix that must not become a batch."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import dagster as dg
import pytest

from dermaops_assets.sensors import landing_tick
from dermaops_services.raw_source import landed_batches
from tests.assets.test_landing_sensor import (
    SALT, Lander, base_dataset, metadata, scenario_copy_in_progress_is_not_taken, scenario_corrected_metadata_under_the_same_key_lands_again,
    scenario_ingestion_leaves_a_batch_still_arriving, scenario_late_arrivals_sorting_before_are_seen,
    scenario_marker_completes_at_once,
    scenario_no_folder_name_in_anything_emitted,
)

pytestmark = pytest.mark.aws


@pytest.fixture()
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture()
def lander(store, bucket_names) -> Lander:
    """Uploads straight to the landing prefix, as a clinic's client would (no atomic publish)."""
    bucket, prefix = bucket_names["raw"], f"landing-{uuid.uuid4().hex[:6]}/drop"
    s3 = boto3.client("s3")

    def write(key: str, data: bytes, old_mtime: bool = True) -> None:  # S3 keeps no client mtime
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)

    return Lander(f"s3://{bucket}/{prefix}", write, store)


def test_s3_copy_in_progress_is_not_taken(instance, lander):
    scenario_copy_in_progress_is_not_taken(instance, lander)


def test_s3_late_batch_and_late_file_sorting_before_are_seen(instance, lander):
    scenario_late_arrivals_sorting_before_are_seen(instance, lander)


def test_s3_corrected_metadata_under_the_same_key_is_a_new_landing(instance, lander, tmp_path: Path):
    base = base_dataset(tmp_path / "base")
    scenario_corrected_metadata_under_the_same_key_lands_again(instance, lander, base)


def test_s3_marker_completes_the_batch_at_once(instance, lander):
    scenario_marker_completes_at_once(instance, lander)


def test_s3_patient_named_folder_never_reaches_keys_tags_cursor_or_config(instance, lander):
    scenario_no_folder_name_in_anything_emitted(instance, lander)


def test_s3_ingestion_leaves_a_batch_still_arriving(instance, lander, tmp_path: Path):
    scenario_ingestion_leaves_a_batch_still_arriving(instance, lander, base_dataset(tmp_path / "base"))


def test_s3_sibling_prefix_is_not_a_batch(instance, lander, store):
    sibling = lander.landing_uri + "-archive"  # s3://raw/landing-xxx/drop-archive/...
    bucket, _, sibling_key = sibling[5:].partition("/")
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key=f"{sibling_key}/2025-old/HAM10000_metadata.csv", Body=metadata(("O_1", 30)))
    s3.put_object(Bucket=bucket, Key=f"{sibling_key}/2025-old/_SUCCESS", Body=b"")
    lander.write("2026-a/HAM10000_metadata.csv", metadata(("A_1", 30)))
    assert landed_batches(lander.landing_uri) == [f"{lander.landing_uri}/2026-a"]  # no phantom "-archive" batch
    assert store.list_level(lander.landing_uri)[0] == ["2026-a"]
    assert [o.key for o in store.list(lander.landing_uri)] == [f"{lander.landing_uri[5:].partition('/')[2]}/2026-a/HAM10000_metadata.csv"]
    ctx = dg.build_sensor_context(instance=instance, resources={"store": store})
    result = landing_tick(ctx, store, lander.landing_uri, quiet_seconds=60, salt=SALT)
    assert not result.run_requests  # only 2026-a, still in its quiet window: the archive's marker is not ours
    assert "1 landed batch(es) still arriving" in result.skip_reason.skip_message
