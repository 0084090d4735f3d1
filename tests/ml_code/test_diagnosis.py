"""The diagnosis table: explicit mappings only, never a parent's class (case C09), one table for
ingestion, scoring and monitoring labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_code import CLASSES
from ml_code.data import diagnosis
from ml_code.data.diagnosis import map_diagnosis, map_hierarchy, normalise_label, normalise_labels
from ml_code.data.ingest import normalise_metadata

FOLLICULAR = ("Malignant", "Malignant adnexal epithelial proliferations - Follicular")
MELANOCYTIC = ("Benign", "Benign melanocytic proliferations")

# An ISIC Archive export of the current kind: hierarchical diagnosis_1..5, leaves outside the seven
# classes next to ordinary ones (ids invented).
ISIC_ROWS = [
    ("ISIC_1", "Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma Invasive",
     "Melanoma Invasive, Superficial spreading", None),
    ("ISIC_2", *MELANOCYTIC, "Nevus", "Nevus, Spitz", None),
    ("ISIC_3", "Indeterminate", "Indeterminate epidermal proliferations", "Solar or actinic keratosis", None, None),
    ("ISIC_4", "Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma metastasis", None, None),
    ("ISIC_5", *FOLLICULAR, "Proliferating trichilemmal carcinoma", None, None),
    ("ISIC_6", *FOLLICULAR, "Matrical or pilomatrical carcinoma", None, None),
    ("ISIC_7", *MELANOCYTIC, "Lentigo simplex", None, None),
    ("ISIC_8", *MELANOCYTIC, "Dermal melanocytosis", "Mongolian spot", None),
    ("ISIC_9", "Indeterminate", "Indeterminate melanocytic proliferations", "Atypical melanocytic neoplasm", None, None),
    ("ISIC_10", *FOLLICULAR, "Basal cell carcinoma", "Basal cell carcinoma, Nodular", None),
    ("ISIC_11", *FOLLICULAR, None, None, None),  # only the category: not a bcc
    ("ISIC_12", *FOLLICULAR, "Follicular adnexal carcinoma", None, None),  # a leaf the vocabulary may add
]
EXPECTED = {"ISIC_1": "mel", "ISIC_2": "nv", "ISIC_3": "akiec", "ISIC_10": "bcc"}
UNMAPPED = {"ISIC_4", "ISIC_5", "ISIC_6", "ISIC_7", "ISIC_8", "ISIC_9", "ISIC_11", "ISIC_12"}


def _isic_frame() -> pd.DataFrame:
    df = pd.DataFrame(ISIC_ROWS, columns=["isic_id", *[f"diagnosis_{i}" for i in range(1, 6)]])
    return df.assign(lesion_id=[f"IL_{i}" for i in range(len(df))], image_type="dermoscopic", sex="female",
                     age_approx="50", anatom_site_general="posterior torso")


def test_isic_hierarchy_maps_only_what_the_table_lists() -> None:
    good, bad = normalise_metadata(_isic_frame(), "isic", salt="s")
    assert good.set_index("image_id")["dx"].to_dict() == EXPECTED
    reasons = bad.set_index("image_id")["reason"]
    assert set(reasons.index) == UNMAPPED
    # the full path is the reason, with how to fix it; a parent's class is never taken
    assert reasons["ISIC_12"] == (
        "row 13: diagnosis not in the mapping table: Malignant > Malignant adnexal epithelial proliferations - "
        "Follicular > Follicular adnexal carcinoma; add it to ml_code/data/diagnosis.py or configure an 'other' class")
    assert "> Dermal melanocytosis > Mongolian spot;" in reasons["ISIC_8"]
    assert "> Lentigo simplex;" in reasons["ISIC_7"]


def test_other_class_keeps_unmapped_rows_when_configured() -> None:
    good, bad = normalise_metadata(_isic_frame(), "isic", salt="s", other_class="other")
    dx = good.set_index("image_id")["dx"]
    assert bad.empty
    assert {i for i in dx.index if dx[i] == "other"} == UNMAPPED
    assert all(dx[i] == c for i, c in EXPECTED.items())
    with pytest.raises(ValueError, match="new, non-empty class name"):
        normalise_metadata(_isic_frame(), "isic", salt="s", other_class="bcc")


@pytest.mark.parametrize("levels, expected", [
    ((*FOLLICULAR, "Follicular adnexal carcinoma"), None),
    ((*MELANOCYTIC, "Lentigo simplex"), None),
    ((*MELANOCYTIC, "Dermal melanocytosis", "Mongolian spot"), None),
    (MELANOCYTIC, None),
    ((*MELANOCYTIC, "Nevus"), "nv"),
    ((*MELANOCYTIC, "Nevus", "Blue nevus", "Blue nevus, Cellular"), "nv"),
    (("Benign", "Benign epidermal proliferations", "Solar lentigo"), "bkl"),
    (("Benign", "Benign epidermal proliferations", "Solar lentigo", "Something new"), None),  # node-only rule
    (("malignant", "MALIGNANT EPIDERMAL PROLIFERATIONS", " squamous  cell carcinoma in situ "), "akiec"),
    (("Malignant", "Malignant epidermal proliferations", "Squamous cell carcinoma, Invasive"), None),
    ((), None),
])
def test_map_hierarchy(levels: tuple, expected: str | None) -> None:
    assert map_hierarchy(list(levels) + [None, float("nan")]) == expected


def test_legacy_and_ham_terms_and_hierarchy_precedence() -> None:
    assert map_diagnosis((), "mel").dx == "mel"
    assert map_diagnosis((), "Pigmented benign keratosis").dx == "bkl"
    unmapped = map_diagnosis((), "atypical melanocytic proliferation")
    assert unmapped.dx is None and "atypical melanocytic proliferation" in unmapped.reason
    # the current hierarchy wins over a legacy term that disagrees
    assert map_diagnosis((*MELANOCYTIC, "Lentigo simplex"), "nevus").dx is None


@pytest.mark.parametrize("text, expected", [
    ("mel", "mel"), ("MEL", "mel"), ("Melanoma", "mel"), ("  melanoma ", "mel"), ("NV", "nv"),
    ("Melanocytic nevi", "nv"), ("BASAL CELL CARCINOMA", "bcc"), ("AKIEC", "akiec"),
    ("Actinic keratoses", "akiec"), ("Benign keratosis-like lesions", "bkl"), ("DF", "df"),
    ("Vascular lesions", "vasc"), ("Melanoma in situ", "mel"),
    ("Malignant:Malignant melanocytic proliferations (Melanoma):Melanoma Invasive", "mel"),
    ("Benign > Benign melanocytic proliferations > Lentigo simplex", None),
    ("SCC", None), ("unknown", None), ("", None), (None, None), (float("nan"), None),
])
def test_normalise_label_any_spelling(text: object, expected: str | None) -> None:
    assert normalise_label(text) == expected


def test_normalise_labels_counts_unknowns() -> None:
    codes, unknown = normalise_labels(["MEL", "scc", "nv", "scc", "", "Melanoma metastasis"])
    assert codes == ["mel", None, "nv", None, None, None]
    assert unknown == {"scc": 2, "<empty>": 1, "Melanoma metastasis": 1}


def test_every_table_class_is_a_ham10000_class() -> None:
    assert {r.dx for r in diagnosis.HIERARCHY_RULES} | set(diagnosis.FLAT_TERMS.values()) == set(CLASSES)
    paths = [r.path for r in diagnosis.HIERARCHY_RULES]
    assert len(paths) == len(set(paths))


def test_table_paths_exist_in_the_isic_vocabulary() -> None:
    """Every rule names a real node of the published ISIC vocabulary (isic-metadata, Apache-2.0), and
    across all of that vocabulary a term maps only through its own rule or a subtree rule above it."""
    vocab = pytest.importorskip("isic_metadata.diagnosis_hierarchical")
    terms = {tuple(d.value.split(":")) for d in vocab.DiagnosisEnum}
    missing = [r.path for r in diagnosis.HIERARCHY_RULES if r.path not in terms]
    assert not missing, f"rules name paths the ISIC vocabulary does not have: {missing}"
    for path in terms:
        own = next((r for r in diagnosis.HIERARCHY_RULES if r.path == path), None)
        above = [r for r in diagnosis.HIERARCHY_RULES if r.subtree and path[: len(r.path)] == r.path]
        expected = own.dx if own else (max(above, key=lambda r: len(r.path)).dx if above else None)
        assert map_hierarchy(path) == expected, path
    # the C09 leaves are real vocabulary terms, and unmapped
    for leaf in [(*FOLLICULAR, "Proliferating trichilemmal carcinoma"), (*MELANOCYTIC, "Lentigo simplex"),
                 (*MELANOCYTIC, "Dermal melanocytosis", "Mongolian spot"),
                 ("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma metastasis")]:
        assert leaf in terms and map_hierarchy(leaf) is None


def test_score_reads_isic_ground_truth_through_the_table(tmp_path: Path) -> None:
    from ml_code.evaluation.score import ISIC_CHALLENGE_COLUMNS, read_labels

    onehot = np.eye(len(ISIC_CHALLENGE_COLUMNS))[[0, 1, 6]]
    table = pd.DataFrame(onehot, columns=list(ISIC_CHALLENGE_COLUMNS)).assign(image=["a", "b", "c"])
    table.to_csv(tmp_path / "gt.csv", index=False)
    ids, dx, _ = read_labels(tmp_path / "gt.csv", tmp_path)
    assert (ids, dx) == (["a", "b", "c"], ["mel", "nv", "vasc"])
    _isic_frame().to_csv(tmp_path / "metadata.csv", index=False)
    ids, dx, _ = read_labels(tmp_path / "metadata.csv", tmp_path)
    assert dict(zip(ids, dx)) == EXPECTED  # unmapped rows are skipped, not scored
