"""The near-duplicate search on look-alike pictures: time and peak memory, each way of searching.

    .venv/bin/python benchmarks/near_duplicates_lookalike.py [--images 10000] [--cache /tmp/dermaops-lookalike]

Look-alike pictures (one background, a device's test shots) agree on most hash bits, so the band
index of ``ml_code.data.near_duplicates`` prunes little. This hashes ``benchmarks/ingest_scale.py``'s
synthetic set (32 x 32 JPEGs sharing one random background, each with its own corner patch and
its index written into a stripe; generated once under ``--cache``) with the ingestion's perceptual
hash (``ml_code.data.ingest.inspect_image``'s ``phash``, as ingestion computes it), then runs, each in a fresh subprocess so its peak resident memory (``ru_maxrss``) is its
own:

- ``shipped``: ``near_duplicate_pairs`` as it runs (the band index, handing over to the
  exhaustive search when the candidates pass ``MAX_CANDIDATES`` or an eighth of all pairs);
- ``band index only``: the band index never handing over (what it did before the hand-over);
- ``exhaustive``: ``_all_pairs``.

Prints, per way: pairs found (they must agree), seconds, peak RSS; and the band index's candidate
pairs against all pairs. Not part of ``make bench`` (no target in issue 19; ``ingest_scale.py``
measures ingestion, which does not search pairs). A subprocess's baseline RSS (numpy, pandas,
scipy, Pillow imported) is printed as ``imports only``. Timings on a shared machine are noisy.
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
sys.path.insert(0, str(REPO / "benchmarks"))

WAYS = ("imports only", "shipped", "band index only", "exhaustive")


def hashes_of(folder: Path, n: int) -> Path:
    """The perceptual hashes of the first ``n`` synthetic images, one per line (cached)."""
    import ingest_scale

    from ml_code.data import ingest

    out = folder / f"phash-{n}.txt"
    if out.is_file():
        return out
    ingest_scale.generate(folder, n)
    limits = ingest.ImageLimits()
    lines = [ingest.inspect_image((folder / "images" / f"SCALE_{i:07d}.jpg").read_bytes(), f"SCALE_{i:07d}.jpg",
                                  limits).phash for i in range(n)]
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)
    return out


def child(way: str, hashes_file: Path) -> None:
    """One way of searching in this process; prints pairs, seconds and peak RSS as JSON."""
    from ml_code.data import near_duplicates as nd

    words = nd.to_words(hashes_file.read_text().split())
    if way == "band index only":
        nd._index_prunes = lambda candidates, n: True
    search = {"imports only": lambda h, t: nd.np.empty((0, 3)), "shipped": nd.near_duplicate_pairs,
              "band index only": nd._pairs, "exhaustive": nd._all_pairs}[way]
    start = time.perf_counter()
    pairs = search(words, nd.PHASH_THRESHOLD)
    seconds = time.perf_counter() - start
    print(json.dumps({"pairs": len(pairs), "seconds": seconds,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/dermaops-lookalike"))
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--hashes", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.hashes)
        return 0
    hashes_file = hashes_of(args.cache, args.images)
    from ml_code.data import near_duplicates as nd

    found = nd.candidate_pairs(hashes_file.read_text().split())
    every = args.images * (args.images - 1) // 2
    print(f"{args.images:,} look-alike hashes: the band index's candidate pairs {found:,} of {every:,} "
          f"({found / every:.0%})")
    results = {}
    for way in WAYS:
        run = subprocess.run([sys.executable, __file__, "--child", way, "--hashes", str(hashes_file)],
                             capture_output=True, text=True, check=True)
        results[way] = json.loads(run.stdout.strip().splitlines()[-1])
        r = results[way]
        print(f"{way:16s} pairs {r['pairs']:>8,}  {r['seconds']:7.2f} s  peak RSS {r['peak_rss_gb']:.3f} GB")
    agreed = {results[w]["pairs"] for w in WAYS[1:]}
    if len(agreed) != 1:
        print(f"the ways disagree on the pairs: {agreed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
