"""The landing sensor on a moto S3 bucket with many keys: a tick lists the batch folders, the new
batch and its verify budget, not the bucket; it requests a newly landed batch once and never an
already-requested one, and a late key in an old batch is found by the rotation."""

from __future__ import annotations

import uuid

import boto3
import dagster as dg
import pytest

from dermaops_assets.sensors import landing_tick
from tests.support.s3_listing import ListingCounter, put_many

pytestmark = pytest.mark.aws

PER_BATCH, BATCHES, VERIFY = 150, 6, 100


def test_a_tick_lists_few_keys_and_requests_only_the_new_batch(store, bucket_names) -> None:
    bucket, prefix = bucket_names["raw"], f"landing-{uuid.uuid4().hex[:6]}"
    s3 = boto3.client("s3")
    keys = [f"{prefix}/batch-{b:03d}/ISIC_{i:05d}.jpg" for b in range(BATCHES) for i in range(PER_BATCH)]
    put_many(s3, bucket, keys + [f"{prefix}/batch-{b:03d}/_SUCCESS" for b in range(BATCHES)])
    landing = f"s3://{bucket}/{prefix}"
    counter = ListingCounter(store.client)
    with dg.instance_for_test() as instance:
        def tick(cursor):
            counter.reset()
            return landing_tick(dg.build_sensor_context(instance=instance, cursor=cursor), store, landing,
                                quiet_seconds=60, max_files=10**9, verify_files=VERIFY, salt="s")

        first = tick(None)
        assert len(first.run_requests) == 1 and first.run_requests[0].tags["dermaops/landing_batches"] == str(BATCHES)
        cursor = first.cursor
        quiet = tick(cursor)
        assert not getattr(quiet, "run_requests", None)  # nothing new: nothing requested again
        cursor = getattr(quiet, "cursor", None) or cursor

        put_many(s3, bucket, [f"{prefix}/batch-new/n{j}.jpg" for j in range(5)] + [f"{prefix}/batch-new/_SUCCESS"])
        new = tick(cursor)
        assert len(new.run_requests) == 1 and new.run_requests[0].tags["dermaops/landing_files"] == "6"
        # folders (one Delimiter page) + the new batch + one old batch of the rotation (the budget's first
        # batch is always listed whole): far fewer than the bucket's keys
        bucket_keys = len(keys) + BATCHES + 6
        assert counter.entries <= (BATCHES + 1) + 6 + PER_BATCH + 2 < bucket_keys / 5, counter.entries
        cursor = new.cursor

        # a late key in an old batch: found within one rotation (batches / batches-per-tick ticks)
        put_many(s3, bucket, [f"{prefix}/batch-002/ISIC_late.jpg"])
        requested = []
        for _ in range(BATCHES + 1):
            result = tick(cursor)
            requested += list(getattr(result, "run_requests", None) or [])
            cursor = getattr(result, "cursor", None) or cursor
            assert counter.entries < bucket_keys / 5
        assert len(requested) == 1 and requested[0].tags["dermaops/landing_files"] == str(PER_BATCH + 2)
