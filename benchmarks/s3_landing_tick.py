"""Benchmark: one landing-sensor tick on S3 (moto server) vs a full listing, over 100,000 landed keys.

    python benchmarks/s3_landing_tick.py [--quick] [--keys 100000] [--per-batch 1000]

Lands ``--keys`` tiny objects (``--quick``: 5,000) in batch folders of ``--per-batch`` under
``s3://<raw>/landing/`` of a moto server (a child process, real HTTP on 127.0.0.1), lets the
sensor observe and request them (the first ticks list every batch once), then lands one new
batch with a ``_SUCCESS`` marker and measures, in the same run and on the same client:

- sensor tick: ``landing_tick`` as deployed (one ``Delimiter='/'`` listing of the batch
  folders, the new batch in full, ``--verify-files`` keys of requested batches in rotation);
- baseline: one ``list_objects_v2`` listing of the whole prefix (what dagster-aws
  ``get_objects`` or a key-cursor-less sensor does every tick).

Costs are counted with a botocore event hook (ListObjectsV2 calls, keys and prefixes
returned), and timed; the ratio is keys listed by the baseline over keys listed by the tick.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _result(metric: str, ours: float, baseline: float, target: str, met: bool, unit: str) -> None:
    print("BENCH_RESULT " + json.dumps({"stage": "landing_sensor_s3", "metric": metric, "ours": round(ours, 4),
                                        "baseline": round(baseline, 4), "ratio": round(baseline / ours, 1),
                                        "target": target, "met": bool(met), "unit": unit}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="5,000 keys")
    p.add_argument("--keys", type=int, default=None)
    p.add_argument("--per-batch", type=int, default=1000)
    p.add_argument("--verify-files", type=int, default=None,
                   help="the sensor's verify budget (default LANDING_VERIFY_FILES, 2,000; --quick: 100, the same "
                        "share of a 5,000-key bucket)")
    args = p.parse_args(argv)
    n_keys = args.keys or (5000 if args.quick else 100_000)
    if args.verify_files is None:
        from dermaops_assets.sensors import LANDING_VERIFY_FILES

        args.verify_files = 100 if args.quick else LANDING_VERIFY_FILES
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    os.environ.update(env)
    server = subprocess.Popen([sys.executable, "-m", "tests.support.moto_executor", "--serve", str(port)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError as exc:
                if getattr(exc, "code", None):
                    break  # the server answers (an HTTP error is an answer)
                if time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from exc
                time.sleep(0.2)
        return _run(args, n_keys)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _run(args, n_keys: int) -> int:
    import boto3
    import dagster as dg

    from dermaops_assets.sensors import landing_tick
    from dermaops_resources.aws.s3 import S3ObjectStore
    from tests.support.s3_listing import ListingCounter, put_many

    names = {b: f"dermaops-bench-{b}" for b in ("raw", "processed", "models", "logs")}
    s3 = boto3.client("s3", region_name="us-east-1", config=__import__("botocore.config").config.Config(
        max_pool_connections=64))
    for name in names.values():
        s3.create_bucket(Bucket=name)
    kms = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["Arn"]
    store = S3ObjectStore(buckets=names, kms_key_id=kms)
    landing = f"s3://{names['raw']}/landing"
    keys = [f"landing/batch-{i // args.per_batch:05d}/ISIC_{i:07d}.jpg" for i in range(n_keys)]
    t0 = time.perf_counter()
    put_many(s3, names["raw"], keys + [f"landing/batch-{b:05d}/_SUCCESS" for b in range(-(-n_keys // args.per_batch))])
    print(f"landed {n_keys} keys in {time.perf_counter() - t0:.1f}s")
    counter = ListingCounter(store.client)
    with dg.instance_for_test() as instance:
        def tick(cursor):
            ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
            return landing_tick(ctx, store, landing, quiet_seconds=60, max_files=10**9,
                                verify_files=args.verify_files, salt="bench")

        first = tick(None)  # every batch observed and requested once
        assert first.run_requests, "the landed batches were not requested"
        quiet = tick(first.cursor)
        assert not getattr(quiet, "run_requests", None)
        put_many(s3, names["raw"], [f"landing/batch-99999/new_{j:03d}.jpg" for j in range(5)]
                 + ["landing/batch-99999/_SUCCESS"])
        counter.reset()
        t0 = time.perf_counter()
        result = tick(getattr(quiet, "cursor", None) or first.cursor)
        tick_s = time.perf_counter() - t0
        tick_calls, tick_entries = counter.calls, counter.entries
    assert result.run_requests and result.run_requests[0].tags["dermaops/landing_files"] == "6", result
    counter.reset()
    t0 = time.perf_counter()
    full = sum(1 for _ in store.list(landing))
    full_s = time.perf_counter() - t0
    full_calls, full_entries = counter.calls, counter.entries
    assert full >= n_keys
    print(f"sensor tick: {tick_calls} ListObjectsV2 calls, {tick_entries} keys/prefixes, {tick_s:.3f}s "
          f"(requested the new batch: 6 files)")
    print(f"full listing: {full_calls} ListObjectsV2 calls, {full_entries} keys, {full_s:.3f}s")
    _result("keys_listed_per_tick", tick_entries, full_entries, ">= 20x", full_entries >= 20 * tick_entries, "keys")
    _result("tick_seconds", tick_s, full_s, ">= 20x", full_s >= 20 * tick_s, "s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
