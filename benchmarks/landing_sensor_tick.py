"""Benchmark: one landing-sensor tick with a cursor vs a full listing, over 100,000 landed files.

    python benchmarks/landing_sensor_tick.py [--files 100000] [--new 5] [--dir /tmp/x]

Lays out ``--files`` existing files (1,000 per folder, like daily upload batches) plus
``--new`` fresh ones, then times, in the same run:

- cursor tick: ``landing_tick`` with the cursor at the newest already-ingested key (the
  pruned sorted walk opens only the folders on the cursor path and after it);
- full-listing baseline: listing every key and filtering on the cursor, which is what a
  listing without ``start_after`` pruning (``LocalObjectStore.list`` / dagster-aws
  ``get_objects``) costs on every tick.

Prints both times and their ratio as JSON. Files are empty: only listing cost is measured.
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
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--new", type=int, default=5)
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed afterwards)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dermaops-landing-bench-", dir=args.dir) as tmp:
        store = LocalObjectStore(root=str(Path(tmp) / "store"))
        landing = Path(store.uri("raw", "landing")[len("file://"):])
        t0 = time.perf_counter()
        cursor_key = lay_out(landing, args.files)
        layout_s = time.perf_counter() - t0
        new_folder = landing / "batch-99999"
        new_folder.mkdir()
        old = time.time() - 3600
        for j in range(args.new):
            f = new_folder / f"new_{j:03d}.jpg"
            f.touch()
            os.utime(f, (old, old))
        with dg.instance_for_test() as instance:
            ctx = dg.build_sensor_context(instance=instance, cursor=json.dumps({"last_key": cursor_key}),
                                          resources={"store": store})
            t0 = time.perf_counter()
            result = landing_tick(ctx, store, str(landing), quiet_seconds=60)
            cursor_s = time.perf_counter() - t0
        assert result.run_requests and result.run_requests[0].tags["dermaops/landing_files"] == str(args.new)
        t0 = time.perf_counter()
        prefix = store.uri("raw", "landing")
        full = [o.key for o in store.list(prefix)]
        new_full = [k for k in full if k > f"landing/{cursor_key}"]
        full_s = time.perf_counter() - t0
        assert len(new_full) == args.new and len(full) == args.files + args.new
    print(json.dumps({"existing_files": args.files, "new_files": args.new, "layout_seconds": round(layout_s, 2),
                      "cursor_tick_seconds": round(cursor_s, 4), "full_listing_seconds": round(full_s, 4),
                      "speedup": round(full_s / cursor_s, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
