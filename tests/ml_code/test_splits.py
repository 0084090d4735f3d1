"""Grouped, stratified splits: no lesion or patient leakage, every class covered, deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_code import CLASSES
from ml_code.data.splits import (
    check_no_leakage,
    class_coverage,
    group_ids,
    grouped_stratified_split,
    missing_coverage,
)

HAM10000_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "ham10000"


def _toy(n_lesions_per_class: dict[str, int], seed: int = 0, with_patients: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    lesion = 0
    for dx, n in n_lesions_per_class.items():
        for _ in range(n):
            lesion += 1
            patient = f"p{rng.integers(0, 40):03d}" if with_patients and rng.random() < 0.5 else ""
            for _ in range(rng.integers(1, 4)):
                rows.append({"image_id": f"img{len(rows):05d}", "lesion_id": f"L{lesion:04d}", "dx": dx,
                             "patient_ref": patient})
    return pd.DataFrame(rows)


def test_no_lesion_leakage_and_every_class_in_every_split() -> None:
    counts = {"akiec": 12, "bcc": 20, "bkl": 30, "df": 3, "mel": 30, "nv": 150, "vasc": 4}
    df = _toy(counts)
    df["split"] = grouped_stratified_split(df, 0.15, 0.15, seed=7)
    assert set(df["split"]) == {"train", "val", "test"}
    assert check_no_leakage(df) == []
    assert (df.groupby("lesion_id")["split"].nunique() == 1).all()
    cov = class_coverage(df)
    assert list(cov.columns) == ["train", "val", "test"] and list(cov.index) == list(CLASSES)
    assert (cov > 0).all().all(), cov
    assert missing_coverage(df) == []
    share = df["split"].value_counts(normalize=True)
    assert 0.6 < share["train"] < 0.8 and 0.08 < share["val"] < 0.22 and 0.08 < share["test"] < 0.22


def test_patients_link_lesions_transitively() -> None:
    df = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(6)],
        "lesion_id": ["A", "A", "B", "C", "C", "D"],
        "patient_ref": ["p1", "", "p1", "p2", "p1", ""],  # A-B via p1, C-A via p1 on one image of C
        "dx": ["nv"] * 6,
    })
    groups = group_ids(df)
    assert groups.iloc[0] == groups.iloc[2] == groups.iloc[3] == groups.iloc[4]
    assert groups.iloc[5] != groups.iloc[0]
    big = _toy({c: 25 for c in CLASSES}, seed=3, with_patients=True)
    big["split"] = grouped_stratified_split(big, 0.2, 0.2, seed=1)
    assert check_no_leakage(big) == []  # also checks patient_ref
    linked = big[big["patient_ref"] != ""]
    assert (linked.groupby("patient_ref")["split"].nunique() == 1).all()


def test_deterministic_per_seed_and_independent_of_row_order() -> None:
    df = _toy({c: 15 for c in CLASSES}, seed=2)
    a = grouped_stratified_split(df, 0.15, 0.15, seed=42)
    b = grouped_stratified_split(df.sample(frac=1, random_state=9), 0.15, 0.15, seed=42).sort_index()
    c = grouped_stratified_split(df, 0.15, 0.15, seed=43)
    assert a.equals(b)
    assert not a.equals(c)


def test_leak_detector_finds_planted_leak_without_echoing_patient_refs() -> None:
    df = pd.DataFrame({"lesion_id": ["A", "A", "B", "C"], "patient_ref": ["", "", "secretref", "secretref"],
                       "split": ["train", "test", "val", "train"], "dx": ["nv"] * 4})
    problems = check_no_leakage(df)
    assert any("lesion_id A" in p and "test" in p for p in problems)
    assert any(p.startswith("patient_ref") for p in problems)
    assert not any("secretref" in p for p in problems)


def test_bad_fractions_and_missing_columns_are_explained() -> None:
    df = _toy({"nv": 5})
    with pytest.raises(ValueError, match="sum to less than 1"):
        grouped_stratified_split(df, 0.6, 0.5, seed=0)
    with pytest.raises(KeyError, match="diagnosis column"):
        grouped_stratified_split(df.drop(columns="dx"), 0.1, 0.1, seed=0)
    with pytest.raises(KeyError, match="lesion_id"):
        grouped_stratified_split(df.drop(columns="lesion_id"), 0.1, 0.1, seed=0)


@pytest.mark.realdata
@pytest.mark.skipif(not (HAM10000_DIR / "HAM10000_metadata.csv").is_file(), reason="HAM10000 not present")
def test_real_ham10000_split_has_no_lesion_leakage() -> None:
    meta = pd.read_csv(HAM10000_DIR / "HAM10000_metadata.csv", dtype=str)
    meta["split"] = grouped_stratified_split(meta, 0.15, 0.15, seed=42)
    assert check_no_leakage(meta) == []
    assert missing_coverage(meta) == []
    cov = class_coverage(meta)
    assert cov.to_numpy().sum() == len(meta) == 10015
    # stratified: each class's test share is close to 15%
    test_share = cov["test"] / cov.sum(axis=1)
    assert ((test_share > 0.10) & (test_share < 0.20)).all(), test_share
