"""Lesion-grouped, diagnosis-stratified train/val/test splits that stay put as data grows.

Why grouped: HAM10000 has 10,015 images of 7,470 lesions; two photos of one
lesion in different splits let a model score by recognising the lesion rather
than the diagnosis, and the test metric overstates real performance. So every
image of a lesion (and, when ``patient_ref`` is known, every lesion of a
patient) lands in one split. Groups are joined transitively: if lesion A and B
share a patient, they form one group even if nothing else links them.

Why stable: a retrain after new data must be judged on the images the last model was
judged on, plus the new ones, or the registration gate ("not worse than the Approved
champion", scored on the challenger's test images) compares a champion that trained on
some of those images. So a group's split is a function of the group alone: a keyed
BLAKE2b hash (RFC 7693) of its key, read as a position ``u`` in [0, 1), and fixed
intervals: train ``[0, 1 - val - test)``, val ``[1 - val - test, 1 - test)``, test
``[1 - test, 1)``. Adding lesions never moves an old one; a retrain's test set is the old
test set plus the new lesions whose hash falls in test. The key is
``SPLIT_KEY_PREFIX + seed`` (the ``seed`` option), recorded with the splits.

Why stratified: positions are independent uniforms, so every class is split in the
requested fractions in expectation; a class of ``n`` groups has a split share with standard
deviation ``sqrt(f (1 - f) / n)`` (binomial), e.g. +-0.04 for HAM10000's 73 dermatofibroma
lesions at f = 0.15. The old per-class dealing was exact but reshuffled everything when
one lesion was added. Rare classes (df, vasc: ~1% each) must appear in val and test or
their metrics are undefined: a class with at least three groups that the hash left
without a group in some split borrows the group nearest that split's interval
(:func:`grouped_stratified_split`).

Near-duplicate pictures join too: when the manifest has a ``phash`` column (the
perceptual hash computed at ingestion), images within ``PHASH_THRESHOLD`` bits of
each other are one group, like images of one lesion, because the same picture
under two lesion ids (a re-upload, a PNG export, a crop) leaks just the same
(``ml_code.data.near_duplicates``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ml_code.data.near_duplicates import (
    PHASH_THRESHOLD, differing_pairs, distinct_hashes, hash_members, near_duplicate_groups, near_duplicate_pairs,
)

SPLITS: tuple[str, ...] = ("train", "val", "test")

SPLIT_METHOD = "keyed-hash-v1"
"""Name of the assignment rule recorded with the splits (summary.json, the asset's metadata)."""
SPLIT_KEY_PREFIX = "dermaops-split-v1:seed="
"""The BLAKE2b key is this prefix followed by the ``seed`` option: a fixed, recorded key, so the
same seed gives the same split on any machine and any library version."""


def split_key(seed: int) -> str:
    """The hash key used for ``seed`` (shown to users; not a secret: it only fixes the split)."""
    return f"{SPLIT_KEY_PREFIX}{int(seed)}"


def split_intervals(val_fraction: float, test_fraction: float) -> dict[str, tuple[float, float]]:
    """Each split's interval ``[low, high)`` of hash positions; ValueError on bad fractions."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must each be in [0, 1) "
            "and sum to less than 1"
        )
    train_end = 1.0 - val_fraction - test_fraction
    return {"train": (0.0, train_end), "val": (train_end, 1.0 - test_fraction), "test": (1.0 - test_fraction, 1.0)}


def describe_split(val_fraction: float, test_fraction: float, seed: int) -> dict[str, object]:
    """What summary.json records about the split rule, so a user can see how it was made."""
    intervals = split_intervals(val_fraction, test_fraction)
    return {"method": SPLIT_METHOD, "hash": "blake2b-64 keyed", "key": split_key(seed),
            "intervals": {s: [round(lo, 6), round(hi, 6)] for s, (lo, hi) in intervals.items()}}


def hash_positions(keys: pd.Series | np.ndarray | list[str], seed: int) -> np.ndarray:
    """Position in [0, 1) of each key: the first 8 bytes of BLAKE2b(key=``split_key(seed)``,
    digest_size=8) of its UTF-8 bytes, big-endian, top 53 bits / 2**53 (float64, exact).

    One C hash call per *group* (not per image): a hash defined by a standard (RFC 7693) keeps
    splits identical across Python, NumPy and pandas upgrades, which pandas' own vectorised
    hash does not promise. About 0.6 s per million groups."""
    proto = hashlib.blake2b(key=split_key(seed).encode(), digest_size=8)

    def one(text: str) -> bytes:
        h = proto.copy()
        h.update(text.encode())
        return h.digest()

    digests = b"".join([one(k) for k in keys])
    words = np.frombuffer(digests, dtype=">u8").astype(np.uint64)
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _has_values(series: pd.Series) -> bool:
    return bool(series.fillna("").astype(str).str.strip().ne("").any())


def _grouping_columns(df: pd.DataFrame, group_cols: tuple[str, ...]) -> list[str]:
    cols = list(group_cols)
    if "patient_ref" in df.columns and "patient_ref" not in cols and _has_values(df["patient_ref"]):
        cols.append("patient_ref")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"split needs columns {missing} to group rows; columns present: {list(df.columns)}")
    return cols


def group_ids(df: pd.DataFrame, group_cols: tuple[str, ...] = ("lesion_id",),
              near_duplicate_threshold: int | None = PHASH_THRESHOLD) -> pd.Series:
    """Group key per row (a string such as ``lesion_id=HAM_0000118``): rows sharing any
    non-empty value of ``group_cols`` are one group, transitively.

    ``patient_ref`` is added automatically when the column exists and is not all empty.
    Rows whose ``phash`` values are near-duplicates (Hamming distance <=
    ``near_duplicate_threshold``; None turns this off) join as well.

    The key names the group by its widest member: the smallest value of the last grouping
    column present in the group (``patient_ref`` before ``lesion_id``), so a patient's new
    lesion joins the patient's split whatever its lesion id. Connected components of the
    row/value graph (scipy.sparse.csgraph): linear in rows, no per-row Python.
    ValueError when a row has no value in any grouping column."""
    cols = _grouping_columns(df, group_cols)
    n = len(df)
    if n == 0:
        return pd.Series([], index=df.index, dtype=object, name="group")
    values = [df[c].fillna("").astype(str).str.strip().to_numpy(dtype=object) for c in cols]
    present = np.stack([v != "" for v in values], axis=1)
    if not present.any(axis=1).all():
        row = int(np.flatnonzero(~present.any(axis=1))[0])
        raise ValueError(f"row {row} has no value in any of {cols}; every image needs a lesion_id")
    # one node per distinct (column, value); rows are edges from their first value to the others
    labels = [np.where(present[:, k], f"{c}=" + values[k], None) for k, c in enumerate(cols)]
    codes, nodes = pd.factorize(np.concatenate(labels))
    codes = codes.reshape(len(cols), n).T  # (n, len(cols)); -1 where empty
    anchor = codes[np.arange(n), present.argmax(axis=1)]
    src, dst = [anchor], [anchor]
    for k in range(len(cols)):
        keep = present[:, k]
        src.append(anchor[keep])
        dst.append(codes[keep, k])
    if near_duplicate_threshold is not None and "phash" in df.columns:
        root = near_duplicate_groups(df["phash"], near_duplicate_threshold)
        src.append(anchor)
        dst.append(anchor[root])
    a, b = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(len(nodes), len(nodes)))
    _, component = connected_components(graph, directed=False)
    # the group's name: the smallest node of the highest-ranked column within the component
    rank = np.empty(len(nodes), dtype=np.int64)
    for k in range(len(cols)):
        rank[codes[present[:, k], k]] = k
    table = pd.DataFrame({"component": component, "rank": -rank, "node": np.asarray(nodes, dtype=object)})
    names = (table.sort_values(["component", "rank", "node"], kind="mergesort")
             .drop_duplicates("component").set_index("component")["node"])
    return pd.Series(names.reindex(component[anchor]).to_numpy(), index=df.index, name="group")


def _majority_class(groups: np.ndarray, dx: np.ndarray, n_groups: int) -> np.ndarray:
    """Each group's diagnosis (``groups`` are codes ``0..n_groups-1``, one per row beside its
    ``dx``): the most frequent among its images, ties -> alphabetically first. One count table
    in NumPy rather than pandas' value_counts and a sort: every rerun assigns the whole split again."""
    dx_codes, classes = pd.factorize(dx, sort=True)  # sorted: argmax's first max is the alphabetical one
    counts = np.bincount(groups * len(classes) + dx_codes, minlength=n_groups * len(classes))
    return classes[counts.reshape(n_groups, len(classes)).argmax(axis=1)]


def _interval_distance(u: np.ndarray, interval: tuple[float, float]) -> np.ndarray:
    low, high = interval
    return np.where(u < low, low - u, np.where(u >= high, u - high, 0.0))


def _borrow_for_coverage(split: np.ndarray, u: np.ndarray, keys: np.ndarray, dx: np.ndarray,
                         intervals: dict[str, tuple[float, float]]) -> np.ndarray:
    """Per class with >= 3 groups, give every split with a non-empty interval at least one group:
    the group nearest that interval (by hash position; ties by key) from a split holding two or
    more of the class's groups. Arrays are per group; returns the new split codes."""
    split = split.copy()
    wanted = [k for k, s in enumerate(SPLITS) if intervals[s][1] > intervals[s][0]]
    dx_codes, classes = pd.factorize(dx, sort=True)  # hashed, then the few classes sorted (np.unique sorts every row)
    table = np.bincount(dx_codes * len(SPLITS) + split, minlength=len(classes) * len(SPLITS)).reshape(-1, len(SPLITS))
    short = np.flatnonzero((table.sum(axis=1) >= 3) & (table[:, wanted] == 0).any(axis=1))
    for code in short:  # a handful of tiny classes at most, alphabetically
        members = np.flatnonzero(dx_codes == code)
        for k in sorted(wanted, reverse=True):  # test, then val, then train
            sizes = np.bincount(split[members], minlength=len(SPLITS))
            if sizes[k]:
                continue
            donors = members[sizes[split[members]] >= 2]
            order = np.lexsort((keys[donors], _interval_distance(u[donors], intervals[SPLITS[k]])))
            split[donors[order[0]]] = k
    return split


def grouped_stratified_split(
    df: pd.DataFrame,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    group_cols: tuple[str, ...] = ("lesion_id",),
    dx_col: str = "dx",
) -> pd.Series:
    """Assign each row 'train' | 'val' | 'test'; the Series shares ``df``'s index.

    A group (see :func:`group_ids`) goes to the split whose interval
    (:func:`split_intervals`) holds its hash position (:func:`hash_positions` of the group key,
    keyed by ``seed``). The result depends on nothing but each group's own key, the fractions
    and the seed, so it does not depend on row order or on the other rows, and:

    - adding data never moves an old lesion: new lesions land by their own hash;
    - a relabelled lesion (its ``dx`` corrected) keeps its split: the diagnosis is not hashed
      and every class has the same intervals;
    - a lesion moves only when new rows join its group to another (a patient reference or a
      near-duplicate linking two lesions): the joined group takes the split of its key.

    Rare classes: a class (a group's class is its majority diagnosis, ties -> alphabetically
    first) with >= 3 groups but none in some split borrows one, nearest that split's interval,
    from a split holding two or more of its groups. Such a borrowed group can return to its own
    hash split once the class gains a group that hashes into the short split, so coverage of a
    tiny class is the one case where a lesion may move (HAM10000's smallest class has 73 lesions;
    at that size the hash leaves a split empty with probability 0.85**73 < 1e-5). A class with
    one or two groups is split by the hash alone and may be missing from val or test.

    Shapes: ``df`` has ``group_cols``, ``dx_col``; optional ``patient_ref`` and ``phash``.
    ValueError on fractions outside [0, 1) or summing to 1 or more; KeyError naming a
    missing column. Linear in rows without ``phash`` (near-duplicate pairing is quadratic): 7.8 s
    for a million rows with the leakage check, on a shared 2-core machine
    (``benchmarks/split_scale.py``).
    """
    intervals = split_intervals(val_fraction, test_fraction)
    if dx_col not in df.columns:
        raise KeyError(f"split needs the diagnosis column {dx_col!r}; columns present: {list(df.columns)}")
    if df.empty:
        return pd.Series([], index=df.index, dtype=object, name="split")
    groups = group_ids(df, group_cols)
    codes, keys = pd.factorize(groups)
    keys = np.asarray(keys, dtype=object)
    u = hash_positions(keys, seed)
    bounds = np.array([intervals["train"][1], intervals["val"][1]])
    split = np.searchsorted(bounds, u, side="right").astype(np.int64)  # 0 train, 1 val, 2 test
    dx = _majority_class(codes, df[dx_col].astype(str).to_numpy(dtype=object), len(keys))
    split = _borrow_for_coverage(split, u, keys, dx, intervals)
    names = np.array(SPLITS, dtype=object)
    return pd.Series(names[split[codes]], index=df.index, dtype=object, name="split")


def check_no_leakage(assignments_df: pd.DataFrame, split_col: str = "split") -> list[str]:
    """Problems found: any lesion (or patient_ref) whose images sit in more than one split."""
    problems: list[str] = []
    if split_col not in assignments_df.columns:
        return [f"no {split_col!r} column to check"]
    bad_splits = sorted(set(assignments_df[split_col].astype(str).unique().tolist()) - set(SPLITS))
    if bad_splits:
        problems.append(f"unknown split names {bad_splits}; expected {list(SPLITS)}")
    for col in ("lesion_id", "patient_ref"):
        if col not in assignments_df.columns:
            continue
        values = assignments_df[[col, split_col]].copy()
        values[col] = values[col].fillna("").astype(str).str.strip()
        values = values[values[col] != ""]
        spread = values.groupby(col)[split_col].nunique()
        for key in spread.index[spread > 1]:
            where = sorted(values.loc[values[col] == key, split_col].unique())
            label = key if col == "lesion_id" else "<patient_ref>"  # never echo patient references
            problems.append(f"{col} {label} appears in splits {where}")
    problems.extend(near_duplicate_leaks(assignments_df, split_col))
    return problems


def near_duplicate_leaks(assignments_df: pd.DataFrame, split_col: str = "split",
                         threshold: int = PHASH_THRESHOLD) -> list[str]:
    """Near-duplicate image pairs (``phash`` within ``threshold`` bits) that sit in different
    splits, in row order; empty when the table has no ``phash`` column (manifests from before
    hashing).

    One message per pair of distinct hashes (or per hash that pictures in several splits share),
    naming one such pair of images and, when there are more, how many: searched over the distinct
    hashes (:func:`ml_code.data.near_duplicates.distinct_hashes`), so a flood of pictures with
    one hash costs one row each, not the square of their number."""
    if "phash" not in assignments_df.columns or split_col not in assignments_df.columns:
        return []
    rows = assignments_df.reset_index(drop=True)
    hashed = rows["phash"].fillna("").astype(str).str.strip().ne("")
    rows = rows[hashed].reset_index(drop=True)
    if len(rows) < 2:
        return []
    distinct, inverse = distinct_hashes(rows["phash"].astype(str).tolist())
    split_codes, split_names = pd.factorize(rows[split_col].astype(str))
    ids = rows["image_id"].astype(str).to_numpy() if "image_id" in rows.columns else rows.index.astype(str)
    members, bounds = hash_members(inverse, len(distinct))
    low = np.full(len(distinct), len(split_names))
    high = np.full(len(distinct), -1)
    np.minimum.at(low, inverse, split_codes)
    np.maximum.at(high, inverse, split_codes)
    pairs = near_duplicate_pairs(distinct, threshold)
    a, b = pairs[:, 0], pairs[:, 1]
    crossing = ~((low[a] == high[a]) & (low[b] == high[b]) & (low[a] == low[b]))
    shared = np.flatnonzero(low != high)  # one hash, pictures in several splits
    items = [(int(u), int(u), 0) for u in shared] + [tuple(int(v) for v in row) for row in pairs[crossing]]
    found: list[tuple[int, int, str]] = []
    for u, v, distance in items:
        left, right = members[bounds[u]:bounds[u + 1]], members[bounds[v]:bounds[v + 1]]
        n_cross = differing_pairs(split_codes[left], None if u == v else split_codes[right])
        i = int(left[0])
        others = right[split_codes[right] != split_codes[i]]
        if not len(others):  # every picture on the right is in i's split: take one on the left that is not
            i, others = int(right[0]), left[split_codes[left] != split_codes[right[0]]]
        i, j = sorted((i, int(others[0])))
        splits = sorted(str(split_names[c]) for c in np.unique(split_codes[np.concatenate([left, right])]))
        more = f" ({n_cross} pairs of pictures with these hashes cross splits)" if n_cross > 1 else ""
        found.append((i, j, f"near-duplicate images {ids[i]} and {ids[j]} (phash distance {distance}) are in "
                            f"splits {splits}{more}"))
    return [message for _, _, message in sorted(found)]


def class_coverage(assignments_df: pd.DataFrame, split_col: str = "split", dx_col: str = "dx",
                   classes: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Image counts per class (rows) and split (columns: train, val, test), zeros included."""
    if classes is None:
        from ml_code import CLASSES

        classes = CLASSES
    table = pd.crosstab(assignments_df[dx_col], assignments_df[split_col])
    return table.reindex(index=list(classes), columns=list(SPLITS), fill_value=0).astype(int)


def missing_coverage(assignments_df: pd.DataFrame, split_col: str = "split", dx_col: str = "dx",
                     group_col: str = "lesion_id") -> list[str]:
    """Classes with >= 3 lesions that are absent from some split (should be empty)."""
    out: list[str] = []
    cov = class_coverage(assignments_df, split_col, dx_col)
    n_groups = assignments_df.groupby(dx_col)[group_col].nunique()
    for dx in cov.index:
        if n_groups.get(dx, 0) >= 3:
            for split in SPLITS:
                if cov.loc[dx, split] == 0:
                    out.append(f"class {dx} has no images in {split}")
    return out
