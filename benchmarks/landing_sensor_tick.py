"""Benchmark: one landing-sensor tick vs a full listing, over 100,000 landed files.

    python benchmarks/landing_sensor_tick.py [--quick] [--files 100000] [--new 5] [--dir /tmp/x]

Lays out ``--files`` existing files (1,000 per folder, like daily upload batches), lets the
sensor take them over from an older ``last_key`` cursor (the one-time migration tick, which
lists everything, is timed separately), then lands a new batch of ``--new`` files plus a
``_SUCCESS`` marker and times, in the same run:

- sensor tick: ``landing_tick`` as deployed: one listing of the batch folders, the new
  batch in full, and ``--verify-files`` files of already-requested batches in rotation
  (how late files and rewritten objects in old batches are noticed);
- full-listing baseline: listing every key, which is what watching every object on every
  tick (``LocalObjectStore.list`` / dagster-aws ``get_objects``) costs.

Prints the times and their ratio as JSON, then one ``BENCH_RESULT`` line (the issue 19
convention, gathered by ``benchmarks/run_all.py``): ratio = full listing / tick, target >= 5x
(``TARGET_SPEEDUP``). ``--quick`` lays out 20,000 files instead of 100,000. Files are empty: only
listing cost is measured.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dagster as dg  # noqa: E402

from dermaops_assets.sensors import landing_tick  # noqa: E402
from dermaops_resources.object_store import LocalObjectStore  # noqa: E402

TARGET_SPEEDUP = 5.0
"""A tick must cost at most a fifth of a full listing (it re-lists LANDING_VERIFY_FILES files per
tick, so the ratio grows with the bucket: about 10x at 20,000 files)."""


def lay_out(root: Path, n: int, per_folder: int = 1000) -> str:
    last = ""
    for i in range(n):
        folder = root / f"batch-{i // per_folder:05d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        name = f"ISIC_{i:07d}.jpg"
        (folder / name).touch()
        last = f"{folder.name}/{name}"
    return last


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20,000 files (unless --files is given)")
    p.add_argument("--files", type=int, default=None, help="existing landed files (default 100,000)")
    p.add_argument("--new", type=int, default=5)
    p.add_argument("--verify-files", type=int, default=2000, help="DERMAOPS_LANDING_VERIFY_FILES")
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed afterwards)")
    args = p.parse_args(argv)
    if args.files is None:
        args.files = 20_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory(prefix="dermaops-landing-bench-", dir=args.dir) as tmp:
        store = LocalObjectStore(root=str(Path(tmp) / "store"))
        landing = Path(store.uri("raw", "landing")[len("file://"):])
        t0 = time.perf_counter()
        cursor_key = lay_out(landing, args.files)
        layout_s = time.perf_counter() - t0
        with dg.instance_for_test() as instance:
            def tick(cursor):
                ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"store": store})
                return landing_tick(ctx, store, str(landing), quiet_seconds=60, max_files=10**9,
                                    verify_files=args.verify_files, salt="bench")

            t0 = time.perf_counter()
            migrated = tick(json.dumps({"last_key": cursor_key}))  # every existing batch: already requested
            migrate_s = time.perf_counter() - t0
            assert not migrated.run_requests
            new_folder = landing / "batch-99999"
            new_folder.mkdir()
            old = time.time() - 3600
            for j in range(args.new):
                f = new_folder / f"new_{j:03d}.jpg"
                f.touch()
                os.utime(f, (old, old))
            (new_folder / "_SUCCESS").touch()
            t0 = time.perf_counter()
            result = tick(migrated.cursor)
            cursor_s = time.perf_counter() - t0
        assert result.run_requests and result.run_requests[0].tags["dermaops/landing_files"] == str(args.new + 1)
        t0 = time.perf_counter()
        prefix = store.uri("raw", "landing")
        full = [o.key for o in store.list(prefix)]
        new_full = [k for k in full if k > f"landing/{cursor_key}"]
        full_s = time.perf_counter() - t0
        assert len(new_full) == args.new + 1 and len(full) == args.files + args.new + 1
    print(json.dumps({"existing_files": args.files, "new_files": args.new, "layout_seconds": round(layout_s, 2),
                      "migration_tick_seconds": round(migrate_s, 4), "verify_files_per_tick": args.verify_files,
                      "cursor_tick_seconds": round(cursor_s, 4), "full_listing_seconds": round(full_s, 4),
                      "speedup": round(full_s / cursor_s, 1)}, indent=2))
    speedup = full_s / cursor_s
    print("BENCH_RESULT " + json.dumps({
        "stage": "landing sensor", "metric": f"tick vs full listing, {args.files:,} landed files",
        "ours": round(cursor_s, 4), "baseline": round(full_s, 4), "ratio": round(speedup, 2),
        "target": f">= {TARGET_SPEEDUP:g}x", "met": speedup >= TARGET_SPEEDUP, "unit": "s"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
