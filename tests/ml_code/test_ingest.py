"""Ingestion checks: metadata rows and image files are accepted or quarantined with a reason."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
from PIL import Image

from ml_code.data.ingest import (
    MANIFEST_COLUMNS,
    METADATA_COLUMNS,
    ImageInfo,
    ImageLimits,
    ImageRejected,
    MetadataError,
    build_manifest,
    canonical_manifest_csv,
    detect_layout,
    find_image_file,
    inspect_image,
    manifest_frame,
    normalise_metadata,
    patient_ref,
)

SALT = "test-salt"


def _image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))  # -> mode I;16
    else:
        img = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _ham(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])


def _reason(quarantined: pd.DataFrame, image_id: str) -> str:
    hits = quarantined.loc[quarantined["image_id"] == image_id, "reason"]
    assert len(hits) >= 1, f"{image_id} not quarantined: {quarantined.to_dict('records')}"
    return " | ".join(hits)


# ----------------------------------------------------------------------------- metadata


def test_ham10000_rows_normalised_and_bad_rows_quarantined() -> None:
    df = _ham([
        ("HAM_1", "ISIC_1", "mel", "histo", "55.0", "male", "Back"),
        ("HAM_1", "ISIC_2", "mel", "histo", "55.0", "M", "back"),
        ("HAM_2", "ISIC_3", "nv", "follow_up", None, "weird", None),
        ("HAM_3", None, "nv", "histo", "40", "female", "trunk"),
        ("HAM_4", "ISIC_5", "melanoma?", "histo", "40", "female", "trunk"),
        ("HAM_5", "ISIC_6", "bkl", "histo", "-5", "female", "trunk"),
        ("HAM_6", "ISIC_7", "bkl", "histo", "300", "female", "trunk"),
        ("HAM_7", "ISIC_8", "bkl", "histo", "old", "female", "trunk"),
        ("HAM_8", "ISIC_9", "df", "histo", "30", "female", "trunk"),
        ("HAM_8", "ISIC_9", "df", "histo", "30", "female", "trunk"),  # identical duplicate
        ("HAM_9", "ISIC_10", "df", "histo", "30", "female", "trunk"),
        ("HAM_9", "ISIC_10", "vasc", "histo", "30", "female", "trunk"),  # conflicting duplicate
        ("HAM_10", "../etc/passwd", "nv", "histo", "30", "female", "trunk"),
        ("", "ISIC_12", "nv", "histo", "30", "female", "trunk"),
    ])
    assert detect_layout(df) == "ham10000"
    good, bad = normalise_metadata(df, "ham10000", SALT)

    assert list(good.columns) == list(METADATA_COLUMNS)
    assert sorted(good["image_id"]) == ["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_9"]
    row = good.set_index("image_id")
    assert row.loc["ISIC_2", "sex"] == "male"
    assert row.loc["ISIC_1", "localization"] == "back"
    assert row.loc["ISIC_3", "sex"] == "unknown" and row.loc["ISIC_3", "localization"] == "unknown"
    assert math.isnan(row.loc["ISIC_3", "age"]) and row.loc["ISIC_1", "age"] == 55.0
    assert (good["patient_ref"] == "").all() and (good["source_layout"] == "ham10000").all()

    assert list(bad.columns) == ["image_id", "stage", "reason"]
    assert (bad["stage"] == "metadata").all()
    assert "'image_id' is empty" in _reason(bad, "") and "row 5" in bad.loc[bad["image_id"] == "", "reason"].iloc[0]
    assert "not in the mapping table: melanoma?" in _reason(bad, "ISIC_5")
    assert "ml_code/data/diagnosis.py" in _reason(bad, "ISIC_5")
    assert "age '-5'" in _reason(bad, "ISIC_6")
    assert "age '300'" in _reason(bad, "ISIC_7")
    assert "age 'old' is not a number" in _reason(bad, "ISIC_8")
    assert "duplicate of row 10" in _reason(bad, "ISIC_9")
    conflict = _reason(bad, "ISIC_10")
    assert "different metadata" in conflict and (bad["image_id"] == "ISIC_10").sum() == 2
    assert "not a safe file name" in _reason(bad, "../etc/passwd")
    assert "'lesion_id' is empty" in _reason(bad, "ISIC_12")
    assert len(good) + len(bad) == len(df)


def test_isic_hierarchy_and_legacy_layouts_with_patient_privacy() -> None:
    df = pd.DataFrame({
        "isic_id": ["ISIC_A", "ISIC_B", "ISIC_C", "ISIC_D", "ISIC_E", "ISIC_F", "ISIC_G"],
        "patient_id": ["IP_SECRET_1", "IP_SECRET_1", None, "IP_SECRET_2", "IP_SECRET_2", None, None],
        "lesion_id": ["IL_1", "IL_2", None, "IL_3", "IL_4", "IL_5", "IL_6"],
        "diagnosis_1": ["Benign", "Malignant", "Malignant", "Benign", "Malignant", "Benign", "Benign"],
        "diagnosis_2": ["Benign melanocytic proliferations", "Malignant melanocytic proliferations (Melanoma)",
                        "Malignant epidermal proliferations", "Benign soft tissue proliferations - Vascular",
                        "Malignant epidermal proliferations", "Benign epidermal proliferations",
                        "Benign melanocytic proliferations"],
        "diagnosis_3": ["Nevus", "Melanoma Invasive", "Squamous cell carcinoma, Invasive", "Hemangioma",
                        "Squamous cell carcinoma in situ", "Seborrheic keratosis", "Nevus"],
        "diagnosis_4": ["Blue nevus", None, None, None, None, None, None],
        "age_approx": ["45", "70", "60", None, "65", "50", "30"],
        "sex": ["female", "male", "male", None, "female", "female", "male"],
        "anatom_site_general": ["posterior torso", "Head/Neck", None, "lower extremity", "upper extremity",
                                "anterior torso", "palms/soles"],
        "diagnosis_confirm_type": ["histopathology", "histopathology", None, "single image expert consensus",
                                   "histopathology", "serial imaging showing no change", None],
        "image_type": ["dermoscopic", "dermoscopic", "dermoscopic", "dermoscopic", "dermoscopic",
                       "dermoscopic", "clinical: close-up"],
    })
    assert detect_layout(df) == "isic"
    good, bad = normalise_metadata(df, "isic", SALT)
    row = good.set_index("image_id")
    assert row.loc["ISIC_A", "dx"] == "nv"  # Blue nevus: inside the table's "Nevus" subtree rule
    assert row.loc["ISIC_B", "dx"] == "mel"
    assert row.loc["ISIC_D", "dx"] == "vasc" and row.loc["ISIC_D", "dx_type"] == "consensus"
    assert row.loc["ISIC_E", "dx"] == "akiec"  # in-situ SCC is HAM10000 akiec
    assert row.loc["ISIC_F", "dx"] == "bkl" and row.loc["ISIC_F", "dx_type"] == "follow_up"
    assert row.loc["ISIC_B", "localization"] == "head/neck"
    assert ("not in the mapping table: Malignant > Malignant epidermal proliferations > Squamous cell carcinoma, "
            "Invasive") in _reason(bad, "ISIC_C")  # invasive SCC is outside the 7 classes
    assert "not dermoscopic" in _reason(bad, "ISIC_G")

    # patient linkage survives as a salted reference; the raw id is nowhere
    assert row.loc["ISIC_A", "patient_ref"] == row.loc["ISIC_B", "patient_ref"] == patient_ref("IP_SECRET_1", SALT)
    assert row.loc["ISIC_A", "patient_ref"] != patient_ref("IP_SECRET_1", "other-salt")
    assert len(row.loc["ISIC_D", "patient_ref"]) == 16
    assert "patient_id" not in good.columns
    dumped = good.to_csv() + bad.to_csv()
    assert "SECRET" not in dumped

    legacy = pd.DataFrame({
        "isic_id": ["ISIC_X", "ISIC_Y", "ISIC_Z"],
        "diagnosis": ["melanoma", "pigmented benign keratosis", "atypical melanocytic proliferation"],
        "age_approx": ["50", "60", "70"],
        "sex": ["male", "female", "male"],
    })
    good, bad = normalise_metadata(legacy, "isic", SALT)
    assert good.set_index("image_id")["dx"].to_dict() == {"ISIC_X": "mel", "ISIC_Y": "bkl"}
    assert (good["lesion_id"] == good["image_id"]).all()  # no lesion_id column: each image is its own lesion
    assert "atypical melanocytic proliferation" in _reason(bad, "ISIC_Z")


def test_unrecognised_layout_raises_with_missing_columns() -> None:
    with pytest.raises(MetadataError, match=r"missing: \['dx'"):
        detect_layout(pd.DataFrame(columns=["lesion_id", "image_id", "dx_type", "age", "sex", "localization"]))
    with pytest.raises(MetadataError, match="no diagnosis column"):
        detect_layout(pd.DataFrame(columns=["isic_id", "age_approx"]))
    with pytest.raises(MetadataError, match="looks like the 'ham10000' layout"):
        normalise_metadata(_ham([]), "isic", SALT)


# ----------------------------------------------------------------------------- images


def test_good_jpeg_and_png_accepted_by_content_not_extension() -> None:
    info = inspect_image(_image_bytes("JPEG"), "a.jpg")
    assert (info.format, info.width, info.height, info.extension) == ("JPEG", 64, 48, ".jpg")
    assert len(info.sha256) == 64 and info.image_key == f"{info.sha256[:2]}/{info.sha256}.jpg"
    png = inspect_image(_image_bytes("PNG", mode="RGBA"), "mislabelled.jpg")
    assert (png.format, png.extension) == ("PNG", ".png")
    assert inspect_image(_image_bytes("PNG", mode="L"), "grey.png").format == "PNG"


@pytest.mark.parametrize(
    "data, limits, expected",
    [
        (b"", ImageLimits(), "empty"),
        (b"this is not an image at all", ImageLimits(), "not a recognisable image"),
        (_image_bytes("JPEG")[:400], ImageLimits(), "truncated or corrupt"),
        (_image_bytes("JPEG")[: len(_image_bytes("JPEG")) * 2 // 3], ImageLimits(), "does not decode fully"),
        (_image_bytes("PNG")[:300], ImageLimits(), "does not decode fully"),
        (_image_bytes("GIF"), ImageLimits(), "format is GIF"),
        (_image_bytes("JPEG"), ImageLimits(max_bytes=100), "over the"),
        (_image_bytes("JPEG", size=(40, 20)), ImageLimits(), "smaller than the 32 px minimum"),
        (_image_bytes("JPEG", size=(64, 48)), ImageLimits(max_side=50), "exceeds the 50 px maximum"),
        (_image_bytes("PNG", mode="I;16"), ImageLimits(), "colour mode"),
    ],
    ids=["empty", "non-image", "truncated-header", "truncated-jpeg", "truncated-png", "gif", "oversized", "too-small", "too-big", "16-bit"],
)
def test_bad_images_rejected_with_specific_reason(data: bytes, limits: ImageLimits, expected: str) -> None:
    with pytest.raises(ImageRejected) as err:
        inspect_image(data, "lesion.jpg", limits)
    assert expected in err.value.reason and "lesion.jpg" in err.value.reason


def test_find_image_file_looks_in_ham10000_folders(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "HAM10000_images_part_2").mkdir()
    (tmp_path / "images" / "ISIC_1.jpg").write_bytes(b"x")
    (tmp_path / "HAM10000_images_part_2" / "ISIC_2.png").write_bytes(b"x")
    (tmp_path / "ISIC_3.jpeg").write_bytes(b"x")
    assert find_image_file(tmp_path, "ISIC_1") == tmp_path / "images" / "ISIC_1.jpg"
    assert find_image_file(tmp_path, "ISIC_2") == tmp_path / "HAM10000_images_part_2" / "ISIC_2.png"
    assert find_image_file(tmp_path, "ISIC_3") == tmp_path / "ISIC_3.jpeg"
    assert find_image_file(tmp_path / "images", "ISIC_1") == tmp_path / "images" / "ISIC_1.jpg"
    assert find_image_file(tmp_path, "ISIC_4") is None
    assert find_image_file(tmp_path, "../images/ISIC_1") is None


# ----------------------------------------------------------------------------- manifest


def _pandas_manifest_csv(manifest: pd.DataFrame) -> bytes:
    """The canonical manifest as pandas' to_csv wrote it before the csv-module writer: manifest
    hashes (the raw data version every downstream asset keys on) must not change with the writer."""
    df = manifest.loc[:, list(MANIFEST_COLUMNS)].sort_values("image_id", kind="mergesort").copy()
    df["age"] = pd.to_numeric(df["age"], errors="coerce").astype(float)
    for c in ("width", "height"):
        df[c] = pd.to_numeric(df[c]).astype(np.int64)
    return df.to_csv(index=False, lineterminator="\n", float_format="%.1f", na_rep="").encode()


def test_canonical_manifest_bytes_are_those_pandas_wrote() -> None:
    """Quotes, commas, line breaks, non-ASCII text, missing and half-way ages, empty cells, typed
    and all-text frames: the same bytes, so earlier manifests keep their hashes."""
    good, _ = normalise_metadata(_ham([
        ("HAM_1", "ISIC_2", "nv", "histo", "45", "male", "back"),
        ("HAM_2", "ISIC_1", "mel", "follow_up", "", "female", "upper extremity"),
        ("HAM_3", "ISIC_3", "bkl", "consensus", "62.25", "unknown", "face"),
        ("HAM_4", "ISIC_0", "df", "confocal", "7.75", "male", "lower extremity"),
    ]), "ham10000", SALT)
    shas = [f"{i:x}" * 64 for i in range(4)]
    images = pd.DataFrame({"image_key": [f"{h[:2]}/{h}.jpg" for h in shas], "sha256": shas,
                           "format": ["JPEG", "PNG", "JPEG", "JPEG"], "width": [600, 450, 32, 1024],
                           "height": [450, 600, 32, 768], "phash": ["f0" * 32, "0" * 64, "1" * 64, "e" * 64]})
    manifest = build_manifest([{**m, **i} for m, i in zip(good.to_dict("records"), images.to_dict("records"))])
    assert canonical_manifest_csv(manifest) == _pandas_manifest_csv(manifest)  # nothing to quote
    manifest.loc[0, "localization"] = 'scalp, "left"\nside'
    manifest.loc[1, "lesion_id"] = "HAM_é ü"
    manifest.loc[2, "dx_type"] = " leading space"
    typed = canonical_manifest_csv(manifest)
    assert typed == _pandas_manifest_csv(manifest)
    as_text = pd.read_csv(io.BytesIO(typed), dtype=str, keep_default_na=False)  # how assets read it back
    assert canonical_manifest_csv(as_text) == _pandas_manifest_csv(as_text) == typed
    assert b'"scalp, ""left""\nside"' in typed and b",45.0," in typed and b",62.2," in typed


def test_the_manifest_built_by_columns_is_the_one_built_by_rows() -> None:
    """``manifest_frame`` (metadata frame + image infos, what ingestion uses) gives the frame and the
    canonical bytes that ``build_manifest`` gives for the same rows as dicts; metadata rows taken
    out of order and out of a larger frame keep their own values."""
    good, _ = normalise_metadata(_ham([
        ("HAM_1", "ISIC_2", "nv", "histo", "45", "male", "back"),
        ("HAM_2", "ISIC_1", "mel", "follow_up", "", "female", "upper extremity"),
        ("HAM_3", "ISIC_3", "bkl", "consensus", "62.25", "unknown", "face"),
    ]), "ham10000", SALT)
    infos = [ImageInfo(format="JPEG", width=600 + i, height=450, sha256=f"{i + 1:x}" * 64, extension=".jpg",
                       phash=f"{i:x}" * 64) for i in range(2)]
    picked = good.iloc[[2, 0]]
    by_columns = manifest_frame(picked, infos)
    by_rows = build_manifest([{**row, "image_key": info.image_key, **{c: getattr(info, c) for c in
                              ("sha256", "format", "width", "height", "phash")}}
                              for row, info in zip(picked.to_dict("records"), infos)])
    pd.testing.assert_frame_equal(by_columns, by_rows)
    assert canonical_manifest_csv(by_columns) == canonical_manifest_csv(by_rows)
    assert by_columns["image_id"].tolist() == ["ISIC_3", "ISIC_2"] and by_columns["width"].tolist() == [600, 601]
    with pytest.raises(ValueError, match="2 metadata rows but 1 image infos"):
        manifest_frame(picked, infos[:1])
    # rows straight from normalise_metadata: only the image columns are checked again, same frame
    pd.testing.assert_frame_equal(manifest_frame(picked, infos, metadata_checked=True), by_columns)
    bad = [infos[0], infos[1]._replace(phash="zz" * 32)]  # e.g. from a tampered ingestion memo
    for checked in (False, True):
        with pytest.raises(pa.errors.SchemaError, match="phash"):
            manifest_frame(picked, bad, metadata_checked=checked)
    wrong = picked.assign(dx="not-a-class")  # not normalise_metadata's rows: they must not be trusted
    with pytest.raises(pa.errors.SchemaError, match="dx"):
        manifest_frame(wrong, infos)
