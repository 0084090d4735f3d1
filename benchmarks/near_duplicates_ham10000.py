"""Near-duplicate images in HAM10000: how many pairs straddle different lesion ids, and how fast.

    .venv/bin/python benchmarks/near_duplicates_ham10000.py [--data ../shared/data/ham10000]
        [--thresholds 2,3,4,5,6,8] [--show 10]

Decodes every image through the image policy (first frame, orientation, sRGB), hashes it with
the ingestion's perceptual hash (``ml_code.data.near_duplicates.phash_hex``), then finds all
pairs within each Hamming-distance threshold and prints, per threshold: all pairs, pairs within
one lesion id (expected: HAM10000 has several photos of one lesion) and pairs across DIFFERENT
lesion ids (what the splitter now joins into one group), plus how many split groups the lesion
grouping has before and after the join, and the hashing and pair-finding times; at
``PHASH_THRESHOLD`` also the band index's candidate pairs (``near_duplicates.candidate_pairs``).
Exits 0 with a message when the data is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pandas as pd

from ml_code.data import near_duplicates as nd
from ml_code.package import image_policy

DEFAULT_DATA = REPO.parent / "shared" / "data" / "ham10000"


def _hash_file(path: Path) -> str:
    return nd.phash_hex(image_policy.open_image(path.read_bytes()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--thresholds", default="2,3,4,5,6,8")
    parser.add_argument("--show", type=int, default=10, help="print this many cross-lesion pairs at the chosen T")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    meta_path = args.data / "HAM10000_metadata.csv"
    if not meta_path.is_file():
        print(f"[near-duplicates] no HAM10000 data at {args.data} (needs HAM10000_metadata.csv and images/); skipped")
        return 0
    meta = pd.read_csv(meta_path, dtype=str)
    folders = [args.data / "images", args.data / "HAM10000_images_part_1", args.data / "HAM10000_images_part_2",
               args.data]
    paths = []
    for image_id in meta["image_id"]:
        found = next((f / f"{image_id}.jpg" for f in folders if (f / f"{image_id}.jpg").is_file()), None)
        if found is None:
            print(f"[near-duplicates] image {image_id}.jpg missing under {args.data}", file=sys.stderr)
            return 1
        paths.append(found)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        meta["phash"] = list(pool.map(_hash_file, paths, chunksize=64))
    t_hash = time.perf_counter() - t0
    print(f"[near-duplicates] hashed {len(meta)} images in {t_hash:.1f} s ({len(meta) / t_hash:.0f} img/s, "
          f"{args.workers} threads); {meta['lesion_id'].nunique()} lesion ids")

    lesion_groups = meta["lesion_id"].nunique()
    for t in [int(x) for x in args.thresholds.split(",")]:
        t1 = time.perf_counter()
        pairs = nd.near_duplicate_pairs(meta["phash"].tolist(), t)
        t_pairs = time.perf_counter() - t1
        lesion = meta["lesion_id"].to_numpy()
        cross = lesion[pairs[:, 0]] != lesion[pairs[:, 1]]
        # split groups after joining: lesion ids united with near-duplicate components
        frame = meta[["image_id", "lesion_id", "phash"]]
        from ml_code.data.splits import group_ids

        t2 = time.perf_counter()
        n_groups = group_ids(frame, near_duplicate_threshold=t).nunique()
        t_groups = time.perf_counter() - t2
        mark = "  <- PHASH_THRESHOLD" if t == nd.PHASH_THRESHOLD else ""
        if t == nd.PHASH_THRESHOLD:  # what decides between the band index and the exhaustive search
            n = len(meta)
            print(f"band index at T<={t}: {nd.candidate_pairs(meta['phash'].tolist(), t):,} candidate pairs "
                  f"of {n * (n - 1) // 2:,}")
        print(f"T<={t}: {len(pairs)} pairs, {int((~cross).sum())} within one lesion, "
              f"{int(cross.sum())} across different lesion ids; split groups {lesion_groups} -> {n_groups}; "
              f"pairs {t_pairs:.3f} s, grouping {t_groups:.3f} s{mark}")
        if t == nd.PHASH_THRESHOLD and args.show:
            table = nd.pairs_table(meta, t)
            table = table[table["lesion_id_a"] != table["lesion_id_b"]]
            dx = meta.set_index("image_id")["dx"]
            table = table.assign(dx_a=table["image_id_a"].map(dx), dx_b=table["image_id_b"].map(dx))
            print(table.head(args.show).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
