"""Benchmark: lesion-grouped split and manifest hashing of 1,000,000 metadata rows (issue 19 P1b:
"< 60 s" on 2 cores), against the old seeded-permutation split in the same run.

    python benchmarks/split_scale.py [--quick] [--rows N] [--seed S]

A synthetic frame (``ml_code.tools.synthetic_metadata``): HAM10000's class mix, ~1.4 images per
lesion, half the lesions with a patient reference (~2.3 lesions a patient), plus the raw
manifest's other columns (random sha256, a phash per image, clinical fields). Timed, one after
the other in this process:

- ours: ``grouped_stratified_split`` (keyed-hash split) + ``check_no_leakage`` without the
  near-duplicate grouping (phash dropped), as the preprocessing job runs them;
- baseline: the split as it was before keyed hashing (a copy below: per-row union-find, a
  per-group majority vote, per-class seeded permutation dealt greedily) + the same check;
- manifest hashing: ``ml_code.data.ingest.manifest_hash`` (sha256 of the canonical manifest
  CSV: what ingestion publishes the data version under) and the preprocessing job's sha256 of
  the manifest file's bytes;
- stability: on a frame of min(rows, 100,000) rows grown by a fifth, the share of old lesions
  that change split (ours must be 0).

Near-duplicate grouping (phash within 16 bits) is not in the timed split (``near_duplicate_pairs``,
a band index since issue 19 P1, no longer quadratic; timed in ``benchmarks/ingest_preprocess.py``). ``--quick`` uses 100,000 rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ml_code.data import ingest  # noqa: E402
from ml_code.data.splits import SPLITS, check_no_leakage, grouped_stratified_split, hash_positions  # noqa: E402
from ml_code.tools.synthetic_metadata import synthetic_metadata  # noqa: E402

TARGET_SECONDS = 60.0


# ---- baseline: the split before keyed hashing (ml_code/data/splits.py at 6437234), verbatim in substance
class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra


def old_group_ids(df: pd.DataFrame) -> pd.Series:
    cols = ["lesion_id"]
    if "patient_ref" in df.columns and df["patient_ref"].fillna("").astype(str).str.strip().ne("").any():
        cols.append("patient_ref")
    uf = _UnionFind()
    keys = []
    for values in df[cols].fillna("").astype(str).itertuples(index=False):
        nodes = [f"{c}={v.strip()}" for c, v in zip(cols, values) if v.strip()]
        for other in nodes[1:]:
            uf.union(nodes[0], other)
        keys.append(nodes[0])
    return pd.Series([uf.find(k) for k in keys], index=df.index, name="group")


def old_permutation_split(df: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15,
                          seed: int = 42) -> pd.Series:
    groups = old_group_ids(df)
    frame = pd.DataFrame({"group": groups, "dx": df["dx"].astype(str)})
    sizes = frame.groupby("group").size()
    majority = frame.groupby("group")["dx"].agg(
        lambda s: sorted(Counter(s).items(), key=lambda kv: (-kv[1], kv[0]))[0][0])
    fractions = {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for dx in sorted(majority.unique()):
        members = sorted(majority.index[majority == dx])
        order = [members[i] for i in rng.permutation(len(members))]
        total = float(sizes[order].sum())
        filled = {s: 0.0 for s in SPLITS}
        start = 0
        if len(order) >= 3:
            for split in ("test", "val", "train"):
                if fractions[split] > 0:
                    assignment[order[start]] = split
                    filled[split] += sizes[order[start]]
                    start += 1
        for g in order[start:]:
            deficit = {s: fractions[s] * total - filled[s] for s in SPLITS if fractions[s] > 0}
            split = max(deficit, key=lambda s: (deficit[s] / (fractions[s] * total), -SPLITS.index(s)))
            assignment[g] = split
            filled[split] += sizes[g]
    return pd.Series(groups.map(assignment).to_numpy(), index=df.index, dtype=object, name="split")
# ---- end of baseline


def manifest_frame(meta: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The raw manifest's columns around synthetic metadata (values random, shapes real)."""
    rng = np.random.default_rng(seed + 1)
    n = len(meta)
    sha = np.frombuffer(rng.bytes(32 * n).hex().encode(), dtype="S64").astype(str)
    phash = np.frombuffer(rng.bytes(32 * n).hex().encode(), dtype="S64").astype(str)
    sites = np.array(["back", "lower extremity", "trunk", "upper extremity", "face", "abdomen"], dtype=object)
    return meta.assign(
        dx_type="histo", age=rng.integers(5, 90, n).astype(float), sex=np.where(rng.random(n) < 0.5, "male", "female"),
        localization=sites[rng.integers(0, len(sites), n)], image_key=pd.Series(sha).str[:2] + "/" + sha + ".jpg",
        sha256=sha, format="JPEG", width=600, height=450, source_layout="ham10000", phash=phash,
    ).loc[:, list(ingest.MANIFEST_COLUMNS)]


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def split_and_check(split_fn, meta: pd.DataFrame) -> pd.Series:
    split = split_fn(meta)
    problems = check_no_leakage(meta.assign(split=split))
    if problems:
        raise RuntimeError(f"split leaks: {problems[:3]}")
    return split


def moved_share(split_fn, n_old: int, seed: int) -> float:
    """Share of old lesions whose split changes when ``n_old // 5`` new rows join ``n_old`` old ones."""
    old = synthetic_metadata(n_old, seed=seed)
    grown = pd.concat([old, synthetic_metadata(n_old // 5, seed=seed + 1, prefix="NEW")], ignore_index=True)
    before = split_fn(old).groupby(old["lesion_id"].to_numpy()).first()
    after = split_fn(grown).groupby(grown["lesion_id"].to_numpy()).first()
    return float((after.reindex(before.index) != before).mean())


def result(stage: str, metric: str, ours: float, baseline: float | None, target: str, met: bool, unit: str) -> str:
    ratio = None if baseline is None else round(baseline / ours, 3) if ours else None
    return "BENCH_RESULT " + json.dumps({"stage": stage, "metric": metric, "ours": round(ours, 4),
                                         "baseline": None if baseline is None else round(baseline, 4),
                                         "ratio": ratio, "target": target, "met": bool(met), "unit": unit})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="100,000 rows instead of 1,000,000")
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    n = args.rows or (100_000 if args.quick else 1_000_000)

    meta, t_make = timed(synthetic_metadata, n, 1.4, 0.5, 2.0, args.seed)
    manifest = manifest_frame(meta, args.seed)
    print(f"[split_scale] {n:,} rows, {meta['lesion_id'].nunique():,} lesions, "
          f"{meta.loc[meta['patient_ref'] != '', 'patient_ref'].nunique():,} patients (made in {t_make:.1f}s)")

    ours, t_ours = timed(split_and_check, grouped_stratified_split, meta)
    _, t_keys = timed(hash_positions, meta["lesion_id"].unique(), 42)
    base, t_base = timed(split_and_check, old_permutation_split, meta)
    digest, t_manifest = timed(ingest.manifest_hash, manifest)
    csv = ingest.canonical_manifest_csv(manifest)
    _, t_file = timed(lambda b: hashlib.sha256(b).hexdigest(), csv)
    n_old = min(n, 100_000)
    moved_ours = moved_share(grouped_stratified_split, n_old, args.seed)
    moved_base = moved_share(old_permutation_split, n_old, args.seed)

    shares = {name: s.groupby(meta["lesion_id"].to_numpy()).first().value_counts(normalize=True).round(4).to_dict()
              for name, s in (("ours", ours), ("baseline", base))}
    print(f"[split_scale] split + leakage check: ours {t_ours:.2f}s (of which keyed hashing of "
          f"{meta['lesion_id'].nunique():,} keys {t_keys:.2f}s), old permutation split {t_base:.2f}s "
          f"({t_base / t_ours:.1f}x)")
    print(f"[split_scale] lesion shares: {shares}")
    print(f"[split_scale] manifest hashing: canonical CSV + sha256 {t_manifest:.2f}s "
          f"({len(csv) / 1e6:.0f} MB, {digest[:12]}), sha256 of the file bytes {t_file:.2f}s")
    print(f"[split_scale] +20% rows: old lesions that changed split: ours {moved_ours:.2%}, old {moved_base:.2%}")
    total = t_ours + t_manifest + t_file
    print(f"[split_scale] split + manifest hashing: {total:.2f}s (target < {TARGET_SECONDS:.0f} s at 1,000,000 rows)")
    print(result("split", f"seconds, {n} rows (split + leakage check)", t_ours, t_base, "< 60 s",
                 t_ours < TARGET_SECONDS, "s"))
    print(result("manifest_hash", f"seconds, {n} rows (canonical CSV sha256 + file sha256)", t_manifest + t_file,
                 None, "< 60 s", t_manifest + t_file < TARGET_SECONDS, "s"))
    print(result("split_and_manifest_hash", f"seconds, {n} rows", total, None, "< 60 s", total < TARGET_SECONDS, "s"))
    print(result("split_stability", f"share of old lesions moved by +20% rows ({n_old} -> {n_old + n_old // 5})", moved_ours,
                 moved_base, "== 0", moved_ours == 0.0, "fraction"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
