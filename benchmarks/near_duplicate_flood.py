"""Pictures that share one perceptual hash: time and peak memory of the near-duplicate bookkeeping.

    .venv/bin/python benchmarks/near_duplicate_flood.py [--images 3000]

A batch of blank frames, or a device's test shots re-exported, gives many pictures one hash; each
pair of them is a near-duplicate pair, so their number grows with the square of the pictures
(3,000: 4.5 million pairs; 30,000: 450 million). This runs, each in a fresh subprocess so its peak
resident memory (``ru_maxrss``) is its own, over ``--images`` rows with one hash, each its own
lesion, alternately in train and test:

- ``shipped``: what ingestion and the processing job call (``pairs_table``, the split's
  ``group_ids`` and its leak check ``near_duplicate_leaks``), which search and count per distinct
  hash (``ml_code.data.near_duplicates.distinct_hashes``);
- ``every pair``: ``near_duplicate_pairs`` over all rows, which lists every pair, as each of the
  three did before they searched distinct hashes (the table and the leak check then also built a
  row or a message per pair, not measured here).

Prints, per way: pairs (counted or listed), seconds, peak RSS, and the ratios. Not part of ``make
bench`` (no target in issue 19). ``imports only`` is a subprocess's baseline (numpy, pandas, scipy).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WAYS = ("imports only", "shipped", "every pair")
HASH = "ab" * 32


def child(way: str, n: int) -> None:
    import numpy as np
    import pandas as pd

    from ml_code.data import near_duplicates as nd
    from ml_code.data.splits import group_ids, near_duplicate_leaks

    rows = pd.DataFrame({"image_id": [f"F{i:07d}" for i in range(n)], "phash": [HASH] * n,
                         "lesion_id": [f"L{i}" for i in range(n)], "dx": "nv",
                         "split": np.where(np.arange(n) % 2, "train", "test")})
    start = time.perf_counter()
    pairs = 0
    if way == "shipped":
        table = nd.pairs_table(rows)
        groups = group_ids(rows).nunique()
        leaks = near_duplicate_leaks(rows)
        pairs = table.attrs["pairs"]
        assert groups == 1 and len(leaks) == 1, (groups, leaks)
    elif way == "every pair":
        pairs = len(nd.near_duplicate_pairs(rows["phash"].tolist()))
    seconds = time.perf_counter() - start
    print(json.dumps({"pairs": pairs, "seconds": seconds,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.images)
        return 0
    results = {}
    for way in WAYS:
        run = subprocess.run([sys.executable, __file__, "--child", way, "--images", str(args.images)],
                             capture_output=True, text=True, check=True)
        results[way] = r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{way:12s} pairs {r['pairs']:>13,}  {r['seconds']:7.2f} s  peak RSS {r['peak_rss_gb']:.3f} GB")
    shipped, every = results["shipped"], results["every pair"]
    if shipped["pairs"] != every["pairs"]:
        print(f"the ways disagree on the pairs: {shipped['pairs']} counted, {every['pairs']} listed", file=sys.stderr)
        return 1
    base = results["imports only"]["peak_rss_gb"]
    print(f"{args.images:,} pictures with one hash: shipped {every['seconds'] / max(shipped['seconds'], 1e-9):.0f}x "
          f"faster than listing every pair; memory above the imports {shipped['peak_rss_gb'] - base:.3f} GB "
          f"against {every['peak_rss_gb'] - base:.3f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
