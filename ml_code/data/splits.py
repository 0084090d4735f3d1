"""Lesion-grouped, diagnosis-stratified train/val/test splits.

Why grouped: HAM10000 has 10,015 images of 7,470 lesions; two photos of one
lesion in different splits let a model score by recognising the lesion rather
than the diagnosis, and the test metric overstates real performance. So every
image of a lesion (and, when ``patient_ref`` is known, every lesion of a
patient) lands in one split. Groups are joined transitively: if lesion A and B
share a patient, they form one group even if nothing else links them.

Why stratified: rare classes (df, vasc: ~1% each) must appear in val and test
or their metrics are undefined. A group is labelled with its majority diagnosis
and each class's groups are dealt out separately, so every class with at least
three groups is present in every split.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

SPLITS: tuple[str, ...] = ("train", "val", "test")


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the smaller id becomes the root, so group names do not depend on row order
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra


def _has_values(series: pd.Series) -> bool:
    return bool(series.fillna("").astype(str).str.strip().ne("").any())


def group_ids(df: pd.DataFrame, group_cols: tuple[str, ...] = ("lesion_id",)) -> pd.Series:
    """Connected-component id per row: rows sharing any non-empty value of ``group_cols`` join.

    ``patient_ref`` is added automatically when the column exists and is not all empty.
    """
    cols = list(group_cols)
    if "patient_ref" in df.columns and "patient_ref" not in cols and _has_values(df["patient_ref"]):
        cols.append("patient_ref")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"split needs columns {missing} to group rows; columns present: {list(df.columns)}")
    uf = _UnionFind()
    keys = []
    for values in df[cols].fillna("").astype(str).itertuples(index=False):
        # each row links its own key to every non-empty grouping value
        nodes = [f"{c}={v.strip()}" for c, v in zip(cols, values) if v.strip()]
        if not nodes:
            raise ValueError(f"a row has no value in any of {cols}; every image needs a lesion_id")
        for other in nodes[1:]:
            uf.union(nodes[0], other)
        keys.append(nodes[0])
    return pd.Series([uf.find(k) for k in keys], index=df.index, name="group")


def grouped_stratified_split(
    df: pd.DataFrame,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    group_cols: tuple[str, ...] = ("lesion_id",),
    dx_col: str = "dx",
) -> pd.Series:
    """Assign each row 'train' | 'val' | 'test'; the Series shares ``df``'s index.

    Per class (groups labelled by majority dx, ties -> alphabetically first), the
    class's groups are shuffled with ``seed`` (after sorting, so the result does
    not depend on row order) and dealt greedily by image count toward the target
    fractions. A class with >= 3 groups gets at least one group in each split.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must each be in [0, 1) "
            "and sum to less than 1"
        )
    if dx_col not in df.columns:
        raise KeyError(f"split needs the diagnosis column {dx_col!r}; columns present: {list(df.columns)}")
    if df.empty:
        return pd.Series([], index=df.index, dtype=object, name="split")
    groups = group_ids(df, group_cols)
    frame = pd.DataFrame({"group": groups, "dx": df[dx_col].astype(str)})
    sizes = frame.groupby("group").size()
    majority = frame.groupby("group")["dx"].agg(lambda s: sorted(Counter(s).items(), key=lambda kv: (-kv[1], kv[0]))[0][0])

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
            # guarantee coverage: one group to each split whose fraction is non-zero, rare splits first
            for split in ("test", "val", "train"):
                if fractions[split] > 0:
                    assignment[order[start]] = split
                    filled[split] += sizes[order[start]]
                    start += 1
        for g in order[start:]:
            # the split furthest below its target share of this class's images takes the group
            deficit = {s: fractions[s] * total - filled[s] for s in SPLITS if fractions[s] > 0}
            split = max(deficit, key=lambda s: (deficit[s] / (fractions[s] * total), -SPLITS.index(s)))
            assignment[g] = split
            filled[split] += sizes[g]
    return pd.Series(groups.map(assignment).to_numpy(), index=df.index, dtype=object, name="split")


def check_no_leakage(assignments_df: pd.DataFrame, split_col: str = "split") -> list[str]:
    """Problems found: any lesion (or patient_ref) whose images sit in more than one split."""
    problems: list[str] = []
    if split_col not in assignments_df.columns:
        return [f"no {split_col!r} column to check"]
    bad_splits = sorted(set(assignments_df[split_col].astype(str)) - set(SPLITS))
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
    return problems


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
